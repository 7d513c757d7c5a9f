"""The viewer on real screens, in a real browser: a laptop (1366 x 768) and a narrow window
(800 px wide); scrolling through the slices of the series and switching T1 / T2.

The app runs with uvicorn in a thread (as in ``tests/test_app_e2e.py``) with a tiny random
YOLOv5n checkpoint, and holds one synthetic DICOM study of two co-registered sagittal series
(T2 and T1, :func:`lumbardx.synth.write_dicom_series`). The first test checks the read-only
series API the viewer uses (``GET /api/studies/{key}/series`` and
``.../slices/{index}.png?series=S``) without a browser; the others drive headless Chromium with
Playwright and are skipped with the reason when it is missing. Screenshots go to the test's
temporary folder, or to ``LUMBARDX_E2E_SCREENSHOT_DIR`` when set.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from browser import CHROMIUM, launch, shot, sign_in, watched_page
from live_server import live_server

uvicorn = pytest.importorskip("uvicorn", reason="uvicorn (web app dependency) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is not installed")

USER, PASSWORD = "reader1", "correct-horse-battery"
N_SLICES = 7


def _sign_in_client(base: str) -> tuple[Any, dict[str, str]]:
    client = httpx.Client(base_url=base, timeout=300)
    token = client.get("/api/auth/login-token").json()["csrf_token"]
    r = client.post("/api/auth/login", json={"username": USER, "password": PASSWORD},
                    headers={"X-CSRF-Token": token})
    assert r.status_code == 200, r.text
    return client, {"X-CSRF-Token": r.json()["csrf_token"]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The app with one analysed T2 + T1 study: ``{"url", "key", "data_dir"}``."""
    from checkpoints import tiny_checkpoint

    from lumbardx.app import AppSettings, create_app
    from lumbardx.app.accounts import UserStore
    from lumbardx.synth import SynthConfig, generate_case, write_dicom_series

    root = tmp_path_factory.mktemp("viewer")
    weights = tiny_checkpoint(root / "best.pt", tag="e2e-test",
                              training_data="none (random test weights)")
    cfg = SynthConfig(image_sizes=(320,), dicom_slices=(N_SLICES,))
    case = generate_case(np.random.default_rng(7), cfg, name="case-00")
    files = write_dicom_series(case, root / "t2", cfg) + \
        write_dicom_series(case, root / "t1", cfg, weighting="T1")
    data_dir = root / "data"
    data_dir.mkdir()
    UserStore(data_dir / "users.json").add(USER, PASSWORD, "clinician")
    app = create_app(AppSettings(data_dir=data_dir, weights=weights, backend="torch"))
    with live_server(app) as base:
        client, csrf = _sign_in_client(base)
        upload = [("files", (f"{p.parent.name}-{p.name}", p.read_bytes(), "application/dicom"))
                  for p in files]
        r = client.post("/api/studies", files=upload, headers=csrf)
        assert r.status_code == 201, r.text
        key = r.json()["study"]["study_key"]
        deadline = time.monotonic() + 240
        while (status := client.get(f"/api/studies/{key}").json()["study"]["status"]) == "new":
            assert time.monotonic() < deadline, "the analysis did not finish"
            time.sleep(0.5)
        assert status == "analysed", client.get(f"/api/studies/{key}").json()["study"]
        # one slice as an image file: no series, so the viewer shows no slice bar
        png = io.BytesIO()
        Image.fromarray(case.image).save(png, format="PNG")
        r = client.post("/api/studies", files=[("files", ("slice.png", png.getvalue(),
                                                          "image/png"))], headers=csrf)
        assert r.status_code == 201, r.text
        png_key = r.json()["study"]["study_key"]
        while client.get(f"/api/studies/{png_key}").json()["study"]["status"] == "new":
            assert time.monotonic() < deadline + 120, "the image's analysis did not finish"
            time.sleep(0.5)
        client.close()
        yield {"url": base, "key": key, "png_key": png_key, "data_dir": data_dir}


def _png(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)))


def test_series_api_serves_every_slice_on_the_analysed_grid(server: dict[str, Any]) -> None:
    client, _ = _sign_in_client(server["url"])
    key = server["key"]
    listing = client.get(f"/api/studies/{key}/series").json()
    series = listing["series"]
    assert listing["analysed_series"] == 0 and len(series) == 2
    t2, t1 = series
    assert (t2["weighting"], t1["weighting"]) == ("T2", "T1")
    assert t2["n_slices"] == t1["n_slices"] == N_SLICES
    assert t2["analysed_slice"] == (N_SLICES - 1) // 2 and t1["analysed_slice"] is None
    assert t2["positions"] == sorted(t2["positions"]) and t1["positions"] == t2["positions"]

    detail = client.get(f"/api/studies/{key}").json()["image"]
    shape = (detail["height"], detail["width"])
    analysed = _png(client.get(f"/api/studies/{key}/image.png").content)
    mid = t2["analysed_slice"]
    same = _png(client.get(f"/api/studies/{key}/slices/{mid}.png?series=0").content)
    assert np.array_equal(same, analysed)  # the analysed slice, as the viewer shows it
    slices = [_png(client.get(f"/api/studies/{key}/slices/{i}.png?series=0").content)
              for i in range(N_SLICES)]
    assert all(s.shape == shape for s in slices)
    assert len({s.tobytes() for s in slices}) == N_SLICES  # every slice is another image
    t1_mid = _png(client.get(f"/api/studies/{key}/slices/{mid}.png?series=1").content)
    assert t1_mid.shape == shape and np.abs(t1_mid.astype(int) - analysed).mean() > 5
    c, w = detail["default_window"]["center"], detail["default_window"]["width"]
    windowed = _png(client.get(f"/api/studies/{key}/slices/{mid}.png?series=0",
                               params={"center": c / 2, "width": w / 4}).content)
    assert windowed.shape == shape and windowed.mean() > analysed.mean()

    assert client.get(f"/api/studies/{key}/slices/{N_SLICES}.png?series=0").status_code == 404
    assert client.get(f"/api/studies/{key}/slices/0.png?series=2").status_code == 404
    assert client.get(f"/api/studies/{key}/slices/0.png?series=0&center=5").status_code == 422
    assert client.get("/api/studies/ffffffffffffffff/series").status_code == 404
    client.close()
    anonymous = httpx.get(f"{server['url']}/api/studies/{key}/series")
    assert anonymous.status_code == 401


# -- in the browser ---------------------------------------------------------------------------

@pytest.fixture()
def open_viewer(server: dict[str, Any]) -> Iterator[Any]:
    """``open_viewer(width, height)``: a signed-in page showing the study at that size."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                                   "(run scripts/install-test-deps.sh)")
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is absent (Debian package chromium)")
    base, key = server["url"], server["key"]
    with sync_api.sync_playwright() as p:
        browser = launch(p)
        contexts = []

        def opener(width: int, height: int, study: str = key) -> Any:
            page = watched_page(browser, width, height)
            contexts.append(page.context)
            sign_in(page, base, USER, PASSWORD)
            page.goto(f"{base}/#/study/{study}")
            sync_api.expect(page.locator("canvas.slice-canvas")).to_have_attribute(
                "data-src", f"/api/studies/{study}/image.png")
            if study == key:  # the DICOM study has a series to scroll
                sync_api.expect(page.locator("#slice-slider")).to_be_visible()
            sync_api.expect(page.locator("table.findings tbody tr").first).to_be_visible()
            return page

        yield opener
        for context in contexts:
            context.close()
        browser.close()


def _box(page: Any, selector: str) -> dict[str, float]:
    box = page.locator(selector).first.bounding_box()
    assert box is not None, f"{selector} is not on screen"
    return box


def _screen(page: Any) -> dict[str, float]:
    return page.evaluate("""() => ({
        scrollWidth: document.documentElement.scrollWidth, innerWidth: innerWidth,
        scrollHeight: document.documentElement.scrollHeight, innerHeight: innerHeight,
        mainScrollWidth: document.querySelector('main').scrollWidth,
        mainClientWidth: document.querySelector('main').clientWidth,
        mainScrollHeight: document.querySelector('main').scrollHeight,
        mainClientHeight: document.querySelector('main').clientHeight})""")


def _image_on_screen(page: Any, server: dict[str, Any]) -> tuple[float, float]:
    """Width and height of the fitted image on screen (the viewer fits it in the stage)."""
    stage = _box(page, ".stage")
    image = page.request.get(f"{server['url']}/api/studies/{server['key']}").json()["image"]
    scale = min(stage["width"] / image["width"], stage["height"] / image["height"]) * 0.96
    return image["width"] * scale, image["height"] * scale


def _no_horizontal_scroll(page: Any) -> None:
    s = _screen(page)
    assert s["scrollWidth"] <= s["innerWidth"], s
    assert s["mainScrollWidth"] <= s["mainClientWidth"], s


def _within_width(page: Any, selector: str) -> None:
    width = page.evaluate("innerWidth")
    for box in (b.bounding_box() for b in page.locator(selector).all()):
        if box is not None:
            assert box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5, (selector, box)


def test_narrow_screen_gives_the_image_the_width(open_viewer, server, tmp_path: Path) -> None:
    page = open_viewer(800, 900)
    _no_horizontal_scroll(page)
    stage = _box(page, ".stage")
    assert stage["width"] > 300 and stage["height"] > 300, stage
    width, _height = _image_on_screen(page, server)
    assert width >= 0.6 * 800, (width, stage)
    assert stage["y"] + stage["height"] <= 900, "the whole image shows without scrolling"
    side = _box(page, ".study-side")
    assert side["y"] >= stage["y"] + stage["height"] - 1, "the side panel goes below the image"
    for selector in (".study-toolbar button, .study-toolbar a.button, .study-toolbar select",
                     ".stage-bar button, .stage-bar input", ".topbar button, .topbar a"):
        _within_width(page, selector)
    page.screenshot(path=str(shot(tmp_path, "lumbardx_viewer_800x900.png")))
    # The findings are reached by scrolling the page, and nothing spills sideways there either.
    page.locator("table.findings").scroll_into_view_if_needed()
    assert page.locator("table.findings").is_visible()
    _no_horizontal_scroll(page)
    assert not page.problems, page.problems


def test_laptop_screen_shows_image_and_findings_at_once(open_viewer, server,
                                                        tmp_path: Path) -> None:
    page = open_viewer(1366, 768)
    _no_horizontal_scroll(page)
    s = _screen(page)
    assert s["scrollHeight"] <= s["innerHeight"], s
    assert s["mainScrollHeight"] <= s["mainClientHeight"], s
    stage = _box(page, ".stage")
    assert stage["y"] + stage["height"] <= 768 and stage["x"] + stage["width"] <= 1366
    _width, height = _image_on_screen(page, server)
    assert height >= 0.7 * (768 - stage["y"]), (height, stage)  # the image fills the stage height
    findings = _box(page, "table.findings")
    side = _box(page, ".study-side")
    assert findings["x"] >= stage["x"] + stage["width"] - 1, "findings beside the image"
    assert findings["y"] + findings["height"] <= min(768, side["y"] + side["height"]), findings
    toolbar = _box(page, ".study-toolbar")
    assert toolbar["height"] < 70, f"the toolbar wraps onto a second row: {toolbar}"
    _within_width(page, ".study-toolbar button, .study-toolbar a.button")
    page.screenshot(path=str(shot(tmp_path, "lumbardx_viewer_1366x768.png")))
    assert not page.problems, page.problems


def test_an_image_file_fills_the_stage_without_a_slice_bar(open_viewer, server,
                                                           tmp_path: Path) -> None:
    # an image file has no series: the slice bar stays hidden and the stage still takes the
    # height under the toolbar (a hidden first row must not squeeze it to its minimum)
    page = open_viewer(1366, 768, server["png_key"])
    assert not page.locator(".stage-bar").is_visible()
    stage = _box(page, ".stage")
    assert stage["y"] + stage["height"] >= 768 - 2, stage
    assert stage["height"] >= 0.8 * (768 - stage["y"]), stage
    page.screenshot(path=str(shot(tmp_path, "lumbardx_viewer_image_file_1366x768.png")))
    assert not page.problems, page.problems
    narrow = open_viewer(800, 900, server["png_key"])  # the panel goes below the image
    stage = _box(narrow, ".stage")
    assert stage["height"] >= 320 and stage["width"] >= 780, stage
    assert not narrow.problems, narrow.problems


def test_scroll_slices_and_switch_sequence(open_viewer, server, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page = open_viewer(1366, 768)
    key = server["key"]
    series = page.request.get(f"{server['url']}/api/studies/{key}/series").json()["series"]
    mid = series[0]["analysed_slice"]
    t1 = next(s["index"] for s in series if s["weighting"] == "T1")
    canvas = page.locator("canvas.slice-canvas")
    pixels = "() => document.querySelector('canvas.slice-canvas').toDataURL()"

    def showing(url: str) -> str:
        expect(canvas).to_have_attribute("data-src", url)
        return page.evaluate(pixels)

    analysed = showing(f"/api/studies/{key}/image.png")
    marks = page.locator("svg.overlay g.mark").count()
    expect(page.locator(".slice-label")).to_have_text(f"Slice {mid + 1} / {N_SLICES}")

    # Mouse wheel over the image: the next slice; the marks stay, dimmed (not this slice's).
    stage = _box(page, ".stage")
    page.mouse.move(stage["x"] + stage["width"] / 2, stage["y"] + stage["height"] / 2)
    page.mouse.wheel(0, 100)
    after_wheel = showing(f"/api/studies/{key}/slices/{mid + 1}.png?series=0")
    assert after_wheel != analysed
    expect(page.locator(".slice-label")).to_have_text(f"Slice {mid + 2} / {N_SLICES}")
    expect(page.locator(".stage")).to_have_class("stage off-slice")
    expect(page.locator("svg.overlay g.mark")).to_have_count(marks)
    expect(page.locator(".hud.readout")).to_contain_text(f"T2 {mid + 2}/{N_SLICES}")

    # Arrow keys: back to the analysed slice, then the one before it.
    page.keyboard.press("ArrowUp")
    assert showing(f"/api/studies/{key}/image.png") == analysed
    page.keyboard.press("ArrowUp")
    assert showing(f"/api/studies/{key}/slices/{mid - 1}.png?series=0") not in (analysed,
                                                                                after_wheel)
    # The slider: the first slice.
    page.locator("#slice-slider").fill("0")
    first = showing(f"/api/studies/{key}/slices/0.png?series=0")
    assert first != analysed
    # A window preset applies to the slice shown (windowed by the server); W resets it.
    page.locator("#wl-preset").select_option("contrast")
    expect(canvas).to_have_attribute("data-src", re.compile(
        rf"^/api/studies/{key}/slices/0\.png\?series=0&center=[-0-9.]+&width=[0-9.]+$"))
    page.locator(".stage").focus()
    page.keyboard.press("w")
    assert showing(f"/api/studies/{key}/slices/0.png?series=0") == first

    # T1 / T2: the other sequence at the same place, then back; Home returns to the analysed.
    page.locator(f"#sequence-switch button[data-series='{t1}']").click()
    t1_first = showing(f"/api/studies/{key}/slices/0.png?series={t1}")
    assert t1_first != first
    expect(page.locator(f"#sequence-switch button[data-series='{t1}']")).to_have_attribute(
        "aria-pressed", "true")
    page.keyboard.press("Home")
    showing(f"/api/studies/{key}/image.png")
    page.keyboard.press("t")
    t1_mid = showing(f"/api/studies/{key}/slices/{mid}.png?series={t1}")
    assert t1_mid != analysed
    expect(page.locator(".hud.readout")).to_contain_text(f"T1 {mid + 1}/{N_SLICES}")
    page.screenshot(path=str(shot(tmp_path, "lumbardx_viewer_t1.png")))
    page.locator("#sequence-switch button[data-series='0']").click()
    assert showing(f"/api/studies/{key}/image.png") == analysed
    expect(page.locator(".stage")).to_have_class("stage")

    # Ctrl + wheel still zooms (and does not change the slice).
    page.mouse.move(stage["x"] + stage["width"] / 2, stage["y"] + stage["height"] / 2)
    before = page.locator(".hud.readout").text_content()
    page.keyboard.down("Control")
    page.mouse.wheel(0, -100)
    page.keyboard.up("Control")
    expect(page.locator(".hud.readout")).not_to_have_text(before)
    expect(canvas).to_have_attribute("data-src", f"/api/studies/{key}/image.png")
    assert not page.problems, page.problems
