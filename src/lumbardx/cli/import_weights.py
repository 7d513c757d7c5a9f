"""``lumbardx import-weights``: a reference checkpoint (Ultralytics YOLOv5 v7.0 ``.pt``) as a
lumbardx checkpoint, for ``lumbardx train --weights`` (transfer learning); see
:mod:`lumbardx.models.reference_weights`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from lumbardx.data.errors import InputError


def import_weights(
    reference: Path = typer.Argument(..., help="Ultralytics YOLOv5 v7.0 checkpoint "
                                     "(yolov5s.pt, yolov3.pt, or one trained with that code)."),
    model: str = typer.Option(..., "--model", help="Registry model to map it onto: "
                              "yolov5n|yolov5s|yolov5m|yolov5l|yolov3."),
    out: Path = typer.Option(..., "--out", help="lumbardx checkpoint to write (.pt)."),
    image_size: int = typer.Option(640, "--imgsz", help="Input size recorded with the weights "
                                   "(the reference models were trained at 640)."),
) -> None:
    """Map every tensor of a reference checkpoint onto a lumbardx model and write it; says
    exactly what did not map (and then writes nothing)."""
    from lumbardx import __version__
    from lumbardx.engine.checkpoint import save_checkpoint
    from lumbardx.models.reference_weights import import_ultralytics

    console = Console()
    try:
        net, ref, report = import_ultralytics(reference, model)
    except InputError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    names = ref.names if len(ref.names) == report.num_classes else \
        [f"class_{i}" for i in range(report.num_classes)]
    save_checkpoint({"model": net.state_dict(), "model_name": model, "class_names": names,
                     "image_size": image_size, "lumbardx_version": __version__,
                     "tag": f"imported from {reference.name} ({ref.source} weights)",
                     "training_data": "the reference checkpoint's (see its source)",
                     "import_report": {"reference": reference.name, "source": ref.source,
                                       "mapped": len(report.mapped),
                                       "equivalent": report.equivalent,
                                       "notes": report.notes}}, out)
    console.print(report.summary())
    if not report.equivalent:
        console.print("[yellow]not equivalent:[/yellow] use these weights to start training")
    console.print(f"written: {out} (train from it: lumbardx train DATA --model {model} "
                  f"--weights {out})")
