"""The simulator's UDI generator: valid GTINs, real element strings, unique items and default-format wristbands."""

from __future__ import annotations

import datetime as dt
import random

import biip

from device.udi import GS, parse_gs1, parse_wristband
from hw_sim.udi_gen import ItemFactory, SimItem, make_gtin, make_udi, make_wristband
from spd_common.gtin import is_valid_gtin

TODAY = dt.date(2024, 6, 1)


def test_make_gtin_is_valid_and_seeded() -> None:
    gtins = [make_gtin(random.Random(7)) for _ in range(2)]
    assert gtins[0] == gtins[1]
    rng = random.Random(1)
    for _ in range(200):
        gtin = make_gtin(rng, company_prefix="6901234")
        assert len(gtin) == 14 and gtin.startswith("06901234") and is_valid_gtin(gtin)


def test_make_udi_puts_the_only_separator_after_the_lot() -> None:
    text = make_udi(gtin="09506000134352", lot="LOT1", serial="SN1", expiry=dt.date(2026, 12, 31),
                    production=dt.date(2024, 1, 15))
    assert text == "]d2" + "0109506000134352" "11240115" "17261231" "10LOT1" + GS + "21SN1"
    udi = parse_gs1(text, today=TODAY)
    assert (udi.gtin, udi.lot, udi.serial, udi.expiry, udi.production) == (
        "09506000134352", "LOT1", "SN1", dt.date(2026, 12, 31), dt.date(2024, 1, 15))


def test_make_udi_human_readable_and_other_symbologies() -> None:
    def udi(symbology: str | None = "]d2", human_readable: bool = False) -> str:
        return make_udi(gtin="09506000134352", lot="L", serial="S", expiry=dt.date(2026, 12, 31),
                        symbology=symbology, human_readable=human_readable)

    assert udi(human_readable=True) == "(01)09506000134352(17)261231(10)L(21)S"
    assert udi("]C1") == "]C1010950600013435217261231" "10L" + GS + "21S"
    assert udi(None) == "010950600013435217261231" "10L" + GS + "21S"


def test_item_factory_is_deterministic_and_realistic() -> None:
    a = ItemFactory(42, today=TODAY).make_items(50)
    b = ItemFactory(42, today=TODAY).make_items(50)
    assert a == b
    factory = ItemFactory(43, today=TODAY)
    assert len(factory.catalogue) == 20 == len(set(factory.catalogue))
    items = factory.make_items(2000)
    assert len({item.serial for item in items}) == 2000
    assert {item.gtin for item in items} <= set(factory.catalogue)
    for item in items:
        assert TODAY + dt.timedelta(days=365) <= item.expiry <= TODAY + dt.timedelta(days=3 * 365)
        assert item.lot in {lot.lot for lot in factory.lots[item.gtin]}
        udi = parse_gs1(item.udi_text, today=TODAY)
        assert (udi.gtin, udi.lot, udi.serial, udi.expiry) == (item.gtin, item.lot, item.serial, item.expiry)
    for lots in factory.lots.values():
        assert 1 <= len(lots) <= 3


def test_item_factory_codes_agree_with_biip() -> None:
    for item in ItemFactory(5, today=dt.date.today()).make_items(50):
        message = biip.parse(item.udi_text).gs1_message
        assert message is not None
        assert [(es.ai.ai, es.value) for es in message.element_strings][-2:] == [("10", item.lot),
                                                                                ("21", item.serial)]


def test_item_for_a_chosen_gtin() -> None:
    factory = ItemFactory(1, today=TODAY)
    gtin = factory.catalogue[3]
    item = factory.make_item(gtin, human_readable=True)
    assert isinstance(item, SimItem)
    assert item.gtin == gtin and item.udi_text.startswith(f"(01){gtin}(11)")


def test_make_wristband_matches_default_format() -> None:
    rng = random.Random(3)
    for _ in range(100):
        band = make_wristband(rng)
        assert parse_wristband(band).admission == band
    assert parse_wristband(make_wristband(rng, symbology="]C0")).admission.startswith("ZY")
