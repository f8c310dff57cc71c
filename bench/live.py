"""A forecaster in the loop: a predictor fed a running job's expert loads, re-planning every K steps.

:class:`LivePlanner` takes each step's counts ``[L, E]`` (in blocks, as a recorder ships them),
hands them to any registered predictor (``--model`` names and plugins: its cheap ``update`` runs
with every block; ``refit`` runs at each plan), and at every ``every``-th iteration forecasts the
next ``horizon`` iterations and turns the forecast's mean into a placement (:func:`bench.placement.place`).
Each plan goes to ``on_plan``; once its horizon has happened it is scored on the actual counts,
as the harness scores a forecast: forecast error (error_rate, window_error) and the imbalance
(max/mean device load) with the plan, with no plan (static round-robin) and with the oracle
(the same policy on the actual mean), logged through ``log(metrics, step)`` (e.g. ``mlflow.log_metrics``).

A plan made at iteration ``s`` has seen the records of iterations ``< s`` only, exactly as a
harness origin at ``s``: the plans of a live run are those computed offline from its trace
(:func:`offline_plans`; tests/bench/test_live.py).

:class:`RecordingPlanner` (plain PyTorch) and :mod:`bench.lightning` (a Lightning callback) attach a
:class:`datasets_registry.tracer.recorder.LoadRecorder` to a model's routers and drive a planner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from .metrics import forecast_errors
from .placement import Placement, PlacementSpec, imbalance, place, static_placement


@dataclass
class Plan:
    """What a live system decides at iteration `step`: the forecast of iterations
    ``step .. step + horizon - 1`` (``forecast[H, L, E]``) and the placement of its mean."""

    step: int
    forecast: np.ndarray
    placement: Placement
    scores: dict[str, float] = field(default_factory=dict)  # filled once the horizon has happened

    @property
    def estimate(self) -> np.ndarray:
        return self.forecast.mean(axis=0)


class LivePlanner:
    """Feed counts with :meth:`feed`; every `every` iterations a :class:`Plan` (see the module docstring)."""

    def __init__(
        self,
        model: str | Any,
        spec: str | PlacementSpec,
        every: int,
        horizon: int | None = None,
        params: Mapping[str, Any] | None = None,
        on_plan: Callable[[Plan], None] | None = None,
        log: Callable[[dict[str, float], int], None] | None = None,
    ):
        if every < 1:
            raise ValueError(f"plan interval must be >= 1 iteration, got {every}")
        self.model, self.params = model, dict(params or {})
        self.spec = PlacementSpec.parse(spec) if isinstance(spec, str) else spec
        self.every, self.horizon = every, horizon or every
        self.on_plan, self.log = on_plan, log
        self.predictor = None
        self.plans: list[Plan] = []
        self._counts: list[np.ndarray] = []  # records since the oldest plan not yet scored
        self._steps: list[int] = []
        self._static: Placement | None = None
        self._next: int | None = None

    def _start(self, layers: int, experts: int) -> None:
        from models.registry import predictor_class

        cls = predictor_class(self.model) if isinstance(self.model, str) else self.model
        self.predictor = cls(**self.params)
        self.predictor.start(layers, experts)
        self.spec.check(experts)
        self._static = static_placement(layers, experts, self.spec.devices, self.spec.nodes)

    @property
    def next_plan(self) -> int | None:
        """The iteration of the next plan (None before the first record)."""
        return self._next

    def feed(self, counts: np.ndarray, steps: np.ndarray, upto: int | None = None) -> list[Plan]:
        """Records ``counts[T, L, E]`` of iterations ``steps[T]`` (increasing); returns the plans made.

        The plan at a multiple ``b`` of `every` is made once every record before ``b`` is in: when a
        record at or after ``b`` arrives, or when `upto` (the next iteration to come) reaches ``b``.
        No plan precedes the first record.
        """
        counts, steps = np.asarray(counts), np.asarray(steps, dtype=np.int64)
        if counts.ndim != 3 or len(counts) != len(steps):
            raise ValueError(f"feed: counts must be [T, L, E] with one step each, got {counts.shape} and {steps.shape}")
        if not len(steps):
            return []
        if self.predictor is None:
            self._start(counts.shape[1], counts.shape[2])
            self._next = (int(steps[0]) // self.every + 1) * self.every
        last = int(steps[-1]) if upto is None else max(int(steps[-1]), int(upto))
        made, a = [], 0
        while self._next <= last:
            i = int(np.searchsorted(steps, self._next, "left"))
            self._observe(counts[a:i], steps[a:i])
            a = i
            made.append(self._plan(self._next))
            self._next += self.every
        self._observe(counts[a:], steps[a:])
        return made

    def _observe(self, counts: np.ndarray, steps: np.ndarray) -> None:
        if len(steps):
            self.predictor.observe(counts.copy(), steps.copy())
            self._counts.extend(counts)
            self._steps.extend(steps.tolist())
            self._score_done()

    def _plan(self, step: int) -> Plan:
        self.predictor.refit()
        targets = np.arange(step, step + self.horizon, dtype=np.int64)
        forecast = np.array(self.predictor.forecast(targets), dtype=np.float64)
        plan = Plan(step, forecast, place(forecast.mean(axis=0), self.spec))
        self.plans.append(plan)
        if self.on_plan is not None:
            self.on_plan(plan)
        return plan

    def _score_done(self) -> None:
        """Score every plan whose horizon the records now cover; drop records no plan needs."""
        steps = np.asarray(self._steps, dtype=np.int64)
        for plan in self.plans:
            end = plan.step + self.horizon
            if plan.scores or not len(steps) or steps[-1] < end - 1:
                continue
            inside = (steps >= plan.step) & (steps < end)
            if inside.any():
                plan.scores = score_plan(plan, np.stack(self._counts)[inside], self.spec, self._static)
                if self.log is not None:
                    self.log({f"live/{k}": v for k, v in plan.scores.items()}, plan.step)
        pending = [p.step for p in self.plans if not p.scores]
        keep_from = min(pending) if pending else (steps[-1] + 1 if len(steps) else 0)
        keep = [i for i, s in enumerate(self._steps) if s >= keep_from]
        self._counts = [self._counts[i] for i in keep]
        self._steps = [self._steps[i] for i in keep]


def score_plan(plan: Plan, counts: np.ndarray, spec: PlacementSpec, static: Placement) -> dict[str, float]:
    """A plan on what happened (``counts[T, L, E]``): forecast errors and imbalance with the plan, no plan
    (static) and the oracle, each a mean over steps and layers."""
    counts = np.asarray(counts, dtype=np.float64)
    p = counts / counts.sum(axis=2, keepdims=True)
    errors = forecast_errors(np.broadcast_to(plan.estimate, p.shape), p)
    oracle = place(p.mean(axis=0), spec)
    return {
        "error_rate": float(errors["error_rate"].mean()),
        "window_error": float(errors["window_error"].mean()),
        "imbalance": float(imbalance(plan.placement.device_loads(counts)).mean()),
        "imbalance_static": float(imbalance(static.device_loads(counts)).mean()),
        "imbalance_oracle": float(imbalance(oracle.device_loads(counts)).mean()),
    }


def offline_plans(trace, model: str | Any, spec: str | PlacementSpec, every: int, horizon: int | None = None,
                  params: Mapping[str, Any] | None = None, upto: int | None = None) -> list[Plan]:
    """The plans a live planner would have made over a recorded trace (fed at once, cut at every boundary);
    `upto`: the iteration after the trace, where a live run that went on would plan too."""
    planner = LivePlanner(model, spec, every, horizon, params)
    planner.feed(trace.counts, trace.steps, upto)
    return planner.plans


class RecordingPlanner:
    """Plain PyTorch: a :class:`LoadRecorder` on the model's routers feeding a :class:`LivePlanner`.

    ``recorder``: an attached ``LoadRecorder``; call :meth:`step` after each iteration. The records
    reach the planner in the recorder's blocks (``flush_every`` steps; the recorder copies them
    from the device then, without a per-step sync), cut at each plan boundary.
    """

    def __init__(self, recorder, planner: LivePlanner):
        self.recorder, self.planner = recorder, planner
        self._fed = 0

    def step(self, iteration: int) -> list[Plan]:
        """Close iteration `iteration` in the recorder; feed the planner when a block is full or a plan is due."""
        self.recorder.step(iteration)
        pending = len(self.recorder.steps()) - self._fed
        nxt = self.planner.next_plan
        if pending >= self.recorder.flush_every or (pending and (nxt is None or iteration + 1 >= nxt)):
            return self.flush(upto=iteration + 1)
        return []

    def flush(self, upto: int | None = None) -> list[Plan]:
        """Feed every record not fed yet (waits for the device); `upto`: the next iteration to come."""
        counts, steps = self.recorder.counts(), self.recorder.steps()
        new = slice(self._fed, len(steps))
        self._fed = len(steps)
        return self.planner.feed(counts[new], steps[new], upto) if new.stop > new.start else []


__all__ = ["Plan", "LivePlanner", "RecordingPlanner", "score_plan", "offline_plans"]
