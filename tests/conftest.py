"""Test-wide settings: a private data home, and the local copy of the public datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The public datasets' raw copies: the folders in $MOE_LOAD_BENCH_SOURCES (`make test` sets it), else a
# `shared/datasets` folder beside the checkout (or in it).
SHARED = REPO.parent / "shared" / "datasets"
#: Debian's chromium, which the browser tests drive (never `playwright install`).
CHROMIUM = Path("/usr/bin/chromium")
SOURCES = os.environ.get("MOE_LOAD_BENCH_SOURCES") or next(
    (str(p) for p in (SHARED, REPO / "shared" / "datasets") if p.is_dir()), None)


@pytest.fixture(scope="session", autouse=True)
def _data_home(tmp_path_factory):
    """Every test session gets an empty data home and MLflow store; built public datasets are shared."""
    home = tmp_path_factory.mktemp("data-home")
    old = {
        k: os.environ.get(k)
        for k in ("MOE_LOAD_BENCH_HOME", "MOE_LOAD_BENCH_SOURCES", "MLFLOW_TRACKING_URI", "MLFLOW_DISABLE_TELEMETRY")
    }
    os.environ["MOE_LOAD_BENCH_HOME"] = str(home)
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if SOURCES is not None:
        os.environ["MOE_LOAD_BENCH_SOURCES"] = SOURCES
    yield home
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def smartmoe_missing() -> str | None:
    """What the tests on the real SmartMoE-AE trace miss here, said so that it can be fetched; None: nothing."""
    from datasets_registry.sources import SMARTMOE_AE, SourceMissing

    try:
        SMARTMOE_AE.local_copy()
        return None
    except SourceMissing:
        return (f"the raw smartmoe-ae trace: put {SMARTMOE_AE.archive_name} (the {SMARTMOE_AE.path_in_repo}/ folder of "
                f"{SMARTMOE_AE.repository} at commit {SMARTMOE_AE.commit}, from {SMARTMOE_AE.url}) in {SHARED}/"
                f"{SMARTMOE_AE.id}/, or in a {SMARTMOE_AE.id}/ folder of a directory named by $MOE_LOAD_BENCH_SOURCES")


def browser_missing(chromium: Path = CHROMIUM) -> list[str]:
    """Everything the browser tests (tests/leaderboard/test_browser.py) miss here, each said so that it can be had."""
    missing = [] if chromium.exists() else [
        f"{chromium}, Debian's chromium (apt-get install -y chromium; .ci/run installs it)"]
    data = smartmoe_missing()
    return missing + ([data] if data else [])


@pytest.fixture(scope="session")
def smartmoe():
    """The real SmartMoE-AE trace (built once per session from the local copy)."""
    from datasets_registry import registry

    missing = smartmoe_missing()
    if missing:
        pytest.skip(f"needs {missing}")
    return registry.load("smartmoe-ae")
