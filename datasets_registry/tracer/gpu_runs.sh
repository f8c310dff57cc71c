#!/usr/bin/env bash
# Traces v2: the tracer runs for one H200 and 30 minutes of GPU time, in three waves; each wave is one call of
# under 10 minutes that trains its runs at once on the one GPU. Run from the repository root:
#
#     bash datasets_registry/tracer/gpu_runs.sh WAVE [RUN_DIR]      # WAVE: 1, 2, 3 or serve
#
# Every run is `python -m bench trace ... --device cuda --no-register --out RUN_DIR/ID` with --no-state (the
# runs are not continued, and a 125M model's state is 2.7 GB) and --time-limit (a run that is slower than
# planned stops cleanly and keeps what it recorded; its card says so). When the variable OUT names a folder,
# each run's trace/ and probe/ folders, its JSON result and its log are packed into OUT/ID.tar.gz (one archive
# per run, a few MB each), to be copied back and stored with `python -m bench datasets add` or by hand.
#
# Time estimates. docs/tracer.md: four gpt3-125m-16e runs sharing one H100 took 494 s for 10,000 iterations
# (331k tokens/s together, 12.4 ms per iteration of GPU time each). Measured on an H200 for this plan (after
# compiling, 300-400 timed iterations): gpt3-125m-16e 9.4 ms per iteration alone, 23-27 ms each with three at
# once; a probe of 262,144 tokens 0.09 s alone and 0.13-0.20 s with three at once, so probes every 100
# iterations add 6-10% to a run; gpt3-125m-128e ~11.5 ms per iteration of GPU time (34 ms each with three at
# once); gpt3-125m-64e-ds ~11.5 ms alone (23-24 ms each with two at once). Runs that share the GPU take about
# the sum of their GPU times; compiling and reading the text take ~50-60 s at the start of a wave.
#
#   wave 1: 3 x gpt3-125m-16e top-2 with probes, seeds 3-5        ~3 x 104 s of GPU time
#           + gpt3-125m-16e domain shift with probes              ~103 s: wave ~8 minutes
#   wave 2: 3 x gpt3-125m-128e with probes, seeds 1-3 (5,000 it.)  ~3 x 64 s
#           + gpt3-125m-64e-ds (DeepSeekMoE routing + aux loss)   ~127 s: wave ~6 minutes
#   wave 3: gpt3-125m-64e-ds, auxiliary-loss-free (bias, no aux)  ~127 s
#           + gpt3-125m-16e top-2, auxiliary-loss-free            ~105 s: wave ~5 minutes
#   in all ~19 minutes of calls, plus a machine's start.
#
#   locality: the five routers of docs/locality.md on gpt3-125m-16e (16 experts; hash top-2 and top-1, Switch,
#           softmax top-2, LocMoE, node-limited top-2 on one node of four), 4,000 iterations each, the same
#           batches, recording the load per simulated data-parallel rank (8 ranks, 2 per node: 4 nodes of 4
#           experts), plus LocMoE with a 10x locality loss; seven runs at once, ~7 x 9.4 ms per iteration of GPU
#           time: ~4.5-5.5 minutes after ~1 minute of compiling. LIMIT 400 s keeps the wave inside one 10-minute
#           call (a run that is slower stops there; docs/locality.md compares the steps all runs reached).
set -euo pipefail

WAVE=${1:?usage: gpu_runs.sh WAVE [RUN_DIR] (WAVE: 1, 2, 3, serve or locality)}
RUN_DIR=${2:-tracer-v2-runs}
LIMIT=${LIMIT:-520}  # seconds of training per run: the runs of a wave end well inside a 10-minute call
OUT_DIR=$RUN_DIR
mkdir -p "$OUT_DIR"
command -v python >/dev/null || python() { python3 "$@"; }
export PYTHONUNBUFFERED=1

NAMES=()
PIDS=()
run() {  # run ID COMMAND...: start one trace in the background; its JSON result and log go beside its folder
    local id=$1
    shift
    NAMES+=("$id")
    "$@" --quiet --json --no-state --time-limit "$LIMIT" >"$OUT_DIR/$id.json" 2>"$OUT_DIR/$id.log" &
    PIDS+=($!)
}

PROBES=(--probe-every 100 --probe-tokens 262144)

case "$WAVE" in
1)
    # ~104 s of GPU time each (10,000 iterations at 9.4 ms plus 100 probes at ~0.1 s)
    for seed in 3 4 5; do
        run "gpt3-125m-16e-top2-s$seed" python -m bench trace --preset gpt3-125m-16e --seed "$seed" "${PROBES[@]}" \
            --id "gpt3-125m-16e-top2-s$seed" --device cuda --no-register --out "$OUT_DIR/gpt3-125m-16e-top2-s$seed"
    done
    # domain shift: standard library, then installed documentation, then the standard library again; ~103 s
    run gpt3-125m-16e-top2-shift-s1 python -m bench trace --preset gpt3-125m-16e --seed 1 "${PROBES[@]}" \
        --corpus-schedule 0:python,3000:text,6000:python \
        --id gpt3-125m-16e-top2-shift-s1 --device cuda --no-register --out "$OUT_DIR/gpt3-125m-16e-top2-shift-s1"
    ;;
2)
    # gpt3-125m-128e: ~64 s of GPU time each (5,000 iterations at ~11.5 ms, plus 50 probes)
    for seed in 1 2 3; do
        run "gpt3-125m-128e-top2-s$seed" python -m bench trace --preset gpt3-125m-128e --seed "$seed" "${PROBES[@]}" \
            --id "gpt3-125m-128e-top2-s$seed" --device cuda --no-register --out "$OUT_DIR/gpt3-125m-128e-top2-s$seed"
    done
    # DeepSeekMoE routing (64 fine-grained experts, top-6 + 2 shared, sigmoid gate) with the aux loss; ~127 s
    run gpt3-125m-64e-ds6-s1 python -m bench trace --preset gpt3-125m-64e-ds --seed 1 "${PROBES[@]}" \
        --id gpt3-125m-64e-ds6-s1 --device cuda --no-register --out "$OUT_DIR/gpt3-125m-64e-ds6-s1"
    ;;
3)
    # the same, auxiliary-loss-free as DeepSeek-V3 (bias update rate 1e-3, no aux loss); ~127 s
    run gpt3-125m-64e-ds6-auxfree-s1 python -m bench trace --preset gpt3-125m-64e-ds --seed 1 "${PROBES[@]}" \
        --expert-bias --bias-update-rate 0.001 --aux-loss 0 \
        --id gpt3-125m-64e-ds6-auxfree-s1 --device cuda --no-register --out "$OUT_DIR/gpt3-125m-64e-ds6-auxfree-s1"
    # softmax top-2 auxiliary-loss-free: compare with gpt3-125m-16e-noaux-s1, which collapses; ~105 s
    run gpt3-125m-16e-top2-auxfree-s1 python -m bench trace --preset gpt3-125m-16e --seed 1 "${PROBES[@]}" \
        --expert-bias --bias-update-rate 0.001 --aux-loss 0 \
        --id gpt3-125m-16e-top2-auxfree-s1 --device cuda --no-register --out "$OUT_DIR/gpt3-125m-16e-top2-auxfree-s1"
    ;;
serve)
    # Inference traces (datasets_registry/tracer/serve.py): train gpt3-125m-16e top-2 keeping its weights, then
    # serve it to a closed loop of clients in two batch regimes and two workload mixtures. ~8 minutes in all.
    model="$OUT_DIR/gpt3-125m-16e-top2-serving-s1"
    python -m bench trace --preset gpt3-125m-16e --seed 1 --id gpt3-125m-16e-top2-serving-s1 --device cuda \
        --no-register --out "$model" --quiet --time-limit "$LIMIT" >"$OUT_DIR/train.log" 2>&1 || exit 1
    shift_mix=0:python,1000:python+text,2000:text+c
    status=0
    serve() {  # serve ID MIXTURE PASSES CONCURRENCY MAX_BATCH_TOKENS SAMPLE_EVERY; packed as soon as it ends
        local id=$1
        python -m bench trace serve "$model" --id "$id" --mixture "$2" --passes "$3" --concurrency "$4" \
            --max-batch-tokens "$5" --sample-every "$6" --serve-device cuda --no-register \
            --serve-out "$OUT_DIR/$id/trace" --json >"$OUT_DIR/$id.json" 2>"$OUT_DIR/$id.log" || status=1
        echo "== $id"
        cat "$OUT_DIR/$id.json" || true
        tail -n 5 "$OUT_DIR/$id.log" || true
        if [ -n "${OUT:-}" ]; then
            tar -czf "$OUT/$id.tar.gz" -C "$OUT_DIR" "$id/trace" "$id.json" "$id.log" || status=1
        fi
    }
    serve gpt3-125m-16e-serve-shift-b512 "$shift_mix" 3000 16 512 20
    serve gpt3-125m-16e-serve-code-b512 0:c,1500:python 3000 16 512 20
    serve gpt3-125m-16e-serve-shift-b4096 "$shift_mix" 2000 64 4096 100
    exit "$status"
    ;;
locality)
    # same preset, seed and batches; only the router differs (Switch and LocMoE are top-1, the others top-2)
    LAYOUT=(--preset gpt3-125m-16e --seed 1 --steps "${STEPS:-4000}" --sources 8 --ranks-per-node 2 --device cuda
        --no-register)
    for spec in hash2:hash:2 hash1:hash:1 switch:switch:1 top2:softmax-topk:2 locmoe:locmoe:1 nl2m1:node-limited:2; do
        IFS=: read -r tag router k <<<"$spec"
        id="gpt3-125m-16e-loc-$tag-s1"
        run "$id" python -m bench trace "${LAYOUT[@]}" --router "$router" --top-k "$k" --id "$id" --out "$OUT_DIR/$id"
    done
    run gpt3-125m-16e-loc-locmoe-mu0.1-s1 python -m bench trace "${LAYOUT[@]}" --router locmoe --locality-loss 0.1 \
        --id gpt3-125m-16e-loc-locmoe-mu0.1-s1 --out "$OUT_DIR/gpt3-125m-16e-loc-locmoe-mu0.1-s1"
    ;;
*)
    echo "unknown wave $WAVE: 1, 2, 3, serve or locality" >&2
    exit 2
    ;;
esac

status=0
for pid in "${PIDS[@]}"; do
    wait "$pid" || status=1
done
for id in "${NAMES[@]}"; do
    echo "== $id"
    cat "$OUT_DIR/$id.json" || true
    tail -n 5 "$OUT_DIR/$id.log" || true
    if [ -n "${OUT:-}" ]; then
        parts=("$id/trace" "$id.json" "$id.log")
        [ -d "$OUT_DIR/$id/probe" ] && parts+=("$id/probe")
        tar -czf "$OUT/$id.tar.gz" -C "$OUT_DIR" "${parts[@]}" || status=1
    fi
done
exit "$status"
