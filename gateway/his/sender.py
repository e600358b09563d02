"""The HIS sender: drains the durable charge outbox through a HIS adapter.

Order: charges go out in outbox order, and a patient's later charge never
overtakes an earlier one still waiting for a retry. A HIS answers one
message per connection at a time, so the gateway runs several *lanes*, each
its own sender and connection; a patient always maps to the same lane
(CRC-32 of the admission number), which keeps each patient's charges in
order while different patients' charges go out in parallel. Outcomes:

* accepted (HL7 AA, HTTP 2xx) → charge accepted and the consumption record
  written, in one transaction (a lane records a few dozen acceptances per transaction);
* rejected (AE/AR, HTTP 4xx) → parked with the HIS's reason, for a person to
  look at and re-send (``spd-gateway charges resend``);
* a row the adapter cannot send at all (it raises `HisMessageError` while
  rendering it, or fails unexpectedly) → parked with the adapter's reason, at
  once: no attempt of it can ever succeed, and the rows behind it in the lane
  go on (``spd-gateway charges list --status parked`` shows the reason);
* retry (timeout, connection refused, an ACK for another message) → the
  charge waits with exponential backoff, and the lane pauses as a whole,
  because a HIS that does not answer one charge will not answer the next.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum

from gateway.his.adapter import HisAdapter, HisAdapterClosed, HisError, HisOutcome, HisResult
from gateway.his.feed import OutboxFeed
from gateway.his.lanes import lane_of as lane_of  # its former home; the feed uses it from gateway.his.lanes
from gateway.his.recorder import AcceptRecorder
from gateway.store import GatewayStore, OutboxCharge
from spd_common.backoff import backoff_delay
from spd_common.heartbeat import HeartbeatRegistry

log = logging.getLogger(__name__)


class OutboxPayload(StrEnum):
    """What an adapter is handed as the message: its class attribute ``outbox_payload`` (HL7 when absent)."""

    HL7 = "hl7"  # the rendered HL7 v2 message, MSH-10 = the charge id
    CHARGE_LINE = "charge_line"  # the charge line as JSON (the outbox ``line`` column)


@dataclass(slots=True)
class SenderStats:
    sent: int = 0
    accepted: int = 0
    parked: int = 0
    retries: int = 0


LANE_DEADLINE_S = 60.0  # a lane beats at least every pass (≤ 5 s); store writes may wait 30 s on a busy store


def send_deadline_s(adapter: HisAdapter) -> float:
    """How long one ``adapter.send`` may legitimately block: two attempts (a kept connection found dead,
    then a new one), each a connect, a write and the wait for the answer, plus the store write after it."""
    timeout = float(getattr(adapter, "timeout_s", 30.0))
    connect = float(getattr(adapter, "connect_timeout_s", timeout))
    return 2 * (connect + 2 * timeout) + LANE_DEADLINE_S


class HisSender:
    """One thread (one lane) sending its share of the outbox, one charge at a time, as the feed hands it."""

    def __init__(
        self,
        store: GatewayStore,
        adapter: HisAdapter,
        *,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        idle_wait_s: float = 0.2,
        rng: random.Random | None = None,
        may_run: Callable[[], bool] = lambda: True,
        lane: int = 0,
        lanes: int = 1,
        heartbeats: HeartbeatRegistry | None = None,
        feed: OutboxFeed | None = None,
        accept_group: int = 64,
        accept_wait_s: float = 0.05,
        on_round_trip: Callable[[float, HisOutcome], None] | None = None,
        recorder: AcceptRecorder | None = None,
    ) -> None:
        """``feed``: the outbox reader the lanes share (one per gateway); a sender without one reads for itself.

        ``on_round_trip(seconds, outcome)``: after every send, how long it took from the call to the answer
        (or to the timeout) and what came of it; the metrics' HIS histogram (gateway/metrics.py).

        ``accept_group``, ``accept_wait_s``: the lane records the HIS's acceptances in one transaction per
        this many, or once the oldest unrecorded one is this old (and always before a rejection, a retry
        and the end of a pass). A crash in between re-sends those few charges, which the HIS recognises by
        their charge id (MSH-10) as it does a re-send after a crash between the answer and its record.

        ``recorder``: the gateway's HIS recorder (:mod:`gateway.his.recorder`), shared by its lanes: the lane
        hands it the acceptances and goes on sending, and their rows stay held by the feed until it wrote
        them. Without one the lane writes them itself, as above, before it sends on.
        """
        if not 0 <= lane < lanes:
            raise ValueError(f"lane {lane} is not in 0..{lanes - 1}")
        if feed is not None and feed.lanes != lanes:
            raise ValueError(f"the feed serves {feed.lanes} lanes, not {lanes}")
        self.feed = feed if feed is not None else OutboxFeed(store, lanes)
        self.store = store
        self.adapter = adapter
        self.lane = lane
        self.lanes = lanes
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.idle_wait_s = idle_wait_s
        self.stats = SenderStats()
        self._rng = rng or random.Random()
        self._may_run = may_run
        self._pause_until = 0.0
        self._failures = 0
        self.accept_group = accept_group
        self.accept_wait_s = accept_wait_s
        self._on_round_trip = on_round_trip
        self.recorder = recorder
        # the lane's health as the incident checks read it (gateway/notify.py): since when every send failed
        # without an answer (None: the last send was answered), when the HIS last answered, and why it did not
        self.failing_since: float | None = None
        self.answered_at: float | None = None
        self.last_error = ""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # the lane's heartbeat; a send declares its own, longer deadline (a slow HIS is not a wedged lane)
        self._beat = (heartbeats or HeartbeatRegistry()).heartbeat(f"his-sender-{lane}", deadline_s=LANE_DEADLINE_S)
        self.send_deadline_s = send_deadline_s(adapter)

    def notify(self) -> None:
        self._wake.set()

    def _backoff(self, attempts: int) -> float:
        return backoff_delay(attempts, first_s=self.backoff_base_s, ceiling_s=self.backoff_max_s, rng=self._rng)

    def run_once(self, now: float | None = None) -> int:
        """Send what is due of the lane's rows (from the feed); returns the number of charges sent (any outcome)."""
        t = time.time() if now is None else now
        if not self._may_run():
            self.feed.invalidate()  # when this instance may send again, another may have sent meanwhile
            return 0
        if t < self._pause_until:
            return 0
        rows = self.feed.take(self.lane)
        finished: set[int] = set()
        recording: set[int] = set()  # accepted, handed to the recorder: held by the feed until written
        retried: dict[int, OutboxCharge] = {}
        voided: set[str] = set()  # credits voided with a charge parked in this pass: no longer pending
        try:
            return self._send_due(rows, t, finished, retried, voided, recording)
        finally:
            unfinished = [retried.get(r.id, r) for r in rows
                          if r.id not in finished and r.id not in recording and r.charge_id not in voided]
            self.feed.give_back(self.lane, rows, unfinished, voided, still_held=recording)

    def _send_due(self, rows: list[OutboxCharge], t: float, finished: set[int], retried: dict[int, OutboxCharge],
                  voided: set[str], recording: set[int]) -> int:
        sent = 0
        blocked: set[str] = set()
        accepted: list[tuple[OutboxCharge, HisResult]] = []  # answered AA, not yet recorded
        oldest = t
        try:
            for charge in rows:
                if self._stop.is_set() or not self._may_run():
                    break
                if charge.admission in blocked or charge.charge_id in voided:
                    continue
                if charge.next_attempt_at > t:
                    blocked.add(charge.admission)
                    continue
                with self._beat.blocking(self.send_deadline_s):
                    started = time.monotonic()
                    result = self._send(charge)
                    if self._on_round_trip is not None:
                        self._on_round_trip(time.monotonic() - started, result.outcome)
                if result.outcome is HisOutcome.RETRY:
                    self.failing_since = self.failing_since or time.time()
                    self.last_error = result.detail
                elif not (result.code or "").startswith(("unsendable:", "adapter_error")):  # the HIS itself answered
                    self.failing_since = None
                    self.answered_at = time.time()
                sent += 1
                self.stats.sent += 1
                if result.outcome is HisOutcome.ACCEPTED:
                    accepted.append((charge, result))
                    self._failures = 0
                    t = time.time()
                    if len(accepted) == 1:
                        oldest = t
                    due = len(accepted) >= self.accept_group or t - oldest >= self.accept_wait_s
                    if self.recorder is not None or due:  # handing over costs nothing: at once
                        self._record_accepted(accepted, finished, recording)
                    continue
                self._record_accepted(accepted, finished, recording)
                if result.outcome is HisOutcome.REJECTED:
                    log.warning("charge %s parked: %s: %s", charge.charge_id, result.code, result.detail)
                    voided.update(self.store.mark_parked(charge.charge_id, result.code, result.detail))
                    finished.add(charge.id)
                    self.stats.parked += 1
                    self._failures = 0
                else:
                    self.stats.retries += 1
                    self._failures += 1
                    delay = self._backoff(charge.attempts)
                    log.info("charge %s: will retry in %.1fs (%s)", charge.charge_id, delay, result.detail)
                    next_at = time.time() + delay
                    self.store.mark_retry(charge.charge_id, result.detail, next_at)
                    retried[charge.id] = replace(charge, attempts=charge.attempts + 1, next_attempt_at=next_at)
                    blocked.add(charge.admission)
                    self._pause_until = time.time() + self._backoff(self._failures - 1)
                    break
                t = time.time()
        finally:
            self._record_accepted(accepted, finished, recording)
        return sent

    def _record_accepted(self, accepted: list[tuple[OutboxCharge, HisResult]], finished: set[int],
                         recording: set[int]) -> None:
        """Record what the HIS accepted, many in one transaction (or hand it to the recorder); the rows stay
        held until then."""
        if not accepted:
            return
        if self.recorder is not None:
            recording.update(c.id for c, _ in accepted)
            self.recorder.add(list(accepted))
        else:
            self.store.charges.mark_accepted_many([(c.charge_id, r.code, r.his_ref) for c, r in accepted])
            finished.update(c.id for c, _ in accepted)
        self.stats.accepted += len(accepted)
        accepted.clear()

    def _send(self, charge: OutboxCharge) -> HisResult:
        """One attempt; a row the adapter cannot send at all comes back REJECTED with the adapter's reason.

        `HisMessageError` (and any other `HisError` but `HisAdapterClosed`) means the adapter refused
        this row's content, so every later attempt would fail the same way. Any other exception is a
        fault of the adapter with this row; it is parked too rather than retried, because retrying
        would hold every row behind it in the lane for ever. Either way nothing reached the HIS that
        it could book (or, if it did, a re-send is recognised by the charge id).
        """
        try:
            return self.adapter.send(charge.charge_id, self._message(charge))
        except HisAdapterClosed:
            raise
        except HisError as err:
            return HisResult(HisOutcome.REJECTED, f"unsendable:{err.reason}",
                             f"{type(self.adapter).__name__} cannot send this row: {err.message}")
        except Exception as err:
            log.exception("HIS adapter failed on %s", charge.charge_id)
            return HisResult(HisOutcome.REJECTED, "adapter_error",
                             f"{type(self.adapter).__name__} failed on this row: {type(err).__name__}: {err}")

    def _message(self, charge: OutboxCharge) -> str:
        if getattr(self.adapter, "outbox_payload", OutboxPayload.HL7) is not OutboxPayload.CHARGE_LINE:
            return charge.message
        return charge.line

    # ------------------------------------------------------------ thread

    def start(self) -> HisSender:
        self._beat.watch()
        self._thread = threading.Thread(target=self._run, name=f"his-sender-{self.lane}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        self._beat.retire()
        self.adapter.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._beat()
            try:
                n = self.run_once()
            except Exception:
                log.exception("HIS sender pass failed; retrying")
                n = 0
                self._stop.wait(1.0)
            if n == 0:
                wait = self.idle_wait_s
                if self._pause_until > time.time():
                    wait = min(max(self._pause_until - time.time(), 0.01), 5.0)
                self._wake.wait(wait)
                self._wake.clear()
