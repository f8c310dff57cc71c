"""The committed leaderboard: reference models on the built-in datasets, default task.

``python -m bench leaderboard --write`` (``make leaderboard``) runs every reference model on
every reference dataset with the default task (cached runs are reused; a cached run missing from
the tracking store is logged to it), then writes ``leaderboard/leaderboard.{md,csv,html}`` from
exactly those (dataset, task, model, params) identities, so other runs in the store never leak
into the committed files. To put a model on the committed board, add it to
:data:`REFERENCE_MODELS` and rerun the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

#: (model, params) run on every reference dataset.
REFERENCE_MODELS: list[tuple[str, dict]] = [("sw_avg", {}), ("ema", {}), ("last", {})]

#: Where the committed files live (this package's folder, in a checkout the repository's `leaderboard/`).
OUT_DIR = Path(__file__).resolve().parent


def reference_datasets() -> list[str]:
    """The default dataset plus every built-in trace (newest version of each)."""
    from datasets_registry import registry

    builtin = sorted({e.id for e in registry.entries() if e.kind == "builtin"})
    return [registry.DEFAULT_DATASET] + [d for d in builtin if d != registry.DEFAULT_DATASET]


def refresh(tracking_uri: str | None = None, datasets: list[str] | None = None,
            say: Callable[[str], None] = lambda s: None) -> set[tuple]:
    """Run (or reuse) the reference runs; returns their leaderboard identities."""
    from bench import runner, tracking

    from .build import identity

    identities = set()
    for dataset in datasets or reference_datasets():
        for model, params in REFERENCE_MODELS:
            result = runner.run(model, dataset, params=params, track=True, tracking_uri=tracking_uri)
            if not tracking.has_run(result.mlflow_run_id, tracking_uri):
                result = runner.log(result, tracking_uri)
            say(f"{result.model} on {result.dataset}@{result.dataset_version}: run {result.mlflow_run_id}"
                + (" (cached)" if result.cached else ""))
            identities.add(identity(result))
    return identities
