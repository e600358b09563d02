"""HIS adapter for HL7 v2 over MLLP: one persistent TCP connection, one message and its ACK at a time."""

from __future__ import annotations

import codecs
import logging
import select
import socket
import threading
import time
from types import TracebackType
from typing import Literal

from gateway.his.ack import AckCode, AckError, HisAck, Hl7Error, message_control_id, parse_ack
from gateway.his.adapter import (
    HisAdapterClosed,
    HisConfigError,
    HisMessageError,
    HisOutcome,
    HisResult,
    RetryReason,
)
from gateway.his.mllp import DEFAULT_MAX_FRAME_BYTES, MllpDecoder, MllpError, decode_text, frame_text

logger = logging.getLogger(__name__)

AckMode = Literal["original", "enhanced"]
_RECV_BYTES = 65536


class MllpAdapter:
    """Sends charges to a HIS MLLP listener and turns its acknowledgements into `HisResult`s.

    The connection is opened on the first send and kept; after any network or framing error it
    is dropped and opened again by the next send.  Before each send, bytes already waiting on the
    socket (a late ACK of an earlier, timed-out message) are read and discarded, and a connection
    the HIS has closed meanwhile is replaced; if a kept connection still turns out dead before a
    single byte of answer (the HIS's close was in flight), the message is sent once more on a new
    connection within the same `send` (harmless: the HIS de-duplicates by transaction id).  While
    waiting, an ACK whose MSA-2 names another control id is discarded and reading goes on until
    the right one arrives or `timeout_s` passes.

    In ``ack_mode="enhanced"`` a commit ACK (CA) is final only with ``accept_on_commit=True``;
    otherwise the adapter waits, within the same `timeout_s`, for the application ACK on the same
    connection (so a message sent with MSH-16 = NE needs ``accept_on_commit=True``).  CE (commit
    error) is a RETRY, CR (commit reject) a REJECTED.

    Safe to share between threads: sends are serialised on the one connection.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout_s: float = 5.0,
        connect_timeout_s: float = 3.0,
        ack_mode: AckMode = "original",
        accept_on_commit: bool = False,
        encoding: str = "utf-8",
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        if not 0 < port < 65536:
            raise HisConfigError("bad_port", f"port must be 1..65535, got {port}")
        if timeout_s <= 0 or connect_timeout_s <= 0:
            raise HisConfigError("bad_timeout", "timeout_s and connect_timeout_s must be positive")
        if ack_mode not in ("original", "enhanced"):
            raise HisConfigError("bad_ack_mode", f"ack_mode must be 'original' or 'enhanced', got {ack_mode!r}")
        if accept_on_commit and ack_mode != "enhanced":
            raise HisConfigError("bad_ack_mode", "accept_on_commit needs ack_mode='enhanced'")
        try:
            codecs.lookup(encoding)
        except LookupError as err:
            raise HisConfigError("bad_encoding", f"unknown text encoding {encoding!r}") from err
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.ack_mode: AckMode = ack_mode
        self.accept_on_commit = accept_on_commit
        self.encoding = encoding
        self.max_frame_bytes = max_frame_bytes
        self.connections_opened = 0
        self.stale_acks_discarded = 0
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._decoder = MllpDecoder(max_frame_bytes=max_frame_bytes)
        self._closed = False

    def __enter__(self) -> MllpAdapter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        """True while a connection to the HIS is held open."""
        return self._sock is not None

    def send(self, control_id: str, message: str) -> HisResult:
        """Send one message (whose MSH-10 must be `control_id`) and wait for its acknowledgement."""
        try:
            declared = message_control_id(message)
        except Hl7Error as err:
            raise HisMessageError("bad_message", f"message is not HL7 v2: {err.message}") from err
        if declared != control_id:
            raise HisMessageError(
                "control_id_mismatch", f"message MSH-10 {declared!r} is not the control id {control_id!r}"
            )
        try:
            payload = frame_text(message, self.encoding)
        except MllpError as err:
            raise HisMessageError(err.reason, err.message) from err
        with self._lock:
            if self._closed:
                raise HisAdapterClosed("closed", "send() after close()")
            return self._exchange(control_id, payload)

    def close(self) -> None:
        """Close the connection; further sends raise `HisAdapterClosed`."""
        with self._lock:
            self._closed = True
            self._disconnect()

    def _exchange(self, control_id: str, payload: bytes) -> HisResult:
        self._discard_waiting_input()
        if self._sock is not None:
            result = self._attempt(control_id, payload, reused=True)
            if result is not None:
                return result
            logger.info("kept connection to HIS was dead before any answer; sending %s on a new one", control_id)
        try:
            self._connect()
        except OSError as err:
            return _retry(RetryReason.CONNECT_FAILED, f"cannot connect to HIS at {self.host}:{self.port}: {err}")
        result = self._attempt(control_id, payload, reused=False)
        assert result is not None
        return result

    def _attempt(self, control_id: str, payload: bytes, *, reused: bool) -> HisResult | None:
        """Send on the current connection and await the ACK.

        None (only when `reused`) means the kept connection failed before a single byte came back:
        the HIS had closed it while idle, so the message is sent once more on a fresh connection.
        A HIS de-duplicates by transaction id, so that second copy is harmless in every case.
        """
        sock = self._sock
        assert sock is not None
        try:
            sock.settimeout(self.timeout_s)
            sock.sendall(payload)
        except OSError as err:
            self._disconnect()
            return None if reused else _retry(RetryReason.SEND_FAILED, f"sending {control_id} to HIS failed: {err}")
        logger.debug("sent %s (%d bytes) to HIS %s:%d", control_id, len(payload), self.host, self.port)
        return self._await_ack(sock, control_id, reused=reused)

    def _await_ack(self, sock: socket.socket, control_id: str, *, reused: bool) -> HisResult | None:
        deadline = time.monotonic() + self.timeout_s
        others: list[str] = []
        committed = False
        answered = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self._timed_out(control_id, others, committed)
            try:
                sock.settimeout(remaining)
                data = sock.recv(_RECV_BYTES)
            except TimeoutError:
                return self._timed_out(control_id, others, committed)
            except OSError as err:
                self._disconnect()
                if reused and not answered:
                    return None
                return _retry(
                    RetryReason.CONNECTION_CLOSED, f"connection to HIS failed awaiting ACK of {control_id}: {err}"
                )
            if not data:
                self._disconnect()
                if reused and not answered:
                    return None
                detail = (
                    f"HIS committed {control_id} (CA) but closed the connection before the application ACK"
                    if committed
                    else f"HIS closed the connection before acknowledging {control_id}"
                )
                return _retry(RetryReason.CONNECTION_CLOSED, detail)
            answered = True
            try:
                frames = self._decoder.feed(data)
            except MllpError as err:
                self._disconnect()
                return _retry(RetryReason.BAD_FRAME, f"unusable frame from HIS awaiting ACK of {control_id}: {err}")
            for payload in frames:
                try:
                    ack = parse_ack(decode_text(payload, self.encoding), self.encoding)
                except (MllpError, AckError) as err:
                    self._disconnect()
                    return _retry(
                        RetryReason.NOT_AN_ACK, f"HIS answered {control_id} with a frame that is not an ACK: {err}"
                    )
                if ack.control_id_echo != control_id:
                    self.stale_acks_discarded += 1
                    others.append(ack.control_id_echo)
                    logger.warning(
                        "discarded %s ACK for %s while awaiting %s", ack.code.value, ack.control_id_echo, control_id
                    )
                    continue
                result = self._judge(ack)
                if result is not None:
                    return result
                committed = True

    def _judge(self, ack: HisAck) -> HisResult | None:
        """The result an ACK for our control id gives, or None to keep waiting (commit ACK only)."""
        code = ack.code
        if code is AckCode.AA:
            return HisResult(HisOutcome.ACCEPTED, code.value, ack.text or "accepted by HIS", ack.his_ref)
        if code is AckCode.CA:
            if self.accept_on_commit:
                return HisResult(HisOutcome.ACCEPTED, code.value, ack.text or "committed by HIS", ack.his_ref)
            if self.ack_mode == "original":
                logger.warning("HIS sent a commit ACK to an original-mode adapter; awaiting the application ACK")
            return None
        reason = _reason(ack)
        if code is AckCode.CE:
            return HisResult(HisOutcome.RETRY, code.value, f"HIS could not commit the message: {reason}", ack.his_ref)
        return HisResult(HisOutcome.REJECTED, code.value, reason, ack.his_ref)

    def _timed_out(self, control_id: str, others: list[str], committed: bool) -> HisResult:
        wait = f"{self.timeout_s:g} s"
        if committed:
            return _retry(
                RetryReason.TIMEOUT, f"HIS committed {control_id} (CA) but sent no application ACK within {wait}"
            )
        if others:
            return _retry(
                RetryReason.WRONG_CONTROL_ID,
                f"no ACK for {control_id} within {wait}; discarded ACK(s) for other control ids: {', '.join(others)}",
            )
        return _retry(RetryReason.TIMEOUT, f"no ACK for {control_id} from HIS within {wait}")

    def _connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._decoder = MllpDecoder(max_frame_bytes=self.max_frame_bytes)
        self.connections_opened += 1
        logger.info("connected to HIS %s:%d", self.host, self.port)

    def _discard_waiting_input(self) -> None:
        """Read whatever already waits on the socket: late ACKs are dropped, a closed peer is noticed."""
        sock = self._sock
        while sock is not None:
            try:
                readable, _, _ = select.select([sock], [], [], 0)
                if not readable:
                    return
                data = sock.recv(_RECV_BYTES)
            except OSError as err:
                logger.info("connection to HIS lost while idle (%s); reconnecting", err)
                self._disconnect()
                return
            if not data:
                logger.info("HIS closed the idle connection; reconnecting")
                self._disconnect()
                return
            try:
                frames = self._decoder.feed(data)
            except MllpError as err:
                logger.warning("garbled input from HIS while idle (%s); reconnecting", err)
                self._disconnect()
                return
            for payload in frames:
                self.stale_acks_discarded += 1
                logger.warning("discarded a late frame from HIS (%d bytes) before sending", len(payload))

    def _disconnect(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
            logger.info("disconnected from HIS %s:%d", self.host, self.port)


def _reason(ack: HisAck) -> str:
    """The HIS's explanation of an error: MSA-3 text and ERR summary, without saying the same thing twice."""
    if ack.text and ack.error:
        return ack.error if ack.text in ack.error else f"{ack.text} / {ack.error}"
    return ack.text or ack.error or f"HIS answered {ack.code.value} without a reason"


def _retry(reason: RetryReason, detail: str) -> HisResult:
    logger.info("HIS send to be retried (%s): %s", reason.value, detail)
    return HisResult(HisOutcome.RETRY, reason.value, detail)
