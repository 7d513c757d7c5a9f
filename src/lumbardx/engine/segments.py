"""Motion segments resampled along the spine: the geometry of the segment stage.

A *motion segment* is an upper vertebra, the disc and the lower vertebra. The segment stage
(:mod:`lumbardx.models.segment_reader`) reads one crop per disc, resampled in the disc's own
frame so that every segment looks the same way up whatever the lordosis or the image's
orientation:

* **origin**: the disc centre ``(x, y)`` (pixels, :mod:`lumbardx.data.boxes` frame);
* **axis** ``t``: the unit tangent of the fitted spine curve at the disc, pointing down the
  spine (towards the sacrum);
* **anterior** ``a``: the unit normal to ``t`` pointing to the front of the body (image left
  when the patient faces left, as in ``yolospine-dev``);
* **scale**: the local inter-disc spacing ``sp`` (pixels, centre to centre along the curve).

Crop coordinates are in spacings: ``u`` along the axis (``-`` above the disc, ``+`` below),
``v`` across it (``-`` anterior, ``+`` posterior). :data:`EXTENT` ``(u0, u1, v0, v1)`` covers
both vertebral bodies to beyond their far endplates, the canal and the start of the posterior
elements; rows of a crop run along ``u`` (top = upper vertebra), columns along ``v`` (left =
anterior), so a slip of the upper vertebra always moves its content to the left.

**Synthetic slips** (:func:`segment_grid` ``shift``): the content above the disc is moved
anteriorly by ``shift`` spacings, with a linear ramp across the disc (``|u| <= RAMP``), the
shear of a spondylolisthesis. Everything above the disc moves together in a real slip, so only
this segment's crop changes; the neighbouring segments keep their appearance. Meyerding's
percentage is the offset over the lower body's AP depth; the lumbar body depth is about one
inter-disc spacing (adult means: L4 35 mm deep, 27 mm body + 7.5 mm disc; L5 35 / 26 + 6.5 mm;
the values of :mod:`lumbardx.synth.anatomy`), hence :data:`DEPTH_PER_SPACING`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lumbardx.clinical.findings import SpineFindings

EXTENT: tuple[float, float, float, float] = (-1.3, 1.3, -1.0, 1.4)  # u0, u1, v0, v1 (spacings)
SIZE: tuple[int, int] = (72, 64)  # rows (along u), columns (along v): ~1.8 px a sample
RAMP = 0.25  # half height of the shear ramp across the disc (spacings)
DEPTH_PER_SPACING = 1.0  # lumbar vertebral body AP depth / inter-disc spacing


@dataclass
class SegmentFrame:
    """The frame of one motion segment.

    Attributes:
        centre: ``(x, y)`` disc centre, pixels.
        axis: ``(tx, ty)`` unit tangent of the spine curve, pointing down the spine.
        anterior: ``(ax, ay)`` unit normal pointing anteriorly.
        spacing: local inter-disc spacing along the curve, pixels.
    """

    centre: tuple[float, float]
    axis: tuple[float, float]
    anterior: tuple[float, float]
    spacing: float


def fallback_spacing(spine: SpineFindings) -> float:
    """Inter-disc spacing (pixels) where the local one is undefined (one disc): twice the
    median height of the disc boxes (a normal box is ~0.5 spacing tall), else 1/8 of the
    image height."""
    heights = [b.height for d in spine.discs for b in d.boxes]
    if heights:
        return 2.0 * float(np.median(heights))
    return spine.image_size[1] / 8.0


def segment_frames(spine: SpineFindings, anterior_left: bool = True) -> list[SegmentFrame]:
    """One frame per disc of ``spine`` (top to bottom).

    Args:
        spine: discs with centres, arc lengths and spacings and the fitted curve.
        anterior_left: the patient faces image left (anterior = ``-x``).

    Returns:
        ``len(spine.discs)`` frames; empty without discs or curve.
    """
    if not spine.discs or spine.curve is None:
        return []
    fallback = fallback_spacing(spine)
    frames = []
    for d in spine.discs:
        t = np.asarray(spine.curve.tangent_at(d.s), dtype=float).reshape(2)
        if t[1] < 0:  # down the spine
            t = -t
        t = t / max(float(np.linalg.norm(t)), 1e-9)
        a = np.array([t[1], -t[0]])  # t rotated: for t = (0, 1), a = (1, 0)
        if (a[0] > 0) == anterior_left:
            a = -a
        sp = d.spacing if np.isfinite(d.spacing) and d.spacing > 0 else fallback
        frames.append(SegmentFrame((float(d.centre[0]), float(d.centre[1])),
                                   (float(t[0]), float(t[1])), (float(a[0]), float(a[1])),
                                   float(sp)))
    return frames


def frame_tensor(frames: Sequence[SegmentFrame]) -> Tensor:
    """``float32 [L, 7]``: centre x, y, axis x, y, anterior x, y, spacing."""
    if not frames:
        return torch.zeros(0, 7)
    return torch.tensor([[*f.centre, *f.axis, *f.anterior, f.spacing] for f in frames],
                        dtype=torch.float32)


def template_boxes(frames: Tensor | np.ndarray, template: Sequence[float],
                   image_size: tuple[int, int], anterior_left: bool = True) -> np.ndarray:
    """The slip-box template placed on each segment: ``float64 [L, 4]`` xyxy pixels, clipped
    to the image.

    Args:
        frames: ``[L, 7]`` (:func:`frame_tensor`).
        template: ``(dx, dy, w, h)`` in spacings, ``dx`` toward the image right for a patient
            facing left (mirrored otherwise), ``dy`` down
            (:func:`lumbardx.engine.segment_crossval.slip_box_template`).
        image_size: ``(width, height)`` pixels.
        anterior_left: the patient faces image left.
    """
    f = np.asarray(frames, np.float64).reshape(-1, 7)
    dx, dy, bw, bh = (float(v) for v in template)
    sp = f[:, 6]
    x = f[:, 0] + (dx if anterior_left else -dx) * sp
    y = f[:, 1] + dy * sp
    boxes = np.stack([x - bw * sp / 2, y - bh * sp / 2, x + bw * sp / 2, y + bh * sp / 2], 1)
    w, h = image_size
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    return boxes


def segment_grid(frames: Tensor, image_size: tuple[int, int], size: tuple[int, int] = SIZE,
                 extent: tuple[float, float, float, float] = EXTENT,
                 shift: Tensor | None = None, jitter: Tensor | None = None) -> Tensor:
    """Sampling grid of ``grid_sample`` (``align_corners=False``) for each segment.

    Args:
        frames: ``float32 [L, 7]`` (:func:`frame_tensor`).
        image_size: ``(width, height)`` pixels of the image sampled.
        size: ``(rows, columns)`` of each crop.
        extent: ``(u0, u1, v0, v1)`` spacings.
        shift: ``[L]`` synthetic anterior slip of the upper vertebra (spacings; 0 none).
        jitter: ``[L, 4]`` augmentation: centre offset along ``u`` and ``v`` (spacings),
            rotation (radians), log scale; ``None`` none.

    Returns:
        ``float32 [L, rows, columns, 2]`` normalised ``(x, y)`` in ``[-1, 1]`` (outside the
        image beyond).
    """
    n = frames.shape[0]
    rows, cols = size
    u0, u1, v0, v1 = extent
    u = u0 + (torch.arange(rows, dtype=torch.float32) + 0.5) * (u1 - u0) / rows
    v = v0 + (torch.arange(cols, dtype=torch.float32) + 0.5) * (v1 - v0) / cols
    uu, vv = torch.meshgrid(u, v, indexing="ij")
    uu, vv = uu.expand(n, rows, cols), vv.expand(n, rows, cols)
    centre, axis, ant, sp = frames[:, 0:2], frames[:, 2:4], frames[:, 4:6], frames[:, 6]
    if jitter is not None:
        scale = torch.exp(jitter[:, 3])
        cu, cv, rot = jitter[:, 0], jitter[:, 1], jitter[:, 2]
        uu = (uu * scale[:, None, None]) + cu[:, None, None]
        vv = (vv * scale[:, None, None]) + cv[:, None, None]
        c, s = torch.cos(rot)[:, None, None], torch.sin(rot)[:, None, None]
        uu, vv = c * uu - s * vv, s * uu + c * vv
    if shift is not None:
        w = ((RAMP - uu) / (2 * RAMP)).clamp(0.0, 1.0)  # 1 above the disc, 0 below
        vv = vv + shift[:, None, None] * w
    spn = sp[:, None, None]
    x = centre[:, 0, None, None] + spn * (uu * axis[:, 0, None, None] - vv * ant[:, 0, None, None])
    y = centre[:, 1, None, None] + spn * (uu * axis[:, 1, None, None] - vv * ant[:, 1, None, None])
    w_img, h_img = image_size
    return torch.stack([2.0 * x / w_img - 1.0, 2.0 * y / h_img - 1.0], dim=-1)


def resample_segments(planes: Tensor, frames: Tensor, size: tuple[int, int] = SIZE,
                      shift: Tensor | None = None, jitter: Tensor | None = None,
                      extent: tuple[float, float, float, float] = EXTENT) -> Tensor:
    """Crops of every segment of one image.

    Args:
        planes: ``float32 [C, H, W]`` image planes (e.g. T1, T2), any intensity scale.
        frames: ``float32 [L, 7]`` (:func:`frame_tensor`).
        size, shift, jitter, extent: as :func:`segment_grid`.

    Returns:
        ``float32 [L, C, rows, columns]``, bilinear, zero outside the image.
    """
    n = frames.shape[0]
    c, h, w = planes.shape
    if n == 0:
        return planes.new_zeros(0, c, *size)
    grid = segment_grid(frames, (w, h), size, extent, shift=shift, jitter=jitter)
    return F.grid_sample(planes.unsqueeze(0).expand(n, c, h, w), grid, mode="bilinear",
                         padding_mode="zeros", align_corners=False)
