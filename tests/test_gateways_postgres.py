"""Several gateway processes on one PostgreSQL database: the work shared, an instance killed and one added
mid-run, nothing lost, doubled or invented (exact counts from the devices, the gateway store and the HIS)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from gateway.store import GatewayStore
from hw_sim.harness import SpineHarness

pytestmark = pytest.mark.slow

LANES = 4  # the gateway's default HIS lanes: at most one charge in flight per lane when an instance dies


def test_gateways_on_postgresql_share_the_sending_and_lose_and_double_nothing_when_one_is_killed(
        pg_url: str, tmp_path: Path) -> None:
    h = SpineHarness(tmp_path / "pg", gateways=2, lease_ttl_s=2.0, store_url=pg_url).start()
    seen: set[str] = set()  # the instances that held charges to send at some point
    stop = threading.Event()

    def watch() -> None:
        store = GatewayStore(pg_url)
        try:
            while not stop.wait(0.05):
                seen.update(o for o, n in store.claims.holders().items() if n)
        finally:
            store.close()

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        watcher.start()
        for device in ("HH01", "HH02", "HH03"):
            h.start_handheld(device, scans=150, rate=40)
        time.sleep(1.5)
        h.kill_gateway(0)  # SIGKILL: its claims are taken over when its membership runs out (2 s)
        time.sleep(1.0)
        h.start_gateway(2)  # an instance added mid-run
        h.wait_handhelds(90)
        t = h.wait_settled(90)
        stop.set()
        watcher.join(10)
        assert t.scans == 450, t.as_dict()
        assert (t.stored, t.charged, t.consumption_records) == (450, 450, 450), t.as_dict()
        assert (t.lost, t.duplicates, t.invented, t.chain_breaks) == (0, 0, 0, 0), t.as_dict()
        # a charge goes to the HIS a second time only if the killed instance sent it and died before it
        # recorded the answer: at most one per lane of that instance (the HIS books it once)
        assert t.his_resends_recognised <= LANES, t.as_dict()
        assert {"spd-gateway-0", "spd-gateway-1"} <= seen or {"spd-gateway-1", "spd-gateway-2"} <= seen, seen
    finally:
        stop.set()
        h.close()
