"""Placement policy, placement scores and the step-time model on loads whose answer is known."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from bench.aggregate import summarize
from bench.placement import (
    PlacementSpec,
    drop_rate,
    imbalance,
    make_scorer,
    pack,
    place,
    replicate,
    score,
    static_placement,
)
from bench.steptime import StepTimeModel


def test_replicate_gives_each_extra_replica_to_the_highest_load_per_replica():
    assert replicate(np.array([[6.0, 3.0, 1.0]]), 5).tolist() == [[3, 1, 1]]  # 6/1, then 6/2 = 3 ties 3/1: lowest id
    assert replicate(np.array([[6.0, 3.0, 1.0]]), 6).tolist() == [[3, 2, 1]]
    assert replicate(np.array([[1.0, 2.0], [2.0, 1.0]]), 3).tolist() == [[1, 2], [2, 1]]  # per layer


def test_lpt_packing_with_equal_slots_per_device():
    # heaviest first into the lightest device with room: 5->0, 4->1, 3->1, 3->0, 2->1 (now full), 1->0
    assert pack(np.array([[5.0, 4.0, 3.0, 3.0, 2.0, 1.0]]), 2).tolist() == [[0, 1, 1, 0, 1, 0]]
    # the slot limit binds: the light items cannot all go to the light device
    assert pack(np.array([[10.0, 1.0, 1.0, 1.0]]), 2).tolist() == [[0, 1, 1, 0]]


def test_uniform_load_static_equals_oracle():
    E, G = 8, 4
    counts = np.full((5, 2, E), 100.0)
    spec = PlacementSpec(devices=G, replicas=4)
    s = score(np.full((2, E), 1 / E), counts, spec, static_placement(2, E, G))
    for k in ("imbalance", "imbalance_static", "imbalance_oracle"):
        np.testing.assert_allclose(s[k], 1.0)
    np.testing.assert_allclose(s["layer_time_us"], s["layer_time_static_us"])
    entry = {k: {"all": float(v.mean())} for k, v in s.items()}
    from bench.placement import derive

    derive(entry, states=("all",))
    assert math.isnan(entry["gap_closed"]["all"])  # no gap to close: undefined, not a division by zero
    assert entry["layer_time_gain"]["all"] == pytest.approx(0.0)


def test_one_hot_expert_replication_halves_the_peak():
    counts = np.array([[[200.0, 100.0, 100.0, 100.0]]])  # E=4, one step, one layer
    spec = PlacementSpec(devices=5, replicas=1)  # one slot per device; the hot expert gets the replica
    pl = place(counts[0] / 500.0, spec)
    assert pl.replicas.tolist() == [[2, 1, 1, 1]]
    loads = pl.device_loads(counts)
    static = static_placement(1, 4, 5).device_loads(counts)
    assert static.max() == 200.0 and loads.max() == 100.0
    assert imbalance(static)[0] == pytest.approx(2.0) and imbalance(loads)[0] == pytest.approx(1.0)
    assert pl.slots[0].tolist().count(0) == 2 and sorted(pl.slot_device[0].tolist()) == [0, 1, 2, 3, 4]


def test_hierarchical_packs_expert_groups_onto_nodes_first():
    w = np.array([[4.0, 3.0, 2.0, 1.0]])
    pl = place(w, PlacementSpec(devices=2, replicas=0, nodes=2))  # one device per node
    # groups (one expert each) onto 2 nodes of 2: 4->n0, 3->n1, 2->n1, 1->n0
    assert pl.slots[0][pl.slot_device[0] == 0].tolist() == [0, 3]
    assert pl.slots[0][pl.slot_device[0] == 1].tolist() == [1, 2]
    # replicas stay inside their expert's node
    rng = np.random.default_rng(0)
    pl = place(rng.random((3, 16)), PlacementSpec(devices=8, replicas=8, nodes=2, groups=4))
    node_of = pl.slot_device // 4
    for l in range(3):
        for e in range(16):
            assert len(set(node_of[l][pl.slots[l] == e].tolist())) == 1
        groups_on_node0 = set((pl.slots[l][node_of[l] == 0] // 4).tolist())
        assert len(groups_on_node0) == 2  # whole groups of 4 consecutive experts
    np.testing.assert_allclose(pl.share.sum(axis=2), 1.0)


def test_moved_counts_replicas_copied_onto_devices():
    static = static_placement(1, 4, 5)
    assert static.moved(static).tolist() == [0]
    pl = place(np.array([[2.0, 1.0, 1.0, 1.0]]), PlacementSpec(devices=5, replicas=1))
    # one copy per slot whose (expert, device) pair the static placement did not have
    expected = sum(1 for e, g in zip(pl.slots[0], pl.slot_device[0]) if static.slot_device[0][e] != g)
    assert pl.moved(static).tolist() == [expected] and expected >= 1  # at least the new replica


def test_drop_rate():
    counts = np.array([[[60.0, 20.0]]])
    assert drop_rate(counts, np.array([[0.5, 0.5]]), 1.0)[0] == pytest.approx(20 / 80)  # capacity 40 each
    assert drop_rate(counts, np.array([[0.75, 0.25]]), 1.0)[0] == 0.0  # the forecast is exact
    assert drop_rate(counts, np.array([[0.5, 0.5]]), 2.0)[0] == 0.0  # ample capacity
    rng = np.random.default_rng(1)
    many = rng.integers(1, 100, size=(10, 3, 8)).astype(float)
    assert (drop_rate(many, np.full((3, 8), 1 / 8), 8.0) == 0).all()


def test_step_time_formula_by_hand():
    hw = StepTimeModel()  # 4096 x 14336 SwiGLU, BF16, 400 TFLOP/s, NVLink 450 GB/s
    loads = np.full(8, 1000.0)
    compute = 1000 * (2 * 3 * 4096 * 14336) / 400e12
    a2a = 2 * (1000 * 7 / 8) * (4096 * 2) / 450e9  # each device receives 7/8 of its slots, sends 7/8 of its tokens
    assert hw.layer_time(loads) == pytest.approx(compute + a2a)
    assert compute * 1e6 == pytest.approx(880.80384)
    # two nodes, two devices each, everything on device 0; 1 B/slot, 1 B/s links, 1 FLOP/slot-ish compute
    unit = StepTimeModel(hidden=1, ffn=1, matrices=1, bytes_per_element=1, tflops=1e-12, link_gbps=1e-9, net_gbps=1e-9)
    # compute 4 slots x 2 FLOPs / 1 FLOP/s = 8; device 0 receives 1 slot over NVLink and 2 over the network: 2 s a phase
    assert unit.layer_time(np.array([4.0, 0, 0, 0]), nodes=2) == pytest.approx(8 + 2 * 2)
    assert unit.layer_time(np.array([4.0, 0, 0, 0]), nodes=1) == pytest.approx(8 + 2 * 3)  # 3 of 4 slots arrive
    pcie = PlacementSpec.parse("G=8,R=8,link=pcie").hardware
    assert pcie.link_gbps == 50.0 and pcie.all_to_all_time(loads) == pytest.approx(a2a * 9)


def test_spec_parsing_and_checks():
    spec = PlacementSpec.parse("G=8, R=8, N=2, K=8, cf=1.5, link=pcie, hidden=7168, ffn=2048")
    assert (spec.devices, spec.replicas, spec.nodes, spec.groups, spec.capacity_factor) == (8, 8, 2, 8, 1.5)
    assert spec.hardware.hidden == 7168 and spec.hardware.link_gbps == 50.0
    with pytest.raises(ValueError, match="unknown key"):
        PlacementSpec.parse("G=8,Q=1")
    with pytest.raises(ValueError, match="none of"):
        PlacementSpec.parse("link=carrier-pigeon")
    with pytest.raises(ValueError, match="not a number"):
        PlacementSpec.parse("G=eight")
    with pytest.raises(ValueError, match="fill 8 devices"):
        make_scorer("G=8,R=3", 32)


def test_ratio_metrics_are_computed_from_aggregated_means():
    rows = [  # origin 1 has almost no gap to close; its own ratio (-1) must not swamp the mean
        {"horizon": 10, "origin": 0, "origin_step": 0, "records": 1, "layer": 0, "state": "stable",
         "imbalance_static": 2.0, "imbalance": 1.5, "imbalance_oracle": 1.0},
        {"horizon": 10, "origin": 1, "origin_step": 1, "records": 1, "layer": 0, "state": "stable",
         "imbalance_static": 1.0001, "imbalance": 1.0002, "imbalance_oracle": 1.0},
    ]
    out = summarize(pd.DataFrame(rows), [], (10,), ["imbalance_static", "imbalance", "imbalance_oracle"], layers=1)
    gap = out[10].metrics["gap_closed"]
    assert gap.all == pytest.approx((1.50005 - 1.2501) / 0.50005) and gap.stable == gap.all
    assert gap.transient is None  # no origin in that state


def test_scorer_on_a_forecast():
    rng = np.random.default_rng(2)
    q = rng.dirichlet(np.ones(16), size=3)
    counts = np.stack([rng.multinomial(10_000, q[l], size=20) for l in range(3)], axis=1).astype(float)
    p = counts / counts.sum(axis=2, keepdims=True)
    scorer = make_scorer("G=4,R=4", 16)
    exact = scorer(np.broadcast_to(p.mean(axis=0), p.shape), counts, p)
    np.testing.assert_allclose(exact["imbalance"], exact["imbalance_oracle"])
    uniform = scorer(np.full(p.shape, 1 / 16), counts, p)
    assert (uniform["imbalance"] >= exact["imbalance"] - 1e-12).all()
    assert set(exact) == {"imbalance", "imbalance_static", "imbalance_oracle", "drop_rate", "drop_rate_static",
                          "drop_rate_oracle", "layer_time_us", "layer_time_static_us", "layer_time_oracle_us"}


def test_placement_command_on_a_static_dataset(capsys):
    from bench.cli import main
    from datasets_registry import registry
    from datasets_registry.trace import Card, Trace

    totals = np.array([[[800, 100, 100, 100, 100, 100, 100, 100]] * 2])  # [1, L=2, E=8]: one run's totals
    registry.add(Trace.from_arrays(totals, card=Card(id="static-toy", static=True)), "static-toy")
    assert main(["placement", "--dataset", "static-toy", "--devices", "4", "--replicas", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["static_dataset"] and out["spec"] == "G=4,R=4,cf=1.25"
    layer = out["layers"][0]
    assert layer["imbalance_static"] == pytest.approx(900 / 375)  # expert 0 (800) and 4 (100) on device 0
    # expert 0 gets all 4 extra replicas (160 each); LPT: 160 x 4, 160 -> gpu0, 100 x 6 -> gpu1..3, last 100 -> gpu0
    assert layer["imbalance"] == pytest.approx(420 / 375)
    assert layer["replicas"][0] == 5 and out["mean"]["layer_time_gain"] > 0
    assert main(["placement", "--dataset", "static-toy", "-G", "4", "-R", "4"]) == 0
    assert "gpu3" in capsys.readouterr().out


def test_run_adds_placement_metrics(smartmoe, capsys):
    from bench.cli import main
    assert main(["run", "--model", "sw_avg", "--dataset", "smartmoe-ae", "--horizon", "1000", "--placement", "G=8,R=8",
                 "--json", "--no-track"]) == 0
    result = json.loads(capsys.readouterr().out)
    entry = result["horizons"]["1000"]
    for metric in ("imbalance", "imbalance_static", "imbalance_oracle", "gap_closed", "drop_rate", "layer_time_us",
                   "layer_time_gain", "layer_time_shortfall"):
        for state in ("all", "transient", "stable"):
            assert isinstance(entry[metric][state], float), (metric, state)
    assert entry["imbalance_oracle"]["all"] <= entry["imbalance"]["all"] < entry["imbalance_static"]["all"]
    assert 0 < entry["gap_closed"]["all"] <= 1.0 and entry["layer_time_gain"]["all"] > 0
    from bench.results import RunResult

    assert "h1000/gap_closed/stable" in RunResult.from_dict(result).to_mlflow()[1]


def test_scores_from_stored_forecasts_are_the_runs_own():
    """A run's stored horizon-mean forecasts, scored afterwards, give what its --placement scorer gave per origin."""
    from bench import runner
    from bench.placement import METRICS, score_windows
    from bench.task import Task, rolling_origins
    from datasets_registry import registry

    task = Task(dataset="tiny-cpu-s1", horizons=(1000,), stride=400)
    done = runner.run("sglang", "tiny-cpu-s1", task=task, placement="G=4,R=4", track=False)
    frame = done.to_frame(per_origin=True)
    trace = registry.load("tiny-cpu-s1")
    origins = rolling_origins(trace.steps, task)[1000]
    stored = done.forecasts(1000)
    assert stored.origin_steps.tolist() == trace.steps[origins.records].tolist()
    fixed, (own,) = score_windows(trace, origins.records, origins.lengths, [stored.predicted], "G=4,R=4")
    assert set(fixed) | set(own) == set(METRICS)
    for metric in METRICS:
        expected = frame.pivot_table(index="origin_step", columns="layer", values=metric).sort_index().to_numpy()
        np.testing.assert_allclose((fixed | own)[metric], expected, rtol=1e-9, err_msg=metric)
    # the engine's forecast is not the oracle's: the check above compares two different placements
    assert not np.allclose(own["imbalance"], fixed["imbalance_oracle"])


def canonical(pl):
    """Per layer, the sorted multisets of experts on the devices (device labels do not matter)."""
    return [sorted(tuple(sorted(pl.slots[l][pl.slot_device[l] == g].tolist())) for g in range(pl.devices))
            for l in range(pl.slots.shape[0])]


def test_place_is_deepseeks_own_eplb_on_continuous_loads():
    """Same replica counts and the same experts per device as the vendored deepseek-ai/EPLB code."""
    from bench.placement import deepseek_place

    rng = np.random.default_rng(0)
    cases = 0
    while cases < 60:
        N = int(rng.choice([1, 2, 4]))
        G = N * int(rng.integers(1, 3))
        E = G * int(rng.integers(2, 9))
        K = E if rng.random() < 0.5 else N * int(rng.choice([d for d in range(1, E // N + 1) if (E // N) % d == 0]))
        spec = PlacementSpec(devices=G, replicas=G * int(rng.integers(0, 3)), nodes=N, groups=K)
        try:
            spec.check(E)
        except ValueError:
            continue
        cases += 1
        w = rng.random((2, E)).astype(np.float32).astype(np.float64)  # EPLB computes in float32
        ours, theirs = place(w, spec), deepseek_place(w, spec)
        assert ours.replicas.tolist() == theirs.replicas.tolist(), (E, G, N, K, spec.replicas)
        assert canonical(ours) == canonical(theirs), (E, G, N, K, spec.replicas)


def test_docs_quote_the_comparison_with_deepseeks_eplb_on_real_traces():
    """The rows of one trace in docs/placement.md are what benchmarks/eplb_reference.py computes now."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "eplb_reference.py"
    spec = importlib.util.spec_from_file_location("eplb_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fresh = module.rows(traces=("gpt3-125m-64e-ds6-s1",))
    assert fresh[2:] == [r for r in module.shown() if "| gpt3-125m-64e-ds6-s1 |" in r], (
        "docs/placement.md's EPLB table is stale: run `python benchmarks/eplb_reference.py --write`")
    own, eplb = (float(fresh[2].split("|")[k]) for k in (4, 5))
    assert abs(own - eplb) < 1e-3  # equal up to float32 ties


def test_placement_with_spread_replicates_the_expert_likely_to_overload():
    """Two experts of nearly equal mean: the one whose share swings gets the replica under uncertainty, the one of
    the higher mean under the point policy; with the spread equal to the mean it is the point policy."""
    from statistics import NormalDist

    from bench.placement import PlacementSpec, place, place_with_spread
    from models.base import QUANTILE_LEVELS

    spec = PlacementSpec(devices=2, replicas=2)
    mean = np.array([[0.26, 0.25, 0.25, 0.24]])
    spread = np.array([0.0, 0.0, 0.0, 0.1])  # expert 3 swings
    levels = np.array(QUANTILE_LEVELS)
    z = np.array([NormalDist().inv_cdf(a) for a in levels])
    quantiles = np.clip(mean[..., None] + spread[None, :, None] * z, 0, 1)  # [1, 4, Q]
    point = place(mean, spec)
    risky = place_with_spread(mean, quantiles, spec, threshold=0.05)
    assert point.replicas[0].tolist() == [2, 2, 1, 1]
    assert risky.replicas[0, 3] == 2 and risky.replicas[0].sum() == 6
    flat = np.repeat(mean[..., None], len(levels), axis=-1)
    assert np.array_equal(place_with_spread(mean, flat, spec).slots, point.slots)
    with pytest.raises(ValueError, match="threshold 0.03 is none of"):
        place_with_spread(mean, quantiles, spec, threshold=0.03)
