"""Serial line scanners against the simulated scanner on a pty: suffixes, GS styles, symbology ids, faults."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator

import pytest
import serial

from device.hal.scanner import (
    LineDecoder,
    LineFramer,
    RejectReason,
    ScanLine,
    ScannerState,
    ScanRejected,
    SerialScanner,
    Suffix,
    Symbology,
    split_symbology_id,
)
from device.udi import Udi, parse_udi
from hw_sim.scanner import GsStyle, SerialNoise, SimSerialScanner
from hw_sim.udi_gen import make_udi

from conftest import wait_for

TODAY = dt.date(2025, 6, 1)
UDI = make_udi(gtin="06954321000017", lot="2501AB12", serial="SER0001", expiry=dt.date(2027, 12, 31),
               production=dt.date(2025, 1, 15))
UDI_2 = make_udi(gtin="06954321000024", lot="2502CD34", serial="SER0002", expiry=dt.date(2028, 3, 31))
WRISTBAND = "]C0ZY0012345678"


@pytest.fixture
def sim() -> Iterator[SimSerialScanner]:
    with SimSerialScanner(seed=3) as s:
        yield s


def started(sim: SimSerialScanner, **options: object) -> SerialScanner:
    scanner = SerialScanner(sim.url, line_timeout_s=0.2, backoff_s=(0.02, 0.1), **options)  # type: ignore[arg-type]
    scanner.start()
    wait_for(lambda: scanner.state is ScannerState.ONLINE)
    return scanner


def texts(scanner: SerialScanner, n: int) -> list[str]:
    out = []
    for _ in range(n):
        line = scanner.read(2.0)
        assert line is not None, f"only {len(out)} of {n} scans arrived"
        out.append(line.text)
    return out


@pytest.mark.parametrize("suffix", list(Suffix))
def test_each_suffix_frames_scans_into_lines(suffix: Suffix) -> None:
    with SimSerialScanner(suffix=suffix.value) as sim:
        scanner = started(sim, suffix=suffix)
        try:
            sim.scan(UDI)
            sim.scan(WRISTBAND)
            first = scanner.read(2.0)
            assert first is not None
            assert first.text == UDI
            assert first.symbology is Symbology.GS1_DATAMATRIX
            assert first.raw == UDI.encode()  # framing (STX, suffix) removed
            assert texts(scanner, 1) == [WRISTBAND]
            assert scanner.stats.scans == 2 and scanner.stats.rejected == {}
        finally:
            scanner.stop()


def test_scanner_sending_crlf_to_a_cr_configured_driver_loses_nothing() -> None:
    with SimSerialScanner(suffix=b"\r\n") as sim:
        scanner = started(sim, suffix=Suffix.CR)
        try:
            sim.scan(UDI)
            sim.scan(UDI_2)
            assert texts(scanner, 2) == [UDI, UDI_2]
            assert scanner.stats.rejected == {}
        finally:
            scanner.stop()


@pytest.mark.parametrize("style", list(GsStyle))
def test_every_gs_style_arrives_as_the_gs_character_and_parses(style: GsStyle) -> None:
    with SimSerialScanner(gs_style=style) as sim:
        scanner = started(sim)
        try:
            sim.scan(UDI)
            line = scanner.read(2.0)
        finally:
            scanner.stop()
    assert line is not None
    if style is not GsStyle.RAW:
        assert style.value.encode() in line.raw
    assert line.text == UDI and "\x1d" in line.text
    udi = parse_udi(line.text, today=TODAY)
    assert isinstance(udi, Udi)
    assert (udi.gtin, udi.lot, udi.serial, udi.expiry) == ("06954321000017", "2501AB12", "SER0001",
                                                          dt.date(2027, 12, 31))


def test_custom_gs_substitute_is_configurable(sim: SimSerialScanner) -> None:
    scanner = started(sim, gs_substitutes=("{FNC1}",))
    try:
        sim.write_raw(UDI.replace("\x1d", "{FNC1}").encode() + b"\r")
        sim.write_raw(UDI.replace("\x1d", "<GS>").encode() + b"\r")
        assert texts(scanner, 2) == [UDI, UDI.replace("\x1d", "<GS>")]
    finally:
        scanner.stop()


@pytest.mark.parametrize(("code", "symbology"), [
    ("]C1" + UDI[3:], Symbology.GS1_128),
    (UDI, Symbology.GS1_DATAMATRIX),
    ("]Q3" + UDI[3:], Symbology.GS1_QR),
    ("]E06954321000017", Symbology.EAN13),
    ("]E469543210", Symbology.EAN8),
    ("]A0ZY0012345678", Symbology.CODE39),
    ("]I012345678901231", Symbology.ITF),
    ("]e00106954321000017", Symbology.GS1_DATABAR),
    ("]C0ZY0012345678", Symbology.CODE128),
    ("]Q1https://example.org/x", Symbology.QR),
    ("]X0ABC", Symbology.OTHER),
])
def test_symbology_prefix_is_identified_and_kept(sim: SimSerialScanner, code: str, symbology: Symbology) -> None:
    scanner = started(sim)
    try:
        sim.scan(code)
        line = scanner.read(2.0)
    finally:
        scanner.stop()
    assert line is not None
    assert (line.text, line.symbology, line.aim_id, line.data) == (code, symbology, code[:3], code[3:])


def test_aim_identifier_table() -> None:
    assert split_symbology_id("]d5rest") == (Symbology.GS1_DATAMATRIX, "]d5", "rest")
    assert split_symbology_id("]d1rest") == (Symbology.DATAMATRIX, "]d1", "rest")
    assert split_symbology_id("]Q4rest") == (Symbology.GS1_QR, "]Q4", "rest")
    assert split_symbology_id("]E3rest") == (Symbology.EAN13, "]E3", "rest")
    assert split_symbology_id("]A4rest") == (Symbology.CODE39, "]A4", "rest")
    assert split_symbology_id("ZY0012345678") == (Symbology.NONE, "", "ZY0012345678")
    assert split_symbology_id("]") == (Symbology.NONE, "", "]")
    assert [s for s in Symbology if s.is_gs1] == [Symbology.GS1_128, Symbology.GS1_DATAMATRIX, Symbology.GS1_QR,
                                                  Symbology.GS1_DATABAR]


def test_without_symbology_ids_lines_pass_with_symbology_none() -> None:
    with SimSerialScanner(symbology_ids=False) as sim:
        scanner = started(sim, symbology_ids=False)
        try:
            sim.scan(UDI)
            line = scanner.read(2.0)
        finally:
            scanner.stop()
    assert line is not None
    assert (line.text, line.symbology) == (UDI[3:], Symbology.NONE)
    assert isinstance(parse_udi(line.text, today=TODAY), Udi)


def test_line_without_required_symbology_id_is_refused_and_reading_goes_on(sim: SimSerialScanner) -> None:
    scanner = started(sim)
    try:
        sim.write_raw(b"ZY0012345678\r")
        sim.scan(UDI)
        assert texts(scanner, 1) == [UDI]
        assert scanner.stats.rejected == {RejectReason.MISSING_SYMBOLOGY_ID: 1}
    finally:
        scanner.stop()


def test_split_writes_make_one_scan(sim: SimSerialScanner) -> None:
    scanner = started(sim)
    try:
        sim.scan(UDI, chunks=6, pause_s=0.02)
        sim.scan(UDI_2, chunks=len(sim.encode(UDI_2)), pause_s=0.0)
        assert texts(scanner, 2) == [UDI, UDI_2]
        assert scanner.stats.rejected == {}
    finally:
        scanner.stop()


def test_garbage_between_scans_is_counted_and_skipped(sim: SimSerialScanner) -> None:
    scanner = started(sim)
    try:
        sim.scan(UDI)
        sim.write_raw(b"\xff\xfe\x80\r")  # not UTF-8
        sim.write_raw(b"\x00\x07]d2\x01\r")  # control characters
        sim.write_raw(b"\x13\x11noise")  # no suffix at all
        time.sleep(0.4)
        sim.scan(UDI_2)
        assert texts(scanner, 2) == [UDI, UDI_2]
        assert scanner.read(0.1) is None
        assert scanner.stats.rejected == {RejectReason.NOT_UTF8: 1, RejectReason.CONTROL_CHARACTER: 1,
                                          RejectReason.UNTERMINATED: 1}
        assert scanner.stats.scans == 2
    finally:
        scanner.stop()


def test_seeded_line_noise_loses_some_scans_but_never_alters_one() -> None:
    noise = SerialNoise(garbage_rate=0.3, split_rate=0.5, drop_suffix_rate=0.0)
    codes = [make_udi(gtin="06954321000017", lot="L1", serial=f"S{i:04d}", expiry=dt.date(2027, 1, 31))
             for i in range(12)]
    with SimSerialScanner(noise=noise, seed=11) as sim:
        scanner = started(sim)
        try:
            for code in codes:
                sim.scan(code)
                time.sleep(0.01)
            time.sleep(0.3)
            got = list(scanner.scans(idle_timeout_s=0.3))
        finally:
            scanner.stop()
    assert sim.stats.garbage_bursts > 0 and sim.stats.split_scans > 0
    # a scan glued to line noise is refused whole (the nurse hears no beep and scans again), never altered
    delivered = [line.text for line in got]
    assert delivered == [code for code in codes if code in delivered]
    assert len(codes) - sim.stats.garbage_bursts <= len(delivered) < len(codes)
    assert scanner.stats.rejected_total >= len(codes) - len(delivered)


def test_lost_suffix_never_merges_two_scans_into_one(sim: SimSerialScanner) -> None:
    scanner = started(sim)
    try:
        sim.scan(UDI, drop_suffix=True)
        sim.scan(UDI_2)  # right after: the two run together
        time.sleep(0.1)
        sim.scan(UDI, drop_suffix=True)
        time.sleep(0.4)  # longer than line_timeout_s: the cut-off scan is dropped on its own
        sim.scan(UDI_2)
        assert texts(scanner, 1) == [UDI_2]
        assert scanner.read(0.2) is None
        assert scanner.stats.rejected == {RejectReason.EMBEDDED_SYMBOLOGY_ID: 1, RejectReason.UNTERMINATED: 1}
    finally:
        scanner.stop()


def test_overlong_line_is_dropped_up_to_its_suffix(sim: SimSerialScanner) -> None:
    scanner = started(sim, max_line=64)
    try:
        sim.write_raw(b"]C0" + b"A" * 50)
        sim.write_raw(b"B" * 150 + b"\r")
        sim.scan(UDI)
        assert texts(scanner, 1) == [UDI]
        assert scanner.stats.rejected == {RejectReason.OVERLONG: 1}
    finally:
        scanner.stop()


def test_unplug_then_replug_reconnects_and_keeps_scanning(sim: SimSerialScanner) -> None:
    states: list[ScannerState] = []
    scanner = SerialScanner(sim.url, line_timeout_s=0.2, backoff_s=(0.02, 0.1))
    scanner.when_state_changed = states.append
    scanner.start()
    try:
        wait_for(lambda: scanner.state is ScannerState.ONLINE)
        sim.scan(UDI)
        assert texts(scanner, 1) == [UDI]
        sim.write_raw(b"]d2010695")  # a scan cut off by the unplug
        time.sleep(0.05)
        sim.unplug()
        wait_for(lambda: scanner.state is ScannerState.OFFLINE)
        time.sleep(0.2)  # several reopen attempts fail meanwhile
        sim.replug()
        wait_for(lambda: scanner.state is ScannerState.ONLINE)
        sim.scan(UDI_2)
        assert texts(scanner, 1) == [UDI_2]
        assert (scanner.stats.disconnects, scanner.stats.reconnects) == (1, 1)
        assert scanner.stats.rejected == {RejectReason.UNTERMINATED: 1}
    finally:
        scanner.stop()
    assert states == [ScannerState.OFFLINE, ScannerState.ONLINE, ScannerState.OFFLINE, ScannerState.ONLINE,
                      ScannerState.STOPPED]


def test_scanner_absent_at_start_comes_online_when_plugged(sim: SimSerialScanner) -> None:
    sim.unplug()
    scanner = SerialScanner(sim.url, backoff_s=(0.02, 0.05))
    scanner.start()
    try:
        time.sleep(0.15)
        assert scanner.state is ScannerState.OFFLINE
        sim.replug()
        wait_for(lambda: scanner.state is ScannerState.ONLINE)
        sim.scan(UDI)
        assert texts(scanner, 1) == [UDI]
    finally:
        scanner.stop()


def test_failing_callback_is_logged_and_reader_goes_on(sim: SimSerialScanner,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    got: list[ScanLine] = []
    done = threading.Event()

    def on_scan(line: ScanLine) -> None:
        if not got:
            got.append(line)
            raise RuntimeError("handler bug")
        got.append(line)
        done.set()

    scanner = started(sim, on_scan=on_scan)
    try:
        sim.scan(UDI)
        sim.scan(UDI_2)
        assert done.wait(2.0)
    finally:
        scanner.stop()
    assert [line.text for line in got] == [UDI, UDI_2]
    assert any("on_scan callback failed" in r.getMessage() and r.exc_info for r in caplog.records)


def test_loop_url_reads_what_is_written_to_the_port() -> None:
    port = serial.serial_for_url("loop://", timeout=0.05)
    scanner = SerialScanner("loop://", serial_factory=lambda url, **kw: port)
    scanner.start()
    try:
        port.write(UDI.encode() + b"\r")
        assert texts(scanner, 1) == [UDI]
    finally:
        scanner.stop()


def test_framer_golden_bytes() -> None:
    framer = LineFramer(b"\r\n", max_line=16, line_timeout_s=1.0)
    assert framer.feed(b"]C0AB", 0.0) == []
    assert framer.feed(b"C\r", 0.1) == []
    assert framer.feed(b"\n]C0D\r\n\r\n", 0.2) == [b"]C0ABC", b"]C0D", b""]
    assert framer.feed(b"x" * 20, 0.3) == [RejectReason.OVERLONG]
    assert framer.feed(b"y\r", 0.4) == []
    assert framer.feed(b"\n]C0E\r\n", 0.5) == [b"]C0E"]
    assert framer.feed(b"]C0F", 0.6) == []
    assert framer.feed(b"", 1.7) == [RejectReason.UNTERMINATED]


def test_line_decoder_reasons() -> None:
    decoder = LineDecoder(max_line=20)
    with pytest.raises(ScanRejected) as err:
        decoder.decode_bytes(b"]C0" + b"9" * 30)
    assert err.value.reason is RejectReason.OVERLONG
    with pytest.raises(ScanRejected) as err:
        decoder.decode_text("]C0AB\x85")
    assert err.value.reason is RejectReason.CONTROL_CHARACTER
    with pytest.raises(ScanRejected) as err:
        decoder.decode_text("<GS>")
    assert err.value.reason is RejectReason.EMPTY
    line = decoder.decode_text("]C0A^]B~d029C")
    assert (line.text, line.symbology, line.raw) == ("]C0A\x1dB\x1dC", Symbology.CODE128, b"]C0A\x1dB\x1dC")
