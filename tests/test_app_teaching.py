"""Teaching mode: the quiz history counts and the review of a finished quiz.

The history (``GET /api/teaching/sessions``, the "Your quizzes" table) must say how many cases
were answered and how many levels were called right; a finished quiz offers a review of the
answers (each case: the learner's call, the truth, right or wrong; ``GET .../review``) instead
of "Resume", and the review's tallies agree with the score (``GET .../score``).

The API part runs with FastAPI's TestClient; the page part in headless Chromium (Playwright,
as in ``tests/test_app_e2e.py``), skipped with the reason when either is missing. No model is
needed: quizzes are made of synthetic cases.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from lumbardx.app import AppSettings, create_app

from browser import CHROMIUM, launch, shot, sign_in, watched_page
from live_server import live_server

PASSWORD = "correct horse battery"
SEED = 12  # gives both normal and abnormal discs (tests/test_app_api.py)


def truths(seed: int, n: int) -> list[dict[str, str]]:
    """The truth per level of the synthetic quiz ``seed``, made here independently of the app."""
    from lumbardx.synth import SynthConfig, generate_case

    out = []
    for i in range(n):
        case = generate_case(np.random.default_rng([seed, i]), SynthConfig(), name=f"case-{i:02d}")
        out.append({d["level"]: d["status"] for d in case.truth["discs"]})
    return out


def login(client: TestClient, user: str) -> dict[str, str]:
    token = client.get("/api/auth/login-token").json()["csrf_token"]
    r = client.post("/api/auth/login", json={"username": user, "password": PASSWORD},
                    headers={"X-CSRF-Token": token})
    assert r.status_code == 200, r.text
    return {"X-CSRF-Token": r.json()["csrf_token"]}


@pytest.fixture()
def app(tmp_path: Path):
    app = create_app(AppSettings(data_dir=tmp_path / "data", analyse_in_background=False))
    app.state.ctx.users.add("alice", PASSWORD)
    app.state.ctx.users.add("bob", PASSWORD)
    return app


def answer_all_normal(client: TestClient, csrf: dict[str, str], sid: str, i: int) -> dict:
    shown = client.get(f"/api/teaching/sessions/{sid}/cases/{i}").json()
    calls = dict.fromkeys((lv["level"] for lv in shown["levels"]), "normal")
    r = client.post(f"/api/teaching/sessions/{sid}/cases/{i}/answer", headers=csrf,
                    json={"calls": calls})
    assert r.status_code == 200, r.text
    return r.json()


def test_history_counts_answers_and_right_calls(app) -> None:
    client = TestClient(app)
    csrf = login(client, "alice")
    done, open_ = (client.post("/api/teaching/sessions", headers=csrf, json={
        "source": "synthetic", "n_cases": n, "seed": SEED}).json()["session_id"] for n in (2, 3))
    truth = truths(SEED, 3)
    # The finished quiz: case 0 all right, case 1 everything called normal.
    shown = client.get(f"/api/teaching/sessions/{done}/cases/0").json()
    assert [lv["level"] for lv in shown["levels"]] == list(truth[0])
    assert client.post(f"/api/teaching/sessions/{done}/cases/0/answer", headers=csrf,
                       json={"calls": truth[0]}).status_code == 200
    answer_all_normal(client, csrf, done, 1)
    # The open quiz: one case answered out of three.
    answer_all_normal(client, csrf, open_, 0)

    right_done = len(truth[0]) + sum(t == "normal" for t in truth[1].values())
    right_open = sum(t == "normal" for t in truth[0].values())
    rows = {s["session_id"]: s for s in client.get("/api/teaching/sessions").json()["sessions"]}
    assert set(rows) == {done, open_}
    d, o = rows[done], rows[open_]
    assert d["answered"] == [0, 1] and o["answered"] == [0]  # unchanged: indices of the cases
    assert (d["n_answered"], d["n_cases"], d["finished"]) == (2, 2, True)
    assert (o["n_answered"], o["n_cases"], o["finished"]) == (1, 3, False)
    assert (d["discs_answered"], d["discs_correct"]) == (len(truth[0]) + len(truth[1]), right_done)
    assert (o["discs_answered"], o["discs_correct"]) == (len(truth[0]), right_open)
    assert client.get(f"/api/teaching/sessions/{done}").json()["next_case"] is None
    one = client.get(f"/api/teaching/sessions/{open_}").json()
    assert one["next_case"] == 1 and one["n_answered"] == 1 and one["finished"] is False

    # A fresh quiz counts nothing.
    fresh = client.post("/api/teaching/sessions", headers=csrf,
                        json={"source": "synthetic", "n_cases": 1, "seed": 3}).json()["session_id"]
    row = client.get(f"/api/teaching/sessions/{fresh}").json()
    assert (row["n_answered"], row["finished"], row["discs_answered"], row["discs_correct"]) == (
        0, False, 0, 0)


def test_review_of_a_finished_quiz_agrees_with_the_score(app) -> None:
    client = TestClient(app)
    csrf = login(client, "alice")
    sid = client.post("/api/teaching/sessions", headers=csrf,
                      json={"source": "synthetic", "n_cases": 3, "seed": SEED}).json()["session_id"]
    truth = truths(SEED, 3)
    assert client.get(f"/api/teaching/sessions/{sid}/review").json()["cases"] == []
    scripts = [dict, lambda t: dict.fromkeys(t, "normal"), lambda t: dict.fromkeys(t, "herniation")]
    answers = []
    for i, t in enumerate(truth[:2]):
        client.get(f"/api/teaching/sessions/{sid}/cases/{i}")
        calls = scripts[i](t)
        answers.append(calls)
        assert client.post(f"/api/teaching/sessions/{sid}/cases/{i}/answer", headers=csrf,
                           json={"calls": calls}).status_code == 200

    # Not finished: the review holds the answered cases only (no truth of case 2 leaks).
    partial = client.get(f"/api/teaching/sessions/{sid}/review").json()
    assert partial["finished"] is False and [c["case"] for c in partial["cases"]] == [0, 1]
    assert "truth" not in json.dumps(client.get(f"/api/teaching/sessions/{sid}/cases/2").json())

    client.get(f"/api/teaching/sessions/{sid}/cases/2")
    answers.append(scripts[2](truth[2]))
    assert client.post(f"/api/teaching/sessions/{sid}/cases/2/answer", headers=csrf,
                       json={"calls": answers[2]}).status_code == 200
    review = client.get(f"/api/teaching/sessions/{sid}/review").json()
    assert review["finished"] is True and review["n_cases"] == 3
    assert [c["case"] for c in review["cases"]] == [0, 1, 2]
    for case, t, calls in zip(review["cases"], truth, answers, strict=True):
        assert [lv["level"] for lv in case["levels"]] == list(t)
        for lv in case["levels"]:
            assert lv["call"] == calls[lv["level"]] and lv["truth"] == t[lv["level"]]
            assert lv["correct"] is (lv["call"] == lv["truth"])
            assert len(lv["centre"]) == 2
        assert case["discs"] == len(t)
        assert case["correct"] == sum(calls[lv] == s for lv, s in t.items())
        assert case["image_url"] == f"/api/teaching/sessions/{sid}/cases/{case['case']}/image.png"
        assert case["seconds"] is not None and case["seconds"] >= 0
    every = [(calls[lv], s) for t, calls in zip(truth, answers, strict=True) for lv, s in t.items()]
    assert review["discs"] == len(every)
    assert review["discs_correct"] == sum(c == s for c, s in every)
    by_finding = {f["finding"]: f for f in review["per_finding"]}
    for finding in {s for _, s in every}:
        assert by_finding[finding]["discs"] == sum(s == finding for _, s in every)
        assert by_finding[finding]["correct"] == sum(c == s == finding for c, s in every)
    assert sum(f["discs"] for f in review["per_finding"]) == len(every)

    score = client.get(f"/api/teaching/sessions/{sid}/score").json()
    assert score["discs"] == review["discs"]
    assert score["exact_agreement"]["successes"] == review["discs_correct"]
    for f in score["per_finding"]:
        assert f["exact"]["successes"] == by_finding[f["finding"]]["correct"]
        assert f["discs"] == by_finding[f["finding"]]["discs"]
    listed = client.get("/api/teaching/sessions").json()["sessions"][0]
    assert (listed["discs_answered"], listed["discs_correct"]) == (review["discs"],
                                                                   review["discs_correct"])

    other = TestClient(app)  # a quiz is private to its learner
    login(other, "bob")
    assert other.get(f"/api/teaching/sessions/{sid}/review").status_code == 404
    assert client.get("/api/teaching/sessions/nothere/review").status_code == 404


# -- in the browser ---------------------------------------------------------------------------

@pytest.fixture()
def browser_page(tmp_path: Path) -> Iterator[tuple[Any, str, Any]]:
    """(page, base URL, app) with a signed-in learner ``alice``."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                                   "(run scripts/install-test-deps.sh)")
    pytest.importorskip("uvicorn", reason="uvicorn is not installed")
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is absent (Debian package chromium)")
    app = create_app(AppSettings(data_dir=tmp_path / "data"))
    app.state.ctx.users.add("alice", PASSWORD)
    with live_server(app) as base, sync_api.sync_playwright() as p:
        browser = launch(p)
        page = watched_page(browser, 1366, 768)
        sign_in(page, base, "alice", PASSWORD)
        yield page, base, app
        page.context.close()
        browser.close()


def test_history_page_counts_and_reviews_a_finished_quiz(browser_page, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page, base, _ = browser_page
    csrf = {"X-CSRF-Token": page.evaluate(
        "async () => (await (await fetch('/api/auth/session')).json()).csrf_token")}
    api = page.request

    def start(n: int) -> str:
        r = api.post(f"{base}/api/teaching/sessions", headers=csrf,
                     data={"source": "synthetic", "n_cases": n, "seed": SEED})
        assert r.ok, r.text()
        return r.json()["session_id"]

    def answer(sid: str, i: int, calls: dict[str, str]) -> None:
        assert api.get(f"{base}/api/teaching/sessions/{sid}/cases/{i}").ok
        r = api.post(f"{base}/api/teaching/sessions/{sid}/cases/{i}/answer", headers=csrf,
                     data={"calls": calls})
        assert r.ok, r.text()

    truth = truths(SEED, 2)
    done, open_ = start(2), start(3)
    answer(done, 0, truth[0])                                  # all right
    answer(done, 1, dict.fromkeys(truth[1], "herniation"))     # calls everything herniation
    answer(open_, 0, dict.fromkeys(truth[0], "normal"))
    right = len(truth[0]) + sum(t == "herniation" for t in truth[1].values())
    total = len(truth[0]) + len(truth[1])

    page.click("[data-nav='teaching']")
    finished = page.locator(f"tr[data-session='{done}']")
    pending = page.locator(f"tr[data-session='{open_}']")
    expect(finished.locator("td.answered")).to_have_text("2 of 2")
    expect(pending.locator("td.answered")).to_have_text("1 of 3")
    expect(finished.locator("td.right")).to_have_text(f"{right} of {total}")
    expect(finished.locator("button")).to_have_text("Review")
    expect(pending.locator("button")).to_have_text("Resume")
    page.screenshot(path=str(shot(tmp_path, "lumbardx_quiz_history.png")))

    # The finished quiz opens its review: score, then each case with call, truth, right/wrong.
    finished.locator("button").click()
    expect(page.locator("#score-specificity")).to_contain_text("95% CI")
    cases = page.locator(".review-case")
    expect(cases).to_have_count(2)
    for i, (t, calls) in enumerate([(truth[0], truth[0]),
                                    (truth[1], dict.fromkeys(truth[1], "herniation"))]):
        rows = cases.nth(i).locator("tbody tr")
        expect(rows).to_have_count(len(t))
        for j, (level, status) in enumerate(t.items()):
            row = rows.nth(j)
            expect(row).to_have_attribute("data-level", level)
            expect(row.locator("td.call")).to_have_attribute("data-label", calls[level])
            expect(row.locator("td.truth")).to_have_attribute("data-label", status)
            expect(row).to_have_attribute("data-correct", str(calls[level] == status).lower())
        expect(cases.nth(i).locator(".case-tally")).to_contain_text(
            f"{sum(calls[lv] == s for lv, s in t.items())} of {len(t)}")
    expect(page.locator("#review-tally")).to_contain_text(f"{right} of {total}")
    expect(page.locator("#quiz-resume")).to_have_count(0)
    page.screenshot(path=str(shot(tmp_path, "lumbardx_quiz_review.png")), full_page=True)

    # The open quiz resumes at its next case.
    page.click("text=\u2190 Quizzes")
    page.locator(f"tr[data-session='{open_}'] button").click()
    expect(page.locator(".quiz-page h2")).to_have_text("Case 2 of 3")
    assert not page.problems, page.problems
