"""Child processes that golf starts and stops itself (`golf run --nproc`, `golf ablate`).

Each child runs in its own session, so a Ctrl-C at the terminal reaches only the golf process
that started it, which passes each stop request on exactly once (a second signal would stop a
run at once, without its checkpoint: golfcore.train.StopSignals). The kernel kills the child
when its parent dies, even by SIGKILL, so nothing keeps training unseen.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the child may outlive a killed parent
        pass


def start_child(command: list[str], **kwargs) -> subprocess.Popen:
    """subprocess.Popen(command, **kwargs) in a session of its own, killed with its parent."""
    return subprocess.Popen(command, start_new_session=True, preexec_fn=_die_with_parent, **kwargs)
