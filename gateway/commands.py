"""Signing remote commands for devices with the gateway's Ed25519 key, with per-device sequence numbers.

The envelope and the signed bytes are defined once (:mod:`spd_common.command_schema`),
so the verifier and the signer cannot drift apart. Sequence numbers are
allocated from the gateway store (``command_seq``), one counter per device,
committed before the command is signed, so they never repeat after a restart.
"""

from __future__ import annotations

import base64
import os
import secrets
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.store import GatewayStore
from spd_common.command_schema import COMMAND_VERSION, MAX_LIFETIME_MS, CommandKind, signing_bytes
from spd_common.wire import canonical, check_id

DEFAULT_LIFETIME_MS = {CommandKind.UNLOCK: 60_000, CommandKind.DESIRED_STATE: 7 * 86_400_000,
                       CommandKind.LOCKDOWN: 60_000, CommandKind.ROTATE_CREDENTIALS: 300_000}


class SigningError(ValueError):
    """A command cannot be signed as asked (bad id, lifetime beyond the device's limit)."""

    reason = "signing_error"


def generate_signing_key(path: str | Path) -> Ed25519PrivateKey:
    """Create the gateway's command-signing key (mode 0600); refuses to overwrite one."""
    key = Ed25519PrivateKey.generate()
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def load_signing_key(path: str | Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path} is not an Ed25519 private key")
    return key


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class CommandSigner:
    """Builds and signs command envelopes."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def sign(self, kind: CommandKind, *, device: str, site: str, seq: int, requested_by: str,
             args: dict[str, Any] | None = None, lifetime_ms: int | None = None,
             now_ms: int | None = None) -> bytes:
        """The signed payload, ready to publish on the device's ``cmd`` topic."""
        check_id("device", device)
        check_id("site", site)
        life = DEFAULT_LIFETIME_MS[kind] if lifetime_ms is None else lifetime_ms
        if not 0 < life <= MAX_LIFETIME_MS[kind]:
            raise SigningError(f"lifetime {life} ms is outside (0, {MAX_LIFETIME_MS[kind]}] for {kind.value}")
        iat = int(time.time() * 1000) if now_ms is None else now_ms
        doc: dict[str, Any] = {
            "v": COMMAND_VERSION, "kind": kind.value, "device": device, "site": site, "seq": seq,
            "iat": iat, "exp": iat + life, "nonce": secrets.token_hex(12), "by": requested_by, "args": args or {},
        }
        doc["sig"] = base64.b64encode(self._key.sign(signing_bytes(doc))).decode()
        return canonical(doc)


class CommandSequence:
    """Per-device command sequence numbers, durable in the gateway store."""

    def __init__(self, store: GatewayStore) -> None:
        self.store = store

    def next(self, device: str) -> int:
        return self.store.devices.next_command_seq(device)
