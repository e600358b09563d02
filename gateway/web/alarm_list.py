"""Every alarm the screen shows, with a stable id, and whether it is still open.

Three sources: ``alarm`` events the devices reported (``event:<device>:<seq>``: door forced or ajar, reader
offline, unknown tag ...), hash-chain breaks found at ingest (``chain:<device>:<first seq>``, grouped into
ranges as ``spd-gateway alarms`` prints them) and the gateway's ``not_linked`` alarms
(``link:<cabinet>:<seq>``, :mod:`gateway.linking`). An alarm is open until someone acknowledges it with a
comment (kept in ``alarm_acks`` and the audit log); a ``not_linked`` alarm whose item was charged later
shows that too, and is open until acknowledged all the same.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from gateway.audit import chain_break_alarms
from gateway.data.accounts import AckRow
from gateway.linking import link_alarms
from gateway.store import GatewayStore

ALARM_ID = re.compile(r"^(event|chain|link):[A-Za-z0-9_.-]{1,64}:[0-9]{1,19}$")
# what makes an alarm critical on the screen (red): a door forced, evidence tampered with, an item not charged
CRITICAL = frozenset({"door_forced", "chain_break", "not_linked"})


@dataclass(frozen=True, slots=True)
class Alarm:
    id: str
    kind: str  # the device's alarm code, "chain_break" or "not_linked"
    device: str
    at: float  # when the gateway learnt of it (Unix time)
    summary: str
    later: str  # what happened since (a late charge of a not_linked item), or ""
    ack: AckRow | None

    @property
    def open(self) -> bool:
        return self.ack is None

    @property
    def critical(self) -> bool:
        return self.kind in CRITICAL


def collect_alarms(store: GatewayStore, *, limit: int = 500) -> list[Alarm]:
    """Every alarm, newest first."""
    acks = store.accounts.acks()
    out: list[Alarm] = []
    for ev in store.dashboard.alarm_events(limit=limit):
        try:
            body = json.loads(ev.body)
        except ValueError:
            body = {}
        code = str(body.get("alarm", "alarm")) if isinstance(body, dict) else "alarm"
        detail = ", ".join(f"{k} {v}" for k, v in sorted(body.items()) if k != "alarm") \
            if isinstance(body, dict) else ""
        aid = f"event:{ev.device}:{ev.seq}"
        summary = f"{code} on {ev.device} (seq {ev.seq})" + (f": {detail}" if detail else "")
        out.append(Alarm(aid, code, ev.device, ev.stored_at, summary, "", acks.get(aid)))
    for cb in chain_break_alarms(store):
        aid = f"chain:{cb.device}:{cb.first_seq}"
        out.append(Alarm(aid, "chain_break", cb.device, cb.detected_at, str(cb), "", acks.get(aid)))
    for la in link_alarms(store):
        aid = f"link:{la.cabinet}:{la.seq}"
        who = la.user or "unknown user"
        out.append(Alarm(aid, "not_linked", la.cabinet, la.raised_at,
                         f"item {la.item_key} taken from {la.cabinet} by {who} not charged within {la.window_s:g} s",
                         la.resolved_by, acks.get(aid)))
    out.sort(key=lambda a: a.at, reverse=True)
    return out
