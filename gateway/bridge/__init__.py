"""Charging bridge: consumption events to HIS charge lines, compiled hot path with a pure-Python twin.

The compiled extension ``_cbridge`` is imported when it was built; otherwise, or when the
environment variable ``SPD_PUREPYTHON=1`` is set, the pure-Python ``_twin`` is used. Both give
identical output on every input. With ``SPD_REQUIRE_COMPILED=1`` (release builds, ``make test``
with a compiler present) a missing extension is an error, :class:`CompiledBridgeMissing`, even
when ``SPD_PUREPYTHON=1`` picks the twin. ``IMPLEMENTATION`` says which one is in use; ``ConsumedSet`` is
that implementation's set of charged item keys, the only kind its ``charge_compact`` accepts.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from gateway.bridge.expand import expand
from gateway.bridge.types import (
    BatchResult,
    BridgeConfig,
    BridgeError,
    Catalog,
    CatalogError,
    CatalogItem,
    ChargeLine,
    ChargeReject,
    CompactBatch,
    ConfigError,
    ConsumedKeys,
    CreditRefused,
    CreditRequest,
    EventTuple,
    ItemFields,
    ItemKeyError,
    RejectReason,
    UdiUnreadable,
    is_item_key,
)

logger = logging.getLogger(__name__)


class CompiledBridgeMissing(ImportError):
    """``SPD_REQUIRE_COMPILED=1`` and the compiled extension cannot be imported."""


def _choose() -> tuple[ModuleType, str]:
    from gateway.bridge import _twin

    required = os.environ.get("SPD_REQUIRE_COMPILED") == "1"
    if os.environ.get("SPD_PUREPYTHON") == "1" and not required:
        return _twin, "pure"
    try:
        from gateway.bridge import _cbridge
    except ImportError as err:
        if required:
            found = importlib.util.find_spec("gateway.bridge._cbridge") is not None
            why = f"does not load: {err}" if found else "was not built"
            raise CompiledBridgeMissing(
                f"SPD_REQUIRE_COMPILED=1 but the compiled charging bridge (gateway.bridge._cbridge) {why}; "
                "rebuild it with a C compiler and Cython (pip install -e . --no-build-isolation, or make clean test)"
            ) from err
        logger.debug("compiled charging bridge not built; using the pure-Python twin")
        return _twin, "pure"
    if os.environ.get("SPD_PUREPYTHON") == "1":
        return _twin, "pure"  # the twin by choice; SPD_REQUIRE_COMPILED only checked the extension is there
    return _cbridge, "compiled"


_impl, IMPLEMENTATION = _choose()

# SPD_BRIDGE_TRACE names a file to which each process appends the test module (from pytest's
# PYTEST_CURRENT_TEST, which the processes a test starts inherit) whose run reached the implementation.
# ``make test`` runs the whole suite with the compiled bridge and then, with the twin, the modules listed
# (tools/run-tests.sh). Unset, as in production, it costs one test of a module constant per batch.
_TRACE = os.environ.get("SPD_BRIDGE_TRACE", "")
_traced: set[str] = set()


def _reached() -> None:
    module = os.environ.get("PYTEST_CURRENT_TEST", "").partition("::")[0]
    if module and module not in _traced:
        _traced.add(module)
        with open(_TRACE, "a", encoding="utf-8") as trace:
            trace.write(module + "\n")


def new_consumed_set(keys: Sequence[str] | set[str] = ()) -> ConsumedKeys:
    """A set of charged item keys (``"<gtin>/<serial>"``) of the implementation in use."""
    if _TRACE:
        _reached()
    consumed: ConsumedKeys = _impl.ConsumedSet(keys)
    return consumed


def charge_compact(
    events: Sequence[Any], catalog: Catalog, consumed: ConsumedKeys, config: BridgeConfig
) -> CompactBatch:
    """The hot path: see :class:`CompactBatch`; ``consumed`` must come from :func:`new_consumed_set`."""
    if _TRACE:
        _reached()
    result: CompactBatch = _impl.charge_compact(events, catalog, consumed, config)
    return result


def credit_compact(credits: Sequence[Any], config: BridgeConfig) -> CompactBatch:
    """Render credit messages (FT1-6 ``CD``) for :class:`CreditRequest` tuples, in the compact layout."""
    if _TRACE:
        _reached()
    result: CompactBatch = _impl.credit_compact(credits, config)
    return result


def charge_batch(
    events: Sequence[EventTuple], catalog: Catalog, consumed: ConsumedKeys, config: BridgeConfig
) -> BatchResult:
    """Charge a batch of consumption events.

    Returns charge lines for accepted events, rejects (with a reason) for refused ones, and the
    non-chargeable consumptions apart. ``consumed`` (keys ``"<gtin>/<serial>"``, from
    :func:`new_consumed_set`) is checked for re-used serials and gains the keys of the new charge lines.
    """
    return expand(events, catalog, charge_compact(events, catalog, consumed, config))


def read_item(udi: str, *, reference_year: int) -> ItemFields:
    """GTIN, lot, serial and expiry of a UDI, by the rules of the charge path (for returns, not the hot path).

    ``reference_year`` decides the century of two-digit years (GS1 rule). Raises :class:`UdiUnreadable`.
    """
    from gateway.bridge import _twin

    try:
        parsed = _twin.parse_udi(udi.encode("utf-8", "surrogatepass"), reference_year)
    except _twin.UdiRefused as refused:
        raise UdiUnreadable(str(refused)) from None
    expiry = parsed.expiry.isoformat() if parsed.expiry is not None else ""
    return ItemFields(parsed.gtin.decode("ascii"), parsed.lot.decode("ascii"), parsed.serial.decode("ascii"), expiry)


def render_credit(credit: CreditRequest, config: BridgeConfig) -> str:
    """The HL7 DFT^P03 credit message for one request; :class:`CreditRefused` when the request is invalid."""
    compact = credit_compact([credit], config)
    if compact.status[0]:
        reason = RejectReason.from_code(compact.status[0])
        raise CreditRefused(compact.details[0], reason=str(reason))
    return compact.messages.decode("utf-8")


__all__ = [
    "IMPLEMENTATION",
    "BatchResult",
    "BridgeConfig",
    "BridgeError",
    "Catalog",
    "CatalogError",
    "CatalogItem",
    "ChargeLine",
    "ChargeReject",
    "CompactBatch",
    "CompiledBridgeMissing",
    "ConfigError",
    "ConsumedKeys",
    "CreditRefused",
    "CreditRequest",
    "EventTuple",
    "ItemFields",
    "ItemKeyError",
    "RejectReason",
    "UdiUnreadable",
    "charge_batch",
    "charge_compact",
    "credit_compact",
    "expand",
    "is_item_key",
    "new_consumed_set",
    "read_item",
    "render_credit",
]
