"""The model zoo as users see it: ``lumbardx models`` and the compute counts."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from lumbardx.cli.models import models
from lumbardx.models.detector import count_macs
from lumbardx.models.registry import available_models, build_model


def test_registry_lists_the_study_models() -> None:
    names = available_models()
    for name in ("yolov3", "yolov5n", "yolov5s", "yolov5m", "yolov5l", "ppyolov2",
                 "ppyolov2-r101", "ppyolov2-r18"):
        assert name in names


def test_deformable_convs_are_counted() -> None:
    # Reference: about 60.7 G MACs at 640 px with the deformable convs counted (DETECTORS.md).
    macs = count_macs(build_model("ppyolov2", 80), 640)
    assert macs == pytest.approx(60.7e9, rel=0.02)


def test_models_command_prints_counts() -> None:
    app = typer.Typer()
    app.command()(models)
    result = CliRunner().invoke(app, ["--nc", "80", "--no-flops"])
    assert result.exit_code == 0, result.output
    assert "1,872,157" in result.output  # yolov5n at nc=80
    assert "54,579,383" in result.output  # PP-YOLOv2 R50-vd-DCN at nc=80
