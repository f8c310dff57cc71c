"""sglang-stat and sglang-per-pass: dumps written with torch.save as SGLang's recorder writes them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets_registry.importers import import_path
from datasets_registry.importers.dumps import DumpWarning

RNG = np.random.default_rng(7)
L, E = 4, 8  # layer 0 is dense: all-zero in SGLang's whole-model arrays


def passes(n, tokens=64):
    """n forward passes of logical counts [n, L, E], layer 0 dense."""
    out = np.zeros((n, L, E), dtype=np.int64)
    for t in range(n):
        for layer in range(1, L):
            out[t, layer] = RNG.multinomial(tokens * 2, RNG.dirichlet(np.ones(E)))
    return out


def save_stat(path, buffer, **extra):
    """What _StatAccumulator.dump writes: logical_count of the whole buffer (int32), rank 0."""
    torch.save(
        dict(
            rank=0,
            logical_count=torch.as_tensor(buffer, dtype=torch.int32),
            average_utilization_rate_over_window=None,
            **extra,
        ),
        path,
    )
    return path


# --------------------------------------------------------------------------- stat


def test_stat_growing_buffer_in_order(tmp_path, stored):
    data = passes(6)
    f = save_stat(tmp_path / "expert_distribution_recorder_1700000000.0.pt", data)
    tr = stored(import_path(f, "sglang-stat", ring_start=0))
    np.testing.assert_array_equal(tr.counts, data[:, 1:])
    assert tr.steps.tolist() == list(range(6))
    assert tr.card.layer_names == ["layer1", "layer2", "layer3"]
    assert tr.card.extra["dropped_layers"] == ["layer0"] and "layer0" in tr.card.notes
    assert tr.card.step_unit == "forward pass" and not tr.card.static
    assert tr.card.source["format"] == "sglang-stat" and list(tr.card.source["files"]) == [f.name]


def test_stat_unfilled_tail_is_dropped(tmp_path):
    data = passes(6)
    buf = np.zeros((10, L, E), dtype=np.int64)
    buf[:6] = data
    with pytest.warns(DumpWarning, match="dropped 4 unfilled"):
        tr = import_path(save_stat(tmp_path / "d.pt", buf), "sglang-stat")
    np.testing.assert_array_equal(tr.counts, data[:, 1:])
    assert tr.card.extra["dropped_rows"] == 4 and "dropped 4 unfilled" in tr.card.notes


def test_stat_wrapped_partial_buffer_is_rotated(tmp_path, stored):
    # reset() zeroes the rows but keeps _curr_index = 7: six passes land in rows 7, 8, 9, 0, 1, 2
    data = passes(6)
    buf = np.zeros((10, L, E), dtype=np.int64)
    for i, row in enumerate([7, 8, 9, 0, 1, 2]):
        buf[row] = data[i]
    with pytest.warns(DumpWarning, match="buffer row 7 .the write position"):
        tr = stored(import_path(save_stat(tmp_path / "d.pt", buf), "sglang-stat"))
    np.testing.assert_array_equal(tr.counts, data[:, 1:])
    assert tr.card.extra["oldest_buffer_row"] == 7
    assert "rotated" in tr.card.notes


def test_stat_full_buffer_order_unknown_unless_told(tmp_path):
    data = passes(5)
    buf = np.roll(data, 2, axis=0)  # wrapped: the oldest pass sits in row 2
    f = save_stat(tmp_path / "d.pt", buf)
    with pytest.warns(DumpWarning, match="write position"):
        tr = import_path(f, "sglang-stat")
    np.testing.assert_array_equal(tr.counts, buf[:, 1:])  # kept as is, and said so
    assert "ring_start" in tr.card.notes
    with pytest.warns(DumpWarning, match="buffer row 2"):
        tr = import_path(f, "sglang-stat", ring_start=2)
    np.testing.assert_array_equal(tr.counts, data[:, 1:])


def test_stat_scattered_zero_rows_dropped_in_buffer_order(tmp_path):
    data = passes(6)
    buf = np.zeros((9, L, E), dtype=np.int64)
    rows = [0, 1, 3, 4, 6, 7]
    buf[rows] = data
    with pytest.warns(DumpWarning, match="3 separate runs"):
        tr = import_path(save_stat(tmp_path / "d.pt", buf), "sglang-stat")
    np.testing.assert_array_equal(tr.counts, data[:, 1:])
    assert "kept in buffer order" in tr.card.notes


def test_stat_malformed(tmp_path, refuses, pickled, capsys):
    good = passes(3)
    f = tmp_path / "missing.pt"
    torch.save(dict(rank=0, average_utilization_rate_over_window=None), f)
    refuses(f, "sglang-stat", "missing key", "logical_count")
    f = save_stat(tmp_path / "shape.pt", good[0])
    refuses(f, "sglang-stat", "logical_count", "3-D", "shape (4, 8)")
    neg = good.copy()
    neg[1, 2, 5] = -3
    refuses(save_stat(tmp_path / "neg.pt", neg), "sglang-stat", "logical_count[1][2][5]", "non-negative")
    refuses(save_stat(tmp_path / "zero.pt", np.zeros((4, L, E))), "sglang-stat", "all 4 rows are zero")
    refuses(save_stat(tmp_path / "ring.pt", good), "sglang-stat", "ring_start=3", ring_start=3)
    make, name = pickled
    f = tmp_path / "pickled.pt"
    torch.save(make(dict(rank=0, logical_count=torch.as_tensor(good))), f)
    refuses(f, "sglang-stat", "refused", name)
    assert "code ran" not in capsys.readouterr().out
    f = tmp_path / "garbage.pt"
    f.write_bytes(b"not a torch file at all")
    refuses(f, "sglang-stat", "not a readable torch .pt file")
    f = tmp_path / "truncated.pt"
    save_stat(f, good)
    f.write_bytes(f.read_bytes()[:200])
    refuses(f, "sglang-stat", "not a readable torch .pt file")


# --------------------------------------------------------------------------- per_pass

P = 10  # physical experts: the 8 logical ones plus replicas of experts 2 and 5
MAP = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 2, 5]] * L, dtype=torch.int64)
MAP[3] = torch.tensor([7, 6, 5, 4, 3, 2, 1, 0, 0, 1])


def rank_records(rank, pass_ids, per_token=False):
    """What _DetailAccumulator keeps for one rank: global_physical_count [L, P] of this rank's tokens."""
    recs = []
    for pid in pass_ids:
        phys = np.zeros((L, P), dtype=np.int32)
        phys[1:] = RNG.integers(0, 20, size=(L - 1, P))
        rec = dict(forward_pass_id=pid, rank=rank, gatherer_key="primary", global_physical_count=torch.as_tensor(phys))
        if per_token:
            rec.update(
                input_ids=[1, 2, 3],
                positions=[0, 1, 2],
                extend_seq_lens=[3],
                forward_mode=1,
                topk_ids_of_layer=torch.zeros((L, 3, 2), dtype=torch.int32),
                misc_objects=[],
            )
        recs.append(rec)
    return recs


def save_ranks(folder, ranks=(0, 1), pass_ids=(5, 6, 9), per_token=False, mapping=MAP):
    folder.mkdir(exist_ok=True)
    out = {}
    for r in ranks:
        recs = rank_records(r, pass_ids, per_token)
        torch.save(
            dict(records=recs, last_physical_to_logical_map=mapping),
            folder / f"expert_distribution_recorder_1700000000.5_{r}.pt",
        )
        out[r] = recs
    return out


def expected_logical(written, pass_ids, mapping=MAP):
    want = np.zeros((len(pass_ids), L, E), dtype=np.int64)
    for recs in written.values():
        for rec in recs:
            t = list(pass_ids).index(rec["forward_pass_id"])
            phys = rec["global_physical_count"].numpy()
            for layer in range(L):
                for p in range(P):
                    want[t, layer, int(mapping[layer, p])] += phys[layer, p]
    return want


@pytest.mark.parametrize("per_token", [False, True])
def test_per_pass_sums_ranks_and_maps_to_logical(tmp_path, per_token, stored):
    written = save_ranks(tmp_path / "dump", per_token=per_token)
    tr = stored(import_path(tmp_path / "dump", "sglang-per-pass"))
    want = expected_logical(written, [5, 6, 9])
    np.testing.assert_array_equal(tr.counts, want[:, 1:])
    assert tr.steps.tolist() == [5, 6, 9]
    assert tr.card.extra["dropped_layers"] == ["layer0"]
    assert tr.card.extra["ranks"] == [0, 1] and tr.card.extra["physical_experts"] == P
    assert len(tr.card.source["files"]) == 2 and "physical to 8 logical" in tr.card.notes


def test_per_pass_keeps_each_ranks_selections_as_a_source(tmp_path, stored):
    written = save_ranks(tmp_path / "dump", ranks=(0, 1, 3))
    tr = stored(import_path(tmp_path / "dump", "sglang-per-pass"))
    assert tr.sources["count"] == 3 and tr.sources["unit"] == "rank" and "ranks 0-1, 3" in tr.sources["layout"]
    for s, rank in enumerate((0, 1, 3)):
        alone = expected_logical({rank: written[rank]}, [5, 6, 9])
        np.testing.assert_array_equal(tr.source_counts[:, :, s], alone[:, 1:])
    np.testing.assert_array_equal(tr.source_counts.sum(axis=2), tr.counts)


def test_per_pass_without_a_source_split(tmp_path):
    """One rank; ranks that all routed the same batch; a destination-side record (DeepEP low-latency)."""
    save_ranks(tmp_path / "one", ranks=(0,))
    tr = import_path(tmp_path / "one", "sglang-per-pass")
    assert tr.source_counts is None and "one rank's records: no per-source split" in tr.card.notes
    folder = tmp_path / "same"
    written = save_ranks(folder, ranks=(0, 1))
    torch.save(dict(records=[{**r, "rank": 1} for r in written[0]], last_physical_to_logical_map=MAP),
               folder / "expert_distribution_recorder_1700000000.5_1.pt")
    tr = import_path(folder, "sglang-per-pass")
    assert tr.source_counts is None and "all 2 ranks recorded the same counts" in tr.card.notes
    folder = tmp_path / "received"
    written = save_ranks(folder, ranks=(0, 1))
    for rank, recs in written.items():
        for rec in recs:
            rec["global_physical_count"][:, [p for p in range(P) if p // (P // 2) != rank]] = 0
        torch.save(dict(records=recs, last_physical_to_logical_map=MAP),
                   folder / f"expert_distribution_recorder_1700000000.5_{rank}.pt")
    tr = import_path(folder, "sglang-per-pass")
    assert tr.source_counts is None and "lie in its own 5 physical experts" in tr.card.notes


def test_per_pass_single_file_and_idle_pass(tmp_path, stored):
    written = save_ranks(tmp_path / "dump", ranks=(0,), pass_ids=(1, 2, 3))
    f = next((tmp_path / "dump").iterdir())
    data = torch.load(f, weights_only=True)
    data["records"][1]["global_physical_count"].zero_()  # an idle pass: no tokens anywhere
    torch.save(data, f)
    with pytest.warns(DumpWarning, match="dropped 1 forward pass"):
        tr = stored(import_path(f, "sglang-per-pass", experts=9))
    assert tr.steps.tolist() == [1, 3] and tr.experts == 9
    want = expected_logical({0: [r for r in written[0] if r["forward_pass_id"] != 2]}, [1, 3])
    np.testing.assert_array_equal(tr.counts[:, :, :8], want[:, 1:])
    assert tr.card.extra["dropped_records"] == [2]


def test_per_pass_malformed(tmp_path, refuses, pickled):
    def edited(name, edit, ranks=(0,), rank=0):
        """A dump folder whose rank `rank` file is loaded, changed in place by `edit`, and saved again."""
        d = tmp_path / name
        save_ranks(d, ranks=ranks)
        f = d / f"expert_distribution_recorder_1700000000.5_{rank}.pt"
        data = torch.load(f, weights_only=True)
        edit(data)
        torch.save(data, f)
        return f

    f = edited("missing_rank", lambda d: d["records"].pop(), ranks=(0, 1), rank=1)
    refuses(f.parent, "sglang-per-pass", "forward pass 9", "rank(s) [1]", source=f)
    f = edited("map", lambda d: d.update(last_physical_to_logical_map=MAP.flip(1)), ranks=(0, 1), rank=1)
    refuses(f.parent, "sglang-per-pass", "last_physical_to_logical_map differs", source=f)
    f = edited("nomap", lambda d: d.pop("last_physical_to_logical_map"))
    refuses(f, "sglang-per-pass", "missing key", "last_physical_to_logical_map")
    f = edited("nokey", lambda d: d["records"][1].pop("forward_pass_id"))
    refuses(f, "sglang-per-pass", "records[1]", "forward_pass_id")
    f = edited(
        "shape", lambda d: d["records"][2].update(global_physical_count=torch.zeros((L, P - 1), dtype=torch.int32))
    )
    refuses(f, "sglang-per-pass", "records[2].global_physical_count", "shape")
    f = edited("neg", lambda d: d["records"][0]["global_physical_count"].__setitem__((2, 3), -1))
    refuses(f, "sglang-per-pass", "records[0].global_physical_count[2][3]", "non-negative")
    f = edited("dup", lambda d: d["records"].append(dict(d["records"][0])))
    refuses(f, "sglang-per-pass", "records[3]", "repeats forward pass 5")
    f = edited("badmap", lambda d: d["last_physical_to_logical_map"].__setitem__((1, 1), 8))
    refuses(f, "sglang-per-pass", "last_physical_to_logical_map[1][1]", "[0, 8)", experts=8)
    make, name = pickled
    f = tmp_path / "pickled.pt"
    torch.save(make(dict(records=rank_records(0, [1]), last_physical_to_logical_map=MAP)), f)
    refuses(f, "sglang-per-pass", "refused", name)
