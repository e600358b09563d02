"""The bridge is memory-safe under hostile use: inputs mutated by other threads during a call, huge catalog
texts, large batches of refused events. Runs against whichever implementation gateway.bridge imported.

The thread tests run in a child process, so that a segfault is a failed test, not a crashed test run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import gateway.bridge as bridge
from gateway.bridge import BridgeConfig, Catalog, CatalogItem, charge_compact, new_consumed_set

ROOT = Path(__file__).resolve().parent.parent
TS = 1_735_700_000_000


def gtin(first13: str) -> str:
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(first13))
    return first13 + str((10 - total % 10) % 10)


GAUZE = gtin("0690000000001")
CATALOG = Catalog([CatalogItem(GAUZE, "IT", "C1", "纱布", "s", "m", 100, True, False)])


def _run_child(body: str) -> subprocess.CompletedProcess[str]:
    prelude = textwrap.dedent(f"""
        import sys, threading
        sys.setswitchinterval(1e-6)
        import gateway.bridge as bridge
        from gateway.bridge import BridgeConfig, Catalog, CatalogItem, CreditRequest
        GAUZE = {GAUZE!r}
        CATALOG = Catalog([CatalogItem(GAUZE, "IT", "C1", "n", "s", "m", 100, True, False)])
        CONFIG = BridgeConfig()
        stop = threading.Event()
        def mutate(shared):
            # clear, shorten, replace and extend the caller's list while the bridge reads it
            k = 0
            while not stop.is_set():
                k += 1
                if k % 4 == 0:
                    shared.clear()
                elif k % 4 == 1:
                    del shared[: len(shared) // 2]
                elif k % 4 == 2 and shared:
                    shared[-1] = ("x" * 3000, 1, 0, "", "", "", "")
                else:
                    shared.append(None)
        def run(shared, refill, call, rounds):
            t = threading.Thread(target=mutate, args=(shared,))
            t.start()
            try:
                for i in range(rounds):
                    shared[:] = refill(i)
                    call(shared)
            finally:
                stop.set()
                t.join()
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(body)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def test_charge_batch_survives_another_thread_clearing_the_event_list() -> None:
    # Device ids over 2 KiB: hashing them for the charge id releases the GIL, so the mutating thread runs
    # in the middle of a batch. Each round has fresh ids (the charge-id cache would skip the hash).
    proc = _run_child("""
        def events(i):
            return [("D" * 3000 + f"{i}/{k}", k, 1_735_700_000_000, "ZY1", f"01{GAUZE}21S{k}", "op" * 200,
                     "dept" * 200) for k in range(40)]
        run([], events, lambda evs: bridge.charge_compact(evs, CATALOG, bridge.new_consumed_set(), CONFIG), 1500)
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (proc.returncode, proc.stderr[-2000:])


def test_credits_survive_another_thread_clearing_the_request_list() -> None:
    proc = _run_child("""
        def credits(i):
            return [CreditRequest("D" * 3000 + f"{i}/{k}", k, 1_735_700_000_000, "op" * 200, "dept", "0" * 20,
                                  "ZY1", GAUZE, "L1", f"S{k}", "2027-12-31", "IT", "C1", "name" * 100, "s",
                                  "m", 100) for k in range(40)]
        run([], credits, lambda reqs: bridge.credit_compact(reqs, CONFIG), 1500)
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (proc.returncode, proc.stderr[-2000:])


def _peak_and_held(call: object) -> tuple[int, int, object]:
    """Peak bytes allocated during call() and bytes still held by what it returned."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = call()  # type: ignore[operator]
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - before, held - before, result


def test_a_huge_catalog_text_costs_only_the_lines_that_use_it() -> None:
    # One item named with 1,000,000 characters; 30,000 scans of another item. The compiled bridge used to
    # reserve events x (template + largest catalog fragment) up front: 30 GB, a MemoryError.
    huge = CatalogItem(gtin("0690000000002"), "IT-H", "C2", "名" * 1_000_000, "s", "m", 1, True, False)
    catalog = Catalog([*CATALOG, huge])
    events = [("CAB-01", k, TS, "ZY1", f"01{GAUZE}21S{k}", "N1", "ward") for k in range(30_000)]
    events.append(("CAB-01", 30_000, TS, "ZY1", f"01{huge.gtin}21S1", "N1", "ward"))
    charge_compact(events[:1], catalog, new_consumed_set(), BridgeConfig())  # prepare the catalog outside
    peak, _, result = _peak_and_held(
        lambda: charge_compact(events, catalog, new_consumed_set(), BridgeConfig()))
    assert not any(result.status)  # type: ignore[attr-defined]
    messages = result.messages  # type: ignore[attr-defined]
    assert messages.count("名".encode()) == 1_000_000
    assert peak < 200 * 2**20 + 3 * len(messages), f"{peak / 2**20:.0f} MiB allocated for a {len(messages)}-byte result"


def test_a_batch_of_refused_events_holds_no_message_block() -> None:
    # 200,000 refused events (empty device id): no message is written, so the result must not keep a
    # block sized for 200,000 messages (the compiled bridge kept ~120 MB here; ~500 MB for 1,000,000).
    count = 200_000
    events = [("", k, TS, "ZY1", f"01{GAUZE}21S{k}", "N1", "ward") for k in range(count)]
    _, held, result = _peak_and_held(lambda: charge_compact(events, CATALOG, new_consumed_set(), BridgeConfig()))
    assert result.status == b"\x01" * count and result.messages == b""  # type: ignore[attr-defined]
    assert held < 24 * count + 2**20, f"a {count}-reject result holds {held / 2**20:.0f} MiB"


def test_implementation_under_test_is_named() -> None:
    assert bridge.IMPLEMENTATION in ("compiled", "pure")
