"""Training the spondylolisthesis verifier (:mod:`lumbardx.models.slip_verifier`) of a trained
detector, and writing the detector + verifier as one checkpoint.

Training data, from the detector's **training** images only (never the images that will score
it), every image letterboxed to the detector's input size as in evaluation:

* **positives**: the ground-truth boxes of the verified class, and the detector's predictions
  of that class that overlap one (IoU >= :attr:`VerifierTraining.match_iou`);
* **negatives**: the detector's other predictions of that class (at the evaluation
  confidence, 0.001: the candidates the verifier will see), and a box of the class's median
  ground-truth size centred on every other annotated disc whose centre no box of the class
  holds (the levels where a spondylolisthesis prediction must not fire).

Each epoch draws every positive :attr:`VerifierTraining.positive_repeats` times and
:attr:`VerifierTraining.negatives_per_epoch` negatives at random; each crop's box is jittered
(shift and scale up to :attr:`VerifierTraining.jitter` of its size), mirrored left-right with
probability 0.5, and its intensities gamma- and gain-jittered. Loss: binary cross-entropy;
AdamW with a one-cycle learning rate. The :attr:`VerifierConfig.members` CNNs are trained with
different seeds (``seed + 1000 * member``), one after the other.

For a detector trained on T1/T2 pairs the samples are pairs (:class:`lumbardx.data.pairs.
SequencePairs`, ``uint8 [2, H, W]``): the detector reads them as it was trained
(:func:`lumbardx.engine.model_input.three_channels`), the crops hold T1 and T2
(:attr:`VerifierConfig.channels` 2), and with probability
:attr:`VerifierTraining.single_sequence` one of the two fills both, as a single slice will.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from lumbardx import __version__
from lumbardx.data.boxes import Sample
from lumbardx.data.errors import InputError
from lumbardx.engine.checkpoint import save_checkpoint
from lumbardx.engine.letterbox import letterbox_planes
from lumbardx.engine.model_input import three_channels
from lumbardx.engine.pipeline import sample_arrays
from lumbardx.models.detector import Detector
from lumbardx.models.slip_verifier import (
    RESCORER_KEY,
    CropNet,
    SlipVerifier,
    VerifierConfig,
    crop_boxes,
)

log = logging.getLogger(__name__)

#: Checkpoint keys carried over from the detector's checkpoint to the detector + verifier one.
METADATA_KEYS = ("model_name", "num_classes", "class_names", "image_size", "recipe", "seed",
                 "tag", "thresholds", "threshold_evidence", "training_data", "epoch")


@dataclass(frozen=True)
class VerifierTraining:
    """How a :class:`SlipVerifier` is trained (module docstring).

    Attributes:
        epochs: passes over the positives (each ``positive_repeats`` times) per member.
        batch: crops per step.
        lr: peak learning rate of the one-cycle schedule (AdamW).
        weight_decay: AdamW weight decay.
        positive_repeats: draws of every positive per epoch.
        negatives_per_epoch: negatives drawn (without replacement) per epoch.
        jitter: largest box shift and scale change, as a fraction of its size.
        match_iou: IoU at which a detector candidate counts as a positive.
        seed: seed of member 0.
        single_sequence: for two-channel (T1/T2) crops, the probability that one channel
            fills both (module docstring); unused for gray crops.
    """

    epochs: int = 12
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    positive_repeats: int = 4
    negatives_per_epoch: int = 2000
    jitter: float = 0.1
    match_iou: float = 0.5
    seed: int = 0
    single_sequence: float = 0.25


@dataclass
class Candidates:
    """The crops' sources: letterboxed images and labelled boxes.

    Attributes:
        images: ``float32 [C, S, S]`` letterboxed training images in [0, 1] (``C`` 1, or 2
            for T1/T2 pairs; converted once: every epoch crops from them; 0.6 MB per channel
            at S = 384).
        boxes: per image, ``float32 [M, 4]`` xyxy input pixels.
        targets: per image, ``float32 [M]`` (1 slip, 0 not).
    """

    images: list[Tensor]
    boxes: list[Tensor]
    targets: list[Tensor]

    def counts(self) -> tuple[int, int]:
        """``(positives, negatives)``."""
        pos = int(sum(float(t.sum()) for t in self.targets))
        return pos, int(sum(len(t) for t in self.targets)) - pos


def other_disc_boxes(gt_boxes: Tensor, gt_labels: Tensor, class_index: int,
                     size: tuple[float, float]) -> Tensor:
    """Boxes of ``size`` (w, h) centred on every box of another class whose centre no box of
    ``class_index`` holds: ``[N, 4]`` xyxy."""
    mine = gt_boxes[gt_labels == class_index]
    other = gt_boxes[gt_labels != class_index]
    centre = (other[:, :2] + other[:, 2:]) / 2
    if len(mine) and len(centre):
        inside = ((centre[:, None] >= mine[None, :, :2]) & (centre[:, None] <= mine[None, :, 2:])
                  ).all(-1).any(1)
        centre = centre[~inside]
    half = torch.tensor(size, dtype=torch.float32) / 2
    return torch.cat([centre - half, centre + half], 1)


@torch.inference_mode()
def collect_candidates(model: Detector, samples: Sequence[Sample], class_index: int,
                       image_size: int, pad_value: int = 0, match_iou: float = 0.5,
                       batch_size: int = 8) -> Candidates:
    """Letterbox ``samples``, run ``model`` (its rescorer off) and label the candidates
    (module docstring). Unreadable samples are skipped with a warning.

    Raises:
        InputError: no box of ``class_index`` in ``samples`` (nothing to learn from).
    """
    imgs: list[Tensor] = []
    gts: list[tuple[Tensor, Tensor]] = []
    for i in range(len(samples)):
        try:
            img, boxes, labels = sample_arrays(samples[i])
        except InputError as exc:
            log.warning("skipping %s", exc)
            continue
        lb, geo = letterbox_planes(img, image_size, pad_value)  # gray, or a T1/T2 pair
        imgs.append(torch.from_numpy(lb).float().div_(255))
        gts.append((torch.from_numpy(geo.map_boxes(boxes)), torch.from_numpy(
            np.asarray(labels, np.int64))))
    mine = torch.cat([b[lab == class_index] for b, lab in gts] + [torch.zeros(0, 4)])
    if not len(mine):
        raise InputError(None, f"the training images hold no box of class {class_index}: "
                               "the verifier has nothing to learn")
    wh = (mine[:, 2:] - mine[:, :2]).median(0).values
    size = (float(wh[0]), float(wh[1]))
    rescorer, was_training = model.rescorer, model.training
    model.rescorer = None
    model.eval()
    dets: list[dict[str, Tensor]] = []
    try:
        dev = next(model.parameters()).device
        for s in range(0, len(imgs), batch_size):
            x = three_channels(torch.stack(imgs[s:s + batch_size]))
            dets.extend(model(x.to(dev)))
    finally:
        model.rescorer = rescorer
        model.train(was_training)
    boxes, targets = [], []
    for (gb, gl), det in zip(gts, dets):
        g_mine = gb[gl == class_index]
        cand = det["boxes"][det["labels"] == class_index].float().cpu()
        hit = (box_iou(cand, g_mine).max(1).values >= match_iou).float() \
            if len(cand) and len(g_mine) else torch.zeros(len(cand))
        neg = other_disc_boxes(gb, gl, class_index, size)
        boxes.append(torch.cat([g_mine, cand, neg]))
        targets.append(torch.cat([torch.ones(len(g_mine)), hit, torch.zeros(len(neg))]))
    return Candidates(imgs, boxes, targets)


def _jitter(boxes: Tensor, g: torch.Generator, amount: float) -> Tensor:
    wh = boxes[:, 2:] - boxes[:, :2]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + (torch.rand(len(boxes), 2, generator=g) * 2 - 1
                                                 ) * amount * wh
    half = wh * (1 + (torch.rand(len(boxes), 2, generator=g) * 2 - 1) * amount) / 2
    return torch.cat([centre - half, centre + half], 1)


def _train_member(cands: Candidates, config: VerifierConfig, train: VerifierTraining,
                  seed: int, progress: Callable[[str], None] | None) -> tuple[CropNet, list[float]]:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    items = [(i, k) for i, t in enumerate(cands.targets) for k in range(len(t))]
    pos = [it for it in items if cands.targets[it[0]][it[1]] > 0.5]
    neg = [it for it in items if cands.targets[it[0]][it[1]] <= 0.5]
    per_epoch = len(pos) * train.positive_repeats + min(train.negatives_per_epoch, len(neg))
    steps = math.ceil(per_epoch / train.batch)
    net = CropNet(config.width, config.channels)
    opt = torch.optim.AdamW(net.parameters(), train.lr, weight_decay=train.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, train.lr, total_steps=train.epochs * steps)
    loss_fn = nn.BCEWithLogitsLoss()
    losses = []
    net.train()
    for epoch in range(train.epochs):
        draw = pos * train.positive_repeats + [
            neg[j] for j in torch.randperm(len(neg), generator=g)[:train.negatives_per_epoch]]
        order = torch.randperm(len(draw), generator=g).tolist()
        total = 0.0
        for s in range(steps):
            batch = [draw[j] for j in order[s * train.batch:(s + 1) * train.batch]]
            if not batch:
                break
            xs = []
            for i, k in batch:
                box = _jitter(cands.boxes[i][k:k + 1], g, train.jitter)
                x = crop_boxes(cands.images[i], box, config.context, config.crop_size)
                if x.shape[1] == 2 and torch.rand(1, generator=g) < train.single_sequence:
                    keep = int(torch.rand(1, generator=g) < 0.5)  # T1 or T2 fills both
                    x = x[:, keep:keep + 1].expand(-1, 2, -1, -1)
                if torch.rand(1, generator=g) < 0.5:
                    x = x.flip(-1)
                gamma = torch.exp((torch.rand(1, generator=g) - 0.5) * 0.6)
                xs.append(x.clamp(0, 1) ** gamma * (0.8 + 0.4 * torch.rand(1, generator=g)))
            y = torch.stack([cands.targets[i][k] for i, k in batch])
            loss = loss_fn(net(torch.cat(xs)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(batch)
        losses.append(total / max(len(draw), 1))
        if progress is not None:
            progress(f"member seed {seed}: epoch {epoch + 1}/{train.epochs} "
                     f"loss {losses[-1]:.4f}")
    net.eval()
    return net, losses


def train_slip_verifier(
    model: Detector,
    samples: Sequence[Sample],
    class_index: int,
    image_size: int,
    config: VerifierConfig | None = None,
    train: VerifierTraining | None = None,
    pad_value: int = 0,
    progress: Callable[[str], None] | None = None,
) -> tuple[SlipVerifier, dict[str, Any]]:
    """Train a verifier for ``model`` on its training ``samples`` (module docstring).

    Args:
        model: the trained detector (left unchanged; its own rescorer is ignored).
        samples: the images the detector was trained on (never its test images); T1/T2
            pairs for a detector trained on pairs (``config.channels`` 2).
        class_index: the class to verify (spondylolisthesis).
        image_size: the detector's input size (pixels, square).
        progress: called with a line per epoch.

    Returns:
        The verifier (eval mode, CPU) and a summary: candidate counts, loss per epoch and
        member, seconds, settings.

    Raises:
        InputError: no box of ``class_index`` among ``samples``.
    """
    config = config or VerifierConfig(class_index=class_index)
    if config.class_index != class_index:
        raise ValueError(f"config verifies class {config.class_index}, not {class_index}")
    train = train or VerifierTraining()
    t0 = time.perf_counter()
    cands = collect_candidates(model, samples, class_index, image_size, pad_value,
                               train.match_iou)
    channels = {int(im.shape[0]) for im in cands.images}
    if channels != {config.channels}:
        raise ValueError(f"the verifier takes {config.channels}-channel crops but the samples "
                         f"have {sorted(channels)} channel(s): use channels=2 exactly for "
                         "T1/T2 pairs (lumbardx.data.pairs.SequencePairs)")
    n_pos, n_neg = cands.counts()
    if progress is not None:
        progress(f"{len(cands.images)} images: {n_pos} positive and {n_neg} negative crops")
    verifier = SlipVerifier(config)
    losses = []
    for m in range(config.members):
        net, member_losses = _train_member(cands, config, train, train.seed + 1000 * m, progress)
        verifier.nets[m].load_state_dict(net.state_dict())
        losses.append(member_losses)
    verifier.eval()
    summary = {"images": len(cands.images), "positives": n_pos, "negatives": n_neg,
               "loss": losses, "seconds": time.perf_counter() - t0,
               "config": verifier.config(), "training": asdict(train)}
    return verifier, summary


def save_with_rescorer(source: dict[str, Any], model: Detector, path: str | Path,
                       summary: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (a detector with its ``rescorer`` set) as a deployable checkpoint:
    the detector's metadata from its ``source`` checkpoint (:data:`METADATA_KEYS`), ``model``
    (the whole state dict, detector and rescorer), ``rescorer`` (its configuration) and
    ``rescorer_training`` (``summary``). Written atomically.

    Raises:
        TypeError: ``model`` has no slip verifier as its rescorer.
    """
    if not isinstance(model.rescorer, SlipVerifier):
        raise TypeError("the detector has no slip verifier to save")
    ckpt = {k: source[k] for k in METADATA_KEYS if k in source}
    ckpt.update({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                 "ema": None, RESCORER_KEY: model.rescorer.config(),
                 "rescorer_training": summary or {},
                 "lumbardx_version": source.get("lumbardx_version", __version__)})
    return save_checkpoint(ckpt, path)
