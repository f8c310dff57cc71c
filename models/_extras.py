"""What a predictor adds to its MLflow run: the return value of ``mlflow_extras(folder)``.

The runner calls ``predictor.mlflow_extras(folder)`` after the evaluation, with the run's
folder, and logs what comes back: ``{"metrics": {name: value}, "artifacts": [paths],
"curves": {name: [values per epoch]}}``. :func:`report` writes the files and builds that.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable


def report(
    folder: Path,
    *,
    metrics: dict[str, float] | None = None,
    curves: dict[str, list[float]] | None = None,
    json_files: dict[str, Any] | None = None,
    files: dict[str, Callable[[Path], None]] | None = None,
) -> dict[str, Any]:
    """`json_files`: name -> data written as JSON; `files`: name -> callable(path) writing it (a checkpoint)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in (json_files or {}).items():
        (folder / name).write_text(json.dumps(data, indent=2, default=str))
        paths.append(folder / name)
    for name, write in (files or {}).items():
        write(folder / name)
        paths.append(folder / name)
    return {"metrics": dict(metrics or {}), "artifacts": [str(p) for p in paths], "curves": dict(curves or {})}
