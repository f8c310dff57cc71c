"""`python -m bench predictors`: what --model accepts, each with its description, parameters, training data and GPU."""

from __future__ import annotations

import json
import sys
import textwrap

from bench.cli import main
from models.registry import BUILTIN


def test_every_builtin_with_its_parameters_description_training_and_gpu(capsys):
    assert main(["predictors", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(BUILTIN) | {"sktime:NAME", "darts:NAME", "FILE.py:CLASS"} <= set(rows)
    sw = rows["sw_avg"]
    assert sw["parameters"] == {"window": 100} and sw["kind"] == "built-in"
    assert sw["description"] == "SW_Avg of the seed paper: mean proportion over the last `window` iterations."
    assert (sw["training_data"], sw["gpu"]) == ("not used", "no")
    lstm = rows["lstm"]
    assert lstm["parameters"]["device"] == "auto" and lstm["gpu"] == "optional (parameter device, default 'auto')"
    assert lstm["training_data"] == "optional (--train DATASET: it fits on it)"
    assert rows["sktime:NAME"]["parameters"] == {"window": 2000, "min_records": 5, "fit_every": 0}

    assert main(["predictors"]) == 0
    out = capsys.readouterr().out
    assert "sw_avg  (built-in, models.baselines:SlidingWindowAverage)\n    SW_Avg of the seed paper" in out
    assert "    parameters: window=100\n    training data: not used; GPU: no\n" in out
    assert max(len(line) for line in out.splitlines()) <= 100


def test_the_engines_estimators_are_listed_with_their_sources_and_defaults(capsys):
    assert main(["predictors", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    expected = {
        "sglang": ("sgl-project/sglang: python/sglang/srt/server_args.py@", {"rebalance_num_iterations": 1000,
                                                                            "buffer_size": 1000}),
        "vllm": ("vllm-project/vllm: vllm/config/parallel.py@", {"window_size": 1000, "step_interval": 3000}),
        "trtllm": ("NVIDIA/TensorRT-LLM: cpp/tensorrt_llm/kernels/moeLoadBalance/moeLoadBalanceCommon.h@",
                   {"decay_factor": 0.9, "layer_updates_per_iter": 1}),
    }
    for name, (source, params) in expected.items():
        assert rows[name]["source"].startswith(source) and rows[name]["parameters"] == params, name
    assert main(["predictors"]) == 0
    out = capsys.readouterr().out
    for name in expected:
        assert f"{name}  (built-in, models.engines:" in out
    assert out.count("    defaults from ") >= 3


def test_a_predictor_file_is_described_by_a_worker_never_imported(tmp_path, capsys):
    f = tmp_path / "mine.py"
    f.write_text(textwrap.dedent('''
        from models.base import Predictor


        class Mine(Predictor):
            """Damped mean of the last window.

            More words that the listing leaves out.
            """
            name = "mine"
            defaults = {"window": 300, "damping": 0.5}
            needs_training = True

            def predict(self, records):
                return self.repeat(self.history.proportions[-1], records)
    '''))
    assert main(["predictors", f"{f}:Mine", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["kind"] == "file" and row["description"] == "Damped mean of the last window."
    assert row["parameters"] == {"window": 300, "damping": 0.5}
    assert row["training_data"] == "required (--train DATASET)" and row["gpu"] == "no"
    assert not [m for m in sys.modules.values() if getattr(m, "__file__", None) == str(f)]  # never imported here


def test_a_file_that_does_not_load_is_reported_in_one_line(tmp_path, capsys):
    f = tmp_path / "broken.py"
    f.write_text("class Mine(\n")
    assert main(["predictors", f"{f}:Mine"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{f}:Mine  (file, {f}:Mine)" and out[1].startswith(f"    does not load: {f.resolve()}:1: ")
