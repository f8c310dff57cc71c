"""The committed leaderboard: its files are what its result files give, and the result files check out."""

from __future__ import annotations

import pytest

from bench.cli import main
from leaderboard import build, reference, stats

FILES = ("leaderboard.md", "leaderboard.csv")


def test_committed_files_match_their_result_files(tmp_path, capsys):
    assert main(["leaderboard", "--write", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    for name in FILES:
        committed = (reference.OUT_DIR / name).read_text(encoding="utf-8")
        fresh = (tmp_path / name).read_text(encoding="utf-8")
        assert fresh == committed, f"leaderboard/{name} is stale: run `make leaderboard` and commit it"
    assert (tmp_path / "leaderboard.html").stat().st_size > 1_000_000  # plotly.js inlined


def test_the_zoo_has_one_result_file_per_model_on_the_whole_suite():
    from bench import grid, submission, suites

    suite = suites.get(reference.SUITE)
    assert set(grid.load(reference.ZOO).datasets) == {t.dataset for t in suite.tasks}
    for model, params in reference.zoo_models():
        path = reference.submission_path(model)
        assert path.exists(), f"{path} is missing: run `make zoo`"
        sub = submission.load(path)
        assert sub.model.spec == model and {k: sub.model.params[k] for k in params} == params
        assert sub.suite.name == reference.SUITE and len(sub.runs) == len(suite.tasks)


def test_the_board_ranks_the_zoo_with_intervals():
    board = build.from_submissions([reference.SUBMISSIONS])
    assert len(board["ranking"]) >= 10 and len({t["dataset"] for t in board["tables"]}) >= 8
    assert board["ranking"][0]["headroom_skill"]["ci"] is not None
    assert all(e["seconds_per_origin"] is not None and e["hardware"] for e in board["ranking"])
    base = next(e for e in board["ranking"] if e["model"] == "sw_avg")
    assert base["headroom_skill"]["value"] == pytest.approx(0.0, abs=1e-12)


def test_a_committed_result_file_checks_out(smartmoe, capsys):
    """Re-running a task of sw_avg's file from scratch gives its numbers (the other files: `bench submit --verify`)."""
    assert main(["submit", "--verify", str(reference.submission_path("sw_avg")), "--sample", "1"]) == 0, (
        capsys.readouterr().err)


def test_each_table_sets_the_best_zoo_model_against_the_best_engine_estimator():
    """The engines' estimators are in the zoo; per table the lowest error of each kind, and their paired interval."""
    from models.registry import ENGINE_ESTIMATORS

    board = build.from_submissions([reference.SUBMISSIONS])
    assert {t["dataset"] for t in board["tables"] if t["versus_engines"]} == {t["dataset"] for t in board["tables"]}
    for t in board["tables"]:
        v = t["versus_engines"]
        engines = [r for r in t["rows"] if r["model"] in ENGINE_ESTIMATORS]
        zoo = [r for r in t["rows"] if r["model"] not in ENGINE_ESTIMATORS]
        assert len(engines) == len(ENGINE_ESTIMATORS)
        # equal errors (the probabilistic predictors forecast sw_avg's point): the cheaper run, then the label
        best_engine, best_zoo = (min(rows, key=lambda r: (r["error_rate"]["all"], r["seconds"], r["label"]))
                                 for rows in (engines, zoo))
        assert (v["engine"], v["zoo"]) == (best_engine["label"], best_zoo["label"])
        assert v["difference"] == pytest.approx(best_zoo["error_rate"]["all"] - best_engine["error_rate"]["all"])
        if v["ci"] is None:  # one resampled block spans every origin of the table: no interval, no verdict
            origins = max(r["n_origins"] for r in t["rows"])
            assert v["verdict"] is None and origins <= stats.block_length(t["horizon"], int(t["task"]["stride"]))
            continue
        assert v["ci"][0] <= v["ci"][1]
        assert v["verdict"] == ("beats" if v["ci"][1] < 0 else "loses" if v["ci"][0] > 0 else "ties")
