"""When a received series is complete, and the recovery paths for unfinished series.

This module owns the series-completeness state machine of the storage SCP
(:class:`SeriesTracker`), what a restarted node re-dispatches (:func:`unfinished_series`)
and what the node's watchdog re-dispatches while it runs (:func:`stuck_series`).

A series is complete

* at once, when a multi-frame instance (``NumberOfFrames > 1``, e.g. one Breast
  Tomosynthesis Image) arrives;
* otherwise after ``Settings.series_quiet_seconds`` without a new instance of the series
  (a quiet-period monitor thread, as in mercure's router);
* or, when ``Settings.series_release_grace_seconds`` is set, that many seconds after the
  association that sent its last instance was released normally (a sender that sends one
  series per association need not wait out the quiet period; an instance arriving later
  reopens the series, and the result of the earlier round is withdrawn).

Then ``on_series_complete(SeriesRef)`` runs once, in the monitor thread. An exception from
it is logged and the call is retried later with backoff (at most :data:`MAX_RETRY_SECONDS`
apart); the series stays ``complete`` in the spool (see
:meth:`dicom_node.spool.Spool.pending_series`). The callback is expected to record the job
with :meth:`~dicom_node.spool.Spool.mark_dispatched`. A new instance of a complete series
reopens it (its quiet period starts again); the same instance again changes nothing.

The state of every series is kept in the spool's markers, so a restart loses nothing:
:meth:`SeriesTracker.start` resumes the quiet period of series that were still open, and
:func:`unfinished_series` lists the series a previous run completed but did not see through,
for the node to dispatch again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from dicom_node.spool import SeriesRef, SeriesState, Spool, StoredInstance

logger = logging.getLogger(__name__)

#: Longest wait between retries of a failing series callback, seconds.
MAX_RETRY_SECONDS = 300.0
#: Dispatches of one round after which the watchdog marks a stuck series failed.
MAX_DISPATCHES = 3


@dataclass
class _SeriesEntry:
    ref: SeriesRef
    last_activity: float
    state: str = "open"  # "open" | "complete" (waiting for / in the callback)
    release_deadline: float | None = None  # complete then (its association was released)
    attempts: int = 0
    next_try: float = 0.0


class SeriesTracker:
    """Decides when spooled series are complete and announces each one once.

    Parameters
    ----------
    spool : Spool
        The spool holding the series; its markers record every state change.
    on_series_complete : callable
        Called as ``on_series_complete(ref)`` once per complete series, in the monitor
        thread. Exceptions are logged and the call is retried later with backoff.
    quiet_seconds : float
        Seconds without a new instance after which a series of single-frame instances is
        complete.
    release_grace_seconds : float or None
        Seconds after the normal release of the association that sent a series' last
        instance after which the series is complete (sooner than the quiet period); None
        (default): the quiet period only.
    """

    def __init__(self, spool: Spool, on_series_complete: Callable[[SeriesRef], Any], *,
                 quiet_seconds: float, release_grace_seconds: float | None = None) -> None:
        self.spool = spool
        self.on_series_complete = on_series_complete
        self.quiet_seconds = float(quiet_seconds)
        self.release_grace_seconds = release_grace_seconds
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str], _SeriesEntry] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None

    def start(self) -> None:
        """Resume series a previous run left open and start the monitor thread."""
        now = time.monotonic()
        with self._lock:
            for ref in self.spool.open_series():
                logger.info("series %s was still open at the last stop; quiet period restarts",
                            ref.series_uid)
                self._series[(ref.study_uid, ref.series_uid)] = _SeriesEntry(ref, now)
        self._stop.clear()
        self._monitor = threading.Thread(target=self._run_monitor, name="scp-series-monitor",
                                         daemon=True)
        self._monitor.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the monitor thread (waits up to `timeout` seconds for a running callback)."""
        self._stop.set()
        self._wake.set()
        if self._monitor is not None:
            self._monitor.join(timeout=timeout)
            self._monitor = None

    def note_instance(self, stored: StoredInstance, *, multi_frame: bool) -> None:
        """Update the series state after an instance is durably in the spool.

        Parameters
        ----------
        stored : StoredInstance
            What :meth:`~dicom_node.spool.Spool.adopt_file` returned.
        multi_frame : bool
            The instance has more than one frame: its series is complete at once.

        Raises
        ------
        OSError
            If a state marker cannot be written.
        """
        ref = stored.series
        key = (ref.study_uid, ref.series_uid)
        now = time.monotonic()
        with self._lock:
            entry = self._series.get(key)
            if entry is None:
                state = self.spool.state(ref)
                if state not in (None, "received"):
                    if stored.duplicate:
                        return  # same instance again: nothing changes
                    logger.warning("series %s was %s; a new instance arrived, so it reopens",
                                   ref.series_uid, state)
                    self.spool.reopen(ref)
                self.spool.mark_received(ref)
                entry = _SeriesEntry(ref, now)
                self._series[key] = entry
            elif entry.state == "complete" and not stored.duplicate and not multi_frame:
                logger.warning("series %s got a new instance after completion; it reopens",
                               ref.series_uid)
                self.spool.reopen(ref)
                self.spool.mark_received(ref)
                entry.state = "open"
            entry.last_activity = now
            entry.release_deadline = None
            if multi_frame and entry.state == "open":
                self._complete(entry, reason="multi-frame instance")
        if multi_frame:
            self._wake.set()

    def note_association_released(self, refs: Collection[SeriesRef]) -> None:
        """An association that stored instances of `refs` was released normally: each of
        those series still open completes after ``release_grace_seconds`` unless another
        instance arrives first. Does nothing when the grace is not configured."""
        if self.release_grace_seconds is None:
            return
        deadline = time.monotonic() + float(self.release_grace_seconds)
        with self._lock:
            for ref in refs:
                entry = self._series.get((ref.study_uid, ref.series_uid))
                if entry is not None and entry.state == "open":
                    entry.release_deadline = deadline
        self._wake.set()

    def _complete(self, entry: _SeriesEntry, *, reason: str) -> None:
        """Mark a series complete (caller holds the lock); the monitor runs the callback."""
        self.spool.mark_complete(entry.ref, reason=reason)
        entry.state = "complete"
        entry.attempts = 0
        entry.next_try = 0.0
        logger.info("series %s complete (%s)", entry.ref.series_uid, reason)

    def _run_monitor(self) -> None:
        shortest = min(self.quiet_seconds, self.release_grace_seconds or self.quiet_seconds)
        tick = min(max(shortest / 5.0, 0.05), 1.0)
        while not self._stop.is_set():
            self._wake.wait(tick)
            self._wake.clear()
            if self._stop.is_set():
                break
            now = time.monotonic()
            due: list[_SeriesEntry] = []
            with self._lock:
                for entry in list(self._series.values()):
                    released = (entry.release_deadline is not None
                                and now >= entry.release_deadline)
                    if entry.state == "open" and (
                            released or now - entry.last_activity >= self.quiet_seconds):
                        try:
                            self._complete(entry, reason="association released" if released
                                           else "quiet period")
                        except OSError as exc:
                            logger.error("cannot mark series %s complete: %s",
                                         entry.ref.series_uid, exc)
                            continue
                    if entry.state == "complete" and entry.next_try <= now:
                        due.append(entry)
            for entry in due:
                self._dispatch(entry)

    def _dispatch(self, entry: _SeriesEntry) -> None:
        key = (entry.ref.study_uid, entry.ref.series_uid)
        try:
            self.on_series_complete(entry.ref)
        except Exception:  # noqa: BLE001 - the callback must never stop the SCP
            with self._lock:
                entry.attempts += 1
                delay = min(self.quiet_seconds * 2 ** entry.attempts, MAX_RETRY_SECONDS)
                entry.next_try = time.monotonic() + delay
            logger.exception("series callback failed for %s (attempt %d); retry in %.1f s",
                             entry.ref.series_uid, entry.attempts, delay)
            return
        with self._lock:
            # A new instance may have reopened the series during the call: keep it then.
            if self._series.get(key) is entry and entry.state == "complete":
                del self._series[key]


def unfinished_series(spool: Spool, *, embedded_broker: bool) -> list[SeriesRef]:
    """Series a previous run left unfinished, for the node to dispatch again.

    Call it before the storage SCP starts (so that series the new run completes are not
    listed), then pass each series to the same callback the SCP uses once the SCP and
    workers are up. Every stage is idempotent, so dispatching a series again is safe.

    Parameters
    ----------
    spool : Spool
        The node's spool.
    embedded_broker : bool
        The node runs with the embedded on-disk broker (``Settings.embedded``). Its
        filesystem transport removes a message when a worker takes it, so a job in flight
        (or waiting for a retry countdown) when the node died is gone: series that were
        dispatched but never done are listed too. A real broker (Redis) keeps such jobs.

    Returns
    -------
    list of SeriesRef
        Dispatched-but-not-done series (embedded broker only), then complete series that
        were never dispatched; each group sorted by study, then series UID.
    """
    lost = ([ref for ref in spool.all_series() if spool.state(ref) == "dispatched"]
            if embedded_broker else [])
    return lost + spool.pending_series()


@dataclass(frozen=True)
class StuckSeries:
    """A series dispatched long ago that is neither done nor failed.

    Attributes
    ----------
    ref : SeriesRef
        The series.
    seconds : float
        Time since its last dispatch.
    dispatches : int
        Dispatches of this round so far.
    job_id : str or None
        Job id of the last dispatch.
    """

    ref: SeriesRef
    seconds: float
    dispatches: int
    job_id: str | None

    @property
    def exhausted(self) -> bool:
        """Dispatched :data:`MAX_DISPATCHES` times already: give up (mark it failed)."""
        return self.dispatches >= MAX_DISPATCHES


def stuck_series(spool: Spool, *, older_than: float, now: float | None = None,
                 waiting: Collection[tuple[str, str]] = ()) -> list[StuckSeries]:
    """Series whose last dispatch is more than `older_than` seconds old, still unfinished.

    The node's watchdog dispatches each again (every stage is idempotent), or marks it
    failed once :attr:`StuckSeries.exhausted`.

    Parameters
    ----------
    spool : Spool
        The node's spool.
    older_than : float
        Seconds since the ``dispatched`` marker was written (``Settings.stuck_after_seconds``).
    now : float, optional
        Unix time to compare with (default: now).
    waiting : collection of (str, str)
        (study, series) UIDs whose result waits in the outbox (retried there, or
        dead-lettered and listed there): not stuck
        (:func:`dicom_node.results.series_in_outbox`).

    Returns
    -------
    list of StuckSeries
        Sorted by study, then series UID.
    """
    now = time.time() if now is None else now
    stuck = []
    for ref in spool.series_in(SeriesState.DISPATCHED):
        if (ref.study_uid, ref.series_uid) in waiting:
            continue
        marker = spool.read_marker(ref, SeriesState.DISPATCHED) or {}
        age = now - float(marker.get("time", now))
        if age > older_than:
            stuck.append(StuckSeries(ref, age, int(marker.get("dispatches", 1)),
                                     marker.get("job_id")))
    return stuck
