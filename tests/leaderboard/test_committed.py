"""The committed leaderboard/leaderboard.{md,csv} are what the refresh command produces from fresh runs."""

from __future__ import annotations

from pathlib import Path

from bench.cli import main
from leaderboard import reference

FILES = ("leaderboard.md", "leaderboard.csv")


def test_committed_files_match_a_fresh_refresh(smartmoe, tmp_path, capsys):
    # the session's data home starts empty: the reference runs are computed (or reused from this session) here
    assert main(["leaderboard", "--write", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    for name in FILES:
        committed = (reference.OUT_DIR / name).read_text(encoding="utf-8")
        fresh = (tmp_path / name).read_text(encoding="utf-8")
        assert fresh == committed, (
            f"leaderboard/{name} is stale: run `make leaderboard` (python -m bench leaderboard --write) and commit it"
        )
    assert (tmp_path / "leaderboard.html").stat().st_size > 1_000_000  # plotly.js inlined


def test_refresh_is_deterministic(smartmoe, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert main(["leaderboard", "--write", "--out", str(out)]) == 0
    capsys.readouterr()
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_reference_datasets_cover_the_builtin_ones():
    from datasets_registry import registry

    builtin = {e.id for e in registry.entries() if e.kind == "builtin"}
    assert set(reference.reference_datasets()) == builtin | {registry.DEFAULT_DATASET}
    assert Path(reference.OUT_DIR, "leaderboard.md").exists()
