"""Type stub of the compiled charging bridge (same call as gateway.bridge._twin.charge_compact)."""

from collections.abc import MutableSet, Sequence
from typing import Any

from gateway.bridge.types import BridgeConfig, Catalog, CompactBatch

def charge_compact(
    events: Sequence[Any], catalog: Catalog, consumed: MutableSet[str], config: BridgeConfig
) -> CompactBatch: ...
