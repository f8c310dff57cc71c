import dataclasses
import json

import numpy as np
import pytest

from datasets_registry.trace import (
    CARD_FIELD_TYPES,
    MODEL_FIELD_TYPES,
    Card,
    ModelInfo,
    Trace,
    TraceError,
    fingerprint,
)


def good_counts(T=5, L=2, E=4):
    rng = np.random.default_rng(0)
    return rng.integers(1, 50, size=(T, L, E))


def test_proportions_are_derived_and_sum_to_one():
    t = Trace.from_arrays(good_counts(), np.arange(5) * 10 + 1)
    assert t.proportions.shape == (5, 2, 4)
    np.testing.assert_allclose(t.proportions.sum(axis=2), 1.0)
    np.testing.assert_allclose(t.proportions * t.totals[:, :, None], t.counts)
    assert not t.counts.flags.writeable and not t.proportions.flags.writeable


@pytest.mark.parametrize(
    "counts, steps, fragment",
    [
        (np.ones((5, 4)), None, "rank 3"),
        (np.ones((5, 2, 0)), None, "empty axis"),
        (-good_counts(), None, "non-negative"),
        (good_counts() + 0.5, None, "whole numbers"),
        (np.where(np.arange(40).reshape(5, 2, 4) == 7, np.nan, 1.0), None, "NaN or inf"),
        (np.where(np.arange(40).reshape(5, 2, 4) == 7, np.inf, 1.0), None, "NaN or inf"),
        (np.array([[[1, 1]], [[0, 0]]]), None, "routes no tokens at record 1"),
        (good_counts(), [1, 2, 2, 3, 4], "strictly increasing; record 2"),
        (good_counts(), [1, 2, 3], "3 entries but counts has 5"),
        (np.array([["a"]], dtype=object)[None], None, "numeric"),
    ],
)
def test_bad_arrays_are_refused_with_the_source_and_problem(counts, steps, fragment):
    with pytest.raises(TraceError) as err:
        Trace.from_arrays(counts, steps, source="some/file.npz")
    assert "some/file.npz" in str(err.value)
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    "card, fragment",
    [
        (Card(id="x", model=ModelInfo(experts=8)), "8 experts"),
        (Card(id="x", model=ModelInfo(moe_layers=3)), "3 MoE layers"),
        (Card(id="x", layer_names=["a"]), "names 1 layers"),
        (Card(id="x", static=True), "static"),
        (Card(id="x", fingerprint="sha256:00"), "does not match"),
    ],
)
def test_card_disagreeing_with_arrays_is_refused(card, fragment):
    with pytest.raises(TraceError, match=fragment):
        Trace.from_arrays(good_counts(), None, card, source="f")


def test_fingerprint_ignores_dtype_and_depends_on_every_number():
    c = good_counts()
    s = np.arange(5)
    fp = fingerprint(c.astype(np.int64), s)
    assert fingerprint(c.astype(np.uint16), s) == fp
    assert fingerprint(c.astype(np.float64), s.astype(np.int32)) == fp
    c2 = c.copy()
    c2[3, 1, 2] += 1
    assert fingerprint(c2, s) != fp
    assert fingerprint(c, s + 1) != fp
    assert fingerprint(c.reshape(5, 4, 2), s) != fp


def test_card_round_trips_through_json_and_rejects_unknown_fields():
    card = Card(id="x", model=ModelInfo(experts=4, top_k=2), extra={"a": 1})
    import json

    back = Card.from_dict(json.loads(card.to_json()))
    assert back == card
    with pytest.raises(TraceError, match="unknown field"):
        Card.from_dict({"id": "x", "colour": "red"}, source="card.json")


def test_card_type_tables_cover_every_field():
    assert set(CARD_FIELD_TYPES) == {f.name for f in dataclasses.fields(Card)}
    assert set(MODEL_FIELD_TYPES) == {f.name for f in dataclasses.fields(ModelInfo)}
    card = Card(id="x", model=ModelInfo(experts=4, aux_loss=0.01, router="hash"), layer_names=["a"])
    assert Card.from_dict(json.loads(card.to_json())) == card  # a written card reads back
