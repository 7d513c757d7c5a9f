"""Single-image augmentations for grayscale MRI with boxes.

Every function takes an image ``uint8 [H, W]``, boxes ``float32 [N, 4]`` xyxy in continuous
0-based pixels (``lumbardx.data.boxes``), labels ``int64 [N]`` and a ``numpy.random.Generator``,
and returns new arrays (inputs are never modified). Boxes that leave the image are clipped;
boxes that become too small are dropped together with their labels.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

Triple = tuple[np.ndarray, np.ndarray, np.ndarray]


def clip_boxes(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """Clip xyxy boxes ``[N, 4]`` to ``[0, width] x [0, height]`` (float32 copy)."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
    return b


def box_candidates(
    before: np.ndarray,
    after: np.ndarray,
    gain: float = 1.0,
    min_size: float = 2.0,
    min_area_ratio: float = 0.1,
    max_aspect: float = 100.0,
) -> np.ndarray:
    """Boolean mask ``[N]`` of boxes worth keeping after a transform.

    A box is kept when both sides of ``after`` exceed ``min_size`` pixels, its area is more
    than ``min_area_ratio`` of ``before``'s area times ``gain ** 2`` (the expected scale
    change), and its aspect ratio is below ``max_aspect`` (YOLOv5 ``utils/augmentations.py``
    ``box_candidates``).
    """
    w1, h1 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w2, h2 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    ar = np.maximum(w2 / (h2 + 1e-16), h2 / (w2 + 1e-16))
    area_ok = w2 * h2 / (w1 * h1 * gain * gain + 1e-16) > min_area_ratio
    return (w2 > min_size) & (h2 > min_size) & area_ok & (ar < max_aspect)


def affine_matrix(
    rng: np.random.Generator | None,
    in_size: tuple[int, int],
    out_size: int,
    degrees: float = 0.0,
    translate: float = 0.0,
    scale: float = 0.0,
    shear: float = 0.0,
) -> tuple[np.ndarray, float]:
    """A random 3x3 affine matrix (input pixels -> output pixels) and its scale gain.

    Follows YOLOv5 ``random_perspective``: move the input centre to the origin, rotate by
    ``U(-degrees, degrees)`` and scale by ``U(1 - scale, 1 + scale)``, shear by
    ``U(-shear, shear)`` degrees, then place the centre at ``out_size * (0.5 + U(-t, t))``.
    ``rng=None`` gives the deterministic centring transform (rotation 0, scale 1).
    """
    w, h = in_size
    c = np.eye(3)
    c[0, 2], c[1, 2] = -w / 2, -h / 2
    u = (lambda lo, hi: rng.uniform(lo, hi)) if rng is not None else (lambda lo, hi: 0.0)
    angle = u(-degrees, degrees)
    s = 1.0 + u(-scale, scale)
    r = np.eye(3)
    a = math.radians(angle)
    r[:2, :2] = s * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    sh = np.eye(3)
    sh[0, 1] = math.tan(math.radians(u(-shear, shear)))
    sh[1, 0] = math.tan(math.radians(u(-shear, shear)))
    t = np.eye(3)
    t[0, 2] = out_size * (0.5 + u(-translate, translate))
    t[1, 2] = out_size * (0.5 + u(-translate, translate))
    return t @ sh @ r @ c, s


def warp_affine(image: np.ndarray, matrix: np.ndarray, out_size: int, pad_value: int) -> np.ndarray:
    """Warp ``uint8 [H, W]`` with the input->output ``matrix`` into ``[out_size, out_size]``.

    PIL samples the output pixel centre ``(x + 0.5, y + 0.5)`` at ``inverse @ (x, y, 1)``, the
    same continuous pixel frame as the boxes.
    """
    inv = np.linalg.inv(matrix)
    coeffs = tuple(inv[:2].reshape(-1).tolist())
    out = Image.fromarray(image).transform(
        (out_size, out_size), Image.AFFINE, coeffs, resample=Image.BILINEAR, fillcolor=pad_value
    )
    return np.asarray(out)


def transform_boxes(boxes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 3x3 affine ``matrix`` to xyxy ``[N, 4]``: the enclosing box of the 4 corners."""
    if len(boxes) == 0:
        return np.zeros((0, 4), np.float32)
    x1, y1, x2, y2 = boxes.T.astype(np.float64)
    xs = np.stack([x1, x2, x1, x2], 1)
    ys = np.stack([y1, y1, y2, y2], 1)
    pts = np.stack([xs, ys, np.ones_like(xs)], -1) @ matrix.T  # [N, 4, 3]
    return np.stack(
        [pts[..., 0].min(1), pts[..., 1].min(1), pts[..., 0].max(1), pts[..., 1].max(1)], 1
    ).astype(np.float32)


def random_affine(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator | None,
    out_size: int,
    degrees: float = 0.0,
    translate: float = 0.1,
    scale: float = 0.5,
    shear: float = 0.0,
    pad_value: int = 0,
    min_box_size: float = 2.0,
    min_area_ratio: float = 0.1,
) -> Triple:
    """Random rotation / scale / shear / translation into a ``[out_size, out_size]`` image.

    ``rng=None`` only centres the input in the output (used to crop a mosaic canvas).
    """
    m, gain = affine_matrix(
        rng, (image.shape[1], image.shape[0]), out_size, degrees, translate, scale, shear
    )
    img = warp_affine(image, m, out_size, pad_value)
    new = clip_boxes(transform_boxes(boxes, m), out_size, out_size)
    keep = box_candidates(boxes, new, gain, min_box_size, min_area_ratio)
    return img, new[keep], labels[keep]


def adjust_intensity(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness: float = 0.0,
    contrast: float = 0.0,
    gamma: float = 0.0,
    prob: float = 1.0,
) -> np.ndarray:
    """Random gamma ``exp(U(-g, g))``, contrast ``U(1-c, 1+c)`` about the mean and brightness
    gain ``U(1-b, 1+b)``, each applied with probability ``prob``; returns ``uint8 [H, W]``."""
    f = image.astype(np.float32) / 255.0
    changed = False
    if gamma > 0 and rng.random() < prob:
        f = f ** math.exp(rng.uniform(-gamma, gamma))
        changed = True
    if contrast > 0 and rng.random() < prob:
        mean = float(f.mean())
        f = mean + (f - mean) * rng.uniform(1 - contrast, 1 + contrast)
        changed = True
    if brightness > 0 and rng.random() < prob:
        f = f * rng.uniform(1 - brightness, 1 + brightness)
        changed = True
    if not changed:
        return image.copy()
    return np.clip(np.rint(f * 255.0), 0, 255).astype(np.uint8)


def hflip(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> Triple:
    """Mirror left-right (on a sagittal slice this swaps anterior and posterior)."""
    w = image.shape[1]
    b = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    b[:, [0, 2]] = w - b[:, [2, 0]]
    return np.ascontiguousarray(image[:, ::-1]), b, labels.copy()


def random_expand(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    max_ratio: float = 4.0,
    pad_value: int = 0,
) -> Triple:
    """Place the image at a random position on a canvas ``U(1, max_ratio)`` times larger
    (PaddleDetection ``RandomExpand``): a zoom-out once resized to the training size."""
    h, w = image.shape
    r = rng.uniform(1.0, max_ratio)
    nh, nw = int(h * r), int(w * r)
    y0, x0 = int(rng.uniform(0, nh - h)), int(rng.uniform(0, nw - w))
    canvas = np.full((nh, nw), pad_value, np.uint8)
    canvas[y0 : y0 + h, x0 : x0 + w] = image
    b = np.asarray(boxes, np.float32).reshape(-1, 4) + np.array([x0, y0, x0, y0], np.float32)
    return canvas, b, labels.copy()


def _iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    a1 = np.prod(box[2:] - box[:2])
    a2 = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / (a1 + a2 - inter + 1e-12)


def random_crop(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    thresholds: tuple[float, ...] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9),
    scaling: tuple[float, float] = (0.3, 1.0),
    aspect: tuple[float, float] = (0.5, 2.0),
    attempts: int = 50,
) -> Triple:
    """IoU-constrained random crop (PaddleDetection ``RandomCrop``, SSD-style).

    A crop of scale ``U(*scaling)`` and aspect ``U(*aspect)`` is accepted when its best IoU
    with a box reaches a threshold drawn from ``thresholds`` and it contains at least one box
    centre; boxes whose centre falls outside are dropped, the rest clipped. The input is
    returned unchanged when no crop is found in ``attempts`` tries or the image has no box.
    """
    if len(boxes) == 0:
        return image.copy(), boxes.copy(), labels.copy()
    h, w = image.shape
    thresh = float(rng.choice(thresholds))
    for _ in range(attempts):
        s = rng.uniform(*scaling)
        ar = rng.uniform(max(aspect[0], s * s), min(aspect[1], 1.0 / (s * s)))
        ch, cw = int(h * s / math.sqrt(ar)), int(w * s * math.sqrt(ar))
        if ch < 2 or cw < 2 or ch > h or cw > w:
            continue
        y0, x0 = int(rng.uniform(0, h - ch)), int(rng.uniform(0, w - cw))
        crop = np.array([x0, y0, x0 + cw, y0 + ch], np.float32)
        if _iou_one_to_many(crop, boxes).max() < thresh:
            continue
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        inside = (cx >= crop[0]) & (cx < crop[2]) & (cy >= crop[1]) & (cy < crop[3])
        if not inside.any():
            continue
        b = boxes[inside] - np.array([x0, y0, x0, y0], np.float32)
        return image[y0 : y0 + ch, x0 : x0 + cw].copy(), clip_boxes(b, cw, ch), labels[inside]
    return image.copy(), boxes.copy(), labels.copy()
