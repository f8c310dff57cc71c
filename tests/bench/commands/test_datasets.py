import json
import subprocess
import sys

from bench.cli import main


def test_show_smartmoe_reports_its_shape(smartmoe, capsys):
    assert main(["datasets", "show", "smartmoe-ae", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["layers"], info["experts"], info["records"]) == (24, 32, 501)
    assert (info["first_step"], info["last_step"]) == (1, 5001)
    assert info["tokens_per_record"] == {"min": 262144, "max": 262144, "constant": True}
    assert info["licence"] == "GPL-3.0" and info["fingerprint"].startswith("sha256:")
    assert info["sources"]["count"] == 16 and info["sources"]["unit"] == "rank"
    assert info["sources"]["share_of_tokens"] == [0.0625] * 16  # every rank routes 4 micro-batches of 2048 tokens


def test_show_prints_the_sources_of_any_trace_with_them_and_none_otherwise(tmp_path, monkeypatch, capsys):
    import numpy as np

    from datasets_registry import registry
    from datasets_registry.trace import Card, Trace

    monkeypatch.setenv("MOE_LOAD_BENCH_HOME", str(tmp_path))
    sc = np.zeros((2, 1, 2, 3), dtype=np.int64)
    sc[:, :, 0] = 3  # source 0 sends 3 tokens to every expert, source 1 sends 1
    sc[:, :, 1] = 1
    sources = {"count": 2, "unit": "node", "layout": "node n: ranks 8n..8n+7"}
    registry.add(Trace.from_arrays(sc.sum(axis=2), None, Card(id="x", extra={"sources": sources}),
                                   extras={"source_counts": sc}), "split")
    registry.add(Trace.from_arrays(sc.sum(axis=2), None), "whole")
    assert main(["datasets", "show", "split", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sources"] == {**sources, "share_of_tokens": [0.75, 0.25]}
    assert main(["datasets", "show", "split"]) == 0
    assert "sources: 2 nodes (node n: ranks 8n..8n+7); share of the tokens each sends: 25.00% .. 75.00%" in (
        capsys.readouterr().out)
    assert main(["datasets", "show", "whole", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sources"] is None


def test_list_json_has_the_documented_fields(smartmoe, capsys):
    assert main(["datasets", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    row = next(r for r in rows if r["id"] == "smartmoe-ae")
    for key in ("id", "version", "layers", "experts", "records", "first_step", "last_step", "source", "fingerprint"):
        assert key in row
    assert row["records"] == 501 and row["fingerprint"] == smartmoe.fingerprint


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys; from bench.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch','mlflow','pandas','scipy','sktime','darts','statsforecast','lightning',"
        "'pytorch_lightning','matplotlib') if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_unknown_dataset_is_a_clear_error(capsys):
    assert main(["datasets", "show", "no-such-thing"]) == 1
    assert "no dataset 'no-such-thing'" in capsys.readouterr().err


def test_list_is_readable_at_80_columns(capsys, monkeypatch):
    """Not a terminal (a pipe, CI): rich lays tables out in 80 columns; one line per dataset, nothing cut."""
    from datasets_registry import registry

    monkeypatch.setenv("COLUMNS", "80")
    assert main(["datasets", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 80 and not any("…" in line for line in lines)
    builtins = [e for e in registry.entries() if e.kind == "builtin"]
    for entry in builtins:
        (row,) = [line for line in lines if line.startswith(f"{entry.id} ")]  # the whole id, on a line of its own
        trace = registry.load(entry.ref)
        assert f"{trace.records}×{trace.layers}×{trace.experts}" in row and "Apache-2.0" in row
    rule = lines.index("─" * 80)
    ids = {e.id for e in registry.entries()} | {"smartmoe-ae"}
    rows = [line for line in lines[rule + 1:] if line.split(" ")[0] in ids]
    assert len(rows) == len(lines[rule + 1:]) - 1 == len(registry.listing())  # one line a dataset, then the hint
