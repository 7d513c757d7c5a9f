"""Headless Chromium for the web app's browser tests: Debian's ``/usr/bin/chromium`` driven by
Playwright's sync API (``scripts/install-test-deps.sh`` installs both; ``playwright install``,
which downloads browsers, is never run)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def shot(tmp_path: Path, name: str) -> Path:
    """Where screenshot ``name`` goes: ``$LUMBARDX_E2E_SCREENSHOT_DIR`` or the test's tmp."""
    folder = os.environ.get("LUMBARDX_E2E_SCREENSHOT_DIR")
    return (Path(folder) if folder else tmp_path) / name


def launch(playwright: Any) -> Any:
    """Headless Chromium from a running ``sync_playwright()``."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                      headless=True)


def watched_page(browser: Any, width: int, height: int, *, ignore: str | None = None,
                 **context_options: Any) -> Any:
    """A page in a new context of ``width`` x ``height`` (20 s default timeout) whose
    ``problems`` list collects page errors and console errors (those containing ``ignore``
    left out); close it with ``page.context.close()``."""
    context = browser.new_context(viewport={"width": width, "height": height},
                                  **context_options)
    context.set_default_timeout(20_000)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type == "error" and (ignore is None or ignore not in m.text) else None)
    page.problems = problems
    return page


def sign_in(page: Any, base: str, user: str, password: str) -> None:
    """Sign in through the login form and wait for the worklist."""
    from playwright.sync_api import expect

    page.goto(f"{base}/login")
    page.fill("#username", user)
    page.fill("#password", password)
    page.click("#login-submit")
    expect(page).to_have_url(f"{base}/")
