"""Stopping a server that a test started as its own process (`nnmd serve ...`)."""

from __future__ import annotations

import signal
import subprocess


def stop_served(proc: subprocess.Popen, secret: str | None = None, timeout_s: float = 90.0,
                check: bool = True) -> str:
    """SIGTERM, wait (then SIGKILL), close the pipes; returns stderr. check: the process
    must exit 0; secret: it must never appear in stderr (tokens are not logged)."""
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    err = proc.stderr.read() if proc.stderr else ""
    for pipe in (proc.stdout, proc.stderr):
        if pipe:
            pipe.close()
    if check:
        assert rc == 0, err[-3000:]
    if secret:
        assert secret not in err
    return err
