"""Predictors for tests/bench/test_isolation.py: an honest sw_avg clone and a gallery of cheaters.

Each cheater tries to reach the truth at the origin it forecasts (the records from
``len(self.history)`` on) by one route that bench.isolation must close. Where the route is open
it returns a valid forecast (the truth itself where it found it), so a test that expects every
origin to fail notices a route left open. Parameters say where to look (the tests fill them in).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import socket
import sys
import time
from pathlib import Path

import numpy as np

from models.base import QUANTILE_LEVELS, Predictor
from models.baselines import SlidingWindowAverage
from models.probabilistic import SlidingWindowQuantiles


class SwAvgClone(SlidingWindowAverage):
    """sw_avg itself under another name, run as a submission."""

    name = "sw_avg_clone"


class SplitForecaster(SlidingWindowAverage):
    """sw_avg that would also forecast per source (uniform over the sources): refused by a per-source run."""

    name = "split_forecaster"

    def predict_sources(self, records):
        S = self.history.source_counts.shape[2]
        return self.predict(records)[:, :, None, :] / S * np.ones((1, 1, S, 1))


class SwQuantilesClone(SlidingWindowQuantiles):
    """sw_quantiles itself under another name: a probabilistic submission."""

    name = "sw_quantiles_clone"


class Cheater(Predictor):
    """`steal(records)` returns phat[records, L, E] when its route is open, else raises."""

    defaults = {"path": "", "how": "", "port": 0}

    def predict(self, records):
        return self.steal(records)

    def uniform(self, records):
        return np.full((records, self.history.layers, self.history.experts), 1.0 / self.history.experts)

    def future(self, proportions, records):
        """The records to forecast, from a [T, L, E] array of the whole trace."""
        n = len(self.history)
        return np.asarray(proportions[n : n + records], dtype=np.float64)

    def is_truth(self, value, records) -> bool:
        """Whether `value` holds valid distributions beyond what this predictor has been shown."""
        n, shape = len(self.history), (self.history.layers, self.history.experts)
        if not (isinstance(value, np.ndarray) and value.ndim == 3 and value.shape[1:] == shape):
            return False
        if value.shape[0] < n + records or value.dtype.kind != "f":
            return False
        return bool(np.allclose(value[n : n + records].sum(axis=2), 1.0))


def _proportions(counts):
    counts = np.asarray(counts, dtype=np.float64)
    return counts / counts.sum(axis=2, keepdims=True)


class ReadFile(Cheater):
    """Reads a file of the whole trace: an .npy of proportions or a trace.npz (counts)."""

    def steal(self, records):
        path = self.params["path"]
        data = np.load(path, allow_pickle=False)
        return self.future(_proportions(data["counts"]) if path.endswith(".npz") else data, records)


class BuiltinPackage(Cheater):
    """Reads the built-in trace through the installed package's folder."""

    def steal(self, records):
        import datasets_registry

        path = Path(datasets_registry.__file__).parent / "builtin" / "tiny-cpu-s1" / "v1" / "trace.npz"
        return self.future(_proportions(np.load(path)["counts"]), records)


class RegistryLoad(Cheater):
    """Loads the dataset under test from the registry."""

    def steal(self, records):
        from datasets_registry import registry

        return self.future(registry.load("tiny-cpu-s1").proportions, records)


class StackWalk(Cheater):
    """Looks through the callers' frames for the truth array or the trace."""

    def steal(self, records):
        frame = sys._getframe(1)
        while frame is not None:
            for value in list(frame.f_locals.values()):
                value = getattr(value, "proportions", value)
                if self.is_truth(value, records):
                    return self.future(value, records)
            frame = frame.f_back
        raise LookupError("no trace in any caller's frame")


class GcWalk(Cheater):
    """Looks through every object the garbage collector tracks for a trace longer than the history."""

    def steal(self, records):
        for obj in gc.get_objects():
            if type(obj).__name__ == "Trace" and self.is_truth(obj.proportions, records):
                return self.future(obj.proportions, records)
        raise LookupError("no trace among the objects the garbage collector tracks")


class ParentProc(Cheater):
    """Opens a file of the harness's /proc entry (`how`: environ, mem)."""

    def steal(self, records):
        ppid = os.getppid()
        if self.params["how"] == "mem":
            first = open(f"/proc/{ppid}/maps").readline().split()[0].split("-")[0]
            with open(f"/proc/{ppid}/mem", "rb") as mem:
                mem.seek(int(first, 16))
                mem.read(64)
        else:
            open(f"/proc/{ppid}/environ", "rb").read()
        return self.uniform(records)


class SignalParent(Cheater):
    """Sends the harness signal 0 (the permission check of any signal)."""

    def steal(self, records):
        os.kill(os.getppid(), 0)
        return self.uniform(records)


class StealDescriptor(Cheater):
    """Copies the harness's open file descriptors with pidfd_getfd (the harness holds the trace open)."""

    def steal(self, records):
        libc = ctypes.CDLL(None, use_errno=True)
        pidfd = libc.syscall(434, os.getppid(), 0)  # pidfd_open
        if pidfd < 0:
            raise OSError(ctypes.get_errno(), "pidfd_open")
        refused = 0
        for fd in range(3, 256):
            got = libc.syscall(438, pidfd, fd, 0)  # pidfd_getfd
            if got >= 0:
                return self.uniform(records)
            refused = ctypes.get_errno()
        raise PermissionError(refused, f"pidfd_getfd: {os.strerror(refused)}")


class Accomplice(Cheater):
    """Asks a TCP server on this machine for the truth."""

    def steal(self, records):
        with socket.create_connection(("127.0.0.1", self.params["port"]), timeout=5) as conn:
            conn.recv(16)
        return self.uniform(records)


class GitObjects(Cheater):
    """Reads the repository's .git (which holds every committed trace)."""

    def steal(self, records):
        (Path(self.params["path"]) / ".git" / "HEAD").read_bytes()
        return self.uniform(records)


class Exit(Cheater):
    """Ends the worker (`how`: sys.exit, os._exit) with status 0, hoping the run ends with it."""

    def steal(self, records):
        if self.params["how"] == "os._exit":
            os._exit(0)
        sys.exit(0)


class Sleep(Cheater):
    """Never returns."""

    def steal(self, records):
        while True:
            time.sleep(3600)


class ForkAndSleep(Cheater):
    """Starts a child process that would run on, says its pid on stderr, and never returns."""

    def steal(self, records):
        child = os.fork()
        if child == 0:
            while True:
                time.sleep(3600)
        print(f"CHILD {child}", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)


class Hog(Cheater):
    """Writes a 64 MiB file in its temp folder (`how`: disk) or allocates 4 GiB (`how`: memory)."""

    def steal(self, records):
        if self.params["how"] == "disk":
            with open(Path(os.environ["TMPDIR"]) / "big.bin", "wb") as f:
                for _ in range(64):
                    f.write(b"x" * (1 << 20))
        else:
            np.empty(1 << 29)  # address space only: nothing is touched
        return self.uniform(records)


class BadForecast(Cheater):
    """Returns the wrong shape (`how`: shape) or dtype (`how`: complex, object)."""

    def steal(self, records):
        phat = self.uniform(records)
        if self.params["how"] == "shape":
            return np.concatenate([phat, phat], axis=2) / 2
        if self.params["how"] == "complex":
            return phat.astype(np.complex128)
        return phat.astype(object)


class ForgedReply(Cheater):
    """Writes a reply of its own on the worker's pipe to the harness, then waits to be killed.

    `how`: "huge" declares a terabyte of arrays; "object" declares a pickled object array;
    "lying" declares float64 but sends a pickled object array.
    """

    def steal(self, records):
        channel = next(o for o in gc.get_objects() if type(o).__name__ == "Channel")
        requests = [o for o in gc.get_objects() if isinstance(o, dict) and o.get("op") == "predict" and "seq" in o]
        seq = max(r["seq"] for r in requests)
        shape = [records, self.history.layers, self.history.experts]
        if self.params["how"] == "huge":
            head = json.dumps({"seq": seq, "ok": True}).encode()
            frame = len(head).to_bytes(4, "little") + (1 << 40).to_bytes(8, "little") + head
        else:
            import io

            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.full(shape, None, dtype=object), allow_pickle=True)
            body = buf.getvalue()
            dtype = "|O" if self.params["how"] == "object" else "<f8"
            head = json.dumps({"seq": seq, "ok": True, "arrays": [{"dtype": dtype, "shape": shape}]}).encode()
            frame = len(head).to_bytes(4, "little") + len(body).to_bytes(8, "little") + head + body
        os.write(channel.write_fd, frame)
        time.sleep(3600)


class WorkerFacts(Predictor):
    """Reports, on stderr, what its worker process looks like; forecasts uniformly (also printing to stdout)."""

    name = "worker_facts"

    def start(self, layers, experts, training=()):
        super().start(layers, experts, training)
        status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
        facts = {"env": sorted(os.environ), "home": os.environ.get("HOME"), "tmpdir": os.environ.get("TMPDIR"),
                 "cap_eff": status["CapEff"].strip(), "no_new_privs": status["NoNewPrivs"].strip(),
                 "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")), "cwd": os.getcwd(),
                 "core": list(resource.getrlimit(resource.RLIMIT_CORE))}
        tmp = Path(os.environ["TMPDIR"]) / "scratch.txt"
        tmp.write_text("a private temp folder is writable")
        print("FACTS " + json.dumps(facts), file=sys.stderr, flush=True)

    def predict(self, records):
        print("a print goes to stderr, not into the protocol")
        return np.full((records, self.history.layers, self.history.experts), 1.0 / self.history.experts)


class CrashOnce(Predictor):
    """Forecasts the mean share at its last refit; its worker dies when shown exactly `crash_at` records."""

    name = "crash_once"
    defaults = {"crash_at": -1}

    def refit(self):
        self.estimate = self.history.proportions.mean(axis=0)

    def predict(self, records):
        if len(self.history) == self.params["crash_at"]:
            os._exit(3)
        return self.repeat(self.estimate, records)


class Slow(SwAvgClone):
    """sw_avg, `delay` seconds per forecast."""

    name = "slow"
    defaults = {"window": 100, "delay": 0.5}

    def predict(self, records):
        time.sleep(self.params["delay"])
        return super().predict(records)


class NotAPredictor:
    """Not a Predictor subclass."""


class QuantileCheater(SwAvgClone):
    """An honest point forecast (sw_avg's) with a quantile forecast that cheats or breaks the rules (`how`):
    "read" puts every quantile at the truth read from the file `path`; "decreasing" reverses the levels;
    "shape" gives one level too few; "range" goes above 1; "huge" forges a reply that declares a terabyte."""

    defaults = {"window": 100, "path": "", "how": ""}

    def predict_quantiles(self, records):
        layers, experts = self.history.layers, self.history.experts
        q = np.broadcast_to(np.linspace(0.0, 2.0 / experts, len(QUANTILE_LEVELS)), (records, layers, experts,
                                                                                     len(QUANTILE_LEVELS)))
        how = self.params["how"]
        if how == "read":
            truth = np.load(self.params["path"], allow_pickle=False)[len(self.history) : len(self.history) + records]
            return np.repeat(truth[..., None], len(QUANTILE_LEVELS), axis=-1)
        if how == "decreasing":
            return q[..., ::-1]
        if how == "shape":
            return q[..., 1:]
        if how == "range":
            return q + 1.0
        if how == "huge":
            channel = next(o for o in gc.get_objects() if type(o).__name__ == "Channel")
            requests = [o for o in gc.get_objects() if isinstance(o, dict) and o.get("op") == "predict_quantiles"
                        and "seq" in o]
            head = json.dumps({"seq": max(r["seq"] for r in requests), "ok": True}).encode()
            os.write(channel.write_fd, len(head).to_bytes(4, "little") + (1 << 40).to_bytes(8, "little") + head)
            time.sleep(3600)
        return q
