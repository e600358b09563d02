"""People and integrations of the supervisor's screen: accounts, sessions, API tokens, alarm acknowledgements.

Only hashes of secrets are stored: a password's scrypt hash (made by :mod:`gateway.web.passwords`), a
session's or token's SHA-256 (the random value itself lives only in the browser's cookie or the integration's
configuration). A session row carries its CSRF token and expiry; expired rows are removed as they are met.
"""

from __future__ import annotations

from typing import NamedTuple

from gateway.data.engine import Engine


class AccountRow(NamedTuple):
    username: str
    role: str
    password_hash: str
    disabled: bool
    created_at: float
    changed_at: float


class SessionRow(NamedTuple):
    username: str
    role: str
    csrf: str
    expires_at: float


class TokenRow(NamedTuple):
    name: str
    role: str
    created_at: float
    created_by: str
    revoked_at: float | None


class AckRow(NamedTuple):
    alarm: str
    acked_by: str
    comment: str
    acked_at: float


class AccountStore:
    """The ``web_accounts``, ``web_sessions``, ``web_api_tokens`` and ``alarm_acks`` tables."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # ------------------------------------------------------------ accounts

    def add(self, username: str, role: str, password_hash: str, *, now: float) -> bool:
        """A new account; False when the name is taken (nothing written)."""
        with self._engine.transaction() as db:
            cur = db.execute(
                "INSERT INTO web_accounts (username, role, password_hash, disabled, created_at, changed_at) "
                "VALUES (?, ?, ?, 0, ?, ?) ON CONFLICT (username) DO NOTHING",
                (username, role, password_hash, now, now))
            return cur.rowcount == 1

    def account(self, username: str) -> AccountRow | None:
        rows = self._engine.query("SELECT username, role, password_hash, disabled, created_at, changed_at "
                                  "FROM web_accounts WHERE username = ?", (username,))
        return AccountRow(rows[0][0], rows[0][1], rows[0][2], bool(rows[0][3]), rows[0][4], rows[0][5]) \
            if rows else None

    def accounts(self) -> list[AccountRow]:
        rows = self._engine.query("SELECT username, role, password_hash, disabled, created_at, changed_at "
                                  "FROM web_accounts ORDER BY username")
        return [AccountRow(r[0], r[1], r[2], bool(r[3]), r[4], r[5]) for r in rows]

    def set_password(self, username: str, password_hash: str, *, now: float) -> bool:
        """Change the password and end the account's sessions; False for an unknown account."""
        with self._engine.transaction() as db:
            cur = db.execute("UPDATE web_accounts SET password_hash = ?, changed_at = ? WHERE username = ?",
                             (password_hash, now, username))
            db.execute("DELETE FROM web_sessions WHERE username = ?", (username,))
            return cur.rowcount == 1

    def set_disabled(self, username: str, disabled: bool, *, now: float) -> bool:
        """Disable (ending its sessions) or enable an account; False for an unknown account."""
        with self._engine.transaction() as db:
            cur = db.execute("UPDATE web_accounts SET disabled = ?, changed_at = ? WHERE username = ?",
                             (1 if disabled else 0, now, username))
            if disabled:
                db.execute("DELETE FROM web_sessions WHERE username = ?", (username,))
            return cur.rowcount == 1

    # ------------------------------------------------------------ sessions

    def open_session(self, token_hash: str, username: str, csrf: str, address: str, *, now: float,
                     expires_at: float) -> None:
        with self._engine.transaction() as db:
            db.execute("DELETE FROM web_sessions WHERE expires_at <= ?", (now,))
            db.execute("INSERT INTO web_sessions (token_hash, username, csrf, address, created_at, expires_at) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (token_hash, username, csrf, address, now, expires_at))

    def session(self, token_hash: str, *, now: float) -> SessionRow | None:
        """The live session of an enabled account with this token hash, or None."""
        rows = self._engine.query(
            "SELECT s.username, a.role, s.csrf, s.expires_at FROM web_sessions s JOIN web_accounts a "
            "ON a.username = s.username WHERE s.token_hash = ? AND s.expires_at > ? AND a.disabled = 0",
            (token_hash, now))
        return SessionRow(*rows[0]) if rows else None

    def close_session(self, token_hash: str) -> None:
        with self._engine.transaction() as db:
            db.execute("DELETE FROM web_sessions WHERE token_hash = ?", (token_hash,))

    # ------------------------------------------------------------ API tokens

    def add_token(self, name: str, role: str, token_hash: str, *, by: str, now: float) -> bool:
        """A new token; False when the name is taken."""
        with self._engine.transaction() as db:
            cur = db.execute("INSERT INTO web_api_tokens (name, role, token_hash, created_at, created_by) "
                             "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
                             (name, role, token_hash, now, by))
            return cur.rowcount == 1

    def token(self, token_hash: str) -> TokenRow | None:
        """The token with this hash unless revoked."""
        rows = self._engine.query("SELECT name, role, created_at, created_by, revoked_at FROM web_api_tokens "
                                  "WHERE token_hash = ? AND revoked_at IS NULL", (token_hash,))
        return TokenRow(*rows[0]) if rows else None

    def tokens(self) -> list[TokenRow]:
        rows = self._engine.query("SELECT name, role, created_at, created_by, revoked_at FROM web_api_tokens "
                                  "ORDER BY name")
        return [TokenRow(*r) for r in rows]

    def revoke_token(self, name: str, *, now: float) -> bool:
        with self._engine.transaction() as db:
            cur = db.execute("UPDATE web_api_tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                             (now, name))
            return cur.rowcount == 1

    # ------------------------------------------------------------ alarm acknowledgements

    def acknowledge(self, alarm: str, by: str, comment: str, *, now: float) -> bool:
        """Acknowledge an alarm once; False if it was acknowledged already (the first one stands)."""
        with self._engine.transaction() as db:
            cur = db.execute("INSERT INTO alarm_acks (alarm, acked_by, comment, acked_at) VALUES (?, ?, ?, ?) "
                             "ON CONFLICT (alarm) DO NOTHING", (alarm, by, comment, now))
            return cur.rowcount == 1

    def acks(self) -> dict[str, AckRow]:
        rows = self._engine.query("SELECT alarm, acked_by, comment, acked_at FROM alarm_acks")
        return {str(r[0]): AckRow(*r) for r in rows}
