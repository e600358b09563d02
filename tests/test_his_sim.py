"""The simulated HIS: booking once per FT1 id, its SQLite record, faults, and python-hl7 MLLP clients talking to it."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import hl7
import pytest
from hl7.client import MLLPClient
from hl7.mllp import open_hl7_connection
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.his.ack import AckCode, parse_ack
from gateway.his.mllp import MllpDecoder, decode_text, frame_text
from hw_sim.his import HisStats, SimulatedHis, SimulatedHisStateError, main

CONTROL_ID = "A1B2C3D4E50000000042"


def dft(control_id: str = CONTROL_ID, *, charge_code: str = "310000123", qty: str = "2", price: str = "35.50") -> str:
    """A hand-written DFT^P03 carrying one charge."""
    return (
        f"MSH|^~\\&|SPD-EDGE|SITE1|HIS|HOSP|20261123101500||DFT^P03^DFT_P03|{control_id}|P|2.5\r"
        "EVN|P03|20261123101500\r"
        "PID|1||ZY2026001234^^^HOSP^IN||张^三||19800101|M\r"
        "PV1|1|I|W301^12^1\r"
        f"FT1|1|{control_id}||20261123101200|20261123101500|CG|{charge_code}^一次性导管^HOSP|||{qty}|{price}|{price}\r"
    )


@pytest.fixture
def his(tmp_path: Path) -> Iterator[SimulatedHis]:
    with SimulatedHis(tmp_path / "his.db") as simulated:
        yield simulated


class RawPeer:
    """A bare socket speaking MLLP, to see exactly what the simulator answers."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        self.decoder = MllpDecoder()

    def exchange(self, message: str) -> str | None:
        """Send one message; its answer, or None when the simulator hung up without one."""
        self.sock.sendall(frame_text(message))
        while True:
            data = self.sock.recv(65536)
            if not data:
                return None
            frames = self.decoder.feed(data)
            if frames:
                return decode_text(frames[0])

    def close(self) -> None:
        self.sock.close()


def test_python_hl7_asyncio_client_round_trip(his: SimulatedHis) -> None:
    async def send() -> hl7.Message:
        reader, writer = await open_hl7_connection("127.0.0.1", his.port, encoding="utf-8")
        try:
            writer.writemessage(hl7.parse(dft()))
            await writer.drain()
            return await asyncio.wait_for(reader.readmessage(), timeout=5)
        finally:
            writer.close()
            await writer.wait_closed()

    ack = asyncio.run(send())
    assert str(ack.segment("MSH")[9]) == "ACK^P03^ACK"
    assert str(ack.segment("MSA")[1]) == "AA"
    assert str(ack.segment("MSA")[2]) == CONTROL_ID
    assert [(c.txn_id, c.admission, c.qty, c.unit_price, c.amount) for c in his.charges()] == [
        (CONTROL_ID, "ZY2026001234", Decimal("2"), Decimal("35.50"), Decimal("71.00"))
    ]


def test_python_hl7_blocking_client_resend_is_booked_once_and_answered_aa_again(his: SimulatedHis) -> None:
    with MLLPClient("127.0.0.1", his.port) as client:
        first = client.send_message(dft())
        second = client.send_message(dft())
    acks = [parse_ack(decode_text(MllpDecoder().feed(raw)[0])) for raw in (first, second)]
    assert [(ack.code, ack.control_id_echo) for ack in acks] == [(AckCode.AA, CONTROL_ID)] * 2
    [charge] = his.charges()
    assert (charge.times_received, charge.his_ref) == (2, "HIS00000001")
    assert his.stats() == HisStats(
        received=2,
        unique_charges=1,
        duplicates_received=1,
        acks_sent=2,
        acks_dropped=0,
        rejected=0,
        wrong_control_ids_sent=0,
        connections_accepted=1,
    )


def test_price_with_a_currency_subcomponent_and_zone_timestamps_is_read(his: SimulatedHis) -> None:
    message = (
        "MSH|^~\\&|SPD-EDGE|SITE1|HIS|HOSP|20261123101500+0800||DFT^P03^DFT_P03|C7|P|2.5||||||UNICODE UTF-8\r"
        "EVN|P03|20261123101500+0800\rPID|1||ZY7^^^HOSP^MR\rPV1|1|I|W3\r"
        "FT1|1|C7||20261123101500||CG|310000123^支架|||1|12800.00&CNY|12800.00&CNY|W3||||||OP1\rZUD|1|0123^GS1"
    )
    peer = RawPeer(his.port)
    answer = peer.exchange(message)
    peer.close()
    assert answer is not None and answer.split("\r")[0].endswith("|P|2.5||||||UNICODE UTF-8")
    assert parse_ack(answer).code is AckCode.AA
    [charge] = his.charges()
    assert (charge.admission, charge.qty, charge.unit_price, charge.amount) == (
        "ZY7",
        Decimal("1"),
        Decimal("12800.00"),
        Decimal("12800.00"),
    )


def test_every_message_is_recorded_in_the_sqlite_file(tmp_path: Path) -> None:
    db_path = tmp_path / "his.db"
    with SimulatedHis(db_path) as his:
        peer = RawPeer(his.port)
        peer.exchange(dft("C1"))
        peer.exchange(dft("C1"))
        peer.exchange(dft("C2", qty="1", price="12800.00"))
        peer.close()
    db = sqlite3.connect(db_path)
    received = db.execute(
        "SELECT id, control_id, txn_id, admission, charge_code, qty, amount, answer FROM received ORDER BY id"
    ).fetchall()
    assert received == [
        (1, "C1", "C1", "ZY2026001234", "310000123", "2", "71.00", "AA"),
        (2, "C1", "C1", "ZY2026001234", "310000123", "2", "71.00", "AA"),
        (3, "C2", "C2", "ZY2026001234", "310000123", "1", "12800.00", "AA"),
    ]
    assert db.execute("SELECT raw FROM received WHERE id = 3").fetchone()[0] == dft("C2", qty="1", price="12800.00")
    charges = db.execute(
        "SELECT txn_id, control_id, admission, charge_code, qty, amount, amount_fen, times_received FROM charges"
    ).fetchall()
    assert charges == [
        ("C1", "C1", "ZY2026001234", "310000123", "2", "71.00", 7100, 2),
        ("C2", "C2", "ZY2026001234", "310000123", "1", "12800.00", 1280000, 1),
    ]
    db.close()


def test_unsupported_message_type_is_answered_ar(his: SimulatedHis) -> None:
    peer = RawPeer(his.port)
    answer = peer.exchange("MSH|^~\\&|SPD-EDGE|SITE1|HIS|HOSP|20261123||ADT^A01^ADT_A01|M1|P|2.5\rEVN|A01\r")
    peer.close()
    assert answer is not None
    ack = parse_ack(answer)
    assert (ack.code, ack.control_id_echo, ack.text) == (AckCode.AR, "M1", "unsupported message type ADT^A01")
    assert ack.error.startswith("200 Unsupported message type")
    assert his.charges() == []
    assert his.answers() == [("M1", "AR")]


@pytest.mark.parametrize(
    ("message", "text"),
    [
        (dft("C1").replace("|2|35.50|", "||35.50|"), "FT1-10 is empty"),
        (dft("C1").replace("|2|35.50|", "|two|35.50|"), "FT1-10 'two' is not a number"),
        ("\r".join(line for line in dft("C1").split("\r") if not line.startswith("FT1")), "FT1 segment missing"),
    ],
)
def test_dft_it_cannot_book_is_answered_ae(his: SimulatedHis, message: str, text: str) -> None:
    peer = RawPeer(his.port)
    answer = peer.exchange(message)
    peer.close()
    assert answer is not None
    ack = parse_ack(answer)
    assert (ack.code, ack.text) == (AckCode.AE, text)
    assert his.charges() == []


def test_frame_that_is_not_hl7_is_recorded_and_the_connection_closed(his: SimulatedHis) -> None:
    peer = RawPeer(his.port)
    assert peer.exchange("hello HIS") is None
    peer.close()
    assert his.answers() == [(None, "unreadable")]


def test_answer_next_forces_n_answers_then_books_again(his: SimulatedHis) -> None:
    his.answer_next("AE", 2, "收费系统维护中")
    peer = RawPeer(his.port)
    answers = [peer.exchange(dft(f"C{n}")) for n in range(3)]
    peer.close()
    codes = [parse_ack(answer).code for answer in answers if answer is not None]
    assert codes == [AckCode.AE, AckCode.AE, AckCode.AA]
    assert parse_ack(answers[0] or "").text == "收费系统维护中"
    assert [charge.txn_id for charge in his.charges()] == ["C2"]
    assert his.stats().rejected == 2


def test_rejected_charge_codes_are_always_answered_ae(his: SimulatedHis) -> None:
    his.reject_charge_codes({"000000"})
    peer = RawPeer(his.port)
    refused = [peer.exchange(dft(f"C{n}", charge_code="000000")) for n in range(2)]
    accepted = peer.exchange(dft("C9"))
    peer.close()
    assert [parse_ack(answer or "").code for answer in refused] == [AckCode.AE, AckCode.AE]
    assert parse_ack(accepted or "").code is AckCode.AA
    assert [charge.txn_id for charge in his.charges()] == ["C9"]


def test_dropped_ack_books_the_charge_then_hangs_up(his: SimulatedHis) -> None:
    his.drop_acks_after_store(1)
    peer = RawPeer(his.port)
    assert peer.exchange(dft("C1")) is None
    peer.close()
    assert [charge.txn_id for charge in his.charges()] == ["C1"]
    assert his.answers() == [("C1", "dropped")]
    assert his.stats().acks_dropped == 1


def test_wrong_control_id_books_the_charge_but_echoes_another_id(his: SimulatedHis) -> None:
    his.wrong_control_id_next(1)
    peer = RawPeer(his.port)
    wrong, right = peer.exchange(dft("C1")), peer.exchange(dft("C1"))
    peer.close()
    assert parse_ack(wrong or "").control_id_echo == "X1"
    assert parse_ack(right or "").control_id_echo == "C1"
    assert his.charges()[0].times_received == 2


def test_go_down_drops_connections_and_come_up_listens_on_the_same_port(his: SimulatedHis) -> None:
    port = his.port
    peer = RawPeer(port)
    assert peer.exchange(dft("C1")) is not None
    his.go_down()
    assert not his.is_up
    assert peer.sock.recv(10) == b""
    peer.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    his.come_up()
    assert his.port == port
    again = RawPeer(port)
    assert parse_ack(again.exchange(dft("C2")) or "").code is AckCode.AA
    again.close()


def test_slow_his_answers_after_the_delay(his: SimulatedHis) -> None:
    his.set_delay(0.3)
    peer = RawPeer(his.port)
    peer.sock.settimeout(0.1)
    peer.sock.sendall(frame_text(dft("C1")))
    with pytest.raises(TimeoutError):
        peer.sock.recv(65536)
    peer.sock.settimeout(2)
    assert parse_ack(decode_text(MllpDecoder().feed(peer.sock.recv(65536))[0])).code is AckCode.AA
    peer.close()


def test_controls_before_start_are_refused(tmp_path: Path) -> None:
    his = SimulatedHis(tmp_path / "his.db")
    with pytest.raises(SimulatedHisStateError):
        _ = his.port
    with pytest.raises(SimulatedHisStateError):
        his.come_up()


def test_main_runs_as_a_process_until_terminated(tmp_path: Path) -> None:
    db_path = tmp_path / "his.db"
    process = subprocess.Popen(
        [sys.executable, "-m", "hw_sim.his", "--port", "0", "--db", str(db_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert banner.startswith("simulated HIS listening on 127.0.0.1:")
        port = int(banner.split(":")[1].split(",")[0])
        with MLLPClient("127.0.0.1", port) as client:
            raw = client.send_message(dft())
        assert parse_ack(decode_text(MllpDecoder().feed(raw)[0])).code is AckCode.AA
        process.terminate()
        out, _ = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert out.strip() == "received 1, charges 1, duplicates 0, credits 0"


def test_main_reports_a_port_it_cannot_listen_on(tmp_path: Path) -> None:
    with SimulatedHis(tmp_path / "a.db") as his:
        assert main(["--port", str(his.port), "--db", str(tmp_path / "b.db")]) == 2


def _read_whole(text: str) -> tuple[str, ...]:
    """The fields the simulator books, read by python-hl7 from the whole message (the reference)."""
    message = hl7.parse(text)

    def value(segment: str, field_num: int, component_num: int = 1) -> str:
        return str(message.unescape(str(message.extract_field(segment, 1, field_num, 1, component_num)))).strip()

    return (value("MSH", 10), value("FT1", 2), value("PID", 3), value("FT1", 7), value("FT1", 10),
            value("FT1", 12), value("FT1", 6) or "CG")


# no backslash: from the whole message python-hl7 reads an escaped escape character (\E\) in FT1-7 as ""
_TEXT = st.text(st.sampled_from("AZaz09 .-|^~&#张三"), min_size=1, max_size=12).filter(lambda t: t.strip() != "")


@settings(max_examples=100, deadline=None)
@given(admission=_TEXT, code=_TEXT, name=_TEXT, unit=st.sampled_from(["", "&CNY", "&CNY&x"]),
       extra=st.sampled_from(["", "EVN|P03|20261123101500\r", "ZX1|a^b&c|d\r"]))
def test_the_simulator_reads_what_python_hl7_reads_from_the_whole_message(
        admission: str, code: str, name: str, unit: str, extra: str) -> None:
    """The simulator hands python-hl7 only the MSH and cuts PID and FT1 itself (speed): the values must agree,
    escapes, components and subcomponents included."""
    from gateway.hl7text import escape
    from hw_sim.his import _read_dft

    text = (
        "MSH|^~\\&|SPD-EDGE|SITE1|HIS|HOSP|20261123101500||DFT^P03^DFT_P03|C1|P|2.5\r" + extra
        + f"PID|1||{escape(admission)}^^^HOSP^IN||{escape(name)}\r"
        + f"PV1|1|I|W301^12^1\rFT1|1|T1||20261123101200|20261123101500|CG|{escape(code)}^{escape(name)}^HOSP|||"
        + f"2|35.50{unit}|71.00{unit}\r"
    )
    read = _read_dft(text)
    assert (read.control_id, read.txn_id, read.admission, read.charge_code, str(read.qty), str(read.unit_price),
            read.txn_type) == _read_whole(text)
