"""Train an MoE language model and record its expert load every step.

:class:`Tracer` owns the model, the optimiser, the corpus on the device and the record buffer.
``train_step`` runs one iteration without synchronising with the device; the per-layer counts
(before capacity drops), dropped slots and the loss go into a :class:`~.buffer.StepBuffer`.

Everything that makes a run reproducible is in its :class:`~.config.TracerConfig`: the model is
initialised from ``seed``, and the batch of iteration ``t`` is drawn from a generator seeded by
``(seed, t)``, so a run resumed from a checkpoint sees the same batches as a straight run. The
learning-rate schedule (linear warm-up, cosine decay over ``decay_steps``, then constant) does
not depend on the number of steps asked for, so a run can be extended.

Run folder (``out``): ``config.json``, ``records.npz`` (counts, dropped, loss recorded so far),
``state.pt`` (model and optimiser, read back with ``torch.load(weights_only=True)``) and
``trace/`` (the latest trace written from the records).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import storage
from ..trace import Card, ModelInfo, Trace
from .buffer import StepBuffer
from .config import GPT3_REFERENCE, PRESETS, TracerConfig
from .corpus import build_corpus
from .model import MoEGPT, flops_per_token

CONFIG_FILE = "config.json"
RECORDS_FILE = "records.npz"
STATE_FILE = "state.pt"
TRACE_DIR = "trace"
EXTRAS_FILE = "extras.npz"
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


def reproduce_command(cfg: TracerConfig, steps: int, device: str) -> str:
    """The `python -m bench trace` command line that reproduces `cfg`."""
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
    }
    for name, flag in flags.items():
        value = getattr(cfg, name)
        if base is None or getattr(base, name) != value:
            parts.append(f"{flag} {value}")
    if device != "cpu":
        parts.append(f"--device {device}")
    return " ".join(p for p in parts if p)


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
    ):
        self.cfg = cfg
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
        self.corpus = build_corpus(corpus_root)
        if len(self.corpus) < cfg.seq_len + 2:
            raise ValueError("corpus is shorter than one sequence")
        self.data = torch.from_numpy(self.corpus.data.copy()).to(self.device)
        self.pos = torch.arange(cfg.seq_len + 1, device=self.device)
        torch.manual_seed(cfg.seed)
        self.model = MoEGPT(cfg).to(self.device)
        decay = [p for n, p in self.model.named_parameters() if p.dim() >= 2 and not n.startswith("wpe")]
        no_decay = [p for n, p in self.model.named_parameters() if not (p.dim() >= 2 and not n.startswith("wpe"))]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        kw = {"fused": True} if cuda else {}
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **kw)
        self.params = [p for p in self.model.parameters()]
        self.gen = torch.Generator(device=self.device)
        self.L = len(cfg.moe_layer_ids)
        self.buffer = StepBuffer(
            {
                "counts": ((self.L, cfg.n_experts), torch.int32),
                "dropped": ((self.L,), torch.int32),
                "loss": ((), torch.float32),
            },
            flush_every,
            self.device,
        )
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

    # -- one iteration -------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        c = self.cfg
        if step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        t = min(1.0, (step - c.warmup_steps) / max(1, c.decay_steps - c.warmup_steps))
        return c.lr * (c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cfg
        self.gen.manual_seed(c.seed * 1_000_003 + step)
        starts = torch.randint(
            0, self.data.shape[0] - c.seq_len - 1, (c.batch_size,), device=self.device, generator=self.gen
        )
        tok = self.data[starts[:, None] + self.pos].long()
        return tok[:, :-1], tok[:, 1:]

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
        loss, aux, counts, dropped = self.forward(self.step)
        if record:  # device-side copies only; no host sync
            self.buffer.push(counts=counts, dropped=dropped, loss=loss.detach())
        total = loss + self.cfg.aux_loss * aux if self.cfg.aux_loss > 0 else loss
        total.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1

    # -- records -------------------------------------------------------------------------
    def records(self) -> dict[str, np.ndarray]:
        """Every record of this run so far (loaded and new): counts [T, L, E], dropped [T, L], loss [T], steps [T]."""
        new = self.buffer.arrays()
        if self.prev is not None:
            out = {k: np.concatenate([self.prev[k], new[k]]) for k in ("counts", "dropped", "loss")}
        else:
            out = dict(new)
        out["steps"] = np.arange(self.first_step, self.first_step + out["counts"].shape[0], dtype=np.int64)
        return out

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
        _atomic(
            out / RECORDS_FILE,
            lambda p: np.savez_compressed(
                p, counts=rec["counts"], dropped=rec["dropped"], loss=rec["loss"], steps=rec["steps"]
            ),
        )
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
        self.prev = {k: rec[k][:step] for k in ("counts", "dropped", "loss")}
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
        Returns run statistics (wall time, tokens/s, whether it stopped early)."""
        start_step = self.step
        t0 = time.monotonic()
        deadline = t0 + time_limit if time_limit else None
        stopped_early = False
        try:
            while self.step < steps:
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
        return {
            "wall_seconds": round(wall, 2),
            "steps_run": done,
            "stopped_early": stopped_early,
            "tokens_per_second": round(done * self.cfg.tokens_per_step / wall, 1) if wall > 0 else None,
        }

    # -- the trace -----------------------------------------------------------------------
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
            "counts_are": "token slots routed to each expert before capacity drops"
            + (
                " (token-choice top-k demand; expert-choice dispatches exactly C per expert)"
                if cfg.router == "expert-choice"
                else ""
            ),
            "parameters": int(self.model.num_params()),
            "active_params_per_token": int(fl["active_params"]),
            "flops_per_token": fl["total"],
            "device": device_name,
            "torch": torch.__version__,
            "precision": "bf16 autocast, fp32 master weights and router" if self.amp else "fp32",
            "compiled": self.compiled or False,
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
            "and layer)",
        }
        if ref:
            extra["paper_shape"] = ref
            extra["scaled_down"] = cfg.scaled
        device = "cuda" if self.device.type == "cuda" else "cpu"
        source = {
            "command": reproduce_command(cfg, steps_asked or T, device),
            "generator": "moe-load-bench tracer (datasets_registry.tracer)",
            **code_version(),
            "corpus": self.corpus.info,
        }
        title = (f"Tracer {cfg.preset}: {cfg.router} top-{cfg.top_k}, aux loss {cfg.aux_loss}, seed {cfg.seed}, "
                 f"{T} iterations")
        notes = (
            f"{cfg.notes}. Byte-level LM on the Python {self.corpus.info['python']} standard library "
            f"({self.corpus.info['files']} files). Every iteration is recorded."
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
            licence="Apache-2.0 (generated by this project; trained on text of the Python standard library, PSF "
                    "licence)",
            model=ModelInfo(
                layers=cfg.n_layers,
                moe_layers=self.L,
                experts=cfg.n_experts,
                top_k=cfg.top_k,
                router=cfg.router,
                aux_loss=cfg.aux_loss,
                capacity_factor=cfg.capacity_factor,
                tokens_per_step=cfg.tokens_per_step,
            ),
            step_unit="training iteration",
            layer_names=[f"block{i}.moe" for i in cfg.moe_layer_ids],
            notes=notes,
            extra=extra,
        )
        trace = Trace.from_arrays(counts, rec["steps"], card, source=f"tracer run {trace_id}")
        dmax = int(rec["dropped"].max()) if rec["dropped"].size else 0
        extras = {
            "loss": rec["loss"].astype(np.float32),
            "dropped": rec["dropped"].astype(np.uint16 if dmax < 65536 else np.uint32),
        }
        return trace, extras


def write_trace(trace: Trace, extras: dict[str, np.ndarray], folder: str | os.PathLike) -> Path:
    """storage.save the trace into `folder` (replacing an older one) and put the extras beside it."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    storage.save(trace, folder)
    np.savez_compressed(folder / EXTRAS_FILE, **extras)
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
    if overrides.get("router") == "switch" and overrides.get("top_k") is None:
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
) -> dict[str, Any]:
    """Train (or continue) a tracer run to `steps` iterations, write its trace and store it as a dataset.

    The run keeps its checkpoints in `out` (default :func:`default_run_dir`), so calling this again
    continues it; `fresh` starts over. `progress(step, first_step)` is called after every iteration.
    Returns what happened: shape, folders, throughput, final loss, fingerprint, the dataset stored.
    """
    from .. import registry

    out = Path(out) if out is not None else default_run_dir(trace_id)
    if fresh and out.exists():
        shutil.rmtree(out)
    if checkpoint_every is None:
        checkpoint_every = 1000 if device == "cpu" else 0
    tracer = Tracer(cfg, device=device, compile=compile, flush_every=flush_every, corpus_root=corpus_root)
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
    folder = write_trace(trace, extras, out / TRACE_DIR)
    result = {
        "id": trace_id,
        "shape": list(trace.shape),
        "run_folder": str(out),
        "trace_folder": str(folder),
        **stats,
        "already_complete": resumed and first >= steps,
        "final_loss": round(float(extras["loss"][-100:].mean()), 4),
        "fingerprint": trace.fingerprint,
    }
    if register:
        entry = registry.add(trace, trace_id)
        shutil.copy2(folder / EXTRAS_FILE, entry.folder / EXTRAS_FILE)
        result["dataset"] = entry.ref
    return result


__all__ = [
    "Tracer",
    "record_trace",
    "write_trace",
    "default_run_dir",
    "config_from_args",
    "reproduce_command",
    "code_version",
]
