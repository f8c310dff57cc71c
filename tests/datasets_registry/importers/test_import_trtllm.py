"""trtllm: EXPERT_STATISTIC_PATH folders written with safetensors, as TensorRT-LLM's ExpertStatistic does."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file as save_torch

from datasets_registry.importers import import_path
from datasets_registry.importers.dumps import DumpWarning

E, TOPK = 8, 2
ITERS = range(100, 105)  # EXPERT_STATISTIC_ITER_RANGE=100-105
LAYERS = (3, 4, 5)  # the MoE layers' real numbers


def write_dump(folder, ranks=2, skip=()):
    """meta_info.json from rank 0, rank{r}.safetensors per rank; returns the per-rank counts written."""
    folder.mkdir()
    (folder / "meta_info.json").write_text(json.dumps({"num_experts": E, "num_experts_per_token": TOPK}))
    rng = np.random.default_rng(11)
    written = {}
    for r in range(ranks):
        recs = {}
        for it in ITERS:
            for layer in LAYERS:
                if (r, it, layer) in skip:
                    continue
                selected = torch.as_tensor(rng.integers(0, E, size=(32, TOPK)))
                recs[f"{it}_{layer}"] = torch.bincount(selected.flatten(), minlength=E)  # int64, as TRT-LLM records
        written[r] = recs
        if r % 2 == 0:
            save_torch(recs, str(folder / f"rank{r}.safetensors"))
        else:
            save_numpy({k: v.numpy() for k, v in recs.items()}, str(folder / f"rank{r}.safetensors"))
    (folder / "rank0_numtokens.json").write_text("{}")  # an extra file the importer ignores
    return written


def test_trtllm_sums_ranks_and_keeps_iterations(tmp_path, stored):
    written = write_dump(tmp_path / "expert_statistic", ranks=3)
    tr = stored(import_path(tmp_path / "expert_statistic", "trtllm"))
    assert tr.steps.tolist() == list(ITERS)
    assert tr.card.layer_names == ["layer3", "layer4", "layer5"]
    for t, it in enumerate(ITERS):
        for li, layer in enumerate(LAYERS):
            want = sum(written[r][f"{it}_{layer}"].numpy() for r in written)
            np.testing.assert_array_equal(tr.counts[t, li], want)
    assert tr.card.model.top_k == TOPK and tr.card.model.experts == E
    assert sorted(tr.card.source["files"]) == [
        "meta_info.json",
        "rank0.safetensors",
        "rank1.safetensors",
        "rank2.safetensors",
    ]
    assert "summed over 3 rank" in tr.card.notes


def test_trtllm_key_absent_from_one_rank_warns(tmp_path, stored):
    written = write_dump(tmp_path / "d", skip={(1, 102, 4)})
    with pytest.warns(DumpWarning, match="1 .iteration, layer, rank. entries"):
        tr = stored(import_path(tmp_path / "d", "trtllm"))
    np.testing.assert_array_equal(tr.counts[2, 1], written[0]["102_4"].numpy())
    assert tr.card.extra["absent_entries"] == 1


def test_trtllm_malformed(tmp_path, refuses):
    d = tmp_path / "nometa"
    write_dump(d)
    (d / "meta_info.json").unlink()
    refuses(d, "trtllm", "missing", source=d / "meta_info.json")

    d = tmp_path / "metakey"
    write_dump(d)
    (d / "meta_info.json").write_text(json.dumps({"num_experts_per_token": 2}))
    refuses(d, "trtllm", "missing key", "num_experts", source=d / "meta_info.json")

    d = tmp_path / "badkey"
    write_dump(d, ranks=1)
    save_numpy(
        {"100_3": np.ones(E, dtype=np.int64), "iter100_layer3": np.ones(E, dtype=np.int64)},
        str(d / "rank1.safetensors"),
    )
    refuses(d, "trtllm", "key 'iter100_layer3'", source=d / "rank1.safetensors")

    d = tmp_path / "shape"
    write_dump(d, ranks=1)
    save_numpy({"100_3": np.ones(E - 1, dtype=np.int64)}, str(d / "rank1.safetensors"))
    refuses(d, "trtllm", "key '100_3'", "7 counts", "num_experts=8", source=d / "rank1.safetensors")

    d = tmp_path / "neg"
    write_dump(d, ranks=1)
    bad = np.ones(E, dtype=np.int64)
    bad[4] = -2
    save_numpy({"100_3": bad}, str(d / "rank1.safetensors"))
    refuses(d, "trtllm", "key '100_3'[4]", "non-negative", source=d / "rank1.safetensors")

    d = tmp_path / "corrupt"
    write_dump(d, ranks=1)
    (d / "rank1.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad")
    refuses(d, "trtllm", "not a readable safetensors file", source=d / "rank1.safetensors")

    d = tmp_path / "hole"
    write_dump(d, ranks=1, skip={(0, 103, 5)})
    refuses(d, "trtllm", "'103_5'")

    refuses(tmp_path / "hole" / "meta_info.json", "trtllm", "EXPERT_STATISTIC_PATH folder")
