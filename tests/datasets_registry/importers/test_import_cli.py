"""`python -m bench datasets import` with the new formats: lands in the registry, or leaves nothing."""

from __future__ import annotations

import fractions
import json

import numpy as np
import pytest
import torch

from bench.cli import main
from datasets_registry import registry
from datasets_registry.importers import FORMATS, import_path

NEW = [
    "sglang-stat",
    "sglang-per-pass",
    "eplb-json",
    "trtllm",
    "megatron-router-trace",
    "vllm-routed-experts",
    "mindspeed-json",
]


def megatron_dump(folder):
    folder.mkdir()
    for rank in (0, 1):
        with open(folder / f"rank{rank}.jsonl", "w") as f:
            for step in (7, 8):
                f.write(
                    json.dumps(
                        {
                            "step": step,
                            "stage": 0,
                            "block": 0,
                            "layer": 0,
                            "rank": rank,
                            "num_tokens": 3,
                            "topk": 1,
                            "top_indices": [[rank], [2], [step % 4]],
                        }
                    )
                    + "\n"
                )
    return folder


def test_formats_are_listed(capsys):
    assert main(["datasets", "formats"]) == 0
    out = capsys.readouterr().out
    for name in NEW:
        assert name in FORMATS and name in out


def test_cli_import_lands_in_registry(tmp_path, capsys):
    d = megatron_dump(tmp_path / "trace")
    rc = main(
        ["datasets", "import", str(d), "--format", "megatron-router-trace", "--id", "mega-cli", "--option", "experts=4"]
    )
    assert rc == 0, capsys.readouterr().err
    tr = registry.load("mega-cli")
    # step 7: ranks 0 and 1 send [0, 2, 3] and [1, 2, 3]; step 8: [0, 2, 0] and [1, 2, 0]
    np.testing.assert_array_equal(tr.counts[:, 0], [[1, 1, 2, 2], [3, 1, 2, 0]])
    assert tr.steps.tolist() == [7, 8]
    assert tr.card.source["format"] == "megatron-router-trace" and sorted(tr.card.source["files"]) == [
        "rank0.jsonl",
        "rank1.jsonl",
    ]


def test_cli_static_import(tmp_path, capsys):
    f = tmp_path / "stats.json"
    f.write_text(json.dumps({"logical_count": [[0.0, 0.0, 0.0], [3.0, 1.0, 2.0]]}))
    assert main(["datasets", "import", str(f), "--format", "eplb-json", "--id", "eplb-cli"]) == 0, (
        capsys.readouterr().err
    )
    tr = registry.load("eplb-cli")
    assert tr.card.static and tr.counts.tolist() == [[[3, 1, 2]]] and tr.card.extra["dropped_layers"] == ["layer0"]


@pytest.mark.parametrize("case", ["bad-file", "pickled", "missing-option", "unknown-option"])
def test_failed_cli_import_leaves_nothing(tmp_path, capsys, case):
    name = f"failed-{case}"
    if case == "bad-file":
        f = tmp_path / "stats.json"
        f.write_text(json.dumps({"logical_count": [[1, -1]]}))
        argv = [str(f), "--format", "eplb-json"]
    elif case == "pickled":
        f = tmp_path / "d.pt"
        torch.save({"logical_count": torch.ones((2, 1, 4), dtype=torch.int32), "x": fractions.Fraction(1, 3)}, f)
        argv = [str(f), "--format", "sglang-stat"]
    elif case == "missing-option":
        argv = [str(megatron_dump(tmp_path / "t")), "--format", "megatron-router-trace"]
    else:
        argv = [
            str(megatron_dump(tmp_path / "t")),
            "--format",
            "megatron-router-trace",
            "--option",
            "experts=4",
            "--option",
            "expert=4",
        ]
    rc = main(["datasets", "import", *argv, "--id", name])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error:")
    assert "Traceback" not in err
    assert not (registry.user_datasets_dir() / name).exists()
    with pytest.raises(registry.DatasetNotFound):
        registry.resolve(name)


def test_unknown_option_names_the_options(tmp_path):
    with pytest.raises(ValueError, match="experts, step_tokens|step_tokens, experts"):
        import_path(megatron_dump(tmp_path / "t") / "rank0.jsonl", "vllm-routed-experts", expert=3)
