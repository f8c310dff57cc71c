"""Submissions: a file predictor on a small suite, into one results file that loads, verifies and feeds the board;
every kind of tampering or damage is refused with a message naming what differs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench import runner, submission, suites
from bench.aggregate import summarize
from bench.cli import main
from bench.results import RunResult, checksum, run_folder, runs_dir
from bench.submission import Submission, SubmissionError
from bench.suites import Suite, SuiteTask
from bench.task import Task

SUITE = "mini-suite"
SYNTHETIC = "submit-switch"  # a SYNTHETIC trace (datasets_registry.synthetic): 300 records x 2 layers x 8 experts
TASK = Task(dataset="-", horizons=(200, 500), stride=250)  # short horizons: a few seconds a run

PREDICTOR = '''
from models.base import Predictor


class Recent(Predictor):
    """The mean share over the last `window` iterations."""

    name = "recent_mean"
    defaults = {"window": 200}

    def predict(self, records):
        h = self.history
        return self.repeat(h.proportions[h.since(self.params["window"])].mean(axis=0), records)
'''


@pytest.fixture(scope="module")
def suite():
    """A two-task suite (tiny-cpu-s1 and a synthetic trace), declared for the duration of the module."""
    from datasets_registry import registry
    from datasets_registry.synthetic import switching_trace

    if not any(e.id == SYNTHETIC for e in registry.entries()):
        registry.add(switching_trace(records=300, layers=2, experts=8, switch=100, step_every=10, seed=7), SYNTHETIC)
    tasks = tuple(SuiteTask(d, 1, suites.local_fingerprint(f"{d}@1"), TASK) for d in ("tiny-cpu-s1", SYNTHETIC))
    mini = Suite(SUITE, 1, tasks, "two small tasks for the tests")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(suites.SUITES, SUITE, mini)
        yield mini


@pytest.fixture(scope="module")
def predictor_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("predictor") / "recent.py"
    path.write_text(PREDICTOR)
    return path


@pytest.fixture(scope="module")
def submitted(suite, predictor_file, tmp_path_factory) -> Path:
    """`bench submit` of the file predictor on the suite, logged to MLflow; the results file."""
    out = tmp_path_factory.mktemp("submissions") / "recent.json"
    code = main(["submit", "--model", f"{predictor_file}:Recent", "--suite", SUITE, "--out", str(out)])
    assert code == 0 and out.exists()
    return out


def rewrite(src: Path, dst: Path, change) -> Path:
    """A copy of a submission file with `change(body)` applied and its checksum redone (a deliberate forgery)."""
    body = json.loads(src.read_text())
    body.pop("checksum")
    change(body)
    body["checksum"] = checksum(body)
    dst.write_text(json.dumps(body))
    return dst


def refused(capsys, path: Path, *args: str):
    """`submit --verify` refuses the file: exit 1, no traceback; what it printed (out, err)."""
    assert main(["submit", "--verify", str(path), *args]) == 1
    printed = capsys.readouterr()
    said = [line for line in printed.err.splitlines() if not re.search(r" origins \(\d+%\), ", line)]  # not progress
    assert "Traceback" not in printed.err and said[0].startswith(f"error: {path}: "), printed.err
    return printed


# ---- the round trip ---------------------------------------------------------------------------------
def test_the_file_holds_every_run_and_its_per_origin_rows(submitted, suite, predictor_file):
    sub = submission.load(submitted)
    assert sub.suite == suite and sub.code_version == runner.code_version()
    body = json.loads(submitted.read_text())
    assert (body["format"], body["format_version"]) == ("moe-load-bench-submission", 1)
    m = sub.model
    assert (m.name, m.spec, m.version, dict(m.params), m.source) == (
        "recent_mean", f"{predictor_file}:Recent", 1, {"window": 200}, "file")
    assert m.source_sha256 == runner.source_fingerprint(f"{predictor_file}:Recent")
    assert m.train == () and m.trained_on_suite is False
    assert m.hardware == (runner.hardware(),)
    assert [r.task for r in sub.runs] == list(suite.tasks)
    for run in sub.runs:
        stored = RunResult.load(run_folder(run.result.run_key))  # what `bench run` cached for the same run
        assert run.result == stored and run.result.mlflow_run_id  # logged to MLflow
        assert run.result.isolation != "in-process"  # a file predictor runs in its sandboxed worker
        pd.testing.assert_frame_equal(run.origins, stored.to_frame(per_origin=True))
        origins = run.origins["origin"].nunique()
        forecasting = sum(stored.timings[c] for c in ("observe", "refit", "forecast"))
        assert run.timing == pytest.approx({"seconds": stored.seconds, "training": stored.timings["start"],
                                            "forecasting": forecasting, "origins": origins,
                                            "per_origin": forecasting / origins})
    assert m.seconds["total"] == pytest.approx(sum(r.result.seconds for r in sub.runs))
    assert m.seconds["per_origin"] == pytest.approx(sum(r.timing["forecasting"] for r in sub.runs)
                                                    / sum(r.timing["origins"] for r in sub.runs))
    again = Submission.load(sub.save(submitted.with_name("again.json")))
    assert again.to_dict() == sub.to_dict()


def test_verify_accepts_it_and_never_touches_the_cache(submitted, capsys):
    def snapshot():
        return {p: p.stat().st_mtime_ns for p in runs_dir().rglob("*") if p.is_file()}

    before = snapshot()
    assert main(["submit", "--verify", str(submitted)]) == 0
    out = capsys.readouterr().out
    assert "a re-run from scratch of 2 of 2 tasks (seed 0): tiny-cpu-s1@1, submit-switch@1, every metric" in out
    assert out.strip().endswith(f"{submitted}: verified")
    assert snapshot() == before  # nothing read back, rewritten or added in the user's data home


def test_the_leaderboard_from_submission_files(submitted, capsys, tmp_path):
    sub = submission.load(submitted)
    shutil.copy(submitted, tmp_path / "copy.json")
    for paths in ([str(submitted)], [str(tmp_path)], [str(submitted), str(tmp_path)]):
        assert main(["leaderboard", "--submissions", *paths, "--json"]) == 0
        board = json.loads(capsys.readouterr().out)
        assert [(e["rank"], e["label"]) for e in board["ranking"]] == [(None, "recent_mean")]  # nothing beside it
        assert "nothing to compare it with; add sw_avg" in board["ranking"][0]["unranked"]
        assert board["superseded"] == [] and board["disqualified"] == []
        assert len(board["tables"]) == 4  # 2 datasets x 2 horizons
        for t in board["tables"]:
            result = next(r.result for r in sub.runs if r.result.dataset == t["dataset"])
            (row,) = t["rows"]
            assert row["run_key"] == result.run_key and row["model_fingerprint"] == sub.model.source_sha256
            h = result.horizons[t["horizon"]]
            assert row["error_rate"] == h.metrics["error_rate"].to_dict()
            assert row["window_error"] == h.metrics["window_error"].to_dict()
            assert (row["n_origins"], row["failed_origins"]) == (h.origins, h.failures)
        assert {c["dataset"] for c in board["curves"]} == {"tiny-cpu-s1", SYNTHETIC}  # plots from the file's rows
    with pytest.raises(SystemExit):  # --submissions and --write are exclusive
        main(["leaderboard", "--submissions", str(submitted), "--write"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_training_on_a_suite_dataset_is_recorded(suite, predictor_file, tmp_path):
    one = Suite("one", 1, (suite.task(SYNTHETIC),))
    sub = submission.submit(f"{predictor_file}:Recent", one, train=[SYNTHETIC], track=False)
    assert sub.model.train == (submission.TrainingData(SYNTHETIC, 1, suite.task(SYNTHETIC).fingerprint),)
    assert sub.model.trained_on_suite is True
    assert sub.runs[0].result.task.train == (f"{SYNTHETIC}@1",)
    path = sub.save(tmp_path / "trained.json")
    assert submission.load(path).model.trained_on_suite is True
    hidden = rewrite(path, tmp_path / "hidden.json", lambda b: b["model"].update(trained_on_suite=False))
    with pytest.raises(SubmissionError, match="trained_on_suite is False but its training datasets in the suite are"):
        submission.load(hidden)


# ---- tampering --------------------------------------------------------------------------------------
def test_a_changed_summary_number_is_refused(submitted, tmp_path, capsys):
    def change(body):
        body["runs"][0]["result"]["horizons"]["200"]["error_rate"]["all"] += 0.01

    bad = rewrite(submitted, tmp_path / "bad.json", change)
    result = submission.load(submitted).runs[0].result
    was = result.value(200, "error_rate")
    err = refused(capsys, bad).err
    assert err.splitlines() == [f"error: {bad}: task tiny-cpu-s1@1, horizon 200, error_rate (all): the summary says "
                                f"{was + 0.01}, its per-origin rows give {was}"]
    assert main(["leaderboard", "--submissions", str(bad), "--json"]) == 1  # nor does it reach the board
    assert "task tiny-cpu-s1@1, horizon 200, error_rate (all)" in capsys.readouterr().err


def test_a_changed_per_origin_value_is_refused(submitted, tmp_path, capsys):
    def change(body):
        body["runs"][1]["origins"]["columns"]["window_error"][0] += 0.5

    bad = rewrite(submitted, tmp_path / "bad.json", change)
    err = refused(capsys, bad).err
    assert f"task {SYNTHETIC}@1, horizon 200, window_error (all): the summary says" in err
    assert "its per-origin rows give" in err
    with pytest.raises(SubmissionError) as exc:
        submission.load(bad)
    assert all(p.startswith(f"task {SYNTHETIC}@1, horizon 200, window_error") for p in exc.value.problems)


def test_a_consistent_fake_is_caught_by_the_rerun_which_never_reads_the_cache(submitted, tmp_path, capsys):
    """Halve the errors in the cached runs (rows and summaries agree), submit from that cache: the file loads, and
    only a re-run from scratch can tell; the cache is restored afterwards."""
    sub = submission.load(submitted)
    backup = tmp_path / "backup"
    for run in sub.runs:
        folder = run_folder(run.result.run_key)
        shutil.copytree(folder, backup / folder.name)
        rows = run.origins.copy()
        rows["error_rate"] *= 0.5
        metrics = [c for c in rows.columns if c not in runner.ROW_KEYS]
        fake = summarize(rows, [], sorted(run.result.horizons), metrics, submission.layer_count(run.result))
        rows.to_parquet(folder / "origins.parquet", index=False)
        run.result.replace(horizons={H: h.replace(verdict=run.result.horizons[H].verdict)
                                     for H, h in fake.items()}).save(folder)
    try:
        faked = submission.submit(sub.model.spec, SUITE, track=False).save(tmp_path / "faked.json")
        loaded = submission.load(faked)  # consistent: the file alone cannot tell
        assert loaded.runs[0].result.value(200, "error_rate") == pytest.approx(
            sub.runs[0].result.value(200, "error_rate") / 2)
        err = refused(capsys, faked, "--sample", "1", "--seed", "5").err
    finally:
        for folder in backup.iterdir():
            shutil.rmtree(runs_dir() / folder.name)
            shutil.copytree(folder, runs_dir() / folder.name)
    (i,) = [i for i, r in enumerate(sub.runs) if f"task {r.task.ref}, horizon 500, error_rate (all)" in err]
    ref, true, fake = sub.runs[i].task.ref, sub.runs[i].result, loaded.runs[i].result
    for H in (200, 500):
        assert (f"error: {faked}: task {ref}, horizon {H}, error_rate (all): the file says "
                f"{fake.value(H, 'error_rate')}, the re-run gives {true.value(H, 'error_rate')}") in err.splitlines()
        assert f"task {ref}, horizon {H}, error_rate per origin: " in err
    assert "window_error" not in err  # only what was changed


def test_changed_fingerprints_are_refused(submitted, tmp_path, capsys):
    zeros = "sha256:" + "0" * 64
    real = submission.load(submitted).suite.tasks[0].fingerprint

    def suite_only(body):
        body["suite"]["tasks"][0]["fingerprint"] = zeros

    with pytest.raises(SubmissionError, match=f"task tiny-cpu-s1@1: the result is on tiny-cpu-s1@1 with fingerprint "
                                              f"{real}, the suite pins tiny-cpu-s1@1 with {zeros}"):
        submission.load(rewrite(submitted, tmp_path / "a.json", suite_only))

    def both(body):
        suite_only(body)
        body["runs"][0]["result"]["dataset_fingerprint"] = zeros

    bad = rewrite(submitted, tmp_path / "b.json", both)
    printed = refused(capsys, bad)
    err = printed.err
    assert f"dataset tiny-cpu-s1@1 of suite {SUITE}@1: fingerprint {real} here, the suite pins {zeros}" in err
    assert f"suite {SUITE}@1 in the file is not the declared one: its tasks differ on tiny-cpu-s1@1" in err
    assert "no re-run from scratch: the data or the predictor differ" in printed.out


def test_an_edited_predictor_file_is_refused(submitted, predictor_file, capsys):
    recorded = submission.load(submitted).model.source_sha256
    original = predictor_file.read_text()
    predictor_file.write_text(original + "\n# tuned after submitting\n")
    try:
        err = refused(capsys, submitted).err
        edited = runner.source_fingerprint(f"{predictor_file}:Recent")
    finally:
        predictor_file.write_text(original)
    assert err.splitlines() == [f"error: {submitted}: predictor file of {predictor_file}:Recent: its source here has "
                                f"{edited}, the file records {recorded} (edited after submitting?)"]


# ---- damage -----------------------------------------------------------------------------------------
def test_a_truncated_or_corrupt_file_is_a_clear_error(submitted, tmp_path, capsys):
    data = submitted.read_bytes()
    cases = {
        "truncated.json": (data[: len(data) // 2], "not a readable JSON file (truncated or damaged?)"),
        "binary.json": (bytes(range(256)), "not a readable JSON file"),
        "list.json": (b"[1, 2]", "a submission is a JSON object, got list"),
        "result.json": (b'{"schema": 1}', "not a submission file (format None"),
        "edited.json": (data.replace(b'"window": 200', b'"window": 201', 1), "checksum mismatch"),
        "nan.json": (data.replace(b'"window": 200', b'"window": NaN', 1), "NaN is not a number this format allows"),
        "huge.json": (data.replace(b'"window": 200', b'"window": 1e999', 1), "1e999 is out of range"),
        "deep.json": (b"[" * 100_000, "not a readable JSON file"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(SubmissionError, match=re.escape(message)):
            submission.load(path)
    err = refused(capsys, tmp_path / "truncated.json").err
    assert "not a readable JSON file (truncated or damaged?)" in err
    assert main(["leaderboard", "--submissions", str(tmp_path / "nothing-here")]) == 1
    assert "nothing-here: no such file or folder" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    (lambda b: b["runs"][0]["origins"]["columns"].pop("state") and b["runs"][0]["origins"]["dtypes"].pop("state"),
     "task tiny-cpu-s1@1: per-origin rows lack the columns state"),
    (lambda b: b["runs"][0]["origins"]["columns"]["error_rate"].__setitem__(3, "0.1"),
     "task tiny-cpu-s1@1: per-origin column 'error_rate' (float64): '0.1' is not a float64 value"),
    (lambda b: b["runs"][0]["origins"].update(rows=5),
     "task tiny-cpu-s1@1: per-origin column 'horizon': expected a list of 5 values"),
    (lambda b: [b["runs"][1]["origins"]["columns"][c].pop() for c in b["runs"][1]["origins"]["columns"]]
     and b["runs"][1]["origins"].update(rows=b["runs"][1]["origins"]["rows"] - 1),
     "per-origin rows, expected 11 origins x 2 layers = 22"),
    (lambda b: b["runs"].pop(), "1 runs for the 2 tasks of suite"),
    (lambda b: b["runs"].reverse(), "task tiny-cpu-s1@1: the run is on submit-switch@1"),
    (lambda b: b["runs"][0]["result"]["task"].update(stride=300), "task tiny-cpu-s1@1: the result's task settings"),
    (lambda b: b["runs"][0]["result"].update(model_version=2),
     "task tiny-cpu-s1@1: the result's model version is 2, the submission's 1"),
    (lambda b: b["model"].pop("params"), "not a valid submission (missing field 'params')"),
    (lambda b: b["suite"]["tasks"][0].update(version="1"), "version must be a positive integer"),
    (lambda b: b["runs"][0]["result"].pop("horizons"), "task tiny-cpu-s1@1: not a valid result"),
])
def test_a_malformed_file_is_refused_naming_the_problem(submitted, tmp_path, change, message):
    with pytest.raises(SubmissionError) as exc:
        submission.load(rewrite(submitted, tmp_path / "bad.json", change))
    assert str(exc.value).startswith(f"{tmp_path / 'bad.json'}: ")
    assert any(message in p for p in exc.value.problems), exc.value.problems


def test_options_of_the_other_mode_are_refused(submitted, capsys):
    assert main(["submit", "--verify", str(submitted), "--train", "tiny-cpu-s1"]) == 1
    assert "error: --train: only without --verify" in capsys.readouterr().err
    assert main(["submit", "--model", "sw_avg", "--seed", "3"]) == 1
    assert "error: --seed: only with --verify" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["submit", "--model", "sw_avg", "--verify", str(submitted)])


def test_a_gz_name_writes_gzip_that_loads_the_same_and_a_bomb_is_refused(submitted, tmp_path, monkeypatch):
    import gzip

    recent = submission.load(submitted)
    plain, packed = recent.save(tmp_path / "a.json"), recent.save(tmp_path / "a.json.gz")
    assert packed.read_bytes()[:2] == b"\x1f\x8b" and packed.stat().st_size < plain.stat().st_size / 2
    assert submission.load(packed).to_json() == submission.load(plain).to_json() == recent.to_json()
    assert recent.save(tmp_path / "b.json.gz").read_bytes() == packed.read_bytes()  # reproducible: no time stamp
    assert submission.submission_files([tmp_path]) == [plain, packed, tmp_path / "b.json.gz"]
    monkeypatch.setattr(submission, "MAX_BYTES", 1000)
    (tmp_path / "bomb.json.gz").write_bytes(gzip.compress(b" " * 10_000))
    with pytest.raises(submission.SubmissionError, match="bomb.json.gz.*over 0 MiB once decompressed"):
        submission.load(tmp_path / "bomb.json.gz")
