"""``spd-gateway incidents``: the incidents the notification loop opened, and closing one by hand."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass

from gateway.data.engine import DB_HELP, store_location
from gateway.data.incidents import IncidentRow
from gateway.store import GatewayStore


def _when(at: float | None) -> str:
    return "-" if at is None else dt.datetime.fromtimestamp(at).astimezone().isoformat(timespec="seconds")


def format_incident(i: IncidentRow, notices: list[tuple[str, str, str, int, str]]) -> str:
    head = f"{i.id}\t{i.state}\t{i.kind}\t{i.subject}\topened {_when(i.opened_at)}"
    if i.state == "resolved":
        head += f"\tresolved {_when(i.resolved_at)} by {i.resolved_by}: {i.resolution}"
    lines = [head, f"\t{i.summary}"]
    for event, channel, status, attempts, error in notices:
        tail = f" ({attempts} attempts; last error: {error})" if error else ""
        lines.append(f"\t{event} notice by {channel}: {status}{tail}")
    return "\n".join(lines)


def _incidents(a: argparse.Namespace) -> int:
    from gateway.notify import close_incident

    store = GatewayStore(a.db)
    try:
        if a.action == "close":
            if a.id is None:
                print("incidents close needs the incident id", flush=True)
                return 2
            done = close_incident(store, a.id, by=a.by or getpass.getuser(), note=a.note)
            if done is None:
                print(f"incident {a.id} is not open")
                return 1
            print(f"incident {a.id} ({done.kind} {done.subject}) resolved; the resolved notice goes out with the "
                  "running gateway")
            return 0
        state = None if a.state == "all" else a.state
        rows = store.incidents.listing(state=state, limit=a.limit)
        for i in rows:
            print(format_incident(i, store.incidents.notices_of(i.id)))
        return 0
    finally:
        store.close()


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("incidents", help="list the incidents (critical alarms) and their notices, or close one "
                       "by hand (docs/notify.md)")
    p.add_argument("--db", type=store_location, required=True, help=DB_HELP)
    p.add_argument("action", nargs="?", choices=["list", "close"], default="list",
                   help="list incidents (default), or close an open one (a chain break looked into)")
    p.add_argument("id", nargs="?", type=int, default=None, help="the incident to close (close)")
    p.add_argument("--state", choices=["open", "resolved", "all"], default="all",
                   help="which incidents to list (default all, newest first)")
    p.add_argument("--limit", type=int, default=50, help="list at most this many")
    p.add_argument("--by", default=None, help="who closes it (default: the login name), for the audit log")
    p.add_argument("--note", default="", help="why it is closed (goes into the resolved notice)")
    p.set_defaults(func=_incidents)
