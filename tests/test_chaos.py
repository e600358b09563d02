"""The CI-sized chaos run: ≥10,000 scans from handhelds and cabinets under every fault, over MLLP and HTTP, with
returns and credits; zero tolerance."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hw_sim.chaos import ChaosConfig, ChaosRun
from hw_sim.powerfs import fuse_unavailable

pytestmark = pytest.mark.slow


@pytest.mark.skipif(fuse_unavailable() is not None, reason=f"simulated power cuts: {fuse_unavailable()}")
def test_nothing_lost_doubled_or_invented_under_faults(tmp_path: Path) -> None:
    cfg = ChaosConfig(seed=int(os.environ.get("SPD_CHAOS_SEED", "20261123")))
    report = ChaosRun(tmp_path / "chaos", cfg, say=print).run()
    print(json.dumps(report.as_dict()))
    assert report.scans >= 10_000
    assert report.agent_kills >= 200
    assert report.power_cuts >= 50
    assert report.broker_kills >= 20
    assert report.gateway_kills >= 20
    assert report.his_dropped_acks >= 10
    assert report.his_long_outage_s >= 20 and report.his_ae_answers > 0 and report.his_ar_answers > 0
    assert report.integrity_checks >= report.agent_kills + report.power_cuts
    assert report.integrity_failures == []
    assert (report.lost, report.lost_on_device, report.duplicated, report.invented) == (0, 0, 0, 0)
    assert (report.chain_breaks, report.device_chain_breaks, report.parked_left) == (0, 0, 0)
    assert report.told_to_nurse <= report.scans
    # cabinets are in it: their scans, counts over a reader that corrupts frames, every event stored
    assert report.cabinet_scans > 0 and report.cabinet_sessions > 0
    assert report.corrupted_frames > 0 and report.garbage_bursts > 0
    assert report.cabinet_inventory_mismatches == []
    assert report.events > report.scans and report.events_not_stored == 0
    assert report.drain_s < 180
    # the HIS over HTTP for a fixed share of the run as well as over MLLP, charges and credits both ways
    assert report.protocol_switches == 3 and report.gateway_starts_http > 0 and report.gateway_starts_mllp > 0
    assert report.his_messages_http > 1000 and report.his_messages_mllp > 1000
    assert report.returns > 0 and report.credits_booked >= report.returns and report.credits_over_http > 0
    assert (report.credits_lost, report.credits_duplicated, report.credits_invented) == (0, 0, 0)
    assert (report.returned_still_charged, report.returns_unsettled) == (0, 0)
    assert report.credits_booked == report.returns_credited


def test_on_postgresql_a_short_run_loses_doubles_and_invents_nothing(tmp_path: Path, pg_url: str) -> None:
    """The PostgreSQL variant, short: two gateways on one database sharing the HIS sending, killed and restarted,
    with broker kills, network cuts and HIS faults over MLLP then HTTP (no power cuts: see the run above)."""
    cfg = ChaosConfig(
        seed=int(os.environ.get("SPD_CHAOS_SEED", "20261203")), devices=3, scans_per_device=160, rate=8.0,
        power_devices=0, cabinets=1, cabinet_power=0, agent_kills=6, power_cuts=0, broker_kills=2, gateway_kills=5,
        his_dropped_acks=3, his_outages=1, his_long_outage_s=0.0, his_slow_periods=1, his_ae_answers=2,
        his_wrong_ids=1, network_cuts=2, disk_faults=0, his_http_epochs=2, settle_timeout_s=90.0,
        store="postgresql", store_url=pg_url,
    )
    report = ChaosRun(tmp_path / "chaos-pg", cfg, say=print).run()
    print(json.dumps(report.as_dict()))
    assert report.store == "postgresql" and report.gateway_kills >= 5 and report.broker_kills >= 2
    assert report.scans >= 400 and report.cabinet_scans > 0
    assert (report.lost, report.lost_on_device, report.duplicated, report.invented) == (0, 0, 0, 0)
    assert (report.chain_breaks, report.device_chain_breaks, report.parked_left) == (0, 0, 0)
    assert report.events > report.scans and report.events_not_stored == 0
    assert (report.credits_lost, report.credits_duplicated, report.credits_invented) == (0, 0, 0)
    assert (report.returned_still_charged, report.returns_unsettled) == (0, 0)
    assert report.cabinet_inventory_mismatches == [] and report.integrity_failures == []
    assert report.ok
