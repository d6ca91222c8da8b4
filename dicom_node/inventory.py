"""Where every accepted series stands: the view behind ``picard-node status`` and ``retry``.

Every instance the SCP answered with success belongs to a series that is, at any time, in
exactly one of these places (all read from the spool, so the view works while the node
runs, after it stopped, and from another process):

* **receiving** / **complete**: instances arriving, or waiting to be dispatched;
* **in progress**: dispatched to a job less than ``stuck_after_seconds`` ago;
* **stuck**: dispatched longer ago than that, with no outcome (the node's watchdog
  dispatches it again, :func:`dicom_node.series.stuck_series`);
* **failed** (a stage ended without a result; the reason names no attribute value) or
  **quarantined** (its files could not be loaded and were moved aside);
* **waiting in the outbox** (delivery retried with backoff) or **dead-lettered**;
* **done**: delivered to every destination (not listed).

:func:`prepare_retry` puts failed, quarantined or stuck series back to *complete* (bringing
quarantined files back) for the caller to dispatch.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dicom_node.outbox import Outbox, OutboxEntry
from dicom_node.results import series_in_outbox
from dicom_node.series import stuck_series
from dicom_node.spool import SeriesRef, SeriesState, Spool


@dataclass(frozen=True)
class SeriesStatus:
    """One listed series.

    Attributes
    ----------
    study_uid, series_uid : str
        The series.
    state : str
        ``"failed"``, ``"quarantined"``, ``"stuck"``, ``"in progress"``, ``"receiving"``
        or ``"complete"``.
    since : float
        Unix time of the state marker.
    stage : str
        Failed stage (``analyze``, ``encode``, ``export``, ``watchdog``), "" otherwise.
    reason : str
        Why it failed ("" otherwise).
    job_id : str or None
        The last job dispatched for it.
    dispatches : int
        Dispatches of this round.
    instances : int
        Instance files in its spool folder.
    """

    study_uid: str
    series_uid: str
    state: str
    since: float
    stage: str = ""
    reason: str = ""
    job_id: str | None = None
    dispatches: int = 0
    instances: int = 0


@dataclass
class NodeStatus:
    """Everything ``picard-node status`` lists.

    Attributes
    ----------
    failed : list of SeriesStatus
        Failed and quarantined series (retry with ``picard-node retry``).
    stuck : list of SeriesStatus
        Dispatched longer than ``stuck_after_seconds`` ago, no outcome yet.
    in_progress : list of SeriesStatus
        Dispatched recently.
    open : list of SeriesStatus
        Receiving, or complete and not dispatched yet.
    outbox : list of OutboxEntry
        Results waiting for delivery or dead-lettered (``picard-node outbox``).
    refused_instances : int
        Instances refused at receive time (the sender got a failure status) still in the
        quarantine folder.
    """

    failed: list[SeriesStatus] = field(default_factory=list)
    stuck: list[SeriesStatus] = field(default_factory=list)
    in_progress: list[SeriesStatus] = field(default_factory=list)
    open: list[SeriesStatus] = field(default_factory=list)
    outbox: list[OutboxEntry] = field(default_factory=list)
    refused_instances: int = 0

    @property
    def needs_attention(self) -> bool:
        """Something failed, is stuck or is dead-lettered."""
        return bool(self.failed or self.stuck
                    or any(e.state == "dead-letter" for e in self.outbox))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        out = {name: [asdict(s) for s in getattr(self, name)]
               for name in ("failed", "stuck", "in_progress", "open")}
        out["outbox"] = [asdict(e) for e in self.outbox]
        out["refused_instances"] = self.refused_instances
        return out


def _entry(spool: Spool, ref: SeriesRef, state: str, marker: SeriesState) -> SeriesStatus:
    body = spool.read_marker(ref, marker) or {}
    dispatched = spool.read_marker(ref, SeriesState.DISPATCHED) or {}
    if state == "failed" and body.get("quarantined"):
        state = "quarantined"
    return SeriesStatus(
        study_uid=ref.study_uid, series_uid=ref.series_uid, state=state,
        since=float(body.get("time", 0.0)), stage=str(body.get("stage", "")),
        reason=str(body.get("reason", "")), job_id=dispatched.get("job_id"),
        dispatches=int(dispatched.get("dispatches", 0)),
        instances=len(spool.series_files(ref)))


def node_status(spool_dir: Path | str, *, stuck_after_seconds: float,
                now: float | None = None) -> NodeStatus:
    """Read the state of every unfinished series and the outbox from the spool.

    Parameters
    ----------
    spool_dir : Path or str
        The node's spool.
    stuck_after_seconds : float
        ``Settings.stuck_after_seconds``.
    now : float, optional
        Unix time to judge "stuck" against (default: now).

    Returns
    -------
    NodeStatus
    """
    spool = Spool(spool_dir)
    now = time.time() if now is None else now
    status = NodeStatus(outbox=Outbox(spool_dir).entries())
    waiting = series_in_outbox(spool_dir)
    stuck = {s.ref for s in stuck_series(spool, older_than=stuck_after_seconds, now=now,
                                         waiting=waiting)}
    listed_quarantine: set[str] = set()
    for ref in spool.all_series():
        state = spool.state(ref)
        if state is SeriesState.FAILED:
            entry = _entry(spool, ref, "failed", SeriesState.FAILED)
            status.failed.append(entry)
            failure = spool.read_marker(ref, SeriesState.FAILED) or {}
            listed_quarantine.update(Path(p).name for p in (failure.get("quarantined") or {})
                                     .values())
        elif state is SeriesState.DISPATCHED:
            if ref in stuck:
                status.stuck.append(_entry(spool, ref, "stuck", SeriesState.DISPATCHED))
            elif (ref.study_uid, ref.series_uid) not in waiting:
                status.in_progress.append(_entry(spool, ref, "in progress",
                                                 SeriesState.DISPATCHED))
        elif state is SeriesState.RECEIVED:
            status.open.append(_entry(spool, ref, "receiving", SeriesState.RECEIVED))
        elif state is SeriesState.COMPLETE:
            status.open.append(_entry(spool, ref, "complete", SeriesState.COMPLETE))
    status.refused_instances = sum(
        1 for p in spool.quarantine_dir.glob("*.dcm") if p.name not in listed_quarantine)
    return status


def format_status(status: NodeStatus, *, now: float | None = None) -> str:
    """``picard-node status`` as text: one line per listed series and outbox entry."""
    now = time.time() if now is None else now
    lines = []
    groups = (("failed / quarantined", status.failed), ("stuck", status.stuck),
              ("in progress", status.in_progress), ("receiving / waiting", status.open))
    for title, entries in groups:
        lines.append(f"{title}: {len(entries)}")
        for s in entries:
            detail = f"  {s.stage}: {s.reason}" if s.reason else ""
            job = f"  job {s.job_id} (dispatch {s.dispatches})" if s.job_id else ""
            lines.append(f"  {s.series_uid}  {s.state:<11} {now - s.since:8.0f} s  "
                         f"{s.instances} instance(s){job}{detail}")
    lines.append(f"outbox: {len(status.outbox)}")
    for e in status.outbox:
        lines.append(f"  {e.result_id}  {e.state:<11} attempts {e.attempts:<3} "
                     f"age {now - e.first_attempt:8.0f} s  {e.last_error[:100]}")
    lines.append(f"instances refused at receive time (in quarantine/): "
                 f"{status.refused_instances}")
    return "\n".join(lines)


def find_series(spool: Spool, series_uid: str) -> SeriesRef:
    """The spooled series with this Series Instance UID.

    Raises
    ------
    ValueError
        If no series folder has that UID.
    """
    for ref in spool.all_series():
        if ref.series_uid == series_uid:
            return ref
    raise ValueError(f"no series {series_uid!r} in the spool {str(spool.root)!r}")


def prepare_retry(spool: Spool, ref: SeriesRef) -> SeriesRef:
    """Put a failed, quarantined or stuck series back to *complete*, ready to dispatch.

    Quarantined files move back into the series folder first.

    Raises
    ------
    ValueError
        If the series is done, still receiving, or has no instance files.
    """
    state = spool.state(ref)
    if state not in (SeriesState.FAILED, SeriesState.DISPATCHED, SeriesState.COMPLETE):
        raise ValueError(f"series {ref.series_uid} is {state or 'unknown'}; only failed, "
                         "quarantined, stuck or undispatched series are retried")
    if state is SeriesState.FAILED:
        spool.restore_quarantined(ref)
    if not spool.series_files(ref):
        raise ValueError(f"series {ref.series_uid} has no instance files to retry")
    spool.mark_complete(ref, reason="retry")
    return ref
