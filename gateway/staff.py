"""The hospital's staff list: CSV/XLSX import with row-level errors, and the per-department badge allow-lists.

Columns (header row, any order, case-insensitive):

* required: ``staff_id`` (工号, the allow-list's ``user``), ``badge`` (the card number the reader
  sends), ``role`` (nurse, restocker, technician; also 护士, 补货员, 工程师), ``dept`` (the departments
  the person works in, separated by ``;`` — ``*`` for every department, e.g. SPD restockers);
* optional: ``pin`` (4-12 digits; hashed with scrypt at import, :func:`spd_common.allowlist.hash_pin`,
  and never stored or printed in clear), ``active`` (yes/no, default yes: a no row is not imported),
  ``name`` (read, never stored: the allow-list needs none).

An import replaces the whole staff list (someone who left is no longer on it). A bad row is reported
as a :class:`gateway.catalog.RowError` and skipped; ``spd-gateway staff-import`` then imports nothing
unless asked (``--partial``), because a skipped row locks that person out of the cabinets. The file
holds PINs in clear: delete it once imported.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.catalog import RowError, Table, _bool, _text, parse_table, read_table
from gateway.data.census import StaffRow
from gateway.store import GatewayStore
from spd_common.allowlist import AllowListError, Role, hash_pin, normalise_badge, parse_allowlist

log = logging.getLogger(__name__)

STAFF_COLUMNS = ("staff_id", "badge", "role", "dept")
STAFF_OPTIONAL_COLUMNS = ("pin", "active", "name")
ALL_DEPTS = "*"
MAX_BADGE_LEN = 64
_ROLES = {r.value: r for r in Role} | {"护士": Role.NURSE, "补货员": Role.RESTOCKER, "配送员": Role.RESTOCKER,
                                       "工程师": Role.TECHNICIAN, "技术员": Role.TECHNICIAN}


@dataclass(frozen=True, slots=True)
class StaffMember:
    staff_id: str
    badge: str
    role: Role
    depts: tuple[str, ...]
    pin_hash: str | None = None

    def works_in(self, dept: str) -> bool:
        return ALL_DEPTS in self.depts or dept in self.depts


def parse_staff_table(table: Table) -> tuple[list[StaffMember], list[RowError]]:
    ids: set[str] = set()
    badges: set[str] = set()

    def accepted(member: StaffMember) -> None:
        ids.add(member.staff_id)
        badges.add(member.badge)

    # _member gives None for an inactive row: left out, no error
    return parse_table(table, STAFF_COLUMNS, STAFF_OPTIONAL_COLUMNS,
                       lambda line, rec, errors: _member(line, rec, ids, badges, errors), accepted=accepted)


def read_staff_file(path: Path) -> tuple[list[StaffMember], list[RowError]]:
    """Parse a staff export, CSV (UTF-8) or XLSX by extension."""
    return parse_staff_table(read_table(path))


def _member(line: int, rec: dict[str, Any], ids: set[str], badges: set[str],
            errors: list[RowError]) -> StaffMember | None:
    def bad(column: str, reason: str) -> None:
        errors.append(RowError(line, column, reason))

    active = _bool(rec.get("active"), True)
    if active is None:
        bad("active", f"{_text(rec.get('active'))!r} is not yes or no")
    staff_id = _text(rec.get("staff_id"))
    if not staff_id:
        bad("staff_id", "empty staff id")
    elif staff_id in ids:
        bad("staff_id", f"staff id {staff_id} listed twice")
    badge = normalise_badge(_text(rec.get("badge")))
    if not badge:
        bad("badge", "empty badge number")
    elif len(badge) > MAX_BADGE_LEN or not badge.isprintable():
        bad("badge", f"not a badge number: {badge[:MAX_BADGE_LEN]!r}")
    elif badge in badges:
        bad("badge", f"badge {badge} given to two people")
    role_text = _text(rec.get("role"))
    role = _ROLES.get(role_text.lower()) or _ROLES.get(role_text)
    if role is None:
        bad("role", f"{role_text!r} is not one of {', '.join(r.value for r in Role)}")
    depts = tuple(sorted({d.strip() for d in _text(rec.get("dept")).replace(",", ";").split(";") if d.strip()}))
    if not depts:
        bad("dept", f"no department (use {ALL_DEPTS!r} for every department)")
    pin = _text(rec.get("pin"))
    if pin and (not pin.isascii() or not pin.isdigit() or not 4 <= len(pin) <= 12):
        bad("pin", "a PIN is 4-12 digits")  # never echo the value
    if errors or active is False:
        return None
    assert role is not None
    return StaffMember(staff_id, badge, role, depts, hash_pin(pin) if pin else None)


def import_staff(store: GatewayStore, members: Sequence[StaffMember]) -> int:
    """Replace the staff list with `members`."""
    store.staff.replace([StaffRow(m.staff_id, m.badge, m.role.value, tuple(m.depts), m.pin_hash) for m in members],
                        now=time.time())
    log.info("staff: %d people imported", len(members))
    return len(members)


def load_staff(store: GatewayStore) -> list[StaffMember]:
    return [StaffMember(r.staff_id, r.badge, Role(r.role), r.depts, r.pin_hash) for r in store.staff.all()]


def build_allowlist(store: GatewayStore, *, dept: str) -> dict[str, Any]:
    """The allow-list (cabinet format, without ``version``: the fleet sets it) of the staff working in `dept`."""
    badges = [{"badge": m.badge, "user": m.staff_id, "role": m.role.value,
               **({"pin_hash": m.pin_hash} if m.pin_hash else {})}
              for m in load_staff(store) if m.works_in(dept)]
    doc: dict[str, Any] = {"badges": badges}
    try:
        parse_allowlist(doc, source=f"allow-list of {dept}")  # what the cabinet will check, checked here first
    except AllowListError as err:  # pragma: no cover - the import already enforces the same rules
        raise ValueError(str(err)) from err
    return doc
