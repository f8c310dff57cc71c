"""Where datasets live and how an id finds one.

Three kinds of dataset share one namespace of ids (``name`` or ``name@version``):

- *built-in*: traces committed in this package (``datasets_registry/builtin/<id>/v<N>/``);
- *public*: declared in :mod:`datasets_registry.sources` with their upstream URL, commit and
  licence, built once from a local copy into the user's data directory;
- *user*: imported or traced by the user, under ``<data home>/datasets/<id>/v<N>/``.

The data home is ``$MOE_LOAD_BENCH_HOME``, else ``$XDG_DATA_HOME/moe-load-bench``, else
``~/.local/share/moe-load-bench``.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import storage
from .trace import Trace, TraceError

BUILTIN_DIR = Path(__file__).parent / "builtin"
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")

#: The dataset that commands use when none is named.
DEFAULT_DATASET = "gpt3-125m-16e-top2-s1"


class DatasetNotFound(LookupError):
    pass


def data_home() -> Path:
    env = os.environ.get("MOE_LOAD_BENCH_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "moe-load-bench"


def user_datasets_dir() -> Path:
    return data_home() / "datasets"


def parse_id(ref: str) -> tuple[str, int | None]:
    """'name' -> (name, None); 'name@3' -> (name, 3)."""
    name, _, version = ref.partition("@")
    if not ID_PATTERN.match(name):
        raise ValueError(f"invalid dataset id {name!r}: use lower-case letters, digits, '.', '_' and '-'")
    if version:
        v = version[1:] if version.startswith("v") else version
        if not v.isdigit():
            raise ValueError(f"invalid dataset version {version!r} in {ref!r}")
        return name, int(v)
    return name, None


@dataclass(frozen=True)
class Entry:
    """One stored version of a dataset."""

    id: str
    version: int
    kind: str  # "builtin" | "public" | "user"
    folder: Path

    @property
    def ref(self) -> str:
        return f"{self.id}@{self.version}"


def _versions(root: Path, name: str, kind: str) -> list[Entry]:
    out = []
    base = root / name
    if base.is_dir():
        for child in base.iterdir():
            m = re.fullmatch(r"v(\d+)", child.name)
            if m and (child / storage.CARD_FILE).exists():
                out.append(Entry(name, int(m.group(1)), kind, child))
    return sorted(out, key=lambda e: e.version)


def _names(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def entries() -> list[Entry]:
    """Every stored dataset version, built-in first."""
    from .sources import PUBLIC

    out: list[Entry] = []
    for name in _names(BUILTIN_DIR):
        out += _versions(BUILTIN_DIR, name, "builtin")
    for name in _names(user_datasets_dir()):
        out += _versions(user_datasets_dir(), name, "public" if name in PUBLIC else "user")
    return out


def resolve(ref: str, build: bool = True) -> Entry:
    """Find the stored folder of `ref`, building a declared public dataset if needed."""
    from .sources import PUBLIC

    name, version = parse_id(ref)
    found = _versions(BUILTIN_DIR, name, "builtin") or _versions(user_datasets_dir(), name, "public" if name in PUBLIC else "user")
    if not found and name in PUBLIC and build:
        PUBLIC[name].build()
        found = _versions(user_datasets_dir(), name, "public")
    if not found:
        known = sorted({e.id for e in entries()} | set(PUBLIC))
        raise DatasetNotFound(f"no dataset {name!r}; known: {', '.join(known) or 'none'}")
    if version is None:
        return found[-1]
    for e in found:
        if e.version == version:
            return e
    raise DatasetNotFound(f"dataset {name!r} has no version {version}; it has {[e.version for e in found]}")


def load(ref: str) -> Trace:
    """Load a dataset by id (``name`` for the newest version, ``name@N`` for version N)."""
    return storage.load(resolve(ref).folder)


def next_version(name: str) -> int:
    have = _versions(user_datasets_dir(), name, "user")
    return have[-1].version + 1 if have else 1


def add(trace: Trace, name: str, version: int | None = None) -> Entry:
    """Store `trace` as a user dataset `name`, version `version` (default: the next free one)."""
    import dataclasses

    parse_id(name)
    if _versions(BUILTIN_DIR, name, "builtin"):
        raise ValueError(f"{name!r} is a built-in dataset id; choose another id")
    version = next_version(name) if version is None else version
    card = dataclasses.replace(trace.card, id=name, version=version)
    stored = Trace(trace.counts, trace.steps, card)
    folder = user_datasets_dir() / name / f"v{version}"
    storage.save(stored, folder)
    return Entry(name, version, "user", folder)


def _npy_shape(npz_path: Path, member: str) -> tuple[int, ...]:
    with zipfile.ZipFile(npz_path) as z, z.open(member + ".npy") as f:
        major, _ = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, _ = reader(f)
    return tuple(shape)


def summary(entry: Entry) -> dict[str, Any]:
    """The listing fields of a stored dataset, read without decompressing its counts."""
    card = storage.read_card(entry.folder)
    npz = entry.folder / storage.TRACE_FILE
    try:
        T, L, E = _npy_shape(npz, "counts")
        with np.load(npz, allow_pickle=False) as z:
            steps = z["steps"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise TraceError(str(npz), f"unreadable trace file ({exc})") from None
    return {
        "id": card.id,
        "version": card.version,
        "kind": entry.kind,
        "layers": L,
        "experts": E,
        "records": T,
        "first_step": int(steps[0]),
        "last_step": int(steps[-1]),
        "static": card.static,
        "source": card.source.get("url") or card.source.get("command") or card.source.get("format", ""),
        "licence": card.licence,
        "fingerprint": card.fingerprint,
    }


def describe(trace: Trace, entry: Entry | None = None) -> dict[str, Any]:
    """`datasets show`: the card plus the listing fields and per-layer totals."""
    out = trace.card.to_dict()
    out.update({k: v for k, v in trace.summary().items() if k != "source"})
    out["source_summary"] = trace.summary()["source"]
    if entry is not None:
        out["kind"] = entry.kind
        out["path"] = str(entry.folder)
    totals = trace.totals
    out["tokens_per_record"] = {"min": int(totals.min()), "max": int(totals.max()), "constant": bool((totals == totals.flat[0]).all())}
    return json.loads(json.dumps(out))
