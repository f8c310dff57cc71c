"""The data home under concurrency and damage: one store, no lost run, clear errors, a doctor that repairs.

Each case damages a fresh data home the way a crash, a full disk or a careless hand would, then
checks that `run` and `leaderboard` give a clear error or recompute with a warning (never a
traceback or a silently wrong number) and that `doctor --repair` leaves a clean home.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bench import runner
from bench.cli import main
from bench.results import run_folder
from bench.task import Task

REPO = Path(__file__).resolve().parents[2]
DATASET = "tiny-cpu-s1"
RUN = ["run", "--model", "sw_avg", "--dataset", DATASET, "--horizon", "1000", "--stride", "500"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("MOE_LOAD_BENCH_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


def cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_run(capsys) -> dict:
    rc, out, _ = cli(capsys, *RUN, "--json")
    assert rc == 0
    return json.loads(out)


def command(*args) -> tuple[int, str, str]:
    """A command in its own process, as a user runs it (a process keeps its connection to the store it opened)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    p = subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
    return p.returncode, p.stdout, p.stderr


def doctor_clean(capsys) -> None:
    rc, out, err = command("doctor", "--repair", "--json")
    report = json.loads(out)
    assert rc == 0 and report["clean"], (report, err)
    rc, out, _ = command("doctor", "--json")
    assert rc == 0 and json.loads(out)["findings"] == []


def logged_run_keys(home: Path) -> list[str]:
    con = sqlite3.connect(home / "mlflow.db")
    try:
        return [r[0] for r in con.execute("SELECT value FROM tags WHERE key = 'run_key'")]
    finally:
        con.close()


def test_concurrent_runs_in_a_fresh_home_share_one_store(tmp_path):
    """3 trials x 3 processes starting at once on an empty data home: identical runs and different ones."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    for trial in range(3):
        home = tmp_path / f"home{trial}"
        env["MOE_LOAD_BENCH_HOME"] = str(home)
        windows = [100, 100, 200]  # two identical runs and one other
        procs = [subprocess.Popen([sys.executable, "-m", "bench", *RUN, "--param", f"window={w}", "--json"], cwd=REPO,
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in windows]
        outs = [p.communicate(timeout=600) for p in procs]
        assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
        results = [json.loads(o[0]) for o in outs]
        assert results[0]["mlflow_run_id"] == results[1]["mlflow_run_id"]  # the same run, computed and logged once
        keys = logged_run_keys(home)
        assert sorted(keys) == sorted({r["run_key"] for r in results})  # every run logged, none twice


def test_a_run_whose_logging_was_interrupted_is_logged_by_the_next_command(home, capsys, monkeypatch):
    from bench import tracking

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies between writing result.json and logging it

    with monkeypatch.context() as m:
        m.setattr(tracking, "log_result", crash)
        with pytest.raises(KeyboardInterrupt):
            runner.run("sw_avg", DATASET, task=Task(DATASET, horizons=(1000,), stride=500))
    stored = runner.stored_results()
    assert len(stored) == 1 and stored[0].mlflow_run_id is None
    rc, _, err = cli(capsys, "leaderboard", "--json")
    assert rc == 0 and "computed earlier" in err
    assert logged_run_keys(home) == [stored[0].run_key]
    again = one_run(capsys)  # and the run itself is not logged a second time
    assert logged_run_keys(home) == [again["run_key"]]
    doctor_clean(capsys)


def damage_result_empty(home: Path, key: str) -> None:
    (run_folder(key) / "result.json").write_text("{}")


def damage_result_truncated(home: Path, key: str) -> None:
    path = run_folder(key) / "result.json"
    path.write_text(path.read_text()[:200])


def damage_result_flipped(home: Path, key: str) -> None:
    path = run_folder(key) / "result.json"
    doc = json.loads(path.read_text())
    doc["horizons"]["1000"]["error_rate"]["all"] = 0.0001  # the checksum is left as it was
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("damage", [damage_result_empty, damage_result_truncated, damage_result_flipped])
def test_a_damaged_result_is_recomputed_with_a_warning(home, capsys, damage):
    first = one_run(capsys)
    damage(home, first["run_key"])
    rc, out, err = cli(capsys, *RUN, "--json")
    assert rc == 0 and "result.json" in err and "recomputing" in err
    again = json.loads(out)
    assert not again["cached"] and again["horizons"]["1000"]["error_rate"] == first["horizons"]["1000"]["error_rate"]


def test_a_truncated_artifact_is_named_and_the_leaderboard_still_works(home, capsys):
    first = one_run(capsys)
    parquet = run_folder(first["run_key"]) / "origins.parquet"
    parquet.write_bytes(parquet.read_bytes()[:100])
    rc, out, err = cli(capsys, "leaderboard", "--json")
    assert rc == 0 and str(parquet) in err
    assert json.loads(out)["ranking"][0]["model"] == "sw_avg"
    rc, out, _ = cli(capsys, "doctor", "--json")
    assert rc == 1 and any("origins.parquet" in f["problem"] for f in json.loads(out)["findings"])
    doctor_clean(capsys)
    assert one_run(capsys)["horizons"] == first["horizons"]  # recomputed from its journal


def garble(path: Path) -> None:
    path.write_bytes(b"this is not a database" * 100)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:5000])


def directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def empty_tables(path: Path) -> None:
    """A store whose creation stopped halfway (a full disk): some tables, not all."""
    path.unlink()
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE experiments (id INTEGER)")
    con.commit()
    con.close()


@pytest.mark.parametrize("damage", [garble, truncate, directory, empty_tables])
def test_a_broken_store_is_a_clear_error_and_doctor_rebuilds_it(home, capsys, damage):
    first = one_run(capsys)
    store = home / "mlflow.db"
    damage(store)
    for args in (RUN + ["--force"], ["leaderboard"]):  # (a cached, logged run needs no store)
        rc, _, err = cli(capsys, *args)
        assert rc == 1 and str(store) in err and "doctor --repair" in err and "Traceback" not in err
    rc, out, err = command("doctor", "--repair", "--json")
    assert rc == 0, (out, err)
    assert list(home.glob("mlflow.db.broken-*"))  # the old store is kept aside, not deleted
    assert logged_run_keys(home) == [first["run_key"]]  # the computed run is in the new store
    rc, out, _ = command("leaderboard", "--json")
    assert rc == 0 and json.loads(out)["ranking"][0]["model"] == "sw_avg"
    doctor_clean(capsys)


def test_doctor_finds_and_removes_leftovers(home, capsys):
    first = one_run(capsys)
    folder = run_folder(first["run_key"])
    (folder / ".result.json.123.tmp").write_text("{")
    (folder / "chunks").mkdir()
    (runner.runs_dir() / "0123456789abcdef0123").mkdir()
    (home / ".mlflow.db.999.creating").write_bytes(b"")
    rc, out, _ = cli(capsys, "doctor", "--json")
    problems = {Path(f["path"]).name for f in json.loads(out)["findings"]}
    assert rc == 1 and {".result.json.123.tmp", "chunks", "0123456789abcdef0123", ".mlflow.db.999.creating"} <= problems
    doctor_clean(capsys)
    assert one_run(capsys)["cached"]  # the good run is untouched
