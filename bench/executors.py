"""Running many benchmark units: in this process, on all local cores, or on a Dask cluster.

Units
-----
A *run* (model, params, dataset, task, placement) is one unit of work; its key is the runner's
run key (:func:`bench.runner.run_key`) and its result lives under ``<data home>/runs/<key>/``.
A finished run (``result.json``) is never computed again; a run with a journal resumes from it.

Inside a run, the rolling origins can be split into *chunks* evaluated independently when the
task refits at every origin (``refit: every``) and the predictor is ``replayable`` (a predictor
attribute, see :class:`models.base.Predictor`: its forecasts depend only on the history it was
shown, however that history was split into ``observe`` calls). A chunk shows the predictor the
whole past at its first origin, then proceeds origin by origin, exactly as a resumed run does.
Among the built-in models ``sw_avg``, ``last``, ``ema`` and ``sw_sum`` without rebalancing are
replayable; ``static`` is not (its running sum would be added in another order). A chunk's key
is ``<run key>:<first>-<end>`` and its records are kept in ``runs/<key>/chunks/`` (a lost chunk
resumes from them). When every chunk of a run is back, the driver merges their records by origin
(each origin exactly once, or the run fails loudly), and a last unit writes the run's journal and
computes the result from it.

Executors
---------
- ``inprocess``: one unit after the other, here (tests, tiny runs, debugging);
- ``local``: a pool of processes, one per core (``concurrent.futures``, spawn);
- ``dask``: a Dask ``LocalCluster`` (one single-threaded worker process per core), or with an
  address (``tcp://host:8786``) an existing scheduler and its workers.

Workers compute and write files only; MLflow logging happens in the driver
(:func:`bench.runner.log`). The driver's ``MOE_LOAD_BENCH_*`` environment travels with every
unit and is set in the worker while the unit runs, so remote workers must see the data home at
the same path (a shared filesystem) and have this package (and any ``file.py:Class`` model) at
hand. A unit that raises or whose worker dies is submitted again (``retries`` times), then
reported as failed; nothing is dropped silently.

:func:`optimize_parallel` runs Optuna workers on an executor, sharing one study through its
storage (SQLite for one machine, a server database across machines).
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import shutil
import sys
import time
from collections import Counter, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Container, Sequence

from models.processes import die_with_parent

from .results import RunResult
from .task import Task, rolling_origins

EXECUTORS = ("inprocess", "local", "dask")


# ---- the environment a worker needs ---------------------------------------------------------


def worker_env() -> dict[str, str]:
    """The driver's settings that a worker must share: data home, dataset sources, telemetry."""
    return {k: v for k, v in os.environ.items() if k.startswith("MOE_LOAD_BENCH_") or k == "MLFLOW_DISABLE_TELEMETRY"}


@contextlib.contextmanager
def _environment(env: dict[str, str]):
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---- units ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """One benchmark run: what :func:`bench.runner.compute` takes."""

    model: str
    dataset: str
    params: tuple[tuple[str, Any], ...] = ()  # sorted (name, value) pairs
    task: Task | None = None
    placement: str | None = None

    @classmethod
    def of(
        cls,
        model: str,
        dataset: str,
        params: dict[str, Any] | None = None,
        task: Task | None = None,
        placement: str | None = None,
    ) -> "RunSpec":
        return cls(model, dataset, tuple(sorted((params or {}).items())), task, placement)

    def kwargs(self) -> dict[str, Any]:
        return {"params": dict(self.params), "task": self.task, "placement": self.placement}

    def prepare(self):
        from . import runner

        return runner.prepare(self.model, self.dataset, **self.kwargs())


def chunk_path(folder: Path, span: tuple[int, int]) -> Path:
    return folder / "chunks" / f"{span[0]:06d}-{span[1]:06d}.jsonl"


def run_unit(spec: RunSpec, env: dict[str, str], track: bool = False) -> RunResult:
    """A whole run (resuming from its journal if it has one); `track` marks it as waiting for MLflow."""
    from . import runner

    with _environment(env):
        return runner.compute(spec.model, spec.dataset, track=track, **spec.kwargs())


def chunk_unit(spec: RunSpec, env: dict[str, str], span: tuple[int, int]) -> dict[str, Any]:
    """Origins ``span[0]..span[1]-1`` of a run: ``{"records": journal records, "seconds": time}``."""
    from .evaluate import Journal, evaluate

    with _environment(env):
        prep = spec.prepare()
        path = chunk_path(prep.folder, span)
        try:
            ev = evaluate(
                prep.trace, prep.predictor, prep.task, prep.training, scorers=prep.scorers, journal=path, span=span
            )
        finally:
            prep.close()
        return {"records": sorted(Journal(path).done.values(), key=lambda r: r["origin"]), "seconds": ev.seconds}


def merge_unit(
    spec: RunSpec, env: dict[str, str], records: list[dict], seconds: float = 0.0, track: bool = False
) -> RunResult:
    """Write a chunked run's journal from its merged records, then compute its result from it.

    The result's ``seconds`` adds the chunks' evaluation time (`seconds`) to the merge's own.
    """
    from . import runner
    from .evaluate import Journal

    origins = [r["origin"] for r in records]
    if origins != sorted(set(origins)):
        raise RuntimeError(f"merged records of {spec} are not one per origin in order")
    with _environment(env):
        folder = spec.prepare().folder
        Journal.replace(folder / "journal.jsonl", records)
        result = runner.compute(spec.model, spec.dataset, track=track, **spec.kwargs())
        if not result.cached:
            result = result.replace(seconds=round(result.seconds + seconds, 3))
            result.save(folder)
        shutil.rmtree(folder / "chunks", ignore_errors=True)
        return result


def piece_unit(fn: Callable, args: tuple, env: dict[str, str]):
    """One piece of a run evaluated in pieces: ``fn(*args)`` of :mod:`bench.sharded` in the driver's environment
    (it opens the stored dataset and reads its own chunks)."""
    with _environment(env):
        return fn(*args)


def origin_count(trace, task: Task) -> int:
    """How many origins a run evaluates (the union over horizons), as :func:`bench.evaluate.evaluate` does."""
    return len(set().union(*(o.records.tolist() for o in rolling_origins(trace.steps, task).values())))


# ---- executors ------------------------------------------------------------------------------


class InProcessExecutor:
    """Runs each unit here, when the driver waits for it (in submission order)."""

    name = "inprocess"
    workers = 1

    def __init__(self):
        self._queue: deque[tuple[Future, Callable, tuple]] = deque()

    def submit(self, fn: Callable, *args, key: str | None = None) -> Future:
        fut: Future = Future()
        self._queue.append((fut, fn, args))
        return fut

    def wait_any(self, pending: Container, timeout: float | None = None) -> set:
        """Run queued units until one of `pending` (a set or dict of futures) is done; return it."""
        while self._queue:
            fut, fn, args = self._queue.popleft()
            try:
                fut.set_result(fn(*args))
            except Exception as exc:  # noqa: BLE001 - the driver decides what a failure means
                fut.set_exception(exc)
            if fut in pending:
                return {fut}
        raise RuntimeError("waiting for units that were not submitted here")

    def close(self, cancel: bool = False) -> None:
        self._queue.clear()


class _Streaming:
    """Finished futures arrive in a queue through done-callbacks, so a wait costs O(1) per unit."""

    def __init__(self):
        self._done: queue.SimpleQueue = queue.SimpleQueue()

    def _watch(self, fut):
        fut.add_done_callback(self._done.put)
        return fut

    def wait_any(self, pending: Container, timeout: float | None = None) -> set:
        """The finished futures among `pending` (a set or dict), at least one; TimeoutError after
        `timeout` seconds without one. Finished futures nobody waits for any more are dropped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:  # in slices, so that Ctrl-C is seen at once wherever a lock wait is not interruptible
                done = {
                    self._done.get(timeout=0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic())))
                }
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"no unit finished in {timeout} s") from None
                continue
            while not self._done.empty():
                done.add(self._done.get())
            done = {f for f in done if f in pending}
            if done:
                return done


class LocalExecutor(_Streaming):
    """A process pool on this machine, one worker per core by default; a broken pool is replaced."""

    name = "local"

    def __init__(self, workers: int | None = None):
        super().__init__()
        self.workers = workers or len(os.sched_getaffinity(0))
        self._pool = self._new_pool()

    def _new_pool(self):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=die_with_parent,
            initargs=(os.getpid(),),
        )

    def submit(self, fn: Callable, *args, key: str | None = None):
        from concurrent.futures.process import BrokenProcessPool

        try:
            return self._watch(self._pool.submit(fn, *args))
        except BrokenProcessPool:  # a worker died: its units fail and are resubmitted to a new pool
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            return self._watch(self._pool.submit(fn, *args))

    def close(self, cancel: bool = False) -> None:
        """Shut the pool down; with `cancel` (an error or Ctrl-C in the driver) stop the running units too."""
        if cancel:  # a unit stopped midway keeps its journal; a rerun resumes it
            for proc in list((getattr(self._pool, "_processes", None) or {}).values()):
                proc.terminate()
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor(_Streaming):
    """Dask distributed: a LocalCluster of single-threaded worker processes, or `address`'s cluster."""

    name = "dask"

    def __init__(self, address: str | None = None, workers: int | None = None, timeout: float = 30):
        import logging

        from distributed import Client, LocalCluster

        super().__init__()
        self.cluster = None
        if address:
            self.client = Client(address, timeout=timeout)
        else:
            import dask

            # the workers' statistical profiler samples every task's stack every 10 ms: ~20% more
            # CPU on this Python-heavy work, and nobody looks at its dashboard here
            with dask.config.set({"distributed.worker.profile.enabled": False}):
                self.cluster = LocalCluster(
                    n_workers=workers or len(os.sched_getaffinity(0)),
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                )
            self.client = Client(self.cluster)
        if address:
            self.client.wait_for_workers(1, timeout=timeout)
            self._check_data_home()
        self.workers = max(1, sum(self.client.nthreads().values()))

    def _check_data_home(self) -> None:
        from datasets_registry.registry import data_home

        home = str(data_home())
        seen = self.client.run(os.path.isdir, home)
        blind = [w for w, ok in seen.items() if not ok]
        if blind:
            print(
                f"warning: workers {', '.join(blind)} do not see the data home {home}; "
                "give them the same path on a shared filesystem",
                file=sys.stderr,
            )

    def submit(self, fn: Callable, *args, key: str | None = None):
        return self._watch(self.client.submit(fn, *args, key=key, pure=False))

    def close(self, cancel: bool = False) -> None:
        self.client.close()  # a remote cluster drops the released units; a LocalCluster stops its workers
        if self.cluster is not None:
            self.cluster.close()


def make_executor(name: str = "local", address: str | None = None, workers: int | None = None):
    """An executor by name; an address implies Dask."""
    if address and name not in ("dask", None):
        raise ValueError(f"--address needs --executor dask, not {name!r}")
    if address or name == "dask":
        return DaskExecutor(address, workers)
    if name == "local":
        return LocalExecutor(workers)
    if name == "inprocess":
        return InProcessExecutor()
    raise ValueError(f"unknown executor {name!r}; choose from {', '.join(EXECUTORS)}")


@contextlib.contextmanager
def executor(name: str = "local", address: str | None = None, workers: int | None = None):
    ex = make_executor(name, address, workers)
    try:
        yield ex
    except BaseException:
        ex.close(cancel=True)
        raise
    ex.close()


# ---- planning and driving -------------------------------------------------------------------


@dataclass
class Unit:
    kind: str  # "run" | "chunk" | "merge"
    key: str
    spec: RunSpec
    span: tuple[int, int] | None = None


@dataclass
class Plan:
    """What a list of runs needs: the units to compute now, and the runs already finished."""

    keys: list[str]  # run key of each spec, in order
    specs: dict[str, RunSpec]  # run key -> spec (identical specs collapse)
    cached: dict[str, RunResult]  # run key -> stored result
    units: list[Unit] = field(default_factory=list)
    chunks: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # run key -> spans

    @property
    def total(self) -> int:
        """Units to run, counting the merge unit of each chunked run."""
        return len(self.units) + len(self.chunks)


def chunk_spans(n: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def plan(
    specs: Sequence[RunSpec], workers: int = 1, chunk: int | None = None, force: bool = False, min_chunk: int = 4
) -> Plan:
    """Keys, cache look-ups and units for `specs`.

    `chunk` is origins per chunk (0: whole runs; None: enough chunks for about four units per
    worker, at least `min_chunk` origins each, when the runs alone are fewer).
    """
    from . import runner

    keys, by_key, cached, todo = [], {}, {}, []
    for spec in specs:
        prep = spec.prepare()
        prep.close()  # only its key, folder and whether it is replayable are needed here
        keys.append(prep.key)
        if prep.key in by_key:
            continue
        by_key[prep.key] = spec
        if force and prep.folder.exists():
            shutil.rmtree(prep.folder)
        stored = runner.cached_result(prep.folder)
        if stored is not None:
            cached[prep.key] = stored
            continue
        chunkable = (
            prep.task.refit == "every"
            and bool(getattr(prep.predictor, "replayable", False))
            and not (prep.folder / "journal.jsonl").exists()
        )
        todo.append((prep.key, spec, origin_count(prep.trace, prep.task) if chunkable else 0))
    out = Plan(keys, by_key, cached)
    target = 4 * workers
    for key, spec, n in todo:
        size = chunk
        if size is None:
            size = (
                0
                if workers <= 1 or len(todo) >= target
                else max(min_chunk, math.ceil(n / math.ceil(target / len(todo))))
            )
        if n and size and n > size:
            out.chunks[key] = chunk_spans(n, size)
            out.units += [Unit("chunk", f"{key}:{a}-{b}", spec, (a, b)) for a, b in out.chunks[key]]
        else:
            out.units.append(Unit("run", key, spec))
    return out


@dataclass
class Outcome:
    results: list[RunResult | None]  # one per spec, in order; None where the run failed
    failures: dict[str, str]  # unit key -> error
    units: int  # units computed (not counting cached runs)


class MergeError(RuntimeError):
    """A chunk's records do not cover its origins exactly once."""


def _merge(merged: dict[int, dict], records: list[dict], unit: Unit) -> None:
    """Add a chunk's records to its run's, by origin: each of the chunk's origins exactly once."""
    if len(records) != unit.span[1] - unit.span[0] or len({r["origin"] for r in records}) != len(records):
        raise MergeError(f"chunk {unit.key} returned {len(records)} records for {unit.span[1] - unit.span[0]} origins")
    twice = sorted(r["origin"] for r in records if r["origin"] in merged)
    if twice:
        raise MergeError(f"origins {twice} of run {unit.key.split(':')[0]} came back twice")
    merged.update((r["origin"], r) for r in records)


def run_all(
    specs: Sequence[RunSpec],
    ex,
    *,
    chunk: int | None = None,
    force: bool = False,
    retries: int = 2,
    track: bool = False,
    tracking_uri: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_result: Callable[[RunResult], None] | None = None,
    stall_timeout: float | None = None,
) -> Outcome:
    """Compute `specs` on executor `ex`, streaming results back as they finish.

    Chunk records are merged by origin in the driver (each origin exactly once); a unit that
    fails is submitted again up to `retries` times, then reported in ``Outcome.failures``.
    With `track`, each result not yet in MLflow is logged here, in the driver. `stall_timeout`
    bounds the wait for the next unit (TimeoutError), e.g. when a cluster has lost all workers.
    """
    from . import runner

    p = plan(specs, ex.workers, chunk, force)
    env = worker_env()
    results: dict[str, RunResult] = {}
    failures: dict[str, str] = {}
    attempts: Counter = Counter()
    merged: dict[str, dict[int, dict]] = {k: {} for k in p.chunks}
    chunk_seconds: Counter = Counter()
    spans_left: dict[str, set] = {k: set(v) for k, v in p.chunks.items()}
    pending: dict[Any, tuple[Unit, tuple]] = {}
    done_units = 0

    def submit(unit: Unit, *extra) -> None:
        fn = {"run": run_unit, "chunk": chunk_unit, "merge": merge_unit}[unit.kind]
        args = (unit.spec, env) + {"run": (track,), "chunk": (unit.span,), "merge": extra + (track,)}[unit.kind]
        pending[ex.submit(fn, *args, key=f"{unit.kind}-{unit.key}-{attempts[unit.key]}")] = (unit, extra)

    def finish(key: str, result: RunResult) -> None:
        if track and not result.mlflow_run_id:
            result = runner.log(result, tracking_uri)
        results[key] = result
        if on_result:
            on_result(result)

    for key, result in p.cached.items():
        finish(key, result)
    for unit in p.units:
        submit(unit)
    if progress:
        progress(0, p.total)
    while pending:
        for fut in ex.wait_any(pending, stall_timeout):
            unit, extra = pending.pop(fut)
            try:
                value = fut.result()
            except Exception as exc:  # noqa: BLE001 - retried, then reported
                attempts[unit.key] += 1
                if attempts[unit.key] <= retries:
                    submit(unit, *extra)
                else:
                    failures[unit.key] = f"{type(exc).__name__}: {exc}"
                    spans_left.pop(unit.key.split(":")[0], None)
                    done_units += 1
                continue
            done_units += 1
            if unit.kind == "chunk":
                run_key = unit.key.split(":")[0]
                if unit.span not in spans_left.get(run_key, ()):
                    continue  # a duplicate completion of a span already merged (or of a failed run)
                spans_left[run_key].discard(unit.span)
                try:
                    _merge(merged[run_key], value["records"], unit)
                except MergeError as exc:  # the run is reported failed, never stored half-merged
                    failures[run_key] = f"MergeError: {exc}"
                    spans_left.pop(run_key)
                    continue
                chunk_seconds[run_key] += value["seconds"]
                if not spans_left[run_key]:
                    by_origin = merged.pop(run_key)
                    records = [by_origin[o] for o in sorted(by_origin)]
                    submit(Unit("merge", run_key, unit.spec), records, chunk_seconds[run_key])
            else:
                finish(unit.key, value)
            if progress:
                progress(done_units, p.total)
    return Outcome([results.get(k) for k in p.keys], failures, len(p.units))


# ---- Optuna ---------------------------------------------------------------------------------


def _optimize(
    storage: str, study_name: str, objective: Callable, n_trials: int, env: dict[str, str], options: dict
) -> int:
    import optuna

    with _environment(env):
        optuna.load_study(study_name=study_name, storage=storage).optimize(objective, n_trials=n_trials, **options)
    return n_trials


def optimize_parallel(
    ex, objective: Callable, storage: str, study_name: str, n_trials: int, workers: int | None = None, **options: Any
) -> int:
    """Run `n_trials` trials of an existing study on `workers` optimize workers of executor `ex`.

    Each worker calls ``optuna.load_study(study_name, storage).optimize(objective, n_trials=k)``;
    they share the study through `storage`, so it must be a database every worker reaches: an
    absolute ``sqlite:////path/study.db`` on one machine (or a shared filesystem), a server
    database (``postgresql://...``, ``mysql://...``) across machines. `objective` must be
    picklable (a module-level function or an instance of a module-level class). `options` go to
    ``Study.optimize`` (e.g. ``catch=(Exception,)`` so that a failed trial does not end its
    worker). Returns the number of trials run; raises the first worker failure.
    """
    workers = max(1, min(workers or ex.workers, n_trials))
    shares = [n_trials // workers + (i < n_trials % workers) for i in range(workers)]
    env = worker_env()
    futs = [
        ex.submit(
            _optimize, storage, study_name, objective, k, env, options, key=f"optuna-{study_name}-{i}-{os.getpid()}"
        )
        for i, k in enumerate(shares)
    ]
    total, pending = 0, set(futs)
    while pending:
        for fut in ex.wait_any(pending):
            pending.discard(fut)
            total += fut.result()
    return total
