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


# --------------------------------------------------------------------------- the per-source split

SOURCES = {"count": 3, "unit": "rank", "layout": "source s: the tokens of rank s's own batch"}


def split(T=4, L=2, S=3, E=5, seed=0):
    return np.random.default_rng(seed).integers(0, 40, size=(T, L, S, E)) + (np.arange(S) == 0)[None, None, :, None]


def card(**extra):
    return Card(id="x", extra={"sources": dict(SOURCES), **extra})


def test_source_counts_add_up_and_leave_the_fingerprint_alone():
    sc = split()
    counts = sc.sum(axis=2)
    plain = Trace.from_arrays(counts, None)
    with_sources = Trace.from_arrays(counts, None, card(), extras={"source_counts": sc})
    assert plain.source_counts is None and plain.sources is None
    assert with_sources.source_counts.shape == (4, 2, 3, 5) and with_sources.source_counts.dtype == np.int64
    np.testing.assert_array_equal(with_sources.source_counts.sum(axis=2), with_sources.counts)
    assert not with_sources.source_counts.flags.writeable
    assert with_sources.sources == SOURCES
    assert with_sources.fingerprint == plain.fingerprint == fingerprint(plain.counts, plain.steps)


@pytest.mark.parametrize("change, fragment", [
    (lambda sc, c: (sc + (np.arange(sc.size).reshape(sc.shape) == 7), c),
     "do not add up to counts .* record 0, layer 0, expert 2"),
    (lambda sc, c: (sc[:, :, :, :4], c), r"must be \[records, layers, sources, experts\] = \[4, 2, S, 5\]"),
    (lambda sc, c: (sc[:, :, :2], c), "card says 3 sources but source_counts has 2"),
    (lambda sc, c: (sc.astype(float), c), "must be integers"),
    (lambda sc, c: (np.where(np.arange(sc.size).reshape(sc.shape) == 0, -1, sc), c), "non-negative"),
    (lambda sc, c: (sc, Card(id="x")), r"without card.extra\[\"sources\"\]"),
    (lambda sc, c: (sc, Card(id="x", extra={"sources": {**SOURCES, "unit": "gpu"}})), "unit must be one of"),
    (lambda sc, c: (sc, Card(id="x", extra={"sources": {**SOURCES, "count": 0}})), "positive integer"),
    (lambda sc, c: (sc, Card(id="x", extra={"sources": {"count": 3}})), "exactly the keys"),
])
def test_a_bad_split_is_refused_naming_the_problem(change, fragment):
    sc = split()
    counts = sc.sum(axis=2)
    bad, c = change(sc, card())
    with pytest.raises(TraceError, match=fragment) as info:
        Trace.from_arrays(counts, None, c, source="dump.bin", extras={"source_counts": bad})
    assert info.value.source == "dump.bin"


def test_a_card_that_declares_sources_needs_the_split():
    with pytest.raises(TraceError, match="3 sources but the trace has no source_counts"):
        Trace.from_arrays(split().sum(axis=2), None, card())
    with pytest.raises(TraceError, match="extra.sources must be a JSON object, got int"):
        Trace.from_arrays(split().sum(axis=2), None, Card(id="x", extra={"sources": 3}))


def test_direct_construction_checks_the_split_too():
    t = Trace.from_arrays(split().sum(axis=2), None)
    bad = split(seed=1)
    with pytest.raises(TraceError, match="do not add up"):
        Trace(t.counts, t.steps, card(), {"source_counts": bad}, source="here")
