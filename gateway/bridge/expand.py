"""Expand the hot path's compact batch result into charge lines and rejects (shared by both implementations)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.bridge.types import (
    BatchResult,
    Catalog,
    ChargeLine,
    ChargeReject,
    CompactBatch,
    RejectReason,
)


def _identity(event: Any) -> tuple[str, int]:
    """Device and seq of an event as far as they can be read; ('', -1) for a malformed event."""
    if isinstance(event, tuple) and len(event) == 7:
        device = event[0] if type(event[0]) is str else ""
        seq = event[1] if type(event[1]) is int else -1
        return device, seq
    return "", -1


def _iso(expiry: bytes) -> str:
    if expiry == b"00000000":
        return ""
    text = expiry.decode("ascii")
    return f"{text[0:4]}-{text[4:6]}-{text[6:8]}"


def expand(events: Sequence[Any], catalog: Catalog, compact: CompactBatch) -> BatchResult:
    """Build :class:`BatchResult` from the events and the compact result computed on them."""
    result = BatchResult()
    events = events if isinstance(events, list | tuple) else list(events)
    line = 0
    detail = 0
    udi_pos = 0
    start = 0
    for index, code in enumerate(compact.status):
        event = events[index]
        if code:
            device, seq = _identity(event)
            reason = RejectReason.from_code(code)
            reject = ChargeReject(device, seq, reason, compact.details[detail])
            detail += 1
            (result.uncharged if reason is RejectReason.NOT_CHARGEABLE else result.rejects).append(reject)
            continue
        udi = compact.udi
        gtin = udi[udi_pos:udi_pos + 14].decode("ascii")
        expiry = _iso(udi[udi_pos + 14:udi_pos + 22])
        lot_len = udi[udi_pos + 22]
        lot = udi[udi_pos + 23:udi_pos + 23 + lot_len].decode("ascii")
        serial_at = udi_pos + 23 + lot_len
        serial_len = udi[serial_at]
        serial = udi[serial_at + 1:serial_at + 1 + serial_len].decode("ascii")
        udi_pos = serial_at + 1 + serial_len
        end = compact.ends[line]
        message = compact.messages[start:end].decode("utf-8")
        start = end
        line += 1
        item = catalog.get(gtin)
        assert item is not None, "a charged GTIN is always in the catalog"
        device, seq, ts_ms, admission, _udi, operator, dept = event
        charge_id = message.split("|", 10)[9]
        result.lines.append(ChargeLine(
            charge_id=charge_id, device=device, seq=seq, ts_ms=ts_ms, admission=admission, gtin=gtin, lot=lot,
            serial=serial, expiry=expiry, item_code=item.item_code, charge_code=item.charge_code, name=item.name,
            price_fen=item.price_fen, qty=1, operator=operator, dept=dept, message=message,
        ))
    return result
