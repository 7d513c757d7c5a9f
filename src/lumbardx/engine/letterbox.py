"""Letterbox resize: keep the aspect ratio, pad to a square, and map boxes both ways.

Boxes are xyxy in continuous 0-based pixels (``lumbardx.data.boxes``). A letterboxed image of
``size x size`` holds the original resized to ``new_w x new_h`` (``new = round(old * scale)``,
``scale = min(size / W, size / H)``) with its top-left corner at ``(pad_x, pad_y)``. A point
``x`` maps to ``x * new_w / W + pad_x`` -- the per-axis factor ``new_w / W`` (not ``scale``)
makes the image border map exactly onto the resized border.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Letterbox:
    """The geometry of one letterbox resize.

    Attributes:
        orig_w, orig_h: original size in pixels.
        new_w, new_h: size of the resized content in pixels.
        pad_x, pad_y: left and top padding in pixels.
        size: side of the square output in pixels.
    """

    orig_w: int
    orig_h: int
    new_w: int
    new_h: int
    pad_x: int
    pad_y: int
    size: int

    @property
    def sx(self) -> float:
        """Horizontal factor from original to letterboxed pixels."""
        return self.new_w / self.orig_w

    @property
    def sy(self) -> float:
        """Vertical factor from original to letterboxed pixels."""
        return self.new_h / self.orig_h

    def map_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """Original-pixel xyxy ``[N, 4]`` -> letterboxed-pixel xyxy ``[N, 4]`` (float32)."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
        b[:, [0, 2]] = b[:, [0, 2]] * self.sx + self.pad_x
        b[:, [1, 3]] = b[:, [1, 3]] * self.sy + self.pad_y
        return b.astype(np.float32)

    def unmap_boxes(self, boxes: np.ndarray, clip: bool = True) -> np.ndarray:
        """Letterboxed-pixel xyxy ``[N, 4]`` -> original-pixel xyxy ``[N, 4]`` (float32).

        With ``clip`` the result is clipped to ``[0, W] x [0, H]``.
        """
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
        b[:, [0, 2]] = (b[:, [0, 2]] - self.pad_x) / self.sx
        b[:, [1, 3]] = (b[:, [1, 3]] - self.pad_y) / self.sy
        if clip:
            b[:, [0, 2]] = b[:, [0, 2]].clip(0, self.orig_w)
            b[:, [1, 3]] = b[:, [1, 3]].clip(0, self.orig_h)
        return b.astype(np.float32)


def letterbox_geometry(width: int, height: int, size: int, center: bool = True) -> Letterbox:
    """The :class:`Letterbox` for an image of ``width x height`` into ``size x size``."""
    if width < 1 or height < 1:
        raise ValueError(f"cannot letterbox an empty image ({width}x{height})")
    scale = min(size / width, size / height)
    new_w = min(size, max(1, round(width * scale)))
    new_h = min(size, max(1, round(height * scale)))
    pad_x = (size - new_w) // 2 if center else 0
    pad_y = (size - new_h) // 2 if center else 0
    return Letterbox(width, height, new_w, new_h, pad_x, pad_y, size)


def resize_gray(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of a ``uint8 [H, W]`` image to ``[height, width]`` (antialiased)."""
    if image.shape == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def letterbox(
    image: np.ndarray, size: int, pad_value: int = 0, center: bool = True
) -> tuple[np.ndarray, Letterbox]:
    """Letterbox a ``uint8 [H, W]`` image into ``uint8 [size, size]``.

    Returns:
        the padded image and its :class:`Letterbox` (use ``map_boxes`` / ``unmap_boxes``).
    """
    if image.ndim != 2:
        raise ValueError(f"expected a grayscale image [H, W], got shape {image.shape}")
    h, w = image.shape
    geo = letterbox_geometry(w, h, size, center)
    out = np.full((size, size), pad_value, dtype=np.uint8)
    out[geo.pad_y : geo.pad_y + geo.new_h, geo.pad_x : geo.pad_x + geo.new_w] = resize_gray(
        image, geo.new_w, geo.new_h
    )
    return out, geo


def letterbox_planes(
    image: np.ndarray, size: int, pad_value: int = 0
) -> tuple[np.ndarray, Letterbox]:
    """Letterbox a gray image ``uint8 [H, W]`` or a T1/T2 pair ``uint8 [2, H, W]`` (each
    plane alike) into ``uint8 [C, size, size]`` (``C`` 1 or 2), with the :class:`Letterbox`
    of the planes (the same for all).

    Raises:
        ValueError: any other shape.
    """
    if image.ndim == 2:
        planes = [image]
    elif image.ndim == 3 and image.shape[0] == 2:
        planes = list(image)
    else:
        raise ValueError(f"expected an image [H, W] or a T1/T2 pair [2, H, W], got shape "
                         f"{image.shape}")
    boxed = [letterbox(p, size, pad_value) for p in planes]
    return np.stack([lb for lb, _ in boxed]), boxed[0][1]
