"""Line charts as inline SVG, written by Python: the local report needs no JavaScript and fetches nothing.

Every chart is one ``<svg class="chart">`` element with one ``<polyline class="series">`` per series
(markers as ``<circle>`` when there are few points), axes with round tick values and a legend below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

# Colour-blind-safe palette (Okabe & Ito), one colour per run.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")


@dataclass
class Series:
    """One line: ``xs`` and ``ys`` of equal length; ``dashed`` for reference curves (copy-last-frame)."""

    label: str
    xs: list[float]
    ys: list[float]
    colour: str = PALETTE[0]
    dashed: bool = False


def nice_ticks(low: float, high: float, count: int = 5, integer: bool = False) -> list[float]:
    """About `count` round values (1, 2 or 5 times a power of ten apart, at least 1 with `integer`)
    covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"nice_ticks: the range must be finite, got [{low}, {high}]")
    if high <= low:
        low, high = low - (abs(low) or 1) * 0.5, high + (abs(high) or 1) * 0.5
    raw = (high - low) / max(count - 1, 1)
    if integer:
        raw = max(raw, 1.0)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value < high + step * 0.999:
        ticks.append(round(value, 12))
        value += step
    return ticks


def tick_label(value: float) -> str:
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.0e}"
    return f"{value:.6g}"


def line_chart(title: str, series: list[Series], xlabel: str, ylabel: str,
               width: int = 400, height: int = 270, integer_x: bool = False) -> str:
    """An SVG line chart of `series` (empty or all-NaN series are left out); '' when nothing is left.
    `integer_x`: x ticks on whole numbers only (steps, horizons)."""
    series = [s for s in series if any(math.isfinite(y) for y in s.ys)]
    if not series:
        return ""
    for s in series:
        if len(s.xs) != len(s.ys):
            raise ValueError(f"line_chart: series {s.label!r} has {len(s.xs)} x values and {len(s.ys)} y values")
    points = [(x, y) for s in series for x, y in zip(s.xs, s.ys) if math.isfinite(y)]
    xticks = nice_ticks(min(p[0] for p in points), max(p[0] for p in points), integer=integer_x)
    yticks = nice_ticks(min(p[1] for p in points), max(p[1] for p in points))
    legend_rows = len(series)
    left, right, top, bottom = 62, 14, 28, 40 + 16 * legend_rows
    total_height = height + 16 * legend_rows
    plot_w, plot_h = width - left - right, total_height - top - bottom
    x0, x1, y0, y1 = xticks[0], xticks[-1], yticks[0], yticks[-1]

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return top + plot_h - (y - y0) / (y1 - y0) * plot_h

    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{total_height}" '
             f'viewBox="0 0 {width} {total_height}" role="img" aria-label="{escape(title)}">',
             f'<text x="{width / 2}" y="16" text-anchor="middle" class="title">{escape(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="frame"/>']
    for t in yticks:
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" class="grid"/>'
                     f'<text x="{left - 5}" y="{sy(t) + 4:.1f}" text-anchor="end">{tick_label(t)}</text>')
    for t in xticks:
        parts.append(f'<text x="{sx(t):.1f}" y="{top + plot_h + 15}" text-anchor="middle">{tick_label(t)}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h + 31}" text-anchor="middle">{escape(xlabel)}</text>')
    parts.append(f'<text transform="translate(13 {top + plot_h / 2}) rotate(-90)" text-anchor="middle">'
                 f'{escape(ylabel)}</text>')
    for i, s in enumerate(series):
        xy = [(sx(x), sy(y)) for x, y in zip(s.xs, s.ys) if math.isfinite(y)]
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        coords = " ".join(f"{a:.1f},{b:.1f}" for a, b in xy)
        parts.append(f'<polyline class="series" fill="none" stroke="{s.colour}" stroke-width="1.6"{dash} '
                     f'points="{coords}"><title>{escape(s.label)}</title></polyline>')
        if len(xy) <= 30:
            parts += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.5" fill="{s.colour}"/>' for a, b in xy]
        ly = top + plot_h + 46 + 16 * i
        parts.append(f'<line x1="{left}" x2="{left + 24}" y1="{ly - 4}" y2="{ly - 4}" stroke="{s.colour}" '
                     f'stroke-width="2"{dash}/><text x="{left + 30}" y="{ly}">{escape(s.label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
