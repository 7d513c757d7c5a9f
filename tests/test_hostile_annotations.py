"""Hostile annotation files: one clear error naming the file and the problem, never a traceback.

Every reader (Pascal VOC XML, YOLO txt with its class list, COCO JSON) is fed junk: XML entities
that would read local files or expand without bound, malformed text, non-finite, negative,
swapped and out-of-image boxes, unknown classes, bytes that are not UTF-8, paths in file names.
Each case asserts one of three outcomes, following the readers' conventions:

* **file error** -- the file cannot be used: :class:`AnnotationError` naming it and the problem,
  raised whether or not boxes are validated; ``data check`` lists it as an unusable label and
  ``data convert`` leaves its image out;
* **box problem** -- the file parses, one box is invalid: raised when validating, otherwise
  parsed so that ``data check`` can list every such problem (and ``data convert`` leaves the image
  out with the problem);
* **tolerated** -- legitimate variations (BOM, Windows line ends, blank lines, a box reaching
  at most one pixel past the edge, which writers cut at the edge) read as the clean file does.

The command line is driven through ``lumbardx data`` with Typer's runner: exit code 1, the bad
file named, no traceback, and the good files of the same dataset still checked or converted.
"""

from __future__ import annotations

import json
import os
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import Result
from PIL import Image
from typer.testing import CliRunner

from lumbardx.cli.data import app as data_app
from lumbardx.data import check as kinds
from lumbardx.data.boxes import Box, ImageAnnotation
from lumbardx.data.check import check_dataset
from lumbardx.data.coco import read_coco
from lumbardx.data.convert import Record, ScanResult, convert_dataset, scan_dataset, write_dataset
from lumbardx.data.errors import AnnotationError, InputError
from lumbardx.data.validate import validate_annotation
from lumbardx.data.voc import format_voc, read_voc
from lumbardx.data.yolo import format_yolo, read_classes_txt, read_data_yaml, read_yolo

W, H = 64, 48
NAMES = ["normal", "herniation"]
SECRET = "lumbardx-secret-9f3b2c"


# -- helpers -------------------------------------------------------------------------------------


def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (H, W), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(path)
    return path


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def _voc(
    *,
    filename: str = "a.png",
    width: str = str(W),
    height: str = str(H),
    name: str = "normal",
    xmin: str = "11",
    ymin: str = "21",
    xmax: str = "40",
    ymax: str = "30",
    size: bool = True,
    header: str = "",
) -> str:
    """LabelImg-style VOC text with one object; every field can be replaced by junk."""
    size_xml = (
        f"<size><width>{width}</width><height>{height}</height><depth>1</depth></size>"
        if size else ""
    )
    return (
        f"{header}<annotation><folder>images</folder><filename>{filename}</filename>"
        f"<source><database>Unknown</database></source>{size_xml}<segmented>0</segmented>"
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>0</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
        f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object></annotation>\n"
    )


def _coco_doc() -> dict[str, Any]:
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": W, "height": H},
            {"id": 2, "file_name": "b.png", "width": W, "height": H},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 20, 30, 10], "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [5, 5, 20, 20], "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "normal"}, {"id": 2, "name": "herniation"}],
    }


def _cli(*args: str) -> Result:
    """``lumbardx data ARGS`` in-process, wide enough that messages stay on one line."""
    return CliRunner().invoke(data_app, list(args), env={"COLUMNS": "400"})


def _assert_reported(result: Result, *fragments: str) -> None:
    """Exit code 1 from a handled problem (no exception escaped), each fragment shown."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, (fragment, result.output)


def _files_text(folder: Path) -> bytes:
    """Every byte written below ``folder``, to search for leaked content."""
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def _non_utf8_name(folder: Path, stem: bytes, suffix: str) -> Path:
    """``folder/<stem bytes><suffix>``, a file name that is not valid UTF-8 (skip if refused)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = Path(os.fsdecode(os.fsencode(folder) + b"/" + stem + suffix.encode()))
    try:
        path.touch()
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses file names that are not UTF-8")
    return path


# -- VOC: XML entities ---------------------------------------------------------------------------


def _entity_cases(secret: Path) -> dict[str, str]:
    """VOC files whose DOCTYPE would pull ``secret`` into a field, by case name."""
    url = secret.as_uri()
    entity = f'<!DOCTYPE annotation [<!ENTITY e SYSTEM "{url}">]>\n'
    return {
        "external-entity-in-name": _voc(header=entity, name="&e;"),
        "external-entity-in-filename": _voc(header=entity, filename="&e;"),
        "parameter-entity": _voc(
            header=f'<!DOCTYPE annotation [<!ENTITY % p SYSTEM "{url}"> %p;]>\n'),
        "external-dtd": _voc(header=f'<!DOCTYPE annotation SYSTEM "{url}">\n'),
        "after-xml-declaration": _voc(
            header='<?xml version="1.0" encoding="utf-8"?>\n' + entity, name="&e;"),
    }


@pytest.mark.parametrize("case", list(_entity_cases(Path("/secret.txt"))))
def test_voc_entities_are_refused_and_nothing_is_read(tmp_path: Path, case: str) -> None:
    secret = _write(tmp_path / "secret.txt", SECRET)
    path = _write(tmp_path / "x.xml", _entity_cases(secret)[case])
    for validate in (True, False):
        with pytest.raises(AnnotationError, match="DOCTYPE or entity declaration") as info:
            read_voc(path, validate=validate)
        assert info.value.path == path
        assert SECRET not in str(info.value)


def test_voc_xinclude_is_not_followed(tmp_path: Path) -> None:
    """XInclude needs no DOCTYPE; the reader never processes it, so nothing is read."""
    secret = _write(tmp_path / "secret.txt", SECRET)
    include = (f'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" '
               f'href="{secret.as_uri()}" parse="text"/>')
    path = _write(tmp_path / "x.xml", _voc(name=f"normal{include}"))
    ann = read_voc(path, NAMES)
    assert [b.label for b in ann.boxes] == ["normal"]
    assert SECRET not in repr(ann)


def test_voc_billion_laughs_is_refused_fast_with_bounded_memory(tmp_path: Path) -> None:
    entities = '<!ENTITY lol "lol">' + "".join(
        f'<!ENTITY lol{i} "' + f"&lol{i - 1 if i > 1 else ''};" * 10 + '">' for i in range(1, 10)
    )
    path = _write(tmp_path / "bomb.xml",
                  _voc(header=f"<!DOCTYPE annotation [{entities}]>\n", name="&lol9;"))
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(AnnotationError, match="DOCTYPE or entity declaration") as info:
            read_voc(path, validate=False)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.path == path
    assert elapsed < 1.0 and peak < 1_000_000  # 10**9 "lol"s would be 3 GB


def _voc_dataset(root: Path, bad: str | bytes, good: int = 2) -> Path:
    """VOC dataset: ``good`` clean images/annotations and ``bad.png`` with ``bad`` as XML."""
    for i in range(good):
        _png(root / "images" / f"good{i}.png", i)
        _write(root / "annotations" / f"good{i}.xml", _voc(filename=f"good{i}.png"))
    _png(root / "images" / "bad.png", 99)
    _write(root / "annotations" / "bad.xml", bad)
    _write(root / "classes.txt", "".join(n + "\n" for n in NAMES))
    return root


def test_cli_voc_entity_file_among_good_ones(tmp_path: Path) -> None:
    secret = _write(tmp_path / "secret.txt", SECRET)
    root = _voc_dataset(tmp_path / "ds", _entity_cases(secret)["external-entity-in-name"])
    report = tmp_path / "report.json"
    result = _cli("check", str(root), "--json", str(report))
    _assert_reported(result, "annotations/bad.xml", "DOCTYPE or entity declaration")
    assert SECRET not in result.output and SECRET not in report.read_text()
    saved = json.loads(report.read_text())
    assert saved["boxes"] == 2 and saved["images"] == 3  # the good files are still counted

    dst = tmp_path / "out"
    result = _cli("convert", str(root), str(dst), "--to", "yolo")
    _assert_reported(result, "bad.xml", "DOCTYPE or entity declaration", "2 with labels")
    assert SECRET not in result.output and SECRET.encode() not in _files_text(dst)
    assert sorted(p.name for p in (dst / "labels").iterdir()) == ["good0.txt", "good1.txt"]
    assert not (dst / "images" / "bad.png").exists()


# -- VOC: malformed files and invalid boxes ------------------------------------------------------

VOC_FILE_ERRORS = [
    pytest.param(_voc()[:-40], "malformed XML", id="truncated"),
    pytest.param(b"", "malformed XML", id="empty"),
    pytest.param(b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "malformed XML", id="not-xml"),
    pytest.param("<html><body/></html>", "root element is <html>", id="wrong-root"),
    pytest.param(_voc(size=False), "missing required field <size>", id="missing-size"),
    pytest.param(_voc(height=""), "<size>: missing required field <height>", id="empty-height"),
    pytest.param(_voc(width="abc"), "<width> is not a number: 'abc'", id="width-text"),
    pytest.param(_voc(width="nan"), "<width> is not a whole number", id="width-nan"),
    pytest.param(_voc(width="1e999"), "<width> is not a whole number", id="width-inf"),
    pytest.param(_voc(xmin="abc"), "<xmin> is not a number: 'abc'", id="xmin-text"),
    pytest.param(_voc(xmax="1_0"), "<xmax> is not a number: '1_0'", id="xmax-underscore"),
    pytest.param(_voc(ymin="\uff12\uff11"), "<ymin> is not a number", id="fullwidth-digits"),
    pytest.param(_voc(ymax="0x1e"), "<ymax> is not a number: '0x1e'", id="hex"),
    pytest.param(_voc(name="h\xe9rniation").encode("latin-1"), "malformed XML: not well-formed",
                 id="latin1-bytes-undeclared"),
    pytest.param(_voc(name="a&#1;b"), "malformed XML", id="control-char-reference"),
    pytest.param(_voc(filename="../../etc/passwd"),
                 r"<filename> '../../etc/passwd' points outside", id="filename-dotdot"),
    pytest.param(_voc(filename="/etc/passwd"), r"<filename> '/etc/passwd' points outside",
                 id="filename-absolute"),
    pytest.param(_voc(filename="..\\..\\boot.ini"), "points outside", id="filename-backslash"),
    pytest.param(_voc(filename="C:\\boot.ini"), "points outside", id="filename-drive"),
]


@pytest.mark.parametrize(("content", "match"), VOC_FILE_ERRORS)
def test_voc_file_errors_name_the_file(tmp_path: Path, content: str | bytes, match: str) -> None:
    path = _write(tmp_path / "bad file.xml", content)
    for validate in (True, False):
        with pytest.raises(AnnotationError) as info:
            read_voc(path, NAMES, validate=validate)
        assert info.value.path == path and str(info.value).startswith(f"{path}: ")
        assert match in info.value.problem and "\n" not in str(info.value)


# (fields, message when reading with validation, message a checker lists)
VOC_BOX_PROBLEMS = [
    pytest.param({"xmin": "nan"}, "not a finite number", "not a finite number", id="nan"),
    pytest.param({"xmax": "inf"}, "not a finite number", "not a finite number", id="inf"),
    pytest.param({"xmin": "-20"}, "x1=-21 is outside the image width",
                 "x1=-21 is outside the image width", id="negative"),
    # VOC indices are inclusive: xmax = xmin - 1 is the zero-width box (x1 = x2 = 10)
    pytest.param({"xmin": "11", "xmax": "10"}, "xmax=10 < xmin=11", "zero width", id="zero-size"),
    pytest.param({"ymax": "500"}, "y2=500 is outside the image height",
                 "y2=500 is outside the image height", id="out-of-image"),
    pytest.param({"xmin": "40", "xmax": "11"}, "corners swapped", "corners swapped",
                 id="xmin-gt-xmax"),
    pytest.param({"name": "herniaton"}, "unknown class", "unknown class", id="unknown-class"),
    pytest.param({"name": "nor\tmal"}, "control characters", "control characters",
                 id="tab-in-name"),
]


@pytest.mark.parametrize(("fields", "raised", "listed"), VOC_BOX_PROBLEMS)
def test_voc_box_problems(tmp_path: Path, fields: dict[str, str], raised: str,
                          listed: str) -> None:
    path = _write(tmp_path / "box.xml", _voc(**fields))
    with pytest.raises(AnnotationError) as info:
        read_voc(path, NAMES)
    assert info.value.path == path and raised in info.value.problem
    ann = read_voc(path, NAMES, validate=False)  # parsed anyway so a checker lists it
    (problem,) = validate_annotation(ann, NAMES, path)
    assert problem.startswith(f"{path}: object 1") and listed in problem


def _voc_objects(*objects: str) -> str:
    return ("<annotation><filename>a.png</filename><size><width>64</width><height>48</height>"
            "<depth>1</depth></size>" + "".join(f"<object>{o}</object>" for o in objects)
            + "</annotation>")


def _bndbox(xmin: str, ymin: str, xmax: str, ymax: str) -> str:
    return (f"<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax>"
            f"<ymax>{ymax}</ymax></bndbox>")


def test_voc_every_faulty_object_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.xml", _voc_objects(
        "<name>normal</name>" + _bndbox("1", "1", "10", "10"),
        "<name>normal</name>",
        "<name>herniation</name>" + _bndbox("abc", "1", "10", "10")))
    for validate in (True, False):
        with pytest.raises(AnnotationError) as info:
            read_voc(path, NAMES, validate=validate)
        assert info.value.problems == ["object 2: missing required field <bndbox>",
                                       "object 3: <xmin> is not a number: 'abc'"]
        assert "(and 1 more problem in this file" in info.value.problem
    _write(path, _voc_objects("<name>normal</name>" + _bndbox("1", "1", "90", "10"),
                              "<name>herniaton</name>" + _bndbox("1", "1", "10", "10")))
    with pytest.raises(AnnotationError) as info:
        read_voc(path, NAMES)
    assert [p.split(":")[0] for p in info.value.problems] == ["object 1 ('normal')",
                                                              "object 2 ('herniaton')"]


def test_voc_tolerated_variants(tmp_path: Path) -> None:
    declared = _voc(header='<?xml version="1.0" encoding="iso-8859-1"?>\n', name="h\xe9rnie")
    ann = read_voc(_write(tmp_path / "latin1.xml", declared.encode("latin-1")))
    assert ann.boxes[0].label == "h\xe9rnie"
    ann = read_voc(_write(tmp_path / "sub.xml", _voc(filename="train/a.png")), NAMES)
    assert ann.filename == "train/a.png"  # a relative sub-folder (CVAT) stays inside
    # A box one pixel past the edge is within tolerance; writers cut it at the edge.
    edge = read_voc(_write(tmp_path / "edge.xml", _voc(xmax=str(W + 1))), NAMES)
    assert edge.boxes[0].x2 == W + 1
    assert f"<xmax>{W}</xmax>" in format_voc(edge)
    assert float(format_yolo(edge, NAMES).split()[3]) <= 1.0


# -- YOLO ----------------------------------------------------------------------------------------

YOLO_FILE_ERRORS = [
    pytest.param("hello world", "line 1: expected 5 columns 'class cx cy w h', got 2", id="text"),
    pytest.param("hello 0.5 0.5 0.1 0.1", "class 'hello' is not a number", id="class-text"),
    pytest.param("0 0.5 0.5 0.1", "got 4", id="4-columns"),
    pytest.param("0 0.5 0.5 0.1 0.1 0.9", "got 6", id="6-columns"),
    pytest.param("0 0.5 0.5 0.1 0.1\n0 0.5", "line 2: expected 5 columns", id="second-line"),
    pytest.param("1.5 0.5 0.5 0.1 0.1", "class '1.5' is not a class index", id="class-float"),
    pytest.param("-1 0.5 0.5 0.1 0.1", "class '-1' is not a class index", id="class-negative"),
    pytest.param("nan 0.5 0.5 0.1 0.1", "class 'nan' is not a class index", id="class-nan"),
    pytest.param("\u0661 0.5 0.5 0.1 0.1", "is not a number", id="class-arabic-digit"),
    pytest.param("0 0.5 abc 0.1 0.1", "non-numeric box value", id="value-text"),
    pytest.param("0 0.1_5 0.5 0.1 0.1", "non-numeric box value", id="value-underscore"),
    pytest.param("0 \uff10.5 0.5 0.1 0.1", "non-numeric box value", id="value-fullwidth"),
    pytest.param(b"0 0.5 0.5 0.1 0.1 \xff\xfe\n", "not UTF-8 text (byte 0xff at offset 18)",
                 id="not-utf8"),
]


@pytest.mark.parametrize(("content", "match"), YOLO_FILE_ERRORS)
def test_yolo_file_errors_name_the_file(tmp_path: Path, content: str | bytes, match: str) -> None:
    path = _write(tmp_path / "bad label_.txt", content)
    for validate in (True, False):
        with pytest.raises(AnnotationError) as info:
            read_yolo(path, image_size=(W, H), class_names=NAMES, validate=validate)
        assert info.value.path == path and str(info.value).startswith(f"{path}: ")
        assert match in info.value.problem and "\n" not in str(info.value)


# (line, message when reading with validation, message a checker lists)
YOLO_BOX_PROBLEMS = [
    pytest.param("0 nan 0.5 0.1 0.1", "not a finite number", "not a finite number", id="nan"),
    pytest.param("0 0.5 inf 0.1 0.1", "not a finite number", "not a finite number", id="inf"),
    pytest.param("0 1.04 0.5 0.1 0.1", "x2=69.76 is outside the image width",
                 "x2=69.76 is outside the image width", id="cx-over-1"),
    pytest.param("0 0.5 -0.02 0.1 0.1", "y1=-3.36 is outside the image height",
                 "y1=-3.36 is outside the image height", id="cy-negative"),
    pytest.param("0 0.5 0.5 -0.1 0.1", "corners swapped", "corners swapped",
                 id="negative-width"),
    pytest.param("0 0.5 0.5 0.1 0", "zero height", "zero height", id="zero-height"),
    pytest.param("2 0.5 0.5 0.1 0.1", "line 1: unknown class index 2 (the class list has 2)",
                 "object 1 ('2'): unknown class", id="class-out-of-range"),
]


@pytest.mark.parametrize(("line", "raised", "listed"), YOLO_BOX_PROBLEMS)
def test_yolo_box_problems(tmp_path: Path, line: str, raised: str, listed: str) -> None:
    path = _write(tmp_path / "box.txt", line + "\n")
    with pytest.raises(AnnotationError) as info:
        read_yolo(path, image_size=(W, H), class_names=NAMES)
    assert info.value.path == path and raised in info.value.problem
    ann = read_yolo(path, image_size=(W, H), class_names=NAMES, validate=False)
    (problem,) = validate_annotation(ann, NAMES, path)
    assert problem.startswith(f"{path}: object 1") and listed in problem


def test_yolo_every_faulty_line_at_once(tmp_path: Path) -> None:
    """Every faulty line of a label file in one error, then every faulty box."""
    path = _write(tmp_path / "a.txt", "0 0.5 0.5 0.1 0.1\n7 0.5 0.5 0.1 0.1\n"
                                      "0 0.5 0.5 x 0.1\n0 1.5 0.5 0.1 0.1\n0 0.5\n")
    with pytest.raises(AnnotationError) as info:
        read_yolo(path, image_size=(W, H), class_names=NAMES)
    assert info.value.problems == [
        "line 2: unknown class index 7 (the class list has 2)",
        "line 3: non-numeric box value in '0 0.5 0.5 x 0.1'",
        "line 5: expected 5 columns 'class cx cy w h', got 2"]
    assert info.value.problem.startswith("line 2: unknown class index 7 (the class list has 2) "
                                         "(and 2 more problems in this file")
    _write(path, "0 1.04 0.5 0.1 0.1\n1 0.5 0.5 0.1 0\n")  # the lines read: both boxes fail
    with pytest.raises(AnnotationError) as info:
        read_yolo(path, image_size=(W, H), class_names=NAMES)
    assert [p.split(":")[0] for p in info.value.problems] == ["object 1 ('normal')",
                                                              "object 2 ('herniation')"]
    assert "(and 1 more problem in this file" in info.value.problem


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("\n\n0 0.5 0.5 0.2 0.2\n  \n1 0.25 0.25 0.1 0.1\n\n", id="blank-lines"),
        pytest.param("0 0.5 0.5 0.2 0.2\r\n1 0.25 0.25 0.1 0.1\r\n", id="windows-line-ends"),
        pytest.param("\ufeff0 0.5 0.5 0.2 0.2\n1 0.25 0.25 0.1 0.1\n", id="bom"),
        pytest.param("0\t0.5  0.5 0.2 0.2 \n1.0 0.25 0.25 1e-1 0.1", id="tabs-float-class"),
    ],
)
def test_yolo_tolerated_variants(tmp_path: Path, content: str) -> None:
    ann = read_yolo(_write(tmp_path / "ok.txt", content), image_size=(W, H), class_names=NAMES)
    assert [b.label for b in ann.boxes] == NAMES
    assert [b.xyxy() for b in ann.boxes] == [
        pytest.approx((25.6, 19.2, 38.4, 28.8)), pytest.approx((12.8, 9.6, 19.2, 14.4)),
    ]


def test_yolo_class_lists(tmp_path: Path) -> None:
    path = _write(tmp_path / "classes.txt", "\ufeffnormal\r\nherniation\r\n\r\n")
    assert read_classes_txt(path) == NAMES  # BOM and Windows line ends dropped
    with pytest.raises(AnnotationError, match="not UTF-8 text") as info:
        read_classes_txt(_write(tmp_path / "bad.txt", b"normal\n\xe9\n"))
    assert info.value.path == tmp_path / "bad.txt"
    assert read_data_yaml(_write(tmp_path / "bom.yaml", "\ufeffnames: [normal, herniation]\n")) \
        == NAMES


def _alias_bomb(target: str) -> str:
    """YAML whose ``target`` is 10**8 strings by reference (a few hundred bytes of text)."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 8)]
    return "\n".join(lines) + "\n" + target + "\n"


DATA_YAML_ERRORS = [
    pytest.param("names: " + "[" * 1000 + "]" * 1000, "nested too deeply", id="deep-nesting"),
    pytest.param("names: [normal\n  - x: [", "malformed YAML", id="malformed"),
    pytest.param(_alias_bomb("names: {0: *a7}"), "'names' must be a list", id="bomb-in-names"),
    pytest.param(_alias_bomb("names: *a7"), "'names' must be a list", id="bomb-as-names"),
    pytest.param(_alias_bomb("names: [a, b]\nnc: *a7"), "'nc' must be the number of class names",
                 id="bomb-in-nc"),
    pytest.param('names: ["nor\\x01mal", "b"]', "control characters", id="control-char-name"),
    pytest.param('names: ["\\udcff", "b"]', "control characters", id="surrogate-name"),
    pytest.param("names: ['', b]", "empty class name", id="empty-name"),
    pytest.param(b"names: [\xe9]\n", "not UTF-8 text", id="not-utf8"),
]


@pytest.mark.parametrize(("text", "match"), DATA_YAML_ERRORS)
def test_data_yaml_errors(tmp_path: Path, text: str | bytes, match: str) -> None:
    path = _write(tmp_path / "data.yaml", text)
    start = time.perf_counter()
    with pytest.raises(AnnotationError) as info:
        read_data_yaml(path)
    assert time.perf_counter() - start < 3.0  # the alias bombs took 10 s each when printed
    assert info.value.path == path and match in info.value.problem
    assert len(str(info.value)) < 300 and "\n" not in str(info.value)


def _yolo_dataset(root: Path, bad: str | bytes, classes: bool = True) -> Path:
    for i in range(2):
        _png(root / "images" / f"good{i}.png", i)
        _write(root / "labels" / f"good{i}.txt", "0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n")
    _png(root / "images" / "bad.png", 99)
    _write(root / "labels" / "bad.txt", bad)
    if classes:
        _write(root / "data.yaml", "names: [normal, herniation]\n")
    return root


@pytest.mark.parametrize(
    ("bad", "kind", "message"),
    [
        pytest.param("hello world\n", kinds.UNUSABLE_LABEL, "expected 5 columns", id="junk"),
        pytest.param(b"\xff\xfe0 0.5\n", kinds.UNUSABLE_LABEL, "not UTF-8 text", id="utf16"),
        pytest.param("0 nan 0.5 0.1 0.1\n", kinds.INVALID_BOX, "not a finite number", id="nan"),
        pytest.param("5 0.5 0.5 0.1 0.1\n", kinds.UNKNOWN_CLASS, "unknown class", id="class-5"),
        pytest.param("0 1.04 0.5 0.1 0.1\n", kinds.OUT_OF_BOUNDS, "outside the image", id="cx"),
    ],
)
def test_cli_yolo_bad_label_among_good_ones(tmp_path: Path, bad: str | bytes, kind: str,
                                            message: str) -> None:
    root = _yolo_dataset(tmp_path / "ds", bad)
    report = check_dataset(root)
    (problem,) = report.errors
    assert (problem.kind, problem.path) == (kind, root / "labels" / "bad.txt")
    assert message in problem.message
    assert report.images == 3 and report.boxes_per_class["normal"] >= 2
    _assert_reported(_cli("check", str(root)), "labels/bad.txt", message)

    dst = tmp_path / "out"
    result = _cli("convert", str(root), str(dst), "--to", "coco")
    _assert_reported(result, "bad.txt", message, "2 images, 2 with labels, 4 boxes")
    written = json.loads((dst / "annotations" / "instances.json").read_text())
    assert sorted(i["file_name"] for i in written["images"]) == ["good0.png", "good1.png"]


def test_cli_yolo_missing_class_list_is_reported_and_boxes_keep_indices(tmp_path: Path) -> None:
    root = _yolo_dataset(tmp_path / "ds", "1 0.5 0.5 0.1 0.1\n", classes=False)
    scan = scan_dataset(root)
    (problem,) = scan.problems
    assert problem.path == root and "no data.yaml or classes.txt" in problem.problem
    assert {b.label for r in scan.records if r.annotation for b in r.annotation.boxes} == {"0", "1"}
    _assert_reported(_cli("check", str(root)), "no data.yaml or classes.txt")
    result = _cli("check", str(root), "--allow-warnings")  # a warning only: usable with indices
    assert result.exit_code == 0 and "Traceback" not in result.output


def test_cli_yolo_unusable_class_list_names_it(tmp_path: Path) -> None:
    root = _yolo_dataset(tmp_path / "ds", "0 0.5 0.5 0.1 0.1\n")
    _write(root / "data.yaml", _alias_bomb("names: {0: *a7}"))
    start = time.perf_counter()
    _assert_reported(_cli("check", str(root)), "data.yaml", "'names' must be a list")
    _assert_reported(_cli("convert", str(root), str(tmp_path / "o"), "--to", "voc"),
                     "data.yaml", "'names' must be a list")
    assert time.perf_counter() - start < 3.0


def test_cli_class_names_are_shown_literally(tmp_path: Path) -> None:
    """Class names that look like Rich markup are printed as written, not interpreted."""
    root = _yolo_dataset(tmp_path / "ds", "0 0.5 0.5 0.1 0.1\n")
    _write(root / "data.yaml", 'names: ["[/x]", "[bold]b"]\n')
    result = _cli("check", str(root), "--allow-warnings")
    assert result.exit_code == 0, result.output
    assert "[/x]" in result.output and "[bold]b" in result.output
    result = _cli("convert", str(root), str(tmp_path / "out"), "--to", "voc")
    assert result.exit_code == 0, result.output
    assert "[/x]" in result.output


# -- COCO ----------------------------------------------------------------------------------------


def _mutated(change: Callable[[dict[str, Any]], object]) -> str:
    doc = _coco_doc()
    replaced = change(doc)
    return json.dumps(doc if replaced is None else replaced)


COCO_FILE_ERRORS = [
    pytest.param('{"images": [', "malformed JSON", id="truncated"),
    pytest.param("", "malformed JSON", id="empty"),
    pytest.param("not json at all", "malformed JSON", id="not-json"),
    pytest.param("[" * 100_000 + "]" * 100_000, "nested too deeply", id="deep-nesting"),
    pytest.param('{"images": [{"id": 1' + "0" * 5000 + "}]}", "malformed JSON", id="huge-int"),
    pytest.param(_mutated(lambda d: None).replace('"normal"', '"n\xe9"').encode("latin-1"),
                 "not UTF-8 text (byte 0xe9", id="not-utf8"),
    pytest.param("[1, 2]", "not a COCO instances file", id="list"),
    pytest.param(_mutated(lambda d: d.pop("images") and None),
                 "not a COCO instances file: missing required field 'images'", id="no-images"),
    pytest.param(_mutated(lambda d: d.pop("annotations") and None),
                 "missing required field 'annotations'", id="no-annotations"),
    pytest.param(_mutated(lambda d: d.pop("categories") and None),
                 "missing required field 'categories'", id="no-categories"),
    pytest.param(_mutated(lambda d: d.update(images={})), "'images' must be a list",
                 id="images-not-list"),
    pytest.param(_mutated(lambda d: d["annotations"][0].pop("bbox") and None),
                 "annotations[0]: missing required field 'bbox'", id="no-bbox"),
    pytest.param(_mutated(lambda d: d["annotations"][0].pop("image_id") and None),
                 "annotations[0]: missing required field 'image_id'", id="no-image-id"),
    pytest.param(_mutated(lambda d: d["annotations"][0].update(image_id=7)),
                 "annotations[0]: image_id 7 is not in 'images'", id="unknown-image"),
    pytest.param(_mutated(lambda d: d["annotations"][0].update(bbox=[1, 2, 3])),
                 "bbox must be 4 numbers", id="bbox-3"),
    pytest.param(_mutated(lambda d: d["annotations"][0].update(bbox=[1, 2, "3", 4])),
                 "bbox must be 4 numbers", id="bbox-text"),
    pytest.param(_mutated(lambda d: d["annotations"][0].update(bbox=[1, 2, 3, 10**400])),
                 "bbox must be 4 numbers", id="bbox-huge-int"),
    pytest.param(_mutated(lambda d: d["annotations"][0].update(bbox=list(range(10**5)))),
                 "bbox must be 4 numbers", id="bbox-long"),
    pytest.param(_mutated(lambda d: d["images"].append(dict(d["images"][0]))),
                 "image id 1 is listed twice", id="duplicate-image-id"),
    pytest.param(_mutated(lambda d: d["categories"].append({"id": 2, "name": "x"})),
                 "category id 2 is listed twice", id="duplicate-category-id"),
    pytest.param(_mutated(lambda d: d["annotations"][1].update(id=1)),
                 "annotation id 1 is listed twice", id="duplicate-annotation-id"),
    pytest.param(_mutated(lambda d: d["images"][0].update(id=float("nan"))),
                 "images[0].id must be an integer, got nan", id="image-id-nan"),
    pytest.param(_mutated(lambda d: d["images"][0].update(width=float("inf"))),
                 "images[0].width must be an integer, got inf", id="width-inf"),
    pytest.param(_mutated(lambda d: d["images"][0].update(height=10**30)),
                 "images[0].height must be an integer", id="height-huge"),
    pytest.param(_mutated(lambda d: d["annotations"][0].update(category_id="1")),
                 "annotations[0].category_id must be an integer", id="category-id-text"),
    pytest.param(_mutated(lambda d: d["images"][0].update(file_name=5)),
                 "images[0].file_name must be a non-empty string", id="file-name-int"),
    pytest.param(_mutated(lambda d: d["categories"][0].update(name=None)),
                 "categories[0].name must be a string", id="category-name-null"),
    pytest.param(_mutated(lambda d: d["categories"][0].update(name="a\u001b[31m")),
                 "control characters", id="category-name-escape"),
    pytest.param(_mutated(lambda d: d["categories"][0].update(name="\udcff")),
                 "control characters", id="category-name-surrogate"),
    pytest.param(_mutated(lambda d: d["annotations"][0].update(iscrowd="no")),
                 "annotations[0].iscrowd must be 0 or 1", id="iscrowd-text"),
]


@pytest.mark.parametrize(("content", "match"), COCO_FILE_ERRORS)
def test_coco_file_errors_name_the_file(tmp_path: Path, content: str | bytes, match: str) -> None:
    path = _write(tmp_path / "instances.json", content)
    for validate in (True, False):
        with pytest.raises(AnnotationError) as info:
            read_coco(path, validate=validate)
        assert info.value.path == path and str(info.value).startswith(f"{path}: ")
        assert match in info.value.problem
        assert len(str(info.value)) < 400 and "\n" not in str(info.value)


COCO_BOX_PROBLEMS = [
    pytest.param([10, 20, -5, 10], "corners swapped", id="negative-width"),
    pytest.param([10, 20, 0, 10], "zero width", id="zero-width"),
    pytest.param([float("nan"), 20, 5, 10], "not a finite number", id="nan"),
    pytest.param([10, 20, 5, float("inf")], "not a finite number", id="inf"),
    pytest.param([60, 20, 30, 10], "x2=90 is outside the image width", id="out-of-image"),
]


@pytest.mark.parametrize(("bbox", "match"), COCO_BOX_PROBLEMS)
def test_coco_box_problems(tmp_path: Path, bbox: list[float], match: str) -> None:
    path = _write(tmp_path / "c.json",
                  _mutated(lambda d: d["annotations"][0].update(bbox=bbox)))
    with pytest.raises(AnnotationError, match=match) as info:
        read_coco(path)
    assert info.value.path == path and "image 'a.png': object 1" in info.value.problem
    data = read_coco(path, validate=False)
    (problem,) = validate_annotation(data.annotations[0], data.class_names, path)
    assert match in problem
    assert validate_annotation(data.annotations[1], data.class_names, path) == []


def test_coco_every_fault_is_reported_at_once(tmp_path: Path) -> None:
    """A file with several faults is refused once with all of them, not one per attempt; an
    annotation of a faulty image entry is not reported a second time."""
    doc = _coco_doc()
    doc["images"].append({"id": 3, "width": W, "height": H})  # no file_name
    doc["categories"].append({"id": 1, "name": "again"})
    doc["annotations"] += [
        {"id": 3, "image_id": 9, "category_id": 1, "bbox": [1, 1, 2, 2]},
        {"id": 4, "image_id": 3, "category_id": 1, "bbox": [1, 1, 2, 2]},  # image 3's entry
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": "x"},
        {"id": 6, "image_id": 2, "category_id": 1, "bbox": [10, 20, -5, 10]},
    ]
    path = _write(tmp_path / "c.json", json.dumps(doc))
    with pytest.raises(AnnotationError) as info:
        read_coco(path)
    err = info.value
    assert err.problems == [
        "category id 1 is listed twice",
        "images[2]: missing required field 'file_name'",
        "annotations[2]: image_id 9 is not in 'images'",
        "annotations[4]: bbox must be 4 numbers [x, y, w, h], got 'x'",
    ]
    assert err.problem.startswith("category id 1 is listed twice (and 3 more problems in this file")
    assert "\n" not in str(err) and len(str(err)) < 400
    with pytest.raises(AnnotationError) as info:
        read_coco(path, validate=False)  # structural faults are refused whatever validate
    assert info.value.problems == err.problems
    for extra in ("categories", "images"):
        doc[extra].pop()
    doc["annotations"] = doc["annotations"][:2] + doc["annotations"][-1:] + [
        {"id": 7, "image_id": 1, "category_id": 1, "bbox": [60, 1, 10, 2]}]
    _write(path, json.dumps(doc))
    with pytest.raises(AnnotationError) as info:  # the structure holds: every box fault
        read_coco(path)
    assert info.value.problems == [
        "image 'a.png': object 2 ('normal'): x2=70 is outside the image width 0..64 "
        "(tolerance 1 px)",
        "image 'b.png': object 2 ('normal'): x2=5 < x1=10 (corners swapped, negative width)"]
    doc = _coco_doc()
    doc["annotations"] = [{"id": k, "image_id": 9, "category_id": 1, "bbox": [1, 1, 2, 2]}
                          for k in range(1000)]
    _write(path, json.dumps(doc))
    with pytest.raises(AnnotationError) as info:  # a list a person can read
        read_coco(path)
    assert len(info.value.problems) == 201 and "(and 999 more problems" in info.value.problem
    assert info.value.problems[-1] == "... and 800 more problems not listed"
    _write(tmp_path / "ok.json", json.dumps(_coco_doc()))
    assert len(read_coco(tmp_path / "ok.json").annotations) == 2


def test_input_errors_survive_a_worker_process() -> None:
    """Parallel cross-validation folds run in spawned processes: an error about a file must
    reach the parent with its file and every problem (pickled with its arguments)."""
    import pickle

    from lumbardx.data.errors import ImageReadError, InputError

    for err in (AnnotationError.of(Path("a.json"), ["one", "two"]),
                ImageReadError(Path("b.png"), "damaged"), InputError(None, "no file")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
        assert (back.path, back.problem, back.problems) == (err.path, err.problem, err.problems)


def test_coco_unknown_category_and_bom(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.json",
                  _mutated(lambda d: d["annotations"][0].update(category_id=9)))
    with pytest.raises(AnnotationError, match="unknown category_id 9"):
        read_coco(path)
    data = read_coco(path, validate=False)
    (problem,) = validate_annotation(data.annotations[0], data.class_names, path)
    assert "object 1 ('9'): unknown class" in problem
    bom = _write(tmp_path / "bom.json", b"\xef\xbb\xbf" + _mutated(lambda d: None).encode())
    assert read_coco(bom).class_names == NAMES


def _coco_dataset(root: Path, text: str | bytes) -> Path:
    for i, name in enumerate(("a.png", "b.png")):
        _png(root / "images" / name, i)
    _write(root / "annotations" / "instances.json", text)
    return root


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param('{"images": [', "malformed JSON", id="truncated"),
        pytest.param("[" * 100_000 + "]" * 100_000, "nested too deeply", id="deep"),
        pytest.param(b"\xff\xfe{\x00}\x00", "not UTF-8 text", id="utf16"),
        pytest.param(_mutated(lambda d: d["images"][0].update(id=float("nan"))),
                     "images[0].id must be an integer, got nan", id="nan-id"),
    ],
)
def test_cli_unusable_coco_file_is_named(tmp_path: Path, text: str | bytes, message: str) -> None:
    root = _coco_dataset(tmp_path / "ds", text)
    _assert_reported(_cli("check", str(root)), "instances.json", message)
    dst = tmp_path / "out"
    _assert_reported(_cli("convert", str(root), str(dst), "--to", "yolo"),
                     "instances.json", message)


def test_cli_coco_bad_box_among_good_ones(tmp_path: Path) -> None:
    root = _coco_dataset(tmp_path / "ds",
                         _mutated(lambda d: d["annotations"][0].update(bbox=[10, 20, -5, 10])))
    report = check_dataset(root)
    (problem,) = report.errors
    assert problem.kind == kinds.INVALID_BOX and problem.path == root / "images" / "a.png"
    assert "in instances.json: object 1" in problem.message and report.boxes == 2
    _assert_reported(_cli("check", str(root)), "images/a.png", "corners swapped")
    dst = tmp_path / "out"
    _assert_reported(_cli("convert", str(root), str(dst), "--to", "voc"),
                     "a.png", "corners swapped", "1 with labels")
    assert sorted(p.name for p in (dst / "annotations").iterdir()) == ["b.xml"]


# -- file names that are not UTF-8 ---------------------------------------------------------------


def test_cli_file_names_that_are_not_utf8(tmp_path: Path) -> None:
    root = _yolo_dataset(tmp_path / "ds", "0 0.5 0.5 0.2 0.2\n")
    image = _non_utf8_name(root / "images", b"x\xff", ".png")
    _png(image, 7)
    label = _non_utf8_name(root / "labels", b"x\xff", ".txt")
    label.write_text("junk\n")
    result = _cli("check", str(root), "--json", str(tmp_path / "r.json"))
    _assert_reported(result, "labels/x\\xff.txt", "expected 5 columns")
    json.loads((tmp_path / "r.json").read_text())

    label.write_text("0 0.5 0.5 0.2 0.2\n")
    for to in ("coco", "voc"):
        dst = tmp_path / f"out-{to}"
        result = _cli("convert", str(root), str(dst), "--to", to)
        _assert_reported(result, "x\\xff.png", "not valid UTF-8", "3 with labels")
    result = _cli("convert", str(root), str(tmp_path / "out-yolo"), "--to", "yolo")
    assert result.exit_code == 0, result.output  # YOLO text holds no file names
    assert (tmp_path / "out-yolo" / "labels" / label.name).is_file()


def test_convert_leaves_out_boxes_whose_class_cannot_be_written(tmp_path: Path) -> None:
    """A class name with control characters is a box problem: its image is left out and the
    name does not join the written class list; the rest is converted."""
    root = _voc_dataset(tmp_path / "ds", _voc(name="nor\tmal", filename="bad.png"))
    with pytest.raises(InputError, match="control characters"):
        read_voc(root / "annotations" / "bad.xml", NAMES)
    summary = convert_dataset(root, tmp_path / "out", "voc")
    assert summary.labelled == 2
    assert any(p.path and p.path.name == "bad.xml" and "control characters" in p.problem
               for p in summary.problems)
    assert (tmp_path / "out" / "classes.txt").read_text() == "normal\nherniation\n"


def test_writers_refuse_what_they_cannot_write(tmp_path: Path) -> None:
    """``write_dataset`` of an unvalidated scan leaves out an image whose box class cannot be
    written (a NUL is not XML, and would split no class list cleanly) in every format."""
    image = _png(tmp_path / "src" / "a.png")
    bad = ImageAnnotation("a.png", W, H, boxes=[Box("a\x00b", 1, 1, 5, 5)])
    scan = ScanResult("voc", [], [Record(image, tmp_path / "src" / "a.xml", bad)],
                      root=tmp_path / "src")
    for to in ("voc", "yolo", "coco"):
        summary = write_dataset(scan, tmp_path / f"out-{to}", to)
        (problem,) = summary.problems
        assert problem.path == image and "control characters" in problem.problem
        assert summary.labelled == 0
