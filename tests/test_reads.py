"""AI as a reader: predictions on a labelled set -> reads.csv and truth.csv."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lumbardx.cli.reads import reads_from_predictions as reads_command
from lumbardx.clinical.readerstudy import load_reads, load_truth
from lumbardx.clinical.reads import load_predictions, reads_from_predictions, write_reads
from lumbardx.data.boxes import Box
from lumbardx.data.errors import InputError
from lumbardx.synth.anatomy import SynthConfig
from lumbardx.synth.case import generate_case

CLASSES = ["normal", "herniation", "spondylolisthesis"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[Box]], dict]:
    """Three generated images in YOLO layout; a and b are one patient (T2, T1), c another."""
    root = tmp_path_factory.mktemp("ds")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    (root / "data.yaml").write_text("names:\n" + "".join(f"  - {c}\n" for c in CLASSES))
    boxes, truths = {}, {}
    cfg = SynthConfig(p_listhesis=0.5, p_herniation=0.4, p_sacrum_visible=1.0)
    for k, name in enumerate(["a", "b", "c"]):
        case = generate_case(np.random.default_rng(60 + k), cfg, name=name)
        Image.fromarray(case.image).save(root / "images" / f"{name}.png")
        w, h = case.view.width, case.view.height
        lines = [f"{CLASSES.index(b.label)} {(b.x1 + b.x2) / 2 / w:.6f} "
                 f"{(b.y1 + b.y2) / 2 / h:.6f} {b.width / w:.6f} {b.height / h:.6f}"
                 for b in case.annotation.boxes]
        (root / "labels" / f"{name}.txt").write_text("\n".join(lines) + "\n")
        boxes[f"{name}.png"] = case.annotation.boxes
        truths[name] = case.truth
    (root / "patients.csv").write_text("image,patient,sequence\na.png,P1,T2\nb.png,P1,T1\n"
                                       "c.png,P2,T2\n")
    return root, boxes, truths


def _preds(path: Path, boxes: dict[str, list[Box]], sizes: dict[str, tuple[int, int]]) -> Path:
    images = [{"id": i + 1, "file_name": n, "width": sizes[n][0], "height": sizes[n][1]}
              for i, n in enumerate(sorted(boxes))]
    ids = {im["file_name"]: im["id"] for im in images}
    anns = [{"image_id": ids[n], "category_id": CLASSES.index(b.label) + 1,
             "bbox": [b.x1, b.y1, b.width, b.height], "score": 0.9}
            for n in sorted(boxes) for b in boxes[n]]
    cats = [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def _sizes(root: Path) -> dict[str, tuple[int, int]]:
    return {p.name: Image.open(p).size for p in (root / "images").glob("*.png")}


def test_perfect_predictions_call_the_truth(dataset, tmp_path: Path) -> None:  # noqa: ANN001
    root, boxes, truths = dataset
    preds = _preds(tmp_path / "preds.json", boxes, _sizes(root))
    result = reads_from_predictions(preds, root, reader="AI")
    assert result.images == 2  # patient P1 read once, from its T2 image a.png
    assert any("b.png" in s and "P1" in s for s in result.skipped)
    cases = {r["case"] for r in result.truth}
    assert cases == {"P1", "P2"}
    expected = [(c, d["level"], d["status"]) for c, n in (("P1", "a"), ("P2", "c"))
                for d in truths[n]["discs"]]
    assert [(r["case"], r["site"], r["truth"]) for r in result.truth] == expected
    assert [r["call"] for r in result.reads] == [r["truth"] for r in result.truth]
    assert {r["reader"] for r in result.reads} == {"AI"}
    assert result.unmatched_predictions == 0
    reads_path, truth_path = write_reads(result, tmp_path / "out")
    assert len(load_reads(reads_path)) == len(load_truth(truth_path)) == len(expected)


def test_missed_disc_is_called_normal(dataset, tmp_path: Path) -> None:  # noqa: ANN001
    root, boxes, truths = dataset
    discs = truths["c"]["discs"]
    target = next((d for d in discs if d["status"] != "normal"), discs[-2])
    box = target["box"]
    kept = dict(boxes)
    kept["c.png"] = [b for b in boxes["c.png"]
                     if not (b.x1 <= (box[0] + box[2]) / 2 <= b.x2
                             and b.y1 <= (box[1] + box[3]) / 2 <= b.y2)]
    preds = _preds(tmp_path / "preds.json", kept, _sizes(root))
    out = tmp_path / "out"
    reads_command(preds, root, reader="model-x", out=out, thresholds=None)
    with (out / "reads.csv").open() as fh:
        reads = {(r["case"], r["site"]): r for r in csv.DictReader(fh)}
    with (out / "truth.csv").open() as fh:
        truth = {(r["case"], r["site"]): r["truth"] for r in csv.DictReader(fh)}
    assert reads[("P2", target["level"])]["call"] == "normal"
    assert truth[("P2", target["level"])] == target["status"]
    others = [k for k in truth if k != ("P2", target["level"])]
    assert all(reads[k]["call"] == truth[k] for k in others)
    assert {r["reader"] for r in reads.values()} == {"model-x"}


def test_thresholds_decide_the_calls(dataset, tmp_path: Path) -> None:  # noqa: ANN001
    root, boxes, _ = dataset
    preds = _preds(tmp_path / "preds.json", boxes, _sizes(root))
    strict = {"normal": 0.5, "herniation": 0.95, "spondylolisthesis": 0.95}
    result = reads_from_predictions(preds, root, thresholds=strict)
    assert {r["call"] for r in result.reads} == {"normal"}


def test_bad_predictions_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "preds.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 10,
                                            "height": 10}],
                                "categories": [{"id": 1, "name": "normal"}],
                                "annotations": [{"image_id": 2, "category_id": 1,
                                                 "bbox": [0, 0, 1, 1], "score": 0.5}]}))
    with pytest.raises(InputError, match=r"preds\.json.*image_id 2"):
        load_predictions(path)
    path.write_text("{not json")
    with pytest.raises(InputError, match="preds.json"):
        load_predictions(path)
