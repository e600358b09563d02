"""The inspector's report and the reconciliation's tables: the red flags of a month per department and
operator (counts and amounts), per kind, and each one with its evidence chain.

A fund inspector reads the summary first (where, who, how much), then follows any flag down its chain:
the device events (``device:seq``, each a signed, hash-chained record), the gateway's charge ids, the HIS's
line ids and its own references (its answers to the charges). XLSX: one sheet each, money as numbers.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from gateway.books.output import Column, Table
from gateway.books.reconcile import KINDS, Finding, Reconciliation

_EVIDENCE_COLUMNS = (
    Column("kind", "Kind"), Column("key", "Key"), Column("time", "Time (local)", "time"), Column("dept", "Dept"),
    Column("operator", "Operator"), Column("admission", "Admission"), Column("gtin", "GTIN"),
    Column("serial", "Serial"), Column("amount_fen", "Amount", "fen"), Column("events", "Device events"),
    Column("event_hashes", "Event hashes"),
    Column("charge_ids", "Gateway charges"), Column("his_ids", "HIS lines"), Column("his_refs", "HIS answers"),
    Column("detail", "Detail"),
)


def evidence_table(rec: Reconciliation, title: str = "Mismatches") -> Table:
    t = Table(title, _EVIDENCE_COLUMNS)
    for f in rec.findings:
        t.rows.append(_evidence_row(rec, f))
    t.totals = ["total", str(len(rec.findings)), None, None, None, None, None, None,
                sum(f.amount_fen for f in rec.findings), None, None, None, None, None, None]
    return t


def _evidence_row(rec: Reconciliation, f: Finding) -> list[Any]:
    return [f.kind, f.key, rec.period.local_time(f.at_ms), f.dept, f.operator, f.admission, f.gtin, f.serial,
            f.amount_fen, " ".join(f.events), " ".join(f.event_hashes), " ".join(f.charge_ids), " ".join(f.his_ids),
            " ".join(f.his_refs), f.detail]


def by_kind_table(rec: Reconciliation) -> Table:
    count: Counter[str] = Counter(f.kind for f in rec.findings)
    amount: Counter[str] = Counter()
    for f in rec.findings:
        amount[f.kind] += f.amount_fen
    t = Table("By kind", (Column("kind", "Kind"), Column("count", "Count", "int"),
                          Column("amount_fen", "Amount", "fen")))
    t.rows = [[k, count[k], amount[k]] for k in KINDS]
    t.totals = ["total", len(rec.findings), sum(amount.values())]
    return t


def summary_table(rec: Reconciliation) -> Table:
    """Red flags per department and operator, one row per kind they have."""
    groups: dict[tuple[str, str, str], list[Finding]] = defaultdict(list)
    for f in rec.findings:
        groups[(f.dept, f.operator, f.kind)].append(f)
    t = Table("Summary", (Column("dept", "Dept"), Column("operator", "Operator"), Column("kind", "Kind"),
                          Column("count", "Count", "int"), Column("amount_fen", "Amount", "fen")))
    for (dept, operator, kind), fs in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1], KINDS.index(g[0][2]))):
        t.rows.append([dept, operator, kind, len(fs), sum(f.amount_fen for f in fs)])
    t.totals = ["total", None, None, len(rec.findings), sum(f.amount_fen for f in rec.findings)]
    return t


def by_dept_table(rec: Reconciliation) -> Table:
    """One row per department: how many flags of each kind, and the amount at stake."""
    per: dict[str, Counter[str]] = defaultdict(Counter)
    amount: Counter[str] = Counter()
    for f in rec.findings:
        per[f.dept][f.kind] += 1
        amount[f.dept] += f.amount_fen
    cols = [Column("dept", "Dept"), *(Column(k, k, "int") for k in KINDS), Column("amount_fen", "Amount", "fen")]
    t = Table("By department", cols)
    t.rows = [[d, *(per[d][k] for k in KINDS), amount[d]] for d in sorted(per)]
    return t


def meta(rec: Reconciliation) -> dict[str, Any]:
    p = rec.period
    return {"month": p.month, "from": p.local_time(p.start_ms), "to": p.local_time(p.end_ms),
            "grace_days": p.grace_ms // 86_400_000, "his_lines_read": rec.his_lines,
            "consumption_records_read": rec.consumption_records, "stock_movements_read": rec.movements,
            "his_charges_standing": rec.standing_charges, "his_charges_standing_fen": rec.standing_fen,
            "items_followed": rec.items,
            "mismatch_count": len(rec.findings)}
