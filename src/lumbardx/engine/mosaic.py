"""Multi-image augmentations: 4-image mosaic (YOLOv5) and mixup (PP-YOLOv2 / YOLOv5).

Images are ``uint8 [H, W]``; boxes ``float32 [N, 4]`` xyxy pixels; labels ``int64 [N]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lumbardx.engine.augment import Triple, clip_boxes
from lumbardx.engine.letterbox import resize_gray


def resize_long_side(
    image: np.ndarray, boxes: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Resize so that the longer side equals ``size`` (YOLOv5 ``load_image``); boxes follow."""
    h, w = image.shape
    r = size / max(h, w)
    nw, nh = max(1, round(w * r)), max(1, round(h * r))
    b = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    b[:, [0, 2]] *= nw / w
    b[:, [1, 3]] *= nh / h
    return resize_gray(image, nw, nh), b


def mosaic4(
    parts: Sequence[Triple], size: int, rng: np.random.Generator, pad_value: int = 0
) -> Triple:
    """Tile four samples around a random centre of a ``[2 size, 2 size]`` canvas.

    YOLOv5 ``utils/dataloaders.py`` ``load_mosaic``: each image is resized to a long side of
    ``size``; the centre is ``U(size / 2, 3 size / 2)`` on both axes; parts go top-left,
    top-right, bottom-left, bottom-right of the centre, cut at the canvas border. Crop the
    result to ``size`` with :func:`lumbardx.engine.augment.random_affine`.

    Returns:
        canvas ``uint8 [2 size, 2 size]``, boxes ``[N, 4]`` clipped to the canvas, labels.
    """
    if len(parts) != 4:
        raise ValueError(f"mosaic needs 4 images, got {len(parts)}")
    s = size
    xc, yc = (int(rng.uniform(s / 2, 3 * s / 2)) for _ in range(2))
    canvas = np.full((2 * s, 2 * s), pad_value, np.uint8)
    all_boxes, all_labels = [], []
    for i, (image, boxes, labels) in enumerate(parts):
        img, b = resize_long_side(image, boxes, s)
        h, w = img.shape
        if i == 0:
            xa1, ya1, xa2, ya2 = max(xc - w, 0), max(yc - h, 0), xc, yc
            xb1, yb1 = w - (xa2 - xa1), h - (ya2 - ya1)
        elif i == 1:
            xa1, ya1, xa2, ya2 = xc, max(yc - h, 0), min(xc + w, 2 * s), yc
            xb1, yb1 = 0, h - (ya2 - ya1)
        elif i == 2:
            xa1, ya1, xa2, ya2 = max(xc - w, 0), yc, xc, min(2 * s, yc + h)
            xb1, yb1 = w - (xa2 - xa1), 0
        else:
            xa1, ya1, xa2, ya2 = xc, yc, min(xc + w, 2 * s), min(2 * s, yc + h)
            xb1, yb1 = 0, 0
        canvas[ya1:ya2, xa1:xa2] = img[yb1 : yb1 + (ya2 - ya1), xb1 : xb1 + (xa2 - xa1)]
        all_boxes.append(b + np.array([xa1 - xb1, ya1 - yb1] * 2, np.float32))
        all_labels.append(np.asarray(labels, np.int64).reshape(-1))
    boxes = clip_boxes(np.concatenate(all_boxes), 2 * s, 2 * s)
    return canvas, boxes, np.concatenate(all_labels)


def mixup(a: Triple, b: Triple, rng: np.random.Generator, beta: tuple[float, float]) -> Triple:
    """Blend two same-size samples with ratio ``r ~ Beta(*beta)``: ``r a + (1 - r) b``.

    All boxes of both are kept (PaddleDetection ``Mixup``, YOLOv5 ``mixup``).
    """
    if a[0].shape != b[0].shape:
        raise ValueError(f"mixup needs same-size images, got {a[0].shape} and {b[0].shape}")
    r = float(np.clip(rng.beta(*beta), 0.0, 1.0))
    img = np.clip(np.rint(a[0].astype(np.float32) * r + b[0].astype(np.float32) * (1 - r)), 0, 255)
    return (
        img.astype(np.uint8),
        np.concatenate([a[1], b[1]]).astype(np.float32),
        np.concatenate([a[2], b[2]]).astype(np.int64),
    )
