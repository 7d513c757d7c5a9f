"""Training data, training loop and prediction of the segment reader.

**Ground truth per level.** The boxes of an image are grouped into discs with
:func:`lumbardx.clinical.findings.build_findings` (disc boxes of every class: normal, bulges,
degenerated discs; spondylolisthesis boxes by its rule 4). Spinal-stenosis boxes sit on the
canal behind the disc, off the disc centre: they do not enter the grouping and are given to
the disc nearest along the spine curve (within half a spacing). A level's targets
(:data:`lumbardx.models.segment_reader.LABELS`) are the classes of its boxes:
normal (``Normal IVD``), herniation (lumbar or thoracic bulge), spondylolisthesis, stenosis
(``Spinal Stenosis``), degeneration (``Degenerative Disc Disease``); and ``lumbosacral`` for the
lowest annotated disc (L5-S1 in every slice of the level truth set, ``bench/levels/``).

**Training** (:func:`train_segment_reader`): per step a batch of images; every disc is
resampled (:mod:`lumbardx.engine.segments`) with random jitter of centre, angle and scale,
intensities jittered per plane, and one plane sometimes standing for both (a single slice);
some images lose their lowest disc or gain a false one below it (the miscounts at the bottom
of the spine, :func:`without_lowest`, :func:`with_extra_below`).
With probability :attr:`SegmentTraining.synthetic_slip` a disc not labelled as slipped gets a
synthetic slip of ``U(slip_min, slip_max)`` spacings: target spondylolisthesis 1 and offset the
shift. Real discs without slip have offset target 0; real slips, whose size is unknown, train
the class only. Loss: binary cross-entropy per label plus ``offset_weight`` x smooth-L1 on the
offset.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lumbardx.clinical.findings import SLIP, SpineFindings, build_findings, study_class
from lumbardx.data.boxes import Box, Sample
from lumbardx.data.classes import DEGENERATION_ALIASES
from lumbardx.engine.segments import frame_tensor, resample_segments, segment_frames
from lumbardx.models.segment_reader import (LABELS, SegmentEnsemble, SegmentReader,
                                            SegmentReaderConfig, level_features)

_STENOSIS = {"spinal stenosis (ss)", "spinal stenosis", "stenosis", "ss"}


def segment_label(name: str) -> str | None:
    """The segment label (:data:`LABELS`) a class name stands for, or ``None``."""
    key = name.strip().lower()
    if key in _STENOSIS:
        return "stenosis"
    if key in DEGENERATION_ALIASES:
        return "degeneration"
    return study_class(name)


@dataclass
class SegmentItem:
    """One image as the segment stage sees it.

    Attributes:
        image_id, patient: identifiers.
        planes: ``uint8 [2, H, W]`` (T1, T2; a single slice repeated).
        spine: the discs (ground truth grouping, or predicted discs).
        frames: ``float32 [L, 7]`` segment frames, top to bottom.
        targets: ``float32 [L, K]`` 0/1 per label of :data:`LABELS`.
        slip_boxes: ``float32 [M, 4]`` ground-truth spondylolisthesis boxes (xyxy pixels).
    """

    image_id: str
    patient: str
    planes: np.ndarray
    spine: SpineFindings
    frames: Tensor
    targets: Tensor
    slip_boxes: np.ndarray


def truth_spine(boxes: Sequence[Box], image_size: tuple[int, int]
                ) -> tuple[SpineFindings, list[set[str]]]:
    """Discs from ground-truth boxes and each disc's segment labels (module docstring)."""
    disc_boxes = [b for b in boxes if segment_label(b.label) != "stenosis"]
    canal = [b for b in boxes if segment_label(b.label) == "stenosis"]
    spine = build_findings(disc_boxes, image_size)
    labels = [{segment_label(b.label) for b in d.boxes} - {None} for d in spine.discs]
    if spine.discs and spine.curve is not None and canal:
        s_disc = np.array([d.s for d in spine.discs])
        sp = np.array([d.spacing if np.isfinite(d.spacing) else np.inf for d in spine.discs])
        s_box, _ = spine.curve.project(np.array([[(b.x1 + b.x2) / 2, (b.y1 + b.y2) / 2]
                                                 for b in canal]))
        for sb in s_box:
            i = int(np.argmin(np.abs(s_disc - sb)))
            if abs(s_disc[i] - sb) <= 0.5 * (sp[i] if np.isfinite(sp[i]) else np.inf):
                labels[i].add("stenosis")
    return spine, labels  # type: ignore[return-value]


def item_from_sample(sample: Sample, class_names: Sequence[str],
                     anterior_left: bool = True, lumbosacral_lowest: bool = True
                     ) -> SegmentItem:
    """A :class:`SegmentItem` from a dataset sample (``image`` ``[H, W]`` or ``[2, H, W]``)
    with ground-truth targets; ``lumbosacral_lowest``: the lowest annotated disc is L5-S1 (so in
    every yolospine-dev slice checked by eye, ``bench/levels/``)."""
    img = sample.image if sample.image.ndim == 3 else np.stack([sample.image] * 2)
    h, w = img.shape[1:]
    boxes = [Box(class_names[int(lab)], *map(float, bx))
             for bx, lab in zip(sample.boxes, sample.labels)]
    spine, labels = truth_spine(boxes, (w, h))
    if labels and lumbosacral_lowest:
        labels[-1].add("lumbosacral")
    frames = frame_tensor(segment_frames(spine, anterior_left))
    targets = torch.tensor([[float(k in lab) for k in LABELS] for lab in labels],
                           dtype=torch.float32).reshape(len(labels), len(LABELS))
    slips = np.array([bx for bx, lab in zip(sample.boxes, sample.labels)
                      if study_class(class_names[int(lab)]) == SLIP], np.float32).reshape(-1, 4)
    return SegmentItem(sample.image_id, sample.patient, img, spine, frames, targets, slips)


@dataclass
class SegmentTraining:
    """Hyper-parameters of :func:`train_segment_reader`.

    Attributes:
        epochs, batch (images per step), lr (AdamW, cosine to 5%), weight_decay, seed.
        synthetic_slip: probability that a non-slipped disc is given a synthetic slip.
        slip_min, slip_max: its size in spacings (~ Meyerding fraction, one spacing ~ one
            body depth): grades I and II.
        jitter_centre (spacings), jitter_angle (degrees), jitter_scale (log scale): s.d. of the
            frame augmentation, mimicking a detector's disc centres and the curve's tangent.
        single_sequence: probability of reading one plane as both.
        offset_weight: weight of the offset loss.
        slip_weight: weight of the spondylolisthesis label in the classification loss.
        drop_lowest, extra_below: probabilities per image of reading it without its lowest
            disc (:func:`without_lowest`) or with a false disc below it
            (:func:`with_extra_below`): the two miscounts at the bottom of the spine, so that
            the ``lumbosacral`` head learns the sacrum's look, not the disc's position.
        slip_repeat: repeat sampling: an image with a real (annotated) slip is drawn this many
            times per epoch (1: once, like every other image); the epoch grows accordingly.
        slip_retro: fraction of the synthetic slips made posterior (retrolisthesis: the upper
            vertebra moved backward by the same ``U(slip_min, slip_max)``; offset target
            negative). The dataset's spondylolisthesis boxes include retrolistheses (a quarter
            of the slips the vertebral-corner estimate measures lie behind the normal discs'
            10th centile, ``bench/results/slip_geometry.json``); 0: every synthetic slip
            anterior.
    """

    epochs: int = 30
    batch: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    synthetic_slip: float = 0.12
    slip_min: float = 0.08
    slip_max: float = 0.5
    jitter_centre: float = 0.06
    jitter_angle: float = 5.0
    jitter_scale: float = 0.08
    single_sequence: float = 0.25
    offset_weight: float = 4.0
    slip_weight: float = 2.0
    drop_lowest: float = 0.2
    extra_below: float = 0.1
    slip_repeat: int = 1
    slip_retro: float = 0.0
    config: SegmentReaderConfig = field(default_factory=SegmentReaderConfig)


def without_lowest(item: SegmentItem) -> SegmentItem:
    """The item as a detector that missed its lowest disc would give it (the next disc up is
    then the lowest, and nothing is labelled L5-S1)."""
    return replace(item, frames=item.frames[:-1], targets=item.targets[:-1])


def with_extra_below(item: SegmentItem) -> SegmentItem:
    """The item with a false disc one spacing below its lowest one (inside the sacrum, where a
    detector may put an extra box), labelled with nothing."""
    if item.frames.shape[0] == 0:
        return item
    f = item.frames[-1].clone()
    f[0:2] = f[0:2] + f[6] * f[2:4]
    return replace(item, frames=torch.cat([item.frames, f[None]]),
                   targets=torch.cat([item.targets, torch.zeros(1, item.targets.shape[1])]))


def training_settings(cfg: SegmentTraining) -> dict[str, Any]:
    """The hyper-parameters of ``cfg`` without the network's configuration (JSON-able), as
    checkpoints and results record them."""
    return {k: v for k, v in asdict(cfg).items() if k != "config"}


def _normalise(planes: Tensor) -> Tensor:
    """``uint8``/float planes ``[C, H, W]`` -> zero-mean, unit-s.d. per plane (float32)."""
    x = planes.float()
    mean = x.mean(dim=(1, 2), keepdim=True)
    std = x.std(dim=(1, 2), keepdim=True).clamp_min(1.0)
    return (x - mean) / std


def crops_for(item: SegmentItem, config: SegmentReaderConfig, shift: Tensor | None = None,
              jitter: Tensor | None = None, planes: Tensor | None = None) -> Tensor:
    """The item's crops ``float32 [L, 2, rows, cols]`` (normalised planes) at the reader's
    size and extent."""
    p = _normalise(torch.from_numpy(np.ascontiguousarray(item.planes))) if planes is None \
        else planes
    return resample_segments(p, item.frames, config.size, shift=shift, jitter=jitter,
                             extent=config.extent)


def collate(crops: Sequence[Tensor], extra: Sequence[Tensor] = ()
            ) -> tuple[Tensor, Tensor, Tensor]:
    """Pad per-image crops ``[L_i, C, H, W]`` to ``[B, L, C, H, W]``; mask ``[B, L]`` and level
    features ``[B, L, 3]``."""
    n = max((c.shape[0] for c in crops), default=0)
    n = max(n, 1)
    b = len(crops)
    shape = crops[0].shape[1:]
    x = crops[0].new_zeros(b, n, *shape)
    mask = torch.zeros(b, n, dtype=torch.bool)
    feats = torch.zeros(b, n, 3)
    for i, c in enumerate(crops):
        k = c.shape[0]
        x[i, :k] = c
        mask[i, :k] = True
        if k:
            feats[i, :k] = level_features(k)
    return x, mask, feats


def _augment_planes(planes: Tensor, g: torch.Generator, single: float) -> Tensor:
    x = planes.float() / 255.0
    for c in range(x.shape[0]):
        gamma = float(torch.exp(torch.randn(1, generator=g) * 0.25))
        gain = 1.0 + 0.15 * float(torch.randn(1, generator=g))
        x[c] = (x[c].clamp_min(0) ** gamma) * gain
    if float(torch.rand(1, generator=g)) < single:
        c = int(torch.randint(0, x.shape[0], (1,), generator=g))
        x = x[c:c + 1].expand_as(x).clone()
    x = x + 0.02 * torch.randn(x.shape, generator=g)
    return _normalise(x)


def _batch(items: Sequence[SegmentItem], cfg: SegmentTraining, g: torch.Generator
           ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    crops, targets, offsets, known = [], [], [], []
    k_slip = LABELS.index("spondylolisthesis")
    for it in items:
        u = float(torch.rand(1, generator=g))
        if u < cfg.drop_lowest and it.frames.shape[0] > 2:
            it = without_lowest(it)
        elif u < cfg.drop_lowest + cfg.extra_below:
            it = with_extra_below(it)
        n = it.frames.shape[0]
        t = it.targets.clone()
        real_slip = t[:, k_slip] > 0
        synth = (torch.rand(n, generator=g) < cfg.synthetic_slip) & ~real_slip
        shift = torch.where(synth, cfg.slip_min + (cfg.slip_max - cfg.slip_min)
                            * torch.rand(n, generator=g), torch.zeros(n))
        if cfg.slip_retro > 0:
            retro = torch.rand(n, generator=g) < cfg.slip_retro
            shift = torch.where(retro, -shift, shift)
        t[synth, k_slip] = 1.0
        jit = torch.stack([torch.randn(n, generator=g) * cfg.jitter_centre,
                           torch.randn(n, generator=g) * cfg.jitter_centre,
                           torch.randn(n, generator=g) * math.radians(cfg.jitter_angle),
                           torch.randn(n, generator=g) * cfg.jitter_scale], dim=1)
        planes = _augment_planes(torch.from_numpy(np.ascontiguousarray(it.planes)), g,
                                 cfg.single_sequence)
        crops.append(crops_for(it, cfg.config, shift=shift, jitter=jit, planes=planes))
        targets.append(t)
        offsets.append(shift)
        known.append(~real_slip)
    x, mask, feats = collate(crops)
    n = x.shape[1]

    def pad(ts: list[Tensor], fill: float) -> Tensor:
        out = torch.full((len(ts), n, *ts[0].shape[1:]), fill)
        for i, v in enumerate(ts):
            out[i, :v.shape[0]] = v
        return out

    return x, mask, feats, pad(targets, 0.0), pad(offsets, 0.0), \
        pad([k.float() for k in known], 0.0).bool()


def repeat_slips(items: Sequence[SegmentItem], times: int) -> list[SegmentItem]:
    """``items`` with every image that has an annotated slip listed ``times`` times (repeat
    sampling of the rare class; each copy is augmented independently during training)."""
    if times < 1:
        raise ValueError(f"slip_repeat must be >= 1, got {times}")
    k = LABELS.index("spondylolisthesis")
    out: list[SegmentItem] = []
    for it in items:
        n = times if it.targets.shape[0] and bool(it.targets[:, k].any()) else 1
        out.extend([it] * n)
    return out


def train_segment_reader(items: Sequence[SegmentItem], cfg: SegmentTraining,
                         log: Callable[[str], None] | None = None) -> SegmentReader:
    """Train a :class:`SegmentReader` on ``items`` (images with at least one disc)."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    items = repeat_slips([it for it in items if it.frames.shape[0] > 0], cfg.slip_repeat)
    model = SegmentReader(cfg.config)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(items) / cfg.batch))
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    w_label = torch.ones(len(LABELS))
    w_label[LABELS.index("spondylolisthesis")] = cfg.slip_weight
    model.train()
    for epoch in range(cfg.epochs):
        t0, seen, run = time.perf_counter(), 0, 0.0
        order = torch.randperm(len(items), generator=g).tolist()
        for s in range(steps_per_epoch):
            chunk = [items[i] for i in order[s * cfg.batch:(s + 1) * cfg.batch]]
            if not chunk:
                continue
            x, mask, feats, tgt, off, known = _batch(chunk, cfg, g)
            logits, offset = model(x, mask, feats)
            m = mask.float()
            bce = F.binary_cross_entropy_with_logits(logits, tgt, reduction="none")
            cls_loss = ((bce * w_label).sum(-1) * m).sum() / m.sum().clamp_min(1)
            km = (known & mask).float()
            reg = F.smooth_l1_loss(offset, off, beta=0.05, reduction="none")
            reg_loss = (reg * km).sum() / km.sum().clamp_min(1)
            loss = cls_loss + cfg.offset_weight * reg_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run += float(loss.detach()) * len(chunk)
            seen += len(chunk)
        if log is not None:
            log(f"epoch {epoch + 1}/{cfg.epochs} loss {run / max(seen, 1):.4f} "
                f"({time.perf_counter() - t0:.0f} s)")
    return model.eval()


@torch.no_grad()
def predict_items(model: SegmentReader | SegmentEnsemble, items: Sequence[SegmentItem],
                  batch: int = 16) -> list[tuple[Tensor, Tensor]]:
    """Raw logits ``[L, K]`` and offsets ``[L]`` (spacings) per item, in order."""
    model.eval()
    out: list[tuple[Tensor, Tensor]] = []
    for s in range(0, len(items), batch):
        chunk = items[s:s + batch]
        crops = [crops_for(it, model.config) for it in chunk]
        x, mask, feats = collate(crops)
        logits, offset = model(x, mask, feats)
        for i, it in enumerate(chunk):
            n = it.frames.shape[0]
            out.append((logits[i, :n].clone(), offset[i, :n].clone()))
    return out
