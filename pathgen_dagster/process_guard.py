"""Step processes die with their run worker (imported by the forkserver only).

The multiprocess executor forks steps from a forkserver that the run worker starts. When
the run worker was killed with SIGKILL, the forkserver (~950 MB) and a forked tiles step
lived on for minutes, and the step committed after the run was marked failed. Linux's
parent-death signal ties each to its parent: the forkserver gets SIGKILL when the run
worker dies, and every step forked from it gets SIGKILL when the forkserver dies.

``definitions.py`` lists this module first in the forkserver's ``preload_modules``, so
the forkserver imports it once; importing it anywhere else does nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Asks the kernel to SIGKILL this process when its parent exits (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getppid()
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent or parent == 1:  # the parent died before the signal was set
        os._exit(1)


def _in_forkserver() -> bool:
    frame = sys._getframe()
    forkserver = sys.modules.get("multiprocessing.forkserver")
    if forkserver is None:
        return False
    while frame is not None:
        if frame.f_code is forkserver.main.__code__:
            return True
        frame = frame.f_back
    return False


if _in_forkserver():
    die_with_parent()
    os.register_at_fork(after_in_child=die_with_parent)
