"""Evaluation figures (matplotlib, Agg backend): PR curves and the confusion matrix."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower() or "class"


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
        ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1.02), title=label)
        ax.grid(alpha=0.3)
        path = out / f"pr_{_slug(name)}.png"
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    ax_all.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1.02),
               title="Precision-recall at IoU 0.5 (COCO 101-point)")
    ax_all.grid(alpha=0.3)
    if paths:
        ax_all.legend(loc="lower left", fontsize=8)
    path = out / "pr_curves.png"
    fig_all.tight_layout()
    fig_all.savefig(path)
    plt.close(fig_all)
    return [path, *paths]


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
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
