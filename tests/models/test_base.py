"""models.base.History keeps the per-source split it is shown, in order, read-only."""

import numpy as np

from models.base import History


def test_history_grows_its_per_source_split_in_order():
    h = History(layers=1, experts=2, capacity=2)
    assert h.source_counts is None
    chunks = [np.full((k, 1, 3, 2), i) for i, k in enumerate((1, 20, 5))]
    for c in chunks:
        h.append_sources(c)
    np.testing.assert_array_equal(h.source_counts, np.concatenate(chunks))
    assert not h.source_counts.flags.writeable
