"""The two ways an incident notice leaves the gateway: an e-mail over SMTP, a signed JSON POST to a webhook.

A channel's :meth:`deliver` sends one notice or raises :class:`DeliveryError` (with a line saying why);
retrying is the dispatcher's business (:mod:`gateway.notify`). Both carry the notice's id (``Message-ID``,
``X-SPD-Delivery``) so a receiver can recognise a notice sent again after a lost answer.

Webhook signature: ``X-SPD-Signature: sha256=<hex>``, the HMAC-SHA256 with the configured secret over
``<X-SPD-Timestamp>.<body>`` (the timestamp in unix seconds, then a dot, then the body's bytes as sent).
A receiver recomputes it, compares in constant time and refuses old timestamps (a replay).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import smtplib
import ssl
import time
import urllib.error
import urllib.request
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, Protocol

from gateway.data.incidents import IncidentRow, NoticeRow
from gateway.notify_settings import SmtpSettings, WebhookSettings

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-SPD-Signature"
TIMESTAMP_HEADER = "X-SPD-Timestamp"
DELIVERY_HEADER = "X-SPD-Delivery"

TITLES = {
    "door_forced": "cabinet door forced open",
    "chain_break": "event log hash chain broken",
    "charges_parked": "charges parked (refused by the HIS)",
    "device_offline": "device offline",
    "his_down": "HIS not answering",
}


class DeliveryError(Exception):
    """A notice could not be delivered this time; the message says why (it goes into the audit log)."""


class Channel(Protocol):
    name: str
    timeout_s: float

    def deliver(self, notice: NoticeRow) -> None: ...


def _iso(at: float | None) -> str | None:
    return None if at is None else dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="seconds")


def notice_document(notice: NoticeRow, *, gateway: str) -> dict[str, Any]:
    """What a notice says, as the webhook's JSON body (and the facts of the e-mail)."""
    i: IncidentRow = notice.incident
    return {
        "delivery": notice.id,
        "event": notice.event,
        "incident": i.id,
        "kind": i.kind,
        "subject": i.subject,
        "title": TITLES.get(i.kind, i.kind),
        "summary": i.summary,
        "detail": json.loads(i.detail),
        "opened_at": _iso(i.opened_at),
        "resolved_at": _iso(i.resolved_at) if notice.event == "resolved" else None,
        "resolved_by": i.resolved_by if notice.event == "resolved" else "",
        "resolution": i.resolution if notice.event == "resolved" else "",
        "gateway": gateway,
    }


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-SPD-Signature`` value of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def signature_valid(secret: str, timestamp: str, body: bytes, given: str) -> bool:
    """What a receiver checks (constant-time comparison)."""
    return hmac.compare_digest(signature(secret, timestamp, body), given)


class WebhookChannel:
    """POSTs each notice as JSON with its HMAC signature; a 2xx answer is delivery, anything else a retry."""

    name = "webhook"

    def __init__(self, settings: WebhookSettings, *, gateway: str) -> None:
        self.settings = settings
        self.timeout_s = settings.timeout_s
        self.gateway = gateway
        self._tls = ssl.create_default_context(cafile=settings.ca_file) if settings.url.startswith("https:") else None

    def deliver(self, notice: NoticeRow) -> None:
        body = json.dumps(notice_document(notice, gateway=self.gateway), ensure_ascii=False,
                          sort_keys=True).encode("utf-8")
        stamp = str(int(time.time()))
        request = urllib.request.Request(self.settings.url, data=body, method="POST", headers={
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "spd-gateway",
            TIMESTAMP_HEADER: stamp,
            DELIVERY_HEADER: str(notice.id),
            SIGNATURE_HEADER: signature(self.settings.secret, stamp, body),
        })
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s, context=self._tls) as answer:
                answer.read(4096)
        except urllib.error.HTTPError as err:
            raise DeliveryError(f"webhook answered HTTP {err.code} {err.reason}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            reason = getattr(err, "reason", err)
            raise DeliveryError(f"webhook {self.settings.url} not reached: {reason}") from None


class EmailChannel:
    """One e-mail per notice over SMTP (STARTTLS and login when configured); a resolved notice replies to the
    opened one (``In-Reply-To``), so mail programs keep an incident in one thread."""

    name = "email"

    def __init__(self, settings: SmtpSettings, *, gateway: str) -> None:
        self.settings = settings
        self.timeout_s = settings.timeout_s
        self.gateway = gateway
        self._domain = settings.sender.rpartition("@")[2] or "spd-gateway"

    def message_id(self, incident_id: int, event: str) -> str:
        return f"<spd-incident-{incident_id}-{event}@{self._domain}>"

    def render(self, notice: NoticeRow) -> EmailMessage:
        doc = notice_document(notice, gateway=self.gateway)
        i = notice.incident
        state = "RESOLVED" if notice.event == "resolved" else "OPEN"
        msg = EmailMessage()
        msg["Subject"] = f"[SPD {state}] {doc['title']}: {i.subject}"
        msg["From"] = self.settings.sender
        msg["To"] = ", ".join(self.settings.recipients)
        msg["Date"] = formatdate(localtime=False, usegmt=True)
        msg["Message-ID"] = self.message_id(i.id, notice.event)
        if notice.event == "resolved":
            msg["In-Reply-To"] = msg["References"] = self.message_id(i.id, "opened")
        msg["X-SPD-Incident"] = f"{i.kind}/{i.subject}"
        lines = [f"{doc['title']} ({i.kind}): {i.subject}", "", i.summary, "",
                 f"opened:   {doc['opened_at']}"]
        if notice.event == "resolved":
            lines += [f"resolved: {doc['resolved_at']} by {i.resolved_by}", f"          {i.resolution}"]
        lines += ["", f"incident {i.id} on gateway {self.gateway}; spd-gateway incidents --db ... lists them"]
        msg.set_content("\n".join(lines) + "\n")
        return msg

    def deliver(self, notice: NoticeRow) -> None:
        s = self.settings
        msg = self.render(notice)
        try:
            with smtplib.SMTP(s.host, s.port, timeout=self.timeout_s) as smtp:
                if s.starttls:
                    smtp.starttls(context=ssl.create_default_context(cafile=s.ca_file))
                if s.username is not None:
                    smtp.login(s.username, s.password or "")
                refused = smtp.send_message(msg, from_addr=s.sender, to_addrs=list(s.recipients))
        except (TimeoutError, smtplib.SMTPException, OSError) as err:
            raise DeliveryError(f"SMTP {s.host}:{s.port}: {type(err).__name__}: {err}") from None
        if refused:  # the others have it: sending again would give them a second copy
            log.warning("SMTP %s:%d refused some recipients of notice %d: %s", s.host, s.port, notice.id,
                        ", ".join(sorted(refused)))
