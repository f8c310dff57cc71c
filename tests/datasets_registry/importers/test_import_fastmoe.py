"""The FastMoE / SmartMoE FileGate importer keeps each rank's tables as the trace's per-source split."""

import json
import warnings

import numpy as np
import pytest

from bench.suites import MOE_LOAD_V1
from datasets_registry import registry, storage
from datasets_registry.importers import import_path
from datasets_registry.sources import PUBLIC, PublicSource
from datasets_registry.trace import Card

from ..test_importers import write_tables


@pytest.fixture
def counts():
    return np.random.default_rng(5).integers(8, 500, (3, 2, 4))


def test_each_ranks_tables_are_one_source(tmp_path, counts):
    write_tables(tmp_path / "t", counts, [1, 11, 21], ranks=3, micro=2)
    trace = import_path(tmp_path / "t", "fastmoe")
    assert trace.sources == {"count": 3, "unit": "rank", "layout": trace.sources["layout"]}
    assert "ranks 0..2" in trace.sources["layout"]
    sc = trace.source_counts
    assert sc.shape == (3, 2, 3, 4)
    np.testing.assert_array_equal(sc.sum(axis=2), counts)
    share = counts // 6  # write_tables: every rank's micro-batch gets share, rank 0's first one the rest too
    np.testing.assert_array_equal(sc[:, :, 1], 2 * share)
    np.testing.assert_array_equal(sc[:, :, 2], 2 * share)
    np.testing.assert_array_equal(sc[:, :, 0], counts - 4 * share)
    # a rank's table is its own: moving tokens between ranks changes the split, not the counts or fingerprint
    moved = tmp_path / "m"
    write_tables(moved, counts, [1, 11, 21], ranks=3, micro=2)
    table = moved / "table_iter11_rank1.log"
    lines = table.read_text().splitlines()
    label, body = lines[0].split(":", 1)
    parts = json.loads(body)
    parts[0][2] -= 1
    lines[0] = f"{label}:{json.dumps(parts)}"
    table.write_text("\n".join(lines) + "\n")
    other = moved / "table_iter11_rank2.log"
    lines = other.read_text().splitlines()
    label, body = lines[0].split(":", 1)
    parts = json.loads(body)
    parts[1][2] += 1
    lines[0] = f"{label}:{json.dumps(parts)}"
    other.write_text("\n".join(lines) + "\n")
    again = import_path(moved, "fastmoe")
    assert again.fingerprint == trace.fingerprint
    assert again.source_counts[1, 0, 1, 2] == sc[1, 0, 1, 2] - 1
    assert again.source_counts[1, 0, 2, 2] == sc[1, 0, 2, 2] + 1


def test_import_store_load_round_trip_keeps_the_split(tmp_path, monkeypatch, counts):
    monkeypatch.setenv("MOE_LOAD_BENCH_HOME", str(tmp_path / "home"))
    write_tables(tmp_path / "t", counts, [1, 11, 21], ranks=2)
    trace = import_path(tmp_path / "t", "fastmoe")
    back = registry.load(registry.add(trace, "mine").ref)
    np.testing.assert_array_equal(back.source_counts, trace.source_counts)
    assert back.card.extra["sources"] == trace.sources and back.fingerprint == trace.fingerprint


def test_real_smartmoe_keeps_16_ranks_and_its_fingerprint(smartmoe):
    """Against the fingerprint the moe-load-v1 suite pins for smartmoe-ae: the counts are those of before."""
    pinned = {t.dataset: t.fingerprint for t in MOE_LOAD_V1.tasks}["smartmoe-ae"]
    assert smartmoe.fingerprint == pinned
    assert smartmoe.sources["count"] == 16 and smartmoe.sources["unit"] == "rank"
    assert smartmoe.source_counts.shape == (501, 24, 16, 32)
    np.testing.assert_array_equal(smartmoe.source_counts.sum(axis=2), smartmoe.counts)
    # 4 micro-batches of 2048 tokens x top-2 per rank, so every rank sends 16,384 slots per layer per record
    assert (smartmoe.source_counts.sum(axis=3) == 16384).all()


def _public(tmp_path, counts, name="fake-public"):
    write_tables(tmp_path / "src", counts, [1, 11, 21], ranks=2)
    return PublicSource(id=name, title="t", url="https://example.org/a.tar.gz", repository="o/r", commit="abc",
                        path_in_repo="t", licence="MIT", importer="fastmoe", archive_name="a.tar.xz",
                        card=Card(id=name, licence="MIT"), build_revision=2), tmp_path / "src"


def _make_old(folder):
    """What a build by a project without the per-source split left: no extras.npz, a card without sources."""
    (folder / storage.EXTRAS_FILE).unlink()
    data = json.loads((folder / storage.CARD_FILE).read_text())
    data["extra"].pop("sources")
    data["source"].pop("build_revision")
    (folder / storage.CARD_FILE).write_text(json.dumps(data))


def test_a_build_of_an_older_revision_is_rebuilt_in_place_with_the_sources(tmp_path, monkeypatch, counts):
    monkeypatch.setenv("MOE_LOAD_BENCH_HOME", str(tmp_path / "home"))
    src, copy = _public(tmp_path, counts)
    monkeypatch.setitem(PUBLIC, src.id, src)
    monkeypatch.setenv(src.env_var, str(copy))
    folder = registry.build_public(src.id).folder
    before = registry.load(src.id)
    _make_old(folder)
    monkeypatch.delenv(src.env_var)
    monkeypatch.setenv("MOE_LOAD_BENCH_SOURCES", str(tmp_path / "nothing"))
    old = registry.load(src.id)  # no local copy: the stored build keeps working as it is
    assert old.source_counts is None and old.fingerprint == before.fingerprint
    monkeypatch.setenv(src.env_var, str(copy))
    rebuilt = registry.load(src.id)
    assert rebuilt.fingerprint == before.fingerprint and rebuilt.card.version == 1
    np.testing.assert_array_equal(rebuilt.source_counts, before.source_counts)
    assert rebuilt.card.source["build_revision"] == 2
    assert sorted(p.name for p in folder.parent.iterdir()) == ["v1"]  # nothing left beside it
    mtime = (folder / storage.CARD_FILE).stat().st_mtime_ns
    registry.load(src.id)
    assert (folder / storage.CARD_FILE).stat().st_mtime_ns == mtime  # up to date: not rebuilt again


def test_a_local_copy_with_other_counts_does_not_replace_the_stored_build(tmp_path, monkeypatch, counts):
    monkeypatch.setenv("MOE_LOAD_BENCH_HOME", str(tmp_path / "home"))
    src, copy = _public(tmp_path, counts)
    monkeypatch.setitem(PUBLIC, src.id, src)
    monkeypatch.setenv(src.env_var, str(copy))
    folder = registry.build_public(src.id).folder
    fp = registry.load(src.id).fingerprint
    _make_old(folder)
    write_tables(copy, counts + 1, [1, 11, 21], ranks=2)
    with pytest.warns(RuntimeWarning, match="not rebuilt .* differ from the stored build"):
        kept = registry.load(src.id)
    assert kept.fingerprint == fp and kept.source_counts is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert registry.resolve(src.id, build=False).folder == folder  # build=False never rebuilds
    (copy / "table_iter11_rank1.log").write_text("0:[[1.0, -2.0, 3.0, 4.0]]\n")
    with pytest.warns(RuntimeWarning, match="not rebuilt .*negative count"):
        assert registry.load(src.id).fingerprint == fp  # an unreadable local copy keeps the stored build too
