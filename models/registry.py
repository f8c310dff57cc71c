"""Find a predictor class from what the user typed after `--model`.

- a built-in name (``sw_avg``, ``arima``, ...): :data:`BUILTIN`, imported only when chosen;
- a name registered by an installed package under the entry-point group
  ``moe_load_bench.predictors``;
- ``path/to/file.py:ClassName``: a predictor defined in a file;
- ``sktime:Forecaster`` / ``darts:Model``: a forecaster of those libraries through an adapter.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from .base import Predictor

ENTRY_POINT_GROUP = "moe_load_bench.predictors"

#: name -> "module:Class", imported on use.
BUILTIN: dict[str, str] = {
    "sw_avg": "models.baselines:SlidingWindowAverage",
    "last": "models.baselines:LastValue",
    "ema": "models.baselines:ExponentialMovingAverage",
    "static": "models.baselines:StaticShare",
    "sw_sum": "models.baselines:SlidingWindowSum",
    "sw_quantiles": "models.probabilistic:SlidingWindowQuantiles",
    "dirmult": "models.probabilistic:DirichletMultinomial",
    "arima": "models.arima:Arima",
    "lstm": "models.lstm:LSTMPredictor",
    "sglang": "models.engines:SGLangEPLB",
    "vllm": "models.engines:VLLMEPLB",
    "trtllm": "models.engines:TensorRTLLMLoadBalancer",
}

#: The serving engines' own estimators (models/engines.py): the baselines a forecast has to beat.
ENGINE_ESTIMATORS = ("sglang", "vllm", "trtllm")

#: "prefix:" -> "module:function(name) -> class" for library adapters.
ADAPTERS: dict[str, str] = {
    "sktime": "models.adapters.sktime:adapter_class",
    "darts": "models.adapters.darts:adapter_class",
}


def _import(target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _from_file(path: Path, cls_name: str) -> type:
    if not path.is_file():
        raise LookupError(f"{path}: no such predictor file")
    mod_name = f"_moe_load_bench_plugin_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    if not hasattr(module, cls_name):
        raise LookupError(f"{path}: defines no {cls_name!r}")
    return getattr(module, cls_name)


def plugin_names() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[str]:
    return sorted(set(BUILTIN) | set(plugin_names()))


def spec_kind(spec: str) -> str:
    """What `spec` names, decided without importing or running anything it points to:
    "builtin", "adapter" (sktime:/darts:), "entry_point" (an installed plugin) or "file" (path/file.py:Class)."""
    if spec in BUILTIN:
        return "builtin"
    if ":" in spec and spec.split(":", 1)[0] in ADAPTERS:
        return "adapter"
    if spec in plugin_names():
        return "entry_point"
    if ".py:" in spec:
        return "file"
    raise LookupError(
        f"unknown model {spec!r}; available: {', '.join(available())}, sktime:NAME, darts:NAME, path/to/file.py:Class"
    )


#: What runs in a sandboxed worker process: code that is not part of this package.
THIRD_PARTY = ("entry_point", "file")


def check_name(name: str, spec: str) -> None:
    """A predictor that is not built in cannot go by a built-in's name (it would take its place on the leaderboard)."""
    if name in BUILTIN:
        raise LookupError(f"{spec}: the name {name!r} belongs to a built-in predictor; give the class another `name`")


def about(name: str, doc: str, defaults: dict[str, Any], needs_training: bool, fits: bool | None = None,
          source: str = "") -> dict:
    """What `bench predictors` says of a predictor: a one-line description (its docstring's first line), its
    parameters with their defaults, whether it needs training data (`fits`: whether it can use any, where
    known), whether it uses a GPU (a `device` parameter: where torch sees one, as the LSTM) and, for an
    engine's estimator, the source files its defaults were read from."""
    lines = (doc or "").strip().splitlines()
    training = "required (--train DATASET)" if needs_training else (
        "optional (--train DATASET: it fits on it)" if fits else "not used" if fits is False else "not required")
    gpu = f"optional (parameter device, default {defaults['device']!r})" if "device" in defaults else "no"
    return {"name": name, "description": lines[0].strip() if lines else "", "parameters": dict(defaults),
            "training_data": training, "gpu": gpu, "source": source or None}


def about_class(cls: type[Predictor], name: str | None = None) -> dict:
    """:func:`about` of a predictor class this process may import (a built-in, an adapter)."""
    import inspect

    return about(name or cls.name, inspect.getdoc(cls) or "", cls.defaults, bool(cls.needs_training),
                 fits=cls.fit is not Predictor.fit, source=cls.source)


def predictor_class(spec: str) -> type[Predictor]:
    """The predictor class that `spec` names (see the module docstring)."""
    if spec in BUILTIN:
        cls = _import(BUILTIN[spec])
    elif spec in plugin_names():
        cls = plugin_names()[spec].load()
    elif ":" in spec and spec.split(":", 1)[0] in ADAPTERS:
        prefix, name = spec.split(":", 1)
        cls = _import(ADAPTERS[prefix])(name)
    elif ".py:" in spec:
        path, _, cls_name = spec.rpartition(":")
        cls = _from_file(Path(path), cls_name)
    else:
        raise LookupError(
            f"unknown model {spec!r}; available: {', '.join(available())}, sktime:NAME, darts:NAME, "
            f"path/to/file.py:Class"
        )
    if not (isinstance(cls, type) and issubclass(cls, Predictor)):
        raise LookupError(f"{spec!r} is not a moe-load-bench Predictor subclass")
    if not cls.name:
        cls.name = spec
    return cls
