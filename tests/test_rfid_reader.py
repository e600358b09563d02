"""The RFID reader driver against the simulated R2000 module on a pty: inventory, noise, unplug and replug."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from device.hal.rfid import (
    InventoryResult,
    ReaderDisconnected,
    ReaderError,
    ReaderState,
    ReaderTimeout,
    RfidReader,
)
from hw_sim.pty_serial import PtyPort
from hw_sim.rfid_reader import SimR2000Reader

FAST = 20000.0  # tag reads per second in tests


def epc(i: int) -> str:
    return f"E280{i:020X}"


def stock(sim: SimR2000Reader, n: int, antennas: int = 4) -> dict[str, int]:
    """``n`` tagged items spread over the antennas; returns EPC -> antenna."""
    placed = {}
    for i in range(n):
        antenna = i % antennas + 1
        sim.add_tag(epc(i), antennas=(antenna,), rssi_dbm=-40.0 - antenna * 5)
        placed[epc(i)] = antenna
    return placed


@pytest.fixture
def sim() -> Iterator[SimR2000Reader]:
    with SimR2000Reader(tags_per_s=FAST, seed=7) as reader:
        yield reader


def test_full_inventory_of_200_tags_over_4_antennas_with_misses(sim: SimR2000Reader) -> None:
    sim.miss_rate = 0.05
    placed = stock(sim, 200)
    with RfidReader(sim.url, timeout_s=0.5) as reader:
        result = reader.inventory(rounds=3)
    assert result.rounds_completed == 3
    assert set(result.tags) == set(placed)
    assert {e: s.antennas for e, s in result.tags.items()} == {e: {a} for e, a in placed.items()}
    assert sim.stats.misses > 0
    assert sum(s.count for s in result.tags.values()) == sim.stats.tag_reads_sent == 3 * 200 - sim.stats.misses
    assert all(1 <= s.count <= 3 for s in result.tags.values())
    assert result.antenna_errors == {} and result.lost_round_ends == 0


def test_best_rssi_is_the_strongest_read_within_the_noise(sim: SimR2000Reader) -> None:
    sim.add_tag(epc(1), antennas=(2,), rssi_dbm=-50.0)
    with RfidReader(sim.url, timeout_s=0.5) as reader:
        result = reader.inventory(rounds=5, antennas=(2,))
    sighting = result.tags[epc(1)]
    assert sighting.count == 5
    assert -50 <= sighting.best_rssi <= -50 + 4 * sim.rssi_noise_db


def test_a_single_round_takes_the_time_a_real_module_needs() -> None:
    with SimR2000Reader(tags_per_s=1000.0, seed=1) as sim:
        stock(sim, 200)
        with RfidReader(sim.url, timeout_s=2.0) as reader:
            result = reader.inventory(rounds=1)
    assert len(result.tags) == 200
    assert 0.19 <= result.duration_s < 2.0


def test_reader_unplugged_goes_offline_then_recovers_on_the_same_url(sim: SimR2000Reader) -> None:
    placed = stock(sim, 40)
    states: list[ReaderState] = []
    reader = RfidReader(sim.url, timeout_s=0.3, backoff_s=(0.02, 0.1))
    reader.when_state_changed = states.append
    try:
        assert len(reader.inventory().tags) == 40
        assert reader.is_online
        sim.unplug()
        with pytest.raises(ReaderDisconnected) as caught:
            reader.inventory()
        assert isinstance(caught.value, ConnectionError) and isinstance(caught.value, ReaderError)
        assert caught.value.reason == "reader_disconnected"
        assert not reader.is_online
        assert reader.wait_online(0.15) is False
        sim.replug()
        assert reader.wait_online(2.0) is True
        assert set(reader.inventory().tags) == set(placed)
        assert states == [ReaderState.ONLINE, ReaderState.OFFLINE, ReaderState.ONLINE]
        assert (reader.stats.disconnects, reader.stats.reconnects) == (1, 1)
    finally:
        reader.close()


def test_unplug_during_inventory_keeps_the_reads_made_before() -> None:
    with SimR2000Reader(tags_per_s=400.0, seed=3) as sim:
        stock(sim, 200)
        reader = RfidReader(sim.url, timeout_s=0.3)
        try:
            reader.open()
            threading.Timer(0.15, sim.unplug).start()
            with pytest.raises(ReaderDisconnected) as caught:
                reader.inventory()
            partial = caught.value.partial
            assert isinstance(partial, InventoryResult)
            assert 0 < len(partial.tags) < 200
            assert partial.rounds_completed == 0
        finally:
            reader.close()


def test_garbage_and_corruption_on_the_line_lose_no_tag(sim: SimR2000Reader) -> None:
    sim.garbage_rate = 0.1
    sim.corrupt_rate = 0.03
    placed = stock(sim, 200)
    with RfidReader(sim.url, timeout_s=0.2) as reader:
        result = reader.inventory(rounds=3)
        stats = reader.stats
    assert set(result.tags) == set(placed)
    assert sim.stats.corrupted_frames > 0 and sim.stats.garbage_bursts > 0
    assert stats.bad_frames >= sim.stats.corrupted_frames
    assert stats.garbage_bytes > 0
    # Every tag packet that arrived intact was counted, no more.
    assert sum(s.count for s in result.tags.values()) <= sim.stats.tag_reads_sent


def test_missing_antenna_is_reported_and_the_others_still_read(sim: SimR2000Reader) -> None:
    sim.connected_antennas = {1, 2, 3}
    placed = stock(sim, 40)
    with RfidReader(sim.url, timeout_s=0.3) as reader:
        result = reader.inventory()
    assert result.antenna_errors == {4: "antenna_missing"}
    assert set(result.tags) == {e for e, a in placed.items() if a != 4}


def test_firmware_version_is_read(sim: SimR2000Reader) -> None:
    with RfidReader(sim.url, timeout_s=0.3) as reader:
        assert reader.firmware_version() == (1, 8)


def test_silent_reader_times_out() -> None:
    port = PtyPort()
    try:
        reader = RfidReader(port.url, timeout_s=0.1, retries=1)
        started = time.monotonic()
        with pytest.raises(ReaderTimeout) as caught:
            reader.firmware_version()
        assert isinstance(caught.value, TimeoutError)
        assert 0.2 <= time.monotonic() - started < 1.0
        assert reader.is_online  # the port is there, the module is not answering
        reader.close()
    finally:
        port.close()


def test_missing_port_reports_disconnected(tmp_path: object) -> None:
    reader = RfidReader(f"{tmp_path}/ttyUSB-missing", timeout_s=0.1)
    with pytest.raises(ReaderDisconnected):
        reader.inventory()
    assert reader.state is ReaderState.OFFLINE


def test_loop_url_opens_through_serial_for_url() -> None:
    with RfidReader("loop://", timeout_s=0.1) as reader:
        reader.open()
        assert reader.is_online
