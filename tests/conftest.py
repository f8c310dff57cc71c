"""Test-wide settings: a private data home, and the local copy of the public datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The public datasets' raw copies sit in a `shared/datasets` folder beside the checkout (or in it).
SOURCES = next((p for p in (REPO.parent / "shared" / "datasets", REPO / "shared" / "datasets") if p.is_dir()), None)


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
        os.environ["MOE_LOAD_BENCH_SOURCES"] = str(SOURCES)
    yield home
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def smartmoe():
    """The real SmartMoE-AE trace (built once per session from the local copy)."""
    from datasets_registry import registry

    if SOURCES is None and not os.environ.get("MOE_LOAD_BENCH_SOURCE_SMARTMOE_AE"):
        pytest.skip("no local copy of smartmoe-ae")
    return registry.load("smartmoe-ae")
