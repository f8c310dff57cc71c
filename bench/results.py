"""A benchmark run's result: what the run was, what it measured, and its two encodings.

:class:`RunResult` is the one shape a run's outcome has everywhere: `bench run --json`, the
cached ``result.json`` in the run's folder, the MLflow run, the leaderboard and the Python API.
This module alone writes and reads ``result.json`` (:meth:`RunResult.save`, :meth:`RunResult.load`)
and alone encodes a result into MLflow params, metrics and tags and decodes it back
(:meth:`RunResult.to_mlflow`, :meth:`RunResult.from_mlflow`): the round trip is exact.

A ``result.json`` carries a schema number and a checksum of its content; one that does not
parse, does not match the schema or fails its checksum is refused with :class:`ResultError`
(the runner then recomputes the run).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from datasets_registry.registry import data_home

from .states import STATES
from .task import Task

#: Bumped when the layout of ``result.json`` or of the MLflow encoding changes.
SCHEMA_VERSION = 1
RESULT_FILE = "result.json"
#: MLflow metrics ``time/<call>``: the seconds a run spent inside the predictor's calls (RunResult.timings).
TIMING_PREFIX = "time/"
#: MLflow keeps at most this many characters in a param value; longer JSON is split over parts.
PARAM_LIMIT = 6000


def runs_dir() -> Path:
    """Where computed runs live: ``<data home>/runs/<run key>/`` (journal, result.json, artifacts)."""
    return data_home() / "runs"


def run_folder(key: str) -> Path:
    return runs_dir() / key


class ResultError(ValueError):
    """A stored result that cannot be used: the message names the file (or run) and the problem."""

    def __init__(self, source: str, problem: str):
        self.source, self.problem = str(source), problem
        super().__init__(f"{source}: {problem}")


def _finite_or_none(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class ByState:
    """One number three ways: over all origins, and over those of layers in each state."""

    all: float | None = None
    transient: float | None = None
    stable: float | None = None

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> "ByState":
        return cls(**{s: _finite_or_none(values.get(s)) for s in STATES})

    def get(self, state: str) -> float | None:
        return getattr(self, state)

    def to_dict(self) -> dict[str, float | None]:
        return {s: self.get(s) for s in STATES}


@dataclass(frozen=True)
class Verdict:
    """The fair-play test of one horizon's scores (:mod:`bench.fairplay`)."""

    disqualified: bool = False
    reasons: tuple[str, ...] = ()
    statistics: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"disqualified": self.disqualified, "reasons": list(self.reasons), "statistics": dict(self.statistics)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Verdict":
        return cls(bool(d["disqualified"]), tuple(d.get("reasons", ())), dict(d.get("statistics", {})))


@dataclass(frozen=True)
class HorizonResult:
    """The summary of one horizon: every metric by state, per-layer errors, origin counts."""

    horizon: int  # iterations
    metrics: Mapping[str, ByState]  # error_rate, window_error, mape, noise_floor, ... (fractions, not %)
    origins: int  # origins of the task at this horizon, failed ones included
    failures: int  # origins whose forecast failed (charged, see docs/protocol.md)
    records_per_origin: int | None = None  # records a forecast covers (the first origin's)
    origin_layers: Mapping[str, int] = field(default_factory=dict)  # (origin, layer) pairs per state
    per_layer: Mapping[str, Mapping[str, tuple]] = field(default_factory=dict)  # metric -> state -> [L] means
    verdict: Verdict = field(default_factory=Verdict)

    def value(self, metric: str, state: str = "all") -> float | None:
        m = self.metrics.get(metric)
        return None if m is None else m.get(state)

    def replace(self, **changes: Any) -> "HorizonResult":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """``{metric: {all, transient, stable}, ..., "n_origins", "failures", ...}`` (the `--json` layout)."""
        return {
            **{k: v.to_dict() for k, v in self.metrics.items()},
            "n_origins": self.origins,
            "failures": self.failures,
            "records_per_origin": self.records_per_origin,
            "origin_layers_by_state": dict(self.origin_layers),
            "per_layer": {m: {s: list(v) for s, v in by.items()} for m, by in self.per_layer.items()},
            "verdict": self.verdict.to_dict(),
        }

    @classmethod
    def from_dict(cls, horizon: int, d: Mapping[str, Any]) -> "HorizonResult":
        metrics = {k: ByState.of(v) for k, v in d.items() if k not in HORIZON_FIELDS}
        return cls(
            horizon=int(horizon),
            metrics=metrics,
            origins=int(d["n_origins"]),
            failures=int(d["failures"]),
            records_per_origin=None if d.get("records_per_origin") is None else int(d["records_per_origin"]),
            origin_layers={k: int(v) for k, v in d.get("origin_layers_by_state", {}).items()},
            per_layer={
                m: {s: tuple(_finite_or_none(x) for x in v) for s, v in by.items()}
                for m, by in d.get("per_layer", {}).items()
            },
            verdict=Verdict.from_dict(d.get("verdict") or {"disqualified": False}),
        )


#: The keys of a horizon's JSON that are not metrics.
HORIZON_FIELDS = ("n_origins", "failures", "records_per_origin", "origin_layers_by_state", "per_layer", "verdict")


@dataclass(frozen=True)
class Extras:
    """What a predictor added to its run (``mlflow_extras``): scalars, per-epoch curves, files in the run folder."""

    metrics: Mapping[str, float] = field(default_factory=dict)
    curves: Mapping[str, tuple] = field(default_factory=dict)
    artifacts: tuple[str, ...] = ()  # file names in the run's folder

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": dict(self.metrics),
            "curves": {k: list(v) for k, v in self.curves.items()},
            "artifacts": list(self.artifacts),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "Extras":
        d = d or {}
        return cls(
            {k: float(v) for k, v in d.get("metrics", {}).items()},
            {k: tuple(float(x) for x in v) for k, v in d.get("curves", {}).items()},
            tuple(str(a) for a in d.get("artifacts", ())),
        )


@dataclass(frozen=True)
class RunResult:
    """One benchmark run: (model, params) x (dataset, task) -> numbers. See the module docstring."""

    run_key: str
    model: str  # the predictor's name
    model_spec: str  # what `--model` said (a name, sktime:X, path/file.py:Class)
    model_version: int
    model_source: str  # builtin | adapter | entry_point | file | python (a class handed to the API)
    model_fingerprint: str  # sha256 of a file predictor's source; "" for built-in code
    params: Mapping[str, Any]
    dataset: str
    dataset_version: int
    dataset_fingerprint: str
    task: Task
    task_fingerprint: str
    horizons: Mapping[int, HorizonResult]
    seconds: float  # evaluation wall time, training included
    harness_version: int
    code_version: str
    finished_at: str  # ISO 8601, UTC: when the evaluation ended
    placement: str | None = None
    isolation: str = "in-process"  # in-process | landlock | process (bench.isolation)
    artifacts: tuple[str, ...] = ()  # file names in the run's folder
    extras: Extras = field(default_factory=Extras)
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds inside the predictor: start ... forecast
    hardware: str = ""  # where it ran: processor, cores, GPU
    mlflow_run_id: str | None = None
    cached: bool = field(default=False, compare=False)  # read back rather than computed now (never stored)

    # ---- what people ask of a result ------------------------------------------------------------
    @property
    def failures(self) -> int:
        """Failed origins over all horizons (an origin counts once per horizon it covers)."""
        return sum(h.failures for h in self.horizons.values())

    @property
    def disqualified(self) -> bool:
        return any(h.verdict.disqualified for h in self.horizons.values())

    def value(self, horizon: int, metric: str, state: str = "all") -> float | None:
        return self.horizons[int(horizon)].value(metric, state)

    def to_frame(self, per_origin: bool = False):
        """A pandas DataFrame: one row per (horizon, metric, state), or with `per_origin` one per (origin, layer)."""
        import pandas as pd

        if per_origin:
            path = run_folder(self.run_key) / "origins.parquet"
            if not path.exists():
                raise FileNotFoundError(
                    f"{path}: the per-origin results of run {self.run_key} are not in this data home"
                )
            return pd.read_parquet(path)
        rows = [
            {"model": self.model, "dataset": self.dataset, "horizon": H, "metric": m, "state": s, "value": v.get(s)}
            for H, h in sorted(self.horizons.items())
            for m, v in h.metrics.items()
            for s in STATES
        ]
        return pd.DataFrame(rows)

    def forecasts(self, horizon: int):
        """The run's forecasts of the horizon's mean load at every origin: :class:`WindowForecasts`."""
        return WindowForecasts.load(run_folder(self.run_key) / window_forecasts_file(horizon))

    def replace(self, **changes: Any) -> "RunResult":
        return dataclasses.replace(self, **changes)

    # ---- result.json ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "run_key": self.run_key,
            "model": self.model,
            "model_spec": self.model_spec,
            "model_version": self.model_version,
            "model_source": self.model_source,
            "model_fingerprint": self.model_fingerprint,
            "params": dict(self.params),
            "dataset": self.dataset,
            "dataset_version": self.dataset_version,
            "dataset_fingerprint": self.dataset_fingerprint,
            "task": self.task.to_dict(),
            "task_fingerprint": self.task_fingerprint,
            "placement": self.placement,
            "horizons": {str(H): h.to_dict() for H, h in sorted(self.horizons.items())},
            "seconds": self.seconds,
            "failures": self.failures,
            "disqualified": self.disqualified,
            "harness_version": self.harness_version,
            "code_version": self.code_version,
            "finished_at": self.finished_at,
            "isolation": self.isolation,
            "artifacts": list(self.artifacts),
            "extras": self.extras.to_dict(),
            "timings": dict(self.timings),
            "hardware": self.hardware,
            "mlflow_run_id": self.mlflow_run_id,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "<result>", cached: bool = False) -> "RunResult":
        """Build from :meth:`to_dict`'s form; :class:`ResultError` names `source` and what is wrong."""
        if not isinstance(d, Mapping):
            raise ResultError(source, f"a result is a JSON object, got {type(d).__name__}")
        if d.get("schema") != SCHEMA_VERSION:
            raise ResultError(source, f"result schema {d.get('schema')!r}, this version reads {SCHEMA_VERSION}")
        try:
            out = cls(
                run_key=_str(d, "run_key"),
                model=_str(d, "model"),
                model_spec=_str(d, "model_spec"),
                model_version=int(d["model_version"]),
                model_source=_str(d, "model_source"),
                model_fingerprint=str(d.get("model_fingerprint") or ""),
                params=dict(d["params"]),
                dataset=_str(d, "dataset"),
                dataset_version=int(d["dataset_version"]),
                dataset_fingerprint=_str(d, "dataset_fingerprint"),
                task=Task.from_dict(d["task"]),
                task_fingerprint=_str(d, "task_fingerprint"),
                horizons={int(H): HorizonResult.from_dict(int(H), h) for H, h in d["horizons"].items()},
                seconds=float(d["seconds"]),
                harness_version=int(d["harness_version"]),
                code_version=str(d["code_version"]),
                finished_at=_str(d, "finished_at"),
                placement=d.get("placement") or None,
                isolation=str(d.get("isolation") or "in-process"),
                artifacts=tuple(str(a) for a in d.get("artifacts", ())),
                extras=Extras.from_dict(d.get("extras")),
                timings={str(k): float(v) for k, v in (d.get("timings") or {}).items()},
                hardware=str(d.get("hardware") or ""),
                mlflow_run_id=d.get("mlflow_run_id") or None,
                cached=cached,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, ResultError):
                raise
            what = f"missing field {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
            raise ResultError(source, f"not a valid result ({what})") from None
        if not out.horizons:
            raise ResultError(source, "not a valid result (no horizons)")
        return out

    def to_json(self) -> str:
        body = self.to_dict()
        body["checksum"] = checksum(body)
        return json.dumps(body, indent=2, allow_nan=False)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``result.json`` in `folder` atomically (a reader sees the old file or the new one)."""
        path = Path(folder) / RESULT_FILE
        tmp = path.with_name(f".{RESULT_FILE}.{os.getpid()}.tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RunResult":
        """Read a ``result.json`` (a file or its run folder); :class:`ResultError` if it cannot be trusted."""
        path = Path(path)
        if path.is_dir():
            path = path / RESULT_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ResultError(str(path), "no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ResultError(str(path), f"unreadable JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ResultError(str(path), "a result is a JSON object")
        stored = data.pop("checksum", None)
        try:
            expected = checksum(data)
        except ValueError:  # NaN or infinity, which a result never holds
            raise ResultError(str(path), "not a valid result (a number is NaN or infinite)") from None
        if stored != expected:
            raise ResultError(str(path), "checksum mismatch: the file was changed or damaged after it was written")
        return cls.from_dict(data, str(path), cached=True)

    # ---- MLflow ---------------------------------------------------------------------------------
    def to_mlflow(self) -> tuple[dict[str, str], dict[str, float], dict[str, str]]:
        """(params, metrics, tags) of the run's MLflow record; :meth:`from_mlflow` reverses it exactly.

        Metrics are named ``h<H>/<metric>/<state>`` (fractions; None is left out); params hold what
        is not a number (the model's and task's parameters as JSON, each also as ``model.<k>`` and
        ``task.<k>`` for reading in the UI); tags identify the run for search and the leaderboard.
        """
        metrics: dict[str, float] = {"seconds": float(self.seconds), "failed_origins": float(self.failures)}
        params: dict[str, str] = {}
        for H, h in self.horizons.items():
            for name, by in h.metrics.items():
                for s in STATES:
                    if by.get(s) is not None:
                        metrics[metric_key(H, name, s)] = by.get(s)
            metrics[f"h{H}/n_origins"] = float(h.origins)
            metrics[f"h{H}/failures"] = float(h.failures)
            _put_json(
                params,
                f"h{H}/summary",
                {
                    "records_per_origin": h.records_per_origin,
                    "origin_layers": dict(h.origin_layers),
                    "metrics": sorted(h.metrics),
                    "verdict": h.verdict.to_dict(),
                },
            )
            for name, by in h.per_layer.items():
                _put_json(params, f"h{H}/per_layer/{name}", {s: list(v) for s, v in by.items()})
        for name, value in self.extras.metrics.items():
            metrics[name] = float(value)
        for call, seconds in self.timings.items():
            metrics[f"{TIMING_PREFIX}{call}"] = float(seconds)
        _put_json(params, "model_params", dict(self.params))
        _put_json(params, "task", self.task.to_dict())
        _put_json(
            params,
            "extras",
            {
                "metrics": sorted(self.extras.metrics),
                "curves": sorted(self.extras.curves),
                "artifacts": list(self.extras.artifacts),
            },
        )
        _put_json(params, "artifacts", list(self.artifacts))
        for k, v in self.params.items():
            params[f"model.{k}"] = str(v)[:PARAM_LIMIT]
        for k, v in self.task.to_dict().items():
            params[f"task.{k}"] = str(v)[:PARAM_LIMIT]
        params.update(
            {
                "model": self.model,
                "model_spec": self.model_spec[:PARAM_LIMIT],
                "model_version": str(self.model_version),
                "dataset": self.dataset,
                "dataset_fingerprint": self.dataset_fingerprint,
                "code_version": self.code_version,
                "placement": str(self.placement),
            }
        )
        tags = {
            "model": self.model,
            "dataset": self.dataset,
            "dataset_version": str(self.dataset_version),
            "task_fingerprint": self.task_fingerprint,
            "run_key": self.run_key,
            "horizons": ",".join(str(H) for H in sorted(self.horizons)),
            "placement": self.placement or "",
            "model_source": self.model_source,
            "model_fingerprint": self.model_fingerprint,
            "isolation": self.isolation,
            "hardware": self.hardware,
            "disqualified": "true" if self.disqualified else "false",
            "finished_at": self.finished_at,
            "harness_version": str(self.harness_version),
            "result_schema": str(SCHEMA_VERSION),
            "mlflow.note.content": f"{self.model} on {self.dataset}, horizons {sorted(self.horizons)} iterations",
        }
        return params, metrics, tags

    @classmethod
    def from_mlflow(
        cls,
        params: Mapping[str, str],
        metrics: Mapping[str, float],
        tags: Mapping[str, str],
        run_id: str | None = None,
        curves: Mapping[str, list] | None = None,
    ) -> "RunResult":
        """The result an MLflow run records (see :meth:`to_mlflow`); `curves` are the extras' metric histories."""
        source = f"MLflow run {run_id or '?'}"
        if tags.get("result_schema") != str(SCHEMA_VERSION):
            raise ResultError(
                source, f"result schema {tags.get('result_schema')!r}, this version reads {SCHEMA_VERSION}"
            )
        try:
            extras_index = _get_json(params, "extras")
            horizons = {}
            for H in (int(x) for x in tags["horizons"].split(",")):
                summary = _get_json(params, f"h{H}/summary")
                metric_names = summary["metrics"]
                horizons[H] = HorizonResult(
                    horizon=H,
                    metrics={m: ByState(**{s: metrics.get(metric_key(H, m, s)) for s in STATES}) for m in metric_names},
                    origins=int(metrics[f"h{H}/n_origins"]),
                    failures=int(metrics[f"h{H}/failures"]),
                    records_per_origin=summary["records_per_origin"],
                    origin_layers=summary["origin_layers"],
                    per_layer={
                        m[len(f"h{H}/per_layer/") :]: {s: tuple(v) for s, v in _get_json(params, m).items()}
                        for m in _json_names(params, f"h{H}/per_layer/")
                    },
                    verdict=Verdict.from_dict(summary["verdict"]),
                )
            return cls(
                run_key=tags["run_key"],
                model=params["model"],
                model_spec=params["model_spec"],
                model_version=int(params["model_version"]),
                model_source=tags["model_source"],
                model_fingerprint=tags.get("model_fingerprint", ""),
                params=_get_json(params, "model_params"),
                dataset=tags["dataset"],
                dataset_version=int(tags["dataset_version"]),
                dataset_fingerprint=params["dataset_fingerprint"],
                task=Task.from_dict(_get_json(params, "task")),
                task_fingerprint=tags["task_fingerprint"],
                horizons=horizons,
                seconds=float(metrics["seconds"]),
                harness_version=int(tags["harness_version"]),
                code_version=params["code_version"],
                finished_at=tags["finished_at"],
                placement=tags.get("placement") or None,
                isolation=tags["isolation"],
                artifacts=tuple(_get_json(params, "artifacts")),
                extras=Extras(
                    {k: float(metrics[k]) for k in extras_index["metrics"]},
                    {k: tuple(float(x) for x in (curves or {}).get(k, ())) for k in extras_index["curves"]},
                    tuple(extras_index["artifacts"]),
                ),
                timings={k[len(TIMING_PREFIX):]: float(v) for k, v in metrics.items() if k.startswith(TIMING_PREFIX)},
                hardware=tags.get("hardware", ""),
                mlflow_run_id=run_id,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ResultError(source, f"not a benchmark result ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class WindowForecasts:
    """A run's forecasts of the horizon-mean load at each origin, beside the actual mean."""

    horizon: int  # iterations
    origin_steps: Any  # [n] iteration of each origin
    predicted: Any  # [n, L, E] forecast horizon-mean shares
    actual: Any  # [n, L, E] actual horizon-mean shares

    def save(self, path: Path) -> Path:
        import numpy as np

        np.savez_compressed(
            path, horizon=self.horizon, origin_steps=self.origin_steps, predicted=self.predicted, actual=self.actual
        )
        return path

    @classmethod
    def load(cls, path: Path) -> "WindowForecasts":
        import numpy as np

        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: this run's forecasts are not in this data home")
        with np.load(path, allow_pickle=False) as z:
            return cls(int(z["horizon"]), z["origin_steps"], z["predicted"], z["actual"])


def window_forecasts_file(horizon: int) -> str:
    return f"window_forecasts_h{int(horizon)}.npz"


def metric_key(horizon: int | str, metric: str, state: str) -> str:
    """How a summary number is named in MLflow: ``h1000/error_rate/all``."""
    return f"h{horizon}/{metric}/{state}"


# ---- helpers ------------------------------------------------------------------------------------
def _str(d: Mapping[str, Any], key: str) -> str:
    v = d[key]
    if not isinstance(v, str) or not v:
        raise ValueError(f"{key} must be a non-empty string")
    return v


def checksum(body: Mapping[str, Any]) -> str:
    """sha256 of a JSON document in canonical form (sorted keys, no spaces): what a stored file's checksum holds."""
    blob = json.dumps(body, sort_keys=True, allow_nan=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def _put_json(params: dict[str, str], name: str, value: Any) -> None:
    """Store `value` as JSON under `name`, split over ``name:1``, ``name:2``... where it is longer than a param."""
    text = json.dumps(value, sort_keys=True, allow_nan=False, separators=(",", ":"))
    parts = [text[i : i + PARAM_LIMIT] for i in range(0, len(text), PARAM_LIMIT)] or [""]
    params[name] = parts[0]
    for i, part in enumerate(parts[1:], 1):
        params[f"{name}:{i}"] = part


def _get_json(params: Mapping[str, str], name: str) -> Any:
    text, i = params[name], 1
    while f"{name}:{i}" in params:
        text += params[f"{name}:{i}"]
        i += 1
    return json.loads(text)


def _json_names(params: Mapping[str, str], prefix: str) -> list[str]:
    return sorted(k for k in params if k.startswith(prefix) and ":" not in k)


__all__ = [
    "runs_dir",
    "run_folder",
    "RunResult",
    "HorizonResult",
    "ByState",
    "Verdict",
    "Extras",
    "WindowForecasts",
    "ResultError",
    "metric_key",
    "checksum",
    "window_forecasts_file",
    "SCHEMA_VERSION",
    "RESULT_FILE",
]
