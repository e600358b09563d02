"""Fuzz targets for every parser of outside input, and a long-running fuzz command (atheris, or a random loop).

Each target takes raw bytes, feeds them to one parser and enforces its contract:
only the parser's documented error type escapes, and the format's recovery
properties hold (a valid frame after garbage is found, splitting a stream into
chunks does not change what is decoded). Anything else propagates and counts
as a crash.

    python -m hw_sim.fuzz all --inputs 1000000
    python -m hw_sim.fuzz r2000 --inputs 1000000 --engine random --seed 7
    python -m hw_sim.fuzz ingest --inputs 1000000 --engine random --seed 1   # batches, end to end

Crashing inputs are kept under ``tests/data/crashers/<target>/``;
``tests/test_fuzz_parsers.py`` replays every one of them.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import logging
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spd_common.logsetup import setup_logging

log = logging.getLogger(__name__)

TODAY = dt.date(2025, 6, 1)
SITE = "site-1"
DEVICE = "cab-01"
MLLP_LIMIT = 64
CRASHERS_DIR = Path(__file__).resolve().parent.parent / "tests" / "data" / "crashers"


class FuzzPropertyError(AssertionError):
    """A parser returned without error but broke one of its format's properties."""


@dataclass(frozen=True)
class FuzzTarget:
    """One parser under fuzzing: ``run(data)`` returns normally or raises a crash."""

    name: str
    run: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]
    doc: str


@dataclass(frozen=True)
class KnownBug:
    """A reported parser fault; the fuzz command counts it and carries on (unless ``--strict``)."""

    target: str
    exc_type: type[BaseException]
    message: str  # a substring of ``str(exc)``; empty matches any
    ref: str

    def matches(self, target: str, exc: BaseException) -> bool:
        return target == self.target and type(exc) is self.exc_type and self.message in str(exc)


def _text(data: bytes) -> str:
    """Bytes as a scanner driver would hand them over (undecodable bytes become U+FFFD)."""
    return data.decode("utf-8", "replace")


# ---------------------------------------------------------------- barcodes


def _run_udi(data: bytes) -> None:
    from device.udi import Gs1Error, HibcError, parse_udi

    try:
        parse_udi(_text(data), today=TODAY)
    except (Gs1Error, HibcError) as err:
        _need_reason(err)


def _run_gs1(data: bytes) -> None:
    from device.udi import Gs1Error, Gs1Reason, parse_gs1

    try:
        udi = parse_gs1(_text(data), today=TODAY)
    except Gs1Error as err:
        if not isinstance(err.reason, Gs1Reason):
            raise FuzzPropertyError(f"reason {err.reason!r} is not a Gs1Reason") from err
        return
    if not udi.elements:
        raise FuzzPropertyError("a GS1 parse returned no elements")


def _run_hibc(data: bytes) -> None:
    from device.udi import HibcError, HibcReason, parse_hibc

    try:
        parse_hibc(_text(data), today=TODAY)
    except HibcError as err:
        if not isinstance(err.reason, HibcReason):
            raise FuzzPropertyError(f"reason {err.reason!r} is not a HibcReason") from err


def _run_wristband(data: bytes) -> None:
    from device.udi import CheckRule, WristbandError, WristbandFormat, WristbandReason, parse_wristband

    text = _text(data)
    formats = (WristbandFormat.default(),
               WristbandFormat(pattern=r"(?P<admission>[0-9]{6,12})", strip_prefixes=("P:",), check=CheckRule.LUHN))
    for fmt in formats:
        try:
            band = parse_wristband(text, fmt)
        except WristbandError as err:
            if not isinstance(err.reason, WristbandReason):
                raise FuzzPropertyError(f"reason {err.reason!r} is not a WristbandReason") from err
            continue
        if band.raw != text or band.admission not in text.upper():
            raise FuzzPropertyError(f"admission {band.admission!r} does not come from the scan")


def _need_reason(err: BaseException) -> None:
    if not getattr(err, "reason", None):
        raise FuzzPropertyError(f"{type(err).__name__} without a reason") from err


def _barcode_seeds() -> list[bytes]:
    return [
        b"]d2010950600013435217250731" b"10ABC123\x1d21SN0001",
        b"(01)09506000134352(17)250731(10)ABC123(21)SN0001",
        b"+A99912345/$$52001510X3/16D20111212/S77DEFG457",
        b"+H123ABCDEF1234/$$0909A1234Z",
        b"ZY0001234567",
        b"P:79927398713",
    ]


# ---------------------------------------------------------------- RFID reader


def _r2000_frame() -> bytes:
    from device.hal.rfid.r2000 import TagRead, encode_tag_read

    epc = bytes.fromhex("E28011700000020A1B2C3D4E")
    return encode_tag_read(TagRead(epc=epc, antenna=2, rssi_dbm=-60, pc=b"\x30\x00", freq_idx=5))


def _run_r2000(data: bytes) -> None:
    from device.hal.rfid.r2000 import HEAD, MIN_LEN, R2000Codec

    whole = R2000Codec().feed(data)
    cut = data[0] % (len(data) + 1) if data else 0
    split_codec = R2000Codec()
    split = split_codec.feed(data[:cut]) + split_codec.feed(data[cut:])
    if split != whole:
        raise FuzzPropertyError(f"feeding in two chunks (cut at {cut}) decodes differently")
    # resynchronisation: a valid frame after garbage is found, unless a checksum-valid
    # packet that starts inside the garbage spans it (the protocol cannot tell those apart)
    frame = _r2000_frame()
    stream = data + frame + bytes(258)
    frames = R2000Codec().feed(stream)
    expected = R2000Codec().feed(frame)[0]
    if expected in frames:
        return
    for i in range(len(data)):
        if stream[i] != HEAD or stream[i + 1] < MIN_LEN:
            continue
        end = i + stream[i + 1] + 2
        if end > len(data) and sum(stream[i:end]) & 0xFF == 0:
            return
    raise FuzzPropertyError("a valid frame after garbage was not found")


def _r2000_seeds() -> list[bytes]:
    from device.hal.rfid.r2000 import encode_get_firmware_version

    return [_r2000_frame(), b"\x00\xa0\x05" + _r2000_frame(), encode_get_firmware_version()]


# ---------------------------------------------------------------- MQTT payloads


def _wire_topic(channel: str) -> str:
    return f"spd/v1/{SITE}/{DEVICE}/{channel}"


def _run_wire_batch(data: bytes) -> None:
    from spd_common.wire import WireError, decode_batch

    try:
        batch = decode_batch(_wire_topic("events"), data)
    except WireError as err:
        _need_reason(err)
        return
    for ev in batch.events:
        if not ev.hash_ok() or ev.device != DEVICE:
            raise FuzzPropertyError(f"event {ev.seq} accepted with a bad hash or identity")


def _run_wire_ack(data: bytes) -> None:
    from spd_common.wire import WireError, decode_ack

    try:
        ack = decode_ack(DEVICE, data)
    except WireError as err:
        _need_reason(err)
        return
    if ack.acked < 0:
        raise FuzzPropertyError("negative ack accepted")


def _run_wire_state(data: bytes) -> None:
    from spd_common.wire import WireError, decode_state

    try:
        decode_state(_wire_topic("state"), data)
    except WireError as err:
        _need_reason(err)


def _wire_seeds() -> list[bytes]:
    from spd_common.wire import GENESIS_HASH, Ack, Event, Rejection, encode_ack, encode_batch, event_hash

    body = {"gtin": "09506000134352", "serial": "SN1"}
    digest = event_hash(DEVICE, 1, 1000, "scan", body, GENESIS_HASH)
    ev = Event(DEVICE, 1, 1000, "scan", body, GENESIS_HASH, digest)
    state = {"v": 1, "device": DEVICE, "status": "online", "backlog": 3, "version": "1", "ts": 5, "extra": {}}
    return [encode_batch(SITE, DEVICE, [ev]), encode_ack(Ack(DEVICE, 4, (Rejection(2, "bad_hash"),))),
            json.dumps(state).encode()]


# ---------------------------------------------------------------- HIS side


def _run_hl7_ack(data: bytes) -> None:
    from gateway.his.ack import AckError, parse_ack

    try:
        parse_ack(_text(data))
    except AckError as err:
        _need_reason(err)


def _hl7_seeds() -> list[bytes]:
    return [
        b"MSH|^~\\&|HIS|H|SPD|G|20250601120000||ACK^P03|A1|P|2.5\rMSA|AA|MSG0001|ok\r",
        b"MSH|^~\\&|HIS|H|SPD|G|20250601120000||ACK|A2|P|2.5\rMSA|AE|MSG2|\\T\\ bad\r"
        b"ERR||PID^1|101^Required^HL70357|E\r",
    ]


def _mllp_collect(chunks: list[bytes]) -> list[bytes]:
    from gateway.his.mllp import MllpDecoder, MllpError

    decoder = MllpDecoder(max_frame_bytes=MLLP_LIMIT)
    out: list[bytes] = []
    for chunk in [*chunks, b""]:
        try:
            out += decoder.feed(chunk)
        except MllpError as err:
            if err.reason != "frame_too_large":
                raise
    return out


def _run_mllp(data: bytes) -> None:
    whole = _mllp_collect([data])
    step = (data[0] % 7 + 1) if data else 1
    pieces = _mllp_collect([data[i:i + step] for i in range(0, len(data), step)])
    if pieces != whole:
        raise FuzzPropertyError(f"feeding in {step}-byte chunks decodes differently")
    if any(len(p) > MLLP_LIMIT for p in whole):
        raise FuzzPropertyError("a payload over the limit was returned")
    # a valid block after garbage is recovered
    block = b"\x0bMSH|^~\\&|A\rMSA|AA|1\r\x1c\x0d"
    tail = _mllp_collect([data + b"\x0b" + b"x" * (MLLP_LIMIT + 1) + b"\x1c\x0d" + block])
    if not tail or tail[-1] != block[1:-2]:
        raise FuzzPropertyError("a valid block after garbage was not recovered")


def _mllp_seeds() -> list[bytes]:
    return [b"\x0bMSH|^~\\&|HIS\rMSA|AA|1\r\x1c\x0d", b"junk\x0bpartial\x0bMSH|x\x1c\x0d\x1c\x0d"]


# ---------------------------------------------------------------- configuration


def _run_config(data: bytes) -> None:
    from device.config import parse_config_text
    from spd_common.toml_config import ConfigError

    try:
        parse_config_text(_text(data), source="fuzz.toml", base_dir=Path("/etc/spd"))
    except ConfigError as err:
        if not str(err):
            raise FuzzPropertyError("ConfigError without a message") from err


def _config_seeds() -> list[bytes]:
    return [
        b'[device]\nid = "cab-01"\nsite = "site-1"\nkind = "cabinet"\ndata_dir = "data"\n'
        b'[broker]\nhost = "127.0.0.1"\nport = 1883\n[broker.tls]\nca_file = "ca.pem"\ncert_file = "c.pem"\n'
        b'key_file = "k.pem"\n[sync]\nbatch_size = 10\nresend_after_s = 2.5\n[log]\nretention_days = 3\n',
        b'[device]\nid = "h-1"\nsite = "s"\nkind = "handheld"\n[handheld]\noperator = "n1"\ndept = "icu"\n',
    ]


def _run_scanner_line(data: bytes) -> None:
    from device.hal.scanner.serial_scanner import LineFramer
    from device.hal.scanner.symbology import LineDecoder, RejectReason, ScanRejected

    framer = LineFramer(b"\r\n", max_line=256, line_timeout_s=None)
    decoder = LineDecoder()
    lines = framer.feed(data, 0.0)
    for line in lines:
        if isinstance(line, RejectReason):
            continue
        if len(line) > 256 + 2:
            raise FuzzPropertyError(f"a line of {len(line)} bytes passed a 256-byte framer")
        try:
            decoder.decode_bytes(line)
        except ScanRejected as err:
            if not isinstance(err.reason, RejectReason):
                raise FuzzPropertyError(f"reason {err.reason!r} is not a RejectReason") from err
    tail = LineFramer(b"\r\n", max_line=256, line_timeout_s=None)
    tail.feed(data, 0.0)
    tail.reset()
    if tail.feed(b"]C1ZY0001234567\r\n", 1.0) != [b"]C1ZY0001234567"]:
        raise FuzzPropertyError("a scan after a reset was not framed")


def _scanner_seeds() -> list[bytes]:
    return [b"]d2010950600013435217250731\x1d21SN1\r\n", b"]C1ZY0001234567\r\n]C1ZY00012", b"\r\n\r\n"]


def _camera_decoders() -> list[Any]:
    from device.hal.camera.decoders import PyzbarDecoder, ZxingCppDecoder

    global _DECODERS
    if not _DECODERS:
        _DECODERS = [ZxingCppDecoder(), PyzbarDecoder()]
        atexit.register(_close_decoders)
    return _DECODERS


def _close_decoders() -> None:
    for decoder in _DECODERS:
        decoder.close()


_DECODERS: list[Any] = []


def _run_camera_frame(data: bytes) -> None:
    """A frame of any shape and content (first three bytes: height, width, channels) through both decoders."""
    import numpy as np

    from device.hal.camera.decoders import BadFrame

    if len(data) < 3:
        return
    height, width, layout = 1 + data[0] % 96, 1 + data[1] % 96, data[2] % 6
    shape: tuple[int, ...] = (height, width) if layout == 0 else (height, width, (1, 2, 3, 4, 5)[layout - 1])
    pixels = np.resize(np.frombuffer(data[3:] or b"\0", dtype=np.uint8), shape)
    for decoder in _camera_decoders():
        try:
            found = decoder.decode(pixels)
        except BadFrame:
            continue
        for code in found:
            if not isinstance(code.text, str):
                raise FuzzPropertyError(f"{decoder.name} returned {code.text!r}")


def _camera_seeds() -> list[bytes]:
    return [bytes((32, 32, 0)) + bytes(range(256)) * 4, bytes((8, 8, 3)) + b"\xff\x00" * 96]


# ---------------------------------------------------------------- enrolment endpoint (a live server)

ENROL_ANSWER_TIMEOUT_S = 10.0
ENROL_SITE = "H1"


class _EnrolServer:
    """A real enrolment service on a loopback port, with its own site CA and tokens, started at first use.

    Each input is sent over a fresh TLS connection, followed by an end of
    head and a body's worth of padding so that any request the input starts
    is complete (an input is one request, not a slow client: deadlines
    have their own tests). The contract: an HTTP/1.1 answer arrives, ``200``
    or a ``4xx`` whose JSON body names the error, and the service logs no
    error of its own.
    """

    def __init__(self) -> None:
        import ssl

        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from gateway.commands import public_key_pem
        from gateway.enrol import EnrolmentService, EnrolmentSettings, EnrolmentTokens
        from gateway.enrol_http import ServerLimits
        from gateway.pki import SiteCA, make_csr

        self._tmp = tempfile.TemporaryDirectory(prefix="fuzz-enrol-")
        root = Path(self._tmp.name)
        self.ca = SiteCA.create(root / "ca", site=ENROL_SITE)
        self.tokens = EnrolmentTokens(root / "ca" / "tokens.db")
        settings = EnrolmentSettings("127.0.0.1", 8883, public_key_pem(Ed25519PrivateKey.generate()))
        self.limits = ServerLimits(per_client=64)  # inputs come one after another from one address
        self.service = EnrolmentService(self.ca, self.tokens, settings, limits=self.limits).start()
        self.ctx = ssl.create_default_context(cadata=self.ca.cert_pem.decode())
        self.token = self.tokens.issue(site=ENROL_SITE, device="CAB01", ttl_s=86_400).text
        self.csr = make_csr(ec.generate_private_key(ec.SECP256R1()), "CAB01").decode()
        self.errors: list[str] = []
        handler = logging.Handler(logging.ERROR)
        handler.emit = lambda record: self.errors.append(record.getMessage())  # type: ignore[method-assign]
        for name in ("gateway.enrol", "gateway.enrol_http"):
            logging.getLogger(name).addHandler(handler)
        atexit.register(self.close)

    def close(self) -> None:
        self.service.stop()
        self.tokens.close()
        self.ca.close()
        self._tmp.cleanup()

    def exchange(self, data: bytes) -> tuple[int, bytes]:
        import socket
        import ssl

        host, port = self.service.host, self.service.port
        padding = b"\r\n\r\n" + b"\0" * (self.limits.max_body + 1)
        with socket.create_connection((host, port), timeout=ENROL_ANSWER_TIMEOUT_S) as raw, \
                self.ctx.wrap_socket(raw, server_hostname=host) as tls:
            try:
                tls.sendall(data + padding)
            except (BrokenPipeError, ConnectionResetError):
                pass  # answered and closed before taking it all: the answer is still there to read
            answer = b""
            try:
                while b"\r\n\r\n" not in answer or len(answer) < _answer_length(answer):
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
            except TimeoutError:
                raise FuzzPropertyError(f"no whole answer within {ENROL_ANSWER_TIMEOUT_S} s: {answer[:200]!r}") \
                    from None
            except (ConnectionResetError, ssl.SSLError) as err:
                if b"\r\n\r\n" not in answer:
                    raise FuzzPropertyError(f"connection dropped without an answer: {err!r}") from None
        head, _, body = answer.partition(b"\r\n\r\n")
        match = re.match(rb"HTTP/1\.1 (\d{3}) ", head)
        if match is None:
            raise FuzzPropertyError(f"not an HTTP/1.1 answer: {answer[:200]!r}")
        return int(match.group(1)), body


def _answer_length(answer: bytes) -> int:
    head, sep, _ = answer.partition(b"\r\n\r\n")
    found = re.search(rb"(?im)^content-length: *(\d+)", head)
    return len(head) + len(sep) + (int(found.group(1)) if found else 0)


_ENROL: _EnrolServer | None = None


def _enrol_server() -> _EnrolServer:
    global _ENROL
    if _ENROL is None:
        _ENROL = _EnrolServer()
    return _ENROL


def _run_enrol_request(data: bytes) -> None:
    server = _enrol_server()
    refused = server.service.server.refused_connections
    del server.errors[:]
    status, body = server.exchange(data)
    if server.errors:
        raise FuzzPropertyError(f"the enrolment service logged an error: {server.errors[0]}")
    if server.service.server.refused_connections != refused:
        raise FuzzPropertyError("a lone connection was refused as over the per-client bound")
    if status == 200:
        return
    if not 400 <= status < 500:
        raise FuzzPropertyError(f"answered {status}: {body[:200]!r}")
    try:
        doc = json.loads(body)
    except ValueError:
        raise FuzzPropertyError(f"a {status} without a JSON body: {body[:200]!r}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), str) or not doc["error"]:
        raise FuzzPropertyError(f"a {status} that names no error: {body[:200]!r}")


def _enrol_seeds() -> list[bytes]:
    server = _enrol_server()

    def post(path: str, doc: dict[str, Any]) -> bytes:
        body = json.dumps(doc).encode()
        return (f"POST {path} HTTP/1.1\r\nHost: enrol\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    return [
        b"GET /v1/ca HTTP/1.1\r\nHost: enrol\r\n\r\n",
        b"GET /v1/ca HTTP/1.0\r\n\r\n",
        post("/v1/enrol", {"token": server.token, "csr": server.csr}),
        post("/v1/enrol", {"token": f"{ENROL_SITE}/CAB02/not-issued", "csr": server.csr}),
        post("/v1/renew", {"csr": server.csr}),
        b"POST /v1/enrol HTTP/1.1\r\nHost: enrol\r\nContent-Length: twelve\r\n\r\n{}",
        b"POST /v1/enrol HTTP/1.1\r\nHost: enrol\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    ]


# ---------------------------------------------------------------- gateway ingest, end to end


def _run_ingest(data: bytes) -> None:
    from hw_sim.fuzz_ingest import run_one

    run_one(data)


def _ingest_seeds() -> list[bytes]:
    from hw_sim.fuzz_ingest import seeds

    return seeds()


def _run_bridge_diff(data: bytes) -> None:
    from hw_sim.fuzz_bridge import run_fuzz_input

    run_fuzz_input(data)


def _bridge_seeds() -> list[bytes]:
    from hw_sim.fuzz_bridge import fuzz_seeds

    return fuzz_seeds()


TARGETS: dict[str, FuzzTarget] = {
    t.name: t
    for t in (
        FuzzTarget("udi", _run_udi, _barcode_seeds, "device.udi.parse_udi"),
        FuzzTarget("gs1", _run_gs1, _barcode_seeds, "device.udi.parse_gs1"),
        FuzzTarget("hibc", _run_hibc, _barcode_seeds, "device.udi.parse_hibc"),
        FuzzTarget("wristband", _run_wristband, _barcode_seeds, "device.udi.parse_wristband"),
        FuzzTarget("r2000", _run_r2000, _r2000_seeds, "device.hal.rfid.r2000.R2000Codec.feed"),
        FuzzTarget("wire_batch", _run_wire_batch, _wire_seeds, "spd_common.wire.decode_batch"),
        FuzzTarget("wire_ack", _run_wire_ack, _wire_seeds, "spd_common.wire.decode_ack"),
        FuzzTarget("wire_state", _run_wire_state, _wire_seeds, "spd_common.wire.decode_state"),
        FuzzTarget("hl7_ack", _run_hl7_ack, _hl7_seeds, "gateway.his.ack.parse_ack"),
        FuzzTarget("mllp", _run_mllp, _mllp_seeds, "gateway.his.mllp.MllpDecoder"),
        FuzzTarget("config", _run_config, _config_seeds, "tomllib + device.config.parse_config"),
        FuzzTarget("scanner_line", _run_scanner_line, _scanner_seeds,
                   "device.hal.scanner LineFramer.feed + LineDecoder.decode_bytes"),
        FuzzTarget("camera_frame", _run_camera_frame, _camera_seeds,
                   "device.hal.camera.decoders (zxing-cpp, pyzbar) on arbitrary frames"),
        FuzzTarget("enrol_request", _run_enrol_request, _enrol_seeds,
                   "gateway.enrol EnrolmentService over TLS: h11 framing, routing, JSON, tokens, CSRs"),
        FuzzTarget("ingest", _run_ingest, _ingest_seeds,
                   "one generated batch (valid and hostile events) through gateway.ingest.IngestService.handle "
                   "into a real GatewayStore; see hw_sim/fuzz_ingest.py"),
        FuzzTarget("bridge_diff", _run_bridge_diff, _bridge_seeds,
                   "gateway.bridge: compiled charge_compact/credit_compact against the pure twin (hw_sim.fuzz_bridge)"),
    )
}

_WIRE_TARGETS = ("wire_batch", "wire_ack", "wire_state")
KNOWN_BUGS: tuple[KnownBug, ...] = (
    # fixed: spd_common/wire.py _load (deep nesting, 4300-digit integers), device/config.py load_config,
    # device/hal/scanner/serial_scanner.py LineFramer (max_line on complete lines); their crashers stay as
    # regression inputs under tests/data/crashers/
)


def known_bug(target: str, exc: BaseException) -> KnownBug | None:
    return next((bug for bug in KNOWN_BUGS if bug.matches(target, exc)), None)


def crasher_files(target: str) -> list[Path]:
    folder = CRASHERS_DIR / target
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


# ---------------------------------------------------------------- engines


@dataclass
class FuzzReport:
    target: str
    engine: str
    inputs: int
    seconds: float
    crashers: list[str]
    known_bug_hits: int

    def line(self) -> str:
        return (f"{self.target}: {self.inputs} inputs in {self.seconds:.0f} s ({self.engine}), "
                f"{len(self.crashers)} new crashers, {self.known_bug_hits} known-bug hits")


class _Guard:
    """Wraps a target: known bugs are counted (not crashes) unless strict."""

    def __init__(self, target: FuzzTarget, *, strict: bool) -> None:
        self.target = target
        self.strict = strict
        self.known_hits = 0

    def __call__(self, data: bytes) -> None:
        try:
            self.target.run(data)
        except Exception as exc:
            if self.strict or known_bug(self.target.name, exc) is None:
                raise
            self.known_hits += 1


def _mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        pos = rng.randint(0, len(buf))
        if op == 0 and buf:
            del buf[pos:pos + rng.randint(1, 8)]
        elif op == 1:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 3:
            other = rng.choice(pool)
            start = rng.randint(0, len(other))
            buf[pos:pos] = other[start:start + rng.randint(1, 64)]
        elif op == 4:
            buf[pos:pos] = rng.choice((b"\xa0", b"\x0b", b"\x1c\x0d", b"\x1d", b"|", b"^", b"\\", b"(", b"+", b"/",
                                       b"$$", b"[", b"{", b'"', b"\r", b"=", b"0" * 20, b"[" * 50, b"9" * 40))
        elif op == 5 and buf:
            buf[pos:pos] = buf[: rng.randint(1, 32)]
        else:
            buf = bytearray(rng.randbytes(rng.randint(0, 64)))
    return bytes(buf[:4096])


def _random_inputs(target: FuzzTarget, rng: random.Random, count: int) -> Iterator[bytes]:
    pool = target.seeds()
    for i in range(count):
        data = _mutate(rng, rng.choice(pool), pool)
        if i % 64 == 0 and len(pool) < 512:
            pool.append(data)
        yield data


def run_random(target: FuzzTarget, inputs: int, *, seed: int, strict: bool, out_dir: Path) -> FuzzReport:
    """A seeded mutation loop over the target's seed inputs (no coverage feedback)."""
    guard = _Guard(target, strict=strict)
    crashers: list[str] = []
    start = time.monotonic()
    rng = random.Random(seed)
    for data in _random_inputs(target, rng, inputs):
        try:
            guard(data)
        except Exception as exc:  # a crash: keep the input, go on
            path = _keep_crasher(out_dir, data)
            if path.name not in crashers:
                crashers.append(path.name)
                log.error("%s crashed on %s: %r", target.name, path, exc)
    return FuzzReport(target.name, "random", inputs, time.monotonic() - start, crashers, guard.known_hits)


def _keep_crasher(out_dir: Path, data: bytes) -> Path:
    import hashlib

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"crash-{hashlib.sha1(data).hexdigest()}"
    path.write_bytes(data)
    return path


_RUNS_LINE = re.compile(r"#(\d+)\s")
_DONE_LINE = re.compile(r"Done (\d+) runs")


def run_atheris(target: FuzzTarget, inputs: int, *, seed: int, strict: bool, out_dir: Path) -> FuzzReport:
    """libFuzzer through atheris, coverage-guided, in child processes; restarted after each crash."""
    out_dir.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in out_dir.iterdir()}
    done = 0
    restarts = 0
    start = time.monotonic()
    known = 0
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target.name}-") as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        for i, seed_input in enumerate(target.seeds()):
            (corpus / f"seed-{i}").write_bytes(seed_input)
        while done < inputs and restarts < 20:
            cmd = [sys.executable, "-m", "hw_sim.fuzz", "_atheris", target.name, f"-runs={inputs - done}",
                   f"-seed={seed + restarts}", f"-artifact_prefix={out_dir}/", "-timeout=10", "-max_len=2048",
                   "-rss_limit_mb=2048", "-print_final_stats=1", str(corpus)]
            env = dict(os.environ, SPD_FUZZ_STRICT="1" if strict else "0", SPD_FUZZ_KNOWN=str(Path(tmp) / "known"))
            proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  check=False)
            done_match = _DONE_LINE.findall(proc.stderr)
            runs = _RUNS_LINE.findall(proc.stderr)
            done += int(done_match[-1]) if done_match else (int(runs[-1]) if runs else 0)
            if proc.returncode != 0:
                restarts += 1
                log.error("%s: fuzzer stopped (exit %d):\n%s", target.name, proc.returncode, proc.stderr[-3000:])
        known_file = Path(tmp) / "known"
        if known_file.exists():
            known = len(known_file.read_text().splitlines())
    crashers = sorted(p.name for p in out_dir.iterdir() if p.name not in before)
    return FuzzReport(target.name, "atheris", done, time.monotonic() - start, crashers, known)


def _atheris_child(name: str, libfuzzer_args: list[str]) -> None:
    import atheris

    target = TARGETS[name]
    guard = _Guard(target, strict=os.environ.get("SPD_FUZZ_STRICT") == "1")
    known_path = os.environ.get("SPD_FUZZ_KNOWN")
    import device.config
    import device.hal.rfid.r2000
    import device.udi
    import gateway.his.ack
    import gateway.his.mllp

    if name == "bridge_diff":
        import hw_sim.fuzz_bridge
    if name == "camera_frame":
        import device.hal.camera.decoders
    if name == "ingest":
        import gateway.ingest
        import hw_sim.fuzz_ingest  # noqa: F401
    if name == "scanner_line":
        import device.hal.scanner.serial_scanner
        import device.hal.scanner.symbology  # noqa: F401
    if name == "enrol_request":
        import gateway.enrol
        import gateway.enrol_http  # noqa: F401

    atheris.instrument_all()

    def one_input(data: bytes) -> None:
        hits = guard.known_hits
        guard(data)
        if guard.known_hits != hits and known_path:
            with open(known_path, "a") as fh:
                fh.write("1\n")

    atheris.Setup([sys.argv[0], *libfuzzer_args], one_input)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "_atheris":
        _atheris_child(args[1], args[2:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m hw_sim.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=[*TARGETS, "all"])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--engine", choices=("atheris", "random"), default="atheris")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--strict", action="store_true", help="treat known, reported bugs as crashes too")
    parser.add_argument("--crashers", type=Path, default=CRASHERS_DIR)
    opts = parser.parse_args(args)
    setup_logging(quiet=logging.ERROR)
    names = list(TARGETS) if opts.target == "all" else [opts.target]
    engine = run_atheris if opts.engine == "atheris" else run_random
    failed = False
    for name in names:
        report = engine(TARGETS[name], opts.inputs, seed=opts.seed, strict=opts.strict, out_dir=opts.crashers / name)
        print(report.line(), flush=True)
        if name == "ingest" and opts.engine == "random":
            from hw_sim.fuzz_ingest import fuzzer_summary

            print(f"ingest: {fuzzer_summary()}", flush=True)
        failed = failed or bool(report.crashers)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
