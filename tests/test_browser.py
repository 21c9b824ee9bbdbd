"""summary.html in headless Chromium: it renders its charts and tables, with no console error and no request.

Needs Debian's Chromium (``/usr/bin/chromium``). When it is missing, the fixture installs it with apt-get (as root,
where apt-get exists); it skips, saying why, only where neither is possible.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.test_campaign import report_with_campaign
from tests.test_report import write_week

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "reports" / "screenshots" / "summary.png"
CAMPAIGN_SCREENSHOT = ROOT / "reports" / "screenshots" / "campaign.png"
BROWSERS = ("chromium", "chromium-browser")
# The flags a sandboxed, offline machine needs: no background connections, no GPU, no first-run pages.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _find() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def _apt_install() -> str:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200, check=False)
    if done.returncode != 0:  # stale package lists on a fresh machine: refresh once and retry
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600, check=False)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200, check=False)
    return done.stderr.strip().splitlines()[-1] if done.returncode != 0 and done.stderr.strip() else ""


@pytest.fixture(scope="session")
def chromium() -> str:
    path = _find()
    if path is None:
        if shutil.which("apt-get") is None or os.geteuid() != 0:
            pytest.skip("Chromium is not installed and cannot be installed here (needs apt-get as root)")
        problem = _apt_install()
        path = _find()
        if path is None:
            pytest.skip(f"Chromium is not installed and `apt-get install chromium` failed: {problem}")
    return path


def test_summary_renders_in_chromium(tmp_path: Path, params: dict[str, Any], chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    write_week(tmp_path, params, dt.date(1998, 2, 23), seed=1)
    folder = write_week(tmp_path, params, dt.date(1998, 3, 2), seed=2, shifted=True)
    page_url = (folder / "summary.html").as_uri()
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: None if r.url == page_url else requests.append(r.url))
            page.goto(page_url, wait_until="load")
            charts = page.locator("figure svg")
            assert charts.count() == 2
            for i in range(2):
                box = charts.nth(i).bounding_box()
                assert box is not None and box["width"] > 300 and box["height"] > 150
                assert charts.nth(i).locator("rect, path").count() > 20  # bars and axes were drawn
            tables = page.locator("table")
            assert tables.count() >= 5  # grid, KPIs, top of list, change by segment, drift (+ risers)
            assert page.locator("table.grid td").count() == 9
            assert page.get_by_text("Change since 1998-W09").is_visible()
            assert page.get_by_role("alert").is_visible()  # the drift warning
            rows = page.locator("h2:has-text('Top 25') + p + table tbody tr")
            assert rows.count() == 25
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert requests == []
    assert SCREENSHOT.stat().st_size > 50_000


def test_campaign_section_renders_in_chromium(tmp_path: Path, params: dict[str, Any], chromium: str) -> None:
    """The summary's campaign section with a measured week: lift, interval and MDE per segment, and the chart."""
    from playwright.sync_api import sync_playwright

    folder = report_with_campaign(tmp_path, params)
    page_url = (folder / "summary.html").as_uri()
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(page_url, wait_until="load")
            heading = page.locator("h2:has-text('Campaign')")
            assert heading.is_visible()
            table = page.locator("p:has-text('Weeks measured') + table")
            headers = table.locator("th").all_inner_texts()
            assert {"retention lift", "95% interval", "detectable (MDE)", "reading"} <= set(headers)
            overall = table.locator("tr.total td").all_inner_texts()
            assert overall[0] == "all customers" and overall[headers.index("95% interval")].startswith("[")
            chart = page.locator("figure[aria-label^='Measured retention lift'] svg")
            box = chart.bounding_box()
            assert box is not None and box["width"] > 300 and box["height"] > 100
            CAMPAIGN_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.locator("h2:has-text('Campaign')").scroll_into_view_if_needed()
            page.screenshot(path=str(CAMPAIGN_SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert CAMPAIGN_SCREENSHOT.stat().st_size > 50_000
