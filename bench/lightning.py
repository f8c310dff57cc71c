"""The forecaster in the loop (:mod:`bench.live`) as a PyTorch Lightning callback.

    from bench.lightning import ExpertLoadPlanning

    planning = ExpertLoadPlanning(
        routers=lambda m: {n: x for n, x in m.named_modules() if n.endswith("mlp.gate")},
        num_experts=8, top_k=2, model="sw_avg", params={"window": 100}, spec="G=8,R=8", every=1000,
        on_plan=lambda plan: ...,  # e.g. bench.engines.export(plan.placement, "sglang")
    )
    Trainer(callbacks=[planning], logger=MLFlowLogger(...)).fit(module)

One record per training batch (iteration = the batch's index in the fit); each scored plan's
``live/*`` metrics go to every logger of the trainer at the plan's iteration.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import pytorch_lightning as pl
from torch import nn

from .live import LivePlanner, Plan, RecordingPlanner


class ExpertLoadPlanning(pl.Callback):
    """Records the routers' loads during ``fit`` and plans every `every` iterations (see the module docstring).

    `routers`: the model's router modules, a function of the LightningModule; `kind`, `select`,
    `top_k`: as :meth:`LoadRecorder.attach`. `model`, `params`, `spec`, `every`, `horizon`,
    `on_plan`: as :class:`bench.live.LivePlanner`.
    """

    def __init__(
        self,
        routers: Callable[[nn.Module], Mapping[str, nn.Module]],
        num_experts: int,
        model: str | Any,
        spec: str,
        every: int,
        horizon: int | None = None,
        params: Mapping[str, Any] | None = None,
        kind: str = "logits",
        select=None,
        top_k: int | None = None,
        on_plan: Callable[[Plan], None] | None = None,
        flush_every: int = 100,
    ):
        self.routers, self.num_experts, self.kind, self.select, self.top_k = routers, num_experts, kind, select, top_k
        self.flush_every = flush_every
        self._planner_args = dict(model=model, spec=spec, every=every, horizon=horizon, params=params, on_plan=on_plan)
        self.driver: RecordingPlanner | None = None
        self._trainer: pl.Trainer | None = None
        self._iteration = 0

    @property
    def plans(self) -> list[Plan]:
        return self.driver.planner.plans if self.driver else []

    def _log(self, metrics: dict[str, float], step: int) -> None:
        for logger in self._trainer.loggers if self._trainer else ():
            logger.log_metrics(metrics, step=step)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from datasets_registry.tracer.recorder import LoadRecorder

        self._trainer = trainer
        recorder = LoadRecorder(self.num_experts, self.top_k, self.flush_every)
        recorder.attach(self.routers(pl_module), kind=self.kind, select=self.select)
        self.driver = RecordingPlanner(recorder, LivePlanner(**self._planner_args, log=self._log))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.driver.step(self._iteration)
        self._iteration += 1

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.driver.flush()
        self.driver.recorder.detach()


__all__ = ["ExpertLoadPlanning"]
