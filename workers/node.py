"""Run the node: Celery set-up, recovery of unfinished work, the storage SCP, the embedded worker.

``picard-node serve`` is :func:`serve`. The SCP announces each complete series through a
callback wired here to :func:`workers.tasks.dispatch_series`; without a broker URL an embedded
``picard-node worker`` child process works the on-disk queue under the spool.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import yaml

from dicom_node.config import CONFIG_PATH_ENV, Settings
from dicom_node.outbox import Outbox, OutboxState
from dicom_node.scp import StorageSCP
from dicom_node.series import unfinished_series
from dicom_node.spool import SeriesRef, Spool

from workers.celery_app import install_app

logger = logging.getLogger(__name__)

#: Settings of the node as the embedded worker reads them (inside the spool).
EMBEDDED_SETTINGS_FILE = "node-settings.yaml"


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
    """
    settings.spool_dir.mkdir(parents=True, exist_ok=True)
    install_app(settings)
    from workers.tasks import dispatch_export, dispatch_series

    spool = Spool(settings.spool_dir)

    def on_series_complete(ref: SeriesRef) -> None:
        job_id = dispatch_series(ref.directory)
        spool.mark_dispatched(ref, job_id)
        logger.info("series %s queued as job %s", ref.series_uid, job_id)

    # What a previous run left unfinished, listed before the SCP can add new series.
    leftover_series = unfinished_series(spool, embedded_broker=settings.embedded)
    leftover_exports = _lost_embedded_exports(settings) if settings.embedded else []
    # The SCP starts first: a bad TLS file or allow-list entry stops the node before anything.
    scp = StorageSCP(settings, on_series_complete)
    scp.start()
    worker = _spawn_embedded_worker(settings) if settings.embedded else None
    for ref in leftover_series:
        logger.info("re-dispatching series %s left unfinished by a previous run", ref.series_uid)
        on_series_complete(ref)
    for result_dir in leftover_exports:
        logger.info("re-queuing export of %s from the outbox", Path(result_dir).name)
        dispatch_export(result_dir)
    print(json.dumps({"event": "listening", "ae_title": settings.ae_title, "port": scp.port,
                      "embedded_worker": settings.embedded}), flush=True)
    if stop is None:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            if worker is not None and worker.poll() is not None:
                logger.error("embedded worker exited with %s; restarting it", worker.returncode)
                worker = _spawn_embedded_worker(settings)
    finally:
        scp.stop()
        if worker is not None:
            _stop_process(worker)
    return 0


def _lost_embedded_exports(settings: Settings) -> list[str]:
    """Result folders whose export the on-disk broker may have lost with a killed worker.

    The filesystem transport removes a message when a worker takes it, so an export in
    flight (or waiting for a retry countdown) when the node died is gone; export is
    idempotent, so queuing undelivered outbox entries again is safe.
    """
    return [e.result_dir for e in Outbox(settings.spool_dir).entries()
            if e.state is OutboxState.PENDING]


def _spawn_embedded_worker(settings: Settings) -> subprocess.Popen:
    """Start ``picard-node worker`` as a child with the node's exact settings."""
    settings_file = (settings.spool_dir / EMBEDDED_SETTINGS_FILE).resolve()
    settings_file.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICARD_")}
    env[CONFIG_PATH_ENV] = str(settings_file)
    cmd = [sys.executable, "-m", "workers.cli", "worker", "--config", str(settings_file)]
    logger.info("starting embedded worker: %s", " ".join(cmd))
    return subprocess.Popen(cmd, env=env)


def _stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def run_worker(settings: Settings, *, queues: str, concurrency: int | None, pool: str,
               log_level: str) -> int:
    """Run a Celery worker on `queues` (``picard-node worker``); returns when it stops."""
    app = install_app(settings)
    import workers.tasks  # noqa: F401  (registers the tasks)

    argv = ["worker", "-Q", queues, "-c", str(concurrency or settings.worker_concurrency),
            "-P", pool, "--loglevel", log_level.upper(),
            "-n", f"picard-{os.getpid()}@%h", "--without-gossip", "--without-mingle"]
    app.worker_main(argv)
    return 0
