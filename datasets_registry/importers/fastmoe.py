"""FastMoE / SmartMoE ``FileGate`` tables.

Files ``table_iter{I}_rank{R}.log`` hold one line per MoE layer, ``<layer>:<json>``, where the
JSON is a list of micro-batches, each a list of per-expert token counts (upstream reader:
``fmoe/gates/file_gate.py``). Each rank's gate writes the tokens of its own micro-batches, so a table
is one source rank's traffic to every expert. A record is one iteration: the counts are the sum over
ranks and micro-batches; the per-rank sums over micro-batches are kept as the trace's per-source split
(``source_counts[T, L, S, E]``, source ``s`` the ``s``-th rank in order). The tables are read straight
from a folder or from a ``.tar``/``.tar.gz``/``.tar.xz`` archive.
"""

from __future__ import annotations

import hashlib
import lzma
import re
import tarfile
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from ..guards import TraceError, check_bytes, open_regular, parse_json, read_regular
from .common import build_trace, sha256_file
from .dumps import as_numpy

TABLE_NAME = re.compile(r"(?:^|/)table_iter([0-9]+)_rank([0-9]+)\.log$")


def _members(path: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every table file in a folder or tar archive, within the ``bytes`` limit in all."""
    total = 0
    if path.is_dir():
        for f in sorted(p for p in path.rglob("table_iter*_rank*.log") if TABLE_NAME.search(p.as_posix())):
            data = read_regular(f)
            total += len(data)
            check_bytes(path, total, "the tables")
            yield str(f), data
        return
    with open_regular(path) as fileobj:
        try:
            with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
                for m in tar:
                    total += m.size
                    check_bytes(path, total, "the archive (decompressed)")
                    if m.isfile() and TABLE_NAME.search(m.name):
                        yield f"{path}:{m.name}", tar.extractfile(m).read()
        except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
            raise TraceError(str(path), f"not a readable folder or tar archive of FileGate tables ({exc})") from None


def _parse_table(name: str, text: bytes) -> tuple[list[str], np.ndarray]:
    """Layer labels and the per-layer per-expert sums over micro-batches of one table file."""
    labels, rows = [], []
    try:
        lines = text.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise TraceError(name, "not a UTF-8 text file") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        label, sep, body = line.partition(":")
        if not sep:
            raise TraceError(name, f"line {lineno}: expected '<layer>:<json list>'")
        where = f"line {lineno} (layer {label.strip()[:40]})"
        arr = as_numpy(parse_json(body, name, where), name, where).astype(np.float64)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] == 0:
            raise TraceError(name, f"{where}: expected [micro-batch][expert] counts, got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise TraceError(name, f"{where}: NaN or inf count")
        if (arr < 0).any():
            raise TraceError(name, f"{where}: negative count")
        if (arr != np.round(arr)).any():
            raise TraceError(name, f"{where}: non-integer count")
        labels.append(label.strip())
        rows.append(arr.sum(axis=0))
    if not rows:
        raise TraceError(name, "empty table")
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise TraceError(name, f"layers have different numbers of experts: {sorted(widths)}")
    return labels, np.stack(rows)


def read_fastmoe(path: Path) -> "Trace":  # noqa: F821
    per_iter: dict[int, dict[int, np.ndarray]] = {}
    labels_seen: list[str] | None = None
    hashes: dict[str, str] = {}
    for name, data in _members(path):
        it, rank = (int(x) for x in TABLE_NAME.search(name).groups())
        labels, sums = _parse_table(name, data)
        if labels_seen is None:
            labels_seen, first_name = labels, name
        elif labels != labels_seen:
            raise TraceError(name, f"layers {labels} differ from {labels_seen} in {first_name}")
        if rank in per_iter.setdefault(it, {}):
            raise TraceError(name, f"iteration {it}, rank {rank} appears twice")
        per_iter[it][rank] = sums
        hashes[name.rsplit("/", 1)[-1].split(":")[-1]] = hashlib.sha256(data).hexdigest()
    if not per_iter:
        raise TraceError(str(path), "no table_iter{I}_rank{R}.log files found")
    iters = sorted(per_iter)
    ranks = sorted(per_iter[iters[0]])
    shapes = {s.shape for d in per_iter.values() for s in d.values()}
    if len(shapes) != 1:
        raise TraceError(str(path), f"tables disagree on [layers, experts]: {sorted(shapes)}")
    for it in iters:
        if sorted(per_iter[it]) != ranks:
            raise TraceError(str(path), f"iteration {it} has ranks {sorted(per_iter[it])}, expected {ranks}")
    # [T, L, S, E]: whole numbers far below 2**53, so the float sums over micro-batches are exact
    source_counts = np.stack([np.stack([per_iter[it][r] for r in ranks], axis=1) for it in iters]).astype(np.int64)
    counts = source_counts.sum(axis=2)
    files = {"archive": {path.name: sha256_file(path)}} if path.is_file() else {}
    files["tables"] = dict(sorted(hashes.items()))
    return build_trace(
        counts,
        np.asarray(iters),
        path=path,
        fmt="fastmoe",
        files=files,
        layer_names=[f"layer{x}" for x in labels_seen],
        notes=f"summed over {len(ranks)} ranks and all micro-batches",
        extra={"ranks": len(ranks)},
        source_counts=source_counts,
        sources={"count": len(ranks), "unit": "rank",
                 "layout": f"source s is the s-th of ranks {ranks[0]}..{ranks[-1]}: the tokens of that rank's own "
                           "micro-batches (its table_iter{I}_rank{R}.log)"},
    )
