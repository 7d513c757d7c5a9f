"""The segment stage in diagnosis: what the reader's readings change in the findings, the level
check's warnings, findings.json, and a Diagnoser with a segment reader end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from findings_schema import check_findings_schema

from lumbardx.clinical.findings import SLIP, build_findings
from lumbardx.data.boxes import Box
from lumbardx.models.segment_reader import LABELS, SegmentReader, SegmentReaderConfig
from lumbardx.stages.segments import SLIP_METHOD, SegmentReading, SegmentStage


def _spine(slip_box: bool = False):
    boxes = [Box("normal", 75, 30 + 40 * i, 125, 50 + 40 * i, score=0.9) for i in range(6)]
    boxes[3] = Box("herniation", 75, 150, 125, 170, score=0.8)
    if slip_box:
        boxes.append(Box(SLIP, 60, 170, 140, 230, score=0.6))
    return build_findings(boxes, (256, 320), {"normal": 0.3, "herniation": 0.3, SLIP: 0.3})


def _stage() -> SegmentStage:
    reader = SegmentReader(SegmentReaderConfig(width=4, embed=8, size=(16, 16)))
    return SegmentStage(reader, {SLIP: 0.5, "stenosis": 0.5, "degeneration": 0.5},
                        (0.0, 0.0, 1.7, 1.25), level_cut=0.5)


def _readings(spine, slip=None, stenosis=(), lumbosacral=None, offset=0.2):
    out = []
    n = len(spine.discs)
    for i, d in enumerate(spine.discs):
        p = {k: 0.05 for k in LABELS}
        p["normal"] = 0.9
        p[SLIP] = 0.8 if i == slip else 0.1
        p["stenosis"] = 0.7 if i in stenosis else 0.1
        p["lumbosacral"] = (0.9 if i == n - 1 else 0.02) if lumbosacral is None else lumbosacral[i]
        x, y = d.centre
        out.append(SegmentReading(p, offset if i == slip else 0.0,
                                  Box(SLIP, x - 30, y - 25, x + 30, y + 25)))
    return out


def test_reader_calls_the_slip_and_measures_it() -> None:
    spine = _spine(slip_box=True)
    assert spine.discs[4].has(SLIP)  # the detector's slip box sits on disc 4
    warnings = _stage().apply(spine, _readings(spine, slip=2, offset=0.18))
    assert warnings == []
    d2, d4 = spine.discs[2], spine.discs[4]
    assert d2.status == SLIP and d2.confidence == pytest.approx(0.8)
    assert d2.slip_percent == pytest.approx(18.0) and d2.meyerding_grade == "I"
    assert d2.slip_method == SLIP_METHOD
    assert not d4.has(SLIP) and d4.status == "normal"  # the reader sees no slip there
    assert spine.discs[3].status == "herniation"  # the detector's herniation call stays
    assert spine.discs[0].probabilities["normal"] == pytest.approx(0.9)


def test_small_offset_is_not_graded_and_extra_findings_need_asking() -> None:
    spine = _spine()
    _stage().apply(spine, _readings(spine, slip=1, stenosis=(3, 5), offset=0.01))
    assert spine.discs[1].status == SLIP and spine.discs[1].slip_percent is None
    assert not any(d.has("stenosis") for d in spine.discs)
    spine = _spine()
    _stage().apply(spine, _readings(spine, stenosis=(3, 5)), extra_findings=True)
    assert spine.discs[5].status == "stenosis" and spine.discs[5].has("normal")
    assert spine.discs[3].status == "herniation" and spine.discs[3].has("stenosis")


def test_level_check_flags_a_missed_or_extra_disc_at_the_bottom() -> None:
    spine = _spine()
    assert not any(d.level_uncertain for d in spine.discs)
    ls = [0.02] * 6
    warnings = _stage().apply(spine, _readings(spine, lumbosacral=ls))
    assert len(warnings) == 1 and "does not look like L5-S1" in warnings[0]
    assert "missed at the bottom" in warnings[0]
    assert all(d.level_uncertain for d in spine.discs)
    assert warnings[0] in spine.level_reasons
    spine = _spine()
    ls = [0.02, 0.02, 0.02, 0.02, 0.95, 0.1]
    warnings = _stage().apply(spine, _readings(spine, lumbosacral=ls))
    assert "named L4-L5 looks like L5-S1" in warnings[0] and "1 disc(s)" in warnings[0]
    assert all(d.level_uncertain for d in spine.discs)


def test_stage_reads_every_disc_and_round_trips(tmp_path) -> None:
    stage = _stage()
    spine = _spine()
    planes = np.random.default_rng(0).integers(0, 255, (2, 320, 256), dtype=np.uint8)
    readings = stage.read(planes, spine)
    assert len(readings) == 6
    assert all(set(r.probabilities) == set(LABELS) for r in readings)
    b = readings[2].box
    assert 0 <= b.x1 < b.x2 <= 256 and 0 <= b.y1 < b.y2 <= 320
    path = tmp_path / "segments.pt"
    torch.save({**stage.reader.checkpoint(), "thresholds": stage.thresholds,
                "slip_box": list(stage.slip_box), "level_cut": 0.4, "tag": "test-reader"}, path)
    again = SegmentStage.load(path)
    assert again.level_cut == 0.4 and again.summary["version"] == "test-reader"
    assert len(again.summary["weights_sha256"]) == 64
    r2 = again.read(planes, spine)
    assert [r.probabilities for r in r2] == [r.probabilities for r in readings]
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    from lumbardx.data.errors import InputError

    with pytest.raises(InputError, match="not a segment reader checkpoint"):
        SegmentStage.load(bad)


def _stacked_calls():
    from lumbardx.engine.stacking import STACK_DETECTOR, STACK_READER, StackedCalls

    n = len(STACK_DETECTOR) + len(STACK_READER)
    hern = [0.0] * (n + 1)
    hern[STACK_DETECTOR.index("herniation")] = 1.0  # the detector's herniation logit
    hern[len(STACK_DETECTOR) + STACK_READER.index("herniation")] = 1.0  # and the reader's
    slip = [0.0] * (n + 1)
    slip[len(STACK_DETECTOR) + STACK_READER.index(SLIP)] = 1.0  # the reader's slip logit alone
    return StackedCalls({"herniation": hern, SLIP: slip},
                        {"herniation": 0.5, SLIP: 0.9}, {"source": "test"})


def test_stacked_calls_replace_the_detector_calls(tmp_path) -> None:
    boxes = [Box("normal", 75, 30 + 40 * i, 125, 50 + 40 * i, score=0.9) for i in range(6)]
    boxes[3] = Box("herniation", 75, 150, 125, 170, score=0.8)  # called by the detector
    weak = Box("herniation", 76, 111, 124, 129, score=0.2)  # disc 2, below its threshold
    slip = Box(SLIP, 60, 210, 140, 270, score=0.6)  # disc 5, called by the detector
    spine = build_findings([*boxes, weak, slip], (256, 320),
                           {"normal": 0.3, "herniation": 0.3, SLIP: 0.3})
    assert spine.discs[3].status == "herniation" and spine.discs[5].has(SLIP)
    assert not spine.discs[2].has("herniation")
    readings = _readings(spine)
    for i, rd in enumerate(readings):
        rd.logits = {k: -3.0 for k in LABELS}
        rd.logits["herniation"] = 3.0 if i == 2 else -3.0  # the reader: a herniation at disc 2
        rd.logits[SLIP] = 4.0 if i == 0 else -3.0  # and a slip at disc 0
    stage = _stage()
    stage.stacked = _stacked_calls()
    assert stage.disc_call == "stacked" and stage.summary["disc_call"] == "stacked"
    stage.apply(spine, readings, boxes=[*boxes, weak, slip], classes=["normal", "herniation",
                                                                      SLIP])
    d0, d2, d3, d5 = (spine.discs[i] for i in (0, 2, 3, 5))
    # disc 2: logit(0.2) + 3 > 0: herniation, on the detector's own weak box
    p2 = 1 / (1 + np.exp(-(np.log(0.2 / 0.8) + 3.0)))
    assert d2.status == "herniation" and d2.confidence == pytest.approx(p2, abs=1e-4)
    assert (d2.box.x1, d2.box.y1) == (76, 111)
    # disc 3: logit(0.8) - 3 < 0: the regression does not call the detector's herniation
    assert not d3.has("herniation") and d3.status == "normal"
    # disc 0: the reader's slip logit 4 -> 0.982 >= 0.9, on the reader's template box
    assert d0.status == SLIP and d0.box == Box(SLIP, *(readings[0].box.xyxy()), score=0.982)
    assert not d5.has(SLIP)  # the detector's slip at disc 5: logit -3 -> 0.047 < 0.9
    path = tmp_path / "stacked.pt"
    torch.save({**stage.reader.checkpoint(), "thresholds": stage.thresholds,
                "slip_box": list(stage.slip_box), "stacked": stage.stacked.to_dict()}, path)
    again = SegmentStage.load(path)
    assert again.stacked == stage.stacked and again.disc_call == "stacked"
    assert _stage().disc_call == "detector"


def test_cli_stack_adds_the_calls_to_a_checkpoint(tmp_path) -> None:
    from typer.testing import CliRunner

    from lumbardx.cli.segments import app

    stage = _stage()
    weights = tmp_path / "segments.pt"
    torch.save({**stage.reader.checkpoint(), "thresholds": stage.thresholds,
                "slip_box": list(stage.slip_box), "tag": "reader-x"}, weights)
    calls = tmp_path / "stack.json"
    calls.write_text(json.dumps(_stacked_calls().to_dict()))
    out = tmp_path / "stacked.pt"
    r = CliRunner().invoke(app, ["stack", str(weights), "--calls", str(calls), "--out", str(out)])
    assert r.exit_code == 0, r.output
    loaded = SegmentStage.load(out)
    assert loaded.disc_call == "stacked" and loaded.stacked == _stacked_calls()
    assert loaded.summary["version"] == "reader-x+stacked"
    assert SegmentStage.load(weights).disc_call == "detector"  # the input is left as it was
    calls.write_text('{"weights": {}}')
    r = CliRunner().invoke(app, ["stack", str(weights), "--calls", str(calls), "--out", str(out)],
                           env={"COLUMNS": "300"})
    assert r.exit_code == 2 and "stack.json" in r.output and "not stacked disc calls" in r.output


def test_diagnoser_with_a_segment_reader_writes_probabilities(tmp_path) -> None:
    from checkpoints import random_checkpoint

    from PIL import Image

    from lumbardx.diagnosis import Diagnoser, write_outputs
    from lumbardx.synth import generate_case

    case = generate_case(np.random.default_rng(3))
    png = tmp_path / "slice.png"
    Image.fromarray(case.image).save(png)
    ckpt = random_checkpoint(tmp_path / "det.pt")
    stage = _stage()
    dx = Diagnoser(ckpt, backend="torch", segments=stage, extra_findings=True,
                   thresholds={"normal": 0.0, "herniation": 0.0, SLIP: 0.0})
    dx.warmup()
    study = dx.diagnose(png)
    assert study.segment_reader == stage.summary
    out = write_outputs(study, tmp_path / "out", pdf=False)
    doc = json.loads(out["findings"].read_text())
    check_findings_schema(doc)
    assert doc["findings"], "a random detector at threshold 0 finds boxes"
    assert all(d["probabilities"] is not None for d in doc["findings"])
    assert "segments" in doc["timings_ms"]
    plain = Diagnoser(ckpt, backend="torch", segments=False).diagnose(png)
    assert plain.segment_reader is None
    assert all(d.probabilities is None for d in plain.findings.discs)


def test_reports_show_the_segment_reader() -> None:
    from lumbardx.report.html import SEGMENT_METHOD, finding_rows, limits, render_html_report

    spine = _spine()
    _stage().apply(spine, _readings(spine, slip=2, stenosis=(4,), offset=0.2),
                   extra_findings=True)

    from pathlib import Path

    from lumbardx.data.images import MedicalImage
    from lumbardx.study import ModelInfo, Study

    img = np.zeros((320, 256), np.uint8)
    study = Study(Path("case.png"), MedicalImage(img.astype(np.float32), img, None,
                                                  Path("case.png"), "png"), spine,
                  ModelInfo("yolov5n", "test", None, ["normal", "herniation", SLIP], 384),
                  "0" * 16, segment_reader={"version": "r1", "weights_sha256": None})
    rows = finding_rows(study)
    assert rows[2].status == SLIP and rows[2].reader.startswith("slip 0.80")
    assert rows[4].status == "stenosis" and "stenosis 0.70" in rows[4].reader
    assert SEGMENT_METHOD in limits(study)
    html = render_html_report(study, b"\x89PNG")  # summary without slip_call: detector
    assert "Segment reader (probability)" in html and "calibrated probability" in html
    assert "slip ~20% (Meyerding grade I)" in html
    from lumbardx.report.html import confidence_note

    plain = confidence_note(study)
    assert "for stenosis and degeneration it is the segment reader's" in plain
    assert "regression" not in plain
    study.segment_reader = {"version": "r1", "weights_sha256": None, "slip_call": "reader",
                            "disc_call": "stacked"}
    stacked = confidence_note(study)  # the regression calls the slip, not the reader
    assert "for stenosis and degeneration it is" in stacked and "spondylolisthesis, " not in \
        stacked
    assert "for herniation and spondylolisthesis it is the probability of a regression" in stacked
    assert stacked in render_html_report(study, b"\x89PNG").replace("&#x27;", "'")
    study.segment_reader = None
    assert "segment reader" not in confidence_note(study)


def test_cli_classes_and_segment_reader(tmp_path) -> None:
    import typer
    from checkpoints import random_checkpoint
    from PIL import Image
    from typer.testing import CliRunner

    from lumbardx.cli.diagnose import diagnose as diagnose_command
    from lumbardx.synth import generate_case

    app = typer.Typer()
    app.command()(diagnose_command)
    case = generate_case(np.random.default_rng(4))
    png = tmp_path / "slice.png"
    Image.fromarray(case.image).save(png)
    ckpt = random_checkpoint(tmp_path / "det.pt")  # thresholds 0.001: its boxes count
    stage = _stage()
    reader = tmp_path / "segments.pt"
    torch.save({**stage.reader.checkpoint(), "thresholds": {"stenosis": 0.0},
                "slip_box": [0.0, 0.0, 1.7, 1.25], "tag": "cli-reader"}, reader)
    args = [str(png), "--weights", str(ckpt), "--backend", "torch", "--no-pdf"]
    r = CliRunner().invoke(app, [*args, "--segments-weights", str(reader), "--classes", "all",
                                 "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert "segment reader cli-reader" in r.output
    doc = json.loads(next((tmp_path / "a").rglob("findings.json")).read_text())
    check_findings_schema(doc)
    assert doc["segment_reader"]["version"] == "cli-reader"
    # stenosis threshold 0: every disc is called with stenosis under --classes all
    assert doc["findings"] and all(any(f["label"] == "stenosis" for f in d["findings"])
                                   for d in doc["findings"])
    r = CliRunner().invoke(app, [*args, "--segments-weights", str(reader),
                                 "--out", str(tmp_path / "b")])
    doc = json.loads(next((tmp_path / "b").rglob("findings.json")).read_text())
    assert not any(f["label"] == "stenosis" for d in doc["findings"] for f in d["findings"])
    assert all(d["probabilities"] is not None for d in doc["findings"])
    r = CliRunner().invoke(app, [*args, "--no-segments", "--out", str(tmp_path / "c")])
    doc = json.loads(next((tmp_path / "c").rglob("findings.json")).read_text())
    assert doc["segment_reader"] is None
    r = CliRunner().invoke(app, [*args, "--classes", "some", "--out", str(tmp_path / "d")])
    assert r.exit_code == 2 and "use study or all" in r.output


def test_detector_keeps_the_slip_call_when_the_reader_is_not_trusted_with_it() -> None:
    spine = _spine(slip_box=True)
    stage = _stage()
    stage.slip_call, stage.slip_measure = "detector", "corners"
    stage.apply(spine, _readings(spine, slip=2, offset=0.18))
    assert spine.discs[4].status == SLIP and spine.discs[4].confidence == pytest.approx(0.6)
    assert spine.discs[4].slip_method is None  # measured later from the vertebral corners
    assert not spine.discs[2].has(SLIP)
    assert spine.discs[2].probabilities[SLIP] == pytest.approx(0.8)  # reported, not called
    with pytest.raises(ValueError, match="slip_call"):
        SegmentStage(stage.reader, {}, (0, 0, 1, 1), slip_call="both")


def test_shipped_reader_on_real_slices_finds_the_labelled_slips(yolospine_dev) -> None:
    """On dev images with a spondylolisthesis box, the shipped reader's highest slip
    probability is at the labelled disc in most images, its lowest disc reads as L5-S1, and
    the stenosis probability is higher at stenosis-labelled discs (images it was trained on:
    a check that the shipped weights are the trained ones, not a validation)."""
    from lumbardx.data.dataset import LumbarDataset
    from lumbardx.data.pairs import SequencePairs
    from lumbardx.engine.segment_training import item_from_sample
    from lumbardx.stages.segments import shipped_segment_reader

    path = shipped_segment_reader()
    if path is None:
        pytest.skip("lumbardx/weights/segments.pt is not installed")
    stage = SegmentStage.load(path)
    ds = LumbarDataset(yolospine_dev, classes="all")
    pairs = SequencePairs(ds)
    slip_images = [i for i, r in enumerate(ds.records)
                   if "Spondylolisthesis" in [ds.class_names[int(k)] for k in r.labels]][:30]
    k_slip, k_sten = LABELS.index(SLIP), LABELS.index("stenosis")
    top, lowest, sten_pos, sten_neg = 0, 0, [], []
    for i in slip_images:
        item = item_from_sample(pairs[i], ds.class_names)
        readings = stage.read(item.planes, item.spine)
        p_slip = [r.probabilities[SLIP] for r in readings]
        top += int(item.targets[int(np.argmax(p_slip)), k_slip] > 0)
        lowest += int(readings[-1].probabilities["lumbosacral"] >= stage.level_cut)
        for r, t in zip(readings, item.targets[:, k_sten]):
            (sten_pos if t > 0 else sten_neg).append(r.probabilities["stenosis"])
    assert top >= 0.6 * len(slip_images), (top, len(slip_images))
    assert lowest >= 0.7 * len(slip_images), (lowest, len(slip_images))
    assert np.median(sten_pos) > np.median(sten_neg) + 0.2


def test_cli_threshold_sets_one_finding_and_records_why(tmp_path) -> None:
    from typer.testing import CliRunner

    from lumbardx.cli.segments import app

    stage = _stage()
    weights = tmp_path / "segments.pt"
    torch.save({**stage.reader.checkpoint(), "thresholds": stage.thresholds,
                "slip_box": list(stage.slip_box), "tag": "reader-x",
                "evidence": {"level": "kept"}}, weights)
    out = tmp_path / "recut.pt"
    args = ["threshold", str(weights), "--finding", "degeneration", "--value", "0.26",
            "--evidence", "F1 of the found discs", "--out", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    loaded = SegmentStage.load(out)
    assert loaded.thresholds["degeneration"] == pytest.approx(0.26)
    assert loaded.thresholds["stenosis"] == stage.thresholds["stenosis"]  # the others kept
    raw = torch.load(out, weights_only=True)
    assert raw["evidence"]["level"] == "kept"
    assert raw["evidence"]["threshold_changes"] == [
        {"finding": "degeneration", "from": 0.5, "to": 0.26, "evidence": "F1 of the found discs"}]
    assert SegmentStage.load(weights).thresholds["degeneration"] == 0.5  # input left as it was
    assert loaded.summary["version"] == "reader-x"
    r = CliRunner().invoke(app, [*args, "--tag", "reader-y"])
    assert r.exit_code == 0 and SegmentStage.load(out).summary["version"] == "reader-y"
    r = CliRunner().invoke(app, [*args[:3], "herniation", *args[4:]], env={"COLUMNS": "300"})
    assert r.exit_code == 2 and "has no threshold for 'herniation'" in r.output


def test_reader_reading_l5s1_recognises_a_sacrum_the_short_field_hid() -> None:
    def spine_in(height: int, touching: bool = False):  # noqa: ANN202
        boxes = [Box("normal", 75, 30 + 40 * i, 125, 50 + 40 * i, score=0.9) for i in range(6)]
        if touching:  # the lowest box reaches the image's bottom row
            boxes[-1] = Box("normal", 75, 230, 125, float(height), score=0.9)
        return build_findings(boxes, (256, height), {"normal": 0.3})

    short = spine_in(290)  # 1.25 spacings below the lowest disc centre: no room for another
    assert not short.sacrum_recognised and short.sacrum_reason.startswith("the image extends")
    assert all(d.level_uncertain for d in short.discs) and short.level_reasons
    names = [d.level for d in short.discs]
    assert _stage().apply(short, _readings(short)) == []  # lowest disc reads as L5-S1 (0.9)
    assert short.sacrum_recognised and "segment reader" in short.sacrum_reason
    assert [d.level for d in short.discs] == names and short.level_reasons == []
    assert not any(d.level_uncertain for d in short.discs)

    doubtful = spine_in(290)  # the reader does not read the lowest disc as L5-S1: flagged
    lows = [0.02] * 6
    warnings = _stage().apply(doubtful, _readings(doubtful, lumbosacral=lows))
    assert not doubtful.sacrum_recognised and warnings and "does not look like L5-S1" in warnings[0]
    assert all(d.level_uncertain for d in doubtful.discs)

    cut = spine_in(290, touching=True)  # a box on the border: the field may cut a disc off
    assert cut.sacrum_reason.startswith("the lowest disc's box touches")
    _stage().apply(cut, _readings(cut))
    assert not cut.sacrum_recognised and all(d.level_uncertain for d in cut.discs)


def test_diagnosis_drops_the_sacrum_warning_the_reader_answered(tmp_path, monkeypatch) -> None:
    from checkpoints import random_checkpoint

    from PIL import Image

    from lumbardx.diagnosis import Diagnoser
    from lumbardx.stages import detect as detect_stage

    png = tmp_path / "short.png"
    ramp = np.tile(np.linspace(20, 200, 256, dtype=np.float32), (290, 1))
    Image.fromarray(ramp.astype(np.uint8)).save(png)  # 1.25 spacings below the lowest disc
    boxes = [Box("normal", 75, 30 + 40 * i, 125, 50 + 40 * i, score=0.9) for i in range(6)]
    monkeypatch.setattr(detect_stage, "detect", lambda *a, **k: list(boxes))
    stage = _stage()
    monkeypatch.setattr(stage, "read", lambda planes, spine, anterior=True: _readings(spine))
    dx = Diagnoser(random_checkpoint(tmp_path / "det.pt"), backend="torch", segments=stage,
                   thresholds={"normal": 0.3, "herniation": 0.3, SLIP: 0.3})
    study = dx.diagnose(png)
    assert study.findings.sacrum_recognised
    assert not any("sacrum not recognised" in w for w in study.warnings), study.warnings
    assert not any(d.level_uncertain for d in study.findings.discs)
    without = Diagnoser(random_checkpoint(tmp_path / "det.pt"), backend="torch", segments=False,
                        thresholds={"normal": 0.3, "herniation": 0.3, SLIP: 0.3}).diagnose(png)
    assert any("sacrum not recognised" in w for w in without.warnings)  # geometry alone
