"""Batched training augmentation on tensors, where the training set lives.

:func:`augment_batch` turns a batch of indices of a :class:`~lumbardx.engine.device_data.
DeviceSet` into ``(images uint8 [B, C, S, S], targets float32 [M, 6])`` -- the same batch
:func:`lumbardx.engine.loader.collate` makes from the CPU pipeline (target rows ``(batch index,
class, x1, y1, x2, y2)`` in pixels) -- with tensor operations over the whole batch on the
set's device: no per-sample Python, no worker process.

It draws from the same distributions as the CPU pipeline
(:class:`lumbardx.engine.pipeline.TrainTransform`, each step with the probability of
:class:`~lumbardx.engine.recipes.AugmentConfig`):

1. 4-image mosaic around a centre ``U(S/2, 3S/2)`` of a ``2S`` canvas, then the random affine
   (or the centring crop) to ``S``; or, without mosaic, random expand -> IoU-constrained random
   crop (50 attempts, the first accepted) -> letterbox -> random affine;
2. mixup with a second sample built the same way, ratio ``Beta(*mixup_beta)``;
3. gamma, contrast about each channel's mean, brightness; 4. horizontal flip;
5. boxes clipped to the image, boxes under ``min_box_size`` dropped; with T1/T2 pairs, one
   channel fills both with probability ``single_sequence``.

**How.** Every transform above maps an output pixel to an input pixel by a 3x3 matrix, so a
sample is the sum, over its (up to 4) source images, of one bilinear ``grid_sample`` through
the composed matrix, masked to where that source shows (inside its image and inside the
mosaic canvas or crop window). Boxes go through the same matrices (enclosing box of the
transformed corners, YOLOv5 ``box_candidates`` after the affine), in float64. Where the
composed transform shrinks an image by 2**k, level ``k`` of the set's pyramid is sampled, as the
CPU pipeline's antialiased resizes would. Images stay float until the end and are rounded to
``uint8`` once (the CPU pipeline rounds after each step).

**Randomness.** All random numbers of a batch are drawn at once, vectorised, from the
``numpy.random.Generator`` passed in (:func:`draw`; a few thousand numbers), and moved to the
device with the batch's indices: a batch is a pure function of ``(indices, generator seed)``
on any device, which keeps resume exact and lets the CPU tests check what a GPU will run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lumbardx.engine.device_data import LEVELS, DeviceSet, pyramid_level
from lumbardx.engine.recipes import AugmentConfig

CROP_ATTEMPTS = 50  #: random-crop candidates per sample (``augment.random_crop`` attempts)
CROP_THRESHOLDS = np.array([0.0, 0.1, 0.3, 0.5, 0.7, 0.9])  #: its IoU thresholds
CROP_SCALING = (0.3, 1.0)  #: its crop scale range
CROP_ASPECT = (0.5, 2.0)  #: its crop aspect range
PARTS = 4  #: source images per sample (a mosaic's four; one without mosaic)


def draw(rng: np.random.Generator, a: AugmentConfig, batch: int,
         num_images: int) -> dict[str, np.ndarray]:
    """Every random number of one batch, as arrays (float64 unless stated).

    Builds ``R = 2 * batch`` samples are drawn (the second ``batch`` are the mixup partners,
    used where ``mixup_on``). Keys, with ``[shape]``:

    * per build ``[R]``: ``mosaic_on``, ``affine_on``, ``expand_on``, ``crop_on`` (bool),
      ``partners`` (int ``[R, 3]``), ``centre`` ``[R, 2]`` (pixels of the ``2S`` canvas, before
      flooring), ``angle`` (degrees), ``scale_gain``, ``shear`` ``[R, 2]`` (degrees),
      ``translate`` ``[R, 2]`` (fractions), ``expand_ratio``, ``expand_pos`` ``[R, 2]`` (U(0,
      1)), ``crop_thresh``, ``crop_u`` ``[R, CROP_ATTEMPTS, 4]`` (U(0, 1)), ``mix_index`` (int);
    * per output sample ``[batch]``: ``mixup_on``, ``gamma_on``, ``contrast_on``,
      ``bright_on``, ``hflip``, ``single_on`` (bool), ``mix_ratio``, ``gamma`` (exponent),
      ``contrast``, ``bright`` (gains), ``single_channel`` (int).
    """
    r = 2 * batch
    u = rng.random
    d: dict[str, np.ndarray] = {
        "mosaic_on": u(r) < a.mosaic,
        "partners": rng.integers(0, num_images, (r, 3)),
        "centre": rng.uniform(0.5, 1.5, (r, 2)),  # x S
        "affine_on": u(r) < a.affine,
        "angle": rng.uniform(-a.degrees, a.degrees, r) if a.degrees else np.zeros(r),
        "scale_gain": 1.0 + (rng.uniform(-a.scale, a.scale, r) if a.scale else np.zeros(r)),
        "shear": rng.uniform(-a.shear, a.shear, (r, 2)) if a.shear else np.zeros((r, 2)),
        "translate": (rng.uniform(-a.translate, a.translate, (r, 2)) if a.translate
                      else np.zeros((r, 2))),
        "expand_on": u(r) < a.expand,
        "expand_ratio": rng.uniform(1.0, a.expand_ratio, r),
        "expand_pos": u((r, 2)),
        "crop_on": u(r) < a.crop,
        "crop_thresh": CROP_THRESHOLDS[rng.integers(0, len(CROP_THRESHOLDS), r)],
        "crop_u": u((r, CROP_ATTEMPTS, 4)),
        "mix_index": rng.integers(0, num_images, r),
        "mixup_on": u(batch) < a.mixup,
        "mix_ratio": np.clip(rng.beta(*a.mixup_beta, batch), 0.0, 1.0),
        "gamma_on": (u(batch) < a.intensity_prob) & (a.gamma > 0),
        "gamma": np.exp(rng.uniform(-a.gamma, a.gamma, batch)),
        "contrast_on": (u(batch) < a.intensity_prob) & (a.contrast > 0),
        "contrast": rng.uniform(1 - a.contrast, 1 + a.contrast, batch),
        "bright_on": (u(batch) < a.intensity_prob) & (a.brightness > 0),
        "bright": rng.uniform(1 - a.brightness, 1 + a.brightness, batch),
        "hflip": u(batch) < a.hflip,
        "single_on": u(batch) < a.single_sequence,
        "single_channel": rng.integers(0, 2, batch),
    }
    return d


@dataclass
class Geometry:
    """Where each source image of each build lands (``R`` builds, ``P = PARTS`` parts).

    Attributes:
        index: source image ``int64 [R, P]``; active: ``bool [R, P]`` (parts 1..3 only in a
            mosaic).
        pre: ``float64 [R, P, 3, 3]`` source pixels -> the "before" frame (the mosaic canvas,
            or the letterboxed ``S x S`` image without mosaic).
        window: ``float64 [R, P, 4]`` xyxy in the before frame where a source may show (the
            ``2S`` canvas, or the letterboxed crop window).
        affine: ``float64 [R, 3, 3]`` before frame -> output pixels; gain ``float64 [R]`` its
            scale; candidates ``bool [R]``: whether YOLOv5 ``box_candidates`` applies (after
            every mosaic, and after a random affine without mosaic).
        centre_keep: ``bool [R, P, K]`` boxes whose centre the random crop kept.
    """

    index: Tensor
    active: Tensor
    pre: Tensor
    window: Tensor
    affine: Tensor
    gain: Tensor
    candidates: Tensor
    centre_keep: Tensor


def _eye(n: int, like: Tensor) -> Tensor:
    return torch.eye(3, dtype=torch.float64, device=like.device).expand(n, 3, 3).clone()


def _translate(tx: Tensor, ty: Tensor) -> Tensor:
    m = _eye(tx.numel(), tx).reshape(*tx.shape, 3, 3)
    m[..., 0, 2], m[..., 1, 2] = tx, ty
    return m


def _scale(sx: Tensor, sy: Tensor) -> Tensor:
    m = _eye(sx.numel(), sx).reshape(*sx.shape, 3, 3)
    m[..., 0, 0], m[..., 1, 1] = sx, sy
    return m


def affine_matrices(d: dict[str, Tensor], size: int) -> tuple[Tensor, Tensor, Tensor]:
    """The random affine of each build: ``(matrix float64 [R, 3, 3], gain [R], candidates
    bool [R])`` from the before frame to the output, as
    :func:`lumbardx.engine.augment.affine_matrix` (``T @ Sh @ R @ C``). A mosaic without the
    affine only centres its ``2S`` canvas in ``S``; a plain sample without it is unchanged."""
    mosaic, on = d["mosaic_on"], d["affine_on"]
    r = mosaic.shape[0]
    in_size = torch.where(mosaic, 2.0 * size, float(size)).to(torch.float64)
    angle = torch.where(on, d["angle"], 0.0) * math.pi / 180
    s = torch.where(on, d["scale_gain"], 1.0)
    shear = torch.where(on[:, None], d["shear"], 0.0) * math.pi / 180
    t = torch.where(on[:, None], d["translate"], 0.0)
    c = _translate(-in_size / 2, -in_size / 2)
    rot = _eye(r, s)
    rot[:, 0, 0], rot[:, 0, 1] = s * torch.cos(angle), -s * torch.sin(angle)
    rot[:, 1, 0], rot[:, 1, 1] = s * torch.sin(angle), s * torch.cos(angle)
    sh = _eye(r, s)
    sh[:, 0, 1], sh[:, 1, 0] = torch.tan(shear[:, 0]), torch.tan(shear[:, 1])
    tr = _translate(size * (0.5 + t[:, 0]), size * (0.5 + t[:, 1]))
    m = tr @ sh @ rot @ c
    plain_off = ~mosaic & ~on
    m = torch.where(plain_off[:, None, None], _eye(r, s), m)
    return m, s, mosaic | on


def _box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU ``[..., A, K]`` of xyxy ``a [..., A, 4]`` and ``b [..., K, 4]``."""
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).prod(-1)
    return inter / (area_a[..., :, None] + area_b[..., None, :] - inter + 1e-12)


def _plain_frames(ds: DeviceSet, index: Tensor, d: dict[str, Tensor]
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """Expand -> crop -> letterbox of each build's first image: ``(pre float64 [R, 3, 3],
    window [R, 4] in the letterboxed frame, centre_keep bool [R, K])``."""
    s = ds.size
    wh = ds.sizes[index]  # [R, 2]
    w, h = wh[:, 0], wh[:, 1]
    # RandomExpand: canvas int(w r) x int(h r), image at int(U(0, nw - w)), int(U(0, nh - h))
    ratio = torch.where(d["expand_on"], d["expand_ratio"], 1.0)
    nw, nh = torch.floor(w * ratio), torch.floor(h * ratio)
    x0 = torch.where(d["expand_on"], torch.floor(d["expand_pos"][:, 0] * (nw - w)), 0.0)
    y0 = torch.where(d["expand_on"], torch.floor(d["expand_pos"][:, 1] * (nh - h)), 0.0)
    boxes = ds.boxes[index] + torch.stack([x0, y0, x0, y0], -1)[:, None]  # canvas frame
    real = ds.labels[index] >= 0  # [R, K]
    # RandomCrop: CROP_ATTEMPTS candidates at once, the first accepted one wins
    cu = d["crop_u"]
    lo, hi = CROP_SCALING
    sc = lo + cu[..., 0] * (hi - lo)
    alo = torch.clamp(sc * sc, min=CROP_ASPECT[0])
    ahi = torch.clamp(1.0 / (sc * sc), max=CROP_ASPECT[1])
    ar = alo + cu[..., 1] * (ahi - alo)
    ch = torch.floor(nh[:, None] * sc / torch.sqrt(ar))
    cw = torch.floor(nw[:, None] * sc * torch.sqrt(ar))
    fits = (ch >= 2) & (cw >= 2) & (ch <= nh[:, None]) & (cw <= nw[:, None])
    cy0 = torch.floor(cu[..., 2] * (nh[:, None] - ch))
    cx0 = torch.floor(cu[..., 3] * (nw[:, None] - cw))
    crops = torch.stack([cx0, cy0, cx0 + cw, cy0 + ch], -1)  # [R, A, 4]
    iou = torch.where(real[:, None, :], _box_iou(crops, boxes), -1.0)
    iou_ok = iou.amax(-1) >= d["crop_thresh"][:, None]
    cx = (boxes[..., 0] + boxes[..., 2]) / 2
    cy = (boxes[..., 1] + boxes[..., 3]) / 2
    inside = ((cx[:, None] >= crops[..., 0:1]) & (cx[:, None] < crops[..., 2:3])
              & (cy[:, None] >= crops[..., 1:2]) & (cy[:, None] < crops[..., 3:4])
              & real[:, None])  # [R, A, K]
    ok = fits & iou_ok & inside.any(-1)
    first = ok.to(torch.int64).argmax(-1)
    cropped = d["crop_on"] & ok.any(-1) & real.any(-1)
    rows = torch.arange(len(first), device=first.device)
    pick = crops[rows, first]
    full = torch.stack([torch.zeros_like(nw), torch.zeros_like(nh), nw, nh], -1)
    win = torch.where(cropped[:, None], pick, full)  # canvas frame
    keep = torch.where(cropped[:, None], inside[rows, first], real)
    # letterbox the window to S (engine.letterbox.letterbox_geometry)
    ww, wh_ = win[:, 2] - win[:, 0], win[:, 3] - win[:, 1]
    scale = torch.minimum(s / ww, s / wh_)
    new_w = torch.clamp(torch.round(ww * scale), 1, s)
    new_h = torch.clamp(torch.round(wh_ * scale), 1, s)
    pad_x, pad_y = torch.floor((s - new_w) / 2), torch.floor((s - new_h) / 2)
    lb = (_translate(pad_x, pad_y) @ _scale(new_w / ww, new_h / wh_)
          @ _translate(-win[:, 0], -win[:, 1]))
    pre = lb @ _translate(x0, y0)
    window = torch.stack([pad_x, pad_y, pad_x + new_w, pad_y + new_h], -1)
    return pre, window, keep


def geometry(ds: DeviceSet, index: Tensor, d: dict[str, Tensor]) -> Geometry:
    """The :class:`Geometry` of builds whose first images are ``index int64 [R]``."""
    s = ds.size
    r = index.shape[0]
    mosaic = d["mosaic_on"]
    parts = torch.cat([index[:, None], d["partners"]], 1)  # [R, P]
    parts = torch.where(mosaic[:, None], parts, index[:, None])
    active = torch.zeros(r, PARTS, dtype=torch.bool, device=index.device)
    active[:, 0] = True
    active |= mosaic[:, None]
    # mosaic: parts touch the centre (xc, yc) from the top-left, top-right, bottom-left,
    # bottom-right (engine.mosaic.mosaic4)
    xc = torch.floor(d["centre"][:, 0] * s)[:, None]
    yc = torch.floor(d["centre"][:, 1] * s)[:, None]
    wh = ds.sizes[parts]
    w, h = wh[..., 0], wh[..., 1]
    left = torch.tensor([True, False, True, False], device=index.device)
    top = torch.tensor([True, True, False, False], device=index.device)
    ox = torch.where(left, xc - w, xc.expand(-1, PARTS))
    oy = torch.where(top, yc - h, yc.expand(-1, PARTS))
    pre_m = _translate(ox, oy)
    win_m = torch.tensor([0.0, 0.0, 2.0 * s, 2.0 * s], dtype=torch.float64,
                         device=index.device).expand(r, PARTS, 4)
    pre_p, win_p, keep_p = _plain_frames(ds, index, d)
    pre = torch.where(mosaic[:, None, None, None], pre_m, pre_p[:, None])
    window = torch.where(mosaic[:, None, None], win_m, win_p[:, None])
    real = ds.labels[parts] >= 0
    keep = torch.where(mosaic[:, None, None], real, keep_p[:, None] & real)
    affine, gain, cand = affine_matrices(d, s)
    return Geometry(parts, active, pre, window, affine, gain, cand, keep & active[..., None])


def _corners_box(boxes: Tensor, m: Tensor) -> Tensor:
    """Enclosing xyxy ``[..., K, 4]`` of the 4 corners of ``boxes`` mapped by ``m [..., 3,
    3]`` (:func:`lumbardx.engine.augment.transform_boxes`)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    xs = torch.stack([x1, x2, x1, x2], -1)
    ys = torch.stack([y1, y1, y2, y2], -1)
    a = m[..., None, None, :, :]  # [..., 1, 1, 3, 3]
    px = a[..., 0, 0] * xs + a[..., 0, 1] * ys + a[..., 0, 2]
    py = a[..., 1, 0] * xs + a[..., 1, 1] * ys + a[..., 1, 2]
    return torch.stack([px.amin(-1), py.amin(-1), px.amax(-1), py.amax(-1)], -1)


def box_candidates(before: Tensor, after: Tensor, gain: Tensor, min_size: float,
                   min_area_ratio: float, max_aspect: float = 100.0) -> Tensor:
    """:func:`lumbardx.engine.augment.box_candidates` on tensors ``[..., K, 4]``; ``gain``
    broadcasts to ``[..., K]``."""
    w1, h1 = before[..., 2] - before[..., 0], before[..., 3] - before[..., 1]
    w2, h2 = after[..., 2] - after[..., 0], after[..., 3] - after[..., 1]
    ar = torch.maximum(w2 / (h2 + 1e-16), h2 / (w2 + 1e-16))
    area_ok = w2 * h2 / (w1 * h1 * gain * gain + 1e-16) > min_area_ratio
    return (w2 > min_size) & (h2 > min_size) & area_ok & (ar < max_aspect)


def transform_boxes(ds: DeviceSet, g: Geometry, a: AugmentConfig
                    ) -> tuple[Tensor, Tensor]:
    """Boxes of every part in output pixels ``float64 [R, P, K, 4]`` and which survive
    ``bool [R, P, K]`` (crop centres, ``box_candidates``; not yet the final size filter)."""
    s = ds.size
    src = ds.boxes[g.index]  # [R, P, K, 4]
    before = _corners_box(src, g.pre)
    lo, hi = g.window[..., None, :2], g.window[..., None, 2:]
    before = torch.cat([torch.maximum(torch.minimum(before[..., :2], hi), lo),
                        torch.maximum(torch.minimum(before[..., 2:], hi), lo)], -1)
    after = _corners_box(before, g.affine[:, None]).clamp(0, s)
    cand = box_candidates(before, after, g.gain[:, None, None], a.min_box_size,
                          a.min_area_ratio)
    keep = g.centre_keep & (cand | ~g.candidates[:, None, None])
    return after, keep


def _normaliser(x1: Tensor, y1: Tensor, x2: Tensor, y2: Tensor) -> Tensor:
    """``[..., 3, 3]`` pixels of the rectangle -> [-1, 1] (``grid_sample`` coordinates)."""
    return _translate(-torch.ones_like(x1), -torch.ones_like(y1)) @ _scale(
        2.0 / (x2 - x1), 2.0 / (y2 - y1)) @ _translate(-x1, -y1)


def _grid(theta: Tensor, size: int) -> Tensor:
    """``float32 [n, size, size, 2]``: the normalised output pixel centres (``grid_sample``,
    ``align_corners=False``) mapped by ``theta [n, 3, 3]`` (what ``F.affine_grid`` gives, by
    broadcasting instead of a batched product)."""
    t = theta[:, :2].float()[:, :, :, None, None]  # [n, 2, 3, 1, 1]
    c = (torch.arange(size, device=theta.device, dtype=torch.float32) * 2 + 1) / size - 1
    xs, ys = c[None, None, :], c[None, :, None]
    return torch.stack([t[:, i, 0] * xs + t[:, i, 1] * ys + t[:, i, 2] for i in (0, 1)], -1)


def render(ds: DeviceSet, g: Geometry) -> Tensor:
    """The builds' images ``float32 [R, C, S, S]`` (0..255): every active part sampled
    bilinearly through its composed matrix from the pyramid level its shrink asks for, masked
    to its image and window, on the pad value."""
    s, c = ds.size, ds.channels
    r = g.index.shape[0]
    dev = ds.device
    pad = float(ds.pad_value)
    out = torch.full((r, c, s, s), pad, dtype=torch.float32, device=dev)
    rows = g.active.reshape(-1).nonzero().squeeze(1)  # flat (build, part) rows
    if rows.numel() == 0:
        return out
    build = rows // PARTS
    img = g.index.reshape(-1)[rows]
    pre = g.pre.reshape(-1, 3, 3)[rows]
    win = g.window.reshape(-1, 4)[rows]
    aff = g.affine[build]
    wh = ds.sizes[img]
    zero = torch.zeros_like(wh[:, 0])
    full = torch.full_like(zero, float(s))
    unnorm_out = torch.linalg.inv(_normaliser(zero, zero, full, full))
    aff_inv = torch.linalg.inv(aff)
    to_src = (_normaliser(zero, zero, wh[:, 0], wh[:, 1]) @ torch.linalg.inv(pre)
              @ aff_inv @ unnorm_out)
    to_win = (_normaliser(win[:, 0], win[:, 1], win[:, 2], win[:, 3]) @ aff_inv
              @ unnorm_out)
    shrink = torch.sqrt(torch.linalg.det((aff @ pre)[:, :2, :2]).abs())
    level = pyramid_level(shrink)
    for k in range(LEVELS):
        sel = (level == k).nonzero().squeeze(1)
        if sel.numel() == 0:
            continue
        grid = _grid(to_src[sel], s)
        shows = ((grid.abs() <= 1).all(-1) & (_grid(to_win[sel], s).abs() <= 1).all(-1))[:, None]
        src = ds.images[k][img[sel]].float()
        sampled = F.grid_sample(src, grid, mode="bilinear", padding_mode="border",
                                align_corners=False)
        out.index_add_(0, build[sel], torch.where(shows, sampled - pad, 0.0))
    return out


def _intensity(x: Tensor, d: dict[str, Tensor]) -> Tensor:
    """Gamma, contrast about each channel's mean, brightness (``augment.adjust_intensity``)
    on ``float32 [B, C, S, S]`` in 0..255; clipped to 0..255."""
    f = x / 255.0
    view = (-1, 1, 1, 1)
    g = torch.where(d["gamma_on"], d["gamma"], 1.0).float().view(view)
    f = torch.where(d["gamma_on"].view(view), f.clamp_min(0) ** g, f)
    mean = f.mean((2, 3), keepdim=True)
    cg = d["contrast"].float().view(view)
    f = torch.where(d["contrast_on"].view(view), mean + (f - mean) * cg, f)
    bg = d["bright"].float().view(view)
    f = torch.where(d["bright_on"].view(view), f * bg, f)
    return (f * 255.0).clamp(0, 255)


def augment_batch(ds: DeviceSet, indices: Tensor | np.ndarray | list[int],
                  rng: np.random.Generator, a: AugmentConfig) -> tuple[Tensor, Tensor]:
    """One augmented training batch (see the module docstring).

    Args:
        ds: the training set on its device.
        indices: ``[B]`` sample indices into ``ds``.
        rng: source of every random number of the batch.
        a: the augmentation (with ``mosaic`` and ``mixup`` 0 in the ``close_mosaic`` epochs).

    Returns:
        images ``uint8 [B, C, S, S]`` and targets ``float32 [M, 6]`` rows ``(batch index,
        class, x1, y1, x2, y2)`` in output pixels, both on ``ds.device``.
    """
    dev = ds.device
    idx = torch.as_tensor(np.asarray(indices, np.int64), device=dev)
    b = idx.shape[0]
    raw = draw(rng, a, b, len(ds))
    d = {k: torch.as_tensor(v, device=dev) for k, v in raw.items()}
    builds = torch.cat([idx, d["mix_index"][b:]])
    g = geometry(ds, builds, d)
    g.active[b:] &= d["mixup_on"][:, None]  # partners are only drawn where mixup is on
    images = render(ds, g)
    boxes, keep = transform_boxes(ds, g, a)
    labels = ds.labels[g.index]
    mix = d["mixup_on"]
    ratio = d["mix_ratio"].float().view(-1, 1, 1, 1)
    img = torch.where(mix.view(-1, 1, 1, 1), images[:b] * ratio + images[b:] * (1 - ratio),
                      images[:b])
    keep = keep.clone()
    keep[b:] &= mix[:, None, None]
    boxes = torch.cat([boxes[:b].flatten(1, 2), boxes[b:].flatten(1, 2)], 1)  # [B, 2PK, 4]
    keep = torch.cat([keep[:b].flatten(1), keep[b:].flatten(1)], 1)
    labels = torch.cat([labels[:b].flatten(1), labels[b:].flatten(1)], 1)
    img = _intensity(img, d)
    flip = d["hflip"]
    img = torch.where(flip.view(-1, 1, 1, 1), img.flip(-1), img)
    fx = torch.stack([ds.size - boxes[..., 2], boxes[..., 1], ds.size - boxes[..., 0],
                      boxes[..., 3]], -1)
    boxes = torch.where(flip[:, None, None], fx, boxes).clamp(0, ds.size)
    wh = boxes[..., 2:] - boxes[..., :2]
    keep &= (wh >= a.min_box_size).all(-1) & (labels >= 0)
    if ds.channels == 2:
        ch = d["single_channel"].view(-1, 1, 1, 1).expand(-1, 1, ds.size, ds.size)
        one = img.gather(1, ch).expand(-1, 2, -1, -1)
        img = torch.where(d["single_on"].view(-1, 1, 1, 1), one, img)
    out = torch.round(img).to(torch.uint8)
    bi, ki = keep.nonzero(as_tuple=True)
    targets = torch.cat([bi[:, None].double(), labels[bi, ki][:, None].double(),
                         boxes[bi, ki]], 1).float()
    return out, targets
