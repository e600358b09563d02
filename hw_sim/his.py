"""A simulated HIS charging endpoint: an MLLP server that stores DFT^P03 charges once per FT1 id, with faults.

Credits (FT1-6 ``CD``) are booked apart, once per FT1-2, against the charge named in FT1-23.
:meth:`SimulatedHis.book_from_other_door` lets the simulated HTTP HIS book into the same books, as a
HIS that offers both interfaces does (the chaos run switches the gateway between them).
"""

from __future__ import annotations

import argparse
import logging
import socket
import sqlite3
import sys
import threading
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path

import hl7  # python-hl7: the simulator reads messages with a parser that is not the gateway's

from gateway.his.ack import AckCode, build_ack
from gateway.his.mllp import MllpDecoder, MllpError, frame_text
from hw_sim.his_base import SimulatedHisBase
from hw_sim.his_runner import serve_until_stopped

logger = logging.getLogger(__name__)

DEFAULT_PORT = 2575  # the port IANA registered for HL7 over MLLP
_POLL_S = 0.05
_CENT = Decimal("0.01")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS received (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    control_id TEXT,
    txn_id TEXT,
    admission TEXT,
    charge_code TEXT,
    qty TEXT,
    amount TEXT,
    raw TEXT NOT NULL,
    received_at TEXT NOT NULL,
    answer TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS charges (
    txn_id TEXT PRIMARY KEY,
    control_id TEXT NOT NULL,
    admission TEXT NOT NULL,
    charge_code TEXT NOT NULL,
    qty TEXT NOT NULL,
    unit_price TEXT NOT NULL,
    amount TEXT NOT NULL,
    amount_fen INTEGER NOT NULL,
    first_received_at TEXT NOT NULL,
    times_received INTEGER NOT NULL,
    his_ref TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS credits (
    txn_id TEXT PRIMARY KEY,
    original_txn_id TEXT NOT NULL UNIQUE,
    control_id TEXT NOT NULL,
    admission TEXT NOT NULL,
    charge_code TEXT NOT NULL,
    amount TEXT NOT NULL,
    amount_fen INTEGER NOT NULL,
    first_received_at TEXT NOT NULL,
    times_received INTEGER NOT NULL,
    his_ref TEXT NOT NULL
);
"""


class SimulatedHisError(Exception):
    """Root of the simulator's errors; `reason` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SimulatedHisStateError(SimulatedHisError, RuntimeError):
    """A control was used in the wrong state (e.g. `come_up` before `start`)."""


@dataclass(frozen=True)
class HisStats:
    """Counters since start; `received` and the charge figures come from the database."""

    received: int
    unique_charges: int
    duplicates_received: int
    acks_sent: int
    acks_dropped: int
    rejected: int
    wrong_control_ids_sent: int
    connections_accepted: int


@dataclass(frozen=True)
class HisCharge:
    """One charge as the HIS booked it (one per FT1 transaction id)."""

    txn_id: str
    control_id: str
    admission: str
    charge_code: str
    qty: Decimal
    unit_price: Decimal
    amount: Decimal
    first_received_at: str
    times_received: int
    his_ref: str


@dataclass(frozen=True)
class HisCredit:
    """One credit as the HIS booked it: ``amount`` is negative, against the charge ``original_txn_id``."""

    txn_id: str
    original_txn_id: str
    control_id: str
    admission: str
    charge_code: str
    amount: Decimal
    times_received: int
    his_ref: str


@dataclass(frozen=True)
class _Dft:
    """The fields of a DFT^P03 the simulated HIS books."""

    control_id: str
    txn_id: str
    admission: str
    charge_code: str
    qty: Decimal
    unit_price: Decimal
    txn_type: str = "CG"
    original_txn_id: str = ""

    @property
    def amount(self) -> Decimal:
        return (self.qty * self.unit_price).quantize(_CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class OtherDoorBooking:
    """A charge (or, with `credit`, a credit against `original_txn_id`) as another interface received it."""

    txn_id: str
    admission: str
    charge_code: str
    qty: int
    unit_price_fen: int
    credit: bool = False
    original_txn_id: str = ""


class _Refusal(Exception):
    """The message cannot be booked: answer `code` with HL7 error condition `condition`."""

    def __init__(self, code: AckCode, condition: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.condition = condition
        self.text = text


class SimulatedHis(SimulatedHisBase):
    """An MLLP listener on 127.0.0.1 that books charges like a HIS and de-duplicates resends.

    Every message is recorded in `received`; a DFT^P03 is booked in `charges` once per FT1-2
    transaction id, a resend only increments `times_received` and is answered AA again.
    Fault controls may be called from any thread while it runs.  One thread accepts, one thread
    serves each connection; the SQLite connection is shared under one lock.
    """

    kind = "HIS (MLLP)"

    def __init__(
        self,
        db_path: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        encoding: str = "utf-8",
    ) -> None:
        super().__init__(db_path, host=host, port=port)
        self.encoding = encoding
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._forced: deque[tuple[AckCode, str]] = deque()
        self._ack_seq = 0
        self._acks_sent = 0
        self._acks_dropped = 0

    # -- life cycle -----------------------------------------------------------------

    def _not_started(self, message: str) -> Exception:
        return SimulatedHisStateError("not_started", message)

    def _open(self, db: sqlite3.Connection) -> None:
        db.executescript(_SCHEMA)

    @property
    def is_up(self) -> bool:
        """True while it accepts connections."""
        return self._listener is not None

    def _listen(self) -> int:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self._port if self._port is not None else self._requested_port))
        listener.listen(16)
        listener.settimeout(_POLL_S)
        port = int(listener.getsockname()[1])
        self._listener = listener
        self._accept_thread = threading.Thread(
            target=self._accept_loop, args=(listener,), name=f"his-sim-accept-{port}", daemon=True
        )
        self._accept_thread.start()
        return port

    def _unlisten(self) -> bool:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join()
            self._accept_thread = None
        with self._lock:
            connections = list(self._connections)
            threads = list(self._threads)
        for conn in connections:
            _shutdown(conn)
        for thread in threads:
            thread.join(timeout=5)
        return listener is not None

    # -- fault controls -------------------------------------------------------------

    def drop_acks_after_store(self, n: int) -> None:
        """Book the next `n` charges (more, if drops are already pending), then close without answering."""
        self._drop_after_store_more(n)

    def answer_next(self, code: str, n: int = 1, text: str = "") -> None:
        """Answer the next `n` messages with `code` (e.g. AE, AR) and `text`, booking nothing."""
        ack_code = AckCode(code)
        with self._lock:
            self._forced.extend([(ack_code, text)] * n)

    def wrong_control_id_next(self, n: int) -> None:
        """Book the next `n` charges (more, if some are already pending) but echo a wrong control id in MSA-2."""
        self._wrong_id_more(n)

    # -- read side ------------------------------------------------------------------

    def stats(self) -> HisStats:
        """Current counters."""
        with self._lock:
            db = self._require_db()
            received = db.execute("SELECT COUNT(*) FROM received").fetchone()[0]
            unique, extra = db.execute("SELECT COUNT(*), COALESCE(SUM(times_received - 1), 0) FROM charges").fetchone()
            return HisStats(
                received=received,
                unique_charges=unique,
                duplicates_received=extra,
                acks_sent=self._acks_sent,
                acks_dropped=self._acks_dropped,
                rejected=self._rejected,
                wrong_control_ids_sent=self._wrong_ids_sent,
                connections_accepted=self._connections_accepted,
            )

    def charges(self) -> list[HisCharge]:
        """Every booked charge, in booking order."""
        with self._lock:
            rows = (
                self._require_db()
                .execute(
                    "SELECT txn_id, control_id, admission, charge_code, qty, unit_price, amount, first_received_at,"
                    " times_received, his_ref FROM charges ORDER BY rowid"
                )
                .fetchall()
            )
        return [
            HisCharge(
                txn_id=row[0],
                control_id=row[1],
                admission=row[2],
                charge_code=row[3],
                qty=Decimal(row[4]),
                unit_price=Decimal(row[5]),
                amount=Decimal(row[6]),
                first_received_at=row[7],
                times_received=row[8],
                his_ref=row[9],
            )
            for row in rows
        ]

    def answers(self) -> list[tuple[str | None, str]]:
        """(control id, answer) for every received message in arrival order; answer is an ACK code or 'dropped'."""
        with self._lock:
            rows = self._require_db().execute("SELECT control_id, answer FROM received ORDER BY id").fetchall()
        return [(row[0], row[1]) for row in rows]

    # -- serving --------------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._down.is_set():
            try:
                conn, peer = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            thread = threading.Thread(target=self._serve, args=(conn,), name=f"his-sim-conn-{peer[1]}", daemon=True)
            with self._lock:
                if self._down.is_set():
                    conn.close()
                    return
                self._connections.add(conn)
                self._threads.add(thread)
                self._connections_accepted += 1
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        decoder = MllpDecoder()
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                for payload in decoder.feed(data):
                    reply = self._answer(payload)
                    if reply is None:
                        return
                    conn.sendall(reply)
        except MllpError as err:
            logger.warning("simulated HIS closing a connection: %s", err)
        except OSError:
            pass
        except Exception:
            logger.exception("simulated HIS connection handler failed")
        finally:
            _shutdown(conn)
            with self._lock:
                self._connections.discard(conn)
                self._threads.discard(threading.current_thread())

    def _answer(self, payload: bytes) -> bytes | None:
        """Record and book one message; the framed ACK to send, or None to close without answering."""
        text = payload.decode(self.encoding, errors="replace")
        received_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        try:
            dft: _Dft | None = _read_dft(text)
            refusal: _Refusal | None = None
        except _Refusal as err:
            dft, refusal = None, err
        except Exception as err:  # not HL7 at all: nothing to answer to
            logger.warning("simulated HIS received a frame it cannot read (%s); closing", err)
            self._record(None, text, received_at, "unreadable")
            return None
        with self._lock:
            self._ack_seq += 1
            ack_id = f"HIS{self._ack_seq:08d}"
            # a resend of a charge already booked is recognised and answered AA, as a real HIS de-duplicates
            already = refusal is None and dft is not None and self._is_booked(dft)
            if refusal is None and self._forced and not already:
                forced_code, forced_text = self._forced.popleft()
                refusal = _Refusal(forced_code, "207", forced_text)
            if refusal is None and dft is not None and dft.charge_code in self._rejected_codes:
                refusal = _Refusal(AckCode.AE, "204", f"unknown charge code {dft.charge_code}")
            if refusal is None and dft is not None and dft.txn_type == "CD":
                refusal = self._credit_refusal(dft)
            db = self._require_db()
            db.execute("BEGIN")  # the booking and its record in one commit: one WAL append per message
            try:
                answer = self._book_and_record(dft, refusal, text, received_at, ack_id)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            if answer is None:
                return None
            code, ack_text, condition, echo = answer
            delay = self._delay_s
        if delay and self._down.wait(delay):
            return None
        ack = build_ack(text, code, ack_text, control_id=ack_id, error_code=condition)
        if echo is not None:
            ack = _replace_msa2(ack, echo)
        with self._lock:
            self._acks_sent += 1
        return frame_text(ack, self.encoding)

    def _book_and_record(self, dft: _Dft | None, refusal: _Refusal | None, text: str, received_at: str,
                         ack_id: str) -> tuple[AckCode, str, str, str | None] | None:
        """Book an accepted message and record what came in; the answer (code, text, condition, MSA-2 echo),
        or None to drop the connection without answering (the fault ``drop_acks_after_store``)."""
        echo: str | None = None
        if refusal is not None:
            code, ack_text, condition = refusal.code, refusal.text, refusal.condition
            self._rejected += 1
        else:
            assert dft is not None
            code, ack_text, condition = AckCode.AA, "", "0"
            self._book(dft, received_at, ack_id)
            if self._drop_after_store > 0:
                self._drop_after_store -= 1
                self._acks_dropped += 1
                self._insert_received(dft, text, received_at, "dropped")
                return None
            if self._wrong_id_next > 0:
                self._wrong_id_next -= 1
                self._wrong_ids_sent += 1
                echo = "X" + dft.control_id[1:] if dft.control_id else "X"
        self._insert_received(dft, text, received_at, code.value)
        return code, ack_text, condition, echo

    def clear_faults(self) -> None:
        """Forget every pending fault (forced answers, drops, wrong ids, delay)."""
        with self._lock:
            self._forced.clear()
            self._drop_after_store = 0
            self._wrong_id_next = 0
            self._delay_s = 0.0

    def _is_booked(self, dft: _Dft) -> bool:
        db = self._require_db()
        table = "credits" if dft.txn_type == "CD" else "charges"
        return db.execute(f"SELECT 1 FROM {table} WHERE txn_id = ?", (dft.txn_id,)).fetchone() is not None

    def is_booked(self, txn_id: str, *, credit: bool = False) -> bool:
        """True when this transaction id is booked (as a credit, with `credit`)."""
        with self._lock:
            table = "credits" if credit else "charges"
            row = self._require_db().execute(f"SELECT 1 FROM {table} WHERE txn_id = ?", (txn_id,)).fetchone()
        return row is not None

    def book_from_other_door(self, booking: OtherDoorBooking, raw: str) -> tuple[str, str, str]:
        """Book a charge or credit that reached this HIS by another interface (its HTTP door), in these books.

        The same rules as for a DFT^P03: a transaction id is booked once, a credit must name a booked
        charge of the same patient and amount that is not yet credited. Faults are the other door's own.
        Returns ``(outcome, his_ref, reason)``: outcome ``booked``, ``resend`` (his_ref of the first
        booking) or ``refused`` (with the reason).
        """
        dft = _Dft(control_id=booking.txn_id, txn_id=booking.txn_id, admission=booking.admission,
                   charge_code=booking.charge_code, qty=Decimal(booking.qty),
                   unit_price=Decimal(booking.unit_price_fen) / 100, txn_type="CD" if booking.credit else "CG",
                   original_txn_id=booking.original_txn_id)
        received_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        with self._lock:
            db = self._require_db()
            if dft.txn_type == "CD":
                refusal = self._credit_refusal(dft)
                if refusal is not None:
                    self._rejected += 1
                    self._insert_received(dft, raw, received_at, refusal.code.value)
                    return "refused", "", refusal.text
            table = "credits" if dft.txn_type == "CD" else "charges"
            first = db.execute(f"SELECT his_ref FROM {table} WHERE txn_id = ?", (dft.txn_id,)).fetchone()
            self._ack_seq += 1
            self._book(dft, received_at, f"HIS{self._ack_seq:08d}")
            self._insert_received(dft, raw, received_at, AckCode.AA.value)
            if first is not None:
                return "resend", str(first[0]), ""
            return "booked", f"HIS{self._ack_seq:08d}", ""

    def _credit_refusal(self, dft: _Dft) -> _Refusal | None:
        """Why a credit cannot be booked: no such charge, another patient or amount, already credited."""
        db = self._require_db()
        if db.execute("SELECT 1 FROM credits WHERE txn_id = ?", (dft.txn_id,)).fetchone():
            return None  # a resend of a booked credit
        original = db.execute(
            "SELECT admission, amount FROM charges WHERE txn_id = ?", (dft.original_txn_id,)
        ).fetchone()
        if original is None:
            return _Refusal(AckCode.AE, "204", f"credit for unknown charge {dft.original_txn_id!r}")
        if original[0] != dft.admission or Decimal(original[1]) != dft.amount:
            return _Refusal(AckCode.AE, "207", f"credit does not match charge {dft.original_txn_id}")
        if db.execute("SELECT 1 FROM credits WHERE original_txn_id = ?", (dft.original_txn_id,)).fetchone():
            return _Refusal(AckCode.AE, "205", f"charge {dft.original_txn_id} already credited")
        return None

    def _book_credit(self, dft: _Dft, received_at: str, his_ref: str) -> None:
        db = self._require_db()
        if db.execute(
            "UPDATE credits SET times_received = times_received + 1 WHERE txn_id = ?", (dft.txn_id,)
        ).rowcount:
            return
        db.execute(
            "INSERT INTO credits (txn_id, original_txn_id, control_id, admission, charge_code, amount, amount_fen,"
            " first_received_at, times_received, his_ref) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?)",
            (dft.txn_id, dft.original_txn_id, dft.control_id, dft.admission, dft.charge_code, str(-dft.amount),
             -int(dft.amount * 100), received_at, his_ref),
        )

    def credits(self) -> list[HisCredit]:
        """Every booked credit, in booking order."""
        with self._lock:
            rows = self._require_db().execute(
                "SELECT txn_id, original_txn_id, control_id, admission, charge_code, amount, times_received, his_ref"
                " FROM credits ORDER BY rowid"
            ).fetchall()
        return [HisCredit(r[0], r[1], r[2], r[3], r[4], Decimal(r[5]), r[6], r[7]) for r in rows]

    def _book(self, dft: _Dft, received_at: str, his_ref: str) -> None:
        if dft.txn_type == "CD":
            self._book_credit(dft, received_at, his_ref)
            return
        db = self._require_db()
        updated = db.execute(
            "UPDATE charges SET times_received = times_received + 1 WHERE txn_id = ?", (dft.txn_id,)
        ).rowcount
        if updated:
            logger.info("simulated HIS: resend of %s (not booked again)", dft.txn_id)
            return
        db.execute(
            "INSERT INTO charges (txn_id, control_id, admission, charge_code, qty, unit_price, amount, amount_fen,"
            " first_received_at, times_received, his_ref) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)",
            (
                dft.txn_id,
                dft.control_id,
                dft.admission,
                dft.charge_code,
                str(dft.qty),
                str(dft.unit_price),
                str(dft.amount),
                int(dft.amount * 100),
                received_at,
                his_ref,
            ),
        )

    def _insert_received(self, dft: _Dft | None, raw: str, received_at: str, answer: str) -> None:
        values = (
            (dft.control_id, dft.txn_id, dft.admission, dft.charge_code, str(dft.qty), str(dft.amount))
            if dft is not None
            else (_control_id_or_none(raw), None, None, None, None, None)
        )
        self._require_db().execute(
            "INSERT INTO received (control_id, txn_id, admission, charge_code, qty, amount, raw, received_at, answer)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*values, raw, received_at, answer),
        )

    def _record(self, dft: _Dft | None, raw: str, received_at: str, answer: str) -> None:
        with self._lock:
            self._insert_received(dft, raw, received_at, answer)


_SEGMENTS_READ = ("MSH", "PID", "FT1")


def _read_dft(text: str) -> _Dft:
    """Read a DFT^P03; raise `_Refusal` for HL7 it will not book, anything else for non-HL7.

    python-hl7 reads the MSH (the delimiters, the message type, MSH-10) and resolves escapes; the fields of
    PID and FT1 are cut at the delimiters the MSH declared. Giving python-hl7 the whole message cost
    0.3-0.4 ms of the simulator's 0.6 ms per message (it builds a container for every component of every
    segment), and the simulator shares the gateway's two cores in the load runs (docs/scale.md).
    """
    segments: dict[str, str] = {}
    for segment in text.split("\r"):
        if segment[:3] in _SEGMENTS_READ:
            segments.setdefault(segment[:3], segment)
    message = hl7.parse(segments.get("MSH", text))  # not HL7 at all: python-hl7 says so
    message_type = f"{message.extract_field('MSH', 1, 9, 1, 1)}^{message.extract_field('MSH', 1, 9, 1, 2)}"
    if message_type != "DFT^P03":
        raise _Refusal(AckCode.AR, "200", f"unsupported message type {message_type}")
    separators = str(message.separators)  # segment, field, repetition, component, subcomponent

    def value(segment: str, field_num: int, component_num: int = 1) -> str:
        if segment == "MSH":
            raw = str(message.extract_field(segment, 1, field_num, 1, component_num))
        else:
            if segment not in segments:
                raise _Refusal(AckCode.AE, "100", f"{segment} segment missing")
            fields = segments[segment].split(separators[1])
            field = fields[field_num] if field_num < len(fields) else ""
            components = field.split(separators[2], 1)[0].split(separators[3])
            component = components[component_num - 1] if component_num <= len(components) else ""
            raw = component.split(separators[4], 1)[0]  # its first subcomponent, as python-hl7 reads it
        return str(message.unescape(raw)).strip()

    def required(segment: str, field_num: int, component_num: int = 1) -> str:
        found = value(segment, field_num, component_num)
        if not found:
            raise _Refusal(AckCode.AE, "101", f"{segment}-{field_num} is empty")
        return found

    def decimal(segment: str, field_num: int) -> Decimal:
        found = required(segment, field_num)
        try:
            return Decimal(found)
        except InvalidOperation:
            raise _Refusal(AckCode.AE, "102", f"{segment}-{field_num} {found!r} is not a number") from None

    txn_type = value("FT1", 6) or "CG"
    if txn_type not in ("CG", "CD"):
        raise _Refusal(AckCode.AE, "103", f"FT1-6 transaction type {txn_type!r} is not booked here")
    return _Dft(
        control_id=required("MSH", 10),
        txn_id=required("FT1", 2),
        admission=required("PID", 3),
        charge_code=required("FT1", 7),
        qty=decimal("FT1", 10),
        unit_price=decimal("FT1", 12),
        txn_type=txn_type,
        original_txn_id=required("FT1", 23) if txn_type == "CD" else "",
    )


def _control_id_or_none(raw: str) -> str | None:
    try:
        return str(hl7.parse(raw).extract_field("MSH", 1, 10)) or None
    except Exception:
        return None


def _replace_msa2(ack: str, echo: str) -> str:
    """The same ACK with another control id in MSA-2 (a HIS that mixes up its answers)."""
    lines = ack.split("\r")
    separator = lines[0][3]
    for index, line in enumerate(lines):
        if line.startswith("MSA" + separator):
            fields = line.split(separator)
            fields[2] = echo
            lines[index] = separator.join(fields)
    return "\r".join(lines)


def _shutdown(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()


def main(argv: list[str] | None = None) -> int:
    """`spd-sim his`: run a simulated HIS until interrupted."""
    parser = argparse.ArgumentParser(prog="spd-sim his", description="Simulated HIS: HL7 v2 DFT^P03 over MLLP.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port, 0 for any free one ({DEFAULT_PORT})")
    parser.add_argument("--db", required=True, type=Path, help="SQLite file recording what was received")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before each answer")
    parser.add_argument("--reject-code", action="append", default=[], help="charge code always answered AE")
    parser.add_argument("--encoding", default="utf-8", help="text encoding of the messages (utf-8)")
    args = parser.parse_args(argv)
    his = SimulatedHis(args.db, host=args.host, port=args.port, encoding=args.encoding)
    return serve_until_stopped(
        his, prog="spd-sim his", address=f"{args.host}:{args.port}", delay_s=args.delay,
        reject_codes=set(args.reject_code), listening=lambda: f"simulated HIS listening on {args.host}:{his.port}, "
        f"recording to {args.db}",
    )



if __name__ == "__main__":
    sys.exit(main())
