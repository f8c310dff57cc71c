"""Exported placements load in the engines: with SGLang's own reader where it is installed, and
against schemas written from each engine's source (cited per test) everywhere."""

from __future__ import annotations

import json
import types
from typing import Dict, List, Optional

import numpy as np
import pytest
import yaml

from bench.cli import main
from bench.engines import deepseek_arrays, export
from bench.placement import PlacementSpec, deepseek_place, place

SPECS = ("G=4,R=4", "G=8,R=8,N=2,K=4", "G=4,R=0")


def placement(spec: str, layers: int = 3, experts: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    return place(rng.random((layers, experts)), PlacementSpec.parse(spec).check(experts))


def device_experts(row, devices):
    """The experts of each rank, from a flat slot list numbered rank by rank."""
    per = len(row) // devices
    return [sorted(row[g * per : (g + 1) * per]) for g in range(devices)]


@pytest.mark.parametrize("spec", SPECS)
def test_deepseek_arrays_are_those_deepseeks_own_code_returns(spec):
    """The vendored EPLB's (phy2log, log2phy, logcnt) for the same weights; log2phy's replica order is
    EPLB's replica rank, ours ascending slots: compared as sets."""
    import torch

    from bench.vendor.deepseek_eplb import rebalance_experts

    rng = np.random.default_rng(3)
    w = rng.random((3, 16))
    s = PlacementSpec.parse(spec).check(16)
    ours = deepseek_arrays(deepseek_place(w, s))
    phy2log, log2phy, logcnt = (
        t.numpy() for t in rebalance_experts(torch.from_numpy(w), 16 + s.replicas, s.groups or 16, s.nodes, s.devices)
    )
    np.testing.assert_array_equal(ours["phy2log"], phy2log)
    np.testing.assert_array_equal(ours["logcnt"], logcnt)
    assert ours["log2phy"].shape == log2phy.shape
    np.testing.assert_array_equal(np.sort(ours["log2phy"], axis=2), np.sort(log2phy, axis=2))
    # and the file holds the same arrays
    assert json.loads(export(deepseek_place(w, s), "deepseek")) == {k: v.tolist() for k, v in ours.items()}


# ---- TensorRT-LLM --------------------------------------------------------------------------------
# Schema from tensorrt_llm/llmapi/llm_args.py (NVIDIA/TensorRT-LLM at fcd3f31682808ae56118ae43c1d7864a3a945e6f):
# `MoeLoadBalancerConfig(StrictBaseModel)` (extra keys forbidden) with `num_slots: Optional[int]`,
# `initial_global_assignments: Optional[Dict[int, List[int]]]`, `layer_updates_per_iter: int`; `setup(ep_rank,
# ep_size)` needs num_slots % ep_size == 0 and `get_layer_initial_global_assignments` a list of num_slots per layer.
# `TorchLlmArgs.validate_load_balancer` reads the file with yaml.safe_load. Slot order (rank by rank, num_slots /
# ep_size each) from examples/wide_ep/ep_load_balancer/generate_eplb_config.py
# (at 76a646e90c8e863629009ea5d365697da147348f).


def trtllm_config(text: str, ep_size: int):
    from pydantic import BaseModel, ConfigDict

    class MoeLoadBalancerConfig(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=False)
        num_slots: Optional[int] = None
        initial_global_assignments: Optional[Dict[int, List[int]]] = None
        layer_updates_per_iter: int = 0

    config = MoeLoadBalancerConfig(**yaml.safe_load(text))
    assert config.num_slots is not None and config.num_slots % ep_size == 0
    for layer, row in config.initial_global_assignments.items():
        assert len(row) == config.num_slots, layer
    return config


@pytest.mark.parametrize("spec", SPECS)
def test_trtllm_yaml_fits_the_load_balancer_config(spec):
    pl = placement(spec)
    s = PlacementSpec.parse(spec)
    config = trtllm_config(export(pl, "trtllm", first_layer=3), s.devices)
    assert config.num_slots == 16 + s.replicas and config.layer_updates_per_iter == 0
    assert sorted(config.initial_global_assignments) == [3, 4, 5]  # model layer indices
    for l in range(3):
        row = config.initial_global_assignments[3 + l]
        assert set(row) == set(range(16))  # every expert has a slot
        assert device_experts(row, s.devices) == [sorted(pl.slots[l][pl.slot_device[l] == g]) for g in range(s.devices)]
        assert np.bincount(row, minlength=16).tolist() == pl.replicas[l].tolist()


def test_trtllm_yaml_is_written_as_generate_eplb_config_writes_it():
    text = export(placement("G=4,R=4", layers=2), "trtllm")
    lines = text.splitlines()
    assert lines[0] == "initial_global_assignments:" and lines[1].startswith("  0: [") and lines[1].endswith("]")
    assert "layer_updates_per_iter: 0" in lines and "num_slots: 20" in lines


# ---- SGLang --------------------------------------------------------------------------------------
# Schema from python/sglang/srt/eplb/expert_location.py (sglang 0.5.23): `compute_initial_expert_location_metadata`
# reads a .json file with json.loads; a dict with "physical_to_logical_map" goes to `init_by_mapping`: a
# [num_layers (the model's num_hidden_layers), num_physical_experts] tensor of logical expert ids, num_physical =
# experts + ep_num_redundant_experts, divisible by ep_size, slot p on rank p // num_local_physical_experts.


@pytest.mark.parametrize("spec", SPECS)
def test_sglang_json_holds_a_physical_to_logical_map_for_every_model_layer(spec):
    pl = placement(spec)
    s = PlacementSpec.parse(spec)
    data = json.loads(export(pl, "sglang", first_layer=1, model_layers=6))
    assert list(data) == ["physical_to_logical_map"]
    rows = np.array(data["physical_to_logical_map"])
    assert rows.shape == (6, 16 + s.replicas) and rows.dtype.kind == "i"
    assert (rows >= 0).all() and (rows < 16).all()
    np.testing.assert_array_equal(rows[1:4], pl.slots)
    for trivial in (0, 4, 5):  # layers without experts: SGLang's init_trivial mapping
        np.testing.assert_array_equal(rows[trivial], np.arange(16 + s.replicas) % 16)


def test_export_refuses_what_an_engine_cannot_load():
    pl = placement("G=4,R=4")
    with pytest.raises(ValueError, match="vLLM reads no placement file"):
        export(pl, "vllm")
    with pytest.raises(ValueError, match="do not fit"):
        export(pl, "sglang", first_layer=2, model_layers=4)
    with pytest.raises(ValueError, match="unknown format"):
        export(pl, "megatron")


def sglang_reader():
    """SGLang's expert_location module, or a skip naming what is missing."""
    try:
        import sglang.srt.eplb.expert_location as el
    except ImportError as exc:
        pytest.skip(
            f"the SGLang reader test needs the sglang package ({exc}); optional, CPU is enough: "
            "pip install --no-deps sglang plus the modules its import names (orjson, pybase64, triton, msgspec, "
            "pyzmq, IPython)"
        )
    return el


@pytest.mark.optional
@pytest.mark.parametrize("spec", SPECS)
def test_sglang_loads_the_exported_file_with_its_own_reader(spec, tmp_path, monkeypatch):
    """SGLang's `compute_initial_expert_location_metadata` on the file; only its server configuration
    (EP size, redundant experts, model shape) is given by hand, as a launch would."""
    el = sglang_reader()
    s = PlacementSpec.parse(spec)
    pl = placement(spec)
    path = tmp_path / "expert-location.json"
    path.write_text(export(pl, "sglang", first_layer=1, model_layers=5))
    moe = types.SimpleNamespace(init_expert_location=str(path), ep_num_redundant_experts=s.replicas,
                                ep_dispatch_algorithm="static", moe_a2a_backend="none", eplb_algorithm="auto",
                                ep_join_mode="none")
    parallel = types.SimpleNamespace(ep_size=s.devices, nnodes=s.nodes, elastic_ep_initial_size=None,
                                     tp_size=s.devices)
    monkeypatch.setattr(el, "get_exec", lambda: types.SimpleNamespace(moe=moe))
    monkeypatch.setattr(el, "get_parallel", lambda: parallel)
    monkeypatch.setattr(el, "get_device", lambda: types.SimpleNamespace(device="cpu"))
    monkeypatch.setattr(el.ModelConfigForExpertLocation, "from_model_config",
                        staticmethod(lambda _: el.ModelConfigForExpertLocation(num_layers=5, num_logical_experts=16)))
    meta = el.compute_initial_expert_location_metadata(model_config=None, moe_ep_rank=0)
    assert (meta.num_layers, meta.num_logical_experts, meta.num_physical_experts) == (5, 16, 16 + s.replicas)
    assert meta.num_local_physical_experts == (16 + s.replicas) // s.devices
    np.testing.assert_array_equal(meta.physical_to_logical_map[1:4].numpy(), pl.slots)
    for l in range(3):
        for e in range(16):
            assert len(meta.logical_to_all_physical(1 + l, e)) == pl.replicas[l, e]


# ---- the command ---------------------------------------------------------------------------------


def test_placement_command_writes_each_format_and_explains_vllm(tmp_path, capsys):
    out = tmp_path / "loc.yaml"
    assert main(["placement", "--dataset", "tiny-cpu-s1", "-G", "4", "-R", "4", "--export", "trtllm",
                 "--first-layer", "1", "-o", str(out)]) == 0
    config = trtllm_config(out.read_text(), 4)
    assert sorted(config.initial_global_assignments) == [1, 2] and config.num_slots == 12
    assert main(["placement", "--dataset", "tiny-cpu-s1", "-G", "4", "-R", "4", "--export", "deepseek"]) == 0
    arrays = json.loads(capsys.readouterr().out)
    assert np.array(arrays["phy2log"]).shape == (2, 12) and np.array(arrays["logcnt"]).sum(axis=1).tolist() == [12, 12]
    assert main(["placement", "--dataset", "tiny-cpu-s1", "--export", "vllm"]) == 2
    assert "vLLM reads no placement file" in capsys.readouterr().err
