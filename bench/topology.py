"""Where the all-to-all of an MoE layer goes: traffic between GPUs from per-source loads, on N nodes x G GPUs.

:mod:`bench.steptime` assumes every device holds ``1/G`` of the batch, so each device's slots arrive evenly from
all devices. A trace that records its load per source rank (``source_counts[T, L, S, E]``: the slots each
data-parallel rank sent to each expert) says where the tokens really start. For one step of one MoE layer:

    V[g, h] = sum_s sum_e R[s, g] * C[s, e] * share[e, h]     slots from GPU g to GPU h (dispatch)

with ``C[S, E]`` the per-source loads, ``R[S, G]`` the GPU each rank runs on and ``share[E, G]`` the placement
(:class:`bench.placement.Placement`: the fraction of expert e's slots served by device h). Combine sends the
results back: ``V.T``. Slots that stay on their GPU (``V[g, g]``) cost nothing; the others cross NVLink/PCIe
inside a node or the network between nodes. Per phase, each GPU's intra- and inter-node transfers run at once
on their own links:

    t_g   = max( max(out_g, in_g)[intra] * B / intra_bw + lat_intra ,  max(out_g, in_g)[inter] * B / inter_bw
                 + lat_inter )                               (a latency counted where the GPU has such traffic)
    phase = base_latency + max_g t_g,   a2a = dispatch + combine,   time = compute + a2a   (no overlap)

``compute`` is :meth:`StepTimeModel.compute_time` of the GPU loads (the column sums of V). Where the trace also
holds the tokens of each rank that reach each node, the dispatch can be modelled as DeepEP sends it: once per
node over the network, then relayed inside the node (:func:`relayed`). Without per-source
loads, ``C[s, e] = counts[e] / S`` (the even spread), and with zero latencies the a2a time is exactly
:meth:`StepTimeModel.all_to_all_time`. A slot is one transfer (no de-duplication of a token's top-k copies
bound for one GPU), as in :mod:`bench.steptime`.

Hardware presets (:data:`TOPOLOGIES`) and the sources of their figures:

* ``nvlink-ib``: NVLink 4 at 450 GB/s per direction per GPU (H100 SXM: 900 GB/s bidirectional, NVIDIA H100
  datasheet) and one 400 Gb/s InfiniBand NDR NIC per GPU, 50 GB/s (ConnectX-7, as in DGX H100);
* ``pcie-eth``: PCIe 4.0 x16 at 25 GB/s effective per direction (32 GB/s raw) and one 100 Gb/s Ethernet NIC per
  node (12.5 GB/s shared by the node's GPUs);
* latencies: NCCL's own tuning model (``src/graph/tuning.cc``, Ring/Simple): a base of 8.4 us per collective and
  per-step hardware latencies of 3.4 us over NVLink, 5.7 us over PCIe and 14 us over the network (NCCL uses one
  network figure for every network transport, Ethernet included).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .steptime import LINKS, NETWORKS, StepTimeModel

#: NCCL tuning-model latencies in microseconds (src/graph/tuning.cc: baseLat and hwLat, Ring algorithm, Simple).
NCCL_LATENCY_US = {"base": 8.4, "nvlink": 3.4, "pcie": 5.7, "net": 14.0}


@dataclass(frozen=True)
class Topology:
    """N nodes of G GPUs, with per-GPU link bandwidths (GB/s per direction) and latencies (microseconds).

    ``inter_gbps`` is per GPU; a NIC shared by a node's GPUs is given as its bandwidth / G (:func:`topology`)."""

    name: str
    nodes: int
    gpus_per_node: int
    intra_gbps: float
    inter_gbps: float
    intra_latency_us: float = 0.0
    inter_latency_us: float = 0.0
    base_latency_us: float = 0.0
    hardware: StepTimeModel = field(default_factory=StepTimeModel)

    def __post_init__(self):
        if self.nodes < 1 or self.gpus_per_node < 1:
            raise ValueError(f"topology {self.name}: nodes and GPUs per node must be >= 1")
        if min(self.intra_gbps, self.inter_gbps) <= 0:
            raise ValueError(f"topology {self.name}: bandwidths must be positive")
        if min(self.intra_latency_us, self.inter_latency_us, self.base_latency_us) < 0:
            raise ValueError(f"topology {self.name}: latencies must be >= 0")

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def gpu_node(self) -> np.ndarray:
        """The node of each GPU, ``[G]`` (GPUs numbered node by node)."""
        return np.arange(self.gpus) // self.gpus_per_node

    def describe(self) -> str:
        return f"{self.name} {self.nodes}x{self.gpus_per_node}"


#: name -> (intra-node GB/s per GPU, network GB/s per NIC, NIC per GPU (True) or per node (False), intra latency key)
PRESETS = {
    "nvlink-ib": (LINKS["nvlink"], NETWORKS["ib"], True, "nvlink"),
    "pcie-eth": (LINKS["pcie4"], 12.5, False, "pcie"),
}


def topology(name: str, nodes: int, gpus_per_node: int, hardware: StepTimeModel | None = None) -> Topology:
    """A preset of :data:`PRESETS` on ``nodes x gpus_per_node`` GPUs, with NCCL's latencies."""
    if name not in PRESETS:
        raise ValueError(f"unknown topology {name!r}; presets: {', '.join(PRESETS)}")
    intra, net, per_gpu, link = PRESETS[name]
    hw = replace(hardware or StepTimeModel(), link_gbps=intra, net_gbps=net if per_gpu else net / gpus_per_node)
    return Topology(name, nodes, gpus_per_node, hw.link_gbps, hw.net_gbps, NCCL_LATENCY_US[link],
                    NCCL_LATENCY_US["net"], NCCL_LATENCY_US["base"], hw)


def rank_map(sources: int, gpus: int) -> np.ndarray:
    """``R[S, G]``: the share of source rank s's tokens that starts on GPU g (ranks and GPUs in the same order;
    several ranks per GPU, or one rank spread evenly over several GPUs)."""
    R = np.zeros((sources, gpus))
    if sources % gpus == 0:
        R[np.arange(sources), np.arange(sources) // (sources // gpus)] = 1.0
    elif gpus % sources == 0:
        per = gpus // sources
        for s in range(sources):
            R[s, s * per : (s + 1) * per] = 1.0 / per
    else:
        raise ValueError(f"{sources} source ranks do not map onto {gpus} GPUs (one must divide the other)")
    return R


def even_sources(counts: np.ndarray, sources: int) -> np.ndarray:
    """The even-spread assumption: ``counts[..., E]`` -> ``[..., S, E]``, each rank sending ``1/S`` of each load."""
    counts = np.asarray(counts, dtype=np.float64)
    return np.repeat(counts[..., None, :] / sources, sources, axis=-2)


def volumes(source_counts: np.ndarray, share: np.ndarray, gpus: int) -> np.ndarray:
    """Dispatch volume in slots, GPU to GPU: ``source_counts[..., S, E]``, ``share[E, G]`` -> ``[..., G, G]``."""
    C = np.asarray(source_counts, dtype=np.float64)
    R = rank_map(C.shape[-2], gpus)
    return np.einsum("sg,...se,eh->...gh", R, C, np.asarray(share, dtype=np.float64))


@dataclass
class Traffic:
    """One layer's traffic over its steps: volumes and times (seconds), per step."""

    volume: np.ndarray  # [T, G, G] dispatch slots from GPU g to GPU h
    internode_share: np.ndarray  # [T] share of the routed slots that cross nodes
    remote_share: np.ndarray  # [T] share of the routed slots that leave their GPU
    compute_s: np.ndarray  # [T]
    dispatch_s: np.ndarray  # [T]
    combine_s: np.ndarray  # [T]

    @property
    def a2a_s(self) -> np.ndarray:
        return self.dispatch_s + self.combine_s

    @property
    def step_s(self) -> np.ndarray:
        return self.compute_s + self.a2a_s


def phase_time(volume: np.ndarray, topo: Topology) -> np.ndarray:
    """One all-to-all phase in seconds, ``volume[..., G, G]`` (slots from g to h) -> ``[...]``."""
    G = topo.gpus
    if volume.shape[-1] != G or volume.shape[-2] != G:
        raise ValueError(f"volumes of {volume.shape[-2]}x{volume.shape[-1]} GPUs on a topology of {G}")
    node = topo.gpu_node
    same = node[:, None] == node[None, :]
    off = ~np.eye(G, dtype=bool)
    intra_mask, inter_mask = same & off, ~same
    B = topo.hardware.bytes_per_slot

    def link(mask: np.ndarray, gbps: float, latency_us: float) -> np.ndarray:
        v = np.where(mask, volume, 0.0)
        out, inn = v.sum(axis=-1), v.sum(axis=-2)  # [..., G]
        busy = np.maximum(out, inn)
        return busy * B / (gbps * 1e9) + np.where(busy > 0, latency_us * 1e-6, 0.0)

    per_gpu = np.maximum(link(intra_mask, topo.intra_gbps, topo.intra_latency_us),
                         link(inter_mask, topo.inter_gbps, topo.inter_latency_us))
    return topo.base_latency_us * 1e-6 + per_gpu.max(axis=-1)


def relayed(V: np.ndarray, node_tokens: np.ndarray, topo: Topology) -> np.ndarray:
    """Transfers of a dispatch that sends a token to each remote node once and forwards it inside (DeepEP's
    internode kernels, which DeepSeek-V3's node-limited routing is built for): ``V[..., G, G]`` slots and
    ``node_tokens[..., G, N]`` (tokens of GPU g with at least one expert on node n) -> ``[..., G, G]``.

    A token for remote node n goes over the network to the GPU of n with its source's local index (the relay),
    once; the relay forwards its slots to the experts' GPUs over the node's links. Entries between nodes are
    network transfers in tokens, entries inside a node link transfers in slots."""
    G, per = topo.gpus, topo.gpus_per_node
    node = topo.gpu_node
    out = np.where(node[:, None] == node[None, :], V, 0.0)  # slots inside the source's node
    out[..., np.arange(G), np.arange(G)] = 0.0
    for g in range(G):
        for n in range(topo.nodes):
            if n == node[g]:
                continue
            relay = n * per + g % per
            out[..., g, relay] += node_tokens[..., g, n]
            dest = np.arange(n * per, (n + 1) * per)
            forwarded = V[..., g, dest].copy()
            forwarded[..., dest == relay] = 0.0
            out[..., relay, dest] += forwarded
    return out


def traffic(source_counts: np.ndarray, share: np.ndarray, topo: Topology,
            node_tokens: np.ndarray | None = None) -> Traffic:
    """The traffic and times of one layer: ``source_counts[T, S, E]`` on the placement ``share[E, G]``.

    With ``node_tokens[T, S, N]`` (tokens of each source rank that reach each node of `topo`; the placement must
    keep each expert on the node the counts were taken for) the dispatch goes once per node and is relayed
    inside it (:func:`relayed`): the inter-node share then counts network transfers per routed slot."""
    V = volumes(source_counts, share, topo.gpus)
    total = V.sum(axis=(-2, -1))
    node = topo.gpu_node
    cross = node[:, None] != node[None, :]
    if node_tokens is not None:
        nt = np.asarray(node_tokens, dtype=np.float64)
        if nt.shape[-1] != topo.nodes:
            raise ValueError(f"node tokens over {nt.shape[-1]} nodes on a topology of {topo.nodes}")
        sent = relayed(V, np.einsum("sg,...sn->...gn", rank_map(nt.shape[-2], topo.gpus), nt), topo)
        inter = np.where(cross, sent, 0.0).sum(axis=(-2, -1))
        local = np.trace(V, axis1=-2, axis2=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            internode = np.where(total > 0, inter / total, 0.0)
            remote = np.where(total > 0, 1.0 - local / total, 0.0)
        return Traffic(V, internode, remote, topo.hardware.compute_time(V.sum(axis=-2)), phase_time(sent, topo),
                       phase_time(np.swapaxes(sent, -1, -2), topo))
    inter = np.where(cross, V, 0.0).sum(axis=(-2, -1))
    local = np.trace(V, axis1=-2, axis2=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        internode = np.where(total > 0, inter / total, 0.0)
        remote = np.where(total > 0, 1.0 - local / total, 0.0)
    loads = V.sum(axis=-2)  # [T, G] slots each GPU's experts serve
    return Traffic(V, internode, remote, topo.hardware.compute_time(loads), phase_time(V, topo),
                   phase_time(np.swapaxes(V, -1, -2), topo))


def step_time(source_counts: np.ndarray, placement, topo: Topology,
              node_tokens: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-layer means over steps for ``source_counts[T, L, S, E]`` on a :class:`~bench.placement.Placement`:
    ``internode_share``, ``remote_share``, ``compute_s``, ``a2a_s`` and ``step_s`` (compute + a2a), each ``[L]``;
    with ``node_tokens[T, L, S, N]``, a dispatch relayed once per node (:func:`traffic`)."""
    source_counts = np.asarray(source_counts, dtype=np.float64)
    if placement.devices != topo.gpus:
        raise ValueError(f"the placement spans {placement.devices} devices, the topology {topo.gpus}")
    out: dict[str, list[float]] = {k: [] for k in ("internode_share", "remote_share", "compute_s", "a2a_s", "step_s")}
    for layer in range(source_counts.shape[1]):
        t = traffic(source_counts[:, layer], placement.share[layer], topo,
                    None if node_tokens is None else np.asarray(node_tokens)[:, layer])
        for k in out:
            out[k].append(float(getattr(t, k).mean()))
    return {k: np.asarray(v) for k, v in out.items()}


__all__ = [
    "NCCL_LATENCY_US",
    "PRESETS",
    "Topology",
    "Traffic",
    "even_sources",
    "phase_time",
    "rank_map",
    "relayed",
    "step_time",
    "topology",
    "traffic",
    "volumes",
]
