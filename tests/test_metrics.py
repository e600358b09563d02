"""``/metrics`` of a running ``spd-gateway run`` after real traffic, checked against the store's own counts;
and the same gateway process's incident loop sending to a webhook, once, across a restart.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from gateway.his.sender import lane_of
from gateway.metrics import device_status, metrics_app
from gateway.store import GatewayStore
from hw_sim.broker import free_port
from hw_sim.harness import SpineHarness
from spd_common.wire import DeviceState, DeviceStatus, decode_batch

from conftest import wait_for
from monitoring_helpers import DeviceFeed, WebhookReceiver

SECRET = "metrics-test-webhook-secret"
LANES = 4  # the harness's gateway runs the default number of HIS lanes

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class MonitoredSpine(SpineHarness):
    """The spine harness whose gateway file also has ``[metrics]`` and ``[notify]`` with a webhook."""

    def __init__(self, workdir: Path, *, webhook_url: str) -> None:
        super().__init__(workdir)
        self.metrics_port = free_port()
        secret = workdir / "webhook.secret"
        secret.write_text(SECRET + "\n", encoding="utf-8")
        secret.chmod(0o600)
        self.extra_toml = (f'\n[metrics]\nlisten = "127.0.0.1:{self.metrics_port}"\n\n'
                           f"[notify]\ncheck_every_s = 0.3\n\n[notify.webhook]\nurl = {json.dumps(webhook_url)}\n"
                           f"secret_file = {json.dumps(str(secret))}\ntimeout_s = 2.0\n")

    def gateway_toml(self, instance: int = 0, *, protocol: str = "mllp") -> str:
        return super().gateway_toml(instance, protocol=protocol) + self.extra_toml

    def scrape(self) -> Samples:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every sample of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def publish(port: int, *batches: tuple[str, bytes]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="metrics-test-cabinet")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for topic_text, payload in batches:
            client.publish(topic_text, payload, qos=1).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    w = WebhookReceiver(SECRET)
    yield w
    w.stop()


def test_a_running_gateway_reports_the_store_counts_and_notifies_once_across_a_restart(
        tmp_path: Path, hook: WebhookReceiver) -> None:
    spine = MonitoredSpine(tmp_path / "spine", webhook_url=hook.url)
    with spine.start():
        spine.his.answer_next("AE", 2, "unknown charge code")  # two charges refused: parked
        spine.start_handheld("HH01", scans=40, rate=100)
        spine.start_handheld("HH02", scans=25, rate=100)
        spine.wait_handhelds(60)
        tally = spine.wait_settled(60)
        assert tally.lost == 0 and tally.parked == 2

        cab = DeviceFeed("CAB01")
        forced = cab.event("alarm", {"alarm": "door_forced", "door": "door", "state": "idle", "dept": "ICU"})
        bad = cab.event("access", {"result": "granted", "dept": "ICU"}).to_wire()
        bad["body"] = {"result": "granted", "user": "\ud800"}  # a lone surrogate: this event is quarantined
        batch = json.dumps({"v": 1, "site": "H1", "device": "CAB01", "events": [forced.to_wire(), bad]}).encode()
        publish(spine.broker.port, (cab.batch()[0], batch))
        db = spine.gateway_db
        wait_for(lambda: query(db, "SELECT COUNT(*) FROM quarantine")[0][0] == 1, 20, message="the quarantined event")
        wait_for(lambda: query(db, "SELECT COUNT(*) FROM incident_notices WHERE status = 'sent'")[0][0] == 2, 20,
                 message="the two notices marked sent")
        wait_for(lambda: {r.doc["kind"] for r in hook.received} >= {"door_forced", "charges_parked"}, 20,
                 message="the two incidents' notices")

        s = spine.scrape()
        events = query(db, "SELECT COUNT(*) FROM events")[0][0]
        quarantined = query(db, "SELECT COUNT(*) FROM quarantine")[0][0]
        assert value(s, "spd_events_ingested_total", outcome="new") == events == tally.events + 1
        assert value(s, "spd_ingest_quarantined_total") == value(s, "spd_events_quarantined") == quarantined == 1
        assert value(s, "spd_ingest_batches_total") >= 3
        statuses = dict(query(db, "SELECT status, COUNT(*) FROM charges GROUP BY status"))
        for status in ("pending", "parked", "voided"):
            assert value(s, "spd_charges", status=status) == statuses.get(status, 0), status
        assert value(s, "spd_charges_parked") == statuses["parked"] == tally.parked
        assert total(s, "spd_his_sends_total", outcome="accepted") == statuses["accepted"] == tally.charged
        assert total(s, "spd_his_sends_total", outcome="parked") == 2
        sends = total(s, "spd_his_sends_total")
        assert total(s, "spd_his_round_trip_seconds_count") == sends > 0
        assert total(s, "spd_his_round_trip_seconds_count", protocol="mllp", outcome="accepted") == statuses["accepted"]
        assert total(s, "spd_his_outbox_charges") == statuses.get("pending", 0) == 0
        assert value(s, "spd_alarms_open", kind="door_forced") == 1
        assert value(s, "spd_alarms_open", kind="charges_parked") == 1
        assert value(s, "spd_alarms_open", kind="his_down") == 0
        assert value(s, "spd_device_alarm_events_total", alarm="door_forced") == 1
        assert value(s, "spd_incident_notices", channel="webhook", status="sent") == 2
        assert value(s, "spd_charging_leader") == 1
        now = max(r[0] for r in query(db, "SELECT last_seen FROM devices"))
        devices = query(db, "SELECT device, site, status, backlog, last_seen FROM devices")
        for device, site, _status, backlog, _seen in devices:
            assert value(s, "spd_device_backlog_events", site=site, device=device) == backlog
        online = sum(device_status(st, seen, now=now, offline_after_s=120.0) == "online"
                     for _d, _s, st, _b, seen in devices)
        assert value(s, "spd_devices", status="online") == online
        assert sum(value(s, "spd_devices", status=st) for st in ("online", "offline", "unknown")) == len(devices) == 3

        # the same gateway, restarted: incidents are in the store, nothing is sent again; the door closed is
        spine.gateway.kill(15)  # type: ignore[union-attr]
        spine.start_gateway(0)
        wait_for(lambda: _scrape_or_none(spine) is not None, 20, message="the restarted gateway's /metrics")
        publish(spine.broker.port, cab.batch(cab.event("access", {"result": "door_closed", "dept": "ICU"})))
        wait_for(lambda: query(db, "SELECT COUNT(*) FROM incident_notices WHERE status = 'sent'")[0][0] == 3, 20,
                 message="the resolved notice, marked sent")
        s = spine.scrape()
        assert value(s, "spd_events_ingested_total", outcome="new") == 1  # this process's own count
        assert value(s, "spd_alarms_open", kind="door_forced") == 0
        assert value(s, "spd_alarms_open", kind="charges_parked") == 1
        assert value(s, "spd_incident_notices", channel="webhook", status="sent") == 3 == len(hook.received)
        assert [(r.doc["kind"], r.doc["event"]) for r in hook.received] == \
            [*sorted((r.doc["kind"], r.doc["event"]) for r in hook.received[:2]), ("door_forced", "resolved")]
        assert all(r.signed for r in hook.received)


def _scrape_or_none(spine: MonitoredSpine) -> Samples | None:
    try:
        return spine.scrape()
    except OSError:
        return None


def test_the_asgi_app_serves_the_store_figures(tmp_path: Path) -> None:
    """What the web server mounts at /metrics: the store's figures, read at each request."""
    store = GatewayStore(tmp_path / "gw.db")
    feed = DeviceFeed("CAB07")
    store.ingest(decode_batch(*feed.batch(feed.event("alarm", {"alarm": "door_ajar"}),
                                          feed.event("alarm", {"alarm": "door_ajar"}))))
    store.update_device_state("H1", DeviceState("CAB07", DeviceStatus.ONLINE, backlog=12))
    with store.charges.batch() as db:
        for n, admission in enumerate(("ZY1", "ZY2", "ZY3", "ZY1")):
            db.add_charge(f"C{n}", "HH01", n + 1, admission, f"0950600013435/S{n}", "{}", "MSH", 0.0)
    app = metrics_app(store, lanes=LANES)
    status, body = asyncio.run(_get(app))
    assert status == 200
    s = {(x.name, frozenset(x.labels.items())): x.value
         for f in text_string_to_metric_families(body.decode()) for x in f.samples}
    per_lane = [0] * LANES
    for admission in ("ZY1", "ZY2", "ZY3", "ZY1"):
        per_lane[lane_of(admission, LANES)] += 1
    assert [value(s, "spd_his_outbox_charges", lane=str(lane)) for lane in range(LANES)] == per_lane
    assert value(s, "spd_device_backlog_events", site="H1", device="CAB07") == 12
    assert value(s, "spd_device_alarm_events_total", alarm="door_ajar") == 2
    assert value(s, "spd_devices", status="online") == 1
    store.close()


async def _get(app: Any) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "query_string": b"", "headers": [],
             "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 80), "root_path": ""}
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return int(start["status"]), b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_a_metrics_port_already_taken_stops_the_start_with_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.cli import main as gateway_cli

    monkeypatch.setattr("signal.signal", lambda *a: None)  # pytest keeps its own handlers

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert gateway_cli(["run", "--db", str(tmp_path / "gw.db"), "--broker-port", str(free_port()),
                            "--metrics-listen", f"127.0.0.1:{port}"]) == 2
    assert f"metrics.listen: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
