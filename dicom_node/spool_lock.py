"""One node per spool: an exclusive lock on ``<spool>/node.lock``.

With the embedded worker, the node's job queue lives in the spool (``broker/``). Two nodes
working one spool's queue at once would both score and send the same series, and a restart
would re-queue work the other still holds. ``picard-node serve`` therefore takes an
exclusive ``flock`` on ``<spool>/node.lock`` before anything else and keeps it until it
exits; its embedded worker inherits the open lock file, so the lock is held as long as
*either* of them lives (a worker orphaned by a killed node keeps a restarted node out
instead of racing it). A second node refuses to start with :class:`SpoolInUseError`, naming
the holder. The kernel drops the lock when the last holder exits, so a crash never leaves
a stale lock behind.

``flock`` locks work across machines only on file systems that support them (NFSv4 does on
Linux); one spool per node is the rule either way.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from dicom_node.phi import PhiFreeError

#: Name of the lock file inside the spool.
LOCK_FILE = "node.lock"


class SpoolInUseError(PhiFreeError, ValueError):
    """Another node (or a worker it started) holds the spool's lock."""


class SpoolLock:
    """The exclusive lock of one spool.

    Parameters
    ----------
    spool_dir : Path or str
        The spool (created if missing).

    Examples
    --------
    >>> with SpoolLock(settings.spool_dir) as lock:   # doctest: +SKIP
    ...     spawn_worker(pass_fds=(lock.fileno(),))
    """

    def __init__(self, spool_dir: Path | str) -> None:
        self.path = Path(spool_dir) / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock without waiting and record who holds it.

        Raises
        ------
        SpoolInUseError
            If another process holds it; the message names that holder.
        """
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            os.close(fd)
            raise SpoolInUseError(
                f"spool {str(self.path.parent)!r} is in use by another node ({holder}); "
                "stop that node (and its embedded worker) first, or give this node its own "
                "spool_dir") from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode())
        os.fsync(fd)
        self._fd = fd

    def fileno(self) -> int:
        """The lock file's descriptor, for a child process that shares the lock.

        Raises
        ------
        RuntimeError
            If the lock is not held.
        """
        if self._fd is None:
            raise RuntimeError(f"the lock {str(self.path)!r} is not held")
        return self._fd

    def release(self) -> None:
        """Close the lock file (the lock stays held by children that inherited it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> SpoolLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except (OSError, ValueError):
            info = {}
        if not info:
            return "holder unknown"
        return (f"taken by pid {info.get('pid')} on {info.get('host')} since "
                f"{info.get('since')}; a worker it started may hold it still")
