"""The device's offline copy of the catalog and the gateway's lists, one versioned JSON file applied atomically.

The document (``schema`` = :data:`DOC_SCHEMA`) is built by ``gateway.catalog_export``::

    {"schema": "spd-device-catalog/1", "version": 7, "digest": "sha256:...", "generated_at": "...",
     "dept": "OR-3" | null,
     "items": [{"gtin", "item_code", "charge_code", "name", "spec", "manufacturer", "price_fen",
                "chargeable", "high_value", "supplier", "vbp", "vbp_price_fen"}],
     "recalled_lots": [{"gtin", "lot" ("*" = every lot), "reason"}],
     "lot_expiry": [{"gtin", "lot", "expiry": "YYYY-MM-DD"}],   # optional: for codes without an expiry date
     "dept_stock": {"OR-3": ["<gtin>", ...]},           # departments without a list are absent
     "consumed_serials": ["<gtin>/<serial>", ...],      # consumed items the gateway knows of
     "patients": {"in_house": [...], "discharged": [...],      # null: the gateway cannot tell
                  "discharge_grace_s": 86400,                 # optional (absent: refused at discharge)
                  "records": {"<admission>": {"initials", "ward", "dept", "bed",
                                              "discharged_at": <epoch s> | null}}} | null}   # optional

A discharged patient's wristband stays chargeable for ``discharge_grace_s`` after ``discharged_at``
(the last consumables of a discharge day reach the bill); the device decides with its own clock, so the
grace period ends on time while it is offline. A discharged admission without ``discharged_at``, or a
document without ``discharge_grace_s`` (older gateways), is refused at once, as before. ``records``
carries name initials only (privacy), never a full name. Documents without the optional keys parse.

``digest`` covers everything but ``version``, ``digest`` and ``generated_at``
(:func:`spd_common.catalog_doc.content_digest`).
:meth:`CatalogCache.apply` validates a document completely before it replaces the file (temp file,
fsync, rename, fsync of the directory), so a power cut leaves either the old or the new copy.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from spd_common.catalog_doc import DOC_SCHEMA, content_digest
from spd_common.durable import write_atomic
from spd_common.gtin import is_valid_gtin

log = logging.getLogger(__name__)

ALL_LOTS = "*"


class CatalogCacheError(Exception):
    """Root of the catalog cache errors; `reason` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} [{self.reason}]"


class CatalogDocumentError(CatalogCacheError, ValueError):
    """A pushed document is malformed, fails its digest, or is older than the cached one."""


class CatalogCacheIOError(CatalogCacheError, OSError):
    """The cache file could not be written."""


class PatientStatus(StrEnum):
    """What the cached census says about an admission number."""

    IN_HOUSE = "in_house"
    RECENTLY_DISCHARGED = "recently_discharged"  # discharged, still within the grace period: chargeable
    DISCHARGED = "discharged"  # discharged and past the grace period (or no discharge time known)
    UNKNOWN = "unknown"  # a census is cached and the admission is not in it
    NO_CENSUS = "no_census"  # nothing cached: the device cannot tell


@dataclass(frozen=True, slots=True)
class CachedItem:
    gtin: str
    item_code: str
    charge_code: str
    name: str
    spec: str
    price_fen: int
    chargeable: bool
    high_value: bool
    vbp: bool


@dataclass(frozen=True, slots=True)
class PatientRecord:
    """What the document says of one admission (initials only, never a name)."""

    initials: str = ""
    ward: str = ""
    dept: str = ""
    bed: str = ""
    discharged_at: int | None = None  # epoch seconds


@dataclass(frozen=True, slots=True)
class PatientInfo:
    """One admission as the handheld shows it after the wristband scan."""

    admission: str
    status: PatientStatus
    initials: str
    ward: str
    dept: str
    bed: str
    discharged_at: float | None  # epoch seconds, None while in house (or when the gateway did not say)
    chargeable_until: float | None  # end of the grace period of a discharged patient, None otherwise


@dataclass(frozen=True, slots=True)
class _Snapshot:
    version: int
    digest: str
    dept: str | None
    items: dict[str, CachedItem]
    recalls: dict[tuple[str, str], str]
    expiries: dict[tuple[str, str], dt.date]
    stock: dict[str, frozenset[str]]
    consumed: frozenset[str]
    in_house: frozenset[str] | None
    discharged: frozenset[str] | None
    records: dict[str, PatientRecord]
    grace_s: int | None


class CatalogCache:
    """The cached document, loaded from `path` at start, replaced by `apply`; lookups are lock-free."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._snap: _Snapshot | None = None
        if self.path.exists():
            try:
                self._snap = _snapshot(json.loads(self.path.read_text(encoding="utf-8")))
            except (OSError, ValueError) as err:
                log.error("catalog cache %s unusable (%s); waiting for the gateway to push a new one", self.path, err)

    # -- applying -------------------------------------------------------------------

    def apply(self, doc: Mapping[str, Any]) -> bool:
        """Validate and install a document; False when it is the version already cached.

        Raises :class:`CatalogDocumentError` for a malformed document, a digest mismatch
        (``bad_digest``), an older version (``stale_version``) or the same version with other
        content (``version_conflict``); the cached copy is then left as it was.
        """
        snap = _snapshot(doc)
        with self._lock:
            current = self._snap
            if current is not None:
                if snap.version < current.version:
                    raise CatalogDocumentError(
                        "stale_version", f"version {snap.version} is older than the cached {current.version}"
                    )
                if snap.version == current.version:
                    if snap.digest == current.digest:
                        return False
                    raise CatalogDocumentError(
                        "version_conflict", f"version {snap.version} is cached with other content"
                    )
            self._write(doc)
            self._snap = snap
        log.info("catalog cache: version %d applied (%d items)", snap.version, len(snap.items))
        return True

    def _write(self, doc: Mapping[str, Any]) -> None:
        data = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, data)
        except OSError as err:
            raise CatalogCacheIOError("write_failed", f"cannot write {self.path}: {err}") from err

    # -- lookups --------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._snap is not None

    @property
    def version(self) -> int:
        """The cached version, 0 when nothing is cached."""
        snap = self._snap
        return snap.version if snap is not None else 0

    @property
    def digest(self) -> str | None:
        snap = self._snap
        return snap.digest if snap is not None else None

    def item(self, gtin: str) -> CachedItem | None:
        snap = self._snap
        return snap.items.get(gtin) if snap is not None else None

    def recall_reason(self, gtin: str, lot: str | None) -> str | None:
        """The recall reason when this lot (or every lot of the GTIN) is recalled, else None."""
        snap = self._snap
        if snap is None:
            return None
        if lot is not None and (gtin, lot) in snap.recalls:
            return snap.recalls[(gtin, lot)]
        return snap.recalls.get((gtin, ALL_LOTS))

    def lot_expiry(self, gtin: str, lot: str | None) -> dt.date | None:
        """The expiry date the gateway's list gives for this lot, or None when it has none."""
        snap = self._snap
        return snap.expiries.get((gtin, lot)) if snap is not None and lot is not None else None

    def stock_list(self, dept: str) -> frozenset[str] | None:
        """The GTINs `dept` stocks, or None when no list is cached for it."""
        snap = self._snap
        return snap.stock.get(dept) if snap is not None else None

    def consumed_at_gateway(self, gtin: str, serial: str) -> bool:
        snap = self._snap
        return snap is not None and f"{gtin}/{serial}" in snap.consumed

    def patient_status(self, admission: str, *, now: float | None = None) -> PatientStatus:
        """The census verdict for `admission` at `now` (epoch seconds, default the device's clock)."""
        return _patient_status(self._snap, admission, time.time() if now is None else now)

    def patient(self, admission: str, *, now: float | None = None) -> PatientInfo | None:
        """Admission, initials, ward, department and status for the screen; None when the census lacks it."""
        snap = self._snap  # one snapshot for the whole answer, even if a push lands meanwhile
        status = _patient_status(snap, admission, time.time() if now is None else now)
        if snap is None or status in (PatientStatus.NO_CENSUS, PatientStatus.UNKNOWN):
            return None
        rec = snap.records.get(admission, PatientRecord())
        discharged = status is not PatientStatus.IN_HOUSE
        return PatientInfo(admission, status, rec.initials, rec.ward, rec.dept, rec.bed,
                           float(rec.discharged_at) if discharged and rec.discharged_at is not None else None,
                           _chargeable_until(snap, admission) if discharged else None)


def _patient_status(snap: _Snapshot | None, admission: str, now: float) -> PatientStatus:
    if snap is None or snap.in_house is None or snap.discharged is None:
        return PatientStatus.NO_CENSUS
    if admission in snap.in_house:
        return PatientStatus.IN_HOUSE
    if admission in snap.discharged:
        until = _chargeable_until(snap, admission)
        return PatientStatus.RECENTLY_DISCHARGED if until is not None and now < until else PatientStatus.DISCHARGED
    return PatientStatus.UNKNOWN


def _chargeable_until(snap: _Snapshot, admission: str) -> float | None:
    rec = snap.records.get(admission)
    if rec is None or rec.discharged_at is None or snap.grace_s is None:
        return None
    return float(rec.discharged_at + snap.grace_s)


# -- validation ---------------------------------------------------------------------------


def _bad(message: str, reason: str = "bad_document") -> CatalogDocumentError:
    return CatalogDocumentError(reason, message)


def _str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise _bad(f"{where}.{key} must be a string")
    return value


def _int(obj: Mapping[str, Any], key: str, where: str, *, optional: bool = False) -> int | None:
    value = obj.get(key)
    if value is None and optional:
        return None
    if type(value) is not int or value < 0:
        raise _bad(f"{where}.{key} must be a non-negative integer")
    return value


def _flag(obj: Mapping[str, Any], key: str, where: str) -> bool:
    value = obj.get(key)
    if type(value) is not bool:
        raise _bad(f"{where}.{key} must be true or false")
    return value


def _strings(value: Any, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(f"{where} must be a list of strings")
    return frozenset(value)


def _gtin(value: str, where: str) -> str:
    if len(value) != 14 or not value.isascii() or not value.isdigit() or not is_valid_gtin(value):
        raise _bad(f"{where} {value!r} is not a valid GTIN-14")
    return value


def _snapshot(doc: Any) -> _Snapshot:
    """Check every field of a document and build its lookup form."""
    if not isinstance(doc, Mapping):
        raise _bad("document must be a JSON object")
    if doc.get("schema") != DOC_SCHEMA:
        raise _bad(f"schema must be {DOC_SCHEMA!r}, got {doc.get('schema')!r}", "unknown_schema")
    version = _int(doc, "version", "doc")
    assert version is not None
    if version < 1:
        raise _bad("doc.version must be at least 1")
    digest = _str(doc, "digest", "doc")
    if digest != content_digest(doc):
        raise _bad("digest does not match the content", "bad_digest")
    dept = doc.get("dept")
    if dept is not None and not isinstance(dept, str):
        raise _bad("doc.dept must be a string or null")
    raw_items = doc.get("items")
    if not isinstance(raw_items, list):
        raise _bad("doc.items must be a list")
    items: dict[str, CachedItem] = {}
    for i, it in enumerate(raw_items):
        where = f"items[{i}]"
        if not isinstance(it, Mapping):
            raise _bad(f"{where} must be an object")
        gtin = _gtin(_str(it, "gtin", where), f"{where}.gtin")
        if gtin in items:
            raise _bad(f"{where}: GTIN {gtin} appears twice")
        price = _int(it, "price_fen", where)
        assert price is not None
        _int(it, "vbp_price_fen", where, optional=True)
        for key in ("manufacturer", "supplier"):
            _str(it, key, where)
        items[gtin] = CachedItem(
            gtin, _str(it, "item_code", where), _str(it, "charge_code", where), _str(it, "name", where),
            _str(it, "spec", where), price, _flag(it, "chargeable", where), _flag(it, "high_value", where),
            _flag(it, "vbp", where),
        )
    raw_recalls = doc.get("recalled_lots")
    if not isinstance(raw_recalls, list):
        raise _bad("doc.recalled_lots must be a list")
    recalls: dict[tuple[str, str], str] = {}
    for i, rec in enumerate(raw_recalls):
        where = f"recalled_lots[{i}]"
        if not isinstance(rec, Mapping):
            raise _bad(f"{where} must be an object")
        lot = _str(rec, "lot", where)
        if not lot:
            raise _bad(f"{where}.lot is empty")
        recalls[(_gtin(_str(rec, "gtin", where), f"{where}.gtin"), lot)] = _str(rec, "reason", where)
    expiries: dict[tuple[str, str], dt.date] = {}
    raw_expiry = doc.get("lot_expiry", [])
    if not isinstance(raw_expiry, list):
        raise _bad("doc.lot_expiry must be a list")
    for i, rec in enumerate(raw_expiry):
        where = f"lot_expiry[{i}]"
        if not isinstance(rec, Mapping):
            raise _bad(f"{where} must be an object")
        try:
            day = dt.date.fromisoformat(_str(rec, "expiry", where))
        except ValueError:
            raise _bad(f"{where}.expiry must be a date YYYY-MM-DD") from None
        expiries[(_gtin(_str(rec, "gtin", where), f"{where}.gtin"), _str(rec, "lot", where))] = day
    raw_stock = doc.get("dept_stock")
    if not isinstance(raw_stock, Mapping):
        raise _bad("doc.dept_stock must be an object")
    stock = {str(d): _strings(g, f"dept_stock[{d!r}]") for d, g in raw_stock.items()}
    consumed = _strings(doc.get("consumed_serials"), "doc.consumed_serials")
    patients = doc.get("patients")
    in_house: frozenset[str] | None = None
    discharged: frozenset[str] | None = None
    records: dict[str, PatientRecord] = {}
    grace_s: int | None = None
    if patients is not None:
        if not isinstance(patients, Mapping):
            raise _bad("doc.patients must be an object or null")
        in_house = _strings(patients.get("in_house"), "patients.in_house")
        discharged = _strings(patients.get("discharged"), "patients.discharged")
        grace_s = _int(patients, "discharge_grace_s", "patients", optional=True)
        records = _patient_records(patients.get("records"))
    return _Snapshot(version, digest, dept, items, recalls, expiries, stock, consumed, in_house, discharged, records,
                     grace_s)


def _patient_records(raw: Any) -> dict[str, PatientRecord]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _bad("patients.records must be an object")
    out: dict[str, PatientRecord] = {}
    for admission, rec in raw.items():
        where = f"patients.records[{admission!r}]"
        if not isinstance(rec, Mapping):
            raise _bad(f"{where} must be an object")
        texts = {k: rec.get(k, "") for k in ("initials", "ward", "dept", "bed")}
        if not all(isinstance(t, str) for t in texts.values()):
            raise _bad(f"{where}: initials, ward, dept and bed must be strings")
        out[str(admission)] = PatientRecord(texts["initials"], texts["ward"], texts["dept"], texts["bed"],
                                            _int(rec, "discharged_at", where, optional=True))
    return out
