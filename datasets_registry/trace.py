"""The expert-load trace: counts[T, L, E], steps[T], and the card that says where they came from.

Proportions are derived on demand and never stored. Every way a trace enters the project
(loading, importing, tracing) goes through :func:`validate_arrays`, so a bad file is refused
with the file's name and the exact problem, before anything is written anywhere; an optional
per-source split (extras key :data:`SOURCE_COUNTS`) goes through :func:`validate_source_counts`
whenever a :class:`Trace` is constructed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from .guards import TraceError, check_dims

__all__ = ["Card", "ModelInfo", "Trace", "TraceError", "validate_arrays", "validate_steps",
           "validate_source_counts", "fingerprint", "FingerprintHasher", "FINGERPRINT_SCHEME", "SOURCE_COUNTS",
           "SOURCE_UNITS"]

#: Bumped only if the canonical byte layout hashed by :func:`fingerprint` changes.
FINGERPRINT_SCHEME = "moe-load-bench/v1"


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
        """A card from its JSON form; every field's type is checked (a clear error naming `source` and the field)."""
        _check_fields(data, CARD_FIELD_TYPES, source, "card")
        if "id" not in data:
            raise TraceError(source, "card has no 'id'")
        if data.get("version", 1) < 1:
            raise TraceError(source, f"card field 'version' must be a positive integer, got {data['version']}")
        if not all(isinstance(x, str) for x in data.get("layer_names", [])):
            raise TraceError(source, "card field 'layer_names' must be a list of strings")
        data = dict(data)
        model = data.get("model") or {}
        _check_fields(model, MODEL_FIELD_TYPES, source, "card.model", optional=True)
        data["model"] = ModelInfo(**model)
        return cls(**data)


#: The JSON types of a card's fields (int never accepts a boolean; float accepts an int).
CARD_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "id": str, "version": int, "title": str, "source": dict, "licence": str, "model": (dict, type(None)),
    "step_unit": str, "layer_names": list, "static": bool, "fingerprint": str, "notes": str, "extra": dict,
}
MODEL_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "layers": int, "moe_layers": int, "experts": int, "top_k": int, "router": str, "aux_loss": (int, float),
    "capacity_factor": (int, float), "tokens_per_step": int,
}


def _check_fields(data: Any, types: dict[str, Any], source: str, what: str, optional: bool = False) -> None:
    """Refuse unknown fields and fields of the wrong JSON type (None allowed where `optional`)."""
    if not isinstance(data, dict):
        raise TraceError(source, f"{what} must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(types))
    if unknown:
        raise TraceError(source, f"{what} has unknown field(s) {unknown}")
    for key, value in data.items():
        want = types[key] if isinstance(types[key], tuple) else (types[key],)
        if value is None and optional:
            continue
        if isinstance(value, want) and not (isinstance(value, bool) and bool not in want):
            continue
        names = " or ".join("null" if t is type(None) else t.__name__ for t in want)
        raise TraceError(source, f"{what} field {key!r} must be {names}, got {type(value).__name__}")


def _as_counts(counts: Any, source: str) -> np.ndarray:
    arr = np.asarray(counts)
    if arr.dtype == bool:
        raise TraceError(source, "counts must be numbers, not booleans")
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise TraceError(source, f"counts must be numeric, got dtype {arr.dtype}")
    if arr.ndim != 3:
        raise TraceError(source, f"counts must have rank 3 [records, layers, experts], got shape {arr.shape}")
    if 0 in arr.shape:
        raise TraceError(source, f"counts has an empty axis: shape {arr.shape}")
    check_dims(source, records=arr.shape[0], layers=arr.shape[1], experts=arr.shape[2])
    if np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.complexfloating):
        if np.iscomplexobj(arr):
            raise TraceError(source, "counts must be real numbers")
        bad = ~np.isfinite(arr)
        if bad.any():
            t, l, e = np.argwhere(bad)[0]
            raise TraceError(source, f"counts has NaN or inf ({int(bad.sum())} values; first at record {t}, layer {l}, "
                                     f"expert {e})")
        frac = arr != np.round(arr)
        if frac.any():
            t, l, e = np.argwhere(frac)[0]
            raise TraceError(source, f"counts must be whole numbers; record {t}, layer {l}, expert {e} is "
                                     f"{arr[t, l, e]!r}")
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
    if arr.dtype == bool:
        raise TraceError(source, "steps must be numbers, not booleans")
    if arr.dtype == object:  # e.g. Python integers too large for any numpy integer type
        raise TraceError(source, "steps must be whole numbers that fit in 64-bit integers")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TraceError(source, f"steps must be numeric, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise TraceError(source, "steps has NaN or inf")
        if (arr != np.round(arr)).any():
            raise TraceError(source, "steps must be whole iteration numbers")
    if arr.dtype.kind in "uf":  # checked before the cast to int64, which would wrap around silently
        big = (arr > np.iinfo(np.int64).max) if arr.dtype.kind == "u" else (arr >= 2.0**63) | (arr < -(2.0**63))
        if big.any():
            i = int(np.flatnonzero(big)[0])
            raise TraceError(source, f"steps must fit in 64-bit signed integers; record {i} has step {arr[i]}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if n_records > 1:
        bad = np.flatnonzero(arr[1:] <= arr[:-1])  # not np.diff, which overflows across the int64 range
        if bad.size:
            i = int(bad[0])
            raise TraceError(source, f"steps must be strictly increasing; record {i + 1} has step {arr[i + 1]} after "
                                     f"{arr[i]}")
    return arr


def validate_arrays(counts: Any, steps: Any, card: Card | None, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Check counts, steps and card against each other; return canonical int64 arrays.

    Raises :class:`TraceError` naming `source` and the first problem found.
    """
    c = _as_counts(counts, source)
    s = _as_steps(np.arange(c.shape[0]) if steps is None else steps, c.shape[0], source)
    silent = ~c.any(axis=2)  # counts are non-negative: a zero total is all zeros (a bool array, not int64 sums)
    if silent.any():
        t, l = np.argwhere(silent)[0]
        raise TraceError(source, f"layer {l} routes no tokens at record {t} (step {s[t]}): its proportions are "
                                 "undefined")
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


#: The extras key of the per-source split of the counts, ``source_counts[T, L, S, E]``.
SOURCE_COUNTS = "source_counts"
#: What a source is: the rank (GPU process) or the node (host) the routed tokens came from.
SOURCE_UNITS = ("rank", "node")


def _check_sources_field(sources: Any, source: str) -> int:
    """The card's ``extra["sources"]``: ``{"count": S, "unit": "rank"|"node", "layout": "<one line>"}``; returns S."""
    if not isinstance(sources, dict):
        raise TraceError(source, f"card field extra.sources must be a JSON object, got {type(sources).__name__}")
    fields = {"count", "unit", "layout"}
    if set(sources) != fields:
        raise TraceError(source, f"card field extra.sources must have exactly the keys {sorted(fields)}, got "
                                 f"{sorted(sources)}")
    count = sources["count"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise TraceError(source, f"card field extra.sources.count must be a positive integer, got {count!r}")
    if sources["unit"] not in SOURCE_UNITS:
        raise TraceError(source, f"card field extra.sources.unit must be one of {list(SOURCE_UNITS)}, got "
                                 f"{sources['unit']!r}")
    if not isinstance(sources["layout"], str) or not sources["layout"].strip() or "\n" in sources["layout"]:
        raise TraceError(source, "card field extra.sources.layout must be one non-empty line of text")
    return count


def validate_source_counts(source_counts: Any, counts: np.ndarray, card: Card | None, source: str) -> np.ndarray:
    """Check the per-source split ``source_counts[T, L, S, E]`` against ``counts[T, L, E]`` and the card.

    Non-negative whole numbers, the counts' T, L and E, S equal to the card's ``extra["sources"]["count"]``,
    and the sum over sources equal to the counts exactly. Returns it as a C-ordered int64 array.
    """
    arr = np.asarray(source_counts)
    if arr.dtype == bool or arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise TraceError(source, f"source_counts must be integers, got dtype {arr.dtype}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TraceError(source, f"source_counts must be integers, got dtype {arr.dtype}")
    T, L, E = counts.shape
    if arr.ndim != 4 or (arr.shape[0], arr.shape[1], arr.shape[3]) != (T, L, E) or arr.shape[2] == 0:
        raise TraceError(source, f"source_counts must be [records, layers, sources, experts] = [{T}, {L}, S, {E}] "
                                 f"with S >= 1, got shape {arr.shape}")
    check_dims(source, cells=arr.size)
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:  # an unsigned type holds none
        t, l, s, e = np.argwhere(arr < 0)[0]
        raise TraceError(source, f"source_counts must be non-negative; record {t}, layer {l}, source {s}, expert {e} "
                                 f"is {arr[t, l, s, e]}")
    if arr.dtype == np.uint64 and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise TraceError(source, "source_counts are too large for 64-bit signed integers")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if card is None or "sources" not in card.extra:
        raise TraceError(source, 'source_counts without card.extra["sources"] (count, unit, layout): the card must '
                                 "say what a source is")
    S = _check_sources_field(card.extra["sources"], source)
    if S != arr.shape[2]:
        raise TraceError(source, f"card says {S} sources but source_counts has {arr.shape[2]}")
    wrong = arr.sum(axis=2) != counts
    if wrong.any():
        t, l, e = np.argwhere(wrong)[0]
        raise TraceError(source, f"source_counts do not add up to counts ({int(wrong.sum())} cells); first at record "
                                 f"{t}, layer {l}, expert {e}: {int(arr[t, l, :, e].sum())} over sources, "
                                 f"{int(counts[t, l, e])} in counts")
    return arr


class FingerprintHasher:
    """:func:`fingerprint` fed one block of records at a time (a trace too large for memory, read in chunks):
    the same bytes in the same order, so the same fingerprint."""

    def __init__(self, shape: tuple[int, int, int]):
        self._h = hashlib.sha256()
        self._h.update(f"{FINGERPRINT_SCHEME}:{list(shape)}".encode())

    def add_counts(self, block: np.ndarray) -> None:
        """The counts of the next records, ``[n, L, E]``, in record order."""
        self._h.update(memoryview(np.ascontiguousarray(block, dtype="<i8")).cast("B"))

    def finish(self, steps: np.ndarray) -> str:
        self._h.update(memoryview(np.ascontiguousarray(steps, dtype="<i8")).cast("B"))
        return "sha256:" + self._h.hexdigest()


def fingerprint(counts: np.ndarray, steps: np.ndarray) -> str:
    """sha256 of the canonical arrays (shape, then int64 little-endian C-order counts and steps).

    It depends on the numbers only: not on the file's compression, dtype or the order the
    source files were read in, nor on how the file is cut into chunks (:class:`FingerprintHasher`).
    """
    h = FingerprintHasher(counts.shape)
    chunk = max(1, (1 << 22) // max(1, counts.shape[1] * counts.shape[2]))
    for start in range(0, counts.shape[0], chunk):
        h.add_counts(counts[start : start + chunk])
    return h.finish(steps)


def validate_steps(steps: Any, n_records: int, source: str) -> np.ndarray:
    """Check a trace's steps alone (whole numbers, strictly increasing, one per record); canonical int64."""
    return _as_steps(steps, n_records, source)


class Trace:
    """A validated, read-only expert-load trace.

    Construct through :meth:`from_arrays` (validates) or the registry/loader functions. `extras` are side
    arrays kept beside the counts (``extras.npz``: a token-level sample, per-record figures); a save writes
    them, a load leaves them on disk (:func:`datasets_registry.token_sample.read` reads them when needed),
    except the per-source split :attr:`source_counts`, which a load reads with the counts. The per-source
    split (extras key :data:`SOURCE_COUNTS`) and the card's ``extra["sources"]`` are checked against the
    counts whenever a trace is constructed (:func:`validate_source_counts`); the fingerprint covers the
    counts and steps only.
    """

    __slots__ = ("counts", "steps", "card", "extras", "__dict__")

    def __init__(self, counts: np.ndarray, steps: np.ndarray, card: Card, extras: dict[str, np.ndarray] | None = None,
                 source: str = "<arrays>"):
        """Unvalidated counts and steps (:meth:`from_arrays` validates them); the per-source split in `extras` is
        checked here, with errors naming `source`."""
        counts.setflags(write=False)
        steps.setflags(write=False)
        self.counts = counts
        self.steps = steps
        self.card = card
        self.extras = dict(extras or {})
        if SOURCE_COUNTS in self.extras:
            self.extras[SOURCE_COUNTS] = validate_source_counts(self.extras[SOURCE_COUNTS], counts, card, source)
        elif "sources" in card.extra:
            count = _check_sources_field(card.extra["sources"], source)
            raise TraceError(source, f'card.extra["sources"] says {count} sources but the trace has no source_counts')
        for arr in self.extras.values():
            arr.setflags(write=False)

    @classmethod
    def from_arrays(cls, counts: Any, steps: Any = None, card: Card | None = None, source: str = "<arrays>",
                    extras: dict[str, np.ndarray] | None = None, extras_source: str | None = None) -> "Trace":
        """A validated trace; `extras_source` names the file of the extras in errors about them (default `source`)."""
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
            raise TraceError(source, f"card fingerprint {card.fingerprint} does not match the arrays ({fp}): the data "
                                     "or the card was changed")
        card.fingerprint = fp
        return cls(c, s, card, extras, source=extras_source or source)

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

    @property
    def source_counts(self) -> np.ndarray | None:
        """Routed token slots by source (rank or node, ``card.extra["sources"]``), [T, L, S, E] read-only; their
        sum over sources is :attr:`counts`. None when the trace does not record where its tokens came from."""
        return self.extras.get(SOURCE_COUNTS)

    @property
    def sources(self) -> dict[str, Any] | None:
        """The card's description of the sources (count, unit, layout), or None."""
        return self.card.extra.get("sources") if self.source_counts is not None else None

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
            "source": (self.card.source.get("url") or self.card.source.get("command")
                       or self.card.source.get("format", "")),
            "licence": self.card.licence,
            "fingerprint": self.fingerprint,
        }

    def __repr__(self) -> str:
        return (f"Trace({self.card.id!r} v{self.card.version}, records={self.records}, layers={self.layers}, "
                f"experts={self.experts})")
