"""``lumbardx import-weights``: a reference checkpoint (Ultralytics YOLOv5 v7.0 ``.pt``, or a
PaddleDetection ``.pdparams`` of PP-YOLOv2 / YOLOv3) as a lumbardx checkpoint, for ``lumbardx
train --weights`` (transfer learning); see :mod:`lumbardx.models.reference_weights` and
:mod:`lumbardx.models.reference_paddle`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from lumbardx.data.errors import InputError


def is_paddle_checkpoint(reference: Path, model: str) -> bool:
    """Whether ``reference`` is read as a PaddleDetection ``.pdparams`` file: by its suffix, or
    because ``model`` is a PP-YOLOv2 (which no Ultralytics checkpoint maps onto)."""
    return reference.suffix.lower() == ".pdparams" or model.startswith("ppyolov2")


def import_weights(
    reference: Path = typer.Argument(..., help="Reference checkpoint: an Ultralytics YOLOv5 "
                                     "v7.0 .pt (yolov5s.pt, yolov3.pt, or one trained with that "
                                     "code), or a PaddleDetection .pdparams "
                                     "(ppyolov2_r50vd_dcn_365e_coco.pdparams, "
                                     "yolov3_darknet53_270e_coco.pdparams, or one trained with "
                                     "that code)."),
    model: str = typer.Option(..., "--model", help="Registry model to map it onto: "
                              "yolov5n|yolov5s|yolov5m|yolov5l|yolov3 for Ultralytics; "
                              "ppyolov2|ppyolov2-r101|yolov3 for PaddleDetection."),
    out: Path = typer.Option(..., "--out", help="lumbardx checkpoint to write (.pt)."),
    image_size: int = typer.Option(640, "--imgsz", help="Input size recorded with the weights "
                                   "(the reference models were trained at 640)."),
) -> None:
    """Map every tensor of a reference checkpoint onto a lumbardx model and write it; says
    exactly what did not map (and then writes nothing). Neither file's code is run: a .pdparams
    pickle may hold numpy arrays only, an Ultralytics pickle gives up only its tensors."""
    from lumbardx import __version__
    from lumbardx.engine.checkpoint import save_checkpoint

    console = Console()
    try:
        if is_paddle_checkpoint(reference, model):
            from lumbardx.models.reference_paddle import import_paddle

            net, ref, report = import_paddle(reference, model)
        else:
            from lumbardx.models.reference_weights import import_ultralytics

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
