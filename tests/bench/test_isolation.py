"""bench.isolation: a submitted predictor runs in a sandboxed worker, scores as in-process, and cannot cheat."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import bench.evaluate
from bench.evaluate import evaluate
from bench.isolation import (
    WORKER_FOLDER_PREFIX,
    IsolatedPredictor,
    Limits,
    describe,
    hidden_paths,
    isolation_level,
    sweep_stale_folders,
)
from bench.isolation_worker import decode_arrays, encode_message, sandbox_plan, tree_except
from bench.slices import sub_trace
from bench.task import Task
from datasets_registry import registry
from models.registry import predictor_class

PLUGINS = Path(__file__).with_name("isolation_plugins.py")
REPO = Path(__file__).resolve().parents[2]
SANDBOXED = pytest.mark.skipif(isolation_level() != "landlock", reason="needs Landlock")


def spec(cls_name: str) -> str:
    return f"{PLUGINS}:{cls_name}"


@pytest.fixture(scope="module")
def short():
    """The first 401 records of the 2-layer built-in trace: 3 origins of a 100-iteration horizon."""
    return sub_trace(registry.load("tiny-cpu-s1"), 0, 401)


SHORT_TASK = Task(dataset="tiny-cpu-s1", horizons=(100,), stride=100, min_history=100)


def run(trace, model: str, params=None, task=SHORT_TASK, limits=Limits(), isolated=True):
    if not isolated:
        return evaluate(trace, predictor_class(model)(**(params or {})), task)
    with IsolatedPredictor(model, params, limits=limits) as predictor:
        ev = evaluate(trace, predictor, task)
    assert predictor.worker_pid is None
    return ev


def origins(ev) -> int:
    return len({r["origin"] for r in ev.rows} | {f["origin"] for f in ev.failures})


def scored(ev) -> list[dict]:
    """The rows of origins that did not fail (a failed origin's rows, where there are any, carry charged metrics)."""
    return [r for r in ev.rows if not r.get("failed")]


# ---- an honest predictor scores exactly as in-process ------------------------------------------
def test_honest_clone_scores_exactly_as_in_process():
    trace = sub_trace(registry.load("tiny-cpu-s1"), 0, 1500)
    task = Task(dataset="tiny-cpu-s1", horizons=(100, 500), stride=100, min_history=100, refit="every:3")
    inside = run(trace, spec("SwAvgClone"), {"window": 50}, task, isolated=False)
    isolated = run(trace, spec("SwAvgClone"), {"window": 50}, task)
    assert not inside.failures and not isolated.failures
    assert len(inside.rows) > 20 and isolated.rows == inside.rows
    assert isolated.window_forecasts == inside.window_forecasts


def test_metadata_comes_from_the_worker():
    with IsolatedPredictor(spec("SwAvgClone"), {"window": "50"}) as p:
        assert (p.name, p.defaults, p.params, p.version, p.replayable) == ("sw_avg_clone", {"window": 100},
                                                                           {"window": 50}, 1, True)
        assert p.refit_policies == ("every", "every:K", "once")
        assert p.search_space == {"window": ("log", 10, 2000)}  # sw_avg's, read in the worker
        assert p.kind == "file" and p.isolation == isolation_level() == p.sandbox["level"]
        assert p.metadata["doc"] == "sw_avg itself under another name, run as a submission."
        assert Path(p.metadata["module_file"]) == PLUGINS
    meta = describe("sw_avg", {"window": 10})
    assert meta["name"] == "sw_avg" and meta["params"] == {"window": 10} and meta["kind"] == "builtin"
    assert meta["search_space"] == {"window": ("log", 10, 2000)}


def test_the_harness_never_imports_the_submission(tmp_path):
    module = tmp_path / "patcher.py"
    module.write_text(textwrap.dedent("""
        import numpy as np
        import bench.evaluate
        from models.base import Predictor

        bench.evaluate.forecast_errors = lambda phat, p: {k: np.zeros(p.shape[1])
                                                          for k in ("error_rate", "window_error", "mape")}
        bench.evaluate.check_forecast = lambda phat, *shape: phat

        class Patcher(Predictor):
            name = "patcher"
            def predict(self, records):
                return np.full((records, self.history.layers, self.history.experts), 1.0 / self.history.experts)
    """))
    original = bench.evaluate.forecast_errors
    trace = sub_trace(registry.load("tiny-cpu-s1"), 0, 401)
    ev = run(trace, f"{module}:Patcher")
    assert bench.evaluate.forecast_errors is original and not ev.failures
    assert all(row["error_rate"] > 0.01 for row in ev.rows)
    assert not [m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == str(module)]


def test_a_recorder_of_the_conformance_suite_sees_every_forecast(short):
    from bench.conformance import Recorder

    with IsolatedPredictor(spec("SwAvgClone")) as predictor:
        recorder = Recorder(predictor)
        ev = evaluate(short, predictor, SHORT_TASK)
    assert sorted(recorder.forecasts) == sorted({r["origin"] for r in ev.rows}) and recorder.calls == 3
    assert not recorder.errors


# ---- load failures: one line, no traceback -----------------------------------------------------
@pytest.mark.parametrize("source, params, expect", [
    (None, {}, "no such predictor file"),
    ("class Broken(:\n    pass\n", {}, "broken.py:1: SyntaxError: "),
    ("class Broken:\n    pass\n", {}, "is not a moe-load-bench Predictor subclass"),
    ("from models.base import Predictor\nclass Broken(Predictor):\n    name = 'b'\n", {"nope": 1},
     "ParamError: b: unknown parameter(s) ['nope']"),
    ("raise ImportError('needs a library that is not installed')\n", {}, "broken.py:1: ImportError: needs a library"),
    ("from models.base import Predictor\nclass Broken(Predictor):\n    name = 'b'\n    version = '2'\n", {},
     "TypeError: `version` must be of type int, not str"),
])
def test_a_load_failure_is_a_one_line_value_error(tmp_path, source, params, expect):
    path = tmp_path / "broken.py"
    if source is not None:
        path.write_text(source)
    with pytest.raises(ValueError) as caught:
        describe(f"{path}:Broken", params)
    message = str(caught.value)
    assert expect in message and "\n" not in message and "Traceback" not in message


def test_an_unknown_name_is_refused_without_a_worker():
    with pytest.raises(ValueError, match="unknown model 'no-such-model'"):
        IsolatedPredictor("no-such-model")


def test_exit_at_import_leaves_the_harness_alive(tmp_path):
    path = tmp_path / "leaver.py"
    path.write_text("import sys\nsys.exit(0)\n")
    with pytest.raises(RuntimeError, match="predictor worker exited with status 0 during load"):
        describe(f"{path}:Leaver")


# ---- the cheaters' gallery ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def leaked(short, tmp_path_factory):
    """A copy of the whole trace under test in the data home, where the harness keeps datasets."""
    path = registry.data_home() / "leak" / "future.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, short.proportions)
    yield path
    path.unlink()


@pytest.fixture(scope="module")
def accomplice():
    """A TCP server on this machine that would hand out the truth."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.sendall(b"the future")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


@pytest.fixture(scope="module")
def honest(short):
    return run(short, spec("SwAvgClone"))


def assert_all_origins_fail(ev, honest, message: str):
    """Every origin failed with `message`, and the run scores no better than the honest clone."""
    assert not scored(ev), "a cheater produced a scored forecast"
    assert len(ev.failures) == origins(ev) == 3
    assert all(message in f["error"] for f in ev.failures), ev.failures[0]["error"]
    fair = {(r["origin"], r["layer"]): r["error_rate"] for r in honest.rows}
    assert all(r["error_rate"] >= fair[r["origin"], r["layer"]] - 1e-12 for r in ev.rows)


@SANDBOXED
@pytest.mark.parametrize("cheater, params, message, works_in_process", [
    ("ReadFile", {"path": "LEAK"}, "PermissionError", True),
    ("ReadFile", {"path": str(registry.BUILTIN_DIR / "tiny-cpu-s1" / "v1" / "trace.npz")}, "PermissionError", True),
    ("BuiltinPackage", {}, "PermissionError", True),
    ("RegistryLoad", {}, "Permission denied", True),
    ("StackWalk", {}, "LookupError: no trace in any caller's frame", True),
    ("GcWalk", {}, "LookupError: no trace among the objects", True),
    ("GitObjects", {"path": str(REPO)}, "PermissionError", False),
    ("ParentProc", {"how": "environ"}, "PermissionError", False),
    ("ParentProc", {"how": "mem"}, "PermissionError", False),
    ("SignalParent", {}, "PermissionError", False),
    ("StealDescriptor", {}, "PermissionError: [Errno 1] pidfd_getfd", False),
    ("Accomplice", {"port": "PORT"}, "PermissionError", False),
])
def test_a_cheater_cannot_reach_the_truth(short, honest, leaked, accomplice, cheater, params, message,
                                         works_in_process):
    params = {k: {"LEAK": str(leaked), "PORT": accomplice}.get(v, v) for k, v in params.items()}
    if works_in_process:  # the route is real: without the sandbox the cheater scores perfectly
        inside = run(short, spec(cheater), params, isolated=False)
        assert not inside.failures and max(row["error_rate"] for row in inside.rows) < 1e-12
    with open(registry.BUILTIN_DIR / "tiny-cpu-s1" / "v1" / "trace.npz", "rb"):  # an fd worth stealing
        ev = run(short, spec(cheater), params)
    assert_all_origins_fail(ev, honest, message)


@pytest.mark.parametrize("how", ["sys.exit", "os._exit"])
def test_a_predictor_that_exits_fails_its_origins_and_the_harness_lives_on(short, honest, how):
    ev = run(short, spec("Exit"), {"how": how})
    assert_all_origins_fail(ev, honest, "RuntimeError: predictor worker exited with status 0 during predict")


def test_a_predictor_that_never_returns_is_stopped(short, honest):
    ev = run(short, spec("Sleep"), limits=Limits(seconds_per_call=1.0))
    assert_all_origins_fail(ev, honest, "TimeoutError")
    stopped = "predict did not finish within 1 s (Limits.seconds_per_call); the worker was stopped"
    assert all(stopped in f["error"] for f in ev.failures)


@pytest.mark.parametrize("how, limits, message", [
    ("disk", Limits(file_bytes=1 << 20), "OSError: [Errno 27] File too large"),
    ("memory", Limits(memory_bytes=2 << 30), "MemoryError"),
])
def test_the_resource_limits_hold(short, honest, how, limits, message):
    assert_all_origins_fail(run(short, spec("Hog"), {"how": how}, limits=limits), honest, message)


def test_a_timeout_kills_the_workers_whole_process_group(short):
    with IsolatedPredictor(spec("ForkAndSleep"), limits=Limits(seconds_per_call=1.0)) as predictor:
        predictor.start(short.layers, short.experts)
        predictor.observe(short.counts[:100].copy(), short.steps[:100].copy())
        with pytest.raises(TimeoutError, match="predict did not finish within 1 s"):
            predictor.predict(10)
        child = int(predictor.stderr_tail().split("CHILD ")[1].split()[0])
        assert predictor.worker_pid is None and gone(child)


@pytest.mark.parametrize("how, message", [
    ("shape", "ForecastError: forecast has shape (100, 2, 16), expected (100, 2, 8)"),
    ("complex", "ForecastError: forecast has dtype complex128, expected real numbers"),
    ("object", "ForecastError: forecast has dtype object, expected real numbers"),
])
def test_a_malformed_forecast_fails_its_origin(short, honest, how, message):
    assert_all_origins_fail(run(short, spec("BadForecast"), {"how": how}), honest, message)


@pytest.mark.parametrize("how, message", [
    ("huge", "forecast refused: reply of 1099511627776 bytes of arrays (at most 16896 expected)"),
    ("object", "ForecastError: forecast refused: forecast has dtype object, expected real numbers"),
    ("lying", "forecast refused: Object arrays cannot be loaded when allow_pickle=False"),
])
def test_a_forged_reply_is_refused_unread(short, honest, how, message):
    ev = run(short, spec("ForgedReply"), {"how": how}, limits=Limits(seconds_per_call=5.0))
    assert_all_origins_fail(ev, honest, message)


# ---- restarts, budgets, the worker's process ------------------------------------------------------
def test_a_restarted_worker_is_replayed_to_the_same_state():
    trace = sub_trace(registry.load("tiny-cpu-s1"), 0, 801)
    task = Task(dataset="tiny-cpu-s1", horizons=(100,), stride=100, min_history=100, refit="once")
    crashing = run(trace, spec("CrashOnce"), {"crash_at": 300}, task)
    assert [f["origin"] for f in crashing.failures] == [300]
    assert "predictor worker exited with status 3 during predict" in crashing.failures[0]["error"]
    steady = run(trace, spec("CrashOnce"), task=task, isolated=False)
    assert [r for r in steady.rows if r["origin"] != 300] == scored(crashing) and len(scored(crashing)) == 2 * 6


def test_a_spent_run_budget_fails_every_later_call():
    trace = sub_trace(registry.load("tiny-cpu-s1"), 0, 801)
    ev = run(trace, spec("Slow"), {"delay": 0.5}, limits=Limits(seconds_per_run=2.0))
    failed = sorted(f["origin"] for f in ev.failures)
    assert failed and scored(ev) and min(failed) > max(r["origin"] for r in scored(ev))
    assert all("time budget of 2 s (Limits.seconds_per_run)" in f["error"] for f in ev.failures)
    assert "is spent; the predictor is not called again" in ev.failures[-1]["error"]


def test_the_worker_is_a_clean_unprivileged_process(short, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////nowhere/mlflow.db")
    with IsolatedPredictor(spec("WorkerFacts")) as predictor:
        ev = evaluate(short, predictor, SHORT_TASK)
        facts = json.loads(predictor.stderr_tail(50).split("FACTS ", 1)[1].splitlines()[0])
    assert not ev.failures
    assert not [k for k in facts["env"] if k.startswith(("MOE_LOAD_BENCH", "MLFLOW", "PYTHON"))]
    assert facts["home"] == facts["tmpdir"] == facts["cwd"] and facts["no_new_privs"] == "1"
    assert len(set(facts["fds"]) - {0, 1, 2}) <= 3  # the two protocol pipes and the listing itself
    assert facts["core"] == [0, 0]
    if os.geteuid() == 0:
        assert facts["cap_eff"] == "0000000000000000"
    assert not Path(facts["tmpdir"]).exists()  # removed with the worker


def test_without_landlock_the_worker_is_still_a_separate_process(short, monkeypatch):
    import bench.isolation

    monkeypatch.setattr(bench.isolation, "isolation_level", lambda: "process")
    inside = run(short, spec("SwAvgClone"), isolated=False)
    with IsolatedPredictor(spec("SwAvgClone")) as predictor:
        ev = evaluate(short, predictor, SHORT_TASK)
    assert predictor.isolation == predictor.sandbox["level"] == "process" and "rules" not in predictor.sandbox
    assert ev.rows == inside.rows and not ev.failures
    exits = run(short, spec("Exit"), {"how": "os._exit"})
    assert len(exits.failures) == 3 and "exited with status 0" in exits.failures[0]["error"]


def test_killing_the_harness_leaves_no_worker(tmp_path):
    script = tmp_path / "harness.py"
    script.write_text(textwrap.dedent(f"""
        import numpy as np
        from bench.isolation import IsolatedPredictor
        p = IsolatedPredictor({spec("Sleep")!r})
        p.start(2, 8)
        p.observe(np.ones((5, 2, 8), dtype=np.int64), np.arange(5))
        print(p.worker_pid, flush=True)
        p.predict(3)
    """))
    harness = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    worker = int(harness.stdout.readline())
    assert alive(worker)
    time.sleep(0.5)  # let the worker enter predict
    harness.send_signal(signal.SIGKILL)
    harness.wait()
    assert gone(worker)
    left = list(Path(tempfile.gettempdir()).glob(f"{WORKER_FOLDER_PREFIX}{harness.pid}-*"))
    assert left and set(sweep_stale_folders()) >= set(left) and not any(p.exists() for p in left)


def gone(pid: int, patience_s: float = 10.0) -> bool:
    """Whether process `pid` ends within `patience_s` (a signal to a process we do not reap lands asynchronously)."""
    deadline = time.monotonic() + patience_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


# ---- the parts -----------------------------------------------------------------------------------
def test_tree_except_allows_everything_but_the_excluded(tmp_path):
    for d in ("a/b/hidden/deep", "a/b/kept", "a/c", "elsewhere"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "a/b/file.txt").write_text("x")
    (tmp_path / "a/link").symlink_to(tmp_path / "a/b/hidden")
    (tmp_path / "a/outside").symlink_to(tmp_path / "elsewhere")
    whole, way = tree_except(tmp_path / "a", [tmp_path / "a/b/hidden"])
    assert sorted(whole) == sorted([tmp_path / "a/b/file.txt", tmp_path / "a/b/kept", tmp_path / "a/c",
                                    tmp_path / "elsewhere"])
    assert way == [tmp_path / "a", tmp_path / "a/b"]
    assert tree_except(tmp_path / "a", [tmp_path / "elsewhere"]) == ([tmp_path / "a"], [])
    assert tree_except(tmp_path / "a/b/hidden/deep", [tmp_path / "a/b/hidden"]) == ([], [])
    assert tree_except(tmp_path / "a", [tmp_path / "a"]) == ([], [])


def test_the_sandbox_plan_keeps_hidden_folders_out(tmp_path):
    repo, home = tmp_path / "repo", tmp_path / "home"
    for d in (".git/objects", ".venv/site", "pkg/builtin/trace", "pkg/sub", "home/datasets"):
        (tmp_path / ("repo/" + d if not d.startswith("home") else d)).mkdir(parents=True)
    (repo / "plugin.py").write_text("")
    hidden = [repo, repo / "pkg" / "builtin", home]
    trees = [repo, repo / ".venv" / "site", repo / "pkg", tmp_path]  # the checkout and its parent on sys.path
    plan = sandbox_plan(hidden, tmp_path / "scratch", trees, repo / "plugin.py", broad=[])
    ruled = {path: access for path, access in plan}
    assert ruled[repo / ".venv" / "site"] == ruled[repo / "pkg" / "sub"] == "read_exec"
    assert ruled[repo / "plugin.py"] == "read_exec" and ruled[tmp_path / "scratch"] == "write"
    assert ruled[repo / "pkg"] == "list"  # a package's folder must be listable to import from it
    for path, access in plan:
        for secret in (repo / ".git", repo / "pkg" / "builtin", home):
            assert not (path == secret or secret in path.parents or (path in secret.parents and access != "list")), path


def test_hidden_paths_cover_the_data_and_the_checkout(monkeypatch, tmp_path):
    monkeypatch.setenv("MOE_LOAD_BENCH_SOURCE_X", str(tmp_path / "x"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
    hidden = hidden_paths([tmp_path / "extra"])
    for path in (registry.data_home(), registry.BUILTIN_DIR, tmp_path / "x", tmp_path / "m.db", tmp_path / "extra",
                 REPO):
        assert Path(os.path.realpath(path)) in hidden


def test_the_message_format_refuses_pickles_and_false_declarations():
    import io

    frame = b"".join(bytes(part) for part in encode_message({"op": "x"}, [np.arange(6).reshape(2, 3)]))
    head_len = int.from_bytes(frame[:4], "little")
    header = json.loads(frame[12 : 12 + head_len])
    (array,) = decode_arrays(frame[12 + head_len :], header["arrays"])
    assert array.tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError, match="declared as <f8"):
        decode_arrays(frame[12 + head_len :], [{"dtype": "<f8", "shape": [2, 3]}])
    pickled = io.BytesIO()
    np.lib.format.write_array(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle=False"):
        decode_arrays(pickled.getvalue(), [{"dtype": "|O", "shape": [1]}])


# ---- per-source runs ----------------------------------------------------------------------------
def test_a_per_source_run_splits_a_sandboxed_point_forecast_and_refuses_one_that_forecasts_per_source(
        tmp_path, monkeypatch):
    """The worker is shown counts only: its point forecast is split by the harness, exactly as in-process; a class
    that would forecast per source needs the per-source history, which the worker protocol does not carry."""
    from bench import runner

    from .test_evaluate import SPLIT_TASK, split_trace

    trace = split_trace()
    with IsolatedPredictor(spec("SwAvgClone")) as p:
        assert p.per_source is False and p.refuses_sources == ""
        isolated = evaluate(trace, p, SPLIT_TASK, per_source=True)
    inside = evaluate(trace, predictor_class(spec("SwAvgClone"))(), SPLIT_TASK, per_source=True)
    assert not isolated.failures and isolated.rows == inside.rows and "traffic_error" in isolated.rows[0]
    monkeypatch.setenv("MOE_LOAD_BENCH_HOME", str(tmp_path))
    registry.add(trace, "split")
    with pytest.raises(ValueError, match="forecasts per-source loads .* run it without --per-source"):
        runner.compute(spec("SplitForecaster"), "split", task=SPLIT_TASK, per_source=True)
    with IsolatedPredictor(spec("SplitForecaster")) as p:
        assert p.metadata["per_source"] is True and p.per_source is False


# ---- quantile forecasts through the sandbox ---------------------------------------------------------
def test_a_probabilistic_submission_scores_its_quantiles_exactly_as_in_process(short):
    inside = run(short, spec("SwQuantilesClone"), isolated=False)
    isolated = run(short, spec("SwQuantilesClone"))
    assert not isolated.failures and isolated.rows == inside.rows
    assert {"quantile_loss", "coverage_80", "coverage_90"} <= set(isolated.rows[0])
    with IsolatedPredictor(spec("SwQuantilesClone")) as p, IsolatedPredictor(spec("SwAvgClone")) as q:
        assert p.probabilistic and not q.probabilistic
        q.start(short.layers, short.experts)
        with pytest.raises(NotImplementedError, match="no quantile forecasts"):
            q.predict_quantiles(3)
    assert "quantile_loss" not in run(short, spec("SwAvgClone")).rows[0]


@pytest.mark.parametrize("how, message", [
    ("decreasing", "ForecastError: quantile forecast decreases with the level"),
    ("shape", "ForecastError: quantile forecast has shape (100, 2, 8, 11), expected (100, 2, 8, 12)"),
    ("range", "ForecastError: quantile forecast has shares outside [0, 1]"),
    ("huge", "quantile forecast refused: reply of 1099511627776 bytes of arrays"),
])
def test_a_malformed_quantile_forecast_fails_its_origin(short, honest, how, message):
    ev = run(short, spec("QuantileCheater"), {"how": how}, limits=Limits(seconds_per_call=5.0))
    assert_all_origins_fail(ev, honest, message)


@SANDBOXED
def test_a_quantile_forecast_cannot_reach_the_truth(short, honest, leaked):
    inside = run(short, spec("QuantileCheater"), {"how": "read", "path": str(leaked)}, isolated=False)
    assert not inside.failures and max(r["quantile_loss"] for r in inside.rows) < 1e-12  # the route is real
    ev = run(short, spec("QuantileCheater"), {"how": "read", "path": str(leaked)})
    assert_all_origins_fail(ev, honest, "PermissionError")
