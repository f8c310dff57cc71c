"""The worker process behind :mod:`bench.isolation`: one submitted predictor, alone in a sandbox, behind two pipes.

:class:`bench.isolation.IsolatedPredictor` starts it as ``python -I -B -c BOOTSTRAP <project root> <harness pid>``
and sends a first message saying what to load and what to hide. Before anything of the submission
is imported, the worker:

1. asks the kernel to kill it when the harness dies (``PR_SET_PDEATHSIG``), and exits at once if
   the harness is already gone;
2. keeps the protocol pipes on private descriptors and points its stdin at ``/dev/null`` and its
   stdout at stderr, so that a ``print`` cannot corrupt a reply;
3. sets resource limits: no core dumps, a cap on the size of a file it writes, optionally a cap on
   its address space;
4. when it runs as root, gives up root: becomes ``nobody`` when ``nobody`` can read everything
   Python needs (tested in a forked child), else stays uid 0 without any capability;
5. restricts itself with Landlock (:func:`sandbox_plan`, :func:`landlock_ruleset`) and ``no_new_privs``.

Only then does it import numpy and the project, load the predictor and serve the harness's
requests (``start``, ``observe``, ``refit``, ``predict``, ``predict_quantiles``) until its stdin ends.

Nothing here imports numpy or the project at module level: Landlock restricts only the thread
that enforces it and the threads and processes it starts later, so the sandbox must be in place
before any library starts a thread of its own.

This module also defines the message format both sides speak (:func:`encode_message`,
:func:`decode_arrays`): a frame is ``<u32 header bytes><u64 payload bytes>``, a JSON header, then
the arrays the header lists under ``"arrays"``, one after the other in ``.npy`` format (written
with ``np.lib.format.write_array`` and read back with ``allow_pickle=False``).
"""

from __future__ import annotations

import io
import json
import os
import resource
import signal
import struct
import sys
import traceback
from pathlib import Path
from typing import Any, Iterable, Sequence

from models.processes import die_with_parent

#: Frame prefix: bytes of the JSON header, bytes of the array payload.
FRAME = struct.Struct("<IQ")

#: How a first message names the worker's sandbox request.
LEVEL_LANDLOCK, LEVEL_PROCESS = "landlock", "process"

#: Files of /proc besides the worker's own /proc/self that numerical libraries read.
PROC_FILES = ("cpuinfo", "meminfo", "stat", "loadavg", "uptime", "version", "filesystems", "mounts", "sys",
              "driver/nvidia")
#: Device files every process may use.
PLAIN_DEVICES = ("null", "zero", "full", "random", "urandom")
#: System trees Python and its native libraries read and execute from.
SYSTEM_TREES = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/etc")

_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_ERROR_TEXT_CHARS = 2000
_TRACEBACK_CHARS = 4000


# ---- the message format ---------------------------------------------------------------------
def encode_message(header: dict[str, Any], arrays: Sequence[Any] = ()) -> list[bytes | memoryview]:
    """One frame, as the buffers to write in order: `header` as JSON (with the arrays' dtypes and
    shapes added), then the arrays as .npy."""
    import numpy as np

    payload = io.BytesIO()
    specs = []
    for array in arrays:
        array = np.asarray(array)
        np.lib.format.write_array(payload, array, allow_pickle=False)
        specs.append({"dtype": array.dtype.str, "shape": list(array.shape)})
    head = json.dumps({**header, "arrays": specs}, default=str).encode()
    body = payload.getbuffer()
    return [FRAME.pack(len(head), len(body)) + head, body]


def decode_arrays(payload: bytes | memoryview, specs: Any) -> list:
    """The arrays of a payload, each checked against the dtype and shape its header declared.

    Raises ValueError when the header's list is malformed, an array is not what was declared (or
    needs pickle), or bytes are left over.
    """
    import numpy as np

    if not isinstance(specs, list):
        raise ValueError("the header's 'arrays' is not a list")
    buf = io.BytesIO(payload)
    out = []
    for spec in specs:
        if not (isinstance(spec, dict) and isinstance(spec.get("dtype"), str) and isinstance(spec.get("shape"), list)):
            raise ValueError(f"malformed array description {str(spec)[:200]!r}")
        array = np.lib.format.read_array(buf, allow_pickle=False)
        if array.dtype.str != spec["dtype"] or list(array.shape) != spec["shape"]:
            declared = f"{spec['dtype']}{tuple(spec['shape'])}"
            raise ValueError(f"array declared as {declared} is {array.dtype.str}{array.shape}")
        out.append(array)
    if buf.tell() != len(buf.getbuffer()):
        raise ValueError(f"{len(buf.getbuffer()) - buf.tell()} bytes left over after the declared arrays")
    return out


class Channel:
    """The worker's end of the pipes: blocking reads and writes of whole frames."""

    def __init__(self, read_fd: int, write_fd: int):
        self.read_fd, self.write_fd = read_fd, write_fd

    def _read_exact(self, n: int) -> bytes | None:
        chunks, left = [], n
        while left:
            chunk = os.read(self.read_fd, min(left, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def receive(self) -> tuple[dict, bytes] | None:
        """(header, payload) of the next frame; None when the harness closed the pipe."""
        prefix = self._read_exact(FRAME.size)
        if prefix is None:
            return None
        head_len, body_len = FRAME.unpack(prefix)
        head = self._read_exact(head_len) if head_len else b""
        body = self._read_exact(body_len) if body_len else b""
        if head is None or body is None:
            return None
        return json.loads(head), body

    def send(self, header: dict[str, Any], arrays: Sequence[Any] = ()) -> None:
        for part in encode_message(header, arrays):
            view = memoryview(part).cast("B")
            while view:
                view = view[os.write(self.write_fd, view):]


# ---- process hygiene ------------------------------------------------------------------------
def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def set_limits(file_bytes: int | None, memory_bytes: int | None) -> None:
    """No core dumps; files of at most `file_bytes`; at most `memory_bytes` of address space."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if file_bytes is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    if memory_bytes is not None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


def _readable_by(uid: int, gid: int, paths: Iterable[Path]) -> bool:
    """Whether `uid`:`gid` may read (and enter) every one of `paths`: asked in a forked child."""
    paths = [str(p) for p in paths]
    pid = os.fork()
    if pid == 0:  # the child: become uid, look, report through the exit status
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            ok = all(os.access(p, os.R_OK | (os.X_OK if os.path.isdir(p) else 0)) for p in paths)
        except BaseException:
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def drop_privileges(must_read: Iterable[Path], writable: Path) -> str:
    """Give up root before the submission runs; returns who the worker is now.

    As root it becomes ``nobody`` when ``nobody`` can read everything in `must_read` (the Python
    installation may live in a private home), else stays uid 0 with every capability removed
    (bounding set, ambient, effective, permitted, inheritable). Not root: unchanged.
    """
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return "unchanged"
    import ctypes
    import pwd

    libc = _libc()
    try:
        last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        last_cap = 63
    for cap in range(last_cap + 1):
        libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        nobody = None
    if nobody is not None and _readable_by(nobody.pw_uid, nobody.pw_gid, must_read):
        os.chown(writable, nobody.pw_uid, nobody.pw_gid)
        os.setgroups([])
        os.setresgid(nobody.pw_gid, nobody.pw_gid, nobody.pw_gid)
        os.setresuid(nobody.pw_uid, nobody.pw_uid, nobody.pw_uid)
        return "nobody"

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    if libc.capset(ctypes.byref(Header(_LINUX_CAPABILITY_VERSION_3, 0)), (Data * 2)()) != 0:
        raise OSError(ctypes.get_errno(), "capset: cannot drop the capabilities of root")
    return "root without capabilities"


# ---- the sandbox ----------------------------------------------------------------------------
def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def tree_except(root: Path, excluded: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """`root` minus each `excluded` path and what lies under it: (subtrees to allow whole, folders
    on the way to an excluded path).

    Landlock can only add access, never take a folder out of an allowed tree; so every folder on
    the way from `root` to an excluded path is replaced by its children, one rule each, except
    the one that leads on. The folders on the way themselves are returned too: they may be given
    the right to list their entries (Python's import system lists a package's folder), which
    Landlock extends to their whole subtree, names only. Children that are symbolic links are
    judged by their target (a rule applies where the link points).
    """
    root = Path(os.path.realpath(root))
    excluded = [Path(os.path.realpath(p)) for p in excluded]
    if any(_within(root, e) for e in excluded):
        return [], []
    inside = [e for e in excluded if _within(e, root)]
    if not inside:
        return [root], []
    if not root.is_dir():
        return [], []
    whole, way = [], [root]
    for child in sorted(root.iterdir()):
        more_whole, more_way = tree_except(child, inside)
        whole += more_whole
        way += more_way
    return whole, way


def sandbox_plan(hidden: Iterable[Path], writable: Path, trees: Iterable[Path], plugin_file: Path | None = None,
                 broad: Iterable[Path] = ()) -> list[tuple[Path, str]]:
    """The Landlock rules of a worker: (path, access) with access "read_exec", "read", "list",
    "device", "gpu" or "write".

    `trees` (the Python installation, sys.path, the project's packages) and the system trees are
    readable minus every `hidden` path inside them; a tree strictly inside a hidden folder (a
    virtualenv in the checkout) is readable all the same, Python needs it, but a tree that is a
    hidden folder (the checkout on sys.path) is not. The plugin's folder is readable too unless it
    holds or lies in a hidden path or is one of the `broad` folders (the temp root, a home), in
    which case only the file is. The worker's own /proc entry and a few global /proc files are
    readable, /sys is; `writable` is the only place it may write.
    """
    hidden = [Path(os.path.realpath(p)) for p in hidden]
    broad = {Path(os.path.realpath(p)) for p in [*broad, "/"]}
    plan: list[tuple[Path, str]] = []
    for tree in [*trees, *SYSTEM_TREES]:
        tree = Path(os.path.realpath(tree))
        if tree.exists() and tree not in broad:
            whole, way = tree_except(tree, [h for h in hidden if tree == h or not _within(tree, h)])
            plan += [(p, "read_exec") for p in whole] + [(p, "list") for p in way]
    if plugin_file is not None:
        plugin_file = Path(os.path.realpath(plugin_file))
        folder = plugin_file.parent
        private = folder not in broad and not any(_within(h, folder) or _within(folder, h) for h in hidden)
        plan.append((folder if private else plugin_file, "read_exec"))
    if Path("/sys").is_dir():
        plan += [(p, "read") for p in tree_except(Path("/sys"), hidden)[0]]
    plan += [(Path("/proc/self"), "read")]
    plan += [(Path("/proc") / name, "read") for name in PROC_FILES if (Path("/proc") / name).exists()]
    plan += [(Path("/dev") / name, "device") for name in PLAIN_DEVICES if (Path("/dev") / name).exists()]
    gpu = [p for p in Path("/dev").glob("nvidia*")] + [Path("/dev/dri"), Path("/dev/kfd")]
    plan += [(p, "gpu") for p in gpu if p.exists()]
    plan.append((Path(writable), "write"))
    return plan


def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0: none, or no Landlock library installed)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        import landlockpy
    except ImportError:
        return 0
    return landlockpy.abi_version()


def landlock_ruleset(plan: Sequence[tuple[Path, str]]):
    """A Landlock ruleset of `plan`, and the number of rules in it; TCP (and, where the kernel can,
    UDP) bind and connect denied, abstract unix sockets and signals scoped to the sandbox.

    Built before the worker gives up root (opening a rule's path may need root's access); its
    ``restrict()`` then enforces it, with ``no_new_privs``, on this process and every thread and
    process it starts later.
    """
    import landlockpy as ll

    fs = ll.AccessFS
    read_exec = fs.EXECUTE | fs.READ_FILE | fs.READ_DIR
    everything = int(ll.fs_for_abi(ll.abi_version()))
    access = {"read_exec": int(read_exec), "read": int(fs.READ_FILE | fs.READ_DIR), "list": int(fs.READ_DIR),
              "device": int(fs.READ_FILE | fs.WRITE_FILE | fs.TRUNCATE),
              "gpu": int(fs.READ_FILE | fs.WRITE_FILE | fs.READ_DIR | fs.IOCTL_DEV),
              "write": everything & ~int(fs.IOCTL_DEV | fs.MAKE_CHAR | fs.MAKE_BLOCK)}
    file_access = int(fs.EXECUTE | fs.WRITE_FILE | fs.READ_FILE | fs.TRUNCATE | fs.IOCTL_DEV)
    rules, ruleset = 0, ll.Ruleset(scoped=ll.Scope.ABSTRACT_UNIX_SOCKET | ll.Scope.SIGNAL)
    for path, kind in plan:
        try:
            ruleset.allow_path(path, fs(access[kind] if os.path.isdir(path) else access[kind] & file_access))
        except FileNotFoundError:
            continue
        rules += 1
    return ruleset, rules


def _package_dir(name: str) -> Path | None:
    """Where package `name` is, found without running it (this also primes the import caches)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(spec.origin) if spec.origin and os.path.exists(spec.origin) else None


def _entry_point_dir(name: str, group: str) -> Path | None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=group):
        if ep.name == name:
            return _package_dir(ep.value.split(":")[0].split(".")[0].strip())
    return None


def _library_trees(request: dict) -> list[Path]:
    """What the worker must be able to read besides the system: Python, sys.path, the project's
    packages, an entry point's package, LD_LIBRARY_PATH."""
    trees = {Path(sys.base_prefix), Path(sys.base_exec_prefix)}
    trees |= {Path(p) for p in sys.path if p and os.path.exists(p)}
    trees |= {d for d in map(_package_dir, ("bench", "models", "datasets_registry", "numpy", "landlockpy")) if d}
    if request.get("kind") == "entry_point":
        found = _entry_point_dir(request["spec"], request["entry_point_group"])
        if found:
            trees.add(found)
    trees |= {Path(p) for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and os.path.isdir(p)}
    return sorted(trees)


def _builtin_copies() -> list[Path]:
    """Every datasets_registry/builtin folder reachable through sys.path or the import system."""
    found = [Path(p) / "datasets_registry" / "builtin" for p in sys.path if p]
    package = _package_dir("datasets_registry")
    if package:
        found.append(package / "builtin")
    return [p for p in found if p.exists()]


# ---- serving the predictor ------------------------------------------------------------------
def _error(exc: BaseException, where: str = "") -> dict[str, str]:
    try:
        message = str(exc)
    except Exception:
        message = "<unprintable message>"
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-8))
    return {"type": type(exc).__name__, "message": message[:_ERROR_TEXT_CHARS], "where": where,
            "traceback": text[-_TRACEBACK_CHARS:]}


def _load_error(exc: BaseException, plugin_file: str | None) -> dict[str, str]:
    """The error of a failed load, with the file and line of the submission it points at, if any."""
    if isinstance(exc, SyntaxError):
        return _error(exc, f"{exc.filename}:{exc.lineno}") | {"message": str(exc.msg)}
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if plugin_file and os.path.realpath(f.filename) == plugin_file]
    return _error(exc, f"{mine[-1].filename}:{mine[-1].lineno}" if mine else "")


def _metadata(predictor: Any, cls: type) -> dict[str, Any]:
    """What the harness may know of the predictor: its class attributes, as JSON values."""
    import inspect

    doc = (inspect.getdoc(cls) or "").strip().splitlines()
    return {"name": cls.name, "defaults": dict(cls.defaults), "params": dict(predictor.params),
            "version": cls.version, "needs_training": bool(cls.needs_training),
            "refit_policies": list(cls.refit_policies),
            "search_space": {k: list(v) if isinstance(v, tuple) else v for k, v in dict(cls.search_space).items()},
            "replayable": bool(predictor.replayable), "per_source": bool(getattr(predictor, "per_source", False)),
            "probabilistic": bool(getattr(predictor, "probabilistic", False)),
            "doc": doc[0] if doc else "", "class_name": cls.__qualname__,
            "module_file": getattr(sys.modules.get(cls.__module__), "__file__", None) or ""}


def _load(request: dict) -> tuple[Any, dict[str, Any]]:
    from models.registry import predictor_class

    spec = request["spec"]
    cls = predictor_class(spec)
    if cls.name == spec and request.get("display_spec"):
        cls.name = request["display_spec"]  # an unnamed class is named by what the user typed
    predictor = cls(**request.get("params", {}))
    meta = _metadata(predictor, cls)
    for key, kind in (("name", str), ("version", int)):
        if type(meta[key]) is not kind:
            raise TypeError(f"`{key}` must be of type {kind.__name__}, not {type(meta[key]).__name__}")
    json.dumps(meta)  # a TypeError here says the class declares something that is not JSON
    return predictor, meta


def _training_traces(header: dict, arrays: list) -> list:
    from datasets_registry.trace import Card, Trace

    out = []
    for i, card in enumerate(header.get("training", [])):
        out.append(Trace.from_arrays(arrays[2 * i], arrays[2 * i + 1], Card.from_dict(card), source="<training trace>"))
    return out


def _forecast(predictor: Any, header: dict, arrays: list, shape: tuple[int, int], quantiles: bool = False):
    """(forecast, times it repeats): the predictor's forecast (its quantile forecast with `quantiles`),
    checked by the harness's own rules before it is sent. A constant forecast (the same row for every
    record, as ``Predictor.repeat`` makes) is checked and sent as its one row."""
    import numpy as np

    from bench.evaluate import check_forecast, check_quantiles
    from models.base import QUANTILE_LEVELS

    records = int(header["records"])
    if quantiles:
        check, full = check_quantiles, (records, *shape, len(QUANTILE_LEVELS))
        call, method = "forecast_quantiles", "predict_quantiles"
    else:
        check, full, call, method = check_forecast, (records, *shape), "forecast", "predict"
    if arrays and hasattr(predictor, call):
        out = getattr(predictor, call)(arrays[0])
    else:
        out = getattr(predictor, method)(records)
    constant = isinstance(out, np.ndarray) and out.shape == full and records > 1 and out.strides[0] == 0
    phat = check(out[:1], 1, *shape) if constant else check(out, records, *shape)
    if phat.dtype.itemsize > 8 or not phat.dtype.isnative:  # long double, big-endian: sent as float64
        phat = phat.astype(np.float64)
    return phat, records if constant else None


def serve(channel: Channel, predictor: Any) -> None:
    """Answer requests until the harness closes the pipe. An exception of the predictor becomes an
    error reply; ``SystemExit`` and the like end the process, as they would end any program."""
    import numpy as np

    shape: tuple[int, int] = (0, 0)
    while True:
        message = channel.receive()
        if message is None:
            return
        header, payload = message
        reply: dict[str, Any] = {"seq": header.get("seq"), "ok": True}
        out: list = []
        try:
            arrays = decode_arrays(payload, header.get("arrays", []))
            op = header.get("op")
            if op == "start":
                shape = (int(header["layers"]), int(header["experts"]))
                predictor.start(*shape, _training_traces(header, arrays))
            elif op == "observe":
                predictor.observe(arrays[0], arrays[1])
            elif op == "refit":
                predictor.refit()
            elif op in ("predict", "predict_quantiles"):
                phat, repeat = _forecast(predictor, header, arrays, shape, quantiles=op == "predict_quantiles")
                if repeat:
                    reply["repeat"] = repeat
                out = [np.ascontiguousarray(phat)]
            else:
                raise ValueError(f"unknown request {op!r}")
        except Exception as exc:
            reply, out = {"seq": header.get("seq"), "ok": False, "error": _error(exc)}, []
        channel.send(reply, out)


def main() -> None:
    parent_pid = int(sys.argv[2])  # argv[1], the project's root, is on sys.path already (BOOTSTRAP)
    die_with_parent(parent_pid)
    read_fd, write_fd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(2, 1)
    os.close(null)
    channel = Channel(read_fd, write_fd)
    message = channel.receive()
    if message is None:
        return
    request = message[0]
    for entry in request.get("sys_path", []):  # import what the harness imports (its plugins' folders too)
        if isinstance(entry, str) and entry not in sys.path:
            sys.path.append(entry)
    writable = Path(os.environ["TMPDIR"])
    set_limits(request.get("file_bytes"), request.get("memory_bytes"))
    plugin_file = Path(request["plugin_file"]) if request.get("plugin_file") else None
    sandbox: dict[str, Any] = {"level": request["level"]}
    try:
        trees, ruleset = _library_trees(request), None
        if request["level"] == LEVEL_LANDLOCK:
            hidden = [Path(p) for p in request["hidden"]] + _builtin_copies()
            plan = sandbox_plan(hidden, writable, trees, plugin_file, [Path(p) for p in request.get("broad", [])])
            ruleset, sandbox["rules"] = landlock_ruleset(plan)
            sandbox["landlock_abi"] = landlock_abi()
        sandbox["user"] = drop_privileges(trees + ([plugin_file] if plugin_file else []), writable)
        die_with_parent(parent_pid)
        if ruleset is not None:
            with ruleset:
                ruleset.restrict()
    except Exception as exc:  # never run a submission in a weaker sandbox than was asked for
        channel.send({"seq": 0, "ok": False, "stage": "sandbox", "error": _error(exc)})
        return
    try:
        predictor, meta = _load(request)
    except Exception as exc:
        channel.send({"seq": 0, "ok": False, "stage": "load",
                      "error": _load_error(exc, os.path.realpath(plugin_file) if plugin_file else None)})
        return
    channel.send({"seq": 0, "ok": True, "meta": meta, "sandbox": sandbox})
    serve(channel, predictor)
