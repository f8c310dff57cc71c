"""Run a submitted predictor in a sandboxed worker process, behind the ``Predictor`` interface.

A predictor written by someone else must not be able to read the future: load the dataset from
the registry, open the trace files, walk the harness's stack or heap to the truth array, patch
the harness's scoring, end the run with exit code 0 or hang it. :class:`IsolatedPredictor` runs
it in a worker process (:mod:`bench.isolation_worker`) and stands in for it in the harness:
:func:`bench.evaluate.evaluate` calls it exactly like a ``models.base.Predictor``.

- The harness never imports the submitted module: the class's metadata (name, parameters,
  version, ...) comes from the worker.
- The worker gets copies of the records the harness was given (``start``/``observe``) and sends
  back a forecast, which the harness refuses unless it is a real numeric array of exactly the
  shape asked for, within a byte cap it checks before reading. Nothing from the worker is read
  with pickle. A probabilistic predictor's quantile forecast (``q[records, layers, experts,
  levels]``) comes back the same way, capped at its exact size, and is checked again by the
  harness's own rules (:func:`bench.evaluate.check_quantiles`) on this side.
- Wall-clock :class:`Limits`: a call over its limit kills the worker's process group and raises
  ``TimeoutError``; a worker that exits or crashes makes the call raise ``RuntimeError`` with
  the end of its stderr. The next call starts a fresh worker and replays the history (start,
  the records up to the last refit, that refit, the rest), so later origins can still succeed.
  Once the run's budget is spent every call raises at once.
- The sandbox (see the worker's docstring and docs/contributing-a-predictor.md, "How a
  submission is run"): Landlock where the kernel has it (:func:`isolation_level` says which),
  a scrubbed environment, its own process group, death with the harness, no root.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from datasets_registry.registry import BUILTIN_DIR, data_home
from models.base import QUANTILE_LEVELS, History, ParamError
from models.registry import ENTRY_POINT_GROUP, spec_kind

from .evaluate import ForecastError, check_quantiles
from .isolation_worker import FRAME, LEVEL_LANDLOCK, LEVEL_PROCESS, decode_arrays, encode_message, landlock_abi

#: The folder that holds the project's packages (bench/, models/, datasets_registry/).
PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: What the worker's interpreter runs (``-c``): argv[1] is PROJECT_ROOT, argv[2] the harness's pid.
BOOTSTRAP = "import sys; sys.path.append(sys.argv[1]); from bench.isolation_worker import main; main()"
#: Environment variables a worker inherits (everything else, MOE_LOAD_BENCH_* and MLFLOW_* included, is dropped).
PASSED_ENVIRONMENT = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES",
                      "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: Largest JSON header the harness reads from a worker: the load reply, then any other reply.
LOAD_REPLY_BYTES, REPLY_BYTES = 1 << 20, 64 << 10
#: Room for the .npy header of a forecast on top of its data.
NPY_HEADER_BYTES = 4096
STDERR_TAIL_BYTES = 16 << 10
#: Buffer asked for the pipes to and from a worker (Linux lets a process ask up to /proc/sys/fs/pipe-max-size).
PIPE_BYTES = 1 << 20
#: Worker temp folders are named <prefix><harness pid>-<random>, so that folders left by a killed harness can be found.
WORKER_FOLDER_PREFIX = "moe-load-bench-worker-"
_POLL_SECONDS = 0.25
_swept = False


@dataclass(frozen=True)
class Limits:
    """What a worker may use. Times are wall-clock seconds.

    - `seconds_per_call`: one ``observe``, ``refit`` or ``predict`` (2 minutes: far above what any
      model in this repository needs at one origin of the default task);
    - `seconds_per_run`: everything from ``start`` to the last forecast, restarts included (1 hour);
    - `start_seconds`: starting a worker and loading the predictor, and ``start`` (the fit on the
      training traces) (10 minutes: importing torch cold and fitting on training traces);
    - `file_bytes`: the largest file the worker may write (RLIMIT_FSIZE, 1 GiB);
    - `memory_bytes`: its address space (RLIMIT_AS); off by default, because CUDA reserves far
      more address space than it uses (CPU-only torch imports under 2 GiB).
    """

    seconds_per_call: float = 120.0
    seconds_per_run: float = 3600.0
    start_seconds: float = 600.0
    file_bytes: int = 1 << 30
    memory_bytes: int | None = None

    def __post_init__(self):
        for key in ("seconds_per_call", "seconds_per_run", "start_seconds", "file_bytes"):
            if not getattr(self, key) > 0:
                raise ValueError(f"Limits.{key} must be positive, got {getattr(self, key)!r}")
        if self.memory_bytes is not None and self.memory_bytes <= 0:
            raise ValueError(f"Limits.memory_bytes must be positive or None, got {self.memory_bytes!r}")


class ProtocolError(RuntimeError):
    """A worker sent something that is not a well-formed reply to what was asked."""


class PredictorError(Exception):
    """An exception raised by the predictor inside its worker. Its class is named after the
    original's (``ValueError``, ...), so that a failure reads the same as in-process."""

    def __init__(self, message: str, remote_traceback: str = ""):
        super().__init__(message)
        self.message, self.remote_traceback = message, remote_traceback

    def __str__(self) -> str:
        return self.message


class _Timeout(Exception):
    pass


class _Exited(Exception):
    pass


_REMOTE_CLASSES: dict[str, type[PredictorError]] = {}
_KNOWN_CLASSES: dict[str, type[Exception]] = {"ForecastError": ForecastError, "ParamError": ParamError}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")


def remote_exception(error: Any) -> Exception:
    """The harness-side exception for a worker's error reply."""
    if not isinstance(error, dict):
        return ProtocolError(f"malformed error reply {str(error)[:200]!r}")
    name, message = str(error.get("type", "")), str(error.get("message", ""))[:2000]
    remote_tb = str(error.get("traceback", ""))[-4000:]
    if name in _KNOWN_CLASSES:
        exc: Exception = _KNOWN_CLASSES[name](message)
    else:
        name = name if _NAME.match(name) else "PredictorError"
        cls = _REMOTE_CLASSES.get(name)
        if cls is None:
            cls = _REMOTE_CLASSES[name] = type(name, (PredictorError,), {"__module__": __name__})
        exc = cls(message, remote_tb)
    if remote_tb:
        exc.add_note("in the predictor's worker process:\n" + remote_tb[-1500:])
    return exc


def isolation_level() -> str:
    """What this machine enforces on a worker: "landlock" (the kernel has Landlock and the
    landlockpy library is installed) or "process" (a separate process with a scrubbed environment
    and no root, nothing more)."""
    return LEVEL_LANDLOCK if landlock_abi() >= 1 else LEVEL_PROCESS


def _local_store(uri: str) -> Path | None:
    """The file or folder an MLflow tracking URI points to on this machine (None for a server)."""
    if not uri:
        return None
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "sqlite":
        return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
    if parsed.scheme == "file":
        return Path(urllib.parse.unquote(parsed.path))
    return Path(uri) if parsed.scheme == "" else None


def checkout_roots() -> list[Path]:
    """The repository this code runs from (its .git holds the traces too), when it runs from one."""
    out = [PROJECT_ROOT] if (PROJECT_ROOT / ".git").exists() or (PROJECT_ROOT / "pyproject.toml").exists() else []
    return out + [d for d in PROJECT_ROOT.parents if (d / ".git").exists()][:1]


def hidden_paths(extra: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """What a worker must never read: the data home, every dataset source folder (any path in a
    ``MOE_LOAD_BENCH_*`` variable), every copy of ``datasets_registry/builtin``, the repository
    root, the MLflow store named by ``$MLFLOW_TRACKING_URI``, and `extra`."""
    paths: list[Path] = [data_home(), BUILTIN_DIR, *checkout_roots(), *map(Path, extra)]
    for key, value in os.environ.items():
        if key.startswith("MOE_LOAD_BENCH_"):
            paths += [Path(v).expanduser() for v in value.split(os.pathsep) if v]
    store = _local_store(os.environ.get("MLFLOW_TRACKING_URI", ""))
    if store is not None:
        paths.append(store)
    copies = [Path(p) / "datasets_registry" / "builtin" for p in sys.path if p and os.path.isdir(p)]
    paths += [p for p in copies if p.is_dir()]
    return sorted({Path(os.path.realpath(p)) for p in paths})  # relative paths: as the harness reads them


def sweep_stale_folders() -> list[Path]:
    """Remove the worker temp folders of harness processes that no longer exist (a harness killed with
    SIGKILL cannot remove its workers' folders); returns what was removed."""
    removed = []
    pattern = re.compile(re.escape(WORKER_FOLDER_PREFIX) + r"(\d+)-")
    for folder in Path(tempfile.gettempdir()).glob(WORKER_FOLDER_PREFIX + "*"):
        match = pattern.match(folder.name)
        if not match or int(match.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(match.group(1)), 0)
            continue  # that harness is alive (or its pid was reused: the folder waits for a later sweep)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # another user's harness
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def worker_environment(folder: Path) -> dict[str, str]:
    """A worker's whole environment: `folder` as home and temp folder, a plain PATH, and
    the few variables of :data:`PASSED_ENVIRONMENT` that are set."""
    env = {k: os.environ[k] for k in PASSED_ENVIRONMENT if k in os.environ}
    env.update(PATH=os.defpath, HOME=str(folder), TMPDIR=str(folder))
    return env


class _Worker:
    """The harness's end of one worker process: deadline-bound frame exchange, stderr tail, kill."""

    def __init__(self, command: list[str], folder: Path):
        self.folder, self.reaped = folder, False
        try:
            self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         env=worker_environment(folder), cwd=folder, close_fds=True, process_group=0)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        pipes = (self.proc.stdin, self.proc.stdout, self.proc.stderr)
        self.stdin, self.stdout, self.stderr = (f.fileno() for f in pipes)
        for fd in (self.stdin, self.stdout, self.stderr):
            os.set_blocking(fd, False)
        for fd in (self.stdin, self.stdout):  # fewer, larger writes of the records (Linux; best effort)
            try:
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            except (AttributeError, OSError):
                pass
        self.tail = bytearray()
        self.reading, self.writing = selectors.DefaultSelector(), selectors.DefaultSelector()
        self.reading.register(self.stdout, selectors.EVENT_READ)
        self.writing.register(self.stdin, selectors.EVENT_WRITE)
        for sel in (self.reading, self.writing):
            sel.register(self.stderr, selectors.EVENT_READ)

    def _drain_stderr(self) -> None:
        while True:
            try:
                chunk = os.read(self.stderr, 65536)
            except (BlockingIOError, OSError):
                return
            if not chunk:
                for sel in (self.reading, self.writing):
                    if self.stderr in sel.get_map():
                        sel.unregister(self.stderr)
                return
            self.tail += chunk
            del self.tail[:-STDERR_TAIL_BYTES]

    def _wait(self, sel: selectors.BaseSelector, fd: int, deadline: float) -> None:
        """Until `fd` is ready; raises _Timeout at `deadline`, _Exited when the process is gone."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Timeout
            ready = {key.fd for key, _ in sel.select(min(left, _POLL_SECONDS))}
            if self.stderr in ready:
                self._drain_stderr()
            if fd in ready:
                return
            if self.exited():
                raise _Exited

    def exited(self) -> bool:
        """Whether the worker has ended (without reaping it: its process group is killed first)."""
        if self.reaped:
            return True
        try:
            return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def exchange(self, frame: Sequence[bytes | memoryview], deadline: float, head_cap: int,
                 body_cap: int) -> tuple[dict, memoryview]:
        """Send one frame, read one back: (header, payload). Sizes over the caps are refused unread."""
        for part in frame:
            view = memoryview(part).cast("B")
            while view:
                self._wait(self.writing, self.stdin, deadline)
                try:
                    view = view[os.write(self.stdin, view):]
                except BlockingIOError:
                    continue
                except BrokenPipeError:
                    raise _Exited from None
        head_len, body_len = FRAME.unpack(self._read(FRAME.size, deadline))
        if head_len > head_cap:
            raise ProtocolError(f"reply header of {head_len} bytes (at most {head_cap} expected)")
        if body_len > body_cap:
            raise ProtocolError(f"reply of {body_len} bytes of arrays (at most {body_cap} expected)")
        data = self._read(head_len + body_len, deadline)
        try:
            header = json.loads(bytes(data[:head_len]))
        except (ValueError, RecursionError) as exc:
            raise ProtocolError(f"reply header is not JSON: {str(exc)[:200]}") from None
        if not isinstance(header, dict):
            raise ProtocolError("reply header is not a JSON object")
        return header, memoryview(data)[head_len:]

    def _read(self, n: int, deadline: float) -> bytearray:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            self._wait(self.reading, self.stdout, deadline)
            try:
                k = os.readv(self.stdout, [view[got:]])
            except BlockingIOError:
                continue
            if k == 0:
                raise _Exited
            got += k
        return buf

    def stderr_text(self, lines: int = 12) -> str:
        self._drain_stderr()
        return "\n".join(self.tail.decode(errors="replace").rstrip().splitlines()[-lines:])

    def status(self, grace: float = 2.0) -> int:
        """The exit status, waiting up to `grace` seconds for the worker to end; then the whole
        process group is killed and the worker reaped."""
        deadline = time.monotonic() + grace
        while not self.exited() and time.monotonic() < deadline:
            time.sleep(0.02)
        self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group, reap the worker, close the pipes, remove its folder."""
        if self.reaped:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the worker is not reaped yet: its pid is still its group's
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.reaped = True
        self._drain_stderr()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass
        self.reading.close()
        self.writing.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def close(self, grace: float = 2.0) -> None:
        """End of stdin asks the worker to exit; whatever is left after `grace` seconds is killed."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        self.kill()


def _exit_text(status: int) -> str:
    if status < 0:
        name = signal.Signals(-status).name if -status in signal.valid_signals() else f"signal {-status}"
        hint = "; out of memory?" if status == -signal.SIGKILL else ""
        return f"{status} (killed by {name}{hint})"
    return str(status)


def _one_line(text: str, limit: int = 600) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class IsolatedPredictor:
    """A predictor that runs in a sandboxed worker process; used exactly like a ``Predictor``.

    `spec` is what ``--model`` takes (a built-in name, an entry point, ``sktime:X``/``darts:X``,
    ``path/file.py:Class``); `params` go to the class's constructor in the worker. `hide` adds
    paths to :func:`hidden_paths` (e.g. an MLflow store given on the command line).

    ``history`` is the :class:`models.base.History` of what the harness has sent; it is what a
    restarted worker is replayed. ``isolation`` and ``sandbox`` say what the worker runs under.
    ``fit`` and ``update`` are where ``start`` and ``observe`` talk to the worker, as in
    ``Predictor`` (so that wrappers of those methods see the worker's time and errors).
    """

    def __init__(self, spec: str, params: dict[str, Any] | None = None, *, limits: Limits = Limits(),
                 hide: Iterable[str | os.PathLike] = ()):
        self.spec, self.limits = spec, limits
        self.isolation = isolation_level()
        self.sandbox: dict[str, Any] = {}
        self.history: History | None = None
        self.target_steps: np.ndarray | None = None
        self._request = self._load_request(spec, dict(params or {}), list(hide))
        self.kind: str = self._request["kind"]  # builtin | entry_point | adapter | file
        self._worker: _Worker | None = None
        self._training: tuple = ()
        self._sent = 0  # records of `history` the live worker has
        self._refit_at: int | None = None  # records shown at the last successful refit
        self._in_run, self._spent, self._seq = False, 0.0, 0
        self.last_stderr = ""
        self.metadata = self._spawn()

    # ---- what the worker said about the class ----------------------------------------------
    name = property(lambda self: self.metadata["name"])
    defaults = property(lambda self: self.metadata["defaults"])
    params = property(lambda self: self.metadata["params"])
    version = property(lambda self: self.metadata["version"])
    needs_training = property(lambda self: self.metadata["needs_training"])
    refit_policies = property(lambda self: self.metadata["refit_policies"])
    search_space = property(lambda self: self.metadata["search_space"])
    replayable = property(lambda self: self.metadata["replayable"])
    #: The worker is shown counts only, never a per-source split, so it never forecasts per source itself: in a
    #: per-source run its point forecast is split by the past per-source shares, like any point forecast's.
    per_source = False

    @property
    def refuses_sources(self) -> str:
        """Why a per-source run refuses this predictor ("" if it does not): its class forecasts per source
        (``predict_sources``), which needs the per-source history that the worker protocol does not carry."""
        if not self.metadata["per_source"]:
            return ""
        return (f"{self.spec}: forecasts per-source loads (predict_sources), but a sandboxed predictor is shown the "
                "counts only, not their per-source split: run it without --per-source (its point forecast is then "
                "scored as usual), or pass the class itself to bench.run in process")
    probabilistic = property(lambda self: self.metadata["probabilistic"])

    @property
    def worker_pid(self) -> int | None:
        """The live worker's process id (None between a failure and the next call)."""
        return self._worker.proc.pid if self._worker is not None else None

    def _load_request(self, spec: str, params: dict[str, Any], hide: list) -> dict[str, Any]:
        try:
            kind = spec_kind(spec)
        except LookupError as exc:
            raise ValueError(_one_line(str(exc))) from None
        resolved, plugin_file = spec, None
        if kind == "file":
            path, _, cls_name = spec.rpartition(":")
            plugin_file = Path(path).expanduser().resolve()
            if not plugin_file.is_file():
                raise ValueError(f"{path}: no such predictor file")
            resolved = f"{plugin_file}:{cls_name}"
        try:
            json.dumps(params, allow_nan=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{spec}: parameters must be JSON values (numbers, strings, booleans, None): "
                             f"{exc}") from None
        broad = {tempfile.gettempdir(), str(Path.home()), "/tmp", "/var/tmp", "/dev/shm"}
        return {"op": "load", "spec": resolved, "display_spec": spec, "kind": kind, "params": params,
                "sys_path": [os.path.abspath(p) for p in sys.path if p],
                "entry_point_group": ENTRY_POINT_GROUP, "plugin_file": str(plugin_file) if plugin_file else None,
                "level": self.isolation, "hidden": [str(p) for p in hidden_paths(hide)], "broad": sorted(broad),
                "file_bytes": self.limits.file_bytes, "memory_bytes": self.limits.memory_bytes}

    # ---- worker lifecycle -------------------------------------------------------------------
    def _spawn(self) -> dict[str, Any]:
        """Start a worker and load the predictor in it; returns the class's metadata."""
        global _swept
        self._check_budget()
        if not _swept:
            _swept = True
            sweep_stale_folders()
        folder = Path(tempfile.mkdtemp(prefix=f"{WORKER_FOLDER_PREFIX}{os.getpid()}-"))
        command = [sys.executable, "-I", "-B", "-c", BOOTSTRAP, str(PROJECT_ROOT), str(os.getpid())]
        self._worker, self._sent, self._seq = _Worker(command, folder), 0, -1
        reply, _ = self._roundtrip("load", self._request, seconds=self.limits.start_seconds,
                                   limit_name="start_seconds", head_cap=LOAD_REPLY_BYTES)
        if not reply.get("ok"):
            self._stop_worker()
            error = reply.get("error") if isinstance(reply.get("error"), dict) else {}
            kind, message = error.get("type", "Error"), error.get("message", "")
            if reply.get("stage") == "load":
                where = error.get("where") or self.spec
                raise ValueError(_one_line(f"{where}: {kind}: {message}"))
            raise RuntimeError(_one_line(f"{self.spec}: the worker could not set up its sandbox: {kind}: {message}"))
        sandbox = reply.get("sandbox")
        if not isinstance(sandbox, dict) or sandbox.get("level") != self.isolation:
            self._stop_worker()
            raise ProtocolError(f"the worker reports sandbox {str(sandbox)[:200]}, not {self.isolation!r}")
        self.sandbox = {k: v for k, v in sandbox.items() if isinstance(v, (str, int))}
        return self._checked_metadata(reply.get("meta"))

    def _checked_metadata(self, meta: Any) -> dict[str, Any]:
        kinds = {"name": str, "defaults": dict, "params": dict, "version": int, "needs_training": bool,
                 "refit_policies": list, "search_space": dict, "replayable": bool, "per_source": bool,
                 "probabilistic": bool, "doc": str, "class_name": str,
                 "module_file": str}
        if not isinstance(meta, dict):
            self._stop_worker()
            raise ProtocolError("the worker sent no metadata")
        for key, kind in kinds.items():
            if type(meta.get(key)) is not kind:
                self._stop_worker()
                raise ProtocolError(f"metadata {key!r} is {type(meta.get(key)).__name__}, expected {kind.__name__}")
        meta = {key: meta[key] for key in kinds}
        meta["refit_policies"] = tuple(str(p) for p in meta["refit_policies"])
        meta["search_space"] = {str(k): tuple(v) if isinstance(v, list) else v for k, v in meta["search_space"].items()}
        return meta

    def _stop_worker(self) -> None:
        if self._worker is not None:
            worker, self._worker = self._worker, None
            worker.kill()
            self.last_stderr = worker.stderr_text()

    def _ensure_worker(self) -> None:
        """A live worker in the state the harness has shown: after a failure, a fresh one replayed."""
        if self._worker is not None:
            return
        self._spawn()
        if self.history is None:
            return
        try:
            self._send_start()
            if self._refit_at:
                self._send_records(self._refit_at)
                self._call("refit", seconds=self.limits.seconds_per_call)
        except Exception as exc:
            exc.add_note("while restarting the predictor's worker and replaying its history")
            raise

    def _send_start(self) -> None:
        cards, arrays = [], []
        for trace in self._training:
            cards.append(trace.card.to_dict())
            arrays += [trace.counts, trace.steps]
        self._call("start", {"layers": self.history.layers, "experts": self.history.experts, "training": cards},
                   arrays, seconds=self.limits.start_seconds, limit_name="start_seconds")
        self._sent = 0

    def _send_records(self, upto: int) -> None:
        if self._sent < upto:
            sl = slice(self._sent, upto)
            self._call("observe", {}, [self.history.counts[sl], self.history.steps[sl]],
                       seconds=self.limits.seconds_per_call)
            self._sent = upto

    # ---- one request ------------------------------------------------------------------------
    def _budget_left(self) -> float:
        return self.limits.seconds_per_run - self._spent if self._in_run else float("inf")

    def _check_budget(self) -> None:
        if self._budget_left() <= 0:
            self._stop_worker()
            raise TimeoutError(f"{self.spec}: the run's time budget of {self.limits.seconds_per_run:g} s "
                               "(Limits.seconds_per_run) is spent; the predictor is not called again")

    def _roundtrip(self, op: str, header: dict[str, Any], arrays: Sequence[Any] = (), *, seconds: float,
                   limit_name: str = "seconds_per_call", head_cap: int = REPLY_BYTES,
                   body_cap: int = 0) -> tuple[dict, memoryview]:
        self._check_budget()
        allowed = min(seconds, self._budget_left())
        self._seq += 1
        frame = encode_message({**header, "op": op, "seq": self._seq}, arrays)
        worker, t0 = self._worker, time.monotonic()
        try:
            reply, payload = worker.exchange(frame, t0 + allowed, head_cap, body_cap)
            if reply.get("seq") != self._seq:
                raise ProtocolError(f"reply to request {reply.get('seq')!r}, expected {self._seq}")
        except _Timeout:
            self._stop_worker()
            if allowed < seconds:
                raise TimeoutError(f"{self.spec}: {op} used up the run's time budget of "
                                   f"{self.limits.seconds_per_run:g} s (Limits.seconds_per_run); "
                                   "the worker was stopped") from None
            raise TimeoutError(f"{self.spec}: {op} did not finish within {seconds:g} s (Limits.{limit_name}); "
                               "the worker was stopped") from None
        except _Exited:
            status = worker.status()
            self._stop_worker()
            tail = "\n".join(f"  {line}" for line in self.last_stderr.splitlines()[-6:])
            raise RuntimeError(f"predictor worker exited with status {_exit_text(status)} during {op}"
                               + (f"; the end of its stderr:\n{tail}" if tail else "")) from None
        except ProtocolError:
            self._stop_worker()
            raise
        finally:
            if self._in_run:
                self._spent += time.monotonic() - t0
        return reply, payload

    def _call(self, op: str, header: dict[str, Any] | None = None, arrays: Sequence[Any] = (), *, seconds: float,
              limit_name: str = "seconds_per_call", body_cap: int = 0) -> tuple[dict, memoryview]:
        reply, payload = self._roundtrip(op, header or {}, arrays, seconds=seconds, limit_name=limit_name,
                                         body_cap=body_cap)
        if reply.get("ok") is not True:
            raise remote_exception(reply.get("error"))
        if body_cap == 0 and reply.get("arrays"):
            self._stop_worker()
            raise ProtocolError(f"unexpected arrays in the reply to {op}")
        return reply, payload

    def _require_started(self, what: str) -> History:
        if self.history is None:
            raise RuntimeError(f"{self.spec}: {what} before start()")
        return self.history

    # ---- the Predictor interface ------------------------------------------------------------
    def start(self, layers: int, experts: int, training: Sequence[Any] = ()) -> None:
        """Reset for a new trace (and a new run's time budget); the worker fits on `training`."""
        self._in_run, self._spent = True, 0.0
        self.history = History(layers, experts)
        self._training, self._refit_at = tuple(training), None
        self.fit(self._training)

    def fit(self, training: Sequence[Any]) -> None:
        """The worker's ``start``: reset there and fit on `training` (called by :meth:`start`)."""
        self._require_started("fit")
        self._training = tuple(training)
        if self._worker is None:
            self._spawn()
        self._send_start()

    def observe(self, counts: np.ndarray, steps: np.ndarray) -> None:
        """New past records: kept in :attr:`history` and sent to the worker."""
        history = self._require_started("observe")
        if len(steps):
            p = history.append(counts, steps)
            self.update(p, history.steps[-len(steps):])

    def update(self, proportions: np.ndarray, steps: np.ndarray) -> None:
        """Send the worker the records of :attr:`history` it does not have (called by :meth:`observe`)."""
        self._ensure_worker()
        self._send_records(len(self._require_started("update")))

    def refit(self) -> None:
        history = self._require_started("refit")
        self._ensure_worker()
        self._send_records(len(history))
        self._call("refit", seconds=self.limits.seconds_per_call)
        self._refit_at = len(history)

    def forecast(self, target_steps: np.ndarray) -> np.ndarray:
        """The forecast of the records at `target_steps`: sets :attr:`target_steps`, then ``predict``."""
        self.target_steps = np.asarray(target_steps)
        return self.predict(len(self.target_steps))

    def predict(self, records: int) -> np.ndarray:
        """The worker's forecast ``phat[records, layers, experts]``, refused unless it is a real
        numeric array of exactly that shape."""
        history = self._require_started("predict")
        self._ensure_worker()
        self._send_records(len(history))
        n, L, E = int(records), history.layers, history.experts
        steps = self.target_steps
        arrays = [np.asarray(steps, dtype=np.int64)] if steps is not None and len(steps) == n else []
        try:
            reply, payload = self._call("predict", {"records": n}, arrays, seconds=self.limits.seconds_per_call,
                                        body_cap=n * L * E * 8 + NPY_HEADER_BYTES)
            return self._forecast_from(reply, payload, n, L, E)
        except ProtocolError as exc:
            self._stop_worker()  # the worker's own code never sends such a reply: it is not trusted further
            raise ForecastError(f"forecast refused: {exc}") from None

    def forecast_quantiles(self, target_steps: np.ndarray) -> np.ndarray:
        """The quantile forecast of the records at `target_steps`: sets :attr:`target_steps`, then
        ``predict_quantiles``."""
        self.target_steps = np.asarray(target_steps)
        return self.predict_quantiles(len(self.target_steps))

    def predict_quantiles(self, records: int) -> np.ndarray:
        """The worker's quantile forecast ``q[records, layers, experts, levels]``, refused unless it is a real
        numeric array of exactly that shape (read within that size) that passes ``check_quantiles`` here."""
        history = self._require_started("predict_quantiles")
        if not self.probabilistic:
            raise NotImplementedError(f"{self.spec} gives no quantile forecasts")
        self._ensure_worker()
        self._send_records(len(history))
        n, L, E, Q = int(records), history.layers, history.experts, len(QUANTILE_LEVELS)
        steps = self.target_steps
        arrays = [np.asarray(steps, dtype=np.int64)] if steps is not None and len(steps) == n else []
        try:
            reply, payload = self._call("predict_quantiles", {"records": n}, arrays,
                                        seconds=self.limits.seconds_per_call,
                                        body_cap=n * L * E * Q * 8 + NPY_HEADER_BYTES)
            q = self._forecast_from(reply, payload, n, L, E, Q)
        except ProtocolError as exc:
            self._stop_worker()
            raise ForecastError(f"quantile forecast refused: {exc}") from None
        return check_quantiles(q, n, L, E)

    def _forecast_from(self, reply: dict, payload: memoryview, n: int, L: int, E: int,
                       levels: int | None = None) -> np.ndarray:
        """The one array of a forecast reply, ``[n, L, E]`` (``[n, L, E, levels]`` for quantiles), expanded if
        it came as one constant row."""
        tail = (L, E) if levels is None else (L, E, levels)
        specs, repeat = reply.get("arrays"), reply.get("repeat")
        if not (isinstance(specs, list) and len(specs) == 1 and isinstance(specs[0], dict)):
            raise ProtocolError("a forecast reply must hold exactly one array")
        if repeat is not None and (type(repeat) is not int or repeat != n):
            raise ProtocolError(f"a constant forecast must repeat {n} times, not {repeat!r}")
        declared, shape = specs[0].get("dtype"), specs[0].get("shape")
        try:
            dtype = np.dtype(declared) if isinstance(declared, str) else None
        except Exception:  # numpy's parser of dtype strings raises several kinds
            dtype = None
        if dtype is None or dtype.kind not in "iuf" or dtype.itemsize > 8 or not dtype.isnative:
            raise ProtocolError(f"forecast has dtype {str(dtype or declared)[:50]}, expected real numbers "
                                "(native integers or floats of at most 8 bytes)")
        shape = tuple(shape) if isinstance(shape, list) else None
        if shape != ((1 if repeat else n), *tail):
            said = f"{shape} repeated {repeat} times" if repeat else f"{shape}"
            raise ProtocolError(f"forecast has shape {said}, expected {(n, *tail)}")
        try:
            (phat,) = decode_arrays(payload, specs)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
        return np.broadcast_to(phat[0], (n, *tail)) if repeat else phat

    # ---- the end ----------------------------------------------------------------------------
    def stderr_tail(self, lines: int = 12) -> str:
        """The last lines the predictor wrote to stderr (or print) in its live or last worker."""
        return self._worker.stderr_text(lines) if self._worker is not None else self.last_stderr

    def close(self) -> None:
        """Stop the worker (and anything in its process group) and remove its temp folder."""
        self._in_run = False
        worker, self._worker = getattr(self, "_worker", None), None
        if worker is not None:
            worker.close()
            self.last_stderr = worker.stderr_text()

    def __enter__(self) -> "IsolatedPredictor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"IsolatedPredictor({self.spec!r}, isolation={self.isolation!r}, worker={self.worker_pid})"


def describe(spec: str, params: dict[str, Any] | None = None, limits: Limits = Limits(),
             hide: Iterable[str | os.PathLike] = ()) -> dict[str, Any]:
    """The class metadata of `spec` (name, defaults, normalised params, version, needs_training,
    refit_policies, search_space, replayable, doc, class_name, module_file), computed in a sandboxed
    worker, with ``kind``, ``isolation`` and ``sandbox``. A load failure raises ``ValueError`` (one line)."""
    with IsolatedPredictor(spec, params, limits=limits, hide=hide) as predictor:
        return {**predictor.metadata, "kind": predictor.kind, "isolation": predictor.isolation,
                "sandbox": dict(predictor.sandbox)}
