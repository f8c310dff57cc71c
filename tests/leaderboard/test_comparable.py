"""What the board says right after the quick start, with models run on different datasets, at 80 columns, and
for a filter that matches nothing: only comparable models are ranked together, and a missing skill says why."""

from __future__ import annotations

import re

import pytest

from bench import runner
from bench.cli import main
from bench.task import Task
from leaderboard import build, render

D1, D2 = "cmp-one", "cmp-two"  # SYNTHETIC traces (datasets_registry.synthetic), small


@pytest.fixture(scope="module")
def results():
    """sw_avg and ema on D1; last and static on D2 (no sw_avg there); sw_sum alone on D1 under another task."""
    from datasets_registry import registry
    from datasets_registry.synthetic import switching_trace

    for seed, name in ((11, D1), (12, D2)):
        if not any(e.id == name for e in registry.entries()):
            registry.add(switching_trace(records=300, layers=2, experts=8, switch=100, step_every=10, seed=seed), name)

    def run(model, dataset, horizons=(1000,)):
        return runner.run(model, dataset, task=Task(dataset=dataset, horizons=horizons), track=False)

    return {"sw_avg": run("sw_avg", D1), "ema": run("ema", D1), "last": run("last", D2),
            "static": run("static", D2), "sw_sum": run("sw_sum", D1, horizons=(1000, 2000))}


def entries(board):
    return {e["label"]: e for e in board["ranking"]}


def test_after_the_quick_start_one_model_is_unranked_and_says_how_to_get_a_skill(results):
    board = build.build([results["ema"]])
    (e,) = board["ranking"]
    assert e["rank"] is None and e["comparable_set"] is None and board["comparable_sets"] == []
    command = f"python -m bench run --model sw_avg --dataset {D1}@1 --horizon 1000"
    assert "nothing to compare it with" in e["unranked"] and command in e["unranked"]
    assert e["skill_missing"] == "no sw_avg run shares a table with it"
    (table,) = board["tables"]
    assert table["rows"][0]["rank"] is None  # alone in its table: no rank 1 out of 1
    assert table["no_baseline"] == f"no sw_avg run in this table, so no skill; add one: {command}"
    md = render.markdown(board)
    assert "Unranked (nothing to compare with):" in md and command in md and "| - | ema |" in md


def test_models_are_ranked_only_within_the_sets_that_share_tables(results):
    board = build.build(list(results.values()))
    by = entries(board)
    assert [(sorted(c["labels"]), c["baseline"]) for c in board["comparable_sets"]] == [
        (["ema", "sw_avg"], True), (["last", "static"], False)]
    assert {by["sw_avg"]["rank"], by["ema"]["rank"]} == {by["last"]["rank"], by["static"]["rank"]} == {1, 2}
    assert by["sw_avg"]["comparable_set"] == by["ema"]["comparable_set"] == 1
    assert by["last"]["comparable_set"] == by["static"]["comparable_set"] == 2
    assert by["last"]["skill_missing"] == "no sw_avg run shares a table with it" and by["ema"]["skill_missing"] is None
    assert by["sw_sum"]["rank"] is None and "--horizon 1000 --horizon 2000" not in by["sw_sum"]["unranked"]
    assert f"--dataset {D1}@1" in by["sw_sum"]["unranked"]  # its task is the default one: no --horizon
    assert [e["label"] for e in board["ranking"]][-1] == "sw_sum"  # the unranked come last
    md = render.markdown(board)
    first = ", ".join(c for c in board["comparable_sets"][0]["labels"])
    assert render.SETS_NOTE in md and f"### Set 1: {first}, compared on cmp-one@1" in md
    assert "### Set 2: last, static, compared on cmp-two@1 (no sw_avg: no skill)" in md
    page = render.html_page(board)
    assert "<h3>Set 2: last, static" in page and 'class="note no-baseline"' in page


def test_one_set_of_models_renders_as_before(results):
    board = build.build([results["sw_avg"], results["ema"]])
    assert [(e["rank"], e["comparable_set"]) for e in board["ranking"]] == [(1, 1), (2, 1)]
    assert [r["rank"] for r in board["tables"][0]["rows"]] == [1, 2]
    md = render.markdown(board)
    assert "###" not in md and render.SETS_NOTE not in md and "Unranked" not in md


def test_the_terminal_board_at_80_columns_keeps_every_number_whole(results, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    board = build.build(list(results.values()))
    render.print_rich(board)
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80 and "…" not in out
    head, rows = render.ranking_rows(board, runtime=False, entries=board["ranking"][:2])
    for row in rows:  # rank, model and headroom skill with its interval stay, each whole on one line
        assert re.search(rf"│ +{row[0]} │ {row[1]} +│ +{re.escape(row[2])} │", out), (row, out)
    for t in board["tables"]:
        for r in t["rows"]:
            assert render.pct(r["error_rate"]["all"]) in out
    assert "left out at 80 columns:" in out and "unranked: sw_sum: the only model" in out
    assert "skill: no sw_avg run in this table" in out
    monkeypatch.setenv("COLUMNS", "250")
    render.print_rich(board)
    assert "left out" not in capsys.readouterr().out


def test_a_filter_that_matches_nothing_names_what_the_store_holds(results, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for model in ("sw_avg", "ema"):
        runner.log(results[model], uri)
    assert main(["leaderboard", "--tracking-uri", uri, "--dataset", "nosuch"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: no run in {uri} matches --dataset nosuch;") and len(err.splitlines()) == 1
    assert f"{D1}@1 (ema, sw_avg)" in err
    assert main(["leaderboard", "--tracking-uri", uri, "--model", "nosuch"]) == 1
    assert "matches --model nosuch" in capsys.readouterr().err
    assert main(["leaderboard", "--tracking-uri", uri, "--dataset", D1]) == 0
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    assert main(["leaderboard", "--tracking-uri", empty, "--dataset", D1]) == 1
    assert "it holds no runs; run `python -m bench run` first" in capsys.readouterr().err
