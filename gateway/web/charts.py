"""Charts as inline SVG drawn on the server: no script, no library, nothing fetched (the pages' CSP allows none).

Every text in a chart is escaped; colours come from the stylesheet through class names (``series-N``), so the
SVG carries no inline style either.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 130, 12, 28
PALETTE = 8  # series-0 .. series-7 in style.css


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    values: tuple[float, ...]


def day_label(day: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).strftime("%m-%d")


def per_day(counts: Mapping[int, Mapping[str, int]], days: Sequence[int]) -> list[Series]:
    """Counts per day and label as one series per label over ``days`` (zero where a day has none)."""
    labels = sorted({label for day in days for label in counts.get(day, {})})
    return [Series(label or "-", tuple(float(counts.get(day, {}).get(label, 0)) for day in days))
            for label in labels]


def _nice_max(v: float) -> float:
    """The top of the axis: four gridline steps of 1, 2, 2.5 or 5 times a power of ten, at least ``v``."""
    if v <= 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(v / 4))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude * 4 >= v)
    return step * 4


def _frame(title: str, top: float, unit: str) -> list[str]:
    h = HEIGHT - TOP - BOTTOM
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    for i in range(5):
        y = TOP + h - h * i / 4
        parts.append(f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                     f'{escape(_fmt(top * i / 4))}{escape(unit)}</text>')
    return parts


def _fmt(v: float) -> str:
    return f"{v:.0f}" if v >= 10 or v == int(v) else f"{v:.1f}"


def _legend(parts: list[str], labels: Sequence[str]) -> None:
    for i, label in enumerate(labels[:12]):
        y = TOP + 6 + i * 16
        parts.append(f'<rect class="series-{i % PALETTE}" x="{WIDTH - RIGHT + 12}" y="{y}" width="10" height="10"/>')
        parts.append(f'<text class="legend" x="{WIDTH - RIGHT + 28}" y="{y + 9}">{escape(label)}</text>')


def stacked_bars(title: str, days: Sequence[int], series: Sequence[Series]) -> Markup:
    """One bar per day, stacked by series (e.g. department)."""
    totals = [sum(s.values[i] for s in series) for i in range(len(days))]
    top = _nice_max(max(totals, default=0))
    parts = _frame(title, top, "")
    h = HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / max(1, len(days))
    every = 1 if len(days) <= 8 else 2  # day labels that do not overlap
    for i, day in enumerate(days):
        x = LEFT + i * slot + slot * 0.15
        y0 = float(TOP + h)
        for k, s in enumerate(series):
            bh = h * s.values[i] / top
            if bh > 0:
                y0 -= bh
                parts.append(f'<rect class="series-{k % PALETTE}" x="{x:.1f}" y="{y0:.1f}" width="{slot * 0.7:.1f}" '
                             f'height="{bh:.1f}"><title>{escape(day_label(day))} {escape(s.label)}: '
                             f'{s.values[i]:.0f}</title></rect>')
        if (len(days) - 1 - i) % every == 0:
            parts.append(f'<text class="axis" x="{x + slot * 0.35:.1f}" y="{HEIGHT - 10}" text-anchor="middle">'
                         f'{escape(day_label(day))}</text>')
    _legend(parts, [s.label for s in series])
    if not any(totals):
        parts.append(f'<text class="empty" x="{(LEFT + WIDTH - RIGHT) / 2}" y="{TOP + h / 2}" text-anchor="middle">'
                     'nothing in this period</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def lines(title: str, days: Sequence[int], series: Sequence[Series], *, unit: str = "") -> Markup:
    """One polyline per series over the days (days without a value are skipped)."""
    top = _nice_max(max((v for s in series for v in s.values), default=0))
    parts = _frame(title, top, unit)
    h = HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / max(1, len(days))
    every = 1 if len(days) <= 8 else 2
    for i, day in enumerate(days):
        if (len(days) - 1 - i) % every == 0:
            parts.append(f'<text class="axis" x="{LEFT + slot * (i + 0.5):.1f}" y="{HEIGHT - 10}" '
                         f'text-anchor="middle">{escape(day_label(day))}</text>')
    for k, s in enumerate(series):
        pts = [(LEFT + slot * (i + 0.5), TOP + h - h * v / top) for i, v in enumerate(s.values) if v > 0]
        if pts:
            parts.append(f'<polyline class="line series-{k % PALETTE}" points="'
                         + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) + '"/>')
            for x, y in pts:
                parts.append(f'<circle class="series-{k % PALETTE}" cx="{x:.1f}" cy="{y:.1f}" r="3"/>')
    _legend(parts, [s.label for s in series])
    parts.append("</svg>")
    return Markup("".join(parts))


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
