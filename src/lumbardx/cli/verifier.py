"""``lumbardx verifier train | crossval``: the spondylolisthesis second stage
(:mod:`lumbardx.models.slip_verifier`).

``train`` adds a verifier to a trained detector checkpoint (trained on the detector's training
images: all of DATA, or all but one fold); ``crossval`` does it for every fold of a finished
``lumbardx crossval`` folder and scores each fold's detector + verifier on its held-out
patients (Table 1, paired with the detector alone via ``--compare-with``).

Exit codes: 0 done; 1 done with failed folds (``crossval``); 2 nothing done (unusable input).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console

from lumbardx.cli.train import _input_errors, print_table1

app = typer.Typer(no_args_is_help=True)

# the verifier's settings, shared by both commands
_CLASS = typer.Option("spondylolisthesis", "--class", help="The class the verifier rescores.")
_EPOCHS = typer.Option(12, "--epochs", min=1, help="Epochs per member.")
_MEMBERS = typer.Option(3, "--members", min=1, help="CNNs averaged.")
_CROP_SIZE = typer.Option(48, "--crop-size", min=16, help="Crop side (px).")
_CONTEXT = typer.Option(1.4, "--context", min=1.0, help="Crop side / box side.")
_POWER = typer.Option(1.0, "--power", min=0.0,
                      help="Weight of the verifier: new score = (score * p ** POWER) ** "
                           "(1 / (1 + POWER)), p its probability.")
_SEED = typer.Option(0, "--seed", help="Seed of member 0.")


def _say(console: Console) -> Callable[[str], None]:
    """Progress lines on ``console`` as plain text."""
    return lambda message: console.print(message, markup=False, highlight=False)


@app.command("train")
def train(
    checkpoint: Path = typer.Argument(..., help="Detector checkpoint (lumbardx train)."),
    data: Path = typer.Argument(..., help="The annotated dataset the detector was trained on."),
    out: Path = typer.Option(..., "--out", help="Detector + verifier checkpoint to write."),
    fold: int | None = typer.Option(None, "--fold", min=0,
                                    help="Leave this fold out (the detector's held-out fold)."),
    folds_csv: Path | None = typer.Option(None, "--folds-csv", help="Folds file of --fold."),
    class_name: str = _CLASS,
    epochs: int = _EPOCHS,
    members: int = _MEMBERS,
    crop_size: int = _CROP_SIZE,
    context: float = _CONTEXT,
    power: float = _POWER,
    seed: int = _SEED,
) -> None:
    """Train a spondylolisthesis verifier for a detector and write both as one checkpoint."""
    from lumbardx.data.errors import InputError
    from lumbardx.data.folds import split
    from lumbardx.engine.checkpoint import load_checkpoint
    from lumbardx.engine.crossval import input_view, load_dataset, load_detector
    from lumbardx.engine.slip_verifier import (
        VerifierTraining,
        save_with_rescorer,
        train_slip_verifier,
    )
    from lumbardx.models.slip_verifier import VerifierConfig

    console = Console()
    with _input_errors(console):
        if (fold is None) != (folds_csv is None):
            raise InputError(None, "--fold and --folds-csv go together")
        det = load_detector(checkpoint, "cpu")
        pairs = det.sequence_pairs  # then T1/T2 crops from T1/T2 pairs
        ds = load_dataset(data)
        names = list(ds.class_names)
        if class_name not in names:
            raise InputError(None, f"unknown class {class_name!r} (classes: {', '.join(names)})")
        if names != det.class_names:
            raise InputError(checkpoint, f"classes {det.class_names} differ from the "
                                         f"dataset's {names}")
        idx = list(range(len(ds))) if fold is None else split(ds, fold, folds_csv)[0]
        index = names.index(class_name)
        verifier, summary = train_slip_verifier(
            det.model, input_view(ds.subset(idx), pairs), index, det.image_size,
            VerifierConfig(index, context, crop_size, members=members, power=power,
                           channels=2 if pairs else 1),
            VerifierTraining(epochs=epochs, seed=seed),
            det.pad_value, progress=_say(console))
        det.model.rescorer = verifier
        path = save_with_rescorer(load_checkpoint(checkpoint), det.model, out, summary)
    console.print(f"{summary['positives']} positive / {summary['negatives']} negative crops, "
                  f"{summary['seconds']:.0f} s; written {path}")


@app.command("crossval")
def crossval(
    cv_dir: Path = typer.Argument(..., help="A finished 'lumbardx crossval' folder."),
    out: Path = typer.Option(..., "--out", help="Output folder (a cross-validation folder)."),
    data: Path | None = typer.Option(None, "--data", help="Dataset (default: the one CV_DIR "
                                                          "names)."),
    models: str | None = typer.Option(None, "--models", help="Comma-separated (default: all)."),
    class_name: str = _CLASS,
    epochs: int = _EPOCHS,
    members: int = _MEMBERS,
    crop_size: int = _CROP_SIZE,
    context: float = _CONTEXT,
    power: float = _POWER,
    seed: int = _SEED,
    verifiers_from: Path | None = typer.Option(
        None, "--from", help="Reuse the verifiers of an earlier 'verifier crossval' output "
                             "(same shape; only --power may differ): nothing is trained."),
    compare_with: list[Path] = typer.Option([], "--compare-with",
                                            help="Rows to add (repeat): CV_DIR/table1.json, a "
                                                 "peer's results.json (same folds)."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip finished folds."),
) -> None:
    """Cross-validate the verifier on a finished cross-validation's folds (Table 1)."""
    from lumbardx.engine.crossval_verifier import crossval_slip_verifier
    from lumbardx.engine.slip_verifier import VerifierTraining
    from lumbardx.models.slip_verifier import VerifierConfig

    console = Console()
    names = [m.strip() for m in models.split(",") if m.strip()] if models else None
    with _input_errors(console):
        res = crossval_slip_verifier(
            cv_dir, out, data, names, class_name,
            VerifierConfig(0, context, crop_size, members=members, power=power),
            VerifierTraining(epochs=epochs, seed=seed), compare_with, resume,
            log=_say(console), verifiers_from=verifiers_from)
    print_table1(console, res)
    if res.failures:
        console.print(f"[red]{len(res.failures)} fold(s) failed (see error.txt in their "
                      "folders); rerun to retry them")
        raise typer.Exit(code=1)
