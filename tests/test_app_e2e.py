"""The clinic web app in a real browser: sign in, upload a DICOM study, see and correct the
findings, export the report, sign out.

Runs the FastAPI app (``lumbardx.app.create_app``) with uvicorn in a thread on a free loopback
port, with a temporary data folder, one account created through the app's account store, and a
tiny random YOLOv5n checkpoint (as in ``tests/test_diagnose.py``: objectness and class biases
raised so that the random network proposes boxes). Headless Debian Chromium is driven with
Playwright's sync API (``scripts/install-test-deps.sh`` installs both); the test is skipped with
the reason when either is missing.

Everything the page does goes through the documented REST contract (docs/api.md); the test
checks the page's effect both on screen (overlay marks, table rows, save state) and on the
server (review object, the LabelImg VOC file written from the corrections, the PDF download).
Screenshots of the viewer and the quiz score go to the test's temporary folder; set
``LUMBARDX_E2E_SCREENSHOT_DIR`` to a folder to keep them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from browser import CHROMIUM, launch, shot, watched_page
from live_server import live_server

USER, PASSWORD = "reader1", "correct-horse-battery"
CLASSES = ["normal", "herniation", "spondylolisthesis"]
HERNIATION_RGB = "#D55E00"


sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (run scripts/install-test-deps.sh)")
uvicorn = pytest.importorskip("uvicorn", reason="uvicorn (web app dependency) is not installed")
pytest.importorskip("fastapi", reason="fastapi (web app dependency) is not installed")
if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} is absent (Debian package chromium; run scripts/install-test-deps.sh)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from checkpoints import tiny_checkpoint

    evidence = {"herniation": {"threshold": 0.35, "sensitivity": 0.8, "n_positive": 50},
                "spondylolisthesis": {"threshold": 0.5, "sensitivity": 0.25, "n_positive": 8}}
    return tiny_checkpoint(tmp_path_factory.mktemp("weights") / "best.pt",
                           tag="e2e-test", training_data="none (random test weights)",
                           threshold_evidence=evidence)


@pytest.fixture(scope="module")
def dicom_study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from lumbardx.synth import SynthConfig, generate_dataset

    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, 1, seed=7, dicom=True, config=SynthConfig(image_sizes=(320,)))
    files = sorted((out / "dicom").glob("*/*.dcm"))
    assert files, "the synthetic DICOM series was not written"
    return files


@pytest.fixture(scope="module")
def server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from lumbardx.app import AppSettings, create_app
    from lumbardx.app.accounts import UserStore

    data_dir = tmp_path_factory.mktemp("appdata")
    UserStore(data_dir / "users.json").add(USER, PASSWORD, "clinician")
    app = create_app(AppSettings(data_dir=data_dir, weights=checkpoint, backend="torch"))
    with live_server(app) as base:
        yield {"url": base, "data_dir": data_dir}


@pytest.fixture()
def page(server: dict[str, Any]) -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        browser = launch(p)
        pg = watched_page(browser, 1600, 900, ignore="401", accept_downloads=True)
        yield pg
        pg.context.close()
        browser.close()


def _sign_in(page: Any, base: str) -> None:
    page.goto(f"{base}/")
    sync_api.expect(page).to_have_url(f"{base}/login")
    page.fill("#username", USER)
    page.fill("#password", "wrong-password-123")
    page.click("#login-submit")
    sync_api.expect(page.locator("#login-message")).to_contain_text("Wrong user name or password")
    page.fill("#password", PASSWORD)
    page.click("#login-submit")
    sync_api.expect(page).to_have_url(f"{base}/")
    sync_api.expect(page.locator("#who")).to_contain_text(USER)


def _review(page: Any, base: str, key: str) -> dict[str, Any]:
    res = page.request.get(f"{base}/api/studies/{key}")
    assert res.ok, res.text()
    return res.json()["review"]


def _wait_saved(page: Any) -> None:
    sync_api.expect(page.locator(".review .save-state")).to_have_attribute("data-state", "saved")


def test_sign_in_upload_review_export_sign_out(server: dict[str, Any], page: Any,
                                               dicom_study: list[Path], tmp_path: Path) -> None:
    from lumbardx.data.voc import read_voc

    base, expect = server["url"], sync_api.expect
    _sign_in(page, base)
    expect(page.locator("#disclaimer")).to_contain_text("not a diagnosis")

    # Upload the series through the file picker; the worklist shows it and its analysis.
    page.set_input_files("#upload-files", [str(p) for p in dicom_study])
    expect(page.locator(".upload-item[data-state='done']")).to_have_count(1, timeout=60_000)
    row = page.locator("table.worklist tbody tr[data-key]")
    expect(row).to_have_count(1)
    expect(row).to_have_attribute("data-status", "analysed", timeout=90_000)
    key = row.get_attribute("data-key")
    expect(row.locator(".findings-cell")).to_contain_text("discs")

    # The viewer: one overlay mark per box of the review, findings table rows, level names.
    row.click()
    expect(page).to_have_url(f"{base}/#/study/{key}")
    review = _review(page, base, key)
    n_boxes = len(review["boxes"])
    assert n_boxes > 0, "the test checkpoint proposed no box"
    marks = page.locator("svg.overlay g.mark")
    expect(marks).to_have_count(n_boxes)
    study = page.request.get(f"{base}/api/studies/{key}/findings.json").json()
    expect(page.locator("table.findings tbody tr")).to_have_count(len(study["findings"]))
    expect(page.locator("svg.overlay text.level-label")).to_have_count(len(study["findings"]))
    expect(page.locator(".hud.notice")).to_contain_text("not a diagnosis")
    # how many findings the model called where its thresholds were chosen, and what that means
    expect(page.locator("details.notes")).to_contain_text(
        "Herniation 80% (40 of 50); Spondylolisthesis 25% (2 of 8). A finding that is not shown "
        "is not excluded.")
    herniation = page.locator("svg.overlay g.mark[data-label='herniation'] rect.edge")
    if herniation.count():
        assert herniation.first.get_attribute("stroke").upper() == HERNIATION_RGB

    # Display filters: a confidence above every score hides model boxes; a class toggle its class.
    page.locator("#conf-slider").fill("1")
    above = sum(1 for b in review["boxes"] if b["score"] is not None and b["score"] >= 1.0)
    expect(marks).to_have_count(above)
    page.locator("#conf-slider").fill("0")
    expect(marks).to_have_count(n_boxes)
    labels = {b["label"] for b in review["boxes"]}
    hidden = sorted(labels)[0]
    page.locator(f"input[data-class-toggle='{hidden}']").uncheck()
    expect(marks).to_have_count(sum(b["label"] != hidden for b in review["boxes"]))
    page.locator(f"input[data-class-toggle='{hidden}']").check()
    expect(marks).to_have_count(n_boxes)

    # Correction 1: select the first box in the list and drag its right edge 30 px to the left.
    first = review["boxes"][0]
    page.locator(f"table.boxes tr[data-box-id='{first['id']}']").click()
    edge = page.locator(f"svg.overlay g.mark[data-box-id='{first['id']}'] rect.edge")
    bb = edge.bounding_box()
    assert bb is not None and bb["width"] > 40, f"box too small on screen to drag: {bb}"
    x, y = bb["x"] + bb["width"], bb["y"] + bb["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - 15, y, steps=4)
    page.mouse.move(x - 30, y, steps=4)
    page.mouse.up()
    _wait_saved(page)
    edited = next(b for b in _review(page, base, key)["boxes"] if b["id"] == first["id"])
    assert edited["decision"] == "edited"
    assert edited["box"][2] < first["box"][2] - 1, (first["box"], edited["box"])
    assert edited["box"][0] == pytest.approx(first["box"][0], abs=1.0)

    # Correction 2: change the class of that box with the keyboard (its number in the class
    # list) to another class; reject another box with X; draw a new herniation box.
    target = "spondylolisthesis" if first["label"] != "spondylolisthesis" else "normal"
    page.keyboard.press(str(CLASSES.index(target) + 1))
    _wait_saved(page)
    expect(page.locator(f"svg.overlay g.mark[data-box-id='{first['id']}']")).to_have_attribute(
        "data-label", target)
    # the class is now the reader's call: the model's score no longer stands
    expect(page.locator(f"table.boxes tr[data-box-id='{first['id']}'] td.num")).to_have_text(
        "reader")
    expect(page.locator(".selected-card")).to_contain_text("the reader's call")
    expect(page.locator("svg.overlay text.finding-label", has_text="(reader)")).not_to_have_count(0)
    others = [b for b in review["boxes"] if b["id"] != first["id"]]
    if others:
        page.locator(f"table.boxes tr[data-box-id='{others[0]['id']}']").click()
        page.keyboard.press("x")
        _wait_saved(page)
    page.keyboard.press("Escape")
    page.locator(".draw-row button[data-set-class='herniation']").click()
    page.keyboard.press("d")
    stage = page.locator(".stage").bounding_box()  # the image is centred in the stage
    sx, sy = stage["x"] + stage["width"] / 2 - 30, stage["y"] + stage["height"] / 2 - 20
    page.mouse.move(sx, sy)
    page.mouse.down()
    page.mouse.move(sx + 60, sy + 40, steps=5)
    page.mouse.up()
    _wait_saved(page)
    after = _review(page, base, key)
    added = [b for b in after["boxes"] if b["decision"] == "added"]
    assert len(added) == 1 and added[0]["label"] == "herniation" and added[0]["origin"] == "reader"
    if others:
        assert next(b for b in after["boxes"] if b["id"] == others[0]["id"])["decision"] == "rejected"

    page.locator(f"svg.overlay g.mark[data-box-id='{first['id']}']").wait_for()
    page.screenshot(path=str(shot(tmp_path, "lumbardx_viewer.png")))

    # Complete the review (accepting the boxes left pending): the VOC file holds the corrections.
    page.once("dialog", lambda d: d.accept())
    page.click("#complete-review")
    expect(page.locator(".study-toolbar .chip.status")).to_have_attribute("data-status", "reviewed",
                                                                           timeout=30_000)
    voc = server["data_dir"] / "corrections" / "annotations" / f"{key}.xml"
    assert voc.is_file(), f"no VOC file at {voc}"
    ann = read_voc(voc)
    final = _review(page, base, key)
    kept = [b for b in final["boxes"] if b["decision"] != "rejected"]
    assert len(ann.boxes) == len(kept)
    slip = [b for b in ann.boxes if b.label == target]
    assert any(abs(b.x2 - round(edited["box"][2])) <= 1 for b in slip), (slip, edited["box"])
    assert any(b.label == "herniation" and abs(b.x1 - added[0]["box"][0]) <= 1 for b in ann.boxes)

    # The report follows the review: rewritten in the background once the review is complete,
    # it names the reviewer and what the reader changed.
    deadline = time.monotonic() + 90
    while "reviewed by" not in (report := page.request.get(
            f"{base}/api/studies/{key}/report.html").text()):
        assert time.monotonic() < deadline, "the reviewed report was not written"
        time.sleep(0.5)
    assert f"reviewed by {USER}" in report and "added by the reader" in report
    assert "not reviewed (model output" not in report
    assert f"class changed from {first['label']}; box moved" in report
    if others:
        assert "rejected" in report

    # Export: the PDF downloads; the HTML report opens in the browser, legible at 800 px.
    with page.expect_download() as dl:
        page.click("#report-pdf")
    pdf = Path(dl.value.path())
    assert pdf.read_bytes()[:5] == b"%PDF-"
    html = page.request.get(f"{base}/api/studies/{key}/report.html")
    assert html.ok and "not a diagnosis" in html.text()
    viewer_url = page.url
    page.set_viewport_size({"width": 800, "height": 900})
    page.goto(f"{base}/api/studies/{key}/report.html")
    expect(page.locator("h2", has_text="Reader's review")).to_be_visible()
    expect(page.locator("dl.meta")).to_contain_text(f"reviewed by {USER}")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    page.screenshot(path=str(shot(tmp_path, "lumbardx_report_800.png")), full_page=True)
    page.set_viewport_size({"width": 1600, "height": 900})
    page.goto(viewer_url)

    # Sign out: the session is gone; pages and the API refuse.
    page.click("#logout-button")
    expect(page).to_have_url(f"{base}/login?signedout=1")
    page.goto(f"{base}/#/study/{key}")
    expect(page).to_have_url(re.compile(rf"^{re.escape(base)}/login(#/study/{key})?$"))
    expect(page.locator("#login-form")).to_be_visible()
    assert page.request.get(f"{base}/api/studies").status == 401
    assert not page.problems, page.problems


def test_several_image_files_are_one_study_each_and_a_bad_one_stops_none(
        server: dict[str, Any], page: Any, tmp_path: Path) -> None:
    from PIL import Image

    from lumbardx.synth import SynthConfig, generate_case

    base, expect = server["url"], sync_api.expect
    _sign_in(page, base)
    files = []
    for i in range(2):
        case = generate_case(np.random.default_rng(20 + i), SynthConfig(image_sizes=(256,)))
        path = tmp_path / f"slice-{i}.png"
        Image.fromarray(case.image).save(path)
        files.append(path)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    before = page.locator("table.worklist tbody tr[data-key]").count()
    page.set_input_files("#upload-files", [str(files[0]), str(bad), str(files[1])])
    expect(page.locator(".upload-item[data-state='done']")).to_have_count(2, timeout=60_000)
    expect(page.locator(".upload-item[data-state='error']")).to_have_count(1)
    expect(page.locator(".upload-item[data-state='error']")).to_contain_text("broken.png")
    expect(page.locator("table.worklist tbody tr[data-key]")).to_have_count(before + 2)
    # the browser logs the refused upload's 422; nothing else may go wrong
    assert [p for p in page.problems if "422" not in p] == [], page.problems


def test_shell_buttons_wait_for_the_session(server: dict[str, Any], page: Any) -> None:
    """The shell learns its session (and CSRF token) asynchronously and only then wires "Sign
    out" and "Shortcuts": a click before that used to be lost. The session answer is held back
    here: both buttons are disabled meanwhile, and "Sign out" works once it arrives."""
    base, expect = server["url"], sync_api.expect
    _sign_in(page, base)
    held: list[Any] = []
    page.route("**/api/auth/session", lambda route: held.append(route))
    page.goto(f"{base}/")
    expect(page.locator("#logout-button")).to_be_disabled()
    expect(page.locator("#help-button")).to_be_disabled()
    for _ in range(50):  # route handlers run while the page is waited on
        if held:
            break
        page.wait_for_timeout(100)
    assert held, "the page did not ask for its session"
    held[0].continue_()
    page.click("#logout-button")  # waits until the button is enabled
    expect(page).to_have_url(f"{base}/login?signedout=1")
    assert page.request.get(f"{base}/api/studies").status == 401


def test_teaching_quiz_scores_the_learner(server: dict[str, Any], page: Any,
                                          tmp_path: Path) -> None:
    """A two-case synthetic quiz: call every level, see the truth, get the score with CIs."""
    base, expect = server["url"], sync_api.expect
    _sign_in(page, base)
    page.click("[data-nav='teaching']")
    page.fill("#quiz-n", "2")
    page.fill("#quiz-seed", "11")
    page.click("#quiz-start")
    for case in range(2):
        expect(page.locator(".quiz-page h2")).to_have_text(f"Case {case + 1} of 2")
        levels = page.locator(".quiz-level")
        expect(levels.first).to_be_visible()
        n_levels = levels.count()
        assert n_levels > 0
        expect(page.locator("svg.quiz-image g.marker")).to_have_count(n_levels)
        expect(page.locator("#quiz-submit")).to_be_disabled()
        for _ in range(n_levels):   # keyboard: 1 = normal, moves to the next level
            page.keyboard.press("1")
        expect(page.locator("#quiz-submit")).to_be_enabled()
        page.click("#quiz-submit")
        verdicts = page.locator(".quiz-level .verdict")
        expect(verdicts).to_have_count(n_levels)
        page.click("#quiz-submit")  # next case / score
    score = page.locator("#score-specificity")
    expect(score).to_contain_text("95% CI")
    res = page.request.get(page.url.split("#")[0] + "api/teaching/sessions").json()["sessions"]
    sid = res[0]["session_id"]
    truth = page.request.get(f"{base}/api/teaching/sessions/{sid}/score").json()
    # Every call was "normal": no positive disc detected, every normal disc right.
    assert truth["specificity"]["estimate"] == pytest.approx(1.0)
    if truth["positive_discs"]:
        assert truth["sensitivity"]["estimate"] == pytest.approx(0.0)
    expect(score).to_contain_text(f"({truth['specificity']['successes']}/{truth['specificity']['total']})")
    page.screenshot(path=str(shot(tmp_path, "lumbardx_quiz_score.png")))
    assert not page.problems, page.problems
