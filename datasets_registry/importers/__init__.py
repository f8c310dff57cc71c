"""Importers turn the load dumps of real systems into validated traces.

Each format is one function ``read(path, **options) -> Trace`` in its own module, listed in
:data:`FORMATS` as ``"module:function"`` so that nothing is imported until it is used. An
importer reads everything into memory and validates it before anything is stored: a failed
import leaves nothing in the registry.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Callable

from ..trace import Trace

#: format name -> "module:function" (relative to this package), with a one-line description.
FORMATS: dict[str, tuple[str, str]] = {
    "npz": ("generic:read_npz", "numpy .npz with counts [T, L, E] and optional steps [T], layer_names [L]"),
    "csv": ("generic:read_long", "long table (CSV or parquet) with columns step, layer, expert, tokens"),
    "parquet": ("generic:read_long", "same as csv, read from parquet"),
    "fastmoe": ("fastmoe:read_fastmoe", "FastMoE/SmartMoE FileGate tables table_iter{I}_rank{R}.log (folder or .tar archive)"),
}


def importer(fmt: str) -> Callable[..., Trace]:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known formats: {', '.join(sorted(FORMATS))}")
    module, func = FORMATS[fmt][0].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), func)


def import_path(path: str | os.PathLike, fmt: str, **options: Any) -> Trace:
    """Read `path` in format `fmt` into a validated trace (not stored)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    return importer(fmt)(path, **options)
