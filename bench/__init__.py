"""moe-load-bench's harness. ``from bench import run, load_results`` is the Python API (:mod:`bench.api`).

Names are imported on first use, so that ``python -m bench --help`` stays fast.
"""

__all__ = ["run", "load_results", "RunResult"]


def __getattr__(name: str):
    if name in ("run", "load_results"):
        from . import api

        return getattr(api, name)
    if name == "RunResult":
        from .results import RunResult

        return RunResult
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
