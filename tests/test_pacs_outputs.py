"""DICOM results back to PACS: TID 1500 Enhanced SR and RGB Secondary Capture, read back."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_factory import make_dataset, write_dataset, write_multiframe, write_series
from PIL import Image
from pydicom.sr.codedict import codes

from lumbardx import __version__
from lumbardx.clinical.findings import build_findings
from lumbardx.clinical.levels import DISC_LEVELS
from lumbardx.data.boxes import Box
from lumbardx.data.errors import InputError
from lumbardx.data.images import MedicalImage
from lumbardx.data.series import load_study
from lumbardx.pacs import build_secondary_capture, build_sr, write_dicom_outputs
from lumbardx.pacs import codes as lx
from lumbardx.pacs.sr import box_polyline, character_set, evidence_dataset
from lumbardx.study import ModelInfo, Study, pixel_key

SHAPE = (128, 96)  # rows, columns
MODEL = ModelInfo(name="yolov5s", version="0.1.0+test", weights_sha256="ab" * 32,
                  class_names=["normal", "herniation", "spondylolisthesis"], image_size=640)


def _boxes(scored: bool = True) -> list[Box]:
    """Three discs down a 96 x 128 image: normal, herniation, slip (with a normal disc box)."""
    s = (lambda v: v) if scored else (lambda v: None)
    return [Box("normal", 30, 20, 60, 30, score=s(0.91)),
            Box("herniation", 32.5, 50, 62, 60.5, score=s(0.83)),
            Box("normal", 34, 80, 64, 90, score=s(0.7)),
            Box("spondylolisthesis", 30, 70, 66.25, 100, score=s(0.64))]


def _study(image: MedicalImage, boxes: list[Box] | None = None) -> Study:
    findings = build_findings(boxes if boxes is not None else _boxes(),
                              (image.width, image.height))
    return Study(source=image.source, image=image, findings=findings, model=MODEL,
                 study_key=pixel_key(image.pixels))


def _overlay(image: MedicalImage) -> np.ndarray:
    rng = np.random.default_rng(0)
    rgb = np.stack([image.display] * 3, axis=-1).copy()
    rgb[10:20, 10:40] = rng.integers(0, 256, size=(10, 30, 3), dtype=np.uint8)
    return rgb


@pytest.fixture()
def series_study(tmp_path: Path) -> Study:
    write_series(tmp_path / "series", n=5, shape=SHAPE, pixel_spacing=(0.8, 0.75))
    study = _study(load_study(tmp_path / "series")[0])
    study.findings.discs[1].herniation_extent_mm = 4.25
    study.findings.discs[2].slip_percent = 18.5
    study.findings.discs[2].meyerding_grade = "I"
    return study


def _corners(box: Box) -> list[list[float]]:
    return [[box.x1, box.y1], [box.x2, box.y1], [box.x2, box.y2], [box.x1, box.y2],
            [box.x1, box.y1]]


def test_sr_round_trip(series_study: Study, tmp_path: Path) -> None:
    header = series_study.image.header
    out = write_dicom_outputs(series_study, _overlay(series_study.image), tmp_path / "out")
    assert out == {"sr": tmp_path / "out" / "sr.dcm",
                   "overlay_sc": tmp_path / "out" / "overlay_sc.dcm"}
    sr = hd.sr.srread(out["sr"])
    assert isinstance(sr, hd.sr.EnhancedSR)
    assert sr.StudyInstanceUID == header.StudyInstanceUID
    assert (sr.PatientID, str(sr.PatientName)) == (header.PatientID, str(header.PatientName))
    assert sr.SeriesInstanceUID != header.SeriesInstanceUID
    assert sr.SOPInstanceUID != header.SOPInstanceUID
    assert sr.Modality == "SR" and sr.ContentQualification == "RESEARCH"
    assert (sr.PreliminaryFlag, sr.VerificationFlag) == ("PRELIMINARY", "UNVERIFIED")
    assert "not a diagnosis" in sr.SeriesDescription
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99LUMBARDX"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == header.StudyInstanceUID
    assert (evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
            .ReferencedSOPInstanceUID == header.SOPInstanceUID)

    root = sr.ContentSequence
    procedure = [i for i in root if i.ConceptNameCodeSequence[0].CodeValue == "121058"]
    assert procedure[0].ConceptCodeSequence[0].CodeValue == lx.PROCEDURE_CODE.value
    device = sr.content.get_observer_contexts()[0].observer_identifying_attributes
    assert device.name == f"lumbardx {__version__}" and device.model_name == "yolov5s"

    discs = series_study.findings.discs
    groups = sr.content.get_planar_roi_measurement_groups()
    assert [d.level for d in discs] == ["L3-L4", "L4-L5", "L5-S1"]
    assert len(groups) == len(discs)
    expected_type = {"normal": ("NORMAL-DISC", "99LUMBARDX"), "herniation": ("73589001", "SCT"),
                     "spondylolisthesis": ("274152003", "SCT")}
    sites = {"L3-L4": codes.SCT.L3L4Disc, "L4-L5": codes.SCT.L4L5Disc,
             "L5-S1": codes.SCT.L5S1Disc}
    uids = set()
    for disc, group in zip(discs, groups):
        assert group.tracking_identifier == f"{disc.level} disc"
        uids.add(str(group.tracking_uid))
        np.testing.assert_array_equal(group.roi.value, np.asarray(_corners(disc.box), np.float32))
        assert group.roi.graphic_type.value == "POLYLINE"
        ref = group.roi.ContentSequence[0].ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == header.SOPInstanceUID
        assert ref.ReferencedSOPClassUID == header.SOPClassUID
        ftype = group.finding_type
        assert (ftype.value, ftype.scheme_designator) == expected_type[disc.status]
        assert group.finding_sites[0].value.value == sites[disc.level].value
        measured = {m.name.meaning: (m.value, m.unit.value) for m in group.get_measurements()}
        assert measured["Certainty of Finding"] == (pytest.approx(disc.confidence), "{ratio}")
        methods = [m.method.value for m in group.get_measurements()]
        assert set(methods) <= {"DETECTOR-SCORE", "SLICE-ESTIMATE"} and methods
        evaluated = {q.name.value: q.value.value for q in group.get_qualitative_evaluations()}
        assert evaluated[expected_type[disc.status][0]] == codes.SCT.Present.value
        assert evaluated["LEVEL-UNCERTAIN"] in (codes.SCT.Yes.value, codes.SCT.No.value)
        assert (evaluated["LEVEL-UNCERTAIN"] == codes.SCT.Yes.value) == disc.level_uncertain
    assert len(uids) == len(discs)
    # the slipped disc also holds a normal box: "normal disc present" must not be claimed there
    slip_eval = {q.name.value for q in groups[2].get_qualitative_evaluations()}
    assert "NORMAL-DISC" not in slip_eval and "MEYERDING" in slip_eval
    m2 = {m.name.value: (m.value, m.unit.value) for m in groups[2].get_measurements()}
    assert m2["SLIP-PERCENT"] == (pytest.approx(18.5), "%")
    m1 = {m.name.value: (m.value, m.unit.value) for m in groups[1].get_measurements()}
    assert m1["HERN-EXTENT"] == (pytest.approx(4.25), "mm")


def test_sc_round_trip(series_study: Study, tmp_path: Path) -> None:
    header = series_study.image.header
    overlay = _overlay(series_study.image)
    out = write_dicom_outputs(series_study, overlay, tmp_path)
    sc = pydicom.dcmread(out["overlay_sc"])
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert (sc.PhotometricInterpretation, sc.SamplesPerPixel) == ("RGB", 3)
    np.testing.assert_array_equal(sc.pixel_array, overlay)
    assert sc.StudyInstanceUID == header.StudyInstanceUID and sc.PatientID == header.PatientID
    assert sc.SeriesInstanceUID not in (header.SeriesInstanceUID,
                                        pydicom.dcmread(out["sr"]).SeriesInstanceUID)
    assert sc.SeriesDescription == "lumbardx overlay" and sc.BurnedInAnnotation == "YES"
    assert "not a diagnosis" in sc.DerivationDescription and "not a diagnosis" in sc.ImageComments
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == header.SOPInstanceUID
    assert list(sc.PatientOrientation) == ["P", "F"]  # rows anterior->posterior, columns down
    assert [float(v) for v in sc.PixelSpacing] == [0.8, 0.75]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


JIS = ["ISO 2022 IR 6", "ISO 2022 IR 87"]


@pytest.mark.parametrize("charset, name, extra_class, sr_charset, sc_charset", [
    ("ISO_IR 192", "Dvořák^Zoë=王^小明", None, "ISO_IR 192", "ISO_IR 192"),
    ("ISO_IR 100", "Müller^Jürgen", None, "ISO_IR 100", "ISO_IR 100"),
    # the SR writes class names as code meanings (Latin-1 cannot hold these); the SC does not
    ("ISO_IR 100", "Müller^Jürgen", "椎间盘突出", "ISO_IR 192", "ISO_IR 100"),
    (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎", None, JIS, JIS),
])
def test_non_ascii_text_survives(tmp_path: Path, charset: str | list[str], name: str,
                                 extra_class: str | None, sr_charset: str | list[str],
                                 sc_charset: str | list[str]) -> None:
    ds = make_dataset(np.full(SHAPE, 300, np.uint16))
    ds.SpecificCharacterSet = charset
    ds.PatientName = name
    ds.SliceThickness = 4.0  # complete cross-sectional descriptors: SR gets an image library
    write_dataset(ds, tmp_path / "slice.dcm")
    image = load_study(tmp_path / "slice.dcm")[0]
    boxes = _boxes()
    if extra_class is not None:
        boxes.append(Box(extra_class, 35, 110, 62, 120, score=0.5))
    study = _study(image, boxes)
    out = write_dicom_outputs(study, _overlay(image), tmp_path / "out")
    for path, expected in ((out["sr"], sr_charset), (out["overlay_sc"], sc_charset)):
        back = pydicom.dcmread(path)
        assert str(back.PatientName) == name
        got = back.SpecificCharacterSet
        assert (list(got) if isinstance(expected, list) else got) == expected
    sr = hd.sr.srread(out["sr"])
    if extra_class is not None:
        meanings = [g.finding_type.meaning for g in sr.content.get_planar_roi_measurement_groups()]
        assert f"Detector class: {extra_class}" in meanings
    library = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "111028"]
    assert library, "image library expected when the source has full geometry"


def _reread(sr: hd.sr.EnhancedSR, folder: Path) -> hd.sr.EnhancedSR:
    sr.save_as(folder / "reread.dcm", enforce_file_format=True)
    return hd.sr.srread(folder / "reread.dcm")


def test_multiframe_source_references_frame(tmp_path: Path) -> None:
    frames = np.stack([np.full(SHAPE, 100 * (k + 1), np.uint16) for k in range(5)])
    write_multiframe(tmp_path / "enhanced.dcm", frames)
    image = load_study(tmp_path / "enhanced.dcm")[0]
    assert image.frame == 2
    study = _study(image)
    sr = _reread(build_sr(study), tmp_path)
    for group in sr.content.get_planar_roi_measurement_groups():
        source = group.roi.ContentSequence[0].ReferencedSOPSequence[0]
        assert source.ReferencedFrameNumber == 3
    sc = build_secondary_capture(study, _overlay(image))
    assert sc.SourceImageSequence[0].ReferencedFrameNumber == 3
    assert list(sc.PatientOrientation) == ["P", "F"]


def test_ground_truth_has_no_confidence(series_study: Study, tmp_path: Path) -> None:
    study = _study(series_study.image, _boxes(scored=False))
    groups = _reread(build_sr(study), tmp_path).content.get_planar_roi_measurement_groups()
    assert len(groups) == 3
    assert all(not g.get_measurements() for g in groups)


def test_slice_without_discs_is_reported_as_such(series_study: Study, tmp_path: Path) -> None:
    study = _study(series_study.image, [])
    assert not study.findings.discs
    sr = _reread(build_sr(study), tmp_path)
    content = sr.content
    assert not content.get_planar_roi_measurement_groups()
    (group,) = content.get_image_measurement_groups()
    assert group.tracking_identifier == "analysed slice"
    (evaluation,) = group.get_qualitative_evaluations()
    assert evaluation.name == lx.DISC_DETECTED and evaluation.value == lx.NO
    ref = group.source_images[0]
    assert ref.referenced_sop_instance_uid == series_study.image.header.SOPInstanceUID


def test_image_input_refused(tmp_path: Path) -> None:
    png = tmp_path / "slice.png"
    Image.fromarray(np.full(SHAPE, 90, np.uint8)).save(png)
    image = load_study(png)[0]
    study = _study(image)
    with pytest.raises(InputError, match="PNG image, not DICOM") as info:
        write_dicom_outputs(study, _overlay(image), tmp_path / "out")
    assert info.value.path == png
    assert not (tmp_path / "out").exists()


def test_header_without_uid_and_bad_arguments(series_study: Study, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\]"):
        build_secondary_capture(series_study, np.zeros(SHAPE, np.uint8))
    (tmp_path / "taken").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        write_dicom_outputs(series_study, _overlay(series_study.image), tmp_path / "taken")
    del series_study.image.header.SOPInstanceUID
    with pytest.raises(InputError, match="no SOPInstanceUID") as info:
        build_sr(series_study)
    assert info.value.path == series_study.image.source


def test_codes() -> None:
    for level in DISC_LEVELS:
        code = lx.level_code(level)
        assert code.scheme_designator == "SCT", level
    assert lx.level_code("L4-L5").value == codes.SCT.L4L5Disc.value
    assert lx.level_code("?") == lx.UNNAMED_DISC
    other = lx.finding_code("Schmorl node")
    assert other.scheme_designator == "99LUMBARDX" and len(other.value) <= 16
    assert other == lx.finding_code("Schmorl node") and other != lx.finding_code("Modic")


def test_real_png_refused(yolospine_dev: Path, tmp_path: Path) -> None:
    png = sorted((yolospine_dev / "images").glob("*.png"))[0]
    image = load_study(png)[0]
    study = _study(image, [Box("normal", 150, 100, 200, 120, score=0.9)])
    with pytest.raises(InputError) as info:
        write_dicom_outputs(study, np.zeros((image.height, image.width, 3), np.uint8), tmp_path)
    assert info.value.path == png


def test_header_helpers(series_study: Study) -> None:
    disc = series_study.findings.discs[0]
    disc.box = Box("normal", -3.0, 20.0, 60.0, 140.0, score=0.9)
    line = box_polyline(disc, width=96, height=128)  # clipped to the 96 x 128 image
    np.testing.assert_array_equal(line, [[0, 20], [60, 20], [60, 128], [0, 128], [0, 20]])
    header = series_study.image.header
    header.PatientSex = "MALE"
    evidence = evidence_dataset(header)
    assert evidence.PatientSex == "" and header.PatientSex == "MALE"  # source left untouched
    assert evidence.StudyDate == "" and "StudyDate" not in header
    assert character_set(evidence) is None  # ASCII text, default repertoire


def test_sr_carries_the_segment_readers_findings(tmp_path: Path) -> None:
    """Stenosis and degeneration called by the segment reader (``--classes all``) are coded in
    the SR: stenosis as SCT 76107001, degeneration as the local DISC-DEGEN."""
    write_series(tmp_path / "series", n=5, shape=SHAPE, pixel_spacing=(0.8, 0.75))
    boxes = [Box("normal", 30, 20, 60, 30, score=0.9),
             Box("normal", 32.5, 50, 62, 60.5, score=0.8),
             Box("stenosis", 34, 80, 64, 90, score=0.7),
             Box("degeneration", 30, 20, 60, 30, score=0.6)]
    study = _study(load_study(tmp_path / "series")[0], boxes)
    study.segment_reader = {"version": "r", "weights_sha256": None, "slip_call": "detector",
                            "slip_measure": "corners"}
    out = write_dicom_outputs(study, _overlay(study.image), tmp_path / "out")
    sr = hd.sr.srread(out["sr"])
    groups = sr.content.get_planar_roi_measurement_groups()
    types = [(g.finding_type.value, g.finding_type.scheme_designator) for g in groups]
    assert ("DISC-DEGEN", "99LUMBARDX") in types and ("76107001", "SCT") in types
