"""Device sync and gateway ingest against a real Mosquitto: acks, resends, outages, bad payloads."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device.eventlog import EventLog
from device.sync import DeviceSync
from gateway.ingest import IngestService
from gateway.store import GatewayStore
from hw_sim.broker import MosquittoBroker
from spd_common.wire import Batch

from conftest import wait_for


def _append(log: EventLog, n: int) -> None:
    for i in range(n):
        log.append("consume", {"admission": f"ZY{i:010d}", "udi": f"u{i}", "operator": "N1", "dept": "OR"})


def _device(tmp_path: Path, broker: MosquittoBroker, name: str = "HH01", **kw: object) -> tuple[EventLog, DeviceSync]:
    log = EventLog(tmp_path / f"{name}.db", device=name)
    sync = DeviceSync(log, site="H1", host=broker.host, port=broker.port, resend_after_s=1.0,
                      reconnect_min_s=0.2, reconnect_max_s=1.0, **kw)  # type: ignore[arg-type]
    return log, sync


def test_events_are_acked_only_after_the_gateway_stores_them(tmp_path: Path, broker: MosquittoBroker) -> None:
    log, sync = _device(tmp_path, broker)
    _append(log, 30)
    sync.start()
    wait_for(lambda: sync.stats.events_sent >= 30, message="the 30 events published")
    time.sleep(1.0)  # a resend period (resend_after_s) passes: still no gateway, still nothing acked
    assert log.backlog() == 30  # the broker took them, but no gateway stored them: nothing acked
    store = GatewayStore(tmp_path / "gw.db")
    gw = IngestService(store, host=broker.host, port=broker.port).start()
    wait_for(lambda: log.backlog() == 0, message="backlog drained", timeout=20)
    assert store.counts()["events"] == 30
    assert store.contiguous_seq("HH01") == 30
    sync.stop()
    gw.stop()


def test_device_offline_then_back_delivers_its_backlog_once(tmp_path: Path, broker: MosquittoBroker) -> None:
    store = GatewayStore(tmp_path / "gw.db")
    gw = IngestService(store, host=broker.host, port=broker.port).start()
    assert gw.wait_connected()
    broker.kill()
    log, sync = _device(tmp_path, broker)
    sync.start()
    _append(log, 500)  # scans go on while the cabinet has no network
    assert log.backlog() == 500
    broker.start()
    wait_for(lambda: log.backlog() == 0, timeout=30, message="backlog drained after the broker returned")
    assert store._engine.query("SELECT COUNT(*), MIN(seq), MAX(seq) FROM events") == [(500, 1, 500)]
    sync.stop()
    gw.stop()


def test_broker_killed_mid_stream_loses_and_doubles_nothing(tmp_path: Path, broker: MosquittoBroker) -> None:
    store = GatewayStore(tmp_path / "gw.db")
    gw = IngestService(store, host=broker.host, port=broker.port).start()
    log, sync = _device(tmp_path, broker)
    sync.start()
    for _ in range(3):
        _append(log, 100)
        time.sleep(0.2)
        broker.kill()
        _append(log, 50)
        broker.start()
    wait_for(lambda: log.backlog() == 0, timeout=40, message="backlog drained")
    assert store._engine.query("SELECT COUNT(*), COUNT(DISTINCT seq), MAX(seq) FROM events") == [(450, 450, 450)]
    sync.stop()
    gw.stop()


class CrashBeforeAck(IngestService):
    """A gateway that stores a batch and then dies before acking it (the first ``n`` times)."""

    def __init__(self, *a: object, crashes: int, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.crashes_left = crashes

    def _store_and_ack(self, batches: list[tuple[str, Batch]]) -> None:
        if self.crashes_left > 0:
            self.store.ingest_group([b for _, b in batches])  # committed ...
            self.crashes_left -= 1
            raise RuntimeError("simulated crash between store and ack")  # ... and no ack goes out
        super()._store_and_ack(batches)


def test_gateway_crash_between_store_and_ack_causes_resend_not_double(
    tmp_path: Path, broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="gateway.ingest")
    store = GatewayStore(tmp_path / "gw.db")
    gw = CrashBeforeAck(store, host=broker.host, port=broker.port, crashes=5).start()
    log, sync = _device(tmp_path, broker, batch_size=20)
    _append(log, 100)
    sync.start()
    wait_for(lambda: log.backlog() == 0, timeout=30, message="backlog drained")
    assert gw.crashes_left == 0
    assert gw.stats.events_duplicate > 0  # the device did resend what was stored but not acked
    assert store._engine.query("SELECT COUNT(*), COUNT(DISTINCT seq) FROM events") == [(100, 100)]
    sync.stop()
    gw.stop()


def test_malformed_payloads_are_rejected_with_a_reason_and_ingestion_goes_on(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    store = GatewayStore(tmp_path / "gw.db")
    gw = IngestService(store, host=broker.host, port=broker.port).start()
    assert gw.wait_connected()
    log, sync = _device(tmp_path, broker)
    sync.start()
    _append(log, 20)
    rogue = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="rogue")
    rogue.connect(broker.host, broker.port)
    rogue.loop_start()
    bad = [
        ("spd/v1/H1/HH01/events", b"not json"),
        ("spd/v1/H1/HH01/events", b'{"v":99,"site":"H1","device":"HH01","events":[]}'),
        ("spd/v1/H1/HH01/events", b'{"v":1,"site":"H1","device":"HH09","events":[{"seq":1}]}'),
        ("spd/v1/H1/HH01/events", b"\x00\xff" * 10),
    ]
    for t, p in bad:
        rogue.publish(t, p, qos=1).wait_for_publish(5)
    _append(log, 20)
    wait_for(lambda: log.backlog() == 0, message="valid events acked", timeout=20)
    wait_for(lambda: store.counts()["bad_payloads"] == 4, message="bad payloads recorded", timeout=20)
    reasons = sorted(r[0] for r in store._engine.query("SELECT reason FROM bad_payloads"))
    assert reasons == ["bad_json", "bad_json", "identity_mismatch", "unsupported_version"]
    assert store.counts()["events"] == 40
    rogue.loop_stop()
    rogue.disconnect()
    sync.stop()
    gw.stop()


def test_acknowledged_events_past_retention_are_pruned_by_the_agent(tmp_path: Path, broker: MosquittoBroker) -> None:
    now = [time.time()]
    log = EventLog(tmp_path / "HH01.db", device="HH01", retention_s=60, clock=lambda: now[0])
    sync = DeviceSync(log, site="H1", host=broker.host, port=broker.port, prune_every_s=0.2, reconnect_min_s=0.2)
    store = GatewayStore(tmp_path / "gw.db")
    gw = IngestService(store, host=broker.host, port=broker.port).start()
    _append(log, 10)
    sync.start()
    wait_for(lambda: log.backlog() == 0, message="acked", timeout=20)
    assert len(log.events()) == 10  # acknowledged but within retention: kept
    now[0] += 120
    wait_for(lambda: len(log.events()) == 0, message="pruned", timeout=20)
    _append(log, 1)
    assert log.last_seq == 11 and log.backlog() == 1  # never pruned while unacknowledged
    sync.stop()
    gw.stop()
