"""The topology and traffic model (bench/topology.py) on cases small enough to work out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from bench.placement import contiguous_placement, static_placement, traffic_placement
from bench.steptime import StepTimeModel
from bench.topology import Topology, even_sources, rank_map, step_time, topology, traffic, volumes

# 1000-wide expert of 2 matrices, 2 bytes per element: 2,000 bytes and 4e6 FLOPs per slot; 1 TFLOP/s
HW = StepTimeModel(hidden=1000, ffn=1000, matrices=2, bytes_per_element=2.0, tflops=1.0)
C = np.array([[[3.0, 1.0], [2.0, 4.0]]])  # one step: rank 0 sent 3 slots to expert 0 and 1 to expert 1; rank 1: 2, 4
ONE_EACH = np.eye(2)  # expert e on GPU e


def test_two_nodes_of_one_gpu_by_hand():
    topo = Topology("t", nodes=2, gpus_per_node=1, intra_gbps=100.0, inter_gbps=1.0, intra_latency_us=1.0,
                    inter_latency_us=10.0, base_latency_us=5.0, hardware=HW)
    t = traffic(C, ONE_EACH, topo)
    assert np.array_equal(t.volume[0], [[3, 1], [2, 4]])
    assert t.internode_share[0] == pytest.approx(0.3) and t.remote_share[0] == pytest.approx(0.3)
    # dispatch: GPU 0 sends 1 and receives 2 slots over the network, GPU 1 the reverse: 2 slots * 2000 B at 1 GB/s
    # = 4 us, plus 10 us latency, plus the 5 us base
    assert t.dispatch_s[0] == pytest.approx(19e-6) and t.combine_s[0] == pytest.approx(19e-6)
    # compute: each GPU serves 5 slots of 4e6 FLOPs at 1 TFLOP/s = 20 us
    assert t.compute_s[0] == pytest.approx(20e-6)
    assert t.step_s[0] == pytest.approx(58e-6)


def test_one_node_of_two_gpus_uses_the_intra_node_link():
    topo = Topology("t", nodes=1, gpus_per_node=2, intra_gbps=2.0, inter_gbps=1.0, intra_latency_us=1.0,
                    inter_latency_us=10.0, hardware=HW)
    t = traffic(C, ONE_EACH, topo)
    assert t.internode_share[0] == 0.0 and t.remote_share[0] == pytest.approx(0.3)
    # 2 slots * 2000 B at 2 GB/s = 2 us, plus 1 us; no network traffic, so no network latency
    assert t.a2a_s[0] == pytest.approx(2 * 3e-6)


def test_traffic_that_stays_on_its_gpu_is_free_and_combine_mirrors_dispatch():
    topo = Topology("t", nodes=2, gpus_per_node=1, intra_gbps=1.0, inter_gbps=1.0, inter_latency_us=10.0,
                    base_latency_us=5.0, hardware=HW)
    local = traffic(np.array([[[4.0, 0.0], [0.0, 6.0]]]), ONE_EACH, topo)
    assert local.internode_share[0] == 0 and local.a2a_s[0] == pytest.approx(2 * 5e-6)
    skew = traffic(np.array([[[0.0, 3.0], [0.0, 0.0]]]), ONE_EACH, topo)  # rank 0 sends 3 slots to GPU 1
    assert skew.internode_share[0] == 1.0
    assert skew.dispatch_s[0] == pytest.approx(5e-6 + 3 * 2000 / 1e9 + 10e-6) == skew.combine_s[0]
    assert skew.compute_s[0] == pytest.approx(3 * 4e6 / 1e12)


def test_even_spread_is_the_step_time_model():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 500, size=(20, 16)).astype(float)  # [T, E]
    place = static_placement(1, 16, 8, nodes=2)
    topo = Topology("t", nodes=2, gpus_per_node=4, intra_gbps=450.0, inter_gbps=50.0)  # no latencies
    t = traffic(even_sources(counts, 8), place.share[0], topo)
    loads = place.device_loads(counts[:, None, :])[:, 0]  # [T, G]
    assert np.allclose(t.a2a_s, topo.hardware.all_to_all_time(loads, nodes=2))
    assert np.allclose(t.compute_s, topo.hardware.compute_time(loads))


def test_rank_map_and_volumes_conserve_slots():
    assert np.array_equal(rank_map(4, 2), [[1, 0], [1, 0], [0, 1], [0, 1]])
    assert np.array_equal(rank_map(2, 4), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    with pytest.raises(ValueError, match="do not map"):
        rank_map(3, 2)
    rng = np.random.default_rng(1)
    src = rng.integers(0, 9, size=(3, 8, 16)).astype(float)
    V = volumes(src, contiguous_placement(1, 16, 8, 4).share[0], 8)
    assert np.allclose(V.sum(axis=(1, 2)), src.sum(axis=(1, 2)))


def test_presets_cite_their_figures():
    ib = topology("nvlink-ib", 4, 2)
    eth = topology("pcie-eth", 4, 2)
    assert (ib.intra_gbps, ib.inter_gbps, ib.inter_latency_us) == (450.0, 50.0, 14.0)
    assert (eth.intra_gbps, eth.inter_gbps) == (25.0, 12.5 / 2)  # one 100 GbE NIC shared by the node's 2 GPUs
    with pytest.raises(ValueError, match="unknown topology"):
        topology("carrier-pigeon", 1, 1)


def test_traffic_placement_keeps_forecast_traffic_in_its_node():
    # 2 nodes of 1 GPU; rank 0 (node 0) mostly routes to expert 1, rank 1 (node 1) to expert 0
    src = np.array([[[1.0, 9.0], [8.0, 2.0]]])  # [L=1, S=2, E=2]
    topo = Topology("t", nodes=2, gpus_per_node=1, intra_gbps=1.0, inter_gbps=1.0)
    blocks = contiguous_placement(1, 2, 2, 2)
    assert step_time(src[None], blocks, topo)["internode_share"][0] == pytest.approx(17 / 20)
    moved = traffic_placement(src, devices=2, nodes=2)
    assert np.array_equal(moved.slots[0], [1, 0])  # slots in device order: expert 1 on node 0
    assert step_time(src[None], moved, topo)["internode_share"][0] == pytest.approx(3 / 20)


def test_a_relayed_dispatch_sends_a_token_once_per_node():
    # 2 nodes of 2 GPUs, expert e on GPU e; rank 0 (GPU 0) routes 3 tokens top-2 to experts 2 and 3 (node 1)
    topo = Topology("t", nodes=2, gpus_per_node=2, intra_gbps=1.0, inter_gbps=1.0, inter_latency_us=10.0,
                    hardware=HW)
    src = np.zeros((1, 4, 4))
    src[0, 0, 2] = src[0, 0, 3] = 3.0
    reach = np.zeros((1, 4, 2))
    reach[0, 0, 1] = 3.0  # the 3 tokens reach node 1 once each
    plain = traffic(src, np.eye(4), topo)
    relay = traffic(src, np.eye(4), topo, node_tokens=reach)
    assert plain.internode_share[0] == 1.0 and relay.internode_share[0] == pytest.approx(0.5)
    # relay: 3 tokens GPU 0 -> GPU 2 over the network (3 * 2000 B at 1 GB/s = 6 us, + 10 us latency), and
    # GPU 2 forwards the 3 slots of expert 3 to GPU 3 over NVLink (6 us) at the same time
    assert relay.dispatch_s[0] == pytest.approx(16e-6)
    # plain: GPU 0 sends 6 slots over the network: 12 us + 10 us
    assert plain.dispatch_s[0] == pytest.approx(22e-6)
