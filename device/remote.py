"""Remote commands on the device: verify the gateway's signature, target, lifetime and sequence, then local policy.

A command is a JSON envelope signed by the gateway with Ed25519 (the schema, shared with the gateway,
is :mod:`spd_common.command_schema`)::

    {"v":1, "kind":"unlock", "device":"CAB01", "site":"H1", "seq":42,
     "iat":<ms>, "exp":<ms>, "nonce":"<hex>", "by":"nurse.li", "args":{...}, "sig":"<base64>"}

Checks, in order; the first that fails refuses the command with a stable
:class:`Refusal` code, logs it and records an ``alarm`` event in the log:

1. well-formed envelope of a known version and kind (``malformed``, ``unknown_kind``);
2. a signature (``unsigned``) that verifies with the gateway's key (``bad_signature``);
3. addressed to this device and site (``wrong_device``, ``wrong_site``);
4. issued no later than now + skew (``not_yet_valid``), not expired (``expired``),
   lifetime within the kind's maximum (``lifetime_too_long``);
5. the replay window (``replayed``, ``out_of_order``, ``too_old``);
6. local policy (``policy``).

Replay window semantics: the device keeps the high-water mark ``H``, the
highest sequence it ever accepted, in SQLite with ``synchronous=FULL`` (it
survives restarts and power loss). With window ``W``, a command with
sequence ``s`` is accepted when ``s > H``, or when ``H - W < s <= H`` and
``s`` was never accepted. ``s <= H - W`` is ``too_old``; an ``s`` accepted
before is ``replayed``. The default ``W = 0`` means strictly increasing:
any ``s <= H`` never accepted is ``out_of_order`` (the gateway publishes one
device's commands in order on one QoS 1 topic, so a lower sequence arriving
after a higher one is a replay or a reordering attack). A sequence is
consumed before the command runs, so a crash mid-command cannot re-open it.

A retained desired-state command redelivered on reconnect, with the same
sequence and digest as one already accepted, is recognised and not applied
again; it is not an alarm.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, TypeGuard

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from device.eventlog import EventLog
from spd_common.command_schema import COMMAND_VERSION, MAX_LIFETIME_MS, CommandKind, Component, signing_bytes
from spd_common.durable import write_atomic
from spd_common.wire import EventKind

log = logging.getLogger(__name__)

CLOCK_SKEW_MS: Final = 30_000
_FIELDS = frozenset({"v", "kind", "device", "site", "seq", "iat", "exp", "nonce", "by", "args", "sig"})


class Refusal(StrEnum):
    MALFORMED = "malformed"
    UNKNOWN_KIND = "unknown_kind"
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    WRONG_DEVICE = "wrong_device"
    WRONG_SITE = "wrong_site"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    LIFETIME_TOO_LONG = "lifetime_too_long"
    REPLAYED = "replayed"
    OUT_OF_ORDER = "out_of_order"
    TOO_OLD = "too_old"
    POLICY = "policy"


class RemoteError(Exception):
    """Root of the remote-command errors; ``reason`` is a stable code."""

    reason = "remote_error"


class CommandRefused(RemoteError, PermissionError):
    """A command that failed a check; ``reason`` is a :class:`Refusal` value."""

    def __init__(self, reason: Refusal, detail: str, *, kind: str = "", seq: int = 0) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason.value
        self.refusal = reason
        self.detail = detail
        self.kind = kind
        self.seq = seq


@dataclass(frozen=True, slots=True)
class SignedCommand:
    kind: CommandKind
    device: str
    site: str
    seq: int
    iat_ms: int
    exp_ms: int
    nonce: str
    requested_by: str
    args: dict[str, Any]
    digest: str  # SHA-256 of the signed bytes


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise RemoteError(f"{path} is not an Ed25519 public key")
    return key


def _int(x: Any) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


# ---------------------------------------------------------------- replay window


class ReplayGuard:
    """The persistent high-water mark and the sequences accepted inside the window."""

    KEEP: Final = 1000  # accepted sequences kept for the already-applied check and for audit

    def __init__(self, path: str | Path, *, window: int = 0) -> None:
        if window < 0:
            raise ValueError("window must be >= 0")
        self.window = window
        self._lock = threading.Lock()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(
            "CREATE TABLE IF NOT EXISTS hwm (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL);"
            "CREATE TABLE IF NOT EXISTS accepted (seq INTEGER PRIMARY KEY, digest TEXT NOT NULL, "
            "kind TEXT NOT NULL, at REAL NOT NULL);"
            "INSERT OR IGNORE INTO hwm (id, seq) VALUES (1, 0);"
        )

    @property
    def high_water(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT seq FROM hwm WHERE id = 1").fetchone()[0])

    def already_applied(self, seq: int, digest: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT digest FROM accepted WHERE seq = ?", (seq,)).fetchone()
        return row is not None and row[0] == digest

    def consume(self, cmd: SignedCommand, *, check_only: bool = False) -> None:
        """Accept ``cmd.seq`` into the window (durably), or raise :class:`CommandRefused`."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                (hwm,) = db.execute("SELECT seq FROM hwm WHERE id = 1").fetchone()
                s = cmd.seq
                if s <= hwm:
                    seen = db.execute("SELECT 1 FROM accepted WHERE seq = ?", (s,)).fetchone() is not None
                    if seen:
                        raise CommandRefused(Refusal.REPLAYED, f"sequence {s} was already accepted",
                                             kind=cmd.kind, seq=s)
                    if s <= hwm - self.window:
                        reason = Refusal.OUT_OF_ORDER if self.window == 0 else Refusal.TOO_OLD
                        raise CommandRefused(reason, f"sequence {s} is not above the high-water mark {hwm} "
                                             f"(window {self.window})", kind=cmd.kind, seq=s)
                if not check_only:
                    db.execute("INSERT INTO accepted (seq, digest, kind, at) VALUES (?, ?, ?, ?)",
                               (s, cmd.digest, cmd.kind.value, time.time()))
                    if s > hwm:
                        db.execute("UPDATE hwm SET seq = ? WHERE id = 1", (s,))
                    db.execute("DELETE FROM accepted WHERE seq <= ?", (max(hwm, s) - max(self.KEEP, self.window),))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()


# ---------------------------------------------------------------- verification


class CommandVerifier:
    """Checks 1 to 4 of the module docstring; stateless apart from the clock."""

    def __init__(self, public_key: Ed25519PublicKey, *, device: str, site: str,
                 clock: Callable[[], float] = time.time, skew_ms: int = CLOCK_SKEW_MS) -> None:
        self.public_key = public_key
        self.device = device
        self.site = site
        self._clock = clock
        self.skew_ms = skew_ms

    def verify(self, payload: bytes) -> SignedCommand:
        try:
            doc = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CommandRefused(Refusal.MALFORMED, "payload is not UTF-8 JSON") from None
        if not isinstance(doc, dict):
            raise CommandRefused(Refusal.MALFORMED, "payload is not a JSON object")
        kind_text, seq_raw = str(doc.get("kind", "")), doc.get("seq")
        seq_i = seq_raw if _int(seq_raw) else 0
        if doc.get("v") != COMMAND_VERSION:
            raise CommandRefused(Refusal.MALFORMED, f"command version {doc.get('v')!r}", kind=kind_text, seq=seq_i)
        extra = set(doc) - _FIELDS
        if extra:
            raise CommandRefused(Refusal.MALFORMED, f"unknown fields {sorted(extra)}", kind=kind_text, seq=seq_i)
        sig = doc.get("sig")
        if not sig:
            raise CommandRefused(Refusal.UNSIGNED, "command carries no signature", kind=kind_text, seq=seq_i)
        try:
            raw_sig = base64.b64decode(str(sig), validate=True)
            self.public_key.verify(raw_sig, signing_bytes(doc))
        except (InvalidSignature, binascii.Error, ValueError):
            raise CommandRefused(Refusal.BAD_SIGNATURE, "signature does not verify with the gateway's key",
                                 kind=kind_text, seq=seq_i) from None
        # signed by the gateway: from here the fields are trusted to be what the gateway meant
        try:
            kind = CommandKind(kind_text)
        except ValueError:
            raise CommandRefused(Refusal.UNKNOWN_KIND, f"unknown command kind {kind_text!r}", seq=seq_i) from None
        iat_raw, exp_raw, args = doc.get("iat"), doc.get("exp"), doc.get("args", {})
        if not (seq_i > 0 and _int(iat_raw) and _int(exp_raw) and isinstance(args, dict)
                and isinstance(doc.get("nonce"), str) and isinstance(doc.get("by"), str)):
            raise CommandRefused(Refusal.MALFORMED, "seq, iat, exp, nonce, by or args has the wrong type",
                                 kind=kind, seq=seq_i)
        seq, iat, exp = seq_i, iat_raw, exp_raw
        if doc.get("device") != self.device:
            raise CommandRefused(Refusal.WRONG_DEVICE, f"addressed to {doc.get('device')!r}, this is {self.device!r}",
                                 kind=kind, seq=seq)
        if doc.get("site") != self.site:
            raise CommandRefused(Refusal.WRONG_SITE, f"addressed to site {doc.get('site')!r}, this is {self.site!r}",
                                 kind=kind, seq=seq)
        now = int(self._clock() * 1000)
        if iat > now + self.skew_ms:
            raise CommandRefused(Refusal.NOT_YET_VALID, f"issued {iat - now} ms in the future", kind=kind, seq=seq)
        if now > exp + self.skew_ms:
            raise CommandRefused(Refusal.EXPIRED, f"expired {now - exp} ms ago", kind=kind, seq=seq)
        if exp - iat > MAX_LIFETIME_MS[kind]:
            raise CommandRefused(Refusal.LIFETIME_TOO_LONG, f"lifetime {exp - iat} ms exceeds "
                                 f"{MAX_LIFETIME_MS[kind]} ms for {kind.value}", kind=kind, seq=seq)
        return SignedCommand(kind, self.device, self.site, seq, iat, exp, doc["nonce"], doc["by"], args,
                             hashlib.sha256(signing_bytes(doc)).hexdigest())


# ---------------------------------------------------------------- the device's command handler


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    REFUSED = "refused"
    ALREADY_APPLIED = "already_applied"
    IGNORED = "ignored"  # an empty payload: a cleared retained message


@dataclass(frozen=True, slots=True)
class CommandResult:
    outcome: Outcome
    command: SignedCommand | None = None
    refusal: Refusal | None = None
    detail: str = ""


Policy = Callable[[SignedCommand], str | None]
"""Local policy: returns a refusal detail, or None to allow."""


def allow_kinds(*kinds: CommandKind) -> Policy:
    """A policy that allows only the given kinds (a handheld has no door to unlock)."""

    allowed = frozenset(kinds)

    def policy(cmd: SignedCommand) -> str | None:
        return None if cmd.kind in allowed else f"{cmd.kind.value} is not allowed on this device"

    return policy


@dataclass(slots=True)
class RemoteStats:
    accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    already_applied: int = 0


class RemoteCommands:
    """Verifies incoming command payloads, records every refusal, and runs accepted commands' handlers."""

    def __init__(self, verifier: CommandVerifier, replay: ReplayGuard, eventlog: EventLog, *,
                 handlers: Mapping[CommandKind, Callable[[SignedCommand], None]],
                 policy: Policy | None = None) -> None:
        self.verifier = verifier
        self.replay = replay
        self.log = eventlog
        self.handlers = dict(handlers)
        self.policy = policy or allow_kinds(*handlers)
        self.stats = RemoteStats()

    def handle(self, payload: bytes, *, retained: bool = False) -> CommandResult:
        if not payload:
            return CommandResult(Outcome.IGNORED)
        try:
            cmd = self.verifier.verify(payload)
            if retained and self.replay.already_applied(cmd.seq, cmd.digest):
                self.stats.already_applied += 1
                log.debug("device %s: retained command %d already applied", self.verifier.device, cmd.seq)
                return CommandResult(Outcome.ALREADY_APPLIED, cmd)
            self.replay.consume(cmd, check_only=True)
            denied = self.policy(cmd)
            if denied is not None:
                raise CommandRefused(Refusal.POLICY, denied, kind=cmd.kind, seq=cmd.seq)
            self.replay.consume(cmd)
        except CommandRefused as err:
            return self._refused(err)
        self.stats.accepted += 1
        self.log.append(EventKind.ACCESS.value, {"type": "remote_command", "cmd": cmd.kind.value, "seq": cmd.seq,
                                                 "by": cmd.requested_by, "outcome": Outcome.ACCEPTED.value})
        log.info("device %s: accepted %s command %d from %s", cmd.device, cmd.kind.value, cmd.seq, cmd.requested_by)
        try:
            self.handlers[cmd.kind](cmd)
        except Exception as err:
            log.exception("device %s: %s command %d failed", cmd.device, cmd.kind.value, cmd.seq)
            self.log.append(EventKind.ALARM.value, {"type": "command_failed", "cmd": cmd.kind.value, "seq": cmd.seq,
                                                    "detail": str(err)[:200]})
        return CommandResult(Outcome.ACCEPTED, cmd)

    def _refused(self, err: CommandRefused) -> CommandResult:
        self.stats.refused[err.reason] = self.stats.refused.get(err.reason, 0) + 1
        log.warning("device %s: refused command (kind=%s seq=%d): %s", self.verifier.device, err.kind or "?",
                    err.seq, err)
        self.log.append(EventKind.ALARM.value, {"type": "command_refused", "reason": err.reason,
                                                "detail": err.detail[:200], "cmd": str(err.kind), "seq": err.seq})
        return CommandResult(Outcome.REFUSED, None, err.refusal, err.detail)


# ---------------------------------------------------------------- desired state (config, catalog, allow-list)


class DesiredState:
    """Applies versioned components from a desired-state command to files in ``directory``.

    Each component is written atomically (``{component}.json``, fsynced, then
    renamed) with its version; a component whose version is not newer than
    the applied one is left alone. :meth:`applied` is reported in the
    device's state so the gateway can see what each device runs.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def applied(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in Component:
            p = self.directory / f"{c.value}.json"
            if p.exists():
                out[c.value] = int(json.loads(p.read_text(encoding="utf-8"))["version"])
        return out

    def document(self, component: Component) -> Any:
        p = self.directory / f"{component.value}.json"
        return json.loads(p.read_text(encoding="utf-8"))["doc"] if p.exists() else None

    def apply(self, cmd: SignedCommand) -> list[str]:
        """Write every component that is newer than what is applied; returns their names."""
        components = cmd.args.get("components", {})
        if not isinstance(components, dict):
            raise RemoteError("desired_state args.components must be an object")
        current = self.applied()
        changed = []
        for name, entry in components.items():
            comp = Component(name)
            version = entry.get("version") if isinstance(entry, dict) else None
            if not _int(version):
                raise RemoteError(f"component {name} has no integer version")
            if version <= current.get(comp.value, 0):
                continue
            self._write(comp, {"version": version, "doc": entry.get("doc")})
            changed.append(comp.value)
            log.info("applied %s version %d (command %d)", comp.value, version, cmd.seq)
        return changed

    def _write(self, comp: Component, doc: dict[str, Any]) -> None:
        path = self.directory / f"{comp.value}.json"
        write_atomic(path, json.dumps(doc, ensure_ascii=False, sort_keys=True).encode("utf-8"))
