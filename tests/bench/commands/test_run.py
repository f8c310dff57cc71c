"""`python -m bench run --per-source`: per-source scores on a dataset with sources, a clear error on one without."""

from __future__ import annotations

import json

import pytest

from bench import runner
from bench.cli import main
from datasets_registry import registry

from ..test_evaluate import SPLIT_TASK, split_trace

TASK = ["--horizon", "2", "--stride", "2", "--min-history", "2", "--no-track", "--json"]


@pytest.fixture
def split_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_LOAD_BENCH_HOME", str(tmp_path))
    registry.add(split_trace(), "split")
    return tmp_path


def test_per_source_run_reports_the_traffic_weighted_error(split_home, capsys):
    assert main(["run", "--model", "sw_avg", "--dataset", "split", *TASK, "--per-source"]) == 0
    out = json.loads(capsys.readouterr().out)
    metrics = out["horizons"]["2"]
    # sw_avg forecasts the history's mean [.5, .5], split by its shares as in test_evaluate: .25 by hand
    assert metrics["traffic_error"]["all"] == pytest.approx(0.25)
    assert metrics["source_error"]["all"] == pytest.approx(0.5)
    assert metrics["remote_share"]["all"] == pytest.approx(0.25)
    assert main(["run", "--model", "sw_avg", "--dataset", "split", *TASK]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert "traffic_error" not in plain["horizons"]["2"] and plain["run_key"] != out["run_key"]
    assert plain["horizons"]["2"]["error_rate"] == metrics["error_rate"]


def test_per_source_run_on_a_dataset_without_sources_is_a_clear_error(capsys):
    assert main(["run", "--model", "sw_avg", "--dataset", "tiny-cpu-s1", *TASK, "--per-source"]) == 1
    err = capsys.readouterr().err
    assert "tiny-cpu-s1: no per-source split" in err and "datasets show" in err


def test_the_key_of_a_run_without_per_source_is_unchanged(split_home):
    prep = runner.prepare("sw_avg", "split", task=SPLIT_TASK)
    try:
        assert prep.key == runner.run_key("sw_avg", prep.predictor, prep.task_fp, {"placement": None, "source": ""})
    finally:
        prep.close()
