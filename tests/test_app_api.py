"""Web app API: studies (upload, worklist, images, reports), corrections as training data,
PACS search/pull/push against a real Orthanc, and the teaching quiz with its score.

The detector is a tiny random YOLOv5n checkpoint (see tests/test_diagnose.py): its boxes are
arbitrary but deterministic, so the tests check how the app handles them, not what they are.
"""

from __future__ import annotations

import io
import json
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from statsmodels.stats.proportion import proportion_confint

from lumbardx.app import AppSettings, create_app
from lumbardx.app.corrections import patient_pseudonym
from lumbardx.data.dataset import LumbarDataset
from lumbardx.study import SCHEMA

from orthanc import OrthancServer, orthanc  # noqa: F401 (fixture)
from test_app_security import PASSWORD, assert_security_headers, login, tiny_checkpoint

CLASSES = ["normal", "herniation", "spondylolisthesis"]


@pytest.fixture(scope="module")
def diagnoser(tmp_path_factory: pytest.TempPathFactory):
    from lumbardx.diagnosis import Diagnoser

    return Diagnoser(tiny_checkpoint(tmp_path_factory.mktemp("weights")), backend="torch")


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A synthetic PNG slice, a synthetic sagittal DICOM series (patient name and ID set), a ZIP
    of that series, and a labelled synthetic folder for teaching."""
    from lumbardx.synth import SynthConfig, generate_case, generate_dataset, write_dicom_series

    root = tmp_path_factory.mktemp("cases")
    cfg = SynthConfig(image_sizes=(256,), dicom_slices=(5,))
    png_case = generate_case(np.random.default_rng(3), cfg)
    Image.fromarray(png_case.image).save(root / "slice.png")
    series = write_dicom_series(generate_case(np.random.default_rng(4), cfg), root / "series",
                                cfg)
    for path in series:
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID = "Roe^Richard", "MRN-0042"
        ds.save_as(path, enforce_file_format=True)
    with zipfile.ZipFile(root / "series.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for path in series:
            zf.write(path, f"CD/DICOM/{path.name}")
        zf.writestr("CD/README.TXT", "viewer not included\n")
    generate_dataset(root / "teaching", n=3, seed=7, config=SynthConfig(image_sizes=(256,)))
    return {"png": root / "slice.png", "series": root / "series", "zip": root / "series.zip",
            "teaching": root / "teaching"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, diagnoser, cases):  # noqa: ANN001
    settings = AppSettings(data_dir=tmp_path_factory.mktemp("data"),
                           analyse_in_background=False,
                           teaching_folders={"synthetic-set": cases["teaching"]})
    app = create_app(settings, diagnoser=diagnoser)
    app.state.ctx.users.add("alice", PASSWORD)
    app.state.ctx.users.add("bob", PASSWORD)
    return app


def signed_in(app, user: str = "alice") -> tuple[TestClient, dict[str, str]]:  # noqa: ANN001
    client = TestClient(app)
    r = login(client, user)
    assert r.status_code == 200, r.text
    return client, {"X-CSRF-Token": r.json()["csrf_token"]}


def upload(client: TestClient, csrf: dict[str, str], paths: list[Path], mime: str):  # noqa: ANN201
    files = [("files", (p.name, p.read_bytes(), mime)) for p in paths]
    return client.post("/api/studies", files=files, headers=csrf)


def audit_events(app) -> list[dict]:  # noqa: ANN001
    path = app.state.ctx.settings.data_dir / "audit.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()]


# -- studies ----------------------------------------------------------------------------------

def test_png_study_upload_worklist_detail_images_reports(app, cases) -> None:  # noqa: ANN001
    client, csrf = signed_in(app)
    r = upload(client, csrf, [cases["png"]], "image/png")
    assert r.status_code == 201, r.text
    row = r.json()["study"]
    key = row["study_key"]
    assert r.json()["duplicate"] is False and len(key) == 16
    assert row["status"] == "analysed" and row["kind"] == "png" and row["origin"] == "upload"
    assert row["display_id"] == f"{key[:4]}-{key[4:8]}".upper()
    folder = app.state.ctx.settings.data_dir / "studies" / key
    findings = json.loads((folder / "findings.json").read_text())
    assert findings["schema"] == SCHEMA and findings["study_key"] == key
    assert findings["source"] == "file-000.png"  # the uploaded name is not kept
    positive = [d for d in findings["findings"] if d["label"] != "normal"]
    assert row["n_discs"] == len(findings["findings"]) and row["n_findings"] == len(positive)

    assert upload(client, csrf, [cases["png"]], "image/png").json()["duplicate"] is True
    listed = client.get("/api/studies").json()["studies"]
    assert [s["study_key"] for s in listed].count(key) == 1
    assert set(listed[0]) == set(row)
    assert client.get("/api/studies?status=failed").json()["studies"] == []
    assert client.get("/api/studies?status=bogus").status_code == 422

    detail = client.get(f"/api/studies/{key}").json()
    assert detail["findings"] == findings
    assert detail["image"]["default_window"] == {"center": 127.5, "width": 255.0}
    assert len(detail["review"]["boxes"]) == sum(len(d["findings"]) for d in findings["findings"])

    shown = np.asarray(Image.open(io.BytesIO(client.get(f"/api/studies/{key}/image.png").content)))
    assert np.array_equal(shown, np.asarray(Image.open(cases["png"])))
    narrow = client.get(f"/api/studies/{key}/image.png?center=60&width=40")
    windowed = np.asarray(Image.open(io.BytesIO(narrow.content)))
    original = shown.astype(float)
    assert np.array_equal(windowed == 0, original <= 40) and np.array_equal(
        windowed == 255, original >= 80)
    assert client.get(f"/api/studies/{key}/image.png?center=60&width=0").status_code == 422
    assert client.get(f"/api/studies/{key}/image.png?center=60").status_code == 422
    overlay = client.get(f"/api/studies/{key}/overlay.png")
    assert overlay.headers["content-type"] == "image/png" and overlay.content[:4] == b"\x89PNG"
    assert client.get(f"/api/studies/{key}/findings.json").json() == findings
    html = client.get(f"/api/studies/{key}/report.html")
    assert html.status_code == 200 and key in html.text
    pdf = client.get(f"/api/studies/{key}/report.pdf")
    assert pdf.content[:5] == b"%PDF-" and "attachment" in pdf.headers["content-disposition"]
    assert client.get(f"/api/studies/{key}/patient").json()["patient_name"] is None
    for bad in ("ffffffffffffffff", "..%2F..%2Fetc", "ABCDEF0123456789"):
        assert client.get(f"/api/studies/{bad}").status_code == 404
    actions = {(e["action"], e["study_key"]) for e in audit_events(app)}
    assert {("upload", key), ("analysed", key), ("view", key),
            ("download_report", key)} <= actions


def test_dicom_series_and_zip_of_the_same_study(app, cases) -> None:  # noqa: ANN001
    client, csrf = signed_in(app)
    series = sorted(cases["series"].iterdir())
    r = upload(client, csrf, series, "application/dicom")
    assert r.status_code == 201, r.text
    row = r.json()["study"]
    key = row["study_key"]
    assert row["kind"] == "dicom" and row["n_files"] == len(series) and row["status"] == "analysed"
    folder = app.state.ctx.settings.data_dir / "studies" / key
    assert (folder / "sr.dcm").is_file() and (folder / "overlay_sc.dcm").is_file()
    assert sorted(p.name for p in (folder / "original").iterdir()) == [
        f"file-{i:03d}.dcm" for i in range(len(series))]
    detail = client.get(f"/api/studies/{key}").json()
    low, high = detail["image"]["pixel_range"]
    assert high > 255  # full bit depth kept for windowing
    center, width = detail["image"]["default_window"].values()
    a = np.asarray(Image.open(io.BytesIO(client.get(
        f"/api/studies/{key}/image.png?center={center}&width={width}").content)))
    b = np.asarray(Image.open(io.BytesIO(client.get(
        f"/api/studies/{key}/image.png?center={center / 2}&width={width / 4}").content)))
    assert a.shape == b.shape == (detail["image"]["height"], detail["image"]["width"])
    assert b.mean() > a.mean()  # a lower, narrower window brightens the image
    identity = client.get(f"/api/studies/{key}/patient").json()
    assert (identity["patient_name"], identity["patient_id"]) == ("Roe^Richard", "MRN-0042")

    r = upload(client, csrf, [cases["zip"]], "application/zip")
    assert r.status_code == 200 and r.json() == {"study": r.json()["study"], "duplicate": True}
    assert r.json()["study"]["study_key"] == key


def test_background_analysis_moves_new_to_analysed(tmp_path: Path, diagnoser, cases) -> None:  # noqa: ANN001
    app = create_app(AppSettings(data_dir=tmp_path), diagnoser=diagnoser)
    app.state.ctx.users.add("alice", PASSWORD)
    with TestClient(app) as client:
        csrf = {"X-CSRF-Token": login(client).json()["csrf_token"]}
        r = upload(client, csrf, [cases["png"]], "image/png")
        assert r.status_code == 201 and r.json()["study"]["status"] in ("new", "analysed")
        key = r.json()["study"]["study_key"]
        deadline = time.monotonic() + 60
        while client.get(f"/api/studies/{key}").json()["study"]["status"] == "new":
            assert time.monotonic() < deadline, "analysis did not finish"
            time.sleep(0.2)
        assert client.get(f"/api/studies/{key}").json()["study"]["status"] == "analysed"


# -- corrections ------------------------------------------------------------------------------

def test_corrections_become_a_voc_training_set(app, cases) -> None:  # noqa: ANN001
    client, csrf = signed_in(app)
    key = upload(client, csrf, [cases["png"]], "image/png").json()["study"]["study_key"]
    base = f"/api/studies/{key}/review"
    review = client.get(base).json()
    assert review["state"] == "open" and review["classes"] == CLASSES
    model_ids = [b["id"] for b in review["boxes"]]
    assert len(model_ids) >= 3 and all(b["decision"] == "pending" for b in review["boxes"])
    m0, m1, m2 = model_ids[:3]

    assert client.post(f"{base}/boxes/{m0}/accept", headers=csrf).json()["boxes"][0][
        "decision"] == "accepted"
    client.post(f"{base}/boxes/{m1}/reject", headers=csrf)
    r = client.patch(f"{base}/boxes/{m2}", headers=csrf,
                     json={"label": "herniation", "box": [100.4, 120.0, 140.6, 136.2]})
    edited = next(b for b in r.json()["boxes"] if b["id"] == m2)
    assert (edited["decision"], edited["label"], edited["box"]) == \
        ("edited", "herniation", [100.4, 120.0, 140.6, 136.2])
    r = client.post(f"{base}/boxes", headers=csrf,
                    json={"label": "spondylolisthesis", "box": [90, 150, 160, 190]})
    assert r.status_code == 201 and r.json()["boxes"][-1]["id"] == "r0"
    r = client.post(f"{base}/boxes", headers=csrf, json={"label": "normal", "box": [1, 1, 9, 9]})
    assert client.delete(f"{base}/boxes/r1", headers=csrf).status_code == 200
    assert client.delete(f"{base}/boxes/{m0}", headers=csrf).status_code == 409
    bad = [({"label": "fracture", "box": [1, 1, 9, 9]}, "unknown class"),
           ({"label": "normal", "box": [10, 10, 5, 20]}, "must satisfy"),
           ({"label": "normal", "box": [0, 0, 300, 20]}, "must satisfy"),
           ({"label": "normal", "box": [1, 2, 3]}, "")]
    for body, why in bad:
        r = client.post(f"{base}/boxes", headers=csrf, json=body)
        assert r.status_code == 422 and why in json.dumps(r.json())
    assert client.post(f"{base}/boxes/zz/accept", headers=csrf).status_code == 404

    pending = len(model_ids) - 3
    corrections = app.state.ctx.settings.data_dir / "corrections"
    if pending:
        r = client.post(f"{base}/complete", headers=csrf, json={})
        assert r.status_code == 409 and "pending" in r.json()["detail"]
        assert not (corrections / "annotations" / f"{key}.xml").exists()
    r = client.post(f"{base}/complete", headers=csrf, json={"accept_pending": True})
    assert r.status_code == 200 and r.json()["state"] == "complete"
    row = client.get(f"/api/studies/{key}").json()["study"]
    assert row["status"] == "reviewed" and row["reviewed_at"]
    assert client.post(f"/api/studies/{key}/analyse", headers=csrf).status_code == 409

    final = r.json()["boxes"]
    kept = [b for b in final if b["decision"] != "rejected"]
    assert len(kept) == len(model_ids) - 1 + 1  # one rejected, one added
    assert (corrections / "images" / f"{key}.png").read_bytes() == (
        app.state.ctx.settings.data_dir / "studies" / key / "image.png").read_bytes()
    assert (corrections / "classes.txt").read_text().split() == CLASSES

    ds = LumbarDataset(corrections)
    assert ds.format == "voc" and ds.class_names == CLASSES and len(ds) == 1
    sample = ds[0]
    assert sample.image_id == f"images/{key}.png" and sample.patient == key
    expected = sorted((CLASSES.index(b["label"]), *(float(round(v)) for v in b["box"]))
                      for b in kept)
    got = sorted((int(k), *map(float, xyxy))
                 for k, xyxy in zip(sample.labels, sample.boxes.tolist(), strict=True))
    assert got == expected
    assert (kept_edit := next(b for b in kept if b["id"] == m2))["box"] == [100.4, 120.0, 140.6,
                                                                             136.2]
    assert (CLASSES.index("herniation"), 100.0, 120.0, 141.0, 136.0) in got and kept_edit

    client.post(f"{base}/boxes/r0/reject", headers=csrf)  # later changes rewrite the XML
    assert len(LumbarDataset(corrections)[0].boxes) == len(kept) - 1
    actions = [e["action"] for e in audit_events(app) if e["study_key"] == key]
    for action in ("accept", "reject", "update", "add", "delete", "complete"):
        assert f"correction_{action}" in actions
    update = next(e for e in audit_events(app) if e["action"] == "correction_update"
                  and e["study_key"] == key)
    assert update["user"] == "alice" and update["detail"]["after"]["label"] == "herniation"


def test_dicom_corrections_use_a_patient_pseudonym(app, cases) -> None:  # noqa: ANN001
    client, csrf = signed_in(app)
    r = upload(client, csrf, sorted(cases["series"].iterdir()), "application/dicom")
    key = r.json()["study"]["study_key"]
    r = client.post(f"/api/studies/{key}/review/complete", headers=csrf,
                    json={"accept_pending": True})
    assert r.status_code == 200
    corrections = app.state.ctx.settings.data_dir / "corrections"
    table = (corrections / "patients.csv").read_text()
    pseudonym = patient_pseudonym(app.state.ctx.secret, "MRN-0042", key)
    assert f"images/{key}.png,{pseudonym}" in table
    assert "MRN-0042" not in table and pseudonym != key
    assert "Roe" not in (corrections / "annotations" / f"{key}.xml").read_text()


# -- PACS -------------------------------------------------------------------------------------

def test_pacs_search_pull_and_push(orthanc: OrthancServer, tmp_path: Path, diagnoser) -> None:  # noqa: ANN001, F811
    from lumbardx.pacs.client import PacsClient
    from lumbardx.synth import SynthConfig, generate_case, write_dicom_series

    cfg = SynthConfig(image_sizes=(256,), dicom_slices=(5,))
    series = write_dicom_series(generate_case(np.random.default_rng(21), cfg), tmp_path / "s",
                                cfg)
    patient_id = f"LX-{uuid.uuid4().hex[:8]}"
    for path in series:
        ds = pydicom.dcmread(path)
        ds.PatientID = patient_id
        ds.save_as(path, enforce_file_format=True)
    study_uid = str(pydicom.dcmread(series[0]).StudyInstanceUID)
    series_uid = str(pydicom.dcmread(series[0]).SeriesInstanceUID)
    with PacsClient(orthanc.url, orthanc.user, orthanc.password) as pacs:
        assert pacs.push(series) == series
    netrc = tmp_path / "netrc"
    host = orthanc.url.split("//", 1)[1].split("/", 1)[0]
    netrc.write_text(f"machine {host} login {orthanc.user} password {orthanc.password}\n")
    netrc.chmod(0o600)
    app = create_app(AppSettings(data_dir=tmp_path / "data", analyse_in_background=False,
                                 pacs_url=orthanc.url, pacs_credentials_file=netrc),
                     diagnoser=diagnoser)
    app.state.ctx.users.add("alice", PASSWORD)
    client, csrf = signed_in(app)
    assert client.get("/api/pacs").json() == {"configured": True, "url": orthanc.url}
    assert client.post("/api/pacs/search", json={}, headers=csrf).status_code == 422
    found = client.post("/api/pacs/search", json={"patient_id": patient_id}, headers=csrf)
    assert found.status_code == 200, found.text
    assert [(s["study_uid"], s["series_uid"], s["plane"]) for s in found.json()["series"]] == \
        [(study_uid, series_uid, "sagittal")]
    r = client.post("/api/pacs/pull", json={"study_uid": study_uid, "series_uid": series_uid},
                    headers=csrf)
    assert r.status_code == 201, r.text
    row = r.json()["study"]
    assert row["origin"] == "pacs" and row["status"] == "analysed" and row["n_files"] == 5
    missing = client.post("/api/pacs/pull", headers=csrf,
                          json={"study_uid": study_uid, "series_uid": "1.2.3.4"})
    assert missing.status_code in (404, 502)
    r = client.post(f"/api/studies/{row['study_key']}/push", headers=csrf)
    assert r.status_code == 200 and r.json() == {"stored": ["sr.dcm", "overlay_sc.dcm"]}
    folder = tmp_path / "data" / "studies" / row["study_key"]
    sent = {str(pydicom.dcmread(folder / name).SeriesInstanceUID)
            for name in ("sr.dcm", "overlay_sc.dcm")}
    with PacsClient(orthanc.url, orthanc.user, orthanc.password) as pacs:
        results = pacs.find_series(study_uid=study_uid, modality=None, sagittal_only=False)
    assert {s.series_uid for s in results} == {series_uid} | sent
    actions = [e["action"] for e in audit_events(app)]
    assert {"pacs_search", "pacs_pull", "pacs_push"} <= set(actions)
    assert patient_id not in (tmp_path / "data" / "audit.jsonl").read_text()


def test_pacs_routes_without_a_pacs(app) -> None:  # noqa: ANN001
    client, csrf = signed_in(app)
    assert client.get("/api/pacs").json() == {"configured": False, "url": None}
    r = client.post("/api/pacs/search", json={"patient_id": "X1"}, headers=csrf)
    assert r.status_code == 503 and "--pacs-url" in r.json()["detail"]
    assert_security_headers(r)


# -- teaching ---------------------------------------------------------------------------------

def test_quiz_scores_a_scripted_learner(app) -> None:  # noqa: ANN001
    from lumbardx.synth import SynthConfig, generate_case

    client, csrf = signed_in(app)
    assert client.get("/api/teaching/sessions/abc/score").status_code == 404
    r = client.post("/api/teaching/sessions", headers=csrf,
                    json={"source": "synthetic", "n_cases": 3, "seed": 12})
    assert r.status_code == 201
    sid = r.json()["session_id"]
    assert client.get(f"/api/teaching/sessions/{sid}/score").status_code == 409
    now = [1000.0]
    app.state.ctx.teaching.clock = lambda: now[0]
    truths = []
    for i in range(3):  # the same cases, generated here independently of the app
        case = generate_case(np.random.default_rng([12, i]), SynthConfig(), name=f"case-{i:02d}")
        truths.append({d["level"]: d["status"] for d in case.truth["discs"]})
    scripts = [lambda t: dict(t),                                   # case 0: all right
               lambda t: dict.fromkeys(t, "normal"),               # case 1: sees nothing
               lambda t: dict.fromkeys(t, "herniation")]           # case 2: calls everything
    seconds = [12.0, 30.0, 45.0]
    for i, truth in enumerate(truths):
        shown = client.get(f"/api/teaching/sessions/{sid}/cases/{i}").json()
        assert [lv["level"] for lv in shown["levels"]] == list(truth)
        assert "truth" not in json.dumps(shown) and shown["choices"] == CLASSES
        image = client.get(shown["image_url"])
        assert image.status_code == 200 and image.content[:4] == b"\x89PNG"
        if i == 0:
            r = client.post(f"/api/teaching/sessions/{sid}/cases/0/answer", headers=csrf,
                            json={"calls": {list(truth)[0]: "normal"}})
            assert r.status_code == 422 and "missing call" in r.json()["detail"]
        now[0] += seconds[i]
        r = client.post(f"/api/teaching/sessions/{sid}/cases/{i}/answer", headers=csrf,
                        json={"calls": scripts[i](truth)})
        assert r.status_code == 200, r.text
        assert r.json()["truth"] == truth and r.json()["seconds"] == seconds[i]
        assert r.json()["correct"] == {lv: scripts[i](truth)[lv] == t for lv, t in truth.items()}
    assert client.post(f"/api/teaching/sessions/{sid}/cases/1/answer", headers=csrf,
                       json={"calls": truths[1]}).status_code == 409

    pos = [sum(t != "normal" for t in truth.values()) for truth in truths]
    neg = [sum(t == "normal" for t in truth.values()) for truth in truths]
    assert sum(pos) > 0 and sum(neg) > 0, "seed 12 must give both kinds of disc"
    tp, tn = pos[0] + pos[2], neg[0] + neg[1]
    score = client.get(f"/api/teaching/sessions/{sid}/score").json()
    assert score["cases_answered"] == 3 and score["discs"] == sum(pos) + sum(neg)
    sens, spec = score["sensitivity"], score["specificity"]
    assert (sens["successes"], sens["total"]) == (tp, sum(pos))
    assert (spec["successes"], spec["total"]) == (tn, sum(neg))
    assert sens["estimate"] == pytest.approx(tp / sum(pos), abs=1e-4)
    lo, hi = proportion_confint(tn, sum(neg), alpha=0.05, method="wilson")
    assert (spec["ci_low"], spec["ci_high"]) == (pytest.approx(lo, abs=1e-4),
                                                 pytest.approx(hi, abs=1e-4))
    assert score["accuracy"]["successes"] == tp + tn
    assert score["mean_seconds_per_case"] == pytest.approx(np.mean(seconds))
    assert score["timed_cases"] == 3

    other, _ = signed_in(app, "bob")  # sessions are private to their learner
    assert other.get(f"/api/teaching/sessions/{sid}").status_code == 404
    assert other.get(f"/api/teaching/sessions/{sid}/cases/0/image.png").status_code == 404
    listed = client.get("/api/teaching/sessions").json()["sessions"]
    assert any(s["session_id"] == sid and s["answered"] == [0, 1, 2] for s in listed)


def test_quiz_from_a_labelled_folder(app, cases) -> None:  # noqa: ANN001
    client, csrf = signed_in(app)
    assert client.get("/api/teaching/sources").json() == {"synthetic": True,
                                                         "folders": ["synthetic-set"]}
    r = client.post("/api/teaching/sessions", headers=csrf,
                    json={"source": "folder", "folder": "nowhere", "n_cases": 2})
    assert r.status_code == 422 and "synthetic-set" in r.json()["detail"]
    r = client.post("/api/teaching/sessions", headers=csrf,
                    json={"source": "folder", "folder": "synthetic-set", "n_cases": 2, "seed": 1})
    assert r.status_code == 201 and r.json()["n_cases"] == 2
    sid = r.json()["session_id"]
    truths = [json.loads(p.read_text()) for p in (cases["teaching"] / "truth").glob("*.json")]
    assert len(truths) == 3
    statuses = [sorted(d["status"] for d in t["discs"]) for t in truths]
    shown = client.get(f"/api/teaching/sessions/{sid}/cases/0").json()
    calls = dict.fromkeys((lv["level"] for lv in shown["levels"]), "normal")
    r = client.post(f"/api/teaching/sessions/{sid}/cases/0/answer", headers=csrf,
                    json={"calls": calls})
    assert r.status_code == 200
    assert sorted(r.json()["truth"].values()) in statuses  # one of the folder's cases
