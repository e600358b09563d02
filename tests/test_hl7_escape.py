"""One HL7 escaping routine on the Python side (gateway.hl7text); the compiled bridge's C copy gives the same bytes."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from gateway.bridge import _twin, expand
from gateway.bridge.types import BridgeConfig, Catalog, CatalogItem
from gateway.his.ack import build_ack, parse_ack, unescape
from gateway.hl7text import EncodingCharacters, escape, escape_utf8

CATHETER = "06900000000021"
CATALOG = Catalog([CatalogItem(CATHETER, "IT-CATH", "C320002", "导管", "5F", "某厂", 9_905, True, False)])
CONFIG = BridgeConfig(sending_facility="SPD", receiving_facility="HOSP")
TS = 1_735_700_000_000
# every ASCII character (controls and delimiters included) and some text beyond it
VALUES = [f"a{chr(c)}b" for c in range(128)] + ["骨科|二病区", "\\E\\", "~&^|\\\r\n\t\x7f", "ünïcödé"]


def _compiled() -> ModuleType | None:
    try:
        return importlib.import_module("gateway.bridge._cbridge")
    except ImportError:
        return None


def _operator_field(bridge: ModuleType, operator: str) -> bytes:
    event = ("CAB-01", 1, TS, "ZY0001", f"(01){CATHETER}(10)L1", operator, "心内科")
    [line] = expand([event], CATALOG, bridge.charge_compact([event], CATALOG, bridge.ConsumedSet(), CONFIG)).lines
    message = line.message.encode("utf-8")
    pv1_end = message.index(b"\rFT1|")
    ft1 = message[pv1_end + 1:].split(b"\r")[0]
    return ft1.rsplit(b"|", 1)[1]


def test_escape_writes_delimiters_and_controls_as_escape_sequences() -> None:
    assert escape("A|B^C&D~E\\F") == "A\\F\\B\\S\\C\\T\\D\\R\\E\\E\\F"
    assert escape("x\r\ny\t\x00\x7f") == "x\\X0D\\\\X0A\\y\\X09\\\\X00\\\\X7F\\"
    assert escape("骨科 ü") == "骨科 ü"
    assert escape_utf8(b"\xff|") == b"\xff\\F\\"  # undecodable bytes pass through


def test_escape_honours_the_messages_own_delimiters_and_unescape_reverses_it() -> None:
    chars = EncodingCharacters(field="#", component=":", repetition="*", escape="/", subcomponent="%", truncation="!")
    for value in VALUES:
        escaped = escape(value, chars)
        assert not set(escaped) & set("#:*%!\r\n")
        assert unescape(escaped, chars) == value


def test_an_ack_carries_its_text_escaped_once() -> None:
    message = "MSH|^~\\&|SPD|H1|HIS|HOSP|20250101||DFT^P03|C1|P|2.5\r"
    ack = parse_ack(build_ack(message, "AE", "bad|value\tlot", control_id="A1"))
    assert ack.text == "bad|value\tlot"


@pytest.mark.parametrize("bridge", [
    pytest.param(_twin, id="twin"),
    pytest.param(_compiled(), id="compiled",
                 marks=pytest.mark.skipif(_compiled() is None, reason="compiled bridge not built")),
])
def test_both_bridges_escape_exactly_like_escape_utf8(bridge: ModuleType) -> None:
    for value in VALUES:
        assert _operator_field(bridge, value) == escape_utf8(value.encode("utf-8")), repr(value)
