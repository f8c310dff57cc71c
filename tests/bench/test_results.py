"""The typed run result: its JSON file and its MLflow record both give back exactly the same result."""

from __future__ import annotations

import json

import pytest

from bench import runner, tracking
from bench.results import ByState, Extras, HorizonResult, ResultError, RunResult, Verdict
from bench.task import StateConfig, Task


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_LOAD_BENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "home"


def rich_result() -> RunResult:
    """A result using every field, with awkward values: long parameters, None, extras, a verdict."""
    per_layer = {"error_rate": {"all": (0.1, 0.2, None), "transient": (0.3, None, None), "stable": (0.05, 0.2, 0.1)}}
    h = HorizonResult(horizon=1000, metrics={"error_rate": ByState(0.15, 0.3, 0.1), "noise_floor": ByState(0.03)},
                      origins=40, failures=2, records_per_origin=100, origin_layers={"transient": 50, "stable": 70},
                      per_layer=per_layer,
                      verdict=Verdict(True, ("too good",), {"hindsight_ratio": 0.5, "level": 0.99}))
    return RunResult(
        run_key="k" * 20, model="mine", model_spec="path/to/mine.py:Mine", model_version=3, model_source="file",
        model_fingerprint="sha256:abc", params={"window": 100, "name": "x" * 7000, "flag": True, "none": None},
        dataset="smartmoe-ae", dataset_version=1, dataset_fingerprint="sha256:def",
        task=Task("smartmoe-ae", horizons=(1000, 2000), stride=50, train=("a", "b"), states=StateConfig(threshold=3.0)),
        task_fingerprint="task:0123",
        horizons={1000: h, 2000: HorizonResult(2000, {"error_rate": ByState(0.2)}, 30, 0)},
        seconds=12.5, harness_version=2, code_version="0.1.0+abc", finished_at="2026-12-01T00:00:00.000001+00:00",
        placement="G=8,R=8", isolation="landlock", artifacts=("origins.parquet",),
        extras=Extras({"lstm.trainings": 5.0}, {"lstm/train_loss": (0.5, 0.25)}, ("lstm.ckpt",)),
        timings={"start": 1.5, "forecast": 0.25}, hardware="a CPU, 2 cores")


def test_json_round_trip_is_exact(tmp_path):
    r = rich_result()
    r.save(tmp_path)
    back = RunResult.load(tmp_path)
    assert back == r and back.cached


def test_mlflow_round_trip_is_exact(home):
    r = rich_result()
    logged = tracking.log_result(r)
    found = tracking.load_results()
    assert len(found) == 1
    client = tracking.client()
    curves = {k: [m.value for m in sorted(client.get_metric_history(logged.mlflow_run_id, k), key=lambda m: m.step)]
              for k in r.extras.curves}
    run = client.get_run(logged.mlflow_run_id)
    again = RunResult.from_mlflow(run.data.params, run.data.metrics, run.data.tags, logged.mlflow_run_id, curves)
    assert again == logged
    assert found[0] == logged.replace(extras=Extras(r.extras.metrics, {"lstm/train_loss": ()}, r.extras.artifacts))


def test_a_real_run_round_trips_through_both(home):
    result = runner.run("ema", "tiny-cpu-s1", task=Task("tiny-cpu-s1", horizons=(1000,), stride=500))
    assert RunResult.load(runner.run_folder(result.run_key)) == result
    assert tracking.load_results() == [result]


@pytest.mark.parametrize("edit, problem", [
    (lambda d: {}, "checksum"),
    (lambda d: {**d, "seconds": 1.0}, "checksum"),
    (lambda d: [], "JSON object"),
    (lambda d: {**d, "seconds": float("nan")}, "NaN"),
])
def test_a_damaged_file_is_refused_naming_it(tmp_path, edit, problem):
    rich_result().save(tmp_path)
    path = tmp_path / "result.json"
    doc = json.loads(path.read_text())
    path.write_text(json.dumps(edit(doc)))
    with pytest.raises(ResultError, match=problem) as caught:
        RunResult.load(path)
    assert str(path) in str(caught.value)


def test_another_schema_is_refused():
    r = rich_result()
    doc = {**r.to_dict(), "schema": 0}
    with pytest.raises(ResultError, match="schema"):
        RunResult.from_dict(doc, "x.json")


def test_a_probabilistic_run_logs_its_quantile_scores_to_mlflow(home):
    result = runner.run("dirmult", "tiny-cpu-s1", task=Task("tiny-cpu-s1", horizons=(1000,), stride=500))
    run = tracking.client().get_run(result.mlflow_run_id)
    for metric in ("quantile_loss", "scaled_quantile_loss", "coverage_80", "coverage_90", "width_90"):
        for state in ("all", "transient", "stable"):
            value = result.value(1000, metric, state)
            assert value is not None and run.data.metrics[f"h1000/{metric}/{state}"] == value
    assert tracking.load_results() == [result]
