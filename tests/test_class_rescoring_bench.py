"""bench/class_rescoring.py: class-competitive scores before NMS."""

from __future__ import annotations

import pytest
import torch
from bench_scripts import load_bench

from lumbardx.models.registry import build_model

cr = load_bench("class_rescoring")


def test_rules_on_a_hand_worked_prediction() -> None:
    p = torch.tensor([[0.1, 0.6, 0.3]])  # normal, herniation, slip at one prediction
    assert torch.equal(cr.rescore(p, "independent"), p)
    torch.testing.assert_close(cr.rescore(p, "normalised"), torch.tensor([[0.1, 0.6, 0.3]]))
    q = torch.tensor([[0.0, 0.8, 0.4]])
    torch.testing.assert_close(cr.rescore(q, "normalised"), torch.tensor([[0.0, 2 / 3, 1 / 3]]))
    torch.testing.assert_close(cr.rescore(q, "competitive"),
                               torch.tensor([[0.0, 0.8 * 2 / 3, 0.4 / 3]]))
    with pytest.raises(ValueError, match="unknown rule"):
        cr.rescore(q, "softmax")


def test_patched_post_process_keeps_the_reference_and_changes_scores() -> None:
    torch.manual_seed(0)
    model = build_model("yolov5n", 3).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)[0]
        cr.patch_scores(model.postprocess, "independent")
        same = model(x)[0]
        cr.patch_scores(model.postprocess, "single-label")
        single = model(x)[0]
    for k in ("boxes", "scores", "labels"):
        torch.testing.assert_close(same[k], reference[k])
    # an untrained head scores every class about 0.5: multi-label NMS keeps each candidate
    # once per class, single-label NMS once
    assert 0 < len(single["scores"]) < len(reference["scores"])
