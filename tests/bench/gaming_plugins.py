"""Submissions for tests/bench/test_cheaters_gallery.py: ways to game the ranking that are not about reading files."""

from __future__ import annotations

import sys

import numpy as np

from models.base import Predictor
from models.baselines import SlidingWindowAverage


class Peeker(Predictor):
    """Reads the future up the harness's stack: possible only in the harness's process (the Python API, or a
    built-in), never in the sandboxed worker a submission runs in; its scores are its only tell."""

    name = "peeker"

    def predict(self, records):
        frame = sys._getframe(1)
        while frame is not None:
            p = frame.f_locals.get("p_all")
            if p is not None and len(p) > len(self.history):
                n = len(self.history)
                return p[n:n + records].copy()
            frame = frame.f_back
        raise LookupError("no truth found")


class Impostor(SlidingWindowAverage):
    """An sw_avg clone that calls itself sw_avg, hoping to take the built-in's place on the leaderboard."""

    name = "sw_avg"


class Refuser(SlidingWindowAverage):
    """An sw_avg clone that refuses the origins it finds hard (where the load just moved most)."""

    name = "refuser"

    def predict(self, records):
        p = self.history.proportions
        recent = np.abs(p[-1] - p[-50:].mean(axis=0)).sum(axis=-1).mean()
        if recent > np.abs(p[-50:] - p[-50:].mean(axis=0)).sum(axis=-1).mean():
            raise RuntimeError("too hard, skipping this origin")
        return super().predict(records)


class Quitter(SlidingWindowAverage):
    """Ends its process with status 0 at its third forecast, hoping the run ends "successfully" with it."""

    name = "quitter"
    calls = 0

    def predict(self, records):
        Quitter.calls += 1
        if Quitter.calls == 3:
            sys.exit(0)
        return super().predict(records)


class Patcher(SlidingWindowAverage):
    """Replaces the harness's scoring when its module is imported, then forecasts nonsense."""

    name = "patcher"

    def predict(self, records):
        import bench.evaluate

        bench.evaluate.forecast_errors = lambda phat, p: {k: np.zeros(p.shape[1]) for k in
                                                          ("error_rate", "window_error", "mape")}
        return super().predict(records)[::-1, :, ::-1].copy()
