"""Celery tasks: thin wrappers that pass references (paths), re-read inputs and retry.

``analyze`` (queue ``gpu``) → ``encode`` (queue ``io``) → ``export`` (queue ``io``), chained
with :func:`dispatch_series`. The work itself is in :mod:`workers.pipeline`.

Every task derives from :class:`StageTask`: an error that retrying cannot fix (or an
``OSError`` that outlived its retries) marks the series failed in the spool with a reason
that names no attribute value (:func:`dicom_node.phi.describe_exception`), where
``picard-node status`` lists it and ``picard-node retry`` re-dispatches it, and ends the
chain with ``Reject``; the exception text never reaches Celery's log.
"""

from __future__ import annotations

import logging
from pathlib import Path

from typing import Any

from celery import Task, chain, current_app, shared_task
from celery.exceptions import Ignore, Reject, Retry

from dicom_node.config import Settings
from dicom_node.outbox import Outbox
from dicom_node.phi import PhiFreeError, describe_exception
from dicom_node.results import ResultFolder, results_root
from dicom_node.spool import Spool, SpoolError
from dicom_node.volume import VolumeError

from workers import pipeline

logger = logging.getLogger(__name__)


def _settings() -> Settings:
    return current_app.conf.picard_settings


class ExportPending(PhiFreeError, RuntimeError):
    """An export attempt failed and is retried later (what ``Task.retry`` raises when the
    task is called directly rather than by a worker)."""


def record_failure(stage: str, path: str, reason: str) -> None:
    """Mark the series behind `path` (a series or result folder) failed at `stage`."""
    spool = Spool(_settings().spool_dir)
    try:
        if stage == "analyze":
            ref, result_id = spool.series_ref_of(Path(path)), None
        else:
            summary = ResultFolder(path).summary()
            ref = spool.series_ref(summary["study_uid"], summary["series_uid"])
            result_id = summary.get("result_id")
            if stage == "export":  # its job is over: `outbox retry` may queue another
                Outbox(_settings().spool_dir).job_ended(Path(path).name)
        if Path(ref.directory).is_dir():
            spool.mark_failed(ref, stage=stage, reason=reason, result_id=result_id)
            return
    except (OSError, ValueError, KeyError, SpoolError) as exc:
        logger.error("cannot record the failure of %s for %s: %s", stage, path,
                     describe_exception(exc))
    logger.error("%s failed for %s (no spooled series to mark): %s", stage, path, reason)


class StageTask(Task):
    """A pipeline stage: failures end in a listed state, never silently.

    ``Retry``, ``Reject``, ``Ignore`` and :class:`ExportPending` pass through; any other
    exception (after ``autoretry_for`` gave up on it) is recorded with
    :func:`record_failure` and turned into ``Reject(requeue=False)`` carrying a PHI-free
    reason, raised without the original exception attached.
    """

    #: Stage name recorded with a failure.
    stage: str = ""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except (Retry, Reject, Ignore, ExportPending):
            raise
        except Exception as exc:  # noqa: BLE001 - every failure must end in a listed state
            reason = describe_exception(exc)
            path = str(args[0]) if args else str(kwargs.get("series_dir")
                                                 or kwargs.get("result_dir") or "")
            record_failure(self.stage, path, reason)
        raise Reject(f"{self.name} failed: {reason}", requeue=False)


@shared_task(name="picard.analyze", bind=True, base=StageTask, stage="analyze",
             autoretry_for=(OSError,), max_retries=3, retry_backoff=10, retry_backoff_max=300,
             retry_jitter=True)
def analyze(self: Task, series_dir: str) -> str:
    """Score a spooled series; returns its result folder.

    A series that cannot be loaded (:class:`VolumeError`) is quarantined with the reason and
    the chain stops; retrying would not help.
    """
    settings = _settings()
    try:
        outcome = pipeline.analyze(Path(series_dir), results_root(settings.spool_dir),
                                   bundle=settings.model_bundle, device=settings.device,
                                   mode=settings.inference_mode)
    except VolumeError as exc:
        spool = Spool(settings.spool_dir)
        spool.quarantine_series(spool.series_ref_of(Path(series_dir)), str(exc))
        raise Reject(f"series {series_dir} quarantined: {exc}", requeue=False) from None
    return str(outcome.result_dir)


@shared_task(name="picard.encode", bind=True, base=StageTask, stage="encode",
             autoretry_for=(OSError,), max_retries=3, retry_backoff=5, retry_backoff_max=120,
             retry_jitter=True)
def encode(self: Task, result_dir: str) -> str:
    """Encode a result folder as DICOM objects; returns the same folder for ``export``.

    Earlier results of the same series are withdrawn by a rejection note encoded with this
    one; a result whose series changed after scoring is not encoded (a newer job covers it).
    """
    settings = _settings()
    pipeline.encode(Path(result_dir), spool_dir=Path(settings.spool_dir),
                    kinds=settings.result_kinds)
    return result_dir


@shared_task(name="picard.export", bind=True, base=StageTask, stage="export",
             max_retries=None)
def export(self: Task, result_dir: str) -> list[str]:
    """Send a result's objects to the configured destinations.

    A failure (any non-success status, a refused or dropped connection) keeps the result in
    the outbox and retries with exponential backoff; after ``dead_letter_after_seconds`` it
    moves to the dead-letter folder instead.
    """
    report = pipeline.export(Path(result_dir), _settings(), job_id=self.request.id)
    if report.retry_in is not None:
        raise self.retry(exc=ExportPending(report.error), countdown=report.retry_in)
    return report.sent


def dispatch_series(series_dir: str | Path) -> str:
    """Enqueue analyze → encode → export for one series; returns the job id."""
    job = chain(analyze.s(str(series_dir)), encode.s(), export.s()).apply_async()
    return job.id


def dispatch_export(result_dir: str | Path) -> str:
    """Enqueue ``export`` alone for a result folder (outbox retry, recovery).

    The job id is recorded in the result's outbox entry, if it has one, so a second
    ``outbox retry`` sees the job and does not queue another.
    """
    job_id = export.apply_async((str(result_dir),)).id
    outbox = Outbox(_settings().spool_dir)
    entry = outbox.get(Path(result_dir).name)
    if entry is not None and entry.state == "pending":
        outbox.queued(entry.result_id, job_id)
    return job_id


def dispatch_encode(result_dir: str | Path) -> str:
    """Enqueue encode → export for an analyzed result folder; returns the job id."""
    return chain(encode.s(str(result_dir)), export.s()).apply_async().id


#: How a job of each task is queued again when its worker died with it (see
#: :mod:`workers.embedded`): the rest of its chain comes with it.
REQUEUE = {"picard.analyze": dispatch_series, "picard.encode": dispatch_encode,
           "picard.export": dispatch_export}
