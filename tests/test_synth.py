"""Synthetic sagittal lumbar MRI: determinism, ground-truth consistency, VOC and DICOM output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_voi_lut

from lumbardx.data.errors import InputError
from lumbardx.data.voc import read_voc, write_voc
from lumbardx.synth import (TISSUES, SynthConfig, generate_case, generate_dataset, meyerding_grade,
                            write_dicom_series)
from lumbardx.synth.writer import truth_path

SMALL = SynthConfig(image_sizes=(256,))
SICK = SynthConfig(image_sizes=(256,), p_listhesis=1.0, p_herniation=0.45)


@pytest.fixture(scope="module")
def sick_cases() -> list:
    return [generate_case(np.random.default_rng(100 + i), SICK, f"c{i}") for i in range(10)]


def _dist_to_line(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    m = (b - a) / np.linalg.norm(b - a)
    r = p - a
    return float(abs(r[0] * m[1] - r[1] * m[0]))


def test_same_seed_same_case_and_different_seed_differs() -> None:
    a = generate_case(np.random.default_rng(3), SMALL, "x")
    b = generate_case(np.random.default_rng(3), SMALL, "x")
    c = generate_case(np.random.default_rng(4), SMALL, "x")
    assert np.array_equal(a.image, b.image) and np.array_equal(a.raw, b.raw)
    assert json.dumps(a.truth) == json.dumps(b.truth)
    assert not np.array_equal(a.image, c.image)
    assert json.dumps(a.truth) != json.dumps(c.truth)
    assert np.array_equal(a.render_slice(0.0), a.raw)


def test_dataset_files_are_byte_identical_for_a_seed(tmp_path: Path) -> None:
    one = generate_dataset(tmp_path / "a", 2, seed=7, config=SMALL)
    two = generate_dataset(tmp_path / "b", 2, seed=7, config=SMALL)
    other = generate_dataset(tmp_path / "c", 2, seed=8, config=SMALL)
    assert [p.name for p in one] == ["case_00000.png", "case_00001.png"]
    assert [p.name for p in two] == [p.name for p in one]
    for name in ["images/case_00000.png", "images/case_00001.png", "truth/case_00000.json",
                 "truth/case_00001.json", "annotations/case_00000.xml", "ground_truth.csv"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    first = (tmp_path / "a/images/case_00000.png").read_bytes()
    assert first != (tmp_path / "c/images/case_00000.png").read_bytes()
    manifest = json.loads((tmp_path / "a/manifest.json").read_text())
    assert manifest["seed"] == 7
    assert [c["case"] for c in manifest["cases"]] == ["case_00000", "case_00001"]
    png = np.asarray(Image.open(one[0]))
    truth = json.loads(truth_path(one[0]).read_text())
    assert png.dtype == np.uint8
    assert png.shape == (truth["image"]["height"], truth["image"]["width"])
    rows = (tmp_path / "a/ground_truth.csv").read_text().splitlines()
    assert len(rows) - 1 == sum(len(c["levels"]) for c in manifest["cases"])
    assert other[0].exists()


def test_every_disc_has_its_boxes_inside_the_image(sick_cases: list) -> None:
    for case in sick_cases:
        w, h = case.view.width, case.view.height
        boxes = {(b.label, b.xyxy()) for b in case.annotation.boxes}
        n_expected = 0
        for d in case.truth["discs"]:
            assert d["boxes"], d["level"]
            for label, xyxy in d["boxes"].items():
                n_expected += 1
                assert (label, tuple(xyxy)) in boxes
                x1, y1, x2, y2 = xyxy
                assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
                cx, cy = d["centre_px"]
                assert x1 < cx < x2 and y1 < cy < y2
            # a herniated or slipped disc carries no normal box
            assert "normal" not in d["boxes"] or len(d["boxes"]) == 1
        assert n_expected == len(case.annotation.boxes)


def test_levels_run_top_to_bottom_and_end_at_l5_s1(sick_cases: list) -> None:
    seen_sacrum = False
    for case in sick_cases:
        discs = case.truth["discs"]
        ys = [d["centre_px"][1] for d in discs]
        assert ys == sorted(ys)
        for up, low in zip(discs[:-1], discs[1:]):
            assert up["lower"] == low["upper"]  # consecutive levels, nothing skipped
        if case.truth["sacrum_visible"]:
            seen_sacrum = True
            assert discs[-1]["level"] == "L5-S1"
    assert seen_sacrum


def test_meyerding_from_corners_matches_stated_slip(sick_cases: list) -> None:
    checked = 0
    for case in sick_cases:
        corners = {v["name"]: v["corners_px"] for v in case.truth["vertebrae"]}
        for li in case.truth["listheses"]:
            assert li["in_view"]
            up, low = corners[li["upper"]], corners[li["lower"]]
            ps, as_ = np.array(low["posterior_superior"]), np.array(low["anterior_superior"])
            endplate = np.linalg.norm(as_ - ps)
            slip = np.dot(np.array(up["posterior_inferior"]) - ps, (as_ - ps) / endplate)
            percent = 100.0 * slip / endplate
            assert abs(percent - li["slip_percent"]) < 1.0
            assert meyerding_grade(percent) == li["grade"]
            assert abs(slip * case.pixel_spacing[0] - li["slip_mm"]) < 0.3
            checked += 1
    assert checked == len(sick_cases)


def test_herniation_extent_matches_margin_and_rendered_material(sick_cases: list) -> None:
    checked = 0
    for case in sick_cases:
        s = case.pixel_spacing[0]
        yy, xx = np.nonzero(case.labels == TISSUES["herniation"])
        pix = np.stack([xx + 0.5, yy + 0.5], axis=1)
        for d in case.truth["discs"]:
            her = d["herniation"]
            if her is None:
                continue
            a, b = (np.array(p) for p in d["posterior_margin_px"])
            apex = np.array(her["apex_px"])
            assert _dist_to_line(apex, a, b) * s == pytest.approx(her["extent_mm"], abs=0.02)
            near = pix[np.hypot(*(pix - apex).T) < 12.0 / s]
            far = max(_dist_to_line(p, a, b) for p in near) * s
            assert her["extent_mm"] - 1.5 * s <= far <= her["extent_mm"] + 1.0 * s
            checked += 1
    assert checked >= 3


def test_voc_round_trip(tmp_path: Path, sick_cases: list) -> None:
    case = sick_cases[0]
    path = tmp_path / "c0.xml"
    write_voc(case.annotation, path)
    back = read_voc(path, class_names=["normal", "herniation", "spondylolisthesis"])
    expected = [(b.label, b.xyxy()) for b in case.annotation.boxes]
    assert [(b.label, b.xyxy()) for b in back.boxes] == expected
    assert (back.width, back.height) == (case.view.width, case.view.height)


def test_dicom_series_geometry_and_mid_slice(tmp_path: Path) -> None:
    case = generate_case(np.random.default_rng(11), SMALL, "d")
    paths = write_dicom_series(case, tmp_path / "dicom", SMALL)
    again = write_dicom_series(case, tmp_path / "again", SMALL)
    series = [pydicom.dcmread(p) for p in paths]
    assert 7 <= len(series) <= 11
    assert all(p.read_bytes()[128:132] == b"DICM" for p in paths)
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]
    xs = [float(ds.ImagePositionPatient[0]) for ds in series]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)
    assert np.allclose(np.diff(xs), float(series[0].SpacingBetweenSlices))
    for ds in series:
        assert ds.Modality == "MR" and ds.BitsAllocated == 16
        assert [float(v) for v in ds.ImageOrientationPatient] == [0, 1, 0, 0, 0, -1]
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx(list(case.pixel_spacing))
        assert "SYNTH" in str(ds.PatientName).upper()
        assert ds.StudyInstanceUID == series[0].StudyInstanceUID
    assert len({ds.SOPInstanceUID for ds in series}) == len(series)
    mid = series[len(series) // 2]
    assert float(mid.ImagePositionPatient[0]) == 0.0
    shown = np.rint(apply_voi_lut(mid.pixel_array, mid) * 255.0 / (2**mid.BitsStored - 1))
    assert np.abs(shown - case.image.astype(float)).max() <= 1
    assert not np.array_equal(series[0].pixel_array, mid.pixel_array)


def test_lateral_slices_show_less_canal_and_more_pedicle(tmp_path: Path) -> None:
    from lumbardx.synth.render import render_signal

    case = generate_case(np.random.default_rng(12), SMALL, "l")
    p = case._params
    mid = render_signal(case.spine, case.view, 0.0, p["tex_seed"], p["tissue"])[1]
    side = render_signal(case.spine, case.view, 14.0, p["tex_seed"], p["tissue"])[1]
    assert (mid == TISSUES["csf"]).sum() > 200 and (side == TISSUES["csf"]).sum() == 0
    assert (mid == TISSUES["cord"]).sum() > 0 and (mid == TISSUES["nucleus"]).sum() > 0
    bone = TISSUES["posterior_element"]
    assert (side == bone).sum() > (mid == bone).sum()


def test_bad_output_folder_and_count(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(InputError, match="file.txt"):
        generate_dataset(blocker, 1, 0, config=SMALL)
    with pytest.raises(InputError, match="at least 1"):
        generate_dataset(tmp_path / "out", 0, 0, config=SMALL)


def test_cli_writes_the_set(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from lumbardx.cli.synth import synth

    app = typer.Typer()
    app.command()(synth)
    result = CliRunner().invoke(app, [str(tmp_path / "set"), "--n", "2", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "set/manifest.json").exists()
    assert (tmp_path / "set/annotations/case_00001.xml").exists()


def test_set_reads_back_as_a_dataset_with_dicom_studies_beside_it(tmp_path: Path) -> None:
    from lumbardx.data.check import check_dataset
    from lumbardx.data.dataset import LumbarDataset

    generate_dataset(tmp_path / "set", 2, seed=3, dicom=True, config=SMALL)
    report = check_dataset(tmp_path / "set")
    assert report.images == 2 and report.ok and not report.problems
    ds = LumbarDataset(tmp_path / "set", classes="study")
    assert ds.class_names == ["normal", "herniation", "spondylolisthesis"]
    assert len(ds) == 2 and sum(len(r.boxes) for r in ds.records) > 0
    assert len(list((tmp_path / "set/dicom/case_00000").glob("*.dcm"))) >= 5


def test_dicom_studies_with_t1_hold_a_co_registered_pair(tmp_path: Path) -> None:
    from lumbardx.data.check import check_dataset
    from lumbardx.data.series import load_study_pair

    generate_dataset(tmp_path / "set", 1, seed=3, dicom=True, config=SMALL, t1=True)
    assert check_dataset(tmp_path / "set").ok
    study = tmp_path / "set/dicom/case_00000"
    n_t2, n_t1 = (len(list((study / s).glob("*.dcm"))) for s in ("t2", "t1"))
    assert n_t2 == n_t1 >= 5
    pair = load_study_pair(study)
    assert pair.image_weighting == "T2" and pair.partner is not None
    assert "T1" in (pair.partner_series or "")
    # the T1 series is the same anatomy with T1 contrast: fat bright, marrow above disc,
    # CSF dark -- where on T2 CSF is the brightest tissue
    case = generate_case(np.random.default_rng(np.random.SeedSequence(3).spawn(1)[0]), SMALL,
                         "case_00000")
    t1 = pair.partner.pixels.astype(float)
    t2 = pair.image.pixels.astype(float)
    np.testing.assert_array_equal(t1, case.render_slice(0.0, weighting="T1"))
    np.testing.assert_array_equal(t2, case.raw)

    def mean(img: np.ndarray, tissue: str) -> float:
        return float(img[case.labels == TISSUES[tissue]].mean())

    assert mean(t1, "fat") > mean(t1, "vertebral_body") > mean(t1, "nucleus") > mean(t1, "csf")
    assert mean(t2, "csf") > mean(t2, "vertebral_body")
    assert mean(t2, "csf") > 2 * mean(t1, "csf")
    with pytest.raises(ValueError, match="weighting"):
        case.render_slice(0.0, weighting="PD")


def test_cli_t1_needs_dicom(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from lumbardx.cli.synth import synth

    app = typer.Typer()
    app.command()(synth)
    result = CliRunner().invoke(app, [str(tmp_path / "set"), "--n", "1", "--t1"])
    assert result.exit_code == 2
    assert "--t1 needs --dicom" in " ".join(result.output.split())


def _ratios(boxes: list[tuple[str, float, float, float, float]]) -> dict[str, list[float]]:
    """Normal-box width and height over the median disc spacing of the image."""
    discs = sorted((b for b in boxes if b[0] in ("normal", "herniation")),
                   key=lambda b: b[2] + b[4])
    out: dict[str, list[float]] = {"w": [], "h": []}
    if len(discs) < 3:
        return out
    sp = float(np.median(np.diff([(b[2] + b[4]) / 2 for b in discs])))
    for b in discs:
        if b[0] == "normal":
            out["w"].append((b[3] - b[1]) / sp)
            out["h"].append((b[4] - b[2]) / sp)
    return out


def test_normal_box_proportions_match_the_real_dataset(yolospine_dev: Path) -> None:
    real: dict[str, list[float]] = {"w": [], "h": []}
    for lab in sorted((yolospine_dev / "labels").glob("*.txt"))[:300]:
        boxes = []
        for line in lab.read_text().split("\n"):
            f = line.split()
            if len(f) == 5 and f[0] in ("1", "4"):
                cx, cy, w, h = (float(v) for v in f[1:])
                boxes.append(("normal" if f[0] == "1" else "herniation", cx - w / 2, cy - h / 2,
                              cx + w / 2, cy + h / 2))
        for k, v in _ratios(boxes).items():
            real[k] += v
    synth: dict[str, list[float]] = {"w": [], "h": []}
    for i in range(12):
        case = generate_case(np.random.default_rng(500 + i), SMALL)
        for k, v in _ratios([(b.label, *b.xyxy()) for b in case.annotation.boxes]).items():
            synth[k] += v
    for k in ("w", "h"):
        assert np.median(synth[k]) == pytest.approx(np.median(real[k]), rel=0.15), k
