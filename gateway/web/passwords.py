"""Password hashes for the screen's accounts: scrypt (as the devices' PINs, :mod:`spd_common.allowlist`), salted.

Stored as ``scrypt$N$r$p$salt$hash``; verification reads the cost from the stored text, so raising the cost
later leaves old hashes valid.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
MIN_LENGTH = 10
MAX_LENGTH = 256


class WeakPassword(ValueError):
    """A password refused before it is hashed."""


def check_password_rules(password: str, *, username: str) -> None:
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"a password has at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise WeakPassword(f"a password has at most {MAX_LENGTH} characters")
    if password.lower() == username.lower():
        raise WeakPassword("a password is not the account's name")


def hash_password(password: str, *, n: int = SCRYPT_N) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored``; False for a mismatch or a stored text that is not a hash."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt" or len(password) > MAX_LENGTH:
        return False
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, digest = bytes.fromhex(parts[4]), bytes.fromhex(parts[5])
        got = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(digest),
                             maxmem=256 * 1024 * 1024)
    except ValueError:
        return False
    return hmac.compare_digest(got, digest)


# a hash to verify against when the account does not exist, so a sign-in takes as long either way
DUMMY_HASH = hash_password(secrets.token_hex(16))
