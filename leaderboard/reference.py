"""The committed leaderboard: the zoo of ``leaderboard/zoo.yaml`` on the suite ``moe-load-v2``, from result files.

Every number of the committed ``leaderboard.{md,csv}`` comes from the submission files in
``leaderboard/submissions/`` (one per model: :mod:`bench.submission`), so the board rebuilds in
seconds and anyone can check it:

- ``python -m bench leaderboard --write`` (``make leaderboard``) rebuilds the board from those files;
- ``python -m bench leaderboard --write --refresh`` (``make zoo``) first writes the file of every zoo
  model that has none (or whose file no longer loads), running what is not cached in the data home
  (hours of CPU for the library models and the LSTM), then rebuilds the board;
- ``python -m bench submit --verify leaderboard/submissions/FILE`` re-runs a sample of a file's
  tasks from scratch and refuses it if a number differs.

To put a model on the committed board, add it to ``zoo.yaml`` and run ``make zoo``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

#: Where the committed files live (this package's folder, in a checkout the repository's `leaderboard/`).
OUT_DIR = Path(__file__).resolve().parent
ZOO = OUT_DIR / "zoo.yaml"
SUBMISSIONS = OUT_DIR / "submissions"
SUITE = "moe-load-v2"


def zoo_models() -> list[tuple[str, dict]]:
    """(model, params) of every model of the zoo file, in its order."""
    from bench import grid

    config = grid.load(ZOO)
    return [(m["name"], params) for m in config.models for params in grid.param_sets(m.get("params") or {})]


def submission_path(model: str) -> Path:
    """The committed file of a zoo model: its name with anything but letters, digits, '.', '_' and '-' as '-',
    gzip-compressed (``.json.gz``: the zoo's files would be 14 MB as plain JSON)."""
    return SUBMISSIONS / (re.sub(r"[^A-Za-z0-9._-]+", "-", model) + ".json.gz")


def refresh(tracking_uri: str | None = None, say: Callable[[str], None] = lambda s: None, limits=None) -> list[Path]:
    """Write the submission file of every zoo model that has none, whose file does not load, or whose file is of
    another suite; returns them."""
    from bench import submission

    written = []
    for model, params in zoo_models():
        path = submission_path(model)
        if path.exists():
            try:
                suite = submission.load(path).suite.name
            except submission.SubmissionError as exc:
                say(f"{path}: {'; '.join(exc.problems)}: submitting again")
            else:
                if suite == SUITE:
                    continue
                say(f"{path}: a submission to {suite}, not {SUITE}: submitting again (cached runs are reused)")
        say(f"submitting {model} {params or ''} on {SUITE}")
        done = submission.submit(model, SUITE, params=params, limits=limits, tracking_uri=tracking_uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        done.save(path)
        written.append(path)
        say(f"wrote {path}")
    return written
