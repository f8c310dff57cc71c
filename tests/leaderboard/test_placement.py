"""The committed board in placement terms: the scores file reproduces from a run, the comparison picks the best."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from leaderboard import build, placement, reference, stats


@pytest.fixture(scope="module")
def board():
    return build.from_submissions([reference.SUBMISSIONS], placement_scores=placement.committed())


def test_a_committed_run_scores_as_the_committed_file_says():
    """sglang on tiny-cpu-s1, run afresh with the suite's task and its forecasts scored, gives the committed scores."""
    from bench import runner, submission, suites

    task = next(t for t in suites.get(reference.SUITE).tasks if t.dataset == "tiny-cpu-s1")
    committed_run = next(run.result for run in submission.load(reference.submission_path("sglang")).runs
                         if run.result.dataset == "tiny-cpu-s1")
    fresh = runner.run("sglang", "tiny-cpu-s1", task=committed_run.task, track=False)
    assert fresh.run_key == committed_run.run_key and fresh.dataset_fingerprint == task.fingerprint
    mine = placement.load_document(placement.score([fresh]))
    scores = placement.committed()
    for key, cell in mine["index"].items():
        kept = scores["index"][key]
        assert cell["origin_steps"] == kept["origin_steps"]
        for name in placement.FIXED:
            np.testing.assert_allclose(cell[name], kept[name], rtol=1e-6, err_msg=name)
        for name in placement.OWN:
            np.testing.assert_allclose(cell["runs"][fresh.run_key][name], kept["runs"][fresh.run_key][name],
                                       rtol=1e-6, err_msg=name)


def test_scores_of_a_previous_file_are_kept_and_only_new_runs_scored():
    """`score(previous=...)` keeps the runs the previous scores hold (their forecasts are not needed any more) and
    scores the others, as a full scoring would; a previous file of another placement is not used."""
    from bench import api
    from bench.results import run_folder, window_forecasts_file

    H = 700  # a task of this test alone: it deletes a cached run's forecasts
    a, b = (api.run(m, "tiny-cpu-s1", horizons=[H], track=False) for m in ("sw_avg", "last"))
    full = placement.score([a, b])
    previous = placement.load_document(placement.score([a]))
    (run_folder(a.run_key) / window_forecasts_file(H)).unlink()  # a's forecasts are gone
    said = []
    again = placement.score([a, b], previous=previous, say=said.append)
    assert again == full and any("1 runs x" in s and "1 kept" in s for s in said)
    with pytest.raises(FileNotFoundError, match=a.run_key):  # another placement: every run is scored again
        placement.score([a, b], spec="G=4,R=4", previous=previous)


def test_every_committed_run_is_scored():
    from bench import submission

    scores = placement.committed()
    assert scores["spec"].startswith(placement.SPEC)
    for path in submission.submission_files([reference.SUBMISSIONS]):
        for run in submission.load(path).runs:
            r = run.result
            for H in r.horizons:
                cell = scores["index"][(r.dataset, str(r.dataset_version), r.task_fingerprint, H)]
                assert r.run_key in cell["runs"], (r.model, r.dataset, H)


def test_each_table_sets_the_best_placement_of_the_zoo_against_the_engines(board):
    from models.registry import ENGINE_ESTIMATORS

    scores = placement.committed()
    compared = [t for t in board["tables"] if t["placement_versus_engines"]]
    assert {t["dataset"] for t in compared} == {t["dataset"] for t in board["tables"]}
    for t in compared:
        v = t["placement_versus_engines"]
        cell = scores["index"][(t["dataset"], str(t["dataset_version"]), t["task_fingerprint"], t["horizon"])]
        static, oracle = np.mean(cell["imbalance_static"]), np.mean(cell["imbalance_oracle"])
        gap = {row["label"]: (static - np.mean(cell["runs"][row["run_key"]]["imbalance"])) / (static - oracle)
               for row in t["rows"] if None not in cell["runs"][row["run_key"]]["imbalance"]}
        seconds = {row["label"]: row["seconds"] for row in t["rows"]}
        engines = {label: g for label, g in gap.items() if label in ENGINE_ESTIMATORS}
        zoo = {label: g for label, g in gap.items() if label not in ENGINE_ESTIMATORS}
        for kind, side in ((engines, "engine"), (zoo, "zoo")):  # equal gaps: the cheaper run, then the label
            assert v[side] == min(kind, key=lambda label: (-kind[label], seconds[label], label))
        assert v["engine_gap_closed"] == pytest.approx(engines[v["engine"]])
        assert v["difference"] == pytest.approx(zoo[v["zoo"]] - engines[v["engine"]])
        if len(cell["origin_steps"]) <= stats.block_length(t["horizon"], int(t["task"]["stride"])):
            assert v["ci"] is None and v["time_ci"] is None and v["verdict"] is None  # one block: no spread
            continue
        assert v["ci"][0] <= v["ci"][1] and v["time_ci"][0] <= v["time_ci"][1]
        assert v["verdict"] == ("beats" if v["ci"][0] > 0 else "loses" if v["ci"][1] < 0 else "ties")
        assert v["time_verdict"] == ("faster" if v["time_ci"][1] < 0 else "slower" if v["time_ci"][0] > 0 else "ties")


def test_the_board_shows_the_placement_comparison(board):
    from leaderboard import render

    text = render.markdown(board)
    assert "in placement terms" in text
    head, rows = render.placement_engine_rows(board)
    assert len(rows) == len(board["tables"]) and "gap closed zoo - engine [95% CI]" in head


def test_runs_made_with_placement_are_compared_from_their_own_rows():
    """From the store's path: the runs' per-origin placement metrics give the comparison, and each side's gap
    closed and layer time are those of its own run summary."""
    from bench import runner
    from bench.task import Task

    task = Task(dataset="tiny-cpu-s1", horizons=(1000,), stride=200)
    runs = [runner.run(m, "tiny-cpu-s1", task=task, placement="G=4,R=4", track=False)
            for m in ("sglang", "vllm", "sw_avg", "ema")]
    board = build.build(runs, {r.run_key: r.to_frame(per_origin=True) for r in runs})
    (table,) = board["tables"]
    v = table["placement_versus_engines"]
    by_label = {r.model: r for r in runs}
    assert v["spec"] == "G=4,R=4" and v["engine"] in ("sglang", "vllm") and v["zoo"] in ("sw_avg", "ema")
    for side in ("engine", "zoo"):
        mine = by_label[v[side]]
        assert v[f"{side}_gap_closed"] == pytest.approx(mine.value(1000, "gap_closed"), rel=1e-5)
        assert v[f"{side}_layer_time_us"] == pytest.approx(mine.value(1000, "layer_time_us"), rel=1e-5)
    others = [r for r in runs if r.model not in (v["engine"], v["zoo"])]
    for r in others:  # the other of each kind closes less of the gap
        best = v["engine_gap_closed"] if r.model in ("sglang", "vllm") else v["zoo_gap_closed"]
        assert r.value(1000, "gap_closed") <= best + 1e-6
    assert v["ci"] is not None and v["verdict"] in ("beats", "ties", "loses")


def test_a_bad_scores_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "placement.json.gz"
    path.write_bytes(b"not gzip")
    with pytest.raises(placement.PlacementScoresError, match="placement.json.gz"):
        placement.load(path)
    doc = {"format": placement.FORMAT, "format_version": placement.FORMAT_VERSION, "spec": "G=8,R=8",
           "cells": [{"dataset": "d", "dataset_version": 1, "task_fingerprint": "t", "horizon": 1000,
                      "origin_steps": [100, 200], **{k: [1.0, 1.0] for k in placement.FIXED},
                      "runs": {"k": {"model": "m", "imbalance": [1.0], "layer_time_us": [1.0, 1.0],
                                     "drop_rate": [0.0, 0.0]}}}]}
    path.write_bytes(gzip.compress(json.dumps(doc).encode()))
    with pytest.raises(placement.PlacementScoresError, match="cell 0 .d, horizon 1000."):
        placement.load(path)
