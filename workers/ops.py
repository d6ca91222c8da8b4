"""Operator commands on a node's spool: ``status``, ``retry`` and ``outbox retry``.

They read the spool (:mod:`dicom_node.inventory`, :mod:`dicom_node.outbox`) and queue jobs
through the node's broker (the embedded on-disk queue or Redis), so they work whether the
node runs or not; a stopped embedded node picks the jobs up when it starts. Both retries are
idempotent: a result that already has an export job queued, or a series that is in
progress, is left alone.
"""

from __future__ import annotations

import json
import logging

from dicom_node.config import Settings
from dicom_node.inventory import find_series, format_status, node_status, prepare_retry
from dicom_node.outbox import Outbox, OutboxState
from dicom_node.spool import Spool

from workers.celery_app import install_app

logger = logging.getLogger(__name__)


def status_report(settings: Settings, *, as_json: bool = False) -> tuple[str, bool]:
    """The text (or JSON) of ``picard-node status`` and whether anything needs attention."""
    status = node_status(settings.spool_dir, stuck_after_seconds=settings.stuck_after_seconds)
    text = (json.dumps(status.to_dict(), indent=1) if as_json else format_status(status))
    return text, status.needs_attention


def retry_exports(settings: Settings, result_ids: list[str], *, all_: bool) -> list[str]:
    """Queue export again for dead-lettered results and pending ones that have no job.

    Returns
    -------
    list of str
        One line per chosen result: the job queued, or why none was.

    Raises
    ------
    ValueError
        If a named result is in neither folder, or nothing was named and `all_` is False.
    """
    outbox = Outbox(settings.spool_dir)
    entries = outbox.entries()
    wanted = set(result_ids)
    missing = wanted - {e.result_id for e in entries}
    if missing:
        raise ValueError(f"not in the outbox or dead-letter folder: {sorted(missing)}")
    chosen = [e for e in entries if all_ or e.result_id in wanted]
    if not chosen:
        raise ValueError("name result ids to retry, or --all")
    install_app(settings)
    from workers.tasks import dispatch_export

    lines = []
    for entry in chosen:
        if entry.queued:
            lines.append(f"{entry.result_id}: export already queued as job {entry.job_id}; "
                         "not queued again")
            continue
        if entry.state is OutboxState.DEAD_LETTER:
            outbox.revive(entry.result_id)
        job = dispatch_export(entry.result_dir)  # records the job in the entry
        lines.append(f"{entry.result_id}: export queued as job {job}")
    return lines


def retry_series(settings: Settings, series_uids: list[str], *, all_: bool) -> list[str]:
    """Dispatch failed, quarantined or stuck series again (quarantined files come back).

    With `all_`, every failed and quarantined series; named series may also be stuck ones.

    Returns
    -------
    list of str
        One line per series: the job queued.

    Raises
    ------
    ValueError
        If nothing was named and `all_` is False, or a named series is not in the spool or
        cannot be retried (done, still receiving).
    """
    spool = Spool(settings.spool_dir)
    refs = [find_series(spool, uid) for uid in series_uids]
    if all_:
        refs += [r for r in spool.failed_series() if r not in refs]
    if not refs:
        raise ValueError("name series UIDs to retry, or --all (every failed series)")
    install_app(settings)
    from workers.tasks import dispatch_series

    lines = []
    for ref in refs:
        prepare_retry(spool, ref)
        job = dispatch_series(ref.directory)
        spool.mark_dispatched(ref, job)
        lines.append(f"{ref.series_uid}: queued as job {job}")
    return lines
