import json
import tarfile

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from datasets_registry import registry
from datasets_registry.importers import import_path
from datasets_registry.trace import TraceError


def write_tables(folder, counts, iters, ranks=2, micro=2):
    """FileGate tables whose sum over ranks and micro-batches is `counts`."""
    folder.mkdir(parents=True, exist_ok=True)
    for t, it in enumerate(iters):
        for r in range(ranks):
            lines = []
            for l in range(counts.shape[1]):
                parts = np.zeros((micro, counts.shape[2]))
                share = counts[t, l] // (ranks * micro)
                parts[:] = share
                if r == 0:
                    parts[0] += counts[t, l] - share * ranks * micro
                lines.append(f"{l}:{json.dumps(parts.tolist())}")
            (folder / f"table_iter{it}_rank{r}.log").write_text("\n".join(lines) + "\n")


@pytest.fixture
def counts():
    return np.random.default_rng(3).integers(1, 500, (6, 3, 4))


def test_same_trace_from_npz_csv_parquet_and_fastmoe_has_one_fingerprint(tmp_path, counts):
    iters = np.array([1, 11, 21, 31, 41, 51])
    np.savez(tmp_path / "t.npz", counts=counts, steps=iters)
    T, L, E = counts.shape
    long = pd.DataFrame(
        [(iters[t], l, e, counts[t, l, e]) for t in range(T) for l in range(L) for e in range(E)],
        columns=["step", "layer", "expert", "tokens"],
    ).sample(frac=1, random_state=0)
    long.to_csv(tmp_path / "t.csv", index=False)
    long.to_parquet(tmp_path / "t.parquet")
    write_tables(tmp_path / "tables", counts, iters)
    with tarfile.open(tmp_path / "tables.tar.xz", "w:xz") as tar:
        tar.add(tmp_path / "tables", arcname="moe_trace")
    fps = {
        "npz": import_path(tmp_path / "t.npz", "npz").fingerprint,
        "csv": import_path(tmp_path / "t.csv", "csv").fingerprint,
        "parquet": import_path(tmp_path / "t.parquet", "parquet").fingerprint,
        "fastmoe-dir": import_path(tmp_path / "tables", "fastmoe").fingerprint,
        "fastmoe-tar": import_path(tmp_path / "tables.tar.xz", "fastmoe").fingerprint,
    }
    assert len(set(fps.values())) == 1, fps


def test_real_smartmoe_trace_from_npz_and_csv_matches_its_fastmoe_import(tmp_path, smartmoe):
    np.savez_compressed(tmp_path / "s.npz", counts=smartmoe.counts, steps=smartmoe.steps)
    T, L, E = smartmoe.shape
    t, l, e = np.meshgrid(np.arange(T), np.arange(L), np.arange(E), indexing="ij")
    pd.DataFrame(
        {"step": smartmoe.steps[t.ravel()], "layer": l.ravel(), "expert": e.ravel(), "tokens": smartmoe.counts.ravel()}
    ).to_csv(tmp_path / "s.csv", index=False)
    assert import_path(tmp_path / "s.npz", "npz").fingerprint == smartmoe.fingerprint
    assert import_path(tmp_path / "s.csv", "csv").fingerprint == smartmoe.fingerprint


def test_fastmoe_errors_name_the_file_and_line(tmp_path, counts):
    write_tables(tmp_path / "a", counts, [1, 11, 21, 31, 41, 51])
    bad = tmp_path / "a" / "table_iter21_rank1.log"
    lines = bad.read_text().splitlines()
    lines[1] = "1:[[1.0, -2.0, 3.0, 4.0]]"
    bad.write_text("\n".join(lines))
    with pytest.raises(TraceError, match=r"table_iter21_rank1.log: line 2 \(layer 1\): negative count"):
        import_path(tmp_path / "a", "fastmoe")
    lines[1] = "1:[[1.0, 2.0"
    bad.write_text("\n".join(lines))
    with pytest.raises(TraceError, match="line 2 .*invalid JSON"):
        import_path(tmp_path / "a", "fastmoe")
    bad.unlink()
    with pytest.raises(TraceError, match="iteration 21 has ranks"):
        import_path(tmp_path / "a", "fastmoe")
    (tmp_path / "junk.tar.xz").write_bytes(b"not an archive")
    with pytest.raises(TraceError, match="junk.tar.xz"):
        import_path(tmp_path / "junk.tar.xz", "fastmoe")


def test_long_table_errors(tmp_path):
    pd.DataFrame({"step": [1, 1], "layer": [0, 0], "expert": [0, 0], "tokens": [3, 4]}).to_csv(
        tmp_path / "dup.csv", index=False
    )
    with pytest.raises(TraceError, match="repeated row"):
        import_path(tmp_path / "dup.csv", "csv")
    pd.DataFrame({"step": [1], "layer": [0], "expert": [0]}).to_csv(tmp_path / "nocol.csv", index=False)
    with pytest.raises(TraceError, match=r"missing column\(s\) \['tokens'\]"):
        import_path(tmp_path / "nocol.csv", "csv")
    pd.DataFrame({"step": [1, 2], "layer": [0, 0], "expert": [0, 0], "tokens": [3, -1]}).to_csv(
        tmp_path / "neg.csv", index=False
    )
    with pytest.raises(TraceError, match="neg.csv: counts must be non-negative"):
        import_path(tmp_path / "neg.csv", "csv")


def test_cli_import_stores_and_failed_import_leaves_nothing(tmp_path, capsys, counts):
    np.savez(tmp_path / "good.npz", counts=counts, steps=np.arange(6) * 5)
    assert (
        main(["datasets", "import", str(tmp_path / "good.npz"), "--format", "npz", "--id", "cli-good", "--json"]) == 0
    )
    listed = json.loads(capsys.readouterr().out)
    assert listed["records"] == 6 and listed["id"] == "cli-good"
    np.testing.assert_array_equal(registry.load("cli-good").counts, counts)
    bad = counts.astype(float)
    bad[2, 1, 1] = np.nan
    np.savez(tmp_path / "bad.npz", counts=bad)
    assert main(["datasets", "import", str(tmp_path / "bad.npz"), "--format", "npz", "--id", "cli-bad"]) == 1
    err = capsys.readouterr().err
    assert "bad.npz" in err and "NaN" in err
    assert not (registry.user_datasets_dir() / "cli-bad").exists()
    assert main(["datasets", "validate", str(tmp_path / "bad.npz")]) == 1
    assert main(["datasets", "validate", str(tmp_path / "good.npz")]) == 0
