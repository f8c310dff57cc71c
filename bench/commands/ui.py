"""`python -m bench ui`: the MLflow UI on the project's tracking store, started lean and stopped cleanly.

Ctrl-C (SIGINT), SIGTERM or SIGHUP to this command stops the server's whole process group, so no
server process outlives it (:mod:`bench.server`).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ui", help="start the MLflow UI on the project's tracking store (Ctrl-C stops it)",
                       description="Start the MLflow UI against the project's tracking store, print its address, "
                                   "and stop it (with every process it started) on Ctrl-C.")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--tracking-uri", default=None,
                   help="store to show (default: $MLFLOW_TRACKING_URI or sqlite under the data home)")
    p.add_argument("--wait", type=float, default=180, help="seconds to wait for the server to answer (default 180)")
    p.set_defaults(func=cmd_ui)


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop(signum)


def cmd_ui(args) -> int:
    from bench import server, tracking
    from bench.cli import UserError

    uri = tracking.tracking_uri(args.tracking_uri)
    if uri.startswith(("http://", "https://", "databricks")):
        raise UserError(f"the tracking store {uri} is already a server: open it in a browser")
    if not server.port_free(args.host, args.port):
        raise UserError(f"port {args.port} on {args.host} is in use; choose another with --port")
    tracking.connect(uri)  # create or check the store before the server touches it
    base = server.base_url(args.host, args.port)
    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python then never raises KeyboardInterrupt.
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    proc = server.start(uri, args.host, args.port)
    try:
        print(f"starting the MLflow UI on {uri} (server pid {proc.pid}, process group {proc.pid}; "
              f"log {server.log_path()})", flush=True)
        if not server.wait_ready(proc, base, args.wait):
            print("the MLflow server did not come up:\n  " + "\n  ".join(server.log_tail()), file=sys.stderr)
            return 1
        print(f"MLflow UI: {base}", flush=True)
        page = server.runs_page(base)
        if page is not None:
            print(f"runs of {tracking.EXPERIMENT}: {page}", flush=True)
        print("Ctrl-C stops it.", flush=True)
        while proc.poll() is None:
            time.sleep(0.5)
        print(f"the MLflow server exited with status {proc.returncode}; log {server.log_path()}", file=sys.stderr)
        return 1
    except _Stop:
        print("stopping the MLflow UI", file=sys.stderr, flush=True)
        return 0
    finally:
        for s in previous:  # a second Ctrl-C must not cut the clean-up short
            signal.signal(s, signal.SIG_IGN)
        server.stop_group(proc)
        for s, h in previous.items():
            signal.signal(s, h)
