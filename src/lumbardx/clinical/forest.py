"""Forest plot of a reader study: each reader's sensitivity and specificity with 95% CIs.

Drawn with matplotlib's object API on an Agg canvas (no global backend change, no display
needed). The AI reader is drawn in a distinct colour with a bold label and a shaded row.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from lumbardx.clinical.readerstudy_analysis import ReaderStudyResult
    from lumbardx.clinical.stats import Proportion

AI_COLOUR = "#c0392b"
READER_COLOUR = "#1f4e79"


def _x_axis(props: list[Proportion]) -> tuple[float, list[float]]:
    """Lower x limit and tick positions (fractions) covering every finite CI up to 100%."""
    lows = [p.ci_low for p in props if math.isfinite(p.ci_low)]
    low = min(lows) if lows else 0.0
    step = 0.05 if low >= 0.7 else 0.1 if low >= 0.3 else 0.2
    start = max(0.0, math.floor((low - 0.02) / step) * step)
    n = round((1.0 - start) / step)
    return start, [round(start + i * step, 4) for i in range(n + 1)]


def display_name(reader: str, is_ai: bool) -> str:
    """A reader's label in tables and plots: the AI gets an "(AI)" tag unless already named so."""
    return f"{reader} (AI)" if is_ai and reader.strip().lower() != "ai" else reader


def plot_forest(result: ReaderStudyResult, path: str | Path, dpi: int = 150) -> Path:
    """Draw sensitivity (left) and specificity (right) per reader, with Wilson 95% CIs.

    Rows are the readers in input order (top to bottom); the percentage and counts of each
    point are written to the right of its panel. Writes a PNG to ``path`` and returns it.
    """
    path = Path(path)
    readers = result.readers
    n = len(readers)
    fig = Figure(figsize=(11.0, 1.6 + 0.55 * n), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    ys = list(range(n - 1, -1, -1))  # first reader at the top
    for ax, metric, title in (
        (axes[0], "sensitivity", "Sensitivity"),
        (axes[1], "specificity", "Specificity"),
    ):
        props = [getattr(r, metric) for r in readers]
        lo, ticks = _x_axis(props)
        for y, r, p in zip(ys, readers, props, strict=True):
            colour = AI_COLOUR if r.is_ai else READER_COLOUR
            if r.is_ai:
                ax.axhspan(y - 0.45, y + 0.45, color=AI_COLOUR, alpha=0.08, linewidth=0)
            if p.total == 0 or not math.isfinite(p.estimate):
                ax.annotate(
                    "no discs",
                    (1.02, y),
                    xycoords=("axes fraction", "data"),
                    va="center",
                    fontsize=9,
                    color="grey",
                )
                continue
            ax.errorbar(
                p.estimate,
                y,
                xerr=[[p.estimate - p.ci_low], [p.ci_high - p.estimate]],
                fmt="D" if r.is_ai else "o",
                color=colour,
                ecolor=colour,
                elinewidth=2,
                capsize=4,
                markersize=8 if r.is_ai else 6,
            )
            ax.annotate(
                f"{100 * p.estimate:.1f}% ({p.fraction})",
                (1.02, y),
                xycoords=("axes fraction", "data"),
                va="center",
                fontsize=10,
                color=colour,
                fontweight="bold" if r.is_ai else "normal",
            )
        ax.set_xlim(lo, 1.0 + 0.01 * (1.0 - lo))
        ax.set_xticks(ticks, [f"{round(100 * t)}%" for t in ticks])
        ax.set_title(f"{title} (95% Wilson CI)", fontsize=12)
        ax.grid(axis="x", linestyle=":", alpha=0.6)
        ax.set_ylim(-0.7, n - 0.3)
    axes[0].set_yticks(ys, [display_name(r.reader, r.is_ai) for r in readers], fontsize=11)
    for label, r in zip(axes[0].get_yticklabels(), readers, strict=True):
        if r.is_ai:
            label.set_color(AI_COLOUR)
            label.set_fontweight("bold")
    fig.suptitle(
        f"Reader study: {result.n_cases} cases, {result.n_positive} diseased and "
        f"{result.n_negative} normal discs",
        fontsize=13,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
