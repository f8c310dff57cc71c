"""Ids and versions, unfinished saves, the per-dataset check, and `datasets list` with a broken dataset."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from datasets_registry import registry
from datasets_registry.trace import Card, Trace

PACKAGE = Path(registry.__file__).parent


@pytest.fixture
def home(monkeypatch, tmp_path):
    """An empty data home for the test."""
    monkeypatch.setenv("MOE_LOAD_BENCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def small(seed=0):
    rng = np.random.default_rng(seed)
    return Trace.from_arrays(rng.integers(1, 100, (5, 2, 3)), np.arange(5), Card(id="whatever"))


# --------------------------------------------------------------------------- ids


@pytest.mark.parametrize("argv, phrase", [
    (["--id", "abc\n"], "invalid dataset id 'abc\\n'"),
    (["--id", "foo@3"], "invalid dataset id 'foo@3'"),
    (["--id", "a\x01b"], "invalid dataset id"),
    (["--id", "Upper"], "invalid dataset id"),
    (["--id", "x" * 300], "at most 100"),
    (["--id", ".hidden"], "invalid dataset id"),
    (["--id", "ok", "--version", "-1"], "invalid version -1"),
    (["--id", "ok", "--version", "0"], "invalid version 0"),
    (["--id", "smartmoe-ae"], "'smartmoe-ae' is the id of a public dataset"),
    (["--id", registry.DEFAULT_DATASET], "is the id of a built-in dataset"),
])
def test_bad_ids_are_refused_and_nothing_is_stored(home, tmp_path, capsys, argv, phrase):
    np.savez(tmp_path / "t.npz", counts=small().counts)
    rc = main(["datasets", "import", str(tmp_path / "t.npz"), "--format", "npz", *argv])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: ") and phrase in err, err
    assert not (home / "datasets").exists() or list((home / "datasets").iterdir()) == []


def test_id_rules():
    assert registry.parse_id("a.b_c-1@v2") == ("a.b_c-1", 2)
    assert registry.parse_id("x" * 100) == ("x" * 100, None)
    for ref in ("abc\n", "x" * 101, "a@0", "a@-1", "a@", "a@1@2", "a@١", "a b"):
        with pytest.raises(ValueError):
            registry.parse_id(ref)
    with pytest.raises(ValueError, match="public dataset"):
        registry.add(small(), "smartmoe-ae")


def test_version_given_twice_is_a_clear_error(home):
    registry.add(small(0), "mine", 3)
    with pytest.raises(FileExistsError, match="'mine' already has version 3"):
        registry.add(small(1), "mine", 3)
    assert registry.add(small(1), "mine").version == 4
    assert [e.version for e in registry.entries() if e.id == "mine"] == [3, 4]


# --------------------------------------------------------------------------- unfinished saves

KILLED_WRITER = """
import os, signal, sys
import numpy as np
from datasets_registry import registry
from datasets_registry.trace import Card, Trace

def die(path, **arrays):
    open(path, "wb").close()  # the 0-byte trace.npz a kill -9 leaves
    os.kill(os.getpid(), signal.SIGKILL)

np.savez_compressed = die
registry.add(Trace.from_arrays(np.ones((2, 1, 2)), card=Card(id="x")), "killed")
"""


def test_a_killed_import_leaves_a_leftover_that_is_found_and_removed(home):
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER], env={**os.environ}, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    dataset = home / "datasets" / "killed"
    [tmp] = [p for p in dataset.iterdir()]
    assert tmp.name.startswith(".v1.") and (tmp / "trace.npz").stat().st_size == 0
    # a save in progress in this (live) process, named as storage.save names it
    live = Path(tempfile.mkdtemp(prefix=".v2.", suffix=f".{os.getpid()}.saving", dir=dataset))
    assert registry.find_leftovers() == [tmp]  # the writer is dead: found at once
    assert registry.remove_leftovers() == [tmp]
    assert not tmp.exists() and live.exists()
    assert registry.find_leftovers() == []
    old = time.time() - 3600
    os.utime(live, (old, old))
    assert registry.find_leftovers() == [live]  # untouched for an hour: its writer is gone whatever its pid says
    with pytest.raises(registry.DatasetNotFound):
        registry.resolve("killed")


def test_leftovers_of_a_dataset_being_written_are_left_alone(home):
    dataset = home / "datasets" / "busy"
    (dataset / ".v1.abcdefgh").mkdir(parents=True)  # the form of saves before process ids were recorded
    old = time.time() - 3600
    os.utime(dataset / ".v1.abcdefgh", (old, old))
    from datasets_registry.home import dataset_lock

    with dataset_lock("busy"):
        assert registry.find_leftovers() == []
    assert registry.find_leftovers() == [dataset / ".v1.abcdefgh"]
    assert registry.find_leftovers(min_age_s=7200) == []


# --------------------------------------------------------------------------- the per-dataset check and the listing


def break_datasets(home) -> dict[str, Path]:
    """Store good datasets, then break some in the ways a disk or a hand editing them does."""
    for seed, name in enumerate(("good", "bad-card", "bad-npz", "tampered", "moved", "no-card")):
        registry.add(small(seed), name)
    d = home / "datasets"
    card = json.loads((d / "bad-card" / "v1" / "card.json").read_text())
    (d / "bad-card" / "v1" / "card.json").write_text(json.dumps({**card, "model": 5}))
    (d / "bad-npz" / "v1" / "trace.npz").write_bytes(b"PK\x03\x04 truncated")
    tr = small(1)
    np.savez_compressed(d / "tampered" / "v1" / "trace.npz", counts=tr.counts + 1, steps=tr.steps)
    (d / "moved" / "v1").rename(d / "moved" / "v2")
    (d / "no-card" / "v1" / "card.json").unlink()
    return {"bad-card": d / "bad-card" / "v1" / "card.json", "bad-npz": d / "bad-npz" / "v1" / "trace.npz",
            "tampered": d / "tampered" / "v1" / "trace.npz", "moved": d / "moved" / "v2" / "card.json",
            "no-card": d / "no-card" / "v1" / "card.json"}


def test_check_datasets_reports_each_broken_dataset_with_its_path(home):
    broken = break_datasets(home)
    problems = registry.check_datasets(builtin=False)
    by_path = {p.path: p.problem for p in problems}
    assert set(by_path) == set(broken.values()), problems
    assert "card field 'model' must be dict or null, got int" in by_path[broken["bad-card"]]
    assert "zip" in by_path[broken["bad-npz"]]
    assert "does not match" in by_path[broken["tampered"]]
    assert "card says moved@1 but the folder holds moved@2" in by_path[broken["moved"]]
    assert "missing card.json" in by_path[broken["no-card"]]
    assert all("\n" not in p.problem for p in problems)


def test_builtin_datasets_pass_the_check():
    assert [p for p in registry.check_datasets() if registry.BUILTIN_DIR in p.path.parents] == []


def test_list_shows_good_datasets_and_the_broken_ones_with_their_problem(home, capsys, monkeypatch):
    break_datasets(home)
    monkeypatch.setenv("COLUMNS", "300")  # a wide table, so that rich wraps no cell
    assert main(["datasets", "list", "--json"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["good"]["error"] is None and rows["good"]["records"] == 5
    assert rows[registry.DEFAULT_DATASET]["error"] is None
    assert "card field 'model'" in rows["bad-card"]["error"] and rows["bad-card"]["records"] is None
    assert "zip" in rows["bad-npz"]["error"]
    assert "no-card" not in rows  # a version folder without a card is not a dataset; check_datasets reports it
    assert main(["datasets", "list"]) == 0
    table = capsys.readouterr().out
    assert "problem" in table.splitlines()[1]  # the header row
    assert re.search(r"^good +1 user +5×2×3 +0\.\.4 unknown *$", table, re.M), table
    assert re.search(r"^bad-card +1 user +-×-×- +- - +\S", table, re.M), table


# --------------------------------------------------------------------------- module structure


def imported_modules(path: Path) -> set[str]:
    """Modules a file imports, relative ones resolved against the package (at any nesting)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = "datasets_registry" if node.level else ""
            mod = ".".join(filter(None, [base, node.module]))
            out |= {mod} | {f"{mod}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


def test_sources_does_not_import_the_registry():
    """The registry uses the public sources; the sources must not reach back (no import cycle)."""
    for name in ("sources.py", "home.py", "guards.py", "storage.py", "trace.py"):
        assert "datasets_registry.registry" not in imported_modules(PACKAGE / name), name
