"""Bad and hostile input files: each ends in a clear error naming the file, never a traceback, a hang or a huge
allocation.

One table, one row per case: a function that writes the input (and returns the path to import and the
path the error must name), the format, the phrase the error must hold, and import options or limits.
Every row runs through the command line (`datasets import`, or `datasets validate` for stored folders),
which must print `error: ...`, exit 1 and store nothing.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from datasets_registry import registry

RNG = np.random.default_rng(0)


def good_counts(T=3, L=2, E=4):
    return RNG.integers(1, 50, (T, L, E))


# --------------------------------------------------------------------------- writers: tmp -> (path to import, named)


def npz(**arrays):
    def write(tmp: Path):
        np.savez(tmp / "t.npz", **arrays)
        return tmp / "t.npz", tmp / "t.npz"

    return write


def text(name: str, content: str | bytes):
    def write(tmp: Path):
        f = tmp / name
        f.write_bytes(content if isinstance(content, bytes) else content.encode())
        return f, f

    return write


def json_file(name: str, obj):
    return text(name, json.dumps(obj))


def csv(rows: list[tuple], header="step,layer,expert,tokens"):
    return text("t.csv", header + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")


def deep(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def fastmoe_folder(lines: str, name: str = "table_iter1_rank0.log"):
    def write(tmp: Path):
        d = tmp / "tables"
        d.mkdir()
        (d / name).write_text(lines)
        return d, d / name

    return write


def megatron_line(**fields):
    rec = {"step": 1, "stage": 0, "block": 0, "layer": 0, "rank": 0, "num_tokens": 2, "topk": 1,
           "top_indices": [[0], [1]]}
    rec.update(fields)
    return json.dumps(rec)


def folder():
    def write(tmp: Path):
        d = tmp / "a-folder"
        d.mkdir()
        (d / "stats.json").write_text("{}")
        return d, d

    return write


def fifo(name: str, inside: str | None = None):
    def write(tmp: Path):
        d = tmp / inside if inside else tmp
        d.mkdir(exist_ok=True)
        os.mkfifo(d / name)
        return (d if inside else d / name), d / name

    return write


def sglang_per_pass(mapping_max: int | None = None):
    def write(tmp: Path):
        import torch

        mapping = torch.tensor([[0, 1], [1, 0]]) if mapping_max is None else torch.tensor([[0, mapping_max], [1, 0]])
        rec = {"forward_pass_id": 0, "rank": 0, "global_physical_count": torch.ones((2, 2), dtype=torch.int64)}
        torch.save({"records": [rec], "last_physical_to_logical_map": mapping}, tmp / "r0.pt")
        return tmp / "r0.pt", tmp / "r0.pt"

    return write


def sparse_stat(tmp: Path):
    import torch

    dense = torch.ones((2, 1, 4), dtype=torch.int32)
    torch.save({"logical_count": dense.to_sparse()}, tmp / "d.pt")
    return tmp / "d.pt", tmp / "d.pt"


def vllm_npy(tmp: Path):
    np.save(tmp / "ids.npy", np.zeros((8, 2, 1), dtype=np.int16))
    return tmp / "ids.npy", tmp / "ids.npy"


def forged_npy(shape):
    """An .npy whose header declares `shape` but which holds a few bytes of data."""

    def write(tmp: Path):
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "<i2", "fortran_order": False, "shape": shape})
        (tmp / "ids.npy").write_bytes(buf.getvalue() + b"\0" * 64)
        return tmp / "ids.npy", tmp / "ids.npy"

    return write


def forged_npz(shape):
    """An .npz whose counts header declares `shape` (far beyond the limits) with a tiny member."""

    def write(tmp: Path):
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
        with zipfile.ZipFile(tmp / "t.npz", "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("counts.npy", buf.getvalue() + b"\1" * 1000)
        return tmp / "t.npz", tmp / "t.npz"

    return write


def zeros_npz(tmp: Path):
    """A deflate bomb: 60 MB of uint8 counts compress to about 60 KB."""
    with zipfile.ZipFile(tmp / "t.npz", "w", zipfile.ZIP_DEFLATED) as z:
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (60_000, 1000, 1)})
        with z.open("counts.npy", "w", force_zip64=True) as member:
            member.write(buf.getvalue())
            block = b"\1" * 2**20
            for _ in range(60_000_000 // len(block)):
                member.write(block)
            member.write(b"\1" * (60_000_000 % len(block)))
    return tmp / "t.npz", tmp / "t.npz"


def tar_bomb(tmp: Path):
    """A .tar.gz of FileGate tables whose members add up to more than a lowered byte limit."""
    f = tmp / "tables.tar.gz"
    with tarfile.open(f, "w:gz") as tar:
        for it in range(3):
            data = ("0:" + json.dumps([[1] * 4]) + "\n").encode() + b" " * 400_000
            info = tarfile.TarInfo(f"moe_trace/table_iter{it}_rank0.log")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return f, f


def trtllm(keys: dict[str, int] | None = None, rank_names=("rank0.safetensors",), num_experts=2, named=None):
    def write(tmp: Path):
        from safetensors.numpy import save_file

        d = tmp / "stats"
        d.mkdir()
        (d / "meta_info.json").write_text(json.dumps({"num_experts": num_experts}))
        for name in rank_names:
            save_file({k: np.full(2, v, dtype=np.int64) for k, v in (keys or {"1_0": 3}).items()}, str(d / name))
        return d, d / named if named else d

    return write


def stored_card(**card_fields):
    """A stored dataset folder whose card.json is changed by `card_fields` (validated with `datasets validate`)."""

    def write(tmp: Path):
        folder = stored_folder(tmp)
        card = json.loads((folder / "card.json").read_text())
        card.update(card_fields)
        (folder / "card.json").write_text(json.dumps(card))
        return folder, folder / "card.json"

    return write


def stored_folder(tmp: Path) -> Path:
    from datasets_registry import storage
    from datasets_registry.trace import Card, Trace

    return storage.save(Trace.from_arrays(good_counts(), card=Card(id="x")), tmp / "x" / "v1")


def deep_card_extra(tmp: Path):
    folder = stored_folder(tmp)
    nested = '{"a": ' * 100_000 + "1" + "}" * 100_000
    card = (folder / "card.json").read_text().replace('"extra": {}', '"extra": ' + nested)
    (folder / "card.json").write_text(card)
    return folder, folder / "card.json"


@dataclass
class Case:
    id: str
    write: Callable[[Path], tuple[Path, Path]]
    fmt: str | None  # None: a stored trace folder, checked with `datasets validate`
    phrase: str
    options: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)  # limits lowered for the case


U64 = np.uint64
CASES = [
    # steps beyond int64 and overflowing differences
    Case("npz-uint64-steps", npz(counts=good_counts(2), steps=np.array([2**63, 2**63 + 1], dtype=U64)), "npz",
         "steps must fit in 64-bit signed integers"),
    Case("npz-steps-across-2^63", npz(counts=good_counts(2), steps=np.array([2**63 - 1, 2**63], dtype=U64)), "npz",
         "steps must fit in 64-bit signed integers"),
    Case("npz-steps-diff-overflow", npz(counts=good_counts(2), steps=np.array([9 * 10**18, -9 * 10**18])), "npz",
         "steps must be strictly increasing"),
    Case("npz-float-steps-2^63", npz(counts=good_counts(2), steps=np.array([0.0, 2.0**63])), "npz",
         "steps must fit in 64-bit signed integers"),
    Case("csv-uint64-steps", csv([(2**63, 0, 0, 3)]), "csv", "steps must fit in 64-bit signed integers"),
    # empty cells, booleans, keys that collide
    Case("csv-empty-layer", csv([(1, 0, 0, 3), (1, "", 1, 4)]), "csv", "column 'layer' is empty at row 1"),
    Case("csv-bool-tokens", csv([(1, 0, 0, True), (1, 0, 1, False)]), "csv", "column 'tokens' must be numeric"),
    Case("csv-bool-steps", csv([(True, 0, 0, 3)]), "csv", "column 'step' must hold whole numbers"),
    Case("npz-bool-counts", npz(counts=np.ones((2, 1, 3), dtype=bool)), "npz", "counts must be numbers, not booleans"),
    Case("npz-bool-steps", npz(counts=good_counts(2), steps=np.array([False, True])), "npz",
         "steps must be numbers, not booleans"),
    Case("eplb-json-true", json_file("s.json", {"logical_count": [[3, True], [1, 2]]}), "eplb-json", "not booleans"),
    Case("mindspeed-true", json_file("m.json", {"0": {"0": 3, "1": True}}), "mindspeed-json", "not booleans"),
    Case("fastmoe-true", fastmoe_folder("0:[[1, true, 3]]\n"), "fastmoe", "not booleans"),
    Case("fastmoe-string-counts", fastmoe_folder('0:[["3", "4"]]\n'), "fastmoe", "must hold numbers"),
    Case("megatron-true-index", text("r.jsonl", megatron_line(top_indices=[[0], [True]])), "megatron-router-trace",
         "not booleans", {"experts": 4}),
    Case("megatron-true-step", text("r.jsonl", megatron_line(step=True)), "megatron-router-trace",
         "step must be a whole number", {"experts": 4}),
    Case("megatron-topk-over-experts", text("r.jsonl", megatron_line(topk=9, num_tokens=0, top_indices=[])),
         "megatron-router-trace", "topk=9 is more than the 4 experts", {"experts": 4}),
    Case("mindspeed-arabic-indic-layer", json_file("m.json", {"1": {"0": 3}, "١": {"0": 5}}), "mindspeed-json",
         "is not a non-negative integer (ASCII digits)"),
    Case("mindspeed-layer-01", json_file("m.json", {"1": {"0": 3}, "01": {"0": 5}}), "mindspeed-json",
         "layer keys '1' and '01' both mean layer 1"),
    Case("mindspeed-expert-01", json_file("m.json", {"1": {"1": 3, "01": 5}}), "mindspeed-json",
         "two expert keys mean the same expert"),
    Case("trtllm-arabic-indic-key", trtllm({"1_0": 3, "١_0": 5}, named="rank0.safetensors"), "trtllm",
         "is not '{iteration}_{layer}'"),
    Case("trtllm-key-01", trtllm({"1_0": 3, "01_0": 5}, named="rank0.safetensors"), "trtllm",
         "both mean iteration 1, layer 0"),
    Case("trtllm-rank-01", trtllm(rank_names=("rank1.safetensors", "rank01.safetensors")), "trtllm", "also rank 1"),
    # deeply nested JSON
    Case("fastmoe-deep-line", fastmoe_folder("0:" + deep(100_000) + "\n"), "fastmoe", "JSON nested too deeply"),
    Case("eplb-json-deep", text("s.json", '{"logical_count": ' + deep(100_000) + "}"), "eplb-json",
         "JSON nested too deeply"),
    Case("eplb-json-nested-100", text("s.json", '{"logical_count": ' + deep(100) + "}"), "eplb-json",
         "nested too deeply"),
    Case("megatron-deep", text("r.jsonl", '{"step": ' + deep(100_000) + "}"), "megatron-router-trace",
         "JSON nested too deeply", {"experts": 4}),
    Case("megatron-deep-step-300", text("r.jsonl", megatron_line(step=json.loads(deep(300)))),
         "megatron-router-trace", "step must be a whole number", {"experts": 4}),
    Case("json-huge-integer", text("s.json", '{"logical_count": [[' + "9" * 5000 + "]]}"), "eplb-json", "invalid JSON"),
    # a folder where a file is expected, special files
    Case("eplb-json-folder", folder(), "eplb-json", "is a folder"),
    Case("mindspeed-json-folder", folder(), "mindspeed-json", "is a folder"),
    Case("csv-fifo", fifo("t.csv"), "csv", "not a regular file or folder"),
    Case("fastmoe-fifo-table", fifo("table_iter1_rank0.log", inside="tables"), "fastmoe", "not a regular file"),
    Case("megatron-fifo-rank", fifo("rank0.jsonl", inside="trace"), "megatron-router-trace", "not a regular file",
         {"experts": 4}),
    # one header field asking for gigabytes
    Case("csv-expert-1e9", csv([(1, 0, 10**9, 3)]), "csv", "1,000,000,001 experts is more than the limit"),
    Case("sglang-per-pass-experts-1e9", sglang_per_pass(), "sglang-per-pass", "experts is more than the limit",
         {"experts": 10**9}),
    Case("sglang-per-pass-map-1e9", sglang_per_pass(mapping_max=10**9), "sglang-per-pass",
         "experts is more than the limit"),
    Case("megatron-experts-1e9", text("r.jsonl", megatron_line()), "megatron-router-trace",
         "experts is more than the limit", {"experts": 10**9}),
    Case("vllm-experts-1e9", vllm_npy, "vllm-routed-experts", "experts is more than the limit",
         {"experts": 10**9, "step_tokens": 2}),
    Case("vllm-cells", vllm_npy, "vllm-routed-experts", "cells is more than the limit",
         {"experts": 65_536, "step_tokens": 1}, {"MOE_LOAD_BENCH_MAX_CELLS": "1000000"}),
    Case("mindspeed-expert-1e9", json_file("m.json", {"0": {"1000000000": 3}}), "mindspeed-json",
         "experts is more than the limit"),
    Case("trtllm-num-experts-1e9", trtllm(num_experts=10**9, named="meta_info.json"), "trtllm",
         "experts is more than the limit"),
    Case("sglang-stat-sparse", sparse_stat, "sglang-stat", "only dense tensors are read"),
    Case("npz-forged-header", forged_npz((10**7 + 1, 61, 256)), "npz", "records is more than the limit"),
    Case("npz-forged-small-header", forged_npz((100, 61, 256)), "npz", "truncated or forged"),
    Case("npz-deflate-bomb", zeros_npz, "npz", "more than the limit", {}, {"MOE_LOAD_BENCH_MAX_BYTES": "50000000"}),
    Case("npy-forged-header", forged_npy((10**9, 61, 8)), "vllm-routed-experts", "truncated or forged",
         {"experts": 8, "step_tokens": 2}),
    Case("fastmoe-tar-bomb", tar_bomb, "fastmoe", "more than the limit", {}, {"MOE_LOAD_BENCH_MAX_BYTES": "1000000"}),
    # cards of stored folders: every field type-checked
    Case("card-model-5", stored_card(model=5), None, "card field 'model' must be dict or null, got int"),
    Case("card-id-list", stored_card(id=["x"]), None, "card field 'id' must be str, got list"),
    Case("card-version-bool", stored_card(version=True), None, "card field 'version' must be int, got bool"),
    Case("card-version-0", stored_card(version=0), None, "'version' must be a positive integer"),
    Case("card-layer-names", stored_card(layer_names=[1, 2]), None, "'layer_names' must be a list of strings"),
    Case("card-model-experts-str", stored_card(model={"experts": "4"}), None,
         "card.model field 'experts' must be int, got str"),
    Case("card-deep-extra", deep_card_extra, None, "JSON nested too deeply"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_a_clear_error(case, tmp_path, capsys, monkeypatch):
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    path, named = case.write(tmp_path)
    if case.fmt is None:
        argv = ["datasets", "validate", str(path)]
    else:
        options = [f"--option={k}={v}" for k, v in case.options.items()]
        argv = ["datasets", "import", str(path), "--format", case.fmt, "--id", "hostile", *options]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 1, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert case.phrase in err, err
    assert str(named) in err, f"the error does not name {named}: {err}"
    assert not (registry.user_datasets_dir() / "hostile").exists()


def test_limits_can_be_raised_and_bad_values_are_refused(tmp_path, monkeypatch, capsys):
    f = tmp_path / "t.csv"
    pd.DataFrame({"step": [1], "layer": [0], "expert": [70_000], "tokens": [3]}).to_csv(f, index=False)
    assert main(["datasets", "validate", str(f)]) == 1
    assert "MOE_LOAD_BENCH_MAX_EXPERTS" in capsys.readouterr().err  # the message says how to raise it
    monkeypatch.setenv("MOE_LOAD_BENCH_MAX_EXPERTS", "1e5")
    assert main(["datasets", "validate", str(f)]) == 0
    monkeypatch.setenv("MOE_LOAD_BENCH_MAX_EXPERTS", "lots")
    assert main(["datasets", "validate", str(f)]) == 1
    assert "MOE_LOAD_BENCH_MAX_EXPERTS='lots'" in capsys.readouterr().err


def test_bomb_is_refused_from_its_headers_without_reading_the_data(tmp_path, monkeypatch):
    """The deflate bomb's data is never decompressed: refusing it does not depend on reading the member."""
    from datasets_registry import storage
    from datasets_registry.trace import TraceError

    path, _ = zeros_npz(tmp_path)
    monkeypatch.setenv("MOE_LOAD_BENCH_MAX_BYTES", "50000000")
    opened = []
    real_read_array = np.lib.format.read_array
    monkeypatch.setattr(np.lib.format, "read_array", lambda *a, **k: opened.append(1) or real_read_array(*a, **k))
    with pytest.raises(TraceError, match="more than the limit"):
        storage.read_npz_arrays(path)
    assert opened == []
