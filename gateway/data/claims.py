"""Which live gateway instance sends which pending charge, when several share one store (``charge_claims``).

Every live instance renews a membership lease (``leases``: ``member:<client id>``). An instance claims the
pending charges that no live instance holds (unclaimed, or claimed by one whose membership ran out: a killed
instance's charges are taken over one lease time after it died), and sends only what it holds. A patient's
charges go out in outbox order: a charge is not claimed while an earlier pending charge of the same admission
is held by another live instance. Claims are made one transaction at a time (the engine's ``serialize``:
SQLite's write lock, a PostgreSQL advisory lock), so two instances never claim the same charge, and a claim
is only ever moved from an instance that is no longer live. A claim ends with its charge (accepted, parked,
voided: the owner's next claim pass drops it) or when its instance stops.
"""

from __future__ import annotations

from gateway.data.charges import OutboxCharge
from gateway.data.engine import Engine

MEMBER_PREFIX = "member:"

_COLUMNS = "c.id, c.charge_id, c.device, c.seq, c.admission, c.message, c.attempts, c.next_attempt_at, c.line"


def member_lease(owner: str) -> str:
    """The name of ``owner``'s membership lease."""
    return f"{MEMBER_PREFIX}{owner}"


class ClaimStore:
    """The ``charge_claims`` table."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def claim_due(self, owner: str, *, now: float, limit: int) -> list[OutboxCharge]:
        """Claim for ``owner`` what no live instance holds; the pending charges it holds now, in outbox order."""
        with self._engine.transaction() as db:
            self._engine.serialize(db, "charge_claims")
            db.execute("DELETE FROM charge_claims WHERE owner = ? AND NOT EXISTS (SELECT 1 FROM charges c "
                       "WHERE c.charge_id = charge_claims.charge_id AND c.status = 'pending')", (owner,))
            others = [str(r[0]) for r in db.execute(
                "SELECT holder FROM leases WHERE name LIKE 'member:%' AND expires_at > ? AND holder <> ?",
                (now, owner)).fetchall()]
            held_by_others = ""
            blocked: dict[str, int] = {}  # admission -> its first pending charge another live instance holds
            if others:
                marks = ", ".join("?" * len(others))
                held_by_others = f" AND (k.owner IS NULL OR k.owner NOT IN ({marks}))"
                blocked = {str(a): int(i) for a, i in db.execute(
                    "SELECT c.admission, MIN(c.id) FROM charge_claims k JOIN charges c ON c.charge_id = k.charge_id "
                    f"WHERE c.status = 'pending' AND k.owner IN ({marks}) GROUP BY c.admission", others).fetchall()}
            rows = db.execute(
                f"SELECT {_COLUMNS}, k.owner FROM charges c LEFT JOIN charge_claims k ON k.charge_id = c.charge_id "
                f"WHERE c.status = 'pending'{held_by_others} ORDER BY c.id LIMIT ?", (*others, limit)).fetchall()
            # a patient's later charge waits while an earlier one is another live instance's
            mine = [r for r in rows if blocked.get(str(r[4]), int(r[0]) + 1) > int(r[0])]
            if others:  # of what no live instance holds, a fair share (in outbox order): the live instances
                # split the work; the instance that queues the charges is woken first and would take it all
                free = [r for r in mine if r[9] != owner]
                left = {str(r[1]) for r in free[-(-len(free) // (len(others) + 1)):]} if free else set()
                mine = [r for r in mine if str(r[1]) not in left]
            taken = [(str(r[1]), owner, now) for r in mine if r[9] != owner]
            if taken:
                db.executemany("INSERT INTO charge_claims (charge_id, owner, claimed_at) VALUES (?, ?, ?) "
                               "ON CONFLICT (charge_id) DO UPDATE SET owner = excluded.owner, "
                               "claimed_at = excluded.claimed_at", taken)
        return [OutboxCharge(*r[:9]) for r in mine]

    def release(self, owner: str) -> int:
        """Give up every claim of ``owner`` (it stops); how many."""
        with self._engine.transaction() as db:
            return int(db.execute("DELETE FROM charge_claims WHERE owner = ?", (owner,)).rowcount)

    def holders(self) -> dict[str, int]:
        """Per owner, how many pending charges it holds."""
        rows = self._engine.query("SELECT k.owner, COUNT(*) FROM charge_claims k JOIN charges c "
                                  "ON c.charge_id = k.charge_id WHERE c.status = 'pending' GROUP BY k.owner")
        return {str(o): int(n) for o, n in rows}

    def held(self, owner: str) -> set[str]:
        """The charges ``owner`` has claimed and not let go: pending, or answered and not yet cleared by its
        next claim pass. After a crash, only these can reach the HIS a second time."""
        return {str(r[0]) for r in self._engine.query("SELECT charge_id FROM charge_claims WHERE owner = ?", (owner,))}
