"""Cross-validating the spondylolisthesis verifier on top of a finished cross-validation.

For every fold ``k`` of a ``lumbardx crossval`` folder ``CV`` (its ``folds.csv`` and
``<model>/fold<k>/result.json``): the fold's scored detector weights are loaded, a
:class:`~lumbardx.models.slip_verifier.SlipVerifier` is trained on the fold's **training**
images only (:func:`~lumbardx.engine.slip_verifier.train_slip_verifier`), the detector with its
verifier is written as ``OUT/<model>/fold<k>/last.pt`` and scored on the held-out fold exactly as
:func:`lumbardx.engine.crossval.run_fold` scores a detector (``eval/``, ``result.json``). Nothing
is chosen on a held-out fold. ``OUT`` is then a cross-validation folder like ``CV`` (the same
``folds.csv``; ``crossval.json`` names ``CV`` and the verifier's settings), so Table 1, its
paired comparisons (``compare_with``, e.g. ``CV/table1.json`` and a peer) and
``scripts/release_weights.py --crossval OUT`` read it as they read ``CV``.

The rescoring power (:attr:`~lumbardx.models.slip_verifier.VerifierConfig.power`) is not used in
training: ``verifiers_from`` rescores the folds of an earlier run with another power without
training again.
"""

from __future__ import annotations

import json
import shutil
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from lumbardx import __version__
from lumbardx.data.dataset import LumbarDataset
from lumbardx.data.errors import InputError
from lumbardx.data.folds import read_folds_csv, split
from lumbardx.engine.checkpoint import load_checkpoint, rebuild_detector
from lumbardx.engine.crossval import (
    ERROR_FILE,
    FOLDS_FILE,
    RESULT_FILE,
    SETTINGS_FILE,
    CrossvalResult,
    LoadedDetector,
    fold_scores,
    input_view,
    load_dataset,
    load_detector,
    read_result,
)
from lumbardx.engine.evaluate import evaluate
from lumbardx.engine.slip_verifier import (
    VerifierTraining,
    save_with_rescorer,
    train_slip_verifier,
)
from lumbardx.engine.table1 import ModelFolds, read_comparison, write_table1
from lumbardx.io import atomic_write_text
from lumbardx.models.slip_verifier import SlipVerifier, VerifierConfig

#: Suffix of the Table 1 row of a model with the verifier.
ROW_SUFFIX = " + slip verifier"


def _settings(cv: Path) -> dict[str, Any]:
    try:
        return json.loads((cv / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(cv / SETTINGS_FILE, f"not a finished cross-validation: {err}") from None


def _trained(path: Path, cfg: VerifierConfig) -> tuple[LoadedDetector, dict[str, Any]]:
    """A fold's detector + verifier from an earlier run, its power set to ``cfg.power``.

    Raises:
        InputError: ``path`` holds no slip verifier, or one of another shape than ``cfg``.
    """
    det = load_detector(path, "cpu")
    ver = det.model.rescorer
    if not isinstance(ver, SlipVerifier):
        raise InputError(path, "holds no slip verifier to reuse")
    if replace(ver.settings, power=cfg.power) != cfg:
        raise InputError(path, f"its verifier {ver.settings} differs from {cfg} in more than "
                               "the power")
    ver.settings = cfg
    return det, dict(load_checkpoint(path).get("rescorer_training") or {})


def _fold(source_dir: Path, run_dir: Path, ds: LumbarDataset, split_idx: tuple[list[int],
          list[int]], index: int, cfg: VerifierConfig, train: VerifierTraining,
          verifiers_from: str | Path | None, say: Callable[[str], None]) -> dict[str, Any]:
    """One fold: the verifier trained (or reused) for the detector of ``source_dir``, the pair
    written to ``run_dir / "last.pt"`` and scored on the held-out images; returns the fold's
    result (written to ``run_dir / "result.json"``)."""
    train_idx, val_idx = split_idx
    source = read_result(source_dir / RESULT_FILE)
    weights = source_dir / Path(source.get("weights", "last.pt")).name
    model = source_dir.parent.name
    source_ckpt = load_checkpoint(weights)  # read once: detector, flags, saved metadata
    pairs = bool((source_ckpt.get("recipe") or {}).get("sequence_pairs"))
    cfg = replace(cfg, channels=2 if pairs else 1)  # T1/T2 crops for a detector of pairs
    if verifiers_from is None:
        det = rebuild_detector(source_ckpt, weights)
        say(f"{model} fold {source['fold']}: training the verifier on {len(train_idx)} images")
        verifier, summary = train_slip_verifier(
            det.model, input_view(ds.subset(train_idx), pairs), index, det.image_size, cfg,
            train, det.pad_value, progress=say)
        det.model.rescorer = verifier
    else:
        det, summary = _trained(Path(verifiers_from) / model / run_dir.name / "last.pt", cfg)
        say(f"{model} fold {source['fold']}: the verifier of {verifiers_from}, power "
            f"{cfg.power}")
    ckpt = save_with_rescorer(source_ckpt, det.model, run_dir / "last.pt", summary)
    ev = evaluate(det.model, input_view(ds.subset(val_idx), pairs), "cpu", det.image_size, 1,
                  ds.class_names, out_dir=run_dir / "eval", pad_value=det.pad_value)
    result = {
        **{key: source.get(key) for key in ("model", "fold", "train_images", "val_images",
                                            "epochs", "device", "select", "eval_batch")},
        **fold_scores(ev),
        "train_seconds": float(source.get("train_seconds") or 0.0) + summary["seconds"],
        "verifier_seconds": summary["seconds"],
        "detector": {"result": str((source_dir / RESULT_FILE).resolve()),
                     "map50": source.get("map50"), "ap50": source.get("ap50")},
        "weights": str(ckpt),
    }
    atomic_write_text(run_dir / RESULT_FILE, json.dumps(result, indent=2))
    return result


def crossval_slip_verifier(
    cv_dir: str | Path,
    out_dir: str | Path,
    data: str | Path | None = None,
    models: Sequence[str] | None = None,
    class_name: str = "spondylolisthesis",
    config: VerifierConfig | None = None,
    train: VerifierTraining | None = None,
    compare_with: Sequence[str | Path] = (),
    resume: bool = True,
    log: Callable[[str], None] | None = None,
    verifiers_from: str | Path | None = None,
) -> CrossvalResult:
    """The verifier cross-validated on ``cv_dir``'s folds (module docstring).

    Args:
        cv_dir: the finished cross-validation of the detector(s).
        out_dir: where the detector + verifier folds and Table 1 go.
        data: the dataset (default: the one ``cv_dir/crossval.json`` names).
        models: models of ``cv_dir`` to extend (default: all it holds).
        class_name: the class the verifier rescores.
        config: the verifier's shape (its ``class_index`` is set from ``class_name``).
        compare_with: further Table 1 rows (:func:`~lumbardx.engine.table1.read_comparison`).
        resume: reuse folds of ``out_dir`` that finished before (with the same settings; a
            folder of other settings is refused, and without ``resume`` any used folder).
        log: receives progress messages.
        verifiers_from: an earlier output of this function on the same folds: its trained
            verifiers are reused (nothing is trained) with ``config``'s ``power``, which is
            the only setting that may differ.

    A fold that fails (e.g. its training images hold no box of the class) is reported in
    ``failures`` and its folder's ``error.txt``; the other folds go on.

    Raises:
        InputError: ``cv_dir`` is not a finished cross-validation, the class is unknown, or
            ``out_dir`` holds a run of other settings.
    """
    say = log or (lambda message: None)
    cv, out = Path(cv_dir), Path(out_dir)
    settings = _settings(cv)
    ds = load_dataset(data or settings.get("data", ""), settings.get("classes", "study"))
    names = list(ds.class_names)
    if class_name not in names:
        raise InputError(None, f"unknown class {class_name!r} (classes: {', '.join(names)})")
    index = names.index(class_name)
    cfg = VerifierConfig(**{**asdict(config or VerifierConfig(index)), "class_index": index})
    train = train or VerifierTraining()
    assign = read_folds_csv(cv / FOLDS_FILE)
    models = list(models or settings.get("models") or [])
    if not models:
        raise InputError(cv / SETTINGS_FILE, "names no model")
    peers = [row for p in compare_with for row in read_comparison(p, names)]
    new_settings = {**settings, "models": models, "source_crossval": str(cv.resolve()),
                    "verifiers_from": str(Path(verifiers_from).resolve()) if verifiers_from
                    else None,
                    "second_stage": {"verifier": asdict(cfg), "training": asdict(train)},
                    "lumbardx_version": __version__}
    if (out / SETTINGS_FILE).is_file():
        old = _settings(out)
        keys = ("source_crossval", "verifiers_from", "second_stage")
        if not resume:
            raise InputError(out, "already holds a verifier cross-validation; resume it or "
                                  "choose another output folder")
        if any(old.get(key) != new_settings[key] for key in keys):
            raise InputError(out / SETTINGS_FILE, "holds a verifier cross-validation with "
                                                  "other settings; choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cv / FOLDS_FILE, out / FOLDS_FILE)
    atomic_write_text(out / SETTINGS_FILE, json.dumps(new_settings, indent=2))
    outcome = CrossvalResult(out, out / FOLDS_FILE, names, [], {})
    for m in models:
        folds: list[dict[str, Any]] = []
        failed: dict[int, str] = {}
        for k in range(assign.k):
            run_dir = out / m / f"fold{k}"
            if resume and (run_dir / RESULT_FILE).is_file():
                folds.append(read_result(run_dir / RESULT_FILE))
                outcome.reused.append((m, k))
                continue
            try:
                result = _fold(cv / m / f"fold{k}", run_dir, ds, split(ds, k, assign), index,
                               cfg, train, verifiers_from, say)
            except Exception as err:  # noqa: BLE001 - reported, the other folds go on
                failed[k] = outcome.failures[(m, k)] = f"{type(err).__name__}: {err}"
                run_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_text(run_dir / ERROR_FILE, traceback.format_exc())
                say(f"{m} fold {k} failed: {failed[k]}")
                continue
            folds.append(result)
            outcome.ran.append((m, k))
            (run_dir / ERROR_FILE).unlink(missing_ok=True)  # of an earlier attempt
            source = result["detector"]
            say(f"{m} fold {k}: mAP@0.5 {100 * result['map50']:.1f} (detector alone "
                f"{100 * float(source['map50']):.1f}); {class_name} AP@0.5 "
                f"{100 * result['ap50'][class_name]:.1f} (alone "
                f"{100 * float(source['ap50'][class_name]):.1f})")
        outcome.rows.append(ModelFolds(m + ROW_SUFFIX, folds, failed=failed))
    outcome.rows += peers
    notes = [(f"Detector folds from {cv}; the {class_name} verifier of each fold trained on "
              "that fold's training images only (lumbardx.engine.slip_verifier)."),
             f"Verifier: {asdict(cfg)}; training: {asdict(train)}."]
    outcome.files = write_table1(outcome.rows, names, out, notes,
                                 extra={"settings": new_settings})
    return outcome
