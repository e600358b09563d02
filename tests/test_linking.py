"""The gateway's not_linked check: a cabinet take charged on any device is linked; else one alarm, in time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import GatewayConfig
from gateway.linking import LinkWatch, link_alarms
from gateway.store import GatewayStore
from spd_common.wire import GENESIS_HASH, Batch, Event, EventKind, event_hash

STENT = "04012345678901"
T0 = 1_735_700_000_000
WINDOW = 600.0


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Device:
    def __init__(self, store: GatewayStore, name: str, clock: Clock) -> None:
        self.store, self.name, self.clock, self.seq, self.prev = store, name, clock, 0, GENESIS_HASH

    def emit(self, kind: EventKind, body: dict[str, Any]) -> int:
        self.seq += 1
        ts = T0 + self.seq * 1000
        prev, self.prev = self.prev, event_hash(self.name, self.seq, ts, kind.value, body, self.prev)
        self.store.ingest(Batch(self.name, "H1", [Event(self.name, self.seq, ts, kind.value, body, prev, self.prev)]),
                          now=self.clock.t)
        return self.seq

    def take(self, serial: str, *, user: str = "N0007", role: str = "nurse") -> int:
        return self.emit(EventKind.TAKEN, {"epc": f"EPC-{serial}", "gtin": STENT, "serial": serial, "session": "S3",
                                           "user": user, "role": role, "dept": "ICU-2"})

    def put_back(self, serial: str) -> int:
        return self.emit(EventKind.RETURNED, {"epc": f"EPC-{serial}", "gtin": STENT, "serial": serial,
                                              "session": "S4", "user": "N0008", "role": "nurse", "dept": "ICU-2"})

    def scan(self, serial: str) -> int:
        udi = f"]d201{STENT}17271231\x1d10L1\x1d21{serial}"
        return self.emit(EventKind.CONSUME, {"admission": "ZY0001", "udi": udi, "operator": "N0007", "dept": "ICU-2"})


@pytest.fixture
def clock() -> Clock:
    return Clock(1_800_000_000.0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[GatewayStore]:
    s = GatewayStore(tmp_path / "gateway.db", synchronous="OFF")
    yield s
    s.close()


def watch(store: GatewayStore, clock: Clock) -> LinkWatch:
    return LinkWatch(store, window_s=WINDOW, clock=clock)


def test_item_charged_on_a_handheld_in_the_ward_raises_no_alarm(store: GatewayStore, clock: Clock) -> None:
    w = watch(store, clock)
    cabinet, handheld = Device(store, "CB01", clock), Device(store, "HH07", clock)
    cabinet.take("SN1")
    clock.t += 300
    handheld.scan("SN1")
    clock.t += WINDOW * 3
    w.run_once()
    assert link_alarms(store) == []
    assert store._engine.query("SELECT state, closed_by FROM cabinet_takes") == [("linked", "charged by HH07 seq 1")]


def test_item_not_charged_in_time_raises_one_alarm_naming_cabinet_item_and_user(
    store: GatewayStore, clock: Clock, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main as gateway_cli

    w = watch(store, clock)
    cabinet = Device(store, "CB01", clock)
    seq = cabinet.take("SN1")
    clock.t += WINDOW - 1
    w.run_once()
    assert link_alarms(store) == []  # not yet
    clock.t += 2
    w.run_once()
    w.run_once()
    [alarm] = link_alarms(store)
    assert (alarm.cabinet, alarm.seq, alarm.item_key, alarm.user, alarm.session) == (
        "CB01", seq, f"{STENT}/SN1", "N0007", "S3")
    assert gateway_cli(["alarms", "--db", str(store.path)]) == 0
    out = capsys.readouterr().out
    assert "not_linked: cabinet CB01 item 04012345678901/SN1 (EPC EPC-SN1) taken by N0007 in session S3" in out
    assert f"not charged to a patient within {WINDOW:g} s" in out
    # a charge after the alarm is noted on it, not a second alarm
    Device(store, "HH02", clock).scan("SN1")
    w.run_once()
    [alarm] = link_alarms(store)
    assert alarm.resolved_by == "charged by HH02 seq 1"


def test_item_put_back_into_a_cabinet_raises_no_alarm(store: GatewayStore, clock: Clock) -> None:
    w = watch(store, clock)
    cabinet = Device(store, "CB01", clock)
    cabinet.take("SN1")
    cabinet.put_back("SN1")
    clock.t += WINDOW * 2
    w.run_once()
    assert link_alarms(store) == []


def test_scan_stored_before_the_take_links_it(store: GatewayStore, clock: Clock) -> None:
    """The cabinet was offline: the handheld's charge reached the gateway first."""
    w = watch(store, clock)
    Device(store, "HH07", clock).scan("SN1")
    w.run_once()
    clock.t += 120
    Device(store, "CB01", clock).take("SN1")
    clock.t += WINDOW * 2
    w.run_once()
    assert link_alarms(store) == []


def test_restocker_takes_and_history_before_the_check_existed_raise_no_alarm(
    store: GatewayStore, clock: Clock
) -> None:
    cabinet = Device(store, "CB01", clock)
    cabinet.take("SN0")  # stored long before the gateway first ran the check
    clock.t += WINDOW * 5
    w = watch(store, clock)
    cabinet.take("SN1", user="R0001", role="restocker")
    clock.t += WINDOW * 2
    w.run_once()
    assert link_alarms(store) == []


def test_the_window_is_part_of_the_gateway_configuration(tmp_path: Path) -> None:
    from gateway.app import Gateway

    assert GatewayConfig(tmp_path / "g.db").not_linked_within_s == 1800.0
    gateway = Gateway(GatewayConfig(tmp_path / "g.db", not_linked_within_s=90.0))
    try:
        assert gateway.link_watch.window_s == 90.0  # the gateway process runs the check with its configured window
    finally:
        gateway.store.close()
    with pytest.raises(ValueError):
        LinkWatch(GatewayStore(tmp_path / "g2.db"), window_s=0)


def test_the_cabinet_alarm_count_includes_not_linked(store: GatewayStore, clock: Clock) -> None:
    from gateway.audit import device_alarm_counts

    w = watch(store, clock)
    Device(store, "CB01", clock).take("SN1")
    clock.t += WINDOW + 1
    w.run_once()
    assert device_alarm_counts(store) == {"CB01": 1}


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GatewayStore]:
    location: Any = request.getfixturevalue("pg_store_url") if request.param == "postgresql" \
        else tmp_path / "gateway.db"
    s = GatewayStore(location, synchronous="OFF")
    yield s
    s.close()


def test_one_pass_links_in_event_order_on_both_engines(any_store: GatewayStore, clock: Clock) -> None:
    """Scans in one pass are written together, yet each take is linked by the first scan after it: a second
    scan of the item in the same run does not re-link it, and a take between two scans is linked by the
    scan stored before it (within the window) or left open until the next one."""
    store = any_store
    w = watch(store, clock)
    cabinet, ward, theatre = Device(store, "CB01", clock), Device(store, "HH07", clock), Device(store, "HH08", clock)
    cabinet.take("SN1")
    cabinet.take("SN2")
    ward.scan("SN1")
    theatre.scan("SN1")  # the same item again in the same run: the take stays linked by HH07
    ward.scan("SN3")  # no take of it: nothing to link
    cabinet.take("SN3")  # a take after a scan of its item within the window: linked at once
    cabinet.take("SN4")
    cabinet.put_back("SN2")
    theatre.scan("SN4")
    assert w.run_once() == 9
    assert store._engine.query("SELECT item_key, state, closed_by FROM cabinet_takes ORDER BY seq") == [
        (f"{STENT}/SN1", "linked", "charged by HH07 seq 1"),
        (f"{STENT}/SN2", "back", "put back into cabinet CB01 (seq 5)"),
        (f"{STENT}/SN3", "linked", "charged by HH07 seq 2"),
        (f"{STENT}/SN4", "linked", "charged by HH08 seq 2"),
    ]
    assert store._engine.query("SELECT COUNT(*) FROM item_scans")[0][0] == 4
    clock.t += WINDOW * 3
    w.run_once()
    assert link_alarms(store) == []
