"""Where the project keeps its data, and the lock that lets one process at a time write a dataset.

The data home is ``$MOE_LOAD_BENCH_HOME``, else ``$XDG_DATA_HOME/moe-load-bench``, else
``~/.local/share/moe-load-bench``. It holds ``datasets/<id>/v<N>/`` (stored datasets),
``sources/<id>/`` (local copies of public datasets) and ``locks/<id>.lock``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

#: How long an import or build waits for another process writing the same dataset id.
LOCK_TIMEOUT_S = 600.0


class DatasetBusy(ValueError):
    """Another process is writing the same dataset id (importing or building it) and did not finish in time."""


def data_home() -> Path:
    env = os.environ.get("MOE_LOAD_BENCH_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "moe-load-bench"


def user_datasets_dir() -> Path:
    return data_home() / "datasets"


def sources_dir() -> Path:
    return data_home() / "sources"


def lock_path(name: str) -> Path:
    return data_home() / "locks" / f"{name}.lock"


@contextmanager
def dataset_lock(name: str, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[Path]:
    """Hold the lock of dataset id `name` (a file lock, so it is shared by every process using this data home).

    The operating system releases it when its holder dies, so a killed import never blocks later ones.
    Raises :class:`DatasetBusy` after `timeout_s` seconds (0: one attempt).
    """
    from filelock import FileLock, Timeout

    path = lock_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=timeout_s, blocking=timeout_s > 0)
    except Timeout:
        raise DatasetBusy(f"dataset {name!r} is being written by another process (lock {path} held for more than "
                          f"{timeout_s:.0f} s); try again when that import or build has ended") from None
    try:
        yield path
    finally:
        lock.release()
