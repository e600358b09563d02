"""The gateway's watchdog: wedge each loop that must run in turn; the pings to systemd stop and name it.

A slow HIS is not a wedged lane: a send within its declared deadline keeps the pings going.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.publish as mqtt_publish
import pytest

from gateway.app import Gateway, GatewayConfig
from gateway.commands import generate_signing_key
from gateway.his.adapter import HisOutcome, HisResult, RetryReason
from gateway.his.sender import LANE_DEADLINE_S, HisSender
from gateway.notify_settings import NotifySettings
from gateway.store import GatewayStore
from hw_sim.broker import MosquittoBroker
from spd_common.heartbeat import HeartbeatRegistry
from spd_common.sdnotify import Watchdog
from spd_common.wire import GENESIS_HASH, Channel, Event, encode_batch, event_hash, topic

from watchdog_helpers import FakeClock, NotifySocket, Wedge, assert_pings_stop_naming


class QuietHis:
    """An HIS adapter with nothing to say (the outbox stays empty in these tests)."""

    timeout_s = 2.0

    def send(self, control_id: str, message: str) -> HisResult:
        return HisResult(HisOutcome.RETRY, RetryReason.TIMEOUT.value, "no answer")

    def close(self) -> None:
        pass


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    n = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", n.path)
    yield n
    n.close()


LOOPS = ["ingest-mqtt", "ingest-writer", "fleet-mqtt", "charging", "his-sender-0", "lease", "link-watch", "adt-accept",
         "catalog-publisher", "notify-watch", "stock-ledger", "his-recorder", "wal-checkpoint"]


def one_event_batch() -> bytes:
    """A valid batch of one event of CAB01, which the ingest writer stores."""
    body = {"gtin": "09506000134352", "serial": "S1", "user": "N1", "dept": "OR"}
    digest = event_hash("CAB01", 1, 1_795_430_400_000, "taken", body, GENESIS_HASH)
    return encode_batch("H1", "CAB01", [Event("CAB01", 1, 1_795_430_400_000, "taken", body, GENESIS_HASH, digest)])


class StuckAccept:
    """The ADT listener's socket, whose ``accept`` hangs while the wedge targets ``adt-accept``."""

    def __init__(self, sock: socket.socket, wedge: Wedge) -> None:
        self._sock = sock
        self.accept = wedge.hang_if("adt-accept", sock.accept)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_wedged_gateway_loop_stops_the_pings_and_is_named(loop: str, tmp_path: Path, broker: MosquittoBroker,
                                                            notify: NotifySocket) -> None:
    generate_signing_key(tmp_path / "command-signing.key")
    clock = FakeClock()
    heartbeats = HeartbeatRegistry(clock=clock)
    cfg = GatewayConfig(db_path=tmp_path / "gw.db", broker_port=broker.port, lease_ttl_s=1.5,
                        signing_key=tmp_path / "command-signing.key", not_linked_within_s=0.4, adt_port=0,
                        notify=NotifySettings(check_every_s=0.2))
    gw = Gateway(cfg, adapter=QuietHis(), heartbeats=heartbeats)
    assert sorted(heartbeats.names()) == []  # nothing is watched before it starts
    wedge = Wedge()
    store = gw.store
    # each loop hangs in a call only it makes
    store.ingest_group = wedge.hang_if("ingest-writer", store.ingest_group)  # type: ignore[method-assign]
    store.charging_events = wedge.hang_if("charging", store.charging_events)  # type: ignore[method-assign]
    # the lanes read the outbox through the feed's own connection
    gw.outbox_store.pending_charges = wedge.hang_if(  # type: ignore[method-assign]
        "his-sender-0", gw.outbox_store.pending_charges)
    gw.recorder.record_once = wedge.hang_if("his-recorder", gw.recorder.record_once)  # type: ignore[method-assign]
    # on SQLite the leases are renewed on a connection of their own
    lease_store = gw.lease_store or store
    lease_store.hold_lease = wedge.hang_if("lease", lease_store.hold_lease)  # type: ignore[method-assign]
    gw.link_watch.run_once = wedge.hang_if("link-watch", gw.link_watch.run_once)  # type: ignore[method-assign]
    gw.notifier.watch.run_once = wedge.hang_if("notify-watch", gw.notifier.watch.run_once)  # type: ignore[method-assign]
    gw.stock_ledger.run_once = wedge.hang_if("stock-ledger", gw.stock_ledger.run_once)  # type: ignore[method-assign]
    assert gw.checkpointer is not None  # SQLite: the log copied outside the writers' turns
    gw.checkpointer.run_once = wedge.hang_if("wal-checkpoint", gw.checkpointer.run_once)  # type: ignore[method-assign]
    assert gw.publisher is not None and gw.adt is not None
    gw.publisher._due_in = wedge.hang_if("catalog-publisher", gw.publisher._due_in)  # type: ignore[method-assign]
    gw.start()
    assert gw.adt._sock is not None
    gw.adt._sock = StuckAccept(gw.adt._sock, wedge)  # type: ignore[assignment]
    assert sorted(heartbeats.names()) == sorted(LOOPS)
    watchdog = Watchdog(lambda: True, interval_s=0.05, heartbeats=heartbeats).start()
    try:
        assert gw.ingest.wait_connected() and gw.fleet_link is not None and gw.fleet_link.wait_connected()
        wedge.target = loop  # from now on
        if loop.endswith("-mqtt"):  # a message handler that never returns, on paho's network thread
            client = gw.ingest._client if loop == "ingest-mqtt" else gw.fleet_link._client
            client.on_message = wedge.hang_if(loop, lambda *a: None)
        if loop.endswith("-mqtt") or loop == "ingest-writer":  # the writer hangs in a group commit
            channel = Channel.EVENTS if loop.startswith("ingest") else Channel.STATE
            for _ in range(40):  # until the subscription (sent right after connecting) is in place
                mqtt_publish.single(topic("H1", "CAB01", channel), one_event_batch() if loop == "ingest-writer"
                                    else b"{}", qos=1, hostname="127.0.0.1", port=broker.port)
                if wedge.entered.wait(0.5):
                    break
        if loop == "catalog-publisher":  # a census change wakes it at once (else within its idle wake)
            gw.publisher.changed()
        assert_pings_stop_naming(watchdog, heartbeats, notify, clock, wedge, loop)
    finally:
        wedge.release.set()
        watchdog.stop()
        gw.stop()
    assert heartbeats.names() == []  # stopped on purpose: nothing left to watch


def test_a_slow_his_within_its_deadline_keeps_the_lane_beating(tmp_path: Path) -> None:
    """The lane waits on the HIS up to its timeout; only a send past its declared deadline is a wedge."""
    store = GatewayStore(tmp_path / "gw.db")
    with store._engine.transaction() as db:
        db.execute(
            "INSERT INTO charges (charge_id, device, seq, admission, item_key, line, message, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            ("C1", "HH01", 1, "ADM1", "g/s", json.dumps({}), "MSH|^~\\&|", time.time()),
        )
    clock = FakeClock()
    heartbeats = HeartbeatRegistry(clock=clock)
    seen: list[list[str]] = []
    late_by = [0.0]

    class SlowHis(QuietHis):
        timeout_s = 20.0
        connect_timeout_s = 5.0

        def send(self, control_id: str, message: str) -> HisResult:
            clock.advance(late_by[0])  # this send takes that long
            seen.append([s.name for s in heartbeats.silent()])
            return super().send(control_id, message)

    sender = HisSender(store, SlowHis(), heartbeats=heartbeats, backoff_base_s=0.0, backoff_max_s=0.0)
    sender._beat.watch()
    budget = sender.send_deadline_s
    assert budget == 2 * (5.0 + 2 * 20.0) + LANE_DEADLINE_S  # two attempts of connect + write + answer
    late_by[0] = budget - 1  # slow, but within what a send may take: far past the lane's idle deadline
    assert budget - 1 > LANE_DEADLINE_S
    assert sender.run_once() == 1
    late_by[0] = budget + 1  # a send that never comes back in time
    assert sender.run_once(now=time.time() + 1) == 1
    assert seen == [[], ["his-sender-0"]]
    assert heartbeats.silent() == []  # the send returned: the lane beat again
    store.close()


def test_the_gateway_process_pings_until_stopped(tmp_path: Path, broker: MosquittoBroker,
                                                  notify: NotifySocket, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_forever (what systemd runs) hands its heartbeats to the watchdog: READY, pings, STOPPING."""
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    gw = Gateway(GatewayConfig(db_path=tmp_path / "gw.db", broker_port=broker.port), adapter=QuietHis())
    t = threading.Thread(target=gw.run_forever, daemon=True)
    monkeypatch.setattr("signal.signal", lambda *a: None)  # not the main thread
    t.start()
    try:
        notify.wait_for(lambda m: m == "READY=1")
        notify.wait_for(lambda m: m == "WATCHDOG=1")
        assert sorted(gw.heartbeats.names()) == ["charging", "his-recorder", "his-sender-0", "ingest-mqtt",
                                                 "ingest-writer", "lease", "link-watch", "notify-watch",
                                                 "stock-ledger", "wal-checkpoint"]
    finally:
        gw._stopped.set()
        t.join(20)
    notify.wait_for(lambda m: m == "STOPPING=1")
