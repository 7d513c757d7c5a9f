"""Paint a T2-weighted sagittal slice of a sampled spine.

:func:`render_signal` returns the noise-free T2 signal (float32 ``[H, W]``, CSF = 1.0), a
tissue label map (uint8 ``[H, W]``, codes in :data:`TISSUES`) and the depth below the back skin
(for the coil profile applied in :mod:`lumbardx.synth.case`) for a sagittal slice ``lateral_mm``
from the midline (positive = patient left). Structures are drawn back to front with
anti-aliased edges. Soft tissues are placed by their distance ``d`` (mm, posterior positive) from
the posterior vertebral wall line and the arc length ``s`` along it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lumbardx.synth.anatomy import Disc, Spine, Vertebra
from lumbardx.synth.geometry import (View, chamfer, cumulative_length, polygon_sdf,
                                     coarse_polyline_frame, polyline_frame, smooth_polyline,
                                     window_of)

TISSUES: dict[str, int] = {
    "air": 0, "abdomen": 1, "fat": 2, "muscle": 3, "vertebral_body": 4, "cortex": 5,
    "annulus": 6, "nucleus": 7, "csf": 8, "cord": 9, "nerve_root": 10, "epidural_fat": 11,
    "ligament": 12, "posterior_element": 13, "herniation": 14, "vessel": 15, "sacrum": 16,
    "skin": 17,
}
# Per-vertebra canal and back profile (mm at scale 1): dural sac AP depth, anterior epidural
# space, posterior epidural fat, back muscle depth. Typical adult MRI values.
_SAC = {"T": 12.5, "T12": 13.0, "L1": 14.0, "L2": 14.5, "L3": 15.0, "L4": 15.0, "L5": 14.0,
        "S1": 9.0, "S2": 0.0, "S3": 0.0, "S4": 0.0, "S5": 0.0}
_ANT = {"T": 1.0, "L5": 2.0, "S1": 3.0, "S2": 2.0, "S3": 1.5, "S4": 1.0, "S5": 1.0}
_POST = {"T": 1.5, "L1": 2.5, "L2": 2.5, "L3": 3.0, "L4": 3.5, "L5": 4.5, "S1": 3.0, "S2": 9.0,
         "S3": 7.0, "S4": 5.0, "S5": 3.0}
_MUSCLE = {"T": 36.0, "T12": 42.0, "L1": 48.0, "L2": 50.0, "L3": 52.0, "L4": 52.0, "L5": 46.0,
           "S1": 28.0, "S2": 18.0, "S3": 14.0, "S4": 12.0, "S5": 12.0}
NUCLEUS_SIGNAL = {1: 0.95, 2: 0.8, 3: 0.5, 4: 0.3, 5: 0.14}
#: T1-weighted signal per tissue (same scale as the T2 signal, where CSF = 1): fat bright,
#: fatty marrow intermediate-bright, disc and muscle intermediate-dark, CSF, ligaments, cortex
#: and flowing blood dark (spin-echo T1, TR ~500 ms, TE ~10 ms, at 1.5 T).
T1_SIGNAL: dict[str, float] = {
    "air": 0.0, "abdomen": 0.35, "fat": 0.95, "muscle": 0.3, "vertebral_body": 0.62,
    "cortex": 0.05, "annulus": 0.24, "nucleus": 0.34, "csf": 0.12, "cord": 0.42,
    "nerve_root": 0.38, "epidural_fat": 0.9, "ligament": 0.1, "posterior_element": 0.58,
    "herniation": 0.3, "vessel": 0.05, "sacrum": 0.62, "skin": 0.5,
}


def _lookup(table: dict[str, float], name: str) -> float:
    return table.get(name, table.get(name[0], table.get("T", 0.0)))


def _band(z: float, lo: float, hi: float, soft: float = 1.5) -> float:
    """Visibility in [0, 1] of a structure occupying ``lo <= |z| <= hi`` (mm)."""
    a = abs(z)
    return float(np.clip((a - lo) / soft + 0.5, 0, 1) * np.clip((hi - a) / soft + 0.5, 0, 1))


@dataclass
class Canvas:
    """Signal and label images being painted, with the pixel anatomy coordinates."""

    view: View
    u: np.ndarray
    v: np.ndarray
    signal: np.ndarray
    labels: np.ndarray

    def paint(self, alpha: np.ndarray, value: np.ndarray | float, tissue: str,
              win: tuple[slice, slice] | None = None) -> None:
        """Blend ``value`` with weight ``alpha`` (in ``win`` when given) and label alpha >= 0.5."""
        win = win or (slice(None), slice(None))
        sig = self.signal[win]
        sig += alpha * (value - sig)
        self.labels[win][alpha >= 0.5] = TISSUES[tissue]

    def polygon(self, poly: np.ndarray, value: float | Callable[[tuple[slice, slice]], np.ndarray],
                tissue: str, weight: float = 1.0, rim: tuple[float, float, str] | None = None,
                ) -> tuple[tuple[slice, slice], np.ndarray] | None:
        """Fill ``poly`` (mm) with ``value`` (scalar or window -> array); ``rim`` = (width mm,
        signal, tissue) paints an inner rim (cortical bone). Returns the window and its SDF."""
        if weight <= 0:
            return None
        win = window_of(self.view, poly)
        if win is None:
            return None
        sdf = polygon_sdf(self.u[win], self.v[win], poly)
        px = self.view.spacing
        alpha = np.clip(0.5 - sdf / px, 0, 1) * weight
        self.paint(alpha, value(win) if callable(value) else value, tissue, win)
        if rim is not None:
            width, val, rim_tissue = rim
            inner = np.clip(0.5 + (sdf + width) / px, 0, 1) * alpha
            self.paint(inner, val, rim_tissue, win)
        return win, sdf


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int],
                  sigma_px: tuple[float, float]) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation, float32 ``shape``."""
    white = rng.standard_normal(shape).astype(np.float32)
    f = ndimage.gaussian_filter(white, sigma_px, mode="reflect")
    return f / max(float(f.std()), 1e-6)


def wall_line(spine: Spine) -> tuple[np.ndarray, list[str]]:
    """Posterior vertebral wall polyline head to foot ``[K, 2]`` (mm) and the segment name of
    each vertex; extended 300 mm above the top vertebra and 250 mm below S5."""
    pts, names = [], []
    for v in spine.vertebrae + spine.sacrum:
        pts += [v.ps, v.pi]
        names += [v.name, v.name]
    top, bot = spine.vertebrae[0], spine.sacrum[-1]
    pts = [top.ps + 300.0 * top.axis] + pts + [bot.pi - 250.0 * bot.axis]
    names = [top.name] + names + [bot.name]
    return np.asarray(pts), names


def _local(v: Vertebra, pts: list[tuple[float, float]]) -> np.ndarray:
    """Vertebra frame (a posterior from PI, b up the axis from PI, mm) -> anatomy ``[K, 2]``."""
    ab = np.asarray(pts, dtype=float)
    return v.pi + np.outer(ab[:, 0], -v.anterior) + np.outer(ab[:, 1], v.axis)


def _endplate(p: np.ndarray, q: np.ndarray, depth: float, inward: np.ndarray,
              n: int = 7) -> np.ndarray:
    """Points from ``p`` to ``q`` sagging ``depth`` mm along ``inward`` in the middle ``[n, 2]``."""
    t = np.linspace(0, 1, n)
    return p + np.outer(t, q - p) + np.outer(depth * 4 * t * (1 - t), inward)


def body_polygon(v: Vertebra) -> np.ndarray:
    """Vertebral body outline with concave endplates and chamfered corners ``[K, 2]`` (mm)."""
    top = _endplate(v.as_, v.ps, v.concavity, -v.axis)
    bottom = _endplate(v.pi, v.ai, v.concavity, v.axis)
    corners = chamfer(np.stack([v.as_, v.ps, v.pi, v.ai]), 1.6)
    return np.concatenate([corners[0:1], top[1:-1], corners[1:5], bottom[1:-1], corners[5:]])


def disc_polygon(d: Disc) -> np.ndarray:
    """Disc outline between the two endplates, posterior and anterior margins slightly convex."""
    up, lo = d.upper, d.lower
    upper = _endplate(up.pi, up.ai, up.concavity, up.axis)  # posterior -> anterior
    lower = _endplate(lo.as_, lo.ps, lo.concavity, -lo.axis)  # anterior -> posterior
    n = d.posterior_normal()
    front = (up.ai + lo.as_) / 2 - n * 1.0
    back = (up.pi + lo.ps) / 2 + n * d.posterior_bulge_mm
    return np.concatenate([upper, [front], lower, [back]])


def render_signal(spine: Spine, view: View, lateral_mm: float, tex_seed: int,
                  tissue: dict[str, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise-free T2 signal float32 ``[H, W]``, tissue labels uint8 ``[H, W]`` and depth below the
    posterior skin (mm, float32 ``[H, W]``, for the coil profile) of the sagittal
    slice ``lateral_mm`` from the midline. ``tissue`` holds per-patient signal levels and soft
    tissue sizes (see :func:`sample_tissue`); ``tex_seed`` fixes the textures."""
    z = float(lateral_mm)
    u, v = view.grid()
    c = Canvas(view, u, v, np.zeros(u.shape, np.float32), np.zeros(u.shape, np.uint8))
    rng = np.random.default_rng(tex_seed)
    px = view.spacing
    fine = _smooth_noise(rng, u.shape, (0.7 / px, 0.7 / px))
    coarse = _smooth_noise(rng, u.shape, (4.0 / px, 4.0 / px))
    blob = _smooth_noise(rng, u.shape, (6.0 / px, 6.0 / px))
    fibre = _smooth_noise(rng, u.shape, (6.0 / px, 0.6 / px))

    line, names = wall_line(spine)
    s, d = polyline_frame(u, v, line)
    sv = cumulative_length(line)
    k = spine.scale

    def prof(table: dict[str, float], scale: float = 1.0) -> np.ndarray:
        return np.interp(s, sv, [_lookup(table, n) * k * scale for n in names])

    lat = np.sqrt(max(0.0, 1.0 - (z / 9.0) ** 2))  # dural sac half-width ~9 mm
    ant = prof(_ANT)
    sac = prof(_SAC) * lat
    canal = ant + prof(_SAC) + prof(_POST)  # posterior canal border (mm from the wall)
    # Soft tissues follow smoothed wall lines so that their outlines stay smooth; the back
    # surface (about 100 mm out) uses a smoother line than the muscles, so that the offset
    # stays inside the line's radius of curvature.
    frames = []
    for sigma in (30.0, 70.0):
        soft, t_soft = smooth_polyline(line, 4.0, sigma)
        s_f, d_f = coarse_polyline_frame(view, soft)
        frames.append((s_f, d_f, cumulative_length(soft), t_soft))

    def prof2(values: list[float], frame: int = 0) -> np.ndarray:
        s_f, _, sv_f, t_f = frames[frame]
        at = np.interp(t_f, sv, values)
        return np.interp(s_f, sv_f, ndimage.gaussian_filter1d(at, 5.0, mode="nearest"))

    def table2(table: dict[str, float], frame: int = 0) -> np.ndarray:
        return prof2([_lookup(table, n) * k for n in names], frame)

    d2, d3 = frames[0][1], frames[1][1]
    muscle_end = (table2(_ANT, 1) + table2(_SAC, 1) + table2(_POST, 1)
                  + table2(_MUSCLE, 1) * tissue["muscle"] * (1 + 0.25 * min(abs(z), 30) / 30))
    skin = muscle_end + tissue["fat_mm"]
    body_ap = np.interp(s, sv, [spine.vertebra(n).depth for n in names])

    # Back to front: abdomen, prevertebral fat, canal fat, muscle, subcutaneous fat, skin.
    def ramp(x: np.ndarray) -> np.ndarray:
        return np.clip(0.5 + x / px, 0, 1)

    fluid = 1 / (1 + np.exp(-4.0 * (blob - 1.0)))
    gas = 1 / (1 + np.exp(-4.0 * (-blob - 1.3)))
    bowel = 0.1 + 0.04 * coarse + (tissue["bowel_fluid"] - 0.1) * fluid - 0.08 * gas
    front = -tissue["abdomen_mm"]
    c.paint(ramp(d2 - front) * ramp(skin + 2.0 - d3), bowel, "abdomen")
    c.paint(ramp(d2 - front) * ramp(front + 14.0 - d2), tissue["fat"] * 0.8, "fat")
    body_ap2 = prof2([spine.vertebra(n).depth for n in names])
    prevert = body_ap2 + 4.0 + tissue["prevert_mm"]
    c.paint(ramp(d2 + prevert), tissue["fat"] * 0.65 + 0.05 * coarse, "fat")
    c.paint(ramp(d2 + body_ap2 + 1.2), 0.08, "ligament")  # anterior longitudinal ligament
    c.paint(ramp(d), tissue["fat"] * 0.88 + 0.04 * coarse, "epidural_fat")
    mus = tissue["muscle_signal"] + 0.05 * fibre + 0.03 * coarse
    mus = np.where(fibre + 0.3 * coarse > 2.0, tissue["fat"] * 0.8, mus)  # intramuscular fat
    c.paint(ramp(d - canal), mus, "muscle")
    c.paint(ramp(d3 - muscle_end), tissue["fat"] + 0.04 * coarse, "fat")
    c.paint(ramp(d3 - skin), 0.55, "skin")
    c.paint(ramp(d3 - skin - 1.8), 0.0, "air")
    if abs(z) < 6:  # ligamentum flavum along the posterior canal border
        c.paint(ramp(d - canal + 1.5) * ramp(canal + 3.0 - d), 0.12, "ligament")

    # Dural sac: CSF, spinal cord to the conus, cauda equina roots lying dependent (supine).
    full = prof(_SAC)
    i_l1 = names.index("L1")
    s_conus = sv[i_l1] + spine.conus_level * (sv[i_l1 + 1] - sv[i_l1])
    c.paint(ramp(sac / 2 - np.abs(d - ant - full / 2)) * (sac > 0.3), 1.0, "csf")
    r_cord = np.sqrt(np.clip((np.clip((s_conus - s) / 14.0, 0, 1) * 4.2 * k) ** 2 - z * z, 0, None))
    c.paint(ramp(r_cord - np.abs(d - ant - 0.45 * full)) * (r_cord > 0), 0.4, "cord")
    roots = np.random.default_rng(tex_seed + 1)
    spread = np.clip((s - s_conus) / 40.0, 0, 1)
    for _ in range(9):
        f, zr, ph = roots.uniform(0.3, 0.88), roots.uniform(-7, 7), roots.uniform(0, 6.3)
        if abs(zr - z) > 1.8:
            continue
        dr = ant + full * (0.45 + (f - 0.45) * spread + 0.03 * np.sin(s / 23.0 + ph))
        on = (s > s_conus - 8) & (sac > 0.5)
        c.paint(ramp(0.55 - np.abs(d - dr)) * on * 0.85, 0.35, "nerve_root")
    _aorta(c, spine, s, d, sv, names, body_ap, z, tissue)
    _posterior_elements(c, spine, z, fine)
    for disc in spine.discs:
        _herniation(c, disc, z)
    for disc in spine.discs:
        _disc(c, disc, z, tissue, fine)
    for vert in spine.vertebrae:
        _body(c, vert, z, fine)
    _sacrum(c, spine, z, fine)
    return c.signal, c.labels, (skin - d3).astype(np.float32)


def _aorta(c: Canvas, spine: Spine, s: np.ndarray, d: np.ndarray, sv: np.ndarray, names: list[str],
           body_ap: np.ndarray, z: float, tissue: dict[str, float]) -> None:
    """Abdominal aorta (flow void) in front of T10-L4, left of the midline."""
    r = 10.0 * spine.scale
    half = np.sqrt(max(0.0, r * r - (z - tissue["aorta_z"]) ** 2))
    if half <= 0:
        return
    lo, hi = sv[names.index("T10")], sv[names.index("L4") + 1]
    centre = -(body_ap + 3.0 + r)
    on = np.clip((s - lo) / 10, 0, 1) * np.clip((hi - s) / 10, 0, 1)
    dist = np.abs(d - centre)
    px = c.view.spacing
    c.paint(np.clip(0.5 + (half + 1.0 - dist) / px, 0, 1) * on, 0.3, "vessel")
    c.paint(np.clip(0.5 + (half - dist) / px, 0, 1) * on, 0.04, "vessel")


def _posterior_elements(c: Canvas, spine: Spine, z: float, fine: np.ndarray) -> None:
    """Laminae and spinous processes (midline), pedicles, facets and exiting roots (lateral)."""
    marrow = lambda w: 0.34 + 0.05 * fine[w]  # noqa: E731
    for vert in spine.vertebrae + spine.sacrum:
        h = vert.height
        k_s = spine.scale
        dc = k_s * float(_lookup(_ANT, vert.name) + _lookup(_SAC, vert.name)
                         + _lookup(_POST, vert.name))
        sacral = vert.name.startswith("S")
        thor = vert.name.startswith("T")
        if sacral:
            continue
        length = (34.0 if thor else 27.0) * k_s
        if thor:  # long, sloping down over the level below
            spinous = [(dc - 0.5, 0.85 * h), (dc + length, -0.7 * h), (dc + length, -1.0 * h),
                       (dc - 0.5, -0.05 * h)]
        else:  # lumbar "hatchet", nearly horizontal
            spinous = [(dc - 0.5, 0.82 * h), (dc + 8, 0.7 * h), (dc + length, 0.62 * h),
                       (dc + length, 0.02 * h), (dc + 8, 0.0), (dc - 0.5, -0.18 * h)]
        c.polygon(chamfer(_local(vert, spinous), 2.5), marrow, "posterior_element",
                  _band(z, -1, 4.5),
                  (1.3, 0.1, "cortex"))
        lamina = [(dc - 0.5, 0.92 * h), (dc + 7, 0.7 * h), (dc + 7, -0.1 * h),
                  (dc - 0.5, -0.28 * h)]
        c.polygon(chamfer(_local(vert, lamina), 1.5), marrow, "posterior_element",
                  _band(z, 3.5, 12),
                  (1.3, 0.1, "cortex"))
        pedicle = [(-1.0, 0.45 * h), (dc, 0.45 * h), (dc, 0.92 * h), (-1.0, 0.92 * h)]
        c.polygon(chamfer(_local(vert, pedicle), 2.5), marrow, "posterior_element", _band(z, 8, 18),
                  (1.2, 0.1, "cortex"))
        root = _local(vert, [(dc * 0.4 + 2.5 * np.cos(a), 0.32 * h + 2.5 * np.sin(a))
                             for a in np.linspace(0, 2 * np.pi, 16, endpoint=False)])
        c.polygon(root, 0.3, "nerve_root", _band(z, 9, 20))
        pillar = [(dc - 3, 0.85 * h), (dc + 13, 0.8 * h), (dc + 13, -0.45 * h), (dc - 3, -0.4 * h)]
        res = c.polygon(chamfer(_local(vert, pillar), 2.5), marrow, "posterior_element",
                        _band(z, 11, 26), (1.2, 0.1, "cortex"))
        joint = [(dc - 3, -0.12 * h), (dc + 13, -0.02 * h), (dc + 13, 0.02 * h),
                 (dc - 3, -0.08 * h)]
        if res is not None:
            c.polygon(_local(vert, joint), 0.7, "ligament", _band(z, 11, 26))


def _herniation(c: Canvas, disc: Disc, z: float) -> None:
    """Herniated disc material (behind the posterior chord), drawn before discs and bodies."""
    h = disc.herniation
    if h is None:
        return
    weight = _band(z, -1, 20 if h.type == "bulge" else 8)
    for poly in h.polygons:
        c.polygon(poly, h.signal, "herniation", weight)


def _disc(c: Canvas, disc: Disc, z: float, tissue: dict[str, float], fine: np.ndarray) -> None:
    """Annulus (dark), nucleus (bright by Pfirrmann grade), internuclear cleft, HIZ."""
    poly = disc_polygon(disc)
    c.polygon(poly, tissue["annulus"], "annulus", _band(z, -1, 24))
    up, lo = disc.upper, disc.lower
    centre = disc.centre + 0.06 * (up.pi - up.ai)  # slightly posterior
    axis = (up.axis + lo.axis) / 2
    axis /= np.linalg.norm(axis)
    ant = np.array([axis[1], -axis[0]])
    ant = ant if np.dot(ant, up.ai - up.pi) > 0 else -ant
    height = np.linalg.norm((up.pi + up.ai) / 2 - (lo.ps + lo.as_) / 2)
    a, b = 0.33 * up.depth, 0.3 * height
    ang = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    nucleus = centre + np.outer(a * np.cos(ang), ant) + np.outer(b * np.sin(ang), axis)
    sig = NUCLEUS_SIGNAL[disc.pfirrmann]
    val = lambda w: sig + 0.03 * fine[w]  # noqa: E731
    c.polygon(nucleus, val, "nucleus", _band(z, -1, 12, 3.0))
    if disc.pfirrmann >= 2:
        cleft = centre + np.outer(0.85 * a * np.cos(ang), ant) + np.outer(0.45 * np.sin(ang), axis)
        c.polygon(cleft, 0.3, "annulus", _band(z, -1, 12, 3.0) * 0.8)
    her = disc.herniation
    if her is not None and her.high_intensity_zone:
        p = (up.pi + lo.ps) / 2 - 2.0 * disc.posterior_normal()
        hiz = p + np.outer(1.2 * np.cos(ang), ant) + np.outer(1.0 * np.sin(ang), axis)
        c.polygon(hiz, 0.9, "annulus", _band(z, -1, 8))


def _body(c: Canvas, vert: Vertebra, z: float, fine: np.ndarray) -> None:
    """Vertebral body: textured marrow, dark cortical rim, basivertebral vein notch."""
    poly = body_polygon(vert)
    shrink = np.sqrt(max(0.0, 1.0 - max(0.0, abs(z) - 8.0) ** 2 / 20.0**2))
    if shrink < 1.0:
        centre = poly.mean(axis=0)
        a = vert.anterior
        poly = poly + np.outer((poly - centre) @ a * (shrink - 1.0), a)
    tissue = "sacrum" if vert.name.startswith("S") else "vertebral_body"
    val = lambda w: vert.marrow + 0.045 * fine[w]  # noqa: E731
    c.polygon(poly, val, tissue, 1.0 if shrink > 0.3 else 0.0, (1.1, 0.1, "cortex"))
    if tissue == "vertebral_body" and abs(z) < 4:
        mid = (vert.ps + vert.pi) / 2 + 2.5 * vert.anterior
        ang = np.linspace(0, 2 * np.pi, 20, endpoint=False)
        vein = (mid + np.outer(3.0 * np.cos(ang), vert.anterior)
                + np.outer(1.1 * np.sin(ang), vert.axis))
        c.polygon(vein, 0.6, "vertebral_body")


def _sacrum(c: Canvas, spine: Spine, z: float, fine: np.ndarray) -> None:
    """Fused sacrum S1-S5: one cortical outline, fatty marrow, faint remnant disc lines."""
    segs = spine.sacrum
    front = [p for v in segs for p in (v.as_, v.ai)]
    back = [p for v in segs[::-1] for p in (v.pi, v.ps)]
    outline = chamfer(np.asarray(front + back), 1.5)
    weight = 1.0 if abs(z) < 30 else 0.0
    val = lambda w: segs[0].marrow + 0.045 * fine[w]  # noqa: E731
    c.polygon(outline, val, "sacrum", weight, (1.2, 0.1, "cortex"))
    crest = []  # posterior wall of the sacral canal (fused laminae, median crest)
    for v in segs:
        dc = (_lookup(_ANT, v.name) + _lookup(_SAC, v.name) + _lookup(_POST, v.name)) * spine.scale
        crest.append([_local(v, [(dc, b * v.height)])[0] for b in (0.9, 0.1)])
    inner = np.asarray([p for pair in crest for p in pair])
    outer = inner - 7.0 * spine.scale * np.mean([v.anterior for v in segs], axis=0)
    marrow = lambda w: 0.34 + 0.05 * fine[w]  # noqa: E731
    c.polygon(chamfer(np.concatenate([inner, outer[::-1]]), 2.0), marrow, "posterior_element",
              _band(z, -1, 14), (1.2, 0.1, "cortex"))
    for i, (a, b) in enumerate(zip(segs[:-1], segs[1:], strict=True)):
        remnant = np.stack([a.pi, a.ai, b.as_, b.ps])
        c.polygon(remnant, 0.28, "annulus", weight * (0.9, 0.6, 0.4, 0.3)[i])


def sample_tissue(rng: np.random.Generator) -> dict[str, float]:
    """Per-patient signal levels (CSF = 1) and soft-tissue sizes (mm)."""
    return {
        "fat": float(rng.uniform(0.82, 0.98)), "muscle_signal": float(rng.uniform(0.22, 0.32)),
        "annulus": float(rng.uniform(0.15, 0.24)), "muscle": float(rng.uniform(0.8, 1.2)),
        "fat_mm": float(rng.uniform(8.0, 38.0)), "prevert_mm": float(rng.uniform(3.0, 14.0)),
        "abdomen_mm": float(rng.uniform(200.0, 300.0)),
        "bowel_fluid": float(rng.uniform(0.2, 0.45)),
        "aorta_z": float(rng.uniform(6.0, 16.0)), "bias_mm": float(rng.uniform(110.0, 200.0)),
    }


def t1_signal(signal: np.ndarray, labels: np.ndarray, texture: float = 0.4) -> np.ndarray:
    """Noise-free T1 signal float32 ``[H, W]`` of a slice rendered by :func:`render_signal`.

    Each tissue takes its :data:`T1_SIGNAL` level (edges softened by a 0.6-pixel Gaussian, as
    the T2 rendering's anti-aliasing softens them), plus ``texture`` times the T2 signal's
    deviation from that tissue's mean on the slice (marrow texture, muscle fibres, nucleus
    grade), so that both sequences show the same structures with their own contrast.

    Args:
        signal: T2 signal float32 ``[H, W]`` (CSF = 1).
        labels: tissue codes uint8 ``[H, W]`` (:data:`TISSUES`).
        texture: weight of the T2 texture.
    """
    lut = np.zeros(256, np.float32)
    for name, code in TISSUES.items():
        lut[code] = T1_SIGNAL[name]
    flat = labels.ravel().astype(np.intp)
    counts = np.bincount(flat, minlength=256)
    means = np.bincount(flat, weights=signal.ravel(), minlength=256) / np.maximum(counts, 1)
    deviation = signal - means[labels].astype(np.float32)
    out = ndimage.gaussian_filter(lut[labels], 0.6) + texture * deviation
    return np.clip(out, 0.0, None).astype(np.float32)
