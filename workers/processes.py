"""Local child processes the same way everywhere: stopping one (SIGTERM, wait, SIGKILL), a
free loopback port to start one on, and waiting until it listens."""

from __future__ import annotations

import socket
import subprocess
import time
from contextlib import closing


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


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """Block until something listens on 127.0.0.1:``port``.

    Raises RuntimeError if ``proc`` exits first (naming its exit status), TimeoutError after
    ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")
