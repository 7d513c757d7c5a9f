"""scripts/release_weights.py: shipped weights with cross-validated evidence and thresholds."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lumbardx.engine import crossval as cv
from lumbardx.models.pretrained import load_detector

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = {"image_size": 64, "epochs": 1, "batch_size": 4, "num_workers": 0}


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished 2-fold cross-validation of yolov5n on 8 synthetic images (4 patients)."""
    from lumbardx.synth import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("release")
    data = root / "data"
    generate_dataset(data, 8, seed=5, config=SynthConfig(image_sizes=(128,)))
    (data / "patients.csv").write_text(
        "image,patient\n" + "".join(f"case_{i:05d}.png,p{i // 2}\n" for i in range(8)))
    cv.crossval(data, ["yolov5n"], k=2, recipe_overrides=OVERRIDES, out_dir=root / "cv",
                device="cpu", progress=False)
    return data, root / "cv"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "scripts/release_weights.py"), *args],
                          check=False,
                          capture_output=True, text=True, timeout=600)


def test_release_from_crossval(tmp_path: Path, cv_run: tuple[Path, Path]) -> None:
    data, cv_dir = cv_run
    checkpoint = cv_dir / "yolov5n/fold0/last.pt"  # stands in for the all-data model
    out, metrics, card_md = tmp_path / "w.pt", tmp_path / "w.json", tmp_path / "card.md"
    proc = _run(str(checkpoint), str(data), "--crossval", str(cv_dir), "--criterion", "f1",
                "--out", str(out), "--metrics", str(metrics), "--card-md", str(card_md))
    assert proc.returncode == 0, proc.stderr
    card = json.loads(metrics.read_text())

    # every image scored once, by the fold that did not train on it
    assert [f["fold"] for f in card["folds"]] == [0, 1]
    assert card["images"] == 8 and card["patients"] == 4
    for f in card["folds"]:
        result = json.loads((cv_dir / f"yolov5n/fold{f['fold']}/result.json").read_text())
        assert f["weights"] == "last.pt"
        assert f["map50"] == pytest.approx(result["map50"], nan_ok=True)

    # AP spread over folds; disc-level counts cover every ground-truth disc once
    assert card["map50"]["n"] == 2
    assert card["map50"]["mean"] == pytest.approx(
        sum(f["map50"] for f in card["folds"]) / 2, nan_ok=True)
    sens, spec = card["disc_level"]["sensitivity"], card["disc_level"]["specificity"]
    assert sens["count"][1] + spec["count"][1] == card["discs"] > 0
    for point in (sens, spec):
        assert 0.0 <= point["value"] <= 1.0
        low, high = point["ci95_wilson_discs"]
        assert low <= point["value"] <= high
    assert len(card["disc_level_folds"]) == 2
    # the same discs with every box grouped (the records thresholds are chosen on) stay beside
    every = card["disc_level_every_box"]
    assert every["sensitivity"]["count"][1] == sens["count"][1]
    assert every["specificity"]["count"][1] == spec["count"][1]
    assert "diagnosis" in card["disc_level_note"] and len(every["folds"]) == 2

    # the shipped file: float16 weights and the card's thresholds, loadable for diagnosis
    shipped = torch.load(out, weights_only=False)
    assert shipped["weights_dtype"] == "float16" and shipped["thresholds"] == card["thresholds"]
    assert shipped["tag"].startswith("yolov5n-all-epoch")
    assert shipped["validation"]["protocol"].startswith("2-fold patient-grouped")
    model = load_detector(out)
    assert model.thresholds == card["thresholds"]
    # each finding's calls on the held-out discs at the shipped thresholds, which the
    # reports state; the abnormal discs they count are the disc level's positives
    calls = card["call_evidence"]["calls"]
    assert shipped["call_evidence"] == card["call_evidence"]
    assert set(calls) == set(card["thresholds"])
    for name, c in calls.items():
        assert c["threshold"] == pytest.approx(card["thresholds"][name])
        assert c["positives"] + c["negatives"] == card["discs"]
        assert 0 <= c["called"] <= c["positives"] and 0 <= c["false_calls"] <= c["negatives"]
    assert "cross-validation" in card["call_evidence"]["basis"]
    assert model.info.sensitivity_evidence == {
        n: (c["called"], c["positives"]) for n, c in calls.items() if c["positives"] > 0}

    # the model card's section shows the JSON's numbers: one row per fold, then mean +- SD
    md = card_md.read_text()
    rows = [line for line in md.splitlines() if line.startswith("| fold ")]
    assert len(rows) == 2
    for row, f in zip(rows, card["folds"]):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == f"fold {f['fold']}"
        assert cells[-2] == _pct(f["map50"]) and cells[-1] == _pct(f["map50_95"])
    mean_row = next(line for line in md.splitlines() if line.startswith("| **mean"))
    m = card["map50"]
    assert f"**{_pct(m['mean'])} ± {_pct(m['sd'])}**" in mean_row
    sens = card["disc_level"]["sensitivity"]
    assert f"sensitivity {_pct(sens['value'])}% ({sens['count'][0]}/{sens['count'][1]};" in md
    for name, value in card["thresholds"].items():
        assert f"{name} {value:.3f}" in md
    for name, c in card["call_evidence"]["calls"].items():
        if name != "normal" and c["positives"]:
            assert f"{name} {_pct(c['called'] / c['positives'])}% " \
                   f"({c['called']}/{c['positives']};" in md


def _pct(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def test_release_from_one_fold(tmp_path: Path, cv_run: tuple[Path, Path]) -> None:
    """``--fold K``: thresholds chosen and measured on fold K's held-out images; its disc
    level and each finding's calls count the same discs, grouped as diagnosis groups them."""
    data, cv_dir = cv_run
    out, metrics = tmp_path / "w.pt", tmp_path / "w.json"
    proc = _run(str(cv_dir / "yolov5n/fold1/last.pt"), str(data), "--fold", "1",
                "--folds-csv", str(cv_dir / "folds.csv"), "--out", str(out),
                "--metrics", str(metrics))
    assert proc.returncode == 0, proc.stderr
    card = json.loads(metrics.read_text())
    assert card["fold"] == 1 and card["val_images"] + card["train_images"] == 8
    point = card["disc_level"]
    discs = point["tp"] + point["fn"] + point["tn"] + point["fp"]
    assert discs > 0
    calls = card["call_evidence"]["calls"]
    assert set(calls) == set(card["thresholds"])
    for c in calls.values():
        assert c["positives"] + c["negatives"] == discs
    # herniation and spondylolisthesis are what makes a disc abnormal for the disc level
    assert point["tp"] + point["fn"] >= max(calls[n]["positives"]
                                            for n in ("herniation", "spondylolisthesis"))
    assert point["tp"] + point["fp"] >= max(calls[n]["called"] + calls[n]["false_calls"]
                                            for n in ("herniation", "spondylolisthesis"))
    shipped = torch.load(out, weights_only=False)
    assert shipped["call_evidence"] == card["call_evidence"]
    assert shipped["tag"].startswith("yolov5n-fold1-epoch")


def test_release_refuses_unfinished_crossval_and_bad_arguments(
        tmp_path: Path, cv_run: tuple[Path, Path]) -> None:
    data, cv_dir = cv_run
    checkpoint = cv_dir / "yolov5n/fold0/last.pt"
    proc = _run(str(checkpoint), str(data), "--out", str(tmp_path / "w.pt"))
    assert proc.returncode == 2 and "--crossval DIR or --fold K" in proc.stderr
    proc = _run(str(checkpoint), str(data), "--fold", "0", "--folds-csv",
                str(cv_dir / "folds.csv"), "--card-md", str(tmp_path / "c.md"))
    assert proc.returncode == 2 and "--card-md needs --crossval" in proc.stderr
    unfinished = tmp_path / "cv"
    unfinished.mkdir()
    (unfinished / "folds.csv").write_text((cv_dir / "folds.csv").read_text())
    proc = _run(str(checkpoint), str(data), "--crossval", str(unfinished),
                "--out", str(tmp_path / "w.pt"))
    assert proc.returncode != 0 and "fold 0 has not finished" in proc.stderr
    assert not (tmp_path / "w.pt").exists()


def test_release_carries_the_verifier_with_the_folds_power(tmp_path: Path,
                                                           cv_run: tuple[Path, Path]) -> None:
    from lumbardx.engine.checkpoint import load_checkpoint
    from lumbardx.engine.crossval_verifier import crossval_slip_verifier
    from lumbardx.engine.slip_verifier import VerifierTraining, save_with_rescorer
    from lumbardx.models.slip_verifier import SlipVerifier, VerifierConfig

    data, cv_dir = cv_run
    shape = {"crop_size": 16, "width": 4, "members": 1}
    crossval_slip_verifier(cv_dir, tmp_path / "cv1", data, config=VerifierConfig(0, **shape),
                           train=VerifierTraining(epochs=1, negatives_per_epoch=20))
    crossval_slip_verifier(cv_dir, tmp_path / "cv3", data,
                           config=VerifierConfig(0, **shape, power=3.0),
                           verifiers_from=tmp_path / "cv1")
    # the all-data model: fold 0's detector with a verifier trained at power 1
    all_data = tmp_path / "cv1" / "yolov5n" / "fold0" / "last.pt"
    out = tmp_path / "w.pt"
    proc = _run(str(all_data), str(data), "--crossval", str(tmp_path / "cv3"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    shipped = load_checkpoint(out)
    assert shipped["rescorer"]["power"] == 3.0 and shipped["tag"].endswith("+slip_verifier")
    loaded = load_detector(out)
    assert isinstance(loaded.model.rescorer, SlipVerifier)
    assert loaded.model.rescorer.settings.power == 3.0

    # evidence from folds without a verifier cannot ship one, nor the other way round
    proc = _run(str(all_data), str(data), "--crossval", str(cv_dir),
                "--out", str(tmp_path / "x.pt"))
    assert proc.returncode != 0 and "second stage" in proc.stderr
    proc = _run(str(cv_dir / "yolov5n/fold0/last.pt"), str(data), "--crossval",
                str(tmp_path / "cv3"), "--out", str(tmp_path / "y.pt"))
    assert proc.returncode != 0 and "second stage" in proc.stderr
    # a verifier of another shape than the folds' is refused
    det = cv.load_detector(cv_dir / "yolov5n/fold0/last.pt")
    det.model.rescorer = SlipVerifier(VerifierConfig(2, crop_size=32, width=4, members=1))
    other = save_with_rescorer(load_checkpoint(cv_dir / "yolov5n/fold0/last.pt"), det.model,
                               tmp_path / "other.pt")
    proc = _run(str(other), str(data), "--crossval", str(tmp_path / "cv3"), "--out",
                str(tmp_path / "z.pt"))
    assert proc.returncode != 0 and "differs from the folds" in proc.stderr


def test_release_of_a_pair_model_measures_pairs_and_single_slices(
        tmp_path: Path) -> None:
    from pair_factory import pair_dataset

    data = pair_dataset(tmp_path / "data", 4)  # 4 patients, a T1 and a T2 each
    cv.crossval(data, ["yolov5n"], k=2, recipe_overrides={**OVERRIDES, "sequence_pairs": True},
                out_dir=tmp_path / "cv", device="cpu", progress=False)
    checkpoint = tmp_path / "cv/yolov5n/fold0/last.pt"
    out, metrics, card_md = tmp_path / "w.pt", tmp_path / "w.json", tmp_path / "card.md"
    proc = _run(str(checkpoint), str(data), "--crossval", str(tmp_path / "cv"),
                "--out", str(out), "--metrics", str(metrics), "--card-md", str(card_md))
    assert proc.returncode == 0, proc.stderr
    card = json.loads(metrics.read_text())
    assert card["inputs"] == "T1+T2" and "T1/T2 partner" in card["protocol"]
    for f in card["folds"]:  # the pairs are what the cross-validation scored
        result = json.loads((tmp_path / f"cv/yolov5n/fold{f['fold']}/result.json").read_text())
        assert f["map50"] == pytest.approx(result["map50"], nan_ok=True)
    single = card["single_slice"]
    assert [f["fold"] for f in single["folds"]] == [0, 1] and single["map50"]["n"] == 2
    for key in ("sensitivity", "specificity"):  # the same discs, called one slice at a time
        assert single["disc_level"][key]["count"][1] == card["disc_level"][key]["count"][1]
    assert [p["thresholds"] for p in single["disc_level_folds"]] == \
        [p["thresholds"] for p in card["disc_level_folds"]]
    assert "**One slice at a time**" in card_md.read_text()
    assert load_detector(out).info.inputs == "T1+T2"
    assert card["tag"].startswith("yolov5n-t1t2-all-epoch")
