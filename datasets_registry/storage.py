"""The canonical on-disk form of a trace: a folder with `trace.npz` and `card.json` (and `extras.npz`, the
trace's side arrays, where it has some).

`trace.npz` is a zip-deflated numpy archive with two arrays, `counts` (stored in the smallest
unsigned integer type that holds them) and `steps` (int64). It is read with
``allow_pickle=False``: no code is ever executed from a data file. Before any array is read, the
zip's declared sizes and the ``.npy`` headers are checked against the limits of
:mod:`datasets_registry.guards`, so a small archive that would decompress to gigabytes is
refused from its headers.

Writes go to a temporary folder ``.<name>.<random>.<pid>.saving`` beside the target, renamed into
place when complete, so a failed save leaves nothing behind. A writer killed mid-save leaves its
temporary folder: :func:`unfinished_saves` finds those whose writer is gone.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .guards import TraceError, check_bytes, check_dims, open_regular, parse_json, zip_declared_size
from .trace import SOURCE_COUNTS, Card, Trace

TRACE_FILE = "trace.npz"
CARD_FILE = "card.json"
#: A trace's side arrays (:attr:`Trace.extras`), beside ``trace.npz``; written only where there are some.
EXTRAS_FILE = "extras.npz"
#: A card is a few kilobytes to a megabyte (it lists the hash of every imported file); more is not a card.
CARD_MAX_BYTES = 64 * 2**20
#: Name of a save's temporary folder: ``.<target>.<random>[.<pid>.saving]`` (older saves have no pid).
SAVING_NAME = re.compile(r"\.(?P<target>.+?)\.[a-z0-9_]{8}(?:\.(?P<pid>[0-9]+)\.saving)?")


def _compact_dtype(counts: np.ndarray) -> np.dtype:
    top = int(counts.max()) if counts.size else 0
    for dt in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


def save(trace: Trace, folder: str | os.PathLike) -> Path:
    """Write `trace` (and its extras, if any) to `folder` (which must not exist yet) atomically."""
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder}: already exists; datasets are immutable, give a new version")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_beside(trace, folder)
    try:
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def replace(trace: Trace, folder: str | os.PathLike) -> Path:
    """Write `trace` over the stored trace in `folder`: written completely beside it first, then swapped in by
    two renames (the old folder goes to a temporary name and is removed), so the folder always holds a whole
    trace, except for the instant between the renames."""
    folder = Path(folder)
    new = _write_beside(trace, folder)
    old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=f".{os.getpid()}.saving", dir=folder.parent))
    try:
        os.rmdir(old)
        os.rename(folder, old)
        os.rename(new, folder)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        if old.is_dir() and not folder.exists():
            os.rename(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return folder


def _write_beside(trace: Trace, folder: Path) -> Path:
    """Write `trace` to a new temporary folder beside `folder` (see :data:`SAVING_NAME`) and return it."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=f".{os.getpid()}.saving", dir=folder.parent))
    try:
        counts = trace.counts.astype(_compact_dtype(trace.counts))
        np.savez_compressed(tmp / TRACE_FILE, counts=counts, steps=trace.steps)
        if trace.extras:
            _save_extras(tmp / EXTRAS_FILE, trace.extras)
        (tmp / CARD_FILE).write_text(trace.card.to_json() + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _save_extras(path: Path, extras: dict[str, np.ndarray]) -> None:
    """An .npz as ``np.savez_compressed`` writes it, except the per-source split: stored uncompressed, in the
    smallest unsigned type that holds it, because it is read with the counts at every load and inflating it cost
    several times the load of the counts themselves (``benchmarks/source_traffic.py`` measures a load with and
    without it)."""
    with zipfile.ZipFile(path, "w", allowZip64=True) as zf:
        for name, arr in extras.items():
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            if name == SOURCE_COUNTS:
                arr, info.compress_type = arr.astype(_compact_dtype(arr)), zipfile.ZIP_STORED
            else:
                info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(arr), allow_pickle=False)


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would end the process there: rely on the age of the folder instead
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # alive but someone else's, or not a pid of this system
        return pid > 0
    return True


def _last_change(folder: Path) -> float:
    """The newest modification time of `folder` and the files in it (a live writer keeps touching them)."""
    times = [folder.stat().st_mtime]
    for child in folder.iterdir():
        try:
            times.append(child.stat().st_mtime)
        except OSError:
            pass
    return max(times)


def unfinished_saves(parent: str | os.PathLike, min_age_s: float) -> list[Path]:
    """Temporary folders of :func:`save` in `parent` whose writer is gone.

    A writer is gone when the process id in the folder's name is not running here, or when
    nothing in the folder changed for `min_age_s` seconds (a writer on another machine, or a save
    from before process ids were recorded). The caller makes sure no writer of its own is at work.
    """
    parent = Path(parent)
    out = []
    try:
        children = sorted(parent.iterdir())
    except OSError:
        return []
    for child in children:
        m = SAVING_NAME.fullmatch(child.name)
        if not m or not child.is_dir() or child.is_symlink():
            continue
        try:
            stale = time.time() - _last_change(child) >= min_age_s
        except OSError:
            continue
        if stale or (m.group("pid") is not None and not _pid_alive(int(m.group("pid")))):
            out.append(child)
    return out


def read_card(folder: str | os.PathLike) -> Card:
    path = Path(folder) / CARD_FILE
    if not path.exists():
        raise TraceError(str(path), "missing card.json")
    with open_regular(path) as f:
        if os.fstat(f.fileno()).st_size > CARD_MAX_BYTES:
            raise TraceError(str(path), f"card.json is larger than {CARD_MAX_BYTES // 2**20} MiB: not a card")
        data = parse_json(f.read(), path)
    if not isinstance(data, dict):
        raise TraceError(str(path), "card.json must hold a JSON object")
    return Card.from_dict(data, source=str(path))


def _npy_header(f: Any) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from an .npy header (any version), leaving `f` at the start of the data."""
    version = np.lib.format.read_magic(f)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = reader(f)
    if any(n < 0 for n in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    return tuple(shape), dtype


def _open_zip(f: Any, path: Any) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise TraceError(str(path), f"not a readable .npz (zip) archive ({exc})") from None


def npz_headers(path: str | os.PathLike,
                zf: zipfile.ZipFile | None = None) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """name -> (shape, dtype) of the arrays in an .npz, read from the headers only, after checking the sizes.

    Refused: a zip whose members declare more than the ``bytes`` limit in all, an array whose header
    declares more data than its member holds, object arrays (they need pickle), and `counts` whose
    shape is over the dimension limits.
    """
    if zf is None:
        with open_regular(Path(path)) as f, _open_zip(f, path) as z:
            return npz_headers(path, z)
    zip_declared_size(zf, path)
    out = {}
    for info in zf.infolist():
        if not info.filename.endswith(".npy"):
            continue
        name = info.filename[: -len(".npy")]
        try:
            with zf.open(info) as member:
                shape, dtype = _npy_header(member)
                header_len = member.tell()
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError, NotImplementedError) as exc:
            raise TraceError(str(path), f"array {name!r}: unreadable .npy header ({exc})") from None
        if dtype.hasobject:
            raise TraceError(str(path), f"array {name!r}: unreadable array data (Python objects, which would need "
                                        "pickle: refused)")
        if name == "counts" and len(shape) == 3:
            check_dims(path, records=shape[0], layers=shape[1], experts=shape[2])
        n_bytes = math.prod(shape) * dtype.itemsize
        if n_bytes > info.file_size - header_len:
            raise TraceError(str(path), f"array {name!r} declares shape {shape} ({n_bytes:,} bytes) but its member "
                                        f"holds {info.file_size - header_len:,}: truncated or forged")
        out[name] = (shape, dtype)
    return out


def read_npz_arrays(path: str | os.PathLike, required: tuple[str, ...] = ("counts",),
                    names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Read the arrays of an .npz (all, or those in `names`) without pickle, with errors that name the file.

    The headers are checked first (:func:`npz_headers`), so nothing larger than the limits is allocated.
    """
    path = Path(path)
    with open_regular(path) as f, _open_zip(f, path) as zf:
        headers = npz_headers(path, zf)
        missing = [k for k in required if k not in headers]
        if missing:
            raise TraceError(str(path), f"missing array(s) {missing}; found {sorted(headers)}")
        out = {}
        for name in headers if names is None else [n for n in names if n in headers]:
            try:
                with zf.open(name + ".npy") as member:
                    out[name] = np.lib.format.read_array(member, allow_pickle=False)
            except ValueError as exc:
                raise TraceError(str(path), f"array {name!r}: unreadable array data ({exc})") from None
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as exc:
                raise TraceError(str(path), f"corrupt or truncated .npz ({exc})") from None
        return out


def read_npy(path: str | os.PathLike) -> np.ndarray:
    """Read an .npy file without pickle, refusing one whose header declares more data than the file holds."""
    path = Path(path)
    with open_regular(path) as f:
        try:
            shape, dtype = _npy_header(f)
            if dtype.hasobject:
                raise TraceError(str(path), "unreadable .npy (Python objects, which would need pickle: refused)")
            n_bytes = math.prod(shape) * dtype.itemsize
            held = os.fstat(f.fileno()).st_size - f.tell()
            if n_bytes > held:
                raise TraceError(str(path), f"declares shape {shape} ({n_bytes:,} bytes) but holds {held:,}: truncated "
                                            "or forged")
            check_bytes(path, n_bytes)
            f.seek(0)
            return np.lib.format.read_array(f, allow_pickle=False)
        except TraceError:
            raise
        except (ValueError, OSError, EOFError) as exc:
            raise TraceError(str(path), f"unreadable .npy ({exc})") from None


def read_source_counts(folder: str | os.PathLike, card: Card) -> dict[str, np.ndarray]:
    """``{"source_counts": array}`` from a stored trace's ``extras.npz`` when its card declares sources, else {}.

    A card that declares sources without the array, or an archive holding the array that the card does not
    declare, is refused (:class:`TraceError` naming the file)."""
    path = Path(folder) / EXTRAS_FILE
    declared = "sources" in card.extra
    present = path.is_file() and SOURCE_COUNTS in npz_headers(path)
    if declared != present:
        raise TraceError(str(path), f"card.json {'declares' if declared else 'does not declare'} sources "
                                    f"(extra.sources) but {EXTRAS_FILE} {'lacks' if declared else 'holds'} "
                                    f"{SOURCE_COUNTS}")
    return read_npz_arrays(path, required=(SOURCE_COUNTS,), names=(SOURCE_COUNTS,)) if present else {}


def load(folder: str | os.PathLike) -> Trace:
    """Load and re-validate a stored trace; the card's fingerprint must match the arrays, and a per-source split
    (read from ``extras.npz`` when the card declares sources) must add up to the counts.

    A folder in the chunked layout (:mod:`datasets_registry.chunked`) is read whole into memory.
    """
    folder = Path(folder)
    from .chunked import ChunkedTrace, is_chunked

    if is_chunked(folder) and not (folder / TRACE_FILE).exists():
        return ChunkedTrace(folder, verify=False).load()  # the load checks the fingerprint
    card = read_card(folder)
    arrays = read_npz_arrays(folder / TRACE_FILE, required=("counts", "steps"), names=("counts", "steps"))
    return Trace.from_arrays(arrays["counts"], arrays["steps"], card, source=str(folder / TRACE_FILE),
                             extras=read_source_counts(folder, card), extras_source=str(folder / EXTRAS_FILE))

