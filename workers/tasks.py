"""Celery tasks: thin wrappers that pass references (paths), re-read inputs and retry.

``analyze`` (queue ``gpu``) → ``encode`` (queue ``io``) → ``export`` (queue ``io``), chained
with :func:`dispatch_series`. The work itself is in :mod:`workers.pipeline`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from celery import Task, chain, current_app, shared_task
from celery.exceptions import Reject

from dicom_node.audit import AuditLog
from dicom_node.config import Settings
from dicom_node.outbox import Outbox
from dicom_node.scu import ExportError
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
        outcome = pipeline.analyze(Path(series_dir), Path(settings.spool_dir) / "results",
                                   bundle=settings.model_bundle, device=settings.device)
    except VolumeError as exc:
        pipeline.quarantine_series(Path(series_dir), settings.spool_dir, str(exc))
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
    settings = _settings()
    if not settings.destinations:
        logger.info("no destinations configured; results stay in %s", result_dir)
        return []
    outbox = Outbox(settings.spool_dir)
    result_id = Path(result_dir).name
    entry = outbox.open(result_id, result_dir)
    if entry.state == "dead-letter":
        logger.warning("result %s is dead-lettered; `picard-node outbox retry` resends it",
                       result_id)
        return []
    try:
        sent = pipeline.export(Path(result_dir), settings.destinations, settings.ae_title,
                               audit=AuditLog(settings.spool_dir))
    except (ExportError, ValueError, OSError) as exc:
        entry = outbox.record_failure(result_id, f"{type(exc).__name__}: {exc}")
        if time.time() - entry.first_attempt >= settings.dead_letter_after_seconds:
            outbox.dead_letter(result_id)
            return []
        delay = min(settings.export_retry_max_seconds,
                    settings.export_retry_base_seconds * 2 ** (entry.attempts - 1))
        logger.warning("export of %s failed (attempt %d), retrying in %.0f s: %s",
                       result_id, entry.attempts, delay, exc)
        raise self.retry(exc=exc, countdown=delay)
    outbox.delivered(result_id)
    pipeline.mark_series_done(Path(result_dir), settings.spool_dir)
    return sent


def dispatch_series(series_dir: str | Path) -> str:
    """Enqueue analyze → encode → export for one series; returns the job id."""
    job = chain(analyze.s(str(series_dir)), encode.s(), export.s()).apply_async()
    return job.id


def dispatch_export(result_dir: str | Path) -> str:
    """Enqueue ``export`` alone for a result folder (outbox retry, recovery)."""
    return export.apply_async((str(result_dir),)).id
