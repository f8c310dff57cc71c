"""The leaderboard from the MLflow store: ranking, skill, win rate, superseded runs, no mixing of tasks."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from bench import runner
from bench.cli import main
from bench.task import Task
from leaderboard import build, render

from .conftest import MODELS, SECOND


def board_json(capsys, *args) -> dict:
    assert main(["leaderboard", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def manual_skill(runs_2x2, model: str) -> float:
    """1 - geometric mean over (dataset, horizon, layer) of error_rate / sw_avg's, from the runs' origins.parquet."""
    logs = []
    for ds in ("smartmoe-ae", SECOND):
        frames = {m: runs_2x2[(m, ds)].to_frame(per_origin=True) for m in (model, "sw_avg")}
        per_layer = {m: f.groupby(["horizon", "layer"])["error_rate"].mean() for m, f in frames.items()}
        ratio = per_layer[model] / per_layer["sw_avg"]
        logs += [math.log(x) for x in ratio]
    return 1 - math.exp(sum(logs) / len(logs))


def test_two_models_two_datasets_ranked(runs_2x2, capsys):
    board = board_json(capsys, "--dataset", "smartmoe-ae", "--dataset", SECOND)
    ranking = board["ranking"]
    assert [e["rank"] for e in ranking] == [1, 2, 3]
    assert {e["label"] for e in ranking} == set(MODELS)
    for e in ranking:
        assert e["cells"] == 4 and e["datasets"] == sorted(["smartmoe-ae@1", f"{SECOND}@1"])
        assert e["skill"]["all"] == pytest.approx(manual_skill(runs_2x2, e["model"]), abs=1e-12)
    base = next(e for e in ranking if e["model"] == "sw_avg")
    assert base["skill"] == {"all": 0.0, "transient": 0.0, "stable": 0.0}
    skills = [e["skill"]["all"] for e in ranking]
    assert skills == sorted(skills, reverse=True)
    # head-to-head: 4 cells x 3 models x 2 opponents, each comparison won by one side
    assert sum(e["win_rate"] * 8 for e in ranking) == pytest.approx(12)

    assert len(board["tables"]) == 4  # 2 datasets x 2 horizons, one task each
    for t in board["tables"]:
        assert [r["rank"] for r in t["rows"]] == [1, 2, 3]
        assert t["noise_floor"]["all"] > 0
        for row in t["rows"]:
            result = runs_2x2[(row["model"], t["dataset"])]
            expected = result.horizons[t["horizon"]]
            assert row["error_rate"] == pytest.approx(expected.metrics["error_rate"].to_dict())
            assert row["window_error"] == pytest.approx(expected.metrics["window_error"].to_dict())
            assert row["noise_floor"] == pytest.approx(expected.metrics["noise_floor"].to_dict())
            assert row["failed_origins"] == expected.failures == 0
            assert row["seconds"] == pytest.approx(result.seconds)
            assert row["run_id"] == result.mlflow_run_id
        errors = [r["error_rate"]["all"] for r in t["rows"]]
        assert errors == sorted(errors)
    assert board["superseded"] == []


def test_rich_output_and_files(runs_2x2, capsys, tmp_path):
    assert main(["leaderboard", "--dataset", SECOND]) == 0
    out = capsys.readouterr().out
    assert "ranking" in out and "noise floor" in out and f"{SECOND}@1, horizon 1000" in out
    assert main(["leaderboard", "--dataset", SECOND, "--out", str(tmp_path)]) == 0
    md = (tmp_path / "leaderboard.md").read_text()
    csv = (tmp_path / "leaderboard.csv").read_text()
    html = (tmp_path / "leaderboard.html").read_text()
    for model in MODELS:
        assert f"| {model} |" in md and f",{model}," in csv
    # reproducible files carry no run ids, runtimes or dates; the page does carry the run ids
    for r in (runs_2x2[(m, SECOND)] for m in MODELS):
        assert r.mlflow_run_id not in md + csv
    assert "seconds" not in md and "seconds" not in csv
    assert (
        "<script src=" not in html and "Plotly" in html
    )  # plotly.js inlined (the browser test checks it loads nothing)
    assert len(csv.strip().splitlines()) == 1 + 2 * 3


def test_newest_run_wins_and_tasks_and_versions_never_mix(capsys):
    from datasets_registry import registry
    from datasets_registry.synthetic import switching_trace

    name = "lb-mix"
    registry.add(switching_trace(records=300, layers=2, experts=8, switch=100, step_every=10, seed=5), name)
    registry.add(
        switching_trace(records=300, layers=2, experts=8, switch=100, step_every=10, seed=6), name
    )  # version 2
    first = runner.run("ema", f"{name}@1", task=Task(dataset=name, horizons=(1000,)))
    again = runner.run("ema", f"{name}@1", task=Task(dataset=name, horizons=(1000,)), force=True)  # computed again
    other_task = runner.run("ema", f"{name}@1", task=Task(dataset=name, horizons=(1000,), stride=200))
    v2 = runner.run("ema", f"{name}@2", task=Task(dataset=name, horizons=(1000,)))
    board = board_json(capsys, "--dataset", name)

    assert [s["run_id"] for s in board["superseded"]] == [first.mlflow_run_id]
    assert board["superseded"][0]["superseded_by"] == again.mlflow_run_id
    groups = {(t["dataset_version"], t["task_fingerprint"]): t for t in board["tables"]}
    assert set(groups) == {
        ("1", first.task_fingerprint),
        ("1", other_task.task_fingerprint),
        ("2", v2.task_fingerprint),
    }
    assert all(len(t["rows"]) == 1 for t in board["tables"])
    assert groups[("1", first.task_fingerprint)]["rows"][0]["run_id"] == again.mlflow_run_id
    assert board["ranking"][0]["skill"]["all"] is None  # no sw_avg run: no skill
    assert board["ranking"][0]["cells"] == 3
    assert board["ranking"][0]["rank"] is None  # alone in each of its tables: nothing to rank it against

    only_v2 = board_json(capsys, "--dataset", f"{name}@2")
    assert [t["dataset_version"] for t in only_v2["tables"]] == ["2"]


def test_ranks_share_ties():
    assert build._ranks([0.3, 0.1, 0.3]) == [2.5, 1.0, 2.5]


def test_placement_columns_shown_when_present(runs_2x2):
    from bench.results import ByState

    r = runs_2x2[("ema", SECOND)]
    h = r.horizons[1000]
    placed = r.replace(
        horizons={
            1000: dataclasses.replace(
                h, metrics={**h.metrics, "gap_closed": ByState(0.42), "layer_time_gain": ByState(0.07)}
            )
        }
    )
    md = render.markdown(build.build([placed]))
    assert "gap_closed (all)" in md and "42.0%" in md and "layer_time_gain (all)" in md


def test_probabilistic_columns_for_runs_with_quantile_scores_and_dashes_for_the_others(runs_2x2):
    """sw_quantiles is the reference itself (scaled quantile loss exactly 1); dirmult's is fev's aggregate, the
    geometric mean over cells of its clipped quantile-loss ratios; point-only models show "-"."""
    from leaderboard import stats

    prob = {m: runner.run(m, SECOND) for m in ("sw_quantiles", "dirmult")}
    board = build.build([runs_2x2[("sw_avg", SECOND)], *prob.values()])
    entries = {e["model"]: e for e in board["ranking"]}
    assert entries["sw_avg"]["probabilistic"] is None
    assert entries["sw_quantiles"]["probabilistic"]["scaled_quantile_loss"]["all"] == pytest.approx(1.0, abs=1e-12)
    r = prob["dirmult"]
    logs = [float(stats.clipped_log_ratio(r.value(H, "quantile_loss"), r.value(H, "reference_quantile_loss")))
            for H in r.horizons]
    got = entries["dirmult"]["probabilistic"]
    assert got["scaled_quantile_loss"]["all"] == pytest.approx(math.exp(sum(logs) / len(logs)), rel=1e-12)
    assert got["coverage_90"]["all"] == pytest.approx(sum(r.value(H, "coverage_90") for H in r.horizons) / 2)
    assert got["cells"] == len(r.horizons) == 2
    cell = next(t for t in board["tables"] if t["horizon"] == 1000)
    assert {row["model"]: row["probabilistic"] is None for row in cell["rows"]} == {
        "sw_avg": True, "sw_quantiles": False, "dirmult": False}
    md = render.markdown(board)
    assert "scaled quantile loss" in md and "coverage 90%" in md
    sw_avg_line = next(line for line in md.splitlines() if line.startswith("| 3 ") or "| sw_avg |" in line)
    assert sw_avg_line.rstrip(" |").endswith("- | - | -")
    assert "coverage_90_all" in render.csv_text(board).splitlines()[0]
    # a board of point forecasts alone has no such columns
    plain = build.build([runs_2x2[(m, SECOND)] for m in MODELS])
    assert "quantile" not in render.markdown(plain) and "coverage_90" not in render.csv_text(plain)
