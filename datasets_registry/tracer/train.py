"""Train an MoE language model and record its expert load every step.

:class:`Tracer` owns the model, the optimiser, the corpus on the device and the record buffer.
``train_step`` runs one iteration without synchronising with the device; the per-layer counts
(before capacity drops), dropped slots and the loss go into a :class:`~.buffer.StepBuffer`.

Everything that makes a run reproducible is in its :class:`~.config.TracerConfig`: the model is
initialised from ``seed``, and the batch of iteration ``t`` is drawn from a generator seeded by
``(seed, t)``, so a run resumed from a checkpoint sees the same batches as a straight run. The
learning-rate schedule (linear warm-up, cosine decay over ``decay_steps``, then constant) does
not depend on the number of steps asked for, so a run can be extended.

With ``probe_every`` K > 0 the tracer also runs a *probe* every K steps: before training step
``t`` (``t % K == 0``) a forward pass without gradient, in chunks, over ``probe_tokens`` tokens of
held-out text (files that training batches never draw from), drawn by ``(seed, t)``; its counts
are the load that the weights of training record ``t`` give a large batch, recorded as a second
trace of the run (``<id>-probe``). Its time is measured and kept apart from the training's.

Run folder (``out``): ``config.json``, ``records.npz`` (counts, dropped, loss, and where used the
expert bias and the probe records, recorded so far), ``state.pt`` (model and optimiser, read back
with ``torch.load(weights_only=True)``), ``trace/`` (the latest trace written from the records)
and ``probe/`` (the probe trace).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import storage
from ..trace import Card, ModelInfo, Trace, fingerprint
from .buffer import StepBuffer
from .config import GPT3_REFERENCE, PRESETS, TracerConfig
from .corpus import corpus_for
from .model import MoEGPT, flops_per_token

CONFIG_FILE = "config.json"
RECORDS_FILE = "records.npz"
STATE_FILE = "state.pt"
TRACE_DIR = "trace"
PROBE_DIR = "probe"
EXTRAS_FILE = storage.EXTRAS_FILE
#: Added to the seed of a probe batch's generator, so that probe draws never repeat a training batch's.
PROBE_SEED_OFFSET = 1 << 48
_REPO = Path(__file__).resolve().parents[2]


def code_version() -> dict[str, Any]:
    """git commit of the checkout (if any) and a sha256 of the tracer's own source files."""
    commit = None
    dirty = None
    try:
        res = subprocess.run(
            ["git", "-C", str(_REPO), "rev-parse", "--verify", "-q", "HEAD"], capture_output=True, text=True, timeout=5
        )
        commit = res.stdout.strip() if res.returncode == 0 and len(res.stdout.strip()) == 40 else None
        if commit:
            st = subprocess.run(
                ["git", "-C", str(_REPO), "status", "--porcelain", "--", "datasets_registry/tracer"],
                capture_output=True,
                text=True,
                timeout=5,
            )
            dirty = bool(st.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    h = hashlib.sha256()
    for p in sorted(Path(__file__).parent.glob("*.py")):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return {"git_commit": commit, "git_dirty": dirty, "tracer_source_sha256": "sha256:" + h.hexdigest()}


def probe_id(trace_id: str) -> str:
    """The dataset id of a run's probe trace."""
    return f"{trace_id}-probe"


def reproduce_command(
    cfg: TracerConfig,
    steps: int,
    device: str,
    corpus_root: str | os.PathLike | None = None,
    text_roots: list[str | os.PathLike] | None = None,
) -> str:
    """The `python -m bench trace` command line that reproduces `cfg` (and the text it was trained on)."""
    base = PRESETS.get(cfg.preset)
    parts = [
        "python -m bench trace",
        f"--preset {cfg.preset}" if base else "",
        f"--steps {steps}",
        f"--seed {cfg.seed}",
    ]
    flags = {
        "router": "--router",
        "top_k": "--top-k",
        "aux_loss": "--aux-loss",
        "capacity_factor": "--capacity-factor",
        "n_experts": "--experts",
        "d_model": "--d-model",
        "n_heads": "--heads",
        "n_layers": "--layers",
        "seq_len": "--seq-len",
        "batch_size": "--batch-size",
        "lr": "--lr",
        "gate": "--gate",
        "n_shared": "--shared-experts",
        "expert_ff": "--expert-ff",
        "expert_bias": "--expert-bias",
        "bias_update_rate": "--bias-update-rate",
        "corpus_schedule": "--corpus-schedule",
        "source_ranks": "--sources",
        "ranks_per_node": "--ranks-per-node",
        "max_nodes": "--max-nodes",
        "locality_loss": "--locality-loss",
        "probe_every": "--probe-every",
        "probe_tokens": "--probe-tokens",
        "probe_chunk": "--probe-chunk",
        "holdout": "--holdout",
    }
    for name, flag in flags.items():
        value = getattr(cfg, name)
        if value is None or value is False or (base is not None and getattr(base, name) == value):
            continue
        parts.append(flag if value is True else f"{flag} {shlex.quote(str(value))}")
    if corpus_root is not None:
        parts.append(f"--corpus {shlex.quote(str(corpus_root))}")
    for root in text_roots or []:
        parts.append(f"--text-corpus {shlex.quote(str(root))}")
    if device != "cpu":
        parts.append(f"--device {device}")
    return " ".join(p for p in parts if p)



def clip_in_fused_step(opt, params, max_norm: float) -> None:
    """Gradient clipping folded into the next step of a fused Adam/AdamW: the same scaling as
    ``clip_grad_norm_`` (``max_norm / (norm + 1e-6)`` where below 1), applied by the fused kernel as it reads each
    gradient (its ``grad_scale``, the hook ``torch.amp.GradScaler`` uses to unscale) instead of a separate pass that
    reads and writes every gradient: one pass over the parameters fewer per step."""
    import torch

    norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    opt.grad_scale = ((norm + 1e-6) / max_norm).clamp(min=1.0).to(torch.float32)  # the kernel divides by it

class Tracer:
    """One training run of the tracer model, recording expert load every iteration."""

    def __init__(
        self,
        cfg: TracerConfig,
        device: str | torch.device = "cpu",
        compile: bool | None = None,
        flush_every: int = 100,
        corpus_root: str | os.PathLike | None = None,
        amp: bool | None = None,
        text_roots: list[str | os.PathLike] | None = None,
        on_records: Callable[[np.ndarray, np.ndarray], None] | None = None,
        fold_clip: bool = True,
    ):
        """`on_records(counts[n, L, E], steps[n])`: called with each block of new records as it reaches the host
        (every `flush_every` iterations, in order), e.g. to plan placements while the run goes on."""
        self.cfg = cfg
        self.on_records = on_records
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda asked for, but torch sees no CUDA GPU")
        cuda = self.device.type == "cuda"
        self.amp = cuda if amp is None else amp
        if compile is None or compile is True:
            compile = "cudagraphs" if cuda else ("blocks" if compile else False)
        self.compiled = compile or False
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.corpus_root, self.text_roots = corpus_root, list(text_roots) if text_roots else None
        self.schedule = cfg.schedule
        names = list(dict.fromkeys(n for _, srcs in self.schedule for n in srcs))
        self.corpora = {n: corpus_for(n, corpus_root, text_roots) for n in names}
        self.corpus = self.corpora[names[0]]
        self.train_data: dict[str, torch.Tensor] = {}  # source -> the bytes training batches are drawn from
        self.probe_data: dict[str, torch.Tensor] = {}  # source -> held-out bytes (probes only)
        self.holdout_info: dict[str, dict] = {}
        for name, corpus in self.corpora.items():
            data = corpus.data
            if cfg.probe_every:
                data, held, self.holdout_info[name] = corpus.split(cfg.holdout)
                if held.shape[0] < cfg.seq_len + 2:
                    raise ValueError(f"the held-out part of the {name} corpus is shorter than one sequence")
                self.probe_data[name] = torch.from_numpy(held.copy()).to(self.device)
            if data.shape[0] < cfg.seq_len + 2:
                raise ValueError("corpus is shorter than one sequence")
            self.train_data[name] = torch.from_numpy(data.copy()).to(self.device)
        self.data = self.train_data[names[0]]
        self.pos = torch.arange(cfg.seq_len + 1, device=self.device)
        torch.manual_seed(cfg.seed)
        self.model = MoEGPT(cfg).to(self.device)
        decay = [p for n, p in self.model.named_parameters() if p.dim() >= 2 and not n.startswith("wpe")]
        no_decay = [p for n, p in self.model.named_parameters() if not (p.dim() >= 2 and not n.startswith("wpe"))]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        kw = {"fused": True} if cuda else {}
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **kw)
        self.params = [p for p in self.model.parameters()]
        self.fold_clip = bool(fold_clip and self.opt.defaults.get("fused"))
        self.gen = torch.Generator(device=self.device)
        self.probe_gen = torch.Generator(device=self.device)
        self.L = len(cfg.moe_layer_ids)
        fields = {
            "counts": ((self.L, cfg.n_experts), torch.int32),
            "dropped": ((self.L,), torch.int32),
            "loss": ((), torch.float32),
        }
        if cfg.expert_bias:
            fields["bias"] = ((self.L, cfg.n_experts), torch.float32)
        if cfg.source_ranks:
            fields["source_counts"] = ((self.L, cfg.source_ranks, cfg.n_experts), torch.int32)
            fields["source_node_tokens"] = ((self.L, cfg.source_ranks, cfg.nodes), torch.int32)
        if cfg.router == "locmoe":
            fields["locality_loss"] = ((self.L,), torch.float32)
            fields["router_cosine"] = ((self.L,), torch.float32)
        self.record_keys = tuple(fields)
        self.buffer = StepBuffer(fields, flush_every, self.device, on_host=self._landed if on_records else None)
        self.probes: dict[str, list] = {"steps": [], "counts": [], "dropped": [], "loss": []}  # host records
        self.prev: dict[str, np.ndarray] | None = None  # records loaded from a checkpoint
        self.step = 0
        self.first_step = 0
        self._fwd = self.model
        if self.compiled:
            if self.compiled == "blocks":  # regional: one graph per block kind, fast to compile
                for block in self.model.blocks:
                    block.compile()
                self.model.head_loss = torch.compile(self.model.head_loss)
            elif self.compiled == "full":
                self._fwd = torch.compile(self.model)
            elif self.compiled == "cudagraphs":  # whole model, CUDA graphs (reduce-overhead)
                self._fwd = torch.compile(self.model, mode="reduce-overhead")
            else:
                raise ValueError(f"unknown compile mode {self.compiled!r}; use blocks, full or cudagraphs")
        # Probes run without gradient on larger batches: a graph of their own (static shapes, no CUDA graphs), or
        # the model's compiled blocks; uncompiled where training is.
        self._probe_fwd = self.model
        if cfg.probe_every and self.compiled in ("full", "cudagraphs"):
            self._probe_fwd = torch.compile(self.model, dynamic=False)

    # -- one iteration -------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        c = self.cfg
        if step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        t = min(1.0, (step - c.warmup_steps) / max(1, c.decay_steps - c.warmup_steps))
        return c.lr * (c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))

    def sources_at(self, step: int) -> tuple[str, ...]:
        """The text sources of iteration `step` (the corpus schedule; python alone without one)."""
        return self.cfg.sources_at(step)

    def _draw(self, data: dict[str, torch.Tensor], sources: tuple[str, ...], n: int, gen: torch.Generator):
        """`n` random windows of seq_len + 1 bytes, shared out evenly among `sources` (in order), as int64."""
        c = self.cfg
        parts = []
        for i, name in enumerate(sources):
            m = n // len(sources) + (i < n % len(sources))
            if m:
                src = data[name]
                starts = torch.randint(0, src.shape[0] - c.seq_len - 1, (m,), device=self.device, generator=gen)
                parts.append(src[starts[:, None] + self.pos])
        return (parts[0] if len(parts) == 1 else torch.cat(parts)).long()

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cfg
        self.gen.manual_seed(c.seed * 1_000_003 + step)
        tok = self._draw(self.train_data, self.sources_at(step), c.batch_size, self.gen)
        return tok[:, :-1], tok[:, 1:]

    def probe_batch(self, step: int) -> torch.Tensor:
        """The probe's windows for step `step`: int64 [probe_sequences, seq_len + 1] from the held-out text."""
        c = self.cfg
        self.probe_gen.manual_seed(c.seed * 1_000_003 + step + PROBE_SEED_OFFSET)
        return self._draw(self.probe_data, self.sources_at(step), c.probe_sequences, self.probe_gen)

    @torch.no_grad()
    def probe(self, step: int) -> dict[str, np.ndarray]:
        """Route the probe batch of `step` with the current weights: forward passes without gradient over chunks
        of ``probe_chunk`` tokens (capacity applies per chunk, as to a training batch of that size). Returns
        counts [L, E] (before drops), dropped [L] and the mean held-out loss; the model is not changed.
        Compiled like the training (in a graph of its own), once per chunk shape: a ``probe_tokens`` that is a
        multiple of ``probe_chunk`` compiles once."""
        c = self.cfg
        tok = self.probe_batch(step)
        per = max(1, c.probe_chunk // c.seq_len)
        counts = torch.zeros(self.L, c.n_experts, dtype=torch.int64, device=self.device)
        dropped = torch.zeros(self.L, dtype=torch.int64, device=self.device)
        loss = torch.zeros((), dtype=torch.float32, device=self.device)
        for i in range(0, tok.shape[0], per):
            part = tok[i : i + per]
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                lm, _aux, cn, dr = self._probe_fwd(part[:, :-1], part[:, 1:])[:4]
            counts += cn
            dropped += dr
            loss += lm.float() * part.shape[0]
        return {
            "counts": counts.cpu().numpy(),
            "dropped": dropped.cpu().numpy(),
            "loss": np.float32((loss / tok.shape[0]).item()),
        }

    def forward(self, step: int):
        x, y = self.batch(step)
        if self.compiled == "cudagraphs":
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self._fwd(x, y)

    def train_step(self, record: bool = True) -> None:
        lr = self.lr_at(self.step)
        for g in self.opt.param_groups:
            g["lr"] = lr
        out = self.forward(self.step)
        loss, aux, counts, dropped = out[:4]
        extras = out[4] if len(out) > 4 else {}
        if record:  # device-side copies only; no host sync
            bias = {"bias": self.model.expert_biases()} if self.cfg.expert_bias else {}  # the bias this step used
            layer_extras = {k: v.detach() for k, v in extras.items() if k in self.record_keys}
            self.buffer.push(counts=counts, dropped=dropped, loss=loss.detach(), **bias, **layer_extras)
        total = loss + self.cfg.aux_loss * aux if self.cfg.aux_loss > 0 else loss
        if "locality_loss" in extras and self.cfg.locality_loss > 0:  # LocMoE eq. 7: L_aux + L_loc + L_cross
            total = total + self.cfg.locality_loss * extras["locality_loss"].sum()
        total.backward()
        if self.cfg.grad_clip and self.fold_clip:
            clip_in_fused_step(self.opt, self.params, self.cfg.grad_clip)
        elif self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.cfg.expert_bias:
            self.model.update_expert_bias(counts, self.cfg.bias_update_rate)
        self.step += 1

    # -- records -------------------------------------------------------------------------
    def records(self) -> dict[str, np.ndarray]:
        """Every record of this run so far (loaded and new): counts [T, L, E], dropped [T, L], loss [T], steps [T]
        (and bias [T, L, E] with auxiliary-loss-free balancing)."""
        new = self.buffer.arrays()
        if self.prev is not None:
            out = {k: np.concatenate([self.prev[k], new[k]]) for k in self.record_keys}
        else:
            out = dict(new)
        out["steps"] = np.arange(self.first_step, self.first_step + out["counts"].shape[0], dtype=np.int64)
        return out

    def _landed(self, block: dict[str, np.ndarray]) -> None:
        """A block of the buffer reached the host: hand its counts and their iterations to `on_records`."""
        n = len(block["counts"])
        loaded = self.prev["counts"].shape[0] if self.prev is not None else 0
        first = self.first_step + loaded + self.buffer.host_rows - n
        self.on_records(block["counts"].astype(np.int64), np.arange(first, first + n, dtype=np.int64))

    def probe_records(self) -> dict[str, np.ndarray]:
        """Every probe so far: steps [P], counts [P, L, E] int64, dropped [P, L] int64, loss [P] float32."""
        L, E = self.L, self.cfg.n_experts
        empty = {"steps": (0,), "counts": (0, L, E), "dropped": (0, L), "loss": (0,)}
        dtypes = {"steps": np.int64, "counts": np.int64, "dropped": np.int64, "loss": np.float32}
        return {
            k: np.asarray(self.probes[k], dtype=dtypes[k]) if self.probes[k] else np.zeros(empty[k], dtypes[k])
            for k in empty
        }

    def _take_probe(self, step: int) -> float:
        """Run and keep the probe of `step`; returns its wall time in seconds (the device drained on both sides)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t = time.monotonic()
        out = self.probe(step)  # ends by copying to the host: a sync
        seconds = time.monotonic() - t
        self.probes["steps"].append(step)
        for k in ("counts", "dropped", "loss"):
            self.probes[k].append(out[k])
        return seconds

    # -- checkpoints ---------------------------------------------------------------------
    def save_checkpoint(self, out: str | os.PathLike, state: bool = True) -> None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        rec = self.records()
        if rec["counts"].shape[0] != self.step - self.first_step:
            raise RuntimeError(
                "records do not match the step count; was train_step(record=False) used in a recorded run?"
            )
        (out / CONFIG_FILE).write_text(json.dumps(self.cfg.to_dict(), indent=2, sort_keys=True) + "\n")
        arrays = {k: rec[k] for k in (*self.record_keys, "steps")}
        if self.cfg.probe_every:
            probes = self.probe_records()
            keep = probes["steps"] < self.step  # a probe of the current step is taken again on resuming
            arrays.update({f"probe_{k}": v[keep] for k, v in probes.items()})
        _atomic(out / RECORDS_FILE, lambda p: np.savez_compressed(p, **arrays))
        if state:
            payload = {"model": self.model.state_dict(), "optim": self.opt.state_dict(), "step": self.step}
            _atomic(out / STATE_FILE, lambda p: torch.save(payload, p))
        elif (out / STATE_FILE).exists():
            (out / STATE_FILE).unlink()  # an older state would not match the records

    def load_checkpoint(self, out: str | os.PathLike) -> bool:
        """Continue from `out` if it holds a run of the same config. Returns whether it did."""
        out = Path(out)
        if not (out / CONFIG_FILE).exists():
            return False
        saved = TracerConfig.from_dict(json.loads((out / CONFIG_FILE).read_text()))
        if saved.to_dict() != self.cfg.to_dict():
            diff = {
                k: (v, self.cfg.to_dict().get(k)) for k, v in saved.to_dict().items() if self.cfg.to_dict().get(k) != v
            }
            raise ValueError(f"{out} holds a run of another configuration {diff}; use another --out or --id")
        if not (out / STATE_FILE).exists():
            raise ValueError(
                f"{out} has records but no model state ({STATE_FILE}): it cannot be continued; its trace is in "
                f"{out / TRACE_DIR}"
            )
        state = torch.load(out / STATE_FILE, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optim"])
        step = int(state["step"])
        with np.load(out / RECORDS_FILE, allow_pickle=False) as z:
            rec = {k: z[k] for k in z.files}
        if rec["counts"].shape[0] < step:
            raise ValueError(f"{out}: records hold {rec['counts'].shape[0]} steps but the state is at step {step}")
        self.prev = {k: rec[k][:step] for k in self.record_keys}
        if self.cfg.probe_every:
            keep = rec["probe_steps"] < step
            for k in ("steps", "counts", "dropped", "loss"):
                self.probes[k] = list(rec[f"probe_{k}"][keep])
        self.step = step
        return True

    # -- the loop ------------------------------------------------------------------------
    def run(
        self,
        steps: int,
        out: str | os.PathLike | None = None,
        checkpoint_every: int = 0,
        save_state: bool = True,
        time_limit: float | None = None,
        progress: Callable[[int, dict], None] | None = None,
    ) -> dict[str, Any]:
        """Train until `steps` iterations (counted from 0, including resumed ones) or the time limit.

        On KeyboardInterrupt the records (and state) are checkpointed to `out` before re-raising.
        Returns run statistics (wall time, tokens/s, whether it stopped early; with probes, their time apart)."""
        start_step = self.step
        t0 = time.monotonic()
        deadline = t0 + time_limit if time_limit else None
        stopped_early = False
        every = self.cfg.probe_every
        probe_seconds, probes = 0.0, 0
        try:
            while self.step < steps:
                if every and self.step % every == 0:
                    probe_seconds += self._take_probe(self.step)
                    probes += 1
                self.train_step()
                if progress is not None:
                    progress(self.step, {})
                if out is not None and checkpoint_every and self.step % checkpoint_every == 0 and self.step < steps:
                    self.save_checkpoint(out, state=save_state)
                if deadline is not None and time.monotonic() > deadline:
                    stopped_early = self.step < steps
                    break
        except KeyboardInterrupt:
            if out is not None:
                self.save_checkpoint(out, state=save_state)
            raise
        self.buffer.flush()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        wall = time.monotonic() - t0
        if out is not None:
            self.save_checkpoint(out, state=save_state)
        done = self.step - start_step
        stats = {
            "wall_seconds": round(wall, 2),
            "steps_run": done,
            "stopped_early": stopped_early,
            "tokens_per_second": round(done * self.cfg.tokens_per_step / wall, 1) if wall > 0 else None,
        }
        if every:
            train = wall - probe_seconds
            stats["probe"] = {
                "probes": probes,
                "seconds": round(probe_seconds, 3),
                "seconds_per_probe": round(probe_seconds / probes, 4) if probes else None,
                "training_seconds": round(train, 3),
                "training_seconds_per_step": round(train / done, 5) if done else None,
                "fraction_of_training_time": round(probe_seconds / train, 4) if train > 0 else None,
                "measured": "wall time in this process, the device drained before and after each probe; the "
                "training's time is the rest of the run's wall time",
            }
        return stats

    # -- the trace -----------------------------------------------------------------------
    def _source(self, steps_asked: int | None, T: int) -> dict[str, Any]:
        """The card's `source`: the reproducing command, the code, and the text trained on."""
        cfg = self.cfg
        device = "cuda" if self.device.type == "cuda" else "cpu"
        source = {
            "command": reproduce_command(cfg, steps_asked or T, device, self.corpus_root, self.text_roots),
            "generator": "moe-load-bench tracer (datasets_registry.tracer)",
            **code_version(),
            "corpus": self.corpus.info,
        }
        if cfg.corpus_schedule:
            source["corpora"] = {name: c.info for name, c in self.corpora.items()}
        if self.holdout_info:
            source["holdout"] = self.holdout_info
        return source

    def _text_notes(self) -> str:
        cfg = self.cfg
        if not cfg.corpus_schedule:
            return (
                f"Byte-level LM on the Python {self.corpus.info['python']} standard library "
                f"({self.corpus.info['files']} files)."
            )
        phases = []
        for i, (first, srcs) in enumerate(self.schedule):
            last = f"{self.schedule[i + 1][0] - 1}" if i + 1 < len(self.schedule) else ""
            what = " + ".join(
                f"{n} ({self.corpora[n].info['files']} files)" for n in srcs
            )
            phases.append(f"{first}-{last} {what}")
        return (
            "Byte-level LM with a domain shift: the text source changes with the iteration ("
            + "; ".join(phases)
            + "; python: the Python standard library or --corpus, text: documentation and licences installed on the "
            "machine; mixed phases share each batch's sequences evenly)."
        )

    def _routing(self) -> dict[str, Any]:
        """How tokens were routed, for the card (`extra.routing`)."""
        cfg = self.cfg
        out: dict[str, Any] = {
            "router": cfg.router,
            "gate": None if cfg.router == "hash" else cfg.gate_fn,
            "routed_experts": cfg.n_experts,
            "top_k": cfg.top_k,
            "shared_experts": cfg.shared_experts,
            "expert_ff": cfg.expert_width,
            "expert_bias": None,
        }
        if cfg.router == "deepseek-moe":
            out["weights"] = (
                "sigmoid scores of the k chosen experts, normalised over the k (DeepSeek-V3)"
                if cfg.gate_fn == "sigmoid"
                else "softmax probabilities of the k chosen experts, not renormalised (DeepSeekMoE)"
            )
            out["shared"] = f"{cfg.shared_experts} shared experts take every token (always on; not in the counts)"
        if cfg.router == "locmoe":
            out["gate"] = "GrAP: fixed orthogonal weights (group means of the activation) plus a learnable offset, ReLU"
            out["weights"] = "top-1 of softmax(ReLU(GrAP(x))), weight = its probability (LocMoE eq. 2-4)"
            out["locality"] = (f"locality loss mu * KL(D_c || D_l) per source rank (eq. 6), mu = {cfg.locality_loss}, "
                               "D_l: the rank's node's experts evenly, smoothed by 1% of the uniform distribution")
        if cfg.router == "node-limited":
            out["weights"] = (f"{cfg.gate_fn} scores; the top {cfg.node_limit} of {cfg.nodes} nodes by the sum of "
                              f"their experts' top-{cfg.top_k // cfg.node_limit} scores, then the top-{cfg.top_k} "
                              "experts on them, weights normalised over the k (DeepSeek-V3)")
            out["max_nodes"] = cfg.node_limit
        if cfg.expert_bias:
            out["expert_bias"] = {
                "update_rate": cfg.bias_update_rate,
                "rule": "auxiliary-loss-free balancing (DeepSeek-V3): a per-expert bias is added to the scores for "
                "the top-k selection only; after every step bias += rate * sign(mean load - load), per layer, with "
                "the step's counts before capacity drops",
                "recorded": f"{EXTRAS_FILE}: bias[T, L, E], the bias each step's routing used",
            }
        return out

    def _counts_are(self) -> str:
        cfg = self.cfg
        text = "token slots routed to each expert before capacity drops"
        if cfg.router == "expert-choice":
            text += " (token-choice top-k demand; expert-choice dispatches exactly C per expert)"
        if cfg.shared_experts:
            text += (f" (the {cfg.n_experts} routed experts only; the {cfg.shared_experts} shared experts are always "
                     "on and take every token)")
        return text

    def _probe_info(self, stats: dict[str, Any] | None) -> dict[str, Any]:
        cfg = self.cfg
        chunk = max(1, cfg.probe_chunk // cfg.seq_len) * cfg.seq_len
        return {
            "every": cfg.probe_every,
            "tokens": cfg.probe_sequences * cfg.seq_len,
            "sequences": cfg.probe_sequences,
            "chunk_tokens": chunk,
            "capacity_per_expert_per_chunk": cfg.capacity(chunk),
            "when": "before training step t (t % every == 0), with the weights that routed training record t; a "
            "forward pass without gradient, in chunks, that changes nothing",
            "batch": "random windows of the held-out files of the sources of step t, drawn by a generator seeded "
            f"with seed * 1000003 + t + {PROBE_SEED_OFFSET}",
            "holdout": self.holdout_info,
            "cost": (stats or {}).get("probe"),
        }

    def trace(
        self, trace_id: str, stats: dict[str, Any] | None = None, steps_asked: int | None = None
    ) -> tuple[Trace, dict[str, np.ndarray]]:
        """The registry trace of everything recorded, with a full card; plus the extra arrays."""
        rec = self.records()
        cfg = self.cfg
        T = rec["counts"].shape[0]
        if T == 0:
            raise ValueError("nothing recorded yet")
        counts = rec["counts"].astype(np.int64)
        slots = cfg.tokens_per_step * cfg.top_k
        every = 100 if T >= 200 else max(1, T // 10)
        nb = T // every
        loss_summary = rec["loss"][: nb * every].reshape(nb, every).mean(1) if nb else rec["loss"]
        drop_frac = (
            rec["dropped"][: nb * every].reshape(nb, every, self.L).mean(1)
            / (cfg.tokens_per_step if cfg.router == "expert-choice" else slots)
            if nb
            else np.zeros((0, self.L))
        )
        device_name = (
            torch.cuda.get_device_name(self.device)
            if self.device.type == "cuda"
            else platform.processor() or platform.machine()
        )
        fl = flops_per_token(cfg)
        ref = GPT3_REFERENCE.get(cfg.preset)
        extra = {
            "preset": cfg.preset,
            "seed": cfg.seed,
            "config": cfg.to_dict(),
            "moe_layer_indices": cfg.moe_layer_ids,
            "capacity_per_expert": cfg.capacity(),
            "counts_are": self._counts_are(),
            "routing": self._routing(),
            "parameters": int(self.model.num_params()),
            "active_params_per_token": int(fl["active_params"]),
            "flops_per_token": fl["total"],
            "device": device_name,
            "torch": torch.__version__,
            "precision": "bf16 autocast, fp32 master weights and router" if self.amp else "fp32",
            "compiled": self.compiled or False,
            "gradient_clipping": "folded into the fused AdamW step" if self.fold_clip else "clip_grad_norm_",
            "steps_asked": steps_asked,
            "run": stats or {},
            "loss_every": every,
            "loss_mean_per_block": [round(float(v), 4) for v in loss_summary],
            "drop_fraction_per_block": [[round(float(v), 5) for v in row] for row in drop_frac],
            "drop_fraction_total": round(
                float(
                    rec["dropped"].sum()
                    / (T * self.L * (cfg.tokens_per_step if cfg.router == "expert-choice" else slots))
                ),
                6,
            ),
            "extras_file": f"{EXTRAS_FILE}: loss[T] float32 (LM loss per step), dropped[T, L] (slots dropped per step "
            "and layer)" + (", bias[T, L, E] float32 (each expert's selection bias as the step was routed)"
                            if cfg.expert_bias else ""),
        }
        if cfg.corpus_schedule:
            extra["corpus_schedule"] = [
                {"from_step": first, "sources": list(srcs)} for first, srcs in self.schedule
            ]
        extra["final_loss"] = round(float(rec["loss"][-100:].mean()), 4)
        extra.update(self._layout_card(rec))
        if cfg.source_ranks:
            extra["extras_file"] += (", source_counts[T, L, S, E] (slots per source rank before drops; sums over S "
                                     "to the counts), source_node_tokens[T, L, S, N] (tokens of each rank with at "
                                     "least one expert on each node)")
        if cfg.router == "locmoe":
            extra["extras_file"] += (", locality_loss[T, L] float32 (LocMoE's KL(D_c || D_l) per step and layer), "
                                     "router_cosine[T, L] float32 (the cosine quantile standing for LocMoE's delta)")
        probes = self.probe_records() if cfg.probe_every else None
        if probes is not None and probes["steps"].size:
            extra["probe"] = {
                "trace": probe_id(trace_id),
                "fingerprint": fingerprint(probes["counts"], probes["steps"]),
                **self._probe_info(stats),
            }
        if ref:
            extra["paper_shape"] = ref
            extra["scaled_down"] = cfg.scaled
        source = self._source(steps_asked, T)
        title = f"Tracer {cfg.preset}: {cfg.router} top-{cfg.top_k}"
        if cfg.shared_experts:
            title += f" + {cfg.shared_experts} shared"
        title += f", aux loss {cfg.aux_loss}"
        if cfg.expert_bias:
            title += f", aux-free bias {cfg.bias_update_rate}"
        if cfg.corpus_schedule:
            title += f", corpus {cfg.corpus_schedule}"
        title += f", seed {cfg.seed}, {T} iterations"
        notes = f"{cfg.notes}. {self._text_notes()} Every iteration is recorded."
        base = PRESETS.get(cfg.preset)
        if base is not None and (base.router, base.top_k, base.n_experts) != (cfg.router, cfg.top_k, cfg.n_experts):
            notes += f" Routing changed from the preset's: {cfg.router}, {cfg.n_experts} experts, top-{cfg.top_k}."
        if cfg.shared_experts:
            notes += (f" Counts are of the {cfg.n_experts} routed experts; the {cfg.shared_experts} shared experts "
                      "take every token (always on).")
        if cfg.expert_bias:
            notes += (f" Auxiliary-loss-free balancing (bias update rate {cfg.bias_update_rate}); the bias per step "
                      f"and layer is in {EXTRAS_FILE}.")
        if "probe" in extra:
            notes += (
                f" Every {cfg.probe_every} iterations a probe of {extra['probe']['tokens']} held-out tokens measured "
                f"the load of the current weights: dataset {probe_id(trace_id)}. Training batches never draw from the "
                f"held-out files ({cfg.holdout:.0%} of the files, by a hash of their name)."
            )
        if cfg.scaled:
            notes += (
                " Scaled down from the paper shape: "
                + ", ".join(f"{k} {v}" for k, v in cfg.scaled.items() if k != "why")
                + f" ({cfg.scaled.get('why', '')})."
            )
        if stats and stats.get("stopped_early"):
            notes += f" Stopped early by its time limit at {T} of {steps_asked} iterations."
        card = Card(
            id=trace_id,
            title=title,
            source=source,
            licence=self._licence(),
            model=self._model_info(cfg.tokens_per_step),
            step_unit="training iteration",
            layer_names=[f"block{i}.moe" for i in cfg.moe_layer_ids],
            notes=notes,
            extra=extra,
        )
        dmax = int(rec["dropped"].max()) if rec["dropped"].size else 0
        extras = {
            "loss": rec["loss"].astype(np.float32),
            "dropped": rec["dropped"].astype(np.uint16 if dmax < 65536 else np.uint32),
        }
        if cfg.expert_bias:
            extras["bias"] = rec["bias"].astype(np.float32)
        if cfg.source_ranks:
            per_source = rec["source_counts"]
            extras["source_counts"] = per_source.astype(np.uint16 if per_source.max(initial=0) < 65536 else np.uint32)
            reach = rec["source_node_tokens"]
            extras["source_node_tokens"] = reach.astype(np.uint16 if reach.max(initial=0) < 65536 else np.uint32)
        if cfg.router == "locmoe":
            extras["locality_loss"] = rec["locality_loss"].astype(np.float32)
            extras["router_cosine"] = rec["router_cosine"].astype(np.float32)
        return Trace.from_arrays(counts, rec["steps"], card, source=f"tracer run {trace_id}", extras=extras), extras

    def _layout_card(self, rec: dict[str, np.ndarray]) -> dict[str, Any]:
        """The card entries of the simulated data-parallel layout (``sources``) and of LocMoE's statistics."""
        cfg = self.cfg
        out: dict[str, Any] = {}
        if cfg.source_ranks:
            S, nodes = cfg.source_ranks, cfg.nodes
            out["sources"] = {
                "count": S,
                "unit": "rank",
                "layout": f"each step's {cfg.tokens_per_step} tokens split into {S} equal contiguous shares (simulated "
                f"data-parallel ranks, {min(cfg.ranks_per_node, S)} per node, {nodes} node(s)); experts in "
                f"contiguous blocks of {cfg.n_experts // nodes} per node",
            }
            out["data_parallel"] = {
                "source_ranks": S,
                "ranks_per_node": min(cfg.ranks_per_node, S),
                "nodes": nodes,
                "rank_nodes": cfg.rank_nodes,
                "expert_nodes": cfg.expert_nodes,
            }
        if cfg.router == "locmoe":
            from .model import LOCMOE_DELTA_QUANTILE, locmoe_capacity_lower_bound

            T = rec["counts"].shape[0]
            last = slice(max(0, T - max(1, T // 10)), T)
            delta = np.median(rec["router_cosine"][last], axis=0)  # [L]
            out["locmoe"] = {
                "reference": "Li et al. 2024, LocMoE: A Low-overhead MoE for Large Language Model Training, arXiv "
                "2401.13920, section 3.2",
                "locality_loss_coefficient": cfg.locality_loss,
                "locality_loss_last_tenth": [round(float(v), 5) for v in rec["locality_loss"][last].mean(axis=0)],
                "delta_quantile": LOCMOE_DELTA_QUANTILE,
                "delta_last_tenth": [round(float(v), 5) for v in delta],
                "capacity_lower_bound": [round(float(v), 5) for v in
                                         locmoe_capacity_lower_bound(delta, cfg.d_model, cfg.n_experts)],
                "capacity_lower_bound_at_paper_delta": round(
                    float(locmoe_capacity_lower_bound(0.03, cfg.d_model, cfg.n_experts)), 5),
                "capacity_used": cfg.capacity(),
                "note": "delta: per step the cosine between a routed token and its expert's gating weight that "
                f"{1 - LOCMOE_DELTA_QUANTILE:.0%} of the step's tokens reach (extras router_cosine[T, L]), median over "
                "the last tenth of the run; the bound is eq. 9, ec_min = 1 / (n [1 - I_{delta^2}(1/2, (d-1)/2)])",
            }
        return out

    def _licence(self) -> str:
        text = "Apache-2.0 (generated by this project; trained on text of the Python standard library, PSF licence"
        if "text" in self.corpora:
            text += ", and on documentation installed on the machine, each file under its package's licence"
        return text + ")"

    def _model_info(self, tokens_per_step: int) -> ModelInfo:
        cfg = self.cfg
        return ModelInfo(
            layers=cfg.n_layers,
            moe_layers=self.L,
            experts=cfg.n_experts,
            top_k=cfg.top_k,
            router=cfg.router,
            aux_loss=cfg.aux_loss,
            capacity_factor=cfg.capacity_factor,
            tokens_per_step=tokens_per_step,
        )

    def probe_trace(
        self, trace_id: str, stats: dict[str, Any] | None = None, steps_asked: int | None = None
    ) -> tuple[Trace, dict[str, np.ndarray]] | None:
        """The probe trace of the run whose training trace is `trace_id` (dataset ``<trace_id>-probe``), its card
        linking the training trace; plus its extra arrays (held-out loss, dropped slots). None without probes."""
        cfg = self.cfg
        probes = self.probe_records() if cfg.probe_every else None
        if probes is None or not probes["steps"].size:
            return None
        rec = self.records()
        info = self._probe_info(stats)
        pid = probe_id(trace_id)
        extra = {
            "preset": cfg.preset,
            "seed": cfg.seed,
            "config": cfg.to_dict(),
            "probe_of": {
                "id": trace_id,
                "fingerprint": fingerprint(rec["counts"].astype(np.int64), rec["steps"]),
                "relation": "the training-batch trace of the same run; probe record at step t used the weights of "
                "its training record t",
            },
            "probe": info,
            "moe_layer_indices": cfg.moe_layer_ids,
            "counts_are": self._counts_are() + ", summed over the probe's chunks",
            "routing": self._routing(),
            "held_out_loss": [round(float(v), 4) for v in probes["loss"]],
            "steps_asked": steps_asked,
            "extras_file": f"{EXTRAS_FILE}: loss[P] float32 (held-out LM loss per probe), dropped[P, L] (slots "
            "dropped per probe and layer, capacity per chunk)",
        }
        if cfg.corpus_schedule:
            extra["corpus_schedule"] = [{"from_step": first, "sources": list(srcs)} for first, srcs in self.schedule]
        notes = (
            f"Probe batches of training run {trace_id}: every {cfg.probe_every} iterations, before the training "
            f"step, the current weights routed {info['tokens']} tokens of held-out text (files that training never "
            f"draws from) without gradient, in chunks of {info['chunk_tokens']} tokens; each record is the load a "
            f"batch of that size would see, with its sampling noise. {cfg.notes}. {self._text_notes()}"
        )
        card = Card(
            id=pid,
            title=f"Tracer {cfg.preset} probes: {info['tokens']} held-out tokens every {cfg.probe_every} iterations "
            f"of {trace_id}",
            source=self._source(steps_asked, rec["counts"].shape[0]),
            licence=self._licence(),
            model=self._model_info(info["tokens"]),
            step_unit="training iteration",
            layer_names=[f"block{i}.moe" for i in cfg.moe_layer_ids],
            notes=notes,
            extra=extra,
        )
        dmax = int(probes["dropped"].max()) if probes["dropped"].size else 0
        extras = {
            "loss": probes["loss"].astype(np.float32),
            "dropped": probes["dropped"].astype(np.uint32 if dmax >= 65536 else np.uint16),
        }
        return Trace.from_arrays(probes["counts"], probes["steps"], card, source=f"tracer probes {pid}",
                                 extras=extras), extras


def write_trace(trace: Trace, folder: str | os.PathLike) -> Path:
    """storage.save the trace (its extras beside it) into `folder`, replacing an older one."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    storage.save(trace, folder)
    return folder


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    write(tmp)
    os.replace(tmp, path)


def default_run_dir(trace_id: str) -> Path:
    from ..registry import data_home

    return data_home() / "tracer-runs" / trace_id


def config_from_args(preset: str, **overrides: Any) -> TracerConfig:
    from .config import get_preset

    cfg = get_preset(preset)
    if overrides.get("router") in ("switch", "locmoe") and overrides.get("top_k") is None:
        overrides["top_k"] = 1
    out = cfg.replace(**overrides)
    if out.scaled and any(overrides.get(k) is not None for k in ("d_model", "n_heads", "seq_len", "batch_size")):
        out.scaled = {
            **out.scaled,
            "why": out.scaled.get("why", "") + "; shape overridden on the command line (see config)",
        }
    return out


def record_trace(
    cfg: TracerConfig,
    steps: int,
    trace_id: str,
    *,
    device: str = "cpu",
    out: str | os.PathLike | None = None,
    compile: bool | str | None = None,
    flush_every: int = 100,
    corpus_root: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    save_state: bool = True,
    time_limit: float | None = None,
    fresh: bool = False,
    register: bool = True,
    progress: Callable[[int, int], None] | None = None,
    text_roots: list[str | os.PathLike] | None = None,
    on_records: Callable[[np.ndarray, np.ndarray], None] | None = None,
) -> dict[str, Any]:
    """Train (or continue) a tracer run to `steps` iterations, write its trace and store it as a dataset.

    The run keeps its checkpoints in `out` (default :func:`default_run_dir`), so calling this again
    continues it; `fresh` starts over. `progress(step, first_step)` is called after every iteration.
    With probes, the probe trace is written to ``out/probe`` and stored as dataset ``<trace_id>-probe``; the two
    cards link each other (by id and fingerprint). `text_roots`: the folders of the ``text`` source.
    `on_records(counts, steps)`: each block of new records as it reaches the host (:class:`Tracer`).
    Returns what happened: shape, folders, throughput, final loss, fingerprint, the dataset stored (and the probe's).
    """
    from .. import registry

    if cfg.probe_every:
        (registry.check_user_id if register else registry.check_id)(probe_id(trace_id))
    out = Path(out) if out is not None else default_run_dir(trace_id)
    if fresh and out.exists():
        shutil.rmtree(out)
    if checkpoint_every is None:
        checkpoint_every = 1000 if device == "cpu" else 0
    tracer = Tracer(
        cfg,
        device=device,
        compile=compile,
        flush_every=flush_every,
        corpus_root=corpus_root,
        text_roots=text_roots,
        on_records=on_records,
    )
    resumed = tracer.load_checkpoint(out)
    first = tracer.step
    stats = tracer.run(
        steps,
        out=out,
        checkpoint_every=checkpoint_every,
        save_state=save_state,
        time_limit=time_limit,
        progress=None if progress is None else lambda step, _info: progress(step, first),
    )
    stats["resumed_from"] = (
        None
        if not resumed
        else int(tracer.first_step + (tracer.prev["counts"].shape[0] if tracer.prev is not None else 0))
    )
    trace, extras = tracer.trace(trace_id, stats=stats, steps_asked=steps)
    folder = write_trace(trace, out / TRACE_DIR)
    result = {
        "id": trace_id,
        "shape": list(trace.shape),
        "run_folder": str(out),
        "trace_folder": str(folder),
        **stats,
        "already_complete": resumed and first >= steps,
        "final_loss": round(float(extras["loss"][-100:].mean()), 4),
        "drop_fraction": trace.card.extra["drop_fraction_total"],
        "fingerprint": trace.fingerprint,
    }
    probe = tracer.probe_trace(trace_id, stats=stats, steps_asked=steps)
    if probe is not None:
        ptrace, pextras = probe
        pfolder = write_trace(ptrace, out / PROBE_DIR)
        result["probe"] = {
            "id": ptrace.id,
            "shape": list(ptrace.shape),
            "trace_folder": str(pfolder),
            "fingerprint": ptrace.fingerprint,
            "held_out_loss": round(float(pextras["loss"][-1]), 4),
            **(stats.get("probe") or {}),
        }
    if register:
        result["dataset"] = registry.add(trace, trace_id).ref  # with its extras
        if probe is not None:
            result["probe"]["dataset"] = registry.add(ptrace, ptrace.id).ref
    return result


__all__ = [
    "Tracer",
    "record_trace",
    "probe_id",
    "write_trace",
    "default_run_dir",
    "config_from_args",
    "reproduce_command",
    "code_version",
]
