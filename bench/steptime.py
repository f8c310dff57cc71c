"""A step-time model: what one MoE layer costs on a placement, from its per-device loads.

For one step of one MoE layer, device ``g`` of ``G`` (``G/N`` per node) serves ``n_g`` routed
token slots; ``n = sum_g n_g``. Tokens start spread evenly over the devices (each holds ``1/G``
of the batch), and a slot is sent to the device that holds its expert (replica) and back:

    compute  = max_g n_g * F / C                          F = 2 * matrices * hidden * ffn FLOPs per slot
    recv_g   = n_g * (G/N - 1) / G        [intra-node]    n_g * (G - G/N) / G   [inter-node]
    send_g   = (m_g - n_g) / G            [intra-node]    (n - m_g) / G         [inter-node]
               (m_g: the load of g's node)
    phase    = max_g max( max(recv_g, send_g)[intra] * B / link , max(recv_g, send_g)[inter] * B / net )
    a2a      = 2 * phase                                  (dispatch, then combine: the same bytes back)
    time     = compute + a2a                              (no overlap), B = hidden * bytes_per_element

Both terms are linear in the tokens, so a ratio of two times (a speed-up) does not depend on the
batch size of the trace, only on the hardware and expert shape below. A slot is one transfer
(no de-duplication of a token's top-k copies bound for the same device, as DeepEP does): an upper
bound on traffic. Link numbers are nominal peaks per direction per GPU, which makes the
communication share a lower bound; see docs/placement.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Intra-node bandwidth, GB/s per direction per GPU (nominal).
LINKS = {
    "nvlink": 450.0,  # H100 SXM, NVLink 4: 900 GB/s bidirectional
    "pcie": 50.0,  # PCIe 5.0 x16 (64 GB/s raw), effective
    "pcie4": 25.0,  # PCIe 4.0 x16 (32 GB/s raw), effective
}
#: Inter-node bandwidth, GB/s per direction per GPU (nominal).
NETWORKS = {
    "ib": 50.0,  # one 400 Gb/s InfiniBand NIC per GPU
    "roce": 25.0,  # one 200 Gb/s RoCE NIC per GPU
}


@dataclass(frozen=True)
class StepTimeModel:
    """Hardware and expert shape; defaults: a Mixtral-8x7B-sized SwiGLU expert in BF16 on H100s."""

    hidden: int = 4096
    ffn: int = 14336
    matrices: int = 3  # SwiGLU: gate, up, down; a plain FFN has 2
    bytes_per_element: float = 2.0  # BF16 activations
    tflops: float = 400.0  # achieved dense TFLOP/s per GPU (about 40% of the H100 SXM's 989 BF16)
    link_gbps: float = LINKS["nvlink"]
    net_gbps: float = NETWORKS["ib"]

    @property
    def flops_per_slot(self) -> float:
        return 2.0 * self.matrices * self.hidden * self.ffn

    @property
    def bytes_per_slot(self) -> float:
        return self.hidden * self.bytes_per_element

    def compute_time(self, loads: np.ndarray) -> np.ndarray:
        """Expert compute in seconds: the most loaded device's slots, ``loads[..., G]`` -> ``[...]``."""
        return loads.max(axis=-1) * self.flops_per_slot / (self.tflops * 1e12)

    def all_to_all_time(self, loads: np.ndarray, nodes: int = 1) -> np.ndarray:
        """Dispatch plus combine in seconds, ``loads[..., G]`` -> ``[...]``."""
        G = loads.shape[-1]
        if nodes < 1 or G % nodes:
            raise ValueError(f"{G} devices do not split into {nodes} nodes")
        per_node = G // nodes
        total = loads.sum(axis=-1, keepdims=True)
        node_load = np.repeat(loads.reshape(loads.shape[:-1] + (nodes, per_node)).sum(axis=-1), per_node, axis=-1)
        intra = np.maximum(loads * (per_node - 1), node_load - loads) / G
        inter = np.maximum(loads * (G - per_node), total - node_load) / G
        phase = np.maximum(intra * self.bytes_per_slot / (self.link_gbps * 1e9),
                           inter * self.bytes_per_slot / (self.net_gbps * 1e9)).max(axis=-1)
        return 2.0 * phase

    def layer_time(self, loads: np.ndarray, nodes: int = 1) -> np.ndarray:
        """Estimated MoE layer time in seconds for device loads ``[..., G]`` (slots per device)."""
        loads = np.asarray(loads, dtype=np.float64)
        return self.compute_time(loads) + self.all_to_all_time(loads, nodes)
