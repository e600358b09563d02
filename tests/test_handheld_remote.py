"""Signed commands on a handheld: a pushed allow-list and catalog take effect at the next scan; a lockdown logs the
nurse out, refuses every log-in and survives a restart; there is no remote unlock."""

from __future__ import annotations

import datetime as dt
import random
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device.config import parse_config_text
from device.eventlog import EventLog
from device.handheld_runtime.agent import HandheldAgent
from device.handheld_runtime.remote import HandheldRemote
from device.handheld_runtime.station import Verdict
from device.remote_wiring import catalog_cache_path, load_verifier, remote_parts
from device.scan_policy import ConsumedSerials, ScanPolicy
from gateway.commands import CommandSigner, public_key_pem
from hw_sim.udi_gen import make_gtin, make_udi
from spd_common.catalog_doc import DOC_SCHEMA, content_digest
from spd_common.command_schema import CommandKind

DEV, SITE = "HH01", "H1"
STENT = make_gtin(random.Random(4))


def catalog_doc() -> dict[str, Any]:
    """A device catalog: one item stocked in ICU-2, one patient in house and one discharged."""
    doc: dict[str, Any] = {
        "schema": DOC_SCHEMA, "version": 1, "generated_at": "", "dept": None,
        "items": [{"gtin": STENT, "item_code": "HC1", "charge_code": "C1", "name": "Stent", "spec": "",
                   "manufacturer": "", "price_fen": 100, "chargeable": True, "high_value": True, "supplier": "",
                   "vbp": False, "vbp_price_fen": None}],
        "recalled_lots": [], "dept_stock": {"ICU-2": [STENT]}, "consumed_serials": [],
        "patients": {"in_house": ["ZY0000000001"], "discharged": ["ZY0000000002"]},
    }
    doc["digest"] = content_digest(doc)
    return doc


class Station:
    def __init__(self, root: Path, key: Ed25519PrivateKey) -> None:
        (root / "command-key.pem").write_bytes(public_key_pem(key))
        self.cfg = parse_config_text(f"""
[device]
id = "{DEV}"
site = "{SITE}"
kind = "handheld"
data_dir = "data"
[remote]
command_key_file = "command-key.pem"
[handheld]
dept = "ICU-2"
allowlist_file = "data/allowlist.json"
""", source=str(root / "handheld.toml"), base_dir=root)
        assert self.cfg.handheld is not None
        self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.log = EventLog(self.cfg.log_path, device=DEV)
        from device.catalog_cache import CatalogCache

        self.catalog = CatalogCache(catalog_cache_path(self.cfg))
        self.consumed = ConsumedSerials(self.cfg.data_dir / "consumed.db")
        self.agent = HandheldAgent(self.cfg.handheld, eventlog=self.log,
                                   policy=ScanPolicy(self.catalog, self.consumed))
        self.told: list[Verdict] = []
        self.agent.add_verdict_listener(self.told.append)
        verifier = load_verifier(self.cfg)
        assert verifier is not None
        self.remote = HandheldRemote(agent=self.agent, **remote_parts(root / "handheld.toml", self.cfg, verifier,
                                                                      eventlog=self.log, catalog=self.catalog))
        self.agent.start()

    def say(self, text: str) -> Verdict:
        before = len(self.told)
        self.agent.scan_text(text)
        deadline = time.monotonic() + 5
        while len(self.told) == before and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.told[-1]

    def close(self) -> None:
        self.agent.stop()
        self.remote.close()
        self.consumed.close()
        self.log.close()


def _send(station: Station, signer: CommandSigner, kind: CommandKind, seq: int, args: dict[str, Any]) -> None:
    station.remote.on_command(signer.sign(kind, device=DEV, site=SITE, seq=seq, requested_by="ops", args=args), False)


def test_pushes_and_a_lockdown_reach_the_nurse(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    signer = CommandSigner(key)
    s = Station(tmp_path, key)
    try:
        assert s.say("]C004A1B2C3").title == "UNKNOWN BADGE"  # no allow-list yet: nobody logs in
        _send(s, signer, CommandKind.DESIRED_STATE, 1, {"components": {
            "allowlist": {"version": 3, "doc": [{"badge": "04A1B2C3", "user": "N0001", "role": "nurse"}]},
            "catalog": {"version": 1, "doc": catalog_doc()}}})
        assert s.say("]C004A1B2C3").title == "HELLO N0001"
        assert s.say("]C0ZY0000000002").title == "DISCHARGED"  # the pushed census, at the next scan
        s.say("]C0ZY0000000001")
        unknown = make_udi(gtin=make_gtin(random.Random(9)), lot="L1", serial="S1",
                           expiry=dt.date.today() + dt.timedelta(days=99), symbology="]d2")
        assert s.say(unknown).title == "UNKNOWN ITEM"
        _send(s, signer, CommandKind.LOCKDOWN, 2, {"on": True, "reason": "handheld reported stolen"})
        deadline = time.monotonic() + 5
        while s.agent.view.user is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert s.agent.view.user is None and s.agent.view.lockdown == "handheld reported stolen"
        assert s.say("]C004A1B2C3").title == "LOCKED DOWN"
        _send(s, signer, CommandKind.UNLOCK, 3, {"seconds": 5})  # a handheld has no door: refused, recorded
    finally:
        s.close()
    s = Station(tmp_path, key)  # restarted: the lockdown is still in force
    try:
        assert s.say("]C004A1B2C3").title == "LOCKED DOWN"
        _send(s, signer, CommandKind.LOCKDOWN, 4, {"on": False, "reason": ""})
        deadline = time.monotonic() + 5
        while s.agent.view.lockdown is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert s.say("]C004A1B2C3").title == "HELLO N0001"
        bodies = [(e.kind, e.body.get("type"), e.body) for e in s.log.events()]
    finally:
        s.close()
    lockdowns = [b["on"] for k, t, b in bodies if (k, t) == ("access", "lockdown")]
    assert lockdowns == [True, False]
    assert [b["reason"] for k, t, b in bodies if (k, t) == ("access", "logout")] == ["lockdown"]
    assert [b.get("cmd") for k, t, b in bodies if (k, t) == ("alarm", "command_refused")] == ["unlock"]
