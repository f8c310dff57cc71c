"""`python -m bench doctor`: check the data home, and with `repair` put right what can be put right.

What is checked, and what repair does:

- datasets: every stored dataset (card, trace file, shapes, fingerprint) and unfinished saves of
  an import that was killed (:mod:`datasets_registry.registry`). Repair removes the unfinished
  saves; a damaged dataset is reported only (it is the user's data: re-import it).
- runs (``<data home>/runs/<key>/``): a ``result.json`` that cannot be trusted, a damaged journal
  line, a listed artifact that is missing or unreadable, temporary files and chunk folders left by
  a killed run, a run folder with nothing in it. Repair removes what cannot be trusted and the
  leftovers; the run is then recomputed from its journal the next time it is asked for.
- the MLflow store: a store that is not a complete sqlite store, temporary files of a store whose
  creation was interrupted, runs computed for MLflow that never got there. Repair sets a broken
  store aside (``mlflow.db.broken-<time>``), creates a new one and logs every computed run to it,
  and logs the runs that were waiting. Stop `bench ui` first: a process that has the store open
  keeps using the old file until it restarts.
"""

from __future__ import annotations

import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from datasets_registry import registry

from . import runner, tracking
from .evaluate import Journal
from .results import RESULT_FILE, ResultError, RunResult, runs_dir


@dataclass
class Finding:
    """One problem in the data home: where, what, and what repair did about it (None: nothing to do or not run)."""

    path: Path
    problem: str
    repaired: str | None = None

    def to_dict(self) -> dict:
        return {"path": str(self.path), "problem": self.problem, "repaired": self.repaired}


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def check_datasets(repair: bool) -> list[Finding]:
    found = [Finding(p.path, p.problem) for p in registry.check_datasets()]
    leftovers = registry.remove_leftovers() if repair else registry.find_leftovers()
    found += [Finding(p, "an unfinished save of a killed import", "removed" if repair else None) for p in leftovers]
    return found


def _check_run(folder: Path, repair: bool) -> list[Finding]:
    found = []
    journal = folder / "journal.jsonl"
    if journal.exists():
        damage = Journal.scan(journal)[2]
        if damage:
            found.append(Finding(journal, damage, "cut there; recomputed on the next run" if repair else None))
            if repair:
                Journal(journal)  # cuts the journal at its first damaged line
    for tmp in [*folder.glob(".*.tmp"), *folder.glob("*.tmp")]:
        found.append(Finding(tmp, "a temporary file of a killed write", "removed" if repair else None))
        if repair:
            _remove(tmp)
    result_path = folder / RESULT_FILE
    if not result_path.exists():
        if not journal.exists() and not (folder / "chunks").exists():
            found.append(Finding(folder, "a run folder with neither a result nor a journal",
                                 "removed" if repair else None))
            if repair:
                _remove(folder)
        return found
    try:
        result = RunResult.load(result_path)
    except ResultError as exc:
        found.append(Finding(result_path, exc.problem, "removed; recomputed from the journal on the next run"
                             if repair else None))
        if repair:
            _remove(result_path)
        return found
    bad = [name for name in result.artifacts if not (folder / name).exists()]
    if "origins.parquet" in result.artifacts and "origins.parquet" not in bad:
        try:
            tracking.origins_frame(result)
        except ResultError:
            bad.append("origins.parquet")
    if bad:
        found.append(Finding(folder, f"artifacts missing or unreadable: {', '.join(bad)}",
                             "result removed; recomputed from the journal on the next run" if repair else None))
        if repair:
            _remove(result_path)
    if (folder / "chunks").exists():
        found.append(Finding(folder / "chunks", "chunk records of a run that is already merged",
                             "removed" if repair else None))
        if repair:
            _remove(folder / "chunks")
    return found


def check_runs(repair: bool) -> list[Finding]:
    if not runs_dir().is_dir():
        return []
    return [f for folder in sorted(p for p in runs_dir().iterdir() if p.is_dir()) for f in _check_run(folder, repair)]


def check_store(repair: bool, tracking_uri: str | None = None) -> list[Finding]:
    uri = tracking.tracking_uri(tracking_uri)
    path = tracking.sqlite_path(uri)
    found = []
    if path is not None:
        for tmp in path.parent.glob(f".{path.name}.*.creating"):
            found.append(Finding(tmp, "a store whose creation was interrupted", "removed" if repair else None))
            if repair:
                _remove(tmp)
        try:
            tracking.check_store(path)
        except tracking.StoreError as exc:
            finding = Finding(path, str(exc).split(": ", 1)[-1].split(";")[0])
            found.append(finding)
            if not repair:
                return found
            aside = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
            path.rename(aside)
            logged = [runner.log(r.replace(mlflow_run_id=None), tracking_uri) for r in runner.stored_results()
                      if r.mlflow_run_id or (runs_dir() / r.run_key / runner.PENDING_LOG).exists()]
            finding.repaired = f"set aside as {aside.name}; a new store holds the {len(logged)} computed runs"
            return found
    pending = [r for r in runner.stored_results() if (runs_dir() / r.run_key / runner.PENDING_LOG).exists()]
    for r in pending:
        finding = Finding(runs_dir() / r.run_key, "computed for MLflow but never logged")
        if repair:
            finding.repaired = f"logged as {runner.log(r, tracking_uri).mlflow_run_id}"
        found.append(finding)
    return found


def doctor(repair: bool = False, tracking_uri: str | None = None) -> list[Finding]:
    """Every problem found in the data home (with what repair did, when `repair`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the findings say it all, once
        return check_datasets(repair) + check_runs(repair) + check_store(repair, tracking_uri)


__all__ = ["Finding", "doctor", "check_datasets", "check_runs", "check_store"]
