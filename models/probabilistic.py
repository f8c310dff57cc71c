"""Probabilistic predictors: quantiles of each expert's load share, besides the point forecast.

Both forecast the same point as sw_avg (the mean share over the last `window` iterations), so
what they add is only the spread, and a comparison with sw_avg's scores is one of spreads alone:

- ``sw_quantiles``, the probabilistic sw_avg: the empirical quantiles of each expert's share over
  the window. It assumes the next records look like the window's, noise and drift alike.
- ``dirmult``, a Dirichlet-multinomial fitted on the window's counts: each record routes N slots
  multinomially over experts whose shares are themselves drawn from a Dirichlet around the mean
  (tokens of one sequence route alike, so a batch varies more than independent tokens would).
  The concentration is fitted by the method of moments; its predictive quantiles for a record
  with N routed slots account for both the batch-to-batch spread and the finite N. With few slots
  per record (up to ``LATTICE_SLOTS``: serving steps of a few dozen tokens) a record's share can only
  be one of ``k / N``, and the quantiles are the exact beta-binomial's on that lattice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import QUANTILE_LEVELS
from .baselines import SlidingWindowAverage


def window_quantiles(proportions: np.ndarray, levels=QUANTILE_LEVELS) -> np.ndarray:
    """[L, E, Q]: the empirical quantiles of each expert's share over records ``proportions[T, L, E]``."""
    q = np.quantile(proportions, np.asarray(levels), axis=0)  # [Q, L, E]
    return np.moveaxis(q, 0, -1)


class SlidingWindowQuantiles(SlidingWindowAverage):
    """The probabilistic sw_avg: sw_avg's point forecast, and the window's empirical quantiles per expert."""

    name = "sw_quantiles"

    def predict_quantiles(self, records):
        h = self.history
        return self.repeat(window_quantiles(h.proportions[h.since(self.params["window"])]), records)


#: Routed slots per record up to which dirmult's quantiles are the exact beta-binomial's, on the lattice ``k / N`` of
#: the shares a record can take: there a continuous quantile between two lattice points is a share no record has,
#: and an interval with such ends covers less than its level. Above it, the Beta of the same mean and variance,
#: within one routed slot of the exact quantile (tests/models/test_probabilistic.py) and cheaper.
LATTICE_SLOTS = 1024


def lattice_quantiles(mean: np.ndarray, variance_factor: float, slots: int, levels) -> np.ndarray:
    """[E, Q]: the quantiles of ``x_e / N`` for ``x_e`` beta-binomial over ``N = slots`` with mean ``N mean_e`` and
    variance ``N^2 mean_e (1 - mean_e) variance_factor`` (binomial where that is at most the binomial's), each the
    smallest share ``k / N`` whose probability of not being exceeded reaches the level."""
    from scipy.stats import betabinom, binom

    n = int(slots)
    k = np.arange(n + 1)
    inner = (mean > 0) & (mean < 1)
    q = np.where(inner, mean, 0.5)[:, None]
    rho = (variance_factor - 1.0 / n) / (1.0 - 1.0 / n)  # the Dirichlet's share of the variance, as in the fit
    if rho <= 0:
        pmf = binom.pmf(k[None, :], n, q)
    else:
        kappa = 1.0 / min(rho, 1.0 - 1e-12) - 1.0
        pmf = betabinom.pmf(k[None, :], n, kappa * q, kappa * (1 - q))
    cdf = np.cumsum(pmf, axis=1)  # [E, N + 1]
    out = (cdf[:, None, :] >= np.asarray(levels)[None, :, None] - 1e-12).argmax(axis=2) / n
    return np.where(inner[:, None], out, mean[:, None])


@dataclass(frozen=True)
class DirichletMultinomialFit:
    """A Dirichlet-multinomial per layer, fitted on T records by the method of moments.

    Shares ``p[t, e] = x[t, e] / N_t`` with ``x_t ~ Multinomial(N_t, pi_t)``, ``pi_t ~ Dirichlet(alpha * mean)``
    have ``Var p_e = mean_e (1 - mean_e) * (1/N + rho (1 - 1/N))`` with ``rho = 1 / (alpha + 1)``: the
    multinomial alone (rho = 0, alpha infinite) gives ``mean (1 - mean) / N``.
    """

    mean: np.ndarray  # [L, E] mean share over the records
    rho: np.ndarray  # [L] 1 / (alpha + 1), the share of a record's variance that is not sampling noise, in [0, 1]
    slots: np.ndarray  # [L] routed slots per record (the median of the records' totals)
    records: int  # T

    @property
    def concentration(self) -> np.ndarray:
        """[L] alpha, the Dirichlet's concentration (inf where the spread is the multinomial's or less)."""
        with np.errstate(divide="ignore"):
            return np.where(self.rho > 0, 1.0 / np.maximum(self.rho, 1e-300) - 1.0, np.inf)

    @property
    def overdispersion(self) -> np.ndarray:
        """[L] the variance of a record's shares over what a multinomial of `slots` gives: ``1 + (N - 1) rho``."""
        return 1.0 + (self.slots - 1.0) * self.rho

    @property
    def effective_slots(self) -> np.ndarray:
        """[L] the independent routing choices a record is worth: ``slots / overdispersion``."""
        return self.slots / self.overdispersion

    def quantiles(self, levels=QUANTILE_LEVELS, slots: np.ndarray | None = None) -> np.ndarray:
        """[L, E, Q] quantiles of each expert's share in one new record of `slots` routed slots (default
        the fitted ones), the mean's estimation error included.

        The beta-binomial marginal ``x_e / N`` is approximated by the Beta distribution of the same mean
        and variance (the variance fixes its concentration); tests/models/test_probabilistic.py holds
        it against the exact beta-binomial. A layer of at most ``LATTICE_SLOTS`` slots per record takes the
        exact beta-binomial's quantiles on the lattice ``k / N`` (:func:`lattice_quantiles`).
        """
        from scipy.stats import beta

        n = (self.slots if slots is None else np.asarray(slots, dtype=np.float64))[:, None]
        q = self.mean
        # variance per unit of q (1 - q): sampling noise, the Dirichlet's spread, and the window mean's error
        c = (1.0 / n + self.rho[:, None] * (1.0 - 1.0 / n)) * (1.0 + 1.0 / self.records)
        kappa = np.maximum(1.0 / c - 1.0, 1e-6)  # [L, 1]
        inner = (q > 0) & (q < 1)
        qs = np.where(inner, q, 0.5)
        out = beta.ppf(np.asarray(levels)[None, None, :], (kappa * qs)[..., None], (kappa * (1 - qs))[..., None])
        out = np.where(inner[..., None], out, q[..., None])
        for layer, slots_l in enumerate(np.rint(n[:, 0]).astype(int)):
            if 2 <= slots_l <= LATTICE_SLOTS:
                out[layer] = lattice_quantiles(q[layer], float(c[layer, 0]), slots_l, levels)
        return np.clip(out, 0.0, 1.0)


def fit_dirichlet_multinomial(counts: np.ndarray) -> DirichletMultinomialFit:
    """The method-of-moments fit of ``counts[T, L, E]`` (T >= 1; with one record, rho = 0: a multinomial).

    rho solves, pooled over experts and records, ``sum (p - mean)^2 * T/(T-1) = sum mean (1 - mean)
    (1/N_t + rho (1 - 1/N_t))``, clipped to [0, 1].
    """
    counts = np.asarray(counts, dtype=np.float64)
    T = counts.shape[0]
    totals = counts.sum(axis=2)  # [T, L]
    p = counts / totals[..., None]
    mean = p.mean(axis=0)  # [L, E]
    spread = mean * (1.0 - mean)  # [L, E]
    if T < 2:
        rho = np.zeros(counts.shape[1])
    else:
        observed = ((p - mean) ** 2).sum(axis=(0, 2)) * T / (T - 1)  # [L]
        inv_n = 1.0 / totals  # [T, L]
        noise = inv_n.sum(axis=0) * spread.sum(axis=1)
        excess = (1.0 - inv_n).sum(axis=0) * spread.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            rho = np.where(excess > 0, (observed - noise) / excess, 0.0)
        rho = np.clip(rho, 0.0, 1.0)
    return DirichletMultinomialFit(mean, rho, np.median(totals, axis=0), T)


class DirichletMultinomial(SlidingWindowAverage):
    """sw_avg's point forecast with a Dirichlet-multinomial's quantiles, fitted on the window's counts."""

    name = "dirmult"
    version = 2  # 2: the exact beta-binomial's lattice quantiles on few routed slots (LATTICE_SLOTS)

    def fitted(self) -> DirichletMultinomialFit:
        """The fit on the records of the last `window` iterations."""
        h = self.history
        return fit_dirichlet_multinomial(h.counts[h.since(self.params["window"])])

    def predict_quantiles(self, records):
        return self.repeat(self.fitted().quantiles(), records)
