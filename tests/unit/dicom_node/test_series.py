"""Series completeness (SeriesTracker) and the recovery list (unfinished_series), on a spool.

The same rules over a real network are in ``test_scp.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from dicom_node.series import SeriesTracker, unfinished_series
from dicom_node.spool import SeriesRef, Spool, StoredInstance

QUIET = 0.3


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


@pytest.fixture
def tracker(spool: Spool) -> Iterator[tuple[SeriesTracker, list[SeriesRef]]]:
    calls: list[SeriesRef] = []
    lock = threading.Lock()

    def record(ref: SeriesRef) -> None:
        with lock:
            calls.append(ref)

    t = SeriesTracker(spool, record, quiet_seconds=QUIET)
    t.start()
    yield t, calls
    t.stop()


def store(spool: Spool, study: str, series: str, sop: str | None = None) -> StoredInstance:
    return spool.store_bytes(b"DICM", study_uid=study, series_uid=series,
                             sop_instance_uid=sop or generate_uid())


def test_multi_frame_instance_completes_at_once(spool: Spool, tracker) -> None:
    t, calls = tracker
    stored = store(spool, "1.2.3", "1.2.3.4")
    t.note_instance(stored, multi_frame=True)
    assert spool.state(stored.series) == "complete"
    assert wait_for(lambda: calls == [stored.series], timeout=QUIET / 2)


def test_single_frames_complete_after_the_quiet_period(spool: Spool, tracker) -> None:
    t, calls = tracker
    first = store(spool, "1.2.3", "1.2.3.5")
    t.note_instance(first, multi_frame=False)
    t.note_instance(store(spool, "1.2.3", "1.2.3.5"), multi_frame=False)
    assert spool.state(first.series) == "received"
    assert calls == []
    assert wait_for(lambda: calls == [first.series])
    assert spool.read_marker(first.series, "complete")["reason"] == "quiet period"


def test_release_grace_completes_and_a_new_instance_cancels_it(spool: Spool) -> None:
    calls: list[SeriesRef] = []
    t = SeriesTracker(spool, calls.append, quiet_seconds=60, release_grace_seconds=0.2)
    t.start()
    try:
        first = store(spool, "1.2.3", "1.2.3.6")
        t.note_instance(first, multi_frame=False)
        t.note_association_released([first.series])
        t.note_instance(store(spool, "1.2.3", "1.2.3.6"), multi_frame=False)  # cancels it
        time.sleep(0.6)
        assert calls == []
        t.note_association_released([first.series])
        assert wait_for(lambda: calls == [first.series], timeout=3)
        assert spool.read_marker(first.series, "complete")["reason"] == "association released"
    finally:
        t.stop()


def test_release_is_ignored_without_a_grace(spool: Spool, tracker) -> None:
    t, calls = tracker
    first = store(spool, "1.2.3", "1.2.3.7")
    t.note_instance(first, multi_frame=False)
    t.note_association_released([first.series])
    assert wait_for(lambda: calls == [first.series])
    assert spool.read_marker(first.series, "complete")["reason"] == "quiet period"


def test_a_failing_callback_is_retried(spool: Spool) -> None:
    attempts: list[SeriesRef] = []

    def flaky(ref: SeriesRef) -> None:
        attempts.append(ref)
        if len(attempts) == 1:
            raise RuntimeError("broker unavailable")

    t = SeriesTracker(spool, flaky, quiet_seconds=0.05)
    t.start()
    try:
        stored = store(spool, "1.2.3", "1.2.3.6")
        t.note_instance(stored, multi_frame=True)
        assert wait_for(lambda: len(attempts) == 2)
    finally:
        t.stop()
    assert spool.pending_series() == [stored.series]  # the callback records dispatch, not us


def test_start_resumes_series_left_open(spool: Spool) -> None:
    ref = store(spool, "1.2.3", "1.2.3.7").series
    spool.mark_received(ref)
    calls: list[SeriesRef] = []
    t = SeriesTracker(spool, calls.append, quiet_seconds=0.05)
    t.start()
    try:
        assert wait_for(lambda: calls == [ref])
    finally:
        t.stop()


def test_unfinished_series(spool: Spool) -> None:
    refs = [store(spool, "1.2.3", f"1.2.3.{n}").series for n in (1, 2, 3, 4)]
    opened, complete, dispatched, done = refs
    spool.mark_received(opened)
    for ref in (complete, dispatched, done):
        spool.mark_complete(ref, reason="test")
    spool.mark_dispatched(dispatched, "job-1")
    spool.mark_dispatched(done, "job-2")
    spool.mark_done(done)
    assert unfinished_series(spool, embedded_broker=False) == [complete]
    # the on-disk broker loses jobs in flight with a killed worker: dispatched comes first
    assert unfinished_series(spool, embedded_broker=True) == [dispatched, complete]
