"""Fair play end to end: every way a submission might reach the future or game the ranking, through
`bench run` and the leaderboard, fails, is disqualified, or scores no better than sw_avg.

Routes that read data (the data home, the package's traces, the registry, the harness's stack or
heap) are closed by the sandboxed worker (tests/bench/test_isolation.py tries each one at the
harness's level); here they go through the front door. A cheat that does reach the truth, by a
route nothing closes (code run in-process through the Python API), is caught by its scores.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench.cli import main

HERE = Path(__file__).parent
DATASET = "tiny-cpu-s1"
TASK = ["--dataset", DATASET, "--horizon", "1000", "--stride", "500"]
READERS = HERE / "isolation_plugins.py"  # cheats that read the truth from where it lies (see test_isolation.py)
GAMERS = HERE / "gaming_plugins.py"  # cheats that game the rules


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        home = tmp_path_factory.mktemp("fair-play-home")
        mp.setenv("MOE_LOAD_BENCH_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield home


def run(capsys, *args) -> tuple[int, dict | None, str]:
    capsys.readouterr()
    rc = main(["run", *TASK, "--json", "--timeout", "5", *args])
    out = capsys.readouterr()
    return rc, (json.loads(out.out) if rc == 0 else None), out.err


@pytest.fixture(scope="module")
def baseline(home):
    from bench import run as api_run
    from bench.task import Task

    result = api_run("sw_avg", DATASET, task=Task(DATASET, horizons=(1000,), stride=500))
    assert not result.disqualified
    return result.value(1000, "error_rate")


@pytest.mark.parametrize("spec", [f"{READERS}:RegistryLoad", f"{READERS}:BuiltinPackage", f"{READERS}:StackWalk",
                                  f"{READERS}:GcWalk", f"{GAMERS}:Refuser", f"{GAMERS}:Quitter",
                                  f"{GAMERS}:Patcher"])
def test_a_cheat_through_the_front_door_gains_nothing(home, baseline, capsys, spec):
    rc, result, err = run(capsys, "--model", spec)
    assert rc == 0, err
    assert result["isolation"] == "landlock" or sys.platform != "linux"
    assert result["disqualified"] or result["horizons"]["1000"]["error_rate"]["all"] >= baseline - 1e-12, (
        f"{spec} beat sw_avg: {result['horizons']['1000']['error_rate']['all']} < {baseline}")


def test_a_submission_cannot_take_a_builtin_name(home, capsys):
    rc, _, err = run(capsys, "--model", f"{GAMERS}:Impostor")
    assert rc == 1 and "belongs to a built-in" in err


def test_a_predictor_that_never_returns_ends_within_its_limits(home, capsys):
    rc, result, err = run(capsys, "--model", f"{READERS}:Sleep", "--timeout", "1", "--start-timeout", "60")
    assert rc == 0, err
    h = result["horizons"]["1000"]
    assert h["failures"] == h["n_origins"] > 0
    capsys.readouterr()
    assert main(["check-predictor", f"{READERS}:Sleep", "--timeout", "1", "--start-timeout", "60"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  forecasts" in out and "TimeoutError" in out


def test_a_cheat_that_reaches_the_truth_is_disqualified_and_never_ranked(home, baseline, capsys, monkeypatch):
    """Code run in this process (the Python API) can reach the harness's truth; its scores give it away."""
    monkeypatch.syspath_prepend(str(HERE))
    from gaming_plugins import Peeker

    from bench import run as api_run
    from bench.task import Task

    result = api_run(Peeker, DATASET, task=Task(DATASET, horizons=(1000,), stride=500))
    assert result.value(1000, "error_rate") < baseline / 10  # it did see the future...
    assert result.disqualified  # ...and its scores say so
    assert any("noise floor" in why for why in result.horizons[1000].verdict.reasons)

    capsys.readouterr()
    assert main(["leaderboard", "--dataset", DATASET, "--json"]) == 0
    board = json.loads(capsys.readouterr().out)
    ranked = [e["model"] for e in board["ranking"]]
    assert "peeker" not in ranked and any(d["model"] == "peeker" for d in board["disqualified"])
    assert ranked[0] == "sw_avg" or ranked[0] not in {"refuser", "quitter", "patcher", "peeker"}
    table = next(t for t in board["tables"] if t["horizon"] == 1000)
    sw_avg = next(r for r in table["rows"] if r["model"] == "sw_avg")
    assert all(r["error_rate"]["all"] >= sw_avg["error_rate"]["all"] - 1e-12 for r in table["rows"]
               if r["model_fingerprint"])  # every submission from a file sits at or below sw_avg


def test_fresh_data_is_trained_at_evaluation_time(home, capsys):
    results = []
    for _ in range(2):
        capsys.readouterr()
        assert main(["run", "--model", "sw_avg", "--dataset", "fresh:tiny-cpu:400", "--horizon", "200",
                     "--stride", "100", "--json", "--no-track"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    first, again = results
    assert first["dataset"].startswith("fresh-tiny-cpu-s") and first["horizons"]["200"]["n_origins"] >= 1
    assert again["dataset"] != first["dataset"]  # a new seed, new data, every time
