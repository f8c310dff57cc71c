"""The predictor interface: the harness owns the loop, a contributor writes only the model.

A predictor is configured by keyword parameters (declared with their defaults in
``defaults``), may be fitted on whole training traces, receives the trace under test one chunk
of past records at a time, and forecasts the load proportions of the next ``records`` records of
every layer at once: ``phat[records, layers, experts]`` (their iterations are in ``target_steps``).

It never sees the trace under test itself. The harness hands it *copies* of the records before
the current origin (:meth:`Predictor.observe`), which it keeps in its own :class:`History`; there
is no reference through which a record at or after the origin could be reached.

To write one, subclass :class:`Predictor` and implement :meth:`predict` (and, where useful,
:meth:`fit`, :meth:`update`, :meth:`refit`)::

    class LastValue(Predictor):
        name = "last"
        def predict(self, records):
            return self.repeat(self.history.proportions[-1], records)

A *probabilistic* predictor also implements :meth:`Predictor.predict_quantiles`: the quantiles of
every expert's load share at the fixed levels :data:`QUANTILE_LEVELS`, per record to forecast,
``q[records, layers, experts, levels]``. The harness asks for them only from predictors that
implement it (:attr:`Predictor.probabilistic`) and scores them besides the point forecast
(docs/protocol.md, "Probabilistic forecasts"); a point-only predictor is unchanged.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import numpy as np

#: The predictor interface this harness speaks. Version 2 named `predict`'s argument for its unit
#: (`records`; it always was a number of records) and added `target_steps` (their iterations).
INTERFACE_VERSION = 2

#: The quantile levels every probabilistic forecast gives, in this order: one fixed set, so that every
#: probabilistic predictor is scored on the same levels. 0.05/0.95 and 0.1/0.9 bound the central 90% and 80%
#: intervals; 0.99 is the upper tail an expert's overload lives in.
QUANTILE_LEVELS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


class ParamError(ValueError):
    pass


def record_spacing(steps: np.ndarray) -> float:
    """Typical iterations between records (1 for a trace recorded every iteration)."""
    return float(np.median(np.diff(steps))) if len(steps) > 1 else 1.0


class History:
    """The records of one trace that a predictor has been shown, in order, and nothing else."""

    def __init__(self, layers: int, experts: int, capacity: int = 256):
        self.layers, self.experts = layers, experts
        self._counts = np.zeros((capacity, layers, experts), dtype=np.int64)
        self._p = np.zeros((capacity, layers, experts), dtype=np.float64)
        self._steps = np.zeros(capacity, dtype=np.int64)
        self._n = 0
        self._sources: np.ndarray | None = None  # [capacity, L, S, E], allocated by the first append_sources
        self._n_sources = 0

    def __len__(self) -> int:
        return self._n

    def append(self, counts: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """Add records; returns their proportions."""
        k = len(steps)
        if self._n + k > len(self._steps):
            cap = max(2 * len(self._steps), self._n + k)
            for attr in ("_counts", "_p", "_steps"):
                old = getattr(self, attr)
                new = np.zeros((cap,) + old.shape[1:], dtype=old.dtype)
                new[: self._n] = old[: self._n]
                setattr(self, attr, new)
        sl = slice(self._n, self._n + k)
        self._counts[sl] = counts
        self._steps[sl] = steps
        self._p[sl] = counts / counts.sum(axis=2, keepdims=True)
        self._n += k
        return self._p[sl]

    def append_sources(self, source_counts: np.ndarray) -> None:
        """Add the per-source split ``[k, L, S, E]`` of the records just appended (a per-source run only)."""
        k = len(source_counts)
        have = self._sources
        if have is None or self._n_sources + k > len(have):
            new = np.zeros((max(2 * (0 if have is None else len(have)), self._n_sources + k, 16),)
                           + source_counts.shape[1:], dtype=np.int64)
            if have is not None:
                new[: self._n_sources] = have[: self._n_sources]
            self._sources = new
        self._sources[self._n_sources : self._n_sources + k] = source_counts
        self._n_sources += k

    @property
    def source_counts(self) -> np.ndarray | None:
        """[n, L, S, E] the records' tokens by source (rank or node) seen so far (read-only); None unless the
        run scores per-source forecasts (docs/protocol.md, "Per-source loads")."""
        if self._sources is None:
            return None
        v = self._sources[: self._n_sources]
        v.flags.writeable = False
        return v

    def _view(self, arr: np.ndarray) -> np.ndarray:
        v = arr[: self._n]
        v.flags.writeable = False
        return v

    @property
    def counts(self) -> np.ndarray:
        """[n, L, E] token counts seen so far (read-only)."""
        return self._view(self._counts)

    @property
    def proportions(self) -> np.ndarray:
        """[n, L, E] load proportions seen so far (read-only)."""
        return self._view(self._p)

    @property
    def steps(self) -> np.ndarray:
        return self._view(self._steps)

    def since(self, iterations: int) -> slice:
        """Records within the last `iterations` iterations (at least the last record)."""
        if self._n == 0:
            return slice(0, 0)
        start = int(np.searchsorted(self._steps[: self._n], self._steps[self._n - 1] - iterations, side="right"))
        return slice(min(start, self._n - 1), self._n)


class Predictor:
    """Base class of every load predictor. See the module docstring."""

    #: The name `--model` selects it by.
    name: ClassVar[str] = ""
    #: Parameters and their defaults; `--param key=value` may set only these.
    defaults: ClassVar[dict[str, Any]] = {}
    #: Whether it cannot work without the task's training traces.
    needs_training: ClassVar[bool] = False
    #: Refit policies it supports: "every" (every origin), "every:K", "once".
    refit_policies: ClassVar[tuple[str, ...]] = ("every", "every:K", "once")
    #: Optuna search space: param -> ("int"|"float"|"log"|"cat", low, high) or ("cat", [choices]).
    search_space: ClassVar[dict[str, tuple]] = {}
    #: Where an engine's estimator reads its defaults from (files and commits); empty for the others.
    source: ClassVar[str] = ""
    #: Bumped when the model's behaviour changes, so cached results are not reused.
    version: ClassVar[int] = 1
    #: Whether, with refit "every", its forecasts depend only on the history shown (however it was
    #: split into `observe` calls) and not on earlier `predict` calls, and it keeps no per-origin
    #: tallies for `mlflow_extras`: then a run's origins can be evaluated in independent chunks
    #: (bench.executors, docs/scaling.md). May be a property reading the params.
    replayable: ClassVar[bool] = False
    #: Whether each layer's forecast depends on that layer's records alone: then a trace's layers can be
    #: evaluated in separate groups (bench.sharded) with the same results.
    layerwise: ClassVar[bool] = False

    #: Set by the harness before each :meth:`predict`: the iteration numbers of the records to forecast.
    target_steps: np.ndarray | None = None

    def __init__(self, **params: Any):
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            known = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items()) or "none"
            raise ParamError(f"{self.name or type(self).__name__}: unknown parameter(s) {unknown}; known: {known}")
        self.params = {**self.defaults, **{k: self._coerce(k, v) for k, v in params.items()}}
        self.history: History | None = None

    def _coerce(self, key: str, value: Any) -> Any:
        default = self.defaults[key]
        if default is None or value is None or isinstance(default, str) and isinstance(value, str):
            return value
        try:
            if isinstance(default, bool):
                if isinstance(value, str):
                    return {"true": True, "1": True, "false": False, "0": False}[value.lower()]
                return bool(value)
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                out = type(default)(value)
                if isinstance(default, int) and out != float(value):
                    raise ValueError
                return out
        except (ValueError, KeyError, TypeError):
            raise ParamError(
                f"{self.name}: parameter {key}={value!r} must be of type {type(default).__name__}"
            ) from None
        return value

    # ---- called by the harness -------------------------------------------------------------
    def start(self, layers: int, experts: int, training: Sequence[Any] = ()) -> None:
        """Reset for a new trace under test; fit on the training traces if there are any."""
        self.history = History(layers, experts)
        if self.needs_training and not training:
            raise ParamError(f"{self.name} needs training traces: give the task --train DATASET")
        if training:
            self.fit(training)

    def observe(self, counts: np.ndarray, steps: np.ndarray) -> None:
        """New past records arrived (copies, never views of the trace under test)."""
        if len(steps):
            p = self.history.append(counts, steps)
            self.update(p, self.history.steps[-len(steps) :])

    def forecast(self, target_steps: np.ndarray) -> np.ndarray:
        """The forecast of the records at `target_steps` (their iteration numbers): sets
        :attr:`target_steps`, then calls ``predict(len(target_steps))``."""
        self.target_steps = np.asarray(target_steps)
        return self.predict(len(self.target_steps))

    def observe_sources(self, source_counts: np.ndarray, steps: np.ndarray) -> None:
        """The per-source split ``[k, L, S, E]`` of the records just given to :meth:`observe` (copies); called
        only in a run that scores per-source forecasts, right after :meth:`observe` with the same records."""
        if len(steps):
            self.history.append_sources(source_counts)

    def forecast_sources(self, target_steps: np.ndarray) -> np.ndarray:
        """The per-source forecast of the records at `target_steps`: sets :attr:`target_steps`, then calls
        ``predict_sources(len(target_steps))``. The harness calls it right after :meth:`forecast`, and only on a
        predictor that implements :meth:`predict_sources` (:attr:`per_source`)."""
        self.target_steps = np.asarray(target_steps)
        return self.predict_sources(len(self.target_steps))

    @property
    def per_source(self) -> bool:
        """Whether it forecasts per-source loads itself: it implements :meth:`predict_sources`."""
        return type(self).predict_sources is not Predictor.predict_sources

    def forecast_quantiles(self, target_steps: np.ndarray) -> np.ndarray:
        """The quantile forecast of the records at `target_steps`: sets :attr:`target_steps`, then calls
        ``predict_quantiles(len(target_steps))``. The harness calls it right after :meth:`forecast`."""
        self.target_steps = np.asarray(target_steps)
        return self.predict_quantiles(len(self.target_steps))

    @property
    def probabilistic(self) -> bool:
        """Whether it forecasts quantiles too: it implements :meth:`predict_quantiles`."""
        return type(self).predict_quantiles is not Predictor.predict_quantiles

    # ---- written by a contributor ----------------------------------------------------------
    def fit(self, training: Sequence[Any]) -> None:
        """Learn from whole training traces (other runs, never the trace under test)."""

    def update(self, proportions: np.ndarray, steps: np.ndarray) -> None:
        """Cheap state update with the records just appended to ``self.history``."""

    def refit(self) -> None:
        """Re-estimate from ``self.history``; the task's refit policy says when it is called."""

    def predict(self, records: int) -> np.ndarray:
        """Return phat[records, layers, experts]: one distribution over experts per record to forecast.

        `records` counts records, not iterations (a horizon of 1,000 iterations is 100 records on a
        trace recorded every 10th iteration); their iteration numbers are in :attr:`target_steps`.
        """
        raise NotImplementedError

    def predict_quantiles(self, records: int) -> np.ndarray:
        """Optional: q[records, layers, experts, levels], the quantiles of each expert's load share in each
        record to forecast at :data:`QUANTILE_LEVELS` (non-decreasing along the last axis, within [0, 1]).

        Each is a marginal quantile of one expert's share in one record, so the quantiles of one record
        need not sum to 1 over experts (the median's do not in general).
        """
        raise NotImplementedError

    def predict_sources(self, records: int) -> np.ndarray:
        """Optional: ``ps[records, layers, sources, experts]``, the share of each layer's routed tokens in each record
        to forecast that source `s` (a rank or node) sends to expert `e`: each ``[sources, experts]`` slice sums to
        1. The past split is in ``self.history.source_counts``. A predictor without it is given the split of its
        point forecast by the history's per-source shares (docs/protocol.md, "Per-source loads")."""
        raise NotImplementedError

    def predict_all(self, counts: np.ndarray, proportions: np.ndarray, steps: np.ndarray, origins: np.ndarray,
                    origin_steps: np.ndarray) -> np.ndarray:
        """Built-in constant-forecast estimators only: the ``[n, L, E]`` estimate at each of the `origins` (record
        indices, ascending; `origin_steps` their iterations), each from the records before its origin, bit for bit
        what :meth:`predict` returns there when the harness shows the history origin by origin.

        `counts`, `proportions` and `steps` hold the records before the last origin. The harness calls it
        after :meth:`start`, only for the classes of :data:`models.registry.BUILTIN` themselves (never a
        subclass or a predictor from outside the package): code it does not ship is only ever shown the past.
        """
        raise NotImplementedError

    @property
    def vectorised(self) -> bool:
        """Whether it computes every origin at once (:meth:`predict_all`)."""
        return type(self).predict_all is not Predictor.predict_all

    # ---- helpers ---------------------------------------------------------------------------
    @staticmethod
    def repeat(estimate: np.ndarray, records: int) -> np.ndarray:
        """A constant forecast: `estimate[L, E]` for each of `records` records (no copy)."""
        return np.broadcast_to(estimate, (records,) + estimate.shape)
