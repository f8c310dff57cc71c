"""LSTM of the seed paper, as one global model over every layer and expert (PyTorch Lightning).

Input, per layer at an origin: the last ``window`` iterations of every expert's proportion,
averaged into ``bins`` equal bins (so a trace recorded every iteration and one recorded every
10th give the model the same span, and the cost does not grow with the recording rate), in
units of the uniform share. Each expert's sequence of bins goes through one shared LSTM, with
two features per bin (``E p`` and ``log(E p + 0.01)``) and the position as learned embeddings
(one for the layer, one for the expert) appended to every bin.

Output: a direct multi-horizon forecast of ``chunks`` horizon chunks, each ``horizon / chunks``
iterations long: for each chunk the LSTM's last state gives every expert a logit correction
``delta``, and the chunk's forecast is ``softmax_e(log(mean input share) + delta)``, a
distribution over the layer's experts by construction. "Mean input share" is the average over
the last ``base_window`` iterations of the input (100, SW_Avg's default), and the correction
head starts at zero, so the untrained model is SW_Avg and training only has to learn
departures from it. ``predict(records)`` expands the chunks to records: record
``h`` (``h * spacing`` iterations ahead) takes chunk ``floor(h * spacing / chunk_iters)``,
the last chunk also covering anything beyond ``horizon``.

Loss: the benchmark's own error, ``sum_e |phat - p|`` per record, averaged over the records
of the horizon that exist (targets past a trace's end are masked), Adam, fixed ``epochs``.
The chronologically last ``val_fraction`` of the training origins is held out and its loss
logged per epoch beside the training loss; the weights kept are those of the epoch with the
least validation loss, the weights before the training included (so a training that only
overfits changes nothing).

Training data:
- with the task's training traces (``--train DATASET``, e.g. another seed of the same tracer
  config, as the seed paper trained on one run and tested on another): trained once in
  ``fit`` on every origin of those traces; ``refit`` does nothing.
- without: trained on the history of the trace under test, at the first ``refit`` that has at
  least ``min_train_records`` records and then at every ``retrain_every``-th refit after it,
  each time continuing from the last weights. Until the first training it forecasts the
  window average. With ``--refit once`` and no training traces it may never train (it says so
  in its MLflow metrics: ``lstm.trainings``).

Quantiles (:meth:`LSTMPredictor.predict_quantiles`): the point forecast plus the empirical quantiles of its
own errors on held-out origins, standardised by the binomial scale ``sqrt(phat (1 - phat))`` and taken per
layer and horizon chunk (split conformal prediction, as in :func:`residual_quantiles`). The held-out origins
are the validation tail of the last training (origins the weights were not fitted on), or, before any
training or with ``val_fraction=0``, the last origins of the history under test, forecast with the model as
it is. Why residual quantiles and not quantile heads trained with the pinball loss: they leave the trained
point model, its loss and its checkpoints as they are, cost one forward pass over the held-out origins, and
are calibrated by construction where the held-out errors are like the next ones; the binomial scale is the
shape of a share's spread under multinomial and Dirichlet-multinomial routing (models/probabilistic.py), so
one set of quantiles serves hot and cold experts alike.

Deterministic given ``seed`` (``seed_everything``, ``deterministic=True``, ``num_workers=0``);
CPU by default, the GPU when one is present (``device=auto``). Checkpoint (``lstm.ckpt``) and
the per-epoch curves go to the run's MLflow record through :meth:`LSTMPredictor.mlflow_extras`.

torch and lightning are imported only when a model is built, never at import of this module.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Any, Sequence

import numpy as np

from .base import QUANTILE_LEVELS, ParamError, Predictor, record_spacing

_QUIET = ("pytorch_lightning", "lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric")


def window_inputs(p: np.ndarray, origins: np.ndarray, records: int, bins: int) -> np.ndarray:
    """[n, L, bins, E]: for each origin o, records o-records..o-1 averaged into `bins` bins.

    Records before the first are the first record repeated (left padding).
    """
    size = max(1, records // bins)
    span = size * bins
    idx = np.asarray(origins)[:, None] - span + np.arange(span)[None, :]
    x = p[np.clip(idx, 0, None)]  # [n, span, L, E]
    n, _, L, E = x.shape
    return x.reshape(n, bins, size, L, E).mean(axis=2).transpose(0, 2, 1, 3)


#: Held-out origins (per layer) the residual quantiles are taken over, the latest ones, and records per chunk
#: of each: bounds on the cost of calibrating on a long trace.
CALIBRATION_ORIGINS, CALIBRATION_RECORDS = 32, 50


def binomial_scale(phat: np.ndarray, experts: int) -> np.ndarray:
    """``sqrt(phat (1 - phat))``, phat floored at ``0.01 / E`` (the model's own floor on its inputs), so that an
    expert forecast near 0 keeps a spread."""
    p = np.maximum(phat, 0.01 / experts)
    return np.sqrt(p * np.clip(1.0 - p, 0.0, None))


def residual_quantiles(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray, layer: np.ndarray,
                       layers: int) -> np.ndarray:
    """[L, C, Q]: quantiles at ``QUANTILE_LEVELS`` of the standardised errors ``(p - phat) / binomial_scale(phat)``
    per layer and chunk, from samples' chunk forecasts ``pred[N, C, E]``, actual shares ``truth[N, C, K, E]`` of
    which the first ``valid[N]`` records exist, and each sample's ``layer[N]``. A chunk no sample reaches takes
    the nearest earlier chunk's (errors grow with the lead, so this errs narrow); 0 where a layer has none."""
    N, C, K, E = truth.shape
    z = (truth - pred[:, :, None, :]) / binomial_scale(pred, E)[:, :, None, :]
    exists = (np.arange(C * K).reshape(C, K)[None] < valid[:, None, None])  # [N, C, K]
    out = np.zeros((layers, C, len(QUANTILE_LEVELS)))
    for l in range(layers):
        seen = []
        for c in range(C):
            sel = z[layer == l, c][exists[layer == l, c]]  # [records, E]
            if sel.size:
                out[l, c] = np.quantile(sel, QUANTILE_LEVELS)
                seen.append(c)
        for c in range(C):  # a chunk past every sample's end: the nearest earlier chunk's (else the first later one's)
            if c not in seen and seen:
                out[l, c] = out[l, max((s for s in seen if s < c), default=min(seen))]
    return out


def _build_module(layers: int, experts: int, cfg: dict):
    """The LightningModule (defined here so torch is imported only when a model is built)."""
    import pytorch_lightning as pl
    import torch
    from torch import nn

    class LoadLSTM(pl.LightningModule):
        def __init__(self):
            super().__init__()
            emb, hid, C = cfg["embed"], cfg["hidden"], cfg["chunks"]
            self.layers, self.experts, self.chunks = layers, experts, C
            self.layer_emb = nn.Embedding(layers, emb)
            self.expert_emb = nn.Embedding(experts, emb)
            self.lstm = nn.LSTM(2 + 2 * emb, hid, batch_first=True)
            self.head = nn.Linear(hid, C)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
            self.targets = None  # [rows, L, E] float tensor of every training trace, set by fit
            self.chunk_records = 1
            self.losses: dict[str, list[float]] = {"train": [], "val": []}
            self.best: tuple[float, dict | None] = (math.inf, None)  # (val loss, weights)

        def forward(self, x: torch.Tensor, layer: torch.Tensor) -> torch.Tensor:
            """x [B, bins, E] (E p), layer [B] -> [B, C, E] distributions."""
            B, W, E = x.shape
            feats = torch.stack([x, torch.log(x + 0.01)], dim=-1).permute(0, 2, 1, 3)  # [B, E, W, 2]
            pos = torch.cat(
                [self.layer_emb(layer)[:, None, :].expand(B, E, -1), self.expert_emb.weight[None].expand(B, E, -1)],
                dim=-1,
            )  # [B, E, 2emb]
            inp = torch.cat([feats, pos[:, :, None, :].expand(B, E, W, pos.shape[-1])], dim=-1)
            _, (h, _) = self.lstm(inp.reshape(B * E, W, inp.shape[-1]))
            delta = self.head(h[-1]).view(B, E, self.chunks)
            base = torch.log(x[:, -cfg["base_bins"] :].mean(dim=1) / E + 1e-6)[..., None]  # [B, E, 1]
            return torch.softmax(base + delta, dim=1).permute(0, 2, 1)

        def _loss(self, batch) -> torch.Tensor:
            x, layer, row, valid = batch
            K, C = self.chunk_records, self.chunks
            pred = self(x, layer)  # [B, C, E]
            idx = row[:, None] + torch.arange(C * K, device=row.device)[None]  # [B, C*K]
            truth = self.targets[idx, layer[:, None]]  # [B, C*K, E]
            mask = (torch.arange(C * K, device=row.device)[None] < valid[:, None]).float()
            err = (pred.repeat_interleave(K, dim=1) - truth).abs().sum(-1)  # [B, C*K]
            return (err * mask).sum() / mask.sum().clamp(min=1.0)

        def training_step(self, batch, _):
            loss = self._loss(batch)
            self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(batch[0]))
            return loss

        def validation_step(self, batch, _):
            self.log("val_loss", self._loss(batch), on_step=False, on_epoch=True, batch_size=len(batch[0]))

        def on_train_epoch_end(self):  # after this epoch's validation
            self.losses["train"].append(float(self.trainer.callback_metrics["train_loss"]))
            if "val_loss" in self.trainer.callback_metrics:
                self.losses["val"].append(float(self.trainer.callback_metrics["val_loss"]))
                self.keep_if_best(self.losses["val"][-1])

        def keep_if_best(self, val: float) -> None:
            if val < self.best[0]:
                self.best = (val, {k: v.detach().clone() for k, v in self.state_dict().items()})

        def val_loss(self, loader) -> float:
            """The validation loss of the current weights, averaged as Lightning does (by batch size)."""
            total, n = 0.0, 0
            with torch.no_grad():
                for batch in loader:
                    batch = [b.to(self.device) for b in batch]
                    total += float(self._loss(batch)) * len(batch[0])
                    n += len(batch[0])
            return total / max(n, 1)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=cfg["lr"])

    return LoadLSTM()


class LSTMPredictor(Predictor):
    """The seed paper's LSTM as one global model over every layer and expert (docs/models.md)."""

    name = "lstm"
    defaults = {
        "window": 500,  # iterations of input
        "bins": 20,  # input steps the window is averaged into
        "base_window": 100,  # iterations averaged for the forecast the corrections start from
        "horizon": 2000,  # iterations the chunks cover (the task's longest horizon)
        "chunks": 4,
        "hidden": 32,
        "embed": 4,
        "epochs": 6,
        "batch_size": 64,  # (origin, layer) samples per batch
        "lr": 0.003,
        "sample_stride": 10,  # records between training origins
        "val_fraction": 0.1,
        "retrain_every": 20,  # refits between trainings on history (no training traces)
        "min_train_records": 50,
        "seed": 0,
        "device": "auto",  # auto | cpu | gpu
    }
    search_space = {
        "window": ("log", 100, 2000),
        "hidden": ("cat", [16, 32, 64]),
        "epochs": ("int", 4, 30),
        "lr": ("log", 3e-4, 1e-2),
        "chunks": ("cat", [1, 2, 4, 8]),
    }
    version = 3  # 3: quantiles from held-out residuals (predict_quantiles)

    def __init__(self, **params):
        super().__init__(**params)
        for k in (
            "window",
            "bins",
            "horizon",
            "chunks",
            "hidden",
            "embed",
            "epochs",
            "batch_size",
            "sample_stride",
            "retrain_every",
        ):
            if self.params[k] < 1:
                raise ParamError(f"lstm: {k} must be at least 1")
        if self.params["device"] not in ("auto", "cpu", "gpu"):
            raise ParamError("lstm: device must be auto, cpu or gpu")
        self.module = None
        self.curves: dict[str, list[float]] = {"lstm/train_loss": [], "lstm/val_loss": []}
        self.trainings = 0
        self.train_seconds = 0.0
        self._checkpoint: dict | None = None

    @classmethod
    def from_checkpoint(cls, path) -> "LSTMPredictor":
        """A predictor with the weights of an ``lstm.ckpt`` a run logged (``mlflow_extras``).

        It forecasts with those weights on any trace of the same layers and experts and never
        trains. The file holds tensors and plain values only, read with ``weights_only=True``.
        """
        import torch

        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            pred = cls(**ckpt["params"])
        except Exception as exc:  # unreadable, pickled objects refused by weights_only, missing keys, bad params
            raise ParamError(f"{path}: not an lstm checkpoint ({type(exc).__name__}: {exc})") from None
        pred._checkpoint = ckpt
        return pred

    # ---- harness hooks ---------------------------------------------------------------------
    def start(self, layers, experts, training=()):
        self.module = None
        self.curves = {"lstm/train_loss": [], "lstm/val_loss": []}
        self.trainings, self.train_seconds, self.best_val = 0, 0.0, None
        self._residual_q: np.ndarray | None = None  # [L, C, Q] from the last training's held-out origins
        self._from_training = bool(training) or self._checkpoint is not None  # then refit never trains
        self._refits_since = None  # refits since the last training on history
        self._layers, self._experts = layers, experts
        if self.params["device"] == "gpu":
            self._accelerator()  # no GPU: say so now, not at the first training
        if self._checkpoint is not None:
            ck = self._checkpoint
            if (ck["layers"], ck["experts"]) != (layers, experts):
                raise ParamError(
                    f"lstm: the checkpoint is for {(ck['layers'], ck['experts'])} (layers, experts); "
                    f"the trace under test has {(layers, experts)}"
                )
            self.module = _build_module(layers, experts, {**self.params, "base_bins": self._base_bins()})
            self.module.load_state_dict(ck["state_dict"])
            self.module.chunk_records = ck["chunk_records"]
            if "residual_quantiles" in ck:
                self._residual_q = np.asarray(ck["residual_quantiles"], dtype=np.float64)
        super().start(layers, experts, training)

    def fit(self, training: Sequence[Any]) -> None:
        if self._checkpoint is not None:
            return  # the checkpoint's weights are final
        for t in training:
            if t.proportions.shape[1:] != (self._layers, self._experts):
                raise ParamError(
                    f"lstm: training trace {t.id} has {t.proportions.shape[1:]} (layers, experts); "
                    f"the trace under test has {(self._layers, self._experts)}"
                )
        self._train([(np.asarray(t.proportions), np.asarray(t.steps)) for t in training])

    def refit(self) -> None:
        if self._from_training:
            return
        h = self.history
        if self._refits_since is not None:
            self._refits_since += 1
        due = self._refits_since is None or self._refits_since >= self.params["retrain_every"]
        if due and len(h) >= self.params["min_train_records"]:
            self._train([(np.asarray(h.proportions), np.asarray(h.steps))])
            self._refits_since = 0

    def _chunk_forecasts(self, x: np.ndarray, layer: np.ndarray) -> np.ndarray:
        """[N, C, E]: the model's chunk forecasts from inputs ``x[N, bins, E]`` (in units of ``E p``) of layers
        ``layer[N]``; the untrained model's is the base window's average."""
        E = x.shape[-1]
        if self.module is None:
            base = x[:, -self._base_bins() :].mean(axis=1) / E
            return np.repeat(base[:, None, :], self.params["chunks"], axis=1)
        import torch

        self.module.eval()
        with torch.no_grad():
            xt = torch.as_tensor(x, dtype=torch.float32, device=self.module.device)
            lt = torch.as_tensor(layer, device=self.module.device)
            return self.module(xt, lt).double().cpu().numpy()

    def _forecast_chunks(self, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """(chunk forecasts [L, C, E] from the newest window, each of `horizon` records' chunk)."""
        h = self.history
        spacing = record_spacing(h.steps)
        x = window_inputs(h.proportions * h.experts, np.array([len(h)]), self._records(spacing), self.params["bins"])[
            0
        ]  # [L, bins, E]
        chunk_dist = self._chunk_forecasts(x, np.arange(h.layers))
        chunk_iters = self.params["horizon"] / self.params["chunks"]
        which = np.minimum((np.arange(horizon) * spacing / chunk_iters).astype(int), self.params["chunks"] - 1)
        return chunk_dist, which

    def predict(self, horizon: int) -> np.ndarray:
        chunk_dist, which = self._forecast_chunks(horizon)
        out = chunk_dist[:, which, :].transpose(1, 0, 2)  # [H, L, E]
        return out / out.sum(axis=2, keepdims=True)

    def predict_quantiles(self, records: int) -> np.ndarray:
        """The point forecast plus the held-out standardised errors' quantiles (module docstring)."""
        h = self.history
        chunk_dist, which = self._forecast_chunks(records)
        z = self._residual_q
        if z is None:  # no held-out origins of a training: the history's last ones
            z = self._calibrate([(np.asarray(h.proportions), np.asarray(h.steps))], held_out=1.0)
        if z is None:  # a history too short for one origin: no spread to learn from yet
            z = np.zeros((h.layers, self.params["chunks"], len(QUANTILE_LEVELS)))
        phat = chunk_dist / chunk_dist.sum(axis=2, keepdims=True)  # [L, C, E]
        q = phat[..., None] + z[:, :, None, :] * binomial_scale(phat, h.experts)[..., None]  # [L, C, E, Q]
        return np.clip(q[:, which].transpose(1, 0, 2, 3), 0.0, 1.0)

    def _calibrate(self, traces: list[tuple[np.ndarray, np.ndarray]], held_out: float) -> np.ndarray | None:
        """[L, C, Q]: :func:`residual_quantiles` of the current model over the last `held_out` fraction of each
        trace's training origins (at most ``CALIBRATION_ORIGINS`` of them), whose targets lie within the trace
        (with ``held_out=1``, the history's, those whose whole horizon it holds where there are any); None where
        there are none."""
        L, E, C = self._layers, self._experts, self.params["chunks"]
        preds, truths, valids, layers = [], [], [], []
        for p, steps in traces:
            x, layer, row, valid, K, n = self._samples(p, steps, 0)
            if held_out >= 1 and (valid == K * C).any():  # the history's last origins whose horizon it holds whole
                whole = valid == K * C
                x, layer, row, valid = x[whole], layer[whole], row[whole], valid[whole]
                n = len(row) // L
            keep = min(n if held_out >= 1 else n - 1, CALIBRATION_ORIGINS, math.ceil(n * held_out)) * L
            if keep <= 0:
                continue
            x, layer, row, valid = x[-keep:], layer[-keep:], row[-keep:], valid[-keep:]
            pick = np.unique(np.linspace(0, K - 1, min(K, CALIBRATION_RECORDS)).astype(int))  # records of a chunk
            idx = row[:, None, None] + (np.arange(C)[:, None] * K + pick[None, :])[None]  # [N, C, k]
            padded = np.concatenate([p, np.zeros((K * C, L, E))])
            truths.append(padded[idx, layer[:, None, None]])  # [N, C, k, E]
            # a record counts if it exists: its offset in the horizon is below `valid`
            offsets = np.arange(C)[:, None] * K + pick[None, :]
            valids.append((offsets[None] < valid[:, None, None]).reshape(len(row), -1))  # [N, C*k]
            preds.append(self._chunk_forecasts(x, layer))
            layers.append(layer)
        if not preds:
            return None
        # the offsets grow along (chunk, record), so the records that exist come first: count them
        valid = np.concatenate(valids).sum(axis=1)
        return residual_quantiles(np.concatenate(preds), np.concatenate(truths), valid, np.concatenate(layers), L)

    # ---- training ----------------------------------------------------------------------------
    def _accelerator(self) -> str:
        """ "gpu" or "cpu": what `device` asks for, where torch has it."""
        import torch

        if self.params["device"] == "auto":
            return "gpu" if torch.cuda.is_available() else "cpu"
        if self.params["device"] == "gpu" and not torch.cuda.is_available():
            raise ParamError(
                f"lstm: device=gpu, but torch {torch.__version__} sees no CUDA GPU; use device=auto or cpu"
            )
        return self.params["device"]

    def _base_bins(self) -> int:
        bin_iters = self.params["window"] / self.params["bins"]
        return int(min(self.params["bins"], max(1, round(self.params["base_window"] / bin_iters))))

    def _records(self, spacing: float) -> int:
        return max(self.params["bins"], int(round(self.params["window"] / spacing)))

    def _samples(self, p: np.ndarray, steps: np.ndarray, offset: int):
        """Inputs [n*L, bins, E], layers, rows into the stacked targets, valid record counts."""
        T, L, E = p.shape
        spacing = record_spacing(steps)
        K = max(1, int(round(self.params["horizon"] / self.params["chunks"] / spacing)))
        first = max(1, self._records(spacing) // self.params["bins"])
        origins = np.arange(first, T - 1, self.params["sample_stride"])
        x = window_inputs(p * E, origins, self._records(spacing), self.params["bins"])  # [n, L, bins, E]
        n = len(origins)
        layer = np.tile(np.arange(L), n)
        row = np.repeat(offset + origins, L)
        valid = np.repeat(np.minimum(T - origins, K * self.params["chunks"]), L)
        return x.reshape(n * L, *x.shape[2:]), layer, row, valid, K, n

    def _train(self, traces: list[tuple[np.ndarray, np.ndarray]]) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Lightning's deprecation and "few workers" notices
            self._train_quietly(traces)

    def _train_quietly(self, traces: list[tuple[np.ndarray, np.ndarray]]) -> None:
        import pytorch_lightning as pl
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        for name in _QUIET:  # after the import, which sets its own level
            logging.getLogger(name).setLevel(logging.ERROR)

        t0 = time.perf_counter()
        pl.seed_everything(self.params["seed"], workers=True, verbose=False)
        L, E = self._layers, self._experts
        parts, stacked, offset = [], [], 0
        for p, steps in traces:
            x, layer, row, valid, K, n = self._samples(p, steps, offset)
            pad = K * self.params["chunks"]
            n_val = (
                min(n - 1, math.ceil(n * self.params["val_fraction"]))
                if self.params["val_fraction"] > 0 and n > 1
                else 0
            )
            split = (n - n_val) * L
            parts.append((x, layer, row, valid, split))
            stacked.append(np.concatenate([p, np.zeros((pad, L, E))]))
            offset += len(p) + pad
        cat = lambda i, lo: np.concatenate([pt[i][: pt[4]] if lo else pt[i][pt[4] :] for pt in parts])  # noqa: E731

        def dataset(train: bool):
            return TensorDataset(
                torch.as_tensor(cat(0, train), dtype=torch.float32),
                torch.as_tensor(cat(1, train)),
                torch.as_tensor(cat(2, train)),
                torch.as_tensor(cat(3, train)),
            )

        if self.module is None:
            self.module = _build_module(L, E, {**self.params, "base_bins": self._base_bins()})
        self.module.chunk_records = K
        train_ds, val_ds = dataset(True), dataset(False)
        if len(train_ds) == 0:
            return
        g = torch.Generator().manual_seed(self.params["seed"] + self.trainings)
        train_dl = DataLoader(train_ds, batch_size=self.params["batch_size"], shuffle=True, num_workers=0, generator=g)
        val_dl = DataLoader(val_ds, batch_size=4 * self.params["batch_size"], num_workers=0) if len(val_ds) else None
        accel = self._accelerator()
        if accel == "gpu":
            import os

            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
        self.module.losses = {"train": [], "val": []}
        self.module.targets = torch.as_tensor(np.concatenate(stacked), dtype=torch.float32)
        trainer = pl.Trainer(
            max_epochs=self.params["epochs"],
            accelerator=accel,
            devices=1,
            deterministic=True,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
            log_every_n_steps=1,
        )
        device = "cuda" if accel == "gpu" else "cpu"
        self.module.to(device)
        self.module.targets = self.module.targets.to(device)
        self.module.best = (math.inf, None)
        if val_dl is not None:  # the weights before this training compete with every epoch's
            self.module.keep_if_best(self.module.val_loss(val_dl))
        # `predict` left it in eval mode, which Lightning keeps and cuDNN's LSTM cannot backpropagate in
        self.module.train()
        trainer.fit(self.module, train_dl, val_dl)
        if self.module.best[1] is not None:
            self.module.load_state_dict(self.module.best[1])
            self.best_val = self.module.best[0]
        self.module.best = (math.inf, None)
        self.module.targets = None
        if self.params["val_fraction"] > 0:  # the validation tail: origins the weights were not fitted on
            self._residual_q = self._calibrate(traces, held_out=self.params["val_fraction"])
        self.curves["lstm/train_loss"] += self.module.losses["train"]
        self.curves["lstm/val_loss"] += self.module.losses["val"]
        self.trainings += 1
        self.train_seconds += time.perf_counter() - t0

    # ---- MLflow --------------------------------------------------------------------------------
    def mlflow_extras(self, folder):
        from ._extras import report

        metrics = {"lstm.trainings": self.trainings, "lstm.train_seconds": self.train_seconds}
        if self.best_val is not None:
            metrics["lstm.best_val_loss"] = self.best_val
        for key in ("train_loss", "val_loss"):
            if self.curves[f"lstm/{key}"]:
                metrics[f"lstm.final_{key}"] = self.curves[f"lstm/{key}"][-1]
        files = {}
        if self.module is not None:
            metrics["lstm.parameters"] = sum(p.numel() for p in self.module.parameters())

            def write(path):
                import torch

                torch.save(
                    {
                        "state_dict": {k: v.cpu() for k, v in self.module.state_dict().items()},
                        "params": self.params,
                        "layers": self._layers,
                        "experts": self._experts,
                        "chunk_records": self.module.chunk_records,
                        **(
                            {"residual_quantiles": torch.as_tensor(self._residual_q)}
                            if self._residual_q is not None
                            else {}
                        ),
                    },
                    path,
                )

            files["lstm.ckpt"] = write
        curves = {k: v for k, v in self.curves.items() if v}
        return report(folder, metrics=metrics, curves=curves, files=files)
