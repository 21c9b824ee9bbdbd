"""summary.html in headless Chromium: it renders its charts and tables, with no console error and no request.

`dvc plots show`'s page too: with .dvc/config's template every Vega plot draws with no network.

Needs Debian's Chromium (``/usr/bin/chromium``). When it is missing, the fixture installs it with apt-get (as root,
where apt-get exists); it skips, saying why, only where neither is possible.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from matplotlib import image

from pipeline import plots_template
from tests.test_campaign import report_with_campaign
from tests.test_report import write_week

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "reports" / "screenshots" / "summary.png"
PLOTS_SCREENSHOT = ROOT / "reports" / "screenshots" / "plots.png"
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


def _plots_project(folder: Path) -> tuple[int, int]:
    """A DVC project with this project's `plots:` (dvc.yaml), .dvc/config and plot templates (.dvc/plots: dates
    along x, deciles in order), and a few made-up rows for each plot.

    Returns how many Vega plots and how many images it shows.
    """
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["plots"]
    (folder / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}, sort_keys=False), encoding="utf-8")
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=folder, check=True, timeout=120)
    shutil.copyfile(ROOT / ".dvc" / "config", folder / ".dvc" / "config")
    shutil.copytree(ROOT / ".dvc" / "plots", folder / ".dvc" / "plots")  # the project's own templates
    vega = images = 0
    for entry in plots:
        if isinstance(entry, str):  # an image: a 40 x 60 gradient
            (folder / entry).parent.mkdir(parents=True, exist_ok=True)
            image.imsave(folder / entry, np.linspace(0.0, 1.0, 2400).reshape(40, 60))
            images += 1
            continue
        spec = next(iter(entry.values()))
        for file, columns in spec["y"].items():
            rows = [",".join([spec["x"], *columns])]
            for i in range(1, 7):  # dates along x where the template reads them so (by_origin)
                x = f"1998-0{i}-01" if spec.get("template") == "by_origin" else str(i)
                rows.append(",".join([x, *(str(i * (k + 2)) for k in range(len(columns)))]))
            (folder / file).parent.mkdir(parents=True, exist_ok=True)
            (folder / file).write_text("\n".join(rows) + "\n", encoding="utf-8")
        vega += 1
    return vega, images


def test_dvc_plots_render_offline(tmp_path: Path, chromium: str) -> None:
    """`dvc plots show` with .dvc/config's page: every Vega plot draws, and the page asks for nothing off the disk."""
    from playwright.sync_api import Route, sync_playwright

    vega, images = _plots_project(tmp_path)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    configured = subprocess.run(
        ["dvc", "config", "plots.html_template"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert configured.returncode == 0, configured.stderr
    plots_template.main(["--out", str(tmp_path / ".dvc" / configured.stdout.strip())])  # what `make install` does
    shown = subprocess.run(["dvc", "plots", "show"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    index = tmp_path / "dvc_plots" / "index.html"
    html = index.read_text(encoding="utf-8")
    assert "cdn.jsdelivr.net" not in html
    ids = re.findall(r"vegaEmbed\('#([^']+)', spec\)", html)  # DVC's <div id=...> around each Vega plot
    assert len(ids) == vega

    blocked: list[str] = []

    def off_the_disk(route: Route) -> None:
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.route("**/*", off_the_disk)
            # Vega's warnings are not errors: DVC's templates make it warn of the empty extent of their hover layer,
            # and vega-embed of the Vega 5 that Vega-Lite 5 compiles to, which Vega 6 draws.
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(index.as_uri(), wait_until="load")
            for plot_id in ids:
                drawn = page.locator(f"[id='{plot_id}']").locator("svg.marks, canvas.marks")  # Vega's own element
                drawn.wait_for(state="visible", timeout=30_000)
                box = drawn.bounding_box()
                assert box is not None and box["width"] > 150 and box["height"] > 100, plot_id
                if drawn.evaluate("e => e.tagName") == "svg":
                    assert drawn.locator("path, line, rect").count() > 10, plot_id  # marks and axes were drawn
            pictures = page.locator("body > div img")
            assert pictures.count() == images
            for i in range(images):
                assert pictures.nth(i).evaluate("img => img.complete && img.naturalWidth") == 60
            PLOTS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(PLOTS_SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert blocked == []
    assert errors == []
    assert PLOTS_SCREENSHOT.stat().st_size > 50_000
