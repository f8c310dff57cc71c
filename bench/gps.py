"""Distribution-only against token-to-expert prediction for inference-time expert duplication (MoE-GPS, 2025).

On an inference trace (``datasets_registry.tracer.serve``: one record per forward pass, and the token-level
routing of every K-th pass), at each *judged pass* (a sampled pass, or ``pool`` consecutive sampled passes taken
together as one larger batch):

* a **distribution-only** predictor (any load predictor: sw_avg, ema, the engines' window sum, last) forecasts
  the pass's load from the passes before it, off the critical path;
* a **token-to-expert** predictor (:mod:`models.token_experts`, and the serving loop's recorded pre-gate)
  predicts each token's top-k experts for the pass at hand; counting them gives its load. It runs before
  routing, on the critical path.

Accuracy (:func:`score`): per-pass ``error_rate`` for both kinds, and for token-to-expert the literature's
per-token figures: exact-set accuracy, F1 over the k-hot vectors (equal to top-k recall when k experts are
predicted) and the element-wise accuracy over all E experts (which flatters: most experts are correctly "not
chosen"). Overheads are measured: wall time per pass of each predictor in this process; the pre-gate's on the
device it served on, recorded in the trace, fitted as ``a + b * tokens``.

End to end (:func:`end_to_end`): per judged pass, each strategy's load estimate decides the expert replicas
(:func:`bench.placement.place`, EPLB-like) and the MoE layers' time on the actual loads follows from
:class:`bench.steptime.StepTimeModel` (slowest GPU's expert compute plus the all-to-all), plus the predictor's
overhead where it is on the critical path. Moving expert weights is assumed hidden (prefetched during
attention), for both strategies alike; placement computation is not counted for either.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .metrics import forecast_errors
from .placement import PlacementSpec, place
from .steptime import LINKS, NETWORKS, StepTimeModel

#: Distribution-only predictors and their parameters, in passes: the seed paper's window average, a decayed
#: average, the engines' window sum (SGLang and vLLM sum the last 1,000 passes) and the last pass alone.
DISTRIBUTION = {"sw_avg": {"window": 100}, "ema": {"decay": 0.95}, "sw_sum": {"window": 1000}, "last": {}}
TOKEN = ("freq-token", "freq-bigram", "layer-transition", "pre-gate")
#: What each token-to-expert strategy reads of the trace's extras beyond ``token_pass`` and ``token_experts``: an
#: imported trace's sample has only the fields its engine's dump carries (docs/formats.md), and a strategy whose
#: fields are missing is left out. The pre-gate's predictions and overhead come from the serving loop only.
NEEDS = {"freq-token": ("token_id",), "freq-bigram": ("token_id", "token_prev"), "layer-transition": (),
         "pre-gate": ("token_pregate", "pregate_seconds", "batch_tokens")}
#: Expert shapes (hidden, ffn) of the end-to-end sweep: Mixtral 8x7B's, and a small one of a quarter the width.
EXPERTS = {"mixtral": (4096, 14336), "small": (1024, 3584)}
#: Interconnects: (intra-node link, inter-node network), GB/s per direction per GPU (bench.steptime).
INTERCONNECTS = {"nvlink+ib": ("nvlink", "ib"), "pcie+roce": ("pcie4", "roce")}
GPUS_PER_NODE = 8


@dataclass
class Judged:
    """The judged passes of an inference trace, with every strategy's load estimate and overhead."""

    dataset: str
    pool: int
    first_pass: np.ndarray  # [V] the first sampled pass of each judged pass
    tokens: np.ndarray  # [V] tokens judged
    actual: np.ndarray  # [V, L, E] routed slots per expert (the truth)
    estimate: dict[str, np.ndarray] = field(default_factory=dict)  # strategy -> [V, L, E] load proportions
    overhead: dict[str, np.ndarray] = field(default_factory=dict)  # strategy -> [V] seconds per judged pass
    token_figures: dict[str, dict[str, float]] = field(default_factory=dict)  # strategy -> per-token accuracy
    left_out: dict[str, str] = field(default_factory=dict)  # token-to-expert strategy -> why it could not run
    caveats: dict[str, str] = field(default_factory=dict)  # strategy -> how it ran short of its full form

    def kind(self, strategy: str) -> str:
        return "token-to-expert" if strategy in TOKEN else "distribution-only"


def load_inference(dataset: str) -> tuple[Any, dict[str, np.ndarray]]:
    """An inference trace (or an imported one with a token-level sample) and its extras (the token-level sample,
    and per-pass arrays where it has them)."""
    from datasets_registry import registry, token_sample

    entry = registry.resolve(dataset)
    return registry.load(dataset), token_sample.read(entry.folder)


def runnable(ex: dict[str, np.ndarray]) -> tuple[list[str], dict[str, str]]:
    """The token-to-expert strategies the extras allow, and why each other one is left out."""
    left_out = {}
    for name, needs in NEEDS.items():
        missing = [f for f in needs if f not in ex]
        if missing:
            left_out[name] = f"needs {', '.join(missing)}, which this trace's extras do not have"
    return [s for s in TOKEN if s not in left_out], left_out


def judge(dataset: str, pool: int = 1) -> Judged:
    """Run every strategy over the judged passes of `dataset` (online: each learns only from earlier passes)."""
    from models.registry import predictor_class
    from models.token_experts import FrequencyTable, LayerTransition

    if pool < 1:
        raise ValueError("pool must be >= 1")
    trace, ex = load_inference(dataset)
    T, L, E = trace.shape
    k = int(ex["token_experts"].shape[2])
    token, left_out = runnable(ex)
    N = ex["token_pass"].shape[0]
    tok_all = ex["token_id"] if "token_id" in ex else np.zeros(N, dtype=np.int64)
    prev_all = ex["token_prev"] if "token_prev" in ex else np.zeros(N, dtype=np.int64)
    sampled = np.unique(ex["token_pass"])
    groups = [sampled[i: i + pool] for i in range(0, len(sampled) - pool + 1, pool)]
    groups = [g for g in groups if g[0] > 0]  # distribution-only needs one earlier pass
    if not groups:
        raise ValueError(f"{dataset}: no sampled pass to judge at pool {pool} (it needs a sampled pass after the "
                         f"first record; the sample has {len(sampled)} passes)")
    rows_of = {int(p): np.flatnonzero(ex["token_pass"] == p) for p in sampled}
    V = len(groups)
    if not V:
        raise ValueError(f"{dataset}: its token-level sample has no record after the first to judge (pool {pool})")
    out = Judged(dataset, pool, np.array([g[0] for g in groups]), np.zeros(V, dtype=np.int64), np.zeros((V, L, E)),
                 left_out=left_out)
    if "token_id" not in ex and "layer-transition" in token:
        out.caveats["layer-transition"] = "no token ids: its first layer is predicted from the overall frequencies"
    counts = trace.counts
    # token-to-expert: online tables, the recorded pre-gate
    tables = {"freq-token": FrequencyTable(L, E, k), "freq-bigram": FrequencyTable(L, E, k, "bigram"),
              "layer-transition": LayerTransition(L, E, k)}
    tables = {name: table for name, table in tables.items() if name in token}
    if "pre-gate" in token:
        fit = np.polyfit(ex["batch_tokens"].astype(np.float64), ex["pregate_seconds"].astype(np.float64), 1)
    hits = {s: np.zeros(3) for s in token}  # overlap, exact, tokens
    for name in token:
        out.estimate[name] = np.zeros((V, L, E))
        out.overhead[name] = np.zeros(V)
    learned = 0  # sampled passes the tables have learned from
    for v, group in enumerate(groups):
        rows = np.concatenate([rows_of[int(p)] for p in group])
        tok, prev, truth = tok_all[rows], prev_all[rows], ex["token_experts"][rows].astype(np.int64)
        while learned < len(sampled) and sampled[learned] < group[0]:
            r = rows_of[int(sampled[learned])]
            for table in tables.values():
                table.update(tok_all[r], prev_all[r], ex["token_experts"][r].astype(np.int64))
            learned += 1
        out.tokens[v] = len(rows)
        out.actual[v] = [np.bincount(truth[:, layer].ravel(), minlength=E) for layer in range(L)]
        for name in token:
            t0 = time.perf_counter()
            if name == "pre-gate":
                pred = ex["token_pregate"][rows].astype(np.int64)
            else:
                pred = tables[name].predict(tok, prev, truth if name == "layer-transition" else None)
            spent = time.perf_counter() - t0
            out.overhead[name][v] = float(np.polyval(fit, len(rows))) if name == "pre-gate" else spent
            routed = np.stack([np.bincount(pred[:, layer].ravel(), minlength=E) for layer in range(L)])
            out.estimate[name][v] = routed / routed.sum(axis=1, keepdims=True)
            overlap = (pred[:, :, :, None] == truth[:, :, None, :]).any(axis=3).sum(axis=2)  # [N, L]
            hits[name] += [overlap.sum(), (overlap == k).sum(), overlap.size]
    for name, (overlap, exact, n) in hits.items():
        f1 = overlap / (n * k)
        out.token_figures[name] = {"f1": f1, "exact": exact / n, "elementwise": 1 - 2 * (k * n - overlap) / (n * E)}
    # distribution-only: fed every pass before the judged one
    for name, params in DISTRIBUTION.items():
        model = predictor_class(name)(**params)
        model.start(L, E)
        est, spent, seen = np.zeros((V, L, E)), np.zeros(V), 0
        for v, first in enumerate(out.first_pass):
            t0 = time.perf_counter()
            model.observe(counts[seen:first].copy(), trace.steps[seen:first].copy())
            est[v] = model.forecast(trace.steps[first: first + 1])[0]
            spent[v] = (time.perf_counter() - t0) / max(1, first - seen)  # per pass fed
            seen = first
        out.estimate[name], out.overhead[name] = est, spent
    out.estimate["oracle"] = out.actual / out.actual.sum(axis=2, keepdims=True)
    out.overhead["oracle"] = np.zeros(V)
    return out


def score(judged: Judged) -> list[dict[str, Any]]:
    """One row per strategy: kind, per-pass error_rate (mean over judged passes and layers), per-token accuracy
    (token-to-expert), and the median overhead per judged pass with whether it is on the critical path."""
    p = judged.actual / judged.actual.sum(axis=2, keepdims=True)
    rows = []
    for name, est in judged.estimate.items():
        if name == "oracle":
            continue
        err = np.mean([forecast_errors(est[v][None], p[v][None])["error_rate"].mean() for v in range(len(p))])
        row = {"strategy": name, "kind": judged.kind(name), "error_rate": float(err),
               "overhead_ms": float(np.median(judged.overhead[name]) * 1e3),
               "critical_path": judged.kind(name) == "token-to-expert", **judged.token_figures.get(name, {})}
        rows.append(row)
    return rows


@dataclass(frozen=True)
class System:
    """An inference system of the end-to-end sweep."""

    gpus: int = 8
    expert: str = "mixtral"
    interconnect: str = "nvlink+ib"

    def spec(self, experts: int) -> PlacementSpec:
        """One redundant replica slot per GPU where the experts fill the GPUs; else replicas fill every GPU."""
        hidden, ffn = EXPERTS[self.expert]
        link, net = INTERCONNECTS[self.interconnect]
        hw = StepTimeModel(hidden=hidden, ffn=ffn, link_gbps=LINKS[link], net_gbps=NETWORKS[net])
        slots = experts + self.gpus if experts >= self.gpus else self.gpus
        return PlacementSpec(devices=self.gpus, replicas=slots - experts, nodes=max(1, self.gpus // GPUS_PER_NODE),
                             hardware=hw)

    def describe(self) -> str:
        return f"{self.gpus} GPUs, {self.expert} experts, {self.interconnect}"


def end_to_end(judged: Judged, system: System) -> dict[str, float]:
    """Mean MoE time per judged pass in microseconds, per strategy (and ``none``: replicas spread evenly,
    whatever the load): every MoE layer's time on the actual loads, plus the overhead on the critical path
    (``NAME@free``: a token-to-expert predictor's time without its overhead)."""
    V, L, E = judged.actual.shape
    spec = system.spec(E).check(E)
    uniform = place(np.ones((L, E)), spec)
    out = {}
    for name, est in {"none": None, **judged.estimate}.items():
        total = 0.0
        for v in range(V):
            placement = uniform if est is None else place(est[v] + 1e-9, spec)
            loads = placement.device_loads(judged.actual[v][None])[0]  # [L, G]
            total += float(spec.hardware.layer_time(loads, spec.nodes).sum())
        out[name] = total / V * 1e6
        if name in TOKEN:
            out[f"{name}@free"] = out[name]
            out[name] += float(np.median(judged.overhead[name])) * 1e6  # the median: robust to a busy machine
    return out


def recommend(times: dict[str, float]) -> dict[str, Any]:
    """The best strategy of each kind and which wins, by how much (the slower's time over the faster's, less 1);
    ``token_budget_us``: the overhead per pass under which the best token-to-expert predictor, free, would win."""
    token = [s for s in TOKEN if s in times]  # those that ran
    best_dist = min(DISTRIBUTION, key=lambda s: times[s])
    best_token = min(token, key=lambda s: times[s])
    a, b = times[best_dist], times[best_token]
    winner = "distribution-only" if a <= b else "token-to-expert"
    return {"distribution_only": best_dist, "distribution_only_us": a, "token_to_expert": best_token,
            "token_to_expert_us": b, "none_us": times["none"], "oracle_us": times["oracle"], "winner": winner,
            "margin": max(a, b) / min(a, b) - 1.0,
            "token_budget_us": max(0.0, a - min(times[f"{s}@free"] for s in token))}


def sweep(judged: Judged, gpus=(4, 8, 16, 32, 64), experts=tuple(EXPERTS), interconnects=tuple(INTERCONNECTS)):
    """:func:`recommend` for every system of the grid: a list of rows (the system's fields, then the figures)."""
    rows = []
    for g in gpus:
        for ex in experts:
            for ic in interconnects:
                system = System(g, ex, ic)
                rows.append({**asdict(system), "tokens_per_pass": float(judged.tokens.mean()),
                             **recommend(end_to_end(judged, system))})
    return rows
