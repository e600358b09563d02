"""HIS adapter for a JSON-over-HTTP charging API: one POST per charge or credit, its id as the idempotency key.

The wire contract (what the HIS side implements; `hw_sim.his_http` is its twin, docs/his.md the prose):

A **charge**: ``POST {base_url}/charges`` with ``Content-Type: application/json``,
``Idempotency-Key: <charge id>``, ``Authorization: Bearer <token>`` when a token is configured, and the body::

    {"charge_id": "...", "admission": "ZY...", "item_code": "HC00001", "charge_code": "33100001",
     "item_name": "...", "qty": 1, "unit_price_fen": 589000, "amount_fen": 589000,
     "udi": {"gtin": "0...", "lot": "...", "serial": "...", "expiry": "YYYY-MM-DD" or ""},
     "operator": "N0001", "dept": "OR-3", "used_at": "2026-11-23T10:12:00.000+08:00",
     "source": {"device": "...", "seq": 42}}

A **credit** (an item given back unused after it was charged): ``POST {base_url}/credits`` with
``Idempotency-Key: <credit id>`` and the body::

    {"credit_id": "...", "original_charge_id": "<the charge it reverses>", "admission": "ZY...",
     "item_code": "HC00001", "charge_code": "33100001", "item_name": "...", "qty": 1,
     "unit_price_fen": 589000, "amount_fen": 589000, "udi": {...as for a charge...},
     "operator": "N0002", "dept": "OR-3", "returned_at": "2026-11-23T10:40:00.000+08:00",
     "source": {"device": "...", "seq": 43}}

The credit copies what was charged (admission, codes, unit price); amounts are positive, the resource says
it is a credit. The credit id is derived from the return event as a charge id is from the consumption,
so a resend carries the same id.

Answers and what the outbox does with them (the same for both resources; "id" is ``charge_id`` for a
charge and ``credit_id`` for a credit):

* 2xx whose JSON body echoes the id → ACCEPTED (``his_ref`` from the body);
* 409 with ``"error": "already_booked"`` and our id → ACCEPTED (a resend of a booked charge or credit);
* 408, 429, 401, 403, 404 → RETRY: a transient or configuration problem that is not about this message,
  parking it would park every message behind it;
* any other 4xx → REJECTED with the HIS's ``message``/``error`` as the reason (a credit of an unknown
  charge, of another patient or amount, or of a charge already credited, is a 422);
* 5xx, 3xx, timeouts, connection errors, an unreadable body, a 2xx naming another id → RETRY.

`HisResult.code` is the HTTP status as text (``"201"``, ``"409"``, ``"422"``, ``"503"``) when the HIS
answered, a `RetryReason` value otherwise.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import logging
import socket
import ssl
import threading
import urllib.parse
from types import TracebackType
from typing import Any, ClassVar

from gateway.his.adapter import (
    HisAdapterClosed,
    HisConfigError,
    HisMessageError,
    HisOutcome,
    HisResult,
    RetryReason,
)
from gateway.his.sender import OutboxPayload

logger = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"
ALREADY_BOOKED = "already_booked"
_RETRY_4XX = frozenset({401, 403, 404, 408, 429})
_MAX_BODY_BYTES = 1 << 20
_LINE_FIELDS: dict[str, type] = {
    "charge_id": str, "device": str, "seq": int, "ts_ms": int, "admission": str, "gtin": str, "lot": str,
    "serial": str, "expiry": str, "item_code": str, "charge_code": str, "name": str, "price_fen": int,
    "qty": int, "operator": str, "dept": str,
}
# the outbox line of a credit: the `bridge.CreditRequest` fields and its own id (see gateway.charging)
_CREDIT_FIELDS: dict[str, type] = {
    "credit_id": str, "original_charge_id": str, "device": str, "seq": int, "ts_ms": int, "admission": str,
    "gtin": str, "lot": str, "serial": str, "expiry": str, "item_code": str, "charge_code": str, "name": str,
    "price_fen": int, "operator": str, "dept": str,
}


class HttpJsonAdapter:
    """Sends outbox charge and credit lines to a HIS JSON endpoint and turns its answers into `HisResult`s.

    The message handed to `send` is the outbox line as JSON (the outbox ``line`` column), which is
    why `outbox_payload` is `OutboxPayload.CHARGE_LINE`: the sender reads it and passes it instead of
    the HL7 rendering. A line with ``credit_id`` is a credit and goes to ``/credits``, any other to
    ``/charges``.  One keep-alive connection is held; after any error it is dropped and the next
    send opens a new one.  If a kept connection turns out to have been closed by the HIS before a
    single byte of answer, the request is sent once more on a fresh connection within the same
    `send` (harmless: the HIS de-duplicates on the idempotency key).  Safe to share between threads.
    """

    outbox_payload: ClassVar[OutboxPayload] = OutboxPayload.CHARGE_LINE

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 5.0,
        token: str | None = None,
        verify: bool | ssl.SSLContext = True,
        utc_offset_minutes: int = 480,
    ) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HisConfigError("bad_url", f"HIS URL must be http(s)://host[:port][/path], got {base_url!r}")
        try:
            port = parts.port
        except ValueError as err:
            raise HisConfigError("bad_url", f"HIS URL has a bad port: {base_url!r}") from err
        if parts.query or parts.fragment:
            raise HisConfigError("bad_url", f"HIS URL must not carry a query or fragment: {base_url!r}")
        if timeout_s <= 0:
            raise HisConfigError("bad_timeout", "timeout_s must be positive")
        if not -14 * 60 <= utc_offset_minutes <= 14 * 60:
            raise HisConfigError("bad_utc_offset", "utc_offset_minutes must be within ±840")
        if token is not None and (not token or any(c in token for c in "\r\n")):
            raise HisConfigError("bad_token", "token must be a non-empty single line")
        self.base_url = base_url
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = port or (443 if parts.scheme == "https" else 80)
        self.path = parts.path.rstrip("/") + "/charges"
        self.credits_path = parts.path.rstrip("/") + "/credits"
        self.timeout_s = timeout_s
        self.connections_opened = 0
        self._token = token
        self._tz = dt.timezone(dt.timedelta(minutes=utc_offset_minutes))
        self._ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            if isinstance(verify, ssl.SSLContext):
                self._ssl = verify
            elif verify:
                self._ssl = ssl.create_default_context()
            else:
                self._ssl = ssl._create_unverified_context()
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None
        self._closed = False

    def __enter__(self) -> HttpJsonAdapter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def send(self, control_id: str, message: str) -> HisResult:
        """POST the outbox line `message` (JSON; its charge or credit id must be `control_id`); judge the answer."""
        line = _line_object(message)
        if "credit_id" in line:
            path, id_field, request = self.credits_path, "credit_id", self._credit_request(control_id, line)
        else:
            path, id_field, request = self.path, "charge_id", self._charge_request(control_id, line)
        body = json.dumps(request, ensure_ascii=False).encode("utf-8")
        with self._lock:
            if self._closed:
                raise HisAdapterClosed("closed", "send() after close()")
            return self._exchange(control_id, path, id_field, body)

    def close(self) -> None:
        """Close the connection; further sends raise `HisAdapterClosed`."""
        with self._lock:
            self._closed = True
            self._disconnect()

    def charge_request(self, control_id: str, message: str) -> dict[str, Any]:
        """The JSON request body for a charge line; raises `HisMessageError` for a line it cannot send."""
        return self._charge_request(control_id, _line_object(message))

    def credit_request(self, control_id: str, message: str) -> dict[str, Any]:
        """The JSON request body for a credit line; raises `HisMessageError` for a line it cannot send."""
        return self._credit_request(control_id, _line_object(message))

    def _credit_request(self, control_id: str, line: dict[str, Any]) -> dict[str, Any]:
        _check_fields(line, _CREDIT_FIELDS, "credit line")
        if line["credit_id"] != control_id:
            raise HisMessageError(
                "control_id_mismatch", f"credit line id {line['credit_id']!r} is not the control id {control_id!r}"
            )
        returned_at = dt.datetime.fromtimestamp(line["ts_ms"] / 1000, tz=self._tz)
        return {
            "credit_id": control_id,
            "original_charge_id": line["original_charge_id"],
            "admission": line["admission"],
            "item_code": line["item_code"],
            "charge_code": line["charge_code"],
            "item_name": line["name"],
            "qty": 1,
            "unit_price_fen": line["price_fen"],
            "amount_fen": line["price_fen"],
            "udi": {"gtin": line["gtin"], "lot": line["lot"], "serial": line["serial"], "expiry": line["expiry"]},
            "operator": line["operator"],
            "dept": line["dept"],
            "returned_at": returned_at.isoformat(timespec="milliseconds"),
            "source": {"device": line["device"], "seq": line["seq"]},
        }

    def _charge_request(self, control_id: str, line: dict[str, Any]) -> dict[str, Any]:
        _check_fields(line, _LINE_FIELDS, "charge line")
        if line["charge_id"] != control_id:
            raise HisMessageError(
                "control_id_mismatch", f"charge line id {line['charge_id']!r} is not the control id {control_id!r}"
            )
        used_at = dt.datetime.fromtimestamp(line["ts_ms"] / 1000, tz=self._tz)
        return {
            "charge_id": control_id,
            "admission": line["admission"],
            "item_code": line["item_code"],
            "charge_code": line["charge_code"],
            "item_name": line["name"],
            "qty": line["qty"],
            "unit_price_fen": line["price_fen"],
            "amount_fen": line["price_fen"] * line["qty"],
            "udi": {"gtin": line["gtin"], "lot": line["lot"], "serial": line["serial"], "expiry": line["expiry"]},
            "operator": line["operator"],
            "dept": line["dept"],
            "used_at": used_at.isoformat(timespec="milliseconds"),
            "source": {"device": line["device"], "seq": line["seq"]},
        }

    # -- exchange ---------------------------------------------------------------------

    def _exchange(self, control_id: str, path: str, id_field: str, body: bytes) -> HisResult:
        reused = self._conn is not None
        if self._conn is None:
            self._connect()
        outcome = self._attempt(control_id, path, id_field, body, reused=reused)
        if outcome is None:
            logger.info("kept connection to HIS was closed before any answer; sending %s on a new one", control_id)
            self._connect()
            outcome = self._attempt(control_id, path, id_field, body, reused=False)
            assert outcome is not None
        return outcome

    def _attempt(self, control_id: str, path: str, id_field: str, body: bytes, *, reused: bool) -> HisResult | None:
        conn = self._conn
        assert conn is not None
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Accept": "application/json",
            IDEMPOTENCY_HEADER: control_id,
        }
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as err:
            self._disconnect()
            if reused:
                return None
            detail = f"HIS closed the connection before answering {control_id}: {err}"
            return _retry(RetryReason.CONNECTION_CLOSED, detail)
        except TimeoutError:
            self._disconnect()
            return _retry(RetryReason.TIMEOUT, f"no answer for {control_id} from HIS within {self.timeout_s:g} s")
        except (OSError, http.client.HTTPException) as err:
            self._disconnect()
            if isinstance(err, ConnectionRefusedError | socket.gaierror):
                return _retry(RetryReason.CONNECT_FAILED, f"cannot connect to HIS at {self.base_url}: {err}")
            return _retry(RetryReason.SEND_FAILED, f"sending {control_id} to HIS at {self.base_url} failed: {err}")
        try:
            raw = response.read(_MAX_BODY_BYTES + 1)
        except TimeoutError:
            self._disconnect()
            detail = f"HIS answer for {control_id} did not arrive within {self.timeout_s:g} s"
            return _retry(RetryReason.TIMEOUT, detail)
        except (OSError, http.client.HTTPException) as err:
            self._disconnect()
            return _retry(RetryReason.CONNECTION_CLOSED, f"reading the HIS answer for {control_id} failed: {err}")
        if response.will_close or len(raw) > _MAX_BODY_BYTES:
            self._disconnect()
        return judge(control_id, response.status, raw, id_field=id_field)

    def _connect(self) -> None:
        self._disconnect()
        if self._ssl is not None:
            self._conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout_s, context=self._ssl)
        else:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        self.connections_opened += 1

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def judge(control_id: str, status: int, raw: bytes, *, id_field: str = "charge_id") -> HisResult:
    """The outcome of one HTTP answer to the charge (or credit) `control_id` (see the module docstring).

    `id_field` is the answer field that must echo it: ``charge_id``, or ``credit_id`` for a credit.
    """
    code = str(status)
    answer = _json_object(raw)
    echoed = answer.get(id_field) if answer is not None else None
    his_ref = answer.get("his_ref") if answer is not None else None
    his_ref = his_ref if isinstance(his_ref, str) and his_ref else None
    if 200 <= status < 300:
        if answer is None:
            return _retry(RetryReason.NOT_AN_ACK, f"HIS answered {status} to {control_id} without a JSON object")
        if echoed != control_id:
            return _retry(RetryReason.WRONG_CONTROL_ID, f"HIS answered {status} for {echoed!r}, not {control_id}")
        return HisResult(HisOutcome.ACCEPTED, code, _reason(answer) or "booked by HIS", his_ref)
    if status == 409 and answer is not None and answer.get("error") == ALREADY_BOOKED and echoed == control_id:
        return HisResult(HisOutcome.ACCEPTED, code, f"HIS had already booked {control_id}", his_ref)
    reason = _reason(answer) or _snippet(raw) or f"HIS answered HTTP {status} without a reason"
    if 400 <= status < 500 and status not in _RETRY_4XX:
        return HisResult(HisOutcome.REJECTED, code, reason, his_ref)
    logger.info("HIS send to be retried (HTTP %d): %s", status, reason)
    return HisResult(HisOutcome.RETRY, code, f"HIS answered HTTP {status}: {reason}", his_ref)


def _line_object(message: str) -> dict[str, Any]:
    try:
        line = json.loads(message)
    except json.JSONDecodeError as err:
        raise HisMessageError("bad_message", f"outbox line is not JSON: {err}") from err
    if not isinstance(line, dict):
        raise HisMessageError("bad_message", "outbox line is not a JSON object")
    return line


def _check_fields(line: dict[str, Any], fields: dict[str, type], what: str) -> None:
    for name, kind in fields.items():
        value = line.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise HisMessageError("bad_message", f"{what} field {name!r} is missing or not {kind.__name__}")


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _reason(answer: dict[str, Any] | None) -> str:
    """The HIS's explanation: ``message`` and ``error`` code, without saying the same thing twice."""
    if answer is None:
        return ""
    message = answer.get("message")
    error = answer.get("error")
    text = message if isinstance(message, str) else ""
    err = error if isinstance(error, str) else ""
    if text and err and err not in text:
        return f"{text} [{err}]"
    return text or err


def _snippet(raw: bytes) -> str:
    return raw[:200].decode("utf-8", errors="replace").strip()


def _retry(reason: RetryReason, detail: str) -> HisResult:
    logger.info("HIS send to be retried (%s): %s", reason.value, detail)
    return HisResult(HisOutcome.RETRY, reason.value, detail)
