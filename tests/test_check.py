"""``check_dataset`` and ``lumbardx data check``: every problem kind, named by file; exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import typer
from PIL import Image
from typer.testing import CliRunner

from lumbardx.cli.check import check
from lumbardx.data import check as kinds
from lumbardx.data.check import CheckReport, check_dataset

W, H = 64, 48
NAMES = ["Normal IVD", "Lumbar Disc Bulge (LDB)", "Spondylolisthesis"]


def write_png(path: Path, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (H, W), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="L").save(path)


def make_clean(root: Path, n: int = 4) -> Path:
    """YOLO dataset of ``n`` images (patients p0, p0, p1, p1, ...), two boxes each."""
    (root / "labels").mkdir(parents=True)
    (root / "data.yaml").write_text("names:\n" + "".join(f"  - {c}\n" for c in NAMES))
    rows = ["image,patient,sequence"]
    for i in range(n):
        name = f"img_{i:02d}.png"
        write_png(root / "images" / name, i)
        (root / "labels" / f"img_{i:02d}.txt").write_text(
            "0 0.25 0.25 0.2 0.2\n" + f"{1 + i % 2} 0.6 0.6 0.3 0.2\n"
        )
        rows.append(f"{name},p{i // 2},{'T1' if i % 2 == 0 else 'T2'}")
    (root / "patients.csv").write_text("\n".join(rows) + "\n")
    return root


def run_cli(*args: str) -> tuple[int, str]:
    app = typer.Typer()
    app.command()(check)
    result = CliRunner().invoke(app, list(args), terminal_width=200)
    return result.exit_code, result.output


def by_kind(report: CheckReport, kind: str) -> list[str]:
    return sorted(p.path.name for p in report.problems if p.kind == kind and p.path is not None)


def test_clean_dataset(tmp_path: Path) -> None:
    root = make_clean(tmp_path / "ds")
    report = check_dataset(root)
    assert report.problems == [] and report.ok
    assert (report.images, report.patients, report.boxes) == (4, 2, 8)
    assert report.boxes_per_class == {
        "Normal IVD": 4, "Lumbar Disc Bulge (LDB)": 2, "Spondylolisthesis": 2
    }
    assert report.image_sizes == {f"{W}x{H}": 4}
    assert report.sequences == {"T1": 2, "T2": 2}
    study = check_dataset(root, classes="study")
    assert study.boxes_per_class == {"normal": 4, "herniation": 2, "spondylolisthesis": 2}

    code, out = run_cli(str(root), "--json", str(tmp_path / "r.json"))
    assert code == 0, out
    assert "Boxes per class" in out and "Normal IVD" in out
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["images"] == 4 and saved["boxes"] == 8 and saved["problems"] == []


def test_every_problem_kind_is_found_and_named(tmp_path: Path) -> None:
    root = make_clean(tmp_path / "ds", n=10)
    images, labels = root / "images", root / "labels"
    # corrupt: a truncated PNG (valid header, data cut) and bytes that are no image at all
    data = (images / "img_00.png").read_bytes()
    (images / "img_00.png").write_bytes(data[: len(data) // 2])
    (images / "img_01.png").write_bytes(b"this is not an image" * 10)
    (labels / "img_02.txt").unlink()  # missing label
    (labels / "img_03.txt").write_text("")  # empty label
    (labels / "img_04.txt").write_text("0 0.95 0.5 0.3 0.2\n")  # x2 = 1.1 W: out of bounds
    (labels / "img_05.txt").write_text("0 0.5 0.5 0.0 0.2\n")  # zero width
    (labels / "img_06.txt").write_text("7 0.5 0.5 0.2 0.2\n")  # class index 7 of 3
    shutil.copy(images / "img_07.png", images / "img_08.png")  # p3 copy of p4's image bytes
    (labels / "orphan.txt").write_text("0 0.5 0.5 0.2 0.2\n")  # label without image
    write_png(images / "img_10.png", 10)  # not in patients.csv
    (labels / "img_10.txt").write_text("0 0.5 0.5 0.2 0.2\n")

    report = check_dataset(root)
    assert by_kind(report, kinds.UNREADABLE_IMAGE) == ["img_00.png", "img_01.png"]
    assert by_kind(report, kinds.MISSING_LABEL) == ["img_02.png"]
    assert by_kind(report, kinds.EMPTY_LABEL) == ["img_03.txt"]
    assert by_kind(report, kinds.OUT_OF_BOUNDS) == ["img_04.txt"]
    assert by_kind(report, kinds.ZERO_AREA) == ["img_05.txt"]
    assert by_kind(report, kinds.UNKNOWN_CLASS) == ["img_06.txt"]
    assert by_kind(report, kinds.DUPLICATE_IMAGE) == ["img_08.png"]
    assert by_kind(report, kinds.LABEL_WITHOUT_IMAGE) == ["orphan.txt"]
    assert by_kind(report, kinds.NOT_IN_PATIENTS) == ["img_10.png"]
    duplicate = next(p for p in report.problems if p.kind == kinds.DUPLICATE_IMAGE)
    assert duplicate.severity == "error" and "img_07.png" in duplicate.message
    empty = next(p for p in report.problems if p.kind == kinds.EMPTY_LABEL)
    assert empty.severity == "warning"
    assert report.images == 11 and not report.ok

    code, out = run_cli(str(root), "--json", str(tmp_path / "r.json"))
    assert code == 1
    for name in ("img_00.png", "img_02.png", "img_04.txt", "orphan.txt", "img_10.png"):
        assert name in out
    saved = json.loads((tmp_path / "r.json").read_text())
    assert {p["kind"] for p in saved["problems"]} >= {kinds.ZERO_AREA, kinds.DUPLICATE_IMAGE}


def test_duplicate_within_one_patient_is_a_warning(tmp_path: Path) -> None:
    root = make_clean(tmp_path / "ds")
    shutil.copy(root / "images" / "img_00.png", root / "images" / "img_01.png")  # both p0
    report = check_dataset(root)
    (dup,) = report.problems
    assert dup.kind == kinds.DUPLICATE_IMAGE and dup.severity == "warning"
    assert "same patient 'p0'" in dup.message and "sequences T1 and T2 differ" in dup.message


def test_duplicate_with_other_boxes_says_so(tmp_path: Path) -> None:
    root = make_clean(tmp_path / "ds")
    shutil.copy(root / "images" / "img_00.png", root / "images" / "img_01.png")
    shutil.copy(root / "labels" / "img_00.txt", root / "labels" / "img_01.txt")
    (dup,) = check_dataset(root).problems
    assert dup.kind == kinds.DUPLICATE_IMAGE and "boxes differ" not in dup.message
    # redrawn a little (IoU > 0.5): they agree
    (root / "labels" / "img_01.txt").write_text("0 0.26 0.25 0.2 0.2\n1 0.6 0.61 0.3 0.2\n")
    (dup,) = check_dataset(root).problems
    assert "boxes differ" not in dup.message
    # one box moved elsewhere, one added
    (root / "labels" / "img_01.txt").write_text(
        "0 0.25 0.25 0.2 0.2\n1 0.2 0.8 0.3 0.2\n2 0.8 0.8 0.1 0.1\n")
    (dup,) = check_dataset(root).problems
    names = NAMES
    assert (f"boxes differ, without a match at IoU 0.5: first 1 {names[1]}; second "
            f"1 {names[1]}, 1 {names[2]}" in dup.message), dup.message


def test_warnings_fail_unless_allowed(tmp_path: Path) -> None:
    root = make_clean(tmp_path / "ds")
    (root / "labels" / "img_01.txt").write_text("")
    code, out = run_cli(str(root))
    assert code == 1 and "img_01.txt" in out
    assert run_cli(str(root), "--allow-warnings")[0] == 0


def test_voc_size_mismatch_and_no_patients(tmp_path: Path) -> None:
    root = tmp_path / "voc"
    write_png(root / "a_1.png", 1)
    (root / "a_1.xml").write_text(
        "<annotation><filename>a_1.png</filename><size><width>640</width><height>480</height>"
        "<depth>1</depth></size><object><name>Normal IVD</name><bndbox><xmin>1</xmin>"
        "<ymin>1</ymin><xmax>10</xmax><ymax>10</ymax></bndbox></object></annotation>"
    )
    report = check_dataset(root)
    assert by_kind(report, kinds.SIZE_MISMATCH) == ["a_1.xml"]
    assert any(p.kind == kinds.NO_PATIENTS for p in report.problems)
    assert report.patient_source == "none"
    grouped = check_dataset(root, patient_pattern=r"_(?P<patient>\d)\.")
    assert grouped.patient_source == "pattern" and grouped.patients == 1


def test_coco_problems_name_the_image(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    for i in range(3):
        write_png(root / "images" / f"c{i}.png", i)
    coco = {
        "images": [{"id": i + 1, "file_name": f"c{i}.png", "width": W, "height": H} for i in (0, 1)],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [50, 10, 30, 10],
                         "area": 300, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "Normal IVD"}],
    }
    (root / "annotations").mkdir()
    (root / "annotations" / "instances.json").write_text(json.dumps(coco))
    report = check_dataset(root)
    assert report.format == "coco"
    assert by_kind(report, kinds.OUT_OF_BOUNDS) == ["c0.png"]  # x2 = 80 > 64
    assert by_kind(report, kinds.EMPTY_LABEL) == ["c1.png"]
    assert by_kind(report, kinds.MISSING_LABEL) == ["c2.png"]
    assert all("instances.json" in p.message for p in report.problems if p.kind == kinds.EMPTY_LABEL)


def test_coco_structural_faults_are_each_listed(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    for i in range(2):
        write_png(root / "images" / f"c{i}.png", i)
    coco = {
        "images": [{"id": i + 1, "file_name": f"c{i}.png", "width": W, "height": H}
                   for i in (0, 1)],
        "annotations": [{"id": 1, "image_id": 5, "category_id": 1, "bbox": [5, 5, 10, 10]},
                        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10]}],
        "categories": [{"id": 1, "name": "Normal IVD"}],
    }
    (root / "annotations").mkdir()
    (root / "annotations" / "instances.json").write_text(json.dumps(coco))
    report = check_dataset(root)
    rows = [p for p in report.problems if p.kind == kinds.UNUSABLE_LABEL]
    assert [p.message for p in rows] == [
        "annotations[0]: image_id 5 is not in 'images'",
        "annotations[1]: bbox must be 4 numbers [x, y, w, h], got [5, 5, 10]"]
    assert all(p.path is not None and p.path.name == "instances.json" for p in rows)


def test_exif_oriented_image_is_a_warning(tmp_path: Path) -> None:
    root = make_clean(tmp_path / "ds")
    img = Image.open(root / "images" / "img_01.png")
    exif = img.getexif()
    exif[0x0112] = 8
    img.save(root / "images" / "img_01.png", exif=exif)
    report = check_dataset(root)
    assert by_kind(report, kinds.EXIF_ROTATED) == ["img_01.png"]
    (problem,) = [p for p in report.problems if p.kind == kinds.EXIF_ROTATED]
    assert problem.severity == "warning" and "rotated 90 degrees counter-clockwise" in \
        problem.message
    assert report.ok


def test_cli_lists_every_fault_of_a_patients_table(tmp_path: Path) -> None:
    root = make_clean(tmp_path / "ds")
    (root / "patients.csv").write_text("image,patient\nimg_00.png,p0\nimg_00.png,p9\n"
                                       "img_01.png,\n")
    code, out = run_cli(str(root))
    assert code == 1 and "patients.csv" in out and "(and 1 more problem in this file)" in out
    listed = [line for line in out.splitlines() if line.startswith("  - ")]
    assert [line.split(":")[0] for line in listed] == ["  - line 3", "  - line 4"]


def test_not_a_dataset_exits_1(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, out = run_cli(str(tmp_path / "empty"))
    assert code == 1 and "no annotations found" in out


def test_real_data(yolospine_dev: Path) -> None:
    report = check_dataset(yolospine_dev)
    assert (report.images, report.patients, report.boxes) == (832, 412, 7222)
    assert report.image_sizes == {"384x384": 832}
    assert report.ok  # the identical T1 copies belong to one patient: warnings only
    assert {p.kind for p in report.problems} <= {kinds.DUPLICATE_IMAGE}
    code, out = run_cli(str(yolospine_dev), "--classes", "study")
    assert code == 1 and "3,301" in out and "1,767" in out  # duplicates are reported
    assert "T1_0116_.png" in out
    assert run_cli(str(yolospine_dev), "--allow-warnings")[0] == 0
