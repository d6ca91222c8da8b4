"""Stopping a child process the same way everywhere: SIGTERM, wait, then SIGKILL."""

from __future__ import annotations

import subprocess


def terminate(proc: subprocess.Popen, timeout: float = 30.0) -> int | None:
    """SIGTERM (a Celery worker's warm shutdown, the node's clean stop), then SIGKILL after
    `timeout` seconds; returns the exit status (None if even SIGKILL did not end it in 5 s).
    """
    if proc.poll() is not None:
        return proc.returncode
    proc.terminate()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            return proc.wait(5)
        except subprocess.TimeoutExpired:
            return None
