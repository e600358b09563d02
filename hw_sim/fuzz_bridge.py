"""Differential fuzzing of the charging bridge: the compiled hot path against its pure-Python twin.

Both implementations promise identical output on every input. This drives them with hostile batches
(long, unicode, lone-surrogate and NUL strings, huge and negative integers, timestamps at the ends of
the local range and of int64, malformed tuples, catalog items with odd prices and huge texts, every
allowed UTC offset) and requires the same compact result, the same consumed set afterwards, or the same
exception. A second run shares one event list and one consumed set between two threads that charge
and mutate them at the same time (device ids over 2 KiB make the bridge release the GIL mid-batch):
nothing may crash, and every outcome must be one the event could have had.

    python -m hw_sim.fuzz_bridge --events 1000000 --seed 1
    python -m hw_sim.fuzz_bridge --events 0 --thread-rounds 400 --seed 2

``hw_sim.fuzz`` runs the same comparison as its ``bridge_diff`` target (one batch per fuzz input).
"""

from __future__ import annotations

import argparse
import importlib
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, NamedTuple

from gateway.bridge import _twin
from gateway.bridge.types import (
    MAX_LOCAL_MS,
    MAX_SEQ,
    BridgeConfig,
    Catalog,
    CatalogItem,
    CompactBatch,
    CreditRequest,
    RejectReason,
    is_item_key,
)

INT64 = 2**63
CSET82 = "!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
OFFSETS = (-840, -839, -720, -210, -1, 0, 1, 345, 480, 839, 840)
ODD_PRICES = (0, 1, 9, 99, 100, 12_345_67, 999_999_999_999_999, 10**15, INT64 - 1, INT64, 2**64, 10**30)
HOSTILE_TEXTS = (
    "", " ", "\t\r\n ", "\x00", "a\x00b", "|^~\\&", "\\F\\", "\r", "\n", "\x1d", "\x7f", "\x1f\x01",
    "心内科", "冠脉支架|药物洗脱", "ÅÄÖ", "e\u0301", "\u202eRTL", "😀", "\U0001d4b3", "\ufeff", "\uffff", "\U0010ffff",
    "\ud800", "a\udfffb", "\udcff", "(01)", "]d2", "01", "x" * 300,
)


def _with_check_digit(first13: str) -> str:
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(first13))
    return first13 + str((10 - total % 10) % 10)


GTINS = [_with_check_digit(f"069{i:010d}") for i in range(16)]  # the last four are never in a catalog


class StrSub(str):
    """A str subclass: both implementations require an exact str."""


class EventLike(NamedTuple):
    """A tuple subclass with seven fields: both implementations take it as an event."""

    device: Any
    seq: Any
    ts_ms: Any
    admission: Any
    udi: Any
    operator: Any
    dept: Any


class LyingTuple(tuple[Any, ...]):
    """A tuple subclass whose Python-level view (iteration, indexing, length) differs from what it stores:
    both implementations read the stored items."""

    def __iter__(self) -> Any:
        return iter(("CAB-09", 9, 0, "ZY9", "x", "y", "z"))

    def __getitem__(self, i: Any) -> Any:
        return "lie"

    def __len__(self) -> int:
        return 7 if tuple.__len__(self) != 7 else 6


class FakeTuple:
    """Not a tuple, although ``isinstance(FakeTuple(...), tuple)`` is True: refused as an event."""

    def __init__(self, fields: Sequence[Any]) -> None:
        self.fields = tuple(fields)

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return tuple

    def __len__(self) -> int:
        return len(self.fields)

    def __iter__(self) -> Any:
        return iter(self.fields)


def _utc_ms(year: int, month: int, day: int, hour: int, minute: int, offset_minutes: int) -> int:
    import datetime as dt

    when = dt.datetime(year, month, day, hour, minute, tzinfo=dt.timezone(dt.timedelta(minutes=offset_minutes)))
    return (when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(milliseconds=1)


class Hostile:
    """Hostile values for every field, from one seeded random generator."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def text(self, *, long_max: int = 5_000) -> str:
        rng = self.rng
        kind = rng.randrange(10)
        if kind < 3:
            return rng.choice(HOSTILE_TEXTS)
        if kind < 5:
            return "".join(rng.choice(HOSTILE_TEXTS) for _ in range(rng.randint(1, 6)))
        if kind < 7:
            return "".join(chr(rng.choice((rng.randrange(32, 127), rng.randrange(0x4E00, 0x9FFF),
                                           rng.randrange(0, 0x110000))))
                           for _ in range(rng.randint(0, 24)))
        if kind < 8:
            return rng.choice(("x", "名", "|", "\x00", "😀")) * rng.randint(min(100, long_max), long_max)
        return f"N{rng.randrange(10_000):04d}"

    def device(self) -> Any:
        rng = self.rng
        kind = rng.randrange(12)
        if kind < 6:
            return f"CAB-{rng.randrange(20):02d}"
        if kind < 8:  # over 2 KiB of UTF-8: hashing it releases the GIL
            return "D" * rng.randint(2_048, 6_000) + str(rng.randrange(10**6))
        if kind < 11:
            return self.text()
        return rng.choice((None, b"CAB-01", 1, StrSub("CAB-01")))

    def integer(self, sane: Callable[[], int], boundaries: Sequence[int]) -> Any:
        rng = self.rng
        kind = rng.randrange(20)
        if kind < 13:
            return sane()
        if kind < 18:
            return rng.choice(boundaries) + rng.choice((0, 0, 0, -1, 1))
        return rng.choice((True, False, 1.0, None, "1", -(10**40), 10**40))

    def seq(self) -> Any:
        return self.integer(lambda: self.rng.randrange(0, MAX_SEQ + 1),
                            (0, MAX_SEQ, 2**30, 2**60, -(2**60), INT64 - 1, INT64, -INT64, 2**64, -1))

    def ts(self, offset_minutes: int) -> Any:
        off = offset_minutes * 60_000
        boundaries = (-off, MAX_LOCAL_MS - off, MAX_LOCAL_MS - off - 3_600_000,
                      _utc_ms(9999, 12, 31, 20, 0, offset_minutes), _utc_ms(2000, 2, 29, 23, 59, offset_minutes),
                      _utc_ms(2100, 3, 1, 0, 0, offset_minutes), _utc_ms(2049, 12, 31, 23, 59, offset_minutes),
                      _utc_ms(9950, 6, 1, 0, 0, offset_minutes), 0, MAX_LOCAL_MS, -MAX_LOCAL_MS,
                      2 * MAX_LOCAL_MS, 2**60, INT64 - 1, INT64, -INT64, -INT64 - 1, 2**64)
        return self.integer(lambda: self.rng.randrange(946_684_800_000, 4_102_444_800_000), boundaries)

    def yymmdd(self) -> str:
        rng = self.rng
        return f"{rng.randrange(100):02d}{rng.choice((rng.randrange(14), 2, 12)):02d}{rng.randrange(33):02d}"

    def udi(self, serials: list[str]) -> Any:
        rng = self.rng
        kind = rng.randrange(10)
        if kind >= 8:
            return self.text() if kind == 8 else rng.choice((None, b"0106900000000001", 7))
        parts = [("01", rng.choice(GTINS))]
        if rng.random() < 0.6:
            parts.append(("17", self.yymmdd()))
        if rng.random() < 0.2:
            parts.append(("11", self.yymmdd()))
        if rng.random() < 0.5:
            parts.append(("10", "".join(rng.choice(CSET82) for _ in range(rng.randint(1, 21)))))
        if rng.random() < 0.8:
            parts.append(("21", rng.choice(serials)))
        if rng.random() < 0.1:
            parts.append((rng.choice(("240", "241", "30", "37", "7003")), str(rng.randrange(10**10)).zfill(10)))
        rng.shuffle(parts)
        if rng.random() < 0.25:
            udi = "".join(f"({ai}){value}" for ai, value in parts)
        else:
            udi = rng.choice(("", "]d2", "]C1", "]Q3", "]e0", "]d2\x1d", "\x1d", "]X9"))
            for ai, value in parts:
                udi += ai + value + ("\x1d" if ai not in ("01", "11", "17", "7003") or rng.random() < 0.3 else "")
        if kind >= 6:  # break it
            at = rng.randint(0, len(udi))
            udi = rng.choice((udi[:at] + self.text(long_max=50) + udi[at + 1:], udi.replace("\x1d", ""),
                              udi[:at], udi + "\x1d" * rng.randint(1, 3)))
        return udi

    def event(self, offset_minutes: int, serials: list[str]) -> Any:
        rng = self.rng
        if rng.random() < 0.5:  # a well-formed scan: only the UDI is hostile, so that many lines are charged
            return (f"CAB-{rng.randrange(20):02d}", rng.randrange(MAX_SEQ + 1),
                    rng.randrange(946_684_800_000, 4_102_444_800_000), f"ZY{rng.randrange(10**6):06d}",
                    self.udi(serials), "N042", "心内科")
        fields = [self.device(), self.seq(), self.ts(offset_minutes),
                  f"ZY{rng.randrange(10**6):06d}" if rng.random() < 0.7 else self.text(),
                  self.udi(serials), self.text() if rng.random() < 0.4 else "N042",
                  self.text() if rng.random() < 0.4 else "心内科"]
        kind = rng.randrange(60)
        if kind == 0:
            return rng.choice((None, 7, "event", b"event"))
        if kind == 1:
            return tuple(fields[: rng.randrange(7)]) + tuple(fields[8:])
        if kind == 2:
            return (*fields, "extra")
        if kind == 3:
            return list(fields)
        if kind == 4:
            return EventLike(*fields)
        if kind == 5:
            return LyingTuple(fields[: rng.choice((7, 7, 6))])
        if kind == 6:
            return FakeTuple(fields)
        return tuple(fields)

    def catalog(self, *, huge_names: bool = True) -> Catalog:
        rng = self.rng
        items = []
        for i, gtin in enumerate(GTINS[:12]):
            name = self.text() if rng.random() < 0.5 else f"耗材{i}"
            if huge_names and rng.random() < 0.05:
                name = rng.choice(("名", "|", "x")) * rng.randint(10_000, 200_000)
            name = name.encode("utf-8", "replace").decode("utf-8")  # a catalog text is valid Unicode
            chargeable = rng.random() < 0.8
            items.append(CatalogItem(
                gtin, f"IT{i}" if rng.random() < 0.7 else _clean(self.text()),
                f"C{i}" if chargeable or rng.random() < 0.5 else "", name,
                _clean(self.text()), _clean(self.text()),
                rng.choice(ODD_PRICES) if rng.random() < 0.5 else rng.randrange(10**7), chargeable,
                rng.random() < 0.5))
        return Catalog(items)

    def config(self) -> BridgeConfig:
        rng = self.rng
        return BridgeConfig(sending_facility=_clean(self.text()) if rng.random() < 0.3 else "SPD",
                            receiving_facility=_clean(self.text()) if rng.random() < 0.3 else "HOSP",
                            utc_offset_minutes=rng.choice((*OFFSETS, rng.randint(-840, 840))),
                            processing_id=rng.choice(("P", "T", "D")))


def _clean(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def compiled_module() -> ModuleType | None:
    """The compiled bridge, or None when it is not built."""
    try:
        return importlib.import_module("gateway.bridge._cbridge")
    except ImportError:
        return None


class Mismatch(AssertionError):
    """The compiled bridge and the twin disagreed (or one crashed where the other did not)."""


def _outcome(call: Callable[[], CompactBatch]) -> tuple[str, Any]:
    try:
        result = call()
    except Exception as exc:  # compared between the implementations, type and message
        return "raised", (type(exc).__name__, str(exc))
    return "ok", (result.status, result.details, result.messages, result.ends.tobytes(), result.udi)


def compare_charges(compiled: ModuleType, events: Sequence[Any], catalog: Catalog, consumed: Sequence[str],
                    config: BridgeConfig) -> bytes:
    """Charge one batch with both implementations from the same consumed keys; raise Mismatch if they differ.

    Returns the status bytes (empty when both raised)."""
    pure_set, compiled_set = _twin.ConsumedSet(consumed), compiled.ConsumedSet(consumed)
    pure = _outcome(lambda: _twin.charge_compact(events, catalog, pure_set, config))
    comp = _outcome(lambda: compiled.charge_compact(events, catalog, compiled_set, config))
    if pure != comp:
        raise Mismatch(f"charge_compact differs: {_difference(pure, comp)}")
    if sorted(pure_set) != sorted(compiled_set) or len(pure_set) != len(compiled_set):
        raise Mismatch("consumed sets differ after the batch")
    return bytes(pure[1][0]) if pure[0] == "ok" else b""


def compare_credits(compiled: ModuleType, credits: Sequence[Any], config: BridgeConfig) -> None:
    pure = _outcome(lambda: _twin.credit_compact(credits, config))
    comp = _outcome(lambda: compiled.credit_compact(credits, config))
    if pure != comp:
        raise Mismatch(f"credit_compact differs: {_difference(pure, comp)}")


def compare_consumed_ops(compiled: ModuleType, hostile: Hostile, serials: list[str]) -> None:
    """add / discard / in on both ConsumedSets with item keys and values that are none; same answers."""
    rng = hostile.rng
    sets = (_twin.ConsumedSet(), compiled.ConsumedSet())
    for _ in range(20):
        value: Any = rng.choice((f"{rng.choice(GTINS)}/{rng.choice(serials)}", hostile.text(), [1], None, 7,
                                 StrSub(f"{GTINS[0]}/S1"), f"{GTINS[0]}/S1".encode()))
        op = rng.choice(("add", "discard", "contains"))
        answers = []
        for consumed in sets:
            try:
                answers.append(("ok", value in consumed if op == "contains" else getattr(consumed, op)(value)))
            except Exception as exc:  # compared
                answers.append(("raised", type(exc).__name__))
        if answers[0] != answers[1]:
            raise Mismatch(f"ConsumedSet.{op}({value!r:.80}): twin {answers[0]}, compiled {answers[1]}")
    if sorted(sets[0]) != sorted(sets[1]) or len(sets[0]) != len(sets[1]):
        raise Mismatch("ConsumedSets differ after the same operations")


def _difference(pure: tuple[str, Any], compiled: tuple[str, Any]) -> str:
    """The first thing that differs, briefly."""
    if pure[0] != compiled[0] or pure[0] == "raised":
        return f"twin {pure[0]} {repr(pure[1])[:300]}, compiled {compiled[0]} {repr(compiled[1])[:300]}"
    for name, a, b in zip(("status", "details", "messages", "ends", "udi"), pure[1], compiled[1], strict=True):
        if a != b:
            at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            return f"{name} differ at {at}: twin {repr(a[at:at + 3])[:300]}, compiled {repr(b[at:at + 3])[:300]}"
    return "identical"


def credits_from(events: Sequence[Any], hostile: Hostile) -> list[Any]:
    """Credit requests made of the batch's hostile fields (and some valid ones)."""
    rng = hostile.rng
    out: list[Any] = []
    for ev in events[:8]:
        if type(ev) is not tuple or len(ev) != 7:
            out.append(ev)
            continue
        out.append(CreditRequest(
            ev[0], ev[1], ev[2], ev[5], ev[6], rng.choice(("CF4B9C1F5E0000000007", "cf4b9c1f5e0000000007", "")),
            ev[3], rng.choice((*GTINS[:3], "123", "0690000000000")), rng.choice(("L1", "", "x" * 21, "名")),
            rng.choice(("S1", "", "s" * 20, "s" * 21)),
            rng.choice(("2027-12-31", "", "9999-12-31", "0000-02-29", "2100-02-29", "2025-13-01", "2025-1-01")),
            "IT", rng.choice(("C1", "")), hostile.text(), hostile.text(), hostile.text(),
            hostile.integer(lambda: rng.randrange(10**7), ODD_PRICES)))
    return out


@dataclass
class DiffReport:
    events: int = 0
    batches: int = 0
    credits: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    mismatches: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        outcomes = ", ".join(f"{name} {count}" for name, count in self.outcomes.most_common())
        return (f"bridge differential: {self.events} events in {self.batches} batches, {self.credits} credit "
                f"requests, {len(self.mismatches)} mismatches, {self.seconds:.0f} s\n  outcomes: {outcomes}")


def run_differential(events: int, *, seed: int, compiled: ModuleType | None = None,
                     stop_on_mismatch: bool = False) -> DiffReport:
    """Compare the implementations on about ``events`` hostile events (whole batches)."""
    compiled = compiled or compiled_module()
    if compiled is None:
        raise RuntimeError("the compiled bridge is not built: nothing to compare the twin with")
    rng = random.Random(seed)
    hostile = Hostile(rng)
    report = DiffReport()
    started = time.monotonic()
    catalog, config = hostile.catalog(), hostile.config()
    while report.events < events:
        if report.batches % 50 == 0:
            catalog, config = hostile.catalog(), hostile.config()
            if rng.random() < 0.02:  # a frozen configuration changed behind its validation: both refuse it
                object.__setattr__(config, "utc_offset_minutes", rng.choice((841, -841, 10**12, 10**20, True)))
        if type(config.utc_offset_minutes) is not int or abs(config.utc_offset_minutes) > 840:
            ts_offset = 0
        else:
            ts_offset = config.utc_offset_minutes
        serials = [rng.choice(("S1", "S2", "名", "x" * 20, "x" * 21)) if rng.random() < 0.1
                   else f"S{rng.randrange(10**6)}" for _ in range(8)]
        size = min(events - report.events, rng.choice((1, 2, 5, 20, 100, 400)))
        batch = [hostile.event(ts_offset, serials) for _ in range(size)]
        consumed = [f"{GTINS[i]}/{s}" for i in range(3) for s in serials[:2]
                    if is_item_key(f"{GTINS[i]}/{s}")] if rng.random() < 0.5 else []
        try:
            status = compare_charges(compiled, batch, catalog, consumed, config)
            report.outcomes.update(RejectReason.from_code(c).value if c else "charged" for c in status)
            if not status:
                report.outcomes["batch refused (exception)"] += len(batch)
            if report.batches % 4 == 0:
                credits = credits_from(batch, hostile)
                report.credits += len(credits)
                compare_credits(compiled, credits, config)
                compare_consumed_ops(compiled, hostile, serials)
        except Mismatch as exc:
            report.mismatches.append(f"seed {seed} batch {report.batches}: {exc}")
            if stop_on_mismatch:
                raise
        report.events += size
        report.batches += 1
    report.seconds = time.monotonic() - started
    return report


def run_fuzz_input(data: bytes) -> None:
    """The ``bridge_diff`` target of ``hw_sim.fuzz``: a batch built from the input, compared between the
    implementations (the twin alone when the compiled bridge is not built); raises Mismatch."""
    rng = random.Random(data)
    hostile = Hostile(rng)
    config = hostile.config()
    text = data.decode("utf-8", "surrogateescape")  # undecodable bytes become lone surrogates
    serials = [f"S{rng.randrange(10)}", "".join(c for c in text if c in CSET82)[:21] or "S0"]
    batch = [hostile.event(config.utc_offset_minutes, serials) for _ in range(rng.randint(1, 12))]
    batch += [("CAB-01", len(data), 1_735_700_000_000, "ZY1", text, "N1", "D"),
              ("CAB-01", 2, 1_735_700_000_000, "ZY1", f"01{GTINS[1]}21{text}", "N1", "D"),
              (text, int.from_bytes(data[:9] or b"\0", "big", signed=True),
               int.from_bytes(data[-9:] or b"\0", "big", signed=True), text, f"01{GTINS[2]}\x1d{text}", text, text)]
    catalog = hostile.catalog(huge_names=False)
    compiled = compiled_module()
    if compiled is None:
        _twin.charge_compact(batch, catalog, _twin.ConsumedSet(), config)
        _twin.credit_compact(credits_from(batch, hostile), config)
        return
    compare_charges(compiled, batch, catalog, [], config)
    compare_credits(compiled, credits_from(batch, hostile), config)


def fuzz_seeds() -> list[bytes]:
    return [b"", b"0106900000000001", b"]d20106900000000001\x1d21SER", "心内科".encode(), b"\xff\xfe\x00",
            (1 << 63).to_bytes(9, "big"), MAX_LOCAL_MS.to_bytes(9, "big")]


# ---- two threads sharing and mutating the inputs ------------------------------------------------------------


@dataclass
class ThreadReport:
    rounds: int = 0
    calls: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        return (f"bridge threads: {self.rounds} rounds, {self.calls} batches charged by two threads sharing and "
                f"mutating one event list and one consumed set, {len(self.problems)} problems, "
                f"{self.seconds:.0f} s")


def _allowed_outcomes(pool: list[Any], catalog: Catalog, config: BridgeConfig) -> tuple[set[bytes], set[str]]:
    """Every message and every detail an event of the pool can produce, whatever else was charged before."""
    messages: set[bytes] = set()
    details: set[str] = set()
    for ev in pool:
        result = _twin.charge_compact([ev], catalog, _twin.ConsumedSet(), config)
        if result.status == b"\x00":
            messages.add(result.messages)
            twice = _twin.charge_compact([ev, ev], catalog, _twin.ConsumedSet(), config)  # its serial, consumed
            details.update(twice.details)
        details.update(result.details)
    return messages, details


def run_threads(rounds: int, *, seed: int, module: ModuleType | None = None,
                calls_per_thread: int = 30) -> ThreadReport:
    """Two threads charge one shared event list with one shared consumed set while mutating both."""
    impl: Any = module or compiled_module() or _twin
    rng = random.Random(seed)
    hostile = Hostile(rng)
    report = ThreadReport()
    started = time.monotonic()
    for _ in range(rounds):
        catalog = hostile.catalog(huge_names=False)
        config = hostile.config()
        serials = [f"S{rng.randrange(100)}" for _ in range(6)]
        # fresh long device ids each round, so the charge-id prefix is hashed (GIL released) again
        pool = []
        for k in range(48):
            ev = hostile.event(config.utc_offset_minutes, serials) if rng.random() < 0.3 else (
                "D" * rng.randint(2_100, 4_000) + f"{report.rounds}/{k}", rng.randrange(MAX_SEQ),
                rng.randrange(946_684_800_000, 4_102_444_800_000), f"ZY{k}",
                f"01{rng.choice(GTINS[:12])}21{rng.choice(serials)}", hostile.text(), hostile.text())
            pool.append(ev)
        messages, details = _allowed_outcomes(pool, catalog, config)
        shared: list[Any] = list(pool)
        consumed = impl.ConsumedSet()
        errors: list[str] = []
        calls: list[int] = []

        def worker(wrng: random.Random, shared: list[Any] = shared, consumed: Any = consumed,
                   catalog: Catalog = catalog, config: BridgeConfig = config, errors: list[str] = errors,
                   messages: set[bytes] = messages, details: set[str] = details,
                   calls: list[int] = calls, pool: list[Any] = pool) -> None:
            for _ in range(calls_per_thread):
                try:
                    result = impl.charge_compact(shared, catalog, consumed, config)
                except Exception as exc:  # neither implementation raises on bad events
                    errors.append(f"raised {exc!r}")
                    return
                errors.extend(_check_result(result, messages, details))
                op = wrng.randrange(6)
                if op == 0:
                    shared.clear()
                elif op == 1:
                    shared[:] = wrng.sample(pool, wrng.randint(1, len(pool)))
                elif op == 2 and shared:
                    del shared[wrng.randrange(len(shared)):]
                elif op == 3:
                    shared.extend(wrng.sample(pool, 8))
                elif op == 4:
                    for key in list(consumed)[:4]:
                        consumed.discard(key)
                else:
                    shared.reverse()
                calls.append(1)

        threads = [threading.Thread(target=worker, args=(random.Random(rng.random()),)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        report.problems.extend(f"seed {seed} round {report.rounds}: {e}" for e in errors)
        report.calls += len(calls)
        report.rounds += 1
    report.seconds = time.monotonic() - started
    return report


def _check_result(result: CompactBatch, messages: set[bytes], details: set[str]) -> list[str]:
    problems = []
    charged = result.status.count(0)
    if len(result.ends) != charged or len(result.details) != len(result.status) - charged:
        return [f"inconsistent result: {len(result.status)} events, {charged} charged, {len(result.ends)} ends, "
                f"{len(result.details)} details"]
    start = 0
    for end in result.ends:
        if result.messages[start:end] not in messages:
            problems.append(f"a message no event of the pool renders: {result.messages[start:end][:200]!r}")
        start = end
    if start != len(result.messages):
        problems.append("messages longer than the last end offset")
    problems.extend(f"a detail no event of the pool produces: {d[:200]!r}" for d in result.details
                    if d not in details)
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hw_sim.fuzz_bridge", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events for the differential run")
    parser.add_argument("--thread-rounds", type=int, default=200, help="rounds of the two-thread run")
    parser.add_argument("--seed", type=int, default=1)
    opts = parser.parse_args(argv)
    failed = False
    if opts.events:
        report = run_differential(opts.events, seed=opts.seed)
        print(report.line(), flush=True)
        for m in report.mismatches[:20]:
            print("  " + m)
        failed = bool(report.mismatches)
    if opts.thread_rounds:
        for name, module in (("compiled", compiled_module()), ("pure", _twin)):
            if module is None:
                continue
            threads = run_threads(opts.thread_rounds, seed=opts.seed, module=module)
            print(f"{name}: {threads.line()}", flush=True)
            for p in threads.problems[:20]:
                print("  " + p)
            failed = failed or bool(threads.problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
