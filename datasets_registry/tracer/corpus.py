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

:func:`build_text_corpus` reads a second source for domain shifts: English documentation and
other text installed on the machine (on Debian, ``/usr/share/doc`` and
``/usr/share/common-licenses``: copyright and licence texts, READMEs, change logs, manuals),
found at run time and fingerprinted the same way. :meth:`Corpus.split` holds out a fraction of a
corpus's files (chosen by a hash of their path) for probe batches that training never sees.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SUFFIXES = (".py", ".txt", ".rst", ".md")
SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})
SEPARATOR = b"\n\n"
VOCAB = 256
#: Where text lies on Debian and its derivatives; those of them that exist are the default text source.
TEXT_ROOTS = ("/usr/share/doc", "/usr/share/common-licenses")
#: Text files by name: these suffixes, no suffix (copyright, README, GPL-3), or a version (Apache-2.0, LGPL-2.1).
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".debian")
#: C and C++ headers installed on the machine: a third workload source, one the tracer never trains on by default.
C_ROOT = "/usr/include"
C_SUFFIXES = (".h",)
TEXT_RULE = (
    "regular files (symbolic links not followed, hidden folders skipped) named with no suffix, a numeric suffix "
    "(licence versions) or .txt, .md, .rst, .Debian, whose bytes are UTF-8 without NUL; compressed files are skipped"
)


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
    files: list[str] = field(default_factory=list)  # names in the order of `data`
    starts: np.ndarray | None = None  # int64 [files + 1]: where each file (with its separator) starts in `data`

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def split(self, fraction: float) -> tuple[np.ndarray, np.ndarray, dict]:
        """(training bytes, held-out bytes, what was held out): the files whose name hashes below `fraction`
        (sha256 of the name, as a number in [0, 1)) are held out, at least one file on each side.
        Training batches are drawn from the first array only; probe batches from the second."""
        if self.starts is None or len(self.files) < 2:
            raise ValueError("a held-out part needs a corpus of at least two files")
        u = np.array([int.from_bytes(hashlib.sha256(f.encode("utf-8")).digest()[:8], "big") / 2.0**64
                      for f in self.files])
        held = u < fraction
        if not held.any():
            held[int(np.argmin(u))] = True
        if held.all():
            held[int(np.argmax(u))] = False
        pieces = [(self.data[self.starts[i]: self.starts[i + 1]], h) for i, h in enumerate(held)]
        train = np.concatenate([b for b, h in pieces if not h])
        heldout = np.concatenate([b for b, h in pieces if h])
        names = [f for f, h in zip(self.files, held) if h]
        info = {
            "fraction": fraction,
            "rule": "a file is held out when the first 8 bytes of sha256(its name), read as a big-endian number "
            "over 2**64, are below the fraction (at least one file held out and one kept)",
            "files": len(names),
            "bytes": int(heldout.shape[0]),
            "training_files": int(len(self.files) - len(names)),
            "training_bytes": int(train.shape[0]),
            "names_sha256": "sha256:" + hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest(),
        }
        return train, heldout, info


_CACHE: dict[tuple, Corpus] = {}


def build_corpus(root: str | os.PathLike | None = None, suffixes: tuple[str, ...] = SUFFIXES) -> Corpus:
    """Read the corpus under `root` (default: this Python's stdlib). Cached per process."""
    # a card names the default corpus by what it is, not by where this machine keeps it (the digest pins it)
    shown = "the Python standard library" if root is None else str(root)
    root = Path(root) if root is not None else default_root()
    key = (str(root.resolve()), tuple(suffixes))
    if key in _CACHE:
        return _CACHE[key]
    files = list_files(root, suffixes)
    if not files:
        raise FileNotFoundError(f"{root}: no {'/'.join(suffixes)} files to train on")
    data, starts, digest = _concatenate(files, [(root / rel).read_bytes() for rel in files])
    info = {
        "root": shown,
        "python": platform.python_version(),
        "files": len(files),
        "bytes": int(data.shape[0]),
        "suffixes": list(suffixes),
        "skip_dirs": sorted(SKIP_DIRS),
        "order": "sorted POSIX relative paths, each file followed by a blank line",
        "tokenizer": "bytes (vocabulary 256)",
        "sha256": digest,
        "first_file": files[0],
        "last_file": files[-1],
    }
    corpus = Corpus(data, info, files, starts)
    _CACHE[key] = corpus
    return corpus


def _concatenate(names: list[str], blobs: list[bytes]) -> tuple[np.ndarray, np.ndarray, str]:
    """The corpus bytes (each file followed by a blank line), where each file starts, and the fingerprint: a
    sha256 over (name, size, content) of every file in order."""
    h = hashlib.sha256()
    chunks = []
    for rel, blob in zip(names, blobs):
        h.update(rel.encode("utf-8") + b"\0" + str(len(blob)).encode() + b"\0")
        h.update(blob)
        chunks.append(blob)
        chunks.append(SEPARATOR)
    starts = np.cumsum([0] + [len(b) + len(SEPARATOR) for b in blobs], dtype=np.int64)
    return np.frombuffer(b"".join(chunks), dtype=np.uint8), starts, "sha256:" + h.hexdigest()


def default_text_roots() -> list[Path]:
    return [Path(r) for r in TEXT_ROOTS if Path(r).is_dir()]


def _is_text_name(name: str) -> bool:
    suffix = Path(name).suffix.lower()
    return suffix == "" or suffix in TEXT_SUFFIXES or re.fullmatch(r"\.[0-9]+", suffix) is not None


def _text_blob(path: Path) -> bytes | None:
    blob = path.read_bytes()
    if b"\0" in blob:
        return None
    try:
        blob.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return blob


def build_text_corpus(roots: list[str | os.PathLike] | None = None) -> Corpus:
    """English documentation and other text installed on this machine (default: the folders of
    :data:`TEXT_ROOTS` that exist), read as bytes like the Python corpus. Cached per process.

    A file's name in the corpus (and the fingerprint) is its root's folder name and its path below it, so
    that the same files in the same folders give the same corpus on any machine."""
    paths = [Path(r) for r in roots] if roots else default_text_roots()
    if not paths:
        raise FileNotFoundError(f"no text folders found (looked for {', '.join(TEXT_ROOTS)}); name one with "
                                "--text-corpus DIR")
    key = ("text", tuple(str(p.resolve()) for p in paths))
    if key in _CACHE:
        return _CACHE[key]
    names, blobs = [], []
    for root in paths:
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: not a folder")
        found = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                p = Path(dirpath) / name
                if _is_text_name(name) and not p.is_symlink() and p.is_file():
                    found.append(p.relative_to(root).as_posix())
        for rel in sorted(found):
            blob = _text_blob(root / rel)
            if blob is not None:
                names.append(f"{root.name}/{rel}")
                blobs.append(blob)
    if not names:
        raise FileNotFoundError(f"{', '.join(map(str, paths))}: no text files to train on")
    data, starts, digest = _concatenate(names, blobs)
    info = {
        "kind": "text",
        "roots": [str(p) for p in paths],
        "files": len(names),
        "bytes": int(data.shape[0]),
        "rule": TEXT_RULE,
        "order": "roots in the order given, then sorted POSIX relative paths, each file followed by a blank line",
        "tokenizer": "bytes (vocabulary 256)",
        "sha256": digest,
        "first_file": names[0],
        "last_file": names[-1],
    }
    corpus = Corpus(data, info, names, starts)
    _CACHE[key] = corpus
    return corpus


def corpus_for(name: str, corpus_root: str | os.PathLike | None = None,
               text_roots: list[str | os.PathLike] | None = None) -> Corpus:
    """The corpus of a source named in a corpus schedule or a workload mixture: ``python`` (the standard library,
    or `corpus_root`), ``text`` (installed documentation, or `text_roots`) or ``c`` (the headers under
    :data:`C_ROOT`)."""
    if name == "python":
        return build_corpus(corpus_root)
    if name == "text":
        return build_text_corpus(text_roots)
    if name == "c":
        if not Path(C_ROOT).is_dir():
            raise FileNotFoundError(f"{C_ROOT}: not a folder (the c source reads the C headers installed there)")
        return build_corpus(C_ROOT, C_SUFFIXES)
    raise ValueError(f"unknown text source {name!r}; sources are python, text and c")
