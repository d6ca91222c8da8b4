"""The Celery application: queues, routing, reliability settings.

Two brokers, one task code:

- ``PICARD_BROKER_URL=redis://...``: the node only enqueues; ``picard-node worker`` processes
  run anywhere that sees the same spool folder.
- no broker URL: an embedded worker with kombu's filesystem transport under
  ``<spool>/broker``; queued jobs are plain files and survive a restart.

Queues: ``gpu`` for ``analyze``, ``io`` for ``encode`` and ``export``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from celery import Celery

from dicom_node.config import Settings, load_settings

logger = logging.getLogger(__name__)

GPU_QUEUE = "gpu"
IO_QUEUE = "io"


def broker_folders(spool_dir: Path) -> dict[str, Path]:
    """Folders of the embedded on-disk broker inside the spool."""
    base = Path(spool_dir) / "broker"
    return {"queue": base / "queue", "processed": base / "processed", "control": base / "control"}


def make_celery(settings: Settings) -> Celery:
    """Build the Celery app for these settings.

    Parameters
    ----------
    settings : Settings
        The node configuration; ``broker_url`` selects Redis or the on-disk broker.

    Returns
    -------
    Celery
    """
    app = Celery("picard_node", include=["workers.tasks"])
    if settings.embedded:
        folders = broker_folders(settings.spool_dir)
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        app.conf.broker_url = "filesystem://"
        app.conf.broker_transport_options = {
            "data_folder_in": str(folders["queue"]),
            "data_folder_out": str(folders["queue"]),
            "processed_folder": str(folders["processed"]),
            "store_processed": False,
            "control_folder": str(folders["control"]),
        }
    else:
        app.conf.broker_url = settings.broker_url
        # Redelivery of unacknowledged jobs when a worker dies; must exceed the longest job.
        app.conf.broker_transport_options = {
            "visibility_timeout": settings.visibility_timeout_seconds}
    app.conf.update(
        task_routes={
            "picard.analyze": {"queue": GPU_QUEUE},
            "picard.encode": {"queue": IO_QUEUE},
            "picard.export": {"queue": IO_QUEUE},
        },
        task_default_queue=IO_QUEUE,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # Tasks are idempotent (keyed by UIDs), so a job whose worker died is run again.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        worker_send_task_events=False,
    )
    app.conf.picard_settings = settings
    return app


_app: Celery | None = None


def get_app() -> Celery:
    """The process-wide app, configured from ``$PICARD_CONFIG`` / ``PICARD_*`` on first use."""
    global _app
    if _app is None:
        _app = make_celery(load_settings())
    return _app


def set_app(app: Celery) -> None:
    """Install ``app`` as the process-wide app (the CLI does this after parsing options)."""
    global _app
    _app = app


def install_app(settings: Settings) -> Celery:
    """Build the app for `settings` and make it the one every thread of this process uses.

    ``set_default`` as well as ``set_current``: ``current_app`` is thread-local, and the
    SCP's series tracker dispatches from its own thread.
    """
    app = make_celery(settings)
    app.set_default()
    app.set_current()
    set_app(app)
    return app
