"""Tracer v2 on CPU: probe batches, the deepseek-moe router, auxiliary-loss-free balancing, domain shifts, presets."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.cli import main
from datasets_registry import registry, storage
from datasets_registry.tracer.config import get_preset
from datasets_registry.tracer.corpus import build_corpus, build_text_corpus
from datasets_registry.tracer.train import Tracer, probe_id

TINY = ["--preset", "tiny-cpu", "--batch-size", "4", "--seq-len", "32", "--quiet", "--json"]
REPO = Path(__file__).resolve().parents[3]
GPU_SCRIPT = REPO / "datasets_registry" / "tracer" / "gpu_runs.sh"


def small(**changes):
    return get_preset("tiny-cpu").replace(batch_size=4, seq_len=32, **changes)


def run_json(capsys, *argv) -> dict:
    assert main(["trace", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def letter_corpus(folder: Path, n: int = 40, suffix: str = ".py", first: int = ord("A")) -> Path:
    """`n` files, each made of one byte value of its own (file i: byte first + i), so a window tells its file."""
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"f{i:02d}{suffix}").write_bytes(bytes([first + i]) * 300)
    return folder


# -- probe batches --------------------------------------------------------------------------


def test_training_never_draws_held_out_files_and_probes_draw_only_them(tmp_path):
    root = letter_corpus(tmp_path / "py")
    cfg = small(probe_every=2, probe_tokens=32 * 16, holdout=0.25)
    tr = Tracer(cfg, device="cpu", corpus_root=root)
    corpus = build_corpus(root)
    _train, _held, info = corpus.split(0.25)
    assert info["files"] >= 1 and info["training_files"] >= 1 and info == tr.holdout_info["python"]
    held_bytes = set(np.unique(_held).tolist()) - {ord("\n")}
    train_bytes = set(np.unique(_train).tolist()) - {ord("\n")}
    assert held_bytes and train_bytes and not held_bytes & train_bytes
    seen_train, seen_probe = set(), set()
    for step in range(30):
        x, y = tr.batch(step)
        seen_train |= set(torch.cat([x, y[:, -1:]], 1).unique().tolist())
        seen_probe |= set(tr.probe_batch(step).unique().tolist())
    assert seen_train - {ord("\n")} <= train_bytes and len(seen_train & train_bytes) > 1
    assert seen_probe - {ord("\n")} <= held_bytes and seen_probe & held_bytes
    assert torch.equal(tr.probe_batch(4), tr.probe_batch(4))  # drawn by (seed, step)
    assert not torch.equal(tr.probe_batch(4), tr.probe_batch(6))


def test_probe_counts_are_the_sum_over_chunks_and_change_nothing():
    cfg = small(probe_every=1, probe_tokens=32 * 8, probe_chunk=32 * 8, capacity_factor=0)
    tr = Tracer(cfg, device="cpu")
    chunked = Tracer(cfg.replace(probe_chunk=32 * 3), device="cpu")  # chunks of 3, 3 and 2 sequences
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    one, many = tr.probe(5), chunked.probe(5)
    L, E = len(cfg.moe_layer_ids), cfg.n_experts
    assert one["counts"].shape == (L, E) and (one["counts"].sum(1) == 32 * 8 * cfg.top_k).all()
    assert np.array_equal(one["counts"], many["counts"])  # no capacity: the routing of each token alone
    assert np.isclose(one["loss"], many["loss"], rtol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in tr.model.state_dict().items())


def test_probes_do_not_change_the_training_records():
    a = Tracer(small(probe_every=2, probe_tokens=128), device="cpu")
    b = Tracer(small(probe_every=3, probe_tokens=128), device="cpu")  # same held-out split, other probe steps
    a.run(6)
    b.run(6)
    assert np.array_equal(a.records()["counts"], b.records()["counts"])
    assert list(a.probe_records()["steps"]) == [0, 2, 4] and list(b.probe_records()["steps"]) == [0, 3]
    assert np.array_equal(a.probe_records()["counts"][0], b.probe_records()["counts"][0])  # step 0: same weights


def test_cli_registers_the_probe_trace_and_both_cards_link(tmp_path, capsys):
    out = run_json(
        capsys, *TINY, "--steps", "5", "--probe-every", "2", "--probe-tokens", "256", "--probe-chunk", "64",
        "--id", "probed", "--out", str(tmp_path / "run"),
    )
    assert out["dataset"] == "probed@1" and out["probe"]["dataset"] == "probed-probe@1" == f"{probe_id('probed')}@1"
    train, probe = registry.load("probed"), registry.load("probed-probe")
    assert probe.shape == (3, 2, 8) and list(probe.steps) == [0, 2, 4]
    k = train.card.model.top_k
    assert (probe.totals == 256 * k).all() and probe.card.model.tokens_per_step == 256
    assert (train.totals == 128 * k).all()
    link, back = train.card.extra["probe"], probe.card.extra["probe_of"]
    assert link["trace"] == probe.id and link["fingerprint"] == probe.fingerprint
    assert back["id"] == train.id and back["fingerprint"] == train.fingerprint
    cost = link["cost"]
    assert cost["probes"] == 3 and cost["seconds"] > 0 and cost["training_seconds"] > 0
    # the card's seconds are rounded to 1 ms and the fraction to 1e-4: it lies within what the rounding allows
    probe_s, train_s = cost["seconds"], cost["training_seconds"]
    lo, hi = (probe_s - 5e-4) / (train_s + 5e-4), (probe_s + 5e-4) / max(train_s - 5e-4, 1e-9)
    assert lo - 1e-4 <= cost["fraction_of_training_time"] <= hi + 1e-4
    assert link["holdout"]["python"]["files"] >= 1 and link["chunk_tokens"] == 64
    assert "--probe-every 2" in train.card.source["command"] and probe.card.source == train.card.source
    extras = np.load(registry.resolve("probed-probe").folder / "extras.npz")
    assert extras["loss"].shape == (3,) and np.isfinite(extras["loss"]).all()
    assert (tmp_path / "run" / "probe" / storage.CARD_FILE).exists()


def test_a_resumed_run_keeps_the_probes_of_a_straight_one(tmp_path, capsys):
    args = [*TINY, "--probe-every", "2", "--probe-tokens", "128", "--no-register"]
    straight = run_json(capsys, *args, "--steps", "6", "--id", "s", "--out", str(tmp_path / "a"))
    run_json(capsys, *args, "--steps", "3", "--id", "r", "--out", str(tmp_path / "b"))
    again = run_json(capsys, *args, "--steps", "6", "--id", "r", "--out", str(tmp_path / "b"))
    assert again["resumed_from"] == 3
    a = storage.load(Path(straight["probe"]["trace_folder"]))
    b = storage.load(Path(again["probe"]["trace_folder"]))
    assert list(b.steps) == [0, 2, 4] and np.array_equal(a.counts, b.counts)


# -- routers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        dict(router="deepseek-moe", n_experts=16, top_k=3, n_shared=2, expert_ff=64),  # DeepSeek-V3 gate
        dict(router="deepseek-moe", n_experts=16, top_k=3, gate="softmax", expert_ff=64),  # DeepSeekMoE gate
        dict(router="deepseek-moe", n_experts=16, top_k=3, expert_bias=True, aux_loss=0.0),
        dict(router="softmax-topk", expert_bias=True, aux_loss=0.0),  # auxiliary-loss-free top-2
        dict(router="switch", top_k=1, expert_bias=True),
        dict(router="softmax-topk", n_experts=8, top_k=2),  # Mixtral-like: the existing router
    ],
    ids=["deepseek-sigmoid", "deepseek-softmax", "deepseek-auxfree", "top2-auxfree", "switch-auxfree", "mixtral"],
)
def test_new_routers_train_and_count_tokens_times_routed_top_k(changes):
    cfg = small(**changes)
    tr = Tracer(cfg, device="cpu")
    for _ in range(3):
        tr.train_step()
    rec = tr.records()
    assert rec["counts"].shape == (3, len(cfg.moe_layer_ids), cfg.n_experts)
    assert (rec["counts"].sum(axis=2) == cfg.tokens_per_step * cfg.top_k).all()
    assert np.isfinite(rec["loss"]).all()
    trace, extras = tr.trace("v2-router", steps_asked=3)
    assert trace.card.extra["routing"]["shared_experts"] == cfg.shared_experts
    assert ("bias" in extras) == cfg.expert_bias


def test_deepseek_moe_routes_with_the_v3_gate_and_shared_experts_take_every_token():
    cfg = small(router="deepseek-moe", n_experts=16, top_k=4, expert_ff=32)
    assert (cfg.gate_fn, cfg.shared_experts, cfg.expert_width) == ("sigmoid", 2, 32)
    tr = Tracer(cfg, device="cpu")
    moe = tr.model.moe_blocks[0].moe
    assert moe.shared.fc.weight.shape == (2 * 32, cfg.d_model) and moe.w1.shape == (16, cfg.d_model, 32)
    x = torch.randn(64, cfg.d_model)
    idx, w, probs = moe.route(x, torch.zeros(64, dtype=torch.long))
    scores = torch.sigmoid(moe.gate(x))
    assert torch.equal(idx, scores.topk(4, dim=-1).indices)
    assert torch.allclose(w, scores.gather(1, idx) / scores.gather(1, idx).sum(-1, keepdim=True))
    assert torch.allclose(probs.sum(-1), torch.ones(64))
    with torch.no_grad():
        moe.w2.zero_()  # routed experts give nothing: what is left is the shared experts' output
        out, counts, _dropped, _aux = moe(x, torch.zeros(64, dtype=torch.long))
        assert torch.allclose(out, moe.shared(x), atol=1e-6) and out.abs().sum() > 0
    assert int(counts.sum()) == 64 * 4  # the routed slots only
    soft = Tracer(small(router="deepseek-moe", n_experts=16, top_k=4, gate="softmax"), device="cpu")
    m2 = soft.model.moe_blocks[0].moe
    _idx, w2, p2 = m2.route(x, torch.zeros(64, dtype=torch.long))
    assert torch.allclose(w2, torch.softmax(m2.gate(x), -1).gather(1, _idx))  # DeepSeekMoE: not renormalised
    card = tr.trace("ds", steps_asked=1)[0].card if tr.train_step() is None else None
    assert card.model.router == "deepseek-moe" and "2 shared experts are always on" in card.extra["counts_are"]


def test_expert_bias_moves_against_the_load_and_steers_the_selection():
    rate = 0.01
    cfg = small(expert_bias=True, bias_update_rate=rate, aux_loss=0.0)
    tr = Tracer(cfg, device="cpu")
    for _ in range(4):
        tr.train_step()
    rec = tr.records()
    counts, bias = rec["counts"].astype(np.float64), rec["bias"]
    assert bias.shape == counts.shape and (bias[0] == 0).all()  # the bias each step used; it starts at zero
    for t in range(3):
        load = counts[t]
        delta = bias[t + 1] - bias[t]
        assert np.allclose(delta, rate * np.sign(load.mean(axis=1, keepdims=True) - load), atol=1e-6)
        over, under = load > load.mean(axis=1, keepdims=True), load < load.mean(axis=1, keepdims=True)
        assert (delta[over] < 0).all() and (delta[under] > 0).all() and over.any() and under.any()
    final = torch.stack([b.moe.expert_bias for b in tr.model.moe_blocks]).numpy()
    last = counts[3]
    assert np.allclose(final - bias[3], rate * np.sign(last.mean(axis=1, keepdims=True) - last), atol=1e-6)
    # the bias steers the selection only: a large bias on expert 3 sends every token there, weights unchanged
    moe = tr.model.moe_blocks[0].moe
    x = torch.randn(50, cfg.d_model)
    ids = torch.zeros(50, dtype=torch.long)
    with torch.no_grad():
        moe.expert_bias.zero_()
        moe.expert_bias[3] = 10.0
    idx, w, probs = moe.route(x, ids)
    assert (idx == 3).any(dim=1).all() and torch.allclose(w.sum(-1), torch.ones(50))
    assert torch.allclose(w, probs.gather(1, idx) / probs.gather(1, idx).sum(-1, keepdim=True))


def test_aux_free_run_resumes_with_its_bias_and_records_it(tmp_path, capsys):
    args = [*TINY, "--expert-bias", "--bias-update-rate", "0.01", "--aux-loss", "0", "--no-register"]
    straight = run_json(capsys, *args, "--steps", "4", "--id", "b1", "--out", str(tmp_path / "a"))
    run_json(capsys, *args, "--steps", "2", "--id", "b2", "--out", str(tmp_path / "b"))
    again = run_json(capsys, *args, "--steps", "4", "--id", "b2", "--out", str(tmp_path / "b"))
    ea = np.load(Path(straight["trace_folder"]) / "extras.npz")
    eb = np.load(Path(again["trace_folder"]) / "extras.npz")
    assert eb["bias"].shape == (4, 2, 8) and np.array_equal(ea["bias"], eb["bias"]) and np.abs(eb["bias"]).max() > 0
    card = storage.load(Path(again["trace_folder"])).card
    assert card.extra["routing"]["expert_bias"]["update_rate"] == 0.01 and "bias" in card.extra["extras_file"]
    assert "--expert-bias" in card.source["command"] and "--bias-update-rate 0.01" in card.source["command"]


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(gate="sigmoid"), "deepseek-moe"),
        (dict(n_shared=1), "deepseek-moe"),
        (dict(router="hash", expert_bias=True), "top-k router"),
        (dict(corpus_schedule="10:python"), "start at step 0"),
        (dict(corpus_schedule="0:python,5:web"), "sources are"),
        (dict(corpus_schedule="0:python,5:text,5:python"), "increase"),
    ],
)
def test_invalid_v2_options_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        small(**changes)


# -- domain shift ---------------------------------------------------------------------------


def test_text_corpus_reads_text_files_only(tmp_path):
    doc = tmp_path / "doc"
    (doc / "pkg").mkdir(parents=True)
    (doc / "pkg" / "copyright").write_text("Copyright the authors.\n" * 20)
    (doc / "pkg" / "README.Debian").write_text("Notes for Debian.\n" * 20)
    (doc / "pkg" / "changelog.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(100))
    (doc / "pkg" / "index.html").write_text("<html></html>")
    (doc / "pkg" / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    lic = tmp_path / "common-licenses"
    lic.mkdir()
    (lic / "GPL-2.0").write_text("GNU GENERAL PUBLIC LICENSE\n" * 20)
    corpus = build_text_corpus([doc, lic])
    assert corpus.files == ["doc/pkg/README.Debian", "doc/pkg/copyright", "common-licenses/GPL-2.0"]
    assert corpus.info["sha256"].startswith("sha256:") and corpus.info["files"] == 3
    (lic / "GPL-3").write_text("more\n")
    assert build_text_corpus([doc, lic]) is corpus  # cached per process
    from datasets_registry.tracer import corpus as corpus_module

    corpus_module._CACHE.clear()
    assert build_text_corpus([doc, lic]).info["sha256"] != corpus.info["sha256"]


def test_corpus_schedule_switches_and_mixes_the_source(tmp_path, capsys):
    py = letter_corpus(tmp_path / "py", n=4, first=ord("p"))  # bytes p, q, r, s
    txt = letter_corpus(tmp_path / "txt", n=4, suffix=".txt", first=ord("A"))  # bytes A, B, C, D
    py_bytes, txt_bytes = set(b"pqrs\n"), set(b"ABCD\n")
    cfg = small(corpus_schedule="0:python, 3:text,5:python+text")
    assert cfg.corpus_schedule == "0:python,3:text,5:python+text" and cfg.router_tag() == "top2-shift"
    tr = Tracer(cfg, device="cpu", corpus_root=py, text_roots=[txt])
    for step, want in [(0, py_bytes), (2, py_bytes), (3, txt_bytes), (4, txt_bytes)]:
        assert set(tr.batch(step)[0].unique().tolist()) <= want
    x, _ = tr.batch(5)
    assert set(x[:2].unique().tolist()) <= py_bytes and set(x[2:].unique().tolist()) <= txt_bytes
    out = run_json(
        capsys, *TINY, "--steps", "6", "--corpus-schedule", "0:python,3:text,5:python+text", "--corpus", str(py),
        "--text-corpus", str(txt), "--id", "shifted", "--out", str(tmp_path / "run"), "--no-register",
    )
    card = storage.load(Path(out["trace_folder"])).card
    assert card.extra["corpus_schedule"] == [
        {"from_step": 0, "sources": ["python"]},
        {"from_step": 3, "sources": ["text"]},
        {"from_step": 5, "sources": ["python", "text"]},
    ]
    corpora = card.source["corpora"]
    assert corpora["python"]["sha256"] == build_corpus(py).info["sha256"]
    assert corpora["text"]["sha256"] == build_text_corpus([txt]).info["sha256"]
    cmd = shlex.split(card.source["command"])
    assert cmd[cmd.index("--corpus-schedule") + 1] == "0:python,3:text,5:python+text"
    assert cmd[cmd.index("--corpus") + 1] == str(py) and cmd[cmd.index("--text-corpus") + 1] == str(txt)
    assert "domain shift" in card.notes and "3-4 text" in card.notes


# -- presets and the GPU plan ---------------------------------------------------------------


def test_v2_presets():
    p128 = get_preset("gpt3-125m-128e")
    assert (p128.n_experts, p128.top_k, len(p128.moe_layer_ids), p128.n_layers) == (128, 2, 6, 12)
    from datasets_registry.tracer.model import MoEGPT

    with torch.device("meta"):
        n128 = MoEGPT(p128).num_params()
        n350 = MoEGPT(get_preset("gpt3-350m-128e")).num_params()
    assert n128 < n350 / 2.5
    ds = get_preset("gpt3-125m-64e-ds")
    assert (ds.router, ds.n_experts, ds.top_k, ds.shared_experts, ds.gate_fn) == ("deepseek-moe", 64, 6, 2, "sigmoid")
    base = get_preset("gpt3-125m-16e")
    assert (ds.top_k + ds.shared_experts) * ds.expert_width == base.top_k * base.expert_width  # same active width
    assert main(["trace", "presets", "--json"]) == 0


def gpu_commands(tmp_path: Path, waves=(1, 2, 3)) -> list[list[str]]:
    """The argument lists that datasets_registry/tracer/gpu_runs.sh gives `python`, wave by wave: the script runs
    with a `python` on the PATH that only writes down its arguments."""
    shim = tmp_path / "bin" / "python"
    shim.parent.mkdir()
    shim.write_text(
        f"#!{sys.executable}\nimport json, os, sys, uuid\n"
        "open(os.path.join(os.environ['CAPTURE_DIR'], uuid.uuid4().hex), 'w').write(json.dumps(sys.argv[1:]))\n"
    )
    shim.chmod(0o755)
    out = []
    for wave in waves:
        capture = tmp_path / f"wave{wave}"
        capture.mkdir()
        env = {**os.environ, "PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}", "CAPTURE_DIR": str(capture)}
        env.pop("OUT", None)
        subprocess.run(["bash", str(GPU_SCRIPT), str(wave), str(tmp_path / "runs")], env=env, check=True,
                       capture_output=True, cwd=REPO, timeout=60)
        out += [json.loads(f.read_text()) for f in sorted(capture.iterdir())]
    return out


class Captured(BaseException):
    """Raised in place of training: carries what `python -m bench trace` would have trained."""


def test_gpu_script_commands_are_valid_tracer_runs(monkeypatch, tmp_path):
    cmds = gpu_commands(tmp_path)
    assert len(cmds) >= 10 and all(argv[:3] == ["-m", "bench", "trace"] for argv in cmds)

    def fake_record(cfg, steps, trace_id, **kw):
        raise Captured(cfg, steps, trace_id, kw)

    monkeypatch.setattr("datasets_registry.tracer.train.record_trace", fake_record)
    runs = []
    for argv in cmds:
        assert argv[argv.index("--device") + 1] == "cuda" and "--no-register" in argv and "--out" in argv
        with pytest.raises(Captured) as got:
            main(argv[2:])
        cfg, steps, trace_id, kw = got.value.args
        assert kw["device"] == "cuda" and not kw["register"] and kw["out"] is not None
        runs.append(cfg)
    assert len({(c.preset, c.router, c.expert_bias, c.corpus_schedule, c.seed) for c in runs}) == len(runs)
    probed = [c for c in runs if c.preset == "gpt3-125m-16e" and c.probe_every and c.router == "softmax-topk"]
    assert sorted(c.seed for c in probed if not c.expert_bias and not c.corpus_schedule) == [3, 4, 5]
    assert all(c.probe_tokens == 262144 for c in probed)
    assert sorted(c.seed for c in runs if c.preset == "gpt3-125m-128e") == [1, 2, 3]
    ds = [c for c in runs if c.preset == "gpt3-125m-64e-ds"]
    assert any(not c.expert_bias for c in ds) and any(c.expert_bias and c.aux_loss == 0 for c in ds)
    assert any(c.corpus_schedule and "text" in c.corpus_schedule for c in runs)


def test_gpu_locality_wave_trains_the_five_routers_on_the_same_layout(monkeypatch, tmp_path):
    cmds = gpu_commands(tmp_path, waves=("locality",))

    def fake_record(cfg, steps, trace_id, **kw):
        raise Captured(cfg, steps, trace_id, kw)

    monkeypatch.setattr("datasets_registry.tracer.train.record_trace", fake_record)
    runs = []
    for argv in cmds:
        with pytest.raises(Captured) as got:
            main(argv[2:])
        cfg, steps, trace_id, kw = got.value.args
        assert kw["device"] == "cuda" and not kw["register"] and kw["out"].name == trace_id
        runs.append((cfg, steps))
    routers = sorted((c.router, c.top_k) for c, _ in runs)
    assert routers == sorted([("hash", 2), ("hash", 1), ("switch", 1), ("softmax-topk", 2), ("locmoe", 1),
                              ("locmoe", 1), ("node-limited", 2)])
    assert {(c.preset, c.seed, c.source_ranks, c.nodes, s) for c, s in runs} == {("gpt3-125m-16e", 1, 8, 4, 4000)}
    assert sorted(c.locality_loss for c, _ in runs if c.router == "locmoe") == [0.01, 0.1]
