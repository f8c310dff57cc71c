"""Start `python -m bench ui` as a user would, and check that stopping it leaves no process behind."""

from __future__ import annotations

import queue
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.server import group_members

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(port: int, timeout: float = 240.0) -> tuple[subprocess.Popen, dict]:
    """Run `bench ui` until it prints its address; returns (process, {base, pgid, runs_url, output})."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "ui", "--port", str(port), "--host", "127.0.0.1"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    info: dict = {"output": []}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        info["output"].append(line.rstrip())
        if m := re.search(r"server pid (\d+), process group (\d+)", line):
            info["pgid"] = int(m.group(2))
        if m := re.match(r"MLflow UI: (\S+)", line):
            info["base"] = m.group(1)
        if m := re.match(r"runs of \S+: (\S+)", line):
            info["runs_url"] = m.group(1)
        if line.startswith("Ctrl-C stops it"):
            return proc, info
    stop_ui(proc, info, signal_name="SIGTERM", check=False)
    raise AssertionError("bench ui did not come up:\n" + "\n".join(info["output"]))


def stop_ui(proc: subprocess.Popen, info: dict, signal_name: str = "SIGINT", check: bool = True) -> int:
    """Signal `bench ui` as Ctrl-C (or a service manager) would; its exit status, once no orphan is left."""
    import signal

    proc.send_signal(getattr(signal, signal_name))
    try:
        rc = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        import os

        os.killpg(proc.pid, signal.SIGKILL)
        raise
    if check and "pgid" in info:
        deadline = time.monotonic() + 10
        while group_members(info["pgid"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = group_members(info["pgid"])
        assert not left, f"server processes left behind after {signal_name}: {left}"
    return rc
