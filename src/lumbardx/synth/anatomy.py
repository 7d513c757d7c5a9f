"""Random sagittal spine anatomy in millimetres: vertebral bodies, discs, sacrum and pathology.

Frame: 2-D mid-sagittal plane, ``u`` (mm) points **posterior** and ``v`` (mm) points
**inferior**, so anatomy drawn with ``u`` to the right and ``v`` down is in the usual display
orientation (patient facing left). The origin is the posterior-superior corner of S1.

The spine is built as a chain from S1 upward. Each vertebra has an axis angle ``phi`` (degrees
from "up", positive leaning anterior); a disc of posterior height ``h`` and lordotic angle
``delta`` places the posterior-inferior corner of the vertebra above at
``PS_below + h * t_below + slip * e_below`` (``t`` = axis, ``e`` = anterior unit vector along the
endplate). Because ``t_below`` is perpendicular to ``e_below``, the Meyerding translation of a
slipped level measured along the lower superior endplate is exactly ``slip`` (mm).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


# Vertebrae modelled above the sacrum, top to bottom.
VERTEBRAE: tuple[str, ...] = (tuple(f"T{i}" for i in range(4, 13))
                              + tuple(f"L{i}" for i in range(1, 6)))
# Typical adult dimensions (mm): AP depth and posterior height of the body (scaled per patient).
_BODY_AP = {**{f"T{i}": 24.0 + 0.6 * (i - 4) for i in range(4, 13)},
            "L1": 31.0, "L2": 32.5, "L3": 34.0, "L4": 35.0, "L5": 35.0}
_BODY_H = {**{f"T{i}": 18.0 + 0.9 * (i - 4) for i in range(4, 13)},
           "L1": 25.5, "L2": 26.5, "L3": 27.0, "L4": 27.0, "L5": 26.0}
# Segmental sagittal angles (deg, + lordotic) of the disc below each vertebra and of its body.
_DISC_ANGLE = {**{f"T{i}": -3.0 for i in range(4, 11)}, "T11": -1.5, "T12": 0.5,
               "L1": 3.0, "L2": 5.0, "L3": 8.0, "L4": 11.0, "L5": 14.0}
_BODY_WEDGE = {**{f"T{i}": -2.5 for i in range(4, 12)}, "T12": -1.5,
               "L1": -1.0, "L2": 0.0, "L3": 1.0, "L4": 2.0, "L5": 4.0}
# Posterior disc height (mm) of the disc below each vertebra.
_DISC_H = {**{f"T{i}": 3.5 + 0.15 * (i - 4) for i in range(4, 13)},
           "L1": 6.5, "L2": 7.0, "L3": 7.5, "L4": 7.5, "L5": 6.5}
_SACRUM_W = (38.0, 30.0, 24.0, 18.0, 13.0)
_SACRUM_H = (26.0, 22.0, 18.0, 14.0, 11.0)

HERNIATION_TYPES = ("bulge", "protrusion", "extrusion")


@dataclass
class SynthConfig:
    """What :func:`lumbardx.synth.generate_case` samples; every range is ``(low, high)``.

    Probabilities are per case unless named per disc. Defaults follow the level and grade
    distributions of clinical series (listhesis mostly L4-L5 and L5-S1, mostly grade I) and the
    yolospine-dev box statistics (see ``render.box_for_disc``).
    """

    image_sizes: tuple[int, ...] = (256, 320, 384, 448, 512)
    pixel_spacing_mm: tuple[float, float] = (0.6, 1.2)
    fov_mm: tuple[float, float] = (240.0, 320.0)
    rotation_deg: float = 8.0
    anatomy_scale: tuple[float, float] = (0.9, 1.1)
    p_sacrum_visible: float = 0.85
    p_herniation: float = 0.22  # per disc, times the level weight
    herniation_level_weights: dict[str, float] = field(default_factory=lambda: {
        "L5-S1": 1.6, "L4-L5": 1.6, "L3-L4": 1.0, "L2-L3": 0.6, "L1-L2": 0.5, "T12-L1": 0.4,
        "thoracic": 0.2})
    # bulge, protrusion, extrusion
    herniation_type_probs: tuple[float, float, float] = (0.35, 0.45, 0.2)
    herniation_extent_mm: dict[str, tuple[float, float]] = field(default_factory=lambda: {
        "bulge": (1.5, 3.5), "protrusion": (2.5, 7.0), "extrusion": (4.5, 11.0)})
    p_high_intensity_zone: float = 0.25
    p_listhesis: float = 0.2
    listhesis_level_probs: dict[str, float] = field(default_factory=lambda: {
        "L4-L5": 0.55, "L5-S1": 0.35, "L3-L4": 0.1})
    listhesis_grade_probs: tuple[float, float, float, float] = (0.7, 0.22, 0.06, 0.02)
    # Real slip levels carry a bulge box ~2/3 of the time, otherwise a DDD box (not a study class).
    p_herniation_given_listhesis: float = 0.65
    disc_annulus_signal: float = 0.2
    noise_sigma: tuple[float, float] = (0.012, 0.035)  # Rician sigma, fraction of CSF signal
    dicom_slices: tuple[int, ...] = (7, 9, 11)
    slice_thickness_mm: tuple[float, float] = (3.0, 4.0)


def _t(phi: float) -> np.ndarray:
    """Unit axis vector (up the spine) for axis angle ``phi`` (rad): ``[2]`` (u, v)."""
    return np.array([-np.sin(phi), -np.cos(phi)])


def _e(phi: float) -> np.ndarray:
    """Unit anterior vector along the endplate for axis angle ``phi`` (rad): ``[2]`` (u, v)."""
    return np.array([-np.cos(phi), np.sin(phi)])


def meyerding_grade(percent: float) -> str:
    """Meyerding grade of a slip: I <= 25 %, II <= 50, III <= 75, IV <= 100, V > 100."""
    for limit, grade in ((25.0, "I"), (50.0, "II"), (75.0, "III"), (100.0, "IV")):
        if percent <= limit:
            return grade
    return "V"


@dataclass
class Vertebra:
    """One vertebral body (or sacral segment): corners in mm ``[2]`` (u posterior, v inferior).

    ``as_``/``ps`` are the anterior/posterior corners of the superior endplate, ``pi``/``ai``
    of the inferior endplate. ``concavity`` is the endplate concavity depth (mm).
    """

    name: str
    as_: np.ndarray
    ps: np.ndarray
    pi: np.ndarray
    ai: np.ndarray
    concavity: float = 1.0
    marrow: float = 0.42

    @property
    def corners(self) -> np.ndarray:
        """``[4, 2]`` corners in the order AS, PS, PI, AI (mm)."""
        return np.stack([self.as_, self.ps, self.pi, self.ai])

    @property
    def axis(self) -> np.ndarray:
        """Unit vector from the inferior to the superior endplate midpoint ``[2]``."""
        d = (self.as_ + self.ps - self.ai - self.pi) / 2
        return d / np.linalg.norm(d)

    @property
    def anterior(self) -> np.ndarray:
        """Unit vector from the posterior to the anterior wall, mid-height ``[2]``."""
        d = (self.as_ + self.ai - self.ps - self.pi) / 2
        return d / np.linalg.norm(d)

    @property
    def height(self) -> float:
        """Posterior body height (mm)."""
        return float(np.linalg.norm(self.ps - self.pi))

    @property
    def depth(self) -> float:
        """AP depth of the superior endplate (mm)."""
        return float(np.linalg.norm(self.as_ - self.ps))

    def translate(self, d: np.ndarray) -> None:
        """Move every corner by ``d`` (mm)."""
        for k in ("as_", "ps", "pi", "ai"):
            setattr(self, k, getattr(self, k) + d)


@dataclass
class Herniation:
    """Disc material displaced posteriorly beyond the line PI(upper)-PS(lower).

    ``polygons`` are ``[K, 2]`` mm outlines whose union is the herniated material; ``apex`` is
    its most posterior point, exactly ``extent_mm`` from that line. ``migration`` is
    ``none``, ``cranial`` or ``caudal`` (extrusions only).
    """

    type: str
    extent_mm: float
    polygons: list[np.ndarray]
    apex: np.ndarray
    migration: str = "none"
    signal: float = 0.3
    high_intensity_zone: bool = False


@dataclass
class Listhesis:
    """Anterior slip of ``upper`` on ``lower``; ``percent`` = slip / AP depth of lower endplate."""

    level: str
    upper: str
    lower: str
    slip_mm: float
    percent: float
    grade: str


@dataclass
class Disc:
    """One intervertebral disc between ``upper`` and ``lower`` (names); ``level`` e.g. ``L4-L5``."""

    level: str
    upper: Vertebra
    lower: Vertebra
    pfirrmann: int
    herniation: Herniation | None = None
    posterior_bulge_mm: float = 0.5

    @property
    def centre(self) -> np.ndarray:
        """Mean of the four disc corners (mm) ``[2]``."""
        return (self.upper.pi + self.upper.ai + self.lower.as_ + self.lower.ps) / 4

    @property
    def margin(self) -> tuple[np.ndarray, np.ndarray]:
        """Posterior margin chord: (PI of upper, PS of lower), mm."""
        return self.upper.pi, self.lower.ps

    def posterior_normal(self) -> np.ndarray:
        """Unit normal of the posterior chord pointing posterior (away from the disc) ``[2]``."""
        a, b = self.margin
        m = (b - a) / np.linalg.norm(b - a)
        n = np.array([-m[1], m[0]])
        return n if np.dot(n, a - self.centre) > 0 else -n


@dataclass
class Spine:
    """A sampled spine: vertebrae and discs top to bottom, sacral segments S1..S5, pathology."""

    vertebrae: list[Vertebra]
    sacrum: list[Vertebra]
    discs: list[Disc]
    listheses: list[Listhesis] = field(default_factory=list)
    scale: float = 1.0
    conus_level: float = 0.5
    params: dict[str, float] = field(default_factory=dict)

    def vertebra(self, name: str) -> Vertebra:
        """The vertebra (or sacral segment) called ``name``."""
        for v in self.vertebrae + self.sacrum:
            if v.name == name:
                return v
        raise KeyError(name)


def _pick(rng: np.random.Generator, probs: dict[str, float]) -> str:
    keys = list(probs)
    p = np.array([probs[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _build_sacrum(rng: np.random.Generator, k: float, phi_s1: float) -> list[Vertebra]:
    """S1..S5 from the S1 superior endplate (PS at the origin), curving anteriorly downward."""
    segs: list[Vertebra] = []
    ps, phi = np.zeros(2), phi_s1
    for i, (w, h) in enumerate(zip(_SACRUM_W, _SACRUM_H, strict=True)):
        w, h = w * k, h * k * rng.uniform(0.92, 1.08)
        as_ = ps + w * _e(phi)
        phi_low = phi - np.radians(rng.uniform(6.0, 12.0))
        pi = ps - h * _t(phi)
        ai = pi + w * 0.95 * _e(phi_low)
        segs.append(Vertebra(f"S{i + 1}", as_, ps, pi, ai, concavity=0.3, marrow=0.5))
        ps, phi = pi - 1.2 * _t(phi_low), phi_low
    return segs


def _herniation(rng: np.random.Generator, cfg: SynthConfig, disc: Disc) -> Herniation:
    """Shape a Fardon-style posterior herniation on ``disc`` (polygons in mm)."""
    kind = _pick(rng, dict(zip(HERNIATION_TYPES, cfg.herniation_type_probs, strict=True)))
    lo, hi = cfg.herniation_extent_mm[kind]
    e = float(rng.uniform(lo, hi))
    a, b = disc.margin
    length = float(np.linalg.norm(b - a))
    m, n = (b - a) / length, disc.posterior_normal()

    def pt(tau: np.ndarray, o: np.ndarray) -> np.ndarray:  # [K] x [K] -> [K, 2]
        return a + np.outer(tau * length, m) + np.outer(o, n)

    migration = "none"
    if kind == "bulge":
        tau = np.linspace(0.0, 1.0, 33)
        o = e * np.sin(np.pi * tau) ** 0.6
        polys = [np.concatenate([pt(tau, o), pt(tau[::-1], np.full(33, -1.5))])]
        apex = pt(np.array([0.5]), np.array([e]))[0]
        signal = cfg.disc_annulus_signal
    elif kind == "protrusion":
        tc, half = rng.uniform(0.4, 0.6), rng.uniform(0.28, 0.45)
        u = np.linspace(-1.0, 1.0, 41)
        o = e * (1.0 - np.abs(u) ** rng.uniform(1.6, 2.4))  # base wider than dome
        polys = [np.concatenate([pt(tc + half * u, o), pt(tc - half * u, np.full(41, -1.5))])]
        apex = pt(np.array([tc]), np.array([e]))[0]
        signal = float(rng.uniform(0.22, 0.45))
    else:
        tc = rng.uniform(0.4, 0.6)
        neck = rng.uniform(0.12, 0.2) * length
        migration = _pick(rng, {"none": 0.5, "cranial": 0.2, "caudal": 0.3})
        shift = {"none": 0.0, "cranial": -1.0, "caudal": 1.0}[migration] * rng.uniform(4.0, 9.0)
        ra = e / 2 + rng.uniform(0.3, 0.8)  # dome spans [e - 2 ra, e] along n
        rb = neck * rng.uniform(1.7, 2.6)  # dome wider than the neck
        centre = a + (tc * length + shift) * m + (e - ra) * n
        ang = np.linspace(0.0, 2 * np.pi, 48, endpoint=False)
        dome = centre + np.outer(ra * np.cos(ang), n) + np.outer(rb * np.sin(ang), m)
        base = a + tc * length * m - 1.5 * n
        polys = [dome, np.stack([base - neck * m, base + neck * m,
                                 centre + neck * m, centre - neck * m])]
        apex = centre + ra * n
        signal = float(rng.uniform(0.3, 0.75))
    return Herniation(kind, e, polys, apex, migration, signal,
                      bool(rng.random() < cfg.p_high_intensity_zone))


def _pfirrmann(rng: np.random.Generator, level_index: int, age: float) -> int:
    """Pfirrmann grade: worse low in the spine (``level_index`` 0 = L5-S1) and with ``age``."""
    base = 1.0 + 2.0 * age + max(0.0, 1.0 - 0.5 * level_index)
    return int(np.clip(round(base + rng.normal(0.0, 0.7)), 1, 5))


def sample_spine(rng: np.random.Generator, cfg: SynthConfig) -> Spine:
    """Sample one spine with pathology as ``cfg`` asks (vertebrae and discs top to bottom)."""
    k = float(rng.uniform(*cfg.anatomy_scale))
    lord = float(np.clip(rng.normal(1.0, 0.25), 0.45, 1.6))
    age = float(rng.uniform(0.0, 1.0))
    phi = np.radians(float(np.clip(38.0 + 12.0 * (lord - 1.0) + rng.normal(0.0, 4.0), 25.0, 55.0)))
    sacrum = _build_sacrum(rng, k, phi)

    listhesis_level = None
    if rng.random() < cfg.p_listhesis:
        listhesis_level = _pick(rng, cfg.listhesis_level_probs)
    names_up = VERTEBRAE[::-1]
    vertebrae: list[Vertebra] = []
    grades: dict[str, int] = {}
    slips: dict[str, tuple[float, float]] = {}
    lower = sacrum[0]
    for i, name in enumerate(names_up):
        level = f"{name}-{lower.name}"
        g = _pfirrmann(rng, i, age)
        grades[level] = g
        h = _DISC_H[name] * k * rng.uniform(0.85, 1.15) * {4: 0.75, 5: 0.5}.get(g, 1.0)
        slip = 0.0
        if level == listhesis_level:
            probs = zip(("I", "II", "III", "IV"), cfg.listhesis_grade_probs, strict=True)
            grade = _pick(rng, dict(probs))
            lo = {"I": 8.0, "II": 27.0, "III": 52.0, "IV": 77.0}[grade]
            pct = float(rng.uniform(lo, lo + 21.5))
            slip = pct / 100.0 * lower.depth
            slips[level] = (slip, pct)
            h *= 0.8
        delta = np.radians(_DISC_ANGLE[name] * lord + rng.normal(0.0, 1.0))
        phi_low = phi - delta
        pi = lower.ps + h * _t(phi) + slip * _e(phi)
        w = _BODY_AP[name] * k * rng.uniform(0.93, 1.07)
        ai = pi + w * _e(phi_low)
        phi_up = phi_low - np.radians(_BODY_WEDGE[name] * lord + rng.normal(0.0, 0.8))
        ps = pi + _BODY_H[name] * k * rng.uniform(0.92, 1.08) * _t(phi_low)
        as_ = ps + w * 1.01 * _e(phi_up)
        v = Vertebra(name, as_, ps, pi, ai, concavity=float(rng.uniform(0.6, 1.8)),
                     marrow=float(rng.uniform(0.36, 0.5)))
        vertebrae.append(v)
        lower, phi = v, phi_up
    vertebrae.reverse()

    discs: list[Disc] = []
    listheses: list[Listhesis] = []
    chain = vertebrae + [sacrum[0]]
    for up, lo_v in zip(chain[:-1], chain[1:], strict=True):
        level = f"{up.name}-{lo_v.name}"
        disc = Disc(level, up, lo_v, grades[level], posterior_bulge_mm=float(rng.uniform(0.2, 0.8)))
        weight = cfg.herniation_level_weights.get(level, cfg.herniation_level_weights["thoracic"])
        p = cfg.p_herniation * weight
        if level in slips:
            p = cfg.p_herniation_given_listhesis
            slip, _ = slips[level]
            pct = slip / lo_v.depth * 100.0
            listheses.append(Listhesis(level, up.name, lo_v.name, slip, pct, meyerding_grade(pct)))
        if rng.random() < p:
            disc.herniation = _herniation(rng, cfg, disc)
            disc.pfirrmann = max(disc.pfirrmann, 3)
        discs.append(disc)
    conus = float(np.clip(rng.normal(0.55, 0.35), -0.3, 1.4))  # 0 = top of L1, 1 = L1-L2 disc
    return Spine(vertebrae, sacrum, discs, listheses, k, conus,
                 {"lordosis_factor": lord,
                  "sacral_slope_deg": float(np.degrees(_phi_of(sacrum[0]))),
                  "degeneration": age})


def _phi_of(v: Vertebra) -> float:
    """Axis angle (rad) of the superior endplate of ``v``."""
    e = (v.as_ - v.ps) / np.linalg.norm(v.as_ - v.ps)
    return float(np.arctan2(e[1], -e[0]))
