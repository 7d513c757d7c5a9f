"""Severity estimates from the image around a finding: Meyerding slip and herniation extent.

These go beyond Ke et al. (2025), who reported presence only. Both are **estimates** measured on
one mid-sagittal slice; report them with :data:`SLIP_VALIDATION` / :data:`HERNIATION_VALIDATION`
(the error measured on generated cases with known truth by ``bench/severity_validation.py``).

Frame: image pixels (:mod:`lumbardx.data.boxes`), the patient facing image left (anterior =
``-x``, the usual sagittal display; pass ``anterior_left=False`` otherwise).

Method (vertebral bodies). Each body next to the disc is segmented by region growing from a
seed half-way between this disc's centre and its neighbour's (Gaussian-smoothed image,
``sigma`` = :data:`SMOOTH` px; pixels within :data:`LOW`-:data:`HIGH` times the seed's median
intensity; the mask is eroded by :data:`ERODE` inter-disc spacings, the component under the
seed kept and dilated back, which cuts bridges through a thin or blurred cortex; holes
filled). A vertebral body is bounded by a dark cortical rim on MRI (T1 and T2), which stops
the growth. The body's own axes are the orientation (within +-40 degrees of the spine curve)
of its smallest enclosing rectangle; the endplate facing the disc and the posterior and
anterior walls are lines fitted to the mask boundary on each side (middle 60%), and the
corners are their intersections (the radiological convention for rounded corners). Each line
is the outer supporting line of the boundary (RANSAC over boundary points, :data:`NOTCH`), so
the basivertebral vein notch of the posterior wall, a concave endplate or patchy marrow does
not pull it inward.
The marrow mask lies inside the cortex; both corners move inward alike, so the translation is
unbiased while the endplate width is short by about two cortex thicknesses (a few percent of
the slip; left uncorrected, the validation error includes it).

Refusals (no estimate rather than a wrong one). Real marrow (patchy bright marrow, Modic
changes, a dark endplate) is often segmented only in part, and lines fitted to a fragment
give corners anywhere. A body is refused when its posterior corner lies more than
:data:`CORNER_OUTSIDE` spacings from its mask (a correct corner lies a median 1.5 px outside
the rounded marrow mask) or when its endplate does not face the disc (the disc centre must
lie on the endplate line's outer side, at most :data:`FACING` spacings away; otherwise a wall
or a fragment's edge was taken for the endplate). An estimate is refused when the endplate
width is outside 0.6-1.8 spacings or the two bodies' widths differ by more than 1.6x; when
the anterior corners' translation differs from the posterior corners' by more than
:data:`ENDPLATE_MATCH` of the width (a body translates as a whole; a mask that leaked into a
pedicle or was cut short moves one corner only: on patient images such a leak read an
anterolisthesis as a 40% retrolisthesis); and when ``|slip|`` exceeds :data:`MAX_PERCENT` (a
spondyloptosis is obvious on the image; the finding is still reported, only the number is
withheld).

Meyerding (spondylolisthesis). ``slip % = 100 * t / w`` with ``t`` the translation of the
upper body's posterior-inferior corner relative to the lower body's posterior-superior corner,
measured along the lower body's superior endplate (anterior positive), and ``w`` the AP width
of that endplate. Grades: I <= 25, II 26-50, III 51-75, IV 76-100, V > 100 (spondyloptosis).
Supine MRI underestimates slip against standing (weight-bearing) radiographs: the slip may
reduce when lying down, so a low grade here does not exclude a higher grade standing.

Herniation extent. The posterior margin line joins the upper body's posterior-inferior and the
lower body's posterior-superior corners. Along its outward normal, intensity profiles at 15-85%
of the line find the first transition from disc material to the bright (T2) canal content
(half-way crossing between the material's level and the bright level beyond). The line's
corners come from the marrow masks, inset by the cortex; measured on generated cases this
inset and the dark posterior longitudinal ligament cancel (subtracting the same measurement
behind the bodies doubled the error), so no correction is applied. The extent is the largest
value along the line, in mm from the pixel spacing; ``None`` when the spacing is unknown
(PNG/JPEG exports carry none).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lumbardx.clinical.findings import HERNIATION, SLIP, SpineFindings

# Measured by bench/severity_validation.py on lumbardx.synth cases; see that script's output.
SLIP_VALIDATION = (
    "Estimated from the image (vertebral body corners). On 71 generated cases with known slip: "
    "mean absolute error 3.1 slip percentage points (median 2.5, 90th percentile 5.9; grade "
    "agreement 83%; 9 of 80 not measurable; bench/severity_validation.py). On patient images "
    "(832 slices, expert disc boxes; bench/slip_geometry.py) it is much rougher: implausible "
    "corners are refused, so it is measured at only 41% of the discs labelled "
    "spondylolisthesis; the same level on a patient's T1 and T2 slices differs by a median "
    "6.4 points (90th percentile 19); discs without a slip read a median -5 points. At L4-L5 "
    "it reads the labelled slips as anterior (median +16%) and separates them from the other "
    "L4-L5 discs (AUC 0.87 where measured); at L5-S1, where most labelled slips lie, it "
    "measures one in four and reads most of them as posterior (median -23%): there neither "
    "the direction nor the size is reliable. A rough indication to check on the image, not a "
    "measurement. Supine MRI underestimates slip against standing radiographs.")
HERNIATION_VALIDATION = (
    "Estimated from the image (posterior margin line to the canal border). Validation: mean "
    "absolute error 1.6 mm (median 1.3, 90th percentile 3.3, bias +0.5; 8 of 123 not "
    "measurable) on 115 generated "
    "herniated discs with known extent (bench/severity_validation.py, lumbardx.synth, "
    "held-out seeds); not yet validated on patient images.")
SMOOTH = 0.8  # px, Gaussian sigma before region growing
LOW, HIGH = 0.75, 1.45  # intensity band, times the seed median
ERODE = 0.05  # spacings: bridges up to twice this wide are cut
# Refusal rules, measured on yolospine-dev (bench/slip_geometry.py); the marrow mask has rounded
# corners, so a correct corner lies a median 1.5 px (90% within ~5 px) outside it.
CORNER_OUTSIDE = 0.15  # spacings: a posterior corner farther from its mask: a fragment's lines
FACING = 0.4  # spacings: the disc centre lies outside the endplate line, at most this far
NOTCH = 1.5  # px: edge points within this of the outer supporting line define it
MAX_PERCENT = 100.0  # |slip| above this is withheld (spondyloptosis is obvious on the image)
# The anterior corners' translation may differ from the posterior corners' by at most this much
# of the endplate width (the two endplates' depths, along the lower one, within 30%): on the
# generated slips of the tuning seeds (3000-3059, exact geometry) they differ by at most 30%
# (95th percentile 28%); beyond it one body's mask has leaked (into a pedicle, a disc) or was cut.
ENDPLATE_MATCH = 0.3
GRADES: tuple[tuple[float, str], ...] = ((25.0, "I"), (50.0, "II"), (75.0, "III"), (100.0, "IV"))


def meyerding_grade(percent: float) -> str:
    """Meyerding grade: I <= 25 %, II <= 50, III <= 75, IV <= 100, V > 100 (spondyloptosis)."""
    for limit, grade in GRADES:
        if percent <= limit:
            return grade
    return "V"


@dataclass
class Body:
    """A segmented vertebral body next to a disc.

    Attributes:
        mask: ``bool [H, W]`` marrow pixels.
        endplate: ``(posterior, anterior)`` corners ``[2]`` (x, y) px of the endplate facing
            the disc.
        direction: unit vector ``[2]`` along that endplate, pointing anterior.
        back: the posterior wall's line ``(point [2], unit direction [2])`` (x, y) px.
    """

    mask: np.ndarray
    endplate: tuple[np.ndarray, np.ndarray]
    direction: np.ndarray
    back: tuple[np.ndarray, np.ndarray] | None = None


@dataclass
class SlipEstimate:
    """Meyerding estimate at one level: ``percent``, ``grade``, the translation and endplate
    width in pixels, and the corners used (px): upper posterior-inferior, lower
    posterior-superior and anterior-superior."""

    percent: float
    grade: str
    translation_px: float
    width_px: float
    upper_pi: np.ndarray
    lower_ps: np.ndarray
    lower_as: np.ndarray


def _seed_region(img: np.ndarray, seed: np.ndarray, radius: int, erode: int) -> np.ndarray | None:
    h, w = img.shape
    x, y = int(round(seed[0] - 0.5)), int(round(seed[1] - 0.5))
    if not (0 <= x < w and 0 <= y < h):
        return None
    win = img[max(0, y - radius):y + radius + 1, max(0, x - radius):x + radius + 1]
    m = float(np.median(win))
    if m <= 0:
        return None
    ok = (img >= LOW * m) & (img <= HIGH * m)
    core = ndimage.binary_erosion(ok, structure=np.ones((3, 3), bool), iterations=erode)
    lab, _ = ndimage.label(core)
    sub = lab[max(0, y - radius):y + radius + 1, max(0, x - radius):x + radius + 1]
    vals = sub[sub > 0]
    if len(vals) == 0:
        return None
    comp = int(np.bincount(vals).argmax())
    grown = ndimage.binary_dilation(lab == comp, structure=np.ones((3, 3), bool), iterations=erode)
    return ndimage.binary_fill_holes(grown & ok)


def segment_body(image: np.ndarray, seed: np.ndarray, toward_disc: np.ndarray,
                 anterior: np.ndarray, spacing_px: float,
                 disc_centre: np.ndarray | None = None) -> Body | None:
    """Segment the vertebral body around ``seed`` and find its endplate facing the disc.

    Args:
        image: ``[H, W]`` grayscale (any dtype).
        seed: ``[2]`` (x, y) px inside the body.
        toward_disc: unit ``[2]`` vector from the body towards the disc.
        anterior: unit ``[2]`` vector pointing anterior.
        spacing_px: inter-disc spacing (px), bounds the body size.
        disc_centre: ``[2]`` (x, y) px of the disc; when given, the endplate must face it
            (:data:`FACING`).

    Returns:
        The body, or ``None`` when no plausible body is found (see :func:`body_or_reason`).
    """
    body = body_or_reason(image, seed, toward_disc, anterior, spacing_px, disc_centre)
    return body if isinstance(body, Body) else None


def body_or_reason(image: np.ndarray, seed: np.ndarray, toward_disc: np.ndarray,
                   anterior: np.ndarray, spacing_px: float,
                   disc_centre: np.ndarray | None = None) -> Body | str:
    """:func:`segment_body`, returning the reason (a short phrase) instead of ``None``.

    Refusals: no region under the seed; a mask under 20 px or wider than two spacings; no
    line on a side; lines that do not intersect; a posterior corner more than
    :data:`CORNER_OUTSIDE` spacings from the mask (the lines were fitted to a fragment of
    patchy marrow or to the wrong side); an endplate that does not face ``disc_centre`` (the
    disc centre must lie on the endplate's outer side, at most :data:`FACING` spacings away:
    otherwise a wall or a fragment's edge was taken for the endplate).
    """
    img = ndimage.gaussian_filter(np.asarray(image, dtype=np.float64), SMOOTH)
    erode = max(1, int(round(ERODE * spacing_px)))
    mask = _seed_region(img, seed, max(2, int(0.08 * spacing_px)), erode)
    if mask is None:
        return "no region under the seed"
    ys, xs = np.nonzero(mask)
    pts = np.stack([xs + 0.5, ys + 0.5], axis=1)
    rel = pts - seed
    ext = np.ptp(rel @ anterior) if len(rel) else 0.0
    if len(pts) < 20:
        return "mask too small"
    if ext > 2.0 * spacing_px:
        return "mask too wide"
    # Keep the body part near the seed (the sacrum continues far below S1).
    along = rel @ toward_disc
    near = along > -0.6 * spacing_px
    pts, rel, along = pts[near], rel[near], along[near]
    toward_disc, anterior = _body_frame(rel, toward_disc, anterior)
    along, across = rel @ toward_disc, rel @ anterior
    endplate = _edge_line(pts, across, along, +1)
    back = _edge_line(pts, along, across, -1)
    front = _edge_line(pts, along, across, +1)
    if endplate is None or back is None or front is None:
        return "no edge line"
    direction = endplate[1] if endplate[1] @ anterior > 0 else -endplate[1]
    post = _intersect(endplate, back)
    ant = _intersect(endplate, front)
    if post is None or ant is None:
        return "lines do not intersect"
    if np.min(np.hypot(*(pts - post).T)) > CORNER_OUTSIDE * spacing_px:
        return "corner outside the mask"  # the anterior corner only sets the width (checked)
    if disc_centre is not None:
        normal = np.array([-direction[1], direction[0]])
        normal = normal if normal @ toward_disc > 0 else -normal
        gap = float((np.asarray(disc_centre, dtype=np.float64) - endplate[0]) @ normal)
        if not (0.0 < gap <= FACING * spacing_px):
            return "endplate does not face the disc"
    return Body(mask, (post, ant), direction, back)


def _body_frame(rel: np.ndarray, toward: np.ndarray, anterior: np.ndarray,
                max_deg: float = 40.0) -> tuple[np.ndarray, np.ndarray]:
    """Rotate the frame ``(toward, anterior)`` to the body's own axes: the rotation within
    +-``max_deg`` minimising the area of the 2-98 percentile box of the points ``rel [N, 2]``
    (a vertebral body is close to a rectangle; the spine curve's tangent is not its axis at a
    slipped or wedged level)."""
    best, best_area = 0.0, np.inf
    for deg in np.arange(-max_deg, max_deg + 0.5, 1.0):
        c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
        a, b = c * toward + s * anterior, -s * toward + c * anterior
        pa, pb = np.percentile(rel @ a, [2, 98]), np.percentile(rel @ b, [2, 98])
        area = (pa[1] - pa[0]) * (pb[1] - pb[0])
        if area < best_area:
            best, best_area = float(deg), float(area)
    c, s = np.cos(np.radians(best)), np.sin(np.radians(best))
    return c * toward + s * anterior, -s * toward + c * anterior


def _edge_line(pts: np.ndarray, key: np.ndarray, depth: np.ndarray,
               sign: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Line ``(point [2], unit direction [2])`` through the mask boundary on one side.

    The points ``pts [N, 2]`` are binned by ``key`` over its middle 60%; in each bin the point
    of largest ``sign * depth`` is a boundary point; a line is fitted (total least squares).
    Only the points on the outer supporting line are used (:func:`_outer_inliers`), so a
    recess of the boundary (the basivertebral vein notch of the posterior wall, a concave
    endplate, patchy marrow) does not pull the line inward.
    """
    lo, hi = np.percentile(key, [20, 80])
    if hi - lo < 3:
        return None
    edges = np.linspace(lo, hi, 13)
    found, outer = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        sel = np.flatnonzero((key >= a) & (key < b))
        if len(sel):
            j = sel[np.argmax(sign * depth[sel])]
            found.append(pts[j])
            outer.append((key[j], sign * depth[j]))
    if len(found) < 4:
        return None
    e, kd = np.asarray(found), np.asarray(outer)
    keep = _outer_inliers(kd[:, 0], kd[:, 1])
    centre = e[keep].mean(axis=0)
    direction = np.linalg.svd(e[keep] - centre, full_matrices=False)[2][0]
    return centre, direction


def _outer_inliers(key: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``bool [N]`` boundary points on the outer supporting line (RANSAC over point pairs).

    ``key [N]`` runs along the edge, ``out [N]`` is the outward depth (px). Of the lines
    through two points with no point more than :data:`NOTCH` px outside, the one with most
    points within :data:`NOTCH` px is kept (ties: the smaller summed distance); a recess
    (vein notch, concave endplate, patchy marrow) then leaves the line where the rims are.
    """
    n = len(key)
    best, best_score = np.ones(n, dtype=bool), (-1, 0.0)
    for i in range(n):
        for j in range(i + 1, n):
            if key[j] == key[i]:
                continue
            slope = (out[j] - out[i]) / (key[j] - key[i])
            resid = (out - out[i] - slope * (key - key[i])) / np.hypot(1.0, slope)
            if (resid > NOTCH).any():
                continue
            inl = np.abs(resid) <= NOTCH
            score = (int(inl.sum()), -float(np.abs(resid[inl]).sum()))
            if score > best_score:
                best, best_score = inl, score
    return best if best.sum() >= 2 else np.ones(n, dtype=bool)


def _intersect(a: tuple[np.ndarray, np.ndarray],
               b: tuple[np.ndarray, np.ndarray]) -> np.ndarray | None:
    """Intersection ``[2]`` of two lines given as (point, direction); ``None`` if near parallel."""
    m = np.stack([a[1], -b[1]], axis=1)
    if abs(np.linalg.det(m)) < 0.2:
        return None
    k = np.linalg.solve(m, b[0] - a[0])
    return a[0] + k[0] * a[1]


def _frame(spine: SpineFindings, i: int,
           anterior_left: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """Tangent (down the spine), anterior unit vector and spacing (px) at disc ``i``."""
    disc = spine.discs[i]
    if spine.curve is None:
        raise ValueError("the findings have no spine curve (no boxes)")
    t = spine.curve.tangent_at(disc.s)
    ant = np.array([-t[1], t[0]]) if anterior_left else np.array([t[1], -t[0]])
    sp = disc.spacing
    if not np.isfinite(sp):
        sp = 2.0 * disc.box.height
    return t, ant, float(sp)


def _bodies_or_reasons(image: np.ndarray, spine: SpineFindings, i: int, anterior_left: bool
                       ) -> tuple[Body | str, Body | str, np.ndarray, float]:
    """The bodies above and below disc ``i`` (each a :class:`Body` or why it was refused,
    :func:`body_or_reason`); also the anterior vector and spacing."""
    t, ant, sp = _frame(spine, i, anterior_left)
    c = np.asarray(spine.discs[i].centre)
    discs = spine.discs
    up_seed = (c + np.asarray(discs[i - 1].centre)) / 2 if i > 0 and \
        abs(discs[i].s - discs[i - 1].s) < 1.6 * sp else c - 0.5 * sp * t
    lo_seed = (c + np.asarray(discs[i + 1].centre)) / 2 if i + 1 < len(discs) and \
        abs(discs[i + 1].s - discs[i].s) < 1.6 * sp else c + 0.5 * sp * t
    upper = body_or_reason(image, up_seed, t, ant, sp, c)
    lower = body_or_reason(image, lo_seed, -t, ant, sp, c)
    return upper, lower, ant, sp


def _bodies(image: np.ndarray, spine: SpineFindings, i: int,
            anterior_left: bool) -> tuple[Body | None, Body | None, np.ndarray, float]:
    """Segment the bodies above and below disc ``i``; also the anterior vector and spacing."""
    upper, lower, ant, sp = _bodies_or_reasons(image, spine, i, anterior_left)
    return (upper if isinstance(upper, Body) else None,
            lower if isinstance(lower, Body) else None, ant, sp)


def slip_or_reason(image: np.ndarray, spine: SpineFindings, index: int,
                   anterior_left: bool = True) -> SlipEstimate | str:
    """:func:`estimate_slip`, returning why no estimate was made (a short phrase a reader can
    act on) instead of ``None``."""
    upper, lower, _, sp = _bodies_or_reasons(image, spine, index, anterior_left)
    if not isinstance(upper, Body):
        return f"the vertebral body above the disc was not outlined ({upper})"
    if not isinstance(lower, Body):
        return f"the vertebral body below the disc was not outlined ({lower})"
    ps, as_ = lower.endplate
    pi = upper.endplate[0]
    e = lower.direction
    width = float((as_ - ps) @ e)
    upper_width = float(np.linalg.norm(upper.endplate[1] - upper.endplate[0]))
    if not (0.6 * sp <= width <= 1.8 * sp) or not (0.6 <= upper_width / width <= 1.6):
        return "an endplate's width is implausible (a body outline merged with the disc or " \
               "soft tissue)"
    trans = float((pi - ps) @ e)
    if abs(float((upper.endplate[1] - as_) @ e) - trans) > ENDPLATE_MATCH * width:
        return "the anterior and posterior corners disagree (a body outline leaked or was cut)"
    pct = 100.0 * trans / width
    if abs(pct) > MAX_PERCENT:
        return f"the corners give a slip over {MAX_PERCENT:.0f}% (implausible corners; a " \
               "spondyloptosis is plain on the image)"
    return SlipEstimate(pct, meyerding_grade(abs(pct)), trans, width, pi, ps, as_)


def estimate_slip(image: np.ndarray, spine: SpineFindings, index: int,
                  anterior_left: bool = True) -> SlipEstimate | None:
    """Meyerding slip at disc ``spine.discs[index]`` from the image (see module docstring).

    The result is an estimate on supine MRI, which underestimates slip against standing
    radiographs; quote :data:`SLIP_VALIDATION` with it.

    Args:
        image: ``[H, W]`` grayscale slice the boxes refer to.
        spine: findings of that image (its curve and disc centres give the local frame).
        index: the disc (usually one with a spondylolisthesis finding).
        anterior_left: the patient faces image left.

    Returns:
        The estimate, or ``None`` when a body could not be segmented plausibly, its corners
        disagree, or ``|percent|`` exceeds :data:`MAX_PERCENT` (module docstring, "Refusals";
        :func:`slip_or_reason` says which). A negative percent is a retrolisthesis (the grade
        is then that of its magnitude).
    """
    est = slip_or_reason(image, spine, index, anterior_left)
    return est if isinstance(est, SlipEstimate) else None


def _crossing(img: np.ndarray, q: np.ndarray, n: np.ndarray, sp: float) -> float | None:
    """Distance (px) along ``n`` from ``q`` to the first half-way rise from the material
    just inside (``[-0.06, 0]`` spacings) to the bright level beyond (90th percentile of
    ``[0, 0.4]`` spacings); ``None`` when the profile leaves the image or shows no rise."""
    r = np.arange(-0.06 * sp, 0.4 * sp, 0.25)
    pts = q[None, :] + r[:, None] * n[None, :]
    h, w = img.shape
    if (pts < 0).any() or (pts[:, 0] >= w).any() or (pts[:, 1] >= h).any():
        return None
    prof = ndimage.map_coordinates(img, [pts[:, 1] - 0.5, pts[:, 0] - 0.5], order=1)
    inside = float(np.median(prof[r <= 0]))
    bright = float(np.percentile(prof[r >= 0], 90))
    if bright - inside < 0.15 * max(bright, 1e-6):
        return None
    above = np.flatnonzero((prof >= (inside + bright) / 2) & (r >= -0.02 * sp))
    return float(r[above[0]]) if len(above) else None


def estimate_herniation_extent(image: np.ndarray, spine: SpineFindings, index: int,
                               pixel_spacing: tuple[float, float] | float | None,
                               anterior_left: bool = True) -> float | None:
    """Posterior extent (mm) of disc material beyond the posterior margin line at disc ``index``.

    Args:
        image: ``[H, W]`` grayscale T2-weighted slice (bright canal content behind the disc).
        spine: findings of that image.
        index: the disc (usually one with a herniation finding).
        pixel_spacing: ``(row, column)`` mm or one isotropic value; ``None`` gives ``None``.
        anterior_left: the patient faces image left.

    Returns:
        The extent in mm (0 when nothing passes the line), or ``None`` when the spacing is
        unknown or the bodies or the profiles cannot be measured. Method: module docstring.
    """
    if pixel_spacing is None:
        return None
    ps = (float(pixel_spacing), float(pixel_spacing)) if np.isscalar(pixel_spacing) \
        else (float(pixel_spacing[0]), float(pixel_spacing[1]))  # type: ignore[index]
    upper, lower, ant, sp = _bodies(image, spine, index, anterior_left)
    if upper is None or lower is None:
        return None
    a, b = upper.endplate[0], lower.endplate[0]
    length = float(np.linalg.norm(b - a))
    if length <= 0:
        return None
    m = (b - a) / length
    n = np.array([m[1], -m[0]])
    if n @ ant > 0:
        n = -n
    img = ndimage.gaussian_filter(np.asarray(image, dtype=np.float64), 0.7)
    at_disc = [_crossing(img, a + tau * length * m, n, sp) for tau in np.linspace(0.15, 0.85, 15)]
    disc_d = [x for x in at_disc if x is not None]
    if len(disc_d) < 5:
        return None
    extent_px = max(0.0, max(disc_d))
    # Convert along the normal's direction: mm per px of the (row, col) spacing.
    mm_per_px = float(np.hypot(n[0] * ps[1], n[1] * ps[0]))
    return extent_px * mm_per_px


def annotate_severity(image: np.ndarray, spine: SpineFindings,
                      pixel_spacing: tuple[float, float] | float | None,
                      anterior_left: bool = True) -> dict[int, str]:
    """Fill ``slip_percent`` / ``meyerding_grade`` of discs with a spondylolisthesis finding
    and ``herniation_extent_mm`` of discs with a herniation finding, in place. Estimates that
    cannot be made stay ``None``; a slip already measured by another method
    (``disc.slip_method`` set, e.g. by the segment reader) is kept.

    Returns:
        Disc index -> why its slip was not measured (:func:`slip_or_reason`).
    """
    refused: dict[int, str] = {}
    for i, disc in enumerate(spine.discs):
        if disc.has(SLIP) and disc.slip_method is None:
            est = slip_or_reason(image, spine, i, anterior_left)
            if isinstance(est, SlipEstimate):
                disc.slip_percent = round(est.percent, 1)
                disc.meyerding_grade = est.grade
            else:
                refused[i] = est
        if disc.has(HERNIATION):
            ext = estimate_herniation_extent(image, spine, i, pixel_spacing, anterior_left)
            disc.herniation_extent_mm = None if ext is None else round(ext, 1)
    return refused
