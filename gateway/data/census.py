"""Census and staff: the patient census (imported or fed by HL7 ADT), the ADT message log, the staff list."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from gateway.data.engine import Engine


class CensusRow(NamedTuple):
    """One admission in ``patient_census``."""

    admission: str
    status: str  # in_house | discharged
    initials: str = ""
    ward: str = ""
    dept: str = ""
    bed: str = ""
    admitted_at: float | None = None
    discharged_at: float | None = None
    source: str = ""


class StaffRow(NamedTuple):
    staff_id: str
    badge: str
    role: str
    depts: tuple[str, ...]
    pin_hash: str | None


_COLUMNS = "admission, status, initials, ward, dept, bed, admitted_at, discharged_at, source"
_UPSERT = (
    "INSERT INTO patient_census (admission, status, updated_at, initials, ward, dept, bed, admitted_at, "
    "discharged_at, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (admission) DO UPDATE SET "
    "status = excluded.status, updated_at = excluded.updated_at, initials = excluded.initials, "
    "ward = excluded.ward, dept = excluded.dept, bed = excluded.bed, admitted_at = excluded.admitted_at, "
    "discharged_at = excluded.discharged_at, source = excluded.source"
)


def _values(row: CensusRow, now: float) -> tuple[Any, ...]:
    return (row.admission, row.status, now, row.initials, row.ward, row.dept, row.bed, row.admitted_at,
            row.discharged_at, row.source)


class CensusStore:
    """The ``patient_census``, ``census_state`` and ``adt_messages`` tables."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def set_complete(self, complete: bool, *, by: str, now: float) -> None:
        with self._engine.transaction() as db:
            db.execute("INSERT INTO census_state (id, complete, changed_at, changed_by) VALUES (1, ?, ?, ?) "
                       "ON CONFLICT (id) DO UPDATE SET complete = excluded.complete, changed_at = excluded.changed_at, "
                       "changed_by = excluded.changed_by", (int(complete), now, by))

    def complete(self) -> bool:
        rows = self._engine.query("SELECT complete FROM census_state WHERE id = 1")
        return bool(rows and rows[0][0])

    def all(self) -> list[CensusRow]:
        return [CensusRow(*r) for r in self._engine.query(f"SELECT {_COLUMNS} FROM patient_census ORDER BY admission")]

    def get(self, admission: str) -> CensusRow | None:
        rows = self._engine.query(f"SELECT {_COLUMNS} FROM patient_census WHERE admission = ?", (admission,))
        return CensusRow(*rows[0]) if rows else None

    def store(self, rows: Sequence[CensusRow], *, replace_all: bool, now: float) -> None:
        """Upsert admissions; with ``replace_all`` they become the whole census."""
        with self._engine.transaction() as db:
            if replace_all:
                db.execute("DELETE FROM patient_census")
            db.executemany(_UPSERT, [_values(r, now) for r in rows])

    def apply_adt(self, control_id: str, event: str, admission: str,
                  decide: Callable[[CensusRow | None], CensusRow | None], *, now: float) -> bool | None:
        """Apply one ADT message in one transaction with its entry in the message log.

        ``decide`` gets the admission's row (None: not in the census) and returns the row after the event
        (None: the admission leaves the census). None when ``control_id`` was applied before; else whether
        the census changed.
        """
        with self._engine.transaction() as db:
            if control_id and db.execute("SELECT 1 FROM adt_messages WHERE control_id = ?", (control_id,)).fetchone():
                return None
            row = db.execute(f"SELECT {_COLUMNS} FROM patient_census WHERE admission = ?", (admission,)).fetchone()
            old = CensusRow(*row) if row else None
            new = decide(old)
            if new is None:
                db.execute("DELETE FROM patient_census WHERE admission = ?", (admission,))
            elif new != old:
                db.execute(_UPSERT, _values(new, now))
            if control_id:
                db.execute("INSERT INTO adt_messages (control_id, received_at, event, admission, outcome) "
                           "VALUES (?, ?, ?, ?, ?)", (control_id, now, event, admission,
                                                      "changed" if new != old else "unchanged"))
        return new != old


class StaffStore:
    """The ``staff`` table (badges, PIN hashes, roles, departments), replaced whole on each import."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def replace(self, members: Sequence[StaffRow], *, now: float) -> None:
        with self._engine.transaction() as db:
            db.execute("DELETE FROM staff")
            db.executemany(
                "INSERT INTO staff (staff_id, badge, role, depts, pin_hash, imported_at) VALUES (?, ?, ?, ?, ?, ?)",
                [(m.staff_id, m.badge, m.role, ";".join(m.depts), m.pin_hash, now) for m in members])

    def all(self) -> list[StaffRow]:
        rows = self._engine.query("SELECT staff_id, badge, role, depts, pin_hash FROM staff ORDER BY badge")
        return [StaffRow(r[0], r[1], r[2], tuple(r[3].split(";")), r[4]) for r in rows]
