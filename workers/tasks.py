"""Celery tasks: thin wrappers that pass references (paths), re-read inputs and retry.

``analyze`` (queue ``gpu``) → ``encode`` (queue ``io``) → ``export`` (queue ``io``), chained
with :func:`dispatch_series`. The work itself is in :mod:`workers.pipeline`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from celery import Task, chain, current_app, shared_task

from dicom_node.config import Settings
from dicom_node.scu import ExportError

from workers import pipeline

logger = logging.getLogger(__name__)


def _settings() -> Settings:
    return current_app.conf.picard_settings


@shared_task(name="picard.analyze", bind=True, max_retries=3, default_retry_delay=10)
def analyze(self: Task, series_dir: str) -> str:
    """Score a spooled series; returns its result folder."""
    settings = _settings()
    outcome = pipeline.analyze(Path(series_dir), Path(settings.spool_dir) / "results",
                               bundle=settings.model_bundle, device=settings.device)
    return str(outcome.result_dir)


@shared_task(name="picard.encode", bind=True, max_retries=3, default_retry_delay=5)
def encode(self: Task, result_dir: str) -> str:
    """Encode a result folder as DICOM objects; returns the same folder for ``export``."""
    pipeline.encode(Path(result_dir))
    return result_dir


@shared_task(name="picard.export", bind=True, autoretry_for=(ExportError, OSError),
             retry_backoff=5, retry_backoff_max=600, retry_jitter=True, max_retries=12)
def export(self: Task, result_dir: str) -> list[str]:
    """Send a result folder's objects to the configured destinations (retried with backoff)."""
    settings = _settings()
    if not settings.destinations:
        logger.info("no destinations configured; results stay in %s", result_dir)
        return []
    return pipeline.export(Path(result_dir), settings.destinations, settings.ae_title)


def dispatch_series(series_dir: str | Path) -> str:
    """Enqueue analyze → encode → export for one series; returns the job id."""
    job = chain(analyze.s(str(series_dir)), encode.s(), export.s()).apply_async()
    return job.id
