"""Child processes that die with their parent.

A worker pool's processes (ARIMA's fits, the local executor, a sandboxed predictor, the UI's
server guard) must not outlive the command that started them, even when that command is killed
with SIGKILL and runs no clean-up. Linux delivers a signal to a child when its parent dies if the
child asked for it (``prctl(PR_SET_PDEATHSIG)``); elsewhere this is a no-op.
"""

from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None, sig: int = signal.SIGKILL) -> None:
    """In a child process: receive `sig` when the parent dies; exit now if it already has.

    `parent_pid` closes the race where the parent died before this call (then the child has
    already been re-parented). The signal is tied to the parent *thread* that started the child,
    so start such children from a thread that lives as long as they should (the main thread).
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)
