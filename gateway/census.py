"""The patient census the devices check wristbands against: one row per admission, fed by ADT or a CSV export.

The census lives in the ``patient_census`` table (admission number, in house or discharged) with the
details the handheld shows: name initials (never a full name: the gateway does not keep one), ward,
department, bed, and the admission and discharge times. Two feeds write it:

* the HIS's HL7 v2 ADT messages (:mod:`gateway.adt`), one event at a time (:func:`apply_adt`);
* ``spd-gateway census-import`` for sites without an ADT interface: a CSV or XLSX snapshot of the
  in-house (and recently discharged) patients, which by default replaces the whole census.

A census is only sent to the devices once it is **complete** (:func:`census_complete`): a snapshot
import is complete by definition; an ADT-fed census becomes complete when the site says so
(``spd-gateway census-ready``, once the HIS has sent its initial load of the in-house patients).
Until then the devices get no census and refuse no wristband for it: a census holding only today's
admissions would refuse every patient admitted before the feed started.

Census CSV columns (header row, any order, case-insensitive): required ``admission``; optional
``status`` (in_house / discharged, also admitted, 在院, 出院; default in_house), ``name`` (turned into
initials at import, never stored), ``initials``, ``ward``, ``dept``, ``bed``, ``admitted_at`` and
``discharged_at`` (ISO 8601 date-time, local time when no offset is given).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from gateway.catalog import RowError, Table, _text, parse_table, read_table
from gateway.data.census import CensusRow
from gateway.store import GatewayStore

log = logging.getLogger(__name__)

CENSUS_COLUMNS = ("admission",)
CENSUS_OPTIONAL_COLUMNS = ("status", "name", "initials", "ward", "dept", "bed", "admitted_at", "discharged_at")
_STATUS_WORDS = {"in_house": "in_house", "inhouse": "in_house", "admitted": "in_house", "in": "in_house",
                 "在院": "in_house", "discharged": "discharged", "out": "discharged", "出院": "discharged"}
MAX_ADMISSION_LEN = 64


class PatientState(StrEnum):
    IN_HOUSE = "in_house"
    DISCHARGED = "discharged"


@dataclass(frozen=True, slots=True)
class CensusRecord:
    """One admission in the census."""

    admission: str
    status: PatientState = PatientState.IN_HOUSE
    initials: str = ""
    ward: str = ""
    dept: str = ""
    bed: str = ""
    admitted_at: float | None = None
    discharged_at: float | None = None
    source: str = ""


class AdtEvent(StrEnum):
    """The ADT trigger events the census follows."""

    ADMIT = "A01"
    TRANSFER = "A02"
    DISCHARGE = "A03"
    UPDATE = "A08"
    CANCEL_ADMIT = "A11"
    CANCEL_DISCHARGE = "A13"


@dataclass(frozen=True, slots=True)
class AdtUpdate:
    """What one ADT message says about one admission; empty detail fields leave the stored ones as they are."""

    event: AdtEvent
    admission: str
    initials: str = ""
    ward: str = ""
    dept: str = ""
    bed: str = ""
    at: float = field(default_factory=time.time)  # when it happened at the HIS (EVN-2, PV1-44/45), else received


# -- names ----------------------------------------------------------------------------------


def initials(family: str, given: str = "") -> str:
    """Name initials for the handheld's screen, never the name itself.

    Latin names give ``F.G.`` (family first, as the wristband prints it); a name written in CJK
    characters gives its first character and ``*`` (张* for 张三), the usual masking in Chinese
    hospitals, because a two-character name's "initials" would be the whole name.
    """
    family, given = family.strip(), given.strip()
    if not family and not given:
        return ""
    first = (family or given)[0]
    if _is_cjk(first):
        return first + "*"
    letters = [p[0].upper() for p in (family, given) if p and p[0].isalpha()]
    return "".join(f"{c}." for c in letters)


def _is_cjk(char: str) -> bool:
    return unicodedata.east_asian_width(char) in ("W", "F")


# -- the table ------------------------------------------------------------------------------


def mark_census_complete(store: GatewayStore, *, complete: bool = True, by: str = "") -> None:
    """Say whether the census holds every inpatient (the devices get it only then)."""
    store.census.set_complete(complete, by=by, now=time.time())


def census_complete(store: GatewayStore) -> bool:
    return store.census.complete()


def load_census(store: GatewayStore) -> list[CensusRecord] | None:
    """Every admission in the census, or None when the gateway has no census at all."""
    rows = store.census.all()
    if not rows:
        return None
    return [_from_row(r) for r in rows]


def census_record(store: GatewayStore, admission: str) -> CensusRecord | None:
    row = store.census.get(admission)
    return _from_row(row) if row else None


def _from_row(r: CensusRow) -> CensusRecord:
    return CensusRecord(r.admission, PatientState(r.status), r.initials, r.ward, r.dept, r.bed, r.admitted_at,
                        r.discharged_at, r.source)


def _row(rec: CensusRecord) -> CensusRow:
    return CensusRow(rec.admission, rec.status.value, rec.initials, rec.ward, rec.dept, rec.bed, rec.admitted_at,
                     rec.discharged_at, rec.source)


def import_census(store: GatewayStore, records: Sequence[CensusRecord], *, replace_all: bool = True) -> int:
    """Store a census snapshot; with `replace_all` it becomes the whole census (absent admissions go)."""
    store.census.store([_row(r) for r in records], replace_all=replace_all, now=time.time())
    if replace_all:
        mark_census_complete(store, by="census-import")
    log.info("census: %d admissions imported%s", len(records), " (whole census replaced)" if replace_all else "")
    return len(records)


def apply_adt(store: GatewayStore, update: AdtUpdate, *, control_id: str) -> bool:
    """Apply one ADT event; False when `control_id` was applied before (a re-sent message) or nothing changed.

    The message is logged under its control id in the same transaction as its effect, so a sender
    that re-sends after a lost ACK never applies an event twice.
    """
    def decide(row: CensusRow | None) -> CensusRow | None:
        new = _next_record(_from_row(row) if row else None, update)
        return None if new is None else _row(new)

    changed = store.census.apply_adt(control_id, update.event.value, update.admission, decide, now=time.time())
    return bool(changed)


def _next_record(old: CensusRecord | None, u: AdtUpdate) -> CensusRecord | None:
    """The census row after event `u` (None: the admission leaves the census)."""
    if u.event is AdtEvent.CANCEL_ADMIT:
        return None
    base = old or CensusRecord(u.admission)
    base = replace(base, initials=u.initials or base.initials, ward=u.ward or base.ward, dept=u.dept or base.dept,
                   bed=u.bed or base.bed, source="adt")
    if u.event is AdtEvent.ADMIT:
        return replace(base, status=PatientState.IN_HOUSE, admitted_at=u.at, discharged_at=None)
    if u.event is AdtEvent.DISCHARGE:
        return replace(base, status=PatientState.DISCHARGED, discharged_at=u.at)
    if u.event is AdtEvent.CANCEL_DISCHARGE:
        return replace(base, status=PatientState.IN_HOUSE, discharged_at=None)
    # A02 transfer and A08 update change the details; for an admission the census has not seen they admit it
    return base


# -- the CSV / XLSX import --------------------------------------------------------------------


def parse_census_table(table: Table) -> tuple[list[CensusRecord], list[RowError]]:
    seen: set[str] = set()
    return parse_table(table, CENSUS_COLUMNS, CENSUS_OPTIONAL_COLUMNS,
                       lambda line, rec, errors: _census_row(line, rec, seen, errors),
                       accepted=lambda record: seen.add(record.admission))


def read_census_file(path: Path) -> tuple[list[CensusRecord], list[RowError]]:
    """Parse a census export, CSV (UTF-8) or XLSX by extension."""
    return parse_census_table(read_table(path))


def _census_row(line: int, rec: dict[str, Any], seen: set[str], errors: list[RowError]) -> CensusRecord | None:
    def bad(column: str, reason: str) -> None:
        errors.append(RowError(line, column, reason))

    admission = _text(rec.get("admission"))
    if not admission:
        bad("admission", "empty admission number")
    elif len(admission) > MAX_ADMISSION_LEN or not admission.isprintable() or " " in admission:
        bad("admission", f"not an admission number: {admission[:MAX_ADMISSION_LEN]!r}")
    elif admission in seen:
        bad("admission", f"admission {admission} listed twice")
    word = _text(rec.get("status")).lower() or "in_house"
    status = _STATUS_WORDS.get(word.replace(" ", "_").replace("-", "_"))
    if status is None:
        bad("status", f"{word!r} is not in_house or discharged")
    admitted_at = _when(rec.get("admitted_at"), "admitted_at", bad)
    discharged_at = _when(rec.get("discharged_at"), "discharged_at", bad)
    if status == "in_house" and discharged_at is not None:
        bad("discharged_at", "an in-house patient has no discharge time")
    name = _text(rec.get("name"))
    given_initials = _text(rec.get("initials"))
    shown = given_initials or initials(*_split_name(name))
    if len(shown) > 8:
        bad("initials", f"initials are at most 8 characters, got {len(shown)}")
    if errors or status is None:
        return None
    return CensusRecord(admission, PatientState(status), shown, _text(rec.get("ward")), _text(rec.get("dept")),
                        _text(rec.get("bed")), admitted_at, discharged_at, "import")


def _split_name(name: str) -> tuple[str, str]:
    if "^" in name:
        family, _, given = name.partition("^")
        return family, given.split("^")[0]
    if "," in name:
        family, _, given = name.partition(",")
        return family, given
    parts = name.split()
    return (parts[-1], parts[0]) if len(parts) > 1 else (name, "")


def _when(value: Any, column: str, bad: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value.timestamp()
    text = _text(value)
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        bad(column, f"not an ISO 8601 date-time: {text!r}")
        return None
