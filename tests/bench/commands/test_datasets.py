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
