"""Helpers of the web tests: a gateway store with accounts of every role, and real events and charges in it."""

from __future__ import annotations

import re
import time
from pathlib import Path

from device.eventlog import EventLog
from gateway.books.projection import catch_up
from gateway.store import GatewayStore
from gateway.web.auth import make_api_token, secret_hash
from gateway.web.passwords import hash_password
from gateway.web.roles import Role
from spd_common.wire import decode_batch, encode_batch

PASSWORD = "a long enough passphrase"
CABINET = "CAB01"
GTIN = "06901234567892"


def add_accounts(store: GatewayStore) -> dict[Role, str]:
    """One account per role (named after it, password :data:`PASSWORD`) and one API token per role."""
    tokens = {}
    for role in Role:
        store.accounts.add(role.value, role.value, hash_password(PASSWORD), now=time.time())
        token = make_api_token(f"{role.value}-tool")
        store.accounts.add_token(f"{role.value}-tool", role.value, secret_hash(token), by="test", now=time.time())
        tokens[role] = token
    return tokens


def add_cabinet_events(store: GatewayStore, tmp: Path) -> None:
    """A cabinet that was restocked with three items, opened by a nurse who took one, and forced once."""
    log = EventLog(tmp / f"{CABINET}.db", device=CABINET)
    events = [
        log.append("restocked", {"epc": "e1", "gtin": GTIN, "serial": "S1", "lot": "L1", "expiry": "2027-01-31",
                                 "dept": "ICU", "role": "restocker"}),
        log.append("restocked", {"epc": "e2", "gtin": GTIN, "serial": "S2", "lot": "L1", "expiry": "2027-03-31",
                                 "dept": "ICU", "role": "restocker"}),
        log.append("restocked", {"epc": "e3", "gtin": GTIN, "serial": "S3", "lot": "L2", "dept": "ICU",
                                 "role": "restocker"}),
        log.append("access", {"result": "granted", "dept": "ICU", "user": "N1", "session": "s1"}),
        log.append("access", {"result": "door_opened", "dept": "ICU", "user": "N1", "session": "s1"}),
        log.append("taken", {"epc": "e2", "gtin": GTIN, "serial": "S2", "dept": "ICU", "user": "N1",
                             "session": "s1", "role": "nurse"}),
        log.append("alarm", {"alarm": "door_forced", "dept": "ICU"}),
    ]
    log.close()
    store.ingest(decode_batch(f"spd/v1/H1/{CABINET}/events", encode_batch("H1", CABINET, events)))
    catch_up(store)  # the stock ledger's projection, as the running gateway's stock-ledger thread does


def add_parked_charge(store: GatewayStore, charge_id: str, *, admission: str = "ZY0001", serial: str = "S9",
                      gtin: str = GTIN) -> None:
    with store.charges.batch() as b:
        b.add_charge(charge_id, "HH01", int(charge_id.rsplit("-", 1)[-1]), admission, f"{gtin}/{serial}", "{}",
                     "MSH|...", time.time())
    store.mark_parked(charge_id, "AE", "admission not known to the HIS")


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)
