"""The load generator: devices at the wire that the real gateway accepts, with acks and resends honoured."""

from __future__ import annotations

from pathlib import Path

import pytest

from hw_sim.catalog import sim_catalog
from hw_sim.harness import SpineHarness
from hw_sim.loadgen import LoadConfig, SimDevice, charge_id, main, run_private
from spd_common.wire import GENESIS_HASH, Ack, Channel, decode_batch, encode_ack, encode_batch, topic


def _offline_device(name: str = "LTEST00001") -> SimDevice:
    return SimDevice(name, LoadConfig(tag="TEST"), sim_catalog(), "127.0.0.1", 1)


def test_events_are_hash_chained_and_decode_as_a_gateway_reads_them() -> None:
    dev = _offline_device()
    for _ in range(5):
        dev.scan()
    assert [e.seq for e in dev.events] == [1, 2, 3, 4, 5]
    assert dev.events[0].prev == GENESIS_HASH
    assert all(b.prev == a.hash for a, b in zip(dev.events, dev.events[1:], strict=False))
    batch = decode_batch(topic("H1", dev.device, Channel.EVENTS), encode_batch("H1", dev.device, dev.events))
    assert batch.invalid == [] and len(batch.events) == 5
    assert all(e.kind == "consume" and e.body["udi"].startswith("]d2") for e in batch.events)
    assert len({e.body["udi"] for e in batch.events}) == 5  # one item, one serial


def test_ack_beyond_the_last_sequence_is_refused_and_a_good_one_marks_events_stored() -> None:
    dev = _offline_device()
    for _ in range(3):
        dev.scan()
    t_ack = topic("H1", dev.device, Channel.ACK)
    dev._on_message(None, t_ack, encode_ack(Ack(dev.device, 7)), 1, None)
    assert dev.acked == 0 and dev.counters.bad_acks == 1
    dev._on_message(None, t_ack, encode_ack(Ack(dev.device, 2)), 1, None)
    assert dev.acked == 2 and dev.stored_at[0] > 0 and dev.stored_at[1] > 0 and dev.stored_at[2] == 0


def test_charge_id_follows_the_wire_contract() -> None:
    assert charge_id("HH01", 42).endswith("0000000042") and len(charge_id("HH01", 42)) == 20


def test_cli_writes_the_catalogue_its_devices_scan_and_refuses_a_zero_rate(tmp_path: Path) -> None:
    csv = tmp_path / "sim.csv"
    assert main(["--write-catalog", str(csv)]) == 0
    assert csv.read_text(encoding="utf-8").count("\n") == len(sim_catalog()) + 1
    with pytest.raises(SystemExit) as exc:
        main(["--rate", "0"])
    assert exc.value.code == 2


def test_load_end_to_end_with_a_broker_restart_and_lost_acks(tmp_path: Path) -> None:
    """50 devices, 2 scans/s, 5 s against a private broker, the real gateway and the simulated HIS; the broker
    is restarted mid-run and a tenth of the acks are ignored, so reconnects and resends both happen."""
    cfg = LoadConfig(devices=50, rate=2, duration_s=5, tag="T", resend_after_s=1.0, drop_acks=0.1,
                     reconnect_delay_s=0.3, settle_timeout_s=40)

    def restart_broker(h: SpineHarness) -> None:
        h.broker.restart()

    out = run_private(cfg, tmp_path, during=restart_broker, during_at_s=2.0)
    tally, wire = out["tally"], out["wire"]
    assert not out["gave_up_waiting_for_acks"]
    assert out["events"] >= 400 and out["acked"] == out["events"]
    assert tally["events"] == out["events"]
    assert tally["stored"] == out["events"] and tally["stored_twice"] == 0 and tally["quarantined"] == 0
    assert tally["charged"] == out["events"]
    assert (tally["lost"], tally["duplicates"], tally["invented"]) == (0, 0, 0), tally["lost_keys"]
    assert wire["bad_acks"] == 0 and wire["quarantined_by_gateway"] == 0
    assert wire["acks_dropped"] > 0 and wire["rewinds"] > 0  # ignored acks were made good by resends
    assert wire["connects"] > cfg.devices  # every device came back after the broker restart
    assert wire["events_sent"] > out["events"]
    assert out["scan_to_stored"]["n"] == out["events"] and out["scan_to_his_ack"]["n"] == out["events"]
