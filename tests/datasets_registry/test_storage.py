import json

import numpy as np
import pytest

from datasets_registry import storage
from datasets_registry.trace import Card, Trace, TraceError


@pytest.fixture
def trace():
    rng = np.random.default_rng(1)
    return Trace.from_arrays(rng.integers(1, 3000, (50, 3, 8)), np.arange(50) * 10 + 1, Card(id="t"))


def test_round_trip_keeps_numbers_and_fingerprint(tmp_path, trace):
    storage.save(trace, tmp_path / "t" / "v1")
    back = storage.load(tmp_path / "t" / "v1")
    np.testing.assert_array_equal(back.counts, trace.counts)
    np.testing.assert_array_equal(back.steps, trace.steps)
    assert back.fingerprint == trace.fingerprint
    with np.load(tmp_path / "t" / "v1" / "trace.npz") as z:
        assert z["counts"].dtype == np.uint16  # stored compactly


def test_existing_folder_is_never_overwritten(tmp_path, trace):
    storage.save(trace, tmp_path / "v1")
    with pytest.raises(FileExistsError):
        storage.save(trace, tmp_path / "v1")


def test_failed_save_leaves_nothing(tmp_path, trace, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", boom)
    with pytest.raises(OSError):
        storage.save(trace, tmp_path / "v1")
    assert list(tmp_path.iterdir()) == []


def test_tampered_counts_are_detected(tmp_path, trace):
    folder = storage.save(trace, tmp_path / "v1")
    counts = trace.counts.copy()
    counts[0, 0, 0] += 1
    np.savez_compressed(folder / "trace.npz", counts=counts, steps=trace.steps)
    with pytest.raises(TraceError, match="does not match"):
        storage.load(folder)


def test_corrupt_and_pickled_files_are_refused(tmp_path, trace):
    folder = storage.save(trace, tmp_path / "v1")
    (folder / "trace.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(TraceError, match="trace.npz"):
        storage.load(folder)
    np.savez(folder / "trace.npz", counts=np.array([object()], dtype=object), steps=trace.steps)
    with pytest.raises(TraceError, match="unreadable array data"):
        storage.load(folder)
    (folder / "card.json").write_text("{not json")
    with pytest.raises(TraceError, match="card.json"):
        storage.load(folder)
    (folder / "card.json").write_text(json.dumps({"id": "t", "bogus": 1}))
    with pytest.raises(TraceError, match="unknown field"):
        storage.load(folder)
