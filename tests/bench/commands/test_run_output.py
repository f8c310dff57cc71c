"""What `python -m bench run` prints beside its table when a result needs a comment: a disqualified run, a score
below the noise floor, a run whose origins mostly failed."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from bench.cli import main
from bench.commands.run import print_result
from bench.results import Verdict

TASK = ["--dataset", "tiny-cpu-s1", "--horizon", "1000", "--stride", "500", "--no-track"]
GAMERS = Path(__file__).resolve().parents[1]  # tests/bench: gaming_plugins.Peeker


@pytest.fixture
def peeker(monkeypatch):
    """A cheat run in-process, as a built-in would be: its scores are its only tell."""
    from models import registry

    monkeypatch.syspath_prepend(str(GAMERS))
    monkeypatch.setitem(registry.BUILTIN, "peeker", "gaming_plugins:Peeker")
    return "peeker"


def run_json(capsys, *args) -> dict:
    capsys.readouterr()
    assert main(["run", *TASK, "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_an_honest_run_prints_no_comment(capsys):
    assert main(["run", "--model", "sw_avg", *TASK]) == 0
    out = capsys.readouterr().out
    assert "DISQUALIFIED" not in out and "warning" not in out


def test_a_disqualified_run_says_so_with_the_reasons(peeker, capsys):
    assert main(["run", "--model", peeker, *TASK]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "DISQUALIFIED at horizon 1000 (the fair-play test, docs/protocol.md; never ranked):" in out
    assert "the multinomial noise floor" in out


def test_a_score_below_the_noise_floor_is_never_printed_without_comment(peeker, capsys):
    from bench.results import RunResult

    result = RunResult.from_dict(run_json(capsys, "--model", peeker))
    h = result.horizons[1000]
    assert h.value("error_rate") < h.value("noise_floor")
    passed = result.replace(horizons={1000: h.replace(verdict=Verdict())})  # as if the test had let it through
    print_result(passed)
    out = " ".join(capsys.readouterr().out.split())
    assert "warning: at horizon 1000 error_rate" in out and "is below the noise floor" in out
    assert "the fair-play test did not disqualify the run" in out and "DISQUALIFIED" not in out


def test_a_run_whose_origins_mostly_failed_is_flagged(tmp_path, capsys):
    f = tmp_path / "flaky.py"
    f.write_text(textwrap.dedent('''
        from models.base import Predictor


        class Flaky(Predictor):
            name = "flaky_out"

            def predict(self, records):
                if len(self.history) > 1000:
                    raise RuntimeError("cannot forecast this late")
                return self.repeat(self.history.proportions[-1], records)
    '''))
    result = run_json(capsys, "--model", f"{f}:Flaky")
    h = result["horizons"]["1000"]
    assert h["failures"] > h["n_origins"] / 2
    assert main(["run", "--model", f"{f}:Flaky", *TASK]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"warning: {h['failures']} of {h['n_origins']} origins failed at horizon 1000;" in out
