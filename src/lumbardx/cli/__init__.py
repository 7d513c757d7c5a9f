"""The ``lumbardx`` command line (Typer + Rich).

Each concern registers its commands from its own module; this file only assembles them.
"""

from __future__ import annotations

import typer

from lumbardx import __version__

app = typer.Typer(
    name="lumbardx",
    help="Sagittal lumbar spine MRI: discs, disc herniation and spondylolisthesis.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"lumbardx {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="Show the version and exit.", callback=_version_callback, is_eager=True
    ),
) -> None:
    """Sagittal lumbar spine MRI: discs, disc herniation and spondylolisthesis."""


def _register() -> None:
    """Attach every command group (each lives in its own module)."""
    from lumbardx.cli import data as data_cli
    from lumbardx.cli import diagnose as diagnose_cli
    from lumbardx.cli import export as export_cli
    from lumbardx.cli import models as models_cli
    from lumbardx.cli import import_weights as import_weights_cli
    from lumbardx.cli import pacs as pacs_cli
    from lumbardx.cli import reads as reads_cli
    from lumbardx.cli import readerstudy as readerstudy_cli
    from lumbardx.cli import segments as segments_cli
    from lumbardx.cli import serve as serve_cli
    from lumbardx.cli import synth as synth_cli
    from lumbardx.cli import train as train_cli
    from lumbardx.cli import verifier as verifier_cli

    app.command(
        "diagnose",
        help="Diagnose sagittal lumbar MRI studies: findings per level, overlay, reports, DICOM SR.",
    )(diagnose_cli.diagnose)
    app.command("train", help="Train a detector (optionally on k-1 folds).")(train_cli.train)
    app.command("evaluate", help="AP per class, mAP@0.5, COCO mAP, PR curves, timing.")(
        train_cli.evaluate
    )
    app.command("predict", help="Predict boxes for a folder of images (COCO-style JSON).")(
        train_cli.predict
    )
    app.command("crossval", help="Patient-grouped k-fold cross-validation: the study's Table 1.")(
        train_cli.crossval
    )
    app.add_typer(verifier_cli.app, name="verifier",
                  help="Spondylolisthesis second stage: train it, cross-validate it.")
    app.add_typer(segments_cli.app, name="segments",
                  help="Segment reader: per-level findings, slip measured, levels checked.")
    app.command("export", help="Export a trained checkpoint to ONNX.")(export_cli.export)
    app.command("serve", help="Run the clinic web app (viewer, corrections, PACS, teaching).")(
        serve_cli.serve
    )
    app.add_typer(serve_cli.users_app, name="users", help="Accounts of the web app.")
    app.add_typer(data_cli.app, name="data", help="Check, convert and split annotated datasets.")
    app.add_typer(pacs_cli.app, name="pacs", help="Find, pull and push studies on a DICOMweb PACS.")
    app.command("synth", help="Generate synthetic sagittal lumbar MRI with exact ground truth.")(
        synth_cli.synth
    )
    app.command(
        "reader-study",
        help="Reader-study statistics: each reader and the AI against the truth, paired tests.",
    )(readerstudy_cli.reader_study)
    app.command(
        "reads-from-predictions",
        help="Turn a model's predictions on a labelled set into READS/TRUTH rows per disc.",
    )(reads_cli.reads_from_predictions)
    app.command("models", help="List the detectors with parameter counts and GFLOPs.")(
        models_cli.models
    )
    app.command("import-weights", help="A reference checkpoint (Ultralytics YOLOv5 v7.0 .pt or "
                "PaddleDetection .pdparams) as lumbardx weights, for train --weights.")(
        import_weights_cli.import_weights)


def main() -> None:
    """Console entry point."""
    _register()
    app()
