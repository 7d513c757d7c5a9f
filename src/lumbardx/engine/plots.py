"""Evaluation figures (matplotlib, Agg backend): PR curves and the confusion matrix."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower() or "class"


def pr_axes(ax: Axes, title: str) -> None:
    """Precision-recall axes: recall [0, 1] on x, precision [0, 1.02] on y, light grid."""
    ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Lay out ``fig``, save it to ``path`` (format from the suffix; folder created), close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_pr_curves(
    precision: np.ndarray,
    recall: np.ndarray,
    class_names: Sequence[str],
    ap50: np.ndarray,
    out_dir: str | Path,
) -> list[Path]:
    """One PNG per class (``pr_<class>.png``) and all classes together (``pr_curves.png``).

    Args:
        precision: ``[101, K]`` interpolated precision at IoU 0.5 (-1: no ground truth).
        recall: ``[101]`` recall grid.
        ap50: ``[K]`` AP@0.5 per class for the legends.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    fig_all, ax_all = plt.subplots(figsize=(6, 5), dpi=120)
    for k, name in enumerate(class_names):
        p = precision[:, k]
        if not (p > -1).any():
            continue
        label = f"{name} AP@0.5={ap50[k]:.3f}"
        ax_all.plot(recall, p, label=label)
        fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
        ax.plot(recall, p)
        pr_axes(ax, label)
        paths.append(save_figure(fig, out / f"pr_{_slug(name)}.png"))
    pr_axes(ax_all, "Precision-recall at IoU 0.5 (COCO 101-point)")
    if paths:
        ax_all.legend(loc="lower left", fontsize=8)
    return [save_figure(fig_all, out / "pr_curves.png"), *paths]


def plot_confusion_matrix(
    matrix: np.ndarray, class_names: Sequence[str], path: str | Path
) -> Path:
    """Save the ``[K+1, K+1]`` confusion matrix (rows true, columns predicted) as a PNG."""
    names = [*class_names, "background"]
    n = len(names)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2, 1.1 * n + 1.5), dpi=120)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set(xlabel="Predicted", ylabel="True", title="Confusion matrix (IoU 0.5)")
    top = matrix.max() if matrix.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center",
                    color="white" if top and matrix[i, j] > top / 2 else "black")
    return save_figure(fig, path)
