"""LumbarDataset over YOLO, VOC and COCO folders; class mappings; patient ids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lumbardx.data.boxes import Sample
from lumbardx.data.dataset import LumbarDataset
from lumbardx.data.errors import InputError
from lumbardx.data.patients import assign_patients, read_patients_csv

W, H = 64, 48
YOLO_NAMES = [
    "Degenerative Disc Disease (DDD)",
    "Normal IVD",
    "Spondylolisthesis",
    "Lumbar Disc Bulge (LDB)",
    "Thoracic Disc Bulge (TDB)",
]
# file name -> (patient, sequence, boxes as (source class, x1, y1, x2, y2) in pixels)
IMAGES: dict[str, tuple[str, str, list[tuple[str, int, int, int, int]]]] = {
    "T1_0001_S8.png": (
        "0001", "T1", [("Normal IVD", 8, 4, 24, 12), ("Spondylolisthesis", 10, 20, 40, 44)]
    ),
    "T2_0001_S8.png": (
        "0001", "T2", [("Normal IVD", 8, 4, 24, 12), ("Lumbar Disc Bulge (LDB)", 30, 10, 46, 18)]
    ),
    "T1_0002_S7.png": (
        "0002",
        "T1",
        [
            ("Degenerative Disc Disease (DDD)", 0, 0, 16, 8),
            ("Thoracic Disc Bulge (TDB)", 48, 40, 64, 48),
        ],
    ),
    "T2_0003_S9.png": ("0003", "T2", [("Normal IVD", 2, 2, 10, 10)]),
}


def write_png(path: Path, seed: int) -> np.ndarray:
    """A random gray ``uint8 [H, W]`` PNG (distinct content per seed)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (H, W), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="L").save(path)
    return pixels


def write_patients(root: Path, skip: str | None = None) -> None:
    rows = ["image,patient,sequence"]
    rows += [f"{name},{p},{s}" for name, (p, s, _) in IMAGES.items() if name != skip]
    (root / "patients.csv").write_text("\n".join(rows) + "\n")


def make_yolo(root: Path, patients: bool = True) -> Path:
    names_yaml = "".join(f"  - {n}\n" for n in YOLO_NAMES)
    (root / "labels").mkdir(parents=True)
    (root / "data.yaml").write_text(f"path: .\nnames:\n{names_yaml}nc: {len(YOLO_NAMES)}\n")
    for seed, (name, (_, _, boxes)) in enumerate(IMAGES.items()):
        write_png(root / "images" / name, seed)
        lines = [
            f"{YOLO_NAMES.index(c)} {(x1 + x2) / 2 / W:.6f} {(y1 + y2) / 2 / H:.6f} "
            f"{(x2 - x1) / W:.6f} {(y2 - y1) / H:.6f}"
            for c, x1, y1, x2, y2 in boxes
        ]
        (root / "labels" / name.replace(".png", ".txt")).write_text("\n".join(lines) + "\n")
    if patients:
        write_patients(root)
    return root


def make_voc(root: Path) -> Path:
    """LabelImg layout: 1-based inclusive pixel indices (xmin = x1 + 1, xmax = x2)."""
    (root / "annotations").mkdir(parents=True)
    for seed, (name, (_, _, boxes)) in enumerate(IMAGES.items()):
        write_png(root / "images" / name, seed)
        objects = "".join(
            f"<object><name>{c}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>0</difficult><bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin>"
            f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
            for c, x1, y1, x2, y2 in boxes
        )
        xml = (
            f"<annotation><folder>images</folder><filename>{name}</filename>"
            f"<size><width>{W}</width><height>{H}</height><depth>1</depth></size>"
            f"<segmented>0</segmented>{objects}</annotation>"
        )
        (root / "annotations" / name.replace(".png", ".xml")).write_text(xml)
    write_patients(root)
    return root


def make_coco(root: Path) -> Path:
    images, annotations = [], []
    for seed, (name, (_, _, boxes)) in enumerate(IMAGES.items()):
        write_png(root / "images" / name, seed)
        images.append({"id": seed + 1, "file_name": name, "width": W, "height": H})
        for c, x1, y1, x2, y2 in boxes:
            annotations.append({
                "id": len(annotations) + 1, "image_id": seed + 1,
                "category_id": YOLO_NAMES.index(c) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            })
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(YOLO_NAMES)]
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    write_patients(root)
    return root


def expected(mapping: dict[str, str]) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    return {
        name: [(mapping[c], tuple(xy)) for c, *xy in boxes if c in mapping]
        for name, (_, _, boxes) in IMAGES.items()
    }


STUDY = {
    "Normal IVD": "normal",
    "Lumbar Disc Bulge (LDB)": "herniation",
    "Thoracic Disc Bulge (TDB)": "herniation",
    "Spondylolisthesis": "spondylolisthesis",
}


@pytest.mark.parametrize("make", [make_yolo, make_voc, make_coco])
def test_every_format_loads_with_study_mapping(tmp_path: Path, make) -> None:
    ds = LumbarDataset(make(tmp_path / "ds"), classes="study")
    assert ds.class_names == ["normal", "herniation", "spondylolisthesis"]
    assert len(ds) == 4 and not ds.problems
    want = expected(STUDY)
    for i, rec in enumerate(ds.records):
        name = Path(rec.image_id).name
        assert rec.image_id == f"images/{name}"
        assert rec.patient == IMAGES[name][0] and rec.sequence == IMAGES[name][1]
        got = [
            (ds.class_names[lab], tuple(np.round(box).astype(int)))
            for box, lab in zip(rec.boxes, rec.labels)
        ]
        assert got == want[name]
        wanted_xyxy = np.asarray([xy for _, xy in want[name]], dtype=float).reshape(-1, 4)
        np.testing.assert_allclose(rec.boxes, wanted_xyxy, atol=1e-3)
        sample = ds[i]
        assert isinstance(sample, Sample)
        assert sample.image.shape == (H, W) and sample.image.dtype == np.uint8
        assert sample.boxes.dtype == np.float32 and sample.boxes.shape == (len(want[name]), 4)
        assert sample.labels.dtype == np.int64 and sample.patient == IMAGES[name][0]
        assert sample.image_id == rec.image_id and sample.pixel_spacing is None
    assert ds.class_counts() == {"normal": 3, "herniation": 2, "spondylolisthesis": 1}
    assert ds.dropped == {"Degenerative Disc Disease (DDD)": 1}
    assert ds.patients() == ["0001", "0002", "0003"]


def test_image_pixels_are_the_file(tmp_path: Path) -> None:
    root = make_yolo(tmp_path / "ds")
    ds = LumbarDataset(root, cache=True)
    index = next(i for i, r in enumerate(ds.records) if r.image_id.endswith("T2_0003_S9.png"))
    pixels = np.asarray(Image.open(root / "images" / "T2_0003_S9.png"))
    np.testing.assert_array_equal(ds[index].image, pixels)
    (root / "images" / "T2_0003_S9.png").unlink()  # cached: still served from memory
    np.testing.assert_array_equal(ds[index].image, pixels)


@pytest.mark.parametrize("make", [make_yolo, make_voc, make_coco])
def test_all_mapping_keeps_every_source_class(tmp_path: Path, make) -> None:
    ds = LumbarDataset(make(tmp_path / "ds"), classes="all")
    assert set(ds.class_names) == set(YOLO_NAMES)
    counts = ds.class_counts()
    assert counts["Normal IVD"] == 3 and counts["Degenerative Disc Disease (DDD)"] == 1
    assert sum(counts.values()) == sum(len(b) for _, _, b in IMAGES.values())
    assert not ds.dropped


def test_study_ddd_mapping_counts_a_disc_labelled_only_ddd_as_normal(tmp_path: Path) -> None:
    from lumbardx.data.boxes import Box, ImageAnnotation
    from lumbardx.data.classes import build_class_map
    from lumbardx.data.dataset import map_annotation

    ds = LumbarDataset(make_yolo(tmp_path / "ds"), classes="study+ddd")
    assert ds.class_names == ["normal", "herniation", "spondylolisthesis"]
    # the one DDD box of the set overlaps no study-class box: a normal disc
    assert ds.class_counts()["normal"] == 4 and not ds.dropped["Degenerative Disc Disease (DDD)"]
    study = LumbarDataset(make_yolo(tmp_path / "ds2"), classes="study")
    assert study.class_counts()["normal"] == 3

    # a DDD box on a disc that has a study-class box is the same disc: dropped
    cmap = build_class_map("study+ddd")
    ann = ImageAnnotation("x.png", 100, 100, 1, [
        Box("Lumbar Disc Bulge (LDB)", 10, 10, 50, 30), Box("DDD", 12, 11, 50, 31),
        Box("degenerative disc disease", 10, 60, 50, 80),
        Box("Spinal Stenosis (SS)", 55, 10, 70, 30)])
    boxes, labels, dropped = map_annotation(ann, cmap)
    assert labels.tolist() == [1, 0] and boxes[1].tolist() == [10, 60, 50, 80]
    assert dropped == {"DDD": 1, "Spinal Stenosis (SS)": 1}
    with pytest.raises(ValueError, match="study\\+ddd"):
        build_class_map("study+ss")


def test_study_ddd_ignore_mapping_makes_a_ddd_only_disc_an_ignored_region(
        tmp_path: Path) -> None:
    from lumbardx.data.boxes import Box, ImageAnnotation
    from lumbardx.data.check import check_dataset
    from lumbardx.data.classes import IGNORE_LABEL, IGNORED, build_class_map
    from lumbardx.data.dataset import map_annotation

    root = make_yolo(tmp_path / "ds")
    ds = LumbarDataset(root, classes="study+ddd-ignore")
    study = LumbarDataset(root, classes="study")
    assert ds.class_counts() == study.class_counts()  # the class boxes are the study's
    held = [(r, s) for r, s in zip(ds.records, study.records) if len(r.ignore)]
    assert len(held) == 1 and held[0][0].ignore.shape == (1, 4)
    np.testing.assert_array_equal(held[0][0].boxes, held[0][1].boxes)
    index = ds.records.index(held[0][0])
    np.testing.assert_array_equal(ds[index].ignore, held[0][0].ignore)
    assert all(ds[i].ignore is None for i in range(len(ds)) if i != index)

    # as study+ddd: only a DDD box that no study-class box overlaps is the region
    ann = ImageAnnotation("x.png", 100, 100, 1, [
        Box("Lumbar Disc Bulge (LDB)", 10, 10, 50, 30), Box("DDD", 12, 11, 50, 31),
        Box("degenerative disc disease", 10, 60, 50, 80)])
    boxes, labels, dropped = map_annotation(ann, build_class_map("study+ddd-ignore"))
    assert labels.tolist() == [1, IGNORE_LABEL] and boxes[1].tolist() == [10, 60, 50, 80]
    assert dropped == {"DDD": 1}
    report = check_dataset(root, classes="study+ddd-ignore")
    assert report.boxes_per_class[IGNORED] == 1


def test_explicit_mapping(tmp_path: Path) -> None:
    mapping = {"Normal IVD": "disc", "Spondylolisthesis": "slip"}
    ds = LumbarDataset(make_yolo(tmp_path / "ds"), classes=mapping)
    assert ds.class_names == ["disc", "slip"]
    assert ds.class_counts() == {"disc": 3, "slip": 1}


def test_subset_is_a_view(tmp_path: Path) -> None:
    ds = LumbarDataset(make_yolo(tmp_path / "ds"))
    sub = ds.subset([3, 0])
    assert len(sub) == 2 and len(ds) == 4
    assert [r.image_id for r in sub.records] == [ds.records[3].image_id, ds.records[0].image_id]
    assert sub.class_names == ds.class_names
    assert sub[0].image_id == ds.records[3].image_id
    assert sum(sub.class_counts().values()) == len(ds.records[3].labels) + len(ds.records[0].labels)


def test_patients_from_regex(tmp_path: Path) -> None:
    root = make_yolo(tmp_path / "ds", patients=False)
    ds = LumbarDataset(root, patient_pattern=r"^(?P<sequence>T\d)_(?P<patient>\d{4})_")
    assert [(Path(r.image_id).name, r.patient, r.sequence) for r in ds.records] == [
        (n, p, s) for n, (p, s, _) in sorted(IMAGES.items())
    ]
    assert ds.patient_source == "pattern" and not ds.problems


def test_regex_without_patient_group_is_refused(tmp_path: Path) -> None:
    root = make_yolo(tmp_path / "ds", patients=False)
    with pytest.raises(InputError, match="patient"):
        LumbarDataset(root, patient_pattern=r"_(\d{4})_")


def test_regex_miss_is_a_problem(tmp_path: Path) -> None:
    root = make_yolo(tmp_path / "ds", patients=False)
    ds = LumbarDataset(root, patient_pattern=r"^T1_(?P<patient>\d{4})_")
    missed = sorted(p.path.name for p in ds.problems)
    assert missed == ["T2_0001_S8.png", "T2_0003_S9.png"]
    assert all("does not match the patient pattern" in p.problem for p in ds.problems)


def test_no_patient_info_warns_and_uses_one_patient_per_image(tmp_path: Path) -> None:
    root = make_yolo(tmp_path / "ds", patients=False)
    with pytest.warns(UserWarning, match="each image is treated as its own patient"):
        ds = LumbarDataset(root)
    assert ds.patient_source == "none"
    assert ds.patients() == [r.image_id for r in ds.records] and len(ds.patients()) == 4


def test_image_missing_from_csv_is_a_problem(tmp_path: Path) -> None:
    root = make_yolo(tmp_path / "ds", patients=False)
    write_patients(root, skip="T1_0002_S7.png")
    ds = LumbarDataset(root)
    assert len(ds) == 4
    (problem,) = ds.problems
    assert problem.path.name == "T1_0002_S7.png" and "missing from patients.csv" in problem.problem


def test_explicit_csv_elsewhere(tmp_path: Path) -> None:
    root = make_yolo(tmp_path / "ds", patients=False)
    table = tmp_path / "meta" / "who.csv"
    table.parent.mkdir()
    rows = "".join(f"images/{n},P{p}\n" for n, (p, _, _) in IMAGES.items())
    table.write_text("Image,Patient\n" + rows)
    ds = LumbarDataset(root, patients=table)
    assert ds.patients() == ["P0001", "P0002", "P0003"]
    assert all(r.sequence is None for r in ds.records)


def test_bad_patients_tables(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("file,subject\na.png,1\n")
    with pytest.raises(InputError, match="lacks column") as err:
        read_patients_csv(bad)
    assert err.value.path == bad
    bad.write_text("image,patient\na.png,1\na.png,2\n")
    with pytest.raises(InputError, match="two patients"):
        read_patients_csv(bad)
    bad.write_text("image,patient\na.png,1\na.png,2\nb.png,\nc.png,3\n,4\n")
    with pytest.raises(InputError) as err:  # every faulty row at once
        read_patients_csv(bad)
    assert err.value.problems == ["line 3: image 'a.png' is listed with two patients ('1' and "
                                  "'2')", "line 4: empty image or patient",
                                  "line 6: empty image or patient"]
    out = assign_patients(["images/a.png", "images/b.png"], tmp_path, patients=None,
                          patient_pattern=r"(?P<patient>[ab])")
    assert out.patients == ["a", "b"] and out.source == "pattern"


def test_unusable_images_are_left_out_and_reported(tmp_path: Path) -> None:
    root = make_yolo(tmp_path / "ds")
    (root / "labels" / "T2_0003_S9.txt").unlink()
    (root / "labels" / "T1_0002_S7.txt").write_text("1 0.5 0.5 0.1 0.1\n9 0.5 0.5 0.1 0.1\n")
    with pytest.warns(UserWarning, match="2 image"):
        ds = LumbarDataset(root, classes="all")
    assert len(ds) == 2
    named = {p.path.name for p in ds.problems}
    assert {"T2_0003_S9.png", "T1_0002_S7.txt"} <= named


def test_size_mismatch_raises_on_access(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "ds")
    xml = root / "annotations" / "T2_0003_S9.xml"
    xml.write_text(xml.read_text().replace(f"<width>{W}</width>", "<width>128</width>"))
    ds = LumbarDataset(root)
    index = next(i for i, r in enumerate(ds.records) if r.image_id.endswith("T2_0003_S9.png"))
    with pytest.raises(InputError, match="128x48"):
        ds[index]


def test_real_data(yolospine_dev: Path) -> None:
    ds = LumbarDataset(yolospine_dev, classes="study")
    assert len(ds) == 832 and len(ds.patients()) == 412 and not ds.problems
    assert ds.class_counts() == {"normal": 3301, "herniation": 1631 + 136, "spondylolisthesis": 98}
    assert ds.sequences() == {"T1": 413, "T2": 413, "X1": 6}
    every = LumbarDataset(yolospine_dev, classes="all")
    assert sum(every.class_counts().values()) == 7222
    sample = ds[0]
    assert sample.image.shape == (384, 384) and sample.boxes.shape[1] == 4
    assert np.all(sample.boxes[:, 2:] > sample.boxes[:, :2])
    assert np.all((sample.boxes >= -1) & (sample.boxes <= 385))
