"""`python -m bench trace`: stores a dataset with a full card, resumes, plots; the committed traces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from datasets_registry import registry, storage

COMMITTED = {  # id: (records, MoE layers, experts, preset, router, top_k, aux loss)
    "gpt3-125m-16e-top2-s1": (10000, 6, 16, "gpt3-125m-16e", "softmax-topk", 2, 0.01),
    "gpt3-125m-16e-top2-s2": (10000, 6, 16, "gpt3-125m-16e", "softmax-topk", 2, 0.01),
    "gpt3-125m-16e-switch-s1": (10000, 6, 16, "gpt3-125m-16e", "switch", 1, 0.01),
    "gpt3-125m-16e-noaux-s1": (10000, 6, 16, "gpt3-125m-16e", "softmax-topk", 2, 0.0),
    "gpt3-350m-128e-top2-s1": (5000, 12, 128, "gpt3-350m-128e", "softmax-topk", 2, 0.01),
    "gpt3-350m-128e-top2-s2": (5000, 12, 128, "gpt3-350m-128e", "softmax-topk", 2, 0.01),
    "tiny-cpu-s1": (5000, 2, 8, "tiny-cpu", "softmax-topk", 2, 0.01),
}
TINY = ["--preset", "tiny-cpu", "--batch-size", "4", "--seq-len", "32", "--quiet", "--json"]


def run_json(capsys, *argv) -> dict:
    assert main(["trace", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_stores_a_dataset_with_a_full_card(tmp_path, capsys):
    out = run_json(capsys, *TINY, "--steps", "6", "--seed", "3", "--id", "cli-tiny", "--out", str(tmp_path / "run"))
    assert out["shape"] == [6, 2, 8] and out["dataset"] == "cli-tiny@1"
    trace = registry.load("cli-tiny")
    card = trace.card
    assert trace.shape == (6, 2, 8) and list(trace.steps) == list(range(6))
    assert (card.model.router, card.model.top_k, card.model.aux_loss, card.model.capacity_factor) == (
        "softmax-topk",
        2,
        0.01,
        1.25,
    )
    assert card.model.tokens_per_step == 128 and card.model.layers == 4
    assert card.extra["preset"] == "tiny-cpu" and card.extra["seed"] == 3
    assert card.source["corpus"]["sha256"].startswith("sha256:") and "--seed 3" in card.source["command"]
    assert "tracer_source_sha256" in card.source
    assert (registry.resolve("cli-tiny").folder / "extras.npz").exists()


def test_interrupted_run_resumes_to_the_straight_result(tmp_path, capsys):
    n = 4
    straight = run_json(
        capsys, *TINY, "--steps", str(2 * n), "--id", "straight", "--out", str(tmp_path / "a"), "--no-register"
    )
    first = run_json(capsys, *TINY, "--steps", str(n), "--id", "resumed", "--out", str(tmp_path / "b"), "--no-register")
    assert first["shape"][0] == n
    again = run_json(
        capsys, *TINY, "--steps", str(2 * n), "--id", "resumed", "--out", str(tmp_path / "b"), "--no-register"
    )
    assert again["resumed_from"] == n and again["steps_run"] == n
    a = storage.load(Path(straight["trace_folder"]))
    b = storage.load(Path(again["trace_folder"]))
    assert b.records == 2 * n
    assert np.array_equal(a.counts, b.counts) and np.array_equal(a.steps, b.steps)
    la = np.load(Path(straight["trace_folder"]) / "extras.npz")["loss"]
    lb = np.load(Path(again["trace_folder"]) / "extras.npz")["loss"]
    assert np.allclose(la, lb, rtol=1e-5)


def test_time_limit_keeps_what_was_recorded(tmp_path, capsys):
    out = run_json(
        capsys,
        *TINY,
        "--steps",
        "100000",
        "--time-limit",
        "0.01",
        "--id",
        "short",
        "--out",
        str(tmp_path / "c"),
        "--no-register",
    )
    assert out["stopped_early"] and 1 <= out["shape"][0] < 100000
    assert storage.load(Path(out["trace_folder"])).card.extra["run"]["stopped_early"]


def test_a_run_of_another_config_is_refused(tmp_path, capsys):
    run_json(capsys, *TINY, "--steps", "2", "--id", "x", "--out", str(tmp_path / "d"), "--no-register")
    assert (
        main(
            ["trace", *TINY, "--steps", "4", "--seed", "9", "--id", "x", "--out", str(tmp_path / "d"), "--no-register"]
        )
        == 1
    )
    assert "another configuration" in capsys.readouterr().err


def test_plot_writes_a_paletted_png(tmp_path, capsys):
    from PIL import Image

    assert main(["trace", "plot", "tiny-cpu-s1", "--out", str(tmp_path / "p.png"), "--points", "50"]) == 0
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    with Image.open(tmp_path / "p.png") as image:  # 256 colours: the committed plots stay small
        assert image.mode == "P" and image.width > 300 and len(image.getcolors(256) or []) > 4


def test_presets_list(capsys):
    assert main(["trace", "presets", "--json"]) == 0
    presets = json.loads(capsys.readouterr().out)
    assert presets["gpt3-125m-16e"]["n_layers"] == 12 and presets["gpt3-125m-16e"]["n_experts"] == 16
    assert presets["gpt3-350m-128e"]["n_layers"] == 24 and presets["gpt3-350m-128e"]["n_experts"] == 128


def test_default_dataset_is_a_committed_tracer_trace():
    assert registry.DEFAULT_DATASET == "gpt3-125m-16e-top2-s1"
    assert registry.resolve(registry.DEFAULT_DATASET).kind == "builtin"


def test_committed_traces_list_with_their_shapes(capsys):
    assert main(["datasets", "list", "--json"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    for tid, (T, L, E, *_rest) in COMMITTED.items():
        r = rows[tid]
        assert r["kind"] == "builtin" and (r["records"], r["layers"], r["experts"]) == (T, L, E)
        assert (r["first_step"], r["last_step"]) == (0, T - 1)


@pytest.mark.parametrize("tid", sorted(COMMITTED))
def test_committed_trace_loads_with_a_full_card(tid):
    T, L, E, preset, router, k, aux = COMMITTED[tid]
    trace = registry.load(tid)
    card = trace.card
    assert trace.shape == (T, L, E)
    assert card.extra["preset"] == preset and isinstance(card.extra["seed"], int)
    assert (card.model.router, card.model.top_k, card.model.aux_loss) == (router, k, aux)
    assert card.model.tokens_per_step and (trace.totals == card.model.tokens_per_step * k).all()
    corpus = card.source["corpus"]
    assert corpus["sha256"].startswith("sha256:") and corpus["files"] > 0 and corpus["root"] and corpus["python"]
    assert card.source["command"].startswith("python -m bench trace --preset " + preset)
    assert card.step_unit == "training iteration"
