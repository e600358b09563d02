"""Incidents and their notices against a real SMTP server (aiosmtpd) and a webhook endpoint on loopback ports.

One notice per incident and channel, none while it stays open nor after a restart, one when it is resolved;
the webhook's signature holds; a dead mail server or webhook holds up neither the other channel nor
detection, and its notice goes out once the server is back.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from gateway.audit import AuditLog
from gateway.cli import main as gateway_cli
from gateway.notify import IncidentWatch, NoticeDispatcher, Notifier
from gateway.notify_channels import EmailChannel, WebhookChannel, signature_valid
from gateway.notify_settings import NotifySettings, SmtpSettings, WebhookSettings
from gateway.store import GatewayStore
from hw_sim.broker import free_port
from spd_common.wire import DeviceState, DeviceStatus, decode_batch

from conftest import wait_for
from monitoring_helpers import DeviceFeed, SmtpSink, WebhookReceiver, self_signed_tls

SECRET = "s3cret-shared-with-the-monitoring-team"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Lane:
    lane: int
    failing_since: float | None = None
    answered_at: float | None = None
    last_error: str = ""


class Rig:
    """A store, the incident watch and one dispatcher per channel, driven pass by pass; :meth:`restart` reopens."""

    def __init__(self, path: Path | str, settings: NotifySettings) -> None:
        self.path, self.settings = path, settings
        self.clock = Clock()
        self.lanes: list[Lane] = []
        self._open()

    def _open(self) -> None:
        self.store = GatewayStore(self.path)
        self.watch = IncidentWatch(self.store, self.settings, clock=self.clock, his_lanes=lambda: self.lanes)
        self.dispatchers = []
        if self.settings.smtp is not None:
            self.dispatchers.append(NoticeDispatcher(self.store, EmailChannel(self.settings.smtp, gateway="gw-a"),
                                                     self.settings, clock=self.clock))
        if self.settings.webhook is not None:
            self.dispatchers.append(NoticeDispatcher(
                self.store, WebhookChannel(self.settings.webhook, gateway="gw-a"), self.settings, clock=self.clock))

    def restart(self) -> None:
        self.store.close()
        self._open()

    def ingest(self, feed: DeviceFeed, kind: str, body: dict[str, object]) -> None:
        self.store.ingest(decode_batch(*feed.batch(feed.event(kind, body))), now=self.clock.now)

    def tick(self) -> None:
        """One pass of the watch, then of each dispatcher."""
        self.watch.run_once()
        for d in self.dispatchers:
            d.run_once()

    def audit(self, action: str) -> list[dict[str, object]]:
        return [e.detail | {"outcome": e.outcome} for e in sorted(AuditLog(self.store).entries(limit=1000),
                                                                  key=lambda e: e.id) if e.action == action]


def settings(*, smtp_port: int | None, webhook_url: str | None) -> NotifySettings:
    return NotifySettings(
        offline_after_s=60.0, his_down_after_s=30.0, retry_first_s=1.0, retry_max_s=10.0, give_up_after_s=3600.0,
        smtp=None if smtp_port is None else SmtpSettings(
            host="127.0.0.1", port=smtp_port, sender="spd-gateway@hospital.example",
            recipients=("spd-oncall@hospital.example", "it-oncall@hospital.example"), timeout_s=2.0),
        webhook=None if webhook_url is None else WebhookSettings(url=webhook_url, secret=SECRET, timeout_s=2.0),
    )


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    s = SmtpSink().start()
    yield s
    s.stop()


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    w = WebhookReceiver(SECRET)
    yield w
    w.stop()


def test_a_forced_door_is_one_notice_per_channel_none_while_open_or_after_restart_and_one_when_closed(
        tmp_path: Path, sink: SmtpSink, hook: WebhookReceiver) -> None:
    rig = Rig(tmp_path / "gw.db", settings(smtp_port=sink.port, webhook_url=hook.url))
    cab = DeviceFeed("CAB01")
    rig.ingest(cab, "alarm", {"alarm": "door_forced", "door": "door", "state": "idle", "dept": "ICU"})
    rig.tick()
    assert [m["Subject"] for m in sink.messages] == ["[SPD OPEN] cabinet door forced open: CAB01"]
    assert sink.messages[0]["To"] == "spd-oncall@hospital.example, it-oncall@hospital.example"
    assert [(r.doc["event"], r.doc["kind"], r.doc["subject"]) for r in hook.received] == \
        [("opened", "door_forced", "CAB01")]
    assert all(r.signed for r in hook.received)

    # forced again while open, further passes, a restart of the gateway: nothing more goes out
    rig.ingest(cab, "alarm", {"alarm": "door_forced", "door": "door", "state": "door_open", "dept": "ICU"})
    rig.tick()
    rig.restart()
    rig.tick()
    rig.tick()
    assert len(sink.messages) == 1 and len(hook.received) == 1
    assert [(i.kind, i.subject, i.state) for i in rig.store.incidents.listing(state=None, limit=10)] == \
        [("door_forced", "CAB01", "open")]

    rig.ingest(cab, "access", {"result": "door_closed", "dept": "ICU"})
    rig.tick()
    rig.tick()
    opened, resolved = sink.messages
    assert resolved["Subject"] == "[SPD RESOLVED] cabinet door forced open: CAB01"
    assert resolved["In-Reply-To"] == opened["Message-ID"]  # one thread per incident in a mail program
    assert [r.doc["event"] for r in hook.received] == ["opened", "resolved"]
    assert hook.received[1].doc["resolution"] == "door closed (cabinet event seq 3)"
    assert hook.received[0].headers["x-spd-delivery"] != hook.received[1].headers["x-spd-delivery"]

    # the next forcing of that door is a new incident
    rig.ingest(cab, "alarm", {"alarm": "door_forced", "door": "door", "state": "idle", "dept": "ICU"})
    rig.tick()
    assert len(sink.messages) == 3 and [r.doc["incident"] for r in hook.received] == [1, 1, 2]
    assert [a["kind"] for a in rig.audit("incident_opened")] == ["door_forced", "door_forced"]
    rig.store.close()


def test_email_over_starttls_with_a_login_checks_the_servers_certificate(tmp_path: Path) -> None:
    cert, key = self_signed_tls(tmp_path)
    sink = SmtpSink(tls=(cert, key), login=("spd-gateway", "pw-of-the-mail-account")).start()
    try:
        smtp = SmtpSettings(host="127.0.0.1", port=sink.port, sender="spd-gateway@hospital.example",
                            recipients=("spd-oncall@hospital.example",), starttls=True, ca_file=str(cert),
                            username="spd-gateway", password="pw-of-the-mail-account", timeout_s=5.0)
        rig = Rig(tmp_path / "gw.db", replace(settings(smtp_port=None, webhook_url=None), smtp=smtp))
        rig.ingest(DeviceFeed("CAB01"), "alarm", {"alarm": "door_forced", "dept": "ICU"})
        rig.tick()
        assert [m["Subject"] for m in sink.messages] == ["[SPD OPEN] cabinet door forced open: CAB01"]
        assert sink.logins == ["spd-gateway"]

        # a server whose certificate the configured CA did not sign: not delivered, retried, audited
        (tmp_path / "other").mkdir()
        other, _ = self_signed_tls(tmp_path / "other")
        wrong = Rig(tmp_path / "gw2.db", replace(settings(smtp_port=None, webhook_url=None),
                                                 smtp=replace(smtp, ca_file=str(other))))
        wrong.ingest(DeviceFeed("CAB02"), "alarm", {"alarm": "door_forced", "dept": "ICU"})
        wrong.tick()
        assert len(sink.messages) == 1
        (failed,) = wrong.audit("notice_failed")
        assert "CERTIFICATE_VERIFY_FAILED" in str(failed["error"])
        rig.store.close()
        wrong.store.close()
    finally:
        sink.stop()


def test_a_webhook_over_https_is_trusted_by_the_configured_ca_only(tmp_path: Path) -> None:
    cert, key = self_signed_tls(tmp_path)
    (tmp_path / "other").mkdir()
    other, _ = self_signed_tls(tmp_path / "other")
    hook = WebhookReceiver(SECRET, tls=(cert, key))
    try:
        base = settings(smtp_port=None, webhook_url=hook.url)
        assert base.webhook is not None
        for name, ca in (("trusted.db", cert), ("untrusted.db", other)):
            rig = Rig(tmp_path / name, replace(base, webhook=replace(base.webhook, ca_file=str(ca))))
            rig.ingest(DeviceFeed("CAB01"), "alarm", {"alarm": "door_forced", "dept": "ICU"})
            rig.tick()
            if ca == cert:
                assert len(hook.received) == 1 and hook.received[0].signed
            else:
                assert len(hook.received) == 1
                assert "CERTIFICATE_VERIFY_FAILED" in str(rig.audit("notice_failed")[0]["error"])
            rig.store.close()
    finally:
        hook.stop()


def test_only_the_lease_holder_sends_a_notice(store_location: Path | str, hook: WebhookReceiver) -> None:
    """Two gateways on one store: the one without the charging lease detects nothing and sends nothing."""
    rig = Rig(store_location, settings(smtp_port=None, webhook_url=hook.url))
    follower = NoticeDispatcher(rig.store, WebhookChannel(rig.settings.webhook, gateway="gw-b"),  # type: ignore[arg-type]
                                rig.settings, may_run=lambda: False)
    rig.ingest(DeviceFeed("CAB01"), "alarm", {"alarm": "door_forced", "dept": "ICU"})
    rig.watch.run_once()
    assert follower.run_once() == 0 and hook.received == []
    assert rig.dispatchers[0].run_once() == 1 and [r.doc["gateway"] for r in hook.received] == ["gw-a"]
    rig.store.close()


def test_the_signature_is_over_timestamp_and_body_and_fails_for_a_changed_body_or_another_secret(
        tmp_path: Path, hook: WebhookReceiver) -> None:
    rig = Rig(tmp_path / "gw.db", settings(smtp_port=None, webhook_url=hook.url))
    rig.ingest(DeviceFeed("CAB02"), "alarm", {"alarm": "door_forced", "dept": "OR"})
    rig.tick()
    (got,) = hook.received
    stamp, sig = got.headers["x-spd-timestamp"], got.headers["x-spd-signature"]
    assert got.signed and sig.startswith("sha256=") and abs(int(stamp) - time.time()) < 60
    assert not signature_valid(SECRET, stamp, got.body.replace(b"CAB02", b"CAB03"), sig)
    assert not signature_valid("another-secret", stamp, got.body, sig)
    assert not signature_valid(SECRET, str(int(stamp) - 1), got.body, sig)  # the timestamp is signed too
    rig.store.close()


def test_a_dead_mail_server_holds_up_neither_the_webhook_nor_detection_and_its_notices_go_out_later(
        tmp_path: Path, hook: WebhookReceiver) -> None:
    port = free_port()  # nothing listens there yet
    rig = Rig(tmp_path / "gw.db", settings(smtp_port=port, webhook_url=hook.url))
    rig.store.update_device_state("H1", DeviceState("HH07", DeviceStatus.ONLINE, backlog=3, version="1.4"))
    rig.clock.now += 61
    rig.tick()
    rig.ingest(DeviceFeed("CAB01"), "alarm", {"alarm": "door_forced", "dept": "ICU"})
    rig.tick()
    assert [(r.doc["kind"], r.doc["subject"]) for r in hook.received] == \
        [("device_offline", "HH07"), ("door_forced", "CAB01")]
    email = [n for i in rig.store.incidents.listing(state=None, limit=10) for n in rig.store.incidents.notices_of(i.id)
             if n[1] == "email"]
    assert [(event, status, attempts) for event, _, status, attempts, _ in email] == \
        [("opened", "pending", 1), ("opened", "pending", 1)]  # the second tried once, in its own pass
    assert all("SMTP 127.0.0.1" in err for *_, err in email)
    failed = rig.audit("notice_failed")
    assert [(a["channel"], a["outcome"]) for a in failed] == [("email", "retrying"), ("email", "retrying")]

    sink = SmtpSink(port).start()
    try:
        rig.tick()  # not yet: each waits its back-off
        assert sink.messages == []
        rig.clock.now += 11
        rig.tick()
        assert sorted(m["Subject"] for m in sink.messages) == [
            "[SPD OPEN] cabinet door forced open: CAB01", "[SPD OPEN] device offline: HH07"]
        assert [a["attempts"] for a in rig.audit("notice_sent")] == [2, 2]
        rig.tick()
        assert len(sink.messages) == 2 and len(hook.received) == 2
    finally:
        sink.stop()
    rig.store.close()


def test_a_webhook_that_never_answers_holds_up_neither_the_mail_nor_detection_in_the_running_loops(
        tmp_path: Path, sink: SmtpSink) -> None:
    """The gateway's own threads (Notifier): the webhook's endpoint takes the connection and never answers."""
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(16)
        url = f"http://127.0.0.1:{black_hole.getsockname()[1]}/hook"
        s = replace(settings(smtp_port=sink.port, webhook_url=url), check_every_s=0.1)
        assert s.webhook is not None
        s = replace(s, webhook=replace(s.webhook, timeout_s=4.0))
        store = GatewayStore(tmp_path / "gw.db")
        notifier = Notifier(store, s, gateway="gw-a").start()
        try:
            cab = DeviceFeed("CAB01")
            started = time.monotonic()
            store.ingest(decode_batch(*cab.batch(cab.event("alarm", {"alarm": "door_forced", "dept": "ICU"}))))
            wait_for(lambda: len(sink.messages) == 1, 5, message="the opened e-mail")
            store.ingest(decode_batch(*cab.batch(cab.event("access", {"result": "door_closed", "dept": "ICU"}))))
            wait_for(lambda: len(sink.messages) == 2, 5, message="the resolved e-mail")
            assert time.monotonic() - started < 4.0  # both went out while the webhook's first POST still waited
            assert [m["Subject"].split("]")[0] for m in sink.messages] == ["[SPD OPEN", "[SPD RESOLVED"]
            wait_for(lambda: rig_audit(store, "notice_failed"), 10, message="the webhook's time-out, audited")
            assert "webhook" in str(rig_audit(store, "notice_failed")[0]["error"])
        finally:
            notifier.stop()
            store.close()


def rig_audit(store: GatewayStore, action: str) -> list[dict[str, object]]:
    return [e.detail for e in AuditLog(store).entries(limit=100) if e.action == action]


def test_a_failing_webhook_is_retried_with_back_off_and_given_up_after_the_limit(store_location: Path | str) -> None:
    hook = WebhookReceiver(SECRET, status=503)
    rig = Rig(store_location, replace(settings(smtp_port=None, webhook_url=hook.url), give_up_after_s=100.0,
                                          offline_after_s=86400.0))
    try:
        rig.ingest(DeviceFeed("CAB01"), "alarm", {"alarm": "door_forced", "dept": "ICU"})
        rig.tick()
        rig.tick()  # within the back-off: not tried again
        assert len(hook.received) == 1
        waits = []
        for _ in range(4):
            (notice,) = rig.store.incidents.due_notices("webhook", now=1e12)
            assert notice.event == "opened"
            waits.append(rig.store._engine.query("SELECT next_attempt_at FROM incident_notices")[0][0] - rig.clock.now)
            rig.clock.now += 11
            rig.tick()
        assert waits == [1.0, 2.0, 4.0, 8.0]  # spd_common.backoff: first 1 s, doubling, at most retry_max_s
        rig.clock.now += 100
        rig.tick()
        assert rig.store.incidents.notices_of(1)[0][2] == "failed"
        assert [a["outcome"] for a in rig.audit("notice_failed")] == ["retrying", "given_up"]
        n = len(hook.received)
        rig.clock.now += 1000
        rig.tick()
        assert len(hook.received) == n
    finally:
        hook.stop()
        rig.store.close()


def test_device_offline_his_down_and_parked_charges_open_and_resolve_once(
        store_location: Path | str, hook: WebhookReceiver) -> None:
    rig = Rig(store_location, settings(smtp_port=None, webhook_url=hook.url))
    store = rig.store
    store.update_device_state("H1", DeviceState("HH01", DeviceStatus.ONLINE))
    rig.lanes = [Lane(0, answered_at=rig.clock.now), Lane(1)]
    with store.charges.batch() as db:
        db.add_charge("C1", "HH01", 1, "ZY1", "0950600013435/S1", "{}", "MSH", rig.clock.now)
        db.add_charge("C2", "HH01", 2, "ZY2", "0950600013435/S2", "{}", "MSH", rig.clock.now)
    store.mark_parked("C1", "AE", "unknown charge code")
    rig.lanes[1].failing_since = rig.clock.now
    rig.lanes[1].last_error = "connect_failed: connection refused"
    rig.tick()
    assert [(r.doc["kind"], r.doc["event"]) for r in hook.received] == [("charges_parked", "opened")]

    rig.clock.now += 61  # HH01 silent past offline_after_s; lane 1 failing past his_down_after_s
    store.mark_parked("C2", "AE", "unknown charge code")  # more parked while open: no new notice
    rig.tick()
    rig.tick()
    assert [(r.doc["kind"], r.doc["event"]) for r in hook.received] == [
        ("charges_parked", "opened"), ("device_offline", "opened"), ("his_down", "opened")]
    assert "lane(s) 1" in hook.received[2].doc["summary"] and "connection refused" in hook.received[2].doc["summary"]
    (parked,) = store.incidents.listing(state="open", limit=10)[2:]
    assert parked.kind == "charges_parked" and '"count": 2' in parked.detail

    # a restart: the HIS lanes are new (nothing known yet), the store remembers what is open; nothing is re-sent
    rig.restart()
    rig.lanes = [Lane(0), Lane(1)]
    rig.tick()
    assert len(hook.received) == 3

    store = rig.store
    rig.clock.now = time.time()  # the store's last_seen is the real clock's
    store.update_device_state("H1", DeviceState("HH01", DeviceStatus.ONLINE))
    rig.lanes[1].answered_at = rig.clock.now
    assert store.requeue_parked("C1") and store.requeue_parked("C2")
    rig.tick()
    rig.tick()
    assert sorted((r.doc["kind"], r.doc["event"]) for r in hook.received[3:]) == [
        ("charges_parked", "resolved"), ("device_offline", "resolved"), ("his_down", "resolved")]
    assert store.incidents.open_incidents() == []
    rig.store.close()


def test_a_chain_break_stays_open_until_a_person_closes_it_and_history_raises_nothing(
        store_location: Path | str, hook: WebhookReceiver, capsys: pytest.CaptureFixture[str]) -> None:
    old = DeviceFeed("HH09")
    store = GatewayStore(store_location)
    store.ingest(decode_batch(*old.batch(old.event("consume", {"n": 1}),
                                         old.event("consume", {"n": 2}, prev="00" * 32))))
    store.close()  # a chain break from before notifications existed: history
    rig = Rig(store_location, settings(smtp_port=None, webhook_url=hook.url))
    rig.clock.now += 5
    rig.tick()
    assert hook.received == []

    feed = DeviceFeed("HH02")
    rig.store.ingest(decode_batch(*feed.batch(feed.event("consume", {"n": 1}),
                                              feed.event("consume", {"n": 2}, prev="ab" * 32))))
    for _ in range(3):
        rig.tick()
    assert [(r.doc["kind"], r.doc["subject"], r.doc["event"]) for r in hook.received] == \
        [("chain_break", "HH02", "opened")]

    assert gateway_cli(["incidents", "--db", str(rig.path), "--state", "open"]) == 0
    listed = capsys.readouterr().out
    assert "chain_break\tHH02" in listed and "opened notice by webhook: sent" in listed
    incident_id = int(listed.split("\t")[0])
    assert gateway_cli(["incidents", "--db", str(rig.path), "close", str(incident_id), "--by", "li.wei",
                        "--note", "log restored from the device; tamper ruled out"]) == 0
    rig.tick()
    assert [r.doc["event"] for r in hook.received] == ["opened", "resolved"]
    assert hook.received[1].doc["resolved_by"] == "li.wei"
    assert rig.audit("incident_resolved")[0]["resolution"] == "log restored from the device; tamper ruled out"
    rig.tick()
    assert len(hook.received) == 2  # closed by a person: the same break does not open it again

    rig.clock.now += 1
    time.sleep(0.01)
    rig.store.ingest(decode_batch(*feed.batch(feed.event("consume", {"n": 3}, prev="cd" * 32))))
    rig.tick()
    assert [(r.doc["event"], r.doc["incident"]) for r in hook.received[2:]] == [("opened", incident_id + 1)]
    assert gateway_cli(["incidents", "--db", str(rig.path), "close", str(incident_id)]) == 1
    rig.store.close()


# ---------------------------------------------------------------- the [notify] and [metrics] sections


def _gateway_file(tmp_path: Path, text: str, name: str = "gateway.toml") -> Path:
    p = tmp_path / name
    p.write_text('[store]\npath = "gw.db"\n\n' + text, encoding="utf-8")
    return p


def test_notify_and_metrics_sections_are_read_strictly_and_secrets_stay_hidden(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.config import read_gateway_file
    from spd_common.toml_config import ConfigError

    for name, text in (("smtp-password", "pw-of-the-mail-account\n"), ("hook-secret", SECRET + "\n")):
        (tmp_path / name).write_text(text, encoding="utf-8")
        (tmp_path / name).chmod(0o640)
    path = _gateway_file(tmp_path, (
        '[metrics]\nlisten = "127.0.0.1:9200"\noffline_after_s = 90.0\n\n'
        "[notify]\noffline_after_s = 900.0\nhis_down_after_s = 120.0\n\n"
        '[notify.smtp]\nhost = "mail.hospital.local"\nport = 587\nstarttls = true\nusername = "spd"\n'
        'password_file = "smtp-password"\nfrom = "spd@hospital.local"\nto = ["a@hospital.local", "b@hospital.local"]\n'
        '\n[notify.webhook]\nurl = "https://mon.hospital.local/hook"\nsecret_file = "hook-secret"\n'))
    fields = read_gateway_file(path)
    n = fields["notify"]
    assert (fields["metrics_listen"], fields["metrics_offline_after_s"]) == ("127.0.0.1:9200", 90.0)
    assert (n.offline_after_s, n.his_down_after_s, n.channels) == (900.0, 120.0, ("email", "webhook"))
    assert n.smtp.password == "pw-of-the-mail-account" and n.smtp.recipients == ("a@hospital.local", "b@hospital.local")
    assert n.webhook.secret == SECRET
    assert gateway_cli(["run", "--config", str(path), "--check"]) == 0
    shown = capsys.readouterr().out
    assert "metrics_listen = 127.0.0.1:9200" in shown and "mail.hospital.local" in shown
    assert "pw-of-the-mail-account" not in shown and SECRET not in shown

    for text, key in (
        ('[metrics]\nlisten = "9108"\n', "metrics.listen"),
        ('[notify]\nbogus = 1\n', "notify.bogus"),
        ('[notify.webhook]\nurl = "https://x/"\n', "notify.webhook.secret_file"),
        ('[notify.smtp]\nhost = "m"\nfrom = "a@b"\nto = ["c@d"]\nusername = "u"\npassword_env = "HOME"\n',
         "notify.smtp.starttls"),
        ('[notify.smtp]\nhost = "m"\nfrom = "a@b"\nto = "c@d"\n', "notify.smtp.to"),
    ):
        with pytest.raises(ConfigError) as err:
            read_gateway_file(_gateway_file(tmp_path, text, "bad.toml"))
        assert key in str(err.value), (text, str(err.value))
    assert gateway_cli(["run", "--db", str(tmp_path / "gw.db"), "--metrics-listen", "nowhere", "--check"]) == 2
    (tmp_path / "hook-secret").chmod(0o644)
    with pytest.raises(ConfigError, match="readable by every user"):
        read_gateway_file(path)
