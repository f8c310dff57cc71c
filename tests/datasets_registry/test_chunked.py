"""The chunked layout: same fingerprint as the whole-trace layout, pieces read by records and layers."""

import json

import numpy as np
import pytest

from datasets_registry import registry, storage
from datasets_registry.chunked import CHUNKED_FILE, ChunkedTrace, ChunkedWriter, save_chunked
from datasets_registry.trace import Card, TraceError


@pytest.mark.parametrize("dataset", ["tiny-cpu-s1", "gpt3-125m-16e-top2-s3-probe", "gpt3-125m-16e-serve-code-b512"])
def test_builtin_traces_keep_their_fingerprint_chunked(dataset, tmp_path):
    tr = registry.load(dataset)
    folder = save_chunked(tr, tmp_path / "v1", group_records=37)  # row groups that cut nowhere in particular
    stored = ChunkedTrace(folder)  # verifies the fingerprint chunk by chunk
    assert stored.fingerprint == tr.fingerprint and stored.shape == tr.shape
    assert np.array_equal(stored.steps, tr.steps)
    assert np.array_equal(stored.read((5, 90), (1, 2)), tr.counts[5:90, 1:2])
    assert np.array_equal(stored.read((36, 38)), tr.counts[36:38])
    back = storage.load(folder)
    assert back.fingerprint == tr.fingerprint and np.array_equal(back.counts, tr.counts)
    piece = stored.piece((0, 2))
    assert np.array_equal(piece.counts, tr.counts[:, 0:2]) and piece.card.layer_names == tr.card.layer_names[0:2]


def test_writer_streams_blocks_and_registry_reads_them(tmp_path):
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 9, (250, 3, 5))
    with registry.chunked_writer("chunky", Card(id="chunky", title="SYNTHETIC"), 3, 5, dtype="uint8",
                                 group_records=64) as w:
        for a in range(0, 250, 30):
            w.append(counts[a : a + 30], np.arange(a, min(a + 30, 250)) * 10)
    stored = registry.open_chunked("chunky", verify=True)
    whole = registry.load("chunky")
    assert stored.fingerprint == whole.fingerprint
    from datasets_registry.trace import fingerprint

    assert whole.fingerprint == fingerprint(counts, np.arange(250) * 10)
    assert [r["records"] for r in registry.listing() if r["id"] == "chunky"] == [250]
    assert len(list(stored.blocks())) == 4


def test_bad_blocks_and_files_are_refused_by_name(tmp_path):
    w = ChunkedWriter(tmp_path / "v1", Card(id="x"), 2, 4, dtype="uint8")
    with pytest.raises(TraceError, match="routes no tokens"):
        w.append(np.zeros((3, 2, 4)), [0, 1, 2])
    w.append(np.ones((3, 2, 4)), [0, 1, 2])
    with pytest.raises(TraceError, match="strictly increasing"):
        w.append(np.ones((3, 2, 4)), [2, 3, 4])
    with pytest.raises(TraceError, match="do not fit in uint8"):
        w.append(np.full((1, 2, 4), 300), [9])
    folder = w.close()
    card = json.loads((folder / "card.json").read_text())
    card["fingerprint"] = "sha256:" + "0" * 64
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(TraceError, match="does not match the counts"):
        ChunkedTrace(folder)
    (folder / CHUNKED_FILE).write_bytes(b"PAR1 not really")
    with pytest.raises(TraceError, match=f"{CHUNKED_FILE}.*not a readable Parquet"):
        ChunkedTrace(folder)
    assert not list(tmp_path.glob(".*saving"))


def test_health_check_reads_a_chunked_dataset_chunk_by_chunk(tmp_path):
    tr = registry.load("tiny-cpu-s1")
    entry = registry.add_chunked(tr, "chunky-check", group_records=500)
    assert not [p for p in registry.check_datasets(builtin=False) if "chunky-check" in str(p.path)]
    data = entry.folder / CHUNKED_FILE
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte in the middle of the counts
    data.write_bytes(bytes(raw))
    assert [p for p in registry.check_datasets(builtin=False) if "chunky-check" in str(p.path)]


def test_a_damaged_row_group_is_named(tmp_path):
    folder = save_chunked(registry.load("tiny-cpu-s1"), tmp_path / "v1", group_records=500)
    raw = bytearray((folder / CHUNKED_FILE).read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)
    (folder / CHUNKED_FILE).write_bytes(bytes(raw))
    with pytest.raises(TraceError, match=r"trace.parquet.*(row group|does not match)"):
        ChunkedTrace(folder)


def test_a_stored_trace_may_exceed_the_cells_limit_that_bounds_each_read(tmp_path, monkeypatch):
    """The cells limit bounds what is read into memory at once, not the stored trace."""
    monkeypatch.setenv("MOE_LOAD_BENCH_MAX_CELLS", "1000")
    with ChunkedWriter(tmp_path / "v1", Card(id="big"), 4, 8, dtype="uint8", group_records=16) as w:
        for a in range(0, 96, 24):  # 96 x 4 x 8 = 3,072 cells in all, 768 per block
            w.append(np.ones((24, 4, 8)), np.arange(a, a + 24))
    stored = ChunkedTrace(tmp_path / "v1")
    assert stored.shape == (96, 4, 8) and stored.piece((0, 1)).shape == (96, 1, 8)
    with pytest.raises(TraceError, match="cells"):
        stored.load()
