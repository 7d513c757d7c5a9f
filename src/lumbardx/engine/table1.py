"""The study's Table 1: detection scores per model, aggregated over cross-validation folds.

Input is one dict per (model, fold) in the format ``run_fold`` writes (and
``bench/ultralytics_peer.py`` writes for a peer): ``{"fold": int, "ap50": {class: AP},
"map50": float, "map50_95": float, "ms_per_image": float}`` with AP as fractions in [0, 1]
(COCO 101-point interpolation at IoU 0.5, :mod:`lumbardx.engine.metrics`); optional
``"precision"`` ``[101][K]`` (interpolated precision at IoU 0.5, -1 where the class has no ground
truth in that fold) and ``"recall"`` ``[101]`` feed the mean PR figure.

Spread over folds: mean, sample standard deviation (``ddof = 1``) and a 95% confidence interval
of the mean from Student's t distribution with ``n - 1`` degrees of freedom,
``mean +- t(0.975, n - 1) * SD / sqrt(n)``, where ``n`` is the number of folds with a finite
value (a class without ground truth in a fold has no AP there). Folds share training patients,
so the interval describes fold-to-fold variation of this split, not a population bound.

Models compared on the same folds are also compared fold by fold (:func:`paired_comparison`):
the per-fold difference of every score, its mean with the same t-interval (a paired t
interval, ``n`` = folds both models finished) and the number of folds each model wins. The
paired interval removes the fold-to-fold variation both models share, so it is the one to read
when asking whether one model beats another on this split.

Written files: ``table1.md`` (AP and mAP in percent, as the paper's Table 1), ``table1.csv`` and
``table1.json`` (fractions in [0, 1]; times in milliseconds), ``pr_<model>.png``.
"""

from __future__ import annotations

import csv
import json
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from lumbardx.data.errors import InputError  # noqa: E402
from lumbardx.engine.plots import pr_axes, save_figure  # noqa: E402

CI_METHOD = ("95% CI of the mean over folds: mean +- t(0.975, n-1) * SD / sqrt(n) "
             "(Student t, n = folds with a value); SD is the sample SD (ddof = 1)")
AP_METHOD = "AP: COCO 101-point interpolated precision at IoU 0.5 (pycocotools)"


@dataclass(frozen=True)
class FoldStat:
    """Mean and spread of one metric over folds (``nan`` where undefined: ``n < 2`` for SD/CI).

    Attributes:
        mean: mean over the folds with a finite value.
        sd: sample standard deviation (``ddof = 1``).
        ci_low, ci_high: 95% t-interval of the mean.
        n: number of folds with a finite value.
    """

    mean: float
    sd: float
    ci_low: float
    ci_high: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``nan`` -> ``None``)."""
        return {"mean": _num(self.mean), "sd": _num(self.sd),
                "ci95": [_num(self.ci_low), _num(self.ci_high)], "n": self.n}


def fold_stat(values: Sequence[float | None], confidence: float = 0.95) -> FoldStat:
    """Mean, SD and t-interval of per-fold values; ``None`` / non-finite values are left out."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    n = len(v)
    if n == 0:
        return FoldStat(math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(v.mean())
    if n == 1:
        return FoldStat(mean, math.nan, math.nan, math.nan, 1)
    sd = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return FoldStat(mean, sd, mean - half, mean + half, n)


def fold_differences(diffs: Sequence[float]) -> dict[str, float | int]:
    """Paired per-fold differences as a plain dict: :func:`fold_stat`'s fields, the folds won
    (``d > 0``) and the folds lost (``d < 0``)."""
    return {**asdict(fold_stat(diffs)), "wins": int(sum(d > 0 for d in diffs)),
            "losses": int(sum(d < 0 for d in diffs))}


@dataclass
class ModelFolds:
    """The per-fold results of one model (a Table 1 row).

    Attributes:
        name: row label (registry name, or the peer's ``"model"`` string).
        folds: one dict per fold (module docstring), sorted by fold.
        source: ``"lumbardx"``, ``"peer (<file>)"`` (:func:`merge_peer`) or
            ``"table (<file>)"`` (a model of another Table 1, :func:`read_comparison`).
        failed: folds that did not finish (fold -> error message), listed under the table.
    """

    name: str
    folds: list[dict[str, Any]]
    source: str = "lumbardx"
    failed: dict[int, str] = field(default_factory=dict)


def metric_keys(class_names: Sequence[str]) -> list[str]:
    """Column keys of Table 1: ``ap50/<class>`` per class, ``map50``, ``map50_95``,
    ``ms_per_image``."""
    return [*(f"ap50/{c}" for c in class_names), "map50", "map50_95", "ms_per_image"]


def _value(fold: Mapping[str, Any], key: str) -> float | None:
    if key.startswith("ap50/"):
        v = (fold.get("ap50") or {}).get(key[5:])
    else:
        v = fold.get(key)
    return None if v is None else float(v)


def summarize(model: ModelFolds, class_names: Sequence[str]) -> dict[str, FoldStat]:
    """Metric key (:func:`metric_keys`) -> :class:`FoldStat` over the model's folds."""
    return {k: fold_stat([_value(f, k) for f in model.folds]) for k in metric_keys(class_names)}


@dataclass(frozen=True)
class PairedStat:
    """One score of model ``a`` minus model ``b`` over the folds both have a value for.

    Attributes:
        diff: mean, SD and t-interval of the per-fold differences ``a - b`` (fractions, as
            the scores).
        wins_a, wins_b: folds where ``a`` (``b``) scores higher; ties count for neither.
        folds: the fold numbers compared.
    """

    diff: FoldStat
    wins_a: int
    wins_b: int
    folds: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``nan`` -> ``None``)."""
        return {**self.diff.to_dict(), "wins_a": self.wins_a, "wins_b": self.wins_b,
                "folds": list(self.folds)}


PAIRED_KEYS_EXCLUDED = ("ms_per_image",)  # times depend on the machine each model ran on


def paired_comparison(a: ModelFolds, b: ModelFolds,
                      class_names: Sequence[str]) -> dict[str, PairedStat]:
    """Metric key -> :class:`PairedStat` of ``a - b`` on the folds both models scored (times
    left out: they depend on the machine each ran on)."""
    by_fold_b = {int(f["fold"]): f for f in b.folds}
    out = {}
    for key in metric_keys(class_names):
        if key in PAIRED_KEYS_EXCLUDED:
            continue
        diffs, folds = [], []
        for fa in a.folds:
            fb = by_fold_b.get(int(fa["fold"]))
            va, vb = _value(fa, key), None if fb is None else _value(fb, key)
            if va is None or vb is None or not (math.isfinite(va) and math.isfinite(vb)):
                continue
            diffs.append(va - vb)
            folds.append(int(fa["fold"]))
        out[key] = PairedStat(fold_stat(diffs), sum(d > 0 for d in diffs),
                              sum(d < 0 for d in diffs), tuple(folds))
    return out


def _paired_cell(s: PairedStat) -> str:
    if s.diff.n == 0:
        return "-"
    text = f"{100 * s.diff.mean:+.2f}"
    if s.diff.n >= 2:
        text += f" ({100 * s.diff.ci_low:+.2f} to {100 * s.diff.ci_high:+.2f})"
    return text + f" [{s.wins_a}:{s.wins_b}]"


def _pairs(models: Sequence[ModelFolds]) -> list[tuple[ModelFolds, ModelFolds]]:
    return [(models[i], models[j]) for i in range(len(models))
            for j in range(i + 1, len(models))]


def _num(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower() or "model"


def _label(key: str) -> str:
    if key.startswith("ap50/"):
        return f"AP@0.5 {key[5:]} (%)"
    return {"map50": "mAP@0.5 (%)", "map50_95": "mAP@0.5:0.95 (%)",
            "ms_per_image": "ms / image"}[key]


def _cell(s: FoldStat, key: str) -> str:
    if s.n == 0:
        return "-"
    scale, digits = (1.0, 1) if key == "ms_per_image" else (100.0, 2)
    text = f"{s.mean * scale:.{digits}f}"
    if s.n >= 2:
        text += (f" ± {s.sd * scale:.{digits}f} "
                 f"({s.ci_low * scale:.{digits}f}–{s.ci_high * scale:.{digits}f})")
    return text


def table1_markdown(
    models: Sequence[ModelFolds], class_names: Sequence[str], notes: Sequence[str] = ()
) -> str:
    """Table 1 as Markdown: one row per model (mean ± SD (95% CI) over folds), then a per-fold
    table and the method notes."""
    keys = metric_keys(class_names)
    lines = ["# Table 1: detection performance, cross-validation", "",
             "| Model | Folds | " + " | ".join(_label(k) for k in keys) + " |",
             "|---|---:|" + "---:|" * len(keys)]
    for m in models:
        st = summarize(m, class_names)
        lines.append(f"| {m.name} | {len(m.folds)} | "
                     + " | ".join(_cell(st[k], k) for k in keys) + " |")
    lines += ["", "## Per fold", "", "| Model | Fold | " + " | ".join(_label(k) for k in keys)
              + " |", "|---|---:|" + "---:|" * len(keys)]
    for m in models:
        for f in m.folds:
            cells = []
            for k in keys:
                v = _value(f, k)
                if v is None or not math.isfinite(v):
                    cells.append("-")
                else:
                    cells.append(f"{v:.1f}" if k == "ms_per_image" else f"{100 * v:.2f}")
            lines.append(f"| {m.name} | {f['fold']} | " + " | ".join(cells) + " |")
    pairs = _pairs(models)
    if pairs:
        pkeys = [k for k in keys if k not in PAIRED_KEYS_EXCLUDED]
        lines += ["", "## Paired differences on shared folds", "",
                  "| Models (A - B) | Folds | " + " | ".join(_label(k) for k in pkeys) + " |",
                  "|---|---:|" + "---:|" * len(pkeys)]
        for a, b in pairs:
            pc = paired_comparison(a, b, class_names)
            n = len(pc["map50"].folds)
            lines.append(f"| {a.name} - {b.name} | {n} | "
                         + " | ".join(_paired_cell(pc[k]) for k in pkeys) + " |")
        lines += ["", ("Paired cells: mean difference A - B in percentage points (95% paired "
                       "t-interval) [folds A wins : folds B wins], over the folds both scored. "
                       "An interval that includes 0 does not separate the two models.")]
    lines += ["", "Cells: mean ± SD (95% CI) over folds.", f"{CI_METHOD}.",
              f"{AP_METHOD}; mAP@0.5:0.95 averages IoU 0.50:0.05:0.95 (COCO).",
              "A class without ground truth in a fold has no AP there ('-'); its mean uses the "
              "other folds."]
    lines += [str(n) for n in notes]
    for m in models:
        for fold, err in sorted(m.failed.items()):
            lines.append(f"{m.name}, fold {fold} did not finish: {err}")
    return "\n".join(lines) + "\n"


def table1_csv_rows(
    models: Sequence[ModelFolds], class_names: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per model: ``model, source, folds`` and for every metric key ``<key>_mean``,
    ``<key>_sd``, ``<key>_ci_low``, ``<key>_ci_high``, ``<key>_n`` (fractions; ms for time)."""
    rows = []
    for m in models:
        row: dict[str, Any] = {"model": m.name, "source": m.source, "folds": len(m.folds)}
        for key, s in summarize(m, class_names).items():
            row.update({f"{key}_mean": _num(s.mean), f"{key}_sd": _num(s.sd),
                        f"{key}_ci_low": _num(s.ci_low), f"{key}_ci_high": _num(s.ci_high),
                        f"{key}_n": s.n})
        rows.append(row)
    return rows


def table1_json(
    models: Sequence[ModelFolds], class_names: Sequence[str], extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Everything of Table 1 as one JSON-ready object (per-fold values and statistics)."""
    keys = ("fold", "ap50", "ap50_95", "map50", "map50_95", "ms_per_image", "train_images",
            "val_images", "epochs", "eval_batch", "device")
    out_models = []
    for m in models:
        folds = [{k: f[k] for k in keys if k in f} for f in m.folds]
        for f in folds:
            for k in ("ap50", "ap50_95"):
                if isinstance(f.get(k), dict):
                    f[k] = {c: _num(v) for c, v in f[k].items()}
            for k in ("map50", "map50_95", "ms_per_image"):
                if k in f:
                    f[k] = _num(f[k])
        summary = {k: s.to_dict() for k, s in summarize(m, class_names).items()}
        out_models.append({"model": m.name, "source": m.source, "folds": folds,
                           "failed": {str(k): v for k, v in m.failed.items()},
                           "summary": summary})
    paired = [{"a": a.name, "b": b.name,
               "differences": {k: s.to_dict()
                               for k, s in paired_comparison(a, b, class_names).items()}}
              for a, b in _pairs(models)]
    return {"class_names": list(class_names), "interpolation": "COCO 101-point",
            "units": {"ap": "fraction in [0, 1]", "ms_per_image": "milliseconds"},
            "ci_method": CI_METHOD, **dict(extra or {}), "models": out_models,
            "paired": paired}


def mean_pr(folds: Sequence[Mapping[str, Any]], num_classes: int) -> tuple[
        np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Mean and SD of the PR curves over folds.

    Returns:
        ``(recall [101], mean precision [101, K], SD [101, K], folds with the class [K])``;
        a class absent from every fold has ``nan`` curves. ``None`` when no fold has curves.
    """
    curves = [np.asarray(f["precision"], np.float64) for f in folds if f.get("precision")]
    recall = next((np.asarray(f["recall"], np.float64) for f in folds if f.get("recall")), None)
    if not curves or recall is None:
        return None
    p = np.stack(curves)  # [F, 101, K]
    if p.shape[1:] != (len(recall), num_classes):
        raise ValueError(f"precision curves of shape {p.shape[1:]}, expected "
                         f"({len(recall)}, {num_classes})")
    valid = (p > -1).all(axis=1)  # [F, K] fold has ground truth of the class
    masked = np.where(valid[:, None, :], p, np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class absent from every fold
        mean = np.nanmean(masked, axis=0)
        sd = np.nanstd(masked, axis=0, ddof=1) if len(curves) > 1 else np.zeros_like(mean)
    return recall, mean, np.nan_to_num(sd), valid.sum(0)


def plot_mean_pr(model: ModelFolds, class_names: Sequence[str], path: str | Path) -> Path | None:
    """Mean PR curve over folds per class (band: ± 1 SD), legend with mean AP@0.5; ``None``
    when the model's folds carry no curves (e.g. a peer's results)."""
    res = mean_pr(model.folds, len(class_names))
    if res is None:
        return None
    recall, mean, sd, n = res
    ap = summarize(model, class_names)
    fig, ax = plt.subplots(figsize=(6, 5), dpi=120)
    for k, name in enumerate(class_names):
        if n[k] == 0:
            continue
        line, = ax.plot(recall, mean[:, k],
                        label=f"{name} AP@0.5={ap[f'ap50/{name}'].mean:.3f} ({n[k]} folds)")
        ax.fill_between(recall, np.clip(mean[:, k] - sd[:, k], 0, 1),
                        np.clip(mean[:, k] + sd[:, k], 0, 1), color=line.get_color(), alpha=0.15)
    pr_axes(ax, f"{model.name}: mean PR over folds (IoU 0.5, ± 1 SD)")
    if n.any():
        ax.legend(loc="lower left", fontsize=8)
    return save_figure(fig, path)


def write_table1(
    models: Sequence[ModelFolds],
    class_names: Sequence[str],
    out_dir: str | Path,
    notes: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``table1.md``, ``table1.csv``, ``table1.json`` and ``pr_<model>.png`` into
    ``out_dir``; returns the paths by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"md": out / "table1.md", "csv": out / "table1.csv", "json": out / "table1.json"}
    files["md"].write_text(table1_markdown(models, class_names, notes), encoding="utf-8")
    rows = table1_csv_rows(models, class_names)
    header = ["model", "source", "folds"] + [f"{k}_{s}" for k in metric_keys(class_names)
                                             for s in ("mean", "sd", "ci_low", "ci_high", "n")]
    with files["csv"].open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    payload = table1_json(models, class_names, {"notes": list(notes), **dict(extra or {})})
    files["json"].write_text(json.dumps(payload, indent=2), encoding="utf-8")
    for m in models:
        p = plot_mean_pr(m, class_names, out / f"pr_{_slug(m.name)}.png")
        if p is not None:
            files[f"pr_{m.name}"] = p
    return files


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(path, f"cannot read the {what}: {err}") from None


def read_comparison(path: str | Path, class_names: Sequence[str]) -> list[ModelFolds]:
    """Rows to compare with: a peer's results (:func:`merge_peer`) or every model of another
    cross-validation's ``table1.json`` (e.g. an earlier recipe on the same folds), each named
    ``"<model> (<run>)"``: the folder of a file named ``table1.json``, else the file's stem.

    Raises:
        InputError: naming the file when it is unreadable, in another format or of other
            classes.
    """
    path = Path(path)
    obj = _read_json(path, "results")
    if not (isinstance(obj, dict) and "models" in obj):
        return [_peer_results(path, obj, class_names)]
    if obj.get("class_names") != list(class_names):
        raise InputError(path, f"a Table 1 of classes {obj.get('class_names')}, not "
                               f"{list(class_names)} (another class mapping?)")
    if not isinstance(obj["models"], list) or not obj["models"]:
        raise InputError(path, "a Table 1 needs a non-empty 'models' list")
    # "table1.json" says nothing: name the rows after its folder (the run), else the file
    label = path.parent.name if path.name == "table1.json" and path.parent.name else path.stem
    rows = []
    for i, m in enumerate(obj["models"]):
        if not (isinstance(m, dict) and isinstance(m.get("folds"), list) and m.get("model")):
            raise InputError(path, f"models[{i}] needs 'model' and a 'folds' list")
        rows.append(_peer_row(path, f"{m['model']} ({label})",
                              m["folds"], class_names, f"table ({path})"))
    return rows


def merge_peer(path: str | Path, class_names: Sequence[str]) -> ModelFolds:
    """A peer's per-fold results (``bench/ultralytics_peer.py`` format: ``{"model": ...,
    "folds": [{"fold", "ap50": {class: AP}, "map50", "map50_95", "ms_per_image"}]}``) as a
    Table 1 row. Its classes must be ours (the same class mapping).

    Raises:
        InputError: naming the file when it is unreadable or in another format.
    """
    path = Path(path)
    return _peer_results(path, _read_json(path, "peer results"), class_names)


def _peer_results(path: Path, obj: Any, class_names: Sequence[str]) -> ModelFolds:
    """:func:`merge_peer` of the already parsed JSON ``obj`` of ``path``."""
    if not isinstance(obj, dict) or not isinstance(obj.get("folds"), list) or not obj["folds"]:
        raise InputError(path, "peer results need a non-empty 'folds' list")
    return _peer_row(path, str(obj.get("model") or path.stem), obj["folds"], class_names,
                     f"peer ({path})")


def _peer_row(path: Path, name: str, fold_list: list[Any], class_names: Sequence[str],
              source: str) -> ModelFolds:
    """Check per-fold results read from ``path`` and make them a Table 1 row."""
    folds = []
    for i, f in enumerate(fold_list):
        missing = [k for k in ("fold", "ap50", "map50", "map50_95", "ms_per_image")
                   if k not in f] if isinstance(f, dict) else ["all keys"]
        if missing:
            raise InputError(path, f"folds[{i}] lacks {', '.join(missing)}")
        if set(f["ap50"]) != set(class_names):
            raise InputError(path, f"folds[{i}] has classes {sorted(f['ap50'])}, not "
                                   f"{sorted(class_names)} (another class mapping?)")
        folds.append({k: f[k] for k in ("fold", "ap50", "map50", "map50_95", "ms_per_image",
                                        "train_images", "val_images") if k in f})
    return ModelFolds(name, sorted(folds, key=lambda f: int(f["fold"])), source)
