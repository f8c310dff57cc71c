"""EPLB statistics JSON, as SGLang's ``--init-expert-location`` reads it and DeepSeek publishes it.

``{"logical_count": [...]}`` holds either a run's totals, 2-D ``[layers, experts]`` (imported as
a *static* dataset: one record, step 0), or a series, 3-D ``[T, layers, experts]`` (steps
0..T-1: the file holds no step numbers). Counts may be stored as floats holding whole numbers.
Whole-model arrays have all-zero rows for dense layers: those layers are dropped and named in
the card (notes and ``extra["dropped_layers"]``). Other keys are ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..trace import ModelInfo
from .common import build_trace, file_hashes
from .dumps import counts_array, drop_dense_layers, finish_notes, load_json, require_keys


def build_totals(counts: np.ndarray, labels: list[str], *, path: Path, fmt: str, notes: list[str],
                 extra: dict | None = None) -> "Trace":  # noqa: F821
    """A trace from `counts` [L, E] (a run's totals: static) or [T, L, E], dense layers dropped."""
    extra = dict(extra or {})
    static = counts.ndim == 2
    if static:
        counts = counts[None]
        notes.append("a run's totals with no time axis: a static dataset (one record, step 0)")
    counts, labels = drop_dense_layers(counts, labels, path, notes, extra)
    return build_trace(counts, np.arange(counts.shape[0]), path=path, fmt=fmt, files=file_hashes([path]),
                       layer_names=labels,
                       static=static, model=ModelInfo(experts=counts.shape[2]), step_unit="forward pass",
                       notes=finish_notes(notes), extra=extra)


def read_eplb_json(path: Path) -> "Trace":  # noqa: F821
    data = require_keys(load_json(path), ["logical_count"], path, "the JSON document")
    counts = counts_array(data["logical_count"], path, "logical_count", (2, 3))
    shape = "[layers, experts]" if counts.ndim == 2 else "[T, layers, experts]"
    notes = [f"EPLB statistics JSON: logical_count {shape} read as is"]
    return build_totals(counts, [f"layer{i}" for i in range(counts.shape[-2])], path=path, fmt="eplb-json", notes=notes)
