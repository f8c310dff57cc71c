"""The serving engines' own expert-load estimators, as they ship: the baselines a forecast has to beat.

Each engine keeps running token counts per (layer, expert), turns them into an estimate at fixed
points of its pass counter and re-places experts from it; the placement then stands until the
next re-estimation. As a forecaster, an engine therefore predicts, at an origin, the estimate it
made at its last re-estimation point at or before that origin, held constant over the horizon
(before its first one: nothing, i.e. the uniform share of its initial, load-blind placement).

Passes are counted from the trace's first record (pass 0) in iterations, and a window of ``W``
passes before a point ``r`` covers the records with ``r - W <= step < r``: on a trace recorded
every 10th iteration, the sampled records of those passes. Because the estimate at an origin is
a function of the past alone (and of the origin's iteration), the predictors are replayable.

Sources (read on each engine's GitHub default branch; the commit is that of the file read):

- SGLang, ``sgl-project/sglang``: ``python/sglang/srt/server_args.py`` @ 001067f
  (``eplb_rebalance_num_iterations = 1000``; ``expert_distribution_recorder_buffer_size``
  unset, taken from ``eplb_rebalance_num_iterations`` by ``_handle_expert_distribution_metrics``);
  ``python/sglang/srt/eplb/eplb_manager.py`` @ 53e29da (rebalances after every
  ``eplb_rebalance_num_iterations`` forward passes, the first at the end of pass 1,000 counted
  from 0; asserts the buffer is not longer than that); ``python/sglang/srt/eplb/expert_distribution.py``
  @ dd780ab (``_StatAccumulator``: a circular buffer of per-pass logical counts, summed over the
  buffer by the ``deepseek`` rebalance algorithm).
- vLLM, ``vllm-project/vllm``: ``vllm/config/parallel.py`` @ 840e797 (``EPLBConfig``:
  ``window_size = 1000``, ``step_interval = 3000``; vLLM 0.9-0.10 had the same defaults as
  ``ParallelConfig.eplb_window_size`` / ``eplb_step_interval``); ``vllm/distributed/eplb/eplb_state.py``
  @ 50feac9 (the rearrangement counter starts at ``step_interval - step_interval // 4``, so the
  first rearrangement comes after 750 passes and then every 3,000; the load is
  ``logical_expert_load_window.sum(dim=0)`` over the ``window_size`` most recent passes).
- TensorRT-LLM, ``NVIDIA/TensorRT-LLM``: ``cpp/tensorrt_llm/kernels/moeLoadBalance/moeLoadBalanceCommon.h``
  @ 29ddc79 (``MoeLoadBalanceStatisticInfo.decayFactor = 0.9f``); ``moeLoadBalanceKernels.cu``
  @ 004d78b (``loadFactor = loadFactor * decayFactor + tokenCount`` every pass);
  ``cpp/tensorrt_llm/runtime/moeLoadBalancer/moeLoadBalancer.cpp`` @ 65b31db (each layer's
  placement is recomputed from its load factor on its turn in a round-robin plan of
  ``ceil(L / layer_updates_per_iter)`` passes, plus one idle pass when the plan's first and last
  passes update equally many layers, and the load factor is cleared after each update);
  ``tensorrt_llm/_torch/modules/fused_moe/moe_load_balancer.py`` @ 5685103
  (``layer_updates_per_iter``; its config default 0 turns online updates off).
- DeepSeek's EPLB (``deepseek-ai/EPLB``, README.md @ d52c72d) takes the load estimate as an input
  and leaves prediction to the user ("a common method is to use moving average of historical
  statistics"): that is ``sw_avg`` (or ``ema``), not an engine estimator of its own.
"""

from __future__ import annotations

import math

import numpy as np

from . import kernels
from .base import ParamError, Predictor


def shares(weighted_counts: np.ndarray) -> np.ndarray:
    """Per-layer proportions of ``[L, E]`` weighted counts; uniform for a layer with none."""
    total = weighted_counts.sum(axis=-1, keepdims=True)
    uniform = np.full_like(weighted_counts, 1.0 / weighted_counts.shape[-1], dtype=np.float64)
    return np.divide(weighted_counts, total, out=uniform, where=total > 0)


class EngineEstimator(Predictor):
    """An engine's estimate as it stands at the origin; subclasses say when it was made and how."""

    replayable = True  # the estimate is a function of the records before the origin and of its iteration

    def origin_step(self) -> int:
        """The iteration of the first record to forecast (the pass the standing estimate is used for)."""
        if self.target_steps is not None and len(self.target_steps):
            return int(self.target_steps[0])
        return int(self.history.steps[-1]) + 1

    def records_between(self, first_step: float, end_step: int) -> slice:
        """History records with ``first_step <= step < end_step``."""
        steps = self.history.steps
        return slice(int(np.searchsorted(steps, first_step, side="left")),
                     int(np.searchsorted(steps, end_step, side="left")))

    def estimate(self, now: int) -> np.ndarray:
        """``[L, E]`` proportions the engine's placement at iteration `now` rests on."""
        raise NotImplementedError

    def predict(self, records):
        return self.repeat(self.estimate(self.origin_step()), records)


class PeriodicWindowSum(EngineEstimator):
    """Token counts summed over the last `window` passes, re-estimated every `every` passes from pass `first`.

    Subclasses map an engine's own settings onto (first, every, window); window < 0 sums every pass so far.
    """

    layerwise = True  # TensorRT-LLM's is not: its round-robin plan depends on the number of layers

    def schedule(self) -> tuple[int, int, int]:
        """(first, every, window) in passes: the first estimate takes effect at pass `first`."""
        raise NotImplementedError

    def start(self, layers, experts, training=()):
        self.schedule()  # refuses settings the engine refuses, before any origin
        super().start(layers, experts, training)

    def estimate(self, now: int) -> np.ndarray:
        first, every, window = self.schedule()
        start = int(self.history.steps[0])
        if now < start + first:
            return shares(np.zeros((self.history.layers, self.history.experts)))
        point = start + first + (now - start - first) // every * every
        span = self.records_between(point - window if window >= 0 else -math.inf, point)
        if span.start == span.stop:  # a sparse trace with no record in the window: the last one before
            span = slice(max(span.stop - 1, 0), span.stop)
        return shares(self.history.counts[span].sum(axis=0, dtype=np.float64))

    def predict_all(self, counts, proportions, steps, origins, origin_steps):
        """Every origin's window from one cumulative sum of the counts (sums of whole counts are exact)."""
        first, every, window = self.schedule()
        start, csum = int(steps[0]), kernels.count_cumsum(counts)
        out = np.empty((len(origins),) + counts.shape[1:])
        for i, now in enumerate(np.asarray(origin_steps).tolist()):
            if now < start + first:
                out[i] = shares(np.zeros(counts.shape[1:]))
                continue
            point = start + first + (now - start - first) // every * every
            lo = int(np.searchsorted(steps, point - window, side="left")) if window >= 0 else 0
            hi = int(np.searchsorted(steps, point, side="left"))
            if lo == hi:
                lo = max(hi - 1, 0)
            out[i] = shares((csum[hi] - csum[lo]).astype(np.float64))
        return out


class SGLangEPLB(PeriodicWindowSum):
    """SGLang's EPLB: counts of the last 1,000 forward passes, re-estimated every 1,000 passes.

    ``eplb_rebalance_num_iterations`` (1,000) sets both the rebalance interval and, unset, the
    recorder's circular buffer (``expert_distribution_recorder_buffer_size``, -1: unbounded), whose
    per-pass counts are summed. The manager's generator rebalances at the end of pass 1,000
    (0-based), so the first estimate serves from pass 1,001. Module docstring: the files and commits.
    """

    name = "sglang"
    source = ("sgl-project/sglang: python/sglang/srt/server_args.py@001067f, srt/eplb/eplb_manager.py@53e29da, "
              "srt/eplb/expert_distribution.py@dd780ab")
    defaults = {"rebalance_num_iterations": 1000, "buffer_size": 1000}

    def schedule(self):
        every, buffer = self.params["rebalance_num_iterations"], self.params["buffer_size"]
        if every < 1 or buffer == 0 or buffer < -1 or buffer > every:
            raise ParamError(f"sglang: rebalance_num_iterations={every} must be positive and buffer_size={buffer} "
                             f"-1 or in 1..rebalance_num_iterations (SGLang asserts it)")
        return every + 1, every, buffer


class VLLMEPLB(PeriodicWindowSum):
    """vLLM's EPLB: counts of the last 1,000 passes (window_size), rearranged every 3,000 (step_interval).

    The rearrangement counter starts three quarters of the way, so the first rearrangement comes
    after ``step_interval // 4`` passes (750), then every ``step_interval``. Module docstring: the
    files and commits.
    """

    name = "vllm"
    source = "vllm-project/vllm: vllm/config/parallel.py@840e797 (EPLBConfig), distributed/eplb/eplb_state.py@50feac9"
    defaults = {"window_size": 1000, "step_interval": 3000}

    def schedule(self):
        window, interval = self.params["window_size"], self.params["step_interval"]
        if window < 1 or interval < 1:
            raise ParamError(f"vllm: window_size={window} and step_interval={interval} must be positive")
        return interval - max(0, interval - interval // 4), interval, window


class TensorRTLLMLoadBalancer(EngineEstimator):
    """TensorRT-LLM's online MoE load balancer: counts decayed by 0.9 per pass since the layer's last update.

    Every pass, each layer's load factor becomes ``0.9 * factor + counts``; a layer's placement is
    recomputed from it on the layer's turn in a round-robin plan that updates
    ``layer_updates_per_iter`` layers a pass (1: the fewest; the config's default 0 turns online
    updates off), and the factor is then cleared. The update at pass t serves from pass t + 1.
    Module docstring: the files and commits.
    """

    name = "trtllm"
    source = ("NVIDIA/TensorRT-LLM: cpp/tensorrt_llm/kernels/moeLoadBalance/moeLoadBalanceCommon.h@29ddc79, "
              "moeLoadBalanceKernels.cu@004d78b, runtime/moeLoadBalancer/moeLoadBalancer.cpp@65b31db")
    defaults = {"decay_factor": 0.9, "layer_updates_per_iter": 1}

    def plan(self, layers: int) -> tuple[int, int]:
        """(passes of the round-robin plan with updates, passes of one whole cycle) for `layers` layers."""
        per_pass = self.params["layer_updates_per_iter"]
        if per_pass < 1 or not 0 < self.params["decay_factor"] <= 1:
            raise ParamError(f"trtllm: layer_updates_per_iter={per_pass} must be at least 1 (0 is static routing) "
                             f"and decay_factor={self.params['decay_factor']} in (0, 1]")
        passes = -(-layers // per_pass)
        first_size, last_size = len(range(0, layers, passes)), len(range(passes - 1, layers, passes))
        return passes, passes + (first_size == last_size)

    def start(self, layers, experts, training=()):
        self.plan(layers)  # refuses settings the engine refuses, before any origin
        super().start(layers, experts, training)

    def estimate(self, now: int) -> np.ndarray:
        h = self.history
        passes, cycle = self.plan(h.layers)
        start, out = int(h.steps[0]), np.empty((h.layers, h.experts))
        for layer in range(h.layers):
            turn = layer % passes  # the layer is updated at passes turn, turn + cycle, ...; each serves from the next
            if now < start + turn + 1:
                out[layer] = 1.0 / h.experts
                continue
            point = start + turn + 1 + (now - start - turn - 1) // cycle * cycle
            span = self.records_between(point - cycle, point)
            if span.start == span.stop:
                span = slice(max(span.stop - 1, 0), span.stop)
            weights = self.params["decay_factor"] ** (point - 1 - h.steps[span]).astype(np.float64)
            out[layer] = shares(np.tensordot(weights, h.counts[span, layer], axes=1))
        return out
