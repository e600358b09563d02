"""Counters over the whole store, for ``spd-gateway counts`` and the tests."""

from __future__ import annotations

from gateway.data.engine import Engine


def store_counts(engine: Engine) -> dict[str, int]:
    q = {
        "events": "SELECT COUNT(*) FROM events",
        "consume_events": "SELECT COUNT(*) FROM events WHERE kind = 'consume'",
        "quarantined": "SELECT COUNT(*) FROM quarantine",
        "bad_payloads": "SELECT COUNT(*) FROM bad_payloads",
        "chain_breaks": "SELECT COUNT(*) FROM chain_breaks",
        "charges": "SELECT COUNT(*) FROM charges",
        "charges_pending": "SELECT COUNT(*) FROM charges WHERE status = 'pending'",
        "charges_accepted": "SELECT COUNT(*) FROM charges WHERE status = 'accepted'",
        "charges_parked": "SELECT COUNT(*) FROM charges WHERE status = 'parked'",
        "credits_voided": "SELECT COUNT(*) FROM charges WHERE status = 'voided'",
        "charge_rejects": "SELECT COUNT(*) FROM charge_rejects",
        "consumption": "SELECT COUNT(*) FROM consumption",
        "returns": "SELECT COUNT(*) FROM returns",
        "credits_accepted": "SELECT COUNT(*) FROM consumption WHERE credit_id IS NOT NULL",
    }
    return {k: int(engine.query(sql)[0][0]) for k, sql in q.items()}
