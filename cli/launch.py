"""`golf run --nproc N`: N data-parallel processes on this machine, started by golf itself.

golf starts the processes with the environment torchrun gives its workers (RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT on a free port) instead of going
through torchrun, so that golf, not torchrun, reports failures. Under torchrun a user error
is printed by every rank and followed by torchrun's own traceback and failure table, and the
exit code is torchrun's. Here:

- A process that meets a user error (a GolfError) does not print it: it writes the message
  and its exit code to the file named by GOLF_ERROR_FILE and waits to be stopped. The
  launcher stops every process, prints that one line once and exits with that code. The
  waiting matters: a peer that saw the process vanish would fail in its next collective
  with a connection traceback of its own.
- A process that crashes (any other exception) prints its traceback itself; the launcher
  stops the others and exits with its code.
- SIGTERM or SIGINT sent to the launcher is passed on to every process (each runs in a
  session of its own, so a Ctrl-C reaches them only through the launcher): they agree to stop
  at the next step boundary, checkpoint, and report "interrupted" (exit 75) like any user
  error, so `golf run --resume` can continue the run. A second signal, passed on too, stops
  them at once (golfcore.train.StopSignals).

`torchrun --standalone --nproc_per_node N -m golf_cli run RECIPE` works too: its processes
run as they would under any launcher, and report their errors themselves.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer

from golfcore.processes import start_child

ERROR_FILE_ENV = "GOLF_ERROR_FILE"
STOP_WAIT_S = 60  # a process that left its error waits this long for the launcher to stop it
POLL_S = 0.05


def leave_error_for_launcher(message: str, exit_code: int) -> bool:
    """In a process started by `launch`: hand the error to the launcher and wait to be stopped.
    Returns False (and does nothing) in any other process."""
    path = os.environ.get(ERROR_FILE_ENV)
    if not path:
        return False
    partial = Path(f"{path}.partial")
    partial.write_text(f"{exit_code}\n{message}", encoding="utf-8")
    partial.replace(path)  # the launcher never reads a half-written file
    time.sleep(STOP_WAIT_S)
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(procs: list[subprocess.Popen]) -> None:
    """Kill the processes still running: the run already failed, and a SIGTERM would make a healthy
    rank checkpoint and then fail in a collective with its vanished peer, printing a traceback."""
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()


def launch(nproc: int, argv: list[str]) -> int:
    """Run `python -m golf_cli ARGV` as ranks 0..nproc-1; returns the exit code for the user."""
    port = _free_port()
    threads = str(max(1, (os.cpu_count() or 1) // nproc))  # the processes share the cores
    with tempfile.TemporaryDirectory(prefix="golf-launch-") as scratch:
        error_files = [Path(scratch) / f"rank{rank}.error" for rank in range(nproc)]
        procs = []
        for rank in range(nproc):
            env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
                   "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                   ERROR_FILE_ENV: str(error_files[rank])}
            env.setdefault("OMP_NUM_THREADS", threads)
            procs.append(start_child([sys.executable, "-m", "golf_cli", *argv], env=env))

        def forward(signum, frame):  # the processes checkpoint and stop together (exit 75), then so do we
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signum)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while True:
                reported = [f for f in error_files if f.exists()]
                if reported:
                    _stop(procs)
                    code, message = reported[0].read_text(encoding="utf-8").split("\n", 1)
                    typer.echo(f"error: {message}", err=True)
                    return int(code)
                codes = [p.poll() for p in procs]
                crashed = next((rank for rank, c in enumerate(codes) if c not in (None, 0)), None)
                if crashed is not None:
                    _stop(procs)
                    code = codes[crashed]
                    how = f"was killed by signal {-code}" if code < 0 else f"failed with exit code {code}"
                    typer.echo(f"error: process rank {crashed} of {nproc} {how}; stopped the others", err=True)
                    return 128 - code if code < 0 else code
                if all(c == 0 for c in codes):
                    return 0
                time.sleep(POLL_S)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
