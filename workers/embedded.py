"""The embedded worker: a ``picard-node worker`` child that lives and dies with its node.

Without a broker URL the node runs its own worker on kombu's filesystem transport under
``<spool>/broker``. That transport deletes a message when a worker takes it, so three
things keep work from being lost or done twice:

* **Dies with the node.** The child asks the kernel for ``SIGKILL`` when its parent dies
  (Linux ``prctl(PR_SET_PDEATHSIG)``, :func:`arm_parent_death_signal`), and each pool
  process does the same towards the worker; a node killed with ``kill -9`` leaves no
  orphan behind to race its successor.
* **One node per spool.** The node holds :class:`~dicom_node.spool_lock.SpoolLock` and the
  child inherits the lock file, so a second node (or a restarted one while an orphan still
  runs) refuses to start.
* **In-flight jobs survive a dead worker.** Each job the worker receives is recorded in
  ``<spool>/broker/inflight/`` (Celery's ``task_received``) until it ends
  (``task_postrun``); when the worker dies, the node re-queues what it held
  (:func:`requeue_inflight`) before starting a new one.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dicom_node.config import CONFIG_PATH_ENV, Settings
from dicom_node.spool import atomic_write_bytes
from dicom_node.spool_lock import SpoolLock
from workers.processes import terminate

logger = logging.getLogger(__name__)

#: Settings of the node as the embedded worker reads them (inside the spool).
EMBEDDED_SETTINGS_FILE = "node-settings.yaml"
#: Folder of the in-flight records, inside the spool.
INFLIGHT_DIR = Path("broker") / "inflight"
#: ``prctl`` option: signal to receive when the parent thread dies (linux/prctl.h).
PR_SET_PDEATHSIG = 1


def arm_parent_death_signal(parent_pid: int, sig: int = signal.SIGKILL) -> bool:
    """Have the kernel send `sig` to this process when its parent dies (Linux only).

    If the parent died before the request took effect (this process was re-parented),
    the process exits at once.

    Parameters
    ----------
    parent_pid : int
        The pid the parent had when it started this process.
    sig : int
        Signal to receive. Default ``SIGKILL``: a warm shutdown would wait for the running
        job while a restarted node starts over.

    Returns
    -------
    bool
        True if armed; False where ``prctl`` is unavailable (not Linux).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            logger.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent_pid:
        logger.error("the node (pid %d) died before its worker started; exiting", parent_pid)
        os._exit(1)
    return True


def spawn_worker(settings: Settings, lock: SpoolLock) -> subprocess.Popen:
    """Start ``picard-node worker`` as a child with the node's exact settings.

    The child gets ``--embedded-parent <our pid>`` (it arms its parent-death signal and
    records in-flight jobs) and inherits the spool lock's file descriptor.

    Call it from a thread that lives as long as the node (the parent-death signal fires
    when the *thread* that started the child ends).
    """
    settings_file = (settings.spool_dir / EMBEDDED_SETTINGS_FILE).resolve()
    settings_file.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICARD_")}
    env[CONFIG_PATH_ENV] = str(settings_file)
    cmd = [sys.executable, "-m", "workers.cli", "worker", "--config", str(settings_file),
           "--embedded-parent", str(os.getpid())]
    logger.info("starting embedded worker: %s", " ".join(cmd))
    return subprocess.Popen(cmd, env=env, pass_fds=(lock.fileno(),))


def stop_worker(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM (warm shutdown), then SIGKILL after `timeout` seconds."""
    terminate(proc, timeout)


@dataclass(frozen=True)
class InflightJob:
    """A job a worker received and has not finished.

    Attributes
    ----------
    task_id : str
        Celery task id.
    retries : int
        Which attempt (0 first).
    name : str
        Task name, e.g. ``"picard.analyze"``.
    path : str
        The task's argument: a series folder or a result folder.
    """

    task_id: str
    retries: int
    name: str
    path: str


class InflightRegistry:
    """The in-flight records of a spool's embedded worker (``<spool>/broker/inflight``)."""

    def __init__(self, spool_dir: Path | str) -> None:
        self.directory = Path(spool_dir) / INFLIGHT_DIR
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, task_id: str, retries: int) -> Path:
        return self.directory / f"{task_id}.{int(retries)}.json"

    def record(self, job: InflightJob) -> None:
        """Write the record of a received job."""
        atomic_write_bytes(self._path(job.task_id, job.retries),
                           json.dumps(job.__dict__).encode())

    def remove(self, task_id: str, retries: int) -> None:
        """Delete the record of a job that ended (any outcome)."""
        self._path(task_id, retries).unlink(missing_ok=True)

    def jobs(self) -> list[InflightJob]:
        """Every recorded job (unreadable records are skipped)."""
        found = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                found.append(InflightJob(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                logger.warning("skipping unreadable in-flight record %s", path.name)
        return found

    def clear(self) -> None:
        """Delete every record."""
        for path in self.directory.glob("*.json"):
            path.unlink(missing_ok=True)


def install_worker_hooks(settings: Settings, parent_pid: int) -> None:
    """Make this ``picard-node worker`` process an embedded worker of node `parent_pid`.

    Arms the parent-death signal here and in every pool process, and records in-flight
    jobs (Celery's ``task_received`` / ``task_postrun`` signals).
    """
    from celery import signals

    arm_parent_death_signal(parent_pid)
    registry = InflightRegistry(settings.spool_dir)

    def on_received(request: Any = None, **_: Any) -> None:
        args = list(getattr(request, "args", None) or [])
        retries = int((getattr(request, "request_dict", None) or {}).get("retries", 0) or 0)
        registry.record(InflightJob(str(request.id), retries, str(request.name),
                                    str(args[0]) if args else ""))

    def on_postrun(task_id: str = "", task: Any = None, **_: Any) -> None:
        retries = int(getattr(getattr(task, "request", None), "retries", 0) or 0)
        registry.remove(task_id, retries)

    def on_pool_process(**_: Any) -> None:
        arm_parent_death_signal(os.getppid())

    signals.task_received.connect(on_received, weak=False)
    signals.task_postrun.connect(on_postrun, weak=False)
    signals.worker_process_init.connect(on_pool_process, weak=False)


def requeue_inflight(registry: InflightRegistry, *,
                     series_of: Callable[[InflightJob], Any],
                     redispatch_series: Callable[[Any], None],
                     dispatch_export: Callable[[str], str]) -> int:
    """Queue again the jobs a dead worker held, then forget them.

    ``picard.analyze`` and ``picard.encode`` jobs re-dispatch their series (the whole chain;
    finished stages return at once), each series once; ``picard.export`` jobs queue the
    export of their result again.

    Parameters
    ----------
    registry : InflightRegistry
        The dead worker's records.
    series_of : callable
        ``series_of(job)`` → the job's series (a ``SeriesRef``), or ``None``.
    redispatch_series : callable
        Called once per series (it may give up on a series dispatched too often).
    dispatch_export : callable
        Called with the result folder of each export job.

    Returns
    -------
    int
        Jobs re-queued.
    """
    jobs = registry.jobs()
    seen = set()
    for job in jobs:
        logger.warning("re-queuing %s for %s: its worker died with it", job.name,
                       Path(job.path).name)
        if job.name == "picard.export":
            dispatch_export(job.path)
            continue
        ref = series_of(job)
        if ref is not None and ref not in seen:
            seen.add(ref)
            redispatch_series(ref)
    registry.clear()
    return len(jobs)
