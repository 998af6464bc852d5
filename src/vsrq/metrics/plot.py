"""Per-frame PSNR of every clip as a small self-contained SVG, so plots need no plotting library."""

from __future__ import annotations

import math
from pathlib import Path
from xml.sax.saxutils import escape

from vsrq.data.frames import atomic_output
from vsrq.metrics.report import EvalReport

# matplotlib's tab10, cycled when there are more clips
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
WIDTH, HEIGHT = 760, 380
LEFT, RIGHT, TOP, BOTTOM = 64, 180, 36, 52  # margins around the plot area; the legend sits in RIGHT
LEGEND_ROW = 18


def _ticks(lo: float, hi: float, integer: bool = False, target: int = 6) -> tuple[float, float, list[float]]:
    """An axis range widened to whole steps of 1, 2 or 5 x 10^k, and its ticks."""
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    step = 10 ** math.floor(math.log10((hi - lo) / target))
    step = next(step * m for m in (1, 2, 5, 10) if (hi - lo) / (step * m) <= target)
    if integer:
        step = max(step, 1)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return first * step, last * step, [k * step for k in range(first, last + 1)]


def _label(value: float, step: float) -> str:
    return f"{value:.{max(0, -math.floor(math.log10(step)))}f}"


def psnr_svg(report: EvalReport) -> str:
    """The SVG text: one polyline per clip over frame index; identical frames (infinite PSNR) sit on the top edge."""
    finite = [v for c in report.clips for v in c.psnr if math.isfinite(v)]
    y0, y1, yticks = _ticks(min(finite, default=0.0), max(finite, default=50.0))
    x0, x1, xticks = _ticks(0, max(max(len(c.psnr) for c in report.clips) - 1, 1), integer=True)
    height = max(HEIGHT, TOP + LEGEND_ROW * len(report.clips) + BOTTOM)
    pw, ph = WIDTH - LEFT - RIGHT, height - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return TOP + ph - (min(y, y1) - y0) / (y1 - y0) * ph

    ylabel = "Y-PSNR (dB)" if report.y else "PSNR (dB, RGB)"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        f'<text x="{LEFT + pw / 2:.1f}" y="{TOP - 14}" text-anchor="middle" font-size="14">per-frame {ylabel}</text>',
        f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>',
    ]
    for t in yticks:
        y = sy(t)
        out.append(f'<line x1="{LEFT - 5}" y1="{y:.2f}" x2="{LEFT + pw}" y2="{y:.2f}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 8}" y="{y + 4:.2f}" text-anchor="end">{_label(t, yticks[1] - yticks[0])}</text>')
    for t in xticks:
        x = sx(t)
        out.append(f'<line x1="{x:.2f}" y1="{TOP + ph}" x2="{x:.2f}" y2="{TOP + ph + 5}" stroke="black"/>')
        out.append(f'<text x="{x:.2f}" y="{TOP + ph + 18}" text-anchor="middle">{int(t)}</text>')
    out.append(f'<text x="{LEFT + pw / 2:.1f}" y="{height - 12}" text-anchor="middle">frame</text>')
    out.append(f'<text transform="translate(16 {TOP + ph / 2:.1f}) rotate(-90)" text-anchor="middle">{ylabel}</text>')
    for i, c in enumerate(report.clips):
        color = COLORS[i % len(COLORS)]
        points = [(sx(t), sy(v)) for t, v in enumerate(c.psnr)]
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" '
                   f'points="{" ".join(f"{x:.2f},{y:.2f}" for x, y in points)}"/>')
        if len(points) == 1:  # a one-point polyline draws nothing
            out.append(f'<circle cx="{points[0][0]:.2f}" cy="{points[0][1]:.2f}" r="2.5" fill="{color}"/>')
        lx, ly = WIDTH - RIGHT + 16, TOP + 8 + LEGEND_ROW * i
        out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 20}" y2="{ly}" stroke="{color}" stroke-width="2"/>')
        out.append(f'<text x="{lx + 26}" y="{ly + 4}">{escape(c.name or "-")} ({c.mean_psnr:.2f})</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_psnr_plot(report: EvalReport, path: Path) -> None:
    """Write :func:`psnr_svg` to ``path``, replacing it whole or not at all, as --json and --csv replace theirs."""
    with atomic_output(Path(path), overwrite=True) as tmp:
        tmp.write_text(psnr_svg(report))
