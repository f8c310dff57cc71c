"""A forecasting task and its rolling origins (the protocol's "Task and rolling origin").

Horizons, stride and history are in *iterations* and turned into records through the trace's
real step numbers, so a trace recorded every 10th iteration is evaluated at the same points in
training as one recorded every iteration.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field

import numpy as np

REFIT = re.compile(r"^(every|once|every:[1-9][0-9]*)$")


@dataclass(frozen=True)
class StateConfig:
    """Parameters of the transient/stable detector (:mod:`bench.states`)."""

    window: int = 100  # iterations
    threshold: float = 2.5  # drift over the window, in units of the drift noise alone would cause
    smooth: int = 200  # iterations of centred rolling median over the drift ratio


@dataclass(frozen=True)
class Task:
    """What to forecast and where: the same origins for every predictor compared."""

    dataset: str
    horizons: tuple[int, ...] = (1000, 2000)
    stride: int = 100
    min_history: int = 100
    first_origin: int | None = None  # an iteration number; default steps[0] + min_history
    train: tuple[str, ...] = ()
    refit: str = "every"
    states: StateConfig = field(default_factory=StateConfig)

    def __post_init__(self):
        if not self.horizons or any(h <= 0 for h in self.horizons):
            raise ValueError(f"horizons must be positive iteration counts, got {self.horizons}")
        if self.stride <= 0:
            raise ValueError(f"stride must be positive, got {self.stride}")
        if self.min_history < 1:
            raise ValueError(f"min_history must be at least 1 iteration, got {self.min_history}")
        if not REFIT.match(self.refit):
            raise ValueError(f"refit must be 'every', 'every:K' or 'once', got {self.refit!r}")
        object.__setattr__(self, "horizons", tuple(sorted(set(int(h) for h in self.horizons))))
        object.__setattr__(self, "train", tuple(self.train))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Task":
        """The inverse of :meth:`to_dict` (lists back to tuples, the state detector's settings to a StateConfig)."""
        d = dict(d)
        d["states"] = StateConfig(**d.get("states", {}))
        return cls(**d)

    def fingerprint(self, dataset_fingerprint: str, train_fingerprints: tuple[str, ...] = ()) -> str:
        """Identifies the task's exact targets: its settings and the data they apply to."""
        blob = json.dumps({"task": {k: v for k, v in self.to_dict().items() if k not in ("dataset", "train")},
                           "data": dataset_fingerprint, "train": list(train_fingerprints)}, sort_keys=True)
        return "task:" + hashlib.sha256(blob.encode()).hexdigest()[:16]

    def run_options(self) -> list[str]:
        """The options of ``python -m bench run`` that give this task: ``--dataset`` and every setting that
        differs from the default (the state detector's `smooth` has no option)."""
        default = Task(self.dataset)
        out = ["--dataset", self.dataset]
        if self.horizons != default.horizons:
            out += [arg for h in self.horizons for arg in ("--horizon", str(h))]
        for option, key in (("--stride", "stride"), ("--min-history", "min_history"),
                            ("--first-origin", "first_origin"), ("--refit", "refit")):
            if getattr(self, key) != getattr(default, key):
                out += [option, str(getattr(self, key))]
        out += [arg for t in self.train for arg in ("--train", t)]
        for option, key in (("--state-window", "window"), ("--state-threshold", "threshold")):
            if getattr(self.states, key) != getattr(default.states, key):
                out += [option, str(getattr(self.states, key))]
        return out

    def refit_due(self, index: int) -> bool:
        """Whether the predictor is refitted at the `index`-th origin of a run."""
        if self.refit == "every":
            return True
        if self.refit == "once":
            return index == 0
        return index % int(self.refit.split(":")[1]) == 0


@dataclass(frozen=True)
class Origins:
    """The rolling origins of one horizon: origin records and the records each must forecast."""

    horizon: int  # iterations
    records: np.ndarray  # origin record indices o (the predictor sees records < o)
    lengths: np.ndarray  # records in [steps[o], steps[o] + horizon)


def first_origin_step(steps: np.ndarray, task: Task) -> int:
    """The iteration of the task's first origin: `first_origin`, else the first step plus `min_history`."""
    return task.first_origin if task.first_origin is not None else int(steps[0]) + task.min_history


def rolling_origins(steps: np.ndarray, task: Task) -> dict[int, Origins]:
    """Origins every `stride` iterations from the first origin until ``steps[-1] - horizon``."""
    steps = np.asarray(steps)
    first = first_origin_step(steps, task)
    out = {}
    for H in task.horizons:
        points = np.arange(first, int(steps[-1]) - H + 1, task.stride)
        recs = np.unique(np.searchsorted(steps, points, side="left"))
        recs = recs[(recs >= 1) & (recs < len(steps))]
        ends = np.searchsorted(steps, steps[recs] + H, side="left")
        keep = steps[recs] <= steps[-1] - H
        recs, ends = recs[keep], ends[keep]
        out[H] = Origins(H, recs.astype(np.int64), (ends - recs).astype(np.int64))
    return out
