"""bench/inference_size.py: input sizes chosen without the fold they are scored on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_scripts import load_bench

isz = load_bench("inference_size")

NAMES = ["normal", "herniation", "spondylolisthesis"]


def _score(map50: float) -> dict:
    return {"ap50": {n: map50 for n in NAMES}, "map50": map50, "map50_95": map50 / 2,
            "ms_per_image": 1.0, "images": 3}


def test_nested_choice_leaves_the_fold_out() -> None:
    # 448 is best on folds 1-2, 384 only on fold 0 (by a lot): fold 0 gets 448, which the
    # other folds chose, and 448 is best overall; folds 1 and 2 are scored at the size the
    # remaining folds prefer.
    by_size = {
        "384": {"fold0": _score(0.9), "fold1": _score(0.5), "fold2": _score(0.5)},
        "448": {"fold0": _score(0.4), "fold1": _score(0.6), "fold2": _score(0.6)},
    }
    nested, chosen, overall = isz.nested_choice(by_size)
    assert chosen == {"fold0": "448", "fold1": "384", "fold2": "384"}
    assert [nested[f]["map50"] for f in ("fold0", "fold1", "fold2")] == [0.4, 0.5, 0.5]
    assert overall == "384"  # mean 0.633 against 0.533


def test_ties_go_to_the_smaller_size() -> None:
    same = {"fold0": _score(0.5), "fold1": _score(0.5)}
    _, chosen, overall = isz.nested_choice({"416": same, "384": dict(same)})
    assert set(chosen.values()) == {"384"} and overall == "384"


def test_cache_pairing_and_sizes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lumbardx.synth import SynthConfig, generate_dataset

    data = tmp_path / "data"
    generate_dataset(data, 4, seed=3, config=SynthConfig(image_sizes=(128,)))
    run = tmp_path / "cv" / "yolov5n"
    for k in range(2):
        (run / f"fold{k}").mkdir(parents=True)
        (run / f"fold{k}" / "last.pt").write_bytes(b"")
        (run / f"fold{k}" / "result.json").write_text("{}")
    (run / "fold2").mkdir()  # a fold still training: not scored
    (run / "fold2" / "last.pt").write_bytes(b"")
    calls: list[tuple[str, int]] = []

    def fake(fold_dir: Path, ds, size: int, single_slices: bool = False) -> dict:
        calls.append((fold_dir.name, size))
        return _score({320: 0.5, 384: 0.6, 448: 0.7}[size] + 0.01 * int(fold_dir.name[-1]))

    monkeypatch.setattr(isz, "score_lumbardx", fake)
    out = tmp_path / "sizes.json"
    peer = {"384": {"fold0": _score(0.62), "fold1": _score(0.60)},
            "448": {"fold0": _score(0.55), "fold1": _score(0.55)}}
    out.write_text(json.dumps({"scores": {"peer": peer}}))  # the peer, scored before
    folds_csv = tmp_path / "folds.csv"  # not read: no --peer folder to score
    args = [str(data), "--lumbardx", str(run), "--folds-csv", str(folds_csv), "--out", str(out)]
    assert isz.main([*args, "--sizes", "384,448"]) == 0
    assert sorted(calls) == [("fold0", 384), ("fold0", 448), ("fold1", 384), ("fold1", 448)]
    res = json.loads(out.read_text())
    ours = res["models"][str(run)]
    assert ours["chosen_on_all_folds"] == 448
    assert ours["chosen_without_fold"] == {"fold0": "448", "fold1": "448"}
    assert res["models"]["peer"]["chosen_on_all_folds"] == 384
    paired = res["paired"][str(run)]["nested - peer nested"]["map50"]
    assert paired["mean"] == pytest.approx(((0.70 - 0.62) + (0.71 - 0.60)) / 2)
    assert (paired["wins_a"], paired["wins_b"]) == (2, 0)

    calls.clear()  # a second call adds a size and re-runs nothing else
    assert isz.main([*args, "--sizes", "320,384,448"]) == 0
    assert sorted(calls) == [("fold0", 320), ("fold1", 320)]
    res = json.loads(out.read_text())
    assert set(res["scores"][str(run)]) == {"320", "384", "448"}
    assert res["models"][str(run)]["chosen_on_all_folds"] == 448


def test_sizes_must_be_multiples_of_32(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="multiples of 32"):
        isz.main([str(tmp_path), "--folds-csv", str(tmp_path / "f.csv"), "--sizes", "400",
                  "--out", str(tmp_path / "o.json")])


def test_every_model_and_size_is_one_choice(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from lumbardx.synth import SynthConfig, generate_dataset

    data = tmp_path / "data"
    generate_dataset(data, 4, seed=3, config=SynthConfig(image_sizes=(128,)))
    runs = [tmp_path / "a" / "yolov5n", tmp_path / "b" / "yolov5n"]
    for run in runs:
        for k in range(3):
            (run / f"fold{k}").mkdir(parents=True)
            (run / f"fold{k}" / "last.pt").write_bytes(b"")
            (run / f"fold{k}" / "result.json").write_text("{}")
    # model b is far better on fold 2 only, at 448: chosen for folds 0 and 1, not for fold 2
    table = {("a", 384): (0.6, 0.6, 0.6), ("a", 448): (0.5, 0.5, 0.5),
             ("b", 384): (0.4, 0.4, 0.4), ("b", 448): (0.55, 0.55, 0.95)}

    def fake(fold_dir: Path, ds, size: int, single_slices: bool = False) -> dict:
        return _score(table[(fold_dir.parents[1].name, size)][int(fold_dir.name[-1])])

    monkeypatch.setattr(isz, "score_lumbardx", fake)
    out = tmp_path / "sizes.json"
    assert isz.main([str(data), "--lumbardx", *map(str, runs), "--folds-csv",
                     str(tmp_path / "f.csv"), "--sizes", "384,448", "--out", str(out)]) == 0
    every = json.loads(out.read_text())["models"]["every lumbardx model and size"]
    assert every["chosen_without_fold"] == {"fold0": f"{runs[1]} @ 448",
                                            "fold1": f"{runs[1]} @ 448",
                                            "fold2": f"{runs[0]} @ 384"}
    assert [every["nested"][f]["map50"] for f in ("fold0", "fold1", "fold2")] == [0.55, 0.55, 0.6]
    assert every["chosen_on_all_folds"] == f"{runs[1]} @ 448"
