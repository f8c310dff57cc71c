"""What a run's MLflow record says besides its numbers: when it ran, and how MLflow's UI should show the experiment."""

from __future__ import annotations

import json

from bench import runner, tracking
from bench.task import Task


def test_a_run_logged_after_the_fact_keeps_the_computations_times(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = runner.run("sw_avg", "tiny-cpu-s1", task=Task("tiny-cpu-s1", horizons=(1000,), stride=500), track=False)
    result = result.replace(seconds=754.321, finished_at="2030-01-02T03:04:05.678000+00:00")  # a long computation
    logged = tracking.log_result(result, uri=uri)
    info = tracking.client(uri).get_run(logged.mlflow_run_id).info
    assert info.status == "FINISHED"
    assert info.end_time == tracking.epoch_ms(result.finished_at) == 1893553445678
    assert info.end_time - info.start_time == 754321  # the UI's Duration: 12.6min, not the logging's 200 ms


def test_the_experiment_is_a_machine_learning_one_with_the_headline_view(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow = tracking.connect(uri)
    exp = mlflow.get_experiment(tracking.experiment_id(mlflow))
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(exp.tags["mlflow.sharedViewState.headline-metrics"])
    assert view["name"] == "headline metrics" and isinstance(view["createdAt"], int)
    assert json.loads(view["state"])["selectedColumns"] == [
        "attributes.`Dataset`", "metrics.`h1000/error_rate/all`", "metrics.`h1000/error_rate/stable`",
        "metrics.`h1000/window_error/all`"]


def test_an_experiment_made_before_gets_the_tags(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow = tracking.connect(uri)
    old = mlflow.create_experiment(tracking.EXPERIMENT)  # as an earlier version made it: no tags
    assert tracking.experiment_id(mlflow) == old
    assert mlflow.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
