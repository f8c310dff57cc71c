"""In a real browser (Debian's Chromium driven by Playwright): the MLflow UI started by `bench ui`, and the
leaderboard page.

Chromium comes from the system (`apt-get install chromium`; `.ci/run` installs it), never from
`playwright install`. Where /usr/bin/chromium is missing these tests fail when ``$CI`` is set and
are skipped otherwise; they also need the raw smartmoe-ae trace (their runs are on it), and a skip
names everything that is missing. Screenshots go to ``test-artifacts/``; with
``MOE_LOAD_BENCH_DOC_SCREENSHOTS=1`` they are also written to ``docs/img/``.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from bench.cli import main

from ..conftest import CHROMIUM, browser_missing
from .conftest import SECOND
from .uiproc import REPO, free_port, start_ui, stop_ui

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = REPO / "test-artifacts"
DOC_IMG = REPO / "docs" / "img"
# The metric cells of one row of MLflow's compare-runs page: the page lays names and values out in
# separate virtualised grids, aligned by each cell's `top`.
ROW_VALUES_JS = """(a) => {
  const cell = a.parentElement, top = cell.style.top;
  let box = cell.closest('.ReactVirtualized__Grid');
  const inner = '.ReactVirtualized__Grid__innerScrollContainer';
  while (box && box.querySelectorAll(inner).length < 2) box = box.parentElement;
  if (!box) return null;
  return Array.from(box.querySelectorAll('.ReactVirtualized__Grid__innerScrollContainer'))
    .filter(g => !g.contains(cell))
    .flatMap(g => Array.from(g.children).filter(c => c.style.top === top).map(c => c.innerText.trim()));
}"""


def screenshot(page, name: str, doc: bool = False) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    if doc and os.environ.get("MOE_LOAD_BENCH_DOC_SCREENSHOTS") == "1":
        DOC_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOC_IMG / name)
    return path


@pytest.fixture(scope="session", autouse=True)
def requirements():
    """Checked before any other fixture (the runs on smartmoe-ae are session-wide): says all that is missing."""
    missing = browser_missing()
    if missing:
        message = "the browser tests need " + "; and ".join(missing)
        if os.environ.get("CI") and not CHROMIUM.exists():
            pytest.fail(message)
        pytest.skip(message + ("" if CHROMIUM.exists() else "; with $CI set, a missing chromium fails"))


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    pg = context.new_page()
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    yield pg
    context.close()


@pytest.fixture(scope="module")
def ui_server(runs_2x2):
    proc, info = start_ui(free_port())
    yield info
    assert stop_ui(proc, info, "SIGTERM") == 0  # and no server process left behind


def _close_assistant(page) -> None:
    close = page.get_by_role("button", name="Close", exact=True)
    if close.count() and close.first.is_visible():
        close.first.click()


def test_mlflow_ui_shows_two_models_with_their_error_rates(ui_server, runs_2x2, page):
    runs = {m: runs_2x2[(m, "smartmoe-ae")] for m in ("sw_avg", "ema")}
    assert "runs_url" in ui_server, ui_server["output"]
    page.goto(ui_server["runs_url"], timeout=120_000)
    for model in runs:
        page.get_by_text(f"{model} · smartmoe-ae", exact=True).first.wait_for(timeout=120_000)
    page.get_by_text(f"sw_avg · {SECOND}", exact=True).first.wait_for(timeout=30_000)
    page.get_by_text("smartmoe-ae@1", exact=False).first.wait_for(
        timeout=30_000
    )  # the Dataset column (the run's input)
    _close_assistant(page)
    screenshot(page, "mlflow-runs.png")

    ids = [r.mlflow_run_id for r in runs.values()]
    exp = ui_server["runs_url"].split("/experiments/")[1].split("/")[0]
    page.goto(
        f"{ui_server['base']}/#/compare-runs?runs={urllib.parse.quote(json.dumps(ids))}"
        f"&experiments={urllib.parse.quote(json.dumps([exp]))}&workflowType=machine_learning",
        timeout=120_000,
    )
    for model in runs:
        page.get_by_text(f"{model} · smartmoe-ae", exact=True).first.wait_for(timeout=120_000)
    for state in ("all", "stable", "transient"):  # the first rows of the (virtualised) metrics grid
        name = f"h1000/error_rate/{state}"
        link = page.locator("a[title='Plot chart']").filter(has_text=name)
        link.first.wait_for(timeout=60_000)
        shown = link.first.evaluate(ROW_VALUES_JS)
        expected = [r.value(1000, "error_rate", state) for r in runs.values()]
        assert [float(x) for x in shown] == pytest.approx(expected, abs=6e-4), (name, shown, expected)
    _close_assistant(page)
    for section in ("Visualizations", "Parameters"):  # folded: run names and metrics in one view
        page.get_by_text(section, exact=True).first.click()
    page.wait_for_timeout(500)
    screenshot(page, "mlflow-compare.png", doc=True)
    assert not page.errors


def mlflow_duration(seconds: float) -> str:
    """A duration as MLflow's UI writes it (its Utils.formatDuration)."""
    ms = round(1000 * seconds)
    for limit, unit, size in ((60_000, "s", 1000), (3_600_000, "min", 60_000), (86_400_000, "h", 3_600_000)):
        if ms < limit:
            return f"{ms}ms" if ms < 500 else f"{ms / size:.1f}{unit}"
    return f"{ms / 86_400_000:.1f}d"


GENAI = ("Judges", "Prompts", "Evaluation runs", "Playground")


def test_the_runs_page_shows_the_headline_metrics_and_true_durations(ui_server, runs_2x2, page):
    """The address `bench ui` prints: machine-learning pages, the headline metrics as columns, each run's Duration
    the computation's (runs are logged after the fact); a run page follows the sidebar's switch, as the README says."""
    from bench.tracking import HEADLINE_METRICS

    runs = {m: runs_2x2[(m, "smartmoe-ae")] for m in ("sw_avg", "ema", "last")}
    page.goto(ui_server["runs_url"], timeout=120_000)
    for model in runs:
        page.get_by_text(f"{model} · smartmoe-ae", exact=True).first.wait_for(timeout=120_000)
    _close_assistant(page)
    for metric in HEADLINE_METRICS:  # column headers
        page.get_by_text(metric, exact=True).first.wait_for(timeout=30_000)
    text = page.locator("body").inner_text()
    for r in runs.values():
        assert mlflow_duration(r.seconds) in text, (r.model, mlflow_duration(r.seconds))
        for metric in HEADLINE_METRICS:
            horizon, name, state = metric.split("/")
            assert repr(r.value(int(horizon[1:]), name, state)) in text, (r.model, metric)
    nav = page.locator("nav").first.inner_text()
    assert "Runs" in nav and not any(word in nav for word in GENAI), nav
    screenshot(page, "mlflow-runs-headline.png")

    run = runs["ema"]
    exp = ui_server["runs_url"].split("/experiments/")[1].split("/")[0]
    run_page = f"{ui_server['base']}/#/experiments/{exp}/runs/{run.mlflow_run_id}"
    page.goto(run_page, timeout=120_000)
    page.get_by_text("Duration", exact=True).first.wait_for(timeout=60_000)
    if any(word in page.locator("nav").first.inner_text() for word in GENAI):  # this browser's first run page
        page.get_by_text("Model training", exact=True).first.click()  # the README's advice; the browser keeps it
        page.wait_for_timeout(1000)
        page.goto(run_page, timeout=120_000)
        page.get_by_text("Duration", exact=True).first.wait_for(timeout=60_000)
    page.wait_for_timeout(1000)
    assert not any(word in page.locator("nav").first.inner_text() for word in GENAI)
    assert page.get_by_text(mlflow_duration(run.seconds), exact=True).first.is_visible()
    _close_assistant(page)
    screenshot(page, "mlflow-run.png")
    assert not page.errors


def test_leaderboard_page_tables_and_plots(runs_2x2, page, tmp_path, capsys):
    assert main(["leaderboard", "--dataset", "smartmoe-ae", "--dataset", SECOND, "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    outside = []

    def offline(route):
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", offline)
    page.goto((tmp_path / "leaderboard.html").as_uri())
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)

    ranking = page.locator("table.ranking tbody tr")
    assert ranking.count() == 3
    assert {ranking.nth(i).locator("td").nth(1).inner_text() for i in range(3)} == {"sw_avg", "ema", "last"}
    assert ranking.nth(0).locator("td").nth(0).inner_text() == "1"
    cells = page.locator("table.cell")
    assert cells.count() == 4  # 2 datasets x 2 horizons
    for i in range(4):
        rows = cells.nth(i).locator("tbody tr")
        assert rows.count() == 5  # 3 models, then the noise and hindsight floors beside their errors
        assert [rows.nth(i).locator("td").nth(1).inner_text() for i in (3, 4)] == ["noise floor", "hindsight floor"]
        assert rows.nth(0).locator("td").nth(0).inner_text() == "1"

    plots = page.locator(".js-plotly-plot")
    assert plots.count() == 1 + 2 + 4  # skill bars, error over training per dataset, per-layer heatmap per cell
    for i in range(plots.count()):
        assert plots.nth(i).locator(".main-svg").count() >= 1
    assert (
        page.locator("#fig-0 .bars .point path").count() >= 6
    )  # skill: 3 models x 3 states (sw_avg's are zero-height)
    assert (
        page.locator(".js-plotly-plot .scatterlayer .trace").count() >= 2 * 2 * 4
    )  # per dataset, per horizon: 3 models + noise floor
    assert page.locator(".js-plotly-plot .hm image").count() == 4  # heatmaps drawn
    assert page.locator(".js-plotly-plot .shapelayer path").count() >= 1  # transient state shaded
    assert not outside, f"the page fetched from the network: {outside}"
    assert not page.errors
    screenshot(page, "leaderboard.png", doc=True)
