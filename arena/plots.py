"""Small, dependency-free SVG plots for leaderboards (no Django import).

Rendered on the server so the page needs no charting library and the plot is in the
HTML a test or a screen reader can inspect.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape


def interval_plot(
    names: Sequence[str],
    ratings: Sequence[float],
    lower: Sequence[float],
    upper: Sequence[float],
    *,
    width: int = 720,
    row_height: int = 26,
    label_width: int = 190,
    title: str = "Rating with 95% bootstrap interval",
) -> str:
    """Horizontal dot-and-whisker plot, one row per model, best first as given."""
    n = len(names)
    if n == 0:
        return ""
    lo = min(lower)
    hi = max(upper)
    pad = max((hi - lo) * 0.08, 5.0)
    lo, hi = lo - pad, hi + pad
    top, bottom = 28, 34
    height = top + bottom + n * row_height
    plot_w = width - label_width - 20

    def x(v: float) -> float:
        return label_width + (v - lo) / (hi - lo) * plot_w

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" class="interval-plot">',
        f'<text x="{label_width}" y="16" font-size="13" fill="#667085">{escape(title)}</text>',
    ]
    for tick in _ticks(lo, hi):
        tx = x(tick)
        parts.append(
            f'<line x1="{tx:.1f}" y1="{top - 4}" x2="{tx:.1f}" y2="{height - bottom + 4}" stroke="#eceef2"/>'
            f'<text x="{tx:.1f}" y="{height - bottom + 20}" font-size="11" text-anchor="middle" fill="#667085">{tick:g}</text>'
        )
    for i, (name, r, l, u) in enumerate(zip(names, ratings, lower, upper)):
        cy = top + i * row_height + row_height / 2
        parts.append(
            f'<text x="{label_width - 10}" y="{cy + 4:.1f}" font-size="12" text-anchor="end" fill="#1d2330">{escape(name)}</text>'
            f'<line x1="{x(l):.1f}" y1="{cy:.1f}" x2="{x(u):.1f}" y2="{cy:.1f}" stroke="#2f5bd3" stroke-width="2.5"/>'
            f'<line x1="{x(l):.1f}" y1="{cy - 6:.1f}" x2="{x(l):.1f}" y2="{cy + 6:.1f}" stroke="#2f5bd3" stroke-width="1.5"/>'
            f'<line x1="{x(u):.1f}" y1="{cy - 6:.1f}" x2="{x(u):.1f}" y2="{cy + 6:.1f}" stroke="#2f5bd3" stroke-width="1.5"/>'
            f'<circle cx="{x(r):.1f}" cy="{cy:.1f}" r="4.5" fill="#1d2330"><title>{escape(name)}: {r:.1f} '
            f'[{l:.1f}, {u:.1f}]</title></circle>'
        )
    parts.append("</svg>")
    return "".join(parts)


def heatmap(
    names: Sequence[str],
    matrix: Sequence[Sequence[float | None]],
    *,
    title: str,
    cell: int = 54,
    label_width: int = 170,
    span: tuple[float, float] = (0.0, 1.0),
    tooltips: Sequence[Sequence[str]] | None = None,
) -> str:
    """Win-rate heatmap: row model's win rate against column model (blank where unknown).

    ``span`` is the range of the colour scale (white at its middle), e.g. (-1, 1) for kappas;
    ``tooltips[i][j]``, when given and not empty, becomes the cell's ``<title>`` (shown on hover
    and read by screen readers)."""
    n = len(names)
    if n == 0:
        return ""
    top = 40 + 10
    width = label_width + n * cell + 10
    height = top + n * cell + 110
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" class="heatmap">',
        f'<text x="{label_width}" y="16" font-size="13" fill="#667085">{escape(title)}</text>',
    ]
    for i, row in enumerate(matrix):
        y = top + i * cell
        parts.append(
            f'<text x="{label_width - 8}" y="{y + cell / 2 + 4:.1f}" font-size="12" text-anchor="end">{escape(names[i])}</text>'
        )
        for j, value in enumerate(row):
            xx = label_width + j * cell
            if value is None or (isinstance(value, float) and math.isnan(value)):
                fill, label = "#f2f4f7", ""
            else:
                fill, label = _diverging((value - span[0]) / (span[1] - span[0])), f"{value:.2f}"
            tip = tooltips[i][j] if tooltips is not None else ""
            parts.append(
                (f"<g><title>{escape(tip)}</title>" if tip else "")
                + f'<rect x="{xx}" y="{y}" width="{cell - 2}" height="{cell - 2}" fill="{fill}"/>'
                f'<text x="{xx + cell / 2 - 1:.1f}" y="{y + cell / 2 + 4:.1f}" font-size="11" text-anchor="middle">{label}</text>'
                + ("</g>" if tip else "")
            )
    for j, name in enumerate(names):
        xx = label_width + j * cell + cell / 2
        yy = top + n * cell + 8
        parts.append(
            f'<text x="{xx:.1f}" y="{yy}" font-size="11" text-anchor="end" '
            f'transform="rotate(-40 {xx:.1f} {yy})">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _diverging(p: float) -> str:
    """White at 0.5, blue towards 1, red towards 0."""
    p = min(max(p, 0.0), 1.0)
    t = abs(p - 0.5) * 2
    base = (47, 91, 211) if p >= 0.5 else (217, 45, 32)
    r, g, b = (round(255 + (c - 255) * t * 0.8) for c in base)
    return f"#{r:02x}{g:02x}{b:02x}"


def _ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=mag * 10)
    first = math.ceil(lo / step) * step
    ticks = []
    v = first
    while v <= hi + 1e-9:
        ticks.append(round(v, 6))
        v += step
    return ticks


def bar_chart(
    names: Sequence[str],
    values: Sequence[float],
    *,
    title: str,
    width: int = 720,
    row_height: int = 24,
    label_width: int = 190,
    as_percent: bool = True,
) -> str:
    """Horizontal bars, one per model, on a 0..1 axis (shown in percent)."""
    n = len(names)
    if n == 0:
        return ""
    top, bottom = 28, 10
    height = top + bottom + n * row_height
    plot_w = width - label_width - 70
    peak = max(max(values, default=0.0), 1e-9)
    span = 1.0 if peak > 0.5 else max(0.05, math.ceil(peak * 20) / 20)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" class="bar-chart">',
        f'<text x="{label_width}" y="16" font-size="13" fill="#667085">{escape(title)}</text>',
    ]
    for i, (name, value) in enumerate(zip(names, values)):
        y = top + i * row_height
        w = max(0.0, value) / span * plot_w
        label = f"{value * 100:.1f}%" if as_percent else f"{value:.3g}"
        parts.append(
            f'<text x="{label_width - 10}" y="{y + row_height / 2 + 4:.1f}" font-size="12" text-anchor="end">{escape(name)}</text>'
            f'<rect x="{label_width}" y="{y + 4}" width="{w:.1f}" height="{row_height - 8}" fill="#d92d20" opacity="0.75"/>'
            f'<text x="{label_width + w + 6:.1f}" y="{y + row_height / 2 + 4:.1f}" font-size="11" fill="#1d2330">{label}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def length_bias_plot(length_bias: dict, *, width: int = 720, height: int = 260) -> str:
    """Share of battles won by output A against the normalised length difference (a-b)/(a+b)."""
    bins = [b for b in length_bias.get("bins", []) if b.get("trials")]
    if not bins:
        return ""
    left, right, top, bottom = 60, 20, 30, 40
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(v: float) -> float:
        return left + (v + 1.0) / 2.0 * plot_w

    def y(v: float) -> float:
        return top + (1.0 - v) * plot_h

    title = "Win rate of output A by length difference (A − B) / (A + B), with 95% intervals"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" class="length-plot">',
        f'<text x="{left}" y="16" font-size="13" fill="#667085">{escape(title)}</text>',
        f'<line x1="{left}" y1="{y(0.5):.1f}" x2="{width - right}" y2="{y(0.5):.1f}" stroke="#c0c5ce" stroke-dasharray="4 3"/>',
        f'<line x1="{x(0):.1f}" y1="{top}" x2="{x(0):.1f}" y2="{top + plot_h}" stroke="#eceef2"/>',
    ]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<text x="{left - 8}" y="{y(tick) + 4:.1f}" font-size="11" text-anchor="end" fill="#667085">{tick:.2f}</text>')
    for tick in (-1.0, -0.5, 0.0, 0.5, 1.0):
        parts.append(f'<text x="{x(tick):.1f}" y="{height - bottom + 18}" font-size="11" text-anchor="middle" fill="#667085">{tick:g}</text>')
    for b in bins:
        cx = x((max(b["low"], -1.0) + min(b["high"], 1.0)) / 2)
        parts.append(
            f'<line x1="{cx:.1f}" y1="{y(b["lower"]):.1f}" x2="{cx:.1f}" y2="{y(b["upper"]):.1f}" stroke="#2f5bd3" stroke-width="2"/>'
            f'<circle cx="{cx:.1f}" cy="{y(b["share"]):.1f}" r="4" fill="#1d2330"><title>{b["low"]:g} to {b["high"]:g}: '
            f'{b["share"]:.2f} of {b["trials"]:g} battles</title></circle>'
        )
    parts.append("</svg>")
    return "".join(parts)
