"""Dataset-level format detection, scanning, conversion and the ``data convert`` command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from lumbardx.cli.convert import convert
from lumbardx.data.boxes import Box, ImageAnnotation
from lumbardx.data.convert import ScanResult, convert_dataset, detect_format, scan_dataset
from lumbardx.data.errors import InputError
from lumbardx.data.voc import write_voc
from lumbardx.data.yolo import write_data_yaml, write_yolo

NAMES = ["normal", "herniation", "slip"]


def _png(path: Path, size: tuple[int, int] = (120, 100)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size).save(path)
    return path


def _yolo_tree(root: Path) -> Path:
    """YOLO dataset: 3 labelled images (one in a sub-folder), 1 without label, 1 orphan label."""
    write_data_yaml(root / "data.yaml", NAMES)
    boxes = {
        "a b": [Box("normal", 10, 10, 50, 30), Box("slip", 60, 40, 100, 70)],
        "sub/c_": [Box("herniation", 0, 0, 120, 100)],
        "d.e": [],
    }
    for stem, bxs in boxes.items():
        _png(root / "images" / f"{stem}.png")
        ann = ImageAnnotation(filename=f"{stem}.png", width=120, height=100, boxes=bxs)
        write_yolo(ann, root / "labels" / f"{stem}.txt", NAMES)
    _png(root / "images" / "unlabelled.png")
    (root / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    return root


def _boxes(scan: ScanResult) -> dict[str, list[tuple[str, tuple[float, ...]]]]:
    """Image path below the image folder (no suffix) -> [(label, xyxy)]."""
    out = {}
    for rec in scan.records:
        assert scan.root is not None
        rel = rec.image_path.relative_to(scan.root / "images").with_suffix("").as_posix()
        if rec.annotation is not None:
            out[rel] = [(b.label, b.xyxy()) for b in rec.annotation.boxes]
    return out


def test_scan_yolo_tree(tmp_path: Path) -> None:
    root = _yolo_tree(tmp_path / "ds")
    assert detect_format(root) == "yolo"
    scan = scan_dataset(root)
    assert (scan.format, scan.class_names, scan.root) == ("yolo", NAMES, root)
    by_name = {r.image_path.name: r for r in scan.records}
    assert sorted(by_name) == ["a b.png", "c_.png", "d.e.png", "unlabelled.png"]
    assert by_name["unlabelled.png"].label_path is None
    assert by_name["unlabelled.png"].annotation is None
    assert by_name["c_.png"].label_path == root / "labels" / "sub" / "c_.txt"
    assert by_name["d.e.png"].annotation is not None and by_name["d.e.png"].annotation.boxes == []
    ann = by_name["a b.png"].annotation
    assert ann is not None and [b.label for b in ann.boxes] == ["normal", "slip"]
    assert ann.boxes[1].xyxy() == pytest.approx((60, 40, 100, 70), abs=1e-3)
    (problem,) = scan.problems
    assert problem.path == root / "labels" / "orphan.txt" and "no image" in problem.problem


def test_scan_reports_bad_labels_and_continues(tmp_path: Path) -> None:
    root = _yolo_tree(tmp_path / "ds")
    (root / "labels" / "a b.txt").write_text("0 0.5 zero 0.1 0.1\n")  # unparsable
    (root / "labels" / "d.e.txt").write_text("9 0.5 0.5 0.1 0.1\n0 1.5 0.5 0.2 0.2\n")  # invalid
    loose = scan_dataset(root, validate=False)
    assert {r.image_path.name for r in loose.records if r.annotation is None} == {
        "a b.png", "unlabelled.png"}
    assert any(p.path == root / "labels" / "a b.txt" and "non-numeric" in p.problem
               for p in loose.problems)
    strict = scan_dataset(root, validate=True)
    bad = [p for p in strict.problems if p.path == root / "labels" / "d.e.txt"]
    assert [p.problem.split(":")[0] for p in bad] == [
        "object 1 ('9')", "object 2 ('normal')", "object 2 ('normal')"]
    assert "unknown class" in bad[0].problem
    assert "x1=168 is outside the image width" in bad[1].problem and "x2=192" in bad[2].problem
    assert next(r for r in strict.records if r.image_path.name == "d.e.png").annotation is None
    assert next(r for r in strict.records if r.image_path.name == "c_.png").annotation is not None


def test_detect_voc_layouts_and_errors(tmp_path: Path) -> None:
    beside = tmp_path / "beside"
    _png(beside / "x.png")
    write_voc(ImageAnnotation("x.png", 120, 100, boxes=[Box("slip", 1, 2, 30, 40)]),
              beside / "x.xml")
    assert detect_format(beside) == "voc"
    (rec,) = scan_dataset(beside).records
    assert rec.label_path == beside / "x.xml" and rec.annotation is not None
    assert rec.annotation.boxes[0].xyxy() == (1.0, 2.0, 30.0, 40.0)
    # class names without classes.txt: order of first appearance, each name once
    _png(beside / "w.png")
    write_voc(ImageAnnotation("w.png", 120, 100, boxes=[
        Box("normal", 1, 2, 30, 40), Box("normal", 50, 2, 80, 40), Box("slip", 1, 50, 30, 90)]),
        beside / "w.xml")
    assert scan_dataset(beside).class_names == ["normal", "slip"]

    pascal = tmp_path / "pascal"
    _png(pascal / "JPEGImages" / "y.jpg")
    (pascal / "Annotations").mkdir()
    shutil.copy(beside / "x.xml", pascal / "Annotations" / "y.xml")
    (pascal / "Annotations" / "z.xml").write_text("<annotation>")
    scan = scan_dataset(pascal)
    assert scan.format == "voc" and scan.class_names == ["slip"]
    assert [p.path.name for p in scan.problems if p.path] == ["z.xml"]

    empty = tmp_path / "empty"
    _png(empty / "images" / "x.png")
    with pytest.raises(InputError, match="no annotations found"):
        detect_format(empty)
    with pytest.raises(InputError, match="not a folder"):
        scan_dataset(tmp_path / "absent")
    two = tmp_path / "two"
    for name in ("a.json", "b.json"):
        (two / "annotations").mkdir(parents=True, exist_ok=True)
        (two / "annotations" / name).write_text('{"images": [], "annotations": [], '
                                                '"categories": []}')
    with pytest.raises(InputError, match="several COCO files"):
        detect_format(two)


@pytest.mark.parametrize("first", ["voc", "coco"])
def test_yolo_round_trip_through_other_format(tmp_path: Path, first: str) -> None:
    src = _yolo_tree(tmp_path / "src")
    (src / "labels" / "orphan.txt").unlink()
    original = scan_dataset(src, validate=True)
    mid = convert_dataset(src, tmp_path / "mid", first)
    assert (mid.images, mid.labelled, mid.problems) == (4, 3, [])
    assert dict(mid.boxes_per_class) == {"normal": 1, "slip": 1, "herniation": 1}
    assert detect_format(tmp_path / "mid") == first
    mid_scan = scan_dataset(tmp_path / "mid", validate=True)
    assert mid_scan.class_names == NAMES  # class order kept (classes.txt / categories)
    unlabelled = next(r for r in mid_scan.records if r.image_path.name == "unlabelled.png")
    assert unlabelled.label_path is None  # "not annotated" stays distinct from "no findings"
    back = convert_dataset(tmp_path / "mid", tmp_path / "back", "yolo")
    assert back.problems == [] and (tmp_path / "back" / "labels" / "sub" / "c_.txt").is_file()
    again = scan_dataset(tmp_path / "back", validate=True)
    assert again.class_names == NAMES
    want, got = _boxes(original), _boxes(again)
    assert sorted(got) == sorted(want) == ["a b", "d.e", "sub/c_"]
    for key, boxes in want.items():
        assert [b[0] for b in got[key]] == [b[0] for b in boxes]
        for (_, g), (_, w) in zip(got[key], boxes, strict=True):
            assert g == pytest.approx(w, abs=1.0)
    leftovers = [p for p in (tmp_path / "back").rglob("*") if p.name.startswith(".")]
    assert leftovers == []  # atomic writes leave no temp files


def test_voc_to_coco_to_voc_keeps_integer_boxes(tmp_path: Path) -> None:
    src = tmp_path / "voc"
    boxes = [Box("normal", 3, 4, 50, 60, difficult=True), Box("herniation", 0, 0, 120, 100)]
    _png(src / "images" / "p.png")
    write_voc(ImageAnnotation("p.png", 120, 100, boxes=boxes), src / "annotations" / "p.xml")
    convert_dataset(src, tmp_path / "coco", "coco")
    doc = json.loads((tmp_path / "coco" / "annotations" / "instances.json").read_text())
    assert doc["images"][0]["file_name"] == "p.png"
    assert [a["bbox"] for a in doc["annotations"]] == [[3.0, 4.0, 47.0, 56.0], [0.0, 0.0, 120.0,
                                                                                 100.0]]
    assert [a["iscrowd"] for a in doc["annotations"]] == [1, 0]
    convert_dataset(tmp_path / "coco", tmp_path / "voc2", "voc")
    (rec,) = scan_dataset(tmp_path / "voc2").records
    assert rec.annotation is not None
    assert [(b.label, b.xyxy(), b.difficult) for b in rec.annotation.boxes] == [
        (b.label, b.xyxy(), b.difficult) for b in boxes]
    text = (tmp_path / "voc2" / "annotations" / "p.xml").read_text()
    assert "<xmin>4</xmin>" in text and "<folder>images</folder>" in text


def test_destination_rules_and_skipped_images(tmp_path: Path) -> None:
    src = _yolo_tree(tmp_path / "src")
    with pytest.raises(InputError, match="outside the source"):
        convert_dataset(src, src, "voc")
    with pytest.raises(InputError, match="outside the source"):
        convert_dataset(src, src / "out", "voc")
    with pytest.raises(InputError, match="unknown annotation format"):
        convert_dataset(src, tmp_path / "x", "csv")
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("user file")
    with pytest.raises(InputError, match="not empty"):
        convert_dataset(src, dst, "voc")
    (src / "labels" / "a b.txt").write_text("0 0.5 0.5 0.1\n")
    summary = convert_dataset(src, dst, "voc", overwrite=True)
    assert (dst / "keep.txt").read_text() == "user file"
    assert not (dst / "images" / "a b.png").exists()  # unusable annotation: image left out
    assert summary.images == 3 and summary.labelled == 2
    named = {p.path.name for p in summary.problems if p.path}
    assert named == {"orphan.txt", "a b.txt", "a b.png"}


def test_cli_convert(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(convert)
    runner = CliRunner()
    src = _yolo_tree(tmp_path / "src")
    result = runner.invoke(app, [str(src), str(tmp_path / "out"), "--to", "coco"])
    assert result.exit_code == 1  # the orphan label is a problem
    assert "4 images, 3 with labels, 3 boxes" in result.output
    assert f"{src / 'labels' / 'orphan.txt'}: label file has no image" in result.output
    assert "herniation" in result.output
    (src / "labels" / "orphan.txt").unlink()
    result = runner.invoke(app, [str(src), str(tmp_path / "out2"), "--to", "voc"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out2" / "annotations" / "a b.xml").is_file()
    result = runner.invoke(app, [str(src), str(tmp_path / "out2"), "--to", "voc"])
    assert result.exit_code == 1 and "not empty" in result.output
    result = runner.invoke(app, [str(src), str(tmp_path / "out2"), "--to", "voc", "--overwrite"])
    assert result.exit_code == 0
    result = runner.invoke(app, [str(src), str(tmp_path / "out3"), "--to", "csv"])
    assert result.exit_code == 2 and not (tmp_path / "out3").exists()


# -- the real development set ----------------------------------------------------------------


@pytest.mark.shared_data
def test_real_data_scan(yolospine_dev: Path) -> None:
    scan = scan_dataset(yolospine_dev, validate=True)
    assert scan.format == "yolo" and len(scan.records) == 832
    assert sum(len(r.annotation.boxes) for r in scan.records if r.annotation) == 7222
    assert scan.problems == []
    assert {"Normal IVD", "Spondylolisthesis", "Lumbar Disc Bulge (LDB)"} <= set(scan.class_names)


@pytest.mark.shared_data
def test_real_data_yolo_voc_yolo_within_one_pixel(yolospine_dev: Path, tmp_path: Path) -> None:
    src = tmp_path / "subset"
    every = sorted((yolospine_dev / "images").iterdir())
    spaced = [p for p in every if " " in p.name][:3]
    underscored = [p for p in every if p.stem.endswith("_")][:3]
    plain = [p for p in every if p not in spaced and p not in underscored][:4]
    images = spaced + underscored + plain  # stems with spaces and a trailing "_" included
    for image in images:
        for folder, suffix in (("images", image.suffix), ("labels", ".txt")):
            (src / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy(yolospine_dev / folder / (image.stem + suffix), src / folder)
    shutil.copy(yolospine_dev / "data.yaml", src)
    original = scan_dataset(src, validate=True)
    assert len(original.records) == 10 and original.problems == []
    assert convert_dataset(src, tmp_path / "voc", "voc").problems == []
    assert convert_dataset(tmp_path / "voc", tmp_path / "yolo", "yolo").problems == []
    again = scan_dataset(tmp_path / "yolo", validate=True)
    assert again.class_names == original.class_names
    want, got = _boxes(original), _boxes(again)
    assert sorted(got) == sorted(want) and sum(map(len, want.values())) > 50
    for key, boxes in want.items():
        assert [b[0] for b in got[key]] == [b[0] for b in boxes]
        for (_, g), (_, w) in zip(got[key], boxes, strict=True):
            assert g == pytest.approx(w, abs=1.0)
