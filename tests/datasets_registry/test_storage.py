import json

import numpy as np
import pytest

from datasets_registry import storage
from datasets_registry.trace import Card, Trace, TraceError

from .test_trace import SOURCES, card, split


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


def test_storage_round_trip_keeps_the_split_in_a_compact_type(tmp_path):
    sc = split()
    t = Trace.from_arrays(sc.sum(axis=2), None, card(), extras={"source_counts": sc})
    storage.save(t, tmp_path / "v1")
    headers = storage.npz_headers(tmp_path / "v1" / storage.EXTRAS_FILE)
    assert headers["source_counts"] == ((4, 2, 3, 5), np.dtype(np.uint8))
    import zipfile

    with zipfile.ZipFile(tmp_path / "v1" / storage.EXTRAS_FILE) as zf:  # read at every load: not inflated
        assert zf.getinfo("source_counts.npy").compress_type == zipfile.ZIP_STORED
    back = storage.load(tmp_path / "v1")
    np.testing.assert_array_equal(back.source_counts, sc)
    assert back.source_counts.dtype == np.int64 and back.fingerprint == t.fingerprint and back.sources == SOURCES


def test_storage_load_refuses_a_split_that_disagrees_naming_extras(tmp_path):
    sc = split()
    t = Trace.from_arrays(sc.sum(axis=2), None, card(), extras={"source_counts": sc})
    folder = storage.save(t, tmp_path / "v1")
    bad = sc.copy()
    bad[1, 1, 2, 3] += 1
    np.savez_compressed(folder / storage.EXTRAS_FILE, source_counts=bad)
    with pytest.raises(TraceError, match="do not add up to counts .* record 1, layer 1, expert 3") as info:
        storage.load(folder)
    assert info.value.source.endswith(storage.EXTRAS_FILE)
    (folder / storage.EXTRAS_FILE).unlink()
    with pytest.raises(TraceError, match="declares sources .* lacks source_counts"):
        storage.load(folder)
    data = json.loads((folder / storage.CARD_FILE).read_text())
    data["extra"] = {}
    (folder / storage.CARD_FILE).write_text(json.dumps(data))
    np.savez_compressed(folder / storage.EXTRAS_FILE, source_counts=sc)
    with pytest.raises(TraceError, match="does not declare sources .* holds source_counts"):
        storage.load(folder)


def test_a_trace_without_sources_loads_as_before_with_a_token_sample_beside_it(tmp_path):
    t = Trace.from_arrays(split().sum(axis=2), None)
    folder = storage.save(Trace(t.counts, t.steps, t.card, {"per_record": np.arange(4)}), tmp_path / "v1")
    back = storage.load(folder)
    assert back.source_counts is None and back.extras == {}
