"""One reader of the HIS outbox for all lanes: each pending row is read once and handed to its lane.

Before, every lane read every lane's pending rows on each pass and kept its own, so the rows read grew with
the number of lanes. The feed reads for all of them and keeps each lane's rows in a buffer (outbox order):

* each :meth:`OutboxFeed.take` reads only the rows queued since the last read (``id`` after the feed's
  watermark, an index range on ``charges (status, id)``) — unless the calling lane has a pass's worth
  waiting already — adds them to their lanes' buffers and hands the calling lane its buffer; the rows
  are that lane's (*held*) until it gives back what it did not finish;
* a full read of the pending rows rebuilds the buffers when nothing is held or buffered (it costs what a
  read of the new rows costs then), every ``resync_s`` seconds, and after :meth:`OutboxFeed.invalidate`
  (the lane lost and regained the right to send): it picks up rows made pending again outside the
  lanes (``spd-gateway charges resend``) and drops rows finished elsewhere;
* a held row is never put in a buffer again until its lane gives it back, and a lane gives back only rows
  it did not finish, after their outcome is committed: so no row is handed to two lanes, or twice to one,
  and no charge is sent twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gateway.his.lanes import lane_of
from gateway.store import GatewayStore, OutboxCharge


@dataclass(slots=True)
class FeedStats:
    full_reads: int = 0
    new_reads: int = 0
    rows_read: int = 0


class OutboxFeed:
    """The outbox rows of every lane, read by one reader (see the module's description)."""

    def __init__(self, store: GatewayStore, lanes: int, *, read_limit: int = 500, resync_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic,
                 due: Callable[[int], list[OutboxCharge]] | None = None) -> None:
        """``due(limit)``: with several gateway instances on one store, the pending charges this instance
        claimed (:mod:`gateway.data.claims`); then every take reads them all (claiming new ones as it goes),
        since other instances change what is pending at any time."""
        if lanes < 1:
            raise ValueError("a feed needs at least one lane")
        self.store = store
        self.lanes = lanes
        self.read_limit = read_limit * lanes
        self.resync_s = resync_s
        self.stats = FeedStats()
        self._clock = clock
        self._lock = threading.Lock()
        self._buffers: list[list[OutboxCharge]] = [[] for _ in range(lanes)]
        self._held: set[int] = set()
        self._watermark = 0
        self._resync_at = 0.0  # the first take reads everything
        self._due = due

    def invalidate(self) -> None:
        """Read everything again at the next take (the rows may have been sent by another instance)."""
        with self._lock:
            self._resync_at = 0.0

    def take(self, lane: int) -> list[OutboxCharge]:
        """The lane's pending rows in outbox order; they are the lane's until :meth:`give_back`."""
        with self._lock:
            idle = not self._held and not any(self._buffers)
            if self._due is not None or idle or self._clock() >= self._resync_at:
                self._read_all()
            elif len(self._buffers[lane]) < self.read_limit // self.lanes:  # else it has a pass's worth already
                self._read_new()
            rows, self._buffers[lane] = self._buffers[lane], []
            self._held.update(r.id for r in rows)
            return rows

    def give_back(self, lane: int, taken: Iterable[OutboxCharge], unfinished: list[OutboxCharge],
                  voided: Iterable[str] = (), still_held: Iterable[int] = ()) -> None:
        """The lane is done with ``taken``: ``unfinished`` (still pending, in order) goes back to its buffer.

        ``voided``: charge ids no longer pending (credits voided with a charge the lane parked); dropped
        from the buffer if they wait there. ``still_held``: row ids that stay held (accepted, their record
        not yet committed: the HIS recorder releases them, :meth:`release`).
        """
        gone = set(voided)
        keep = set(still_held)
        with self._lock:
            self._held.difference_update(r.id for r in taken if r.id not in keep)
            kept = {r.id: r for r in unfinished if r.charge_id not in gone}
            rest = [r for r in self._buffers[lane] if r.charge_id not in gone and r.id not in kept]
            self._buffers[lane] = sorted([*kept.values(), *rest], key=lambda r: r.id)

    def release(self, ids: Iterable[int]) -> None:
        """Rows whose outcome is committed (by the HIS recorder): no longer held."""
        with self._lock:
            self._held.difference_update(ids)

    def held(self) -> int:
        with self._lock:
            return len(self._held)

    def _place(self, row: OutboxCharge) -> None:
        self._buffers[lane_of(row.admission, self.lanes)].append(row)

    def _read_new(self) -> None:
        rows = self.store.charges.pending_charges_after(after_id=self._watermark, limit=self.read_limit)
        self.stats.new_reads += 1
        self.stats.rows_read += len(rows)
        queued = {r.id for buffer in self._buffers for r in buffer} if rows else set()
        for row in rows:
            if row.id not in self._held and row.id not in queued:
                self._place(row)
        if rows:
            self._watermark = rows[-1].id

    def _read_all(self) -> None:
        rows = self._due(self.read_limit) if self._due is not None else self.store.pending_charges(
            limit=self.read_limit)
        self.stats.full_reads += 1
        self.stats.rows_read += len(rows)
        self._buffers = [[] for _ in range(self.lanes)]
        for row in rows:
            if row.id not in self._held:
                self._place(row)
        if len(rows) == self.read_limit:  # more are pending: the reads of new rows go on from the last one
            self._watermark = rows[-1].id
        elif rows:
            self._watermark = max(self._watermark, rows[-1].id)
        self._resync_at = self._clock() + self.resync_s
