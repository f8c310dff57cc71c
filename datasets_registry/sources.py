"""Public datasets, declared with their upstream source and built from a local copy.

The project never commits a public dataset's raw files. A declared dataset is built on first
use from a local copy found at (in order):

1. ``$MOE_LOAD_BENCH_SOURCE_<ID>`` (id upper-cased, '-' and '.' as '_'): a folder or archive;
2. ``<dir>/<id>`` or ``<dir>/<archive name>`` for each ``<dir>`` in ``$MOE_LOAD_BENCH_SOURCES``
   (a ``os.pathsep``-separated list);
3. ``<data home>/sources/<id>``.

``python -m bench datasets fetch ID`` downloads the upstream archive into place 3 where the
network allows. Without a copy the error says what to fetch and where to put it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .home import sources_dir
from .importers import import_path
from .trace import Card, ModelInfo, Trace


class SourceMissing(FileNotFoundError):
    pass


@dataclass(frozen=True)
class PublicSource:
    id: str
    title: str
    url: str  # upstream archive of the pinned commit
    repository: str
    commit: str
    path_in_repo: str
    licence: str
    importer: str  # a format of datasets_registry.importers
    archive_name: str  # the name a downloaded or repacked archive goes by
    card: Card
    #: Bumped when a build gains something a build by an older version of the project lacks (with the same
    #: counts, so the same fingerprint): a stored build of an older revision is rebuilt in place on first use
    #: (:func:`datasets_registry.registry.resolve`). Revision 2 keeps the importer's per-source split.
    build_revision: int = 1

    @property
    def env_var(self) -> str:
        return "MOE_LOAD_BENCH_SOURCE_" + self.id.upper().replace("-", "_").replace(".", "_")

    def candidates(self) -> list[Path]:
        out = []
        if os.environ.get(self.env_var):
            out.append(Path(os.environ[self.env_var]).expanduser())
        for d in filter(None, os.environ.get("MOE_LOAD_BENCH_SOURCES", "").split(os.pathsep)):
            d = Path(d).expanduser()
            out += [d / self.id / self.archive_name, d / self.id, d / self.archive_name]
        home = sources_dir() / self.id
        out += [home / self.archive_name, home]
        return out

    def local_copy(self) -> Path:
        for path in self.candidates():
            if path.is_file() or (path.is_dir() and any(path.iterdir())):
                return path
        raise SourceMissing(
            f"dataset {self.id!r} is not built and no local copy of its source was found.\n"
            f"  Upstream: {self.url}\n"
            f"  ({self.repository} at commit {self.commit}, folder {self.path_in_repo}/, licence {self.licence})\n"
            f"  Fetch that archive (or run `python -m bench datasets fetch {self.id}` where the network allows) and\n"
            f"  put the archive or its {self.path_in_repo}/ folder at {sources_dir() / self.id}/,\n"
            f"  or point {self.env_var} (or MOE_LOAD_BENCH_SOURCES) at it.\n"
            f"  Looked in: {', '.join(str(p) for p in self.candidates())}"
        )

    def build_trace(self, path: str | os.PathLike | None = None) -> Trace:
        """Import the local copy (or `path`) and give it this dataset's card; storing it is the registry's job
        (:func:`datasets_registry.registry.build_public`)."""
        src = Path(path) if path is not None else self.local_copy()
        trace = import_path(src, self.importer)
        source = {**trace.card.source, "url": self.url, "repository": self.repository, "commit": self.commit,
                  "path": self.path_in_repo, "built_from": str(src), "build_revision": self.build_revision}
        extra = {**self.card.extra, **({"sources": trace.sources} if trace.sources is not None else {})}
        card = dataclasses.replace(self.card, source=source, fingerprint=trace.fingerprint,
                                   layer_names=trace.card.layer_names, extra=extra)
        return Trace.from_arrays(trace.counts, trace.steps, card, source=str(src), extras=trace.extras)

    def built_revision(self, card: Card) -> int:
        """The build revision a stored build's card records (1: built before revisions were recorded)."""
        revision = card.source.get("build_revision", 1)
        return revision if isinstance(revision, int) and not isinstance(revision, bool) else 1

    def fetch(self, timeout: float = 60.0) -> Path:
        """Download the upstream archive into the data home's sources folder."""
        dest_dir = sources_dir() / self.id
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / Path(self.url).name
        with tempfile.NamedTemporaryFile(dir=dest_dir, delete=False) as tmp:
            try:
                with urllib.request.urlopen(self.url, timeout=timeout) as resp:
                    shutil.copyfileobj(resp, tmp)
            except BaseException:
                os.unlink(tmp.name)
                raise
        os.replace(tmp.name, dest)
        return dest


SMARTMOE_AE = PublicSource(
    id="smartmoe-ae",
    title="SmartMoE-AE expert-selection trace of a GPT-MoE training run",
    url="https://github.com/thu-pacman/SmartMoE-AE/archive/e19b3a994db5.tar.gz",
    repository="thu-pacman/SmartMoE-AE",
    commit="e19b3a994db5",
    path_in_repo="moe_trace",
    licence="GPL-3.0",
    importer="fastmoe",
    archive_name="moe_trace.tar.xz",
    build_revision=2,
    card=Card(
        id="smartmoe-ae",
        version=1,
        title="SmartMoE-AE expert-selection trace of a GPT-MoE training run",
        licence="GPL-3.0",
        model=ModelInfo(moe_layers=24, experts=32, top_k=2, tokens_per_step=131072),
        step_unit="training iteration",
        notes=(
            "Artifact of the ATC'23 paper 'SmartMoE: Efficiently Training Sparsely-Activated Models through "
            "Combining Static and Dynamic Parallelization'. FastMoE FileGate tables of a GPT-MoE trained with "
            "FastMoE/Megatron on 16 data-parallel ranks x 4 micro-batches; every 10th iteration recorded "
            "(1..5001). Each micro-batch routes 2048 tokens x top-2 = 4096 slots, so 262,144 slots per layer per "
            "record. The exact model configuration (width, router, aux loss) is not documented upstream; loads are "
            "strongly skewed, so no strong balancing loss is apparent."
        ),
    ),
)

PUBLIC: dict[str, PublicSource] = {s.id: s for s in (SMARTMOE_AE,)}
