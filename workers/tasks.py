"""Celery tasks: thin wrappers that pass references (paths), re-read inputs and retry.

``analyze`` (queue ``gpu``) → ``encode`` (queue ``io``) → ``export`` (queue ``io``), chained
with :func:`dispatch_series`. The work itself is in :mod:`workers.pipeline`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from celery import Task, chain, current_app, shared_task
from celery.exceptions import Reject

from dicom_node.config import Settings
from dicom_node.results import results_root
from dicom_node.spool import Spool
from dicom_node.volume import VolumeError

from workers import pipeline

logger = logging.getLogger(__name__)


def _settings() -> Settings:
    return current_app.conf.picard_settings


@shared_task(name="picard.analyze", bind=True, autoretry_for=(OSError,), max_retries=3,
             retry_backoff=10, retry_backoff_max=300, retry_jitter=True)
def analyze(self: Task, series_dir: str) -> str:
    """Score a spooled series; returns its result folder.

    A series that cannot be loaded (:class:`VolumeError`) is quarantined with the reason and
    the chain stops; retrying would not help.
    """
    settings = _settings()
    try:
        outcome = pipeline.analyze(Path(series_dir), results_root(settings.spool_dir),
                                   bundle=settings.model_bundle, device=settings.device)
    except VolumeError as exc:
        spool = Spool(settings.spool_dir)
        spool.quarantine_series(spool.series_ref_of(Path(series_dir)), str(exc))
        raise Reject(f"series {series_dir} quarantined: {exc}", requeue=False) from exc
    return str(outcome.result_dir)


@shared_task(name="picard.encode", bind=True, autoretry_for=(OSError,), max_retries=3,
             retry_backoff=5, retry_backoff_max=120, retry_jitter=True)
def encode(self: Task, result_dir: str) -> str:
    """Encode a result folder as DICOM objects; returns the same folder for ``export``."""
    pipeline.encode(Path(result_dir))
    return result_dir


@shared_task(name="picard.export", bind=True, max_retries=None)
def export(self: Task, result_dir: str) -> list[str]:
    """Send a result's objects to the configured destinations.

    A failure (any non-success status, a refused or dropped connection) keeps the result in
    the outbox and retries with exponential backoff; after ``dead_letter_after_seconds`` it
    moves to the dead-letter folder instead.
    """
    report = pipeline.export(Path(result_dir), _settings())
    if report.retry_in is not None:
        raise self.retry(exc=RuntimeError(report.error), countdown=report.retry_in)
    return report.sent


def dispatch_series(series_dir: str | Path) -> str:
    """Enqueue analyze → encode → export for one series; returns the job id."""
    job = chain(analyze.s(str(series_dir)), encode.s(), export.s()).apply_async()
    return job.id


def dispatch_export(result_dir: str | Path) -> str:
    """Enqueue ``export`` alone for a result folder (outbox retry, recovery)."""
    return export.apply_async((str(result_dir),)).id
