"""``lumbardx models``: the detector zoo with parameter counts and GFLOPs."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table


def models(
    image_size: int = typer.Option(640, "--imgsz", help="Square input size in pixels for GFLOPs."),
    num_classes: int = typer.Option(80, "--nc", help="Number of classes."),
    flops: bool = typer.Option(True, "--flops/--no-flops", help="Count GFLOPs (slower)."),
) -> None:
    """List every detector with its parameter count and GFLOPs (2 x multiply-accumulates)."""
    import torch

    from lumbardx.models.detector import count_macs, count_parameters
    from lumbardx.models.registry import available_models, build_model

    table = Table(title=f"lumbardx detectors (nc={num_classes}, {image_size}x{image_size})")
    table.add_column("model")
    table.add_column("parameters", justify="right")
    table.add_column("GFLOPs", justify="right")
    for name in available_models():
        with torch.no_grad():
            model = build_model(name, num_classes).eval()
        gflops = f"{2 * count_macs(model, image_size) / 1e9:.1f}" if flops else "-"
        table.add_row(name, f"{count_parameters(model):,}", gflops)
        del model
    Console().print(table)
