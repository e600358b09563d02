"""The evidence behind a reconciliation finding, read back for the screen's drill-down: the device events
(by device and sequence number) and the HIS's lines (by the HIS's id). Read-only; every read is by key.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

from gateway.data.engine import Engine
from gateway.data.his_lines import _COLUMNS as HIS_COLUMNS
from gateway.data.his_lines import HisLineRow


class EvidenceEvent(NamedTuple):
    device: str
    seq: int
    ts_ms: int
    kind: str
    body: dict[str, Any]
    hash: str
    stored_at: float


class EvidenceReads:
    """Reads over ``events`` and ``his_lines`` by key."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def events(self, keys: Sequence[tuple[str, int]]) -> list[EvidenceEvent]:
        """These (device, seq) events as stored, in the order asked; unknown ones are left out."""
        out: list[EvidenceEvent] = []
        for device, seq in keys:
            for r in self._engine.query("SELECT device, seq, ts_ms, kind, body, hash, stored_at FROM events "
                                        "WHERE device = ? AND seq = ?", (device, seq)):
                try:
                    body = json.loads(r[4])
                except ValueError:
                    body = {"unreadable": str(r[4])[:200]}
                out.append(EvidenceEvent(r[0], int(r[1]), int(r[2]), r[3], body if isinstance(body, dict) else {},
                                         r[5], float(r[6])))
        return out

    def his_lines(self, his_ids: Sequence[str]) -> list[HisLineRow]:
        """The HIS's lines with these ids, in the order asked; unknown ones are left out."""
        out: list[HisLineRow] = []
        for his_id in his_ids:
            for r in self._engine.query(f"SELECT {HIS_COLUMNS} FROM his_lines WHERE his_id = ?", (his_id,)):
                out.append(HisLineRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], int(r[7]), int(r[8]), int(r[9]),
                                      int(r[10]), r[11], r[12], r[13], r[14], r[15]))
        return out
