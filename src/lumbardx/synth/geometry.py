"""Image geometry for the synthetic slices: mm <-> pixel mapping, polygon SDFs, polyline frames.

Pixel coordinates follow :mod:`lumbardx.data.boxes`: continuous, 0-based, ``(x, y)`` with the
centre of pixel ``(row i, col j)`` at ``(j + 0.5, i + 0.5)``. Anatomy coordinates are mm in the
sagittal plane, ``u`` posterior and ``v`` inferior (see :mod:`lumbardx.synth.anatomy`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class View:
    """Where the image grid lies on the anatomy.

    Attributes:
        height, width: image size in pixels.
        spacing: isotropic pixel spacing (mm).
        theta: in-plane rotation of the image axes against the anatomy axes (rad).
        centre: anatomy point (mm, ``[2]`` u, v) at the image centre.
    """

    height: int
    width: int
    spacing: float
    theta: float
    centre: tuple[float, float]

    def _rot(self, sign: float) -> np.ndarray:
        c, s = np.cos(sign * self.theta), np.sin(sign * self.theta)
        return np.array([[c, -s], [s, c]])

    def to_px(self, pts: np.ndarray) -> np.ndarray:
        """Anatomy mm ``[..., 2]`` (u, v) -> continuous pixel ``[..., 2]`` (x, y)."""
        q = (np.asarray(pts, dtype=float) - np.asarray(self.centre)) @ self._rot(-1.0).T
        return q / self.spacing + np.array([self.width / 2, self.height / 2])

    def to_mm(self, px: np.ndarray) -> np.ndarray:
        """Continuous pixel ``[..., 2]`` (x, y) -> anatomy mm ``[..., 2]`` (u, v)."""
        half = np.array([self.width / 2, self.height / 2])
        q = (np.asarray(px, dtype=float) - half) * self.spacing
        return q @ self._rot(1.0).T + np.asarray(self.centre)

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Anatomy coordinates of every pixel centre: ``U, V`` float64 ``[H, W]`` (mm)."""
        xs = np.arange(self.width) + 0.5
        ys = np.arange(self.height) + 0.5
        px = np.stack(np.meshgrid(xs, ys), axis=-1)
        mm = self.to_mm(px)
        return mm[..., 0], mm[..., 1]


def polygon_sdf(u: np.ndarray, v: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Exact signed distance (mm, negative inside) from points ``u, v`` (any shape) to a
    simple polygon ``poly`` ``[K, 2]`` (u, v), inside decided by the even-odd rule."""
    d2 = np.full(u.shape, np.inf)
    inside = np.zeros(u.shape, dtype=bool)
    b = np.roll(poly, -1, axis=0)
    for (au, av), (bu, bv) in zip(poly, b, strict=True):
        eu, ev = bu - au, bv - av
        wu, wv = u - au, v - av
        t = np.clip((wu * eu + wv * ev) / max(eu * eu + ev * ev, 1e-12), 0.0, 1.0)
        d2 = np.minimum(d2, (wu - t * eu) ** 2 + (wv - t * ev) ** 2)
        crosses = (av > v) != (bv > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            xi = au + (v - av) * (bu - au) / (bv - av)
        inside ^= crosses & (u < xi)
    return np.where(inside, -1.0, 1.0) * np.sqrt(d2)


def window_of(view: View, poly: np.ndarray, pad_mm: float = 3.0) -> tuple[slice, slice] | None:
    """Row/column slices of the pixels within ``pad_mm`` of the polygon's box, or ``None``."""
    px = view.to_px(poly)
    pad = pad_mm / view.spacing + 1
    x0, y0 = np.floor(px.min(axis=0) - pad).astype(int)
    x1, y1 = np.ceil(px.max(axis=0) + pad).astype(int)
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, view.width), min(y1, view.height)
    if x0 >= x1 or y0 >= y1:
        return None
    return slice(y0, y1), slice(x0, x1)


def chamfer(poly: np.ndarray, cut: float) -> np.ndarray:
    """Cut every corner of ``poly`` ``[K, 2]`` by ``cut`` mm along both edges -> ``[2K, 2]``."""
    out = []
    n = len(poly)
    for i in range(n):
        p, a, b = poly[i], poly[i - 1], poly[(i + 1) % n]
        da, db = a - p, b - p
        ca = min(cut, 0.45 * np.linalg.norm(da))
        cb = min(cut, 0.45 * np.linalg.norm(db))
        out.append(p + da / np.linalg.norm(da) * ca)
        out.append(p + db / np.linalg.norm(db) * cb)
    return np.asarray(out)


def polyline_frame(u: np.ndarray, v: np.ndarray, line: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Arc length ``s`` of the nearest point on ``line`` ``[K, 2]`` and signed distance ``d``
    (mm; positive to the right of the direction of travel, i.e. posterior for a line running
    head to foot). Returns two arrays shaped like ``u``."""
    best = np.full(u.shape, np.inf)
    s_out = np.zeros(u.shape)
    d_out = np.zeros(u.shape)
    s0 = 0.0
    for a, b in zip(line[:-1], line[1:], strict=True):
        e = b - a
        length = float(np.hypot(*e))
        wu, wv = u - a[0], v - a[1]
        t = np.clip((wu * e[0] + wv * e[1]) / (length * length), 0.0, 1.0)
        ru, rv = wu - t * e[0], wv - t * e[1]
        d2 = ru * ru + rv * rv
        closer = d2 < best
        best = np.where(closer, d2, best)
        s_out = np.where(closer, s0 + t * length, s_out)
        side = -(e[0] * rv - e[1] * ru)
        d_out = np.where(closer, np.sign(side + 1e-12) * np.sqrt(d2), d_out)
        s0 += length
    return s_out, d_out


def cumulative_length(line: np.ndarray) -> np.ndarray:
    """Arc length at each vertex of ``line`` ``[K, 2]`` -> ``[K]`` (mm)."""
    return np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(line, axis=0).T))])


def smooth_polyline(line: np.ndarray, step: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``line`` ``[K, 2]`` every ``step`` mm and Gaussian-smooth it (``sigma`` mm).

    Returns the smoothed points ``[M, 2]`` and the arc length on ``line`` each came from ``[M]``.
    """
    sv = cumulative_length(line)
    t = np.arange(0.0, sv[-1] + step, step).clip(max=sv[-1])
    pts = np.stack([np.interp(t, sv, line[:, 0]), np.interp(t, sv, line[:, 1])], axis=1)
    return ndimage.gaussian_filter1d(pts, sigma / step, axis=0, mode="nearest"), t


def coarse_polyline_frame(view: View, line: np.ndarray,
                          factor: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """:func:`polyline_frame` on every ``factor``-th pixel, bilinearly interpolated to
    ``[H, W]``; for smooth lines, whose frame is smooth near the spine."""
    rows = np.arange(0, view.height + factor, factor).clip(max=view.height - 1)
    cols = np.arange(0, view.width + factor, factor).clip(max=view.width - 1)
    px = np.stack(np.meshgrid(cols + 0.5, rows + 0.5), axis=-1)
    mm = view.to_mm(px)
    s, d = polyline_frame(mm[..., 0], mm[..., 1], line)
    ii, jj = np.meshgrid(np.arange(view.height) / factor, np.arange(view.width) / factor,
                         indexing="ij")
    coords = np.stack([ii, jj])
    return (ndimage.map_coordinates(s, coords, order=1, mode="nearest"),
            ndimage.map_coordinates(d, coords, order=1, mode="nearest"))
