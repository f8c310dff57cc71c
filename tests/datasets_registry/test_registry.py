import numpy as np
import pytest

from datasets_registry import registry
from datasets_registry.sources import PUBLIC, SourceMissing
from datasets_registry.trace import Card, Trace


def small(seed=0):
    rng = np.random.default_rng(seed)
    return Trace.from_arrays(rng.integers(1, 100, (20, 2, 4)), np.arange(20), Card(id="whatever"))


def test_data_home_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MOE_LOAD_BENCH_HOME", str(tmp_path / "h"))
    assert registry.data_home() == tmp_path / "h"
    monkeypatch.delenv("MOE_LOAD_BENCH_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert registry.data_home() == tmp_path / "xdg" / "moe-load-bench"


def test_versions_resolve_newest_by_default(monkeypatch, tmp_path):
    monkeypatch.setenv("MOE_LOAD_BENCH_HOME", str(tmp_path))
    a = registry.add(small(0), "mine")
    b = registry.add(small(1), "mine")
    assert (a.version, b.version) == (1, 2)
    assert registry.load("mine").card.version == 2
    assert registry.load("mine@1").fingerprint == small(0).fingerprint
    assert registry.load("mine@v2").fingerprint == small(1).fingerprint
    with pytest.raises(LookupError, match="no version 3"):
        registry.resolve("mine@3")
    with pytest.raises(LookupError, match="no dataset 'nope'"):
        registry.resolve("nope")
    with pytest.raises(ValueError, match="invalid dataset id"):
        registry.resolve("Bad Name")
    ids = {(e.id, e.version) for e in registry.entries()}
    assert {("mine", 1), ("mine", 2)} <= ids


def test_missing_public_source_says_what_to_fetch_and_where(monkeypatch, tmp_path):
    monkeypatch.setenv("MOE_LOAD_BENCH_HOME", str(tmp_path))
    monkeypatch.delenv("MOE_LOAD_BENCH_SOURCES", raising=False)
    monkeypatch.delenv(PUBLIC["smartmoe-ae"].env_var, raising=False)
    with pytest.raises(SourceMissing) as err:
        registry.load("smartmoe-ae")
    msg = str(err.value)
    assert "https://github.com/thu-pacman/SmartMoE-AE/archive/e19b3a994db5.tar.gz" in msg
    assert str(tmp_path / "sources" / "smartmoe-ae") in msg
    assert "GPL-3.0" in msg
    assert not (tmp_path / "datasets" / "smartmoe-ae").exists()


def test_smartmoe_is_built_from_the_local_copy(smartmoe):
    assert smartmoe.shape == (501, 24, 32)
    assert smartmoe.steps[0] == 1 and smartmoe.steps[-1] == 5001
    assert (np.diff(smartmoe.steps) == 10).all()
    assert (smartmoe.totals == 262144).all()
    assert smartmoe.card.licence == "GPL-3.0"
    assert smartmoe.card.source["commit"] == "e19b3a994db5"
    assert smartmoe.card.source["files"]["tables"]  # every table file is hashed in the card
