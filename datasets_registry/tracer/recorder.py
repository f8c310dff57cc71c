"""Record the expert load of anyone's MoE model with forward hooks, into a registry trace.

:class:`LoadRecorder` attaches to the gate / router modules of an existing PyTorch MoE model and
writes the same format as the tracer (``counts[T, L, E]``, ``steps[T]`` and a card). Two kinds
of module are understood:

* ``kind="logits"``: the module's output is (or contains) router logits, ``(tokens, E)`` as in
  the Mixtral code of Hugging Face transformers or ``(batch, seq, E)`` as its docs state. The
  load is ``bincount(topk(softmax(logits), top_k).indices)``.
* ``kind="counts"``: the module returns per-expert counts ``[E]``, as DeepSpeed-MoE's gate and
  ``MoE.forward`` do (``exp_counts``, counted before capacity dropping).

Where the output is a tuple, ``select`` says which element to use (an index or a function);
by default the recorder takes the element whose last dimension is ``E`` (logits) or the 1-D
tensor of length ``E`` (counts), and refuses to guess if there are several.

Counts are summed on the device over every forward call between two :meth:`LoadRecorder.step`
calls (micro-batches, gradient accumulation), then written into a device buffer and copied to
the host in blocks of ``flush_every`` steps: recording does not synchronise with the GPU
every step.

Example (Hugging Face Mixtral-style model; any module that outputs router logits works)::

    from datasets_registry.tracer.recorder import LoadRecorder

    gates = {name: m for name, m in model.named_modules() if name.endswith("mlp.gate")}
    rec = LoadRecorder(num_experts=8, top_k=2).attach(gates, kind="logits")
    for it, batch in enumerate(loader):
        loss = model(**batch).loss
        loss.backward(); opt.step(); opt.zero_grad()
        rec.step(it)                      # close the record of iteration `it`
    rec.detach()
    trace = rec.to_trace("my-mixtral-run", router="softmax-topk", tokens_per_step=...)
    rec.add("my-mixtral-run")             # or rec.save(folder); python -m bench datasets list

DeepSpeed-MoE (``deepspeed.moe.layer.MoE`` returns ``(output, l_aux, exp_counts)``)::

    moes = {n: m for n, m in model.named_modules() if type(m).__name__ == "MoE"}
    rec = LoadRecorder(num_experts=16).attach(moes, kind="counts", select=2)
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from ..trace import Card, ModelInfo, Trace
from .buffer import StepBuffer

Selector = int | Callable[[Any], torch.Tensor] | None


class LoadRecorder:
    """Forward hooks that turn router outputs into per-step expert counts.

    ``num_experts``: E. ``top_k``: experts per token (needed for ``kind="logits"``).
    ``flush_every``: steps kept on the device before an asynchronous copy to the host.
    """

    def __init__(self, num_experts: int, top_k: int | None = None, flush_every: int = 100):
        if num_experts < 1:
            raise ValueError("num_experts must be >= 1")
        self.E = int(num_experts)
        self.top_k = top_k
        self.flush_every = flush_every
        self.names: list[str] = []
        self._kinds: list[tuple[str, Selector, int | None]] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._acc: torch.Tensor | None = None  # [L, E] int64 on the device, this step's counts
        self._buffer: StepBuffer | None = None
        self._steps: list[int] = []
        self._calls = 0
        self.enabled = True

    # -- attaching -----------------------------------------------------------------------
    def attach(
        self,
        modules: Mapping[str, nn.Module] | Iterable[nn.Module] | nn.Module,
        kind: str = "logits",
        select: Selector = None,
        top_k: int | None = None,
    ) -> "LoadRecorder":
        """Hook each module as one MoE layer, in the order given. Returns self."""
        if kind not in ("logits", "counts"):
            raise ValueError("kind must be 'logits' or 'counts'")
        if self._acc is not None:
            raise RuntimeError("attach every layer before the first forward pass")
        k = top_k if top_k is not None else self.top_k
        if kind == "logits" and not k:
            raise ValueError("kind='logits' needs top_k")
        if isinstance(modules, nn.Module):
            modules = [modules]
        items = (
            list(modules.items())
            if isinstance(modules, Mapping)
            else [(f"layer{len(self.names) + i}", m) for i, m in enumerate(modules)]
        )
        if not items:
            raise ValueError("no modules to attach to")
        for name, module in items:
            layer = len(self.names)
            self.names.append(name)
            self._kinds.append((kind, select, k))
            self._handles.append(module.register_forward_hook(self._make_hook(layer)))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> "LoadRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    # -- hooks ---------------------------------------------------------------------------
    def _pick(self, output: Any, kind: str, select: Selector) -> torch.Tensor:
        if callable(select):
            return select(output)
        if isinstance(select, int):
            return output[select]
        if isinstance(output, torch.Tensor):
            return output
        if isinstance(output, Mapping):
            output = list(output.values())
        if isinstance(output, (tuple, list)):
            if kind == "logits":
                cands = [
                    t
                    for t in output
                    if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == self.E and t.is_floating_point()
                ]
            else:
                cands = [t for t in output if isinstance(t, torch.Tensor) and t.dim() == 1 and t.shape[0] == self.E]
            if len(cands) == 1:
                return cands[0]
            raise ValueError(
                f"cannot tell which output holds the {kind} ({len(cands)} candidates); pass select=INDEX or a function"
            )
        raise TypeError(f"unsupported module output of type {type(output).__name__}; pass select=")

    def _make_hook(self, layer: int):
        def hook(module, args, output):
            if not self.enabled:
                return
            kind, select, k = self._kinds[layer]
            t = self._pick(output, kind, select).detach()
            if kind == "logits":
                if t.shape[-1] != self.E:
                    raise ValueError(f"{self.names[layer]}: logits have {t.shape[-1]} experts, expected {self.E}")
                idx = torch.softmax(t.reshape(-1, self.E).float(), dim=-1).topk(k, dim=-1).indices.reshape(-1)
                counts = torch.zeros(self.E, dtype=torch.int64, device=t.device).scatter_add_(
                    0, idx, torch.ones_like(idx)
                )
            else:
                if t.numel() != self.E:
                    raise ValueError(f"{self.names[layer]}: counts have {t.numel()} entries, expected {self.E}")
                counts = t.reshape(self.E).to(torch.int64)
            acc = self._accumulator(counts.device)
            acc[layer] += counts.to(acc.device, non_blocking=True)
            self._calls += 1

        return hook

    def _accumulator(self, device: torch.device) -> torch.Tensor:
        if self._acc is None:
            L = len(self.names)
            self._acc = torch.zeros(L, self.E, dtype=torch.int64, device=device)
            self._buffer = StepBuffer({"counts": ((L, self.E), torch.int64)}, self.flush_every, device)
        return self._acc

    # -- steps ---------------------------------------------------------------------------
    def step(self, step: int | None = None) -> None:
        """Close the current record (everything since the last call) as iteration `step`
        (default: previous + 1). Steps with no forward pass are skipped."""
        if step is None:
            step = self._steps[-1] + 1 if self._steps else 0
        if self._steps and step <= self._steps[-1]:
            raise ValueError(f"steps must increase; got {step} after {self._steps[-1]}")
        if self._acc is None or self._calls == 0:
            return
        self._buffer.push(counts=self._acc)
        self._acc.zero_()
        self._steps.append(int(step))
        self._calls = 0

    def counts(self) -> np.ndarray:
        """Recorded counts, int64 [T, L, E] (waits for the device)."""
        if self._buffer is None:
            return np.zeros((0, len(self.names), self.E), dtype=np.int64)
        return self._buffer.arrays()["counts"]

    def steps(self) -> np.ndarray:
        return np.asarray(self._steps, dtype=np.int64)

    # -- output --------------------------------------------------------------------------
    def to_trace(self, trace_id: str = "recorded", card: Card | None = None, **model_info: Any) -> Trace:
        """A validated trace of what was recorded. `model_info`: fields of :class:`ModelInfo`
        (router, top_k, aux_loss, capacity_factor, tokens_per_step, layers)."""
        counts = self.counts()
        if counts.shape[0] == 0:
            raise ValueError("nothing recorded: call step() after each iteration")
        if card is None:
            info = {"top_k": self.top_k, **model_info}
            card = Card(
                id=trace_id,
                title=f"recorded with LoadRecorder ({len(self.names)} MoE layers, {self.E} experts)",
                source={
                    "generator": "datasets_registry.tracer.recorder.LoadRecorder",
                    "kinds": sorted({k for k, _, _ in self._kinds}),
                },
                model=ModelInfo(moe_layers=len(self.names), experts=self.E, **info),
                layer_names=list(self.names),
            )
        return Trace.from_arrays(counts, self.steps(), card, source=f"recorder {trace_id}")

    def save(self, folder: str | os.PathLike, trace_id: str = "recorded", **model_info: Any):
        from ..storage import save

        return save(self.to_trace(trace_id, **model_info), folder)

    def add(self, trace_id: str, version: int | None = None, **model_info: Any):
        """Store as a user dataset (``registry.add``); returns the registry entry."""
        from ..registry import add

        return add(self.to_trace(trace_id, **model_info), trace_id, version)
