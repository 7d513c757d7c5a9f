"""Trainer, schedules, EMA, optimiser groups, checkpoints, exact resume, samplers, DDP."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from lumbardx.data.boxes import Sample
from lumbardx.data.errors import InputError
from lumbardx.engine import checkpoint as ck
from lumbardx.engine.ema import ModelEMA
from lumbardx.engine.optim import build_optimizer, param_groups
from lumbardx.engine.recipes import AugmentConfig, Recipe, recipe_for, yolov5_recipe
from lumbardx.engine.sampler import RepeatFactorSampler, repeat_factors
from lumbardx.engine.schedule import WarmupSchedule, schedule_factor
from lumbardx.engine.trainer import train
from lumbardx.models.detector import Detector

NAMES = ["normal", "herniation", "spondylolisthesis"]


# --------------------------------------------------------------------------- tiny detector
class TinyBackbone(nn.Module):
    """``[B, 3, H, W]`` -> features at strides 8 / 16 / 32 (8, 8, 8 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 4, 1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1))
        self.down1 = nn.Conv2d(8, 8, 3, 2, 1)
        self.down2 = nn.Conv2d(8, 8, 3, 2, 1)

    def forward(self, x: Tensor) -> list[Tensor]:
        p3 = self.stem(x)
        p4 = self.down1(p3)
        return [p3, p4, self.down2(p4)]


class TinyHead(nn.Module):
    """One anchor per cell: ``[B, 1, H/s, W/s, 5 + nc]`` per stride. The dropout makes training
    depend on the global torch RNG (as DropBlock does in PP-YOLOv2)."""

    def __init__(self, nc: int) -> None:
        super().__init__()
        self.nc = nc
        self.drop = nn.Dropout(0.1)
        self.convs = nn.ModuleList(nn.Conv2d(8, 5 + nc, 1) for _ in range(3))

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        return [c(self.drop(f)).permute(0, 2, 3, 1)[:, None] for c, f in zip(self.convs, feats)]


class TinyLoss(nn.Module):
    """Stride-8 cell of each box centre: L1 on offsets / log size, BCE objectness and class."""

    def forward(self, raw: list[Tensor], targets: Tensor, size: tuple[int, int]) -> dict:
        p = raw[0][:, 0]  # [B, h, w, 5 + nc]
        obj_t = torch.zeros_like(p[..., 4])
        b = targets[:, 0].long()
        cx, cy = (targets[:, 2] + targets[:, 4]) / 16, (targets[:, 3] + targets[:, 5]) / 16
        gi = cx.long().clamp(0, p.shape[2] - 1)
        gj = cy.long().clamp(0, p.shape[1] - 1)
        ps = p[b, gj, gi]
        wh = (targets[:, 4:6] - targets[:, 2:4]).clamp(min=1) / 32
        box = F.l1_loss(ps[:, :2].sigmoid(), torch.stack([cx - gi, cy - gj], 1), reduction="sum")
        box = box + F.l1_loss(ps[:, 2:4], wh.log(), reduction="sum")
        obj_t[b, gj, gi] = 1.0
        obj = F.binary_cross_entropy_with_logits(p[..., 4], obj_t, reduction="sum")
        cls = F.binary_cross_entropy_with_logits(
            ps[:, 5:], F.one_hot(targets[:, 1].long(), p.shape[-1] - 5).float(), reduction="sum")
        unused = sum(r.sum() for r in raw[1:]) * 0.0  # every parameter gets a gradient (DDP)
        total = (box + obj + cls) / p.shape[0] + unused
        return {"loss": total, "box": box.detach(), "obj": obj.detach(), "cls": cls.detach()}


class TinyPost(nn.Module):
    """Decode the stride-8 map, score = obj * cls, class-wise NMS 0.5, top 50."""

    def forward(self, raw: list[Tensor], size: tuple[int, int]) -> list[dict]:
        p = raw[0][:, 0]
        h, w = p.shape[1:3]
        gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        cx = (gx + p[..., 0].sigmoid()) * 8
        cy = (gy + p[..., 1].sigmoid()) * 8
        bw, bh = p[..., 2].exp() * 32, p[..., 3].exp() * 32
        boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
        scores, labels = (p[..., 4:5].sigmoid() * p[..., 5:].sigmoid()).max(-1)
        out = []
        for bx, sc, lb in zip(boxes.flatten(1, 2), scores.flatten(1), labels.flatten(1)):
            keep = sc > 0.01  # bx [h * w, 4], sc / lb [h * w]
            bx, sc, lb = bx[keep], sc[keep], lb[keep]
            k = batched_nms(bx, sc, lb, 0.5)[:50]
            out.append({"boxes": bx[k], "scores": sc[k], "labels": lb[k]})
        return out


def tiny_detector(nc: int = 3) -> Detector:
    return Detector(TinyBackbone(), nn.Identity(), TinyHead(nc), TinyLoss(), TinyPost(), "tiny")


# --------------------------------------------------------------------------- synthetic data
class ListDataset(list):
    class_names = NAMES


def shapes_dataset(n: int, size: int = 64, seed: int = 0) -> ListDataset:
    """Bright rectangles (class 0), ellipses (class 1) and wide bars (class 2) on noise."""
    rng = np.random.default_rng(seed)
    ds = ListDataset()
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        img = rng.integers(0, 40, (size, size)).astype(np.uint8)
        boxes, labels = [], []
        for k in range(2):
            cls = (i + k) % 3
            w, h = [(int(size * 0.3), int(size * 0.2)), (int(size * 0.25), int(size * 0.25)),
                    (int(size * 0.45), int(size * 0.12))][cls]
            x1 = int(rng.integers(2, size - w - 2))
            y1 = int(rng.integers(2, size // 2 - h)) + k * (size // 2)
            if cls == 1:
                mask = ((xx - x1 - w / 2) / (w / 2)) ** 2 + ((yy - y1 - h / 2) / (h / 2)) ** 2 <= 1
                img[mask] = 230
            else:
                img[y1 : y1 + h, x1 : x1 + w] = 200 if cls == 0 else 150
            boxes.append([x1, y1, x1 + w, y1 + h])
            labels.append(cls)
        ds.append(Sample(img, np.array(boxes, np.float32), np.array(labels, np.int64),
                         f"synthetic/{i}.png"))
    return ds


def tiny_recipe(**kw: object) -> Recipe:
    base = Recipe(
        name="test", image_size=64, epochs=3, batch_size=2, nominal_batch=4, lr0=0.02,
        momentum=0.9, nesterov=True, schedule="cosine", lrf=0.1, warmup_epochs=1.0,
        warmup_min_iters=2, warmup_bias_lr=0.05, warmup_momentum=0.8, ema="yolov5",
        ema_tau=5.0, grad_clip=5.0, amp="none", multi_scale=(32, 96), balance="repeat_factor",
        repeat_threshold=0.5, num_workers=0,
        augment=AugmentConfig(mosaic=0.5, mixup=0.3, affine=0.8, degrees=3, brightness=0.2,
                              contrast=0.2, gamma=0.1, hflip=0.2, crop=0.2, expand=0.2))
    return replace(base, **kw)


# --------------------------------------------------------------------------- schedules
def test_yolov5_warmup_and_linear_schedule_values() -> None:
    r = replace(yolov5_recipe(), epochs=10)
    model = tiny_detector()
    opt = build_optimizer(model, r)
    sch = WarmupSchedule(opt, r, iters_per_epoch=50)
    assert sch.warmup == 150  # max(round(3 * 50), 100)
    kinds = [g["kind"] for g in opt.param_groups]
    assert kinds == ["bias", "norm", "weight"]
    sch.step(0, 0)
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs == pytest.approx([0.1, 0.0, 0.0])
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.8)
    sch.step(75, 1)  # half-way through warm-up, epoch 1: f = (1 - 1/10) * 0.99 + 0.01
    target = 0.01 * 0.901
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs == pytest.approx([0.1 + (target - 0.1) * 0.5, target * 0.5, target * 0.5])
    assert opt.param_groups[2]["momentum"] == pytest.approx(0.8 + 0.137 * 0.5)
    sch.step(200, 4)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01 * (0.6 * 0.99 + 0.01)] * 3)
    assert opt.param_groups[1]["momentum"] == pytest.approx(0.937)


def test_cosine_and_piecewise_factors() -> None:
    r = Recipe(epochs=100, schedule="cosine", lrf=0.01)
    assert schedule_factor(r, 0) == pytest.approx(1.0)
    assert schedule_factor(r, 50) == pytest.approx((1 + 0.01) / 2)
    assert schedule_factor(r, 100) == pytest.approx(0.01)
    p = recipe_for("ppyolov2", small_data=False, batch_size=12)
    assert p.milestones == (243,) and p.lr0 == pytest.approx(0.005 * 12 / 96)
    assert schedule_factor(p, 242) == 1.0 and schedule_factor(p, 243) == pytest.approx(0.1)
    opt = build_optimizer(tiny_detector(), p)
    sch = WarmupSchedule(opt, p, iters_per_epoch=55)
    assert sch.warmup == 4000  # LinearWarmup steps, start_factor 0
    sch.step(1000, 18)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([p.lr0 * 0.25] * 3)
    sch.step(300 * 55, 300)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([p.lr0 * 0.1] * 3)
    y3 = recipe_for("yolov3", small_data=False, batch_size=8)
    assert y3.milestones == (216, 243) and schedule_factor(y3, 250) == pytest.approx(0.01)
    small = recipe_for("ppyolov2-r18", image_size=384)
    assert small.epochs == 300 and small.milestones == (200,) and small.warmup_iters is None
    assert small.multi_scale == (192, 448) and small.augment.hflip == 0.0
    assert Recipe.from_dict(small.to_dict()) == small
    with pytest.raises(ValueError, match="bogus"):
        Recipe.from_dict({"bogus": 1})


def test_param_groups_and_weight_decay_scaling() -> None:
    model = tiny_detector()
    g = param_groups(model)
    bn = model.backbone.stem[1]
    assert any(p is bn.weight for p in g["norm"]) and any(p is bn.bias for p in g["bias"])
    assert any(p is model.backbone.stem[0].weight for p in g["weight"])
    assert sum(len(v) for v in g.values()) == len(list(model.parameters()))
    r = replace(yolov5_recipe(), batch_size=8)  # accumulate 8 -> wd * 8 * 8 / 64
    opt = build_optimizer(model, r)
    assert [grp["weight_decay"] for grp in opt.param_groups] == pytest.approx([0, 0, 5e-4])
    r = replace(yolov5_recipe(), batch_size=48)  # accumulate round(64/48)=1 -> wd * 48 / 64
    assert build_optimizer(model, r).param_groups[2]["weight_decay"] == pytest.approx(3.75e-4)
    assert opt.defaults["nesterov"] is True


def test_adamw_optimizer_groups_and_warmup() -> None:
    model = tiny_detector()
    r = replace(yolov5_recipe(), optimizer="adamw", lr0=0.001429, momentum=0.9)
    opt = build_optimizer(model, r)
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["kind"] for g in opt.param_groups] == ["bias", "norm", "weight"]
    assert [g["weight_decay"] for g in opt.param_groups] == pytest.approx([0, 0, 5e-4])
    assert opt.defaults["betas"] == (0.9, 0.999)
    sched = WarmupSchedule(opt, r, iters_per_epoch=10)
    sched.step(0, 0)  # warm-up: biases start at warmup_bias_lr, AdamW has no momentum key
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    assert "momentum" not in opt.param_groups[2]
    before = model.backbone.down1.weight.detach().clone()
    loss = sum(o.float().pow(2).mean() for o in model.head(model.neck(model.backbone(
        torch.rand(2, 3, 64, 64)))))
    loss.backward()
    sched.step(sched.warmup, 3)  # after warm-up every group trains at lr0 * schedule
    assert opt.param_groups[2]["lr"] == pytest.approx(0.001429 * schedule_factor(r, 3))
    opt.step()
    assert not torch.equal(before, model.backbone.down1.weight)
    with pytest.raises(ValueError, match="unknown optimizer"):
        Recipe(optimizer="lamb")


# --------------------------------------------------------------------------- EMA
def test_ema_yolov5_and_paddle_math() -> None:
    lin = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    with torch.no_grad():
        lin[0].weight.fill_(1.0)
    ema = ModelEMA(lin, "yolov5", decay=0.9999, tau=2000)
    with torch.no_grad():
        lin[0].weight.fill_(3.0)
    lin[1].num_batches_tracked.fill_(7)
    ema.update(lin)
    d1 = 0.9999 * (1 - math.exp(-1 / 2000))
    assert float(ema.ema[0].weight[0, 0]) == pytest.approx(d1 * 1 + (1 - d1) * 3, rel=1e-6)
    assert int(ema.ema[1].num_batches_tracked) == 7
    with torch.no_grad():
        lin[0].weight.fill_(5.0)
    ema.update(lin)
    d2 = 0.9999 * (1 - math.exp(-2 / 2000))
    w1 = d1 * 1 + (1 - d1) * 3
    assert float(ema.ema[0].weight[0, 0]) == pytest.approx(d2 * w1 + (1 - d2) * 5, rel=1e-6)
    assert ema.updates == 2
    assert not ema.ema[0].weight.requires_grad

    with torch.no_grad():
        lin[0].weight.fill_(1.0)
    pe = ModelEMA(lin, "paddle", decay=0.9998)
    assert pe.decay_at(0) == pytest.approx(0.1) and pe.decay_at(10**6) == pytest.approx(0.9998)
    with torch.no_grad():
        lin[0].weight.fill_(11.0)
    pe.update(lin)  # d = min(0.9998, 1/10) = 0.1
    assert float(pe.ema[0].weight[0, 0]) == pytest.approx(0.1 * 1 + 0.9 * 11)
    pe.update(lin)  # d = 2/11
    assert float(pe.ema[0].weight[0, 0]) == pytest.approx(2 / 11 * 10.0 + 9 / 11 * 11)


# --------------------------------------------------------------------------- checkpoints
def test_checkpoint_atomic_write_survives_crash(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "last.pt"
    ck.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def crash(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    back = ck.load_checkpoint(path)
    assert back["epoch"] == 1 and torch.equal(back["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # temp file removed


def test_load_checkpoint_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing.pt"):
        ck.load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="bad.pt"):
        ck.load_checkpoint(bad)


def test_rng_state_round_trip() -> None:
    state = ck.rng_state()
    a = (torch.rand(3), np.random.rand(3), __import__("random").random())
    ck.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), __import__("random").random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_partial_weights_with_another_class_count(tmp_path: Path) -> None:
    src = tiny_detector(3)
    ck.save_checkpoint({"model": src.state_dict(), "ema": None}, tmp_path / "w.pt")
    dst = tiny_detector(5)
    report = ck.load_weights(dst, tmp_path / "w.pt")
    assert set(report.shape_mismatch) == {f"head.convs.{i}.{p}" for i in range(3)
                                          for p in ("weight", "bias")}
    assert report.shape_mismatch["head.convs.0.weight"] == ((8, 8, 1, 1), (10, 8, 1, 1))
    assert not report.missing and not report.unexpected and not report.complete
    assert torch.equal(dst.backbone.stem[0].weight, src.backbone.stem[0].weight)
    assert torch.equal(dst.backbone.stem[1].running_mean, src.backbone.stem[1].running_mean)
    assert not torch.equal(dst.head.convs[0].weight[:8], src.head.convs[0].weight)
    # EMA weights are preferred when present
    ema_sd = {k: v + 1 if v.is_floating_point() else v for k, v in src.state_dict().items()}
    ck.save_checkpoint({"model": src.state_dict(), "ema": {"model": ema_sd}}, tmp_path / "e.pt")
    full = tiny_detector(3)
    assert ck.load_weights(full, tmp_path / "e.pt").complete
    assert torch.equal(full.backbone.down1.weight, src.backbone.down1.weight + 1)


def test_rebuild_detector_from_checkpoint_metadata(tmp_path: Path) -> None:
    from lumbardx.models.registry import build_model

    torch.manual_seed(0)
    src = build_model("yolov5n", 2)
    ema_sd = {k: v + 1 if v.is_floating_point() else v for k, v in src.state_dict().items()}
    ckpt = {"model": src.state_dict(), "ema": {"model": ema_sd}, "model_name": "yolov5n",
            "num_classes": 2, "recipe": {"image_size": 96, "augment": {"pad_value": 114}},
            "lumbardx_version": "9.9"}
    det = ck.rebuild_detector(ckpt, tmp_path / "w.pt")
    assert (det.model_name, det.class_names, det.image_size, det.pad_value) == \
        ("yolov5n", ["class_0", "class_1"], 96, 114)
    assert det.path == tmp_path / "w.pt" and det.lumbardx_version == "9.9"
    assert not det.model.training
    key = "head.m.0.bias"
    assert torch.equal(det.model.state_dict()[key], ema_sd[key])  # EMA weights deployed
    for change, match in ((dict(model_name=None), "lacks model_name"),
                          (dict(model_name="yolov9x"), "unknown architecture 'yolov9x'"),
                          (dict(num_classes=None), "no class names"),
                          (dict(recipe={"image_size": 100}), "multiple of 32"),
                          (dict(num_classes=3), "do not fit a yolov5n with 3 classes"),
                          (dict(model=None, ema=None), "neither")):
        with pytest.raises(InputError, match=match) as err:
            ck.rebuild_detector({**ckpt, **change}, tmp_path / "w.pt")
        assert err.value.path == tmp_path / "w.pt"


# --------------------------------------------------------------------------- samplers
def test_repeat_factor_math_and_sampler() -> None:
    labels = [np.array([0, 0]), np.array([0]), np.array([0]), np.array([1, 0]), np.array([])]
    rf = repeat_factors(labels, 3, threshold=0.5)
    # f0 = 4/5 -> r0 = 1; f1 = 1/5 -> r1 = sqrt(0.5 / 0.2); empty image -> 1
    np.testing.assert_allclose(rf, [1, 1, 1, math.sqrt(2.5), 1])
    s = RepeatFactorSampler(rf, seed=3)
    counts = np.zeros(5)
    for e in range(400):
        s.set_epoch(e)
        idx = list(s)
        assert sorted(set(idx)) == [0, 1, 2, 3, 4]
        counts += np.bincount(idx, minlength=5)
    np.testing.assert_allclose(counts / 400, rf, atol=0.06)
    s.set_epoch(7)
    assert list(s) == list(s)  # same epoch, same order
    ranks = [RepeatFactorSampler(rf, seed=3, rank=r, world_size=2) for r in range(2)]
    for r in ranks:
        r.set_epoch(7)
    parts = [list(r) for r in ranks]
    assert len(parts[0]) == len(parts[1])
    whole = s.epoch_indices()
    assert sorted(parts[0] + parts[1]) == sorted(whole + whole[: len(parts[0]) * 2 - len(whole)])


# --------------------------------------------------------------------------- trainer
def _final_tensors(run: Path) -> dict[str, Tensor]:
    c = ck.load_checkpoint(run / "last.pt")
    out = {f"model.{k}": v for k, v in c["model"].items()}
    out.update({f"ema.{k}": v for k, v in c["ema"]["model"].items()})
    for i, s in c["optimizer"]["state"].items():
        out[f"opt.{i}"] = s["momentum_buffer"]
    return out


def test_resume_after_interruption_is_bitwise_identical(tmp_path: Path) -> None:
    train_set, val_set = shapes_dataset(7, seed=1), shapes_dataset(3, seed=2)
    recipe = tiny_recipe()
    torch.manual_seed(0)
    full = train(tiny_detector(), train_set, val_set, recipe, tmp_path / "full", "cpu",
                 seed=5, progress=False, final_eval=False)
    assert full.epochs_done == 3 and len(full.history) == 3

    class Interrupt(Exception):
        pass

    def stop_after_first(row: dict) -> None:
        if row["epoch"] == 0:
            raise Interrupt

    torch.manual_seed(0)
    with pytest.raises(Interrupt):
        train(tiny_detector(), train_set, val_set, recipe, tmp_path / "cut", "cpu", seed=5,
              progress=False, on_epoch_end=stop_after_first)
    assert ck.load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 0
    torch.manual_seed(123)  # a differently initialised model: everything comes from last.pt
    resumed = train(tiny_detector(), train_set, val_set, recipe, tmp_path / "cut", "cpu",
                    resume=True, seed=5, progress=False)
    a, b = _final_tensors(tmp_path / "full"), _final_tensors(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    first = ck.load_checkpoint(tmp_path / "cut" / "last.pt")
    assert first["step"] == ck.load_checkpoint(tmp_path / "full" / "last.pt")["step"] > 0
    rows = (tmp_path / "cut" / "results.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("epoch,step,lr,train/loss")
    assert (tmp_path / "full" / "results.csv").read_text() .splitlines()[1:] != []
    # the weights actually moved during training
    init = tiny_detector().state_dict()
    assert not torch.equal(a["model.backbone.down1.weight"], init["backbone.down1.weight"])
    assert resumed.best is not None and resumed.final_eval is not None
    assert (tmp_path / "cut" / "eval" / "pr_curves.png").is_file()
    assert first["recipe"]["name"] == "test" and first["class_names"] == NAMES


def test_training_reduces_loss_and_reports_bad_samples(tmp_path: Path) -> None:
    data = shapes_dataset(4, seed=3)
    data.append(Sample(np.zeros((8, 8), np.float32), np.zeros((0, 4), np.float32),
                       np.zeros(0, np.int64), "synthetic/float.png"))
    recipe = tiny_recipe(epochs=12, nominal_batch=None, multi_scale=None, balance="none",
                         ema="paddle", lr0=0.05, warmup_epochs=0.0, schedule="linear",
                         augment=AugmentConfig(affine=0.0, brightness=0.0))
    torch.manual_seed(0)
    res = train(tiny_detector(), data, None, recipe, tmp_path, "cpu", seed=0, progress=True)
    assert "synthetic/float.png" in res.skipped
    losses = [r["train/loss"] for r in res.history]
    assert losses[-1] < 0.5 * losses[0]
    assert res.best is None and (tmp_path / "last.pt").is_file()
    # weights= loads a checkpoint partially into a model with another class count
    res2 = train(tiny_detector(5), shapes_dataset(2), None, replace(recipe, epochs=1),
                 tmp_path / "ft", "cpu", weights=tmp_path / "last.pt", progress=False)
    assert res2.weights_report is not None and len(res2.weights_report.shape_mismatch) == 6


def test_nan_loss_is_reported(tmp_path: Path) -> None:
    model = tiny_detector()
    with torch.no_grad():
        model.head.convs[0].bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="lower lr0"):
        train(model, shapes_dataset(2), None, tiny_recipe(epochs=1), tmp_path, "cpu",
              progress=False)


DDP_SCRIPT = """
import os, sys, torch
sys.path.insert(0, {tests!r})
from test_engine import tiny_detector, shapes_dataset, tiny_recipe
from lumbardx.engine.trainer import train
torch.manual_seed(int(os.environ["RANK"]))  # different initial weights: DDP broadcasts rank 0's
model = tiny_detector()
train(model, shapes_dataset(6), shapes_dataset(2, seed=9),
      tiny_recipe(epochs=2, nominal_batch=None, balance="none"), {out!r}, "cpu", seed=1,
      progress=False, final_eval=False)
torch.save({{k: p.detach() for k, p in model.named_parameters()}}, {params!r} + os.environ["RANK"])
print("RANK_DONE", os.environ["RANK"])
"""


def test_ddp_two_cpu_processes_with_torchrun(tmp_path: Path) -> None:
    script = tmp_path / "ddp_train.py"
    out = tmp_path / "run"
    params = str(tmp_path / "params")
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(out),
                                        params=params))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script)], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("RANK_DONE") == 2
    c = ck.load_checkpoint(out / "last.pt")
    assert c["epoch"] == 1 and c["step"] == 2 * 2  # 6 images / 2 ranks / batch 2 -> 2 per epoch
    assert len((out / "results.csv").read_text().splitlines()) == 3  # rank 0 wrote once
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt", "results.csv"]
    p0, p1 = (torch.load(params + r, weights_only=True) for r in "01")
    assert p0.keys() == p1.keys()
    assert all(torch.equal(p0[k], p1[k]) for k in p0)  # gradients were all-reduced
    assert all(torch.equal(p0[k], c["model"][k]) for k in p0)  # rank 0 saved its weights


def test_yolov5n_overfits_four_images(tmp_path: Path) -> None:
    """yolov5n from scratch learns 4 synthetic 128 px images to mAP@0.5 >= 0.9 (~20 CPU s)."""
    from lumbardx.models.registry import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread is faster than two contended ones on small inputs
    try:
        torch.manual_seed(0)
        data = shapes_dataset(4, size=128, seed=0)
        recipe = Recipe(
            name="overfit", image_size=128, epochs=100, batch_size=2, lr0=0.1, momentum=0.937,
            nesterov=True, schedule="linear", lrf=0.1, warmup_epochs=10, warmup_min_iters=0,
            ema="paddle", ema_decay=0.9, grad_clip=10.0, amp="none", num_workers=0,
            eval_interval=100, augment=AugmentConfig(affine=0.0, brightness=0.0))
        res = train(build_model("yolov5n", 3), data, data, recipe, tmp_path, "cpu", seed=0,
                    progress=False, final_eval=True)
    finally:
        torch.set_num_threads(threads)
    assert res.final_eval is not None
    assert res.final_eval.map50 >= 0.9, res.final_eval.ap50
    assert res.best_map50 == pytest.approx(res.final_eval.map50)


def test_results_csv_gains_the_columns_of_later_rows(tmp_path: Path) -> None:
    import csv

    from lumbardx.engine.reporting import ResultsCsv

    log = ResultsCsv(tmp_path / "results.csv")
    log.append({"epoch": 0, "train/loss": 2.0})
    log.append({"epoch": 1, "train/loss": 1.5, "val/map50": 0.25})
    log.append({"epoch": 2, "train/loss": 1.0})
    with (tmp_path / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "train/loss", "val/map50"]
    assert [r["val/map50"] for r in rows] == ["", "0.25", ""]
    log.truncate_after(1)
    assert [r["epoch"] for r in log.rows()] == ["0", "1"] and log.rows()[1]["val/map50"] == "0.25"
    # a training run that validates every second epoch keeps its validation in the file
    data = shapes_dataset(2)
    train(tiny_detector(), data, data, tiny_recipe(eval_interval=2), tmp_path / "run", "cpu",
          progress=False, final_eval=False)
    with (tmp_path / "run" / "results.csv").open(newline="") as f:
        run = list(csv.DictReader(f))
    assert [bool(r["val/map50"]) for r in run] == [False, True, True]


def test_shared_labels_needs_a_loss_that_supports_it(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="needs a loss that supports it"):
        train(tiny_detector(), shapes_dataset(2), None,
              replace(tiny_recipe(), shared_labels="union"), tmp_path, "cpu", progress=False)
    with pytest.raises(ValueError, match="unknown shared_labels"):
        Recipe(shared_labels="max")


def test_ignored_regions_need_the_yolov5_loss_and_reach_it_through_augmentation(
        tmp_path: Path) -> None:
    from lumbardx.data.classes import IGNORE_LABEL
    from lumbardx.engine.pipeline import TrainTransform, sample_arrays

    data = ListDataset(replace(s, ignore=np.array([[4, 4, 20, 12]], np.float32))
                       for s in shapes_dataset(2))
    with pytest.raises(InputError, match="2 ignored regions.*TinyLoss"):
        train(tiny_detector(), data, None, tiny_recipe(), tmp_path, "cpu", progress=False)
    # evaluation and sampling read the class boxes only; training appends the regions
    plain, full = sample_arrays(data[0]), sample_arrays(data[0], ignore=True)
    assert len(full[1]) == len(plain[1]) + 1 and full[2][-1] == IGNORE_LABEL
    assert (plain[2] >= 0).all()
    transform = TrainTransform(data, 64, AugmentConfig(mosaic=0.0, affine=0.0, crop=0.0,
                                                       expand=0.0, hflip=0.0))
    _, boxes, labels = transform(0, np.random.default_rng(0))
    assert (labels == IGNORE_LABEL).sum() == 1
    np.testing.assert_allclose(boxes[labels == IGNORE_LABEL][0], [4, 4, 20, 12], atol=1e-4)
