"""The nurse's station state machine: log-in and out, patient context, charge and return, every refusal recorded."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path
from typing import Any

import pytest

from device.cabinet.allowlist import AllowList
from device.catalog_cache import CatalogCache
from device.config import HandheldConfig, parse_config_text
from device.eventlog import EventLog
from device.handheld_runtime.station import Key, Mode, ScanStation, Tone
from device.scan_policy import ConsumedSerials, ScanPolicy
from device.udi.wristband import WristbandFormat
from hw_sim.udi_gen import make_gtin, make_udi
from spd_common.allowlist import Badge, Role, hash_pin
from spd_common.catalog_doc import DOC_SCHEMA, content_digest
from spd_common.toml_config import ConfigError

_rng = random.Random(3)
STENT, GAUZE = make_gtin(_rng), make_gtin(_rng)
IN_HOUSE, DISCHARGED = "ZY0000000001", "ZY0000000002"
PIN_HASH = hash_pin("4321", n=2**4)


def udi(gtin: str = STENT, serial: str = "S1", *, expiry: dt.date | None = None) -> str:
    return make_udi(gtin=gtin, lot="L1", serial=serial, expiry=expiry or dt.date.today() + dt.timedelta(days=300),
                    symbology="]d2")


def catalog_doc() -> dict[str, Any]:
    item = {"item_code": "HC1", "charge_code": "C1", "spec": "", "manufacturer": "", "price_fen": 100,
            "chargeable": True, "high_value": True, "supplier": "", "vbp": False, "vbp_price_fen": None}
    doc: dict[str, Any] = {
        "schema": DOC_SCHEMA, "version": 1, "generated_at": "", "dept": None,
        "items": [{**item, "gtin": STENT, "name": "Stent"}, {**item, "gtin": GAUZE, "name": "Gauze"}],
        "recalled_lots": [], "dept_stock": {"ICU-2": [STENT]}, "consumed_serials": [],
        "patients": {"in_house": [IN_HOUSE], "discharged": [DISCHARGED]},
    }
    doc["digest"] = content_digest(doc)
    return doc


class Rig:
    def __init__(self, tmp: Path, **config: Any) -> None:
        self.log = EventLog(tmp / "events.db", device="HH01")
        cache = CatalogCache(tmp / "catalog.json")
        cache.apply(catalog_doc())
        self.policy = ScanPolicy(cache, ConsumedSerials(tmp / "consumed.db"))
        allow = AllowList.from_entries([Badge("04A1", "N0001", Role.NURSE),
                                        Badge("04A2", "N0002", Role.NURSE, PIN_HASH),
                                        Badge("04FF", "R0001", Role.RESTOCKER)])
        cfg = HandheldConfig(dept="ICU-2", **{"idle_logout_s": 300.0, "patient_hold_s": 600.0, **config})
        fmt = WristbandFormat.from_mapping(cfg.wristband) if cfg.wristband else None
        self.station = ScanStation(cfg, eventlog=self.log, allowlist=allow, policy=self.policy, wristband_format=fmt)
        self.now = 0.0

    def scan(self, text: str, after_s: float = 1.0) -> Any:
        self.now += after_s
        return self.station.on_scan(text, self.now)

    def tick(self, after_s: float) -> Any:
        self.now += after_s
        return self.station.tick(self.now)

    def events(self) -> list[tuple[str, Any]]:
        out = []
        for e in self.log.events():
            out.append((e.kind, e.body.get("result") if e.kind == "access" else
                        e.body.get("reason") if e.kind == "refused_scan" else None))
        return out


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def test_a_round_charges_to_the_patient_in_context_and_a_return_gives_the_item_back(rig: Rig) -> None:
    assert rig.scan("]C004A1").title == "HELLO N0001"
    assert rig.scan(f"]C0{IN_HOUSE}").title == "PATIENT"
    v = rig.scan(udi())
    assert (v.ok, v.title, v.tone) == (True, "CHARGED", Tone.OK)
    assert "Stent (serial S1) charged to ZY0000000001" in v.message
    assert rig.station.on_key(Key.RETURN_MODE, rig.now).title == "RETURN MODE"
    assert rig.scan(udi()).title == "RETURNED"
    assert rig.station.view.mode is Mode.RETURN
    assert rig.station.on_key(Key.LOGOUT, rig.now).title == "LOGGED OUT"
    assert rig.events() == [("access", "granted"), ("consume", None), ("return_unused", None),
                            ("access", "logged_out")]
    consume = rig.log.events()[1]
    assert consume.body["operator"] == "N0001" and consume.body["admission"] == IN_HOUSE


def test_every_refusal_is_told_in_words_and_recorded(rig: Rig) -> None:
    assert rig.scan(udi()).title == "NOT LOGGED IN"
    assert rig.scan("]C0CAFE99").title == "UNKNOWN BADGE"
    assert rig.scan("]C004FF").title == "NOT ALLOWED"  # a restocker does not charge patients
    rig.scan("]C004A1")
    assert rig.scan(udi()).title == "NO PATIENT"
    assert rig.scan(f"]C0{DISCHARGED}").title == "DISCHARGED"
    assert rig.scan("]C0ZY0000000099").title == "NOT ADMITTED"
    assert rig.station.view.patient is None  # a refused wristband opens no context
    rig.scan(f"]C0{IN_HOUSE}")
    expired = rig.scan(udi(serial="S2", expiry=dt.date.today() - dt.timedelta(days=1)))
    assert (expired.title, expired.tone) == ("EXPIRED", Tone.REFUSED) and "Do not use" in expired.message
    assert rig.scan(udi(GAUZE, "S3")).title == "WRONG DEPT"
    assert rig.scan(udi(make_gtin(_rng), "S4")).title == "UNKNOWN ITEM"
    assert rig.scan(udi(serial="S5")).title == "CHARGED"
    assert rig.scan(udi(serial="S5")).title == "ALREADY USED"
    assert rig.scan("]C0not a code at all").title == "NOT READ"
    assert rig.events() == [
        ("refused_scan", "not_logged_in"), ("access", "refused"), ("access", "refused"), ("access", "granted"),
        ("refused_scan", "no_patient"), ("refused_scan", "patient_discharged"), ("refused_scan", "patient_unknown"),
        ("refused_scan", "expired"), ("refused_scan", "not_stocked_in_dept"), ("refused_scan", "unknown_item"),
        ("consume", None), ("refused_scan", "serial_already_consumed"), ("refused_scan", "unreadable")]


def test_a_pin_badge_waits_for_the_pin_typed_on_the_console(rig: Rig) -> None:
    assert rig.scan("]C004A2").title == "TYPE YOUR PIN"
    assert rig.station.view.pin_for == "N0002"
    assert rig.station.on_console_line("1111", rig.now).title == "WRONG PIN"
    assert rig.station.user is None
    rig.scan("]C004A2")
    assert rig.tick(31).title == "PIN TIMED OUT"
    assert rig.station.on_console_line("N0002", rig.now).title == "TYPE YOUR PIN"  # staff id + PIN
    assert rig.station.on_console_line("4321", rig.now).title == "HELLO N0002"
    assert rig.station.on_console_line("ZY0000000001", rig.now + 1).title == "USE THE SCANNER"
    assert [r for _, r in rig.events()] == ["refused", "refused", "granted"]


def test_a_staff_id_without_a_pin_cannot_log_in_by_typing(rig: Rig) -> None:
    assert rig.station.on_console_line("N0001", 1.0).title == "NO PIN"
    assert rig.station.on_console_line("N9999", 2.0).title == "UNKNOWN STAFF ID"


def test_idle_log_out_and_the_patient_context_closes_after_its_hold(tmp_path: Path) -> None:
    rig = Rig(tmp_path, idle_logout_s=300.0, patient_hold_s=60.0)
    rig.scan("]C004A1")
    rig.scan(f"]C0{IN_HOUSE}")
    assert rig.tick(59) is None
    assert rig.scan(udi()).title == "CHARGED"  # an item scan keeps the patient open
    assert rig.tick(59) is None
    assert rig.tick(2).title == "PATIENT CLOSED"
    assert rig.scan(udi(serial="S2")).title == "NO PATIENT"
    assert rig.tick(299) is None
    v = rig.tick(2)
    assert (v.title, v.reason) == ("LOGGED OUT", "idle")
    assert rig.events()[-1] == ("access", "logged_out")
    assert rig.log.events()[-1].body["reason"] == "idle"


def test_return_mode_falls_back_to_charge_mode(tmp_path: Path) -> None:
    rig = Rig(tmp_path, return_mode_s=30.0)
    rig.scan("]C004A1")
    assert rig.scan("]C0SPD-MODE-RETURN").title == "RETURN MODE"
    assert rig.tick(31).title == "CHARGE MODE"
    assert rig.station.view.mode is Mode.CHARGE


def test_another_nurse_badge_hands_the_station_over_and_a_lockdown_logs_out(rig: Rig) -> None:
    rig.scan("]C004A1")
    rig.scan(f"]C0{IN_HOUSE}")
    rig.station.on_console_line("N0002", rig.now)
    assert rig.station.on_console_line("4321", rig.now).title == "HELLO N0002"
    assert rig.station.view.patient is None  # the next nurse scans her own patient
    assert rig.station.set_lockdown("stolen handheld", rig.now).title == "LOGGED OUT"
    assert rig.scan("]C004A1").title == "LOCKED DOWN"
    rig.station.set_lockdown(None, rig.now)
    assert rig.scan("]C004A1").title == "HELLO N0001"
    assert [r for _, r in rig.events()] == ["granted", "logged_out", "granted", "logged_out", "refused", "granted"]


def test_the_handheld_section_is_strict(tmp_path: Path) -> None:
    base = '[device]\nid = "HH01"\nsite = "H1"\nkind = "handheld"\n[handheld]\ndept = "ICU-2"\n'
    cfg = parse_config_text(base + 'scanner_ports = ["/dev/spd-scanner0"]\n[handheld.codes]\nlogout = "BYE-CARD"\n'
                            '[handheld.wristband]\npattern = "(?P<admission>ZY[0-9]{10})\\\\|(?P<initials>[A-Z]{2})"\n',
                            base_dir=tmp_path)
    assert cfg.handheld is not None
    assert (cfg.handheld.scanner_ports, cfg.handheld.codes.logout) == (("/dev/spd-scanner0",), "BYE-CARD")
    assert cfg.handheld.allowlist_file == tmp_path / "allowlist.json"
    for bad, key in ((base + "idle_logout_s = 1\n", "handheld.idle_logout_s"),
                     (base + "scaner_ports = []\n", "handheld.scaner_ports"),
                     (base + '[handheld.codes]\nlogout = "SPD-MODE-RETURN"\n', "handheld.codes"),
                     (base + '[handheld.wristband]\npattern = "ZY"\n', "handheld.wristband")):
        with pytest.raises(ConfigError) as err:
            parse_config_text(bad, base_dir=tmp_path)
        assert err.value.key == key


def test_wristband_initials_and_ward_come_from_named_groups(tmp_path: Path) -> None:
    fmt = {"pattern": r"(?P<admission>ZY[0-9]{10})\|(?P<initials>[A-Z]{2})\|(?P<ward>[A-Z0-9-]+)"}
    rig = Rig(tmp_path, wristband=fmt)
    rig.scan("]C004A1")
    rig.scan(f"]C0{IN_HOUSE}|ZS|ICU-2")
    p = rig.station.view.patient
    assert p is not None and (p.admission, p.initials, p.ward) == (IN_HOUSE, "ZS", "ICU-2")


def test_the_example_handheld_config_parses() -> None:
    from device.config import load_config

    cfg = load_config(Path(__file__).parent.parent / "deploy" / "examples" / "handheld.toml")
    assert cfg.kind == "handheld" and cfg.handheld is not None and cfg.handheld.dept == "ICU-2"
    assert WristbandFormat.from_mapping(cfg.handheld.wristband or {}).name == "ward-bands-2024"


def test_a_log_that_cannot_be_written_is_told_as_not_saved_and_nothing_is_charged(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    from device.eventlog import LogWriteFailed

    rig.scan("]C004A1")
    rig.scan(f"]C0{IN_HOUSE}")
    before = rig.log.last_seq

    def full_disk(*_args: object, **_kwargs: object) -> object:
        raise LogWriteFailed("disk full")

    monkeypatch.setattr(rig.log, "append", full_disk)
    v = rig.scan(udi())
    assert (v.ok, v.title, v.reason) == (False, "NOT SAVED", "log_unavailable")
    assert "NOTHING was recorded" in v.message
    monkeypatch.undo()
    assert rig.log.last_seq == before
    assert rig.scan(udi()).title == "CHARGED"  # the same item, once the log takes writes again


def test_the_census_gives_initials_and_ward_when_the_wristband_carries_only_the_admission(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    doc = catalog_doc()
    doc["patients"]["records"] = {IN_HOUSE: {"initials": "Z.S.", "ward": "ICU-2", "dept": "ICU-2", "bed": "07"}}
    doc["version"] = 2
    doc["digest"] = content_digest(doc)
    rig.policy.cache.apply(doc)
    rig.scan("]C004A1")
    v = rig.scan(f"]C0{IN_HOUSE}")
    p = rig.station.view.patient
    assert p is not None and (p.admission, p.initials, p.ward) == (IN_HOUSE, "Z.S.", "ICU-2")
    assert "Z.S. ICU-2" in v.message
