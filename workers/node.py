"""Run the node: Celery set-up, recovery of unfinished work, the storage SCP, the embedded
worker and the watchdog.

``picard-node serve`` is :func:`serve`. The SCP announces each complete series through a
callback wired here to :func:`workers.tasks.dispatch_series`; without a broker URL an embedded
``picard-node worker`` child process works the on-disk queue under the spool
(:mod:`workers.embedded`: it dies with the node, holds the spool lock with it, and its
in-flight jobs are re-queued if it dies alone). While the node runs, a watchdog dispatches
again every series dispatched longer than ``stuck_after_seconds`` ago without an outcome,
and marks it failed after :data:`~dicom_node.series.MAX_DISPATCHES` dispatches.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

from dicom_node.config import Settings
from dicom_node.outbox import Outbox, OutboxState
from dicom_node.phi import describe_exception
from dicom_node.results import ResultFolder, series_in_outbox
from dicom_node.scp import StorageSCP
from dicom_node.series import MAX_DISPATCHES, stuck_series, unfinished_series
from dicom_node.spool import SeriesRef, SeriesState, Spool, SpoolError
from dicom_node.spool_lock import SpoolLock

from workers.celery_app import install_app
from workers.embedded import (InflightJob, InflightRegistry, install_worker_hooks,
                              requeue_inflight, spawn_worker, stop_worker)

logger = logging.getLogger(__name__)

#: Longest pause between two watchdog rounds, seconds.
WATCHDOG_PERIOD_MAX = 60.0


class Dispatcher:
    """Hands series to the job queue and records it in the spool (the SCP's callback).

    Parameters
    ----------
    settings : Settings
        The node configuration.
    """

    def __init__(self, settings: Settings) -> None:
        from workers.tasks import dispatch_export, dispatch_series

        self.settings = settings
        self.spool = Spool(settings.spool_dir)
        self._dispatch_series = dispatch_series
        self.dispatch_export = dispatch_export

    def __call__(self, ref: SeriesRef) -> None:
        """Queue analyze → encode → export for a complete series."""
        job_id = self._dispatch_series(ref.directory)
        self.spool.mark_dispatched(ref, job_id)
        logger.info("series %s queued as job %s", ref.series_uid, job_id)

    def redispatch(self, ref: SeriesRef, why: str) -> None:
        """Dispatch a series again, or mark it failed once dispatched too often."""
        marker = self.spool.read_marker(ref, SeriesState.DISPATCHED) or {}
        count = int(marker.get("dispatches", 0))
        if count >= MAX_DISPATCHES:
            self.spool.mark_failed(ref, stage="watchdog",
                                   reason=f"no outcome after {count} dispatches ({why})")
            return
        logger.warning("dispatching series %s again: %s", ref.series_uid, why)
        self(ref)

    def watchdog(self) -> int:
        """One watchdog round; returns how many stuck series it handled."""
        stuck = stuck_series(self.spool, older_than=self.settings.stuck_after_seconds,
                             waiting=series_in_outbox(self.settings.spool_dir))
        for item in stuck:
            self.redispatch(item.ref, f"job {item.job_id} gave no outcome in "
                                      f"{item.seconds:.0f} s")
        return len(stuck)

    def series_of(self, job: InflightJob) -> SeriesRef | None:
        """The series an in-flight analyze or encode job worked on."""
        try:
            if job.name == "picard.analyze":
                return self.spool.series_ref_of(Path(job.path))
            summary = ResultFolder(job.path).summary()
            return self.spool.series_ref(summary["study_uid"], summary["series_uid"])
        except (OSError, ValueError, KeyError, SpoolError) as exc:
            logger.error("cannot find the series of in-flight job %s: %s", job.task_id,
                         describe_exception(exc))
            return None


def serve(settings: Settings, *, stop: threading.Event | None = None) -> int:
    """Run the node until `stop` is set (or SIGTERM/SIGINT when `stop` is None).

    Parameters
    ----------
    settings : Settings
        The node configuration.
    stop : threading.Event, optional
        Set it to stop the node; by default SIGTERM and SIGINT set it.

    Returns
    -------
    int
        Process exit code.

    Raises
    ------
    dicom_node.spool_lock.SpoolInUseError
        Embedded mode: another node (or its orphaned worker) holds the spool.
    """
    settings.spool_dir.mkdir(parents=True, exist_ok=True)
    lock = SpoolLock(settings.spool_dir)
    if settings.embedded:
        lock.acquire()
    try:
        return _serve_locked(settings, lock, stop)
    finally:
        lock.release()


def _serve_locked(settings: Settings, lock: SpoolLock, stop: threading.Event | None) -> int:
    install_app(settings)
    dispatch = Dispatcher(settings)
    inflight = InflightRegistry(settings.spool_dir) if settings.embedded else None
    # What a previous run left unfinished, listed before the SCP can add new series. With
    # the embedded broker this covers every job the dead worker held (its records go).
    leftover_series = unfinished_series(dispatch.spool, embedded_broker=settings.embedded)
    leftover_exports = _lost_embedded_exports(settings) if settings.embedded else []
    if inflight is not None:
        inflight.clear()
    # The SCP starts first: a bad TLS file or allow-list entry stops the node before anything.
    scp = StorageSCP(settings, dispatch)
    scp.start()
    worker = spawn_worker(settings, lock) if settings.embedded else None
    for ref in leftover_series:
        if dispatch.spool.state(ref) is SeriesState.DISPATCHED:
            dispatch.redispatch(ref, "left unfinished by a previous run")
        else:
            logger.info("dispatching series %s completed by a previous run", ref.series_uid)
            dispatch(ref)
    for result_dir in leftover_exports:
        logger.info("re-queuing export of %s from the outbox", Path(result_dir).name)
        dispatch.dispatch_export(result_dir)
    print(json.dumps({"event": "listening", "ae_title": settings.ae_title, "port": scp.port,
                      "embedded_worker": settings.embedded,
                      "worker_pid": worker.pid if worker is not None else None}), flush=True)
    if stop is None:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    period = min(WATCHDOG_PERIOD_MAX, max(1.0, settings.stuck_after_seconds / 10.0))
    next_watch = time.monotonic() + period
    try:
        while not stop.wait(1.0):
            if worker is not None and worker.poll() is not None:
                logger.error("embedded worker exited with %s; re-queuing its jobs and "
                             "restarting it", worker.returncode)
                requeue_inflight(inflight, series_of=dispatch.series_of,  # type: ignore[arg-type]
                                 redispatch_series=lambda ref: dispatch.redispatch(
                                     ref, "its worker died"),
                                 dispatch_export=dispatch.dispatch_export)
                worker = spawn_worker(settings, lock)
            if time.monotonic() >= next_watch:
                next_watch = time.monotonic() + period
                _watch(dispatch)
    finally:
        scp.stop()
        if worker is not None:
            stop_worker(worker)
    return 0


def _watch(dispatch: Dispatcher) -> None:
    try:
        dispatch.watchdog()
    except Exception as exc:  # noqa: BLE001 - the watchdog must never stop the node
        logger.error("watchdog round failed: %s", describe_exception(exc), exc_info=True)


def _lost_embedded_exports(settings: Settings) -> list[str]:
    """Result folders whose export the on-disk broker may have lost with a killed worker.

    The filesystem transport removes a message when a worker takes it, so an export in
    flight (or waiting for a retry countdown) when the node died is gone; export is
    idempotent, so queuing undelivered outbox entries again is safe.
    """
    return [e.result_dir for e in Outbox(settings.spool_dir).entries()
            if e.state is OutboxState.PENDING]


def run_worker(settings: Settings, *, queues: str, concurrency: int | None, pool: str,
               log_level: str, embedded_parent: int | None = None) -> int:
    """Run a Celery worker on `queues` (``picard-node worker``); returns when it stops.

    Parameters
    ----------
    settings : Settings
        The node configuration.
    queues : str
        Comma-separated queue names, e.g. ``"gpu,io"``.
    concurrency : int or None
        Pool processes (default ``settings.worker_concurrency``).
    pool : str
        ``prefork``, ``solo`` or ``threads``.
    log_level : str
        Celery log level.
    embedded_parent : int, optional
        Pid of the node that started this worker as its embedded worker (see
        :mod:`workers.embedded`). A worker started by hand on an embedded spool takes the
        spool lock instead, and refuses to start while a node holds it.

    Raises
    ------
    dicom_node.spool_lock.SpoolInUseError
        A worker started by hand on a spool a node is working.
    """
    lock = SpoolLock(settings.spool_dir)
    if embedded_parent is not None:
        install_worker_hooks(settings, embedded_parent)
    elif settings.embedded:
        lock.acquire()
    app = install_app(settings)
    import workers.tasks  # noqa: F401  (registers the tasks)

    argv = ["worker", "-Q", queues, "-c", str(concurrency or settings.worker_concurrency),
            "-P", pool, "--loglevel", log_level.upper(),
            "-n", f"picard-{os.getpid()}@%h", "--without-gossip", "--without-mingle"]
    try:
        app.worker_main(argv)
    finally:
        lock.release()
    return 0
