"""What the cabinet knows about items: the GTINs of the hospital's catalogue and each labelled item's lot and expiry.

Both come as JSON files pushed with the configuration (``catalog_file``:
``{"gtins": ["0695...", ...]}``; ``items_file``: ``{"items": [{"gtin": ...,
"serial": ..., "lot": ..., "expiry": "YYYY-MM-DD"}]}``) and grow with every
UDI the cabinet's scanner reads. Without a catalogue file every decodable
GTIN is accepted.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.udi.gs1 import Udi
from spd_common.gtin import is_valid_gtin

ItemKey = tuple[str, str]


class CatalogError(ValueError):
    """A catalogue or item file that cannot be used; ``reason`` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ItemFacts:
    gtin: str
    serial: str
    lot: str | None = None
    expiry: dt.date | None = None


class ItemCatalog:
    """Thread-safe: the agent loop reads it, scanner callbacks teach it."""

    def __init__(self, *, gtins: set[str] | None = None, items: list[ItemFacts] | None = None) -> None:
        self._gtins = frozenset(gtins) if gtins is not None else None
        self._items: dict[ItemKey, ItemFacts] = {(i.gtin, i.serial): i for i in items or []}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, catalog_file: Path | None, items_file: Path | None) -> ItemCatalog:
        gtins = _load_gtins(catalog_file) if catalog_file is not None else None
        items = _load_items(items_file) if items_file is not None else []
        return cls(gtins=gtins, items=items)

    def knows_gtin(self, gtin: str) -> bool:
        return self._gtins is None or gtin in self._gtins

    def facts(self, key: ItemKey) -> ItemFacts | None:
        with self._lock:
            return self._items.get(key)

    def learn(self, udi: Udi) -> None:
        """Remember lot and expiry from a scanned UDI."""
        if udi.gtin is None or udi.serial is None:
            return
        with self._lock:
            self._items[(udi.gtin, udi.serial)] = ItemFacts(udi.gtin, udi.serial, udi.lot, udi.expiry)

    def expired(self, keys: list[ItemKey], today: dt.date) -> list[ItemFacts]:
        """Items among ``keys`` whose known expiry is before ``today``."""
        with self._lock:
            facts = [self._items.get(k) for k in keys]
        return [f for f in facts if f is not None and f.expiry is not None and f.expiry < today]


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogError("missing_file", f"{path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CatalogError("bad_file", f"{path}: {err}") from None


def _load_gtins(path: Path) -> set[str]:
    doc = _read(path)
    raw = doc.get("gtins") if isinstance(doc, dict) else None
    if not isinstance(raw, list):
        raise CatalogError("bad_file", f"{path}: expected {{\"gtins\": [...]}}")
    out = set()
    for g in raw:
        if not isinstance(g, str) or not is_valid_gtin(g):
            raise CatalogError("bad_gtin", f"{path}: {g!r} is not a valid GTIN")
        out.add(g.zfill(14))
    return out


def _load_items(path: Path) -> list[ItemFacts]:
    doc = _read(path)
    raw = doc.get("items") if isinstance(doc, dict) else None
    if not isinstance(raw, list):
        raise CatalogError("bad_file", f"{path}: expected {{\"items\": [...]}}")
    out = []
    for i, r in enumerate(raw):
        if not isinstance(r, dict) or not isinstance(r.get("gtin"), str) or not isinstance(r.get("serial"), str):
            raise CatalogError("bad_item", f"{path}: items[{i}] needs string gtin and serial")
        expiry = None
        if r.get("expiry") is not None:
            try:
                expiry = dt.date.fromisoformat(str(r["expiry"]))
            except ValueError:
                raise CatalogError("bad_item", f"{path}: items[{i}].expiry is not YYYY-MM-DD") from None
        lot = r.get("lot")
        out.append(ItemFacts(r["gtin"], r["serial"], lot if isinstance(lot, str) else None, expiry))
    return out
