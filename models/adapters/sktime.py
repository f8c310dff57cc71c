"""Any sktime forecaster as a predictor: ``--model sktime:ThetaForecaster --param deseasonalize=false``.

The trailing window's ``L*E`` proportion series go to one forecaster as the columns of a wide
DataFrame; sktime fits univariate forecasters column by column (its own vectorisation) and
multivariate ones natively. A forecaster with prediction intervals (``capability:pred_int``) gives its
``predict_quantiles`` at the benchmark's levels. Everything else (window, refit, clipping) is
:mod:`models.adapters.common`.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

import numpy as np

from models.base import QUANTILE_LEVELS

from .common import LibraryAdapter, constructor_params, quiet

#: Where the usual forecasters live (found without sktime's slower registry lookup).
MODULES = (
    "sktime.forecasting.naive",
    "sktime.forecasting.theta",
    "sktime.forecasting.exp_smoothing",
    "sktime.forecasting.ets",
    "sktime.forecasting.arima",
    "sktime.forecasting.trend",
    "sktime.forecasting.croston",
)

#: Adapter defaults that differ from the library's, and search spaces, per forecaster.
TUNING: dict[str, dict[str, Any]] = {
    "NaiveForecaster": {"space": {"strategy": ("cat", ["last", "mean", "drift"])}},
    "ThetaForecaster": {"overrides": {"deseasonalize": False}, "space": {}},
    "ExponentialSmoothing": {"space": {"trend": ("cat", [None, "add"]), "damped_trend": ("cat", [False, True])}},
    "AutoETS": {"space": {"trend": ("cat", [None, "add"]), "damped_trend": ("cat", [False, True])}},
}


def _find(name: str) -> type:
    if "." in name:  # a full path: sktime:sktime.forecasting.theta.ThetaForecaster
        module, _, attr = name.rpartition(".")
        return getattr(importlib.import_module(module), attr)
    for module in MODULES:
        mod = importlib.import_module(module)
        if hasattr(mod, name):
            return getattr(mod, name)
    from sktime.registry import all_estimators

    found = dict(all_estimators("forecaster", return_names=True))
    if name not in found:
        raise LookupError(f"sktime has no forecaster {name!r}")
    return found[name]


@functools.cache
def adapter_class(name: str) -> type[LibraryAdapter]:
    """The predictor class for the sktime forecaster `name` (a class name or a dotted path)."""
    with quiet():
        try:
            est = _find(name)
        except (ImportError, AttributeError) as exc:
            raise LookupError(f"sktime:{name}: {exc}") from None
        from sktime.forecasting.base import BaseForecaster
    if not (isinstance(est, type) and issubclass(est, BaseForecaster)):
        raise LookupError(f"sktime:{name} is not an sktime forecaster")
    tuning = TUNING.get(est.__name__, {})
    return SktimeAdapter.make(
        "sktime", est, constructor_params(est), overrides=tuning.get("overrides"), space=tuning.get("space")
    )


class SktimeAdapter(LibraryAdapter):
    def _library_fit(self, Y: np.ndarray, steps_ahead: int) -> Any:
        import pandas as pd

        f = self.new_estimator()
        f.set_config(warnings="off", remember_data=False)
        if f.get_tag("requires-fh-in-fit", False):  # such a forecaster predicts only the fh it was fitted for
            f.fit(pd.DataFrame(Y), fh=np.arange(1, steps_ahead + 1))
        else:
            f.fit(pd.DataFrame(Y))
        return [f, steps_ahead, Y]

    def _library_probabilistic(self) -> bool:
        return bool(self.new_estimator().get_tag("capability:pred_int", False))

    def _library_quantiles(self, state, offset, horizon):
        f, fitted_ahead, Y = state
        alpha = list(QUANTILE_LEVELS)
        if not f.get_tag("requires-fh-in-fit", False):
            q = f.predict_quantiles(fh=np.arange(offset + 1, offset + horizon + 1), alpha=alpha)
        else:
            if offset + horizon > fitted_ahead:
                state[:] = self._library_fit(Y, offset + horizon)
            q = state[0].predict_quantiles(alpha=alpha).iloc[offset : offset + horizon]
        q = q[sorted(q.columns)]  # columns (series, level): series-major, levels ascending
        return q.to_numpy().reshape(horizon, Y.shape[1], len(alpha))

    def _library_forecast(self, state, offset, horizon):
        f, fitted_ahead, Y = state
        if not f.get_tag("requires-fh-in-fit", False):
            return f.predict(fh=np.arange(offset + 1, offset + horizon + 1)).to_numpy()
        if offset + horizon > fitted_ahead:
            state[:] = self._library_fit(Y, offset + horizon)  # same data, a longer horizon
        return state[0].predict().to_numpy()[offset : offset + horizon]
