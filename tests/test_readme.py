"""The command outputs README.md shows are what the commands print (benchmarks/readme_outputs.py writes them)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("readme_outputs", REPO / "benchmarks" / "readme_outputs.py")
readme_outputs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_outputs)


def test_every_block_has_a_marker_and_a_command():
    assert set(readme_outputs.shown()) == set(readme_outputs.BLOCKS)
    text = (REPO / "README.md").read_text()
    for command, _, _ in readme_outputs.BLOCKS.values():
        assert command in text


@pytest.mark.parametrize("name", [n for n, (_, _, quick) in readme_outputs.BLOCKS.items() if quick])
def test_the_readme_shows_what_the_command_prints(smartmoe, name):
    fresh = readme_outputs.comparable(readme_outputs.output(name))
    assert readme_outputs.comparable(readme_outputs.shown()[name]) == fresh, (
        f"README.md's {name} block is stale: run `python benchmarks/readme_outputs.py --write`")


def test_the_readme_quotes_the_committed_leaderboard():
    """The top of the ranking, and per dataset whether a zoo model beats the engines' own estimators."""
    for name, table in readme_outputs.tables().items():
        assert readme_outputs.shown_table(name) == table, (
            f"README.md's {name} table is stale: run `python benchmarks/readme_outputs.py --write`")


def test_the_engine_table_answers_for_every_dataset_of_the_suite():
    from bench.suites import MOE_LOAD_V1

    table = readme_outputs.shown_table("engines")
    for dataset in MOE_LOAD_V1.datasets:
        assert f"| {dataset} | 1000 |" in table and f"| {dataset} | 2000 |" in table, dataset


def test_the_quick_start_says_what_the_full_test_run_needs():
    text = (REPO / "README.md").read_text()
    quick = text[text.index("## Quick start"):text.index("\n## ", text.index("## Quick start") + 1)]
    for needed in ("moe_trace.tar.xz", "../shared/datasets/smartmoe-ae/", "$MOE_LOAD_BENCH_SOURCES",
                   "/usr/bin/chromium", "apt-get install -y chromium", "skipped"):
        assert needed in quick, f"the quick start does not say {needed!r}"
