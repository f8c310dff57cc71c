"""The canonical on-disk form of a trace: a folder with `trace.npz` and `card.json`.

`trace.npz` is a zip-deflated numpy archive with two arrays, `counts` (stored in the smallest
unsigned integer type that holds them) and `steps` (int64). It is read with
``allow_pickle=False``: no code is ever executed from a data file. Writes go to a temporary
folder that is renamed into place, so a failed or interrupted save leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .trace import Card, Trace, TraceError

TRACE_FILE = "trace.npz"
CARD_FILE = "card.json"


def _compact_dtype(counts: np.ndarray) -> np.dtype:
    top = int(counts.max()) if counts.size else 0
    for dt in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


def save(trace: Trace, folder: str | os.PathLike) -> Path:
    """Write `trace` to `folder` (which must not exist yet) atomically."""
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder}: already exists; datasets are immutable, give a new version")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        np.savez_compressed(tmp / TRACE_FILE, counts=trace.counts.astype(_compact_dtype(trace.counts)), steps=trace.steps)
        (tmp / CARD_FILE).write_text(trace.card.to_json() + "\n")
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def read_card(folder: str | os.PathLike) -> Card:
    path = Path(folder) / CARD_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise TraceError(str(path), "missing card.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TraceError(str(path), f"card.json is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise TraceError(str(path), "card.json must hold a JSON object")
    return Card.from_dict(data, source=str(path))


def read_npz_arrays(path: str | os.PathLike, required: tuple[str, ...] = ("counts",)) -> dict[str, np.ndarray]:
    """Read the arrays of an .npz without pickle, with errors that name the file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in required if k not in z.files]
            if missing:
                raise TraceError(str(path), f"missing array(s) {missing}; found {sorted(z.files)}")
            return {k: z[k] for k in z.files}
    except TraceError:
        raise
    except FileNotFoundError:
        raise TraceError(str(path), "no such file") from None
    except ValueError as exc:  # includes "Object arrays cannot be loaded when allow_pickle=False"
        raise TraceError(str(path), f"unreadable array data ({exc})") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise TraceError(str(path), f"corrupt or truncated .npz ({exc})") from None


def load(folder: str | os.PathLike) -> Trace:
    """Load and re-validate a stored trace; the card's fingerprint must match the arrays."""
    folder = Path(folder)
    card = read_card(folder)
    arrays = read_npz_arrays(folder / TRACE_FILE, required=("counts", "steps"))
    return Trace.from_arrays(arrays["counts"], arrays["steps"], card, source=str(folder / TRACE_FILE))
