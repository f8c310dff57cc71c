"""eplb-json and mindspeed-json: a run's totals (static datasets) and EPLB series, written with json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datasets_registry.importers import import_path


def write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def eplb_totals():
    """DeepSeek-style statistics: 5 layers x 6 experts, layers 0 and 1 dense (zero rows), floats."""
    rng = np.random.default_rng(3)
    counts = np.zeros((5, 6))
    counts[2:] = rng.integers(1, 10_000, size=(3, 6))
    return counts


def test_eplb_2d_is_static_and_drops_dense_layers(tmp_path, stored):
    counts = eplb_totals()
    f = write(tmp_path / "deepseek_v3_stats.json", {"logical_count": counts.astype(float).tolist(), "note": "ignored"})
    tr = stored(import_path(f, "eplb-json"))
    assert tr.shape == (1, 3, 6) and tr.steps.tolist() == [0]
    assert tr.card.static
    np.testing.assert_array_equal(tr.counts[0], counts[2:].astype(np.int64))
    assert tr.card.extra["dropped_layers"] == ["layer0", "layer1"]
    assert "layer0, layer1" in tr.card.notes and "static" in tr.card.notes
    assert tr.card.layer_names == ["layer2", "layer3", "layer4"]
    assert tr.card.source["format"] == "eplb-json" and f.name in tr.card.source["files"]


def test_eplb_3d_is_a_series(tmp_path):
    rng = np.random.default_rng(4)
    counts = rng.integers(1, 50, size=(4, 3, 6))
    counts[:, 0] = 0
    tr = import_path(write(tmp_path / "series.json", {"logical_count": counts.tolist()}), "eplb-json")
    assert not tr.card.static and tr.steps.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(tr.counts, counts[:, 1:])


@pytest.mark.parametrize(
    "obj, words",
    [
        ({"physical_count": [[1, 2]]}, ["missing key", "logical_count"]),
        ({"logical_count": [1, 2, 3]}, ["logical_count", "2-D or 3-D", "shape (3,)"]),
        ({"logical_count": [[1, 2], [3]]}, ["logical_count", "ragged"]),
        ({"logical_count": [[1, 2], [3, -4]]}, ["logical_count[1][1]", "non-negative"]),
        ({"logical_count": [[1, 2.5], [3, 4]]}, ["logical_count[0][1]", "whole number"]),
        ({"logical_count": [[1, "2"], [3, 4]]}, ["logical_count", "numbers"]),
        ({"logical_count": [[0, 0], [0, 0]]}, ["no layer routes any tokens"]),
        ([1, 2], ["must be a dict"]),
    ],
)
def test_eplb_malformed(tmp_path, refuses, obj, words):
    refuses(write(tmp_path / "bad.json", obj), "eplb-json", *words)


def test_eplb_not_json(tmp_path, refuses):
    f = tmp_path / "bad.json"
    f.write_text('{"logical_count": [[1, 2],')
    refuses(f, "eplb-json", "invalid JSON")


def mindspeed_counts():
    # MindSpeed-RL's token collection JSON: {"<layer>": {"<expert>": count}}
    return {
        "3": {"0": 123, "1": 256, "2": 89, "3": 40},
        "10": {"0": 88, "1": 190, "3": 7},
        "4": {"0": 1, "1": 2, "2": 3, "3": 4},
    }


def test_mindspeed_static(tmp_path, stored):
    f = write(tmp_path / "token_collects.json", mindspeed_counts())
    tr = stored(import_path(f, "mindspeed-json"))
    assert tr.card.static and tr.shape == (1, 3, 4)
    assert tr.card.layer_names == ["layer3", "layer4", "layer10"]  # numeric order, real numbers
    np.testing.assert_array_equal(tr.counts[0], [[123, 256, 89, 40], [1, 2, 3, 4], [88, 190, 0, 7]])
    assert tr.card.extra["absent_pairs"] == 1 and "counted as 0" in tr.card.notes
    tr = import_path(f, "mindspeed-json", experts=6)
    assert tr.experts == 6 and tr.counts[0, :, 4:].sum() == 0


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda d: d.update({"x": {"0": 1}}), ["layer key 'x'"]),
        (lambda d: d["3"].update({"e1": 5}), ["layer '3': expert key 'e1'"]),
        (lambda d: d["4"].update({"2": -3}), ["layer '4' counts", "non-negative"]),
        (lambda d: d["4"].update({"2": "many"}), ["layer '4' counts", "numbers"]),
        (lambda d: d.update({"5": [1, 2]}), ["layer '5'", "object"]),
    ],
)
def test_mindspeed_malformed(tmp_path, refuses, edit, words):
    d = mindspeed_counts()
    edit(d)
    refuses(write(tmp_path / "bad.json", d), "mindspeed-json", *words)


def test_mindspeed_experts_too_few(tmp_path, refuses):
    refuses(write(tmp_path / "m.json", mindspeed_counts()), "mindspeed-json", "experts=3", experts=3)
