"""Diagnosis with a detector trained on T1/T2 pairs: the co-registered series of a study is
found, read with the analysed slice and named in the outputs; without it the slice is read
alone, with a warning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
import typer
from checkpoints import random_checkpoint
from findings_schema import check_findings_schema

from lumbardx.diagnosis import Diagnoser
from lumbardx.report.html import header_fields
from lumbardx.synth import SynthConfig, generate_case, write_dicom_series

NAMES = ["normal", "herniation", "spondylolisthesis"]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic study: a T2 and a co-registered T1 sagittal series (128 px)."""
    root = tmp_path_factory.mktemp("pairstudy")
    case = generate_case(np.random.default_rng(4), SynthConfig(image_sizes=(128,)))
    write_dicom_series(case, root / "study" / "t2")
    write_dicom_series(case, root / "study" / "t1", weighting="T1")
    return root / "study"


class Spy:
    """Wraps a backend and keeps the inputs it was given."""

    def __init__(self, backend) -> None:
        self.backend, self.seen = backend, []

    def __call__(self, x: torch.Tensor):
        self.seen.append(x.clone())
        return self.backend(x)


def _diagnoser(tmp_path: Path, pairs: bool) -> tuple[Diagnoser, Spy]:
    dx = Diagnoser(random_checkpoint(tmp_path / f"m{int(pairs)}.pt", pairs=pairs), backend="torch")
    spy = Spy(dx.loaded.backend)
    dx.loaded.backend = spy
    return dx, spy


def _copy_study(study: Path, out: Path, edit_t1) -> Path:
    """A copy of ``study`` whose T1 files pass through ``edit_t1(dataset)`` (in place)."""
    for sub in ("t1", "t2"):
        (out / sub).mkdir(parents=True)
        for f in sorted((study / sub).glob("*.dcm")):
            ds = pydicom.dcmread(f)
            if sub == "t1":
                edit_t1(ds)
            ds.save_as(out / sub / f.name)
    return out


def test_series_of_a_pair_are_co_registered(study: Path, tmp_path: Path) -> None:
    from lumbardx.data.series import load_study_pair, partner_series, sagittal_series, same_plane

    t2, t1 = sagittal_series(study)  # T2 ranks first
    assert (t2.weighting, t1.weighting) == ("T2", "T1") and same_plane(t2, t1)
    mid = (len(t2) - 1) // 2
    assert partner_series(t2, [t2, t1]) == (t1, t1.slices[mid])
    assert partner_series(t1, [t2, t1]) == (t2, t2.slices[mid])
    assert partner_series(t2, [t2, t1], ref=t2.slices[2]) == (t1, t1.slices[2])
    assert partner_series(t2, [t2]) is None
    pair = load_study_pair(study)
    assert pair.image_weighting == "T2" and "T1_TSE_SAG" in (pair.partner_series or "")
    assert not pair.resampled and pair.partner_display is pair.partner.display
    t1_img, t2_img = pair.t1_t2()
    assert t1_img.shape == t2_img.shape and not np.array_equal(t1_img, t2_img)
    np.testing.assert_array_equal(t2_img, pair.image.display)

    # the T1 slices 2 mm to the side (along the slice normal): none in the analysed plane
    def sideways(ds) -> None:
        ds.ImagePositionPatient = [float(v) + (2.0 if k == 0 else 0.0)
                                   for k, v in enumerate(ds.ImagePositionPatient)]

    a, b = sagittal_series(_copy_study(study, tmp_path / "sideways", sideways))
    assert same_plane(a, b) and partner_series(a, [a, b]) is None
    lone = load_study_pair(tmp_path / "sideways")
    assert lone.partner is None and "no co-registered T1 series" in lone.reason
    np.testing.assert_array_equal(*lone.t1_t2())


def test_a_coarser_partner_is_resampled_onto_the_analysed_grid(study: Path,
                                                              tmp_path: Path) -> None:
    from lumbardx.data.series import load_study_pair

    def coarser(ds) -> None:  # every other pixel, twice the spacing
        px = ds.pixel_array[::2, ::2].copy()
        ds.Rows, ds.Columns = px.shape
        ds.PixelSpacing = [2 * float(v) for v in ds.PixelSpacing]
        ds.PixelData = px.tobytes()

    fine = load_study_pair(study)
    pair = load_study_pair(_copy_study(study, tmp_path / "coarse", coarser))
    assert pair.partner is not None and pair.resampled
    assert pair.partner.display.shape == tuple(s // 2 for s in fine.image.display.shape)
    assert "resampled onto the analysed pixel grid" in (pair.partner_series or "")
    t1_coarse, t2 = pair.t1_t2()
    t1_fine, _ = fine.t1_t2()
    assert t1_coarse.shape == t2.shape == t1_fine.shape
    np.testing.assert_array_equal(t1_coarse[::2, ::2], t1_fine[::2, ::2])  # the samples kept
    # between two kept samples of a column, the mean of the two (bilinear interpolation)
    kept = t1_fine[::2, ::2].astype(float)
    between = t1_coarse[1:-1:2, ::2].astype(float)
    assert np.abs(between - (kept[:-1] + kept[1:]) / 2).max() <= 1.0

    # a partner 60% of the field of view away covers too little of it: read alone
    def shifted(ds) -> None:  # 0.6 of the image height towards the feet
        rows_mm = 0.6 * ds.Rows * float(ds.PixelSpacing[0])
        ds.ImagePositionPatient = [float(v) - (rows_mm if k == 2 else 0.0)
                                   for k, v in enumerate(ds.ImagePositionPatient)]

    away = load_study_pair(_copy_study(study, tmp_path / "away", shifted))
    assert away.partner is None and "covers only 40%" in away.reason


def test_slices_reduced_on_read_by_different_steps_still_line_up(study: Path,
                                                                 tmp_path: Path) -> None:
    """A T2 over the size limit is read reduced (step 2), its coarser T1 partner (half the
    pixels, twice the spacing) is not: the partner is mapped onto the reduced grid by the
    physical positions of both (``reduced_grid_map``), not by their full-size grids."""
    from lumbardx.data.series import load_study_pair, reduced_grid_map

    def coarser(ds) -> None:  # every other pixel, twice the spacing
        px = ds.pixel_array[::2, ::2].copy()
        ds.Rows, ds.Columns = px.shape
        ds.PixelSpacing = [2 * float(v) for v in ds.PixelSpacing]
        ds.PixelData = px.tobytes()

    coarse = _copy_study(study, tmp_path / "coarse", coarser)
    full = load_study_pair(coarse)
    reduced = load_study_pair(coarse, max_side=100)  # the 128-px T2 read at 64 px
    assert reduced.image.display.shape == full.partner.display.shape == (64, 64)
    assert reduced.partner is not None and reduced.resampled
    # reduced T2 pixel i is the mean of full pixels 2i and 2i + 1, centred at 2i + 0.5: a
    # quarter of a T1 pixel below T1 pixel i (T1 pixel j is centred at T2 full pixel 2j)
    scale, offset = reduced_grid_map(np.array([0.5, 0.5]), np.zeros(2), 2, 1)
    np.testing.assert_allclose(scale, [1.0, 1.0])
    np.testing.assert_allclose(offset, [0.25, 0.25])
    t1_on_reduced, t2_reduced = reduced.t1_t2()
    t1 = reduced.partner.display.astype(float)
    shifted = 0.75 * t1[:-1, :-1] + 0.25 * t1[1:, :-1]  # rows a quarter pixel down
    shifted = 0.75 * shifted + 0.25 * (0.75 * t1[:-1, 1:] + 0.25 * t1[1:, 1:])
    assert np.abs(t1_on_reduced[:-1, :-1] - shifted).max() <= 1.0
    # the anatomy lines up with the reduced T2 as well as at full size
    def edges(img: np.ndarray) -> np.ndarray:
        return np.abs(np.diff(img.astype(float), axis=0))

    corr = np.corrcoef(edges(t1_on_reduced).ravel(), edges(t2_reduced).ravel())[0, 1]
    t1_full, t2_full = full.t1_t2()
    corr_full = np.corrcoef(edges(t1_full).ravel(), edges(t2_full).ravel())[0, 1]
    assert corr > 0.8 * corr_full


def test_a_partner_with_fewer_slices_pairs_at_the_same_position(study: Path,
                                                                tmp_path: Path) -> None:
    import shutil

    from lumbardx.data.series import load_study_pair, partner_series, sagittal_series

    fewer = tmp_path / "fewer"
    shutil.copytree(study / "t2", fewer / "t2")
    (fewer / "t1").mkdir(parents=True)
    for f in sorted((study / "t1").glob("*.dcm"))[2:]:  # the T1 series lacks two slices
        shutil.copy(f, fewer / "t1" / f.name)
    t2, t1 = sagittal_series(fewer)
    assert len(t1) == len(t2) - 2
    match = partner_series(t2, [t2, t1])
    assert match is not None and match[0] is t1
    mid = t2.slices[(len(t2) - 1) // 2]
    assert np.linalg.norm(match[1].origin - mid.origin) < 1e-6
    pair = load_study_pair(fewer)
    assert pair.partner is not None and pair.partner.source == match[1].path


def test_pair_model_reads_the_partner_slice(study: Path, tmp_path: Path) -> None:
    dx, spy = _diagnoser(tmp_path, pairs=True)
    assert dx.info.inputs == "T1+T2" and dx.info.reads_pairs
    res = dx.diagnose(study)
    assert res.partner_series is not None and "T1_TSE_SAG" in res.partner_series
    x = spy.seen[-1]
    assert x.shape == (1, 3, 64, 64)
    assert not torch.equal(x[0, 0], x[0, 1])  # T1 and T2 differ
    torch.testing.assert_close(x[0, 2], x[0, :2].mean(0))
    assert not any("read alone" in w for w in res.warnings)
    doc = json.loads(json.dumps(res.to_dict()))
    check_findings_schema(doc)
    assert doc["image"]["partner_series"] == res.partner_series
    assert doc["model"]["inputs"] == "T1+T2"
    fields = dict(header_fields(res))
    assert "T1_TSE_SAG" in fields["Read together with"]
    assert "reads T1 and T2 together" in fields["Model"]


def test_pair_model_reads_a_single_slice_alone_and_says_so(study: Path, tmp_path: Path) -> None:
    dx, spy = _diagnoser(tmp_path, pairs=True)
    res = dx.diagnose(sorted((study / "t2").glob("*.dcm"))[5])  # one DICOM file
    assert res.partner_series is None
    assert any("a single file has no second sequence" in w and "read alone" in w
               for w in res.warnings)
    x = spy.seen[-1]
    assert torch.equal(x[0, 0], x[0, 1]) and torch.equal(x[0, 1], x[0, 2])


def test_single_slice_model_ignores_the_partner(study: Path, tmp_path: Path) -> None:
    dx, spy = _diagnoser(tmp_path, pairs=False)
    res = dx.diagnose(study)
    assert dx.info.inputs == "slice" and res.partner_series is None
    assert res.to_dict()["image"]["partner_series"] is None
    assert not any("T1 and T2" in w for w in res.warnings)
    x = spy.seen[-1]
    assert torch.equal(x[0, 0], x[0, 1])
    assert "Read together with" not in dict(header_fields(res))


def test_web_upload_of_a_t1_t2_study_is_read_as_a_pair(study: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient
    from test_app_security import PASSWORD, login

    from lumbardx.app import AppSettings, create_app

    dx, spy = _diagnoser(tmp_path, pairs=True)
    app = create_app(AppSettings(data_dir=tmp_path / "data", analyse_in_background=False),
                     diagnoser=dx)
    app.state.ctx.users.add("alice", PASSWORD)
    client = TestClient(app)
    csrf = {"X-CSRF-Token": login(client).json()["csrf_token"]}
    files = [("files", (f"{sub}-{p.name}", p.read_bytes(), "application/dicom"))
             for sub in ("t2", "t1") for p in sorted((study / sub).glob("*.dcm"))]
    r = client.post("/api/studies", files=files, headers=csrf)
    assert r.status_code == 201, r.text
    key = r.json()["study"]["study_key"]
    findings = client.get(f"/api/studies/{key}/findings.json").json()
    assert "T1_TSE_SAG" in (findings["image"]["partner_series"] or "")
    assert findings["model"]["inputs"] == "T1+T2"
    x = spy.seen[-1]
    assert not torch.equal(x[0, 0], x[0, 1])


def _spied(dx: Diagnoser) -> tuple[Spy, Spy]:
    """Spies on the pair model's and the single-slice model's backends."""
    assert dx.single_slice is not None
    pair_spy, single_spy = Spy(dx.loaded.backend), Spy(dx.single_slice.backend)
    dx.loaded.backend, dx.single_slice.backend = pair_spy, single_spy
    return pair_spy, single_spy


def test_slices_without_a_pair_go_to_the_single_slice_model(study: Path, tmp_path: Path) -> None:
    single = random_checkpoint(tmp_path / "single.pt", pairs=False)
    dx = Diagnoser(random_checkpoint(tmp_path / "pair.pt", pairs=True), backend="torch",
                   single_slice=single, thresholds={"herniation": 0.4})
    assert dx.single_slice is not None and dx.single_slice.source == single
    assert [m.thresholds["herniation"] for m in dx.models] == [0.4, 0.4]
    pair_spy, single_spy = _spied(dx)
    dx.warmup()
    assert len(pair_spy.seen) == len(single_spy.seen) == 1

    paired = dx.diagnose(study)  # a study with both series: the pair model
    assert paired.model.inputs == "T1+T2" and paired.partner_series is not None
    assert len(pair_spy.seen) == 2 and len(single_spy.seen) == 1
    assert not any("single-slice model" in w for w in paired.warnings)

    lone = dx.diagnose(sorted((study / "t2").glob("*.dcm"))[5])  # one file: no partner
    assert len(pair_spy.seen) == 2 and len(single_spy.seen) == 2
    assert lone.model.inputs == "slice" and lone.partner_series is None
    assert lone.model.weights_sha256 == dx.single_slice.info.weights_sha256
    assert any("a single file has no second sequence" in w and "single-slice model" in w
               for w in lone.warnings)
    assert not any("read alone" in w for w in lone.warnings)
    doc = lone.to_dict()
    check_findings_schema(doc)
    assert doc["model"]["inputs"] == "slice"


def test_single_slice_model_must_read_single_slices(tmp_path: Path) -> None:
    from lumbardx.data.errors import InputError

    other_pair = random_checkpoint(tmp_path / "other.pt", pairs=True)
    with pytest.raises(InputError, match="must read single slices"):
        Diagnoser(random_checkpoint(tmp_path / "pair.pt", pairs=True), backend="torch",
                  single_slice=other_pair)
    two = random_checkpoint(tmp_path / "two.pt", class_names=NAMES[:2])
    with pytest.raises(InputError, match="classes"):
        Diagnoser(random_checkpoint(tmp_path / "pair.pt", pairs=True), backend="torch",
                  single_slice=two)
    # a single-slice main model has no use for one
    dx = Diagnoser(random_checkpoint(tmp_path / "s.pt", pairs=False), backend="torch",
                   single_slice=other_pair)
    assert dx.single_slice is None and dx.models == [dx.loaded]


def test_shipped_pair_model_comes_with_the_shipped_single_slice_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lumbardx.models.pretrained import WEIGHTS_DIR_ENV, shipped_single_slice

    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(folder))
    random_checkpoint(folder / "default.pt", pairs=True)
    assert shipped_single_slice("default") is None
    assert Diagnoser(backend="torch").single_slice is None  # not installed: pair model alone
    random_checkpoint(folder / "single.pt", pairs=False)
    assert shipped_single_slice("default") == folder / "single.pt"
    assert shipped_single_slice("single") is None
    dx = Diagnoser(backend="torch")
    assert dx.info.reads_pairs and dx.single_slice is not None
    assert dx.single_slice.source == folder / "single.pt"
    assert not Diagnoser(model="single", backend="torch").info.reads_pairs


def test_cli_reads_an_image_file_with_the_single_slice_model(study: Path,
                                                             tmp_path: Path) -> None:
    from PIL import Image
    from typer.testing import CliRunner

    from lumbardx.cli.diagnose import diagnose as diagnose_command

    app = typer.Typer()
    app.command()(diagnose_command)
    png = tmp_path / "slice.png"
    Image.fromarray(np.tile(np.linspace(40, 200, 80), (96, 1)).astype(np.uint8)).save(png)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        str(png), "--out", str(out), "--backend", "torch", "--no-pdf",
        "--weights", str(random_checkpoint(tmp_path / "pair.pt", pairs=True)),
        "--single-slice-weights", str(random_checkpoint(tmp_path / "single.pt", pairs=False))])
    assert result.exit_code == 0, result.output
    assert "slices without a pair: yolov5n" in " ".join(result.output.split())
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    doc = json.loads((folder / "findings.json").read_text())
    assert doc["model"]["inputs"] == "slice"


def _disc_recall(studies: list, records: list) -> float:
    """Share of the annotated discs that a found disc covers at IoU >= 0.5 (any class)."""
    from torchvision.ops import box_iou

    hit = total = 0
    for study, rec in zip(studies, records):
        found = torch.tensor([d.box.xyxy() for d in study.findings.discs], dtype=torch.float32)
        truth = torch.as_tensor(rec.boxes, dtype=torch.float32)
        total += len(truth)
        if len(found) and len(truth):
            hit += int((box_iou(truth, found).max(dim=1).values >= 0.5).sum())
    return hit / total


def _real_pairs(root: Path, n: int, weighting: str | None = None) -> list:
    """``(record, StudyPair)`` for the first ``n`` yolospine-dev images with a T1/T2 partner
    (only ``weighting`` images when given), both slices read; skips the test when the shipped
    default model is not installed."""
    from lumbardx.data.dataset import LumbarDataset
    from lumbardx.data.images import read_image
    from lumbardx.data.pairs import sequence_partners
    from lumbardx.data.series import StudyPair
    from lumbardx.models.pretrained import NoShippedWeightsError, shipped_weights

    try:
        shipped_weights("default")
    except NoShippedWeightsError as exc:
        pytest.skip(f"lumbardx/weights/default.pt is not installed: {exc}")
    records = LumbarDataset(root, classes="study").records
    partners = sequence_partners(records)
    chosen = [k for k, p in enumerate(partners)
              if p is not None and weighting in (None, records[k].sequence)][:n]
    return [(records[k], StudyPair(image=read_image(records[k].image_path),
                                   partner=read_image(records[partners[k]].image_path),
                                   image_weighting=records[k].sequence or "T2"))
            for k in chosen]


def test_shipped_default_reads_real_t1_t2_pairs(yolospine_dev: Path) -> None:
    """On real co-registered T1/T2 slices the shipped default finds the annotated discs, read
    as pairs when it was trained on pairs, and a lone slice through its single-slice model."""
    real = _real_pairs(yolospine_dev, 6, weighting="T2")
    dx = Diagnoser(backend="torch")
    records = [rec for rec, _ in real]
    studies = [dx.diagnose_image(pair.image, pair=pair) for _, pair in real]
    lone = [dx.diagnose_image(pair.image) for _, pair in real]
    assert _disc_recall(studies, records) >= 0.8
    assert _disc_recall(lone, records) >= 0.8
    if dx.info.reads_pairs:
        assert all(s.model.inputs == "T1+T2" for s in studies)
        assert not any("read alone" in w or "no T1/T2 pair" in w
                       for s in studies for w in s.warnings)
        if dx.single_slice is not None:
            assert all(s.model.inputs == "slice" for s in lone)
            assert all(any("single-slice model" in w for w in s.warnings) for s in lone)


def test_shipped_default_findings_do_not_depend_on_the_candidate_floor(
        yolospine_dev: Path) -> None:
    """The verifier skips candidates it could not lift to a threshold: the findings are the
    ones it gives when every candidate down to the evaluation confidence is rescored."""
    from lumbardx.models.pretrained import EVAL_CONF, set_candidate_floor

    real = _real_pairs(yolospine_dev, 24)
    dx = Diagnoser(backend="auto")  # ONNX Runtime when installed: the verifier's many crops

    def findings() -> list:
        return [[(d.level, d.status, d.confidence, d.box.xyxy())
                 for d in dx.diagnose_image(pair.image, pair=pair).findings.discs]
                for _, pair in real]

    floor = dx.loaded.model.postprocess.conf_thresh
    assert floor >= EVAL_CONF
    fast = findings()
    set_candidate_floor(dx.loaded.model, EVAL_CONF, dx.loaded.backend)
    assert fast == findings()
