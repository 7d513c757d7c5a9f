"""Spine curve, ordering along it, level naming and the sacrum rule."""

from __future__ import annotations

import numpy as np
import pytest

from lumbardx.clinical.findings import build_findings
from lumbardx.clinical.levels import (DISC_LEVELS, fit_spine_curve, name_levels,
                                      sacrum_recognised)
from lumbardx.synth.anatomy import SynthConfig
from lumbardx.synth.case import generate_case


def _curved_centres(n: int = 8, spacing: float = 30.0) -> np.ndarray:
    """Disc centres along a lordotic curve x = 150 + 0.004 (y - 200)^2, equal arc steps."""
    y = np.linspace(40, 400, 2000)
    x = 150 + 0.004 * (y - 200) ** 2
    arc = np.concatenate([[0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))])
    s = np.arange(n) * spacing + 10
    return np.stack([np.interp(s, arc, x), np.interp(s, arc, y)], axis=1)


def test_curve_is_robust_to_an_outlier_and_orders_by_arc_length() -> None:
    c = _curved_centres()
    with_outlier = np.vstack([c, [[20.0, 210.0]]])
    curve = fit_spine_curve(with_outlier, spacing=30.0)
    assert not curve.inlier[-1] and curve.inlier[:-1].all()
    s, d = curve.project(c)
    assert np.all(np.diff(s) > 0)
    np.testing.assert_allclose(np.diff(s), 30.0, atol=1.5)
    assert np.abs(d).max() < 1.5
    _, d_out = curve.project(with_outlier[-1:])
    assert d_out[0] < -60  # far to the image left of the curve


def test_boxes_side_by_side_do_not_break_the_fit() -> None:
    # four boxes at one height (a detector's stray row, or an untrained model): the fit
    # failed in least squares; now a vertical line through them, one disc
    from lumbardx.data.boxes import Box

    c = np.array([[100.0, 200.0], [150.0, 200.0], [200.0, 200.0], [250.0, 200.0]])
    s, d = fit_spine_curve(c, spacing=40.0).project(c)
    assert np.all(np.isfinite(s)) and np.all(np.isfinite(d))
    assert np.ptp(s) == pytest.approx(0.0)
    boxes = [Box("normal", x, 190.0, x + 40.0, 210.0, score=0.9) for x in (100, 150, 200, 250)]
    spine = build_findings(boxes, (400, 400), {"normal": 0.3})
    assert len(spine.discs) == 1


def test_grouping_follows_the_curve_not_y() -> None:
    # A straight spine tilted 45 degrees; a herniation box displaced along the normal
    # (posterior-up) is nearer in y to the disc above but belongs to its own disc.
    from lumbardx.data.boxes import Box

    t = np.array([1.0, 1.0]) / np.sqrt(2)
    n = np.array([1.0, -1.0]) / np.sqrt(2)
    sp = 40.0
    centres = [np.array([60.0, 60.0]) + k * sp * t for k in range(6)]
    boxes = [Box("normal", *(c - [20, 10]), *(c + [20, 10])) for c in centres]
    odd = centres[3] + 0.6 * sp * n
    assert abs(odd[1] - centres[2][1]) < abs(odd[1] - centres[3][1])
    boxes[3] = Box("herniation", *(odd - [20, 10]), *(odd + [20, 10]))
    boxes.append(Box("normal", *(centres[3] - [20, 10]), *(centres[3] + [20, 10])))
    spine = build_findings(boxes, (512, 512), sacrum=True)
    assert len(spine.discs) == 6
    assert [d.status for d in spine.discs] == ["normal"] * 3 + ["herniation"] + ["normal"] * 2


def test_name_levels_counts_up_from_the_sacrum() -> None:
    s = np.arange(7) * 30.0
    naming = name_levels(s, sacrum=True)
    assert naming.names == list(DISC_LEVELS[-7:])
    assert naming.names[-1] == "L5-S1" and naming.names[0] == "T11-T12"
    assert not any(naming.uncertain)


def test_gap_skips_names_and_flags_levels_above() -> None:
    s = np.array([0, 30, 60, 90, 150, 180, 210], dtype=float)  # one disc missing at 120
    naming = name_levels(s, sacrum=True)
    assert naming.names == ["T10-T11", "T11-T12", "T12-L1", "L1-L2", "L3-L4", "L4-L5", "L5-S1"]
    assert naming.missing == ["L2-L3"]
    assert naming.uncertain == [True] * 4 + [False] * 3


def test_unrecognised_sacrum_flags_every_level() -> None:
    naming = name_levels(np.arange(5) * 30.0, sacrum=False)
    assert all(naming.uncertain) and naming.reasons


def test_sacrum_rule_needs_room_below_and_a_whole_lowest_box() -> None:
    c = _curved_centres(6)
    curve = fit_spine_curve(c, spacing=30.0)
    s, _ = curve.project(c)
    low = c[-1]
    box = (low[0] - 15, low[1] - 8, low[0] + 15, low[1] + 8)
    ok, _ = sacrum_recognised(curve, s[-1], 30.0, (400, int(low[1] + 60)), box)
    short, why = sacrum_recognised(curve, s[-1], 30.0, (400, int(low[1] + 30)), box)
    edge, why_edge = sacrum_recognised(curve, s[-1], 30.0, (400, int(low[1] + 8)), box)
    assert ok and not short and not edge
    assert "spacings" in why and "border" in why_edge


@pytest.mark.parametrize("visible", [True, False])
def test_levels_on_generated_spines(visible: bool) -> None:
    cfg = SynthConfig(p_sacrum_visible=1.0 if visible else 0.0, p_listhesis=0.0)
    recognised = 0
    for k in range(8):
        case = generate_case(np.random.default_rng(500 + k), cfg)
        assert case.truth["sacrum_visible"] == visible
        size = (case.view.width, case.view.height)
        truth = [d["level"] for d in case.truth["discs"]]
        spine = build_findings(case.annotation.boxes, size)
        assert [d.status for d in spine.discs] == [d["status"] for d in case.truth["discs"]]
        if visible:
            # Named from L5-S1 whether or not the rule recognises the sacrum; certain only
            # when it does. With the caller's evidence every name is certain and right.
            assert [d.level for d in spine.discs] == truth
            recognised += spine.sacrum_recognised
            assert all(d.level_uncertain for d in spine.discs) != spine.sacrum_recognised
            told = build_findings(case.annotation.boxes, size, sacrum=True)
            assert [d.level for d in told.discs] == truth
            assert not any(d.level_uncertain for d in told.discs)
        else:
            assert not spine.sacrum_recognised
            assert all(d.level_uncertain for d in spine.discs)
    if visible:
        assert recognised >= 3  # the conservative rule: 26 of 42 visible sacra on other seeds


def test_real_annotations_give_ordered_gapless_levels(yolospine_dev) -> None:  # noqa: ANN001
    """On 80 yolospine-dev images (every class kept): discs in order, no gaps, no off-spine
    boxes, the sacrum recognised in most, every level name distinct."""
    from lumbardx.clinical.findings import boxes_from_annotation
    from lumbardx.data.classes import all_map
    from lumbardx.data.convert import scan_dataset

    scan = scan_dataset(yolospine_dev)
    cmap = all_map(scan.class_names)
    recognised = 0
    records = [r for r in scan.records if r.annotation is not None][:80]
    for rec in records:
        ann = rec.annotation
        spine = build_findings(boxes_from_annotation(ann, cmap), (ann.width, ann.height))
        s = [d.s for d in spine.discs]
        assert 5 <= len(s) <= 10 and np.all(np.diff(s) > 0), rec.image_path
        assert not spine.off_spine and not spine.missing_levels, rec.image_path
        names = [d.level for d in spine.discs]
        assert len(set(names)) == len(names) and names[-1] == "L5-S1"
        recognised += spine.sacrum_recognised
    assert recognised >= 0.85 * len(records)
