"""Heartbeats of the loops a process cannot live without; the systemd watchdog pings only while all of them beat.

A process can be alive and useless: a deadlocked cabinet loop, a sync thread
stuck on a lock, an HIS lane that never returns from a socket call. systemd
(``WatchdogSec=``) restarts a service only when its pings stop, so the pings
(:class:`spd_common.sdnotify.Watchdog`) are tied to these heartbeats: every loop
that must run registers here with a deadline and beats once per pass; when one
misses its deadline the pings stop, the journal gets an ERROR naming the loop
and how long it has been silent, and ``STATUS=`` says the same in
``systemctl status``.

A deadline is how long a healthy loop may go without beating, on a slow day:
a SQLite write waiting for its busy timeout (30 s), an MQTT reconnect back-off.
A loop that legitimately blocks longer in one call (an HIS lane waiting for a
slow HIS, up to its timeout) says so around that call with
:meth:`Heartbeat.blocking`, so a healthy-but-slow system never stops the pings.

Adopting it in a new loop (the handheld runtime, a listener):

.. code-block:: python

    class ScanLoop:
        def __init__(self, ..., heartbeats: HeartbeatRegistry | None = None) -> None:
            self._heartbeats = heartbeats or HeartbeatRegistry()   # a private one when nobody watches

        def start(self) -> None:
            self._beat = self._heartbeats.register("handheld-scan", deadline_s=30.0)  # before the thread starts
            threading.Thread(target=self._run, name="handheld-scan", daemon=True).start()

        def _run(self) -> None:
            while not self._stop.is_set():
                self._beat()                                   # once per pass
                with self._beat.blocking(self.timeout_s + 30):  # a call allowed to take longer
                    self.reader.read()
                ...

        def stop(self) -> None:
            self._stop.set()
            ...
            self._beat.retire()            # stopped on purpose: not a wedged loop

and the process's service command hands the same registry to its
``Watchdog(healthy, heartbeats=registry)``. For paho's network thread use
:func:`watch_mqtt_loop`. Names are what the on-call technician reads in the
journal: use the thread's name.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

MQTT_LOOP_DEADLINE_S = 60.0
"""paho's network thread: a pass at least every second while connected; a reconnect (back-off at most 10 s
here, connect timeout, DNS) and a message handler waiting on a busy SQLite store (30 s) fit in a minute."""


@dataclass(frozen=True, slots=True)
class Silent:
    """A loop that missed its deadline: silent for ``silent_s`` seconds, allowed ``deadline_s``."""

    name: str
    silent_s: float
    deadline_s: float

    def __str__(self) -> str:
        return f"{self.name} silent for {self.silent_s:.0f} s (deadline {self.deadline_s:.0f} s)"


class Heartbeat:
    """One loop's heartbeat: call it (or :meth:`beat`) once per pass."""

    def __init__(self, registry: HeartbeatRegistry, name: str, deadline_s: float) -> None:
        if deadline_s <= 0:
            raise ValueError(f"heartbeat {name}: deadline must be positive, got {deadline_s}")
        self.name = name
        self.deadline_s = deadline_s
        self._registry = registry
        self._clock = registry.clock
        self._last = self._clock()
        self._allowed = deadline_s  # the deadline in force: longer inside blocking()

    def beat(self) -> None:
        self._last = self._clock()

    __call__ = beat

    @contextmanager
    def blocking(self, deadline_s: float) -> Iterator[None]:
        """Around one call that may block up to ``deadline_s`` (e.g. a timeout plus a store write)."""
        before = self._allowed
        self._allowed = max(before, deadline_s)
        self.beat()
        try:
            yield
        finally:
            self._allowed = before
            self.beat()

    def silent(self, now: float) -> Silent | None:
        """How late the loop is at ``now``, or None when it is within its deadline."""
        age = now - self._last
        allowed = self._allowed
        return Silent(self.name, age, allowed) if age > allowed else None

    def watch(self) -> Heartbeat:
        """Start being watched (counted as beating now): call it just before the loop's thread starts."""
        self.beat()
        self._registry.add(self)
        return self

    def retire(self) -> None:
        """The loop stopped on purpose: stop watching it."""
        self._registry.retire(self)


class HeartbeatRegistry:
    """The heartbeats of one process; :meth:`silent` is the watchdog's verdict."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._beats: dict[str, Heartbeat] = {}
        self._lock = threading.Lock()

    def heartbeat(self, name: str, *, deadline_s: float) -> Heartbeat:
        """A heartbeat not yet watched (a component made in ``__init__``, watched from ``start()``)."""
        return Heartbeat(self, name, deadline_s)

    def register(self, name: str, *, deadline_s: float) -> Heartbeat:
        """A new heartbeat, watched from now on; it replaces one of the same name (a restarted loop)."""
        return self.heartbeat(name, deadline_s=deadline_s).watch()

    def add(self, hb: Heartbeat) -> None:
        with self._lock:
            self._beats[hb.name] = hb

    def retire(self, hb: Heartbeat) -> None:
        with self._lock:
            if self._beats.get(hb.name) is hb:
                del self._beats[hb.name]

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._beats)

    def silent(self) -> list[Silent]:
        """The loops past their deadline now, longest silent first."""
        now = self.clock()
        with self._lock:
            beats = list(self._beats.values())
        late = [s for s in (hb.silent(now) for hb in beats) if s is not None]
        return sorted(late, key=lambda s: -s.silent_s)


def watch_mqtt_loop(client: Any, heartbeat: Heartbeat) -> None:
    """Beat on every pass of a paho client's network loop, and after every failed connection attempt.

    paho's loop calls ``loop_misc()`` after each select (at most a second
    apart) while connected; while the broker is unreachable it calls
    ``on_connect_fail`` after each attempt. A message handler that hangs
    stops both, which is what the heartbeat is for.
    """
    loop_misc = client.loop_misc
    previous_fail = client.on_connect_fail

    def beating_loop_misc() -> Any:
        heartbeat.beat()
        return loop_misc()

    def beating_connect_fail(c: Any, userdata: Any) -> None:
        heartbeat.beat()
        if previous_fail is not None:
            previous_fail(c, userdata)

    client.loop_misc = beating_loop_misc  # an instance attribute: paho's loop calls self.loop_misc()
    client.on_connect_fail = beating_connect_fail
