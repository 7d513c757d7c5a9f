"""``lumbardx segments crossval``, ``train`` and ``ensemble`` end to end at tiny scale, and the
release settings (calibration, thresholds, level cut) they rest on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner
from synth_data import two_per_patient

from lumbardx.engine.segment_release import fit_platt, release_settings
from lumbardx.models.segment_reader import LABELS


def test_platt_scaling_recovers_a_known_calibration() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 20000)
    y = rng.random(20000) < 1 / (1 + np.exp(-(0.5 * z - 1.0)))
    a, b = fit_platt(z, y)
    assert a == pytest.approx(0.5, abs=0.05) and b == pytest.approx(-1.0, abs=0.06)
    assert fit_platt(z, np.zeros(20000, bool)) == (1.0, 0.0)


def test_release_settings_flag_every_simulated_miscount() -> None:
    rng = np.random.default_rng(1)
    rows = []
    for i in range(400):
        t = [0.0] * len(LABELS)
        t[2] = float(i % 20 == 0)
        t[4] = float(i % 3 == 0)  # degeneration; no stenosis in these data
        z = [float(rng.normal(2.0 if t[k] else -2.0, 1.0)) for k in range(len(LABELS))]
        rows.append({"targets": t, "logits": z})
    checks = [{"right": float(rng.normal(3, 1)), "missed": float(rng.normal(-3, 1)),
               "extra": float(rng.normal(-4, 1)), "extra_true": 1.0} for _ in range(50)]
    checks.append({"right": 3.0, "missed": 9.0, "extra": -4.0, "extra_true": 1.0})  # an outlier
    s = release_settings(rows, checks, max_unflagged=0.01)
    assert set(s["thresholds"]) == {"spondylolisthesis", "degeneration"}
    assert "not called" in s["threshold_evidence"]["stenosis"]["note"]
    assert 0.0 < s["thresholds"]["spondylolisthesis"] < 1.0
    # one of 102 simulated miscounts may pass (<= 1%): the outlier does not set the cut
    assert s["level_evidence"]["miscounts_unflagged"] == pytest.approx(1 / 102)
    assert s["level_evidence"]["right_flagged"] < 0.1
    strict = release_settings(rows, checks, max_unflagged=0.0)
    assert strict["level_evidence"]["miscounts_unflagged"] == 0.0
    assert strict["level_evidence"]["right_flagged"] > 0.9  # every right count flagged


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 synthetic 128-px images, two per patient, and a 2-fold folds file."""
    root = two_per_patient(tmp_path_factory.mktemp("seg"), p_listhesis=0.7)
    images = sorted(p.relative_to(root).as_posix() for p in root.rglob("case_*.png"))
    (root / "folds.csv").write_text("image,patient,fold\n" + "".join(
        f"{im},p{i // 2},{(i // 2) % 2}\n" for i, im in enumerate(images)))
    return root


def test_crossval_then_train_writes_a_reader_diagnosis_loads(tmp_path: Path,
                                                              tiny_data: Path) -> None:
    from lumbardx.cli.segments import app
    from lumbardx.stages.segments import SegmentStage

    cv_dir = tmp_path / "cv"
    run = CliRunner().invoke(app, ["crossval", str(tiny_data), "--out", str(cv_dir),
                                   "--folds-csv", str(tiny_data / "folds.csv"),
                                   "--epochs", "1", "--threads", "1"])
    assert run.exit_code == 0, run.output
    assert sorted(p.name for p in cv_dir.iterdir()) == ["fold0", "fold1", "summary.json"]
    summary = json.loads((cv_dir / "summary.json").read_text())
    assert [f["fold"] for f in summary["folds"]] == [0, 1]
    assert {"sensitivity", "specificity"} <= set(summary["disc_level"])
    held = json.loads((cv_dir / "fold0" / "predictions.json").read_text())
    folds = {line.split(",")[0]: line.split(",")[2]
             for line in (tiny_data / "folds.csv").read_text().splitlines()[1:]}
    assert {r["image"] for r in held["rows"]} <= {im for im, f in folds.items() if f == "0"}
    out = tmp_path / "segments.pt"
    run = CliRunner().invoke(app, ["train", str(tiny_data), "--out", str(out),
                                   "--crossval", str(cv_dir), "--epochs", "1", "--threads", "1",
                                   "--tag", "tiny", "--slip-call", "reader",
                                   "--slip-repeat", "2"])
    assert run.exit_code == 0, run.output
    raw = torch.load(out, weights_only=True)
    assert set(raw["config"]["calibration"]) == set(LABELS)
    assert raw["training"]["slip_repeat"] == 2 and raw["training"]["epochs"] == 1
    stage = SegmentStage.load(out)
    assert stage.summary["version"] == "tiny" and 0 < stage.level_cut < 1
    assert (stage.slip_call, stage.slip_measure) == ("reader", "corners")
    missing = CliRunner().invoke(app, ["train", str(tiny_data), "--out",
                                       str(tmp_path / "x.pt"), "--crossval", str(tmp_path)])
    assert missing.exit_code == 2 and "predictions.json" in missing.output


def test_ensemble_of_trained_readers_averages_them(tmp_path: Path, tiny_data: Path) -> None:
    from lumbardx.cli.segments import app
    from lumbardx.engine.segment_training import predict_items
    from lumbardx.models.segment_reader import SegmentEnsemble, load_segment_reader
    from lumbardx.stages.segments import SegmentStage

    cv_dir = tmp_path / "cv"
    run = CliRunner().invoke(app, ["crossval", str(tiny_data), "--out", str(cv_dir),
                                   "--folds-csv", str(tiny_data / "folds.csv"),
                                   "--epochs", "1", "--threads", "1"])
    assert run.exit_code == 0, run.output
    members = []
    for seed in (0, 1):
        members.append(tmp_path / f"m{seed}.pt")
        run = CliRunner().invoke(app, ["train", str(tiny_data), "--out", str(members[-1]),
                                       "--crossval", str(cv_dir), "--epochs", "1",
                                       "--seed", str(seed), "--threads", "1"])
        assert run.exit_code == 0, run.output
    out = tmp_path / "ensemble.pt"
    run = CliRunner().invoke(app, ["ensemble", *map(str, members), "--out", str(out),
                                   "--crossval", str(cv_dir), "--tag", "tiny-ensemble"])
    assert run.exit_code == 0, run.output
    stage = SegmentStage.load(out)
    assert isinstance(stage.reader, SegmentEnsemble) and len(stage.reader.members) == 2
    assert stage.summary["version"] == "tiny-ensemble" and 0 < stage.level_cut < 1
    readers = [load_segment_reader(torch.load(m, weights_only=True)) for m in members]
    items = _tiny_items(tiny_data)
    got = predict_items(stage.reader, items)
    each = [predict_items(r, items) for r in readers]
    for i, (logits, offset) in enumerate(got):
        torch.testing.assert_close(logits, (each[0][i][0] + each[1][i][0]) / 2)
        torch.testing.assert_close(offset, (each[0][i][1] + each[1][i][1]) / 2)
    again = CliRunner().invoke(app, ["ensemble", str(out), str(members[0]), "--out",
                                     str(tmp_path / "x.pt"), "--crossval", str(cv_dir)])
    assert again.exit_code != 0 and "ensemble already" in " ".join(again.output.split())


def _tiny_items(root: Path) -> list:
    """Two images of the tiny dataset as segment items (ground-truth discs)."""
    from lumbardx.data.dataset import LumbarDataset
    from lumbardx.engine.segment_training import item_from_sample

    ds = LumbarDataset(root, classes="all")
    return [item_from_sample(ds[i], ds.class_names) for i in range(2)]
