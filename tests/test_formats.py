"""Pascal VOC, YOLO txt and COCO JSON readers/writers, and annotation validation."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from lumbardx.data.boxes import Box, ImageAnnotation
from lumbardx.data.coco import read_coco, to_coco_dict, write_coco
from lumbardx.data.errors import AnnotationError, ImageReadError
from lumbardx.data.validate import check_annotation, validate_annotation
from lumbardx.data.voc import format_voc, read_voc, write_voc
from lumbardx.data.yolo import (
    format_yolo,
    read_data_yaml,
    read_image_size,
    read_yolo,
    write_data_yaml,
    write_yolo,
)

# Literal text as LabelImg 1.8 saves it (tabs, no XML declaration, trailing newline).
LABELIMG_XML = """<annotation verified="yes">
\t<folder>images</folder>
\t<filename>case_001.png</filename>
\t<path>/data/spine/images/case_001.png</path>
\t<source>
\t\t<database>Unknown</database>
\t</source>
\t<size>
\t\t<width>384</width>
\t\t<height>320</height>
\t\t<depth>1</depth>
\t</size>
\t<segmented>0</segmented>
\t<object>
\t\t<name>herniation</name>
\t\t<pose>Unspecified</pose>
\t\t<truncated>1</truncated>
\t\t<difficult>0</difficult>
\t\t<bndbox>
\t\t\t<xmin>1</xmin>
\t\t\t<ymin>1</ymin>
\t\t\t<xmax>10</xmax>
\t\t\t<ymax>20</ymax>
\t\t</bndbox>
\t</object>
\t<object>
\t\t<name>normal</name>
\t\t<pose>Unspecified</pose>
\t\t<truncated>0</truncated>
\t\t<difficult>1</difficult>
\t\t<bndbox>
\t\t\t<xmin>101</xmin>
\t\t\t<ymin>151</ymin>
\t\t\t<xmax>180</xmax>
\t\t\t<ymax>175</ymax>
\t\t</bndbox>
\t</object>
</annotation>
"""


def _xml(tmp_path: Path, text: str, name: str = "a.xml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _ann(*boxes: Box, width: int = 384, height: int = 320) -> ImageAnnotation:
    return ImageAnnotation(filename="x.png", width=width, height=height, boxes=list(boxes))


# -- Pascal VOC --------------------------------------------------------------------------------


def test_labelimg_xml_parses_with_one_based_inclusive_convention(tmp_path: Path) -> None:
    ann = read_voc(_xml(tmp_path, LABELIMG_XML))
    assert (ann.filename, ann.width, ann.height, ann.depth) == ("case_001.png", 384, 320, 1)
    assert (ann.folder, ann.path, ann.database) == ("images", "/data/spine/images/case_001.png",
                                                     "Unknown")
    assert ann.extra["verified"] is True
    first, second = ann.boxes
    # xmin=1 is the first pixel column: x1 = 0; xmax=10 (inclusive) -> x2 = 10, width 10 px.
    assert (first.label, first.xyxy()) == ("herniation", (0.0, 0.0, 10.0, 20.0))
    assert (first.width, first.truncated, first.difficult) == (10.0, True, False)
    assert (second.label, second.xyxy()) == ("normal", (100.0, 150.0, 180.0, 175.0))
    assert (second.truncated, second.difficult) == (False, True)


def test_voc_writer_reproduces_labelimg_text_exactly(tmp_path: Path) -> None:
    ann = read_voc(_xml(tmp_path, LABELIMG_XML))
    assert format_voc(ann) == LABELIMG_XML
    out = tmp_path / "out" / "b.xml"
    write_voc(ann, out)
    assert out.read_text(encoding="utf-8") == LABELIMG_XML
    assert [p.name for p in out.parent.iterdir()] == ["b.xml"]  # no temp file left


def test_voc_round_trip_integer_coordinates_exact(tmp_path: Path) -> None:
    boxes = [Box("normal", 0, 0, 384, 320), Box("herniation", 12, 30, 57, 44, pose="Left")]
    path = tmp_path / "r.xml"
    write_voc(_ann(*boxes), path)
    back = read_voc(path)
    assert [(b.label, b.xyxy(), b.pose) for b in back.boxes] == [
        ("normal", (0.0, 0.0, 384.0, 320.0), "Unspecified"),
        ("herniation", (12.0, 30.0, 57.0, 44.0), "Left"),
    ]
    assert "<xmin>13</xmin>" in path.read_text() and "<xmax>57</xmax>" in path.read_text()


def test_writers_cut_boxes_at_the_image_edge() -> None:
    ann = _ann(Box("normal", -0.6, -0.2, 384.7, 100), width=384, height=320)
    assert "<xmin>1</xmin>" in format_voc(ann) and "<xmax>384</xmax>" in format_voc(ann)
    assert format_yolo(ann, ["normal"]) == "0 0.500000 0.156250 1.000000 0.312500\n"


def test_voc_float_coordinates_and_missing_optional_fields(tmp_path: Path) -> None:
    text = (
        "<annotation><filename>f.jpg</filename><size><width>100.0</width>"
        "<height>80</height></size><object><name>slip</name><bndbox><xmin>12.0</xmin>"
        "<ymin>5.5</ymin><xmax>40.0</xmax><ymax>30</ymax></bndbox></object></annotation>"
    )
    ann = read_voc(_xml(tmp_path, text))
    (box,) = ann.boxes
    assert box.xyxy() == (11.0, 4.5, 40.0, 30.0)
    assert (box.pose, box.truncated, box.difficult) == ("Unspecified", False, False)
    header = (ann.depth, ann.path, ann.folder, ann.database, ann.segmented)
    assert header == (1, "", "", "Unknown", 0)


@pytest.mark.parametrize(
    ("remove", "field"),
    [
        ("<filename>case_001.png</filename>", "filename"),
        ("<width>384</width>", "width"),
        ("<height>320</height>", "height"),
        ("<name>herniation</name>", "name"),
        ("<xmin>101</xmin>", "xmin"),
        ("<ymax>20</ymax>", "ymax"),
    ],
)
def test_voc_missing_required_field_names_file_and_field(
    tmp_path: Path, remove: str, field: str
) -> None:
    path = _xml(tmp_path, LABELIMG_XML.replace(remove, ""), "missing.xml")
    with pytest.raises(AnnotationError, match=f"<{field}>") as info:
        read_voc(path)
    assert info.value.path == path and "missing.xml" in str(info.value)


def test_voc_missing_size_and_bndbox(tmp_path: Path) -> None:
    no_size = LABELIMG_XML.split("\t<size>")[0] + LABELIMG_XML.split("</size>\n")[1]
    with pytest.raises(AnnotationError, match="<size>"):
        read_voc(_xml(tmp_path, no_size))
    no_box = "<annotation><filename>f</filename><size><width>9</width><height>9</height></size>" \
             "<object><name>a</name></object></annotation>"
    with pytest.raises(AnnotationError, match="object 1: missing required field <bndbox>"):
        read_voc(_xml(tmp_path, no_box))


def test_voc_malformed_and_wrong_root(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="malformed XML"):
        read_voc(_xml(tmp_path, LABELIMG_XML[:-20]))
    with pytest.raises(AnnotationError, match="expected <annotation>"):
        read_voc(_xml(tmp_path, "<html><body/></html>"))
    with pytest.raises(AnnotationError, match="not a number"):
        read_voc(_xml(tmp_path, LABELIMG_XML.replace("<xmin>101<", "<xmin>abc<")))
    with pytest.raises(AnnotationError, match="cannot read"):
        read_voc(tmp_path / "absent.xml")


@pytest.mark.parametrize(
    "header",
    [
        '<!DOCTYPE annotation [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>',
        '<!DOCTYPE annotation [<!ENTITY x SYSTEM "file:///etc/passwd">]>',
        "<!DOCTYPE annotation>",
    ],
)
def test_voc_doctype_and_entities_rejected(tmp_path: Path, header: str) -> None:
    text = header + "\n" + LABELIMG_XML.replace("<database>Unknown", "<database>&b;")
    with pytest.raises(AnnotationError, match="DOCTYPE or entity"):
        read_voc(_xml(tmp_path, text))


def test_voc_swapped_corners_and_out_of_bounds(tmp_path: Path) -> None:
    swapped = _xml(tmp_path, LABELIMG_XML.replace("<xmax>180<", "<xmax>50<"), "swap.xml")
    with pytest.raises(AnnotationError, match=r"object 2 \('normal'\): xmax=50 < xmin=101"):
        read_voc(swapped)
    ann = read_voc(swapped, validate=False)  # parsed anyway, for a checker
    assert ann.boxes[1].xyxy() == (100.0, 150.0, 50.0, 175.0)
    assert any("x2=50 < x1=100" in p for p in validate_annotation(ann, None, swapped))
    outside = _xml(tmp_path, LABELIMG_XML.replace("<ymax>175<", "<ymax>330<"), "out.xml")
    with pytest.raises(AnnotationError, match=r"out.xml: object 2 .*y2=330 is outside"):
        read_voc(outside)
    with pytest.raises(AnnotationError, match="unknown class"):
        read_voc(_xml(tmp_path, LABELIMG_XML), class_names=["normal"])


# -- validation ----------------------------------------------------------------------------------


def test_validate_lists_every_problem_with_file_and_object() -> None:
    ann = _ann(
        Box("normal", 10, 10, 20, 20),  # fine
        Box("normal", 10, 10, 10, 20),  # zero width
        Box("tumour", 5, 5, 9, 9),  # unknown class
        Box("normal", math.nan, 1, 5, 5),  # NaN
        Box("normal", 300, 10, 385.5, 20),  # beyond width 384 by more than 1 px
        Box("normal", -0.8, 0, 384.9, 320),  # within the 1 px tolerance
    )
    problems = validate_annotation(ann, ["normal"], Path("labels/x.txt"))
    assert len(problems) == 4
    assert all(p.startswith("labels/x.txt: object ") for p in problems)
    assert "object 2 ('normal'): zero width" in problems[0]
    assert "object 3 ('tumour'): unknown class" in problems[1]
    assert "object 4 ('normal'): coordinate x1 is not a finite number" in problems[2]
    assert "object 5 ('normal'): x2=385.5 is outside the image width 0..384" in problems[3]
    assert validate_annotation(ann, ["normal", "tumour"], None, tolerance=2.0)[0].startswith(
        "object 2"
    )
    assert validate_annotation(_ann(width=0), None, None) == ["image size 0x320 is not positive"]
    check_annotation(_ann(Box("a", 1, 1, 2, 2)), ["a"])  # valid: no exception
    with pytest.raises(AnnotationError, match="zero height"):
        check_annotation(_ann(Box("a", 1, 2, 3, 2)), None, Path("f.xml"))


# -- YOLO --------------------------------------------------------------------------------------


def _png(path: Path, size: tuple[int, int] = (200, 100), mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size).save(path)
    return path


@pytest.mark.parametrize(
    "names_yaml",
    ["names: [normal, herniation, slip]\n", "names:\n  0: normal\n  1: herniation\n  2: slip\n",
     "nc: 3\nnames: {2: slip, 0: normal, 1: herniation}\n"],
)
def test_data_yaml_names_as_list_or_mapping(tmp_path: Path, names_yaml: str) -> None:
    path = tmp_path / "data.yaml"
    path.write_text("path: .\n" + names_yaml)
    assert read_data_yaml(path) == ["normal", "herniation", "slip"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("path: .\n", "missing required field 'names'"),
        ("names: {0: a, 2: b}\n", "indices must be 0..1"),
        ("names: [a, b]\nnc: 3\n", "'nc' is 3 but 2 names"),
        ("names: [a, b\n", "malformed YAML"),
        ("names: 7\n", "must be a list"),
    ],
)
def test_data_yaml_errors(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "data.yaml"
    path.write_text(text)
    with pytest.raises(AnnotationError, match=match):
        read_data_yaml(path)


def test_data_yaml_written_reads_back(tmp_path: Path) -> None:
    names = ["Normal IVD", "Lumbar Disc Bulge (LDB)", "Spondylolisthesis"]
    write_data_yaml(tmp_path / "data.yaml", names)
    text = (tmp_path / "data.yaml").read_text()
    assert "path: ." in text and "nc: 3" in text
    assert read_data_yaml(tmp_path / "data.yaml") == names


def test_yolo_round_trip_and_image_size(tmp_path: Path) -> None:
    image = _png(tmp_path / "images" / "T1_0002_S8 .png", (200, 100))
    assert read_image_size(image) == (200, 100, 1)
    names = ["normal", "herniation"]
    boxes = [Box("herniation", 10, 20, 60, 45), Box("normal", 0, 0, 200, 100)]
    label = tmp_path / "labels" / "T1_0002_S8 .txt"
    write_yolo(_ann(*boxes, width=200, height=100), label, names)
    assert label.read_text().splitlines() == [
        "1 0.175000 0.325000 0.250000 0.250000",
        "0 0.500000 0.500000 1.000000 1.000000",
    ]
    back = read_yolo(label, image, names)
    assert (back.filename, back.width, back.height, back.folder) == ("T1_0002_S8 .png", 200, 100,
                                                                     "images")
    assert [b.label for b in back.boxes] == ["herniation", "normal"]
    for got, want in zip(back.boxes, boxes, strict=True):
        assert got.xyxy() == pytest.approx(want.xyxy(), abs=1e-9)
    assert format_yolo(_ann(width=200, height=100), names) == ""


def test_yolo_lines_tolerated_and_dicom_size(tmp_path: Path) -> None:
    label = tmp_path / "a_.txt"
    label.write_text("\n1.0 0.5 0.5 0.2 0.2\n\n")  # blank lines; class written as a float
    ann = read_yolo(label, image_size=(100, 50), class_names=["a", "b"])
    assert ann.boxes[0].label == "b" and ann.boxes[0].xyxy() == pytest.approx((40, 20, 60, 30))
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 64, 48, 1
    ds.save_as(tmp_path / "slice.dcm", enforce_file_format=True)
    assert read_image_size(tmp_path / "slice.dcm") == (48, 64, 1)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="bad.png"):
        read_image_size(tmp_path / "bad.png")


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("5 0.5 0.5 0.1 0.1", "line 1: unknown class index 5"),
        ("0 0.5 abc 0.1 0.1", "line 1: non-numeric box value"),
        ("x 0.5 0.5 0.1 0.1", "class 'x' is not a number"),
        ("0 0.5 0.5 0.1", "expected 5 columns .* got 4"),
        ("0 0.5 0.5 0.1 0.1 0.3 0.3", "got 7"),
        ("0 0.95 0.5 0.2 0.1", r"object 1 \('a'\): x2=105 is outside"),
        ("0 0.5 0.5 0 0.1", "zero width"),
        ("0 0.5 0.5 -0.1 0.1", "corners swapped"),
        ("0 nan 0.5 0.1 0.1", "not a finite number"),
    ],
)
def test_yolo_bad_lines_raise_naming_file(tmp_path: Path, line: str, match: str) -> None:
    label = tmp_path / "bad label_.txt"
    label.write_text(line + "\n")
    with pytest.raises(AnnotationError, match=match) as info:
        read_yolo(label, image_size=(100, 100), class_names=["a", "b"])
    assert info.value.path == label


def test_yolo_unvalidated_keeps_unknown_class_for_checkers(tmp_path: Path) -> None:
    label = tmp_path / "l.txt"
    label.write_text("0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\n")
    ann = read_yolo(label, image_size=(10, 10), class_names=["a"], validate=False)
    assert [b.label for b in ann.boxes] == ["a", "7"]
    (problem,) = validate_annotation(ann, ["a"], label)
    assert "object 2 ('7'): unknown class" in problem
    label.write_text("0 0.5 0.5\n")
    with pytest.raises(AnnotationError, match="expected 5 columns"):
        read_yolo(label, image_size=(10, 10), class_names=["a"], validate=False)
    with pytest.raises(AnnotationError, match="not in the class list"):
        format_yolo(_ann(Box("zzz", 1, 1, 5, 5)), ["a"])


# -- COCO --------------------------------------------------------------------------------------


def _coco_doc() -> dict:
    return {
        "images": [
            {"id": 7, "file_name": "sub/a.png", "width": 100, "height": 80},
            {"id": 9, "file_name": "b.png", "width": 50, "height": 50},
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 30, "bbox": [10.5, 5, 20, 10], "area": 200,
             "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 4, "bbox": [0, 0, 100, 80], "area": 8000,
             "iscrowd": 1},
        ],
        "categories": [{"id": 30, "name": "slip"}, {"id": 4, "name": "normal"}],
    }


def test_coco_non_contiguous_category_ids(tmp_path: Path) -> None:
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(_coco_doc()))
    data = read_coco(path)
    assert (data.class_names, data.category_ids) == (["normal", "slip"], [4, 30])
    a, b = data.annotations
    assert (a.filename, a.width, a.height, a.extra["coco_file_name"]) == ("a.png", 100, 80,
                                                                         "sub/a.png")
    assert [(x.label, x.xyxy(), x.difficult) for x in a.boxes] == [
        ("slip", (10.5, 5.0, 30.5, 15.0), False),
        ("normal", (0.0, 0.0, 100.0, 80.0), True),
    ]
    assert b.boxes == []


def test_coco_round_trip_identical_and_pycocotools_reads_it(tmp_path: Path) -> None:
    src = tmp_path / "in.json"
    src.write_text(json.dumps(_coco_doc()))
    data = read_coco(src)
    out = tmp_path / "out.json"
    write_coco(out, data.annotations, data.class_names, data.category_ids)
    back = read_coco(out)
    assert (back.class_names, back.category_ids) == (data.class_names, data.category_ids)
    for x, y in zip(back.annotations, data.annotations, strict=True):
        assert (x.filename, x.width, x.height, x.extra["coco_image_id"]) == (
            y.filename, y.width, y.height, y.extra["coco_image_id"])
        assert [(b.label, b.xyxy(), b.difficult) for b in x.boxes] == [
            (b.label, b.xyxy(), b.difficult) for b in y.boxes]
    from pycocotools.coco import COCO

    api = COCO(str(out))
    assert sorted(api.getCatIds()) == [4, 30]
    (slip,) = api.loadAnns(api.getAnnIds(imgIds=[7], catIds=[30]))
    assert slip["bbox"] == [10.5, 5.0, 20.0, 10.0]
    default = to_coco_dict([_ann(Box("b", 1, 2, 3, 5))], ["a", "b"])
    assert default["categories"][1]["id"] == 2 and default["annotations"][0]["area"] == 6.0


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: [1, 2, 3], "not a COCO instances file"),
        (lambda d: {"info": {}}, "not a COCO instances file"),
        (lambda d: d["images"][0].pop("width") and None,
         "images\\[0\\]: missing required field 'width'"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "bbox must be 4 numbers"),
        (lambda d: d["annotations"][0].update(bbox=[1, "a", 3, 4]), "bbox must be 4 numbers"),
        (lambda d: d["annotations"][0].update(category_id=5), "unknown category_id 5"),
        (lambda d: d["annotations"][0].update(image_id=3), "image_id 3 is not in 'images'"),
        (lambda d: d["categories"].append({"id": 4, "name": "x"}), "category id 4 is listed twice"),
        (lambda d: d["annotations"][0].update(bbox=[90, 5, 20, 10]),
         r"image 'sub/a.png': object 1 \('slip'\): x2=110 is outside"),
    ],
)
def test_coco_bad_input(tmp_path: Path, mutate: Callable[[dict], object], match: str) -> None:
    doc = _coco_doc()
    replaced = mutate(doc)  # edits doc in place (None) or returns a replacement document
    path = tmp_path / "c.json"
    path.write_text(json.dumps(doc if replaced is None else replaced))
    with pytest.raises(AnnotationError, match=match) as info:
        read_coco(path)
    assert info.value.path == path


def test_coco_malformed_json_and_unvalidated_read(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text("{not json")
    with pytest.raises(AnnotationError, match="malformed JSON"):
        read_coco(path)
    doc = _coco_doc()
    doc["annotations"][0]["category_id"] = 99
    path.write_text(json.dumps(doc))
    data = read_coco(path, validate=False)
    assert data.annotations[0].boxes[0].label == "99"
