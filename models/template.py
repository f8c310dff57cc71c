"""A predictor to copy: a windowed average plus a damped linear trend per expert.

Copy this file, rename the class and `name`, and change the four methods. Try it with::

    python -m bench check-predictor models/template.py:DampedTrend
    python -m bench run --model models/template.py:DampedTrend --param damping=0.3

The rules (docs/contributing-a-predictor.md has the walk-through):

- parameters are keyword arguments declared in ``defaults`` (``--param key=value`` sets them,
  with values coerced to the default's type); their values are in ``self.params``;
- ``search_space`` tells ``python -m bench tune`` what to try: ``param -> ("int"|"float"|"log",
  low, high)`` or ``("cat", [choices])``;
- the harness calls ``start`` (then ``fit`` with training traces, if the task has any), then at
  every origin ``observe`` (which appends the new past records to ``self.history`` and calls
  ``update``), ``refit`` when the task's refit policy says so, and ``predict(records)``;
- ``predict(records)`` gets the number of *records* to forecast (a horizon of 1,000 iterations is
  100 records on a trace recorded every 10th iteration); their iteration numbers are in
  ``self.target_steps``. It returns ``phat[records, layers, experts]``, every row finite, >= 0
  and summing to 1 (``to_distribution`` below clips and renormalises for you). Anything else is
  a failed forecast;
- ``self.history`` holds only records before the origin: ``.proportions`` ``[n, L, E]``,
  ``.counts``, ``.steps`` (iteration numbers; records may be every 10th iteration) and
  ``.since(iterations)``, a slice of the last that many iterations. Work in iterations, not
  records, so the model means the same on every trace;
- same data, same forecast: seed any randomness from a parameter.
"""

from __future__ import annotations

import numpy as np

from models.adapters.common import to_distribution
from models.base import Predictor


class DampedTrend(Predictor):
    """Mean share over the last `window` iterations, plus `damping` x its per-iteration slope."""

    name = "damped_trend"
    defaults = {"window": 500, "damping": 0.5}
    search_space = {"window": ("log", 50, 4000), "damping": ("float", 0.0, 1.0)}

    def start(self, layers, experts, training=()):
        super().start(layers, experts, training)  # makes self.history, calls fit(training) if any
        self._level = self._slope = None

    def update(self, proportions, steps):
        """New records arrived (already in self.history). Keep cheap running state here."""

    def refit(self):
        """Re-estimate level and slope from the window (called per the task's refit policy)."""
        h = self.history
        window = h.since(self.params["window"])
        p, t = h.proportions[window], h.steps[window].astype(np.float64)
        self._level = p.mean(axis=0)
        if len(t) > 1:
            tc = t - t.mean()
            self._slope = np.tensordot(tc, p - self._level, axes=(0, 0)) / (tc @ tc)  # [L, E] per iteration
        else:
            self._slope = np.zeros_like(self._level)
        self._t_mid = t.mean()

    def predict(self, records):
        if self._level is None:
            self.refit()
        h = self.history
        ahead = self.target_steps - self._t_mid  # iterations from the window's centre to each record to forecast
        raw = self._level + self.params["damping"] * ahead[:, None, None] * self._slope
        return to_distribution(raw.reshape(records, -1), h.layers, h.experts)
