"""YOLOv5 v7.0 port: sizes, shapes, target assignment, decoding, NMS, loss, MACs."""

from __future__ import annotations

import math

import pytest
import torch

from lumbardx.models.assign_yolov5 import build_targets
from lumbardx.models.decode import decode_level, non_max_suppression
from lumbardx.models.detector import count_macs, count_parameters
from lumbardx.models.loss_yolov5 import YOLOv5Loss
from lumbardx.models.yolo_head import DEFAULT_ANCHORS, DetectHead, anchors_tensor
from lumbardx.models.yolov5 import build_yolov5, set_anchors

# ultralytics/yolov5 v7.0 models.yolo.Model(cfg, nc=...) parameter counts (DETECTORS.md)
V7_PARAMS = {
    "yolov5n": (1_872_157, 1_767_976),
    "yolov5s": (7_235_389, 7_027_720),
    "yolov5m": (21_190_557, 20_879_400),
    "yolov5l": (46_563_709, 46_149_064),
}


@pytest.mark.parametrize("variant", sorted(V7_PARAMS))
def test_parameter_counts_match_v7(variant: str) -> None:
    nc80, nc3 = V7_PARAMS[variant]
    assert count_parameters(build_yolov5(variant, 80)) == nc80
    assert count_parameters(build_yolov5(variant, 3)) == nc3


def test_registered_names_build_the_variants() -> None:
    from lumbardx.models.registry import available_models, build_model

    assert set(V7_PARAMS) <= set(available_models())
    model = build_model("yolov5n", num_classes=3)
    assert model.name == "yolov5n"
    assert count_parameters(model) == V7_PARAMS["yolov5n"][1]


def test_raw_and_eval_output_shapes() -> None:
    torch.manual_seed(0)
    model = build_yolov5("yolov5n", 3, image_size=128)
    x = torch.rand(2, 3, 128, 96)
    model.eval()
    with torch.no_grad():
        raw = model.forward_raw(x)
        dets = model(x)
    assert [tuple(r.shape) for r in raw] == [(2, 3, 16, 12, 8), (2, 3, 8, 6, 8), (2, 3, 4, 3, 8)]
    assert len(dets) == 2
    for d in dets:
        k = d["boxes"].shape[0]
        assert d["boxes"].shape == (k, 4) and d["scores"].shape == (k,)
        assert d["labels"].dtype == torch.int64
        assert bool((d["boxes"][:, [0, 2]] <= 96).all()) and bool((d["boxes"] >= 0).all())


def test_bias_init_uses_log_priors() -> None:
    torch.manual_seed(0)
    head = DetectHead(3, (64, 128, 256), (8, 16, 32))
    for conv, stride, c_in in zip(head.m, (8, 16, 32), (64, 128, 256)):
        b = conv.bias.detach().view(3, 8)
        bound = 1 / math.sqrt(c_in)  # PyTorch's default bias init range
        obj_prior = math.log(8 / (640 / stride) ** 2)
        cls_prior = math.log(0.6 / (3 - 0.99999))
        assert torch.all((b[:, 4] - obj_prior).abs() <= bound)
        assert torch.all((b[:, 5:] - cls_prior).abs() <= bound)
        assert torch.all(b[:, :4].abs() <= bound)


def _cells(level, anchor: int) -> set[tuple[int, int]]:
    rows = zip(level.anchor.tolist(), level.gi.tolist(), level.gj.tolist())
    return {(i, j) for a, i, j in rows if a == anchor}


def test_assignment_hand_worked_case() -> None:
    # One 40 x 24 px box centred at (50, 46) on a 128 x 128 image (grids 16, 8, 4).
    targets = torch.tensor([[0.0, 2.0, 30.0, 34.0, 70.0, 58.0]])
    levels = build_targets(targets, [(16, 16), (8, 8), (4, 4)], anchors_tensor(), (8, 16, 32))
    # Stride 8: anchors (10,13) ratio w 40/10 = 4.0 (not < 4: rejected), (16,30) max ratio 2.5,
    # (33,23) 1.21. Centre (6.25, 5.75): x fraction 0.25 -> left cell; y fraction 0.75 ->
    # cell below (inverse fraction 0.25).
    l0 = levels[0]
    assert sorted(set(l0.anchor.tolist())) == [1, 2]
    for a in (1, 2):
        assert _cells(l0, a) == {(6, 5), (5, 5), (6, 6)}
    own = [k for k in range(len(l0)) if (int(l0.gi[k]), int(l0.gj[k])) == (6, 5)][0]
    left = [k for k in range(len(l0)) if (int(l0.gi[k]), int(l0.gj[k])) == (5, 5)][0]
    below = [k for k in range(len(l0)) if (int(l0.gi[k]), int(l0.gj[k])) == (6, 6)][0]
    assert torch.allclose(l0.box[own], torch.tensor([0.25, 0.75, 5.0, 3.0]))
    assert torch.allclose(l0.box[left], torch.tensor([1.25, 0.75, 5.0, 3.0]))
    assert torch.allclose(l0.box[below], torch.tensor([0.25, -0.25, 5.0, 3.0]))
    assert set(l0.cls.tolist()) == {2} and set(l0.batch.tolist()) == {0}
    # Stride 16: (30,61) max ratio 2.54, (62,45) 1.875, (59,119) 4.96 rejected.
    # Centre (3.125, 2.875): left cell and cell below.
    l1 = levels[1]
    assert sorted(set(l1.anchor.tolist())) == [0, 1]
    assert _cells(l1, 0) == _cells(l1, 1) == {(3, 2), (2, 2), (3, 3)}
    assert torch.allclose(l1.anchor_wh[l1.anchor == 1][0], torch.tensor([62 / 16, 45 / 16]))
    # Stride 32: only (116,90) (max ratio 3.75). Centre (1.5625, 1.4375): x fraction 0.5625 ->
    # right cell (inverse 0.4375); y fraction 0.4375 -> cell above.
    l2 = levels[2]
    assert set(l2.anchor.tolist()) == {0}
    assert _cells(l2, 0) == {(1, 1), (2, 1), (1, 0)}
    assert len(l0) == 6 and len(l1) == 6 and len(l2) == 3


def test_assignment_skips_neighbours_outside_the_grid() -> None:
    # Centre (3.2, 3.2) px = (0.4, 0.4) cells at stride 8: fraction < 0.5 but no cell to the
    # left / above exists, and the right / below fractions (0.6) do not qualify.
    targets = torch.tensor([[1.0, 0.0, -4.8, -4.8, 11.2, 11.2]])
    (l0,) = build_targets(targets, [(16, 16)], anchors_tensor()[:1], (8,))
    assert sorted(l0.anchor.tolist()) == [0, 1, 2]
    assert {(int(i), int(j)) for i, j in zip(l0.gi, l0.gj)} == {(0, 0)}
    assert set(l0.batch.tolist()) == {1}


def test_assignment_with_no_targets() -> None:
    grids = [(8, 8), (4, 4), (2, 2)]
    levels = build_targets(torch.zeros((0, 6)), grids, anchors_tensor(), (8, 16, 32))
    assert [len(lv) for lv in levels] == [0, 0, 0]
    assert levels[0].box.shape == (0, 4)


def test_decode_hand_worked_case() -> None:
    raw = torch.zeros(1, 1, 2, 3, 6)  # one anchor, 2 x 3 grid, nc = 1
    raw[0, 0, 1, 2, 0] = math.log(3.0)  # sigmoid = 0.75 -> 2 * 0.75 - 0.5 = 1.0
    raw[0, 0, 1, 2, 3] = math.log(3.0)  # (2 * 0.75)^2 = 2.25
    out = decode_level(raw, torch.tensor([[10.0, 20.0]]), stride=8)
    # cell (column 2, row 1): cx = (1.0 + 2) * 8, cy = (0.5 + 1) * 8, w = 10, h = 2.25 * 20
    assert torch.allclose(out[0, 0, 1, 2], torch.tensor([24.0, 12.0, 10.0, 45.0, 0.5, 0.5]))
    # untouched cell (column 0, row 0): centre at the cell centre, anchor-sized
    assert torch.allclose(out[0, 0, 0, 0, :4], torch.tensor([4.0, 4.0, 10.0, 20.0]))


def _pred() -> torch.Tensor:
    # rows: cx, cy, w, h, obj, p(class 0), p(class 1)
    return torch.tensor(
        [
            [
                [50.0, 50.0, 20.0, 20.0, 0.9, 0.9, 0.1],  # A: class 0, score 0.81
                [51.0, 50.0, 20.0, 20.0, 0.8, 0.9, 0.1],  # B: duplicate of A, score 0.72
                [50.0, 50.0, 20.0, 20.0, 0.85, 0.1, 0.9],  # C: same place, class 1, score 0.765
                [95.0, 10.0, 20.0, 20.0, 0.6, 0.0, 1.0],  # D: class 1, crosses the right border
            ]
        ]
    )


def test_nms_removes_duplicate_keeps_other_class() -> None:
    (d,) = non_max_suppression(_pred(), conf_thresh=0.25, iou_thresh=0.45, image_size=(100, 100))
    assert d["labels"].tolist() == [0, 1, 1]
    assert torch.allclose(d["scores"], torch.tensor([0.81, 0.765, 0.6]))
    assert torch.allclose(d["boxes"][0], torch.tensor([40.0, 40.0, 60.0, 60.0]))
    assert torch.allclose(d["boxes"][2], torch.tensor([85.0, 0.0, 100.0, 20.0]))  # clipped


def test_nms_agnostic_multilabel_and_max_det() -> None:
    (agn,) = non_max_suppression(_pred(), conf_thresh=0.25, iou_thresh=0.45, agnostic=True)
    assert agn["labels"].tolist() == [0, 1]
    assert torch.allclose(agn["scores"], torch.tensor([0.81, 0.6]))
    # multi-label at conf 0.05: A also gets class 1 (0.09) and C class 0 (0.085); both suppressed
    (ml,) = non_max_suppression(_pred(), conf_thresh=0.05, iou_thresh=0.45, multi_label=True)
    assert sorted(zip(ml["labels"].tolist(), [round(s, 3) for s in ml["scores"].tolist()])) == [
        (0, 0.81), (1, 0.6), (1, 0.765)
    ]
    (top,) = non_max_suppression(_pred(), conf_thresh=0.25, iou_thresh=0.45, max_det=1)
    assert top["labels"].tolist() == [0]
    (none,) = non_max_suppression(_pred(), conf_thresh=0.95)
    assert none["boxes"].shape == (0, 4)


def test_loss_finite_and_decreasing_on_two_images() -> None:
    torch.manual_seed(0)
    model = build_yolov5("yolov5n", 3, image_size=128)
    images = torch.zeros(2, 3, 128, 128)
    targets = torch.tensor(
        [[0, 0, 20, 30, 60, 50], [1, 1, 70, 20, 110, 44], [1, 2, 30, 80, 60, 120]],
        dtype=torch.float32,
    )
    for b, _, x1, y1, x2, y2 in targets.int().tolist():
        images[b, :, y1:y2, x1:x2] = 0.8
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    model.train()
    history = []
    for _ in range(15):
        losses = model(images, targets)
        assert set(losses) == {"loss", "box", "obj", "cls"}
        assert all(torch.isfinite(v) for v in losses.values())
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        history.append(float(losses["loss"].detach()))
    assert sum(history[-3:]) < 0.92 * sum(history[:3])


def test_loss_gains_and_empty_targets() -> None:
    loss = YOLOv5Loss(3, image_size=320)
    assert loss.box_gain == pytest.approx(0.05)
    assert loss.cls_gain == pytest.approx(0.5 * 3 / 80)
    assert loss.obj_gain == pytest.approx(0.25)
    raw = [torch.zeros(1, 3, s, s, 8, requires_grad=True) for s in (4, 2, 1)]
    out = loss(raw, torch.zeros((0, 6)), (32, 32))
    # no positives: only objectness, BCE(0 logit, 0) = log 2 at every cell, weights 4 + 1 + 0.4
    assert out["box"] == 0 and out["cls"] == 0
    assert out["obj"] == pytest.approx(math.log(2) * 5.4 * 0.25, rel=1e-5)
    with pytest.raises(ValueError, match="target classes"):
        loss(raw, torch.tensor([[0.0, 3.0, 0.0, 0.0, 8.0, 8.0]]), (32, 32))


def test_custom_anchors_reach_loss_and_postprocess() -> None:
    custom = [[(5.0, 6.0), (7.0, 8.0), (9.0, 10.0)], [(20.0, 21.0), (22.0, 23.0), (24.0, 25.0)],
              [(50.0, 51.0), (52.0, 53.0), (54.0, 55.0)]]
    model = build_yolov5("yolov5n", 3, anchors=custom)
    assert torch.equal(model.loss.anchors, torch.tensor(custom))
    assert torch.equal(model.postprocess.anchors, torch.tensor(custom))
    set_anchors(model, DEFAULT_ANCHORS)
    assert torch.equal(model.loss.anchors, anchors_tensor())
    assert torch.equal(model.postprocess.anchors, anchors_tensor())
    with pytest.raises(ValueError):
        set_anchors(model, [[(1.0, 1.0)]])


def test_yolov5s_macs_near_published_flops() -> None:
    # v7.0 README: YOLOv5s 16.5 GFLOPs at 640 (FLOPs = 2 x MACs)
    macs = count_macs(build_yolov5("yolov5s", 80), 640)
    assert abs(macs / 8.25e9 - 1) < 0.03


def test_union_labels_for_a_prediction_shared_by_two_classes() -> None:
    from lumbardx.models.assign_yolov5 import LevelTargets
    from lumbardx.models.loss_yolov5 import YOLOv5Loss, union_labels

    z = torch.zeros(3, dtype=torch.int64)
    lt = LevelTargets(batch=z, anchor=z, gj=torch.tensor([2, 2, 5]), gi=torch.tensor([3, 3, 1]),
                      box=torch.zeros(3, 4), anchor_wh=torch.ones(3, 2),
                      cls=torch.tensor([1, 2, 0]))
    got = union_labels(lt, torch.Size([1, 3, 8, 8, 8]), 3)
    assert got.tolist() == [[False, True, True], [False, True, True], [True, False, False]]
    # a slip box around a disc box: same cells and anchors -> the losses differ only in cls
    gen = torch.Generator().manual_seed(0)
    raw = [torch.randn(1, 3, s, s, 8, generator=gen) for s in (8, 4, 2)]
    targets = torch.tensor([[0, 1, 20, 24, 44, 36], [0, 2, 18, 20, 46, 40]])
    ref, uni = YOLOv5Loss(3, image_size=64), YOLOv5Loss(3, image_size=64, shared_labels="union")
    a, b = ref(raw, targets, (64, 64)), uni(raw, targets, (64, 64))
    assert torch.equal(a["box"], b["box"]) and torch.equal(a["obj"], b["obj"])
    assert not torch.equal(a["cls"], b["cls"])
    with pytest.raises(ValueError, match="shared_labels"):
        YOLOv5Loss(3, shared_labels="max")


def test_ignored_cells_cover_a_region_and_its_centre() -> None:
    from lumbardx.models.loss_yolov5 import ignored_cells

    regions = torch.tensor([[1, 8.0, 8.0, 40.0, 24.0], [0, 50.0, 50.0, 54.0, 53.0]])
    got = ignored_cells(regions, 2, (8, 8), 8)  # cell centres at 4, 12, ..., 60
    assert got[1].nonzero().tolist() == [[r, c] for r in (1, 2) for c in (1, 2, 3, 4)]
    assert got[0].nonzero().tolist() == [[6, 6]]  # smaller than a cell: the cell of its centre
    assert not ignored_cells(regions[:0], 2, (8, 8), 8).any()


def test_ignored_region_silences_objectness_there_and_nowhere_else() -> None:
    from lumbardx.data.classes import IGNORE_LABEL
    from lumbardx.models.loss_yolov5 import ignored_cells

    loss = YOLOv5Loss(3, image_size=64)
    box = [0, 1, 20, 24, 44, 36]
    region = [0, IGNORE_LABEL, 2, 46, 22, 62]  # bottom left, clear of the box

    def grads(rows: list[list[float]]) -> tuple[dict, list[torch.Tensor]]:
        raw = [torch.randn(1, 3, s, s, 8, generator=torch.Generator().manual_seed(s))
               .requires_grad_() for s in (8, 4, 2)]
        out = loss(raw, torch.tensor(rows, dtype=torch.float32), (64, 64))
        out["loss"].backward()
        return out, [r.grad[..., 4] for r in raw]

    ref, g_ref = grads([box])
    ign, g_ign = grads([box, region])
    assert torch.equal(ref["box"], ign["box"]) and torch.equal(ref["cls"], ign["cls"])
    assert ign["obj"] < ref["obj"]
    # level 0 (stride 8): cells with centres inside x 2..22, y 46..62 -> columns 0-2, rows 6-7
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[6:8, 0:3] = True
    assert (g_ign[0][0][:, inside] == 0).all() and (g_ref[0][0][:, inside] != 0).all()
    # elsewhere the same (up to the float order of a sum against a mean)
    torch.testing.assert_close(g_ign[0][0][:, ~inside], g_ref[0][0][:, ~inside])
    # a box's positives inside an ignored region keep their objectness loss; the other
    # anchors of the region's cells lose theirs
    cover = [0, IGNORE_LABEL, 18, 22, 46, 38]
    _, g_pos = grads([box, cover])
    grid = [(8, 8), (4, 4), (2, 2)]
    levels = build_targets(torch.tensor([box], dtype=torch.float32), grid, loss.anchors,
                           loss.strides, loss.anchor_t)
    positives = silenced = 0
    for g_r, g_p, lt, hw, stride in zip(g_ref, g_pos, levels, grid, loss.strides):
        pos = torch.zeros_like(g_r, dtype=torch.bool)
        pos[lt.batch, lt.anchor, lt.gj, lt.gi] = True
        torch.testing.assert_close(g_p[pos], g_r[pos])
        assert (g_p[pos] != 0).all()
        cells = ignored_cells(torch.tensor([[0.0, *cover[2:]]]), 1, hw, stride)[:, None]
        quiet = cells.expand_as(pos) & ~pos
        assert (g_p[quiet] == 0).all() and (g_r[quiet] != 0).all()
        positives, silenced = positives + int(pos.sum()), silenced + int(quiet.sum())
    assert positives > 0 and silenced > 0
    with pytest.raises(ValueError, match="ignored region"):
        loss([torch.zeros(1, 3, s, s, 8) for s in (8, 4, 2)],
             torch.tensor([[0, -1, 2, 2, 9, 9]], dtype=torch.float32), (64, 64))
