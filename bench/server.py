"""The MLflow UI server behind `python -m bench ui`: started lean, in its own process group, stopped whole.

The server runs with the settings that keep it small on a laptop (no job-execution workers, one
uvicorn worker: two processes, ~500 MB) in its own process group, so that stopping it stops every
process it started. Its log goes to ``<data home>/mlflow-ui.log``.

A small guard process leads that group (``python -m bench.server --guard PID -- COMMAND``): it
starts the server and, when `bench ui` dies however it dies (even by SIGKILL, through
``PR_SET_PDEATHSIG``) or when the group is told to stop, stops the whole group, so no server
process is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from datasets_registry.registry import data_home

from .tracking import EXPERIMENT, VIEW, artifact_root

LEAN_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}


def server_command(uri: str, host: str, port: int) -> list[str]:
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", "1"]
    if uri.startswith("sqlite:"):  # where `bench run` puts artifacts for this store (bench.tracking)
        cmd += ["--default-artifact-root", artifact_root()]
    return cmd


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group (Linux /proc; elsewhere, whether any exists)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except (ProcessLookupError, PermissionError):
            return []
    out = []
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(d.name))
    return out


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the server's process group, SIGKILL what is left after `grace` seconds, reap the leader."""
    pgid = proc.pid
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None and not group_members(pgid):
                return
            time.sleep(0.1)
    proc.poll()


def port_free(host: str, port: int) -> bool:
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is not a TCP port (1..65535)")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: a port in TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def http_get(url: str, timeout: float = 2.0) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read() if r.status == 200 else None
    except OSError:
        return None


def base_url(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def log_path() -> Path:
    return data_home() / "mlflow-ui.log"


def start(uri: str, host: str, port: int) -> subprocess.Popen:
    """Start the guarded server in its own session (process group); its output goes to :func:`log_path`."""
    path = log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "bench.server", "--guard", str(os.getpid()), "--", *server_command(uri, host, port)]
    with open(path, "ab") as log:
        return subprocess.Popen(cmd, env={**os.environ, **LEAN_ENV}, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def guard(parent_pid: int, cmd: list[str], grace: float = 10.0) -> int:
    """Run `cmd` in this process group; stop the whole group when the parent dies or on SIGTERM/SIGINT/SIGHUP."""
    from models.processes import die_with_parent

    child = None

    def stop(signum, frame):
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        os.killpg(0, signal.SIGTERM)  # the guard ignores it; the server and its workers stop
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and len(group_members(os.getpgid(0))) > 1:
            time.sleep(0.1)
            if child is not None:
                child.poll()
        os.killpg(0, signal.SIGKILL)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, stop)
    die_with_parent(parent_pid, signal.SIGTERM)
    child = subprocess.Popen(cmd)
    return child.wait()


def wait_ready(proc: subprocess.Popen, base: str, seconds: float) -> bool:
    """Whether the server answers its health check within `seconds` (False if it exits first)."""
    deadline = time.monotonic() + seconds
    while http_get(f"{base}/health") is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def log_tail(lines: int = 15) -> list[str]:
    return log_path().read_text(errors="replace").splitlines()[-lines:]


def runs_page(base: str) -> str | None:
    """The address of the experiment's runs page, once the experiment exists: the machine-learning pages (not
    MLflow 3's GenAI ones) and the runs table with the headline metrics as columns (:data:`bench.tracking.VIEW`)."""
    body = http_get(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name={urllib.parse.quote(EXPERIMENT)}")
    if not body:
        return None
    exp = json.loads(body)["experiment"]["experiment_id"]
    return f"{base}/#/experiments/{exp}/runs?workflowType=machine_learning&viewStateShareKey={VIEW}"


if __name__ == "__main__":
    if len(sys.argv) > 4 and sys.argv[1] == "--guard" and sys.argv[3] == "--":
        sys.exit(guard(int(sys.argv[2]), sys.argv[4:]))
    sys.exit("usage: python -m bench.server --guard PARENT_PID -- COMMAND...")
