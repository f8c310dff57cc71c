"""Guards against hostile or broken input: size limits, special files, deeply nested JSON.

Every reader of a dump or a stored trace goes through these, so that a bad file ends in a
:class:`TraceError` naming it, never in a hang (a FIFO opened for
reading waits for a writer forever), a traceback, or many gigabytes allocated because one
header field said so.

The defaults keep one trace within a laptop's memory (counts are held as int64: 2 GiB at the
cell limit; a DeepSeek-V3-sized trace, 58 MoE layers x 256 experts, fits for about 18,000
records) and are raised or lowered with ``MOE_LOAD_BENCH_MAX_<NAME>``, e.g.
``MOE_LOAD_BENCH_MAX_CELLS=2e9`` for 145,000 such records on a machine with 32 GB. Trace
dimensions are checked before anything of their size is allocated, and archives (``.npz``,
``.pt``, ``.tar``, parquet) from the sizes their headers declare, before their data is read.
"""

from __future__ import annotations

import json
import math
import os
import reprlib
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator


class TraceError(ValueError):
    """A trace (file, arrays or card) is malformed. The message names the source and the problem."""

    def __init__(self, source: str, problem: str):
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")


#: name -> (default, what it bounds).
LIMITS: dict[str, tuple[int, str]] = {
    "records": (10_000_000, "records (steps) in one trace"),
    "layers": (1_024, "MoE layers"),
    "experts": (65_536, "experts per layer"),
    "cells": (2**28, "cells of counts[records, layers, experts]"),  # 2 GiB as int64
    "bytes": (8 * 2**30, "bytes read, or decompressed, from the files of one import"),
}
ENV_PREFIX = "MOE_LOAD_BENCH_MAX_"

_short = reprlib.Repr()
_short.maxstring = _short.maxother = 80
_short.maxlist = _short.maxtuple = _short.maxdict = _short.maxset = 8
_short.maxlevel = 3


def short(value: Any) -> str:
    """A bounded repr of a value read from a file, for error messages (depth- and length-limited)."""
    return _short.repr(value)


def env_var(name: str) -> str:
    return ENV_PREFIX + name.upper()


def limit(name: str) -> int:
    """The limit `name` (a key of :data:`LIMITS`): its environment variable if set, else the default."""
    default, _ = LIMITS[name]
    raw = os.environ.get(env_var(name), "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:  # also accept 4e9
        try:
            number = float(raw)
        except ValueError:
            number = 0.0
        value = int(number) if math.isfinite(number) and number.is_integer() else 0
    if value < 1:
        raise ValueError(f"{env_var(name)}={raw!r}: expected a positive whole number ({LIMITS[name][1]})")
    return value


def _over(source: Any, name: str, what: str) -> TraceError:
    return TraceError(
        str(source),
        f"{what} is more than the limit of {limit(name):,} {LIMITS[name][1]} (set {env_var(name)} to raise it)",
    )


def check_dims(
    source: Any,
    *,
    records: int | None = None,
    layers: int | None = None,
    experts: int | None = None,
    cells: int | None = None,
) -> None:
    """Refuse trace dimensions above their limits; call it before allocating anything of that size.

    `cells` defaults to records x layers x experts when all three are given.
    """
    for name, value in (("records", records), ("layers", layers), ("experts", experts)):
        if value is not None and value > limit(name):
            raise _over(source, name, f"{value:,} {name}")
    if cells is None and None not in (records, layers, experts):
        cells = records * layers * experts
        what = f"counts of {records:,} x {layers:,} x {experts:,} = {cells:,} cells"
    else:
        what = f"{cells:,} counts" if cells is not None else ""
    if cells is not None and cells > limit("cells"):
        raise _over(source, "cells", what)


def check_bytes(source: Any, n_bytes: int, what: str = "the file") -> None:
    if n_bytes > limit("bytes"):
        raise _over(source, "bytes", f"{what} holds {n_bytes:,} bytes, which")


def check_path(path: Path) -> os.stat_result:
    """`path` must be a regular file or a folder: FIFOs, sockets and devices are refused before anything opens them."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file or folder") from None
    except OSError as exc:
        raise TraceError(str(path), f"cannot be read ({exc.strerror or exc})") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise TraceError(str(path), "not a regular file or folder (a FIFO, socket or device): refused")
    return st


@contextmanager
def open_regular(path: Path) -> Iterator[BinaryIO]:
    """Open a regular file for reading (binary), at most the ``bytes`` limit in size.

    It is opened with ``O_NONBLOCK`` and checked with ``fstat`` on the open descriptor, so a FIFO or
    device (even one swapped in after a check of its name) is refused instead of blocking.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise TraceError(str(path), "no such file") from None
    except IsADirectoryError:
        raise TraceError(str(path), "is a folder; this format reads a file here") from None
    except OSError as exc:
        raise TraceError(str(path), f"cannot be opened ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise TraceError(str(path), "is a folder; this format reads a file here")
        if not stat.S_ISREG(st.st_mode):
            raise TraceError(str(path), "not a regular file (a FIFO, socket or device): refused")
        check_bytes(path, st.st_size)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


def read_regular(path: Path) -> bytes:
    """The bytes of a regular file (see :func:`open_regular`)."""
    with open_regular(path) as f:
        try:
            return f.read()
        except OSError as exc:
            raise TraceError(str(path), f"read failed ({exc.strerror or exc})") from None


def parse_json(text: str | bytes, source: Any, where: str = "") -> Any:
    """``json.loads`` with errors that name `source` (and `where` in it); refuses JSON nested too deeply.

    The standard parser recurses once per level and stops at the interpreter's recursion limit, so
    memory stays bounded; that limit is turned into a clear error here.
    """
    prefix = f"{where}: " if where else ""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise TraceError(str(source), f"{prefix}not a UTF-8 text file") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise TraceError(str(source), f"{prefix}JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise TraceError(
            str(source), f"{prefix}invalid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg})"
        ) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise TraceError(str(source), f"{prefix}invalid JSON ({exc})") from None


def zip_declared_size(zf: Any, source: Any) -> int:
    """Total decompressed size a zip archive declares for its members, refused above the ``bytes`` limit.

    ``zipfile`` never returns more than a member's declared size, so this bounds what reading it costs.
    """
    total = sum(info.file_size for info in zf.infolist())
    check_bytes(source, total, "the archive (decompressed)")
    return total
