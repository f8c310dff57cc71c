"""What the importers of real systems' dumps share: safe loading, checked arrays, tidying.

Files are opened through :mod:`datasets_registry.guards` (regular files only, within the size
limits). Nothing here executes code from a data file: ``.pt`` files go through
``torch.load(weights_only=True)``, which unpickles only tensors, lists, dicts, tuples, strings
and numbers; anything else is refused with a :class:`TraceError` naming the file. Every check
names the file (the error's source) and the key or record that is wrong.
"""

from __future__ import annotations

import re
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..guards import (
    TraceError,
    check_bytes,
    check_dims,
    open_regular,
    parse_json,
    read_regular,
    short,
    zip_declared_size,
)


class DumpWarning(UserWarning):
    """An importer changed what the dump holds (dropped or reordered rows): said in the card too."""


def warn(notes: list[str], message: str) -> None:
    """Warn about `message` and keep it for the card's notes."""
    warnings.warn(message, DumpWarning, stacklevel=3)
    notes.append(message)


# --------------------------------------------------------------------------- files


def load_pt(path: Path) -> Any:
    """``torch.load(path, weights_only=True, map_location="cpu")``, refusing anything else cleanly.

    A zip-format ``.pt`` is first checked against the ``bytes`` limit from the sizes its zip declares.
    """
    import pickle

    import torch

    with open_regular(path) as f:
        if zipfile.is_zipfile(f):
            with zipfile.ZipFile(f) as zf:
                zip_declared_size(zf, path)
        f.seek(0)
        try:
            return torch.load(f, weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as exc:
            text = str(exc)
            m = re.search(r"Unsupported global: GLOBAL (\S+)", text)
            if m:
                raise TraceError(str(path), f"refused: it needs pickle to build {m.group(1)}, and only tensors, lists, "
                                            "dicts and numbers are read (weights_only; no code is run from data files)"
                                 ) from None
            m = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n|$)", text)
            detail = m.group(1) if m and m.group(1).strip() else text.splitlines()[0]
            raise TraceError(str(path), f"not a readable torch .pt file ({detail})") from None
        except (RuntimeError, EOFError, OSError, ValueError, AttributeError, TypeError, zipfile.BadZipFile) as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise TraceError(str(path), f"not a readable torch .pt file ({type(exc).__name__}: {first})") from None


def load_json(path: Path) -> Any:
    return parse_json(read_regular(path), path)


def dump_files(path: Path, pattern: str, what: str) -> list[Path]:
    """The files of a dump: `path` itself, or those in folder `path` matching `pattern`, by name.

    Special files (FIFOs, devices) that match are kept, so that reading them refuses them by name
    rather than skipping them silently; the files' total size must be within the ``bytes`` limit.
    """
    if not path.is_dir():
        return [path]
    files = sorted((p for p in path.glob(pattern) if not p.is_dir()), key=natural_key)
    if not files:
        raise TraceError(str(path), f"no {what} ({pattern}) in this folder")
    check_bytes(path, sum(p.stat().st_size for p in files if p.exists()), f"the {len(files)} {what}")
    return files


def natural_key(p: Path) -> list:
    """Sort key: 'rank10' after 'rank9'."""
    return [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", p.name)]


def require_keys(obj: Any, keys: Sequence[str], source: Path, what: str) -> dict:
    if not isinstance(obj, dict):
        raise TraceError(str(source), f"{what} must be a dict with keys {list(keys)}, got {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise TraceError(str(source), f"{what} is missing key(s) {missing}; it has {short(sorted(map(str, obj)))}")
    return obj


INT64_MAX = 2**63 - 1


def whole(value: Any, source: Path, what: str, minimum: int = 0) -> int:
    """A single whole number (a record's step, rank, a count of experts) of at least `minimum`, within 64 bits."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not minimum <= value <= INT64_MAX:
        raise TraceError(str(source), f"{what} must be a whole number from {minimum} to 2^63-1, got {short(value)}")
    return int(value)


ASCII_INT = re.compile(r"[0-9]{1,18}")


def key_number(key: Any, source: Path, what: str) -> int:
    """A non-negative number written as a key (a layer or expert id): ASCII digits only, so that
    keys such as '1' and the Arabic-Indic '١' cannot both mean layer 1."""
    if not (isinstance(key, str) and ASCII_INT.fullmatch(key)):
        raise TraceError(str(source), f"{what} key {short(key)} is not a non-negative integer (ASCII digits)")
    return int(key)


def int_option(value: Any, name: str, source: Path, fmt: str, why: str, required: bool = True, minimum: int = 1,
               dimension: str | None = None) -> int | None:
    """A whole-number importer option, e.g. ``--option experts=64``; `dimension` names the trace limit it is
    checked against (see :func:`datasets_registry.guards.check_dims`)."""
    if value is None:
        if required:
            raise TraceError(str(source), f"format {fmt!r} needs --option {name}=N: {why}")
        return None
    value = whole(value, source, f"option {name}", minimum)
    if dimension is not None:
        check_dims(source, **{dimension: value})
    return value


# --------------------------------------------------------------------------- arrays


def as_numpy(value: Any, source: Path, what: str) -> np.ndarray:
    """A tensor, numpy array or nested list of numbers -> a numeric numpy array."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        if value.layout != torch.strided or value.is_quantized or value.is_nested:
            kind = f"{value.layout} tensor" + (" (quantized)" if value.is_quantized else "")
            raise TraceError(str(source), f"{what} is a {kind}: only dense tensors are read")
        try:
            t = value.detach().cpu()
            if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
                t = t.double()
            value = t.numpy()
        except (TypeError, RuntimeError) as exc:
            raise TraceError(str(source), f"{what}: unreadable tensor ({exc})") from None
    if isinstance(value, (str, bytes, dict)) or value is None:
        raise TraceError(str(source), f"{what} must be an array of numbers, got {type(value).__name__}")
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):
        raise TraceError(str(source), f"{what} is ragged (its lists have different lengths) or nested too deeply"
                         ) from None
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TraceError(str(source), f"{what} must hold numbers, got dtype {arr.dtype}")
    if isinstance(value, (list, tuple)) and _holds_bool(value):
        raise TraceError(str(source), f"{what} must hold numbers, not booleans (true/false)")
    return arr


def _holds_bool(value: list | tuple) -> bool:
    """Whether nested lists hold a boolean, which numpy would silently turn into 1 or 0 among numbers."""
    stack = [value]
    while stack:  # no recursion: the nesting depth comes from the file
        for x in stack.pop():
            kind = type(x)
            if kind is bool:
                return True
            if kind is list or kind is tuple:
                stack.append(x)
    return False


def _at(what: str, arr: np.ndarray, mask: np.ndarray) -> str:
    idx = tuple(int(i) for i in np.argwhere(mask)[0])
    return f"{what}[{']['.join(map(str, idx))}] is {arr[idx]!r}"


def whole_numbers(arr: np.ndarray, source: Path, what: str) -> np.ndarray:
    """Check finite whole numbers; return them as int64."""
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        if bad.any():
            raise TraceError(str(source), f"{_at(what, arr, bad)}: not a finite number")
        bad = arr != np.round(arr)
        if bad.any():
            raise TraceError(str(source), f"{_at(what, arr, bad)}: not a whole number")
    return arr.astype(np.int64)


def counts_array(value: Any, source: Path, what: str, ndim: int | Sequence[int]) -> np.ndarray:
    """Per-expert counts: numeric, of rank `ndim`, whole, non-negative -> int64."""
    arr = as_numpy(value, source, what)
    dims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if arr.ndim not in dims or 0 in arr.shape:
        want = " or ".join(f"{d}-D" for d in dims)
        raise TraceError(str(source), f"{what} must be a non-empty {want} array, got shape {arr.shape}")
    out = whole_numbers(arr, source, what)
    if (out < 0).any():
        raise TraceError(str(source), f"{_at(what, out, out < 0)}: counts must be non-negative")
    return out


def whole_array(value: Any, source: Path, what: str, ndim: int, minimum: int = 0) -> np.ndarray:
    """Whole numbers of at least `minimum` (token ids, positions), of rank `ndim` -> int64."""
    arr = as_numpy(value, source, what)
    if arr.ndim != ndim:
        raise TraceError(str(source), f"{what} must be a {ndim}-D array, got shape {arr.shape}")
    out = whole_numbers(arr, source, what)
    if out.size and out.min() < minimum:
        raise TraceError(str(source), f"{_at(what, out, out < minimum)}: must be at least {minimum}")
    return out


def expert_ids(value: Any, source: Path, what: str, experts: int | None, ndim: int) -> np.ndarray:
    """Expert indices: whole numbers in [0, experts) (or >= 0 where `experts` is None), of rank `ndim` -> int64."""
    arr = as_numpy(value, source, what)
    if arr.ndim != ndim or 0 in arr.shape:
        raise TraceError(str(source), f"{what} must be a non-empty {ndim}-D array of expert ids, got shape {arr.shape}")
    out = whole_numbers(arr, source, what)
    bad = (out < 0) if experts is None else (out < 0) | (out >= experts)
    if bad.any():
        span = "non-negative" if experts is None else f"in [0, {experts}) (option experts={experts})"
        raise TraceError(str(source), f"{_at(what, out, bad)}: expert ids must be {span}")
    return out


def bincount_last(ids: np.ndarray, experts: int) -> np.ndarray:
    """Count expert ids over the leading axis and the last: [N, ..., k] -> [..., experts]."""
    mid = ids.shape[1:-1]
    groups = int(np.prod(mid, dtype=np.int64))
    flat = (np.arange(groups, dtype=np.int64).reshape(mid)[None, ..., None] * experts + ids).ravel()
    return np.bincount(flat, minlength=groups * experts).reshape(*mid, experts).astype(np.int64)


def physical_to_logical(physical: np.ndarray, mapping: np.ndarray, experts: int) -> np.ndarray:
    """Sum the counts of every physical replica into its logical expert.

    physical [T, L, P] and mapping [L, P] (logical id of each physical slot) -> [T, L, experts].
    """
    T, L, P = physical.shape
    out = np.zeros((T, L * experts), dtype=np.int64)
    cols = (np.arange(L, dtype=np.int64)[:, None] * experts + mapping).ravel()
    np.add.at(out, (slice(None), cols), physical.reshape(T, L * P))
    return out.reshape(T, L, experts)


# --------------------------------------------------------------------------- tidying


def ranges(idx: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    out, idx = [], sorted(int(i) for i in idx)
    i = 0
    while i < len(idx):
        j = i
        while j + 1 < len(idx) and idx[j + 1] == idx[j] + 1:
            j += 1
        out.append(str(idx[i]) if i == j else f"{idx[i]}-{idx[j]}")
        i = j + 1
    return ", ".join(out)


def drop_dense_layers(counts: np.ndarray, labels: list[str], source: Path, notes: list[str],
                      extra: dict) -> tuple[np.ndarray, list[str]]:
    """Drop layers with no tokens at any record (dense layers in a whole-model array), naming them."""
    empty = counts.sum(axis=(0, 2)) == 0
    if empty.all():
        raise TraceError(str(source), "no layer routes any tokens: every count is 0")
    if not empty.any():
        return counts, labels
    dropped = [labels[i] for i in np.flatnonzero(empty)]
    notes.append(f"dropped {len(dropped)} layer(s) with no routed tokens at any record (dense layers): "
                 f"{', '.join(dropped)}")
    extra["dropped_layers"] = dropped
    return counts[:, ~empty], [x for x, e in zip(labels, empty) if not e]


def drop_empty_records(counts: np.ndarray, steps: np.ndarray, notes: list[str], extra: dict,
                       unit: str) -> tuple[np.ndarray, np.ndarray]:
    """Drop records where no layer routes any token (idle passes), with a warning naming them."""
    empty = counts.reshape(counts.shape[0], -1).sum(axis=1) == 0
    if not empty.any():
        return counts, steps
    dropped = steps[empty].tolist()
    warn(notes, f"dropped {len(dropped)} {unit}(s) with no routed tokens in any layer: {ranges(dropped)}")
    extra["dropped_records"] = dropped
    return counts[~empty], steps[~empty]


def finish_notes(notes: list[str]) -> str:
    return "; ".join(notes)
