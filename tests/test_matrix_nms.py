"""Matrix NMS against hand-computed decays (linear and Gaussian kernels)."""

from __future__ import annotations

import math

import pytest
import torch

from lumbardx.models.matrix_nms import matrix_decay, matrix_nms, top_k_per_class

# Class 0, sorted by score. Pairwise IoUs (10x10 boxes, worked out by hand):
#   A-B = 50/150 = 1/3, A-C = 50/150 = 1/3, B-C = 25/175 = 1/7,
#   A-E = 1 (E duplicates A), B-E = 1/3, C-E = 1/3.
# Class 1: D (same box as A, other class: never decayed by class 0).
BOXES = torch.tensor(
    [
        [0.0, 0.0, 10.0, 10.0],  # A 0.9
        [5.0, 0.0, 15.0, 10.0],  # B 0.8
        [0.0, 5.0, 10.0, 15.0],  # C 0.7
        [0.0, 0.0, 10.0, 10.0],  # D 0.6 (class 1)
        [0.0, 0.0, 10.0, 10.0],  # E 0.5
    ]
)
SCORES = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
LABELS = torch.tensor([0, 0, 0, 1, 0])


def _as_dict(boxes, scores, labels) -> dict[tuple[float, ...], list[tuple[int, float]]]:
    out: dict[tuple[float, ...], list[tuple[int, float]]] = {}
    for b, s, lab in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
        out.setdefault(tuple(b), []).append((lab, s))
    return out


def test_linear_kernel_hand_computed() -> None:
    # compensation (max IoU with higher-scored boxes): A 0, B 1/3, C 1/3, E 1
    # decay_B = (1 - 1/3) / (1 - 0) = 2/3
    # decay_C = min((1 - 1/3) / 1, (1 - 1/7) / (1 - 1/3) = 9/7) = 2/3
    # decay_E = min((1 - 1) / 1 = 0, ...) = 0 -> dropped (<= post_threshold)
    boxes, scores, labels = matrix_nms(BOXES, SCORES, LABELS, kernel="linear", keep_top_k=100)
    expected = torch.tensor([0.9, 0.6, 0.8 * 2 / 3, 0.7 * 2 / 3])  # A, D, B, C
    torch.testing.assert_close(scores, expected)
    assert labels.tolist() == [0, 1, 0, 0]
    torch.testing.assert_close(boxes, BOXES[[0, 3, 1, 2]])


def test_gaussian_kernel_hand_computed() -> None:
    # decay_ij = exp((comp_i^2 - IoU_ij^2) * sigma), sigma = 2
    # B: i=A: exp((0 - 1/9) * 2) = exp(-2/9)
    # C: i=A: exp(-2/9); i=B: exp((1/9 - 1/49) * 2) > 1  -> exp(-2/9)
    # E: i=A: exp((0 - 1) * 2) = exp(-2); i=B, i=C: exp((1/9 - 1/9) * 2) = 1 -> exp(-2)
    boxes, scores, labels = matrix_nms(BOXES, SCORES, LABELS, kernel="gaussian", sigma=2.0)
    d = math.exp(-2 / 9)
    expected = torch.tensor([0.9, 0.8 * d, 0.6, 0.7 * d, 0.5 * math.exp(-2)])  # A, B, D, C, E
    torch.testing.assert_close(scores, expected)
    assert labels.tolist() == [0, 0, 1, 0, 0]
    torch.testing.assert_close(boxes, BOXES[[0, 1, 3, 2, 4]])


def test_keep_top_k_and_post_threshold() -> None:
    _, scores, labels = matrix_nms(BOXES, SCORES, LABELS, kernel="gaussian", keep_top_k=3)
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.8 * math.exp(-2 / 9), 0.6]))
    assert labels.tolist() == [0, 0, 1]
    # E's Gaussian-decayed score 0.0677 falls below a 0.1 post threshold; C's 0.5605 does not
    _, scores, _ = matrix_nms(BOXES, SCORES, LABELS, kernel="gaussian", post_threshold=0.1)
    assert len(scores) == 4 and scores.min() > 0.5


def test_input_order_does_not_matter() -> None:
    perm = torch.tensor([4, 2, 0, 3, 1])
    _, ref, _ = matrix_nms(BOXES, SCORES, LABELS, kernel="linear")
    _, got, _ = matrix_nms(BOXES[perm], SCORES[perm], LABELS[perm], kernel="linear")
    torch.testing.assert_close(got, ref)


def test_matrix_decay_first_box_untouched_and_disjoint_boxes_kept() -> None:
    iou = torch.zeros(3, 3)
    torch.testing.assert_close(matrix_decay(iou), torch.ones(3))
    iou = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(matrix_decay(iou, "linear"), torch.tensor([1.0, 0.5, 1.0]))


def test_top_k_per_class() -> None:
    scores = torch.tensor([0.1, 0.9, 0.5, 0.8, 0.7, 0.2])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    keep = top_k_per_class(scores, labels, 2)
    assert keep.tolist() == [1, 3, 4, 2]  # best two of each class, in score order
    assert top_k_per_class(scores, labels, -1).tolist() == [1, 3, 4, 2, 5, 0]


def test_empty_and_invalid_inputs() -> None:
    boxes, scores, labels = matrix_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0).long())
    assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.shape == (0,)
    with pytest.raises(ValueError, match="kernel"):
        matrix_nms(BOXES, SCORES, LABELS, kernel="cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        matrix_nms(BOXES[:, :3], SCORES, LABELS)
