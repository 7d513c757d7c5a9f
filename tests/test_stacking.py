"""lumbardx.engine.stacking: the stacked disc calls' features, regression, thresholds and
their round trip through a checkpoint."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from lumbardx.engine.stacking import (STACK_DETECTOR, STACK_READER, StackedCalls,
                                      cut_at_specificity, fit_logistic, fit_stacked, logit,
                                      predict_logistic, stack_features)


def test_logistic_fit_recovers_known_weights() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 2))
    y = rng.random(4000) < 1 / (1 + np.exp(-(1.5 * x[:, 0] - 1.0 * x[:, 1] - 0.5)))
    w = fit_logistic(x, y, ridge=0.0)
    np.testing.assert_allclose(w, [1.5, -1.0, -0.5], atol=0.15)
    assert predict_logistic(w, np.zeros((1, 2)))[0] == pytest.approx(1 / (1 + np.exp(-w[-1])))
    shrunk = fit_logistic(x, y, ridge=1e4)
    assert np.abs(shrunk[:2]).max() < 0.1 * np.abs(w[:2]).max()  # the ridge spares the intercept
    one = fit_logistic(x[:10], np.ones(10, bool))  # one class: its base rate, no slope
    assert one[:2].tolist() == [0.0, 0.0] and one[-1] > 5


def test_features_are_logits_in_a_fixed_order() -> None:
    reader = {"normal": 0.0, "herniation": 2.0, "spondylolisthesis": -2.0, "stenosis": 0.5,
              "degeneration": 40.0, "lumbosacral": 0.3}  # raw logits
    x = stack_features({"herniation": 0.5}, reader)  # no normal or slip box on the disc
    assert x.shape == (len(STACK_DETECTOR) + len(STACK_READER),)
    np.testing.assert_allclose(x, [logit(0.0), 0.0, logit(0.0), 0.0, 2.0, -2.0, 0.5,
                                   logit(1.0)])
    assert logit(0.0) == pytest.approx(np.log(1e-4 / (1 - 1e-4)))  # clipped, finite
    z = np.array([-30.0, -3.0, 0.7, 12.0])  # the same as the logits of the probabilities
    np.testing.assert_allclose(np.clip(z, logit(0.0), logit(1.0)), logit(1 / (1 + np.exp(-z))),
                               atol=1e-9)


def test_fit_stacked_calls_and_round_trip() -> None:
    rng = np.random.default_rng(1)
    n = 600
    hern = rng.random(n) < 0.3
    slip = rng.random(n) < 0.05
    det = [{"normal": 0.9 - 0.6 * h, "herniation": 0.2 + 0.6 * h + 0.1 * rng.random(),
            "spondylolisthesis": 0.05 + 0.5 * s * rng.random()} for h, s in zip(hern, slip)]
    read = [{"normal": 0.0, "herniation": -1.0 + 2.0 * h, "spondylolisthesis": -2.0 + 3.0 * s,
             "stenosis": 0.0, "degeneration": -1.5} for h, s in zip(hern, slip)]
    x = np.stack([stack_features(d, r) for d, r in zip(det, read)])
    truths = [({"herniation"} if h else set()) | ({"spondylolisthesis"} if s else set())
              or {"normal"} for h, s in zip(hern, slip)]
    calls = fit_stacked(x, truths, source="synthetic discs")
    p = calls.probabilities(x)
    assert set(p) == {"herniation", "spondylolisthesis"}
    called = p["herniation"] >= calls.thresholds["herniation"]
    assert (called == hern).mean() > 0.95  # separable by construction
    assert calls.fitted_on["positives"] == {"herniation": int(hern.sum()),
                                            "spondylolisthesis": int(slip.sum())}
    buffer = io.BytesIO()
    torch.save({"stacked": calls.to_dict()}, buffer)
    buffer.seek(0)
    back = StackedCalls.from_dict(torch.load(buffer, weights_only=True)["stacked"])
    assert back == calls
    raw = calls.to_dict()
    raw["features"]["reader"] = raw["features"]["reader"][:-1]
    with pytest.raises(ValueError, match="not this version's"):
        StackedCalls.from_dict(raw)
    raw = calls.to_dict()
    del raw["thresholds"]["spondylolisthesis"]
    with pytest.raises(ValueError, match="a threshold for each of herniation, spondylolisthesis"):
        StackedCalls.from_dict(raw)
    with pytest.raises(ValueError, match="no negative disc of herniation"):
        fit_stacked(x, [{"herniation"}] * n)
    with pytest.raises(ValueError, match="no positive disc of herniation"):
        fit_stacked(x, [{"normal"}] * n)


def test_cut_at_specificity_allows_the_target_share_of_false_calls() -> None:
    score = np.r_[np.linspace(0.0, 1.0, 101), [0.95, 0.97]]
    y = np.r_[np.zeros(101, bool), [True, True]]
    cut = cut_at_specificity(score, y, 0.9)
    assert ((score >= cut) & ~y).sum() == 10  # floor(0.1 * 101) negatives called, not 11
    assert (score >= cut)[y].all()
    assert cut_at_specificity(score, y, 1.0) > 1.0  # no false call: above the top negative
    assert cut_at_specificity(score, y, 0.0) == 0.0  # every negative allowed
    tied = np.r_[np.full(100, 0.5), [0.9]]
    assert not (tied[:100] >= cut_at_specificity(tied, tied > 0.8, 0.95)).any()  # ties kept


def test_at_specificity_moves_only_the_thresholds() -> None:
    rng = np.random.default_rng(3)
    n = 2000
    hern = rng.random(n) < 0.3
    slip = rng.random(n) < 0.05
    x = rng.normal(size=(n, len(STACK_DETECTOR) + len(STACK_READER)))
    x[:, 1] += 2.0 * hern
    x[:, 5] += 2.0 * slip
    truths = [({"herniation"} if h else set()) | ({"spondylolisthesis"} if s else set())
              or {"normal"} for h, s in zip(hern, slip)]
    calls = fit_stacked(x, truths)
    cut = calls.at_specificity(x, truths, {"herniation": 0.8, "spondylolisthesis": 0.99},
                               source="synthetic")
    assert cut.weights == calls.weights
    p = cut.probabilities(x)
    for name, y, spec in (("herniation", hern, 0.8), ("spondylolisthesis", slip, 0.99)):
        called = p[name] >= cut.thresholds[name]
        assert (~called[~y]).mean() == pytest.approx(spec, abs=1.0 / (~y).sum())
    assert cut.fitted_on["operating_point"]["specificity"] == {"herniation": 0.8,
                                                                "spondylolisthesis": 0.99}
    assert StackedCalls.from_dict(cut.to_dict()) == cut
    with pytest.raises(ValueError, match="no target specificity for spondylolisthesis"):
        calls.at_specificity(x, truths, {"herniation": 0.8})
