"""Several processes writing one dataset id at once: distinct versions, one public build, nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from datasets_registry import registry
from datasets_registry.sources import PUBLIC

# Each worker imports the command line, says it is ready, and starts only when every worker is: the
# writers then race for the same id within milliseconds. Its saves take half a second more (a slow
# disk), so that every writer is still busy when the others look for a free version or a built copy.
WORKER = """
import sys, time
from pathlib import Path
from bench.cli import main
from datasets_registry import storage

fast_save = storage.save
storage.save = lambda *a, **k: time.sleep(0.5) or fast_save(*a, **k)
Path(sys.argv[1]).touch()
while not Path(sys.argv[2]).exists():
    time.sleep(0.002)
sys.exit(main(sys.argv[3:]))
"""


def run_at_once(argvs: list[list[str]], tmp_path: Path, env: dict) -> list[tuple[int, str, str]]:
    """Run `python -m bench` argument lists in separate processes started at the same moment."""
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(len(argvs))]
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(r), str(go), *argv], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r, argv in zip(ready, argvs)]
    try:
        deadline = time.monotonic() + 300
        while not all(r.exists() for r in ready):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a worker did not start"
            time.sleep(0.01)
        go.touch()
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs)]


def test_concurrent_imports_of_one_id_get_distinct_versions(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("MOE_LOAD_BENCH_HOME", str(home))
    n = 4
    rng = np.random.default_rng(0)
    argvs = []
    for i in range(n):
        np.savez(tmp_path / f"t{i}.npz", counts=rng.integers(1, 100, (20, 2, 4)))
        argvs.append(["datasets", "import", str(tmp_path / f"t{i}.npz"), "--format", "npz", "--id", "same", "--json"])
    results = run_at_once(argvs, tmp_path, dict(os.environ))
    assert all(rc == 0 for rc, _, _ in results), [err for _, _, err in results]
    stored = [json.loads(out) for _, out, _ in results]
    assert sorted(s["version"] for s in stored) == list(range(1, n + 1))
    assert sorted(p.name for p in (home / "datasets" / "same").iterdir()) == [f"v{v}" for v in range(1, n + 1)]
    for i, s in enumerate(stored):  # each version holds the file its process imported
        counts = np.load(tmp_path / f"t{i}.npz")["counts"]
        np.testing.assert_array_equal(registry.load(f"same@{s['version']}").counts, counts)
    assert registry.check_datasets(builtin=False) == [] and registry.find_leftovers() == []


def test_concurrent_first_uses_of_a_public_dataset_build_it_once(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("MOE_LOAD_BENCH_HOME", str(home))
    # a small stand-in for the SmartMoE-AE tables: the card's 24 layers x 32 experts, two iterations, one rank
    tables = tmp_path / "moe_trace"
    tables.mkdir()
    rng = np.random.default_rng(1)
    for it in (1, 11):
        lines = [f"{layer}:{json.dumps([rng.integers(1, 50, 32).tolist()])}" for layer in range(24)]
        (tables / f"table_iter{it}_rank0.log").write_text("\n".join(lines) + "\n")
    monkeypatch.setenv(PUBLIC["smartmoe-ae"].env_var, str(tables))
    results = run_at_once([["datasets", "show", "smartmoe-ae", "--json"]] * 3, tmp_path, dict(os.environ))
    assert all(rc == 0 for rc, _, _ in results), [err for _, _, err in results]
    shown = [json.loads(out) for _, out, _ in results]
    assert len({s["fingerprint"] for s in shown}) == 1 and shown[0]["records"] == 2
    assert [p.name for p in (home / "datasets" / "smartmoe-ae").iterdir()] == ["v1"]
    assert registry.load("smartmoe-ae").fingerprint == shown[0]["fingerprint"]
