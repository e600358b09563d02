"""The HTTP JSON HIS adapter against the simulated HTTP HIS: every outcome, idempotent resends, and the sender."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.app import GatewayConfig, make_his_adapter
from gateway.his.adapter import HisAdapterClosed, HisConfigError, HisMessageError, HisOutcome, HisResult
from gateway.his.http_adapter import HttpJsonAdapter, judge
from gateway.his.mllp_adapter import MllpAdapter
from gateway.his.sender import HisSender
from gateway.store import GatewayStore
from hw_sim.his_http import HttpHisCharge, SimulatedHttpHis

CHARGE_ID = "A1B2C3D4E50000000042"


def line(charge_id: str = CHARGE_ID, *, charge_code: str = "33100001", serial: str = "SN0001") -> dict[str, object]:
    """A charge line as the charging worker stores it in the outbox."""
    return {
        "charge_id": charge_id, "device": "HH-0001", "seq": 42, "ts_ms": 1795918320000, "admission": "ZY2026001234",
        "gtin": "06901234567892", "lot": "L2211", "serial": serial, "expiry": "2028-05-31", "item_code": "HC00001",
        "charge_code": charge_code, "name": "冠脉药物洗脱支架", "price_fen": 589000, "qty": 1, "operator": "N0001",
        "dept": "OR-3",
    }


def msg(charge_id: str = CHARGE_ID, **kw: str) -> str:
    return json.dumps(line(charge_id, **kw), ensure_ascii=False)


@pytest.fixture
def his(tmp_path: Path) -> Iterator[SimulatedHttpHis]:
    with SimulatedHttpHis(tmp_path / "his.db") as simulated:
        yield simulated


@pytest.fixture
def adapter(his: SimulatedHttpHis) -> Iterator[HttpJsonAdapter]:
    with HttpJsonAdapter(his.url, timeout_s=1.0) as a:
        yield a


def test_first_send_is_booked_and_accepted_with_the_his_reference(
    his: SimulatedHttpHis, adapter: HttpJsonAdapter
) -> None:
    result = adapter.send(CHARGE_ID, msg())
    assert result == HisResult(HisOutcome.ACCEPTED, "201", "booked by HIS", "HTTPHIS00000001")
    assert his.charges() == [
        HttpHisCharge(CHARGE_ID, "ZY2026001234", "33100001", "HC00001", 1, 589000, 589000, "06901234567892", "SN0001",
                      1, "HTTPHIS00000001")
    ]


def test_request_body_carries_the_charge_in_fen_with_udi_and_local_time(
    his: SimulatedHttpHis, adapter: HttpJsonAdapter
) -> None:
    adapter.send(CHARGE_ID, msg())
    assert his.booked_body(CHARGE_ID) == {
        "charge_id": CHARGE_ID, "admission": "ZY2026001234", "item_code": "HC00001", "charge_code": "33100001",
        "item_name": "冠脉药物洗脱支架", "qty": 1, "unit_price_fen": 589000, "amount_fen": 589000,
        "udi": {"gtin": "06901234567892", "lot": "L2211", "serial": "SN0001", "expiry": "2028-05-31"},
        "operator": "N0001", "dept": "OR-3", "used_at": "2026-11-29T10:12:00.000+08:00",
        "source": {"device": "HH-0001", "seq": 42},
    }


def test_resend_of_a_booked_charge_is_accepted_without_a_second_booking(
    his: SimulatedHttpHis, adapter: HttpJsonAdapter
) -> None:
    adapter.send(CHARGE_ID, msg())
    again = adapter.send(CHARGE_ID, msg())
    assert again == HisResult(HisOutcome.ACCEPTED, "409", f"HIS had already booked {CHARGE_ID}", "HTTPHIS00000001")
    assert [c.times_received for c in his.charges()] == [2]


def test_response_dropped_after_store_is_retried_and_the_resend_books_once(
    his: SimulatedHttpHis, adapter: HttpJsonAdapter
) -> None:
    his.drop_responses_after_store(1)
    first = adapter.send(CHARGE_ID, msg())
    assert (first.outcome, first.code) == (HisOutcome.RETRY, "connection_closed")
    second = adapter.send(CHARGE_ID, msg())
    assert (second.outcome, second.code, second.his_ref) == (HisOutcome.ACCEPTED, "409", "HTTPHIS00000001")
    assert len(his.charges()) == 1
    assert his.stats().unique_charges == 1
    assert his.stats().responses_dropped == 1
    assert [a[1:] for a in his.answers()] == [(0, "dropped"), (409, "already_booked")]


def test_validation_error_is_rejected_with_the_his_reason(his: SimulatedHttpHis, adapter: HttpJsonAdapter) -> None:
    his.reject_charge_codes({"33100001"})
    result = adapter.send(CHARGE_ID, msg())
    assert result == HisResult(HisOutcome.REJECTED, "422", "unknown charge code 33100001 [unknown_charge_code]")
    assert his.charges() == []


def test_server_error_is_retried_and_books_nothing(his: SimulatedHttpHis, adapter: HttpJsonAdapter) -> None:
    his.answer_next(503, error="upgrade", message="HIS in maintenance")
    result = adapter.send(CHARGE_ID, msg())
    assert result == HisResult(HisOutcome.RETRY, "503", "HIS answered HTTP 503: HIS in maintenance [upgrade]")
    assert adapter.send(CHARGE_ID, msg()).outcome is HisOutcome.ACCEPTED
    assert len(his.charges()) == 1


@pytest.mark.parametrize("status", [408, 429])
def test_transient_client_errors_are_retried(his: SimulatedHttpHis, adapter: HttpJsonAdapter, status: int) -> None:
    his.answer_next(status, error="busy", message="try later")
    result = adapter.send(CHARGE_ID, msg())
    assert (result.outcome, result.code) == (HisOutcome.RETRY, str(status))


def test_wrong_token_is_retried_not_parked(tmp_path: Path) -> None:
    with SimulatedHttpHis(tmp_path / "his.db", token="s3cret") as his:
        with HttpJsonAdapter(his.url, timeout_s=1.0, token="wrong") as bad:
            result = bad.send(CHARGE_ID, msg())
        assert (result.outcome, result.code) == (HisOutcome.RETRY, "401")
        with HttpJsonAdapter(his.url, timeout_s=1.0, token="s3cret") as good:
            assert good.send(CHARGE_ID, msg()).outcome is HisOutcome.ACCEPTED


def test_slow_his_times_out_and_the_resend_is_recognised(his: SimulatedHttpHis, adapter: HttpJsonAdapter) -> None:
    his.set_delay(1.5)
    started = time.monotonic()
    result = adapter.send(CHARGE_ID, msg())
    assert time.monotonic() - started < 1.4
    assert (result.outcome, result.code) == (HisOutcome.RETRY, "timeout")
    his.set_delay(0)
    again = adapter.send(CHARGE_ID, msg())
    assert (again.outcome, again.code) == (HisOutcome.ACCEPTED, "409")
    assert len(his.charges()) == 1


def test_his_down_is_retried_and_the_charge_goes_through_when_it_returns(
    his: SimulatedHttpHis, adapter: HttpJsonAdapter
) -> None:
    his.go_down()
    result = adapter.send(CHARGE_ID, msg())
    assert (result.outcome, result.code) == (HisOutcome.RETRY, "connect_failed")
    his.come_up()
    assert adapter.send(CHARGE_ID, msg()).code == "201"


def test_kept_connection_cut_by_the_his_is_replaced_within_one_send(
    his: SimulatedHttpHis, adapter: HttpJsonAdapter
) -> None:
    assert adapter.send(CHARGE_ID, msg()).code == "201"
    his.go_down()
    his.come_up()
    second = adapter.send("A1B2C3D4E50000000043", msg("A1B2C3D4E50000000043", serial="SN0002"))
    assert (second.outcome, second.code) == (HisOutcome.ACCEPTED, "201")
    assert adapter.connections_opened == 2


def test_answer_naming_another_charge_id_is_retried(his: SimulatedHttpHis, adapter: HttpJsonAdapter) -> None:
    his.wrong_charge_id_next(1)
    result = adapter.send(CHARGE_ID, msg())
    assert result.outcome is HisOutcome.RETRY
    assert result.code == "wrong_control_id"
    assert adapter.send(CHARGE_ID, msg()).code == "409"
    assert len(his.charges()) == 1


def test_same_charge_id_with_other_content_is_rejected(his: SimulatedHttpHis, adapter: HttpJsonAdapter) -> None:
    adapter.send(CHARGE_ID, msg())
    result = adapter.send(CHARGE_ID, msg(charge_code="33100002"))
    assert (result.outcome, result.code) == (HisOutcome.REJECTED, "422")
    assert "idempotency_key_reused" in result.detail


def test_conflict_without_our_charge_id_is_rejected() -> None:
    body = json.dumps({"error": "conflict", "message": "patient locked"}).encode()
    assert judge(CHARGE_ID, 409, body) == HisResult(HisOutcome.REJECTED, "409", "patient locked [conflict]")


@pytest.mark.parametrize(
    ("status", "raw", "code"),
    [(200, b"<html>ok</html>", "not_an_ack"), (200, b"[]", "not_an_ack"), (302, b"", "302"), (500, b"oops", "500")],
)
def test_unusable_answers_are_retried(status: int, raw: bytes, code: str) -> None:
    result = judge(CHARGE_ID, status, raw)
    assert (result.outcome, result.code) == (HisOutcome.RETRY, code)


def test_line_of_another_charge_is_a_caller_error(adapter: HttpJsonAdapter) -> None:
    with pytest.raises(HisMessageError) as err:
        adapter.send("B" * 20, msg())
    assert err.value.reason == "control_id_mismatch"


def test_hl7_message_instead_of_a_charge_line_is_a_caller_error(adapter: HttpJsonAdapter) -> None:
    with pytest.raises(HisMessageError) as err:
        adapter.send(CHARGE_ID, "MSH|^~\\&|SPD")
    assert err.value.reason == "bad_message"


def test_send_after_close_raises(adapter: HttpJsonAdapter) -> None:
    adapter.close()
    with pytest.raises(HisAdapterClosed):
        adapter.send(CHARGE_ID, msg())


@pytest.mark.parametrize("url", ["ftp://his/api", "http://", "http://his:99999/", "http://his/api?x=1"])
def test_bad_url_is_refused(url: str) -> None:
    with pytest.raises(HisConfigError) as err:
        HttpJsonAdapter(url)
    assert err.value.reason == "bad_url"


def test_gateway_config_selects_the_adapter_by_protocol(tmp_path: Path) -> None:
    http = make_his_adapter(GatewayConfig(tmp_path / "g.db", his_protocol="http", his_url="http://127.0.0.1:9/his"))
    assert isinstance(http, HttpJsonAdapter)
    assert http.path == "/his/charges"
    assert isinstance(make_his_adapter(GatewayConfig(tmp_path / "g.db")), MllpAdapter)
    with pytest.raises(HisConfigError) as err:
        make_his_adapter(GatewayConfig(tmp_path / "g.db", his_protocol="http"))
    assert err.value.reason == "missing_url"


def test_sender_hands_the_outbox_line_to_the_http_adapter(tmp_path: Path, his: SimulatedHttpHis) -> None:
    store = GatewayStore(tmp_path / "gateway.db")
    rec = line()
    with store._engine.transaction() as db:
        db.execute(
            "INSERT INTO charges (charge_id, device, seq, admission, item_key, line, message, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (CHARGE_ID, rec["device"], rec["seq"], rec["admission"], "06901234567892/SN0001",
             json.dumps(rec, ensure_ascii=False), "MSH|not sent over HTTP", time.time()),
        )
    his.drop_responses_after_store(1)
    sender = HisSender(store, HttpJsonAdapter(his.url, timeout_s=1.0), backoff_base_s=0.0, backoff_max_s=0.0)
    assert sender.run_once() == 1
    assert store._engine.query("SELECT status, attempts FROM charges") == [("pending", 1)]
    assert sender.run_once(now=time.time() + 1) == 1
    assert store._engine.query("SELECT status, ack_code, his_ref FROM charges") == [
        ("accepted", "409", "HTTPHIS00000001")]
    assert store._engine.query("SELECT charge_id, serial, his_ref FROM consumption") == [
        (CHARGE_ID, "SN0001", "HTTPHIS00000001")
    ]
    assert his.stats().unique_charges == 1
    sender.adapter.close()
    store.close()


# -- credits ------------------------------------------------------------------------

CREDIT_ID = "F0E1D2C3B40000000043"


def credit_line(credit_id: str = CREDIT_ID, *, original: str = CHARGE_ID, price_fen: int = 589000,
                admission: str = "ZY2026001234") -> dict[str, object]:
    """A credit line as the charging worker stores it in the outbox (`bridge.CreditRequest` + its id)."""
    return {
        "device": "HH-0001", "seq": 43, "ts_ms": 1795920000000, "operator": "N0002", "dept": "OR-3",
        "original_charge_id": original, "admission": admission, "gtin": "06901234567892", "lot": "L2211",
        "serial": "SN0001", "expiry": "2028-05-31", "item_code": "HC00001", "charge_code": "33100001",
        "name": "冠脉药物洗脱支架", "spec": "3.0x18mm", "manufacturer": "ACME", "price_fen": price_fen,
        "credit_id": credit_id,
    }


def credit_msg(credit_id: str = CREDIT_ID, **kw: object) -> str:
    return json.dumps(credit_line(credit_id, **kw), ensure_ascii=False)  # type: ignore[arg-type]


def test_credit_is_posted_to_credits_with_the_original_charge_and_booked_once(
    his: SimulatedHttpHis, adapter: HttpJsonAdapter
) -> None:
    adapter.send(CHARGE_ID, msg())
    result = adapter.send(CREDIT_ID, credit_msg())
    assert result == HisResult(HisOutcome.ACCEPTED, "201", "booked by HIS", "HTTPHIS00000002")
    assert [(c.credit_id, c.original_charge_id, c.admission, c.amount_fen, c.times_received) for c in his.credits()] \
        == [(CREDIT_ID, CHARGE_ID, "ZY2026001234", -589000, 1)]
    assert his.answers()[-1] == (CREDIT_ID, 201, "booked")
    again = adapter.send(CREDIT_ID, credit_msg())  # a resend: recognised, not booked twice
    assert again == HisResult(HisOutcome.ACCEPTED, "409", f"HIS had already booked {CREDIT_ID}", "HTTPHIS00000002")
    assert [c.times_received for c in his.credits()] == [2]
    assert adapter.credit_request(CREDIT_ID, credit_msg()) == {
        "credit_id": CREDIT_ID, "original_charge_id": CHARGE_ID, "admission": "ZY2026001234",
        "item_code": "HC00001", "charge_code": "33100001", "item_name": "冠脉药物洗脱支架", "qty": 1,
        "unit_price_fen": 589000, "amount_fen": 589000,
        "udi": {"gtin": "06901234567892", "lot": "L2211", "serial": "SN0001", "expiry": "2028-05-31"},
        "operator": "N0002", "dept": "OR-3", "returned_at": "2026-11-29T10:40:00.000+08:00",
        "source": {"device": "HH-0001", "seq": 43},
    }


def test_credit_dropped_answer_is_retried_and_the_resend_books_once(
    his: SimulatedHttpHis, adapter: HttpJsonAdapter
) -> None:
    adapter.send(CHARGE_ID, msg())
    his.drop_responses_after_store(1)
    # the kept connection is cut unanswered: the adapter sends once more on a new one, the HIS recognises it
    result = adapter.send(CREDIT_ID, credit_msg())
    assert (result.outcome, result.code) == (HisOutcome.ACCEPTED, "409")
    assert [c.times_received for c in his.credits()] == [2]


@pytest.mark.parametrize(
    ("line_kw", "error"),
    [({"original": "A" * 20}, "unknown_charge"), ({"price_fen": 1}, "credit_mismatch"),
     ({"admission": "ZY9"}, "credit_mismatch")],
)
def test_credit_the_his_cannot_match_is_rejected(
    his: SimulatedHttpHis, adapter: HttpJsonAdapter, line_kw: dict[str, object], error: str
) -> None:
    adapter.send(CHARGE_ID, msg())
    result = adapter.send(CREDIT_ID, credit_msg(**line_kw))
    assert (result.outcome, result.code) == (HisOutcome.REJECTED, "422")
    assert error in result.detail
    assert his.credits() == []


def test_second_credit_of_one_charge_is_rejected(his: SimulatedHttpHis, adapter: HttpJsonAdapter) -> None:
    adapter.send(CHARGE_ID, msg())
    adapter.send(CREDIT_ID, credit_msg())
    result = adapter.send("F" * 20, credit_msg("F" * 20))
    assert (result.outcome, result.code) == (HisOutcome.REJECTED, "422")
    assert "already_credited" in result.detail and len(his.credits()) == 1


def test_credit_line_missing_a_field_is_a_caller_error(adapter: HttpJsonAdapter) -> None:
    rec = credit_line()
    del rec["original_charge_id"]
    with pytest.raises(HisMessageError) as err:
        adapter.send(CREDIT_ID, json.dumps(rec))
    assert "original_charge_id" in err.value.message


def test_forced_refusal_does_not_hit_the_resend_of_a_booked_charge(
    his: SimulatedHttpHis, adapter: HttpJsonAdapter
) -> None:
    adapter.send(CHARGE_ID, msg())
    his.answer_next(422, error="under_review")
    assert adapter.send(CHARGE_ID, msg()).outcome is HisOutcome.ACCEPTED  # the HIS holds it: it says so
    assert adapter.send("C" * 20, msg("C" * 20)).outcome is HisOutcome.REJECTED


def test_http_door_books_into_the_mllp_his_books(tmp_path: Path) -> None:
    """One HIS with two interfaces: a charge booked over MLLP is a resend over HTTP, and credits see it."""
    from gateway import bridge
    from hw_sim.his import SimulatedHis

    config = bridge.BridgeConfig(sending_facility="SPD", receiving_facility="HOSP")
    catalog = bridge.Catalog([bridge.CatalogItem("06901234567892", "HC00001", "33100001", "支架", "", "", 589000,
                                                 True, True)])
    result = bridge.charge_batch(
        [("HH-0001", 42, 1795918320000, "ZY2026001234",
          "]d201069012345678921728053110L2211\x1d21SN0001", "N0001", "OR-3")],
        catalog, bridge.new_consumed_set(set()), config)
    [charge] = result.lines
    rec = {**line(charge.charge_id), "price_fen": charge.price_fen}
    with SimulatedHis(tmp_path / "his.db") as mllp, SimulatedHttpHis(tmp_path / "door.db", ledger=mllp) as door, \
            MllpAdapter("127.0.0.1", mllp.port, timeout_s=2.0) as over_mllp, \
            HttpJsonAdapter(door.url, timeout_s=2.0) as over_http:
        assert over_mllp.send(charge.charge_id, charge.message).outcome is HisOutcome.ACCEPTED
        again = over_http.send(charge.charge_id, json.dumps(rec))
        assert (again.outcome, again.code) == (HisOutcome.ACCEPTED, "409")
        credit = over_http.send(CREDIT_ID, credit_msg(original=charge.charge_id, price_fen=charge.price_fen))
        assert (credit.outcome, credit.code) == (HisOutcome.ACCEPTED, "201")
        assert [(c.txn_id, c.original_txn_id) for c in mllp.credits()] == [(CREDIT_ID, charge.charge_id)]
        assert [c.times_received for c in mllp.charges()] == [2]
