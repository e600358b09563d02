"""Charging bridge: consumption events to HIS charge lines, compiled hot path with a pure-Python twin.

The compiled extension ``_cbridge`` is imported when it was built; otherwise, or when the
environment variable ``SPD_PUREPYTHON=1`` is set, the pure-Python ``_twin`` is used. Both give
identical output on every input. ``IMPLEMENTATION`` says which one is in use.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, MutableSet, Sequence
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
    EventTuple,
    RejectReason,
)

logger = logging.getLogger(__name__)

ChargeCompact = Callable[[Sequence[Any], Catalog, MutableSet[str], BridgeConfig], CompactBatch]


def _choose() -> tuple[ChargeCompact, str]:
    from gateway.bridge import _twin

    if os.environ.get("SPD_PUREPYTHON") == "1":
        return _twin.charge_compact, "pure"
    try:
        from gateway.bridge import _cbridge
    except ImportError:
        logger.debug("compiled charging bridge not built; using the pure-Python twin")
        return _twin.charge_compact, "pure"
    compiled: ChargeCompact = _cbridge.charge_compact
    return compiled, "compiled"


charge_compact, IMPLEMENTATION = _choose()


def charge_batch(
    events: Sequence[EventTuple], catalog: Catalog, consumed: MutableSet[str], config: BridgeConfig
) -> BatchResult:
    """Charge a batch of consumption events.

    Returns charge lines for accepted events, rejects (with a reason) for refused ones, and the
    non-chargeable consumptions apart. ``consumed`` (keys ``"<gtin>/<serial>"``) is checked for
    re-used serials and gains the keys of the new charge lines.
    """
    return expand(events, catalog, charge_compact(events, catalog, consumed, config))


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
    "ConfigError",
    "EventTuple",
    "RejectReason",
    "charge_batch",
    "charge_compact",
    "expand",
]
