"""The HIS's ADT feed: an HL7 v2 listener over MLLP that keeps the patient census, answering every message.

The HIS (or its interface engine) connects and sends ADT messages framed with MLLP; each one is answered
on the same connection with an HL7 ACK once its effect is committed to the store:

* ``AA`` — applied (or already applied: a message re-sent under the same MSH-10 is not applied twice),
  or an ADT event the census does not follow (A04, A28...), acknowledged as ignored so the feed flows;
* ``AR`` — the message cannot be taken: no MSH, not HL7, not an ADT message, no control id (MSH-10);
  ERR-3 carries the HL7 table 0357 code, MSA-3/ERR-8 the reason;
* ``AE`` — an ADT message the census cannot use (no admission number in PID-3, a bad timestamp), or
  the store failed (error 207: the sender should re-send).

Which fields are read is in docs/census.md. Parsing is python-hl7's (a maintained parser, rather than
ours); the ACK is :func:`gateway.his.ack.build_ack` and the framing :class:`gateway.his.mllp.MllpDecoder`,
the same the gateway uses towards the HIS.

Robustness: at most `max_connections` clients at once (one more is closed at once, with a log line), a
connection with no complete message for `idle_timeout_s` is closed, a message must arrive whole within
`frame_timeout_s` of its first byte (a slow or stuck sender cannot hold a slot), an oversize frame is
answered ``AR`` and skipped, and a client that does not read its ACKs is dropped after `send_timeout_s`.

Threads: ``adt-accept`` accepts; one ``adt-conn-N`` thread per connection, each parsing its messages
and writing through the shared store (SQLite serialises the writers).

``adt-accept`` beats the heartbeat of that name (:mod:`device.heartbeat`): it wakes every 0.25 s,
connection or not, so a feed quiet all night keeps it beating; when it is wedged no HIS can connect
and the watchdog restarts the gateway. The ``adt-conn-N`` threads have none: they come and go with
the HIS's connections, each ends on its own (`idle_timeout_s`, `frame_timeout_s`, `send_timeout_s`),
the one thing they can wait on for longer is the store, whose writers (``ingest-mqtt``, ``charging``)
are watched already, and one stuck connection holds only its own one of `max_connections` slots.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import hl7

from gateway.census import MAX_ADMISSION_LEN, AdtEvent, AdtUpdate, apply_adt, initials
from gateway.his.ack import AckCode, Hl7Error, build_ack, parse_msh, split_segments
from gateway.his.mllp import DEFAULT_MAX_FRAME_BYTES, MllpDecoder, MllpError, frame_text
from gateway.store import GatewayStore
from spd_common.heartbeat import HeartbeatRegistry

log = logging.getLogger(__name__)

_POLL_S = 0.25
ACCEPT_DEADLINE_S = 60.0  # a pass every _POLL_S; accepting and starting a thread takes milliseconds
NOT_INPATIENT = {"O": "outpatient", "E": "emergency", "P": "preadmit"}  # PV1-2, HL7 table 0004


@dataclass(frozen=True, slots=True)
class AdtResult:
    """What was answered to one message."""

    code: AckCode
    text: str
    error_code: str = "0"
    changed: bool = False


class _Refused(Exception):
    def __init__(self, code: AckCode, error_code: str, text: str) -> None:
        super().__init__(text)
        self.code, self.error_code, self.text = code, error_code, text


def parse_hl7_time(value: str) -> float:
    """Epoch seconds of an HL7 TS/DTM (``YYYY[MM[DD[HH[MM[SS[.S+]]]]]][+/-ZZZZ]``; no offset: local time)."""
    text = value.strip()
    offset = None
    for sign in ("+", "-"):
        if sign in text[4:]:
            text, _, zone = text.rpartition(sign)
            if len(zone) != 4 or not zone.isdigit():
                raise ValueError(f"bad time zone in {value!r}")
            minutes = int(zone[:2]) * 60 + int(zone[2:])
            offset = dt.timezone(dt.timedelta(minutes=minutes if sign == "+" else -minutes))
            break
    whole = text.split(".")[0]
    if not whole.isdigit() or len(whole) not in (4, 6, 8, 10, 12, 14):
        raise ValueError(f"not an HL7 timestamp: {value!r}")
    padded = whole + "0101000000"[len(whole) - 4:] if len(whole) < 14 else whole
    when = dt.datetime.strptime(padded, "%Y%m%d%H%M%S")
    return (when.replace(tzinfo=offset) if offset else when).timestamp()


def _get(msg: hl7.Message, segment: str, field_no: int, comp: int = 1) -> str:
    try:
        return str(msg.extract_field(segment, 1, field_no, 1, comp)).strip()
    except (KeyError, IndexError):
        return ""


def _time(msg: hl7.Message, *places: tuple[str, int]) -> float:
    for segment, field_no in places:
        value = _get(msg, segment, field_no)
        if value:
            try:
                return parse_hl7_time(value)
            except ValueError:
                raise _Refused(AckCode.AE, "102", f"{segment}-{field_no} {value[:26]!r} is not an HL7 timestamp") \
                    from None
    return time.time()


def read_adt(text: str) -> tuple[str, AdtUpdate | None, str]:
    """(control id, the census update, trigger) of an ADT message; update None for an event not followed.

    Raises :class:`_Refused` with the ACK code, the HL7 table 0357 code and the reason.
    """
    try:
        msg = hl7.parse(text.replace("\r\n", "\r").replace("\n", "\r"))
    except Exception as err:  # python-hl7 raises ParseException, IndexError, ValueError...
        raise _Refused(AckCode.AR, "102", f"not parseable as HL7 v2: {err}"[:200]) from None
    kind, trigger = _get(msg, "MSH", 9, 1), _get(msg, "MSH", 9, 2)
    control_id = _get(msg, "MSH", 10)
    if kind != "ADT":
        raise _Refused(AckCode.AR, "200", f"message type {kind or '(none)'} not accepted: ADT only")
    if not control_id:
        raise _Refused(AckCode.AR, "101", "MSH-10 message control id missing")
    trigger = trigger or _get(msg, "EVN", 1)
    try:
        event = AdtEvent(trigger)
    except ValueError:
        return control_id, None, trigger
    patient_class = _get(msg, "PV1", 2).upper()
    if patient_class in NOT_INPATIENT:
        return control_id, None, f"{trigger} for an {NOT_INPATIENT[patient_class]} (PV1-2 {patient_class})"
    admission = _get(msg, "PID", 3)
    if not admission:
        raise _Refused(AckCode.AE, "101", "PID-3 admission number missing")
    if len(admission) > MAX_ADMISSION_LEN or not admission.isprintable() or " " in admission:
        raise _Refused(AckCode.AE, "102", f"PID-3 {admission[:MAX_ADMISSION_LEN]!r} is not an admission number")
    places: tuple[tuple[str, int], ...] = (("EVN", 2), ("MSH", 7))
    if event is AdtEvent.ADMIT:
        places = (("PV1", 44), *places)
    elif event is AdtEvent.DISCHARGE:
        places = (("PV1", 45), *places)
    at = _time(msg, *places)
    update = AdtUpdate(
        event, admission,
        initials=initials(_get(msg, "PID", 5, 1), _get(msg, "PID", 5, 2)),
        ward=_get(msg, "PV1", 3, 1), bed=_get(msg, "PV1", 3, 3), dept=_get(msg, "PV1", 10), at=at,
    )
    return control_id, update, trigger


class AdtHandler:
    """Turns one received ADT message into a census change and the ACK text to send back."""

    def __init__(self, store: GatewayStore, *, on_change: Callable[[], None] | None = None,
                 application: str = "SPD") -> None:
        self.store = store
        self.on_change = on_change or (lambda: None)
        self.application = application

    def handle(self, text: str) -> tuple[str, AdtResult]:
        """The ACK for `text` and what it said."""
        try:
            result = self._apply(text)
        except _Refused as err:
            result = AdtResult(err.code, err.text, err.error_code)
        log.log(logging.INFO if result.code is AckCode.AA else logging.WARNING, "adt: %s %s",
                result.code.value, result.text)
        return self.ack(text, result), result

    def _apply(self, text: str) -> AdtResult:
        try:
            segments = split_segments(text)
            parse_msh(segments[0] if segments else "")
        except Hl7Error as err:
            raise _Refused(AckCode.AR, "100", f"no usable MSH segment: {err}") from None
        control_id, update, trigger = read_adt(text)
        if update is None:
            return AdtResult(AckCode.AA, f"ignored: ADT^{trigger or '?'} is not used by the SPD census"[:80])
        try:
            changed = apply_adt(self.store, update, control_id=control_id)
        except Exception:
            log.exception("adt: storing %s %s failed", trigger, control_id)
            raise _Refused(AckCode.AE, "207", "census store failed: send again") from None
        if changed:
            try:
                self.on_change()
            except Exception:
                log.exception("adt: census change callback failed")
        return AdtResult(AckCode.AA, f"{update.event.value} {update.admission} "
                         f"{'applied' if changed else 'already applied or no change'}", changed=changed)

    def ack(self, text: str, result: AdtResult) -> str:
        """The ACK text answering `text` with `result` (a bare one when `text` has no usable MSH)."""
        try:
            return build_ack(text, result.code, result.text, error_code=result.error_code)
        except Hl7Error:  # no MSH to answer in kind: a bare ACK in the default encoding characters
            when = dt.datetime.now().strftime("%Y%m%d%H%M%S")
            safe = result.text.replace("|", " ").replace("^", " ").replace("\\", " ").replace("&", " ")
            safe = safe.replace("~", " ")
            return "\r".join([
                f"MSH|^~\\&|{self.application}||||{when}||ACK|{time.time_ns():x}|P|2.5",
                f"MSA|{result.code.value}||{safe[:80]}",
                f"ERR|||{result.error_code}^^HL70357|E|||||{safe[:250]}",
            ]) + "\r"


class AdtListener:
    """The MLLP server for the ADT feed; see the module docstring."""

    def __init__(self, store: GatewayStore, *, host: str = "127.0.0.1", port: int = 0,
                 on_change: Callable[[], None] | None = None, max_connections: int = 8,
                 idle_timeout_s: float = 300.0, frame_timeout_s: float = 30.0, send_timeout_s: float = 10.0,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, encoding: str = "utf-8",
                 heartbeats: HeartbeatRegistry | None = None) -> None:
        self.handler = AdtHandler(store, on_change=on_change)
        self.host, self._port = host, port
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.frame_timeout_s = frame_timeout_s
        self.send_timeout_s = send_timeout_s
        self.max_frame_bytes = max_frame_bytes
        self.encoding = encoding
        self.refused_connections = 0
        self.messages = 0
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._conns: dict[int, tuple[socket.socket, threading.Thread]] = {}
        self._next = 0
        self._accept_thread: threading.Thread | None = None
        self._beat = (heartbeats or HeartbeatRegistry()).heartbeat("adt-accept", deadline_s=ACCEPT_DEADLINE_S)

    @property
    def port(self) -> int:
        """The port listened on (the one the OS chose when constructed with 0)."""
        return self._sock.getsockname()[1] if self._sock is not None else self._port

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def start(self) -> AdtListener:
        sock = socket.create_server((self.host, self._port), reuse_port=False, backlog=16)
        sock.settimeout(_POLL_S)
        self._sock = sock
        self._beat.watch()
        self._accept_thread = threading.Thread(target=self._accept_loop, name="adt-accept", daemon=True)
        self._accept_thread.start()
        log.info("adt: listening for ADT over MLLP on %s:%d", self.host, self.port)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._accept_thread is not None:
            self._accept_thread.join(5)
        self._beat.retire()
        if self._sock is not None:
            self._sock.close()
        with self._lock:
            conns = list(self._conns.values())
        for conn, thread in conns:
            _close(conn)
            thread.join(5)

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            self._beat()
            try:
                conn, peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if not self._stop.is_set():
                    log.exception("adt: accept failed")
                    time.sleep(_POLL_S)
                continue
            with self._lock:
                full = len(self._conns) >= self.max_connections
                if not full:
                    self._next += 1
                    n = self._next
                    thread = threading.Thread(target=self._serve, args=(n, conn, peer), name=f"adt-conn-{n}",
                                              daemon=True)
                    self._conns[n] = (conn, thread)
            if full:
                self.refused_connections += 1
                log.warning("adt: %s refused: already %d connections", peer, self.max_connections)
                _close(conn)
                continue
            thread.start()

    def _serve(self, n: int, conn: socket.socket, peer: tuple[str, int]) -> None:
        try:
            self._conversation(conn, peer)
        except OSError as err:
            log.info("adt: connection from %s ended: %s", peer, err)
        except Exception:
            log.exception("adt: connection from %s failed", peer)
        finally:
            _close(conn)
            with self._lock:
                self._conns.pop(n, None)

    def _conversation(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        decoder = MllpDecoder(max_frame_bytes=self.max_frame_bytes)
        conn.settimeout(_POLL_S)
        last_message = time.monotonic()
        frame_started: float | None = None
        while not self._stop.is_set():
            now = time.monotonic()
            if frame_started is not None and now - frame_started > self.frame_timeout_s:
                log.warning("adt: %s sent part of a message for %.0f s; closing", peer, self.frame_timeout_s)
                return
            if frame_started is None and now - last_message > self.idle_timeout_s:
                log.info("adt: %s idle for %.0f s; closing", peer, self.idle_timeout_s)
                return
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return
            try:
                payloads = decoder.feed(data)
                oversize = False
            except MllpError:
                payloads, oversize = decoder.feed(b""), True
            for payload in payloads:
                self._answer(conn, payload)
                last_message = time.monotonic()
            if oversize:
                self._send(conn, self.handler.ack("", AdtResult(
                    AckCode.AR, f"message longer than {self.max_frame_bytes} bytes", "100")))
                last_message = time.monotonic()
            frame_started = (frame_started or time.monotonic()) if decoder.buffered_bytes else None

    def _answer(self, conn: socket.socket, payload: bytes) -> None:
        self.messages += 1
        try:
            ack, _ = self.handler.handle(payload.decode(self.encoding))
        except UnicodeDecodeError:
            text = payload.decode(self.encoding, errors="replace")
            ack = self.handler.ack(text, AdtResult(AckCode.AR, f"message is not valid {self.encoding}", "102"))
        self._send(conn, ack)

    def _send(self, conn: socket.socket, ack: str) -> None:
        raw = frame_text(ack, self.encoding)
        conn.settimeout(self.send_timeout_s)
        try:
            conn.sendall(raw)
        finally:
            conn.settimeout(_POLL_S)


def _close(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()
