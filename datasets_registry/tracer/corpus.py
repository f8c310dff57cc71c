"""The training text of the tracer: files that ship with Python, read offline, byte-level.

The corpus is the sorted list of ``.py``, ``.txt``, ``.rst`` and ``.md`` files under a root
folder (by default the standard library of the running Python, ``sysconfig`` ``stdlib``),
skipping ``site-packages``, ``dist-packages`` and ``__pycache__`` folders. Files are
concatenated in sorted order of their POSIX relative paths, each followed by a blank line, and
read as bytes: the tokenizer is the identity on bytes (vocabulary 256).

The card of every trace records the root, the Python version, the file count, the byte count
and a sha256 fingerprint over (relative path, size, content) of every file, so that anyone can
tell whether their corpus is the one a trace was trained on. Two machines with the same Python
release normally build the same corpus; different releases build different ones, and the card
says which was used.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SUFFIXES = (".py", ".txt", ".rst", ".md")
SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})
SEPARATOR = b"\n\n"
VOCAB = 256


def default_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def list_files(root: str | os.PathLike, suffixes: tuple[str, ...] = SUFFIXES) -> list[str]:
    """Sorted POSIX relative paths of the corpus files under `root` (symbolic links not followed)."""
    root = Path(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".")]
        for name in filenames:
            if name.endswith(suffixes):
                p = Path(dirpath) / name
                if p.is_file() and not p.is_symlink():
                    out.append(p.relative_to(root).as_posix())
    return sorted(out)


@dataclass
class Corpus:
    data: np.ndarray  # uint8 [n_bytes]
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.data.shape[0])


_CACHE: dict[tuple, Corpus] = {}


def build_corpus(root: str | os.PathLike | None = None, suffixes: tuple[str, ...] = SUFFIXES) -> Corpus:
    """Read the corpus under `root` (default: this Python's stdlib). Cached per process."""
    root = Path(root) if root is not None else default_root()
    key = (str(root.resolve()), tuple(suffixes))
    if key in _CACHE:
        return _CACHE[key]
    files = list_files(root, suffixes)
    if not files:
        raise FileNotFoundError(f"{root}: no {'/'.join(suffixes)} files to train on")
    h = hashlib.sha256()
    chunks = []
    for rel in files:
        blob = (root / rel).read_bytes()
        h.update(rel.encode("utf-8") + b"\0" + str(len(blob)).encode() + b"\0")
        h.update(blob)
        chunks.append(blob)
        chunks.append(SEPARATOR)
    data = np.frombuffer(b"".join(chunks), dtype=np.uint8)
    info = {
        "root": str(root),
        "python": platform.python_version(),
        "files": len(files),
        "bytes": int(data.shape[0]),
        "suffixes": list(suffixes),
        "skip_dirs": sorted(SKIP_DIRS),
        "order": "sorted POSIX relative paths, each file followed by a blank line",
        "tokenizer": "bytes (vocabulary 256)",
        "sha256": "sha256:" + h.hexdigest(),
        "first_file": files[0],
        "last_file": files[-1],
    }
    corpus = Corpus(data, info)
    _CACHE[key] = corpus
    return corpus
