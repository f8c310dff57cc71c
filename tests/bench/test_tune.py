"""Tuning: the validation split, a resumable sqlite study, nested MLflow runs, `run --params best`."""

import json

import optuna
import pytest

from bench import tune as tuning
from bench.cli import main
from bench.task import Task, rolling_origins
from datasets_registry import registry
from datasets_registry.synthetic import switching_trace

TASK = dict(horizons=(100, 200), stride=50, min_history=50)


@pytest.fixture(scope="module")
def dataset():
    registry.add(switching_trace(records=120, layers=2, experts=8, switch=50, step_every=10, seed=11), "synthetic-tune")
    return "synthetic-tune"


def task(dataset):
    return Task(dataset, **TASK)


def complete(study):
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


def study_of(record):
    return optuna.load_study(study_name=record["study"], storage=tuning.storage_url())


def test_validation_never_reaches_the_test_origins(dataset):
    trace = registry.load(dataset)
    val, val_task, test_task, x = tuning.validation_split(trace, task(dataset), 0.5)
    assert x == 51 + 50 * round(0.5 * (1191 - 51) / 50) == 601
    assert val.steps[-1] < x and val.records == 60
    for o in rolling_origins(val.steps, val_task).values():  # every scored record lies before the split
        assert len(o.records) and (o.records + o.lengths <= val.records).all()
    test = rolling_origins(trace.steps, test_task)
    assert all((trace.steps[o.records] >= x).all() for o in test.values())
    default = rolling_origins(trace.steps, task(dataset))
    assert set(test[100].records) <= set(default[100].records)  # the test task is the default task's later origins


def test_interrupted_study_resumes_without_duplicates(dataset, monkeypatch):
    calls = {"n": 0}
    real = tuning_evaluate = __import__("bench.evaluate", fromlist=["evaluate"]).evaluate

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr("bench.evaluate.evaluate", flaky)
    with pytest.raises(KeyboardInterrupt):
        tuning.tune("ema", dataset, 5, task=task(dataset))
    monkeypatch.setattr("bench.evaluate.evaluate", tuning_evaluate)

    record = tuning.tune("ema", dataset, 3, task=task(dataset))
    study = study_of(record)
    assert len(complete(study)) == 3 and record["trials_complete"] == 3
    interrupted = [t for t in study.trials if t.user_attrs.get("interrupted")]
    assert len(interrupted) == 1 and interrupted[0].state == optuna.trial.TrialState.FAIL
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == interrupted[0].number]
    assert (
        len(retry) == 1
        and retry[0].params == interrupted[0].params
        and retry[0].state == optuna.trial.TrialState.COMPLETE
    )
    assert complete(study)[0].user_attrs.get("defaults") and complete(study)[0].params == {"decay": 0.95}
    assert record["default_value"] == complete(study)[0].value

    record = tuning.tune("ema", dataset, 5, task=task(dataset))  # resume to 5
    study = study_of(record)
    done = complete(study)
    assert len(done) == 5 and len({t.number for t in done}) == 5
    assert len({json.dumps(t.params, sort_keys=True) for t in done}) == 5  # no parameter set evaluated twice
    assert record["value"] == min(t.value for t in done) and record["params"] == {
        "decay": min(done, key=lambda t: t.value).params["decay"]
    }
    assert tuning.best_params("ema", dataset) == record["params"]

    # MLflow: one parent run for the study, one nested run per evaluated trial (the interrupted one killed)
    import mlflow

    from bench import tracking

    tracking.connect(None)
    runs = mlflow.search_runs(experiment_names=[tuning.EXPERIMENT], output_format="list")
    parent = [r for r in runs if r.info.run_id == record["mlflow_parent_run_id"]]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == record["mlflow_parent_run_id"]]
    assert len(parent) == 1 and parent[0].data.metrics["trials_complete"] == 5
    assert sorted(r.info.status for r in children) == ["FINISHED"] * 5 + ["KILLED"]
    assert all("validation/h100/error_rate/all" in r.data.metrics for r in children if r.info.status == "FINISHED")


def test_run_params_best_uses_the_test_task(dataset, capsys):
    task = ["--dataset", dataset, "--no-track", "--horizon", "100", "--horizon", "200", "--stride", "50",
            "--min-history", "50"]
    assert main(["tune", "--model", "sw_avg", "--trials", "3", *task]) == 0
    out = capsys.readouterr().out
    assert "test task: origins from step 601" in out
    best = tuning.best_params("sw_avg", dataset)
    assert set(best) == {"window"}
    assert main(["run", "--model", "sw_avg", "--params", "best", "--json", *task]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["params"] == best and result["task"]["first_origin"] == 601


def test_no_search_space_and_unknown_study_are_errors(dataset):
    with pytest.raises(ValueError, match="no search space"):
        tuning.tune("last", dataset, 2, task=task(dataset), track=False)
    with pytest.raises(LookupError, match="bench tune"):
        tuning.best_params("static", dataset)


def test_a_trial_left_running_by_a_dead_process_is_failed_and_retried(dataset):
    record = tuning.tune("ema", dataset, 1, task=task(dataset), split=0.6, track=False)
    study = study_of(record)
    orphan = study.ask()  # what a killed process leaves behind: a RUNNING trial with its parameters
    orphan.suggest_float("decay", 0.5, 0.9999)
    record = tuning.tune("ema", dataset, 2, task=task(dataset), split=0.6, track=False)
    trials = study_of(record).trials
    assert trials[orphan.number].state == optuna.trial.TrialState.FAIL
    retry = [t for t in trials if t.user_attrs.get("retry_of") == orphan.number]
    assert len(retry) == 1 and retry[0].params == orphan.params and record["trials_complete"] == 2
