"""The ADT listener: every followed event over MLLP, an ACK for every message, and clients that misbehave."""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import adt as adt_module
from gateway.adt import AdtListener, parse_hl7_time
from gateway.census import PatientState, census_record, load_census
from gateway.his.mllp import frame_text
from gateway.store import GatewayStore
from hw_sim.adt import AdtSender, Patient, adt_message

from conftest import wait_for

PATIENT = "ZY2026001234"


class Rig:
    def __init__(self, tmp: Path, **kw: Any) -> None:
        self.store = GatewayStore(tmp / "gw.db")
        self.changes = 0
        self.listener = AdtListener(self.store, port=0, on_change=self._changed, **kw).start()

    def _changed(self) -> None:
        self.changes += 1

    def sender(self) -> AdtSender:
        return AdtSender("127.0.0.1", self.listener.port)

    def raw(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.listener.port), timeout=10)

    def close(self) -> None:
        self.listener.stop()
        self.store.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


def msa(ack_text: str) -> list[str]:
    return next(s for s in ack_text.split("\r") if s.startswith("MSA")).split("|")


def closed_by_server(sock: socket.socket) -> bool:
    """True when the server closed the connection (EOF or reset) within the socket's timeout."""
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_each_followed_event_is_acknowledged_and_kept_in_the_census(rig: Rig) -> None:
    p = Patient(PATIENT, "Zhang^San", ward="5A", room="501", bed="12", dept="CARD")
    with rig.sender() as s:
        ack = s.send(adt_message("A01", p, control_id="M1", when=dt.datetime(2026, 12, 1, 9, 30)))
        assert (ack.code.value, ack.control_id_echo, ack.text) == ("AA", "M1", f"A01 {PATIENT} applied")
        rec = census_record(rig.store, PATIENT)
        assert rec is not None
        assert (rec.status, rec.initials, rec.ward, rec.bed, rec.dept, rec.admitted_at) == (
            PatientState.IN_HOUSE, "Z.S.", "5A", "12", "CARD", dt.datetime(2026, 12, 1, 9, 30).timestamp())
        assert s.send(adt_message("A02", Patient(PATIENT, ward="ICU", bed="3"))).code.value == "AA"
        assert s.send(adt_message("A08", Patient(PATIENT, "Zhang^Wei"))).code.value == "AA"
        rec = census_record(rig.store, PATIENT)
        assert rec is not None and (rec.ward, rec.bed, rec.dept, rec.initials) == ("ICU", "3", "CARD", "Z.W.")
        out = dt.datetime(2026, 12, 4, 11, 0)
        assert s.send(adt_message("A03", Patient(PATIENT), when=out)).code.value == "AA"
        rec = census_record(rig.store, PATIENT)
        assert rec is not None and (rec.status, rec.discharged_at) == (PatientState.DISCHARGED, out.timestamp())
        assert s.send(adt_message("A13", Patient(PATIENT))).code.value == "AA"
        rec = census_record(rig.store, PATIENT)
        assert rec is not None and rec.status is PatientState.IN_HOUSE
        assert s.send(adt_message("A11", Patient(PATIENT))).code.value == "AA"
        assert census_record(rig.store, PATIENT) is None
        again = s.send(adt_message("A01", p, control_id="M1"))  # a re-send after a lost ACK
        assert (again.code.value, again.text) == ("AA", f"A01 {PATIENT} already applied or no change")
    assert census_record(rig.store, PATIENT) is None
    assert rig.changes == 6


@pytest.mark.parametrize(("message", "code", "condition", "text"), [
    ("hello, this is not HL7", "AR", "100", "no usable MSH segment"),
    ("MSH|^~\\&|LAB|HOSP|SPD|SPD|20261203||ORU^R01|L1|P|2.5\rPID|1||ZY1\r", "AR", "200",
     "message type ORU not accepted: ADT only"),
    ("MSH|^~\\&|HIS|HOSP|SPD|SPD|20261203||ADT^A01||P|2.5\rPID|1||ZY1\r", "AR", "101",
     "MSH-10 message control id missing"),
    ("MSH|^~\\&|HIS|HOSP|SPD|SPD|20261203||ADT^A01|X2|P|2.5\rPID|1||^^^HOSP\r", "AE", "101",
     "PID-3 admission number missing"),
    ("MSH|^~\\&|HIS|HOSP|SPD|SPD|20261203||ADT^A03|X3|P|2.5\rEVN|A03|yesterday\rPID|1||ZY1\r", "AE", "102",
     "EVN-2 'yesterday' is not an HL7 timestamp"),
    ("MSH|^~\\&|HIS|HOSP|SPD|SPD|20261203||ADT^A01|X4|P|2.5\rPID|1||ZY 1\r", "AE", "102",
     "PID-3 'ZY 1' is not an admission number"),
])
def test_a_bad_message_gets_an_error_ack_with_its_reason_and_the_connection_serves_on(
        rig: Rig, message: str, code: str, condition: str, text: str) -> None:
    with rig.sender() as s:
        ack = s.exchange(message)
        fields = msa(ack)
        assert fields[1] == code
        assert fields[3].startswith(text)
        err = next(seg for seg in ack.split("\r") if seg.startswith("ERR")).split("|")
        assert err[3].split("^")[0] == condition
        assert s.send(adt_message("A01", Patient(PATIENT))).code.value == "AA"
    records = load_census(rig.store)
    assert [r.admission for r in records or []] == [PATIENT]


def test_an_event_the_census_does_not_follow_is_acknowledged_as_ignored(rig: Rig) -> None:
    outpatient = adt_message("A01", Patient(PATIENT)).replace("PV1|1|I|", "PV1|1|O|")
    with rig.sender() as s:
        ack = s.send(adt_message("A04", Patient(PATIENT)))
        assert (ack.code.value, ack.text) == ("AA", "ignored: ADT^A04 is not used by the SPD census")
        ack = s.send(outpatient)
        assert (ack.code.value, ack.text) == (
            "AA", "ignored: ADT^A01 for an outpatient (PV1-2 O) is not used by the SPD census")
    assert load_census(rig.store) is None


def test_a_store_failure_is_an_application_error_and_the_resend_is_applied(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    real = adt_module.apply_adt

    def failing(*a: Any, **kw: Any) -> bool:
        raise OSError("disk I/O error")

    monkeypatch.setattr(adt_module, "apply_adt", failing)
    message = adt_message("A01", Patient(PATIENT), control_id="R1")
    with rig.sender() as s:
        ack = s.send(message)
        assert (ack.code.value, ack.text) == ("AE", "census store failed: send again")
        monkeypatch.setattr(adt_module, "apply_adt", real)
        assert s.send(message).code.value == "AA"
    assert census_record(rig.store, PATIENT) is not None


def test_garbage_between_frames_undecodable_and_oversize_messages_do_not_stop_the_connection(tmp_path: Path) -> None:
    rig = Rig(tmp_path, max_frame_bytes=2048)
    try:
        with rig.sender() as s:
            s.sock.sendall(b"GET / HTTP/1.1\r\n\r\n")  # bytes outside any MLLP block are skipped
            assert s.send(adt_message("A01", Patient(PATIENT))).code.value == "AA"
            s.sock.sendall(b"\x0bMSH|^~\\&|HIS|HOSP|SPD|SPD|20261203||ADT^A08|U1|P|2.5\rPID|1||ZY1||\xff\xfe\x1c\r")
            assert msa(s.read_ack_text())[1:4] == ["AR", "U1", "message is not valid utf-8"]
            s.sock.sendall(frame_text("MSH|" + "x" * 5000))
            assert msa(s.read_ack_text())[1] == "AR"
            assert s.send(adt_message("A03", Patient(PATIENT))).code.value == "AA"
        rec = census_record(rig.store, PATIENT)
        assert rec is not None and rec.status is PatientState.DISCHARGED
    finally:
        rig.close()


def test_idle_and_slow_clients_are_dropped_while_others_are_served(tmp_path: Path) -> None:
    rig = Rig(tmp_path, idle_timeout_s=0.5, frame_timeout_s=0.5)
    try:
        idle = rig.raw()
        slow = rig.raw()
        slow.sendall(b"\x0bMSH|^~\\&|HIS|")  # the start of a message, and then a byte now and then
        with rig.sender() as s:
            assert s.send(adt_message("A01", Patient(PATIENT))).code.value == "AA"
        assert closed_by_server(idle)
        dropped = False
        for _ in range(200):  # about 10 s at most: one byte every 50 ms keeps the connection busy, not complete
            try:
                slow.sendall(b"x")
            except OSError:
                dropped = True
                break
            slow.settimeout(0.05)
            try:
                if slow.recv(1) == b"":
                    dropped = True
                    break
            except TimeoutError:
                pass
        assert dropped, "a sender that never completes its message keeps its connection"
        wait_for(lambda: rig.listener.connections == 0, message="the dropped connections to be released")
        with rig.sender() as s:
            assert s.send(adt_message("A03", Patient(PATIENT))).code.value == "AA"
        idle.close()
        slow.close()
    finally:
        rig.close()


def test_connections_beyond_the_limit_are_refused_and_a_freed_slot_is_reused(tmp_path: Path) -> None:
    rig = Rig(tmp_path, max_connections=2)
    try:
        first, second = rig.sender(), rig.sender()
        wait_for(lambda: rig.listener.connections == 2, message="two connections")
        third = rig.raw()
        assert closed_by_server(third)
        assert rig.listener.refused_connections == 1
        assert first.send(adt_message("A01", Patient(PATIENT))).code.value == "AA"
        first.close()
        wait_for(lambda: rig.listener.connections == 1, message="the first connection released")
        with rig.sender() as s:
            assert s.send(adt_message("A08", Patient(PATIENT, "Li^Na"))).code.value == "AA"
        second.close()
        third.close()
    finally:
        rig.close()


@pytest.mark.parametrize(("text", "expected"), [
    ("20261203143000", dt.datetime(2026, 12, 3, 14, 30).timestamp()),
    ("202612031430", dt.datetime(2026, 12, 3, 14, 30).timestamp()),
    ("20261203", dt.datetime(2026, 12, 3).timestamp()),
    ("20261203143000.1234+0800", dt.datetime(2026, 12, 3, 6, 30, tzinfo=dt.UTC).timestamp()),
    ("20261203143000-0500", dt.datetime(2026, 12, 3, 19, 30, tzinfo=dt.UTC).timestamp()),
])
def test_hl7_timestamps(text: str, expected: float) -> None:
    assert parse_hl7_time(text) == expected


@pytest.mark.parametrize("text", ["", "2026120", "20261303", "yesterday", "20261203+08"])
def test_bad_hl7_timestamps(text: str) -> None:
    with pytest.raises(ValueError):
        parse_hl7_time(text)


def test_the_simulated_his_sends_adt_from_the_command_line(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    from hw_sim.cli import main as sim_main

    port = str(rig.listener.port)
    assert sim_main(["adt", "--port", port, "admit", PATIENT, "--name", "Zhang^San", "--ward", "5A"]) == 0
    assert capsys.readouterr().out.strip() == f"AA A01 {PATIENT} applied"
    assert sim_main(["adt", "--port", port, "discharge", PATIENT]) == 0
    rec = census_record(rig.store, PATIENT)
    assert rec is not None and (rec.status, rec.initials, rec.ward) == (PatientState.DISCHARGED, "Z.S.", "5A")


def test_run_and_service_take_the_adt_options() -> None:
    from gateway.cli import build_parser
    from gateway.config import config_from_args

    for cmd in ("run", "service"):
        cfg = config_from_args(build_parser().parse_args([cmd, "--db", "gw.db", "--adt-port", "2576", "--adt-host",
                                                          "0.0.0.0", "--discharge-grace", "3600"]))
        assert (cfg.adt_port, cfg.adt_host, cfg.discharge_grace_s) == (2576, "0.0.0.0", 3600.0)
        cfg = config_from_args(build_parser().parse_args([cmd, "--db", "gw.db"]))
        assert (cfg.adt_port, cfg.adt_host, cfg.discharge_grace_s) == (None, "127.0.0.1", 86400.0)


_ADT_PIECES = ["MSH|^~\\&|HIS|HOSP|SPD|SPD|20261203||ADT^A01|M1|P|2.5", "MSH|", "EVN|A03|2026", "PID|1||ZY1||Li^Na",
               "PID|1||", "PV1|1|I|5A^^3||||||||CARD", "ADT^A99", "^~\\&", "|", "\r", "\n", "\\X0D\\", "中文", "\x00"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=300), st.lists(st.sampled_from(_ADT_PIECES), max_size=12).map("".join)))
def test_any_text_gets_an_ack_and_never_an_exception(rig: Rig, text: str) -> None:
    ack, result = rig.listener.handler.handle(text)
    assert result.code.value in ("AA", "AE", "AR")
    assert msa(ack)[1] == result.code.value


def test_each_message_spd_sim_adt_sends_has_its_own_control_id() -> None:
    """The gateway takes a repeated MSH-10 as a resend: two runs of spd-sim adt must never reuse one."""
    import subprocess
    import sys

    from hw_sim.adt import next_control_id

    ids = {next_control_id() for _ in range(2000)}
    assert len(ids) == 2000 and all(len(i) <= 20 for i in ids)
    other = subprocess.run([sys.executable, "-c", "from hw_sim.adt import next_control_id; print(next_control_id())"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert other not in ids
