"""Inference traces: serve a tracer-trained model on a stream of requests, batched as a serving engine batches.

**Requests.** A closed loop of ``concurrency`` clients (as vLLM's ``benchmark_serving --max-concurrency``):
each client sends a request, waits for it to finish, and sends the next. A request is a window of held-out
text from one workload source (``python``: the Python standard library; ``text``: documentation installed
under ``/usr/share``; ``c``: C headers under ``/usr/include``, a language the model never trained on), the
source drawn at the pass the request arrives from the *workload mixture*, a schedule in the tracer's corpus
schedule form (``"0:python,1000:python+text,2000:text+c"``; a mix draws its sources with equal chance). The
prompt is ``prompt_min..prompt_max`` bytes, the output ``output_min..output_max`` bytes (uniform); the
output tokens are the text's own continuation (teacher forcing), so that decode tokens carry the routing of
real text rather than of a small byte-level model's samples.

**Batching** (continuous batching with chunked prefill, as vLLM's V1 scheduler and SGLang's): each forward
pass has a budget of ``max_batch_tokens`` tokens. Every running request past its prompt decodes one token;
then prompts take what is left of the budget in arrival order, a long prompt in chunks over several passes.
A pass is ``prefill`` (prompt tokens only), ``decode`` (decode tokens only) or ``mixed``.

**Routing.** MoE layers run without a capacity limit (serving engines run MoE dropless), in bf16 autocast on a
GPU (fp32 router) as the model trained. A pass recomputes each request's context (no KV cache): the routing of
its new tokens is the same, only the work differs.

**Recorded.** Per pass and MoE layer the tokens sent to each expert (``counts[T, L, E]``, a trace whose step
is the forward pass), with the pass kind, tokens, requests and decode tokens in ``extras.npz``; every
``sample_every`` passes the token-level routing of the whole pass (token id, previous token id, position,
request id, the top-k expert ids per MoE layer), so that ``bincount`` of a sampled pass's experts is that
pass's counts exactly. A **pre-gate** (:class:`PreGate`, after Pre-gated MoE, Hwang et al. 2024) runs in the
loop: for each MoE layer, a LayerNorm and linear gate (initialised from the layer's own) on the hidden state
that enters the block before it, trained online on earlier passes; its top-k predictions for the sampled
passes and its measured time per pass (the token-to-expert predictor's overhead on the critical path) are
recorded beside the routing: the model's internals it needs cannot be carried by a trace.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..token_sample import TOKEN_FIELDS
from ..trace import Card, ModelInfo, Trace
from .config import TracerConfig, format_schedule, parse_schedule, sources_at
from .corpus import corpus_for
from .model import MoEGPT

PASS_KINDS = ("prefill", "decode", "mixed")


@dataclass(frozen=True)
class ServeConfig:
    """A serving run: the workload mixture, the batching and what is sampled."""

    mixture: str = "0:python"  # workload sources by pass, the corpus schedule's form
    passes: int = 2000
    concurrency: int = 16  # clients in the closed loop (requests in flight)
    max_batch_tokens: int = 512  # token budget of a forward pass (vLLM max_num_batched_tokens)
    prompt_min: int = 32
    prompt_max: int = 256
    output_min: int = 16
    output_max: int = 128
    sample_every: int = 10  # token-level routing of every K-th pass (0: none)
    pregate_lr: float = 1e-3  # Adam step size of the online pre-gate
    seed: int = 1

    def __post_init__(self):
        parse_schedule(self.mixture)
        if min(self.passes, self.concurrency, self.max_batch_tokens, self.prompt_min, self.output_min) < 1:
            raise ValueError("passes, concurrency, max_batch_tokens, prompt_min and output_min must be >= 1")
        if self.prompt_max < self.prompt_min or self.output_max < self.output_min:
            raise ValueError("prompt_max and output_max must be at least their minimum")
        if self.sample_every < 0:
            raise ValueError("sample_every must be >= 0")

    @property
    def regime(self) -> str:
        return f"{self.max_batch_tokens} tokens a pass, {self.concurrency} requests in flight"


@dataclass
class Request:
    rid: int
    source: str
    tokens: np.ndarray  # uint8 [prompt + output]: the whole text, prompt first
    prompt: int
    done: int = 0  # tokens processed so far (prompt chunks and decode steps)

    @property
    def finished(self) -> bool:
        return self.done >= self.tokens.shape[0]


class Workload:
    """Requests from the mixture's sources: windows of each corpus's held-out files (all of `c`, never trained on)."""

    def __init__(self, cfg: ServeConfig, model_cfg: TracerConfig, corpus_root=None, text_roots=None):
        self.cfg, self.schedule = cfg, parse_schedule(cfg.mixture)
        self.rng = np.random.default_rng(cfg.seed)
        self.data: dict[str, np.ndarray] = {}
        self.info: dict[str, dict] = {}
        self.max_len = model_cfg.seq_len
        for name in dict.fromkeys(s for _, srcs in self.schedule for s in srcs):
            corpus = corpus_for(name, corpus_root, text_roots)
            if name == "c":
                self.data[name], held = corpus.data, {"held_out": "all of it: the tracer never trains on C"}
            else:
                _, self.data[name], held = corpus.split(model_cfg.holdout)
            self.info[name] = {**corpus.info, "held_out": held}
        self.next_id = 0

    def request(self, step: int) -> Request:
        c, rng = self.cfg, self.rng
        srcs = sources_at(self.schedule, step)
        source = srcs[int(rng.integers(len(srcs)))]
        prompt = int(rng.integers(c.prompt_min, c.prompt_max + 1))
        output = int(rng.integers(c.output_min, c.output_max + 1))
        total = min(prompt + output, self.max_len)
        prompt = min(prompt, total - 1)
        data = self.data[source]
        start = int(rng.integers(0, data.shape[0] - total))
        req = Request(self.next_id, source, data[start: start + total].copy(), prompt)
        self.next_id += 1
        return req


def schedule_pass(running: list[Request], budget: int) -> list[tuple[Request, int, int]]:
    """The work of one pass: ``(request, first, end)`` token ranges; decode tokens first, then prompt chunks in
    arrival order within the budget (continuous batching with chunked prefill)."""
    work = []
    for r in running:
        if r.done >= r.prompt and not r.finished and budget > 0:
            work.append((r, r.done, r.done + 1))
            budget -= 1
    for r in running:
        if r.done < r.prompt and budget > 0:
            n = min(r.prompt - r.done, budget)
            work.append((r, r.done, r.done + n))
            budget -= n
    return work


def pass_kind(work: list[tuple[Request, int, int]]) -> int:
    decode = any(a >= r.prompt for r, a, _ in work)
    prefill = any(a < r.prompt for r, a, _ in work)
    return PASS_KINDS.index("mixed" if decode and prefill else "decode" if decode else "prefill")


@contextlib.contextmanager
def capture_routing(model: MoEGPT):
    """Within the block, every MoE layer appends its routing decision ``idx[N, k]`` to the yielded list, in layer
    order, and runs without a capacity limit (dropless, as at inference)."""
    routed: list[torch.Tensor] = []
    saved = []
    for block in model.moe_blocks:
        moe = block.moe
        route = moe.route

        def capturing(x, ids, route=route):
            idx, w, probs = route(x, ids)
            routed.append(idx)
            return idx, w, probs

        saved.append((moe, moe.capacity_factor))
        moe.route = capturing  # an instance attribute: MoE.forward calls it instead of the method
        moe.capacity_factor = 0.0
    try:
        yield routed
    finally:
        for moe, cf in saved:
            del moe.route
            moe.capacity_factor = cf


def tap_blocks(model: MoEGPT) -> list[int]:
    """For each MoE layer, the block whose input the pre-gate reads: the block before it (the first block for an
    MoE layer at block 0)."""
    return [max(0, b.index - 1) for b in model.moe_blocks]


@torch.no_grad()
def route_pass(model: MoEGPT, ids: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Route a padded batch ``ids[R, S]`` and keep the tokens at flat positions `rows`: ``(experts[L, N, k],
    taps)``, taps being the hidden state entering each pre-gate's block at those tokens (``[N, d]`` per layer)."""
    R, S = ids.shape
    taps_at = tap_blocks(model)
    wanted = set(taps_at)
    seen: dict[int, torch.Tensor] = {}
    x = model.wte(ids) + model.wpe.weight[:S]
    amp = torch.autocast(device_type=ids.device.type, dtype=torch.bfloat16, enabled=ids.device.type == "cuda")
    with capture_routing(model) as routed, amp:
        for block in model.blocks:
            if block.index in wanted:
                seen[block.index] = x.reshape(R * S, -1)[rows].float()
            x = block(x, ids)[0]
    experts = torch.stack([idx[rows] for idx in routed])
    return experts, [seen[b] for b in taps_at]


class PreGate(nn.Module):
    """Token-to-expert prediction from an earlier hidden state: per MoE layer, the layer's LayerNorm and gate
    (copied at the start) applied to the hidden state entering the block before it, fine-tuned online."""

    def __init__(self, model: MoEGPT):
        super().__init__()
        self.k = model.cfg.top_k
        self.norms = nn.ModuleList()
        self.gates = nn.ModuleList()
        self.gate_fn = []
        for block in model.moe_blocks:
            if block.moe.gate is None:
                raise ValueError("the pre-gate needs a router with a gate (not hash)")
            norm = nn.LayerNorm(block.ln2.normalized_shape)
            norm.load_state_dict(block.ln2.state_dict())
            gate = nn.Linear(model.cfg.d_model, model.cfg.n_experts, bias=False)
            gate.load_state_dict(block.moe.gate.state_dict())
            self.norms.append(norm.float())
            self.gates.append(gate.float())
        self.biases = [b.moe.expert_bias for b in model.moe_blocks]
        self.sigmoid = model.cfg.gate_fn == "sigmoid"

    def logits(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        return self.gates[layer](self.norms[layer](hidden))

    @torch.no_grad()
    def predict(self, taps: list[torch.Tensor]) -> torch.Tensor:
        """Top-k expert ids per layer, ``[L, N, k]``, selected as the router selects (bias included)."""
        out = []
        for layer, h in enumerate(taps):
            z = self.logits(layer, h)
            scores = z.sigmoid() if self.sigmoid else z.softmax(dim=-1)
            if self.biases[layer] is not None:
                scores = scores + self.biases[layer]
            out.append(scores.topk(self.k, dim=-1).indices)
        return torch.stack(out)

    def loss(self, taps: list[torch.Tensor], experts: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of each layer's logits against the router's choice (k-hot over k)."""
        total = taps[0].new_zeros(())
        for layer, h in enumerate(taps):
            z = self.logits(layer, h)
            target = torch.zeros_like(z).scatter_(1, experts[layer], 1.0 / self.k)
            total = total - (target * F.log_softmax(z, dim=-1)).sum(dim=-1).mean()
        return total / len(taps)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def serve(
    model: MoEGPT,
    cfg: ServeConfig,
    device: str | torch.device = "cpu",
    corpus_root=None,
    text_roots=None,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Run the serving loop; returns the records (counts, per-pass extras, the token-level sample) and what to
    say of the run in the card."""
    device = torch.device(device)
    model = model.to(device).eval()
    mc = model.cfg
    work_src = Workload(cfg, mc, corpus_root, text_roots)
    pregate = PreGate(model).to(device)
    opt = torch.optim.Adam(pregate.parameters(), lr=cfg.pregate_lr)
    L, E, k = len(mc.moe_layer_ids), mc.n_experts, mc.top_k
    running = [work_src.request(0) for _ in range(cfg.concurrency)]
    rec = {n: [] for n in ("counts", "kind", "batch_tokens", "requests", "decode_tokens", "pregate_seconds",
                           "pregate_train_seconds", "pass_seconds")}
    sample: dict[str, list] = {n: [] for n in TOKEN_FIELDS}
    served = {"requests_finished": 0, "by_source": {}}
    agree = np.zeros(2)
    for step in range(cfg.passes):
        work = schedule_pass(running, cfg.max_batch_tokens)
        width = max(end for _, _, end in work)
        ids = torch.zeros(len(work), width, dtype=torch.long)
        rows, tok, prev, pos, rid = [], [], [], [], []
        for i, (r, a, end) in enumerate(work):
            ids[i, :end] = torch.from_numpy(r.tokens[:end].astype(np.int64))
            span = np.arange(a, end)
            rows.append(i * width + span)
            tok.append(r.tokens[a:end])
            prev.append(np.where(span > 0, r.tokens[np.maximum(span - 1, 0)], 0))
            pos.append(span)
            rid.append(np.full(end - a, r.rid))
        rows_np = np.concatenate(rows)
        _sync(device)
        t0 = time.perf_counter()
        experts, taps = route_pass(model, ids.to(device), torch.from_numpy(rows_np).to(device))
        _sync(device)
        t1 = time.perf_counter()
        predicted = pregate.predict(taps)
        _sync(device)
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)  # then learn from this pass, for the next ones
        pregate.loss(taps, experts).backward()
        opt.step()
        _sync(device)
        t3 = time.perf_counter()
        ex = experts.cpu().numpy()  # [L, N, k]
        counts = np.stack([np.bincount(ex[layer].ravel(), minlength=E) for layer in range(L)])
        pr = predicted.cpu().numpy()
        agree += [np.mean([len(set(a) & set(b)) for a, b in zip(ex[-1], pr[-1])]) / k, 1]
        rec["counts"].append(counts)
        rec["kind"].append(pass_kind(work))
        rec["batch_tokens"].append(rows_np.shape[0])
        rec["requests"].append(len(work))
        rec["decode_tokens"].append(sum(1 for r, a, _ in work if a >= r.prompt))
        rec["pregate_seconds"].append(t2 - t1)
        rec["pregate_train_seconds"].append(t3 - t2)
        rec["pass_seconds"].append(t1 - t0)
        if cfg.sample_every and step % cfg.sample_every == 0:
            n = rows_np.shape[0]
            sample["token_pass"].append(np.full(n, step))
            sample["token_id"].append(np.concatenate(tok))
            sample["token_prev"].append(np.concatenate(prev))
            sample["token_position"].append(np.concatenate(pos))
            sample["token_request"].append(np.concatenate(rid))
            sample["token_experts"].append(ex.transpose(1, 0, 2))
            sample["token_pregate"].append(pr.transpose(1, 0, 2))
        for r, a, end in work:
            r.done = end
        for i, r in enumerate(running):
            if r.finished:
                served["requests_finished"] += 1
                served["by_source"][r.source] = served["by_source"].get(r.source, 0) + 1
                running[i] = work_src.request(step + 1)
        if progress:
            progress(step + 1)
    records = {
        "counts": np.stack(rec["counts"]),
        "steps": np.arange(cfg.passes, dtype=np.int64),
        "kind": np.asarray(rec["kind"], dtype=np.uint8),
        "batch_tokens": np.asarray(rec["batch_tokens"], dtype=np.uint32),
        "requests": np.asarray(rec["requests"], dtype=np.uint16),
        "decode_tokens": np.asarray(rec["decode_tokens"], dtype=np.uint32),
        **{n: np.asarray(rec[n], dtype=np.float32) for n in ("pregate_seconds", "pregate_train_seconds",
                                                               "pass_seconds")},
    }
    small = np.uint8 if E <= 256 else np.uint16
    if sample["token_pass"]:
        records.update({
            "token_pass": np.concatenate(sample["token_pass"]).astype(np.uint32),
            "token_id": np.concatenate(sample["token_id"]).astype(np.uint8),
            "token_prev": np.concatenate(sample["token_prev"]).astype(np.uint8),
            "token_position": np.concatenate(sample["token_position"]).astype(np.uint16),
            "token_request": np.concatenate(sample["token_request"]).astype(np.uint32),
            "token_experts": np.concatenate(sample["token_experts"]).astype(small),
            "token_pregate": np.concatenate(sample["token_pregate"]).astype(small),
        })
    served.update({
        "requests_started": work_src.next_id,
        "workloads": work_src.info,
        "pregate_last_layer_topk_agreement_mean": round(float(agree[0] / max(agree[1], 1)), 4),
    })
    return records, served


def load_model(run_folder: str | Path, device: str | torch.device = "cpu") -> tuple[MoEGPT, dict[str, Any]]:
    """The trained model of a tracer run folder (its ``state.pt``, read with ``weights_only=True``, and the
    configuration in its trace card); plus what identifies the checkpoint."""
    from .. import storage
    from .train import STATE_FILE, TRACE_DIR

    run_folder = Path(run_folder)
    card = storage.read_card(run_folder / TRACE_DIR)
    cfg = TracerConfig.from_dict(card.extra["config"])
    state_file = run_folder / STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(f"{run_folder}: no {STATE_FILE} (train without --no-state to serve the model)")
    state = torch.load(state_file, map_location="cpu", weights_only=True)
    model = MoEGPT(cfg)
    model.load_state_dict(state["model"])
    digest = hashlib.sha256()
    for name, tensor in sorted(state["model"].items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    info = {"trained_trace": card.id, "trained_fingerprint": card.fingerprint, "trained_steps": int(state["step"]),
            "weights_sha256": "sha256:" + digest.hexdigest()}
    return model.to(device), info


def inference_trace(trace_id: str, records: dict[str, np.ndarray], cfg: ServeConfig, model_cfg: TracerConfig,
                    served: dict[str, Any], checkpoint: dict[str, Any], device: str) -> Trace:
    """The registry trace of a serving run (one record per forward pass), its extras the per-pass arrays and the
    token-level sample."""
    counts = records["counts"].astype(np.int64)
    T, L, E = counts.shape
    kinds = {name: int((records["kind"] == i).sum()) for i, name in enumerate(PASS_KINDS)}
    tokens = records["batch_tokens"]
    sampled = int(records["token_pass"].shape[0]) if "token_pass" in records else 0
    schedule = parse_schedule(cfg.mixture)
    extra = {
        "serving": {**asdict(cfg), "mixture": format_schedule(schedule), "regime": cfg.regime},
        "batching": "continuous batching with chunked prefill: a closed loop of clients; each pass one decode token "
                    "per running request past its prompt, then prompt chunks in arrival order within the token "
                    "budget; MoE layers dropless; output tokens are the text's continuation (teacher forcing)",
        "model_config": model_cfg.to_dict(),
        "checkpoint": checkpoint,
        "passes_by_kind": kinds,
        "tokens_per_pass": {"mean": round(float(tokens.mean()), 1), "min": int(tokens.min()),
                            "max": int(tokens.max())},
        "served": served,
        "token_sample": {"every": cfg.sample_every, "tokens": sampled,
                         "fields": "token_pass, token_id, token_prev (0 at position 0), token_position, "
                                   "token_request, token_experts[N, L, k] (the router's top-k), token_pregate[N, L, "
                                   "k] (the online pre-gate's prediction, made before it learned from that pass)"},
        "pregate": {
            "what": "per MoE layer, the layer's LayerNorm and gate (copied from the model) on the hidden state "
                    "entering the block before it, trained online (Adam, one step per pass on that pass's tokens)",
            "lr": cfg.pregate_lr,
            "predict_seconds_per_pass_median": float(np.median(records["pregate_seconds"])),
            "train_seconds_per_pass_median": float(np.median(records["pregate_train_seconds"])),
            "model_pass_seconds_median": float(np.median(records["pass_seconds"])),
            "measured": "wall time in this process, the device drained before and after; the model pass "
                        "recomputes every request's context (no KV cache), so it is not a serving engine's pass time",
        },
        "device": torch.cuda.get_device_name(device) if str(device).startswith("cuda") else
        platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "extras_file": "extras.npz: kind[T] (0 prefill, 1 decode, 2 mixed), batch_tokens[T], requests[T], "
                       "decode_tokens[T], pregate_seconds[T], pregate_train_seconds[T], pass_seconds[T], and the "
                       "token-level sample (" + ", ".join(TOKEN_FIELDS) + ")",
    }
    mix = ", then ".join(f"{'+'.join(s)} from pass {first}" for first, s in schedule)
    card = Card(
        id=trace_id,
        title=f"Inference of {checkpoint['trained_trace']}: {mix}; {cfg.regime}; seed {cfg.seed}, {T} passes",
        source={"generator": "datasets_registry.tracer.serve", "command": serve_command(trace_id, cfg),
                "trained_on": checkpoint["trained_trace"]},
        licence="Apache-2.0 (generated by this project from text installed on the machine: the Python standard "
                "library (PSF licence), documentation and C headers, each file under its package's licence)",
        model=ModelInfo(layers=model_cfg.n_layers, moe_layers=L, experts=E, top_k=model_cfg.top_k,
                        router=model_cfg.router, aux_loss=model_cfg.aux_loss, capacity_factor=0.0,
                        tokens_per_step=int(math.ceil(tokens.mean()))),
        step_unit="forward pass",
        layer_names=[f"block{i}.moe" for i in model_cfg.moe_layer_ids],
        notes=(f"Serving the model trained as {checkpoint['trained_trace']} ({checkpoint['trained_steps']} "
               f"iterations) on a closed loop of {cfg.concurrency} clients; workload mixture {mix}; {cfg.regime} "
               f"(continuous batching with chunked prefill; passes: {kinds['prefill']} prefill, {kinds['decode']} "
               f"decode, {kinds['mixed']} mixed). Counts are the tokens of each pass sent to each expert (top-"
               f"{model_cfg.top_k}, dropless). Every {cfg.sample_every} passes the token-level routing of the whole "
               f"pass is in extras.npz ({sampled} tokens), with an online pre-gate's predictions."),
        extra=extra,
    )
    extras = {n: v for n, v in records.items() if n not in ("counts", "steps")}
    return Trace.from_arrays(counts, records["steps"], card, source=f"serving run {trace_id}", extras=extras)


def serve_command(trace_id: str, cfg: ServeConfig) -> str:
    return (f"python -m bench trace serve RUN_FOLDER --id {trace_id} --mixture {cfg.mixture} --passes {cfg.passes} "
            f"--concurrency {cfg.concurrency} --max-batch-tokens {cfg.max_batch_tokens} --prompt {cfg.prompt_min}:"
            f"{cfg.prompt_max} --output {cfg.output_min}:{cfg.output_max} --sample-every {cfg.sample_every} "
            f"--serve-seed {cfg.seed}")


def record_inference(
    run_folder: str | Path,
    cfg: ServeConfig,
    trace_id: str,
    *,
    device: str = "cpu",
    out: str | Path | None = None,
    register: bool = True,
    corpus_root=None,
    text_roots=None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Serve the model of a tracer run folder, write the inference trace to `out` (default ``RUN/serve/ID``) and
    store it as a dataset. Returns its shape, folder, fingerprint and the pre-gate's figures."""
    from .. import registry
    from .train import write_trace

    (registry.check_user_id if register else registry.check_id)(trace_id)
    model, checkpoint = load_model(run_folder, device)
    t0 = time.perf_counter()
    records, served = serve(model, cfg, device, corpus_root, text_roots, progress)
    seconds = time.perf_counter() - t0
    trace = inference_trace(trace_id, records, cfg, model.cfg, served, checkpoint, str(device))
    folder = write_trace(trace, Path(out) if out else Path(run_folder) / "serve" / trace_id)
    result = {"id": trace_id, "shape": list(trace.shape), "trace_folder": str(folder), "seconds": round(seconds, 2),
              "fingerprint": trace.fingerprint, "tokens_sampled": trace.card.extra["token_sample"]["tokens"],
              "pregate": trace.card.extra["pregate"], "passes_by_kind": trace.card.extra["passes_by_kind"]}
    if register:
        result["dataset"] = registry.add(trace, trace_id).ref  # with its extras
    return result
