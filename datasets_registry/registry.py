"""Where datasets live and how an id finds one.

Three kinds of dataset share one namespace of ids (``name`` or ``name@version``):

- *built-in*: traces committed in this package (``datasets_registry/builtin/<id>/v<N>/``);
- *public*: declared in :mod:`datasets_registry.sources` with their upstream URL, commit and
  licence, built once from a local copy into the user's data directory;
- *user*: imported or traced by the user, under ``<data home>/datasets/<id>/v<N>/``.

The ids of built-in and public datasets are reserved: a user dataset cannot take one, so a
name always means the same data. Writers of one id (imports, builds) take the id's lock
(:func:`datasets_registry.home.dataset_lock`), so concurrent imports get distinct versions and
concurrent first uses of a public dataset build it once.

The data home is ``$MOE_LOAD_BENCH_HOME``, else ``$XDG_DATA_HOME/moe-load-bench``, else
``~/.local/share/moe-load-bench`` (:func:`data_home`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import storage
from .guards import short
from .home import DatasetBusy, data_home, dataset_lock, user_datasets_dir
from .sources import PUBLIC
from .trace import Trace, TraceError

__all__ = ["BUILTIN_DIR", "DEFAULT_DATASET", "DatasetNotFound", "DatasetBusy", "Entry", "Problem", "data_home",
           "user_datasets_dir", "parse_id", "is_valid_id", "check_id", "check_user_id", "entries", "resolve", "load",
           "add", "next_version", "build_public", "refresh_public", "summary", "listing", "describe", "check_datasets",
           "find_leftovers", "remove_leftovers"]

BUILTIN_DIR = Path(__file__).parent / "builtin"
ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]*")
MAX_ID_CHARS = 100
MAX_VERSION = 999_999_999
VERSION_FOLDER = re.compile(r"v([0-9]{1,9})")
#: A save's temporary folder is a leftover once nothing in it changed for this long (or its writer is dead).
LEFTOVER_AGE_S = 300.0

#: The dataset that commands use when none is named.
DEFAULT_DATASET = "gpt3-125m-16e-top2-s1"


class DatasetNotFound(LookupError):
    pass


def is_valid_id(name: Any) -> bool:
    """Lower-case ASCII letters, digits, '.', '_', '-', starting with a letter or digit, at most 100 characters."""
    return isinstance(name, str) and len(name) <= MAX_ID_CHARS and ID_PATTERN.fullmatch(name) is not None


def check_id(name: str) -> str:
    """`name` if it is a valid dataset id (without a version), else a ValueError saying what an id is."""
    if not is_valid_id(name):
        raise ValueError(f"invalid dataset id {short(name)}: use at most {MAX_ID_CHARS} lower-case letters, digits, "
                         "'.', '_' and '-', starting with a letter or digit")
    return name


def parse_id(ref: str) -> tuple[str, int | None]:
    """'name' -> (name, None); 'name@3' or 'name@v3' -> (name, 3)."""
    name, sep, version = ref.partition("@")
    check_id(name)
    if sep:
        m = re.fullmatch(r"v?([0-9]{1,9})", version)
        if not m or int(m.group(1)) < 1:
            raise ValueError(f"invalid dataset version {short(version)} in {short(ref)}: a positive integer, as in "
                             f"{name}@2")
        return name, int(m.group(1))
    return name, None


def check_user_id(name: str, version: int | None = None) -> None:
    """Refuse an id (and version) a user dataset cannot be stored under, before any work is done for it."""
    check_id(name)
    if (BUILTIN_DIR / name).is_dir():
        raise ValueError(f"{name!r} is the id of a built-in dataset; choose another id")
    if name in PUBLIC:
        raise ValueError(f"{name!r} is the id of a public dataset; choose another id")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)
                                or not 1 <= version <= MAX_VERSION):
        raise ValueError(f"invalid version {short(version)} for dataset {name!r}: a positive integer up to "
                         f"{MAX_VERSION}")


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


def _kind(root: Path, name: str) -> str:
    return "builtin" if root == BUILTIN_DIR else "public" if name in PUBLIC else "user"


def _versions(root: Path, name: str) -> list[Entry]:
    out = []
    base = root / name
    try:
        children = list(base.iterdir()) if base.is_dir() else []
    except OSError:  # unreadable: check_datasets reports it
        children = []
    for child in children:
        m = VERSION_FOLDER.fullmatch(child.name)
        if m and (child / storage.CARD_FILE).exists():
            out.append(Entry(name, int(m.group(1)), _kind(root, name), child))
    return sorted(out, key=lambda e: e.version)


def _names(root: Path) -> list[str]:
    try:
        return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def entries() -> list[Entry]:
    """Every stored dataset version, built-in first."""
    out: list[Entry] = []
    for root in (BUILTIN_DIR, user_datasets_dir()):
        for name in _names(root):
            out += _versions(root, name)
    return out


def resolve(ref: str, build: bool = True) -> Entry:
    """Find the stored folder of `ref`, building a declared public dataset if needed."""
    name, version = parse_id(ref)
    found = _versions(BUILTIN_DIR, name) or _versions(user_datasets_dir(), name)
    if not found and name in PUBLIC and build:
        found = [build_public(name)]
    elif found and name in PUBLIC and build:
        found = [refresh_public(e) for e in found]
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
    have = _versions(user_datasets_dir(), name)
    return have[-1].version + 1 if have else 1


def add(trace: Trace, name: str, version: int | None = None) -> Entry:
    """Store `trace` as a user dataset `name`, version `version` (default: the next free one).

    Holds the id's lock while it picks the version and writes, so concurrent adds get distinct versions.
    """
    check_user_id(name, version)
    with dataset_lock(name):
        version = next_version(name) if version is None else version
        folder = user_datasets_dir() / name / f"v{version}"
        if folder.exists():
            raise FileExistsError(f"dataset {name!r} already has version {version} ({folder}); datasets are immutable: "
                                  "give another version, or none for the next free one")
        card = dataclasses.replace(trace.card, id=name, version=version)
        storage.save(Trace(trace.counts, trace.steps, card, trace.extras), folder)
    return Entry(name, version, "user", folder)


@contextlib.contextmanager
def chunked_writer(name: str, card, layers: int, experts: int, version: int | None = None, **options):
    """A :class:`~datasets_registry.chunked.ChunkedWriter` into user dataset `name` (next free version by
    default), for a trace too large for memory: append blocks of records; the version appears when the
    block ends without an error. `options`: ``dtype``, ``group_records``."""
    from .chunked import ChunkedWriter

    check_user_id(name, version)
    with dataset_lock(name):
        version = next_version(name) if version is None else version
        folder = user_datasets_dir() / name / f"v{version}"
        card = dataclasses.replace(card, id=name, version=version)
        with ChunkedWriter(folder, card, layers, experts, **options) as writer:
            yield writer


def add_chunked(trace: Trace, name: str, version: int | None = None, **options) -> Entry:
    """:func:`add` in the chunked layout (:mod:`datasets_registry.chunked`): the same card and fingerprint."""
    from .chunked import save_chunked

    check_user_id(name, version)
    with dataset_lock(name):
        version = next_version(name) if version is None else version
        folder = user_datasets_dir() / name / f"v{version}"
        save_chunked(Trace(trace.counts, trace.steps, dataclasses.replace(trace.card, id=name, version=version)),
                     folder, **options)
    return Entry(name, version, "user", folder)


def open_chunked(ref: str, verify: bool = False):
    """A stored dataset as a :class:`~datasets_registry.chunked.ChunkedTrace` (read a piece at a time); one stored
    whole (``trace.npz``) is refused: :func:`load` it. `verify` recomputes the fingerprint (reads every chunk)."""
    from .chunked import ChunkedTrace, is_chunked

    entry = resolve(ref)
    if not is_chunked(entry.folder):
        raise TraceError(str(entry.folder), "not stored in the chunked layout; load it whole")
    return ChunkedTrace(entry.folder, verify=verify)


def build_public(name: str, path: str | Path | None = None) -> Entry:
    """Build declared public dataset `name` from its local copy (or `path`) as version 1, unless already built.

    Under the id's lock: of several processes building it at once, one builds and the others use its copy.
    """
    if name not in PUBLIC:
        raise DatasetNotFound(f"{name!r} is not a declared public dataset; declared: {', '.join(PUBLIC)}")
    with dataset_lock(name):
        built = _versions(user_datasets_dir(), name)
        if built:
            return built[-1]
        folder = user_datasets_dir() / name / "v1"
        storage.save(PUBLIC[name].build_trace(path), folder)
    return Entry(name, 1, "public", folder)


def refresh_public(entry: Entry) -> Entry:
    """Rebuild in place a stored build of a public dataset made by an older build revision
    (:attr:`PublicSource.build_revision`), so that it gains what the current importer keeps (e.g. the
    per-source split), when its local copy is at hand. The counts, and so the fingerprint, must come out the
    same: otherwise, or when the local copy cannot be read, the stored build is kept (and a warning says why).
    Without a local copy, or when the stored card is unreadable (`datasets check` reports it), the stored build
    is used as it is.
    """
    src = PUBLIC[entry.id]
    try:
        if src.built_revision(storage.read_card(entry.folder)) >= src.build_revision:
            return entry
        path = src.local_copy()
    except (TraceError, OSError):  # SourceMissing is an OSError: keep using the stored build
        return entry
    with dataset_lock(entry.id):
        card = storage.read_card(entry.folder)  # again, under the lock: another process may have rebuilt it
        if src.built_revision(card) >= src.build_revision:
            return entry
        try:
            trace = src.build_trace(path)
        except (TraceError, OSError) as exc:
            warnings.warn(f"{entry.folder}: not rebuilt from {path} ({exc}); the stored build is used as it is",
                          RuntimeWarning, stacklevel=3)
            return entry
        if trace.fingerprint != card.fingerprint:
            warnings.warn(f"{entry.folder}: not rebuilt from {path}, whose counts (fingerprint {trace.fingerprint}) "
                          f"differ from the stored build's ({card.fingerprint}); the stored build is used as it is",
                          RuntimeWarning, stacklevel=3)
            return entry
        trace = Trace(trace.counts, trace.steps, dataclasses.replace(trace.card, version=entry.version), trace.extras)
        storage.replace(trace, entry.folder)
    return entry


def summary(entry: Entry) -> dict[str, Any]:
    """The listing fields of a stored dataset, read without decompressing its counts."""
    card = storage.read_card(entry.folder)
    from .chunked import ChunkedTrace, is_chunked

    if is_chunked(entry.folder) and not (entry.folder / storage.TRACE_FILE).exists():
        stored = ChunkedTrace(entry.folder, card=card, verify=False)  # the schema and steps only
        (T, L, E), steps = stored.shape, stored.steps
    else:
        npz = entry.folder / storage.TRACE_FILE
        headers = storage.npz_headers(npz)
        shape = headers["counts"][0] if "counts" in headers else ()
        if "steps" not in headers or len(shape) != 3:
            raise TraceError(str(npz), f"expected arrays counts [T, L, E] and steps [T]; found {sorted(headers)}")
        T, L, E = shape
        steps = storage.read_npz_arrays(npz, required=("steps",), names=("steps",))["steps"]
        if steps.shape != (T,) or T == 0:
            raise TraceError(str(npz), f"steps has shape {steps.shape} but counts has {T} records")
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


def listing() -> list[dict[str, Any]]:
    """`datasets list`: :func:`summary` of every stored dataset, and for a broken one its id, kind and "error"."""
    rows = []
    for entry in entries():
        try:
            if not is_valid_id(entry.id):
                raise TraceError(str(entry.folder.parent), "folder name is not a valid dataset id")
            rows.append({**summary(entry), "error": None})
        except (TraceError, OSError) as exc:
            rows.append({"id": entry.id, "version": entry.version, "kind": entry.kind, "layers": None, "experts": None,
                         "records": None, "first_step": None, "last_step": None, "static": None, "source": None,
                         "licence": None, "fingerprint": None, "error": str(exc)})
    return rows


def describe(trace: Trace, entry: Entry | None = None) -> dict[str, Any]:
    """`datasets show`: the card plus the listing fields and per-layer totals."""
    out = trace.card.to_dict()
    out.update({k: v for k, v in trace.summary().items() if k != "source"})
    out["source_summary"] = trace.summary()["source"]
    if entry is not None:
        out["kind"] = entry.kind
        out["path"] = str(entry.folder)
    totals = trace.totals
    out["tokens_per_record"] = {"min": int(totals.min()), "max": int(totals.max()),
                                "constant": bool((totals == totals.flat[0]).all())}
    out["sources"] = None
    if trace.source_counts is not None:
        sent = trace.source_counts.sum(axis=(0, 1, 3))
        out["sources"] = {**trace.sources, "share_of_tokens": [round(float(x), 6) for x in sent / sent.sum()]}
    return json.loads(json.dumps(out))


# --------------------------------------------------------------------------- health of the stored datasets


@dataclass(frozen=True)
class Problem:
    """Something wrong with a stored dataset: where, and a one-line description."""

    path: Path
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def _check_version_folder(folder: Path, name: str, version: int) -> Problem | None:
    """What is wrong with one stored version, or None."""
    try:
        card = storage.read_card(folder)
        if (card.id, card.version) != (name, version):
            return Problem(folder / storage.CARD_FILE, f"card says {card.id}@{card.version} but the folder holds "
                                                       f"{name}@{version}")
        from .chunked import ChunkedTrace, is_chunked

        if is_chunked(folder) and not (folder / storage.TRACE_FILE).exists():
            ChunkedTrace(folder, card=card)  # the fingerprint recomputed chunk by chunk: memory of one row group
        else:
            storage.load(folder)
    except TraceError as exc:
        return Problem(Path(exc.source), " ".join(exc.problem.split()))
    except Exception as exc:  # a health check reports whatever it finds and never raises
        return Problem(folder, " ".join(f"{type(exc).__name__}: {exc}".split()))
    return None


def check_datasets(builtin: bool = True) -> list[Problem]:
    """Check every stored dataset: its card readable and valid, its trace.npz readable, shapes and fingerprint
    matching the card. Returns the problems found (an empty list when all is well); never raises.

    Loads one dataset at a time, so memory is that of the largest dataset. Unfinished saves are
    reported by :func:`find_leftovers`, not here.
    """
    problems: list[Problem | None] = []
    for root in (BUILTIN_DIR, user_datasets_dir()) if builtin else (user_datasets_dir(),):
        for name in _names(root):
            base = root / name
            if not is_valid_id(name):
                problems.append(Problem(base, "folder name is not a valid dataset id"))
            try:
                children = sorted(base.iterdir())
            except OSError as exc:
                problems.append(Problem(base, f"unreadable folder ({exc.strerror or exc})"))
                continue
            for child in children:
                m = VERSION_FOLDER.fullmatch(child.name)
                if m:
                    problems.append(_check_version_folder(child, name, int(m.group(1))))
    return [p for p in problems if p is not None]


def _leftovers(min_age_s: float, remove: bool) -> list[Path]:
    out = []
    root = user_datasets_dir()
    for name in _names(root):
        if not is_valid_id(name):  # its lock file could not be named; check_datasets reports the folder
            continue
        try:
            with dataset_lock(name, timeout_s=0):  # held: no import or build of this id is writing now
                found = storage.unfinished_saves(root / name, min_age_s)
                for folder in found if remove else ():
                    shutil.rmtree(folder, ignore_errors=True)
        except DatasetBusy:
            continue
        out += found
    return out


def find_leftovers(min_age_s: float = LEFTOVER_AGE_S) -> list[Path]:
    """Temporary folders of interrupted saves under ``<data home>/datasets`` whose writer is gone.

    A folder counts when no process holds its dataset's lock and either its writer's process id
    (recorded in its name) is not running, or nothing in it changed for `min_age_s` seconds.
    """
    return _leftovers(min_age_s, remove=False)


def remove_leftovers(min_age_s: float = LEFTOVER_AGE_S) -> list[Path]:
    """Remove what :func:`find_leftovers` finds (checked again under each dataset's lock); return what was removed."""
    return _leftovers(min_age_s, remove=True)
