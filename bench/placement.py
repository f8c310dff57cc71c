"""What a forecast is worth: expert placement from a forecast, scored on the actual loads.

Policy (EPLB-like, after DeepSeek's ``rebalance_experts``; docs/placement.md has the details).
From a load estimate ``w[L, E]`` (a forecast's horizon mean), per layer:

1. replicate: E experts get ``E + R`` physical slots; each extra replica goes to the expert with
   the highest load per replica ``w_e / r_e`` (ties: the lowest expert id), and an expert's load
   is split evenly over its replicas;
2. pack: longest processing time first, with equal slots per device ``(E + R) / G``: the
   heaviest replica goes to the least loaded device that still has a free slot (ties: lowest id).

With ``N`` nodes it is hierarchical, as EPLB's: expert groups (``K`` groups of ``E/K``
consecutive experts, default one expert per group) are first packed onto nodes (equal groups
per node, LPT), then experts are replicated within each node (``(E+R)/N`` slots) and packed
onto the node's ``G/N`` devices.

Under uncertainty (:func:`place_with_spread`), step 1 replicates by an upper quantile of each
expert's forecast share instead of its mean: the replicas then keep every expert's probability of
overloading its devices below a threshold wherever they can (the function's docstring), and step
2 packs the expected loads as before.

The static placement puts expert ``e`` on device ``e mod G`` with no replicas; the oracle runs
the policy on the actual horizon-mean load. Each placement is scored on the horizon's actual
per-step counts: imbalance (mean over steps of max/mean device load), token drop rate with
capacity allotted from the load estimate, and the :mod:`bench.steptime` layer time.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .steptime import LINKS, NETWORKS, StepTimeModel

#: Per-(origin, layer) metrics a placement scorer adds; `DERIVED` ones are computed after aggregation.
METRICS = (
    "imbalance",
    "imbalance_static",
    "imbalance_oracle",
    "drop_rate",
    "drop_rate_static",
    "drop_rate_oracle",
    "layer_time_us",
    "layer_time_static_us",
    "layer_time_oracle_us",
)


def _gap_closed(static: float, forecast: float, oracle: float) -> float:
    """(static - forecast) / (static - oracle); NaN where the oracle gains nothing over static."""
    gap = static - oracle
    return (static - forecast) / gap if gap > 1e-9 * abs(static) else float("nan")


def _gain(static: float, forecast: float) -> float:
    """static / forecast - 1: how much faster than static (0.1 = 10% faster)."""
    return static / forecast - 1.0 if forecast > 0 else float("nan")


#: Ratio metrics, computed from the aggregated means of their components (mean over origins, then
#: layers, per state), never averaged per origin: name -> (components, function of their means).
DERIVED = {
    "gap_closed": (("imbalance_static", "imbalance", "imbalance_oracle"), _gap_closed),
    "layer_time_gain": (("layer_time_static_us", "layer_time_us"), _gain),
    "layer_time_gain_oracle": (("layer_time_static_us", "layer_time_oracle_us"), _gain),
    "layer_time_shortfall": (("layer_time_us", "layer_time_oracle_us"), _gain),
}

_KEYS = {"G": "devices", "R": "replicas", "N": "nodes", "K": "groups", "groups": "groups", "cf": "capacity_factor"}
_MODEL_KEYS = {
    "hidden": "hidden",
    "ffn": "ffn",
    "mats": "matrices",
    "bytes": "bytes_per_element",
    "tflops": "tflops",
    "bw": "link_gbps",
    "net_bw": "net_gbps",
}


@dataclass(frozen=True)
class PlacementSpec:
    """G devices, R redundant replicas, N nodes, K expert groups, capacity factor, hardware."""

    devices: int = 8
    replicas: int = 0
    nodes: int = 1
    groups: int | None = None  # default: one group per expert
    capacity_factor: float = 1.25
    hardware: StepTimeModel = field(default_factory=StepTimeModel)

    @classmethod
    def parse(cls, text: str) -> "PlacementSpec":
        """``"G=8,R=8,N=2,K=8,cf=1.25,link=nvlink|pcie|pcie4,net=ib|roce,bw=GB/s,net_bw=GB/s,hidden=,ffn=,mats=,bytes=,tflops="``."""
        spec, hw = {}, {}
        for part in filter(None, (s.strip() for s in text.split(","))):
            key, sep, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not value:
                raise ValueError(f"placement: expected KEY=VALUE, got {part!r}")
            try:
                if key in _KEYS:
                    spec[_KEYS[key]] = float(value) if key == "cf" else int(value)
                elif key in _MODEL_KEYS:
                    hw[_MODEL_KEYS[key]] = float(value)
                elif key in ("link", "net"):
                    table = LINKS if key == "link" else NETWORKS
                    if value not in table:
                        raise ValueError(
                            f"placement: {key}={value!r} is none of {sorted(table)}; give bandwidth as "
                            f"{'bw' if key == 'link' else 'net_bw'}=GB/s instead"
                        )
                    hw["link_gbps" if key == "link" else "net_gbps"] = table[value]
                else:
                    known = sorted(set(_KEYS) | set(_MODEL_KEYS) | {"link", "net"})
                    raise ValueError(f"placement: unknown key {key!r} (known: {', '.join(known)})")
            except ValueError as exc:
                if str(exc).startswith("placement:"):
                    raise
                raise ValueError(f"placement: {key}={value!r} is not a number") from None
        for k in ("hidden", "ffn", "matrices"):
            if k in hw:
                hw[k] = int(hw[k])
        return cls(**spec, hardware=replace(StepTimeModel(), **hw))

    def check(self, experts: int) -> "PlacementSpec":
        """Raise ValueError unless the spec fits `experts` experts; returns the spec."""
        E, R, G, N = experts, self.replicas, self.devices, self.nodes
        K = self.groups or E
        problems = []
        if G < 1 or N < 1 or R < 0:
            problems.append("devices and nodes must be positive and replicas non-negative")
        elif (E + R) % G:
            problems.append(f"{E} experts + {R} replicas do not fill {G} devices equally")
        elif G % N:
            problems.append(f"{G} devices do not split into {N} nodes")
        elif E % K or K % N:
            problems.append(f"{E} experts do not form {K} equal groups that split evenly over {N} nodes")
        if not self.capacity_factor > 0:
            problems.append("capacity factor must be positive")
        hw = self.hardware
        if min(hw.hidden, hw.ffn, hw.matrices, hw.bytes_per_element, hw.tflops, hw.link_gbps, hw.net_gbps) <= 0:
            problems.append("hardware numbers must be positive")
        if problems:
            raise ValueError(f"placement {self.describe()}: " + "; ".join(problems))
        return self

    def describe(self) -> str:
        out = f"G={self.devices},R={self.replicas}"
        if self.nodes > 1:
            out += f",N={self.nodes}" + (f",K={self.groups}" if self.groups else "")
        return out + f",cf={self.capacity_factor:g}"


@dataclass
class Placement:
    """Where each expert lives, for every layer."""

    replicas: np.ndarray  # [L, E] replicas per expert (>= 1)
    slots: np.ndarray  # [L, P] expert held by each physical slot, ordered by device
    slot_device: np.ndarray  # [L, P] device of each slot
    share: np.ndarray  # [L, E, G] fraction of expert e's tokens served by device g
    nodes: int = 1

    @property
    def devices(self) -> int:
        return self.share.shape[-1]

    @classmethod
    def from_slots(cls, slot_expert, slot_device, replicas, devices: int, nodes: int = 1) -> "Placement":
        """From the expert ``slot_expert[L, P]`` and device ``slot_device[L, P]`` of each physical slot."""
        L, E = replicas.shape
        order = np.argsort(slot_device, axis=1, kind="stable")
        slots = np.take_along_axis(slot_expert, order, axis=1)
        dev = np.take_along_axis(slot_device, order, axis=1)
        share = np.zeros((L, E, devices))
        idx = np.arange(L)[:, None]
        np.add.at(share, (idx, slots, dev), 1.0 / replicas[idx, slots])
        return cls(replicas, slots, dev, share, nodes)

    def device_loads(self, counts: np.ndarray) -> np.ndarray:
        """Tokens per device: ``counts[T, L, E]`` -> ``[T, L, G]`` (replicas split their expert's load evenly)."""
        return np.einsum("tle,leg->tlg", counts, self.share)

    def moved(self, previous: "Placement") -> np.ndarray:
        """Per layer, the expert replicas that must be copied onto a device to go from `previous` to this one."""
        L, E, G = self.share.shape
        idx = np.arange(L)[:, None]
        held = np.zeros((L, E, G), dtype=np.int64)
        before = np.zeros((L, E, G), dtype=np.int64)
        np.add.at(held, (idx, self.slots, self.slot_device), 1)
        np.add.at(before, (idx, previous.slots, previous.slot_device), 1)
        return np.maximum(held - before, 0).sum(axis=(1, 2))


def replicate(weight: np.ndarray, slots: int) -> np.ndarray:
    """Replicas per item, ``weight[X, n]`` -> ``[X, n]`` summing to `slots`: each extra replica
    goes to the item with the highest weight per replica."""
    X, n = weight.shape
    count = np.ones((X, n), dtype=np.int64)
    rows = np.arange(X)
    for _ in range(slots - n):
        count[rows, np.argmax(weight / count, axis=1)] += 1
    return count


def pack(weight: np.ndarray, packs: int) -> np.ndarray:
    """Pack index per item, ``weight[X, m]`` -> ``[X, m]``: longest processing time first with
    exactly ``m / packs`` items per pack (the heaviest item to the lightest pack with room)."""
    X, m = weight.shape
    per = m // packs
    rows = np.arange(X)
    order = np.argsort(-weight, axis=1, kind="stable")
    load = np.zeros((X, packs))
    filled = np.zeros((X, packs), dtype=np.int64)
    out = np.empty((X, m), dtype=np.int64)
    for k in range(m):
        item = order[:, k]
        dest = np.argmin(np.where(filled < per, load, np.inf), axis=1)
        out[rows, item] = dest
        load[rows, dest] += weight[rows, item]
        filled[rows, dest] += 1
    return out


def _expand(count: np.ndarray) -> np.ndarray:
    """Item index of each slot: ``count[X, n]`` (rows with equal sums P) -> ``[X, P]``."""
    P = int(count[0].sum())
    return (np.cumsum(count, axis=1)[:, None, :] <= np.arange(P)[None, :, None]).sum(axis=2)


def place(weight: np.ndarray, spec: PlacementSpec, replicate_by: np.ndarray | None = None) -> Placement:
    """The EPLB-like placement for a load estimate ``weight[L, E]`` (any non-negative scale); replicas
    by `replicate_by` ``[L, E]`` where given (default: `weight`), packing always by `weight`."""
    weight = np.asarray(weight, dtype=np.float64)
    rep = weight if replicate_by is None else np.asarray(replicate_by, dtype=np.float64)
    L, E = weight.shape
    spec.check(E)
    G, N = spec.devices, spec.nodes
    P, K = E + spec.replicas, spec.groups or E
    # 1. expert groups onto nodes: the experts of each node, [L, N, E/N], in node order
    if N > 1:
        group_node = pack(weight.reshape(L, K, E // K).sum(axis=2), N)
        expert_node = np.repeat(group_node, E // K, axis=1)
        local = np.argsort(expert_node * E + np.arange(E), axis=1).reshape(L * N, E // N)
    else:
        local = np.broadcast_to(np.arange(E), (L, E))
    w_local = np.take_along_axis(weight, local.reshape(L, E), axis=1).reshape(L * N, E // N)
    # 2. replicate within each node; 3. pack the node's replicas onto its devices
    count = replicate(np.take_along_axis(rep, local.reshape(L, E), axis=1).reshape(L * N, E // N), P // N)
    slot_item = _expand(count)  # [L*N, P/N]
    rows = np.arange(L * N)[:, None]
    device = pack(w_local[rows, slot_item] / count[rows, slot_item], G // N)
    device += (np.arange(L * N) % N)[:, None] * (G // N)
    slot_expert = local.reshape(L * N, E // N)[rows, slot_item].reshape(L, P)
    device = device.reshape(L, P)
    replicas = np.zeros((L, E), dtype=np.int64)
    np.put_along_axis(replicas, local.reshape(L, E), count.reshape(L, E), axis=1)
    return Placement.from_slots(slot_expert, device, replicas, G, N)


def place_with_spread(estimate: np.ndarray, quantiles: np.ndarray, spec: PlacementSpec,
                      threshold: float = 0.05) -> Placement:
    """The placement under uncertainty: replicas by the ``1 - threshold`` quantile of each expert's share,
    packing by the expected shares ``estimate[L, E]``; `quantiles` ``[L, E, levels]`` at
    :data:`models.base.QUANTILE_LEVELS` (a horizon's forecast, e.g. its records' mean quantiles).

    Why this is the overload rule: an expert with ``r`` replicas overloads a device at capacity ``c`` per
    replica when its share exceeds ``r c``, with probability below `threshold` exactly when its
    ``1 - threshold`` quantile ``u`` is at most ``r c``. Giving each next replica to the expert of highest
    ``u / r`` (as :func:`replicate` does) minimises the largest ``u / r`` over the layer's experts, i.e. it
    finds the lowest capacity at which every expert's overload probability is below `threshold` with the
    slots there are, and gives a replica to each expert whose probability exceeds it at any higher one.
    `threshold` 0.5 is the median; the point policy (:func:`place`) replicates by the mean.
    """
    from models.base import QUANTILE_LEVELS

    level = round(1.0 - threshold, 6)
    if level not in QUANTILE_LEVELS:
        allowed = sorted(round(1 - a, 6) for a in QUANTILE_LEVELS if a >= 0.5)
        raise ValueError(f"place_with_spread: threshold {threshold} is none of {allowed} (1 - a quantile level)")
    return place(estimate, spec, replicate_by=np.asarray(quantiles)[..., QUANTILE_LEVELS.index(level)])


def deepseek_place(weight: np.ndarray, spec: PlacementSpec) -> Placement:
    """The placement DeepSeek's own EPLB code (``rebalance_experts``, vendored in bench/vendor) makes
    from ``weight[L, E]``: the reference :func:`place` is checked against (physical slot ``p`` is
    on device ``p // ((E + R) / G)``, as in EPLB)."""
    import torch

    from .vendor.deepseek_eplb import rebalance_experts

    weight = np.asarray(weight, dtype=np.float64)
    L, E = weight.shape
    spec.check(E)
    P = E + spec.replicas
    phy2log, _, logcnt = rebalance_experts(torch.from_numpy(weight), P, spec.groups or E, spec.nodes, spec.devices)
    slot_device = np.broadcast_to(np.arange(P) // (P // spec.devices), (L, P))
    return Placement.from_slots(phy2log.numpy(), slot_device, logcnt.numpy(), spec.devices, spec.nodes)


def static_placement(layers: int, experts: int, devices: int, nodes: int = 1) -> Placement:
    """Round-robin, no replicas: expert e on device e mod G."""
    slots = np.broadcast_to(np.arange(experts), (layers, experts))
    return Placement.from_slots(slots, slots % devices, np.ones((layers, experts), dtype=np.int64), devices, nodes)


def contiguous_placement(layers: int, experts: int, devices: int, nodes: int = 1) -> Placement:
    """Blocks, no replicas: expert e on device e // (E / G), so node k holds experts [k E/N, (k+1) E/N) -- the
    layout the tracer's locality-aware routers (locmoe, node-limited) assume."""
    if experts % devices:
        raise ValueError(f"{experts} experts do not fill {devices} devices equally")
    slots = np.broadcast_to(np.arange(experts), (layers, experts))
    return Placement.from_slots(slots, slots // (experts // devices), np.ones((layers, experts), dtype=np.int64),
                                devices, nodes)


def traffic_placement(source_weight: np.ndarray, devices: int, nodes: int) -> Placement:
    """The placement that keeps the most forecast traffic inside its node, no replicas.

    ``source_weight[L, S, E]``: the forecast slots from each source rank to each expert (rank s runs on the GPUs
    of :func:`bench.topology.rank_map`, GPUs numbered node by node). Per layer, experts go to nodes (E / N each)
    so as to maximise the slots whose source is on the expert's node -- a linear assignment
    (``scipy.optimize.linear_sum_assignment``) of experts to node slots -- then each node's experts are packed
    onto its devices, longest processing time first, to balance their total load."""
    from scipy.optimize import linear_sum_assignment

    from .topology import rank_map

    w = np.asarray(source_weight, dtype=np.float64)
    L, S, E = w.shape
    G, N = devices, nodes
    if E % G or G % N:
        raise ValueError(f"{E} experts on {G} devices in {N} nodes: experts must fill devices, devices nodes")
    gpu_node = np.arange(G) // (G // N)
    node_of_rank = rank_map(S, G) @ (gpu_node[:, None] == np.arange(N)[None, :])  # [S, N] share of rank on node
    slot_expert = np.empty((L, E), dtype=np.int64)
    slot_device = np.empty((L, E), dtype=np.int64)
    per_node = E // N
    for layer in range(L):
        affinity = node_of_rank.T @ w[layer]  # [N, E] slots from node n's ranks to expert e
        cost = -np.repeat(affinity, per_node, axis=0).T  # [E, N * per_node]: expert -> node slot
        _, slot = linear_sum_assignment(cost)
        expert_node = slot // per_node
        total = w[layer].sum(axis=0)
        for n in range(N):
            mine = np.flatnonzero(expert_node == n)
            dev = pack(total[mine][None, :], G // N)[0] + n * (G // N)
            slot_expert[layer, n * per_node : (n + 1) * per_node] = mine
            slot_device[layer, n * per_node : (n + 1) * per_node] = dev
    return Placement.from_slots(slot_expert, slot_device, np.ones((L, E), dtype=np.int64), G, N)


def imbalance(loads: np.ndarray) -> np.ndarray:
    """Mean over steps of max device load / mean device load: ``[T, L, G]`` -> ``[L]``."""
    return (loads.max(axis=2) / loads.mean(axis=2)).mean(axis=0)


def drop_rate(counts: np.ndarray, share: np.ndarray, capacity_factor: float) -> np.ndarray:
    """Fraction of tokens over capacity when expert e may take ``cf * share_e * tokens`` of a step.

    ``counts[T, L, E]``, ``share[L, E]`` (each row sums to 1) -> ``[L]``, mean over steps. Replicas
    split an expert's capacity and tokens evenly, so they do not change the total.
    """
    tokens = counts.sum(axis=2, keepdims=True)
    over = np.maximum(counts - capacity_factor * share[None] * tokens, 0.0).sum(axis=2)
    return (over / tokens[..., 0]).mean(axis=0)


def placement_scores(placement: Placement, share: np.ndarray, counts: np.ndarray,
                     spec: PlacementSpec) -> dict[str, np.ndarray]:
    """One placement on the actual ``counts[T, L, E]``, per layer: ``imbalance``, ``drop_rate`` (capacity allotted
    from ``share[L, E]``) and ``layer_time_us`` (:mod:`bench.steptime`, mean over the steps)."""
    counts = np.asarray(counts, dtype=np.float64)
    loads = placement.device_loads(counts)
    return {
        "imbalance": imbalance(loads),
        "drop_rate": drop_rate(counts, share, spec.capacity_factor),
        "layer_time_us": 1e6 * spec.hardware.layer_time(loads, spec.nodes).mean(axis=0),
    }


def score(
    estimate: np.ndarray,
    counts: np.ndarray,
    spec: PlacementSpec,
    static: Placement | None = None,
    oracle: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Score the placement from ``estimate[L, E]`` (mean proportions) on ``counts[T, L, E]``.

    Returns the :data:`METRICS` per layer; the static and oracle ones only where `static` is
    given (the oracle estimate defaults to the mean proportion of `counts`).
    """
    counts = np.asarray(counts, dtype=np.float64)
    T, L, E = counts.shape

    def scores(placement: Placement, share: np.ndarray, suffix: str) -> dict[str, np.ndarray]:
        s = placement_scores(placement, share, counts, spec)
        return {f"imbalance{suffix}": s["imbalance"], f"drop_rate{suffix}": s["drop_rate"],
                f"layer_time{suffix}_us": s["layer_time_us"]}

    out = scores(place(estimate, spec), estimate, "")
    if static is not None:
        if oracle is None:
            oracle = (counts / counts.sum(axis=2, keepdims=True)).mean(axis=0)
        out.update(scores(static, np.full((L, E), 1.0 / E), "_static"))
        out.update(scores(place(oracle, spec), oracle, "_oracle"))
    return {k: out[k] for k in METRICS if k in out}


def make_scorer(spec: str | PlacementSpec, experts: int):
    """The harness scorer ``(phat[H,L,E], counts[H,L,E], p[H,L,E]) -> {metric: [L]}`` for `spec`."""
    spec = (PlacementSpec.parse(spec) if isinstance(spec, str) else spec).check(experts)
    statics: dict[int, Placement] = {}

    def scorer(phat: np.ndarray, counts: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
        L = counts.shape[1]
        if L not in statics:
            statics[L] = static_placement(L, experts, spec.devices, spec.nodes)
        return score(phat.mean(axis=0), counts, spec, statics[L], oracle=p.mean(axis=0))

    scorer.spec = spec
    return scorer


def score_windows(trace, records, lengths, estimates, spec: str | PlacementSpec) -> tuple[dict, list[dict]]:
    """Placement scores at rolling origins from stored horizon-mean forecasts, as a run's ``--placement`` scorer
    computes them during the run (:func:`make_scorer`): for runs whose forecasts are kept
    (:class:`bench.results.WindowForecasts`) but that were not run with placement scoring.

    Origin ``i`` targets the trace's records ``records[i] : records[i] + lengths[i]``; each of `estimates` is one
    run's ``[n, L, E]`` forecasts at those origins. Returns (the static and oracle placements' :data:`METRICS`,
    each run's own :data:`METRICS`), every metric ``[n, L]``.
    """
    spec = (PlacementSpec.parse(spec) if isinstance(spec, str) else spec).check(trace.experts)
    n, L, E = len(records), trace.layers, trace.experts
    static = static_placement(L, E, spec.devices, spec.nodes)
    fixed = {k: np.empty((n, L)) for k in METRICS if k.endswith(("_static", "_oracle", "_static_us", "_oracle_us"))}
    own = [{k: np.empty((n, L)) for k in METRICS if k not in fixed} for _ in estimates]
    for i, (rec, length) in enumerate(zip(records, lengths)):
        counts, truth = trace.counts[rec:rec + length], trace.proportions[rec:rec + length]
        oracle = truth.mean(axis=0)
        for k, v in score(oracle, counts, spec, static, oracle=oracle).items():
            if k in fixed:
                fixed[k][i] = v
        for out, estimate in zip(own, estimates):
            for k, v in score(np.asarray(estimate[i], dtype=np.float64), counts, spec).items():
                out[k][i] = v
    return fixed, own


def derive(entry: dict, states=("all", "transient", "stable"), derived: dict | None = None) -> None:
    """Add the `derived` metrics (default :data:`DERIVED`) to a summary entry ``{metric: {state: mean}}`` in place."""
    for name, (parts, fn) in (DERIVED if derived is None else derived).items():
        if all(isinstance(entry.get(p), dict) for p in parts):
            vals = {}
            for s in states:
                xs = [entry[p].get(s) for p in parts]
                vals[s] = float("nan") if any(x is None or x != x for x in xs) else float(fn(*xs))
            entry[name] = vals


def dataset_placement(trace, spec: PlacementSpec) -> dict:
    """The placement of a whole trace's mean load, scored on every record against static (with hindsight).

    Per layer: the scores, the replicas per expert, the experts on each device and each device's
    share of the mean load; ``mean``: the scores' means over layers with the derived gains.
    """
    L, E, G = trace.layers, trace.experts, spec.devices
    mean = trace.proportions.mean(axis=0)  # [L, E]
    placement = place(mean, spec)
    s = score(mean, trace.counts, spec, static_placement(L, E, G, spec.nodes), oracle=mean)
    overall = {k: {"all": float(v.mean())} for k, v in s.items() if "oracle" not in k}
    derive(overall, states=("all",))
    names = list(trace.card.layer_names)
    share = np.einsum("le,leg->lg", mean, placement.share)
    return {
        "dataset": trace.id,
        "version": trace.card.version,
        "static_dataset": trace.card.static,
        "records": trace.records,
        "spec": spec.describe(),
        "hardware": spec.hardware.__dict__,
        "mean": {k: v["all"] for k, v in overall.items() if "oracle" not in k and k != "gap_closed"},
        "layers": [
            {
                "layer": l,
                "name": names[l],
                **{k: float(v[l]) for k, v in s.items() if "oracle" not in k},
                "replicas": placement.replicas[l].tolist(),
                "devices": [[int(e) for e in placement.slots[l][placement.slot_device[l] == g]] for g in range(G)],
                "device_share": share[l].tolist(),
            }
            for l in range(L)
        ],
    }


__all__ = [
    "dataset_placement",
    "PlacementSpec",
    "Placement",
    "StepTimeModel",
    "place",
    "place_with_spread",
    "placement_scores",
    "deepseek_place",
    "static_placement",
    "contiguous_placement",
    "traffic_placement",
    "replicate",
    "pack",
    "score",
    "make_scorer",
    "score_windows",
    "imbalance",
    "drop_rate",
    "derive",
    "METRICS",
    "DERIVED",
]
