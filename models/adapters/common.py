"""What the library adapters share: the Predictor side, data conversion, clipping, renormalising.

A library adapter turns a forecaster of a time-series library into a :class:`~models.base.Predictor`:

- **series**: every (layer, expert) proportion is one univariate series, ``S = L * E`` of them,
  laid out as the columns of a matrix ``Y[n, S]`` (record index as time, spacing ignored);
- **window**: the library only sees the trailing ``window`` *iterations* of the history (the
  ``window`` parameter, like ``sw_avg``'s), which bounds its cost on long traces;
- **refit**: the library is fitted when the task's refit policy calls :meth:`refit` (``--refit
  every`` fits at every origin, ``every:K`` every K origins, ``once`` at the first), and only if
  at least ``fit_every`` iterations have passed since its last fit (0, the default of local
  models: every time; torch models default to 1000, a few trainings per trace). Between fits
  a local model continues its last fitted forecast path (the forecast for the current origin is
  the path from the fit's cutoff, shifted by the records seen since), and a global model
  (darts torch/regression models) keeps its weights but forecasts from the current window;
- **too little history**: while the window holds fewer records than the library model needs
  (``min_records``, or what darts reports), the forecast is the window's mean share, counted as
  a fallback; the library fits as soon as enough history has arrived;
- **output**: the library's forecasts are clipped at 0 and renormalised so that each (step,
  layer) row sums to 1. How often that was needed is counted (:attr:`LibraryAdapter.stats`) and
  logged with the run (``adapter.*`` metrics). NaN or inf from a library is a failed forecast,
  never repaired.
- **quantiles**: where the wrapped forecaster gives probabilistic forecasts (sktime's
  ``capability:pred_int`` tag, darts' ``supports_probabilistic_prediction``), the adapter is a
  probabilistic predictor (:attr:`models.base.Predictor.probabilistic`) and passes the library's
  quantiles at ``QUANTILE_LEVELS`` through, from the same fitted model as the point forecast:
  clipped to [0, 1] and sorted along the levels where a library's quantiles cross
  (:func:`to_quantiles`). While it falls back to the window's mean, its quantiles are the
  window's empirical ones (``sw_quantiles``').
"""

from __future__ import annotations

import enum
import inspect
import time
import warnings
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np

from models.base import QUANTILE_LEVELS, ParamError, Predictor

#: Parameters every adapter adds to the library's own constructor parameters.
ADAPTER_DEFAULTS: dict[str, Any] = {"window": 2000, "min_records": 5, "fit_every": 0}
ADAPTER_SPACE: dict[str, tuple] = {"window": ("log", 200, 5000)}
_SIMPLE = (bool, int, float, str)


@contextmanager
def quiet():
    """Silence library warnings for the duration, without leaking filter changes.

    sktime re-enables FutureWarnings globally from inside its calls; ``record=True`` captures
    whatever gets through instead of printing it, and the filters are restored on exit.
    """
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("ignore")
        yield


def constructor_params(
    *classes: type, skip: tuple[str, ...] = ()
) -> tuple[dict[str, Any], dict[str, type], frozenset[str]]:
    """Keyword parameters with simple defaults (None, bool, int, float, str, Enum) of `classes`' __init__.

    Returns (defaults, enums, required): Enum defaults are given by their value; `enums` maps those
    parameters to their Enum type so values can be turned back into members. A required
    parameter (no default) is listed with None: the user (or the adapter's overrides) must set it.
    """
    out: dict[str, Any] = {}
    enums: dict[str, type] = {}
    required = set()
    for cls in classes:
        for name, p in inspect.signature(cls.__init__).parameters.items():
            if name in out or name == "self" or name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if p.default is p.empty:
                required.add(name)
            d = None if p.default is p.empty else p.default
            if isinstance(d, enum.Enum):
                enums[name] = type(d)
                d = d.value
            if d is None or isinstance(d, _SIMPLE):
                out[name] = d
    return out, enums, frozenset(required & set(out))


def as_enum(kind: type, value: Any) -> Any:
    """`value` (a member, its value or its name, any case) as a member of the Enum `kind`."""
    if value is None or isinstance(value, kind):
        return value
    for member in kind:
        if value == member.value or str(value).lower() in (str(member.value).lower(), member.name.lower()):
            return member
    raise ParamError(f"{value!r} is not one of {[m.value for m in kind]}")


def window_start(steps: np.ndarray, end: int, iterations: int) -> int:
    """First record of the trailing `iterations` iterations of ``steps[:end]`` (``History.since``)."""
    if end <= 0:
        return 0
    start = int(np.searchsorted(steps[:end], steps[end - 1] - iterations, side="right"))
    return min(start, end - 1)


def new_stats() -> dict[str, float]:
    return {
        "forecasts": 0,
        "rows": 0,
        "rows_clipped": 0,
        "rows_renormalised": 0,
        "rows_degenerate": 0,
        "fallback_forecasts": 0,
        "library_fits": 0,
        "fit_seconds": 0.0,
    }


def to_distribution(raw: np.ndarray, layers: int, experts: int, stats: dict[str, float] | None = None) -> np.ndarray:
    """Library output ``[H, L*E]`` -> ``phat[H, L, E]``: clipped at 0, each row renormalised to 1.

    A row whose every value is <= 0 becomes uniform (counted as degenerate). NaN/inf raises: a
    library that produced them failed, and the harness records the failure.
    """
    x = np.array(raw, dtype=np.float64).reshape(-1, layers, experts)
    if not np.isfinite(x).all():
        raise FloatingPointError(f"library forecast has {int((~np.isfinite(x)).sum())} NaN/inf values")
    negative = (x < 0).any(axis=2)
    np.clip(x, 0.0, None, out=x)
    total = x.sum(axis=2, keepdims=True)
    degenerate = total[..., 0] <= 0
    x[degenerate] = 1.0 / experts
    total[degenerate] = 1.0
    off = np.abs(total[..., 0] - 1.0) > 1e-12
    x /= total
    if stats is not None:
        stats["forecasts"] += 1
        stats["rows"] += x.shape[0] * layers
        stats["rows_clipped"] += int(negative.sum())
        stats["rows_renormalised"] += int((off & ~degenerate).sum())
        stats["rows_degenerate"] += int(degenerate.sum())
    return x


def to_quantiles(raw: np.ndarray, layers: int, experts: int) -> np.ndarray:
    """Library quantiles ``[H, L*E, Q]`` -> ``q[H, L, E, Q]``: clipped to [0, 1] and sorted along the levels (the
    rearrangement that makes crossing quantiles monotone without moving the others). NaN/inf raises, as in
    :func:`to_distribution`."""
    q = np.array(raw, dtype=np.float64).reshape(-1, layers, experts, len(QUANTILE_LEVELS))
    if not np.isfinite(q).all():
        raise FloatingPointError(f"library quantiles have {int((~np.isfinite(q)).sum())} NaN/inf values")
    return np.sort(np.clip(q, 0.0, 1.0), axis=-1)


class LibraryAdapter(Predictor):
    """Base of the generated adapter classes; a library module fills in the ``_library_*`` hooks."""

    library: ClassVar[str] = ""
    #: The library's forecaster class.
    estimator: ClassVar[type | None] = None
    #: Constructor parameters whose Enum type turns values back into members.
    enum_params: ClassVar[dict[str, type]] = {}
    #: The library's own defaults of the exposed parameters (only values that differ are passed).
    library_defaults: ClassVar[dict[str, Any]] = {}
    #: Library parameters without a default (listed in `defaults` as None until set).
    required: ClassVar[frozenset[str]] = frozenset()
    #: Keys of `defaults` that are the adapter's own, not the library's.
    adapter_keys: ClassVar[frozenset[str]] = frozenset(ADAPTER_DEFAULTS)
    #: Whether one model is trained over all series and forecasts any series it is given.
    global_model: ClassVar[bool] = False
    #: 2: the library's quantiles where it has them (:meth:`predict_quantiles`).
    version: ClassVar[int] = 2

    # ---- building the class ----------------------------------------------------------------
    @classmethod
    def make(
        cls,
        library: str,
        estimator: type,
        params: tuple[dict[str, Any], dict[str, type], frozenset[str]],
        overrides: dict[str, Any] | None = None,
        space: dict[str, tuple] | None = None,
        extra_adapter: dict[str, Any] | None = None,
        **attrs: Any,
    ) -> type["LibraryAdapter"]:
        """A Predictor subclass for `estimator`: adapter parameters plus the library's (:func:`constructor_params`)."""
        library_defaults, enum_params, required = params
        adapter = {**ADAPTER_DEFAULTS, **(extra_adapter or {})}
        clash = sorted(set(adapter) & set(library_defaults))
        if clash:
            raise LookupError(f"{library}:{estimator.__name__}: parameter(s) {clash} clash with the adapter's own")
        overrides = dict(overrides or {})
        defaults = {**adapter, **library_defaults, **overrides}
        search = {**ADAPTER_SPACE, **(space or {})}
        name = f"{library}:{estimator.__name__}"
        doc = (
            f"{name} through the {library} adapter (models.adapters.common).\n\n"
            f"Parameters: the adapter's {sorted(adapter)} and {estimator.__name__}'s constructor parameters."
        )
        return type(
            f"{library.capitalize()}_{estimator.__name__}",
            (cls,),
            {
                "__doc__": doc,
                "__module__": cls.__module__,
                "name": name,
                "library": library,
                "estimator": estimator,
                "defaults": defaults,
                "search_space": search,
                "library_defaults": dict(library_defaults),
                "enum_params": dict(enum_params),
                "required": required,
                "adapter_keys": frozenset(adapter),
                **attrs,
            },
        )

    # ---- the Predictor side ----------------------------------------------------------------
    def start(self, layers, experts, training=()):
        self.stats = new_stats()
        self._fit_end: int | None = None  # history length the library was (or will be) fitted on
        self._state: Any = None  # the fitted library model; None: not fitted for _fit_end yet
        self._fallback = False
        super().start(layers, experts, training)

    def refit(self):
        h, every = self.history, self.params["fit_every"]
        if every > 0 and self._fit_end and not self._fallback and h.steps[-1] - h.steps[self._fit_end - 1] < every:
            return  # fitted recently enough
        self._fit_end = len(h)
        self._state = None

    def predict(self, horizon):
        h = self.history
        if self._fit_end is None or (self._fallback and len(h) > self._fit_end):
            self._fit_end = len(h)  # never fitted, or fitted too early: fit now
            self._state = None
        Y = self.matrix(self._fit_end)
        self._fallback = len(Y) < self.min_length()
        if self._fallback:
            self.stats["fallback_forecasts"] += 1
            raw = np.broadcast_to(Y.mean(axis=0), (horizon, Y.shape[1]))
        else:
            offset = len(h) - self._fit_end
            with quiet():
                if self._state is None:
                    t0 = time.perf_counter()
                    self._state = self._library_fit(Y, offset + horizon)
                    self.stats["library_fits"] += 1
                    self.stats["fit_seconds"] += time.perf_counter() - t0
                raw = self._library_forecast(self._state, offset, horizon)
        return to_distribution(raw, h.layers, h.experts, self.stats)

    @property
    def probabilistic(self) -> bool:
        """Whether the wrapped forecaster gives probabilistic forecasts (asked of the library once)."""
        if "_probabilistic" not in self.__dict__:
            with quiet():
                self.__dict__["_probabilistic"] = bool(self._library_probabilistic())
        return self.__dict__["_probabilistic"]

    def predict_quantiles(self, records):
        """The library's quantiles from the model :meth:`predict` used at this origin (module docstring)."""
        if not self.probabilistic:
            raise NotImplementedError(f"{self.name} gives no probabilistic forecasts")
        h = self.history
        if self._fit_end is None or (self._state is None and not self._fallback):
            self.predict(records)  # fits the model the point forecast would use
        if self._fallback:
            from models.probabilistic import window_quantiles

            Y = self.matrix(self._fit_end)
            q = window_quantiles(Y.reshape(len(Y), h.layers, h.experts))
            return np.broadcast_to(q, (records,) + q.shape)
        with quiet():
            raw = self._library_quantiles(self._state, len(h) - self._fit_end, records)
        return to_quantiles(raw, h.layers, h.experts)

    def matrix(self, end: int | None = None) -> np.ndarray:
        """``Y[n, L*E]``: the proportions of the trailing window ending at history record `end`."""
        h = self.history
        end = len(h) if end is None else end
        start = window_start(h.steps, end, self.params["window"])
        return h.proportions[start:end].reshape(end - start, -1)

    def library_kwargs(self) -> dict[str, Any]:
        """The constructor arguments for the library: parameters that differ from its defaults."""
        out = {}
        for k, v in self.params.items():
            if (
                k in self.adapter_keys
                or (v is None and k in self.required)
                or (
                    k in self.library_defaults
                    and v == self.library_defaults[k]
                    and type(v) is type(self.library_defaults[k])
                )
            ):
                continue
            out[k] = as_enum(self.enum_params[k], v) if k in self.enum_params else v
        return out

    def new_estimator(self):
        with quiet():
            try:
                return self.estimator(**self.library_kwargs())
            except (TypeError, ValueError) as exc:
                missing = sorted(k for k in self.required if self.params.get(k) is None)
                hint = f" (required: --param {'=... --param '.join(missing)}=...)" if missing else ""
                raise ParamError(f"{self.name}: {exc}{hint}") from None

    def min_length(self) -> int:
        return max(1, int(self.params["min_records"]))

    def mlflow_extras(self, folder) -> dict:
        s = self.stats
        rows = max(1, s["rows"])
        metrics = {f"adapter.{k}": float(v) for k, v in s.items()}
        metrics.update(
            {
                "adapter.rows_clipped_frac": s["rows_clipped"] / rows,
                "adapter.rows_renormalised_frac": s["rows_renormalised"] / rows,
            }
        )
        return {"metrics": metrics}

    # ---- written by each library module ----------------------------------------------------
    def _library_fit(self, Y: np.ndarray, steps_ahead: int) -> Any:
        """Fit on ``Y[n, S]``; `steps_ahead` is the furthest record ahead needed now."""
        raise NotImplementedError

    def _library_forecast(self, state: Any, offset: int, horizon: int) -> np.ndarray:
        """``[horizon, S]``: records ``offset+1 .. offset+horizon`` after the fit's last record
        (a global model forecasts from the current window instead: ``self.matrix()``)."""
        raise NotImplementedError

    def _library_probabilistic(self) -> bool:
        """Whether the configured library forecaster gives probabilistic forecasts."""
        return False

    def _library_quantiles(self, state: Any, offset: int, horizon: int) -> np.ndarray:
        """``[horizon, S, Q]``: the quantiles at ``QUANTILE_LEVELS`` of the records :meth:`_library_forecast`
        forecasts, from the same fitted `state`."""
        raise NotImplementedError
