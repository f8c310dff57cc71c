"""Executors and grids: in-process, a local process pool and a real Dask cluster give the same results."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench import executors, grid
from bench.cli import main
from bench.executors import InProcessExecutor, LocalExecutor, RunSpec, run_all
from bench.task import Task
from datasets_registry import registry
from datasets_registry.synthetic import switching_trace

HERE = Path(__file__).resolve().parent
MODELS = HERE / "executor_models.py"
VOLATILE = {"seconds", "cached", "mlflow_run_id", "artifacts", "extras", "code_version", "finished_at", "timings"}
GRID = f"""
datasets: [syn]
models:
  - name: {MODELS}:SlowAverage
    params: {{window: [10, 30], delay: 0.02}}
  - name: ema
    params: {{decay: 0.9}}
  - static
horizons: [50, 100]
stride: 10
min_history: 25
chunk: 8
track: false
"""


@contextlib.contextmanager
def data_home(path: Path):
    """Use `path` as the data home (with the synthetic trace `syn`) in this process."""
    old = os.environ.get("MOE_LOAD_BENCH_HOME")
    os.environ["MOE_LOAD_BENCH_HOME"] = str(path)
    try:
        if not (path / "datasets" / "syn").exists():
            registry.add(switching_trace(records=400, layers=2, experts=8, switch=150, seed=5), "syn")
        yield path
    finally:
        if old is None:
            os.environ.pop("MOE_LOAD_BENCH_HOME", None)
        else:
            os.environ["MOE_LOAD_BENCH_HOME"] = old


def as_dicts(results) -> list[dict]:
    """Results as `--json` gives them (RunResult objects from the library, dicts from the CLI)."""
    return [r if isinstance(r, dict) else r.to_dict() for r in results]


def comparable(results) -> list[dict]:
    """Results without timings and paths, as JSON would give them (tuples become lists)."""
    return json.loads(json.dumps([{k: v for k, v in r.items() if k not in VOLATILE} for r in as_dicts(results)]))


def assert_same_runs(results: list[dict], home: Path, reference) -> None:
    """Same summaries and the same per-origin, per-layer rows as the in-process reference."""
    ref_results, ref_home = reference
    assert comparable(results) == comparable(ref_results)
    for r in as_dicts(results):
        got = pd.read_parquet(home / "runs" / r["run_key"] / "origins.parquet")
        want = pd.read_parquet(ref_home / "runs" / r["run_key"] / "origins.parquet")
        pd.testing.assert_frame_equal(got, want)
        origins = [
            json.loads(line)["origin"]
            for line in (home / "runs" / r["run_key"] / "journal.jsonl").read_text().splitlines()
        ]
        assert origins == sorted(set(origins))  # each origin exactly once
        assert not (home / "runs" / r["run_key"] / "chunks").exists()


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("grid") / "grid.yaml"
    path.write_text(GRID)
    return path


@pytest.fixture(scope="module")
def reference(grid_file, tmp_path_factory):
    """The grid computed in-process, whole runs: (results, data home)."""
    with data_home(tmp_path_factory.mktemp("reference")) as home:
        outcome = run_all(grid.load(grid_file).specs(), InProcessExecutor(), chunk=0)
    assert not outcome.failures and outcome.units == 4
    return outcome.results, home


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster(tmp_path):
    """A Dask scheduler and two single-threaded workers, each its own process on 127.0.0.1."""
    from distributed import Client

    dask = str(Path(sys.executable).parent / "dask")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []
    logs = tmp_path / "dask-logs"
    logs.mkdir()

    def start(name: str, *args: str) -> subprocess.Popen:
        with open(logs / f"{name}.log", "w") as out:
            procs.append(subprocess.Popen([dask, *args], stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path))
        return procs[-1]

    try:
        start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard")
        workers = [
            start(
                f"worker{i}",
                "worker",
                address,
                "--nthreads",
                "1",
                "--no-dashboard",
                "--no-nanny",
                "--death-timeout",
                "30",
                "--local-directory",
                str(tmp_path / f"worker{i}"),
            )
            for i in range(2)
        ]
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=45)
        yield address, workers
    finally:
        for p in reversed(procs):  # workers first, while the scheduler is there to leave
            if p.poll() is None:
                p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)


def test_grid_through_an_address_matches_in_process(cluster, grid_file, reference, tmp_path, capsys):
    address, _ = cluster
    with data_home(tmp_path / "home") as home:
        rc = main(["grid", str(grid_file), "--address", address, "--json"])
        out = json.loads(capsys.readouterr().out)
        assert rc == 0 and not out["failures"]
        assert_same_runs(out["results"], home, reference)
        # a rerun finds every run cached and computes nothing
        rc = main(["grid", str(grid_file), "--address", address, "--json"])
        again = json.loads(capsys.readouterr().out)
    assert rc == 0 and all(r["cached"] for r in again["results"])
    assert comparable(again["results"]) == comparable(out["results"])


def test_a_worker_killed_mid_grid_loses_nothing(cluster, grid_file, reference, tmp_path):
    address, workers = cluster
    by_pid = {p.pid: p for p in workers}
    lost: list[str] = []  # keys the killed worker held

    with data_home(tmp_path / "home") as home, executors.executor("dask", address) as ex:

        def kill_a_busy_worker(done: int, total: int) -> None:
            if lost or done < 1:
                return
            pids = ex.client.run(os.getpid)
            for addr, keys in ex.client.processing().items():
                if keys and pids.get(addr) in by_pid:
                    by_pid[pids[addr]].kill()
                    lost.extend(keys)
                    return

        outcome = run_all(grid.load(grid_file).specs(), ex, chunk=8, progress=kill_a_busy_worker, stall_timeout=60)
        alive = len(ex.client.nthreads())
        assert lost and alive == 1  # a worker with units in hand died
        assert not outcome.failures
        assert_same_runs(outcome.results, home, reference)


def test_chunks_of_origins_give_the_same_results_as_whole_runs(tmp_path):
    task = Task("syn", horizons=(50, 100), stride=10, min_history=25)
    specs = [
        RunSpec.of("sw_avg", "syn", {"window": 20}, task),
        RunSpec.of("ema", "syn", {"decay": 0.8}, task),
        RunSpec.of("sw_sum", "syn", {"window": 30}, task),
        RunSpec.of("last", "syn", None, task),
        RunSpec.of("static", "syn", None, task),
    ]  # static is not replayable: one whole-run unit
    with data_home(tmp_path / "whole"):
        whole = run_all(specs, InProcessExecutor(), chunk=0)
    with data_home(tmp_path / "chunked"):
        chunked = run_all(specs, InProcessExecutor(), chunk=7)
        plan = executors.plan(specs + specs[:1], workers=1, chunk=7)
    assert whole.units == 5 and chunked.units == 4 * 5 + 1  # 33 origins -> 5 chunks of 7
    assert comparable(chunked.results) == comparable(whole.results)
    assert plan.units == [] and len(plan.keys) == 6 and plan.keys[5] == plan.keys[0]  # all cached now


def test_local_process_pool_matches_and_reuses_the_cache(grid_file, reference, tmp_path):
    specs = grid.load(grid_file).specs()
    with data_home(tmp_path / "home") as home, executors.executor("local", workers=2) as ex:
        assert isinstance(ex, LocalExecutor)
        outcome = run_all(specs, ex, chunk=8, stall_timeout=60)
        assert not outcome.failures
        assert_same_runs(outcome.results, home, reference)
        again = run_all(specs, ex, stall_timeout=60)
    assert again.units == 0 and all(r.cached for r in again.results)


def test_a_failing_unit_is_retried_then_reported_and_the_rest_completes(tmp_path, monkeypatch):
    """A unit that raises (a full disk, a lost file: not a predictor's failure, which is a charged origin)."""
    from bench import runner

    real = runner.compute

    def compute(model, dataset, **options):
        if "Broken" in str(model):
            raise RuntimeError("broken on purpose")
        return real(model, dataset, **options)

    monkeypatch.setattr(runner, "compute", compute)
    task = Task("syn", horizons=(50,), stride=50, min_history=25)
    specs = [RunSpec.of(f"{MODELS}:Broken", "syn", None, task), RunSpec.of("sw_avg", "syn", None, task)]
    with data_home(tmp_path / "home"):
        outcome = run_all(specs, InProcessExecutor(), retries=1)
    assert outcome.results[0] is None and outcome.results[1].horizons
    assert list(outcome.failures.values()) == ["RuntimeError: broken on purpose"]


def test_grid_file_expands_the_cartesian_product():
    config = grid.parse(
        {
            "datasets": ["a", "b"],
            "models": [
                {"name": "sw_avg", "params": {"window": [1, 2, 3]}},
                {"name": "sw_sum", "params": {"window": [5, 6], "rebalance_every": 0}},
                "last",
            ],
            "horizons": [[100], [200, 300]],
            "stride": 50,
            "executor": "dask",
            "address": "tcp://h:1",
            "chunk": "auto",
        }
    )
    specs = config.specs()
    assert len(specs) == 2 * (3 + 2 + 1) * 2
    assert {s.task.horizons for s in specs} == {(100,), (200, 300)} and all(s.task.stride == 50 for s in specs)
    assert config.chunk is None and config.address == "tcp://h:1"
    assert dict(specs[2].params) == {"window": 2}
    with pytest.raises(ValueError, match="unknown key"):
        grid.parse({"datasets": ["a"], "models": ["last"], "horizon": 5})
    with pytest.raises(ValueError, match="stride"):
        grid.parse({"datasets": ["a"], "models": ["last"], "stride": 0})


def test_optuna_trials_run_in_parallel_workers_on_one_study(tmp_path, monkeypatch):
    import optuna

    monkeypatch.syspath_prepend(str(HERE))  # spawned workers import the objective by module name
    import executor_models

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="s", storage=storage)
    with executors.executor("local", workers=2) as ex:
        assert executors.optimize_parallel(ex, executor_models.quadratic, storage, "s", n_trials=7) == 7
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert len(trials) == 7 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def test_a_tracked_grid_logs_each_run_once_from_the_driver(tmp_path, capsys, monkeypatch):
    # mlflow.set_tracking_uri also sets $MLFLOW_TRACKING_URI, which bench.tracking then prefers:
    # set it here so that it is restored after the test and later tests log to their own stores
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(
        "datasets: [syn]\nmodels:\n  - name: sw_avg\n    params: {window: [10, 20]}\n"
        "horizons: [50]\nstride: 50\nmin_history: 25\nexecutor: inprocess\n"
    )
    with data_home(tmp_path / "home"):
        assert main(["grid", str(cfg), "--json"]) == 0
        first = json.loads(capsys.readouterr().out)
        assert main(["grid", str(cfg), "--json"]) == 0
        again = json.loads(capsys.readouterr().out)
    ids = [r["mlflow_run_id"] for r in first["results"]]
    assert all(ids) and len(set(ids)) == 2
    assert [r["mlflow_run_id"] for r in again["results"]] == ids and all(r["cached"] for r in again["results"])
    assert first["leaderboard"] is None or "syn" in json.dumps(first["leaderboard"])


def test_merging_takes_each_origin_of_a_chunk_exactly_once():
    first, second = executors.Unit("chunk", "k:0-2", None, (0, 2)), executors.Unit("chunk", "k:2-4", None, (2, 4))
    merged: dict = {}
    executors._merge(merged, [{"origin": 5}, {"origin": 6}], first)
    assert sorted(merged) == [5, 6]
    with pytest.raises(executors.MergeError, match="twice"):
        executors._merge(merged, [{"origin": 6}, {"origin": 7}], second)
    with pytest.raises(executors.MergeError, match="1 records for 2 origins"):
        executors._merge({}, [{"origin": 1}], first)
    with pytest.raises(executors.MergeError):
        executors._merge({}, [{"origin": 1}, {"origin": 1}], first)
