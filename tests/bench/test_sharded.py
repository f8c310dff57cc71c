"""A run evaluated in pieces (layer groups x origin ranges) gives the single process's numbers exactly."""

from __future__ import annotations

import numpy as np
import pytest

from bench.evaluate import evaluate
from bench.hindsight import floors_at_origins
from bench.runner import with_hindsight
from bench.sharded import Piece, check_splittable, evaluate_piece, evaluate_sharded, layer_groups, merge, plan
from bench.task import Task
from datasets_registry import registry
from datasets_registry.synthetic import switching_trace
from models import predictor_class

TASK = Task("x", horizons=(50, 120), stride=20, min_history=30)


@pytest.fixture(scope="module")
def stored():
    """A synthetic 7-layer trace stored chunked (row groups of 64 records) and whole."""
    tr = switching_trace(records=500, layers=7, experts=8, switch=200, seed=11)
    registry.add(tr, "sharded-whole")
    registry.add_chunked(tr, "sharded-chunked", group_records=64)
    return tr


def single(tr, model, params, task=TASK):
    ev = evaluate(tr, predictor_class(model)(**params), task)
    return ev, floors_at_origins(tr.proportions, tr.steps, task)


def assert_same(got, ev, floors):
    assert got.evaluation.rows == ev.rows
    assert got.evaluation.window_forecasts == ev.window_forecasts and got.evaluation.failures == ev.failures
    assert set(got.floors) == set(floors)
    for H, f in floors.items():
        g = got.floors[H]
        assert np.array_equal(g.origins, f.origins) and np.array_equal(g.constant, f.constant)
        assert np.array_equal(g.line, f.line)
    assert got.frame().equals(with_hindsight(ev, floors))


def test_layer_groups_never_leave_one_layer_alone():
    assert layer_groups(7, 2) == [(0, 2), (2, 4), (4, 7)]
    assert layer_groups(6, 4) == [(0, 4), (4, 6)] and layer_groups(5, 4) == [(0, 5)]
    assert layer_groups(1, 2) == [(0, 1)] and layer_groups(58, 1) == layer_groups(58, 2)
    assert [p.span for p in plan(4, 10, 2, 4)] == [(0, 4), (4, 8), (8, 10)] * 2


@pytest.mark.parametrize("model,params", [("sw_avg", {"window": 60}), ("ema", {"decay": 0.9}), ("sglang", {
    "rebalance_num_iterations": 100, "buffer_size": 50})])
@pytest.mark.parametrize("dataset", ["sharded-chunked", "sharded-whole"])
def test_pieces_in_process_match_one_process(stored, dataset, model, params):
    ev, floors = single(stored, model, params)
    got = evaluate_sharded(dataset, model, params, TASK, layers_per_piece=2, origins_per_piece=7)
    assert got.pieces == 3 * 3
    assert_same(got, ev, floors)


def test_pieces_on_a_local_dask_cluster_match_one_process(stored):
    """A scheduler and two worker processes on 127.0.0.1; every piece opens the chunked dataset itself."""
    from bench.executors import executor

    ev, floors = single(stored, "sw_avg", {"window": 40})
    with executor("dask", workers=2) as ex:
        got = evaluate_sharded("sharded-chunked", "sw_avg", {"window": 40}, TASK, executor=ex, layers_per_piece=3,
                               origins_per_piece=6)
    assert got.pieces == 2 * 4
    assert_same(got, ev, floors)


def test_splits_that_would_change_results_are_refused(stored):
    pieces = plan(7, 20, 2, None)
    with pytest.raises(ValueError, match="layerwise"):
        check_splittable(predictor_class("trtllm")(), 7, 20, pieces, TASK)
    with pytest.raises(ValueError, match="replayable"):
        check_splittable(predictor_class("static")(), 7, 20, plan(7, 20, 7, 5), TASK)
    with pytest.raises(ValueError, match="built-in models only"):
        evaluate_piece(stored, "sktime:NaiveForecaster", {}, TASK, Piece((0, 7), (0, 5)))
    part = evaluate_piece(stored, "last", {}, TASK, Piece((0, 2), (0, 5)))
    with pytest.raises(ValueError, match="missing"):
        merge([part, part], [], TASK.horizons)
