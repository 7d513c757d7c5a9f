"""``lumbardx export``: a trained checkpoint -> an ONNX file for ONNX Runtime inference.

The checkpoint (written by ``lumbardx train``, :mod:`lumbardx.engine.checkpoint`) names the
model, its class names and its training size; the detector is rebuilt by
:func:`lumbardx.engine.checkpoint.rebuild_detector` and given the EMA weights when the
checkpoint holds them (else the trained weights), as for ``evaluate``, ``predict`` and
``diagnose``. The ONNX file (:func:`lumbardx.models.export.export_onnx`: network and
box decoding, NMS settings and class names in its metadata) runs with
:class:`lumbardx.models.runtime.OnnxBackend`.

Exit codes: 0 written; 2 nothing written (unreadable checkpoint, bad size or opset, model that
does not export, ``onnx`` not installed).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text
from typer import Argument, Option

from lumbardx.data.errors import InputError


def _fail(message: str) -> typer.Exit:
    """Print ``message`` as an error on stderr; the exit (code 2) to raise."""
    Console(stderr=True, soft_wrap=True).print(Text.assemble(("error: ", "bold red"), message))
    return typer.Exit(code=2)


def export(
    weights: Path = Argument(..., help="checkpoint .pt"),
    out: Path = Option(None, "--out", help="ONNX file to write (default: WEIGHTS with .onnx)."),
    image_size: int | None = Option(
        None, "--imgsz", help="Input size in px, multiple of 32 (default: the training size)."
    ),
    opset: int | None = Option(
        None, "--opset", help="ONNX opset (default 17; 19 for models with deformable conv)."
    ),
) -> None:
    """Export a trained checkpoint (EMA weights when saved) to ONNX: network and box decoding,
    with class names, input size and NMS settings stored in the file."""
    from lumbardx.engine.checkpoint import load_checkpoint, rebuild_detector  # lazy: torch
    from lumbardx.models.export import ExportError, OptionalDependencyError, export_onnx
    from lumbardx.study import PAIR_INPUTS

    target = Path(out) if out is not None else Path(weights).with_suffix(".onnx")
    if target.resolve() == Path(weights).resolve():
        raise _fail(f"{target}: the ONNX file would overwrite the checkpoint; choose another --out")
    try:
        det = rebuild_detector(load_checkpoint(weights), weights, "cpu")
        size = det.image_size if image_size is None else int(image_size)
        inputs = PAIR_INPUTS if det.sequence_pairs else "slice"
        path = export_onnx(det.model, target, size, det.class_names, opset, inputs)
    except (InputError, ExportError, OptionalDependencyError, ValueError) as err:
        raise _fail(str(err)) from None
    Console(soft_wrap=True).print(Text.assemble(
        f"{det.model_name} ({', '.join(det.class_names)}) at {size}x{size} px -> ",
        (str(path), "bold"),
    ))
    if det.model.rescorer is not None:
        Console(stderr=True, soft_wrap=True).print(Text.assemble(
            ("warning: ", "yellow"), f"{weights} also holds a second stage "
            f"({type(det.model.rescorer).__name__}); the ONNX file holds the one-stage detector "
            "only. 'lumbardx diagnose --backend onnx' with the .pt file runs both."))
