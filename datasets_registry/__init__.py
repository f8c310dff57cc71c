"""Expert-load traces: the trace model, its on-disk form, the registry of datasets, importers, tracer."""

from .registry import DEFAULT_DATASET, add, data_home, load, resolve
from .trace import Card, ModelInfo, Trace, TraceError

__all__ = ["Card", "ModelInfo", "Trace", "TraceError", "load", "add", "resolve", "data_home", "DEFAULT_DATASET"]
