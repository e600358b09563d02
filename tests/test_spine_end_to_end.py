"""The whole spine as processes: handheld → Mosquitto → gateway → HIS, with faults; exact counts."""

from __future__ import annotations

import signal
import time

import pytest

from hw_sim.harness import SpineHarness, Tally

from conftest import wait_for

pytestmark = pytest.mark.slow


def assert_exact(t: Tally, scans: int) -> None:
    assert t.scans == scans, t.as_dict()
    assert (t.stored, t.charged, t.consumption_records) == (scans, scans, scans), t.as_dict()
    assert (t.lost, t.duplicates, t.invented, t.chain_breaks) == (0, 0, 0, 0), t.as_dict()


def test_scans_become_exactly_one_charge_each(spine: SpineHarness) -> None:
    spine.start_handheld("HH01", scans=60, rate=50)
    spine.start_handheld("HH02", scans=60, rate=50)
    spine.wait_handhelds(60)
    assert_exact(spine.wait_settled(60), 120)


def test_device_killed_between_commit_and_publish_delivers_after_restart(spine: SpineHarness) -> None:
    spine.broker.kill()  # nothing can be published: every committed scan waits in the log
    hh = spine.start_handheld("HH01", scans=40, rate=200)
    wait_for(lambda: "events" in hh.output() or (spine.device_dbs() and _last_seq(spine.device_dbs()[0]) >= 40),
             timeout=30, message="the 40 scans committed")
    hh.kill(signal.SIGKILL)
    assert _last_seq(spine.device_dbs()[0]) == 40
    spine.broker.start()
    spine.start_handheld("HH01", scans=40, rate=200)  # restarts, scans nothing more, drains its log
    spine.wait_handhelds(60)
    assert_exact(spine.wait_settled(60), 40)


def test_device_killed_repeatedly_mid_stream_loses_and_doubles_nothing(spine: SpineHarness) -> None:
    for _ in range(4):
        hh = spine.start_handheld("HH01", scans=200, rate=100)
        time.sleep(0.4)
        hh.kill(signal.SIGKILL)
    spine.start_handheld("HH01", scans=200, rate=100)
    spine.wait_handhelds(60)
    assert_exact(spine.wait_settled(60), 200)


def test_gateway_killed_mid_stream_loses_and_doubles_nothing(spine: SpineHarness) -> None:
    spine.start_handheld("HH01", scans=150, rate=50)
    for _ in range(3):
        time.sleep(0.7)
        spine.kill_gateway()
        spine.start_gateway()
    spine.wait_handhelds(90)
    assert_exact(spine.wait_settled(90), 150)


def test_his_down_then_back_gets_its_backlog(spine: SpineHarness) -> None:
    spine.his.go_down()
    spine.start_handheld("HH01", scans=50, rate=100)
    spine.wait_handhelds(60)
    time.sleep(2)
    t = spine.tally()
    assert (t.stored, t.charged) == (50, 0)
    spine.his.come_up()
    assert_exact(spine.wait_settled(60), 50)


def test_his_that_drops_the_ack_after_storing_is_not_charged_twice(spine: SpineHarness) -> None:
    spine.his.drop_acks_after_store(5)
    spine.start_handheld("HH01", scans=30, rate=100)
    spine.wait_handhelds(60)
    t = spine.wait_settled(60)
    assert_exact(t, 30)
    stats = spine.his.stats()
    assert stats.acks_dropped == 5
    assert stats.unique_charges == 30
    assert t.his_resends_recognised == 5  # the HIS saw each dropped one twice and booked it once


def _last_seq(path: object) -> int:
    import sqlite3

    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT last_seq FROM head").fetchone()
        return int(row[0]) if row else 0
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


def test_two_gateways_on_a_shared_subscription_one_killed_mid_stream(tmp_path: object) -> None:
    from pathlib import Path

    h = SpineHarness(Path(str(tmp_path)) / "two", gateways=2, lease_ttl_s=2.0).start()
    try:
        h.start_handheld("HH01", scans=150, rate=60)
        h.start_handheld("HH02", scans=150, rate=60)
        time.sleep(1.2)
        h.kill_gateway(0)  # the other instance goes on ingesting and takes over charging
        h.wait_handhelds(90)
        assert_exact(h.wait_settled(90), 300)
        logs = h.gateways[1].output()
        assert "now runs charging" in logs or "now runs charging" in h.gateways[0].output()
    finally:
        h.close()


def test_items_returned_unused_are_credited_once(spine: SpineHarness) -> None:
    spine.start_handheld("HH01", scans=120, rate=100, return_rate=0.25)
    spine.wait_handhelds(60)
    t = spine.wait_settled(60)
    assert t.returns > 0
    assert (t.lost, t.duplicates, t.invented) == (0, 0, 0), t.as_dict()
    assert t.stored == t.charged == t.scans
    wait_for(lambda: spine.tally().credited >= t.returns, timeout=30, interval=0.2, message="every return credited")
    import sqlite3

    db = sqlite3.connect(f"file:{spine.gateway_db}?mode=ro", uri=True)
    returns = db.execute("SELECT seq, outcome, detail, charge_id, credit_id FROM returns ORDER BY seq").fetchall()
    credits = db.execute("SELECT charge_id, status, last_error FROM charges WHERE charge_id IN "
                         "(SELECT credit_id FROM returns)").fetchall()
    db.close()
    assert spine.tally().credited == t.returns, (returns, credits)  # every return credited, none twice


def test_items_returned_unused_are_credited_once_over_http(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The reproduction from the README's CLIs, as processes: 200 scans, 10% returns, the HIS over HTTP."""
    h = SpineHarness(tmp_path_factory.mktemp("spine-http"), his_http=True, his_protocol="http").start()
    try:
        assert h.his_http is not None
        h.start_handheld("HH01", scans=200, rate=100, return_rate=0.1)
        h.wait_handhelds(60)
        t = h.wait_settled(60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and h.tally().credited < t.returns:
            time.sleep(0.2)
        t = h.tally()
        assert t.returns > 0 and t.credited == t.returns == t.returns_credited, t.as_dict()
        assert (t.lost, t.duplicates, t.invented, t.credits_lost, t.credits_duplicated) == (0, 0, 0, 0, 0)
        assert t.stored == t.charged == t.scans
        assert h._pending_charges() == 0
        assert h.his_http.stats().received >= t.scans + t.returns  # it all went over HTTP
    finally:
        h.close()
