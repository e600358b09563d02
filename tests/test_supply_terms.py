"""Supply terms: suppliers, purchase contracts by date, registration certificates, VBP categories."""

from __future__ import annotations

from collections.abc import Callable

from gateway.data.terms import OPEN_ENDED, ContractRow, RegistrationRow, SupplierRow, VbpCategoryRow, VbpItemRow
from gateway.store import GatewayStore


def test_the_contract_in_force_on_a_day_is_the_latest_started_one(open_store: Callable[[], GatewayStore]) -> None:
    store = open_store()
    store.terms.upsert_contracts([
        ContractRow("S1", "06901234567892", 120_000, "2026-01-01", "2026-06-30", "C-1"),
        ContractRow("S1", "06901234567892", 98_000, "2026-07-01", OPEN_ENDED, "C-2"),
    ])
    assert store.terms.contract_on("06901234567892", "2025-12-31") is None
    first = store.terms.contract_on("06901234567892", "2026-06-30")
    second = store.terms.contract_on("06901234567892", "2026-11-15")
    assert first is not None and first.purchase_price_fen == 120_000
    assert second is not None and (second.purchase_price_fen, second.contract_no) == (98_000, "C-2")
    # an import again of the same contract updates it, it does not add a second
    store.terms.upsert_contracts([ContractRow("S1", "06901234567892", 97_500, "2026-07-01", OPEN_ENDED, "C-2a")])
    assert [c.purchase_price_fen for c in store.terms.contracts("06901234567892")] == [120_000, 97_500]


def test_suppliers_registrations_and_vbp_round_trip(open_store: Callable[[], GatewayStore]) -> None:
    store = open_store()
    store.terms.upsert_suppliers([SupplierRow("S1", "Acme Medical", "LIC-9", "2027-03-01")])
    store.terms.upsert_suppliers([SupplierRow("S1", "Acme Medical Ltd", "LIC-9", "2028-03-01")])
    store.terms.upsert_registrations([RegistrationRow("06901234567892", "REG-1", "2026-12-20")])
    store.terms.upsert_vbp_categories([VbpCategoryRow("coronary-stent", 2026, "Coronary stents", 1200)])
    store.terms.upsert_vbp_items([VbpItemRow("06901234567892", "coronary-stent", True)])
    assert store.terms.suppliers() == [SupplierRow("S1", "Acme Medical Ltd", "LIC-9", "2028-03-01")]
    assert store.terms.registrations() == [RegistrationRow("06901234567892", "REG-1", "2026-12-20")]
    assert store.terms.vbp_categories(2026) == [VbpCategoryRow("coronary-stent", 2026, "Coronary stents", 1200)]
    assert store.terms.vbp_categories(2025) == []
    assert store.terms.vbp_items() == [VbpItemRow("06901234567892", "coronary-stent", True)]


def test_a_stock_movement_is_recorded_once_per_source(open_store: Callable[[], GatewayStore]) -> None:
    from gateway.data.stock import TAKE, USE, MovementRow

    store = open_store()
    take = MovementRow("CB01:7", 1_000, TAKE, "CB01", "CARD", "06901234567892", "L1", "S1", -1, "N1", "", "CB01", 7)
    use = MovementRow("HH01:3", 2_000, USE, "dept:CARD", "CARD", "06901234567892", "L1", "S1", -1, "N1", "A9",
                      "HH01", 3)
    store.stock.record([take, use])
    store.stock.record([take])  # the same event projected again
    assert store.stock.movements(0, 10_000) == [take, use]
    assert store.stock.movements(0, 10_000, [USE]) == [use]
    assert store.stock.movements(1_001, 2_000) == []
