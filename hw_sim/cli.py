"""``spd-sim``: run simulated peers and scenarios (demo, HIS, handheld, benchmarks, ...)."""

from __future__ import annotations

import importlib
import sys

# subcommand -> module with main(argv) -> int
COMMANDS = {
    "demo": "hw_sim.demo",
    "his": "hw_sim.his",
    "his-http": "hw_sim.his_http",
    "adt": "hw_sim.adt",
    "handheld": "hw_sim.handheld",
    "bench": "hw_sim.bench",
    "ward": "hw_sim.ward",
    "chaos": "hw_sim.chaos",
    "fuzz": "hw_sim.fuzz",
    "load": "hw_sim.loadgen",
    "month": "hw_sim.month",
    "his-export": "hw_sim.his_books",
    "cluster-run": "hw_sim.cluster_run",
    "cabinet-bench": "hw_sim.cabinet_bench",
    "camera-bench": "hw_sim.camera_bench",
    "books-bench": "hw_sim.books_bench",
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        print("usage: spd-sim {" + ",".join(COMMANDS) + "} [options]", file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    mod = importlib.import_module(COMMANDS[args[0]])
    return int(mod.main(args[1:]))


if __name__ == "__main__":
    sys.exit(main())
