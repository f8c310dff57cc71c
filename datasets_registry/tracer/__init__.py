"""The tracer: real expert-load traces from MoE language models the project trains.

* :mod:`.config` -- :class:`TracerConfig` and the presets (``tiny-cpu``, ``gpt3-125m-16e``,
  ``gpt3-125m-128e``, ``gpt3-125m-64e-ds``, ``gpt3-350m-128e``);
* :mod:`.model` -- a GPT-style decoder with an MoE FFN every other layer (softmax top-k, Switch
  top-1, hash, expert-choice and DeepSeekMoE routers, shared experts, the auxiliary-loss-free
  expert bias; capacity and drops; batched expert matmuls);
* :mod:`.train` -- :class:`Tracer`: trains on the Python standard library (byte level; a corpus
  schedule can switch to installed documentation) and records per-step, per-layer expert counts
  before capacity drops, resumably, with optional probe batches of held-out text;
* :mod:`.recorder` -- :class:`LoadRecorder`: forward hooks that record the load of anyone's MoE
  model (router logits or DeepSpeed-style ``exp_counts``) into the same trace format;
* :mod:`.plot` -- load proportions over steps, one panel per layer.

Nothing here imports torch at package import time except :mod:`.model`, :mod:`.train` and
:mod:`.recorder` themselves.
"""

from .config import PRESETS, ROUTERS, TracerConfig, get_preset

__all__ = ["PRESETS", "ROUTERS", "TracerConfig", "get_preset"]
