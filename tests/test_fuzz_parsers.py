"""Property tests for every parser of outside input: only documented errors escape, valid data is recovered.

The byte-level contracts live in ``hw_sim.fuzz`` (shared with the long-running
fuzz command); this file drives them with hypothesis, adds format-aware
properties, and replays every kept crasher under ``tests/data/crashers/``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from device.config import parse_config
from device.hal.rfid.r2000 import R2000Codec, TagRead, encode_tag_read
from device.udi import Gs1Error, HibcError, parse_gs1, parse_udi, parse_wristband, to_element_string
from gateway.his.ack import AckError, parse_ack
from gateway.his.mllp import MllpDecoder, MllpError
from hw_sim.fuzz import CRASHERS_DIR, DEVICE, SITE, TARGETS, TODAY, crasher_files, known_bug, run_random
from spd_common.toml_config import ConfigError
from spd_common.wire import GENESIS_HASH, Event, WireError, decode_ack, decode_batch, encode_batch, event_hash

_OPTIONAL_MODULES = {"scanner_line": "device.hal.scanner.serial_scanner", "camera_frame": "device.hal.camera.decoders"}
FAST = settings(max_examples=150, deadline=dt.timedelta(seconds=2), suppress_health_check=[HealthCheck.too_slow])


def _with_seeds(name: str) -> st.SearchStrategy[bytes]:
    seeds = TARGETS[name].seeds()
    mutated = st.tuples(st.sampled_from(seeds), st.binary(max_size=16), st.integers(0, 4096)).map(
        lambda t: t[0][: t[2]] + t[1] + t[0][t[2]:])
    return st.one_of(st.binary(max_size=512), mutated)


def _run_allowing_known(name: str, data: bytes) -> None:
    try:
        TARGETS[name].run(data)
    except Exception as exc:
        if known_bug(name, exc) is None:
            raise


# ---------------------------------------------------------------- every target: documented errors only, no hang


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_parser_raises_only_its_documented_error_on_random_bytes(name: str) -> None:
    if name in _OPTIONAL_MODULES:
        pytest.importorskip(_OPTIONAL_MODULES[name])

    @FAST
    @given(data=_with_seeds(name))
    def check(data: bytes) -> None:
        _run_allowing_known(name, data)

    check()


# ---------------------------------------------------------------- barcodes

_LOT = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ0123456789-", min_size=1, max_size=20)


@FAST
@given(lot=_LOT, serial=_LOT, pad=st.sampled_from(["", " ", "\r\n", "\t "]))
def test_valid_gs1_scan_with_surrounding_whitespace_keeps_every_field(lot: str, serial: str, pad: str) -> None:
    text = to_element_string([("01", "09506000134352"), ("17", "270731"), ("10", lot), ("21", serial)])
    udi = parse_gs1(pad + "]d2" + text + pad, today=TODAY)
    assert (udi.gtin, udi.lot, udi.serial, udi.expiry) == ("09506000134352", lot, serial, dt.date(2027, 7, 31))


@FAST
@given(text=st.text(max_size=200))
def test_parse_udi_on_any_text_returns_or_raises_a_udi_error(text: str) -> None:
    try:
        parse_udi(text, today=TODAY)
    except (Gs1Error, HibcError) as err:
        assert err.reason


@FAST
@given(digits=st.text(alphabet="0123456789", min_size=10, max_size=10), pad=st.sampled_from(["", " ", "\r\n"]))
def test_default_wristband_is_read_through_whitespace(digits: str, pad: str) -> None:
    assert parse_wristband(pad + "ZY" + digits + pad).admission == "ZY" + digits


# ---------------------------------------------------------------- RFID frames


def _tag(epc: bytes, antenna: int) -> TagRead:
    return TagRead(epc=epc, antenna=antenna, rssi_dbm=-60, pc=((len(epc) // 2) << 11).to_bytes(2, "big"), freq_idx=3)


_EPC = st.binary(min_size=2, max_size=16).filter(lambda b: len(b) % 2 == 0)


@FAST
@given(garbage=st.binary(max_size=300).map(lambda b: b.replace(b"\xa0", b"")), epc=_EPC,
       antenna=st.integers(1, 4))
def test_tag_frame_after_garbage_without_a_head_byte_is_the_only_frame(garbage: bytes, epc: bytes,
                                                                        antenna: int) -> None:
    tag = _tag(epc, antenna)
    codec = R2000Codec()
    assert codec.feed(garbage + encode_tag_read(tag)) == [tag]
    assert codec.stats.garbage_bytes == len(garbage)


@FAST
@given(garbage=st.binary(max_size=300))
@example(garbage=b"\xa0\xff")  # a head and a length that swallows the real frame: found after resync
def test_tag_frame_after_any_garbage_is_found_by_resync(garbage: bytes) -> None:
    TARGETS["r2000"].run(garbage)


@FAST
@given(epcs=st.lists(_EPC, min_size=1, max_size=5), cuts=st.lists(st.integers(0, 200), max_size=8),
       noise=st.binary(max_size=20).map(lambda b: b.replace(b"\xa0", b"")))
def test_frames_split_anywhere_across_feeds_decode_the_same(epcs: list[bytes], cuts: list[int], noise: bytes) -> None:
    tags = [_tag(epc, 1 + i % 4) for i, epc in enumerate(epcs)]
    stream = b"".join(noise + encode_tag_read(t) for t in tags)
    codec = R2000Codec()
    out, last = [], 0
    for cut in sorted(c % (len(stream) + 1) for c in cuts):
        out += codec.feed(stream[last:cut])
        last = cut
    out += codec.feed(stream[last:])
    assert out == tags


# ---------------------------------------------------------------- MQTT payloads


def _event(seq: int, prev: str) -> Event:
    body = {"gtin": "09506000134352", "serial": f"S{seq}"}
    return Event(DEVICE, seq, 1000 + seq, "consume", body, prev, event_hash(DEVICE, seq, 1000 + seq, "consume", body,
                                                                            prev))


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                 max_size=4), max_leaves=20)


@FAST
@given(bad=_JSON, where=st.integers(0, 3))
def test_one_malformed_event_in_a_batch_keeps_the_valid_ones(bad: Any, where: int) -> None:
    events = [_event(1, GENESIS_HASH)]
    events.append(_event(2, events[0].hash))
    events.append(_event(3, events[1].hash))
    doc = json.loads(encode_batch(SITE, DEVICE, events))
    doc["events"].insert(where, bad)
    batch = decode_batch(f"spd/v1/{SITE}/{DEVICE}/events", json.dumps(doc).encode())
    assert batch.events == events
    assert len(batch.invalid) == 1 and batch.invalid[0].raw == bad


@FAST
@given(doc=st.dictionaries(st.sampled_from(["v", "device", "acked", "rejected", "x"]), _JSON, max_size=5))
def test_decode_ack_of_any_json_object_returns_or_raises_wire_error(doc: dict[str, Any]) -> None:
    try:
        ack = decode_ack(DEVICE, json.dumps(doc).encode())
    except WireError as err:
        assert err.reason
    else:
        assert ack.acked >= 0


# ---------------------------------------------------------------- HIS side

_HL7_TEXT = st.text(alphabet=st.characters(blacklist_characters="\r\n|^~\\&", blacklist_categories=["Cs"]),
                    max_size=30)


@FAST
@given(code=st.sampled_from(["AA", "AE", "AR", "CA", "CE", "CR", "XX", ""]), control=_HL7_TEXT, text=_HL7_TEXT)
def test_parse_ack_reads_msa_or_refuses_with_a_reason(code: str, control: str, text: str) -> None:
    message = f"MSH|^~\\&|HIS|H|SPD|G|20250601||ACK|A1|P|2.5\rMSA|{code}|{control}|{text}\r"
    try:
        ack = parse_ack(message)
    except AckError as err:
        assert err.reason in {"unknown_ack_code", "missing_control_id"}
    else:
        assert (ack.code.value, ack.control_id_echo, ack.text) == (code, control.strip(), text)


@FAST
@given(garbage=st.binary(max_size=200).map(lambda b: b.replace(b"\x0b", b"")),
       payload=st.binary(min_size=1, max_size=50).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b"")),
       step=st.integers(1, 9))
def test_mllp_block_after_garbage_is_recovered_in_any_chunking(garbage: bytes, payload: bytes, step: int) -> None:
    stream = garbage + b"\x0b" + payload + b"\x1c\x0d"
    decoder = MllpDecoder(max_frame_bytes=64)
    out: list[bytes] = []
    for i in range(0, len(stream), step):
        try:
            out += decoder.feed(stream[i:i + step])
        except MllpError as err:
            assert err.reason == "frame_too_large"
    assert out == [payload]


# ---------------------------------------------------------------- configuration

_CONFIG_VALUE = st.one_of(st.text(max_size=12), st.integers(-5, 70000), st.floats(allow_nan=False), st.booleans(),
                          st.lists(st.integers(), max_size=3))
_KEYS = ["id", "site", "kind", "data_dir", "host", "port", "keepalive_s", "batch_size", "window", "resend_after_s",
         "state_every_s", "retention_days", "operator", "dept", "ca_file", "cert_file", "key_file", "typo"]
_SECTION = st.dictionaries(st.sampled_from(_KEYS), _CONFIG_VALUE, max_size=6)
_DOC = st.dictionaries(st.sampled_from(["device", "broker", "sync", "log", "handheld", "nonsense"]),
                       st.one_of(_SECTION, _CONFIG_VALUE), max_size=5)


@FAST
@given(doc=_DOC, device=_SECTION)
def test_config_of_random_tables_is_parsed_or_refused_with_config_error(doc: dict[str, Any],
                                                                       device: dict[str, Any]) -> None:
    doc = {**doc, "device": {"id": "cab-01", "site": "site-1", **device}} if "device" not in doc else doc
    try:
        cfg = parse_config(doc, source="t.toml", base_dir=Path("/etc/spd"))
    except ConfigError as err:
        assert "t.toml" in str(err)
    else:
        assert cfg.device_id == doc["device"]["id"]


# ---------------------------------------------------------------- the enrolment endpoint, live


def test_hostile_requests_against_the_live_enrolment_server_get_a_clear_answer(tmp_path: Path) -> None:
    """A short seeded run of the ``enrol_request`` target (``SPD_FUZZ_ENROL_INPUTS`` inputs, 300 by default)."""
    inputs = int(os.environ.get("SPD_FUZZ_ENROL_INPUTS", "300"))
    report = run_random(TARGETS["enrol_request"], inputs, seed=1, strict=True, out_dir=tmp_path)
    assert report.crashers == [], [(tmp_path / name).read_bytes()[:200] for name in report.crashers]


# ---------------------------------------------------------------- kept crashers

_CRASHERS = [(name, path) for name in sorted(TARGETS) for path in crasher_files(name)]
_REPORTED: dict[str, str] = {}  # crashers of bugs not fixed yet: file name -> what is wrong


def _crasher_param(name: str, path: Path) -> Any:
    reason = _REPORTED.get(path.name)
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(name, path, id=f"{name}/{path.name}", marks=marks)


@pytest.mark.parametrize(("name", "path"), [_crasher_param(n, p) for n, p in _CRASHERS])
def test_kept_crasher_no_longer_crashes(name: str, path: Path) -> None:
    if name in _OPTIONAL_MODULES:
        pytest.importorskip(_OPTIONAL_MODULES[name])
    TARGETS[name].run(path.read_bytes())


def test_every_crasher_folder_names_a_target() -> None:
    folders = {p.name for p in CRASHERS_DIR.iterdir() if p.is_dir()} if CRASHERS_DIR.is_dir() else set()
    assert folders <= set(TARGETS)
