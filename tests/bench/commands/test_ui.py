"""`bench ui`: the MLflow server with the lean settings, in its own process group, gone after Ctrl-C."""

from __future__ import annotations

import socket
import urllib.request

from bench import server
from bench.cli import main
from bench.server import group_members
from tests.leaderboard.uiproc import free_port, start_ui, stop_ui


def test_server_command_is_lean():
    cmd = server.server_command("sqlite:////tmp/x/mlflow.db", "127.0.0.1", 5999)
    assert cmd[cmd.index("--workers") + 1] == "1"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert server.LEAN_ENV["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_port_out_of_range_is_a_clear_error(capsys):
    assert main(["ui", "--port", "70000"]) == 1
    assert "not a TCP port" in capsys.readouterr().err


def test_port_in_use_is_a_clear_error(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert main(["ui", "--port", str(s.getsockname()[1])]) == 1
    assert "in use" in capsys.readouterr().err


def test_ctrl_c_stops_the_server_and_leaves_no_process():
    port = free_port()
    proc, info = start_ui(port)
    try:
        with urllib.request.urlopen(f"{info['base']}/health", timeout=10) as r:
            assert r.status == 200
        members = group_members(info["pgid"])
        assert 2 <= len(members) <= 3, f"lean server: the guard, the mlflow CLI and one uvicorn worker, got {members}"
        assert proc.pid not in members  # the server has its own process group
    finally:
        rc = stop_ui(proc, info, "SIGINT")
    assert rc == 0
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))  # nothing listens on the port any more


def test_sigkill_of_bench_ui_leaves_no_server_behind():
    """kill -9 runs no clean-up in `bench ui`: the server's guard notices its parent died and stops the group."""
    import os
    import signal
    import time

    proc, info = start_ui(free_port())
    assert len(group_members(info["pgid"])) >= 2
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while group_members(info["pgid"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = group_members(info["pgid"])
    if left:
        os.killpg(info["pgid"], signal.SIGKILL)
    assert not left, f"server processes left behind after SIGKILL of bench ui: {left}"
