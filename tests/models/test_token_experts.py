"""Token-to-expert predictors against hand-computed predictions."""

from __future__ import annotations

import numpy as np
import pytest

from models.token_experts import FrequencyTable, LayerTransition, top_k


def routing(rows):
    """[N, L, k] from nested lists."""
    return np.asarray(rows, dtype=np.int64)


def test_top_k_breaks_ties_by_the_lowest_id():
    assert top_k(np.array([[1.0, 3.0, 3.0, 0.0]]), 2).tolist() == [[1, 2]]


def test_frequency_table_predicts_the_experts_a_token_went_to_most():
    t = FrequencyTable(layers=1, experts=4, k=2)
    tokens = np.array([7, 7, 7, 9])
    t.update(tokens, np.zeros(4), routing([[[0, 1]], [[0, 2]], [[0, 2]], [[3, 1]]]))
    # token 7: expert 0 three times, 2 twice, 1 once -> (0, 2); token 9: (1, 3); unseen 5: the overall counts
    # (0: 3, 1: 2, 2: 2, 3: 1) -> (0, 1), the tie of 1 and 2 to the lower id
    assert t.predict(np.array([7, 9, 5]), np.zeros(3)).tolist() == [[[0, 2]], [[1, 3]], [[0, 1]]]


def test_bigram_table_uses_the_previous_token_and_falls_back_to_the_token():
    t = FrequencyTable(layers=1, experts=3, k=1, context="bigram")
    t.update(np.array([5, 5, 5]), np.array([1, 2, 2]), routing([[[0]], [[2]], [[2]]]))
    # after 1, token 5 went to 0; after 2, to 2; after an unseen 4, the token's own majority (2)
    assert t.predict(np.array([5, 5, 5]), np.array([1, 2, 4])).ravel().tolist() == [0, 2, 2]
    with pytest.raises(ValueError):
        FrequencyTable(1, 3, 1, context="trigram")


def test_layer_transition_follows_the_experts_chosen_at_the_layer_before():
    t = LayerTransition(layers=2, experts=4, k=1)
    # whoever took expert 1 at layer 0 took 3 at layer 1; expert 0 -> 2
    t.update(np.array([10, 11, 12]), np.zeros(3), routing([[[1], [3]], [[1], [3]], [[0], [2]]]))
    truth = routing([[[0], [0]], [[1], [0]]])  # layer 0's real choice is all the predictor reads
    pred = t.predict(np.array([10, 99]), np.zeros(2), truth)
    assert pred[:, 1, 0].tolist() == [2, 3]
    assert pred[0, 0, 0] == 1  # layer 0 from the token table: token 10 went to 1
    with pytest.raises(ValueError):
        t.predict(np.array([10]), np.zeros(1))
