"""Traces larger than memory: counts stored in chunks of records and of layers, read a piece at a time.

A chunked trace is a folder with ``card.json`` and ``trace.parquet``, an Apache Parquet file with
a column ``step`` (int64) and one column per MoE layer (``layer0000``, ``layer0001``, ...), each
row holding that layer's counts at one record as a fixed-size list of ``E`` unsigned integers.
A row group holds ``group_records`` consecutive records, so a piece (records ``a..b``, layers
``l0..l1``) reads only the row groups that hold those records and, in them, only those layers'
column chunks; each is compressed on its own (zstd).

The fingerprint is the one of :func:`datasets_registry.trace.fingerprint`, computed row group by
row group (:class:`~datasets_registry.trace.FingerprintHasher`): a trace has the same fingerprint
whether it is stored whole (``trace.npz``) or chunked, and a run's cache key does not change.

Parquet rather than zarr: pyarrow is already a dependency (results are written as Parquet), its
row groups and columns are exactly the two chunk axes needed here, and the file is data only:
nothing in it is ever executed (no pickle, no codec chosen by the file beyond Parquet's own).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .guards import TraceError, check_dims
from .storage import CARD_FILE, read_card
from .trace import Card, FingerprintHasher, Trace, validate_arrays, validate_steps

CHUNKED_FILE = "trace.parquet"
#: Records per row group: with 58 layers x 256 experts in uint16, about 1 MB per layer and group.
GROUP_RECORDS = 2048
#: Unsigned integer types a count column may have.
COUNT_TYPES = ("uint8", "uint16", "uint32", "uint64")


def layer_column(layer: int) -> str:
    return f"layer{layer:04d}"


def is_chunked(folder: str | os.PathLike) -> bool:
    """Whether a stored trace's folder holds the chunked layout."""
    return (Path(folder) / CHUNKED_FILE).is_file()


class ChunkedWriter:
    """Write a trace block by block into a chunked folder, atomically (a temporary folder renamed at the end).

    Each block is validated as :func:`~datasets_registry.trace.validate_arrays` validates a whole trace, and
    steps must go on increasing across blocks. Use as a context manager, or call :meth:`close`::

        with ChunkedWriter(folder, card, layers=58, experts=256) as w:
            for counts, steps in blocks:
                w.append(counts, steps)
    """

    def __init__(self, folder: str | os.PathLike, card: Card, layers: int, experts: int,
                 dtype: str = "uint32", group_records: int = GROUP_RECORDS):
        import pyarrow as pa
        import pyarrow.parquet as pq

        if dtype not in COUNT_TYPES:
            raise ValueError(f"dtype must be one of {COUNT_TYPES}, got {dtype!r}")
        check_dims(str(folder), layers=layers, experts=experts)
        self.folder, self.card = Path(folder), card
        if self.folder.exists():
            raise FileExistsError(f"{self.folder}: already exists; datasets are immutable, give a new version")
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.", suffix=f".{os.getpid()}.saving",
                                         dir=self.folder.parent))
        self.layers, self.experts, self.dtype, self.group_records = layers, experts, np.dtype(dtype), group_records
        self.schema = pa.schema([("step", pa.int64())] + [
            (layer_column(layer), pa.list_(pa.from_numpy_dtype(self.dtype), experts)) for layer in range(layers)])
        self._writer = pq.ParquetWriter(self.tmp / CHUNKED_FILE, self.schema, compression="zstd")
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_records = 0
        self.records = 0
        self._last_step: int | None = None

    def append(self, counts: Any, steps: Any) -> None:
        source = f"{self.folder} (records {self.records}..)"
        c, s = validate_arrays(counts, steps, None, source)
        if c.shape[1:] != (self.layers, self.experts):
            raise TraceError(source, f"block has {c.shape[1]} layers x {c.shape[2]} experts, expected "
                                     f"{self.layers} x {self.experts}")
        if self._last_step is not None and s[0] <= self._last_step:
            raise TraceError(source, f"steps must be strictly increasing; block starts at step {s[0]} after "
                                     f"{self._last_step}")
        if c.max() > np.iinfo(self.dtype).max:
            raise TraceError(source, f"counts up to {c.max()} do not fit in {self.dtype}")
        check_dims(source, records=self.records + len(s))
        self._pending.append((c, s))
        self._pending_records += len(s)
        self.records += len(s)
        self._last_step = int(s[-1])
        while self._pending_records >= self.group_records:
            self._flush(self.group_records)

    def _flush(self, n: int) -> None:
        import pyarrow as pa

        c = np.concatenate([p[0] for p in self._pending])
        s = np.concatenate([p[1] for p in self._pending])
        self._pending = [(c[n:], s[n:])] if len(s) > n else []
        self._pending_records = len(s) - n
        c, s = c[:n].astype(self.dtype), s[:n]
        columns = [pa.array(s, pa.int64())] + [
            pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(c[:, layer]).reshape(-1)), self.experts)
            for layer in range(self.layers)]
        self._writer.write_table(pa.Table.from_arrays(columns, schema=self.schema), row_group_size=n)

    def close(self) -> Path:
        """Finish the file, fingerprint it chunk by chunk, write the card and move the folder into place."""
        try:
            if self._pending_records:
                self._flush(self._pending_records)
            self._writer.close()
            if self.records == 0:
                raise TraceError(str(self.folder), "no records were written")
            card = dataclasses.replace(self.card, model=dataclasses.replace(self.card.model))
            if card.model.experts is None:
                card.model.experts = self.experts
            if card.model.moe_layers is None:
                card.model.moe_layers = self.layers
            if not card.layer_names:
                card.layer_names = [f"layer{i}" for i in range(self.layers)]
            stored = ChunkedTrace(self.tmp, card=card, verify=False)
            fp = stored.compute_fingerprint()
            if card.fingerprint and card.fingerprint != fp:
                raise TraceError(str(self.folder), f"card fingerprint {card.fingerprint} does not match the counts "
                                                   f"written ({fp})")
            card.fingerprint = fp
            (self.tmp / CARD_FILE).write_text(card.to_json() + "\n")
            os.replace(self.tmp, self.folder)
        except BaseException:
            self.abort()
            raise
        return self.folder

    def abort(self) -> None:
        try:
            self._writer.close()
        except Exception:  # noqa: BLE001 - already failed; the folder is removed either way
            pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "ChunkedWriter":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def save_chunked(trace: Trace, folder: str | os.PathLike, group_records: int = GROUP_RECORDS) -> Path:
    """Write an in-memory trace in the chunked layout (same card, same fingerprint)."""
    top = int(trace.counts.max())
    dtype = next(t for t in COUNT_TYPES if top <= np.iinfo(t).max)
    with ChunkedWriter(folder, trace.card, trace.layers, trace.experts, dtype, group_records) as w:
        for start in range(0, trace.records, group_records):
            w.append(trace.counts[start : start + group_records], trace.steps[start : start + group_records])
    return Path(folder)


class ChunkedTrace:
    """A stored chunked trace: its card, steps and shape in memory, its counts read a piece at a time.

    Opening checks the file's schema against the card (columns, types, experts) and, with `verify`,
    recomputes the fingerprint chunk by chunk and compares it with the card's (a read of the whole file).
    """

    def __init__(self, folder: str | os.PathLike, card: Card | None = None, verify: bool = True):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.folder = Path(folder)
        self.path = self.folder / CHUNKED_FILE
        src = str(self.path)
        self.card = card if card is not None else read_card(self.folder)
        try:
            self._file = pq.ParquetFile(self.path)
        except (OSError, pa.ArrowException) as exc:
            raise TraceError(src, f"not a readable Parquet file ({exc})") from None
        schema = self._file.schema_arrow
        names = schema.names
        if not names or names[0] != "step" or schema.field("step").type != pa.int64():
            raise TraceError(src, f"the first column must be 'step' (int64); found {names[:3]}")
        layers = len(names) - 1
        if names[1:] != [layer_column(layer) for layer in range(layers)] or layers == 0:
            raise TraceError(src, f"columns must be step, {layer_column(0)}, {layer_column(1)}, ...; found {names[:4]}")
        experts = None
        for name in names[1:]:
            t = schema.field(name).type
            if not pa.types.is_fixed_size_list(t) or str(t.value_type) not in COUNT_TYPES:
                raise TraceError(src, f"column {name!r} must be a fixed-size list of unsigned integers, got {t}")
            if experts not in (None, t.list_size):
                raise TraceError(src, f"column {name!r} has {t.list_size} experts, {layer_column(0)} has {experts}")
            experts = t.list_size
        meta = self._file.metadata
        records = meta.num_rows
        for name, value in (("records", records), ("layers", layers), ("experts", experts)):
            check_dims(src, **{name: value})  # not their product: the cells limit bounds what is read at once
        if records == 0:
            raise TraceError(src, "no records")
        self.shape = (records, layers, int(experts))
        m = self.card.model
        if (m.experts not in (None, experts) or m.moe_layers not in (None, layers)
                or (self.card.layer_names and len(self.card.layer_names) != layers)):
            raise TraceError(src, f"the card ({m.moe_layers} layers, {m.experts} experts, {len(self.card.layer_names)} "
                                  f"layer names) does not match the file ({layers} layers, {experts} experts)")
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self.group_starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        steps = self._file.read(columns=["step"]).column("step").to_numpy()
        self.steps = validate_steps(steps, records, src)
        self.steps.setflags(write=False)
        if verify:
            fp = self.compute_fingerprint()
            if fp != self.card.fingerprint:
                raise TraceError(src, f"card fingerprint {self.card.fingerprint} does not match the counts ({fp}): "
                                      "the data or the card was changed")

    @property
    def id(self) -> str:
        return self.card.id

    @property
    def fingerprint(self) -> str:
        return self.card.fingerprint

    @property
    def records(self) -> int:
        return self.shape[0]

    @property
    def layers(self) -> int:
        return self.shape[1]

    @property
    def experts(self) -> int:
        return self.shape[2]

    def read(self, records: tuple[int, int] | None = None, layers: tuple[int, int] | None = None) -> np.ndarray:
        """int64 counts ``[b - a, l1 - l0, E]`` of records ``a..b-1`` and layers ``l0..l1-1`` (default: all)."""
        import pyarrow as pa

        a, b = records if records is not None else (0, self.records)
        l0, l1 = layers if layers is not None else (0, self.layers)
        if not (0 <= a <= b <= self.records and 0 <= l0 < l1 <= self.layers):
            raise IndexError(f"{self.path}: records {a}..{b} and layers {l0}..{l1} are outside {self.shape}")
        check_dims(str(self.path), cells=(b - a) * (l1 - l0) * self.experts)
        out = np.empty((b - a, l1 - l0, self.experts), dtype=np.int64)
        first = int(np.searchsorted(self.group_starts, a, side="right")) - 1
        for g in range(max(first, 0), len(self.group_starts) - 1):
            g0, g1 = int(self.group_starts[g]), int(self.group_starts[g + 1])
            if g0 >= b:
                break
            lo, hi = max(a, g0), min(b, g1)
            if lo >= hi:
                continue
            try:
                table = self._file.read_row_group(g, columns=[layer_column(layer) for layer in range(l0, l1)])
                for j in range(l1 - l0):
                    values = table.column(j).combine_chunks().flatten().to_numpy()
                    out[lo - a : hi - a, j] = values.reshape(g1 - g0, self.experts)[lo - g0 : hi - g0]
            except (OSError, ValueError, pa.ArrowException) as exc:
                raise TraceError(str(self.path), f"row group {g} (records {g0}..{g1 - 1}) is unreadable ({exc})"
                                 ) from None
        return out

    def blocks(self, layers: tuple[int, int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(first record, counts) of each row group in turn: one group of records in memory at a time."""
        for g in range(len(self.group_starts) - 1):
            a, b = int(self.group_starts[g]), int(self.group_starts[g + 1])
            yield a, self.read((a, b), layers)

    def compute_fingerprint(self) -> str:
        h = FingerprintHasher(self.shape)
        for _, block in self.blocks():
            h.add_counts(block)
        return h.finish(self.steps)

    def piece(self, layers: tuple[int, int]) -> Trace:
        """Layers ``l0..l1-1`` over every record as an in-memory, validated :class:`Trace` (its own fingerprint)."""
        l0, l1 = layers
        card = dataclasses.replace(self.card, id=f"{self.card.id}[layers {l0}:{l1}]", fingerprint="",
                                   model=dataclasses.replace(self.card.model, moe_layers=l1 - l0),
                                   layer_names=list(self.card.layer_names[l0:l1]))
        return Trace.from_arrays(self.read(layers=layers), self.steps.copy(), card, source=f"{self.path} "
                                                                                            f"(layers {l0}:{l1})")

    def load(self) -> Trace:
        """The whole trace in memory (validated; the card's fingerprint must match)."""
        return Trace.from_arrays(self.read(), self.steps.copy(), self.card, source=str(self.path))
