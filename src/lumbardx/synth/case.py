"""One synthetic case: sample anatomy and view, render, acquire, and derive boxes and truth.

Box conventions follow the yolospine-dev annotations (measured on its 3,301 normal, 1,631 bulge
and 98 spondylolisthesis boxes, in units of the median spacing ``sp`` between neighbouring disc
centres): a normal box encloses the whole disc with a little of both endplates
(median w 1.12 sp, h 0.51 sp); a herniated disc carries **one** herniation box and no normal
box, enclosing the disc and the herniated material, about 1.17x as wide and 1.5x as tall as a
normal box; a spondylolisthesis box is centred on the slipped disc and spans the neighbouring
halves of both vertebrae (median w 1.29 disc-box widths, h 1.32 sp). The disc at a slipped level
carries a herniation box when it is herniated and otherwise no disc box (yolospine marks it with
a degenerative-disc box, a class outside the study's three).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from lumbardx.data.boxes import Box, ImageAnnotation
from lumbardx.synth.anatomy import Disc, Spine, SynthConfig, Vertebra, sample_spine
from lumbardx.synth.geometry import View
from lumbardx.synth.render import disc_polygon, render_signal, sample_tissue, t1_signal

MAX_STORED = 4095  # 12-bit stored values in 16-bit words
# Box margins (mm) around the disc outline, fitted to the yolospine-dev ratios above.
NORMAL_MARGIN = (1.0, 1.5)  # (along image x, along image y)
HERNIATION_MARGIN = (2.0, 3.0)
LISTHESIS_MARGIN = (-2.5, 3.5)  # negative: inside the outer body corners
LISTHESIS_BODY_FRACTION = 0.4  # share of each neighbouring body inside the slip box


def voi_linear(stored: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM linear VOI LUT (PS3.3 C.11.2.1.2.1) to 8 bits: uint8 array shaped like ``stored``."""
    x = stored.astype(np.float64)
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    y = np.where(x <= center - 0.5 - (width - 1) / 2, 0.0, y)
    y = np.where(x > center - 0.5 + (width - 1) / 2, 255.0, y)
    return np.rint(np.clip(y, 0, 255)).astype(np.uint8)


@dataclass
class SynthCase:
    """A generated case.

    Attributes:
        name: case name (file stem).
        image: uint8 ``[H, W]`` display image (the mid-sagittal slice through its window).
        raw: uint16 ``[H, W]`` stored values of the same slice (12 bits used).
        labels: uint8 ``[H, W]`` tissue label map (codes in ``render.TISSUES``).
        pixel_spacing: (row, column) in mm.
        window: (center, width) of the display window on ``raw``.
        annotation: the boxes (study class names), VOC-ready.
        truth: JSON-ready ground truth (see :func:`truth_dict`).
        spine, view: the sampled anatomy and image geometry.
    """

    name: str
    image: np.ndarray
    raw: np.ndarray
    labels: np.ndarray
    pixel_spacing: tuple[float, float]
    window: tuple[int, int]
    annotation: ImageAnnotation
    truth: dict[str, Any]
    spine: Spine
    view: View
    _params: dict[str, Any] = field(default_factory=dict, repr=False)

    def render_slice(self, lateral_mm: float, weighting: str = "T2") -> np.ndarray:
        """Stored uint16 ``[H, W]`` values of the parallel sagittal slice ``lateral_mm`` from
        the midline (positive = patient left), same geometry, bias, gain and noise level;
        ``render_slice(0.0)`` reproduces :attr:`raw` exactly. ``weighting="T1"`` gives the
        same slice with T1 contrast (:func:`lumbardx.synth.render.t1_signal`): a co-registered
        T1 image of the same anatomy.

        Raises:
            ValueError: ``weighting`` is not ``"T2"`` or ``"T1"``.
        """
        if weighting not in ("T2", "T1"):
            raise ValueError(f"weighting must be 'T2' or 'T1', not {weighting!r}")
        p = self._params
        signal, labels, depth = render_signal(self.spine, self.view, lateral_mm, p["tex_seed"],
                                              p["tissue"])
        if weighting == "T1":
            signal = t1_signal(signal, labels)
        return _acquire(signal, depth, self.view, p, lateral_mm)


def _acquire(signal: np.ndarray, depth: np.ndarray, view: View, p: dict[str, Any],
             lateral_mm: float) -> np.ndarray:
    """Coil bias field, Rician noise and 12-bit quantisation -> uint16 ``[H, W]``."""
    coarse = np.random.default_rng(p["bias_seed"]).standard_normal((5, 5))
    smooth = ndimage.zoom(coarse, (signal.shape[0] / 5, signal.shape[1] / 5), order=3,
                          grid_mode=True,
                          mode="nearest")  # smooth field, ~1/4 field of view per bump
    bias = (0.12 + 0.88 * np.exp(-np.clip(depth, 0, None) / p["bias_mm"])) * (1 + 0.08 * smooth)
    rng = np.random.default_rng([p["noise_seed"], int(round(lateral_mm * 1000)) & 0xFFFFFFFF])
    clean = signal * bias
    sigma = p["sigma"]
    noisy = np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape))
    return np.clip(np.rint(noisy * p["gain"]), 0, MAX_STORED).astype(np.uint16)


def sample_view(rng: np.random.Generator, spine: Spine, cfg: SynthConfig,
                sacrum_visible: bool) -> View:
    """Image size, spacing, rotation and placement; the L5-S1 disc is in view iff
    ``sacrum_visible`` (otherwise it lies at least 15 mm below the bottom edge)."""
    size = int(rng.choice(cfg.image_sizes))
    spacing = float(np.clip(rng.uniform(*cfg.fov_mm) / size, *cfg.pixel_spacing_mm))
    theta = float(np.radians(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)))
    half = size * spacing / 2
    c, s = np.cos(theta), np.sin(theta)
    rot_inv = np.array([[c, s], [-s, c]])  # anatomy -> image-frame offsets
    lumbar = [d.centre for d in spine.discs if d.lower.name.startswith(("L", "S"))]
    ax = (rot_inv @ np.mean(lumbar, axis=0))[0]
    l5s1 = rot_inv @ spine.discs[-1].centre
    qx = (rng.uniform(0.47, 0.62) - 0.5) * 2 * half
    if sacrum_visible:
        qy = half - rng.uniform(30.0, max(31.0, 0.55 * half))
    else:
        qy = half + rng.uniform(15.0, 50.0)
    centre = np.array([[c, -s], [s, c]]) @ np.array([ax - qx, l5s1[1] - qy])
    return View(size, size, spacing, theta, (float(centre[0]), float(centre[1])))


def _bbox(view: View, polys: list[np.ndarray], margin: tuple[float, float]) -> tuple[float, ...]:
    px = view.to_px(np.concatenate(polys))
    mx, my = margin[0] / view.spacing, margin[1] / view.spacing
    x1, y1 = px.min(axis=0) - (mx, my)
    x2, y2 = px.max(axis=0) + (mx, my)
    return float(x1), float(y1), float(x2), float(y2)


def _box(label: str, xyxy: tuple[float, ...], view: View) -> Box:
    """Snap outward to whole pixels (LabelImg writes integers) and clip to the image."""
    x1, y1 = np.floor(xyxy[0]), np.floor(xyxy[1])
    x2, y2 = np.ceil(xyxy[2]), np.ceil(xyxy[3])
    cx1, cy1 = max(x1, 0.0), max(y1, 0.0)
    cx2, cy2 = min(x2, float(view.width)), min(y2, float(view.height))
    truncated = (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2)
    return Box(label, float(cx1), float(cy1), float(cx2), float(cy2), truncated=truncated)


def _body_part(v: Vertebra, frac: float, top: bool) -> np.ndarray:
    """The ``frac`` of body ``v`` next to its superior (``top``) or inferior endplate ``[4, 2]``."""
    if top:
        return np.stack([v.as_, v.ps, v.ps + frac * (v.pi - v.ps), v.as_ + frac * (v.ai - v.as_)])
    return np.stack([v.pi, v.ai, v.ai + frac * (v.as_ - v.ai), v.pi + frac * (v.ps - v.pi)])


def _in_view(view: View, poly: np.ndarray, margin_px: float = 1.0) -> bool:
    px = view.to_px(poly)
    return bool(px.min() >= margin_px and px[:, 0].max() <= view.width - margin_px
                and px[:, 1].max() <= view.height - margin_px)


def _pt(view: View, p: np.ndarray) -> list[float]:
    return [round(float(x), 4) for x in view.to_px(p)]


def build_truth(spine: Spine, view: View) -> tuple[list[Box], dict[str, Any]]:
    """Boxes (top to bottom) and the JSON-ready truth for the discs fully in view."""
    boxes: list[Box] = []
    discs, partial = [], []
    slips = {li.level: li for li in spine.listheses}
    needed: set[str] = set()
    for disc in spine.discs:
        poly = disc_polygon(disc)
        if not _in_view(view, poly):
            px = view.to_px(poly)
            if np.any((px > 0).all(axis=1) & (px < (view.width, view.height)).all(axis=1)):
                partial.append(disc.level)
            continue
        needed |= {disc.upper.name, disc.lower.name}
        entry = _disc_truth(disc, poly, view, slips.get(disc.level), boxes)
        discs.append(entry)
    vertebrae = []
    for v in spine.vertebrae + spine.sacrum[:1]:
        centre_in = _in_view(view, v.corners.mean(axis=0, keepdims=True), 0.0)
        if v.name in needed or centre_in:
            corners = {"anterior_superior": _pt(view, v.as_), "posterior_superior": _pt(view, v.ps),
                       "posterior_inferior": _pt(view, v.pi), "anterior_inferior": _pt(view, v.ai)}
            vertebrae.append({"name": v.name, "corners_px": corners,
                              "fully_in_view": _in_view(view, v.corners, 0.0)})
    listheses = []
    for li in spine.listheses:
        entry = next((d for d in discs if d["level"] == li.level), None)
        listheses.append({"level": li.level, "upper": li.upper, "lower": li.lower,
                          "slip_mm": round(li.slip_mm, 4), "slip_percent": round(li.percent, 4),
                          "grade": li.grade, "in_view": entry is not None,
                          "box": entry["boxes"].get("spondylolisthesis") if entry else None})
    truth = {
        "levels_in_view": [d["level"] for d in discs], "partial_levels": partial,
        "sacrum_visible": any(d["level"].endswith("S1") for d in discs),
        "discs": discs, "vertebrae": vertebrae, "listheses": listheses,
    }
    return boxes, truth


def _disc_truth(disc: Disc, poly: np.ndarray, view: View, slip: Any,
                boxes: list[Box]) -> dict[str, Any]:
    """Boxes of one disc appended to ``boxes``; its truth entry returned."""
    her = disc.herniation
    found: dict[str, list[float]] = {}
    if her is not None:
        b = _box("herniation", _bbox(view, [poly, *her.polygons], HERNIATION_MARGIN), view)
        found["herniation"] = list(b.xyxy())
        boxes.append(b)
    elif slip is None:
        b = _box("normal", _bbox(view, [poly], NORMAL_MARGIN), view)
        found["normal"] = list(b.xyxy())
        boxes.append(b)
    if slip is not None:
        parts = [poly, _body_part(disc.upper, LISTHESIS_BODY_FRACTION, top=False),
                 _body_part(disc.lower, LISTHESIS_BODY_FRACTION, top=True)]
        b = _box("spondylolisthesis", _bbox(view, parts, LISTHESIS_MARGIN), view)
        found["spondylolisthesis"] = list(b.xyxy())
        boxes.append(b)
    status = "spondylolisthesis" if slip is not None else ("herniation" if her else "normal")
    entry: dict[str, Any] = {
        "level": disc.level, "upper": disc.upper.name, "lower": disc.lower.name,
        "centre_px": _pt(view, disc.centre), "status": status, "boxes": found,
        "box": found.get(status) or next(iter(found.values())),
        "pfirrmann": disc.pfirrmann,
        "posterior_margin_px": [_pt(view, disc.upper.pi), _pt(view, disc.lower.ps)],
        "herniation": None,
    }
    if her is not None:
        entry["herniation"] = {"type": her.type, "extent_mm": round(her.extent_mm, 4),
                               "apex_px": _pt(view, her.apex), "migration": her.migration,
                               "high_intensity_zone": her.high_intensity_zone}
    return entry


def generate_case(rng: np.random.Generator, config: SynthConfig | None = None,
                  name: str = "synth") -> SynthCase:
    """Sample, render and annotate one case; every random choice comes from ``rng``."""
    cfg = config or SynthConfig()
    spine = sample_spine(rng, cfg)
    tissue = sample_tissue(rng)
    sacrum_visible = bool(spine.listheses) or bool(rng.random() < cfg.p_sacrum_visible)
    view = sample_view(rng, spine, cfg, sacrum_visible)
    params: dict[str, Any] = {
        "tissue": tissue, "tex_seed": int(rng.integers(2**31)),
        "noise_seed": int(rng.integers(2**31)),
        "bias_seed": int(rng.integers(2**31)), "bias_mm": tissue["bias_mm"],
        "sigma": float(rng.uniform(*cfg.noise_sigma)), "gain": float(rng.uniform(1400.0, 2400.0)),
        "uid_key": int(rng.integers(2**62)), "window_top": float(rng.uniform(0.82, 1.0)),
    }
    signal, labels, depth = render_signal(spine, view, 0.0, params["tex_seed"], tissue)
    raw = _acquire(signal, depth, view, params, 0.0)
    top = max(float(np.percentile(raw, 99.7)) * params["window_top"], 64.0)
    width = int(round(top))
    window = (int(round(top / 2)), width)
    image = voi_linear(raw, *window)
    boxes, truth = build_truth(spine, view)
    ann = ImageAnnotation(filename=f"{name}.png", width=view.width, height=view.height, depth=1,
                          boxes=boxes, folder="", database="lumbardx synthetic")
    image_info = {"file": f"{name}.png", "width": view.width, "height": view.height}
    truth = {"case": name, "image": image_info,
             "pixel_spacing_mm": [view.spacing, view.spacing],
             "rotation_deg": round(float(np.degrees(view.theta)), 4),
             "anatomy_scale": round(spine.scale, 4),
             "sacral_slope_deg": round(spine.params["sacral_slope_deg"], 2),
             "window": {"center": window[0], "width": window[1]}, **truth}
    return SynthCase(name, image, raw, labels, (view.spacing, view.spacing), window, ann, truth,
                     spine, view, params)
