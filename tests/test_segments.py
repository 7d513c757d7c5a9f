"""The segment stage: frames along the spine, resampled crops, synthetic slips, ground truth per
level, the reader's training and checkpoint round trip."""

from __future__ import annotations

import io
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from lumbardx.clinical.findings import build_findings
from lumbardx.clinical.thresholds import choose_threshold
from lumbardx.data.boxes import Box, Sample
from lumbardx.engine.segment_crossval import (auc, sensitivity_at_specificity,
                                              slip_box_template)
from lumbardx.engine.segment_training import (SegmentTraining, item_from_sample, predict_items,
                                              segment_label, train_segment_reader, truth_spine)
from lumbardx.engine.segments import (frame_tensor, resample_segments, segment_frames,
                                      segment_grid)
from lumbardx.models.segment_reader import (LABELS, SegmentReaderConfig, level_features,
                                            load_segment_reader)

CLASSES = ["Degenerative Disc Disease (DDD)", "Normal IVD", "Spinal Stenosis (SS)",
           "Spondylolisthesis", "Lumbar Disc Bulge (LDB)", "Thoracic Disc Bulge (TDB)"]


def _disc_boxes(n: int = 6, x: float = 100.0, y0: float = 40.0, spacing: float = 40.0,
                tilt: float = 0.0, label: str = "Normal IVD") -> list[Box]:
    """``n`` disc boxes 50 x 20 px along a straight spine ``x = x + tilt * (y - y0)``."""
    out = []
    for i in range(n):
        cy = y0 + i * spacing
        cx = x + tilt * (cy - y0)
        out.append(Box(label, cx - 25, cy - 10, cx + 25, cy + 10))
    return out


def test_frames_point_down_the_spine_and_anteriorly() -> None:
    spine = build_findings(_disc_boxes(tilt=0.3), (256, 320))
    frames = segment_frames(spine, anterior_left=True)
    assert len(frames) == 6
    for f in frames:
        t, a = np.array(f.axis), np.array(f.anterior)
        assert t[1] > 0 and a[0] < 0  # down, and to the image left
        assert abs(float(t @ a)) < 1e-6 and math.isclose(float(np.linalg.norm(t)), 1.0)
        np.testing.assert_allclose(t, np.array([0.3, 1.0]) / math.hypot(0.3, 1.0), atol=0.02)
        assert f.spacing == pytest.approx(40.0 * math.hypot(0.3, 1.0), rel=0.03)
        # the sample at u = 0.3 (down), v = -0.7 (anterior) lies there in the image
        g = segment_grid(frame_tensor([f]), (256, 320), (1, 1), (0.2, 0.4, -0.8, -0.6))[0, 0, 0]
        xy = (g.numpy().astype(float) + 1) / 2 * np.array([256, 320])
        np.testing.assert_allclose(xy, np.array(f.centre) + f.spacing * (0.3 * t + 0.7 * a),
                                   atol=1e-3)
    # one spacing down the spine is the next disc
    g = segment_grid(frame_tensor(frames[2:3]), (256, 320), (1, 1), (0.5, 1.5, -0.5, 0.5))
    nxt = (g[0, 0, 0].numpy().astype(float) + 1) / 2 * np.array([256, 320])
    np.testing.assert_allclose(nxt, frames[3].centre, atol=1.5)
    right = segment_frames(spine, anterior_left=False)
    assert right[0].anterior[0] > 0


def _edge_image(x_edge: float, size: tuple[int, int] = (256, 320)) -> torch.Tensor:
    """``[1, H, W]``: 1 left of column ``x_edge``, 0 right of it."""
    w, h = size
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    return (xs < x_edge).float().expand(h, w).unsqueeze(0).clone()


def _edge_column(crop: torch.Tensor) -> torch.Tensor:
    """Per row of ``[rows, cols]``, the column where the value falls through 0.5."""
    return (crop > 0.5).float().sum(dim=1)


def test_crop_orientation_and_synthetic_slip_move_only_the_upper_vertebra() -> None:
    spine = build_findings(_disc_boxes(), (256, 320))
    frames = frame_tensor(segment_frames(spine))
    img = _edge_image(90.0)  # the anterior edge 10 px in front of the disc centres (x = 100)
    rows, cols = 72, 64
    extent = (-1.3, 1.3, -1.0, 1.4)
    crops = resample_segments(img, frames[2:3], (rows, cols), extent=extent)[0, 0]
    per_col = (extent[3] - extent[2]) * 40.0 / cols  # px per column
    # Left of the crop is anterior: the bright (x < 90) side is on the left, ~10 px = ~6 cols
    # before the centre column.
    left = _edge_column(crops)
    centre_col = -extent[2] * 40.0 / per_col
    np.testing.assert_allclose(left.numpy(), centre_col - 10.0 / per_col, atol=0.6)
    shift = 0.25  # spacings = 10 px
    slipped = resample_segments(img, frames[2:3], (rows, cols), extent=extent,
                                shift=torch.tensor([shift]))[0, 0]
    moved = _edge_column(slipped) - left
    u = extent[0] + (torch.arange(rows) + 0.5) * (extent[1] - extent[0]) / rows
    above, below = u < -0.3, u > 0.3
    np.testing.assert_allclose(moved[above].numpy(), -shift * 40.0 / per_col, atol=0.6)
    assert moved[below].abs().max() < 0.6


def test_grid_jitter_rotates_scales_and_moves() -> None:
    spine = build_findings(_disc_boxes(), (256, 320))
    frames = frame_tensor(segment_frames(spine))[:1]
    g0 = segment_grid(frames, (256, 320), (9, 9), (-1, 1, -1, 1))
    centre = g0[0, 4, 4]
    g = segment_grid(frames, (256, 320), (9, 9), (-1, 1, -1, 1),
                     jitter=torch.tensor([[0.5, 0.0, 0.0, 0.0]]))
    # half a spacing down the spine = 20 px in y = 40 / 320 in normalised units
    assert float(g[0, 4, 4, 1] - centre[1]) == pytest.approx(2 * 20.0 / 320, abs=1e-4)
    g = segment_grid(frames, (256, 320), (9, 9), (-1, 1, -1, 1),
                     jitter=torch.tensor([[0.0, 0.0, 0.0, math.log(2.0)]]))
    assert float((g[0, 0, 4, 1] - centre[1]) / (g0[0, 0, 4, 1] - centre[1])) == pytest.approx(2.0)


def test_segment_labels_and_ground_truth_per_level() -> None:
    assert segment_label("Spinal Stenosis (SS)") == "stenosis"
    assert segment_label("Degenerative Disc Disease (DDD)") == "degeneration"
    assert segment_label("Lumbar Disc Bulge (LDB)") == "herniation"
    assert segment_label("Spondylolisthesis") == "spondylolisthesis"
    assert segment_label("something else") is None
    boxes = _disc_boxes()
    boxes[1] = Box("Degenerative Disc Disease (DDD)", *boxes[1].xyxy())
    boxes[4] = Box("Lumbar Disc Bulge (LDB)", *boxes[4].xyxy())
    # stenosis behind disc 4 (posterior = right), slip box across discs 3-5 centred on disc 4
    boxes.append(Box("Spinal Stenosis (SS)", 120, 190, 138, 214))
    boxes.append(Box("Spondylolisthesis", 60, 170, 145, 230))
    spine, labels = truth_spine(boxes, (256, 320))
    assert len(spine.discs) == 6
    assert labels[1] == {"degeneration"}
    assert labels[4] == {"herniation", "stenosis", "spondylolisthesis"}
    assert all(lab == {"normal"} for i, lab in enumerate(labels) if i not in (1, 4))
    names = CLASSES
    sample = Sample(np.zeros((320, 256), np.uint8),
                    np.array([b.xyxy() for b in boxes], np.float32),
                    np.array([names.index(b.label) for b in boxes], np.int64), "img", "p1")
    item = item_from_sample(sample, names)
    assert item.planes.shape == (2, 320, 256)
    assert item.frames.shape == (6, 7) and item.targets.shape == (6, len(LABELS))
    assert item.targets[4].tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert item.targets[:, LABELS.index("lumbosacral")].tolist() == [0, 0, 0, 0, 0, 1]
    assert item.slip_boxes.shape == (1, 4)
    dx, dy, w, h = slip_box_template([item])
    assert (dx, dy) == pytest.approx((2.5 / 40, 0.0), abs=1e-6)
    assert (w, h) == pytest.approx((85 / 40, 60 / 40), abs=1e-6)


def test_level_features_count_from_both_ends() -> None:
    f = level_features(6)
    assert f.shape == (6, 3)
    assert f[-1].tolist() == [0.0, 1.0, 1.0] and f[0].tolist() == [1.0, 0.0, 0.0]


def test_roc_helpers() -> None:
    s = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    y = np.array([1, 1, 0, 1, 0, 0], bool)
    assert auc(s, y) == pytest.approx(8 / 9)
    assert math.isnan(auc(s, np.ones(6, bool)))
    assert sensitivity_at_specificity(s, y, 0.9) == pytest.approx(2 / 3)  # cut 0.8
    assert sensitivity_at_specificity(s, y, 0.6) == pytest.approx(1.0)  # cut 0.3, spec 2/3
    assert choose_threshold(s, y, criterion="youden").threshold == pytest.approx(0.75)


def _toy_items(n: int, seed: int) -> list:
    """Images with a bright anterior band; a slipped level has the band above its disc moved
    anteriorly by 8 px (a learnable difference)."""
    rng = np.random.default_rng(seed)
    items = []
    for k in range(n):
        img = rng.normal(60, 10, (320, 256)).clip(0, 255)
        slip = int(rng.integers(1, 5)) if k % 2 else -1
        for i in range(6):
            cy = 40 + 40 * i
            top = cy - 40
            x0 = 70 - (8 if slip >= 0 and i <= slip - 1 else 0)
            img[max(top, 0):cy, x0:x0 + 25] = 200
        boxes = _disc_boxes()
        if slip >= 0:
            c = 40 + 40 * slip
            boxes.append(Box("Spondylolisthesis", 60, c - 30, 140, c + 30))
        sample = Sample(img.astype(np.uint8), np.array([b.xyxy() for b in boxes], np.float32),
                        np.array([CLASSES.index(b.label) for b in boxes], np.int64),
                        f"img{k}", f"p{k}")
        items.append(item_from_sample(sample, CLASSES))
    return items


def test_reader_trains_predicts_and_round_trips() -> None:
    torch.manual_seed(0)
    items = _toy_items(12, 0)
    cfg = SegmentTraining(epochs=2, batch=4, synthetic_slip=0.2,
                          config=SegmentReaderConfig(width=4, embed=16, size=(24, 24)))
    model = train_segment_reader(items, cfg)
    preds = predict_items(model, items[:3])
    assert [p[0].shape for p in preds] == [(6, len(LABELS))] * 3
    assert all(p[1].shape == (6,) for p in preds)
    buf = io.BytesIO()
    model.config.calibration = {"spondylolisthesis": (0.5, -1.0)}
    torch.save(model.checkpoint(), buf)
    buf.seek(0)
    again = load_segment_reader(torch.load(buf, weights_only=True))
    assert again.config.calibration["spondylolisthesis"] == (0.5, -1.0)
    p2 = predict_items(again, items[:3])
    for (a, b), (c, d) in zip(preds, p2):
        torch.testing.assert_close(a, c)
        torch.testing.assert_close(b, d)
    prob = again.calibrated(p2[0][0])
    k = LABELS.index("spondylolisthesis")
    torch.testing.assert_close(prob[:, k], torch.sigmoid(0.5 * p2[0][0][:, k] - 1.0))
    with pytest.raises(ValueError, match="segment reader"):
        load_segment_reader({"kind": "detector"})


def test_repeat_sampling_lists_slipped_images_more_often() -> None:
    from lumbardx.engine.segment_training import repeat_slips

    items = _toy_items(6, 1)  # odd-numbered images carry a slip box
    k = LABELS.index("spondylolisthesis")
    slipped = [bool(it.targets[:, k].any()) for it in items]
    assert slipped == [False, True] * 3
    out = repeat_slips(items, 3)
    assert len(out) == 3 + 3 * 3
    assert [out.count(it) for it in items] == [1, 3] * 3
    assert repeat_slips(items, 1) == items
    with pytest.raises(ValueError, match="slip_repeat"):
        repeat_slips(items, 0)


def test_retrolisthesis_share_of_synthetic_slips() -> None:
    from lumbardx.engine.segment_training import _batch

    items = _toy_items(8, 0)
    k = LABELS.index("spondylolisthesis")
    base = SegmentTraining(synthetic_slip=1.0, drop_lowest=0.0, extra_below=0.0,
                           config=SegmentReaderConfig(width=4, embed=16, size=(24, 24)))

    def offsets(cfg: SegmentTraining) -> tuple[torch.Tensor, torch.Tensor]:
        _, mask, _, targets, shift, known = _batch(items, cfg, torch.Generator().manual_seed(3))
        synth = mask & known & (targets[..., k] > 0)
        return shift[synth], targets[..., k][mask]

    fwd, t_fwd = offsets(base)
    lo, hi = base.slip_min - 1e-6, base.slip_max + 1e-6
    assert bool((t_fwd == 1).all()) and len(fwd) > 20
    assert bool(((fwd >= lo) & (fwd <= hi)).all())
    back, t_back = offsets(replace(base, slip_retro=1.0))
    assert bool((t_back == 1).all()) and len(back) == len(fwd)
    assert bool(((-back >= lo) & (-back <= hi)).all())
    half, _ = offsets(replace(base, slip_retro=0.5))
    assert 0.25 < float((half < 0).float().mean()) < 0.75


def test_miscounts_at_the_bottom_of_the_spine() -> None:
    from lumbardx.engine.segment_crossval import level_check_metrics
    from lumbardx.engine.segment_training import with_extra_below, without_lowest

    sample = Sample(np.zeros((320, 256), np.uint8),
                    np.array([b.xyxy() for b in _disc_boxes()], np.float32),
                    np.ones(6, np.int64), "img", "p1")
    item = item_from_sample(sample, CLASSES)
    k = LABELS.index("lumbosacral")
    missed = without_lowest(item)
    assert missed.frames.shape[0] == 5 and missed.targets[:, k].sum() == 0
    extra = with_extra_below(item)
    assert extra.frames.shape[0] == 7
    assert extra.targets[:, k].tolist() == [0, 0, 0, 0, 0, 1, 0]
    # the false disc sits one spacing below the lowest: x 100, y 240 + 40
    assert extra.frames[-1, :2].tolist() == pytest.approx([100.0, 280.0], abs=0.5)
    rows = [{"right": 2.0, "missed": -1.0, "extra": -3.0, "extra_true": 1.0},
            {"right": -0.5, "missed": 0.5, "extra": -2.0, "extra_true": 1.0}]
    m = level_check_metrics(rows)
    assert m["right_flagged"] == 0.5 and m["missed_unflagged"] == 0.5
    assert m["extra_unflagged"] == 0.0
    assert m["auc_level_check"] == pytest.approx(3 / 4 + 1 / 8)  # 2.0 beats 4; -0.5 beats 2


def test_slip_measurement_rows_and_metrics() -> None:
    from lumbardx.engine.segment_crossval import slip_measure_metrics, slip_measure_rows

    items = _toy_items(2, 1)
    cfg = SegmentTraining(epochs=1, batch=2,
                          config=SegmentReaderConfig(width=4, embed=8, size=(16, 16)))
    model = train_segment_reader(items, cfg)
    rows = slip_measure_rows(model, items)
    free = sum(int((it.targets[:, LABELS.index("spondylolisthesis")] == 0).sum()) for it in items)
    assert len(rows) == free  # every disc without a slip label is shifted once
    assert {r["shift"] for r in rows} <= {0.1, 0.2, 0.3, 0.45}
    exact = [{**r, "offset": r["shift"]} for r in rows]
    m = slip_measure_metrics(exact, [])
    assert m["slip_mae_points"] == 0.0 and m["slip_grade_agreement"] == 1.0
    off = [{**r, "offset": r["shift"] + 0.05} for r in rows]
    assert slip_measure_metrics(off, [])["slip_bias_points"] == pytest.approx(5.0)
