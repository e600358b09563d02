"""Group commit at the gateway's ingest: many devices' batches in one transaction, acks only after it.

The real :class:`IngestService` and :class:`GatewayStore` (SQLite in tmp_path); the back-pressure test
runs over the private Mosquitto of the ``broker`` fixture with the real paho client and writer thread.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.group_commit import GroupWriter
from gateway.ingest import Inbound, IngestService
from gateway.store import GatewayStore
from hw_sim.broker import MosquittoBroker
from spd_common.wire import GENESIS_HASH, Channel, Event, decode_ack, encode_batch, event_hash, topic

from conftest import wait_for

SITE = "H1"


def events(device: str, first: int, n: int, prev: str) -> list[Event]:
    out = []
    for seq in range(first, first + n):
        body = {"admission": "ZY1", "udi": f"]d2010950600013435221S{device}x{seq}", "operator": "N1", "dept": "OR"}
        digest = event_hash(device, seq, 1_795_430_400_000 + seq, "consume", body, prev)
        out.append(Event(device, seq, 1_795_430_400_000 + seq, "consume", body, prev, digest))
        prev = digest
    return out


def device_batches(device: str, batches: int, size: int) -> list[tuple[str, bytes]]:
    """(topic, payload) of ``batches`` consecutive batches of ``size`` events of one device."""
    evs = events(device, 1, batches * size, GENESIS_HASH)
    return [(topic(SITE, device, Channel.EVENTS), encode_batch(SITE, device, evs[i:i + size]))
            for i in range(0, len(evs), size)]


def interleaved(devices: list[str], batches: int, size: int) -> list[tuple[str, bytes]]:
    per = [device_batches(d, batches, size) for d in devices]
    return [msgs[i] for i in range(batches) for msgs in per]


def count_events(path: Path) -> int:
    with sqlite3.connect(path) as db:  # another connection: only what is committed
        return int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])


class Acks:
    """Acks captured from the ingest service's publish function, with what was committed when each went out."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: list[tuple[str, int, int]] = []  # device, acked, events committed at that moment
        self.fail = False

    def publish(self, topic_text: str, payload: bytes) -> None:
        if self.fail:
            raise SystemExit("the gateway process is killed here")
        device = topic_text.split("/")[3]
        with sqlite3.connect(self.path) as db:
            committed = db.execute("SELECT COUNT(*) FROM events WHERE device = ? AND seq <= ?",
                                   (device, decode_ack(device, payload).acked)).fetchone()[0]
        self.seen.append((device, decode_ack(device, payload).acked, int(committed)))

    def last(self) -> dict[str, int]:
        return {d: acked for d, acked, _ in self.seen}


@contextmanager
def failing_commit(store: GatewayStore) -> Iterator[None]:
    """Every transaction of the store fails at its COMMIT (an I/O error): rolled back, the error raised."""
    engine = store._engine
    real = engine.transaction

    @contextmanager
    def transaction() -> Iterator[sqlite3.Connection]:
        with engine._lock:
            engine._db.execute("BEGIN IMMEDIATE")
            try:
                yield engine._db
            finally:
                engine._db.execute("ROLLBACK")
            raise sqlite3.OperationalError("disk I/O error")

    engine.transaction = transaction  # type: ignore[method-assign]
    try:
        yield
    finally:
        engine.transaction = real  # type: ignore[method-assign]


def test_a_group_of_many_devices_is_one_commit_and_every_ack_follows_it(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    store = GatewayStore(path)
    acks = Acks(path)
    service = IngestService(store, host="127.0.0.1", port=1, publish=acks.publish)
    devices = [f"HH{n:02d}" for n in range(6)]
    settled: list[int] = []
    msgs = [Inbound(t, p, settle=lambda i=i: settled.append(i))
            for i, (t, p) in enumerate(interleaved(devices, 3, 20))]

    with failing_commit(store):  # the commit fails: no ack at all, nothing stored, the devices will resend
        service.handle_group(msgs)
    assert acks.seen == [] and count_events(path) == 0 and service.stats.store_failures == 1
    assert sorted(settled) == list(range(len(msgs)))  # each message settled with the broker all the same

    service.handle_group(msgs)  # the resend
    assert service.stats.groups == 1 and service.stats.events_new == 6 * 60
    assert len(acks.seen) == len(msgs)
    assert all(committed == acked for _, acked, committed in acks.seen)  # every ack covers committed events
    assert acks.last() == dict.fromkeys(devices, 60)
    store.close()


def test_killed_after_the_commit_before_the_acks_the_resend_is_stored_once_and_acked(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    store = GatewayStore(path)
    acks = Acks(path)
    acks.fail = True
    msgs = [Inbound(t, p) for t, p in interleaved(["HH01", "HH02"], 4, 25)]
    with pytest.raises(SystemExit):
        IngestService(store, host="127.0.0.1", port=1, publish=acks.publish).handle_group(msgs)
    store.close()
    assert count_events(path) == 200 and acks.seen == []  # committed, never acked

    store = GatewayStore(path)  # the gateway again; the broker redelivers what was never acknowledged
    acks.fail = False
    service = IngestService(store, host="127.0.0.1", port=1, publish=acks.publish)
    service.handle_group(msgs)
    assert service.stats.events_new == 0 and service.stats.events_duplicate == 200
    assert count_events(path) == 200 and acks.last() == {"HH01": 100, "HH02": 100}
    store.close()


def test_a_full_writer_queue_blocks_the_producer_and_loses_nothing() -> None:
    handled: list[list[int]] = []
    writer: GroupWriter[int] = GroupWriter(handled.append, capacity=3, max_group=2)
    for i in range(3):
        writer.put(i)
    fourth = threading.Thread(target=writer.put, args=(3,))
    fourth.start()
    fourth.join(0.3)
    assert fourth.is_alive() and writer.queued() == 3  # the network thread would stop reading here
    assert writer.run_once() == 2
    fourth.join(5)
    assert not fourth.is_alive() and writer.stats.full_waits == 1
    while writer.run_once():
        pass
    assert [i for group in handled for i in group] == [0, 1, 2, 3]
    assert max(len(g) for g in handled) == 2


def test_back_pressure_keeps_the_batches_at_the_broker_and_loses_or_doubles_nothing(
        tmp_path: Path, broker: MosquittoBroker) -> None:
    """A writer held up: the broker hands over no more than the queue holds; released, every batch is
    stored once and acked."""
    path = tmp_path / "gw.db"
    store = GatewayStore(path)
    gate = threading.Event()
    real = store.ingest_group

    def held(*args: object, **kw: object) -> object:
        gate.wait(20)
        return real(*args, **kw)  # type: ignore[arg-type]

    store.ingest_group = held  # type: ignore[assignment,method-assign]
    service = IngestService(store, host=broker.host, port=broker.port, client_id="gw-bp", queue_size=4,
                            max_group=2).start()
    received = [0]
    inner = service._client.on_message

    def counting(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        received[0] += 1
        inner(client, userdata, msg)

    service._client.on_message = counting
    devices = [f"HH{n:02d}" for n in range(5)]
    acked: dict[str, int] = {}
    dev = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="devices", protocol=mqtt.MQTTv5)
    dev.max_inflight_messages_set(0)
    dev.on_message = lambda c, u, m: acked.__setitem__(m.topic.split("/")[3],
                                                       decode_ack(m.topic.split("/")[3], m.payload).acked)
    try:
        assert service.wait_connected()
        dev.connect(broker.host, broker.port)
        dev.loop_start()
        dev.subscribe(f"spd/v1/{SITE}/+/ack", qos=1)
        msgs = interleaved(devices, 8, 10)
        for t, p in msgs:
            dev.publish(t, p, qos=1)
        wait_for(lambda: received[0] >= 4)
        time.sleep(0.5)  # were the broker to push more than the Receive Maximum, it would have by now
        assert received[0] == 4 and count_events(path) == 0  # 1 group of 2 in hand, 2 queued; 36 at the broker
        assert service.writer.stats.full_waits == 0
        gate.set()
        wait_for(lambda: acked == dict.fromkeys(devices, 80), timeout=30)
        assert received[0] == len(msgs)  # each delivered once: nothing was redelivered or dropped
        assert count_events(path) == 400 and service.stats.events_new == 400
        assert service.stats.events_duplicate == 0 and service.writer.stats.largest_group <= 2
    finally:
        gate.set()
        dev.loop_stop()
        dev.disconnect()
        service.stop()
        store.close()


def _message(topic_text: str, payload: bytes) -> mqtt.MQTTMessage:
    msg = mqtt.MQTTMessage(topic=topic_text.encode())
    msg.payload = payload
    return msg


def test_messages_are_decoded_in_the_network_thread_and_the_writer_only_stores_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gw.db"
    store = GatewayStore(path)
    acks = Acks(path)
    service = IngestService(store, host="127.0.0.1", port=1, publish=acks.publish)
    (good_topic, good), = device_batches("HH01", 1, 5)
    bad_topic = topic(SITE, "HH02", Channel.EVENTS)
    service._on_message(None, None, _message(good_topic, good))  # type: ignore[arg-type]
    service._on_message(None, None, _message(bad_topic, b"{not json"))  # type: ignore[arg-type]
    decoded = [m.decoded for m in list(service.writer._queue.queue)]
    assert [type(d[0]).__name__ for d in decoded if d is not None] == ["Batch", "WireError"]

    def no_decoding(*args: object) -> None:
        raise AssertionError("the writer decoded a message again")

    monkeypatch.setattr("gateway.ingest.decode_batch", no_decoding)
    assert service.writer.run_once() == 2
    assert count_events(path) == 5 and acks.last() == {"HH01": 5}
    assert service.stats.bad_payloads == 1
    assert store._engine.query("SELECT COUNT(*) FROM bad_payloads")[0][0] == 1

    # a fault of the decoder itself (a bug) never escapes into paho's thread: the writer's group fails with it
    service._on_message(None, None, _message(good_topic, good))  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match="decoded a message again"):
        service.handle_group(list(service.writer._queue.queue))
    store.close()
