"""Importers turn the load dumps of real systems into validated traces.

Each format is one function ``read(path, **options) -> Trace`` in its own module, listed in
:data:`FORMATS` as ``"module:function"`` so that nothing is imported until it is used. An
importer reads everything into memory and validates it before anything is stored: a failed
import leaves nothing in the registry. Importers of per-token dumps also return the token-level
routing as the trace's extras (:mod:`datasets_registry.token_sample`), which the registry stores
in ``extras.npz``.
"""

from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path
from typing import Any, Callable

from ..guards import check_path
from ..trace import Trace

#: format name -> "module:function" (relative to this package), with a one-line description.
FORMATS: dict[str, tuple[str, str]] = {
    "npz": ("generic:read_npz", "numpy .npz with counts [T, L, E] and optional steps [T], layer_names [L]"),
    "csv": ("generic:read_long", "long table (CSV or parquet) with columns step, layer, expert, tokens"),
    "parquet": ("generic:read_long", "same as csv, read from parquet"),
    "fastmoe": ("fastmoe:read_fastmoe",
                "FastMoE/SmartMoE FileGate tables table_iter{I}_rank{R}.log (folder or .tar archive)"),
    "sglang-stat": ("sglang:read_stat", "SGLang stat/stat_approx recorder .pt, logical_count [passes, layers, "
                                        "experts]; option ring_start=K"),
    "sglang-per-pass": ("sglang:read_per_pass", "SGLang per_pass/per_token recorder .pt per rank (folder or file), "
                                                "physical -> logical, per_token routing kept; options experts=N, "
                                                "sample_every=K"),
    "eplb-json": ("eplb:read_eplb_json",
                  'EPLB statistics JSON {"logical_count": [layers, experts] (static) or [T, layers, experts]}'),
    "trtllm": ("trtllm:read_trtllm", "TensorRT-LLM EXPERT_STATISTIC_PATH folder: meta_info.json + rank{r}.safetensors "
                                     "keyed {iter}_{layer}"),
    "megatron-router-trace": ("megatron:read_megatron", "Megatron-Core router trace JSONL per rank (folder or file); "
                                                        "options experts=N (required), sample_every=K"),
    "vllm-routed-experts": ("vllm:read_vllm", "vLLM routed experts [tokens, layers, top_k] .npy/.npz/.pt; options "
                                              "step_tokens=N, experts=N (required), sample_every=K"),
    "mindspeed-json": ("mindspeed:read_mindspeed_json",
                       'MindSpeed EPLB JSON {"<layer>": {"<expert>": count}} (static); option experts=N'),
}


def importer(fmt: str) -> Callable[..., Trace]:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known formats: {', '.join(sorted(FORMATS))}")
    module, func = FORMATS[fmt][0].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), func)


def import_path(path: str | os.PathLike, fmt: str, **options: Any) -> Trace:
    """Read `path` in format `fmt` into a validated trace (not stored)."""
    path = Path(path)
    check_path(path)
    func = importer(fmt)
    params = inspect.signature(func).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        takes = list(params)[1:]
        unknown = sorted(set(options) - set(takes))
        if unknown:
            raise ValueError(f"format {fmt!r} has no option(s) {unknown}; its options: {', '.join(takes) or 'none'}")
    return func(path, **options)
