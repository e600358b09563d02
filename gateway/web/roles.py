"""The roles of the supervisor's screen and what each may do (docs/web.md has the table)."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    SUPERVISOR = "supervisor"  # the SPD supervisor: everything, including a remote unlock
    FINANCE = "finance"  # billing: re-sends parked charges
    INSPECTOR = "inspector"  # audit and inspection: reads everything, changes nothing
    TECHNICIAN = "technician"  # on-call technician: acknowledges alarms


EVERYONE: tuple[Role, ...] = tuple(Role)
RESEND_CHARGE: tuple[Role, ...] = (Role.SUPERVISOR, Role.FINANCE)
ACKNOWLEDGE_ALARM: tuple[Role, ...] = (Role.SUPERVISOR, Role.TECHNICIAN)
REMOTE_UNLOCK: tuple[Role, ...] = (Role.SUPERVISOR,)

# the books (docs/web.md): who sees which of the month's reports; the technician sees none of them
SEE_SETTLEMENT: tuple[Role, ...] = (Role.SUPERVISOR, Role.FINANCE)
SEE_RECONCILIATION: tuple[Role, ...] = (Role.SUPERVISOR, Role.FINANCE, Role.INSPECTOR)
SEE_INSPECTION: tuple[Role, ...] = (Role.SUPERVISOR, Role.INSPECTOR)  # the inspector's report
SEE_TRACE: tuple[Role, ...] = (Role.SUPERVISOR, Role.INSPECTOR)  # item, lot or patient to the rest
SEE_BOOK_ALERTS: tuple[Role, ...] = (Role.SUPERVISOR, Role.FINANCE, Role.INSPECTOR)  # expiry, recalls, documents
SEE_REPLENISHMENT: tuple[Role, ...] = (Role.SUPERVISOR,)  # the pick lists of the SPD's restocking rounds
