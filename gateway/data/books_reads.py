"""What reconciliation reads of the consumption leg: the consumption records (HIS-accepted charges with their
credits), the charges the bridge refused, the settled returns, the lots' known expiry dates, and device
events of given kinds (for the minimal stock projection). Read-only; every read is bounded by time or id.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

from gateway.data.engine import Engine
from gateway.data.stock import MovementRow


class ConsumptionRecord(NamedTuple):
    device: str
    seq: int
    charge_id: str
    admission: str
    gtin: str
    item_code: str
    lot: str
    serial: str
    expiry: str  # from the scanned code, "" when it carried none
    price_fen: int
    operator: str
    dept: str
    used_at_ms: int
    his_ref: str
    credit_id: str  # "" unless the HIS accepted a credit for it
    credit_his_ref: str


class RefusedCharge(NamedTuple):
    device: str
    seq: int
    reason: str
    detail: str


class ReturnRecord(NamedTuple):
    device: str
    seq: int
    item_key: str
    outcome: str
    charge_id: str
    credit_id: str
    operator: str
    dept: str
    returned_at_ms: int


class DeviceEvent(NamedTuple):
    id: int
    device: str
    seq: int
    ts_ms: int
    kind: str
    body: dict[str, Any]


_CONSUMPTION = ("device, seq, COALESCE(charge_id, ''), admission, gtin, item_code, lot, serial, expiry, price_fen, "
                "operator, dept, used_at_ms, COALESCE(his_ref, ''), COALESCE(credit_id, ''), "
                "COALESCE(credit_his_ref, '')")
_MOVEMENT = "source, at_ms, kind, location, dept, gtin, lot, serial, qty, operator, admission, device, seq"


def _record(r: Sequence[Any]) -> ConsumptionRecord:
    return ConsumptionRecord(r[0], int(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], r[8], int(r[9]), r[10], r[11],
                             int(r[12]), r[13], r[14], r[15])


class BooksReads:
    """Reads over ``consumption``, ``charge_rejects``, ``returns``, ``lot_expiry`` and ``events``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def consumption(self, start_ms: int, end_ms: int) -> list[ConsumptionRecord]:
        rows = self._engine.query(
            f"SELECT {_CONSUMPTION} FROM consumption WHERE used_at_ms >= ? AND used_at_ms < ? "
            "ORDER BY used_at_ms, device, seq", (start_ms, end_ms))
        return [_record(r) for r in rows]

    def consumption_of(self, gtin: str, start_ms: int, end_ms: int,
                       charge_ids: Sequence[str] = ()) -> list[ConsumptionRecord]:
        """The consumption records of one product used in the window, and those of ``charge_ids`` whenever."""
        rows = self._engine.query(
            f"SELECT {_CONSUMPTION} FROM consumption WHERE gtin = ? AND used_at_ms >= ? AND used_at_ms < ?",
            (gtin, start_ms, end_ms))
        have = {str(r[2]) for r in rows}
        missing = [c for c in charge_ids if c not in have]
        for i in range(0, len(missing), 500):
            chunk = missing[i:i + 500]
            rows += self._engine.query(
                f"SELECT {_CONSUMPTION} FROM consumption WHERE charge_id IN ({', '.join('?' for _ in chunk)})", chunk)
        return [_record(r) for r in rows]

    def movements_of(self, gtin: str, start_ms: int, end_ms: int, kinds: Sequence[str]) -> list[MovementRow]:
        """The stock movements of one product's serial-tracked items in the window, by item and time."""
        marks = ", ".join("?" for _ in kinds)
        rows = self._engine.query(
            f"SELECT {_MOVEMENT} FROM stock_movements WHERE gtin = ? AND serial != '' AND at_ms >= ? AND at_ms < ? "
            f"AND kind IN ({marks}) ORDER BY serial, at_ms, id", (gtin, start_ms, end_ms, *kinds))
        return [MovementRow(r[0], int(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], int(r[8]), r[9], r[10], r[11],
                            int(r[12])) for r in rows]

    def refused_charges(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], RefusedCharge]:
        """The bridge's refusals of these (device, seq) events."""
        out: dict[tuple[str, int], RefusedCharge] = {}
        by_device: dict[str, list[int]] = {}
        for device, seq in keys:
            by_device.setdefault(device, []).append(seq)
        for device, seqs in by_device.items():
            for i in range(0, len(seqs), 500):
                chunk = seqs[i:i + 500]
                marks = ", ".join("?" for _ in chunk)
                for r in self._engine.query(
                        f"SELECT device, seq, reason, detail FROM charge_rejects WHERE device = ? AND seq IN ({marks})",
                        (device, *chunk)):
                    out[(r[0], int(r[1]))] = RefusedCharge(r[0], int(r[1]), r[2], r[3])
        return out

    def event_hashes(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], str]:
        """The stored hash of each of these (device, seq) events (the link of the device's chain)."""
        out: dict[tuple[str, int], str] = {}
        for device, seq in keys:
            for r in self._engine.query("SELECT hash FROM events WHERE device = ? AND seq = ?", (device, seq)):
                out[(device, seq)] = str(r[0])
        return out

    def returns(self, start_ms: int, end_ms: int) -> list[ReturnRecord]:
        rows = self._engine.query(
            "SELECT device, seq, item_key, outcome, COALESCE(charge_id, ''), COALESCE(credit_id, ''), operator, dept, "
            "returned_at_ms FROM returns WHERE returned_at_ms >= ? AND returned_at_ms < ? ORDER BY returned_at_ms",
            (start_ms, end_ms))
        return [ReturnRecord(r[0], int(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], int(r[8])) for r in rows]

    def lot_expiry(self) -> dict[tuple[str, str], str]:
        return {(r[0], r[1]): r[2] for r in self._engine.query("SELECT gtin, lot, expiry FROM lot_expiry")}

    def events(self, *, after_id: int, kinds: Sequence[str], limit: int) -> list[DeviceEvent]:
        """Events of ``kinds`` stored after ``after_id``, in store order (at most ``limit``)."""
        marks = ", ".join("?" for _ in kinds)
        rows = self._engine.query(
            f"SELECT id, device, seq, ts_ms, kind, body FROM events WHERE id > ? AND kind IN ({marks}) "
            "ORDER BY id LIMIT ?", (after_id, *kinds, limit))
        return [DeviceEvent(int(r[0]), r[1], int(r[2]), int(r[3]), r[4], json.loads(r[5])) for r in rows]
