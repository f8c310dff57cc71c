"""Any darts forecasting model as a predictor: ``--model darts:ExponentialSmoothing --param damped=true``.

- local models that take multivariate series (``NaiveMean``, ``NaiveDrift``, ...): one fit on a
  single series with ``L*E`` components;
- other local models (``ExponentialSmoothing``, ``ARIMA``, ...): one model per (layer, expert)
  series;
- global models (torch models such as ``NBEATSModel``, ``TiDEModel``, ``BlockRNNModel``, and
  regression models): one model trained over all ``L*E`` univariate series of the window, at
  most ``max_samples_per_ts`` training windows from each; it keeps its weights between refits
  and forecasts every series from its current window. It sees each series as its deviation
  from the window's last value (``center=last``; or its mean, ``center=mean``) in units of 1/E,
  so an untrained or undertrained model falls back to the last value rather than to nonsense.

A model that supports probabilistic prediction (local statistical models such as
``ExponentialSmoothing`` or ``ARIMA``; torch models given a ``likelihood``) gives quantiles: the
empirical quantiles of ``QUANTILE_SAMPLES`` sample paths darts draws (``predict(num_samples=...)``).

Torch models train on the CPU without progress bars, loggers or checkpoints; the defaults below
are small so that a training takes seconds on 2 cores. Window, refit and clipping:
:mod:`models.adapters.common`.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any

import numpy as np

from models.base import QUANTILE_LEVELS

from .common import LibraryAdapter, constructor_params, quiet

#: Sample paths darts draws per series for a quantile forecast (a 0.99 quantile from 500 draws sits about
#: 5 draws in from the largest; more cost proportionally more).
QUANTILE_SAMPLES = 500

_SMALL_TORCH = {"n_epochs": 5, "batch_size": 64, "random_state": 0, "fit_every": 1000}
_TORCH_SPACE = {"input_chunk_length": ("int", 10, 40), "n_epochs": ("int", 2, 10), "center": ("cat", ["last", "mean"])}

#: Adapter defaults that differ from the library's, and search spaces, per model.
TUNING: dict[str, dict[str, Any]] = {
    # expert shares have no season (darts would guess one); no trend: simple exponential smoothing,
    # 5x cheaper than Holt's and its 2k-iteration extrapolation does worse (`--param trend=additive`)
    "ExponentialSmoothing": {
        "overrides": {"seasonal": None, "trend": None},
        "space": {"trend": ("cat", [None, "additive"]), "damped": ("cat", [False, True])},
    },
    "NBEATSModel": {
        "overrides": {
            "input_chunk_length": 20,
            "output_chunk_length": 10,
            "num_stacks": 2,
            "num_blocks": 1,
            "num_layers": 2,
            "layer_widths": 64,
            **_SMALL_TORCH,
        },
        "space": _TORCH_SPACE,
    },
    "TiDEModel": {
        "overrides": {
            "input_chunk_length": 20,
            "output_chunk_length": 10,
            "hidden_size": 64,
            "decoder_output_dim": 8,
            "num_encoder_layers": 1,
            "num_decoder_layers": 1,
            **_SMALL_TORCH,
        },
        "space": _TORCH_SPACE,
    },
    "BlockRNNModel": {
        "overrides": {
            "input_chunk_length": 20,
            "output_chunk_length": 10,
            "model": "GRU",
            "hidden_dim": 32,
            **_SMALL_TORCH,
        }
    },
}

#: Torch-model constructor arguments that are the adapter's business, not the user's.
_TORCH_SKIP = (
    "model_name",
    "work_dir",
    "log_tensorboard",
    "save_checkpoints",
    "force_reset",
    "add_encoders",
    "pl_trainer_kwargs",
    "show_warnings",
    "nr_epochs_val_period",
    "enable_finetuning",
)
TRAINER = {
    "accelerator": "cpu",
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "logger": False,
    "enable_checkpointing": False,
}


def _silence_lightning() -> None:
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning", "lightning_fabric", "darts"):
        logging.getLogger(name).setLevel(logging.WARNING)


@functools.cache
def adapter_class(name: str) -> type[LibraryAdapter]:
    """The predictor class for the darts model `name` (a class of ``darts.models``)."""
    with quiet():
        import darts.models
        from darts.models.forecasting.forecasting_model import ForecastingModel, GlobalForecastingModel
        from darts.models.forecasting.torch_forecasting_model import TorchForecastingModel
    _silence_lightning()
    est = getattr(darts.models, name, None)
    if not (isinstance(est, type) and issubclass(est, ForecastingModel)):
        raise LookupError(f"darts has no forecasting model {name!r}")
    torch = issubclass(est, TorchForecastingModel)
    params = constructor_params(est, TorchForecastingModel, skip=_TORCH_SKIP) if torch else constructor_params(est)
    tuning = TUNING.get(name, {})
    glob = issubclass(est, GlobalForecastingModel)
    return DartsAdapter.make(
        "darts",
        est,
        params,
        overrides=tuning.get("overrides"),
        space=tuning.get("space"),
        extra_adapter={"max_samples_per_ts": 8, "center": "last"} if glob else None,
        global_model=glob,
        torch=torch,
    )


class DartsAdapter(LibraryAdapter):
    torch = False

    def library_kwargs(self):
        kwargs = super().library_kwargs()
        if self.torch:
            kwargs["pl_trainer_kwargs"] = dict(TRAINER)
        return kwargs

    @functools.cached_property
    def _min_length(self) -> int:
        if self.torch:
            p = self.params
            return int(p["input_chunk_length"]) + int(p["output_chunk_length"]) + int(p.get("output_chunk_shift") or 0)
        return int(getattr(self.new_estimator(), "min_train_series_length", 1) or 1)

    def min_length(self) -> int:
        return max(super().min_length(), self._min_length)

    def _center(self, Y: np.ndarray) -> np.ndarray:
        return Y[-1] if self.params["center"] == "last" else Y.mean(axis=0)

    def _normalise(self, Y: np.ndarray) -> list:
        """A global model learns each series' deviation from its last value (``center=last``) or
        window mean (``center=mean``), in units of 1/E: values near 0, of one scale for every
        series, so that an untrained model forecasts the centre; torch models in float32."""
        Z = (Y - self._center(Y)) * self.history.experts
        return self._series(Z.astype(np.float32) if self.torch else Z)

    @staticmethod
    def _series(Y: np.ndarray) -> list:
        from darts import TimeSeries

        return [TimeSeries.from_values(Y[:, j]) for j in range(Y.shape[1])]

    def _library_fit(self, Y, steps_ahead):
        from darts import TimeSeries

        model = self.new_estimator()
        if self.global_model:
            kwargs = {"verbose": False} if self.torch else {}
            if (
                "max_samples_per_ts" in inspect.signature(model.fit).parameters
            ):  # a bounded number of windows per series
                kwargs["max_samples_per_ts"] = self.params["max_samples_per_ts"]
            model.fit(self._normalise(Y), **kwargs)
            return model
        if model.supports_multivariate:
            model.fit(TimeSeries.from_values(Y))
            return [model]
        models = []
        for s in self._series(Y):
            m = self.new_estimator()
            m.fit(s)
            models.append(m)
        return models

    def _library_probabilistic(self) -> bool:
        return bool(self.new_estimator().supports_probabilistic_prediction)

    def _library_quantiles(self, state, offset, horizon):
        levels = np.asarray(QUANTILE_LEVELS)
        if self.global_model:
            Y = self.matrix()
            kwargs = {"verbose": False} if self.torch else {}
            out = state.predict(horizon, series=self._normalise(Y), num_samples=QUANTILE_SAMPLES, **kwargs)
            paths = np.stack([s.all_values()[:, 0, :] for s in out], axis=1)  # [H, S, samples]
            paths = paths / self.history.experts + self._center(Y)[None, :, None]
        else:
            paths = np.concatenate(
                [m.predict(offset + horizon, num_samples=QUANTILE_SAMPLES).all_values()[offset:] for m in state], axis=1
            )
        return np.moveaxis(np.quantile(paths, levels, axis=-1), 0, -1)

    def _library_forecast(self, state, offset, horizon):
        if self.global_model:  # the trained weights, the current window
            Y = self.matrix()
            out = state.predict(horizon, series=self._normalise(Y), **({"verbose": False} if self.torch else {}))
            return np.stack([s.values()[:, 0] for s in out], axis=1) / self.history.experts + self._center(Y)
        parts = [m.predict(offset + horizon).values()[offset:] for m in state]
        return np.concatenate(parts, axis=1)
