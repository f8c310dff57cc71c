"""A fresh clone skips the tests it cannot run, and each skip says exactly what is missing and where to put it."""

from __future__ import annotations

import os
import subprocess
import sys

from .conftest import REPO, browser_missing, smartmoe_missing


def test_without_the_raw_trace_the_skip_says_what_to_fetch_and_where(monkeypatch, tmp_path):
    monkeypatch.setenv("MOE_LOAD_BENCH_SOURCES", str(tmp_path))
    monkeypatch.delenv("MOE_LOAD_BENCH_SOURCE_SMARTMOE_AE", raising=False)
    text = smartmoe_missing()
    for needed in ("moe_trace.tar.xz", "thu-pacman/SmartMoE-AE", "e19b3a994db5", "shared/datasets/smartmoe-ae/",
                   "$MOE_LOAD_BENCH_SOURCES"):
        assert needed in text, (needed, text)


def test_the_browser_tests_name_everything_they_miss(monkeypatch, tmp_path):
    monkeypatch.setenv("MOE_LOAD_BENCH_SOURCES", str(tmp_path))
    monkeypatch.delenv("MOE_LOAD_BENCH_SOURCE_SMARTMOE_AE", raising=False)
    chromium, trace = browser_missing(tmp_path / "chromium")
    assert "apt-get install -y chromium" in chromium and "moe_trace.tar.xz" in trace


def test_a_test_run_without_the_trace_shows_why_the_browser_tests_are_skipped(tmp_path):
    """The reason reaches the report (`make test` runs pytest with -rs), before any fixture needs the data."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "MOE_LOAD_BENCH_SOURCE_SMARTMOE_AE")}
    env["MOE_LOAD_BENCH_SOURCES"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           "tests/leaderboard/test_browser.py"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    skips = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    assert done.returncode == 0 and len(skips) >= 2, done.stdout[-3000:]  # every browser test
    assert all("the browser tests need" in s and "moe_trace.tar.xz" in s for s in skips), skips
