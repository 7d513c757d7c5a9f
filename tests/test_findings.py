"""Findings per disc: overlap resolution, status priority, slip boxes, matching, thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lumbardx.clinical.findings import build_findings, match_discs
from lumbardx.clinical.thresholds import (DEFAULT_THRESHOLDS, DiscScore, abnormal_calls,
                                          choose_threshold, choose_thresholds,
                                          diagnosis_calls, diagnosis_discs, disc_scores,
                                          load_thresholds, save_thresholds)
from lumbardx.data.boxes import Box
from lumbardx.data.errors import InputError

SP = 40.0


def _disc(label: str, k: int, score: float | None = None, dx: float = 0.0,
          dy: float = 0.0, w: float = 40.0, h: float = 18.0) -> Box:
    """A box centred on the k-th disc of a vertical spine at x = 200, y = 60 + 40 k."""
    cx, cy = 200.0 + dx, 60.0 + SP * k + dy
    return Box(label, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, score=score)


def _spine(n: int = 7, score: float | None = None) -> list[Box]:
    return [_disc("normal", k, score) for k in range(n)]


def test_overlapping_boxes_become_one_disc_with_the_priority_status() -> None:
    boxes = _spine(7, 0.9)
    boxes.append(_disc("herniation", 4, 0.7, dx=6, dy=4, h=26))  # same disc, taller box
    spine = build_findings(boxes, (400, 400), thresholds=DEFAULT_THRESHOLDS, sacrum=True)
    assert len(spine.discs) == 7
    d = spine.discs[4]
    assert d.status == "herniation" and d.confidence == pytest.approx(0.7)
    assert [f.label for f in d.findings] == ["herniation", "normal"]
    assert d.level == "L3-L4"


def test_a_finding_below_its_threshold_is_not_called() -> None:
    boxes = _spine(7, 0.9) + [_disc("herniation", 4, 0.2, dy=3)]
    spine = build_findings(boxes, (400, 400), thresholds={"normal": 0.5, "herniation": 0.3},
                           sacrum=True)
    assert spine.discs[4].status == "normal"
    low = build_findings(boxes, (400, 400), thresholds={"normal": 0.5, "herniation": 0.1},
                         sacrum=True)
    assert low.discs[4].status == "herniation"


def test_slip_box_goes_to_the_disc_it_contains_nearest_its_centre() -> None:
    boxes = _spine(7)
    # Spans from mid-body above disc 5 to mid-body below it, slightly off-centre downward;
    # it contains the centre of disc 5 only.
    slip = Box("spondylolisthesis", 170, 60 + SP * 5 - 22, 235, 60 + SP * 5 + 30)
    boxes.append(slip)
    boxes.append(_disc("herniation", 5, h=26))
    spine = build_findings(boxes, (400, 400), sacrum=True)
    assert len(spine.discs) == 7
    d = spine.discs[5]
    assert d.status == "spondylolisthesis" and d.has("herniation")  # co-exist
    assert d.level == "L4-L5"
    assert all(not x.has("spondylolisthesis") for i, x in enumerate(spine.discs) if i != 5)


def test_slip_box_without_a_disc_box_makes_its_own_disc() -> None:
    boxes = [b for k, b in enumerate(_spine(7)) if k != 5]
    boxes.append(Box("spondylolisthesis", 168, 60 + SP * 5 - 26, 232, 60 + SP * 5 + 26))
    spine = build_findings(boxes, (400, 400), sacrum=True)
    assert [d.status for d in spine.discs] == ["normal"] * 5 + ["spondylolisthesis", "normal"]
    assert spine.discs[5].level == "L4-L5" and not spine.missing_levels


def test_off_spine_box_is_set_aside() -> None:
    boxes = _spine(7) + [Box("herniation", 20, 150, 50, 170)]
    spine = build_findings(boxes, (400, 400), sacrum=True)
    assert len(spine.discs) == 7 and len(spine.off_spine) == 1
    assert all(d.status == "normal" for d in spine.discs)


def test_extra_classes_rank_between_herniation_and_normal() -> None:
    boxes = _spine(7) + [_disc("Spinal Stenosis (SS)", 2, dx=25, w=12)]
    spine = build_findings(boxes, (400, 400), sacrum=True)
    assert spine.discs[2].status == "Spinal Stenosis (SS)"


def test_match_discs_pairs_the_same_level_only() -> None:
    gt = build_findings(_spine(7), (400, 400), sacrum=True)
    pred_boxes = [_disc("normal", k, 0.9, dx=3, dy=5) for k in (0, 1, 2, 4, 5, 6)]
    pred = build_findings(pred_boxes, (400, 400), sacrum=True)
    match = match_discs(gt, pred)
    assert match == [0, 1, 2, None, 3, 4, 5]


def test_choose_threshold_finds_the_known_youden_optimum() -> None:
    # Positives score 0.9, 0.8, 0.6, 0.3; negatives 0.7, 0.5, 0.4, 0.35, 0.1.
    # Youden J per cut: 0.9 .25, 0.8 .5, 0.7 .3, 0.6 .55 (max: sens 3/4, spec 4/5), 0.5 .35,
    # 0.4 .15, 0.35 -.05, 0.3 .2, 0.1 0; the next lower score after 0.6 is 0.5.
    scores = [0.9, 0.8, 0.6, 0.3, 0.7, 0.5, 0.4, 0.35, 0.1]
    truth = [True] * 4 + [False] * 5
    ch = choose_threshold(scores, truth, "herniation")
    assert ch.value == pytest.approx(0.55)
    assert ch.threshold == pytest.approx(0.55)
    assert (ch.sensitivity, ch.specificity) == (pytest.approx(0.75), pytest.approx(0.8))
    # F1 per cut: 0.6 -> 0.75 (max); 0.8, 0.5 and 0.3 -> 2/3.
    f1 = choose_threshold(scores, truth, "herniation", criterion="f1")
    assert f1.value == pytest.approx(0.75) and f1.threshold == pytest.approx(0.55)
    # One negative above every positive, the rest below 0.3: J = 0.8 at cut 0.3 (next 0.2).
    ch2 = choose_threshold([0.9, 0.8, 0.6, 0.3, 0.95, 0.2, 0.1, 0.0, 0.0], truth)
    assert ch2.value == pytest.approx(0.8) and ch2.threshold == pytest.approx(0.25)
    with pytest.raises(ValueError):
        choose_threshold([0.5, 0.4], [True, True])


def test_thresholds_from_predictions_and_round_trip(tmp_path: Path) -> None:
    gt = _spine(7) + [_disc("herniation", 3, h=26)]
    gt = [b for b in gt if not (b.label == "normal" and b.y1 < 60 + SP * 3 < b.y2)]
    pred = [_disc("normal", k, 0.8) for k in range(7) if k != 3]
    pred += [_disc("herniation", 3, 0.65, dy=2, h=26), _disc("herniation", 5, 0.3, dy=2)]
    recs = disc_scores([(gt, pred, (400, 400))])
    assert len(recs) == 7 and recs[3].truth == frozenset({"herniation"})
    assert recs[3].scores["herniation"] == pytest.approx(0.65)
    choices = choose_thresholds(recs, ["normal", "herniation", "spondylolisthesis"])
    assert set(choices) == {"normal", "herniation"}  # no slip positives: default kept
    assert 0.3 < choices["herniation"].threshold <= 0.65
    path = tmp_path / "thr.json"
    save_thresholds(path, choices)
    loaded = load_thresholds(path)
    assert loaded["herniation"] == pytest.approx(choices["herniation"].threshold)
    assert loaded["spondylolisthesis"] == DEFAULT_THRESHOLDS["spondylolisthesis"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"normal": 2}))
    with pytest.raises(InputError, match="bad.json"):
        load_thresholds(bad)


def test_disc_score_records_are_plain() -> None:
    r = DiscScore(frozenset({"normal"}), {"normal": 0.5})
    assert choose_thresholds([r, DiscScore(frozenset(), {})], ["normal"])["normal"].threshold \
        == pytest.approx(0.25)


def test_abnormal_calls_at_per_class_thresholds() -> None:
    records = [DiscScore(frozenset({"normal"}), {"normal": 0.9, "herniation": 0.2}),
               DiscScore(frozenset({"herniation"}), {"herniation": 0.4}),
               DiscScore(frozenset({"spondylolisthesis", "herniation"}),
                         {"spondylolisthesis": 0.3}),
               DiscScore(frozenset({"normal"}), {"normal": 1.0, "stenosis": 0.99}),
               DiscScore(frozenset(), {})]
    truth, call = abnormal_calls(records, {"normal": 0.1, "herniation": 0.4,
                                           "spondylolisthesis": 0.35})
    assert truth.tolist() == [False, True, True, False, False]
    # a normal score never calls; a class without a threshold needs 1.0
    assert call.tolist() == [False, True, False, False, False]


def test_diagnosis_calls_group_only_the_boxes_at_their_thresholds() -> None:
    thr = {"normal": 0.3, "herniation": 0.3, "spondylolisthesis": 0.2}
    gt = [_disc("normal", k) for k in range(7) if k != 5] + [_disc("herniation", 5)]
    gt = [b for b in gt if not (b.label == "normal" and b.y1 < 60 + SP * 1 < b.y2)]  # 6 discs
    pred = [_disc("normal", k, 0.8) for k in range(7) if k not in (1, 5)]
    pred += [_disc("herniation", 5, 0.8), _disc("herniation", 3, 0.2)]
    truth, call = diagnosis_calls(gt, pred, (400, 400), thr)
    assert truth.tolist() == [False, False, False, False, True, False]
    # disc 3's herniation is below its threshold; disc 5's is called
    assert call.tolist() == [False, False, False, False, True, False]
    # a ground-truth disc nothing matches is not called
    truth, call = diagnosis_calls(gt, [b for b in pred if b.label != "herniation"],
                                  (400, 400), thr)
    assert not call.any()
    # low-score boxes off the spine (as evaluation keeps them, down to 0.001) bend the
    # curve fitted to every box: the herniated disc is set aside and not called there, while
    # diagnosis never groups that box
    gt7 = [_disc("normal", k) for k in range(7) if k != 5] + [_disc("herniation", 5)]
    pred7 = [_disc("normal", k, 0.8) for k in range(7) if k != 5] + [_disc("herniation", 5, 0.8)]
    assert abnormal_calls(disc_scores([(gt7, pred7, (400, 400))]), thr)[1][5]
    junk = pred7 + [_disc("normal", 5, 0.001, dx=100, dy=dy) for dy in (-1, 0, 1)]
    assert not abnormal_calls(disc_scores([(gt7, junk, (400, 400))]), thr)[1][5]
    assert diagnosis_calls(gt7, junk, (400, 400), thr)[1].tolist() == [False] * 5 + [True, False]
    # the same junk below a floor is left out of the records: the herniated disc is called
    assert abnormal_calls(disc_scores([(gt7, junk, (400, 400))], floor=0.05), thr)[1][5]


def test_diagnosis_discs_name_the_classes_called_at_each_ground_truth_disc() -> None:
    thr = {"normal": 0.3, "herniation": 0.3, "spondylolisthesis": 0.2}
    gt = [_disc("normal", k) for k in range(6) if k != 4] + [_disc("herniation", 4)]
    pred = [_disc("normal", k, 0.8) for k in range(6) if k not in (2, 4)]
    pred += [_disc("herniation", 4, 0.7), _disc("normal", 4, 0.4)]
    discs = diagnosis_discs(gt, pred, (400, 400), thr)
    assert [sorted(t) for t, _ in discs] == [["normal"]] * 4 + [["herniation"], ["normal"]]
    # disc 2 has no predicted disc: nothing called there
    assert [sorted(c) for _, c in discs] == [["normal"], ["normal"], [], ["normal"],
                                            ["herniation", "normal"], ["normal"]]
    truth, call = diagnosis_calls(gt, pred, (400, 400), thr)
    assert truth.tolist() == [bool(t - {"normal"}) for t, _ in discs]
    assert call.tolist() == [bool(c - {"normal"}) for _, c in discs]


@pytest.mark.parametrize("case", ["no height", "one row", "scattered"])
def test_degenerate_boxes_give_discs_or_set_aside_never_an_error(case: str) -> None:
    # a malformed label file or a stray detector row: every box ends in a disc or off the
    # spine, and a spine without any disc on it is empty (these raised before)
    from lumbardx.stages.findings import findings_warnings

    rng = np.random.default_rng(1)
    if case == "no height":
        pts = rng.uniform(0, 380, (10, 2))
        boxes = [Box("normal", x, y, x, y, score=0.9) for x, y in pts]
    elif case == "one row":
        boxes = [Box("normal", x, 190.0, x + 40.0, 208.0, score=0.9) for x in (20, 120, 220, 320)]
    else:
        boxes = [Box("normal", 10, 10, 50, 28, score=0.9), Box("herniation", 330, 350, 370, 368,
                                                              score=0.9),
                 Box("normal", 300, 20, 301, 20.5, score=0.9)]
    spine = build_findings(boxes, (384, 384), {"normal": 0.3, "herniation": 0.3})
    assert sum(len(d.boxes) for d in spine.discs) + len(spine.off_spine) == len(boxes)
    assert isinstance(findings_warnings(spine), list)
    if not spine.discs:
        assert spine.sacrum_reason == "no boxes on a spine" and not spine.sacrum_recognised
        assert "not along a spine" in findings_warnings(spine)[0]


def test_generated_ground_truth_gives_the_true_statuses() -> None:
    from lumbardx.synth.anatomy import SynthConfig
    from lumbardx.synth.case import generate_case

    for k in range(4):
        case = generate_case(np.random.default_rng(900 + k), SynthConfig(p_listhesis=0.7))
        spine = build_findings(case.annotation.boxes, (case.view.width, case.view.height))
        assert [d.status for d in spine.discs] == [d["status"] for d in case.truth["discs"]]
        for d, t in zip(spine.discs, case.truth["discs"]):
            assert d.has("herniation") == (t["herniation"] is not None)
