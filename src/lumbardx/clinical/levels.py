"""Order discs along the spine curve and name their levels (T9-T10 .. L5-S1).

Coordinates are image pixels in the :mod:`lumbardx.data.boxes` frame (continuous, 0-based,
``x`` right, ``y`` down); sagittal images show the spine running roughly top to bottom.

Curve. :func:`fit_spine_curve` fits ``x = p(y)`` (a polynomial of degree <= 3, fewer with few
points) through disc centres by iteratively re-weighted least squares with Tukey's biweight,
so one box far from the spine (a false positive in the abdomen) does not bend it. Discs are
ordered by the **arc length** ``s`` of their nearest point on the curve, not by ``y``.

Levels (:func:`name_levels`). Names are counted upward from the lowest disc, which is ``L5-S1``
when the sacrum is recognised. Between neighbouring discs, a gap longer than
``GAP_FACTOR`` (1.6) times the median spacing is taken to hide ``round(gap / spacing) - 1``
undetected discs: their names are skipped and every level above the gap is flagged uncertain
(the count is ambiguous). Every level is flagged uncertain when the sacrum is not recognised.
A lumbosacral transitional vertebra (sacralised L5 / lumbarised S1) cannot be seen in one
sagittal slice; counting from the sacrum then shifts every name by one, as in any method that
counts from S1 (SpineNet), so report levels with the whole-spine localiser when it matters.

Sacrum rule (:func:`sacrum_recognised`). Without evidence from the caller the sacrum is
"recognised" when (1) the image extends below the lowest disc centre, along the curve's
tangent there, by at least ``SACRUM_MARGIN`` (1.5) local inter-disc spacings, so that a further
disc (about one spacing lower, its box reaching ~0.3 spacing further) would lie wholly in view
and would have been detected, and (2) the lowest disc's box does not touch the image border.
Measured on generated cases (``lumbardx.synth``), the rule never recognises a hidden sacrum
(a partly visible disc there can lie up to ~1.3 spacings below the lowest complete one) but
leaves some visible sacra unrecognised (16 of 42 in one sample) when the image ends within
1.5 spacings of L5-S1: those levels are named from L5-S1 all the same and flagged uncertain,
unless other evidence recognises the sacrum (the segment reader reading the lowest disc as
L5-S1: :func:`lumbardx.clinical.findings.recognise_sacrum`, :data:`SHORT_FIELD`). In the 832
yolospine-dev images the field extends 1.07-3.3 (median 1.87) vertical spacings below the
lowest disc box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Vertebrae from C2 to S1, top to bottom; a disc level is "<upper>-<lower>".
VERTEBRAE: tuple[str, ...] = (
    tuple(f"C{i}" for i in range(2, 8)) + tuple(f"T{i}" for i in range(1, 13))
    + tuple(f"L{i}" for i in range(1, 6)) + ("S1",)
)
DISC_LEVELS: tuple[str, ...] = tuple(f"{a}-{b}" for a, b in zip(VERTEBRAE[:-1], VERTEBRAE[1:]))
GAP_FACTOR = 1.6
SACRUM_MARGIN = 1.5
#: How :func:`sacrum_recognised`'s reason starts when the field ends too close below the lowest
#: disc (the only refusal other evidence of the sacrum may overrule).
SHORT_FIELD = "the image extends only"
_DENSE = 512  # samples of the curve used for projection


@dataclass
class SpineCurve:
    """A smooth curve ``x = p(y)`` through the disc centres, sampled densely.

    Attributes:
        coef: polynomial coefficients of ``p`` in ``numpy.polyval`` order, in the normalised
            variable ``(y - y_mid) / y_half``.
        y_mid, y_half: normalisation of ``y`` (pixels).
        y_lo, y_hi: the ``y`` range of the samples (pixels); the curve extends beyond the
            outermost centres by one spacing (extrapolated) so that projection is defined.
        points: ``float64 [K, 2]`` samples ``(x, y)`` top to bottom.
        arc: ``float64 [K]`` arc length (pixels) of each sample, 0 at ``points[0]``.
        inlier: ``bool [N]`` per fitted centre: ``False`` for points the robust fit rejected.
    """

    coef: np.ndarray
    y_mid: float
    y_half: float
    y_lo: float
    y_hi: float
    points: np.ndarray
    arc: np.ndarray
    inlier: np.ndarray

    def x_at(self, y: np.ndarray | float) -> np.ndarray:
        """``x`` of the curve at ``y`` (pixels), any shape."""
        return np.polyval(self.coef, (np.asarray(y, dtype=float) - self.y_mid) / self.y_half)

    def project(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Arc length ``s [N]`` of the nearest curve point and signed distance ``d [N]``
        (pixels, positive to the image right of the downward curve) of points ``xy [N, 2]``."""
        xy = np.atleast_2d(np.asarray(xy, dtype=float))
        diff = xy[:, None, :] - self.points[None, :, :]  # [N, K, 2]
        k = np.argmin((diff**2).sum(-1), axis=1)
        t = self.tangent_at(self.arc[k])
        rel = xy - self.points[k]
        s = self.arc[k] + (rel * t).sum(-1)
        d = rel[:, 0] * t[:, 1] - rel[:, 1] * t[:, 0]
        return s, d

    def point_at(self, s: np.ndarray | float) -> np.ndarray:
        """Curve points ``[..., 2]`` (x, y) at arc lengths ``s`` (linear between samples)."""
        s = np.asarray(s, dtype=float)
        x = np.interp(s, self.arc, self.points[:, 0])
        y = np.interp(s, self.arc, self.points[:, 1])
        return np.stack([x, y], axis=-1)

    def tangent_at(self, s: np.ndarray | float) -> np.ndarray:
        """Unit tangents ``[..., 2]`` pointing down the spine (towards larger ``y``)."""
        y = np.interp(np.asarray(s, dtype=float), self.arc, self.points[:, 1])
        dp = np.polyval(np.polyder(self.coef), (y - self.y_mid) / self.y_half) / self.y_half
        t = np.stack([dp, np.ones_like(dp)], axis=-1)
        return t / np.linalg.norm(t, axis=-1, keepdims=True)


def _biweight(r: np.ndarray, scale: float) -> np.ndarray:
    u = r / (4.685 * scale)
    return np.where(np.abs(u) < 1, (1 - u**2) ** 2, 0.0)


def fit_spine_curve(centres: np.ndarray, spacing: float | None = None,
                    max_degree: int = 3) -> SpineCurve:
    """Robust fit of ``x = p(y)`` through disc centres.

    Args:
        centres: ``[N, 2]`` box centres (x, y) in pixels, ``N >= 1``.
        spacing: typical inter-disc spacing (pixels), used as the floor of the residual scale
            (a residual above ~``spacing`` rejects a point); estimated from ``y`` if ``None``.
        max_degree: highest polynomial degree; the degree used is ``min(max_degree, n - 2)``
            (at least 0, and 1 with 3 or more points) so that the fit stays over-determined,
            and less than the number of distinct ``y`` (centres side by side fit a vertical
            line).

    Returns:
        The curve; :attr:`SpineCurve.inlier` marks the centres kept by the robust weights.
    """
    c = np.asarray(centres, dtype=float).reshape(-1, 2)
    n = len(c)
    if n == 0:
        raise ValueError("fit_spine_curve needs at least one centre")
    ys = np.sort(c[:, 1])
    if spacing is None:
        spacing = float(np.median(np.diff(ys))) if n > 1 else 1.0
    spacing = max(spacing, 1.0)
    y_mid = float((ys[0] + ys[-1]) / 2)
    y_half = max(float(ys[-1] - ys[0]) / 2, 1.0)
    deg = 0 if n < 2 else (1 if n < 4 else min(max_degree, n - 2))
    z = (c[:, 1] - y_mid) / y_half
    # boxes side by side (one y) cannot fix a slope: never more terms than distinct heights
    deg = min(deg, len(np.unique(np.round(z, 9))) - 1)
    w = np.ones(n)
    coef = np.zeros(deg + 1)
    floor = 0.1 * spacing
    for _ in range(20):
        coef = np.polyfit(z, c[:, 0], deg, w=np.sqrt(w) + 1e-12)
        r = c[:, 0] - np.polyval(coef, z)
        scale = max(1.4826 * float(np.median(np.abs(r[w > 0]))) if (w > 0).any() else 0.0, floor)
        new = _biweight(r, scale)
        if np.allclose(new, w, atol=1e-4):
            break
        w = new
    inlier = w > 0
    # Extend one spacing beyond the inlier centres so that projection is defined there.
    yin = c[inlier, 1] if inlier.any() else c[:, 1]
    y_lo, y_hi = float(yin.min() - 1.5 * spacing), float(yin.max() + 1.5 * spacing)
    y = np.linspace(y_lo, y_hi, _DENSE)
    pts = np.stack([np.polyval(coef, (y - y_mid) / y_half), y], axis=-1)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    return SpineCurve(coef, y_mid, y_half, y_lo, y_hi, pts, arc, inlier)


def local_spacing(s: np.ndarray) -> np.ndarray:
    """Per disc, the typical distance (pixels) to neighbouring discs along the curve.

    ``s`` is the sorted ``[N]`` arc length of the disc centres. Each disc gets the median of the
    gaps of up to its two neighbours on each side, gaps longer than ``GAP_FACTOR`` times the
    overall median (missed discs) left out. With one disc, ``nan``.
    """
    s = np.asarray(s, dtype=float)
    gaps = np.diff(s)
    if len(gaps) == 0:
        return np.full(len(s), np.nan)
    med = float(np.median(gaps))
    ok = np.where(gaps <= GAP_FACTOR * med, gaps, np.nan)
    if np.isnan(ok).all():
        ok = gaps
    out = np.empty(len(s))
    for i in range(len(s)):
        near = ok[max(0, i - 2):min(len(gaps), i + 2)]
        near = near[~np.isnan(near)]
        out[i] = float(np.median(near)) if len(near) else float(np.nanmedian(ok))
    return out


@dataclass
class LevelNaming:
    """Level names of discs ordered top to bottom.

    Attributes:
        names: one name per disc (``"L4-L5"``), ``"?"`` above C2-C3.
        uncertain: per disc, whether its name may be off by one or more levels.
        missing: names skipped for gaps (discs presumed undetected), top to bottom.
        reasons: plain-language reasons for the uncertain flags.
    """

    names: list[str]
    uncertain: list[bool]
    missing: list[str]
    reasons: list[str]


def name_levels(s: np.ndarray, sacrum: bool, lowest: str = "L5-S1",
                spacing: np.ndarray | None = None) -> LevelNaming:
    """Name discs at sorted arc lengths ``s [N]`` (pixels, top to bottom).

    Args:
        s: disc positions along the curve, increasing.
        sacrum: whether the sacrum is recognised below the lowest disc (see module docstring).
        lowest: the name of the lowest disc (``L5-S1`` when counted from the sacrum; a caller
            with other evidence may name it).
        spacing: per-disc local spacing (:func:`local_spacing` when ``None``).
    """
    s = np.asarray(s, dtype=float)
    n = len(s)
    if lowest not in DISC_LEVELS:
        raise ValueError(f"unknown disc level {lowest!r}; expected one of {DISC_LEVELS}")
    reasons: list[str] = []
    if not sacrum:
        reasons.append("sacrum not recognised below the lowest disc: levels counted from an "
                       f"assumed {lowest}")
    sp = local_spacing(s) if spacing is None else np.asarray(spacing, dtype=float)
    idx = DISC_LEVELS.index(lowest)
    names: list[str] = [""] * n
    uncertain = [not sacrum] * n
    missing: list[str] = []
    gap_above = False
    for i in range(n - 1, -1, -1):
        if i < n - 1:
            gap = s[i + 1] - s[i]
            ref = float(np.nanmedian(sp)) if np.isfinite(sp).any() else gap
            skipped = int(round(gap / ref)) - 1 if gap > GAP_FACTOR * ref else 0
            for _ in range(skipped):
                idx -= 1
                missing.append(DISC_LEVELS[idx] if idx >= 0 else "?")
            if skipped:
                gap_above = True
                reasons.append(f"gap of {gap / ref:.1f} spacings above the disc counted as "
                               f"{names[i + 1]}: {skipped} disc(s) presumed undetected")
            idx -= 1
        names[i] = DISC_LEVELS[idx] if idx >= 0 else "?"
        uncertain[i] = uncertain[i] or gap_above or idx < 0
    return LevelNaming(names, uncertain, missing[::-1], reasons)


def sacrum_recognised(curve: SpineCurve, s_lowest: float, spacing: float,
                      image_size: tuple[int, int], lowest_box: tuple[float, float, float, float],
                      margin: float = SACRUM_MARGIN) -> tuple[bool, str]:
    """Apply the sacrum rule of the module docstring.

    Args:
        curve: the fitted spine curve.
        s_lowest: arc length of the lowest disc centre (pixels).
        spacing: local inter-disc spacing at the lowest disc (pixels).
        image_size: ``(width, height)`` in pixels.
        lowest_box: the lowest disc's box ``(x1, y1, x2, y2)`` in pixels.
        margin: required extent below the lowest disc, in spacings.

    Returns:
        ``(recognised, reason)``.
    """
    w, h = image_size
    x1, y1, x2, y2 = lowest_box
    if x1 <= 0.5 or y1 <= 0.5 or x2 >= w - 0.5 or y2 >= h - 0.5:
        return False, "the lowest disc's box touches the image border"
    if not np.isfinite(spacing) or spacing <= 0:
        return False, "too few discs to measure the inter-disc spacing"
    p = curve.point_at(s_lowest)
    t = curve.tangent_at(s_lowest)
    steps = []
    for dim, lim in ((0, w), (1, h)):
        if t[dim] > 1e-9:
            steps.append((lim - p[dim]) / t[dim])
        elif t[dim] < -1e-9:
            steps.append(-p[dim] / t[dim])
    extent = min(steps) if steps else np.inf
    if extent < margin * spacing:
        return False, (f"{SHORT_FIELD} {extent / spacing:.2f} inter-disc spacings below "
                       f"the lowest disc (rule: >= {margin})")
    return True, (f"the image extends {extent / spacing:.2f} inter-disc spacings below the lowest "
                  "disc and no further disc was found")
