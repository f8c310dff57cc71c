"""Generic formats: a numpy archive of dense counts, and a long table of (step, layer, expert, tokens)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..guards import TraceError, check_bytes, check_dims, open_regular, short
from ..storage import read_npz_arrays
from .common import build_trace, file_hashes

LONG_COLUMNS = ("step", "layer", "expert", "tokens")
LAYER_NUMBER = re.compile(r"-?[0-9]+")  # ASCII digits only: a layer named '١' stays a name


def read_npz(path: Path) -> "Trace":  # noqa: F821
    """`.npz` with `counts [T, L, E]`, optional `steps [T]` (default 0..T-1) and `layer_names [L]`."""
    arrays = read_npz_arrays(path, required=("counts",))
    names = arrays.get("layer_names")
    layer_names = [str(x) for x in names.tolist()] if names is not None else None
    return build_trace(arrays["counts"], arrays.get("steps"), path=path, fmt="npz", files=file_hashes([path]),
                       layer_names=layer_names)


def _read_table(path: Path):
    import pandas as pd

    parquet = path.suffix.lower() in (".parquet", ".pq")
    with open_regular(path) as f:
        try:
            if not parquet:
                return pd.read_csv(f)
            import pyarrow.parquet as pq

            meta = pq.ParquetFile(f).metadata
            check_bytes(path, sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)),
                        "the table (uncompressed)")
            f.seek(0)
            return pd.read_parquet(f)
        except TraceError:
            raise
        except Exception as exc:  # pandas and pyarrow raise many types for unreadable files
            raise TraceError(str(path), f"unreadable table ({type(exc).__name__}: {exc})") from None


def read_long(path: Path) -> "Trace":  # noqa: F821
    """A long table (CSV or parquet) with one row per (step, layer, expert) and its token count.

    Layers may be numbers or names (kept in first-seen order of their sorted numbers or names);
    experts are 0-based integers. A (step, layer, expert) absent from the table has 0 tokens; a
    repeated one is an error, and so is an empty cell.
    """
    df = _read_table(path)
    missing = [c for c in LONG_COLUMNS if c not in df.columns]
    if missing:
        raise TraceError(str(path), f"missing column(s) {missing}; found {short(list(df.columns))}")
    if df.empty:
        raise TraceError(str(path), "table has no rows")
    for col in LONG_COLUMNS:
        if df[col].isna().any():
            row = int(np.flatnonzero(df[col].isna().to_numpy())[0])
            raise TraceError(str(path), f"column {col!r} is empty at row {row}")
    tokens = df["tokens"].to_numpy()
    if not np.issubdtype(tokens.dtype, np.number):
        raise TraceError(str(path), f"column 'tokens' must be numeric, got {tokens.dtype}")
    experts = df["expert"].to_numpy()
    if not np.issubdtype(experts.dtype, np.integer) or (experts < 0).any():
        raise TraceError(str(path), "column 'expert' must hold non-negative integer expert indices")
    if not np.issubdtype(df["step"].dtype, np.number):
        raise TraceError(str(path), f"column 'step' must hold whole numbers, got {df['step'].dtype}")
    steps_u, t_idx = np.unique(df["step"].to_numpy(), return_inverse=True)
    layer_col = df["layer"]
    layers_u, l_idx = np.unique(layer_col.astype(str if layer_col.dtype == object else layer_col.dtype).to_numpy(),
                                return_inverse=True)
    E = int(experts.max()) + 1
    check_dims(path, records=len(steps_u), layers=len(layers_u), experts=E)  # before the dense array is allocated
    flat = (t_idx * len(layers_u) + l_idx) * E + experts.astype(np.int64)
    if len(np.unique(flat)) != len(flat):
        dup = df[df.duplicated(["step", "layer", "expert"], keep=False)].iloc[0]
        raise TraceError(str(path), f"repeated row for step {dup['step']}, layer {dup['layer']}, "
                                    f"expert {dup['expert']}")
    counts = np.zeros(len(steps_u) * len(layers_u) * E, dtype=tokens.dtype)
    counts[flat] = tokens
    counts = counts.reshape(len(steps_u), len(layers_u), E)
    names = [str(x) for x in layers_u]
    if all(LAYER_NUMBER.fullmatch(n) for n in names):
        names = [f"layer{n}" for n in names]
    fmt = "parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv"
    return build_trace(counts, steps_u, path=path, fmt=fmt, files=file_hashes([path]), layer_names=names)
