"""The device agent's watchdog (cabinet and handheld): wedge each loop that must run in turn; the pings to systemd
stop and name it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.publish as mqtt_publish
import pytest

from device.cabinet.agent import CabinetAgent
from device.cabinet.session import Cabinet
from device.commands.run import run
from device.eventlog import EventLog
from device.handheld_runtime import screen
from device.handheld_runtime.station import ScanStation
from device.sync import DeviceSync
from hw_sim.broker import MosquittoBroker
from hw_sim.rfid_reader import SimR2000Reader
from spd_common.allowlist import Badge, Role, write_allowlist
from spd_common.heartbeat import HeartbeatRegistry
from spd_common.sdnotify import Watchdog
from spd_common.wire import Channel, topic

from device_configs import cabinet_config
from watchdog_helpers import FakeClock, NotifySocket, Wedge, assert_pings_stop_naming

LOOPS = ["cabinet-loop", "cabinet-reader", "sync-sender", "sync-mqtt", "device-main"]


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    n = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", n.path)
    yield n
    n.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_a_wedged_cabinet_loop_stops_the_pings_and_is_named(loop: str, tmp_path: Path, broker: MosquittoBroker,
                                                            notify: NotifySocket,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    reader = SimR2000Reader(tags_per_s=3000)
    reader.add_tag("3035A875440B5E00000F4247", antennas=(1,))
    cfg = cabinet_config(tmp_path, "CABWD", reader.url, broker_port=broker.port, reader_extra="poll_s = 0.1")
    wedge = Wedge()
    # each loop hangs in a call only it makes (a deadlocked handler, a stuck read ...)
    monkeypatch.setattr(Cabinet, "tick", wedge.hang_if("cabinet-loop", Cabinet.tick))
    monkeypatch.setattr(CabinetAgent, "_poll_reader", wedge.hang_if("cabinet-reader", CabinetAgent._poll_reader))
    monkeypatch.setattr(DeviceSync, "_send_some", wedge.hang_if("sync-sender", DeviceSync._send_some))
    monkeypatch.setattr(DeviceSync, "_on_message", wedge.hang_if("sync-mqtt", DeviceSync._on_message))
    monkeypatch.setattr(EventLog, "prune", wedge.hang_if("device-main", EventLog.prune))
    try:
        # started, and the baseline count done
        wedge_a_running_device(cfg, "CABWD", LOOPS, loop, wedge, broker, notify,
                               ready=lambda: (tmp_path / "data" / "inventory.json").exists())
    finally:
        reader.close()


def wedge_a_running_device(cfg: Path, device: str, loops: list[str], loop: str, wedge: Wedge,
                           broker: MosquittoBroker, notify: NotifySocket,
                           ready: Callable[[], bool] = lambda: True) -> None:
    """Run ``spd-device run`` on ``cfg`` until its ``loops`` beat and ``ready``, wedge ``loop``, and see the
    pings stop naming it; then release it and see the device stop with every heartbeat gone."""
    clock = FakeClock()
    heartbeats = HeartbeatRegistry(clock=clock)
    stop = threading.Event()
    t = threading.Thread(target=run, args=(cfg,), kwargs={"stop": stop, "heartbeats": heartbeats}, daemon=True)
    t.start()
    watchdog = Watchdog(lambda: True, interval_s=0.05, heartbeats=heartbeats).start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (ready() and sorted(heartbeats.names()) == sorted(loops)):
            time.sleep(0.02)
        assert sorted(heartbeats.names()) == sorted(loops)
        wedge.target = loop
        if loop == "sync-mqtt":  # a message (an ack) whose handler never returns, on paho's network thread
            for _ in range(40):
                mqtt_publish.single(topic("H1", device, Channel.ACK), b"{}", qos=1, hostname="127.0.0.1",
                                    port=broker.port)
                if wedge.entered.wait(0.5):
                    break
        assert_pings_stop_naming(watchdog, heartbeats, notify, clock, wedge, loop)
    finally:
        wedge.release.set()
        stop.set()
        t.join(20)
        watchdog.stop()
    assert not t.is_alive()
    assert heartbeats.names() == []


HANDHELD_LOOPS = ["handheld-loop", "handheld-screen", "handheld-housekeeping", "sync-sender", "sync-mqtt"]


def _on_thread(thread_name: str, wedged: Callable[..., Any], original: Callable[..., Any]) -> Callable[..., Any]:
    """``wedged`` when called on the thread of that name, else ``original`` (a call several threads make)."""
    def call(*args: Any, **kwargs: Any) -> Any:
        fn = wedged if threading.current_thread().name == thread_name else original
        return fn(*args, **kwargs)

    return call


@pytest.mark.parametrize("loop", HANDHELD_LOOPS)
def test_a_wedged_handheld_loop_stops_the_pings_and_is_named(loop: str, tmp_path: Path, broker: MosquittoBroker,
                                                             notify: NotifySocket,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``spd-device service`` runs for a handheld: ``run`` hands its heartbeats to the handheld's loops."""
    write_allowlist(tmp_path / "allow.json", [Badge("04A1B2C3", "N0001", Role.NURSE)])
    cfg = tmp_path / "hh.toml"
    cfg.write_text(f"""
[device]
id = "HHWD"
site = "H1"
kind = "handheld"
data_dir = "data"
[broker]
port = {broker.port}
[handheld]
dept = "ICU-2"
pin_factory = "sim"
allowlist_file = "allow.json"
screen = "off"
""", encoding="utf-8")
    wedge = Wedge()
    # each loop hangs in a call only it makes; nobody scans, as on a quiet night
    monkeypatch.setattr(ScanStation, "tick", wedge.hang_if("handheld-loop", ScanStation.tick))
    monkeypatch.setattr(screen, "Link", wedge.hang_if("handheld-screen", screen.Link))  # the screen's frame
    monkeypatch.setattr(EventLog, "backlog", _on_thread("handheld-housekeeping",
                                                        wedge.hang_if("handheld-housekeeping", EventLog.backlog),
                                                        EventLog.backlog))
    monkeypatch.setattr(DeviceSync, "_send_some", wedge.hang_if("sync-sender", DeviceSync._send_some))
    monkeypatch.setattr(DeviceSync, "_on_message", wedge.hang_if("sync-mqtt", DeviceSync._on_message))
    wedge_a_running_device(cfg, "HHWD", HANDHELD_LOOPS, loop, wedge, broker, notify)
