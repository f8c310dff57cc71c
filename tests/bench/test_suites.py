"""Suites: moe-load-v1 and v2 match the local data; a suite's check names every dataset missing or changed."""

from __future__ import annotations

import json

import pytest

from bench import suites
from bench.cli import main
from bench.suites import ENGINE_HORIZONS_V1, MOE_LOAD_V1, MOE_LOAD_V2, Suite, SuiteTask
from bench.task import Task
from datasets_registry import registry


def test_moe_load_v1_is_the_builtin_traces_and_smartmoe_under_the_default_task(smartmoe):
    builtin = {(e.id, e.version) for e in registry.entries() if e.kind == "builtin"}
    v1 = [(t.dataset, t.version) for t in MOE_LOAD_V1.tasks]  # the seven built-in traces of v1 (later ones: v2)
    assert len(v1) == 8 and set(v1[:7]) <= builtin and v1[7] == ("smartmoe-ae", 1)
    for t in MOE_LOAD_V1.tasks:
        assert t.task == Task(dataset=t.ref)  # horizons 1,000 and 2,000, stride 100, min history 100, refit every
    assert suites.get("moe-load-v1") is MOE_LOAD_V1


def test_moe_load_v2_adds_every_probe_trace_and_is_the_default(smartmoe):
    probes = sorted(e.id for e in registry.entries() if e.kind == "builtin" and e.id.endswith("-probe"))
    assert MOE_LOAD_V2.tasks[:8] == MOE_LOAD_V1.tasks and list(MOE_LOAD_V2.datasets[8:]) == probes
    assert len(probes) == 10 and suites.DEFAULT_SUITE == "moe-load-v2" and suites.check(MOE_LOAD_V2) == []
    for t in MOE_LOAD_V2.tasks:
        assert t.task == Task(dataset=t.ref)


def test_engine_horizons_is_moe_load_v1_at_the_engines_rebalance_intervals():
    from models.engines import VLLMEPLB, SGLangEPLB

    intervals = (SGLangEPLB.defaults["rebalance_num_iterations"], VLLMEPLB.defaults["step_interval"])
    assert suites.get("engine-horizons") is ENGINE_HORIZONS_V1
    assert [(t.dataset, t.version, t.fingerprint) for t in ENGINE_HORIZONS_V1.tasks] == [
        (t.dataset, t.version, t.fingerprint) for t in MOE_LOAD_V1.tasks]
    for t in ENGINE_HORIZONS_V1.tasks:
        assert t.task == Task(dataset=t.ref, horizons=intervals)


def test_moe_load_v1_matches_the_local_data(smartmoe):
    """Every dataset of the suite is here, with the fingerprint the suite pins (a changed trace fails this)."""
    assert suites.check(MOE_LOAD_V1) == []
    cards = {r["id"]: r["fingerprint"] for r in registry.listing()}
    assert {t.dataset: t.fingerprint for t in MOE_LOAD_V1.tasks} == {t.dataset: cards[t.dataset]
                                                                    for t in MOE_LOAD_V1.tasks}
    assert MOE_LOAD_V1.task("smartmoe-ae").fingerprint == smartmoe.fingerprint


def test_check_names_each_dataset_missing_or_changed():
    tiny = MOE_LOAD_V1.task("tiny-cpu-s1")
    suite = Suite("broken", 2, (
        SuiteTask("tiny-cpu-s1", 1, "sha256:" + "0" * 64, tiny.task),
        SuiteTask("no-such-trace", 1, tiny.fingerprint),
        SuiteTask("gpt3-125m-16e-top2-s1", 9, tiny.fingerprint),
    ))
    problems = suites.check(suite)
    assert [(p.dataset, p.kind) for p in problems] == [
        ("tiny-cpu-s1@1", "fingerprint"), ("no-such-trace@1", "missing"), ("gpt3-125m-16e-top2-s1@9", "missing")]
    assert str(problems[0]) == (f"dataset tiny-cpu-s1@1 of suite broken@2: fingerprint {tiny.fingerprint} here, "
                                f"the suite pins sha256:{'0' * 64}")
    assert "no dataset 'no-such-trace'" in str(problems[1])
    assert "has no version 9" in str(problems[2])


def test_a_suite_round_trips_through_json_and_refuses_bad_input():
    back = Suite.from_dict(json.loads(json.dumps(MOE_LOAD_V1.to_dict())))
    assert back == MOE_LOAD_V1
    with pytest.raises(ValueError, match="fingerprint must be"):
        SuiteTask.from_dict({"dataset": "x", "version": 1, "fingerprint": "md5:1"})
    with pytest.raises(ValueError, match="version must be a positive integer"):
        SuiteTask.from_dict({"dataset": "x", "version": True, "fingerprint": "sha256:1"})
    with pytest.raises(ValueError, match="more than one task"):
        Suite("twice", 1, (MOE_LOAD_V1.tasks[0], MOE_LOAD_V1.tasks[0]))
    with pytest.raises(LookupError, match="no suite 'nope'; declared: moe-load-v1"):
        suites.get("nope")


def test_suite_commands(smartmoe, capsys):
    assert main(["suite", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [{"name": s.name, "version": 1, "description": s.description, "tasks": len(s.tasks),
                       "datasets": list(s.datasets)} for s in (MOE_LOAD_V1, MOE_LOAD_V2, ENGINE_HORIZONS_V1)]
    assert main(["suite", "show", "moe-load-v1", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["problems"] == [] and len(shown["tasks"]) == 8
    assert shown["tasks"][-1]["dataset"] == "smartmoe-ae" and shown["tasks"][-1]["task"]["horizons"] == [1000, 2000]
    assert main(["suite", "list"]) == 0 and "moe-load-v1  version 1, 8 tasks" in capsys.readouterr().out
    assert main(["suite", "show", "moe-load-v1"]) == 0
    out = capsys.readouterr().out
    assert "smartmoe-ae@1" in out and "sha256:ba8d14def116a730" in out
    assert main(["suite", "show", "nope"]) == 1
    assert "error: no suite 'nope'" in capsys.readouterr().err
