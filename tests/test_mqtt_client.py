"""The one MQTT client factory (spd_common.mqtt): the set-up device sync, gateway ingest and fleet link share."""

from __future__ import annotations

import threading
import time
from typing import Any

from hw_sim.broker import MosquittoBroker
from spd_common.heartbeat import HeartbeatRegistry
from spd_common.mqtt import make_client, start_loop, stop_loop


def test_the_factory_sets_reconnect_delay_and_callbacks_and_the_loop_beats() -> None:
    connected = threading.Event()
    beat_after_connect = threading.Event()

    def clock() -> float:  # the heartbeat reads the clock on every beat
        if connected.is_set():
            beat_after_connect.set()
        return time.monotonic()

    def on_connect(client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if not rc.is_failure:
            connected.set()

    beat = HeartbeatRegistry(clock=clock).heartbeat("probe-mqtt", deadline_s=30.0)
    client = make_client("probe", reconnect_min_s=0.2, reconnect_max_s=0.5, heartbeat=beat, on_connect=on_connect)
    assert (client._reconnect_min_delay, client._reconnect_max_delay) == (0.2, 0.5)
    with MosquittoBroker() as broker:
        start_loop(client, "127.0.0.1", broker.port, beat, keepalive=15)
        try:
            assert connected.wait(10.0)
            assert beat_after_connect.wait(10.0)  # paho's loop beats once a pass
        finally:
            stop_loop(client, beat)
