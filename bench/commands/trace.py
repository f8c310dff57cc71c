"""`python -m bench trace ...`: train an MoE language model and record its expert load.

    python -m bench trace --preset tiny-cpu --steps 2000 --seed 1
    python -m bench trace --preset gpt3-125m-16e --steps 10000 --device cuda --id my-run
    python -m bench trace plot ID [--out FILE.png]
    python -m bench trace presets

A run keeps its checkpoints in ``--out`` (default ``<data home>/tracer-runs/<id>``); running the
same command again continues from the last checkpoint (to a larger ``--steps`` too). The trace
is stored as a user dataset (``registry.add``) unless ``--no-register``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from datasets_registry.tracer.config import EXPERT_MATMULS, GATES, PRESETS, ROUTERS  # plain dataclasses: no torch

    p = sub.add_parser(
        "trace",
        help="train an MoE model and record its expert load (the tracer); plot traces",
        description="Train a GPT-style MoE language model on the Python standard library and record, every "
        "iteration and MoE layer, the tokens routed to each expert. Sub-commands: plot, presets.",
    )
    p.add_argument(
        "--preset", default="tiny-cpu", help=f"{', '.join(PRESETS)} (see `trace presets`)"
    )
    p.add_argument(
        "--steps", type=int, default=None, help="train until this many iterations (default: the preset's decay_steps)"
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda if available)")
    p.add_argument(
        "--router", default=None, choices=list(ROUTERS)
    )
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--aux-loss", type=float, default=None, help="load-balancing loss coefficient (0 = none)")
    p.add_argument("--capacity-factor", type=float, default=None, help="<= 0: no capacity limit")
    p.add_argument("--experts", type=int, default=None)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--d-model", type=int, default=None)
    p.add_argument("--heads", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument(
        "--gate", default=None, choices=list(GATES), help="deepseek-moe scores (default sigmoid, as V3)"
    )
    p.add_argument("--shared-experts", type=int, default=None, help="deepseek-moe shared experts (default 2)")
    p.add_argument("--expert-ff", type=int, default=None, help="hidden width of each expert (default: d_ff)")
    p.add_argument(
        "--expert-matmul", default=None, choices=list(EXPERT_MATMULS), help="experts' kernel (default padded bmm)"
    )
    p.add_argument(
        "--expert-bias", action="store_true", help="auxiliary-loss-free balancing: a per-expert selection bias"
    )
    p.add_argument("--bias-update-rate", type=float, default=None, help="with --expert-bias (default 1e-3)")
    p.add_argument(
        "--corpus-schedule", default=None, help='text source by step, e.g. "0:python,3000:text,6000:python+text"'
    )
    p.add_argument(
        "--text-corpus", type=Path, action="append", default=None, help="folder of the text source (repeatable)"
    )
    p.add_argument(
        "--sources", type=int, default=None,
        help="simulated data-parallel ranks S: record each step's load per rank, [S, E] (default 0: none)",
    )
    p.add_argument("--ranks-per-node", type=int, default=None, help="ranks per node of the layout (default 8)")
    p.add_argument("--max-nodes", type=int, default=None, help="node-limited router: nodes per token M")
    p.add_argument("--locality-loss", type=float, default=None, help="locmoe router: locality loss mu (default 0.01)")
    p.add_argument("--probe-every", type=int, default=None, help="probe held-out text every K steps (default 0: no)")
    p.add_argument("--probe-tokens", type=int, default=None, help="tokens per probe (default 262144)")
    p.add_argument("--probe-chunk", type=int, default=None, help="tokens per probe forward pass (default 65536)")
    p.add_argument("--holdout", type=float, default=None, help="fraction of files held out for probes (default 0.05)")
    p.add_argument("--id", default=None, help="dataset id (default: PRESET-ROUTER-sSEED)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="run folder for checkpoints and the trace (default: <data home>/tracer-runs/ID)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help="iterations between checkpoints (default 1000 on CPU, 0 = only at the end on GPU)",
    )
    p.add_argument(
        "--no-state",
        action="store_true",
        help="checkpoint only the records, not model/optimiser (the run cannot be continued)",
    )
    p.add_argument(
        "--fresh", action="store_true", help="ignore (delete) an earlier run in --out instead of continuing it"
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="stop after this many seconds of training, keeping what was recorded",
    )
    p.add_argument(
        "--flush-every", type=int, default=100, help="iterations kept on the device before copying records to the host"
    )
    p.add_argument(
        "--compile",
        default=None,
        choices=["blocks", "full", "cudagraphs", "none"],
        help="torch.compile mode: cudagraphs (whole model with CUDA graphs; default on CUDA), full (whole model), "
        "blocks (one graph per block kind, fastest to compile), none (default on CPU)",
    )
    p.add_argument("--corpus", type=Path, default=None, help="corpus root (default: this Python's standard library)")
    p.add_argument(
        "--no-register", action="store_true", help="do not store the trace in the registry (it stays in --out/trace)"
    )
    p.add_argument(
        "--plan", default=None, metavar="MODEL",
        help="while training, feed the records to this predictor and plan a placement every --plan-every iterations "
        "(bench/live.py); the plans and their scores go to RUN/plans.json",
    )
    p.add_argument("--plan-every", type=int, default=1000, help="iterations between plans (default 1000)")
    p.add_argument("--plan-spec", default="G=8,R=8", help="placement of the plans (default G=8,R=8)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_trace)

    tsub = p.add_subparsers(dest="trace_command", metavar="ACTION")
    q = tsub.add_parser("plot", help="plot a dataset's load proportions over steps, one panel per layer")
    q.add_argument("id", help="dataset id, NAME or NAME@VERSION, or a trace folder")
    q.add_argument("--out", dest="plot_out", type=Path, default=None, help="PNG file (default: ID.png)")
    q.add_argument("--points", type=int, default=400, help="points per line (records are averaged into bins)")
    q.add_argument("--dpi", type=int, default=72)
    q.set_defaults(func=cmd_plot)

    q = tsub.add_parser(
        "serve",
        help="serve a trained tracer model on a stream of requests and record an inference trace",
        description="Serve the model of a tracer run folder (trained without --no-state) to a closed loop of clients "
        "sending windows of held-out text, batched as a serving engine batches (continuous batching with chunked "
        "prefill), and record per forward pass and MoE layer the tokens sent to each expert, with the token-level "
        "routing of every K-th pass (datasets_registry/tracer/serve.py).",
    )
    q.add_argument("run_folder", type=Path, help="a tracer run folder (its state.pt and trace/card.json)")
    q.add_argument("--id", dest="serve_id", required=True, help="dataset id of the inference trace")
    q.add_argument("--mixture", default="0:python", help='workload sources by pass, e.g. "0:python,1000:text+c"')
    q.add_argument("--passes", type=int, default=2000, help="forward passes to record")
    q.add_argument("--concurrency", type=int, default=16, help="clients in the closed loop (requests in flight)")
    q.add_argument("--max-batch-tokens", type=int, default=512, help="token budget of a forward pass")
    q.add_argument("--prompt", default="32:256", help="prompt length range in tokens, MIN:MAX")
    q.add_argument("--output", default="16:128", help="output length range in tokens, MIN:MAX")
    q.add_argument("--sample-every", type=int, default=10, help="token-level routing of every K-th pass (0: none)")
    q.add_argument("--serve-seed", type=int, default=1, help="seed of the request stream")
    q.add_argument("--serve-device", default="auto", help="cpu, cuda, cuda:N, or auto")
    q.add_argument("--serve-out", type=Path, default=None, help="folder of the trace (default RUN/serve/ID)")
    q.add_argument("--no-register", dest="serve_no_register", action="store_true")
    q.add_argument("--json", dest="serve_json", action="store_true")
    q.set_defaults(func=cmd_serve)

    q = tsub.add_parser("presets", help="list the presets")
    q.add_argument("--json", dest="presets_json", action="store_true")
    q.set_defaults(func=cmd_presets)


def cmd_presets(args) -> int:
    from datasets_registry.tracer.config import PRESETS

    rows = {name: cfg.to_dict() for name, cfg in PRESETS.items()}
    if args.presets_json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    for name, c in PRESETS.items():
        print(
            f"{name:16s} {c.n_layers} layers ({len(c.moe_layer_ids)} MoE), d_model {c.d_model}, {c.n_experts} "
            f"experts, top-{c.top_k} "
            f"{c.router}, aux {c.aux_loss}, capacity {c.capacity_factor}, {c.tokens_per_step} tokens/step "
            f"({c.batch_size}x{c.seq_len})"
        )
        if c.notes:
            print(f"{'':16s} {c.notes}")
    return 0


def _range(text: str, what: str) -> tuple[int, int]:
    low, sep, high = text.partition(":")
    if not sep or not low.isdigit() or not high.isdigit():
        raise ValueError(f"--{what} {text!r}: expected MIN:MAX in tokens, e.g. 32:256")
    return int(low), int(high)


def cmd_serve(args) -> int:
    from datasets_registry.tracer.serve import ServeConfig, record_inference

    prompt, output = _range(args.prompt, "prompt"), _range(args.output, "output")
    cfg = ServeConfig(mixture=args.mixture, passes=args.passes, concurrency=args.concurrency,
                      max_batch_tokens=args.max_batch_tokens, prompt_min=prompt[0], prompt_max=prompt[1],
                      output_min=output[0], output_max=output[1], sample_every=args.sample_every, seed=args.serve_seed)
    progress, bar = _progress(args.serve_id, cfg.passes, cfg.max_batch_tokens, quiet=args.serve_json)
    with bar:
        result = record_inference(args.run_folder, cfg, args.serve_id, device=_device(args.serve_device),
                                  out=args.serve_out, register=not args.serve_no_register,
                                  progress=lambda n: progress(n, 0))
    if args.serve_json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        T, L, E = result["shape"]
        kinds = ", ".join(f"{n} {k}" for k, n in result["passes_by_kind"].items())
        where = f"stored as dataset {result['dataset']}" if "dataset" in result else f"in {result['trace_folder']}"
        print(f"{args.serve_id}: {T} forward passes ({kinds}) x {L} MoE layers x {E} experts, "
              f"{result['tokens_sampled']} tokens sampled, {where}; {result['seconds']} s")
    return 0


def cmd_plot(args) -> int:
    from datasets_registry import registry, storage
    from datasets_registry.tracer.plot import plot_trace

    folder = Path(args.id)
    if folder.is_dir() and (folder / storage.CARD_FILE).exists():
        trace = storage.load(folder)
    else:
        trace = registry.load(args.id)
    out = args.plot_out or Path(f"{trace.id}.png")
    plot_trace(trace, out, max_points=args.points, dpi=args.dpi)
    print(f"wrote {out}")
    return 0


def _write_plans(planner, path: Path) -> str:
    """What a live system would have decided, beside the trace: each plan's iteration, forecast mean, replicas,
    slots and (once its horizon was recorded) scores."""
    plans = [{"step": p.step, "estimate": p.estimate.round(6).tolist(), "replicas": p.placement.replicas.tolist(),
              "slots": p.placement.slots.tolist(), "slot_device": p.placement.slot_device.tolist(),
              "scores": p.scores} for p in planner.plans]
    doc = {"model": planner.model if isinstance(planner.model, str) else type(planner.model).__name__,
           "every": planner.every, "horizon": planner.horizon, "spec": planner.spec.describe(), "plans": plans}
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return str(path)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _progress(trace_id: str, steps: int, tokens_per_step: int, quiet: bool):
    """(callback(step, first_step), Progress): a bar with the time left under a terminal, else a line every 5%."""
    import time

    from .common import Progress

    t0, first_step = time.monotonic(), []

    def rate(step: int) -> str:
        first = first_step[0] if first_step else 0
        return f"{(step - first) * tokens_per_step / max(time.monotonic() - t0, 1e-9):,.0f} tok/s"

    progress = Progress(trace_id, "steps", every=0.05, detail=rate, transient=False, enabled=not quiet)

    def update(step: int, first: int) -> None:
        if not first_step:
            first_step.append(first)
        if step % 10 == 0 or step == steps or progress.bar is None:
            progress.update(step, steps)

    return update, progress


def cmd_trace(args) -> int:
    import signal

    from datasets_registry import registry
    from datasets_registry.tracer.config import get_preset
    from datasets_registry.tracer.train import config_from_args, record_trace

    get_preset(args.preset)  # a clear error for an unknown preset
    cfg = config_from_args(
        args.preset,
        seed=args.seed,
        router=args.router,
        top_k=args.top_k,
        aux_loss=args.aux_loss,
        capacity_factor=args.capacity_factor,
        n_experts=args.experts,
        n_layers=args.layers,
        d_model=args.d_model,
        n_heads=args.heads,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        lr=args.lr,
        gate=args.gate,
        n_shared=args.shared_experts,
        expert_ff=args.expert_ff,
        expert_matmul=args.expert_matmul,
        expert_bias=True if args.expert_bias else None,
        bias_update_rate=args.bias_update_rate,
        corpus_schedule=args.corpus_schedule,
        source_ranks=args.sources,
        ranks_per_node=args.ranks_per_node,
        max_nodes=args.max_nodes,
        locality_loss=args.locality_loss,
        probe_every=args.probe_every,
        probe_tokens=args.probe_tokens,
        probe_chunk=args.probe_chunk,
        holdout=args.holdout,
    )
    steps = args.steps if args.steps is not None else cfg.decay_steps
    if steps < 1:
        raise ValueError("--steps must be >= 1")
    trace_id = args.id or f"{cfg.preset}-{cfg.router_tag()}-s{cfg.seed}"
    registry.parse_id(trace_id)
    progress, bar = _progress(trace_id, steps, cfg.tokens_per_step, args.quiet)

    # SIGTERM (a job scheduler, `timeout`) ends the run like Ctrl-C: records and state are kept.
    def _term(signum, frame):
        raise KeyboardInterrupt

    planner = None
    if args.plan:
        from bench.live import LivePlanner

        planner = LivePlanner(args.plan, args.plan_spec, every=args.plan_every)
    old = signal.signal(signal.SIGTERM, _term)
    try:
        with bar:
            result = record_trace(
                cfg,
                steps,
                trace_id,
                device=_device(args.device),
                out=args.out,
                compile=False if args.compile == "none" else args.compile,
                flush_every=args.flush_every,
                corpus_root=args.corpus,
                checkpoint_every=args.checkpoint_every,
                save_state=not args.no_state,
                time_limit=args.time_limit,
                fresh=args.fresh,
                register=not args.no_register,
                progress=progress,
                text_roots=args.text_corpus,
                on_records=None if planner is None else planner.feed,
            )
    finally:
        signal.signal(signal.SIGTERM, old)
    if planner is not None:
        result["plans"] = _write_plans(planner, Path(result["run_folder"]) / "plans.json")
    if result["already_complete"]:
        print(
            f"{result['run_folder']} already holds {steps} iterations or more; its trace was written again",
            file=sys.stderr,
        )
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        where = (
            f"stored as dataset {result['dataset']}" if "dataset" in result else f"written to {result['trace_folder']}"
        )
        T, L, E = result["shape"]
        print(
            f"{trace_id}: {T} iterations x {L} MoE layers x {E} experts, {where}"
            f"{' (stopped early by --time-limit)' if result['stopped_early'] else ''}; "
            f"{result['tokens_per_second']} tokens/s, final loss {result['final_loss']}"
        )
    return 0
