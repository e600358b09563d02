"""``spd-gateway import-events``: store a device's exported events exactly once, after verifying the file.

The file is verified whole first (checksum, every hash, every link); then the
events go through :meth:`GatewayStore.ingest` in batches, which is idempotent
on ``(device, seq)`` and checks the link to events already stored. Importing
the same file twice stores nothing the second time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from gateway.store import GatewayStore
from spd_common.export import read_export
from spd_common.wire import MAX_BATCH_EVENTS, Batch

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ImportResult:
    device: str
    site: str
    events: int
    new: int
    duplicates: int
    chain_breaks: list[tuple[int, str]]
    contiguous: int


def import_events(store: GatewayStore, path: str | Path) -> ImportResult:
    """Verify and store an export file; raises :class:`spd_common.export.ExportError` for an untrustworthy file."""
    exp = read_export(path)
    new = dup = 0
    breaks: list[tuple[int, str]] = []
    contiguous = store.contiguous_seq(exp.device)
    for i in range(0, len(exp.events), MAX_BATCH_EVENTS):
        res = store.ingest(Batch(exp.device, exp.site, exp.events[i:i + MAX_BATCH_EVENTS]))
        new += res.new
        dup += res.duplicates
        breaks += res.chain_breaks
        contiguous = res.contiguous
    log.info("imported %s: device %s seq %d..%d, %d new, %d already stored", path, exp.device, exp.first_seq,
             exp.last_seq, new, dup)
    return ImportResult(exp.device, exp.site, len(exp.events), new, dup, breaks, contiguous)
