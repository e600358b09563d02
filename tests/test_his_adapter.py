"""The MLLP HIS adapter against the simulated HIS (every outcome) and against an hl7apy MLLP server."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from hl7apy.core import Message
from hl7apy.mllp import AbstractHandler, MLLPServer
from hl7apy.parser import parse_message

from gateway.his.adapter import (
    HisAdapter,
    HisAdapterClosed,
    HisConfigError,
    HisError,
    HisMessageError,
    HisOutcome,
    HisResult,
)
from gateway.his.mllp_adapter import MllpAdapter
from hw_sim.his import SimulatedHis

from conftest import wait_for

CONTROL_ID = "A1B2C3D4E50000000042"


def dft(
    control_id: str = CONTROL_ID, *, charge_code: str = "310000123", qty: str = "1", price: str = "12800.00"
) -> str:
    """A hand-written DFT^P03 carrying one charge, as the charging bridge sends it."""
    return (
        f"MSH|^~\\&|SPD-EDGE|SITE1|HIS|HOSP|20261123101500||DFT^P03^DFT_P03|{control_id}|P|2.5\r"
        "EVN|P03|20261123101500\r"
        "PID|1||ZY2026001234^^^HOSP^IN||张^三||19800101|M\r"
        "PV1|1|I|W301^12^1\r"
        f"FT1|1|{control_id}||20261123101200|20261123101500|CG|{charge_code}^心脏支架^HOSP|||{qty}|{price}|{price}\r"
    )


@pytest.fixture
def his(tmp_path: Path) -> Iterator[SimulatedHis]:
    with SimulatedHis(tmp_path / "his.db") as simulated:
        yield simulated


@pytest.fixture
def adapter(his: SimulatedHis) -> Iterator[MllpAdapter]:
    with MllpAdapter("127.0.0.1", his.port, timeout_s=0.4, connect_timeout_s=0.5) as mllp:
        yield mllp


# -- against the simulated HIS ------------------------------------------------------------


def test_mllp_adapter_implements_the_his_adapter_interface(adapter: MllpAdapter) -> None:
    assert isinstance(adapter, HisAdapter)


def test_aa_is_accepted_and_carries_the_his_reference(his: SimulatedHis, adapter: MllpAdapter) -> None:
    result = adapter.send(CONTROL_ID, dft())
    assert result == HisResult(HisOutcome.ACCEPTED, "AA", "accepted by HIS", "HIS00000001")
    [charge] = his.charges()
    assert (charge.txn_id, charge.admission, charge.charge_code, charge.qty, charge.amount, charge.his_ref) == (
        CONTROL_ID,
        "ZY2026001234",
        "310000123",
        Decimal("1"),
        Decimal("12800.00"),
        "HIS00000001",
    )


def test_consecutive_charges_share_one_connection(his: SimulatedHis, adapter: MllpAdapter) -> None:
    for n in range(5):
        assert adapter.send(f"C{n}", dft(f"C{n}")).outcome is HisOutcome.ACCEPTED
    assert adapter.connections_opened == 1
    assert his.stats().connections_accepted == 1
    assert [charge.txn_id for charge in his.charges()] == ["C0", "C1", "C2", "C3", "C4"]


def test_unknown_charge_code_ae_is_rejected_with_the_his_text(his: SimulatedHis, adapter: MllpAdapter) -> None:
    his.reject_charge_codes({"999999"})
    result = adapter.send("C1", dft("C1", charge_code="999999"))
    assert result == HisResult(
        HisOutcome.REJECTED, "AE", "204 Unknown key identifier: unknown charge code 999999", "HIS00000001"
    )
    assert his.charges() == []


def test_ar_is_rejected_with_the_his_text(his: SimulatedHis, adapter: MllpAdapter) -> None:
    his.answer_next("AR", 1, "病人已出院")
    result = adapter.send("C1", dft("C1"))
    assert result.outcome is HisOutcome.REJECTED
    assert result.code == "AR"
    assert result.detail == "207 Application internal error: 病人已出院"
    assert adapter.send("C2", dft("C2")).outcome is HisOutcome.ACCEPTED


def test_slow_his_times_out_as_retry_and_the_resend_books_one_charge(his: SimulatedHis, adapter: MllpAdapter) -> None:
    his.set_delay(0.6)
    result = adapter.send("C1", dft("C1"))
    assert result == HisResult(HisOutcome.RETRY, "timeout", "no ACK for C1 from HIS within 0.4 s")
    his.set_delay(0)
    assert adapter.send("C1", dft("C1")).outcome is HisOutcome.ACCEPTED
    # The late AA of the first copy may be the one that answered; the resend is still on its way.
    wait_for(lambda: his.stats().received >= 2, timeout=2, message="both copies received")
    [charge] = his.charges()
    assert charge.times_received == 2


def test_late_ack_of_a_timed_out_message_is_discarded(his: SimulatedHis, adapter: MllpAdapter) -> None:
    his.set_delay(0.6)
    assert adapter.send("C1", dft("C1")).code == "timeout"
    his.set_delay(0)
    result = adapter.send("C2", dft("C2"))
    assert result.outcome is HisOutcome.ACCEPTED
    assert adapter.stale_acks_discarded == 1
    assert [charge.txn_id for charge in his.charges()] == ["C1", "C2"]


def test_his_down_is_retry_and_after_it_comes_back_the_charge_is_accepted(
    his: SimulatedHis, adapter: MllpAdapter
) -> None:
    assert adapter.send("C1", dft("C1")).outcome is HisOutcome.ACCEPTED
    port = his.port
    his.go_down()
    down = adapter.send("C2", dft("C2"))
    assert (down.outcome, down.code) == (HisOutcome.RETRY, "connect_failed")
    assert f"127.0.0.1:{port}" in down.detail
    his.come_up()
    assert his.port == port
    assert adapter.send("C2", dft("C2")).outcome is HisOutcome.ACCEPTED
    assert [charge.txn_id for charge in his.charges()] == ["C1", "C2"]


def test_his_never_started_is_retry() -> None:
    with SimulatedHis(":memory:") as his:
        port = his.port
    with MllpAdapter("127.0.0.1", port, timeout_s=0.3, connect_timeout_s=0.3) as mllp:
        result = mllp.send("C1", dft("C1"))
    assert (result.outcome, result.code) == (HisOutcome.RETRY, "connect_failed")


def test_dropped_ack_on_a_new_connection_is_retry_and_the_resend_is_accepted_as_one_charge(
    his: SimulatedHis, adapter: MllpAdapter
) -> None:
    his.drop_acks_after_store(1)
    dropped = adapter.send(CONTROL_ID, dft())
    assert dropped == HisResult(
        HisOutcome.RETRY, "connection_closed", f"HIS closed the connection before acknowledging {CONTROL_ID}"
    )
    assert adapter.send(CONTROL_ID, dft()).outcome is HisOutcome.ACCEPTED
    stats = his.stats()
    assert (stats.received, stats.unique_charges, stats.duplicates_received, stats.acks_dropped) == (2, 1, 1, 1)


def test_kept_connection_closed_without_answer_is_resent_at_once_on_a_new_one(
    his: SimulatedHis, adapter: MllpAdapter
) -> None:
    assert adapter.send("C0", dft("C0")).outcome is HisOutcome.ACCEPTED
    his.drop_acks_after_store(1)
    assert adapter.send("C1", dft("C1")).outcome is HisOutcome.ACCEPTED
    assert adapter.connections_opened == 2
    stats = his.stats()
    assert (stats.received, stats.unique_charges, stats.duplicates_received, stats.acks_dropped) == (3, 2, 1, 1)


def test_ack_echoing_another_control_id_is_retry_never_accepted(his: SimulatedHis, adapter: MllpAdapter) -> None:
    his.wrong_control_id_next(1)
    result = adapter.send("C1", dft("C1"))
    assert result == HisResult(
        HisOutcome.RETRY,
        "wrong_control_id",
        "no ACK for C1 within 0.4 s; discarded ACK(s) for other control ids: X1",
    )
    assert adapter.send("C1", dft("C1")).outcome is HisOutcome.ACCEPTED


def test_sends_from_two_threads_are_serialised_on_one_connection(his: SimulatedHis, adapter: MllpAdapter) -> None:
    results: list[HisResult] = []

    def send_many(prefix: str) -> None:
        for n in range(10):
            results.append(adapter.send(f"{prefix}{n}", dft(f"{prefix}{n}")))

    threads = [threading.Thread(target=send_many, args=(prefix,)) for prefix in ("A", "B")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [result.outcome for result in results] == [HisOutcome.ACCEPTED] * 20
    assert his.stats().unique_charges == 20
    assert adapter.connections_opened == 1


def test_send_refuses_a_message_whose_msh_10_is_not_the_control_id(adapter: MllpAdapter) -> None:
    with pytest.raises(HisMessageError) as caught:
        adapter.send("OTHER", dft())
    assert caught.value.reason == "control_id_mismatch"
    assert isinstance(caught.value, ValueError)


def test_send_refuses_text_that_is_not_hl7(adapter: MllpAdapter) -> None:
    with pytest.raises(HisMessageError) as caught:
        adapter.send("C1", "hello")
    assert caught.value.reason == "bad_message"


def test_send_after_close_raises(adapter: MllpAdapter) -> None:
    adapter.close()
    with pytest.raises(HisAdapterClosed) as caught:
        adapter.send("C1", dft("C1"))
    assert isinstance(caught.value, HisError)


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"timeout_s": 0}, "bad_timeout"),
        ({"connect_timeout_s": -1}, "bad_timeout"),
        ({"ack_mode": "fast"}, "bad_ack_mode"),
        ({"accept_on_commit": True}, "bad_ack_mode"),
        ({"encoding": "no-such-codec"}, "bad_encoding"),
    ],
)
def test_impossible_configuration_is_refused(options: dict[str, object], reason: str) -> None:
    with pytest.raises(HisConfigError) as caught:
        MllpAdapter("127.0.0.1", 2575, **options)  # type: ignore[arg-type]
    assert caught.value.reason == reason


# -- against an MLLP server that is not ours (hl7apy) ---------------------------------------


def hl7apy_ack(incoming: str, code: str) -> str:
    """An acknowledgement built with hl7apy's own message API."""
    request = parse_message(incoming, find_groups=False)
    ack = Message("ACK", version="2.5")
    ack.msh.msh_3 = request.msh.msh_5.value
    ack.msh.msh_4 = request.msh.msh_6.value
    ack.msh.msh_5 = request.msh.msh_3.value
    ack.msh.msh_6 = request.msh.msh_4.value
    ack.msh.msh_9 = "ACK^P03^ACK"
    ack.msh.msh_10 = "APY" + request.msh.msh_10.value[-8:]
    ack.msh.msh_11 = "P"
    ack.msa.msa_1 = code
    ack.msa.msa_2 = request.msh.msh_10.value
    return str(ack.to_er7())


def mllp_block(text: str) -> str:
    return "\x0b" + text + "\x1c\r"


class _ReplyHandler(AbstractHandler):  # type: ignore[misc]
    def __init__(self, message: str, reply: Callable[[str], str], seen: list[str]) -> None:
        super().__init__(message)
        self._reply = reply
        self._seen = seen

    def reply(self) -> str:
        self._seen.append(self.incoming_message)
        return self._reply(self.incoming_message)


@pytest.fixture
def hl7apy_server() -> Iterator[Callable[[Callable[[str], str]], tuple[int, list[str]]]]:
    """Start hl7apy MLLP servers answering DFT^P03 with a given reply function; yields (port, messages seen)."""
    servers: list[MLLPServer] = []

    def start(reply: Callable[[str], str]) -> tuple[int, list[str]]:
        seen: list[str] = []
        server = MLLPServer("127.0.0.1", 0, {"DFT^P03^DFT_P03": (_ReplyHandler, reply, seen)}, timeout=5)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server.server_address[1], seen

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_adapter_round_trip_with_hl7apy_mllp_server(
    hl7apy_server: Callable[[Callable[[str], str]], tuple[int, list[str]]],
) -> None:
    port, seen = hl7apy_server(lambda incoming: mllp_block(hl7apy_ack(incoming, "AA")))
    with MllpAdapter("127.0.0.1", port, timeout_s=2) as mllp:
        first = mllp.send(CONTROL_ID, dft())
        second = mllp.send("C2", dft("C2"))
        assert mllp.connections_opened == 2  # hl7apy closes after each answer; the adapter reconnects
    assert first == HisResult(HisOutcome.ACCEPTED, "AA", "accepted by HIS", "APY00000042")
    assert second.outcome is HisOutcome.ACCEPTED
    assert seen == [dft(), dft("C2")]  # hl7apy received our frames byte-exact, Chinese names included


def test_hl7apy_ae_is_rejected(hl7apy_server: Callable[[Callable[[str], str]], tuple[int, list[str]]]) -> None:
    port, _ = hl7apy_server(lambda incoming: mllp_block(hl7apy_ack(incoming, "AE")))
    with MllpAdapter("127.0.0.1", port, timeout_s=2) as mllp:
        result = mllp.send("C1", dft("C1"))
    assert (result.outcome, result.code, result.detail) == (
        HisOutcome.REJECTED,
        "AE",
        "HIS answered AE without a reason",
    )


def test_frame_that_is_not_an_ack_is_retry(
    hl7apy_server: Callable[[Callable[[str], str]], tuple[int, list[str]]],
) -> None:
    port, _ = hl7apy_server(lambda incoming: mllp_block(incoming))  # echoes the DFT back
    with MllpAdapter("127.0.0.1", port, timeout_s=2) as mllp:
        result = mllp.send("C1", dft("C1"))
    assert result.outcome is HisOutcome.RETRY
    assert result.code == "not_an_ack"
    assert "MSH-9 message type is 'DFT'" in result.detail


def test_garbled_answer_is_retry(hl7apy_server: Callable[[Callable[[str], str]], tuple[int, list[str]]]) -> None:
    port, _ = hl7apy_server(lambda incoming: mllp_block("OK, got it"))
    with MllpAdapter("127.0.0.1", port, timeout_s=1) as mllp:
        result = mllp.send("C1", dft("C1"))
    assert result == HisResult(
        HisOutcome.RETRY,
        "not_an_ack",
        "HIS answered C1 with a frame that is not an ACK: "
        "acknowledgement has no valid MSH: message does not start with an MSH segment [no_msh]",
    )


def test_peer_closing_without_an_answer_is_retry(
    hl7apy_server: Callable[[Callable[[str], str]], tuple[int, list[str]]],
) -> None:
    port, _ = hl7apy_server(lambda incoming: "")
    with MllpAdapter("127.0.0.1", port, timeout_s=1) as mllp:
        result = mllp.send("C1", dft("C1"))
        assert not mllp.connected
    assert (result.outcome, result.code) == (HisOutcome.RETRY, "connection_closed")


@pytest.mark.parametrize(
    ("accept_on_commit", "answers", "outcome", "code"),
    [
        (False, ["CA", "AA"], HisOutcome.ACCEPTED, "AA"),
        (False, ["CA", "AE"], HisOutcome.REJECTED, "AE"),
        (True, ["CA"], HisOutcome.ACCEPTED, "CA"),
        (False, ["CA"], HisOutcome.RETRY, "connection_closed"),  # hl7apy hangs up after answering
        (False, ["CE"], HisOutcome.RETRY, "CE"),
        (False, ["CR"], HisOutcome.REJECTED, "CR"),
    ],
)
def test_enhanced_mode_commit_acks(
    hl7apy_server: Callable[[Callable[[str], str]], tuple[int, list[str]]],
    accept_on_commit: bool,
    answers: list[str],
    outcome: HisOutcome,
    code: str,
) -> None:
    port, _ = hl7apy_server(lambda incoming: "".join(mllp_block(hl7apy_ack(incoming, a)) for a in answers))
    with MllpAdapter("127.0.0.1", port, timeout_s=0.5, ack_mode="enhanced", accept_on_commit=accept_on_commit) as mllp:
        result = mllp.send("C1", dft("C1"))
    assert (result.outcome, result.code) == (outcome, code)
