"""The ingest writer: a bounded queue between paho's network thread and one thread that commits groups.

paho's network thread only puts each message on the queue; the ``ingest-writer`` thread takes everything
queued (many batches of many devices, up to ``max_group`` messages) and hands it to the handler as one
group, which the ingest service stores in one transaction before it sends any ack (group commit).

The queue is bounded. The broker sends the gateway at most ``capacity`` unacknowledged messages (the
client's MQTT 5 Receive Maximum, see :class:`gateway.ingest.IngestService`), and a message is acknowledged
at the MQTT level only once the group holding it was handled, so in normal operation the queue never
overflows and the rest waits at the broker. If a broker does not honour the Receive Maximum, a full queue
blocks the network thread in :meth:`GroupWriter.put` — it stops reading the socket, and TCP holds the broker
back — instead of dropping a message or growing without bound.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Generic, TypeVar

from spd_common.heartbeat import HeartbeatRegistry

log = logging.getLogger(__name__)

WRITER_DEADLINE_S = 90.0
"""One pass of the writer: a group's transaction, which may wait 30 s on a busy store, and its acks."""

M = TypeVar("M")


@dataclass(slots=True)
class WriterStats:
    groups: int = 0
    messages: int = 0
    largest_group: int = 0
    full_waits: int = 0  # times a put found the queue full and waited (a broker ignoring Receive Maximum)


class GroupWriter(Generic[M]):
    """A bounded queue of messages and the thread that hands them, a group at a time, to ``handle``."""

    def __init__(
        self,
        handle: Callable[[list[M]], None],
        *,
        capacity: int = 256,
        max_group: int = 256,
        name: str = "ingest-writer",
        heartbeats: HeartbeatRegistry | None = None,
        idle_wait_s: float = 0.5,
        weight: Callable[[M], int] | None = None,
        max_group_weight: int = 0,
        turn: Callable[[], AbstractContextManager[None]] | None = None,
    ) -> None:
        """``weight``, ``max_group_weight``: a group also ends once its messages weigh this much (e.g. bytes),
        so a group of many small batches can be large and one of large batches stays bounded. ``turn``:
        what the writer waits for before it takes a group (see :meth:`run_once`)."""
        if capacity < 1 or max_group < 1:
            raise ValueError("capacity and max_group must be at least 1")
        self.capacity = capacity
        self.max_group = max_group
        self._weight = weight
        self.max_group_weight = max_group_weight
        self.stats = WriterStats()
        self._handle = handle
        self._turn = turn
        self._queue: queue.Queue[M] = queue.Queue(maxsize=capacity)
        self._idle_wait_s = idle_wait_s
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beat = (heartbeats or HeartbeatRegistry()).heartbeat(name, deadline_s=WRITER_DEADLINE_S)

    def put(self, message: M) -> None:
        """Queue a message; blocks while the queue is full (the caller stops reading its socket meanwhile)."""
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            self.stats.full_waits += 1
            while not self._stop.is_set():
                try:
                    self._queue.put(message, timeout=0.5)
                    return
                except queue.Full:
                    continue

    def queued(self) -> int:
        return self._queue.qsize()

    def _group_from(self, first: M) -> list[M]:
        """``first`` and what is queued now, at most ``max_group`` messages (and ``max_group_weight``)."""
        group = [first]
        weighed = self._weight is not None and self.max_group_weight > 0
        load = self._weight(group[0]) if self._weight is not None and weighed else 0
        while len(group) < self.max_group and (not weighed or load < self.max_group_weight):
            try:
                group.append(self._queue.get_nowait())
            except queue.Empty:
                break
            if self._weight is not None and weighed:
                load += self._weight(group[-1])
        return group

    def run_once(self, timeout_s: float = 0.0) -> int:
        """Hand one group to the handler; the number of messages in it.

        With a ``turn`` (the store's writers' turn), the writer waits for it once the first message is
        there, and takes the group when it has it: what came meanwhile is in the group, not left for
        the next turn."""
        try:
            first = self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return 0
        with self._turn() if self._turn is not None else nullcontext():
            group = self._group_from(first)
            try:
                self._handle(group)
            except Exception:  # a bug in the handler: logged; its messages are left unacknowledged
                log.exception("%s: a group of %d messages failed", self._name, len(group))
        self.stats.groups += 1
        self.stats.messages += len(group)
        self.stats.largest_group = max(self.stats.largest_group, len(group))
        return len(group)

    # ------------------------------------------------------------ thread

    def start(self) -> GroupWriter[M]:
        self._beat.watch()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after the group in hand; what is still queued is left (unacknowledged at the broker, resent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._beat.retire()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._beat()
            self.run_once(self._idle_wait_s)
