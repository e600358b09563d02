"""Reading the HIS's month export of charge lines (CSV) for ``spd-gateway his-import``.

One row per charge or credit line, as the HIS billed it, with this header (in any order)::

    his_id,entry,admission,charge_code,gtin,lot,serial,qty,unit_price,amount,time,source,reverses,dept,operator,his_ref

``entry`` is ``charge`` or ``credit``; ``qty`` is signed (a credit's is negative); ``unit_price`` and
``amount`` are yuan with at most two decimals, and ``amount`` must equal ``qty * unit_price``; ``time`` is
ISO 8601, with its UTC offset (without one it is hospital local time); ``source`` is ``interface`` (sent by
this gateway: ``his_id`` is the gateway's charge id) or ``manual`` (entered at the HIS); a credit names the
``his_id`` of the charge it reverses in ``reverses``; ``gtin``, ``lot``, ``serial`` are empty when the HIS
does not know the item.
"""

from __future__ import annotations

import csv
import datetime as dt
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Final, NamedTuple

from gateway.data.his_lines import CHARGE, CREDIT, INTERFACE, MANUAL, HisLineRow

COLUMNS: Final = ("his_id", "entry", "admission", "charge_code", "gtin", "lot", "serial", "qty", "unit_price",
                  "amount", "time", "source", "reverses", "dept", "operator", "his_ref")


class LineError(NamedTuple):
    line: int
    column: str
    problem: str


def fen_of(text: str) -> int:
    """Yuan text with at most two decimals as integer fen; ValueError otherwise."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"not an amount: {text!r}") from None
    fen = value * 100
    if fen != fen.to_integral_value():
        raise ValueError(f"more than two decimals: {text!r}")
    return int(fen)


def epoch_ms(text: str, utc_offset_minutes: int) -> int:
    t = dt.datetime.fromisoformat(text.strip())
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone(dt.timedelta(minutes=utc_offset_minutes)))
    return int(t.timestamp() * 1000)


def read_his_csv(path: Path, *, utc_offset_minutes: int) -> tuple[list[HisLineRow], list[LineError]]:
    rows: list[HisLineRow] = []
    errors: list[LineError] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            return [], [LineError(1, ",".join(missing), "column(s) missing from the header")]
        for n, rec in enumerate(reader, start=2):
            v = {k: (rec.get(k) or "").strip() for k in COLUMNS}
            before = len(errors)

            def bad(column: str, problem: str, line: int = n) -> None:
                errors.append(LineError(line, column, problem))

            if not v["his_id"]:
                bad("his_id", "empty")
            elif v["his_id"] in seen:
                bad("his_id", f"{v['his_id']} listed twice")
            if v["entry"] not in (CHARGE, CREDIT):
                bad("entry", f"must be {CHARGE} or {CREDIT}, not {v['entry']!r}")
            if v["source"] not in (INTERFACE, MANUAL):
                bad("source", f"must be {INTERFACE} or {MANUAL}, not {v['source']!r}")
            if not v["admission"] or not v["charge_code"]:
                bad("admission" if not v["admission"] else "charge_code", "empty")
            if v["entry"] == CREDIT and not v["reverses"]:
                bad("reverses", "a credit must name the charge it reverses")
            qty = price = amount = at = 0
            try:
                qty = int(v["qty"])
                price, amount = fen_of(v["unit_price"]), fen_of(v["amount"])
                if qty * price != amount:
                    bad("amount", f"{v['amount']} is not qty {qty} x unit price {v['unit_price']}")
            except ValueError as err:
                bad("qty/unit_price/amount", str(err))
            if (v["entry"] == CHARGE and qty <= 0) or (v["entry"] == CREDIT and qty >= 0):
                bad("qty", "a charge's quantity is positive, a credit's negative")
            try:
                at = epoch_ms(v["time"], utc_offset_minutes)
            except ValueError:
                bad("time", f"not an ISO 8601 time: {v['time']!r}")
            if len(errors) > before:
                continue
            seen.add(v["his_id"])
            rows.append(HisLineRow(v["his_id"], v["entry"], v["admission"], v["charge_code"], v["gtin"], v["lot"],
                                   v["serial"], qty, price, amount, at, v["source"], v["reverses"], v["dept"],
                                   v["operator"], v["his_ref"]))
    return rows, errors
