"""Camera decoder benchmark: read rate and ms/frame per backend and degradation level on zint-rendered frames.

Run ``python -m hw_sim.camera_bench`` (``--help`` for options). A frame counts as
read when the decoder returns exactly the expected text (AIM identifier + GS1
element string); pyzbar is measured on the symbols it can read (no DataMatrix).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from device.hal.camera import DecoderUnavailable, load_decoder
from hw_sim.camera import FRAME_SIZE, Level, Scene, SymbolKind, make_scenes

BACKEND_KINDS: dict[str, tuple[SymbolKind, ...]] = {
    "zxingcpp": tuple(SymbolKind),
    "pyzbar": (SymbolKind.GS1_128, SymbolKind.GS1_QR, SymbolKind.EAN13),
}


@dataclass
class BenchResult:
    backend: str
    level: Level
    reads: dict[SymbolKind, list[bool]] = field(default_factory=dict)
    ms: list[float] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return len(self.ms)

    @property
    def read_rate(self) -> float:
        hits = [hit for kind_hits in self.reads.values() for hit in kind_hits]
        return sum(hits) / len(hits) if hits else 0.0

    def kind_rate(self, kind: SymbolKind) -> float | None:
        hits = self.reads.get(kind)
        return sum(hits) / len(hits) if hits else None


def run_backend(backend: str, level: Level, scenes: Sequence[Scene]) -> BenchResult:
    kinds = BACKEND_KINDS[backend]
    decoder = load_decoder(backend, [kind.symbology for kind in kinds])
    result = BenchResult(backend, level)
    try:
        for scene in scenes:
            if scene.kind not in kinds:
                continue
            started = time.perf_counter()
            texts = [d.text for d in decoder.decode(scene.frame)]
            result.ms.append(1000.0 * (time.perf_counter() - started))
            result.reads.setdefault(scene.kind, []).append(scene.expected in texts)
    finally:
        decoder.close()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hw_sim.camera_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100, help="frames per level (default 100)")
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--levels", nargs="+", choices=[lv.value for lv in Level], default=[lv.value for lv in Level])
    parser.add_argument("--backends", nargs="+", choices=sorted(BACKEND_KINDS), default=sorted(BACKEND_KINDS),
                        help="decoder backends (default: all)")
    args = parser.parse_args(argv)

    kinds = list(SymbolKind)
    print(f"{args.frames} frames per level, {FRAME_SIZE[0]}x{FRAME_SIZE[1]}, seed {args.seed}, "
          f"symbols cycling {', '.join(k.name for k in kinds)}")
    header = f"{'level':9} {'backend':9} {'frames':>6} {'read':>6} " + " ".join(f"{k.name:>14}" for k in kinds)
    print(header + f" {'ms/frame':>9} {'p95 ms':>7}")
    for level in (Level(v) for v in args.levels):
        scenes = make_scenes(args.seed, args.frames, level, kinds)
        for backend in args.backends:
            try:
                result = run_backend(backend, level, scenes)
            except DecoderUnavailable as err:
                print(f"{level.value:9} {backend:9} unavailable: {err.message}")
                continue
            rates = []
            for kind in kinds:
                rate = result.kind_rate(kind)
                rates.append(f"{'n/a' if rate is None else f'{rate:.0%}':>14}")
            p95 = statistics.quantiles(result.ms, n=20)[-1] if len(result.ms) >= 2 else 0.0
            print(f"{level.value:9} {backend:9} {result.frames:6d} {result.read_rate:6.0%} {' '.join(rates)} "
                  f"{statistics.fmean(result.ms):9.1f} {p95:7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
