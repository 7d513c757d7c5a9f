"""The reviewed result is the record: review decisions -> reviewed findings, reports, SR.

Unit level (no app): a reader's box gets its disc level from the level logic of the model's
boxes; changing a box's class drops the model's score; a reviewed study's HTML and PDF reports
list what the reader did and who; unreviewed reports say "not reviewed". App level: after a
reader completes a review, the study's report, findings.json and DICOM SR state it.
"""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from lumbardx.app import AppSettings, create_app
from lumbardx.app.review import apply, initial_review
from lumbardx.clinical.reviewed import NOT_REVIEWED, ReviewRecord
from lumbardx.report.html import render_html_report
from lumbardx.report.pdf import FOOTER_PT, build_report_pages
from lumbardx.stages.reviewed import reviewed_study

from findings_schema import check_findings_schema
from test_app_api import cases, diagnoser, signed_in, upload  # noqa: F401 (fixtures)
from test_app_security import PASSWORD
from test_report import case, make_study  # noqa: F401 (fixture)

CLASSES = ["normal", "herniation", "spondylolisthesis"]


def _review(study) -> dict:  # noqa: ANN001
    return initial_review(study.to_dict(), CLASSES)


def test_reader_box_gets_its_level_and_a_class_change_drops_the_score(case) -> None:  # noqa: ANN001, F811
    study = make_study(case)
    review = _review(study)
    boxes = review["boxes"]
    target = next(b for b in boxes if b["label"] == "normal" and b["level"] == "L3-L4")
    other = next(b for b in boxes if b["label"] == "normal" and b["level"] == "L2-L3")

    # the reader rejects the model's L3-L4 box and draws their own on that disc
    review, _ = apply(review, "reject", "alice", target["id"])
    shifted = [target["box"][0] + 2, target["box"][1] + 1, target["box"][2] + 2,
               target["box"][3] + 1]
    review, _ = apply(review, "add", "alice", body={"label": "herniation", "box": shifted})
    drawn = review["boxes"][-1]
    assert drawn["origin"] == "reader" and drawn["level"] == "L3-L4"
    assert drawn["score"] is None

    # a class change: the model's score no longer stands; what the model said is kept
    review, _ = apply(review, "update", "bob", other["id"], {"label": "herniation"})
    changed = next(b for b in review["boxes"] if b["id"] == other["id"])
    assert changed["score"] is None and changed["model_label"] == "normal"
    assert changed["model_score"] == other["score"] and changed["model_box"] == other["box"]
    assert changed["level"] == "L2-L3"
    # changed back to the model's class: the model's score stands again
    review, _ = apply(review, "update", "bob", other["id"], {"label": "normal"})
    back = next(b for b in review["boxes"] if b["id"] == other["id"])
    assert back["score"] == other["score"] and back["decision"] == "edited"
    # moving the edges keeps the class and the score
    moved = [v + 1.0 for v in back["box"]]
    review, _ = apply(review, "update", "bob", other["id"], {"box": moved})
    back = next(b for b in review["boxes"] if b["id"] == other["id"])
    assert back["score"] == other["score"] and back["box"] == moved


def _reviewed(study):  # noqa: ANN001, ANN202
    """A complete review of ``study``: one box rejected, one class changed, one drawn."""
    review = _review(study)
    normals = [b for b in review["boxes"] if b["label"] == "normal"]
    review, _ = apply(review, "reject", "alice", normals[0]["id"])
    review, _ = apply(review, "update", "alice", normals[1]["id"], {"label": "herniation"})
    review, _ = apply(review, "add", "alice",
                      body={"label": "spondylolisthesis", "box": normals[2]["box"]})
    review, _ = apply(review, "complete", "alice", body={"accept_pending": True})
    return review, normals


def test_reviewed_findings_and_reports_state_the_review(case) -> None:  # noqa: ANN001, F811
    study = make_study(case)
    html = render_html_report(study, b"png")
    assert NOT_REVIEWED in html and "<h2>Reader's review</h2>" not in html
    review, normals = _reviewed(study)
    record = ReviewRecord.from_json(review)
    assert record.complete and record.reviewer == "alice"
    assert record.counts() == {"confirmed": len(review["boxes"]) - 3, "changed": 1,
                               "rejected": 1, "added by the reader": 1}

    done = reviewed_study(study, record)
    levels = {d.level: d for d in done.findings.discs}
    rejected_level = normals[0]["level"]
    assert rejected_level not in levels  # its only box was rejected
    changed = levels[normals[1]["level"]]
    assert changed.status == "herniation" and changed.confidence is None  # the reader's call
    slipped = levels[normals[2]["level"]]
    assert slipped.has("spondylolisthesis")
    assert slipped.slip_percent is not None or any(
        w.startswith(slipped.level) and "slip" in w for w in done.warnings)
    doc = done.to_dict()
    check_findings_schema(json.loads(json.dumps(doc)))
    assert doc["review"]["state"] == "complete" and doc["review"]["reviewer"] == "alice"
    assert {b["action"] for b in doc["review"]["boxes"]} == {
        "confirmed", "rejected", "class changed from normal", "added by the reader"}

    html = render_html_report(done, b"png")
    assert "<h2>Reader's review</h2>" in html and "reviewed by alice" in html
    assert "class changed from normal" in html and "added by the reader" in html
    assert "rejected" in html and NOT_REVIEWED not in html
    assert "reader&#x27;s call" in html  # the changed disc's confidence

    pages = build_report_pages(done, np.zeros((40, 30, 3), np.uint8))
    texts = [t for fig in pages for t in fig.findobj(lambda a: hasattr(a, "get_text"))
             if hasattr(t, "get_fontsize") and t.get_text().strip()]
    printed = " ".join(t.get_text() for t in texts)
    assert "Reader's review" in printed and "reviewed by alice" in printed
    assert "class changed from normal" in printed
    assert min(t.get_fontsize() for t in texts) >= FOOTER_PT >= 8
    footer = " ".join(t.get_text() for t in pages[0].texts if t.get_fontsize() == FOOTER_PT)
    assert "Decision support; not a diagnosis." in footer and done.study_key in footer


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, diagnoser):  # noqa: ANN001, F811
    settings = AppSettings(data_dir=tmp_path_factory.mktemp("data"),
                           analyse_in_background=False)
    app = create_app(settings, diagnoser=diagnoser)
    app.state.ctx.users.add("alice", PASSWORD)
    return app


def test_completed_review_rewrites_report_findings_and_sr(app, cases) -> None:  # noqa: ANN001, F811
    client, csrf = signed_in(app)
    series = sorted(cases["series"].iterdir())
    key = upload(client, csrf, series, "application/dicom").json()["study"]["study_key"]
    folder = app.state.ctx.settings.data_dir / "studies" / key
    report = client.get(f"/api/studies/{key}/report.html").text
    assert NOT_REVIEWED in report
    assert "original" not in report.split("Source</dt><dd>")[1].split("</dd>")[0]
    assert "MRN-0042" in report.split("Patient ID</dt><dd>")[1].split("</dd>")[0]
    assert pydicom.dcmread(folder / "sr.dcm").VerificationFlag == "UNVERIFIED"
    model_findings = json.loads((folder / "findings.json").read_text())
    assert model_findings["review"] is None

    base = f"/api/studies/{key}/review"
    boxes = client.get(base).json()["boxes"]
    client.post(f"{base}/boxes/{boxes[0]['id']}/reject", headers=csrf)
    x1, y1, x2, y2 = boxes[0]["box"]
    r = client.post(f"{base}/boxes", headers=csrf, json={"label": "herniation",
                                                         "box": [x1, y1, x2, y2]})
    assert r.status_code == 201 and r.json()["boxes"][-1]["level"] == boxes[0]["level"]
    r = client.post(f"{base}/complete", headers=csrf, json={"accept_pending": True})
    assert r.status_code == 200

    report = client.get(f"/api/studies/{key}/report.html").text
    assert "reviewed by alice" in report and "added by the reader" in report
    assert NOT_REVIEWED not in report
    findings = client.get(f"/api/studies/{key}/findings.json").json()
    check_findings_schema(findings)
    assert findings["review"]["state"] == "complete"
    assert json.loads((folder / "model_findings.json").read_text()) == model_findings
    sr = pydicom.dcmread(folder / "sr.dcm")
    assert sr.VerificationFlag == "VERIFIED" and sr.PreliminaryFlag == "FINAL"
    assert sr.VerifyingObserverSequence[0].VerifyingObserverName.family_name == "alice"
    assert "alice" in str(sr.ContentSequence)  # the reviewer as person observer
    assert b"%PDF-" == client.get(f"/api/studies/{key}/report.pdf").content[:5]


def test_report_without_review_is_marked_not_reviewed(case) -> None:  # noqa: ANN001, F811
    study = make_study(case)
    assert study.to_dict()["review"] is None
    pages = build_report_pages(study, np.zeros((40, 30, 3), np.uint8))
    printed = " ".join(t.get_text() for fig in pages for t in fig.texts)
    assert "not reviewed" in printed


def test_a_new_analysis_waits_for_a_reader_action_on_the_review(app, cases) -> None:  # noqa: ANN001, F811
    """The analyser's check-and-write of review.json and a reader's read-modify-write of it
    do not interleave: both hold the review lock."""
    import threading
    import time

    from lumbardx.app.review import REVIEW_LOCK

    client, csrf = signed_in(app)
    series = sorted(cases["series"].iterdir())[:3]
    key = upload(client, csrf, series, "application/dicom").json()["study"]["study_key"]
    folder = app.state.ctx.settings.data_dir / "studies" / key
    review_before = (folder / "review.json").stat().st_mtime_ns
    findings_before = (folder / "findings.json").stat().st_mtime_ns
    worker = threading.Thread(target=app.state.ctx.analyser.analyse, args=(key,))
    with REVIEW_LOCK:  # a reader's action in progress
        worker.start()
        deadline = time.monotonic() + 120
        while (folder / "findings.json").stat().st_mtime_ns == findings_before:
            assert time.monotonic() < deadline, "the analysis did not write its findings"
            time.sleep(0.05)
        worker.join(timeout=5)  # the outputs take about a second; then it waits
        assert worker.is_alive()  # analysed, and waiting to touch the review
        assert (folder / "review.json").stat().st_mtime_ns == review_before
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert (folder / "review.json").stat().st_mtime_ns != review_before
    assert client.get(f"/api/studies/{key}/review").json()["state"] != "complete"


def test_corrections_after_completion_reuse_the_model_reading(app, cases,  # noqa: ANN001, F811
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """A correction to a completed review rewrites the record from the model's reading kept
    in memory: the study is diagnosed once, whatever the reader does after."""
    analyser = app.state.ctx.analyser
    calls = []
    original = analyser.diagnoser.diagnose
    monkeypatch.setattr(analyser.diagnoser, "diagnose",
                        lambda *a, **k: calls.append(a) or original(*a, **k))
    client, csrf = signed_in(app)
    series = sorted(cases["series"].iterdir())[-2:]  # a study the other tests do not upload
    key = upload(client, csrf, series, "application/dicom").json()["study"]["study_key"]
    assert len(calls) == 1
    base = f"/api/studies/{key}/review"
    boxes = client.get(base).json()["boxes"]
    assert client.post(f"{base}/complete", headers=csrf,
                       json={"accept_pending": True}).status_code == 200
    assert client.post(f"{base}/boxes/{boxes[0]['id']}/reject", headers=csrf).status_code == 200
    r = client.post(f"{base}/boxes", headers=csrf, json={"label": "herniation",
                                                         "box": boxes[0]["box"]})
    assert r.status_code == 201
    assert len(calls) == 1  # completion and two corrections: no new diagnosis
    report = client.get(f"/api/studies/{key}/report.html").text
    assert "added by the reader" in report and "rejected" in report  # the latest review

    analyser._readings.clear()  # e.g. after a restart: read again, once
    client.post(f"{base}/boxes/{boxes[1]['id']}/reject", headers=csrf)
    client.post(f"{base}/boxes/{boxes[2]['id']}/reject", headers=csrf)
    assert len(calls) == 2


def test_queued_rewrites_of_one_study_are_folded(tmp_path, diagnoser) -> None:  # noqa: ANN001, F811
    """Corrections while a rewrite of the same study waits in the queue add no rewrite; one
    after it has started queues a new one."""
    import threading

    from lumbardx.app.analysis import Analyser
    from lumbardx.app.studies import StudyStore

    settings = AppSettings(data_dir=tmp_path, analyse_in_background=True)
    analyser = Analyser(settings, StudyStore(tmp_path), diagnoser)
    written, started, release = [], threading.Event(), threading.Event()

    def fake_write(key: str) -> None:
        started.set()
        release.wait(30)
        written.append(key)

    analyser.write_reviewed = fake_write  # type: ignore[method-assign]
    gate = threading.Event()
    analyser._pool.submit(gate.wait, 30)  # the worker is busy with another study
    first = analyser.submit_reviewed("a")
    assert first is not None
    assert analyser.submit_reviewed("a") is None and analyser.submit_reviewed("a") is None
    other = analyser.submit_reviewed("b")
    assert other is not None
    gate.set()
    assert started.wait(30)  # "a" is being written: a new correction needs a new rewrite
    again = analyser.submit_reviewed("a")
    assert again is not None
    release.set()
    for f in (first, other, again):
        f.result(timeout=30)
    assert written == ["a", "b", "a"]
    analyser.shutdown()
