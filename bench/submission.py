"""Submissions: one predictor on every task of a suite, in one self-describing JSON file (as fev and GIFT-Eval).

:func:`submit` runs the predictor on each task of a :class:`bench.suites.Suite` through
:func:`bench.runner.run` (cached runs are reused) and returns a :class:`Submission`; its
:meth:`~Submission.save` writes the file, :func:`load` reads it back and trusts nothing in it: the
schema and every type, a checksum of the whole, that each task's per-origin table has the
columns and the rows its result's origins and layers call for, and that the result's summary is
what those rows aggregate to (:func:`bench.aggregate.summarize`). :func:`verify` goes further: the
suite's fingerprints against the local data, a predictor file's source against its recorded
sha256, and a sample of the tasks re-run from scratch in a temporary data home.

The file (``format`` ``moe-load-bench-submission``, ``format_version`` 1) holds ``suite`` (name,
version, tasks with their fingerprints and settings), ``code_version``, ``created_at``, ``model``
(name, spec, version, parameters, source kind and source sha256, training datasets and whether
any is in the suite, hardware, seconds), ``runs`` (per task: ``result``, the run's
:meth:`RunResult.to_dict`; ``timing``; ``origins``, its per-origin rows column-wise: ``rows``,
``dtypes``, ``columns``) and ``checksum`` (:func:`bench.results.checksum` of the rest).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import os
import random
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .aggregate import summarize
from .results import ResultError, RunResult, checksum
from .runner import ROW_KEYS
from .states import STATES
from .suites import DEFAULT_SUITE, Suite, SuiteTask

FORMAT = "moe-load-bench-submission"
FORMAT_VERSION = 1
#: How closely a result's summary must match what its per-origin rows aggregate to (relative).
AGGREGATE_RTOL = 1e-9
#: How closely a re-run must match the file by default (relative).
VERIFY_RTOL = 1e-6
#: The calls of a run's timings spent forecasting (``start``, which fits on training traces, is apart).
FORECAST_CALLS = ("observe", "refit", "forecast")
#: Column types of a per-origin table, and the JSON values each allows.
DTYPES = {
    "int64": lambda v: type(v) is int and -(2**63) <= v < 2**63,
    "float64": lambda v: v is None or type(v) in (int, float),
    "bool": lambda v: type(v) is bool,
    "str": lambda v: type(v) is str,
}
ROW_DTYPES = {"horizon": "int64", "origin": "int64", "origin_step": "int64", "records": "int64", "layer": "int64",
              "layer_name": "str", "state": "str", "failed": "bool"}
#: Per-origin differences a re-run reports in full before it summarises the rest.
SHOWN_DIFFERENCES = 3


class SubmissionError(ValueError):
    """A submission that cannot be used: the file (or what was submitted) and every problem found."""

    def __init__(self, source: str | os.PathLike, problems: str | Iterable[str]):
        self.source = str(source)
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(f"{self.source}: {p}" for p in self.problems))


@dataclass(frozen=True)
class TrainingData:
    """A dataset the predictor was given whole for training (``--train``), pinned like a suite's."""

    dataset: str
    version: int
    fingerprint: str

    @property
    def ref(self) -> str:
        return f"{self.dataset}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "version": self.version, "fingerprint": self.fingerprint}


@dataclass(frozen=True)
class ModelInfo:
    """What was submitted and what it cost."""

    name: str
    spec: str  # what --model said
    version: int
    params: Mapping[str, Any]  # every parameter, defaults included
    source: str  # builtin | adapter | entry_point | file
    source_sha256: str  # of a predictor file's source ("" otherwise)
    train: tuple[TrainingData, ...] = ()
    trained_on_suite: bool = False  # a training dataset is one of the suite's
    hardware: tuple[str, ...] = ()  # where the runs were computed
    seconds: Mapping[str, float | None] = field(default_factory=dict)  # see run_timing and model_seconds

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "spec": self.spec, "version": self.version, "params": dict(self.params),
                "source": self.source, "source_sha256": self.source_sha256,
                "train": [t.to_dict() for t in self.train], "trained_on_suite": self.trained_on_suite,
                "hardware": list(self.hardware), "seconds": dict(self.seconds)}


@dataclass(frozen=True)
class SubmittedRun:
    """One task of a submission: its result and its per-origin rows (pandas, one per (horizon, origin, layer))."""

    task: SuiteTask
    result: RunResult
    origins: Any
    timing: Mapping[str, float | None]


@dataclass(frozen=True)
class Submission:
    """A predictor's results on every task of a suite (see the module docstring)."""

    suite: Suite
    model: ModelInfo
    runs: tuple[SubmittedRun, ...]
    code_version: str
    created_at: str  # ISO 8601, UTC

    def results(self) -> list[RunResult]:
        return [r.result for r in self.runs]

    def origins(self) -> dict[str, Any]:
        """Per-origin rows by run key (what :func:`leaderboard.build.build` takes)."""
        return {r.result.run_key: r.origins for r in self.runs}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "suite": self.suite.to_dict(),
            "code_version": self.code_version,
            "created_at": self.created_at,
            "model": self.model.to_dict(),
            "runs": [{"dataset": r.task.dataset, "version": r.task.version, "result": r.result.to_dict(),
                      "timing": dict(r.timing), "origins": encode_rows(r.origins)} for r in self.runs],
        }

    def to_json(self) -> str:
        body = self.to_dict()
        body["checksum"] = checksum(body)
        return json.dumps(body, allow_nan=False)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the file atomically (a reader sees the old file or the new one); a name ending in ``.gz`` is
        gzip-compressed (the committed files: a tenth of the size), reproducibly (no time stamp)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        body = self.to_json().encode()
        tmp.write_bytes(gzip.compress(body, mtime=0) if path.name.endswith(".gz") else body)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Submission":
        """Read and check a submission file; :class:`SubmissionError` names the file and every problem."""
        path = Path(path)
        try:
            data = json.loads(read_bounded(path), parse_constant=_no_constant, parse_float=_finite)
        except FileNotFoundError:
            raise SubmissionError(path, "no such file") from None
        except IsADirectoryError:
            raise SubmissionError(path, "a folder, not a submission file") from None
        except (OSError, ValueError, RecursionError, EOFError) as exc:  # JSON and Unicode errors are ValueErrors
            raise SubmissionError(path, f"not a readable JSON file (truncated or damaged?): {exc}") from None
        if not isinstance(data, dict):
            raise SubmissionError(path, f"a submission is a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise SubmissionError(path, f"not a submission file (format {data.get('format')!r}, expected {FORMAT!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise SubmissionError(path, f"submission format version {data.get('format_version')!r}; this version "
                                        f"reads {FORMAT_VERSION}")
        stored = data.pop("checksum", None)
        if stored != checksum(data):
            raise SubmissionError(path, "checksum mismatch: the file was changed or damaged after it was written")
        return _decode(data, path)


#: The most bytes a submission file may hold once decompressed (the zoo's files hold ~1.3 MB).
MAX_BYTES = 1 << 30


def read_bounded(path: Path) -> bytes:
    """The file's bytes, gunzipped where it is gzip (by its magic number, whatever its name); a file over
    :data:`MAX_BYTES`, or a gzip bomb that would expand past it, is refused before it fills memory."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        stream = gzip.GzipFile(fileobj=f) if gz else f
        data = stream.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ValueError(f"over {MAX_BYTES >> 20} MiB{' once decompressed' if gz else ''}")
    return data


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number this format allows")


def _finite(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise ValueError(f"{text} is out of range")
    return x


def load(path: str | os.PathLike) -> Submission:
    """Read and check a submission file (:meth:`Submission.load`)."""
    return Submission.load(path)


def submission_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The files `paths` name: each file as given, each folder's ``*.json`` and ``*.json.gz`` files (sorted)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in (*p.glob("*.json"), *p.glob("*.json.gz")) if f.is_file())
            if not found:
                raise SubmissionError(p, "a folder with no *.json or *.json.gz submission files")
            out += found
        elif p.exists():
            out.append(p)
        else:
            raise SubmissionError(p, "no such file or folder")
    return list(dict.fromkeys(out))


# ---- the per-origin rows as JSON ------------------------------------------------------------------
def encode_rows(frame) -> dict[str, Any]:
    """A per-origin table column-wise: ``{"rows": n, "dtypes": {col: type}, "columns": {col: [values]}}``.

    Floats that are not finite (a metric a layer has no value for) are stored as null.
    """
    dtypes, columns = {}, {}
    for name in frame.columns:
        s = frame[name]
        kind = s.dtype.kind
        if kind == "b":
            dtypes[name], columns[name] = "bool", [bool(v) for v in s]
        elif kind in "iu":
            dtypes[name], columns[name] = "int64", [int(v) for v in s]
        elif kind == "f":
            dtypes[name], columns[name] = "float64", [float(v) if math.isfinite(v) else None for v in s]
        else:
            dtypes[name], columns[name] = "str", [str(v) for v in s]
    return {"rows": len(frame), "dtypes": dtypes, "columns": columns}


def decode_rows(d: Any):
    """The table :func:`encode_rows` wrote (pandas); ValueError saying what is wrong with it."""
    import numpy as np
    import pandas as pd

    if not isinstance(d, dict) or not {"rows", "dtypes", "columns"} <= set(d):
        raise ValueError("per-origin rows: expected an object with rows, dtypes and columns")
    n, dtypes, columns = d["rows"], d["dtypes"], d["columns"]
    if type(n) is not int or n < 0:
        raise ValueError(f"per-origin rows: rows must be a count, got {n!r}")
    if not isinstance(dtypes, dict) or not isinstance(columns, dict) or list(dtypes) != list(columns):
        raise ValueError("per-origin rows: dtypes and columns must be objects naming the same columns in one order")
    data = {}
    for name, dtype in dtypes.items():
        values = columns[name]
        if dtype not in DTYPES:
            raise ValueError(f"per-origin column {name!r}: unknown type {dtype!r} (one of {', '.join(DTYPES)})")
        if not isinstance(values, list) or len(values) != n:
            raise ValueError(f"per-origin column {name!r}: expected a list of {n} values")
        bad = next((v for v in values if not DTYPES[dtype](v)), _NONE)
        if bad is not _NONE:
            raise ValueError(f"per-origin column {name!r} ({dtype}): {bad!r} is not a {dtype} value")
        if dtype == "float64":
            data[name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        elif dtype == "str":
            data[name] = pd.Series(values, dtype=object)
        else:
            data[name] = np.array(values, dtype=dtype)
    return pd.DataFrame(data, index=pd.RangeIndex(n))


_NONE = object()


# ---- reading a file --------------------------------------------------------------------------------
def _decode(data: dict[str, Any], path: Path) -> Submission:
    try:
        suite = Suite.from_dict(data["suite"])
        model = _model(data["model"])
        code_version, created_at, runs = data["code_version"], data["created_at"], data["runs"]
        if not isinstance(code_version, str) or not isinstance(created_at, str):
            raise ValueError("code_version and created_at must be strings")
        if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
            raise ValueError("runs must be a list of objects")
    except (KeyError, TypeError, ValueError) as exc:
        what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise SubmissionError(path, f"not a valid submission ({what})") from None
    problems: list[str] = []
    if len(runs) != len(suite.tasks):
        problems.append(f"{len(runs)} runs for the {len(suite.tasks)} tasks of suite {suite.ref}")
    in_suite = sorted({t.dataset for t in model.train} & set(suite.datasets))
    if model.trained_on_suite != bool(in_suite):
        problems.append(f"model: trained_on_suite is {model.trained_on_suite} but its training datasets in the "
                        f"suite are {in_suite or 'none'}")
    out = []
    for task, run in zip(suite.tasks, runs):
        found = _run(task, run, model, problems)
        if found is not None:
            out.append(found)
    if problems:
        raise SubmissionError(path, problems)
    return Submission(suite, model, tuple(out), code_version, created_at)


def _model(d: Any) -> ModelInfo:
    if not isinstance(d, dict):
        raise ValueError("model must be an object")
    strings = {k: d[k] for k in ("name", "spec", "source", "source_sha256")}
    if not all(isinstance(v, str) for v in strings.values()) or not strings["name"] or not strings["spec"]:
        raise ValueError("model: name, spec, source and source_sha256 must be strings")
    if type(d["version"]) is not int or not isinstance(d["params"], dict) or type(d["trained_on_suite"]) is not bool:
        raise ValueError("model: version must be an integer, params an object, trained_on_suite true or false")
    if not isinstance(d["hardware"], list) or not all(isinstance(h, str) for h in d["hardware"]):
        raise ValueError("model: hardware must be a list of strings")
    seconds = d["seconds"]
    if not isinstance(seconds, dict) or not all(v is None or type(v) in (int, float) for v in seconds.values()):
        raise ValueError("model: seconds must map names to numbers")
    train = d["train"]
    if not isinstance(train, list) or not all(isinstance(t, dict) for t in train):
        raise ValueError("model: train must be a list of objects")
    pinned = [SuiteTask.from_dict(t) for t in train]  # the same fields and checks as a suite's datasets
    return ModelInfo(**strings, version=d["version"], params=d["params"],
                     train=tuple(TrainingData(t.dataset, t.version, t.fingerprint) for t in pinned),
                     trained_on_suite=d["trained_on_suite"], hardware=tuple(d["hardware"]), seconds=seconds)


def _run(task: SuiteTask, run: dict, model: ModelInfo, problems: list[str]) -> SubmittedRun | None:
    where = f"task {task.ref}"
    if (run.get("dataset"), run.get("version")) != (task.dataset, task.version):
        problems.append(f"{where}: the run is on {run.get('dataset')}@{run.get('version')} (runs are in the order of "
                        "the suite's tasks)")
        return None
    try:
        result = RunResult.from_dict(run.get("result"), where)
    except ResultError as exc:
        problems.append(f"{where}: {exc.problem}")
        return None
    timing = run.get("timing")
    if not isinstance(timing, dict) or not all(v is None or type(v) in (int, float) for v in timing.values()):
        problems.append(f"{where}: timing must map names to numbers")
        return None
    before = len(problems)
    problems += [f"{where}: {p}" for p in _mismatches(task, result, model)]
    try:
        frame = decode_rows(run.get("origins"))
    except ValueError as exc:
        problems.append(f"{where}: {exc}")
        return None
    problems += [f"{where}: {p}" for p in _table_problems(result, frame)]
    if len(problems) > before:
        return None
    problems += [f"{where}, {p}" for p in summary_mismatches(result, frame)]
    return SubmittedRun(task, result, frame, timing)


def _mismatches(task: SuiteTask, r: RunResult, model: ModelInfo) -> list[str]:
    """Where a run's result disagrees with its suite task or with the submission's model."""
    out = []
    if (r.dataset, r.dataset_version, r.dataset_fingerprint) != (task.dataset, task.version, task.fingerprint):
        out.append(f"the result is on {r.dataset}@{r.dataset_version} with fingerprint {r.dataset_fingerprint}, "
                   f"the suite pins {task.ref} with {task.fingerprint}")
    if replace(r.task, dataset=task.ref, train=()) != task.task:
        out.append(f"the result's task settings {r.task.to_dict()} are not the suite's {task.settings()}")
    if tuple(r.task.train) != tuple(t.ref for t in model.train):
        out.append(f"the result trained on {list(r.task.train)}, the model's training datasets are "
                   f"{[t.ref for t in model.train]}")
    mine = (r.model, r.model_spec, r.model_version, dict(r.params), r.model_source, r.model_fingerprint)
    theirs = (model.name, model.spec, model.version, dict(model.params), model.source, model.source_sha256)
    names = ("name", "spec", "version", "params", "source", "source sha256")
    out += [f"the result's model {n} is {a!r}, the submission's {b!r}"
            for n, a, b in zip(names, mine, theirs) if a != b]
    return out


def layer_count(result: RunResult) -> int | None:
    """The trace's layers, as the result's per-layer means say."""
    for h in result.horizons.values():
        for by_state in h.per_layer.values():
            for values in by_state.values():
                return len(values)
    return None


def _table_problems(result: RunResult, frame) -> list[str]:
    """What is wrong with a run's per-origin table as a table: columns, their types, rows per horizon."""
    missing = [c for c in ROW_DTYPES if c not in frame.columns]
    if missing:
        return [f"per-origin rows lack the columns {', '.join(missing)}"]
    out = [f"per-origin column {c!r} is {frame[c].dtype}, expected {t}" for c, t in ROW_DTYPES.items()
           if (t == "str") != (frame[c].dtype == object) or (t != "str" and frame[c].dtype != t)]
    out += [f"per-origin column {c!r} is {frame[c].dtype}, expected float64" for c in frame.columns
            if c not in ROW_DTYPES and frame[c].dtype != "float64"]
    if out:
        return out
    layers = layer_count(result)
    if layers is None:
        return ["the result has no per-layer means to count its layers by"]
    bad_states = sorted(set(frame["state"]) - set(STATES[1:]))
    if bad_states:
        out.append(f"per-origin rows have states {bad_states}; states are {', '.join(STATES[1:])}")
    if len(frame) and not frame["layer"].between(0, layers - 1).all():
        out.append(f"per-origin rows have layers outside 0..{layers - 1}")
    if frame.duplicated(["horizon", "origin", "layer"]).any():
        out.append("per-origin rows repeat a (horizon, origin, layer)")
    extra = sorted(set(frame["horizon"]) - set(result.horizons))
    if extra:
        out.append(f"per-origin rows for horizons {extra} the result does not have")
    for H, h in sorted(result.horizons.items()):
        n = int((frame["horizon"] == H).sum())
        if n != h.origins * layers:
            out.append(f"horizon {H}: {n} per-origin rows, expected {h.origins} origins x {layers} layers = "
                       f"{h.origins * layers}")
    return out


def _close(a: float | None, b: float | None, rtol: float, atol: float = 0.0) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=rtol, abs_tol=atol)


def summary_mismatches(result: RunResult, frame, rtol: float = AGGREGATE_RTOL) -> list[str]:
    """Where the result's summary is not what its per-origin rows aggregate to (one message each)."""
    metrics = [c for c in frame.columns if c not in ROW_KEYS]
    failed = frame[frame["failed"]].drop_duplicates(["horizon", "origin"])
    failures = [{"horizon": int(H), "origin": int(o)} for H, o in zip(failed["horizon"], failed["origin"])]
    again = summarize(frame, failures, sorted(result.horizons), metrics, layer_count(result) or 0)
    return [f"horizon {p}" for H in sorted(result.horizons)
            for p in horizon_mismatches(H, result.horizons[H], again[H], rtol, "the summary says",
                                        "its per-origin rows give", atol=1e-15)]


def horizon_mismatches(H: int, mine, other, rtol: float, said: str, got: str, atol: float = 0.0) -> list[str]:
    """Every number of two :class:`HorizonResult` that differs: ``"H, metric (state): said a, got b"``."""
    out = []
    for m in sorted(set(mine.metrics) | set(other.metrics)):
        if m not in mine.metrics or m not in other.metrics:
            out.append(f"{H}, {m}: {said} {'nothing' if m not in mine.metrics else 'a value'}, {got} "
                       f"{'nothing' if m not in other.metrics else 'a value'}")
            continue
        out += [f"{H}, {m} ({s}): {said} {mine.value(m, s)}, {got} {other.value(m, s)}" for s in STATES
                if not _close(mine.value(m, s), other.value(m, s), rtol, atol)]
    for what, a, b in (("origins", mine.origins, other.origins), ("failed origins", mine.failures, other.failures),
                       ("records per origin", mine.records_per_origin, other.records_per_origin),
                       ("origin-layers by state", dict(mine.origin_layers), dict(other.origin_layers))):
        if a != b:
            out.append(f"{H}, {what}: {said} {a}, {got} {b}")
    for m in sorted(set(mine.per_layer) | set(other.per_layer)):
        for s in STATES:
            a, b = mine.per_layer.get(m, {}).get(s, ()), other.per_layer.get(m, {}).get(s, ())
            if len(a) != len(b) or not all(_close(x, y, rtol, atol) for x, y in zip(a, b)):
                out.append(f"{H}, {m} per layer ({s}): {said} {list(a)}, {got} {list(b)}")
    return out


# ---- submitting ------------------------------------------------------------------------------------
def run_timing(result: RunResult, frame) -> dict[str, float | None]:
    """A run's seconds: in all, training (``start``, which fits on training traces), forecasting, per origin.

    ``forecasting`` is the time inside ``observe``, ``refit`` and ``forecast`` over the run's origins
    (an origin forecasts every horizon at once); None where the run did not record its timings.
    """
    origins = int(frame["origin"].nunique()) if len(frame) else 0
    timed = bool(result.timings)
    forecasting = round(sum(result.timings.get(c, 0.0) for c in FORECAST_CALLS), 6) if timed else None
    return {
        "seconds": result.seconds,
        "training": result.timings.get("start", 0.0) if timed else None,
        "forecasting": forecasting,
        "origins": origins,
        "per_origin": forecasting / origins if timed and origins else None,
    }


def model_seconds(timings: list[Mapping[str, float | None]]) -> dict[str, float | None]:
    """Over a submission's runs: seconds in all and per run, training per run, forecasting per origin."""
    n = len(timings)
    timed = [t for t in timings if t["training"] is not None]
    origins = sum(t["origins"] for t in timed)
    return {
        "total": sum(t["seconds"] for t in timings),
        "per_run": sum(t["seconds"] for t in timings) / n if n else None,
        "training_per_run": sum(t["training"] for t in timed) / len(timed) if timed else None,
        "per_origin": sum(t["forecasting"] for t in timed) / origins if origins else None,
    }


def pin_dataset(ref: str) -> TrainingData:
    """A local dataset (``id`` or ``id@version``) pinned by id, version and fingerprint."""
    from datasets_registry import registry, storage

    entry = registry.resolve(ref)
    return TrainingData(entry.id, entry.version, storage.read_card(entry.folder).fingerprint)


def submit(
    model: str,
    suite: Suite | str = DEFAULT_SUITE,
    *,
    params: Mapping[str, Any] | None = None,
    train: Iterable[str] = (),
    limits=None,
    track: bool = True,
    tracking_uri: str | None = None,
    force: bool = False,
    progress: Callable[[SuiteTask, int, int], None] | None = None,
    on_run: Callable[[SubmittedRun], None] | None = None,
) -> Submission:
    """Run `model` (what ``--model`` takes) on every task of `suite` through :func:`bench.runner.run`.

    Refuses (:class:`SubmissionError`) to start where the local data differs from the suite.
    `train` names whole training datasets, given to the predictor on every task. `progress` hears
    ``(task, origins done, origins)``, `on_run` each finished task.
    """
    from . import runner, suites, tracking

    suite = suites.get(suite) if isinstance(suite, str) else suite
    problems = [str(p) for p in suites.check(suite)]
    if problems:
        raise SubmissionError(f"suite {suite.ref}", problems)
    training = tuple(pin_dataset(ref) for ref in train)
    runs = []
    for t in suite.tasks:
        def update(done: int, total: int, t: SuiteTask = t) -> None:
            if progress:
                progress(t, done, total)

        task = replace(t.task, train=tuple(d.ref for d in training))
        result = runner.run(model, t.ref, params=dict(params or {}), task=task, force=force, track=track,
                            tracking_uri=tracking_uri, progress=update, limits=limits)
        frame = tracking.origins_frame(result, tracking_uri)
        runs.append(SubmittedRun(t, result, frame, run_timing(result, frame)))
        if on_run:
            on_run(runs[-1])
    r = runs[0].result
    info = ModelInfo(
        name=r.model, spec=r.model_spec, version=r.model_version, params=dict(r.params), source=r.model_source,
        source_sha256=r.model_fingerprint, train=training,
        trained_on_suite=any(d.dataset in suite.datasets for d in training),
        hardware=tuple(sorted({run.result.hardware for run in runs if run.result.hardware})),
        seconds=model_seconds([run.timing for run in runs]),
    )
    differ = [f"task {run.task.ref}: {p}" for run in runs for p in _mismatches(run.task, run.result, info)]
    if differ:  # e.g. a predictor file edited while its runs went on
        raise SubmissionError(f"{model} on suite {suite.ref}", differ)
    return Submission(suite, info, tuple(runs), runner.code_version(),
                      datetime.now(timezone.utc).isoformat(timespec="seconds"))


# ---- verifying -------------------------------------------------------------------------------------
@dataclass
class Verification:
    """What :func:`verify` checked, and every problem it found (none: the file is accepted)."""

    path: str
    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@contextlib.contextmanager
def fresh_data_home(refs: Iterable[str]):
    """A temporary, empty data home (nothing cached, nothing kept) that sees the datasets `refs` of this one.

    The datasets are linked, not copied; built-in ones need nothing. The environment is restored on exit.
    """
    import tempfile
    from unittest import mock

    from datasets_registry import registry

    entries = [registry.resolve(ref) for ref in refs]
    with tempfile.TemporaryDirectory(prefix="moe-verify-") as home, mock.patch.dict(os.environ):
        for e in entries:
            if e.kind != "builtin":
                link = Path(home) / "datasets" / e.id / e.folder.name
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.exists():
                    link.symlink_to(e.folder.resolve(), target_is_directory=True)
        os.environ["MOE_LOAD_BENCH_HOME"] = home
        yield Path(home)


def _data_problems(sub: Submission) -> list[str]:
    """The file's suite and training datasets against the local data and the declared suite."""
    from . import suites

    out = [str(p) for p in suites.check(sub.suite)]
    declared = suites.SUITES.get(sub.suite.name)
    if declared is not None and declared.version == sub.suite.version and declared != sub.suite:
        mine = {t.dataset: t for t in sub.suite.tasks}
        diff = [t.ref for t in declared.tasks if mine.get(t.dataset) != t] + sorted(set(mine) - set(declared.datasets))
        out.append(f"suite {sub.suite.ref} in the file is not the declared one: its tasks differ on {', '.join(diff)}")
    for d in sub.model.train:
        try:
            here = pin_dataset(d.ref).fingerprint
        except (LookupError, OSError, ValueError) as exc:
            out.append(f"training dataset {d.ref}: missing here ({exc})")
            continue
        if here != d.fingerprint:
            out.append(f"training dataset {d.ref}: fingerprint {here} here, the file records {d.fingerprint}")
    return out


def _source_problems(sub: Submission) -> list[str]:
    from .runner import source_fingerprint

    if sub.model.source != "file":
        return []
    try:
        here = source_fingerprint(sub.model.spec)
    except OSError as exc:
        return [f"predictor file of {sub.model.spec}: cannot be read here ({exc})"]
    if here != sub.model.source_sha256:
        return [f"predictor file of {sub.model.spec}: its source here has {here}, the file records "
                f"{sub.model.source_sha256} (edited after submitting?)"]
    return []


def rerun_mismatches(run: SubmittedRun, again: RunResult, frame, rtol: float) -> list[str]:
    """Where a re-run of a submitted task differs from the file: summary numbers and per-origin rows."""
    where = f"task {run.task.ref}"
    mine = run.result
    out = [f"{where}: the re-run's model {what} is {b!r}, the file's {a!r}"
           for what, a, b in (("version", mine.model_version, again.model_version),
                              ("parameters", dict(mine.params), dict(again.params)),
                              ("disqualified", mine.disqualified, again.disqualified))
           if a != b]
    for H in sorted(set(mine.horizons) | set(again.horizons)):
        if H not in mine.horizons or H not in again.horizons:
            out.append(f"{where}, horizon {H}: in {'the file' if H in mine.horizons else 'the re-run'} only")
            continue
        out += [f"{where}, horizon {p}" for p in horizon_mismatches(H, mine.horizons[H], again.horizons[H], rtol,
                                                                     "the file says", "the re-run gives")]
    return out + [f"{where}, {p}" for p in _row_mismatches(run.origins, frame, rtol)]


def _row_mismatches(mine, again, rtol: float) -> list[str]:
    """Per (horizon, column): how many per-origin values differ, with the first few."""
    import numpy as np

    keys = ["horizon", "origin", "layer"]
    if len(mine) != len(again):
        return [f"per-origin rows: the file has {len(mine)}, the re-run {len(again)}"]
    both = mine.merge(again, on=keys, how="outer", suffixes=("", " again"), indicator=True)
    if (both["_merge"] != "both").any():
        return ["per-origin rows: the file and the re-run have different (horizon, origin, layer)s"]
    out = [f"per-origin column {col}: in the re-run only" for col in again.columns if col not in mine.columns]
    for col in [c for c in mine.columns if c not in keys]:
        if col not in again.columns:
            out.append(f"per-origin column {col}: in the file only")
            continue
        a, b = both[col].to_numpy(), both[f"{col} again"].to_numpy()
        if a.dtype.kind == "f":
            same = np.isclose(a, b, rtol=rtol, atol=0.0, equal_nan=True)
        else:
            same = a == b
        for H in sorted(set(both.loc[~same, "horizon"])):
            bad = both[(~same) & (both["horizon"] == H)]
            shown = "; ".join(f"origin step {int(r.origin_step)}, layer {int(r.layer)}: the file says {r[col]}, "
                              f"the re-run gives {r[f'{col} again']}"
                              for _, r in bad.head(SHOWN_DIFFERENCES).iterrows())
            total = int((both["horizon"] == H).sum())
            out.append(f"horizon {H}, {col} per origin: {len(bad)} of {total} rows differ ({shown})")
    return out


def verify(
    path: str | os.PathLike,
    *,
    sample: int = 2,
    seed: int = 0,
    rtol: float = VERIFY_RTOL,
    limits=None,
    progress: Callable[[SuiteTask, int, int], None] | None = None,
) -> Verification:
    """Check a submission file against this machine; :attr:`Verification.problems` lists what is refused.

    The file must load (:func:`load`; a bad file raises :class:`SubmissionError`); its suite's and
    training datasets' fingerprints must match the local data, a predictor file's source its
    recorded sha256, and `sample` of its tasks (chosen with `seed`), re-run from scratch in a
    temporary data home (the user's cache is neither read nor written), must give the file's
    numbers within `rtol` (relative): every metric, horizon and state, and every per-origin row.
    """
    from . import runner
    from .tracking import origins_frame

    sub = load(path)
    out = Verification(str(path))
    out.checked.append(f"the file: format, checksum, and every task's summary against its "
                       f"{sum(len(r.origins) for r in sub.runs)} per-origin rows")
    out.problems += _data_problems(sub)
    out.checked.append(f"the fingerprints of the {len(sub.suite.tasks)} datasets of suite {sub.suite.ref}"
                       + (f" and of the {len(sub.model.train)} training datasets" if sub.model.train else "")
                       + " against the local data")
    if sub.model.source == "file":
        out.problems += _source_problems(sub)
        out.checked.append(f"the sha256 of {sub.model.spec.rpartition(':')[0]} against the file's")
    if out.problems:
        out.checked.append("no re-run from scratch: the data or the predictor differ from the file's")
        return out
    if sample < 0:
        raise ValueError(f"sample must be at least 0, got {sample}")
    chosen = sorted(random.Random(seed).sample(range(len(sub.runs)), min(sample, len(sub.runs))))
    refs = [sub.runs[i].task.ref for i in chosen] + [d.ref for d in sub.model.train]
    with fresh_data_home(refs):
        for i in chosen:
            run = sub.runs[i]

            def update(done: int, total: int, t: SuiteTask = run.task) -> None:
                if progress:
                    progress(t, done, total)

            again = runner.run(sub.model.spec, run.task.ref, params=dict(run.result.params), task=run.result.task,
                               placement=run.result.placement, track=False, limits=limits, progress=update)
            out.problems += rerun_mismatches(run, again, origins_frame(again), rtol)
    out.checked.append(f"a re-run from scratch of {len(chosen)} of {len(sub.runs)} tasks (seed {seed}): "
                       f"{', '.join(sub.runs[i].task.ref for i in chosen) or 'none'}, every metric, horizon, state "
                       f"and per-origin row within a relative {rtol:g}")
    return out


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Submission",
    "SubmittedRun",
    "ModelInfo",
    "TrainingData",
    "SubmissionError",
    "Verification",
    "submit",
    "load",
    "verify",
    "submission_files",
    "encode_rows",
    "decode_rows",
    "summary_mismatches",
    "rerun_mismatches",
    "fresh_data_home",
]
