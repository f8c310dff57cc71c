"""A placement in the files serving engines load (docs/placement.md, "Exporting a placement").

Each format is taken from the engine's own source:

- ``sglang``: the JSON file ``--init-expert-location PATH.json`` reads, ``{"physical_to_logical_map":
  [layers][physical slots]}``, one row per *model* layer (``num_hidden_layers``), slot ``p`` on EP
  rank ``p // (slots / ep_size)``; read by ``compute_initial_expert_location_metadata`` and
  ``ExpertLocationMetadata.init_by_mapping`` in ``python/sglang/srt/eplb/expert_location.py``
  (sglang 0.5.23). Rows of layers without experts get SGLang's trivial mapping (``p mod E``).
- ``trtllm``: the YAML TensorRT-LLM's ``examples/wide_ep/ep_load_balancer/generate_eplb_config.py``
  writes and ``moe_config.load_balancer: PATH`` loads into ``MoeLoadBalancerConfig``
  (``tensorrt_llm/llmapi/llm_args.py``): ``num_slots``, ``initial_global_assignments`` (model
  layer index -> the expert of every slot, rank by rank) and ``layer_updates_per_iter`` (0: static).
- ``deepseek``: the three arrays DeepSeek EPLB's ``rebalance_experts`` returns (deepseek-ai/EPLB
  ``eplb.py``), as JSON lists: ``phy2log[L, P]``, ``log2phy[L, E, X]`` (-1 padded), ``logcnt[L, E]``.

vLLM reads no placement file: its EPLB (``EPLBConfig`` in ``vllm/config/parallel.py``, vllm 0.33.0)
rebalances from the loads it records itself (``window_size``, ``step_interval``,
``num_redundant_experts``); only the initial layout is a choice (``expert_placement_strategy``:
linear or round_robin).
"""

from __future__ import annotations

import json

import numpy as np

from .placement import Placement

#: format -> (file suffix, what loads it)
FORMATS = {
    "sglang": (".json", "SGLang: --init-expert-location FILE (with --ep-num-redundant-experts R)"),
    "trtllm": (".yaml", "TensorRT-LLM: moe_config.load_balancer: FILE (extra LLM API options)"),
    "deepseek": (".json", "DeepSeek EPLB's phy2log / log2phy / logcnt arrays"),
}

VLLM = (
    "vLLM reads no placement file: its EPLB rebalances from the expert loads it records itself "
    "(--eplb-config window_size, step_interval, num_redundant_experts; vllm/config/parallel.py), so there "
    "is nothing to export; see docs/placement.md"
)


def deepseek_arrays(placement: Placement) -> dict[str, np.ndarray]:
    """``phy2log[L, P]``, ``log2phy[L, E, X]`` (a logical expert's physical slots, ascending, -1
    padded to the largest replica count) and ``logcnt[L, E]``, as EPLB's ``rebalance_experts``."""
    phy2log = np.asarray(placement.slots, dtype=np.int64)
    logcnt = np.asarray(placement.replicas, dtype=np.int64)
    L, P = phy2log.shape
    log2phy = np.full((L, logcnt.shape[1], int(logcnt.max())), -1, dtype=np.int64)
    for l in range(L):
        order = np.argsort(phy2log[l], kind="stable")  # slots grouped by expert, ascending within
        starts = np.concatenate([[0], np.cumsum(logcnt[l])[:-1]])
        rank = np.arange(P) - np.repeat(starts, logcnt[l])
        log2phy[l, phy2log[l][order], rank] = order
    return {"phy2log": phy2log, "log2phy": log2phy, "logcnt": logcnt}


def _check_slots(placement: Placement) -> None:
    """Engines number slots rank by rank, with equal slots per rank: slot p is on device p // (P / G)."""
    P, G = placement.slots.shape[1], placement.devices
    expected = np.arange(P) // (P // G)
    if P % G or (placement.slot_device != expected).any():
        raise ValueError("export: the placement does not hold the same number of slots on every device")


def export(placement: Placement, fmt: str, first_layer: int = 0, model_layers: int | None = None) -> str:
    """The text of the file `fmt` (a :data:`FORMATS` key) for `placement`.

    The placement's layers are the model's MoE layers ``first_layer, first_layer + 1, ...``
    (TensorRT-LLM and SGLang index layers in the whole model); `model_layers` is the model's
    ``num_hidden_layers`` (SGLang wants a row for each; default: up to the last MoE layer).
    """
    if fmt == "vllm":
        raise ValueError(VLLM)
    if fmt not in FORMATS:
        raise ValueError(f"export: unknown format {fmt!r} (known: {', '.join(FORMATS)}; vllm: none, {VLLM})")
    _check_slots(placement)
    L, P = placement.slots.shape
    E = placement.replicas.shape[1]
    if first_layer < 0:
        raise ValueError(f"export: first_layer must be >= 0, got {first_layer}")
    total = first_layer + L if model_layers is None else model_layers
    if total < first_layer + L:
        raise ValueError(f"export: {L} MoE layers from layer {first_layer} do not fit in a model of {total} layers")
    slots = placement.slots.tolist()
    if fmt == "sglang":
        trivial = (np.arange(P) % E).tolist()
        rows = [trivial] * first_layer + slots + [trivial] * (total - first_layer - L)
        return json.dumps({"physical_to_logical_map": rows}) + "\n"
    if fmt == "trtllm":
        return _trtllm_yaml(
            {
                "num_slots": P,
                "initial_global_assignments": {first_layer + l: row for l, row in enumerate(slots)},
                "layer_updates_per_iter": 0,
            }
        )
    return json.dumps({k: v.tolist() for k, v in deepseek_arrays(placement).items()}) + "\n"


def _trtllm_yaml(config: dict) -> str:
    """YAML as generate_eplb_config.py's ``save_eplb_config`` writes it: lists inline, no line wrap."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(list, lambda d, data: d.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True))
    return yaml.dump(config, Dumper=Dumper, width=float("inf"))


__all__ = ["FORMATS", "VLLM", "deepseek_arrays", "export"]
