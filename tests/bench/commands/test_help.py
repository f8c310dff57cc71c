"""What the help and the docs say of defaults holds: the default dataset is the built-in default trace."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from bench.cli import build_parser
from datasets_registry.registry import DEFAULT_DATASET

REPO = Path(__file__).resolve().parents[3]


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:  # argparse keeps sub-parsers only there
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, path + (name,))


def test_every_dataset_option_names_the_real_default():
    seen = []
    for path, parser in commands(build_parser()):
        for action in parser._actions:
            if "--dataset" in action.option_strings and "default" in (action.help or ""):
                seen.append(" ".join(path))
                assert DEFAULT_DATASET in action.help and "smartmoe" not in action.help, (path, action.help)
    assert {"run", "tune", "check-predictor", "placement"} <= set(seen)


def dataset_of(line: str) -> str:
    found = re.search(r"--dataset (\S+)", line)
    return found.group(1) if found else DEFAULT_DATASET


@pytest.mark.parametrize("doc", ["README.md", "docs/contributing-a-predictor.md"])
def test_tuned_parameters_are_run_on_the_dataset_they_were_tuned_on(doc):
    """`run --params best` reads the parameters tuned for its dataset: the one `tune` was given."""
    tuned = None
    runs = 0
    for line in (REPO / doc).read_text().splitlines():
        if "bench tune " in line:
            tuned = dataset_of(line)
        if "--params best" in line and "bench run" in line:
            assert tuned is not None and dataset_of(line) == tuned, (doc, line)
            runs += 1
    assert runs


def test_the_split_step_the_contributing_guide_gives_is_the_default_datasets():
    from bench.task import Task
    from bench.tune import split_step
    from datasets_registry import registry

    text = (REPO / "docs" / "contributing-a-predictor.md").read_text()
    (first,) = re.findall(r"bench run +--model my_predictor\.py:DampedTrend --first-origin (\d+)", text)
    trace = registry.load(DEFAULT_DATASET)
    assert int(first) == split_step(trace.steps, Task(DEFAULT_DATASET), 0.5)
