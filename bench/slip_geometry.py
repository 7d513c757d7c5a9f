"""Does the image-based Meyerding slip estimate separate spondylolisthesis levels on real MRI?

First real-data check of :func:`lumbardx.clinical.severity.estimate_slip` (so far validated on
generated cases only, ``bench/severity_validation.py``), and the evidence for or against using
geometry beside the detector's weakest class (spondylolisthesis).

For every image of a dataset (default ``../shared/data/yolospine-dev``, study classes) the
**ground-truth** boxes are grouped into discs with
:func:`lumbardx.clinical.findings.build_findings` (a spondylolisthesis box joins the disc whose
centre it contains nearest its own centre, rule 4), and ``estimate_slip`` runs on **every**
disc. A disc is *slip-labelled* when it carries a spondylolisthesis box. The patient faces
image left in yolospine-dev (anterior vertebral bodies left, spinous processes right; checked
on rendered cases), so ``anterior_left=True``. Pixel spacing is unknown for these PNGs; only
the percentage is used.

Reported (``--out``, JSON):

* counts of slip / non-slip discs, the fraction where an estimate was made (the estimator
  refuses implausible segmentations) and the distribution (median, IQR) of the slip % in each
  group;
* ROC AUC of ``|slip %|`` and of the signed slip % (anterior positive) for slip vs non-slip
  discs, twice: on the discs with an estimate, and on all discs with a refusal scored 0 (the
  way a combined rule would have to treat it); 95% percentile CI from a bootstrap that
  resamples **patients** (:func:`lumbardx.clinical.stats.case_weights`; T1 and T2 of a patient
  share boxes and move together);
* sensitivity and specificity at Meyerding cut-offs 10% and 15% (``|slip %| >= cut``; a
  refusal counts as below the cut), Wilson 95% intervals
  (:func:`lumbardx.clinical.stats.proportion`);
* per image: AUC of the image's largest ``|slip %|`` for images with any slip box vs the rest;
* T1/T2 agreement: the same patient's co-registered T1 and T2 slices carry identical boxes, so
  the two estimates at one disc measure the estimator's repeatability on real images;
* the AUCs per sequence and, level-matched, at L4-L5 and L5-S1 (slip discs sit there; the
  other levels differ in geometry, which flatters or hides separation in the pooled AUC);
* an exploratory quality gate (lower endplate within :data:`GATE_TILT_DEG` of the spine
  normal, posterior corners within :data:`GATE_OFFSET` spacings of the disc): ``*_gated``;
* one compact row per disc (``rows.columns`` / ``rows.values``) for later combination with
  detector scores.

Images without any study-class box (e.g. only degenerative-disc or stenosis boxes) give no
discs and no rows. Degenerative-disc (DDD) boxes are not study classes, so a disc annotated
only as DDD is absent from the findings; the estimator then seeds from the spine curve.

Usage::

    python bench/slip_geometry.py ../shared/data/yolospine-dev \
        --out bench/results/slip_geometry.json [--cases /tmp/slip_cases] [--limit N]

``--cases`` renders a few cases (image, boxes and the estimator's corner points) into a folder
for visual review; keep that folder outside the repository (it holds patient images).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from lumbardx.clinical.findings import HERNIATION, SLIP, SpineFindings, build_findings
from lumbardx.clinical.severity import SlipEstimate, estimate_slip
from lumbardx.clinical.stats import case_weights, finite_or_none, percentile_ci, proportion
from lumbardx.data.boxes import Box, Sample
from lumbardx.data.dataset import LumbarDataset
from lumbardx.data.errors import InputError
from lumbardx.io import atomic_write_bytes, atomic_write_text

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "yolospine-dev"
OUT = Path(__file__).resolve().parent / "results" / "slip_geometry.json"
CUTOFFS = (10.0, 15.0)  # slip %: the usual thresholds for a "real" (grade I+) listhesis
N_BOOT = 2000
LEVELS = ("L4-L5", "L5-S1")  # level-matched comparisons (where 90 of the 98 slip boxes lie)
MAX_FIGURE_BYTES = 200_000
# Exploratory quality gate (chosen by looking at failures on this data, so its AUC is optimistic):
GATE_TILT_DEG = 20.0  # lower endplate within 20 degrees of the spine normal
GATE_OFFSET = 0.5  # both posterior corners within half a spacing of the disc centre (tangent)


@dataclass
class DiscMeasure:
    """The slip estimate at one ground-truth disc.

    Attributes:
        image_id, patient, sequence: the image (dataset-relative path), its patient and MRI
            sequence (``None`` when unknown).
        disc: index of the disc in ``SpineFindings.discs`` (top to bottom); ``n_discs`` their
            number in the image; ``level`` its name (counted from the lowest disc).
        slip: the disc carries a spondylolisthesis box; ``herniation`` likewise.
        slip_box_alone: the disc is made of the spondylolisthesis box only (no disc box).
        spacing_px: local inter-disc spacing (pixels, ``None`` with one disc).
        percent: signed slip % (anterior positive) or ``None`` when the estimator refused;
            ``grade`` the Meyerding grade of ``|percent|``.
        translation_px, width_px: the estimate's translation and endplate width (pixels).
        corners: ``[[x, y] x 3]`` pixels: upper posterior-inferior, lower posterior-superior and
            lower anterior-superior corners, or ``None``.
        endplate_tilt_deg: angle (degrees, 0-90) between the lower endplate (posterior-superior
            to anterior-superior corner) and the spine curve's normal at the disc; ``None``
            without an estimate. Large values mean the wrong side of the body was taken.
        corner_offset: the larger distance (in local spacings) of the two posterior corners
            from the disc centre along the spine tangent; ``None`` without an estimate. A
            corner belongs at the disc (about 0.1-0.3 spacings away).
    """

    image_id: str
    patient: str
    sequence: str | None
    disc: int
    n_discs: int
    level: str
    slip: bool
    herniation: bool
    slip_box_alone: bool
    spacing_px: float | None
    percent: float | None
    grade: str | None
    translation_px: float | None
    width_px: float | None
    corners: list[list[float]] | None
    endplate_tilt_deg: float | None = None
    corner_offset: float | None = None

    def passes_gate(self) -> bool:
        """Whether the estimate passes the exploratory geometry gate (:data:`GATE_TILT_DEG`,
        :data:`GATE_OFFSET`); ``False`` without an estimate."""
        return (self.endplate_tilt_deg is not None and self.corner_offset is not None
                and self.endplate_tilt_deg <= GATE_TILT_DEG and self.corner_offset <= GATE_OFFSET)


def geometry_checks(spine: SpineFindings, index: int,
                    est: SlipEstimate) -> tuple[float, float]:
    """``(endplate tilt in degrees, corner offset in spacings)`` of an estimate at disc
    ``index`` (see :class:`DiscMeasure`); the frame is the spine curve's tangent there."""
    disc = spine.discs[index]
    assert spine.curve is not None
    t = np.asarray(spine.curve.tangent_at(disc.s), dtype=np.float64)
    t = t / np.linalg.norm(t)
    e = np.asarray(est.lower_as - est.lower_ps, dtype=np.float64)
    tilt = float(np.degrees(np.arcsin(min(1.0, abs(float(e @ t)) / max(np.linalg.norm(e), 1e-9)))))
    sp = disc.spacing if np.isfinite(disc.spacing) else 2.0 * disc.box.height
    c = np.asarray(disc.centre, dtype=np.float64)
    off = max(abs(float((est.upper_pi - c) @ t)), abs(float((est.lower_ps - c) @ t))) / sp
    return round(tilt, 2), round(off, 3)


def sample_boxes(sample: Sample, class_names: Sequence[str]) -> list[Box]:
    """The sample's ground-truth boxes as :class:`Box` (pixels, class names, no score)."""
    return [Box(class_names[int(lab)], *(float(v) for v in xyxy))
            for xyxy, lab in zip(sample.boxes, sample.labels)]


def measure_image(image: np.ndarray, boxes: Sequence[Box], image_id: str, patient: str = "",
                  sequence: str | None = None, anterior_left: bool = True
                  ) -> tuple[SpineFindings, list[DiscMeasure], list[SlipEstimate | None]]:
    """Group ``boxes`` into discs and estimate the slip at every disc of one image.

    Args:
        image: ``[H, W]`` grayscale slice the boxes refer to.
        boxes: ground-truth boxes (study class names, pixels, ``boxes.py`` convention).
        image_id, patient, sequence: recorded in the rows.
        anterior_left: the patient faces image left.

    Returns:
        ``(findings, one DiscMeasure per disc, the raw estimates)``, discs top to bottom.
    """
    h, w = image.shape[:2]
    spine = build_findings(list(boxes), (w, h))
    rows: list[DiscMeasure] = []
    estimates: list[SlipEstimate | None] = []
    for i, disc in enumerate(spine.discs):
        est = estimate_slip(image, spine, i, anterior_left) if spine.curve is not None else None
        estimates.append(est)
        checks = (None, None) if est is None else geometry_checks(spine, i, est)
        rows.append(DiscMeasure(
            image_id=image_id, patient=patient, sequence=sequence, disc=i,
            n_discs=len(spine.discs), level=disc.level, slip=disc.has(SLIP),
            herniation=disc.has(HERNIATION),
            slip_box_alone=all(b.label == SLIP for b in disc.boxes),
            spacing_px=finite_or_none(round(float(disc.spacing), 2)),
            percent=None if est is None else round(est.percent, 2),
            grade=None if est is None else est.grade,
            translation_px=None if est is None else round(est.translation_px, 2),
            width_px=None if est is None else round(est.width_px, 2),
            corners=None if est is None else
            [[round(float(v), 2) for v in p] for p in (est.upper_pi, est.lower_ps, est.lower_as)],
            endplate_tilt_deg=checks[0], corner_offset=checks[1]))
    return spine, rows, estimates


# -- statistics -------------------------------------------------------------------------------

def weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC (Mann-Whitney; ties count one half) under per-item weights.

    Args:
        scores: ``[N]`` higher = more likely positive.
        positive: ``bool [N]``.
        weights: ``[B, N]`` non-negative item weights (one row per bootstrap replicate; a row
            of ones is the plain AUC).

    Returns:
        ``[B]`` AUCs; ``nan`` where a replicate has no positive or no negative weight.
    """
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    wts = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    uniq, inv = np.unique(s, return_inverse=True)
    onehot = sparse.csr_matrix((np.ones(len(s)), (np.arange(len(s)), inv)),
                               shape=(len(s), len(uniq)))
    pos_u = np.asarray((onehot.T.multiply(pos[:, None].T) @ wts.T).T)  # [B, U]
    neg_u = np.asarray((onehot.T.multiply((~pos)[:, None].T) @ wts.T).T)  # [B, U]
    below = np.cumsum(neg_u, axis=1) - neg_u
    num = (pos_u * (below + 0.5 * neg_u)).sum(axis=1)
    den = pos_u.sum(axis=1) * neg_u.sum(axis=1)
    out = np.full(len(num), np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def auc(scores: Sequence[float] | np.ndarray, positive: Sequence[bool] | np.ndarray) -> float:
    """Plain ROC AUC (Mann-Whitney, ties one half); ``nan`` without both classes."""
    s = np.asarray(scores, dtype=np.float64)
    return float(weighted_auc(s, np.asarray(positive, bool), np.ones((1, len(s))))[0])


def clustered_auc(scores: np.ndarray, positive: np.ndarray, clusters: Sequence[str],
                  n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """AUC with a 95% percentile interval from a bootstrap resampling whole ``clusters``
    (patients). Returns ``{"auc", "ci_low", "ci_high", "n_pos", "n_neg", "n_boot_used"}``."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    ids, idx = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    w = case_weights(len(ids), n_boot, np.random.default_rng(seed))[:, idx]  # [B, N]
    low, high, used = percentile_ci(weighted_auc(s, pos, w))
    return {"auc": finite_or_none(auc(s, pos)), "ci_low": finite_or_none(low),
            "ci_high": finite_or_none(high), "n_pos": int(pos.sum()),
            "n_neg": int((~pos).sum()), "n_boot_used": used}


def _prop(k: int, n: int) -> dict[str, Any]:
    p = proportion(k, n)
    return {"k": p.successes, "n": p.total, "estimate": finite_or_none(p.estimate),
            "ci_low": finite_or_none(p.ci_low), "ci_high": finite_or_none(p.ci_high),
            "method": p.method}


def cutoff_performance(percent: Sequence[float | None], positive: Sequence[bool],
                       cut: float) -> dict[str, Any]:
    """Sensitivity and specificity (Wilson 95%) of ``|percent| >= cut`` for ``positive``; a
    refusal (``None``) counts as below the cut. Also the same among discs with an estimate."""
    pos = np.asarray(positive, dtype=bool)
    made = np.array([p is not None for p in percent], dtype=bool)
    call = np.array([p is not None and abs(p) >= cut for p in percent], dtype=bool)
    return {"cut_percent": cut,
            "sensitivity": _prop(int((call & pos).sum()), int(pos.sum())),
            "specificity": _prop(int((~call & ~pos).sum()), int((~pos).sum())),
            "sensitivity_estimated": _prop(int((call & pos).sum()), int((pos & made).sum())),
            "specificity_estimated": _prop(int((~call & ~pos & made).sum()),
                                           int((~pos & made).sum()))}


def distribution(values: Sequence[float]) -> dict[str, Any]:
    """``n``, median, quartiles, 10th/90th percentiles of ``values`` (``None`` when empty)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"n": 0, "median": None, "q1": None, "q3": None, "p10": None, "p90": None}
    q = np.percentile(v, [50, 25, 75, 10, 90])
    return {"n": int(v.size), **{k: round(float(x), 2) for k, x in
                                 zip(("median", "q1", "q3", "p10", "p90"), q)}}


def disc_summary(rows: Sequence[DiscMeasure], n_boot: int = N_BOOT) -> dict[str, Any]:
    """Disc-level statistics of the module docstring for ``rows``; ``*_gated`` entries keep
    only estimates passing the exploratory gate (:meth:`DiscMeasure.passes_gate`)."""
    pos = np.array([r.slip for r in rows], dtype=bool)
    pct = [r.percent for r in rows]
    made = np.array([p is not None for p in pct], dtype=bool)
    gate = np.array([r.passes_gate() for r in rows], dtype=bool)
    signed0 = np.array([0.0 if p is None else p for p in pct], dtype=np.float64)
    pats = [r.patient for r in rows]
    groups: dict[str, Any] = {}
    for name, sel in (("slip", pos), ("non_slip", ~pos)):
        vals = [p for p, s in zip(pct, sel) if s and p is not None]
        groups[name] = {"discs": int(sel.sum()),
                        "estimated": _prop(int((made & sel).sum()), int(sel.sum())),
                        "passes_gate": _prop(int((gate & sel).sum()), int(sel.sum())),
                        "abs_percent": distribution(np.abs(vals)),
                        "signed_percent": distribution(vals),
                        "abs_percent_gated": distribution(np.abs(signed0[gate & sel]))}
    m, g = np.flatnonzero(made), np.flatnonzero(gate)
    auc_out = {
        "abs_estimated": clustered_auc(np.abs(signed0[m]), pos[m], [pats[i] for i in m], n_boot),
        "signed_estimated": clustered_auc(signed0[m], pos[m], [pats[i] for i in m], n_boot),
        "abs_refusal_as_0": clustered_auc(np.abs(signed0), pos, pats, n_boot),
        "signed_refusal_as_0": clustered_auc(signed0, pos, pats, n_boot),
        "refusal_only": clustered_auc((~made).astype(float), pos, pats, n_boot),
        "abs_gated": clustered_auc(np.abs(signed0[g]), pos[g], [pats[i] for i in g], n_boot),
        "abs_gated_else_0": clustered_auc(np.where(gate, np.abs(signed0), 0.0), pos, pats,
                                          n_boot),
    }
    gated_pct = [p if ok else None for p, ok in zip(pct, gate)]
    return {"groups": groups, "auc": auc_out,
            "cutoffs": [cutoff_performance(pct, pos, c) for c in CUTOFFS],
            "cutoffs_gated": [cutoff_performance(gated_pct, pos, c) for c in CUTOFFS]}


def image_summary(rows: Sequence[DiscMeasure], n_boot: int = N_BOOT) -> dict[str, Any]:
    """Per image: AUC of the largest ``|slip %|`` (0 when no disc was estimated) for images
    with any spondylolisthesis box vs the rest, clustered by patient."""
    by: dict[str, list[DiscMeasure]] = {}
    for r in rows:
        by.setdefault(r.image_id, []).append(r)
    ids = sorted(by)
    score = np.array([max([abs(r.percent) for r in by[i] if r.percent is not None], default=0.0)
                      for i in ids])
    pos = np.array([any(r.slip for r in by[i]) for i in ids])
    pats = [by[i][0].patient for i in ids]
    return {"images": len(ids), "images_with_slip": int(pos.sum()),
            "max_abs_percent": clustered_auc(score, pos, pats, n_boot),
            "slip_images_max": distribution(score[pos]),
            "other_images_max": distribution(score[~pos])}


def sequence_agreement(rows: Sequence[DiscMeasure]) -> dict[str, Any]:
    """Repeatability: T1 vs T2 estimate of one patient's disc (same boxes, co-registered).

    Discs are paired by (patient, disc index, level) when the patient has exactly one T1 and
    one T2 image with the same number of discs. Returns the pair count, how many have both
    estimates, the median and 90th percentile of ``|T1 - T2|`` (slip % points) and how often
    the two fall on the same side of each cut-off."""
    by: dict[tuple[str, str], list[DiscMeasure]] = {}
    for r in rows:
        if r.sequence in ("T1", "T2"):
            by.setdefault((r.patient, r.sequence), []).append(r)
    diffs, both, pairs, same = [], 0, 0, {c: 0 for c in CUTOFFS}
    for (patient, seq), t1 in by.items():
        if seq != "T1" or (patient, "T2") not in by:
            continue
        t2 = by[(patient, "T2")]
        if len({r.image_id for r in t1}) != 1 or len({r.image_id for r in t2}) != 1 \
                or len(t1) != len(t2):
            continue
        for a, b in zip(sorted(t1, key=lambda r: r.disc), sorted(t2, key=lambda r: r.disc)):
            pairs += 1
            if a.percent is None or b.percent is None:
                continue
            both += 1
            diffs.append(abs(a.percent - b.percent))
            for c in CUTOFFS:
                same[c] += int((abs(a.percent) >= c) == (abs(b.percent) >= c))
    d = np.asarray(diffs)
    return {"disc_pairs": pairs, "both_estimated": both,
            "abs_diff_median": round(float(np.median(d)), 2) if d.size else None,
            "abs_diff_p90": round(float(np.percentile(d, 90)), 2) if d.size else None,
            "same_side_of_cut": {f"{c:g}": round(same[c] / both, 3) if both else None
                                 for c in CUTOFFS}}


# -- pictures ---------------------------------------------------------------------------------

def plot_histogram(rows: Sequence[DiscMeasure], path: Path) -> Path | None:
    """Histogram of the signed slip % by group (density) to ``path``; written only when the
    PNG is under ``MAX_FIGURE_BYTES``. Returns the path or ``None``."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=100)
    bins = np.arange(-80, 101, 5)
    for name, want, colour in (("non-slip discs", False, "tab:blue"),
                               ("spondylolisthesis discs", True, "tab:red")):
        v = np.clip([r.percent for r in rows if r.slip == want and r.percent is not None],
                    bins[0], bins[-1])
        if len(v) == 0:
            continue
        ax.hist(v, bins=bins, density=True, alpha=0.55, color=colour, label=f"{name} (n={len(v)})")
    for c in CUTOFFS:
        ax.axvline(c, color="k", lw=0.8, ls=":")
    ax.set_xlabel("estimated slip % (anterior +, retrolisthesis -; clipped to -80..100)")
    ax.set_ylabel("density")
    ax.set_title("Image-based Meyerding estimate on ground-truth discs", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    if buf.tell() >= MAX_FIGURE_BYTES:
        return None
    return atomic_write_bytes(path, buf.getvalue())


def render_case(image: np.ndarray, spine: SpineFindings, estimates: Sequence[SlipEstimate | None],
                path: Path, scale: int = 2) -> Path:
    """The image with its boxes (green normal, yellow herniation, red spondylolisthesis), every
    disc's slip % and the corners used (cyan upper posterior-inferior, magenta lower
    posterior-superior, orange lower anterior-superior), ``scale`` x enlarged, as PNG."""
    from PIL import Image, ImageDraw

    colour = {"normal": (0, 200, 0), HERNIATION: (230, 200, 0), SLIP: (255, 40, 40)}
    im = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    im = im.resize((im.width * scale, im.height * scale), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(im)
    for disc, est in zip(spine.discs, estimates):
        for b in disc.boxes:
            draw.rectangle([v * scale for v in b.xyxy()], outline=colour.get(b.label, (200,) * 3))
        x, y = disc.centre
        text = "refused" if est is None else f"{est.percent:+.0f}%"
        draw.text((x * scale + 60, y * scale - 6), f"{disc.level} {text}", fill=(255, 255, 255))
        if est is not None:
            for p, c in ((est.upper_pi, (0, 255, 255)), (est.lower_ps, (255, 0, 255)),
                         (est.lower_as, (255, 150, 0))):
                px, py = p * scale
                draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=c)
            draw.line([tuple(est.lower_ps * scale), tuple(est.lower_as * scale)],
                      fill=(255, 150, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


# -- driver -----------------------------------------------------------------------------------

def run(data: Path, limit: int | None = None, anterior_left: bool = True
        ) -> tuple[list[DiscMeasure], list[dict[str, str]]]:
    """Measure every disc of every image of ``data`` (study classes); a failing image is
    reported (``{"image", "error"}``) and skipped."""
    ds = LumbarDataset(data, classes="study")
    rows: list[DiscMeasure] = []
    failures: list[dict[str, str]] = [{"image": str(p.path), "error": p.problem}
                                      for p in ds.problems]
    n = len(ds) if limit is None else min(limit, len(ds))
    for i in range(n):
        rec = ds.records[i]
        try:
            sample = ds[i]
            _, r, _ = measure_image(sample.image, sample_boxes(sample, ds.class_names),
                                    sample.image_id, sample.patient, rec.sequence, anterior_left)
        except (InputError, ValueError) as exc:
            failures.append({"image": rec.image_id, "error": str(exc)})
            continue
        rows.extend(r)
    return rows, failures


def render_cases(data: Path, rows: Sequence[DiscMeasure], folder: Path, per_kind: int = 4,
                 anterior_left: bool = True) -> list[Path]:
    """Render the slip discs with the lowest estimates and the non-slip discs with the highest
    (``per_kind`` each, T2 images preferred) into ``folder``."""
    est = [r for r in rows if r.percent is not None and r.sequence != "T1"]
    low = sorted((r for r in est if r.slip), key=lambda r: abs(r.percent or 0))[:per_kind]
    high = sorted((r for r in est if not r.slip), key=lambda r: -abs(r.percent or 0))[:per_kind]
    refused = [r for r in rows if r.slip and r.percent is None and r.sequence != "T1"][:per_kind]
    ds = LumbarDataset(data, classes="study")
    where = {rec.image_id: i for i, rec in enumerate(ds.records)}
    out = []
    for kind, chosen in (("slip_low", low), ("nonslip_high", high), ("slip_refused", refused)):
        for r in chosen:
            s = ds[where[r.image_id]]
            spine, _, ests = measure_image(s.image, sample_boxes(s, ds.class_names), r.image_id,
                                           anterior_left=anterior_left)
            name = f"{kind}_{Path(r.image_id).stem.replace(' ', '_')}_{r.level}.png"
            out.append(render_case(s.image, spine, ests, folder / name))
    return out


ROW_COLUMNS = ("image_id", "patient", "sequence", "disc", "level", "slip", "herniation",
               "slip_box_alone", "spacing_px", "percent", "width_px", "endplate_tilt_deg",
               "corner_offset")


def result_json(summary: dict[str, Any], rows: Sequence[DiscMeasure]) -> str:
    """``summary`` as indented JSON plus ``"rows": {"columns": ROW_COLUMNS, "values": [...]}``
    with one compact line per disc. The rows restate the dataset's labels per disc, so they
    are written only on request (``--rows``), to a file kept outside the repository."""
    head = json.dumps(summary, indent=1, allow_nan=False)
    values = ",\n".join(json.dumps([asdict(r)[c] for c in ROW_COLUMNS], allow_nan=False,
                                   separators=(",", ":")) for r in rows)
    return (f'{head[:-2]},\n "rows": {{"columns": {json.dumps(list(ROW_COLUMNS))}, '
            f'"values": [\n{values}\n]}}\n}}\n')


def _f(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    d = result["discs"]
    t = Table(title="Meyerding estimate on ground-truth discs")
    for col in ("measure", "value", "95% CI"):
        t.add_column(col)
    for g in ("slip", "non_slip"):
        e, a = d["groups"][g]["estimated"], d["groups"][g]["abs_percent"]
        t.add_row(f"{g}: discs / estimated", f"{d['groups'][g]['discs']} / {e['k']}",
                  f"{_f(e['estimate'], 2)} [{_f(e['ci_low'], 2)}, {_f(e['ci_high'], 2)}]")
        t.add_row(f"{g}: |slip %| median (IQR)", f"{a['median']}", f"({a['q1']}, {a['q3']})")
    for k, v in list(d["auc"].items()) + [("image max |slip %|",
                                           result["images"]["max_abs_percent"])]:
        t.add_row(f"AUC {k}", _f(v["auc"]), f"[{_f(v['ci_low'])}, {_f(v['ci_high'])}]")
    for c in d["cutoffs"]:
        for m in ("sensitivity", "specificity"):
            p = c[m]
            t.add_row(f"{m} at {c['cut_percent']:g}%", f"{p['k']}/{p['n']}",
                      f"{_f(p['estimate'])} [{_f(p['ci_low'])}, {_f(p['ci_high'])}]")
    agree = result["t1_t2_agreement"]
    t.add_row("T1 vs T2 |difference|, median (p90)", f"{agree['abs_diff_median']}",
              f"({agree['abs_diff_p90']})")
    Console().print(t)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, nargs="?", default=DATA)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument("--boot", type=int, default=N_BOOT)
    parser.add_argument("--cases", type=Path, default=None,
                        help="folder (outside the repository) for rendered review cases")
    parser.add_argument("--rows", type=Path, default=None,
                        help="also write the summary with one row per disc here (outside the "
                             "repository: the rows restate the dataset's labels)")
    parser.add_argument("--anterior-right", action="store_true",
                        help="the patient faces image right")
    args = parser.parse_args(argv)
    t0 = time.time()
    rows, failures = run(args.data, args.limit, not args.anterior_right)
    result: dict[str, Any] = {
        "data": args.data.name, "classes": "study", "anterior_left": not args.anterior_right,
        "boxes": "ground truth", "bootstrap": {"replicates": args.boot, "unit": "patient"},
        "discs": disc_summary(rows, args.boot), "images": image_summary(rows, args.boot),
        "t1_t2_agreement": sequence_agreement(rows),
        "by_sequence": {seq: disc_summary([r for r in rows if r.sequence == seq], args.boot)["auc"]
                        for seq in ("T1", "T2") if any(r.sequence == seq for r in rows)},
        "by_level": {lv: disc_summary([r for r in rows if r.level == lv], args.boot)
                     for lv in LEVELS if any(r.level == lv and r.slip for r in rows)},
        "gate": {"tilt_deg": GATE_TILT_DEG, "corner_offset_spacings": GATE_OFFSET,
                 "note": "exploratory: chosen after looking at failures on this data"},
        "failures": failures, "seconds": round(time.time() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig = plot_histogram(rows, args.out.with_suffix(".png"))
    result["figure"] = None if fig is None else fig.name
    atomic_write_text(args.out, json.dumps(result, indent=1, allow_nan=False) + "\n")
    if args.rows is not None:
        atomic_write_text(args.rows, result_json(result, rows))
    if args.cases is not None:
        render_cases(args.data, rows, args.cases, anterior_left=not args.anterior_right)
    _print_table(result)
    return result


if __name__ == "__main__":
    main()
