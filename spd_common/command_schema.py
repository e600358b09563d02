"""The signed-command schema both sides speak: the gateway signs (``gateway.commands``), the device verifies
(``device.remote``).

An envelope::

    {"v":1, "kind":"unlock", "device":"CAB01", "site":"H1", "seq":42,
     "iat":<ms>, "exp":<ms>, "nonce":"<hex>", "by":"nurse.li", "args":{...}, "sig":"<base64>"}

``sig`` is Ed25519 over :func:`signing_bytes`; each kind has a maximum lifetime (``exp - iat``).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Final

from spd_common.wire import canonical

COMMAND_VERSION: Final = 1


class CommandKind(StrEnum):
    UNLOCK = "unlock"  # open the cabinet door once (args: {"seconds": n})
    DESIRED_STATE = "desired_state"  # retained: versioned config, catalog and allow-list
    LOCKDOWN = "lockdown"  # lock every door and refuse every badge, or lift it (args: {"on": bool, "reason": str})
    ROTATE_CREDENTIALS = "rotate_credentials"  # new key and certificate (args: {"url": enrolment service})


MAX_LIFETIME_MS: Final[Mapping[CommandKind, int]] = {
    CommandKind.UNLOCK: 120_000,
    CommandKind.DESIRED_STATE: 30 * 86_400_000,
    CommandKind.LOCKDOWN: 120_000,
    CommandKind.ROTATE_CREDENTIALS: 600_000,
}


class Component(StrEnum):
    """What a desired-state push carries, each with its own version."""

    CONFIG = "config"
    CATALOG = "catalog"
    ALLOWLIST = "allowlist"


def signing_bytes(doc: Mapping[str, Any]) -> bytes:
    """The bytes the gateway signs: the canonical JSON of every field except ``sig``."""
    return canonical({k: v for k, v in doc.items() if k != "sig"})
