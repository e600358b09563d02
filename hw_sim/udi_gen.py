"""Seeded generator of realistic item barcodes (GS1 UDIs) and patient wristbands for the simulators."""

from __future__ import annotations

import datetime as dt
import random
import string
from dataclasses import dataclass

from device.udi.gs1 import GS, gtin_check_digit, to_element_string

DEFAULT_COMPANY_PREFIX = "6954321"  # a GS1 China-range company prefix (690-699)
_LOT_ALPHABET = string.ascii_uppercase + string.digits
_SERIAL_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"  # no I/O: printed serials avoid them


def make_gtin(rng: random.Random, company_prefix: str = DEFAULT_COMPANY_PREFIX, *, indicator: int = 0) -> str:
    """A valid 14-digit GTIN: indicator digit, company prefix, random item reference, check digit."""
    if not company_prefix.isdigit() or not 6 <= len(company_prefix) <= 12:
        raise ValueError(f"company prefix must be 6-12 digits, got {company_prefix!r}")
    if not 0 <= indicator <= 8:
        raise ValueError(f"indicator digit must be 0-8, got {indicator}")
    ref_len = 12 - len(company_prefix)
    item_ref = f"{rng.randrange(10**ref_len):0{ref_len}d}" if ref_len else ""
    body = f"{indicator}{company_prefix}{item_ref}"
    return body + str(gtin_check_digit(body))


def make_udi(
    *,
    gtin: str,
    lot: str,
    serial: str,
    expiry: dt.date,
    production: dt.date | None = None,
    symbology: str | None = "]d2",
    human_readable: bool = False,
) -> str:
    """A GS1 element string as a scanner transmits it: (01)(11)(17) first, then (10) and (21), so that
    the only separator needed is the one after the lot. ``human_readable`` gives ``(01)...`` instead."""
    elements = [("01", gtin)]
    if production is not None:
        elements.append(("11", production.strftime("%y%m%d")))
    elements.append(("17", expiry.strftime("%y%m%d")))
    elements += [("10", lot), ("21", serial)]
    encoded = to_element_string(elements, gs=GS, today=expiry)  # validates every field
    if human_readable:
        return "".join(f"({ai}){value}" for ai, value in elements)
    return (symbology or "") + encoded


def make_wristband(rng: random.Random, *, symbology: str | None = None) -> str:
    """A wristband as the default format expects it: ``ZY`` + 10 digits."""
    return f"{symbology or ''}ZY{rng.randrange(10**10):010d}"


@dataclass(frozen=True, slots=True)
class SimLot:
    """One production lot of a catalogue item."""

    lot: str
    production: dt.date
    expiry: dt.date


@dataclass(frozen=True, slots=True)
class SimItem:
    """One physical item with its printed UDI."""

    gtin: str
    lot: str
    serial: str
    expiry: dt.date
    udi_text: str
    production: dt.date | None = None


class ItemFactory:
    """Unique simulated items over a small catalogue: same seed and ``today``, same items, in order.

    Each GTIN has 1-3 lots, produced up to half a year before ``today`` and expiring 1-3 years after it;
    every serial is unique across the factory.
    """

    def __init__(self, seed: int, *, today: dt.date | None = None, catalogue_size: int = 20,
                 company_prefix: str = DEFAULT_COMPANY_PREFIX, symbology: str | None = "]d2") -> None:
        self._rng = random.Random(seed)
        self.today = today or dt.date.today()
        self.symbology = symbology
        gtins: list[str] = []
        while len(gtins) < catalogue_size:
            gtin = make_gtin(self._rng, company_prefix)
            if gtin not in gtins:
                gtins.append(gtin)
        self.catalogue: tuple[str, ...] = tuple(gtins)
        self.lots: dict[str, tuple[SimLot, ...]] = {gtin: self._make_lots() for gtin in gtins}
        self._serials: set[str] = set()

    def _make_lots(self) -> tuple[SimLot, ...]:
        lots = []
        for _ in range(self._rng.randint(1, 3)):
            production = self.today - dt.timedelta(days=self._rng.randrange(0, 180))
            expiry = self.today + dt.timedelta(days=self._rng.randrange(365, 3 * 365 + 1))
            code = f"{production:%y%m}" + "".join(self._rng.choices(_LOT_ALPHABET, k=4))
            lots.append(SimLot(code, production, expiry))
        return tuple(lots)

    def _new_serial(self) -> str:
        while True:
            serial = "".join(self._rng.choices(_SERIAL_ALPHABET, k=12))
            if serial not in self._serials:
                self._serials.add(serial)
                return serial

    def make_item(self, gtin: str | None = None, *, human_readable: bool = False) -> SimItem:
        """A new item of ``gtin`` (or of a random catalogue GTIN) with a serial never issued before."""
        if gtin is None:
            gtin = self._rng.choice(self.catalogue)
        elif gtin not in self.lots:
            raise KeyError(f"GTIN {gtin} is not in this factory's catalogue")
        lot = self._rng.choice(self.lots[gtin])
        serial = self._new_serial()
        text = make_udi(gtin=gtin, lot=lot.lot, serial=serial, expiry=lot.expiry, production=lot.production,
                        symbology=self.symbology, human_readable=human_readable)
        return SimItem(gtin, lot.lot, serial, lot.expiry, text, lot.production)

    def make_items(self, count: int) -> list[SimItem]:
        return [self.make_item() for _ in range(count)]
