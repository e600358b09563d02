"""A simulated HIS charging endpoint speaking JSON over HTTP: books each charge id once, with faults.

It implements the contract described in :mod:`gateway.his.http_adapter` (and docs/his.md): ``POST .../charges``
with the charge id in the body and in the ``Idempotency-Key`` header.  A first booking is answered ``201``
``{"charge_id", "his_ref", "status": "booked"}``; a resend of a booked id ``409``
``{"error": "already_booked", "charge_id", "his_ref"}``; a resend of a booked id with other content
``422 idempotency_key_reused``; an invalid body ``422`` (``400`` when it is not JSON); a bad token ``401``.

``POST .../credits`` books a credit once per ``credit_id`` (answers as above, echoing ``credit_id``), as
the MLLP simulator books a ``CD``: against the charge ``original_charge_id``, which must be booked, of the
same patient and amount, and not yet credited (else ``422`` ``unknown_charge``, ``credit_mismatch`` or
``already_credited``).  Credits are kept apart, with a negative ``amount_fen``.

Given a `SimulatedHis` as ``ledger``, it books into that simulator's books instead of its own (one HIS
with two interfaces); its faults and its ``received`` log stay its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sqlite3
import sys
import threading
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from hw_sim.his import OtherDoorBooking, SimulatedHis
from hw_sim.his_base import SimulatedHisBase
from hw_sim.his_runner import serve_until_stopped

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8088
_MAX_BODY = 1 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS received (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    charge_id TEXT,
    status INTEGER NOT NULL,
    answer TEXT NOT NULL,
    raw TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS charges (
    charge_id TEXT PRIMARY KEY,
    admission TEXT NOT NULL,
    charge_code TEXT NOT NULL,
    item_code TEXT NOT NULL,
    qty INTEGER NOT NULL,
    unit_price_fen INTEGER NOT NULL,
    amount_fen INTEGER NOT NULL,
    gtin TEXT NOT NULL,
    serial TEXT NOT NULL,
    body TEXT NOT NULL,
    first_received_at TEXT NOT NULL,
    times_received INTEGER NOT NULL,
    his_ref TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS credits (
    credit_id TEXT PRIMARY KEY,
    original_charge_id TEXT NOT NULL UNIQUE,
    admission TEXT NOT NULL,
    charge_code TEXT NOT NULL,
    amount_fen INTEGER NOT NULL,
    body TEXT NOT NULL,
    first_received_at TEXT NOT NULL,
    times_received INTEGER NOT NULL,
    his_ref TEXT NOT NULL
);
"""

_REQUIRED: dict[str, type] = {
    "charge_id": str, "admission": str, "item_code": str, "charge_code": str, "qty": int,
    "unit_price_fen": int, "amount_fen": int, "udi": dict, "operator": str, "dept": str, "used_at": str,
}
_REQUIRED_CREDIT: dict[str, type] = {
    "credit_id": str, "original_charge_id": str, "admission": str, "item_code": str, "charge_code": str,
    "qty": int, "unit_price_fen": int, "amount_fen": int, "udi": dict, "operator": str, "dept": str,
    "returned_at": str,
}


class SimulatedHttpHisError(Exception):
    """Root of the simulator's errors; `reason` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SimulatedHttpHisStateError(SimulatedHttpHisError, RuntimeError):
    """A control was used in the wrong state (e.g. `come_up` before `start`)."""


@dataclass(frozen=True)
class HttpHisStats:
    """Counters since start; `received` and the charge figures come from the database."""

    received: int
    unique_charges: int
    duplicates_received: int
    responses_sent: int
    responses_dropped: int
    rejected: int
    wrong_charge_ids_sent: int
    connections_accepted: int


@dataclass(frozen=True)
class HttpHisCharge:
    """One charge as the HIS booked it (one per charge id)."""

    charge_id: str
    admission: str
    charge_code: str
    item_code: str
    qty: int
    unit_price_fen: int
    amount_fen: int
    gtin: str
    serial: str
    times_received: int
    his_ref: str


@dataclass(frozen=True)
class HttpHisCredit:
    """One credit as the HIS booked it (one per credit id): `amount_fen` is negative."""

    credit_id: str
    original_charge_id: str
    admission: str
    charge_code: str
    amount_fen: int
    times_received: int
    his_ref: str


@dataclass(frozen=True)
class _Answer:
    status: int
    body: dict[str, Any]


class _Server(ThreadingHTTPServer):
    """A threading HTTP server that knows its open connections, so an outage can cut them."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], his: SimulatedHttpHis) -> None:
        self.his = his
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        with self.connections_lock:
            self.open_connections.add(conn)
        self.his._count_connection()
        return conn, addr

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.open_connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-request (a killed gateway, a cut) is normal here: no traceback on stderr."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            logger.debug("simulated HTTP HIS: client %s went away mid-request", client_address)
            return
        super().handle_error(request, client_address)

    def cut_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.open_connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    server: _Server

    def do_POST(self) -> None:
        his = self.server.his
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(min(length, _MAX_BODY + 1))
        resource = self.path.rstrip("/").rsplit("/", 1)[-1]
        if resource not in ("charges", "credits"):
            self._reply(_Answer(404, {"error": "not_found", "message": f"no resource {self.path}"}))
            return
        answer = his._handle(raw, self.headers.get("Idempotency-Key"), self.headers.get("Authorization"),
                             credit=resource == "credits")
        if answer is None:
            self.close_connection = True
            return
        self._reply(answer)

    def _reply(self, answer: _Answer) -> None:
        payload = json.dumps(answer.body, ensure_ascii=False).encode("utf-8")
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        self.server.his._count_response()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("simulated HTTP HIS: " + format, *args)


class _Refusal(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.answer = _Answer(status, {"error": error, "message": message})


class SimulatedHttpHis(SimulatedHisBase):
    """An HTTP listener on 127.0.0.1 that books charges like a HIS and de-duplicates resends by charge id.

    Fault controls may be called from any thread while it runs.  One thread accepts, one thread serves
    each connection; the SQLite connection is shared under one lock.
    """

    kind = "HIS (HTTP)"

    def __init__(
        self, db_path: str | Path, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
        ledger: SimulatedHis | None = None,
    ) -> None:
        super().__init__(db_path, host=host, port=port)
        self.token = token
        self.ledger = ledger
        self._server: _Server | None = None
        self._serve_thread: threading.Thread | None = None
        self._forced: deque[_Answer] = deque()
        self._ref_seq = 0
        self._responses_sent = 0
        self._responses_dropped = 0

    # -- life cycle -----------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL to configure the adapter with."""
        return f"http://{self.host}:{self.port}/his/api"

    def _not_started(self, message: str) -> Exception:
        return SimulatedHttpHisStateError("not_started", message)

    def _open(self, db: sqlite3.Connection) -> None:
        db.executescript(_SCHEMA)
        (count,) = db.execute("SELECT (SELECT COUNT(*) FROM charges) + (SELECT COUNT(*) FROM credits)").fetchone()
        self._ref_seq = int(count)

    @property
    def is_up(self) -> bool:
        """True while it accepts connections."""
        return self._server is not None

    def _listen(self) -> int:
        server = _Server((self.host, self._port if self._port is not None else self._requested_port), self)
        port = int(server.server_address[1])
        self._server = server
        self._serve_thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"his-http-sim-{port}", daemon=True
        )
        self._serve_thread.start()
        return port

    def _unlisten(self) -> bool:
        server, self._server = self._server, None
        if server is None:
            return False
        server.shutdown()
        server.cut_connections()
        server.server_close()
        if self._serve_thread is not None:
            self._serve_thread.join()
            self._serve_thread = None
        return True

    # -- fault controls -------------------------------------------------------------

    def drop_responses_after_store(self, n: int) -> None:
        """Book the next `n` charges (more, if drops are already pending), then close their connection unanswered."""
        self._drop_after_store_more(n)

    def answer_next(self, status: int, n: int = 1, *, error: str = "forced", message: str = "") -> None:
        """Answer the next `n` requests with this HTTP status and error body, booking nothing."""
        with self._lock:
            self._forced.extend([_Answer(status, {"error": error, "message": message})] * n)

    def wrong_charge_id_next(self, n: int) -> None:
        """Book the next `n` charges (more, if some are already pending) but echo another charge id."""
        self._wrong_id_more(n)

    def clear_faults(self) -> None:
        """Forget every pending fault (forced answers, drops, wrong ids, delay)."""
        with self._lock:
            self._forced.clear()
            self._drop_after_store = 0
            self._wrong_id_next = 0
            self._delay_s = 0.0

    # -- read side ------------------------------------------------------------------

    def stats(self) -> HttpHisStats:
        with self._lock:
            db = self._require_db()
            (received,) = db.execute("SELECT COUNT(*) FROM received").fetchone()
            unique, extra = db.execute("SELECT COUNT(*), COALESCE(SUM(times_received - 1), 0) FROM charges").fetchone()
            return HttpHisStats(
                received=received,
                unique_charges=unique,
                duplicates_received=extra,
                responses_sent=self._responses_sent,
                responses_dropped=self._responses_dropped,
                rejected=self._rejected,
                wrong_charge_ids_sent=self._wrong_ids_sent,
                connections_accepted=self._connections_accepted,
            )

    def charges(self) -> list[HttpHisCharge]:
        """Every booked charge, in booking order."""
        with self._lock:
            rows = self._require_db().execute(
                "SELECT charge_id, admission, charge_code, item_code, qty, unit_price_fen, amount_fen, gtin, serial,"
                " times_received, his_ref FROM charges ORDER BY rowid"
            ).fetchall()
        return [HttpHisCharge(*row) for row in rows]

    def credits(self) -> list[HttpHisCredit]:
        """Every booked credit, in booking order."""
        with self._lock:
            rows = self._require_db().execute(
                "SELECT credit_id, original_charge_id, admission, charge_code, amount_fen, times_received, his_ref"
                " FROM credits ORDER BY rowid"
            ).fetchall()
        return [HttpHisCredit(*row) for row in rows]

    def answers(self) -> list[tuple[str | None, int, str]]:
        """(charge or credit id, HTTP status, error or 'booked'/'dropped') for every request in arrival order."""
        with self._lock:
            rows = self._require_db().execute("SELECT charge_id, status, answer FROM received ORDER BY id").fetchall()
        return [(row[0], row[1], row[2]) for row in rows]

    def booked_body(self, charge_id: str) -> dict[str, Any] | None:
        """The JSON body of a booked charge as first received."""
        with self._lock:
            row = self._require_db().execute("SELECT body FROM charges WHERE charge_id = ?", (charge_id,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    # -- serving --------------------------------------------------------------------

    def _count_connection(self) -> None:
        with self._lock:
            self._connections_accepted += 1

    def _count_response(self) -> None:
        with self._lock:
            self._responses_sent += 1

    def _handle(
        self, raw: bytes, idempotency_key: str | None, authorization: str | None, *, credit: bool = False
    ) -> _Answer | None:
        """Record and book one request; the answer, or None to close the connection without one."""
        received_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        text = raw.decode("utf-8", errors="replace")
        id_field = "credit_id" if credit else "charge_id"
        try:
            body = self._validate(raw, idempotency_key, authorization, credit=credit)
        except _Refusal as refusal:
            with self._lock:
                self._rejected += 1
                self._record(None, refusal.answer, text, received_at)
            return refusal.answer
        doc_id = str(body[id_field])
        with self._lock:
            # a resend of something already booked is recognised, as a real HIS de-duplicates (MLLP twin alike)
            answer = self._forced.popleft() if self._forced and not self._is_booked(doc_id, credit) else None
            if answer is None and body["charge_code"] in self._rejected_codes:
                answer = _Answer(422, {"error": "unknown_charge_code", id_field: doc_id,
                                       "message": f"unknown charge code {body['charge_code']}"})
            if answer is not None:
                self._rejected += 1
                self._record(doc_id, answer, text, received_at)
                return answer
            if self.ledger is not None:
                answer = self._book_in_ledger(self.ledger, body, text, credit=credit)
            elif credit:
                answer = self._book_credit(body, text, received_at)
            else:
                answer = self._book(body, text, received_at)
            if answer.status == 201 and self._drop_after_store > 0:
                self._drop_after_store -= 1
                self._responses_dropped += 1
                self._record(doc_id, _Answer(0, {"error": "dropped"}), text, received_at)
                return None
            if answer.status == 201 and self._wrong_id_next > 0:
                self._wrong_id_next -= 1
                self._wrong_ids_sent += 1
                answer = _Answer(201, {**answer.body, id_field: "X" + doc_id[1:]})
            self._record(doc_id, answer, text, received_at)
            delay = self._delay_s
        if delay and self._down.wait(delay):
            return None
        return answer

    def _is_booked(self, doc_id: str, credit: bool) -> bool:
        if self.ledger is not None:
            return self.ledger.is_booked(doc_id, credit=credit)
        table, key = ("credits", "credit_id") if credit else ("charges", "charge_id")
        return self._require_db().execute(f"SELECT 1 FROM {table} WHERE {key} = ?", (doc_id,)).fetchone() is not None

    def _validate(
        self, raw: bytes, idempotency_key: str | None, authorization: str | None, *, credit: bool = False
    ) -> dict[str, Any]:
        if self.token is not None and authorization != f"Bearer {self.token}":
            raise _Refusal(401, "unauthorized", "missing or wrong bearer token")
        if len(raw) > _MAX_BODY:
            raise _Refusal(413, "too_large", "request body too large")
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise _Refusal(400, "bad_json", f"body is not JSON: {err}") from None
        if not isinstance(body, dict):
            raise _Refusal(400, "bad_json", "body is not a JSON object")
        required, id_field = (_REQUIRED_CREDIT, "credit_id") if credit else (_REQUIRED, "charge_id")
        for name, kind in required.items():
            value = body.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise _Refusal(422, "invalid_field", f"{name} is missing or not {kind.__name__}")
        for name in (id_field, "admission", "charge_code", *(("original_charge_id",) if credit else ())):
            if not body[name].strip():
                raise _Refusal(422, "invalid_field", f"{name} is empty")
        if idempotency_key != body[id_field]:
            raise _Refusal(400, "idempotency_key_mismatch", f"Idempotency-Key header differs from {id_field}")
        if body["qty"] <= 0 or body["unit_price_fen"] < 0:
            raise _Refusal(422, "invalid_amount", "qty must be positive and unit_price_fen non-negative")
        if body["amount_fen"] != body["qty"] * body["unit_price_fen"]:
            raise _Refusal(422, "invalid_amount", "amount_fen is not qty * unit_price_fen")
        return body

    def _next_ref(self) -> str:
        self._ref_seq += 1
        return f"HTTPHIS{self._ref_seq:08d}"

    def _book_in_ledger(self, ledger: SimulatedHis, body: dict[str, Any], text: str, *, credit: bool) -> _Answer:
        id_field = "credit_id" if credit else "charge_id"
        doc_id = str(body[id_field])
        booking = OtherDoorBooking(
            txn_id=doc_id, admission=body["admission"], charge_code=body["charge_code"], qty=body["qty"],
            unit_price_fen=body["unit_price_fen"], credit=credit,
            original_txn_id=str(body.get("original_charge_id", "")),
        )
        outcome, his_ref, reason = ledger.book_from_other_door(booking, text)
        if outcome == "refused":
            self._rejected += 1
            return _Answer(422, {"error": "credit_refused", id_field: doc_id, "message": reason})
        if outcome == "resend":
            return _Answer(409, {"error": "already_booked", id_field: doc_id, "his_ref": his_ref,
                                 "message": f"{doc_id} is already booked"})
        return _Answer(201, {id_field: doc_id, "his_ref": his_ref, "status": "booked"})

    def _book_credit(self, body: dict[str, Any], text: str, received_at: str) -> _Answer:
        db = self._require_db()
        credit_id, original = body["credit_id"], body["original_charge_id"]
        row = db.execute(
            "SELECT original_charge_id, admission, amount_fen, his_ref FROM credits WHERE credit_id = ?", (credit_id,)
        ).fetchone()
        if row is not None:
            if tuple(row[:3]) != (original, body["admission"], -body["amount_fen"]):
                self._rejected += 1
                return _Answer(422, {"error": "idempotency_key_reused", "credit_id": credit_id,
                                     "message": f"credit {credit_id} was booked with other content"})
            db.execute("UPDATE credits SET times_received = times_received + 1 WHERE credit_id = ?", (credit_id,))
            logger.info("simulated HTTP HIS: resend of credit %s (not booked again)", credit_id)
            return _Answer(409, {"error": "already_booked", "credit_id": credit_id, "his_ref": row[3],
                                 "message": f"credit {credit_id} is already booked"})
        charge = db.execute(
            "SELECT admission, amount_fen FROM charges WHERE charge_id = ?", (original,)
        ).fetchone()
        refusal: tuple[str, str] | None = None
        if charge is None:
            refusal = ("unknown_charge", f"credit for unknown charge {original!r}")
        elif tuple(charge) != (body["admission"], body["amount_fen"]):
            refusal = ("credit_mismatch", f"credit does not match charge {original}")
        elif db.execute("SELECT 1 FROM credits WHERE original_charge_id = ?", (original,)).fetchone():
            refusal = ("already_credited", f"charge {original} already credited")
        if refusal is not None:
            self._rejected += 1
            return _Answer(422, {"error": refusal[0], "credit_id": credit_id, "message": refusal[1]})
        his_ref = self._next_ref()
        db.execute(
            "INSERT INTO credits (credit_id, original_charge_id, admission, charge_code, amount_fen, body,"
            " first_received_at, times_received, his_ref) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?)",
            (credit_id, original, body["admission"], body["charge_code"], -body["amount_fen"], text, received_at,
             his_ref),
        )
        return _Answer(201, {"credit_id": credit_id, "his_ref": his_ref, "status": "booked"})

    def _book(self, body: dict[str, Any], text: str, received_at: str) -> _Answer:
        db = self._require_db()
        charge_id = body["charge_id"]
        row = db.execute(
            "SELECT admission, charge_code, qty, unit_price_fen, his_ref FROM charges WHERE charge_id = ?", (charge_id,)
        ).fetchone()
        if row is not None:
            if tuple(row[:4]) != (body["admission"], body["charge_code"], body["qty"], body["unit_price_fen"]):
                self._rejected += 1
                return _Answer(422, {"error": "idempotency_key_reused", "charge_id": charge_id,
                                     "message": f"charge {charge_id} was booked with other content"})
            db.execute("UPDATE charges SET times_received = times_received + 1 WHERE charge_id = ?", (charge_id,))
            logger.info("simulated HTTP HIS: resend of %s (not booked again)", charge_id)
            return _Answer(409, {"error": "already_booked", "charge_id": charge_id, "his_ref": row[4],
                                 "message": f"charge {charge_id} is already booked"})
        his_ref = self._next_ref()
        udi = body["udi"]
        db.execute(
            "INSERT INTO charges (charge_id, admission, charge_code, item_code, qty, unit_price_fen, amount_fen, gtin,"
            " serial, body, first_received_at, times_received, his_ref) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)",
            (charge_id, body["admission"], body["charge_code"], body["item_code"], body["qty"], body["unit_price_fen"],
             body["amount_fen"], str(udi.get("gtin", "")), str(udi.get("serial", "")), text, received_at, his_ref),
        )
        return _Answer(201, {"charge_id": charge_id, "his_ref": his_ref, "status": "booked"})

    def _record(self, charge_id: str | None, answer: _Answer, raw: str, received_at: str) -> None:
        label = str(answer.body.get("error") or answer.body.get("status") or "")
        self._require_db().execute(
            "INSERT INTO received (charge_id, status, answer, raw, received_at) VALUES (?, ?, ?, ?, ?)",
            (charge_id, answer.status, label, raw, received_at),
        )


def main(argv: list[str] | None = None) -> int:
    """Run a simulated HTTP JSON HIS until interrupted."""
    parser = argparse.ArgumentParser(prog="spd-sim his-http", description="Simulated HIS: JSON charges over HTTP.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port, 0 for any free one ({DEFAULT_PORT})")
    parser.add_argument("--db", required=True, type=Path, help="SQLite file recording what was received")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before each answer")
    parser.add_argument("--reject-code", action="append", default=[], help="charge code always answered 422")
    parser.add_argument("--token", default=None, help="bearer token required from clients")
    args = parser.parse_args(argv)
    his = SimulatedHttpHis(args.db, host=args.host, port=args.port, token=args.token)
    return serve_until_stopped(
        his, prog="spd-sim his-http", address=f"{args.host}:{args.port}", delay_s=args.delay,
        reject_codes=set(args.reject_code),
        listening=lambda: f"simulated HTTP HIS at {his.url}, recording to {args.db}",
    )


if __name__ == "__main__":
    sys.exit(main())
