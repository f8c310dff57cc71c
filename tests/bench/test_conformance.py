"""Third-party predictors: loading from a file and from an entry point, and the conformance suite."""

import json
import re
import textwrap

import pytest

from bench.cli import main
from bench.conformance import check_predictor
from datasets_registry import registry
from datasets_registry.synthetic import switching_trace
from models import available, predictor_class

PLUGINS = textwrap.dedent('''
    import inspect

    from models.base import Predictor


    class Mean(Predictor):
        name = "test_mean"
        defaults = {"window": 200}
        search_space = {"window": ("log", 20, 2000)}

        def predict(self, horizon):
            h = self.history
            return self.repeat(h.proportions[h.since(self.params["window"])].mean(axis=0), horizon)


    class StackPeeker(Predictor):
        """Finds the harness's trace up the interpreter stack and forecasts the record at its origin."""
        name = "stack_peeker"

        def predict(self, horizon):
            n = len(self.history)
            frame = inspect.currentframe()
            while frame is not None:
                trace = frame.f_locals.get("trace")
                if hasattr(trace, "proportions") and len(trace.proportions) > n:
                    return self.repeat(trace.proportions[n], horizon)
                frame = frame.f_back
            return self.repeat(self.history.proportions[-1], horizon)


    class Counts(Predictor):
        """Returns token counts, not proportions."""
        name = "counts"

        def predict(self, horizon):
            return self.repeat(self.history.counts[-1].astype(float), horizon)


    class Raises(Predictor):
        name = "raises"

        def predict(self, horizon):
            raise RuntimeError("model exploded")


    class RegistryReader(Predictor):
        """Loads the dataset under test from the registry to read its future."""
        name = "registry_reader"

        def predict(self, horizon):
            from datasets_registry import registry

            return self.repeat(registry.load("synthetic-check").proportions[len(self.history)], horizon)


    class NaNs(Predictor):
        """A NaN in every forecast."""
        name = "nans"

        def predict(self, records):
            import numpy as np

            p = np.full((records, self.history.layers, self.history.experts), 1.0 / self.history.experts)
            p[:, 0, 0] = np.nan
            return p


    class SomeNaNs(Predictor):
        """NaN at every other origin, a deterministic mean elsewhere."""
        name = "some_nans"

        def predict(self, records):
            p = self.repeat(self.history.proportions[-20:].mean(axis=0), records).copy()
            if len(self.history) % 40 == 0:
                p[:, 0, 0] = float("nan")
            return p


    class Random(Predictor):
        name = "random"

        def predict(self, horizon):
            import numpy as np

            p = np.random.default_rng().dirichlet([1.0] * self.history.experts, (horizon, self.history.layers))
            return p
''')


@pytest.fixture(scope="module")
def trace():
    return switching_trace(records=160, layers=2, experts=8, switch=60, step_every=10, seed=3)


@pytest.fixture(scope="module")
def plugin_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("plugins") / "my_predictors.py"
    path.write_text(PLUGINS)
    return path


@pytest.fixture(scope="module")
def stored(trace):
    registry.add(trace, "synthetic-check")
    return "synthetic-check"


def status(report):
    return {c.name: c.status for c in report.checks}


def detail(report, name):
    return next(c.detail for c in report.checks if c.name == name)


def test_a_conforming_predictor_from_a_file_passes(plugin_file, trace):
    report = check_predictor(f"{plugin_file}:Mean", dataset=trace)
    assert report.ok, report.text()
    assert status(report) == {
        "load": "pass",
        "interface": "pass",
        "construct": "pass",
        "forecasts": "pass",
        "determinism": "pass",
        "no look-ahead": "pass",
        "speed": "info",
    }
    assert "SYNTHETIC" not in report.data and "synthetic-switch-3" in report.data


def test_the_template_passes(trace):
    report = check_predictor("models/template.py:DampedTrend", dataset=trace)
    assert report.ok, report.text()


def test_a_submission_that_walks_the_stack_finds_nothing(plugin_file, trace):
    """A file predictor runs in a sandboxed worker: the harness's frames are in another process."""
    report = check_predictor(f"{plugin_file}:StackPeeker", dataset=trace)
    assert report.ok, report.text()
    assert "in a sandboxed worker" in detail(report, "load")


def test_code_running_in_process_that_reads_the_stack_fails_look_ahead(plugin_file, trace, monkeypatch):
    """The scramble check still guards the code that runs in the harness's process (built-ins, adapters)."""
    from models import registry as models_registry

    monkeypatch.syspath_prepend(str(plugin_file.parent))
    monkeypatch.setitem(models_registry.BUILTIN, "stack_peeker", f"{plugin_file.stem}:StackPeeker")
    report = check_predictor("stack_peeker", dataset=trace)
    assert not report.ok
    assert status(report)["forecasts"] == "pass" and status(report)["determinism"] == "pass"
    assert status(report)["no look-ahead"] == "fail"
    assert "used data at or after its origin" in detail(report, "no look-ahead")


def test_a_predictor_that_reads_the_registry_fails(plugin_file, trace, stored):
    report = check_predictor(f"{plugin_file}:RegistryReader", dataset=trace)
    assert status(report)["forecasts"] == "fail"
    assert "synthetic-check" in detail(report, "forecasts")


def test_non_distributions_fail_with_the_rule_broken(plugin_file, trace):
    report = check_predictor(f"{plugin_file}:Counts", dataset=trace)
    assert status(report)["forecasts"] == "fail"
    assert "rows do not sum to 1" in detail(report, "forecasts")


def test_an_exception_is_reported_with_its_traceback(plugin_file, trace):
    report = check_predictor(f"{plugin_file}:Raises", dataset=trace)
    text = detail(report, "forecasts")
    assert status(report)["forecasts"] == "fail"
    assert (
        "RuntimeError: model exploded" in text and "first exception in predict()" in text and str(plugin_file) in text
    )


def test_randomness_fails_determinism(plugin_file, trace):
    report = check_predictor(f"{plugin_file}:Random", dataset=trace)
    assert status(report)["determinism"] == "fail" and status(report)["no look-ahead"] == "skip"


def test_bad_search_space_and_unknown_model_are_reported(tmp_path, trace):
    f = tmp_path / "bad_space.py"
    f.write_text(
        "from models.baselines import SlidingWindowAverage\n"
        "class Bad(SlidingWindowAverage):\n    name = 'bad'\n    search_space = "
        "{'window': ('log', 0, 10), 'nope': ('cat', [1])}\n"
    )
    report = check_predictor(f"{f}:Bad", dataset=trace)
    assert status(report)["interface"] == "fail"
    assert "['nope']: not a parameter" in detail(report, "interface") and "low > 0" in detail(report, "interface")
    assert status(check_predictor("no_such_model", dataset=trace)) == {"load": "fail"}


def test_cli_exit_codes(plugin_file, stored, capsys):
    assert (
        main(["check-predictor", f"{plugin_file}:Mean", "--dataset", stored, "--records", "120", "--layers", "2"]) == 0
    )
    assert "all checks passed" in capsys.readouterr().out
    assert main(["check-predictor", f"{plugin_file}:Counts", "--dataset", stored, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and {c["name"]: c["status"] for c in out["checks"]}["forecasts"] == "fail"


def test_an_installed_entry_point_is_found_and_runs(tmp_path, monkeypatch, stored, capsys):
    (tmp_path / "tiny_plugin.py").write_text(
        "from models.baselines import LastValue\n\nclass Tiny(LastValue):\n    name = 'tiny'\n"
    )
    dist = tmp_path / "tiny_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[moe_load_bench.predictors]\ntiny = tiny_plugin:Tiny\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "tiny" in available()
    assert predictor_class("tiny").__name__ == "Tiny"
    assert main(["predictors"]) == 0
    out = capsys.readouterr().out  # described by a sandboxed worker: the class's docstring, its parameters
    assert "tiny  (plugin, tiny_plugin:Tiny)\n    The last observed proportions.\n    parameters: none\n" in out
    assert main(["check-predictor", "tiny", "--dataset", stored]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "run",
                "--model",
                "tiny",
                "--dataset",
                stored,
                "--no-track",
                "--json",
                "--horizon",
                "200",
                "--stride",
                "200",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "tiny" and result["failures"] == 0


@pytest.mark.parametrize("source, line, message", [
    ("from models.base import Predictor\n\nclass Mine(Predictor):\n    name = 'mine'\n\n"
     "    def predict(self, records)\n        return None\n", 6, "SyntaxError: expected ':'"),
    ("import numpy\nimport no_such_module_here\n", 2, "ModuleNotFoundError: No module named 'no_such_module_here'"),
])
def test_a_broken_predictor_file_is_one_line_with_file_line_and_message(tmp_path, capsys, source, line, message):
    """`run` and `check-predictor` on a file that does not load: no traceback, just where and what."""
    f = tmp_path / "mine.py"
    f.write_text(source)
    expected = f"{f.resolve()}:{line}: {message}"
    assert main(["run", "--model", f"{f}:Mine", "--dataset", "tiny-cpu-s1", "--no-track"]) == 1
    out = capsys.readouterr()
    assert out.err == f"error: {expected}\n" and out.out == ""
    assert main(["check-predictor", f"{f}:Mine"]) == 1
    out = capsys.readouterr().out
    assert out.splitlines() == [f"check-predictor {f}:Mine", f"FAIL  load: {expected}", "FAILED: load"]


def in_process(monkeypatch, plugin_file, cls: str, name: str) -> str:
    """Run a class of the plugin file in the harness's process, as a built-in (not in a worker, which refuses a NaN
    forecast before the harness records it)."""
    from models import registry as models_registry

    monkeypatch.syspath_prepend(str(plugin_file.parent))
    monkeypatch.setitem(models_registry.BUILTIN, name, f"{plugin_file.stem}:{cls}")
    return name


def test_a_nan_forecast_fails_forecasts_only_and_the_skips_say_why(plugin_file, trace, monkeypatch):
    report = check_predictor(in_process(monkeypatch, plugin_file, "NaNs", "nans"), dataset=trace)
    assert status(report)["forecasts"] == "fail" and "nan" not in detail(report, "determinism").lower()
    assert status(report)["determinism"] == "skip" and status(report)["no look-ahead"] == "skip"
    assert detail(report, "determinism") == "no valid forecast to compare: every forecast failed the forecasts check"
    assert detail(report, "no look-ahead") == detail(report, "determinism")
    assert report.text().count("FAIL ") == 1


def test_determinism_compares_the_valid_forecasts(plugin_file, trace, monkeypatch):
    report = check_predictor(in_process(monkeypatch, plugin_file, "SomeNaNs", "some_nans"), dataset=trace)
    assert status(report)["forecasts"] == "fail"
    assert status(report)["determinism"] == "pass" and status(report)["no look-ahead"] == "pass"
    assert re.search(r"\(\d+ origins compared; \d+ invalid forecast\(s\) \(see forecasts\) left out\)",
                     detail(report, "determinism")), detail(report, "determinism")


def test_a_nan_forecast_in_a_worker_is_refused_there_and_the_skips_say_why(plugin_file, trace):
    report = check_predictor(f"{plugin_file}:NaNs", dataset=trace)
    assert status(report)["forecasts"] == "fail" and status(report)["determinism"] == "skip"
    assert "forecast has NaN or inf" in detail(report, "forecasts") and "Traceback" not in detail(report, "forecasts")
    assert detail(report, "no look-ahead") == "no forecast to compare: no call of predict gave one (see forecasts)"


def test_after_non_determinism_the_look_ahead_skip_says_why(plugin_file, trace):
    report = check_predictor(f"{plugin_file}:Random", dataset=trace)
    assert "two fresh instances already differ on the same data" in detail(report, "no look-ahead")
