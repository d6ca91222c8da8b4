"""Spool: durable layout, UID checks, markers, quarantine (real files, real fsync)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from dicom_node.spool import Spool, SpoolError, check_uid, pending_series
from tests.helpers.netdata import write_multiframe

STUDY = "1.2.3.4"
SERIES = "1.2.3.4.5"


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """Inodes passed to os.fsync (the real fsync still runs)."""
    inodes: set[int] = set()
    real = os.fsync

    def recording_fsync(fd: int) -> None:
        inodes.add(os.fstat(fd).st_ino)
        real(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return inodes


def test_store_bytes_layout(spool: Spool) -> None:
    stored = spool.store_bytes(b"abc", study_uid=STUDY, series_uid=SERIES, sop_instance_uid="9.8")
    assert stored.path == spool.root / "incoming" / STUDY / SERIES / "9.8.dcm"
    assert stored.path.read_bytes() == b"abc"
    assert stored.new_series and not stored.duplicate
    assert stored.series.directory == str(spool.root / "incoming" / STUDY / SERIES)
    assert spool.series_files(stored.series) == [stored.path]
    assert not list(Path(stored.series.directory).glob("*.tmp"))


def test_store_bytes_is_fsynced(spool: Spool, fsynced: set[int]) -> None:
    stored = spool.store_bytes(b"x" * 100, study_uid=STUDY, series_uid=SERIES,
                               sop_instance_uid="9.8")
    assert stored.path.stat().st_ino in fsynced
    assert stored.path.parent.stat().st_ino in fsynced  # the rename is durable
    assert stored.path.parent.parent.stat().st_ino in fsynced  # the new series folder too


@pytest.mark.parametrize("bad", ["", "../../etc", "1.2.x", "1..2", ".1.2", "1/2", "1" * 65])
def test_bad_uids_are_rejected(spool: Spool, bad: str) -> None:
    with pytest.raises(SpoolError, match="is not a DICOM UID"):
        spool.store_bytes(b"x", study_uid=STUDY, series_uid=bad, sop_instance_uid="1.2")
    assert not any(p.is_file() for p in (spool.root / "incoming").rglob("*"))


def test_check_uid_strips_padding() -> None:
    assert check_uid("1.2.840\x00") == "1.2.840"
    assert check_uid(" 1.2 ") == "1.2"


def test_adopt_moves_file(spool: Spool, tmp_path: Path, fsynced: set[int]) -> None:
    src = write_multiframe(tmp_path / "in.dcm")
    content = src.read_bytes()
    stored = spool.adopt_file(src, study_uid=STUDY, series_uid=SERIES, sop_instance_uid="7.7")
    assert not src.exists()
    assert stored.path.read_bytes() == content
    assert stored.path.stat().st_ino in fsynced
    assert stored.path.parent.stat().st_ino in fsynced


def test_adopt_across_file_systems(spool: Spool) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == spool.root.stat().st_dev:
        pytest.skip("needs /dev/shm on another file system than the spool")
    src = shm / f"picard-test-{os.getpid()}.dcm"
    src.write_bytes(b"payload" * 1000)
    try:
        stored = spool.adopt_file(src, study_uid=STUDY, series_uid=SERIES, sop_instance_uid="7.8")
    finally:
        src.unlink(missing_ok=True)
    assert stored.path.read_bytes() == b"payload" * 1000
    assert not src.exists()
    assert not list(stored.path.parent.glob("*.tmp"))


def test_adopt_missing_file(spool: Spool, tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match="not a file"):
        spool.adopt_file(tmp_path / "nope.dcm", study_uid=STUDY, series_uid=SERIES,
                         sop_instance_uid="1.1")


def test_duplicate_instance_is_idempotent(spool: Spool) -> None:
    first = spool.store_bytes(b"one", study_uid=STUDY, series_uid=SERIES, sop_instance_uid="5.5")
    spool.mark_received(first.series)
    spool.mark_complete(first.series, reason="test")
    again = spool.store_bytes(b"one", study_uid=STUDY, series_uid=SERIES, sop_instance_uid="5.5")
    assert again.duplicate and not again.new_series
    assert spool.series_files(again.series) == [first.path]
    assert spool.state(again.series) == "complete"


def test_markers_and_pending_series(spool: Spool) -> None:
    ref = spool.series_ref(STUDY, SERIES)
    other = spool.series_ref(STUDY, "1.2.3.4.6")
    for r in (ref, other):
        spool.store_bytes(b"x", study_uid=r.study_uid, series_uid=r.series_uid,
                          sop_instance_uid="1.1")
        spool.mark_received(r)
    assert spool.state(ref) == "received"
    assert spool.pending_series() == []
    assert set(spool.open_series()) == {ref, other}

    spool.mark_complete(ref, reason="quiet period")
    assert spool.pending_series() == [ref]
    assert pending_series(spool.root) == [ref]
    assert spool.open_series() == [other]

    spool.mark_dispatched(ref, "job-42")
    assert spool.read_marker(ref, "dispatched")["job_id"] == "job-42"
    assert spool.pending_series() == []
    spool.mark_done(ref)
    assert spool.state(ref) == "done"

    spool.reopen(ref)
    assert spool.state(ref) == "received"
    assert spool.read_marker(ref, "dispatched") is None


def test_marker_content_is_json(spool: Spool) -> None:
    ref = spool.series_ref(STUDY, SERIES)
    spool.store_bytes(b"x", study_uid=STUDY, series_uid=SERIES, sop_instance_uid="1.1")
    spool.mark_complete(ref, reason="multi-frame instance")
    marker = spool.read_marker(ref, "complete")
    assert marker["series_uid"] == SERIES and marker["reason"] == "multi-frame instance"
    # markers live outside the *.dcm listing
    assert [p.suffix for p in spool.series_files(ref)] == [".dcm"]


def test_quarantine_keeps_reason_and_logs(spool: Spool, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    src = tmp_path / "bad.dcm"
    src.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="dicom_node.spool"):
        kept = spool.quarantine(src, name="1.2/../3", reason="truncated pixel data")
    assert kept.parent == spool.root / "quarantine"
    assert "/" not in kept.name.replace(str(kept.parent), "")
    assert kept.read_bytes() == b"garbage" and not src.exists()
    reason = kept.with_name(kept.name + ".reason.txt").read_text()
    assert "truncated pixel data" in reason
    assert "truncated pixel data" in caplog.text
    from_bytes = spool.quarantine(b"raw", name="x", reason="r")
    assert from_bytes.read_bytes() == b"raw"


def test_completing_again_needs_a_new_dispatch(spool: Spool) -> None:
    ref = spool.series_ref(STUDY, SERIES)
    spool.store_bytes(b"x", study_uid=STUDY, series_uid=SERIES, sop_instance_uid="1.1")
    spool.mark_complete(ref, reason="quiet period")
    spool.mark_dispatched(ref, "job-1")
    spool.mark_complete(ref, reason="late instance")
    assert spool.state(ref) == "complete"
    assert spool.pending_series() == [ref]
