"""The expert-load trace: counts[T, L, E], steps[T], and the card that says where they came from.

Proportions are derived on demand and never stored. Every way a trace enters the project
(loading, importing, tracing) goes through :func:`validate_arrays`, so a bad file is refused
with the file's name and the exact problem, before anything is written anywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

#: Bumped only if the canonical byte layout hashed by :func:`fingerprint` changes.
FINGERPRINT_SCHEME = "moe-load-bench/v1"


class TraceError(ValueError):
    """A trace (file, arrays or card) is malformed. The message names the source and the problem."""

    def __init__(self, source: str, problem: str):
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")


@dataclass
class ModelInfo:
    """The shape and routing of the model that produced a trace (None where unknown)."""

    layers: int | None = None  # all transformer layers
    moe_layers: int | None = None  # layers with an MoE block: the L of counts[T, L, E]
    experts: int | None = None  # E
    top_k: int | None = None
    router: str | None = None  # e.g. "softmax-topk", "switch-top1", "hash"
    aux_loss: float | None = None  # load-balancing loss coefficient
    capacity_factor: float | None = None
    tokens_per_step: int | None = None  # tokens (not slots) routed per layer per step


@dataclass
class Card:
    """Everything a user needs to know about a trace besides its numbers.

    `source` holds where it came from: ``url`` and ``commit`` for public data, ``command`` for
    traces the project generated, ``files`` (name -> sha256) for imported dumps.
    """

    id: str
    version: int = 1
    title: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    licence: str = "unknown"
    model: ModelInfo = field(default_factory=ModelInfo)
    step_unit: str = "training iteration"  # or "forward pass"
    layer_names: list[str] = field(default_factory=list)
    static: bool = False  # a run's totals with no time axis (T == 1)
    fingerprint: str = ""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<card>") -> "Card":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TraceError(source, f"card has unknown field(s) {unknown}")
        if "id" not in data:
            raise TraceError(source, "card has no 'id'")
        data = dict(data)
        model = data.get("model") or {}
        model_known = {f.name for f in dataclasses.fields(ModelInfo)}
        if set(model) - model_known:
            raise TraceError(source, f"card.model has unknown field(s) {sorted(set(model) - model_known)}")
        data["model"] = ModelInfo(**model)
        return cls(**data)


def _as_counts(counts: Any, source: str) -> np.ndarray:
    arr = np.asarray(counts)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TraceError(source, f"counts must be numeric, got dtype {arr.dtype}")
    if arr.ndim != 3:
        raise TraceError(source, f"counts must have rank 3 [records, layers, experts], got shape {arr.shape}")
    if 0 in arr.shape:
        raise TraceError(source, f"counts has an empty axis: shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.complexfloating):
        if np.iscomplexobj(arr):
            raise TraceError(source, "counts must be real numbers")
        bad = ~np.isfinite(arr)
        if bad.any():
            t, l, e = np.argwhere(bad)[0]
            raise TraceError(source, f"counts has NaN or inf ({int(bad.sum())} values; first at record {t}, layer {l}, expert {e})")
        frac = arr != np.round(arr)
        if frac.any():
            t, l, e = np.argwhere(frac)[0]
            raise TraceError(source, f"counts must be whole numbers; record {t}, layer {l}, expert {e} is {arr[t, l, e]!r}")
    if arr.min() < 0:
        t, l, e = np.argwhere(arr < 0)[0]
        raise TraceError(source, f"counts must be non-negative; record {t}, layer {l}, expert {e} is {arr[t, l, e]}")
    if arr.max() > np.iinfo(np.int64).max // max(arr.shape[2], 1):
        raise TraceError(source, "counts are too large to sum in 64-bit integers")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _as_steps(steps: Any, n_records: int, source: str) -> np.ndarray:
    arr = np.asarray(steps)
    if arr.ndim != 1:
        raise TraceError(source, f"steps must be 1-D, got shape {arr.shape}")
    if arr.shape[0] != n_records:
        raise TraceError(source, f"steps has {arr.shape[0]} entries but counts has {n_records} records")
    if not np.issubdtype(arr.dtype, np.number):
        raise TraceError(source, f"steps must be numeric, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise TraceError(source, "steps has NaN or inf")
        if (arr != np.round(arr)).any():
            raise TraceError(source, "steps must be whole iteration numbers")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if n_records > 1:
        bad = np.flatnonzero(np.diff(arr) <= 0)
        if bad.size:
            i = int(bad[0])
            raise TraceError(source, f"steps must be strictly increasing; record {i + 1} has step {arr[i + 1]} after {arr[i]}")
    return arr


def validate_arrays(counts: Any, steps: Any, card: Card | None, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Check counts, steps and card against each other; return canonical int64 arrays.

    Raises :class:`TraceError` naming `source` and the first problem found.
    """
    c = _as_counts(counts, source)
    s = _as_steps(np.arange(c.shape[0]) if steps is None else steps, c.shape[0], source)
    totals = c.sum(axis=2)
    if (totals == 0).any():
        t, l = np.argwhere(totals == 0)[0]
        raise TraceError(source, f"layer {l} routes no tokens at record {t} (step {s[t]}): its proportions are undefined")
    if card is not None:
        T, L, E = c.shape
        m = card.model
        if m.experts is not None and m.experts != E:
            raise TraceError(source, f"card says {m.experts} experts but counts has {E}")
        if m.moe_layers is not None and m.moe_layers != L:
            raise TraceError(source, f"card says {m.moe_layers} MoE layers but counts has {L}")
        if card.layer_names and len(card.layer_names) != L:
            raise TraceError(source, f"card names {len(card.layer_names)} layers but counts has {L}")
        if card.static and T != 1:
            raise TraceError(source, f"card says static (no time axis) but counts has {T} records")
    return c, s


def fingerprint(counts: np.ndarray, steps: np.ndarray) -> str:
    """sha256 of the canonical arrays (shape, then int64 little-endian C-order counts and steps).

    It depends on the numbers only: not on the file's compression, dtype or the order the
    source files were read in.
    """
    h = hashlib.sha256()
    h.update(f"{FINGERPRINT_SCHEME}:{list(counts.shape)}".encode())
    chunk = max(1, (1 << 22) // max(1, counts.shape[1] * counts.shape[2]))
    for start in range(0, counts.shape[0], chunk):
        block = np.ascontiguousarray(counts[start : start + chunk], dtype="<i8")
        h.update(memoryview(block).cast("B"))
    h.update(memoryview(np.ascontiguousarray(steps, dtype="<i8")).cast("B"))
    return "sha256:" + h.hexdigest()


class Trace:
    """A validated, read-only expert-load trace.

    Construct through :meth:`from_arrays` (validates) or the registry/loader functions.
    """

    __slots__ = ("counts", "steps", "card", "__dict__")

    def __init__(self, counts: np.ndarray, steps: np.ndarray, card: Card):
        counts.setflags(write=False)
        steps.setflags(write=False)
        self.counts = counts
        self.steps = steps
        self.card = card

    @classmethod
    def from_arrays(cls, counts: Any, steps: Any = None, card: Card | None = None, source: str = "<arrays>") -> "Trace":
        c, s = validate_arrays(counts, steps, card, source)
        card = card if card is not None else Card(id="unnamed")
        card = dataclasses.replace(card, model=dataclasses.replace(card.model))
        if card.model.experts is None:
            card.model.experts = int(c.shape[2])
        if card.model.moe_layers is None:
            card.model.moe_layers = int(c.shape[1])
        if not card.layer_names:
            card.layer_names = [f"layer{i}" for i in range(c.shape[1])]
        fp = fingerprint(c, s)
        if card.fingerprint and card.fingerprint != fp:
            raise TraceError(source, f"card fingerprint {card.fingerprint} does not match the arrays ({fp}): the data or the card was changed")
        card.fingerprint = fp
        return cls(c, s, card)

    @property
    def id(self) -> str:
        return self.card.id

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.counts.shape)  # type: ignore[return-value]

    @property
    def records(self) -> int:
        return self.counts.shape[0]

    @property
    def layers(self) -> int:
        return self.counts.shape[1]

    @property
    def experts(self) -> int:
        return self.counts.shape[2]

    @property
    def fingerprint(self) -> str:
        return self.card.fingerprint

    @cached_property
    def totals(self) -> np.ndarray:
        """Routed token slots per record and layer, [T, L]."""
        t = self.counts.sum(axis=2)
        t.setflags(write=False)
        return t

    @cached_property
    def proportions(self) -> np.ndarray:
        """p[t, l, e] = counts / counts.sum(e), float64 [T, L, E], read-only."""
        p = self.counts / self.totals[:, :, None]
        p.setflags(write=False)
        return p

    def summary(self) -> dict[str, Any]:
        """The fields `datasets list --json` prints for every dataset."""
        return {
            "id": self.card.id,
            "version": self.card.version,
            "layers": self.layers,
            "experts": self.experts,
            "records": self.records,
            "first_step": int(self.steps[0]),
            "last_step": int(self.steps[-1]),
            "static": self.card.static,
            "source": self.card.source.get("url") or self.card.source.get("command") or self.card.source.get("format", ""),
            "licence": self.card.licence,
            "fingerprint": self.fingerprint,
        }

    def __repr__(self) -> str:
        return f"Trace({self.card.id!r} v{self.card.version}, records={self.records}, layers={self.layers}, experts={self.experts})"
