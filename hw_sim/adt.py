"""A simulated HIS ADT interface: builds HL7 v2 ADT messages and sends them over MLLP, reading each ACK.

    python -m hw_sim.adt --port 2576 admit ZY2026001234 --name "Zhang^San" --ward 5A --bed 12 --dept CARD
    python -m hw_sim.adt --port 2576 discharge ZY2026001234

Used by the tests, the demo and as the simulated HIS's census feed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass

from gateway.his.ack import HisAck, parse_ack
from gateway.his.mllp import MllpDecoder, decode_text, frame_text

EVENTS = {"admit": "A01", "transfer": "A02", "discharge": "A03", "update": "A08", "cancel-admit": "A11",
          "cancel-discharge": "A13"}
_last = (0, -1)  # the last control id's millisecond and its number within it
_ids_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Patient:
    admission: str
    name: str = ""  # HL7 XPN: family^given
    ward: str = ""
    room: str = ""
    bed: str = ""
    dept: str = ""


def next_control_id() -> str:
    """A fresh MSH-10 (20 characters at most): the clock in ms, this process and a counter.

    The gateway takes a repeated MSH-10 as a resend and does not apply it again, so two runs of
    ``spd-sim adt`` must never reuse one (numbering from 1 in each process did).
    """
    global _last
    with _ids_lock:  # (ms, n) only grows: a thousand ids within one millisecond move on to the next one
        ms, n = _last
        now = int(time.time() * 1000)
        ms, n = (now, 0) if now > ms else (ms + 1, 0) if n == 999 else (ms, n + 1)
        _last = (ms, n)
    return f"A{ms:013d}{os.getpid() % 1000:03d}{n:03d}"


def hl7_time(when: dt.datetime | None = None) -> str:
    return (when or dt.datetime.now()).strftime("%Y%m%d%H%M%S")


def adt_message(trigger: str, patient: Patient, *, control_id: str | None = None, when: dt.datetime | None = None,
                sending_app: str = "HIS", facility: str = "HOSP", message_type: str = "ADT") -> str:
    """An ADT message as a HIS sends it: MSH, EVN, PID, PV1 (PV1-44 admit / PV1-45 discharge time)."""
    ts = hl7_time(when)
    cid = control_id or next_control_id()
    pv1 = ["PV1"] + [""] * 45  # pv1[n] is PV1-n
    pv1[1], pv1[2], pv1[3], pv1[10] = "1", "I", f"{patient.ward}^{patient.room}^{patient.bed}^{facility}", patient.dept
    if trigger == "A01":
        pv1[44] = ts  # admit date/time
    if trigger == "A03":
        pv1[45] = ts  # discharge date/time
    segments = [
        f"MSH|^~\\&|{sending_app}|{facility}|SPD|SPD-GW|{ts}||{message_type}^{trigger}^ADT_A01|{cid}|P|2.5|||AL|NE",
        f"EVN|{trigger}|{ts}",
        f"PID|1||{patient.admission}^^^{facility}^IN||{patient.name}",
        "|".join(pv1).rstrip("|"),
    ]
    return "\r".join(segments) + "\r"


class AdtSender:
    """One MLLP connection to an ADT listener; :meth:`send` waits for the ACK of each message."""

    def __init__(self, host: str, port: int, *, timeout_s: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self.decoder = MllpDecoder()
        self._ready: list[bytes] = []

    def send(self, message: str) -> HisAck:
        """Send one message and parse its ACK."""
        return parse_ack(self.exchange(message))

    def exchange(self, message: str) -> str:
        """Send one message and return its ACK as text (an ACK to a message without MSH echoes no id)."""
        self.sock.sendall(frame_text(message))
        return self.read_ack_text()

    def read_ack_text(self) -> str:
        while not self._ready:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("listener closed the connection")
            self._ready += self.decoder.feed(data)
        return decode_text(self._ready.pop(0))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> AdtSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hw_sim.adt", description="send ADT messages over MLLP")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("event", choices=sorted(EVENTS))
    p.add_argument("admission")
    p.add_argument("--name", default="", help="family^given")
    p.add_argument("--ward", default="")
    p.add_argument("--room", default="")
    p.add_argument("--bed", default="")
    p.add_argument("--dept", default="")
    a = p.parse_args(argv)
    patient = Patient(a.admission, a.name, a.ward, a.room, a.bed, a.dept)
    with AdtSender(a.host, a.port) as sender:
        ack = sender.send(adt_message(EVENTS[a.event], patient))
    print(f"{ack.code.value} {ack.text} {ack.error}".strip())
    return 0 if ack.code.value == "AA" else 1


if __name__ == "__main__":
    sys.exit(main())
