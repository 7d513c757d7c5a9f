"""Cross-validation orchestration and the study's Table 1 (aggregation math, writers, resume)."""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner
from synth_data import two_per_patient

from lumbardx.data.errors import InputError
from lumbardx.engine import crossval as cv
from lumbardx.engine.table1 import (
    ModelFolds,
    fold_stat,
    mean_pr,
    merge_peer,
    metric_keys,
    paired_comparison,
    read_comparison,
    summarize,
    write_table1,
)

NAMES = ["normal", "herniation", "spondylolisthesis"]
OVERRIDES = {"image_size": 64, "epochs": 1, "batch_size": 4, "num_workers": 0}
T_975_4 = 2.7764451051977987  # Student t quantile 0.975, 4 degrees of freedom (tables)


def _fold(fold: int, ap: tuple[float | None, ...], map50: float, map50_95: float, ms: float,
          precision: np.ndarray | None = None) -> dict:
    f = {"fold": fold, "ap50": dict(zip(NAMES, ap)), "map50": map50, "map50_95": map50_95,
         "ms_per_image": ms}
    if precision is not None:
        f["precision"] = precision.tolist()
        f["recall"] = np.linspace(0, 1, 101).tolist()
    return f


def _peer_file(path: Path, classes: list[str] = NAMES) -> Path:
    folds = [{"fold": i, "ap50": {c: 0.5 + 0.1 * i for c in classes}, "map50": 0.5 + 0.1 * i,
              "map50_95": 0.3, "ms_per_image": 5.0, "train_seconds": 1.0} for i in range(2)]
    path.write_text(json.dumps({"model": "ultralytics yolo11n (from scratch)", "folds": folds}))
    return path


# ------------------------------------------------------------------ aggregation math
def test_fold_stat_mean_sd_and_t_interval() -> None:
    values = [0.80, 0.90, 0.85, 0.95, 0.70]
    s = fold_stat(values)
    mean, sd = statistics.mean(values), statistics.stdev(values)  # stdev: n - 1
    assert s.n == 5
    assert s.mean == pytest.approx(mean)
    assert s.sd == pytest.approx(sd)
    half = T_975_4 * sd / math.sqrt(5)
    assert (s.ci_low, s.ci_high) == pytest.approx((mean - half, mean + half))
    # None / nan (class without ground truth in a fold) are left out, not counted as 0
    s2 = fold_stat([0.5, None, float("nan"), 0.7])
    assert s2.n == 2 and s2.mean == pytest.approx(0.6)
    assert s2.sd == pytest.approx(math.sqrt(0.02))
    one = fold_stat([0.4])
    assert one.mean == 0.4 and math.isnan(one.sd) and math.isnan(one.ci_low) and one.n == 1
    none = fold_stat([None])
    assert none.n == 0 and math.isnan(none.mean)
    assert one.to_dict() == {"mean": 0.4, "sd": None, "ci95": [None, None], "n": 1}


def test_mean_pr_skips_folds_without_the_class() -> None:
    p0 = np.full((101, 3), 0.8)
    p1 = np.full((101, 3), 0.6)
    p1[:, 2] = -1  # fold 1 has no spondylolisthesis
    rec, mean, sd, n = mean_pr([_fold(0, (1, 1, 1), 1, 1, 1, p0),
                                _fold(1, (1, 1, None), 1, 1, 1, p1)], 3)
    assert rec.shape == (101,) and mean.shape == (101, 3)
    np.testing.assert_allclose(mean[:, 0], 0.7)
    np.testing.assert_allclose(mean[:, 2], 0.8)
    np.testing.assert_allclose(sd[:, 0], statistics.stdev([0.8, 0.6]))
    assert n.tolist() == [2, 2, 1]
    assert mean_pr([_fold(0, (1, 1, 1), 1, 1, 1)], 3) is None  # no curves (peer)


def test_table1_writers_on_hand_made_folds(tmp_path: Path) -> None:
    curve = np.tile(np.linspace(1, 0.5, 101)[:, None], (1, 3))
    ours = ModelFolds("ppyolov2", [
        _fold(0, (0.90, 0.80, 0.70), 0.80, 0.50, 12.0, curve),
        _fold(1, (0.94, 0.84, None), 0.89, 0.54, 14.0, curve),
        _fold(2, (0.92, 0.82, 0.60), 0.78, 0.52, 13.0, curve),
    ], failed={3: "RuntimeError: out of memory"})
    peer = merge_peer(_peer_file(tmp_path / "peer.json"), NAMES)
    files = write_table1([ours, peer], NAMES, tmp_path / "t1", notes=["note line"])

    md = files["md"].read_text()
    table = md.split("## Per fold")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "Model" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["ppyolov2", peer.name]
    s = fold_stat([0.80, 0.89, 0.78])
    assert (f"{100 * s.mean:.2f} ± {100 * s.sd:.2f} ({100 * s.ci_low:.2f}–"
            f"{100 * s.ci_high:.2f})") in rows[0]
    assert "| ppyolov2 | 0 | 90.00 | 80.00 | 70.00 | 80.00 | 50.00 | 12.0 |" in md
    assert "| ppyolov2 | 1 | 94.00 | 84.00 | - | 89.00 | 54.00 | 14.0 |" in md
    assert "t(0.975, n-1)" in md and "101-point" in md and "note line" in md
    assert "fold 3 did not finish: RuntimeError: out of memory" in md

    with files["csv"].open() as f:
        reader = csv.DictReader(f)
        csv_rows = list(reader)
    assert [r["model"] for r in csv_rows] == ["ppyolov2", peer.name]
    for key in metric_keys(NAMES):
        for stat in ("mean", "sd", "ci_low", "ci_high", "n"):
            assert f"{key}_{stat}" in reader.fieldnames
    assert float(csv_rows[0]["map50_mean"]) == pytest.approx(s.mean)
    assert float(csv_rows[0]["map50_ci_high"]) == pytest.approx(s.ci_high)
    assert csv_rows[0]["ap50/spondylolisthesis_n"] == "2"
    assert float(csv_rows[1]["map50_mean"]) == pytest.approx(0.55)

    data = json.loads(files["json"].read_text())
    m0 = data["models"][0]
    assert m0["summary"]["map50"]["mean"] == pytest.approx(s.mean)
    assert m0["summary"]["ap50/spondylolisthesis"]["n"] == 2
    assert m0["folds"][1]["ap50"]["spondylolisthesis"] is None
    assert "precision" not in m0["folds"][0]  # curves stay in the fold results
    assert data["models"][1]["source"].startswith("peer")
    assert files["pr_ppyolov2"].is_file() and files["pr_ppyolov2"].stat().st_size > 1000
    assert not any(k.startswith("pr_ultralytics") for k in files)  # peer: no curves


def test_merge_peer_rejects_bad_files(tmp_path: Path) -> None:
    good = merge_peer(_peer_file(tmp_path / "peer.json"), NAMES)
    assert [f["fold"] for f in good.folds] == [0, 1]
    assert summarize(good, NAMES)["map50"].mean == pytest.approx(0.55)
    other = _peer_file(tmp_path / "other.json", ["a", "b"])
    with pytest.raises(InputError, match="another class mapping") as err:
        merge_peer(other, NAMES)
    assert err.value.path == other
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read") as err:
        merge_peer(tmp_path / "broken.json", NAMES)
    assert err.value.path == tmp_path / "broken.json"
    (tmp_path / "short.json").write_text(json.dumps({"folds": [{"fold": 0, "ap50": {}}]}))
    with pytest.raises(InputError, match="lacks map50"):
        merge_peer(tmp_path / "short.json", NAMES)


def test_paired_comparison_on_shared_folds(tmp_path: Path) -> None:
    a = ModelFolds("ours", [_fold(0, (0.9, 0.8, 0.30), 0.60, 0.40, 9.0),
                            _fold(1, (0.9, 0.8, 0.10), 0.55, 0.40, 9.0),
                            _fold(2, (0.9, 0.8, None), 0.70, 0.40, 9.0),
                            _fold(3, (0.9, 0.8, 0.20), 0.65, 0.40, 9.0)])
    b = ModelFolds("peer", [_fold(0, (0.9, 0.7, 0.20), 0.58, 0.41, 5.0),
                            _fold(1, (0.9, 0.9, 0.15), 0.60, 0.41, 5.0),
                            _fold(2, (0.9, 0.8, 0.10), 0.60, 0.41, 5.0)])  # no fold 3
    pc = paired_comparison(a, b, NAMES)
    assert "ms_per_image" not in pc  # machine-dependent, not compared
    m = pc["map50"]
    diffs = [0.02, -0.05, 0.10]  # folds 0-2; fold 3 only in a
    assert m.folds == (0, 1, 2) and (m.wins_a, m.wins_b) == (2, 1)
    half = 4.302652729749464 * statistics.stdev(diffs) / math.sqrt(3)  # t(0.975, 2)
    assert m.diff.mean == pytest.approx(statistics.mean(diffs))
    assert (m.diff.ci_low, m.diff.ci_high) == pytest.approx(
        (statistics.mean(diffs) - half, statistics.mean(diffs) + half))
    slip = pc["ap50/spondylolisthesis"]
    assert slip.folds == (0, 1) and (slip.wins_a, slip.wins_b) == (1, 1)  # fold 2: a has none
    assert slip.diff.mean == pytest.approx((0.10 - 0.05) / 2)
    normal = pc["ap50/normal"]
    assert (normal.wins_a, normal.wins_b) == (0, 0) and normal.diff.mean == 0.0  # ties

    files = write_table1([a, b], NAMES, tmp_path / "t1")
    md = files["md"].read_text()
    row = next(r for r in md.splitlines() if r.startswith("| ours - peer |"))
    assert f"{100 * m.diff.mean:+.2f} ({100 * m.diff.ci_low:+.2f} to " \
           f"{100 * m.diff.ci_high:+.2f}) [2:1]" in row
    assert row.split("|")[2].strip() == "3"
    data = json.loads(files["json"].read_text())
    assert data["paired"][0]["a"] == "ours" and data["paired"][0]["b"] == "peer"
    d = data["paired"][0]["differences"]["map50"]
    assert d["folds"] == [0, 1, 2] and d["wins_a"] == 2 and d["mean"] == pytest.approx(m.diff.mean)
    one = write_table1([a], NAMES, tmp_path / "t2")["md"].read_text()
    assert "Paired differences" not in one  # one model: nothing to pair


def test_read_comparison_takes_peers_and_earlier_tables(tmp_path: Path) -> None:
    peer_file = _peer_file(tmp_path / "peer.json")
    assert [r.name for r in read_comparison(peer_file, NAMES)] == [
        "ultralytics yolo11n (from scratch)"]
    earlier = ModelFolds("yolov5n", [_fold(0, (0.9, 0.8, 0.3), 0.66, 0.4, 9.0),
                                     _fold(1, (0.9, 0.7, None), 0.80, 0.4, 9.0)])
    files = write_table1([earlier, merge_peer(peer_file, NAMES)], NAMES, tmp_path / "cv-old")
    rows = read_comparison(files["json"], NAMES)
    assert [r.name for r in rows] == ["yolov5n (cv-old)",
                                      "ultralytics yolo11n (from scratch) (cv-old)"]
    assert rows[0].source.startswith("table") and [f["fold"] for f in rows[0].folds] == [0, 1]
    assert rows[0].folds[1]["ap50"]["spondylolisthesis"] is None
    assert summarize(rows[0], NAMES)["map50"].mean == pytest.approx(0.73)
    now = ModelFolds("yolov5n", [_fold(0, (0.9, 0.8, 0.4), 0.70, 0.4, 9.0),
                                 _fold(1, (0.9, 0.7, 0.2), 0.82, 0.4, 9.0)])
    pc = paired_comparison(now, rows[0], NAMES)
    assert pc["map50"].diff.mean == pytest.approx(0.03) and pc["map50"].wins_a == 2
    assert pc["ap50/spondylolisthesis"].folds == (0,)  # fold 1 of the old run had no slip AP

    copy = tmp_path / "crossval_yolov5n_cpu.json"  # a table kept under another name
    copy.write_text(files["json"].read_text())
    assert read_comparison(copy, NAMES)[0].name == "yolov5n (crossval_yolov5n_cpu)"

    other = json.loads(files["json"].read_text())
    other["class_names"] = ["a", "b", "c"]
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(InputError, match="another class mapping") as err:
        read_comparison(tmp_path / "other.json", NAMES)
    assert err.value.path == tmp_path / "other.json"
    (tmp_path / "empty.json").write_text(json.dumps({"class_names": NAMES, "models": []}))
    with pytest.raises(InputError, match="non-empty 'models'"):
        read_comparison(tmp_path / "empty.json", NAMES)


# ------------------------------------------------------------------ orchestration
@pytest.fixture(scope="module")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 synthetic 128-px images, two per patient (4 patients)."""
    return two_per_patient(tmp_path_factory.mktemp("synth"), seed=3)


def test_bad_inputs_are_refused_before_training(tmp_path: Path, synth_data: Path) -> None:
    with pytest.raises(InputError, match="unknown model 'yolov9'"):
        cv.crossval(synth_data, ["yolov9"], 2, out_dir=tmp_path / "a")
    with pytest.raises(InputError, match="dataset folder not found") as err:
        cv.crossval(tmp_path / "missing", ["yolov5n"], 2, out_dir=tmp_path / "b")
    assert err.value.path == tmp_path / "missing"
    with pytest.raises(InputError, match="unknown recipe fields: lr_typo"):
        cv.make_recipe("yolov5n", {"lr_typo": 1.0})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_failing_fold_is_reported_and_the_rest_continue(
    tmp_path: Path, synth_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_run_fold(**kw: object) -> dict:
        calls.append(kw["fold"])
        if kw["fold"] == 0:
            raise InputError(Path("x.png"), "image cannot be read")
        return _fold(int(kw["fold"]), (0.9, 0.8, 0.7), 0.8, 0.5, 10.0)

    monkeypatch.setattr(cv, "run_fold", fake_run_fold)
    res = cv.crossval(synth_data, ["yolov5n"], 2, recipe_overrides=OVERRIDES,
                      out_dir=tmp_path / "cv")
    assert calls == [0, 1]
    assert res.failures == {("yolov5n", 0): "InputError: x.png: image cannot be read"}
    assert res.ran == [("yolov5n", 1)]
    assert "x.png: image cannot be read" in (tmp_path / "cv/yolov5n/fold0/error.txt").read_text()
    md = res.files["md"].read_text()
    assert "| yolov5n | 1 |" in md and "fold 0 did not finish" in md
    calls.clear()
    monkeypatch.setattr(cv, "run_fold", lambda **kw: calls.append(kw["fold"]) or _fold(
        int(kw["fold"]), (0.9, 0.8, 0.7), 0.8, 0.5, 10.0))
    again = cv.crossval(synth_data, ["yolov5n"], 2, recipe_overrides=OVERRIDES,
                        out_dir=tmp_path / "cv", resume=True)  # the failed fold, once it can run
    assert calls == [0, 1] and ("yolov5n", 0) in again.ran and not again.failures
    assert not (tmp_path / "cv/yolov5n/fold0/error.txt").exists()  # no stale failure left


def test_only_folds_trains_those_and_a_later_call_completes_the_table(
    tmp_path: Path, synth_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``only_folds``: a cross-validation spread over two calls (sittings or machines)."""
    calls: list[int] = []

    def fake_run_fold(**kw: object) -> dict:  # writes its result as run_fold does
        calls.append(int(kw["fold"]))
        res = _fold(int(kw["fold"]), (0.9, 0.8, 0.7), 0.8, 0.5, 10.0)
        out = Path(str(kw["out_dir"]))
        out.mkdir(parents=True, exist_ok=True)
        (out / cv.RESULT_FILE).write_text(json.dumps(res))
        return res

    monkeypatch.setattr(cv, "run_fold", fake_run_fold)
    messages: list[str] = []
    first = cv.crossval(synth_data, ["yolov5n"], 2, recipe_overrides=OVERRIDES,
                        out_dir=tmp_path / "cv", only_folds=[1], log=messages.append)
    assert calls == [1] and first.ran == [("yolov5n", 1)] and not first.failures
    assert "yolov5n fold 0: not finished, left for another call" in messages
    assert not (tmp_path / "cv/yolov5n/fold0").exists()
    assert "| yolov5n | 1 |" in first.files["md"].read_text()
    second = cv.crossval(synth_data, ["yolov5n"], 2, recipe_overrides=OVERRIDES,
                         out_dir=tmp_path / "cv", resume=True, only_folds=[0])
    assert calls == [1, 0]
    assert second.reused == [("yolov5n", 1)] and second.ran == [("yolov5n", 0)]
    assert "| yolov5n | 2 |" in second.files["md"].read_text()
    with pytest.raises(InputError, match=r"folds to train must lie in 0\.\.1, not \[2\]"):
        cv.crossval(synth_data, ["yolov5n"], 2, recipe_overrides=OVERRIDES,
                    out_dir=tmp_path / "cv", resume=True, only_folds=[2])

    from lumbardx.cli.train import crossval as crossval_cmd

    app = typer.Typer()
    app.command()(crossval_cmd)
    cli = CliRunner().invoke(app, [str(synth_data), "--models", "yolov5n", "--folds", "2",
                                   "--out", str(tmp_path / "cv2"), "--only-folds", "0,x"],
                             terminal_width=200)
    assert cli.exit_code != 0 and "--only-folds takes fold numbers like 2,3,4" in cli.output
    assert calls == [1, 0]


def test_resume_may_change_how_often_the_held_out_fold_is_scored(
    tmp_path: Path, synth_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``eval_interval`` does not change the final weights: a resume of a cross-validation
    scoring them (``select="last"``) may change it, one choosing the best epoch may not."""
    seen: list[int] = []

    def fake_run_fold(**kw: object) -> dict:
        seen.append(int(dict(kw["recipe_overrides"])["eval_interval"]))  # type: ignore[arg-type]
        out = Path(str(kw["out_dir"]))
        out.mkdir(parents=True, exist_ok=True)
        res = _fold(int(kw["fold"]), (0.9, 0.8, 0.7), 0.8, 0.5, 10.0)
        (out / cv.RESULT_FILE).write_text(json.dumps(res))
        return res

    monkeypatch.setattr(cv, "run_fold", fake_run_fold)
    for select, out in (("last", tmp_path / "last"), ("best", tmp_path / "best")):
        cv.crossval(synth_data, ["yolov5n"], 2, recipe_overrides={**OVERRIDES, "eval_interval": 1},
                    out_dir=out, only_folds=[0], select=select)
    again = cv.crossval(synth_data, ["yolov5n"], 2, out_dir=tmp_path / "last", resume=True,
                        recipe_overrides={**OVERRIDES, "eval_interval": 10})
    assert seen == [1, 1, 10] and again.ran == [("yolov5n", 1)]
    with pytest.raises(InputError, match="resume needs the settings of the first call"):
        cv.crossval(synth_data, ["yolov5n"], 2, out_dir=tmp_path / "best", resume=True,
                    recipe_overrides={**OVERRIDES, "eval_interval": 10}, select="best")
    with pytest.raises(InputError, match="resume needs the settings of the first call"):
        cv.crossval(synth_data, ["yolov5n"], 2, out_dir=tmp_path / "last", resume=True,
                    recipe_overrides={**OVERRIDES, "eval_interval": 10, "epochs": 2})


def test_crossval_end_to_end_then_resume(tmp_path: Path, synth_data: Path) -> None:
    out = tmp_path / "cv"
    peer = _peer_file(tmp_path / "peer.json")
    res = cv.crossval(synth_data, ["yolov5n"], k=2, recipe_overrides=OVERRIDES, out_dir=out,
                      device="cpu", seed=0, compare_with=[peer], progress=False)
    assert res.ran == [("yolov5n", 0), ("yolov5n", 1)] and not res.failures

    # patient-grouped folds, written first
    with (out / "folds.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {r["fold"] for r in rows} == {"0", "1"}
    by_patient: dict[str, set[str]] = {}
    for r in rows:
        by_patient.setdefault(r["patient"], set()).add(r["fold"])
    assert all(len(v) == 1 for v in by_patient.values())

    # each fold: weights, per-epoch log, evaluation, result; checkpoint self-describing
    for f in (0, 1):
        run = out / "yolov5n" / f"fold{f}"
        for name in ("last.pt", "best.pt", "results.csv", "run.json", "result.json",
                     "eval/metrics.json", "eval/pr_curves.png", "eval/confusion_matrix.png"):
            assert (run / name).is_file(), name
        result = json.loads((run / "result.json").read_text())
        assert result["fold"] == f and result["val_images"] + result["train_images"] == 8
        assert np.asarray(result["precision"]).shape == (101, 3)
        # a test fold chooses nothing: the final weights are scored; the fold's best epoch
        # is scored apart and labelled optimistic
        assert result["select"] == "last" and result["weights"] == str(run / "last.pt")
        on_fold = result["selected_on_fold"]
        assert on_fold["epoch"] == 1 and set(on_fold["ap50"]) == set(NAMES)
        assert "optimistic" in on_fold["note"]
        assert on_fold["map50"] == pytest.approx(result["map50"], nan_ok=True)  # 1 epoch
        ckpt = torch.load(run / "best.pt", weights_only=True)
        assert ckpt["model_name"] == "yolov5n" and ckpt["class_names"] == NAMES
        assert ckpt["recipe"]["image_size"] == 64 and ckpt["recipe"]["epochs"] == 1
        assert "postprocess.anchors" in ckpt["ema"]["model"]

    # Table 1: one row per model (ours + peer), fold statistics
    with res.files["csv"].open() as f:
        table = list(csv.DictReader(f))
    assert [r["model"] for r in table] == ["yolov5n", "ultralytics yolo11n (from scratch)"]
    assert table[0]["folds"] == "2" and table[0]["map50_n"] == "2"
    maps = [json.loads((out / f"yolov5n/fold{f}/result.json").read_text())["map50"]
            for f in (0, 1)]
    assert float(table[0]["map50_mean"]) == pytest.approx(np.mean(maps))
    assert float(table[0]["map50_sd"]) == pytest.approx(np.std(maps, ddof=1))
    data = json.loads(res.files["json"].read_text())
    assert [len(m["folds"]) for m in data["models"]] == [2, 2]
    assert "| yolov5n | 2 |" in res.files["md"].read_text()
    md = res.files["md"].read_text()
    assert "final epoch of each fold's training" in md
    assert "optimizer adamw, lr0 0.001429, close_mosaic 10" in md  # small-data YOLOv5
    assert "choosing each fold's best epoch on the fold itself would report mAP@0.5" in md
    assert (out / "pr_yolov5n.png").is_file()

    # resume: everything finished is skipped, nothing retrained
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("yolov5n/fold*/*.pt")}
    again = cv.crossval(synth_data, ["yolov5n"], k=2, recipe_overrides=OVERRIDES, out_dir=out,
                        device="cpu", resume=True, progress=False)
    assert again.ran == [] and again.reused == [("yolov5n", 0), ("yolov5n", 1)]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # an unfinished fold (trained, result missing) continues from last.pt: no new epoch
    (out / "yolov5n/fold1/result.json").unlink()
    third = cv.crossval(synth_data, ["yolov5n"], k=2, recipe_overrides=OVERRIDES, out_dir=out,
                        device="cpu", resume=True, progress=False)
    assert third.reused == [("yolov5n", 0)] and third.ran == [("yolov5n", 1)]
    assert (out / "yolov5n/fold1/result.json").is_file()
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert len((out / "yolov5n/fold1/results.csv").read_text().strip().splitlines()) == 2

    # a second run into the same folder, or a resume with other settings, is refused
    with pytest.raises(InputError, match="already holds a cross-validation"):
        cv.crossval(synth_data, ["yolov5n"], k=2, recipe_overrides=OVERRIDES, out_dir=out)
    with pytest.raises(InputError, match="select"):
        cv.crossval(synth_data, ["yolov5n"], k=2, recipe_overrides=OVERRIDES, out_dir=out,
                    resume=True, select="best")
    with pytest.raises(InputError, match="select must be one of"):
        cv.crossval(synth_data, ["yolov5n"], k=2, out_dir=tmp_path / "other", select="first")
    with pytest.raises(InputError, match="epochs") as err:
        cv.crossval(synth_data, ["yolov5n"], k=2, recipe_overrides={**OVERRIDES, "epochs": 2},
                    out_dir=out, resume=True)
    assert err.value.path == out / "crossval.json"

    # the CLI command on the finished folder: all folds reused, Table 1 printed
    from lumbardx.cli.train import crossval as crossval_cmd

    app = typer.Typer()
    app.command()(crossval_cmd)
    cli = CliRunner().invoke(app, [str(synth_data), "--models", "yolov5n", "--folds", "2",
                                   "--epochs", "1", "--imgsz", "64", "--batch", "4",
                                   "--workers", "0", "--device", "cpu", "--out", str(out),
                                   "--resume", "--compare-with",
                                   str(_peer_file(tmp_path / "peer.json"))],
                         terminal_width=200)
    assert cli.exit_code == 0, cli.output
    assert "finished before, skipped" in cli.output and "Table 1" in cli.output
    # the paired difference against the peer, on its two folds, as Table 1 computes it
    ours = ModelFolds("yolov5n", [json.loads((out / f"yolov5n/fold{f}/result.json").read_text())
                                  for f in (0, 1)])
    d = paired_comparison(ours, merge_peer(tmp_path / "peer.json", NAMES), NAMES)["map50"]
    assert (f"mAP@0.5, yolov5n - ultralytics yolo11n (from scratch): {100 * d.diff.mean:+.2f} "
            f"points") in cli.output
    assert f"folds won {d.wins_a}:{d.wins_b}, 2 folds" in cli.output


def test_parallel_jobs_run_folds_in_worker_processes(tmp_path: Path, synth_data: Path) -> None:
    res = cv.crossval(synth_data, ["yolov5n"], k=2, recipe_overrides=OVERRIDES,
                      out_dir=tmp_path / "cv", device="cpu", jobs=2, progress=False)
    assert sorted(res.ran) == [("yolov5n", 0), ("yolov5n", 1)] and not res.failures
    assert [f["fold"] for f in res.rows[0].folds] == [0, 1]
    for f in (0, 1):
        result = json.loads((tmp_path / f"cv/yolov5n/fold{f}/result.json").read_text())
        assert result["fold"] == f and result["val_images"] > 0
        assert (tmp_path / f"cv/yolov5n/fold{f}/best.pt").is_file()
        # folds side by side cannot share a terminal: each writes its own progress
        progress = (tmp_path / f"cv/yolov5n/fold{f}/train.log").read_text()
        assert f"epoch {OVERRIDES['epochs']}/{OVERRIDES['epochs']}" in progress
    assert "| yolov5n | 2 |" in res.files["md"].read_text()


_PARENT = """
import multiprocessing, os, sys, time
from lumbardx.engine.crossval import exit_with_parent

def work(path):
    exit_with_parent()
    with open(path + ".tmp", "w") as fh:
        fh.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    time.sleep(120)

if __name__ == "__main__":
    multiprocessing.get_context("spawn").Process(target=work, args=(sys.argv[1],)).start()
    time.sleep(120)
"""


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie waiting to be reaped counts as ended)."""
    if Path("/proc/self/status").exists():  # Linux: read the state, zombies included
        try:
            state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
        except (FileNotFoundError, IndexError):
            return False
        return state != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_fold_worker_ends_when_its_main_process_is_killed(tmp_path: Path) -> None:
    """A fold training started by crossval (spawned worker) stops when the cross-validation's
    main process is killed, instead of training on beside a resumed run."""
    script, pid_file = tmp_path / "parent.py", tmp_path / "worker.pid"
    script.write_text(textwrap.dedent(_PARENT), encoding="utf-8")
    parent = subprocess.Popen([sys.executable, str(script), str(pid_file)])
    try:
        deadline = time.monotonic() + 120
        while not pid_file.exists() and time.monotonic() < deadline:
            assert parent.poll() is None, "the parent process ended early"
            time.sleep(0.1)
        worker = int(pid_file.read_text())
        assert _running(worker)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 20
    while _running(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _running(worker)
    if alive:
        os.kill(worker, 9)
    assert not alive, "the worker trained on after its main process was killed"
