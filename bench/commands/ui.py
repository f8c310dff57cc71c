"""`python -m bench ui`: the MLflow UI on the project's tracking store, started lean and stopped cleanly.

The server runs with the settings that keep it small on a laptop (no job-execution workers,
one uvicorn worker: two processes, ~500 MB) in its own process group; Ctrl-C (SIGINT), SIGTERM
or SIGHUP to this command stops the whole group, so no server process outlives it. Its log goes
to ``<data home>/mlflow-ui.log``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

LEAN_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ui", help="start the MLflow UI on the project's tracking store (Ctrl-C stops it)",
                       description="Start the MLflow UI against the project's tracking store, print its address, "
                                   "and stop it (with every process it started) on Ctrl-C.")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--tracking-uri", default=None, help="store to show (default: $MLFLOW_TRACKING_URI or sqlite under the data home)")
    p.add_argument("--wait", type=float, default=180, help="seconds to wait for the server to answer (default 180)")
    p.set_defaults(func=cmd_ui)


def server_command(uri: str, host: str, port: int) -> list[str]:
    from datasets_registry.registry import data_home

    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port), "--workers", "1"]
    if uri.startswith("sqlite:"):  # where `bench run` puts artifacts for this store (bench.tracking)
        cmd += ["--default-artifact-root", (data_home() / "mlartifacts").resolve().as_uri()]
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


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: a port in TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _get(url: str, timeout: float = 2.0) -> bytes | None:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read() if r.status == 200 else None
    except OSError:
        return None


def _experiment_id(base: str) -> str | None:
    import json
    import urllib.parse

    from bench.tracking import EXPERIMENT

    body = _get(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name={urllib.parse.quote(EXPERIMENT)}")
    return json.loads(body)["experiment"]["experiment_id"] if body else None


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop(signum)


def cmd_ui(args) -> int:
    from bench import tracking
    from bench.cli import UserError
    from datasets_registry.registry import data_home

    uri = tracking.tracking_uri(args.tracking_uri)
    if uri.startswith(("http://", "https://", "databricks")):
        raise UserError(f"the tracking store {uri} is already a server: open it in a browser")
    if not _port_free(args.host, args.port):
        raise UserError(f"port {args.port} on {args.host} is in use; choose another with --port")
    log_path = data_home() / "mlflow-ui.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    host = f"[{args.host}]" if ":" in args.host else args.host
    base = f"http://{host}:{args.port}"
    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python then never raises KeyboardInterrupt.
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(server_command(uri, args.host, args.port), env={**os.environ, **LEAN_ENV}, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        print(f"starting the MLflow UI on {uri} (server pid {proc.pid}, process group {proc.pid}; log {log_path})", flush=True)
        deadline = time.monotonic() + args.wait
        while _get(f"{base}/health") is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace").splitlines()[-15:]
                print("the MLflow server did not come up:\n  " + "\n  ".join(tail), file=sys.stderr)
                return 1
            time.sleep(0.5)
        exp = _experiment_id(base)
        print(f"MLflow UI: {base}", flush=True)
        if exp is not None:
            print(f"runs of {tracking.EXPERIMENT}: {base}/#/experiments/{exp}/runs?workflowType=machine_learning", flush=True)
        print("Ctrl-C stops it.", flush=True)
        while proc.poll() is None:
            time.sleep(0.5)
        print(f"the MLflow server exited with status {proc.returncode}; log {log_path}", file=sys.stderr)
        return 1
    except _Stop:
        print("stopping the MLflow UI", file=sys.stderr, flush=True)
        return 0
    finally:
        for s in previous:  # a second Ctrl-C must not cut the clean-up short
            signal.signal(s, signal.SIG_IGN)
        stop_group(proc)
        for s, h in previous.items():
            signal.signal(s, h)
