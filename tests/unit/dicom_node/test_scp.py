"""Storage SCP against real dcmtk tools (storescu, echoscu) on free loopback ports."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from dicom_node.config import Settings
from dicom_node.instances import StoreStatus
from dicom_node.scp import StorageSCP
from dicom_node.series import unfinished_series
from dicom_node.scu import ExportError, echo, send_datasets
from dicom_node.spool import SeriesRef, Spool
from tests.helpers.netdata import (
    BTO,
    dataset_bytes,
    write_mismatched,
    write_multiframe,
    write_rtplan,
    write_slices,
    write_truncated,
)

pytestmark = pytest.mark.skipif(shutil.which("storescu") is None,
                                reason="dcmtk (storescu/echoscu) is not installed")

QUIET = 0.5


class Calls:
    """Records callback invocations (thread-safe); optionally raises."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.items: list[tuple[float, SeriesRef]] = []
        self._lock = threading.Lock()

    def __call__(self, ref: SeriesRef) -> None:
        with self._lock:
            self.items.append((time.time(), ref))
        if self.fail:
            raise RuntimeError("broker unavailable")

    @property
    def refs(self) -> list[SeriesRef]:
        with self._lock:
            return [ref for _, ref in self.items]


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def make_scp(tmp_path: Path) -> Iterator[Callable[..., tuple[StorageSCP, Calls]]]:
    started: list[StorageSCP] = []

    def factory(calls: Calls | None = None, **overrides: object) -> tuple[StorageSCP, Calls]:
        values = dict(host="127.0.0.1", port=0, spool_dir=tmp_path / "spool",
                      series_quiet_seconds=QUIET, min_free_bytes=0)
        values.update(overrides)
        calls = calls or Calls()
        scp = StorageSCP(Settings(**values), calls)
        scp.start()
        started.append(scp)
        return scp, calls

    yield factory
    for scp in started:
        scp.stop()


def storescu(port: int, *files: Path, args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = ["storescu", "-R", "-aec", "PICARD", *args, "127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def spooled(scp: StorageSCP) -> list[Path]:
    return sorted((scp.spool.root / "incoming").rglob("*.dcm"))


def quarantined(scp: StorageSCP) -> list[Path]:
    return sorted(scp.spool.quarantine_dir.glob("*.dcm"))


# --------------------------------------------------------------------------- basics
def test_port_zero_binds_a_free_port_and_echo_works(make_scp) -> None:
    scp, _ = make_scp()
    assert scp.port > 0
    result = subprocess.run(["echoscu", "-aec", "PICARD", "127.0.0.1", str(scp.port)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    echo("PICARD", "127.0.0.1", scp.port)


def test_stop_closes_the_port(tmp_path: Path, make_scp) -> None:
    scp, _ = make_scp()
    port = scp.port
    scp.stop()
    with pytest.raises(ExportError):
        echo("PICARD", "127.0.0.1", port, timeout=3)


# --------------------------------------------------------------------------- series completion
def test_multiframe_instance_completes_at_once(tmp_path: Path, make_scp, caplog) -> None:
    scp, calls = make_scp(series_quiet_seconds=30)  # only the multi-frame rule can fire
    src = write_multiframe(tmp_path / "in" / "bto.dcm", sop_class=BTO, frames=6)
    with caplog.at_level(logging.INFO, logger="dicom_node.scp"):
        result = storescu(scp.port, src)
        assert result.returncode == 0, result.stderr
        assert wait_for(lambda: len(calls.refs) == 1, timeout=5)
        # the association line is logged at release, which can come after storescu exits
        assert wait_for(lambda: "association from STORESCU" in caplog.text, timeout=5)
    ref = calls.refs[0]
    source = pydicom.dcmread(src, stop_before_pixels=True)
    assert (ref.study_uid, ref.series_uid) == (source.StudyInstanceUID, source.SeriesInstanceUID)
    [received] = spooled(scp)
    assert received.parent == Path(ref.directory)
    assert received.name == f"{source.SOPInstanceUID}.dcm"
    # the data set arrives byte for byte (explicit VR little endian in, nothing converted)
    assert dataset_bytes(received) == dataset_bytes(src)
    assert Spool(scp.spool.root).state(ref) == "complete"
    time.sleep(0.3)
    assert len(calls.refs) == 1
    log = caplog.text
    assert "association from STORESCU" in log and "1 stored, 0 failed" in log
    assert "Test^Network" not in log and "NET0001" not in log  # no patient name / ID


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_instance_is_fsynced_before_success(tmp_path: Path, make_scp,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    synced_paths: list[str] = []
    real = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        synced_paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    scp, _ = make_scp(series_quiet_seconds=30)
    src = write_multiframe(tmp_path / "in" / "bto.dcm")
    result = storescu(scp.port, src)
    assert result.returncode == 0, result.stderr
    [received] = spooled(scp)
    assert received.stat().st_ino in synced
    assert received.parent.stat().st_ino in synced
    # the data set streamed into the spool's own tmp/ folder (renamed into place, not copied)
    assert any(Path(p).parent == scp.spool.tmp_dir and Path(p).name.startswith("rx-")
               for p in synced_paths)
    assert list(scp.spool.tmp_dir.iterdir()) == []


def test_per_slice_series_completes_once_after_quiet_period(tmp_path: Path, make_scp) -> None:
    scp, calls = make_scp()
    slices = write_slices(tmp_path / "in", count=4)
    result = storescu(scp.port, *slices)
    assert result.returncode == 0, result.stderr
    assert wait_for(lambda: len(calls.refs) >= 1, timeout=10)
    time.sleep(3 * QUIET)
    assert len(calls.refs) == 1
    called_at, ref = calls.items[0]
    files = Spool(scp.spool.root).series_files(ref)
    assert len(files) == 4
    last_write = max(p.stat().st_mtime for p in files)
    assert called_at - last_write >= QUIET - 0.05


def test_late_instance_reopens_series_duplicate_does_not(tmp_path: Path, make_scp) -> None:
    scp, calls = make_scp()
    slices = write_slices(tmp_path / "in", count=3)
    assert storescu(scp.port, *slices[:2]).returncode == 0
    assert wait_for(lambda: len(calls.refs) == 1)
    # the same instance again: idempotent, no new completion
    assert storescu(scp.port, slices[0]).returncode == 0
    time.sleep(3 * QUIET)
    assert len(calls.refs) == 1
    # a new instance of the same series: the series completes again, with 3 files
    assert storescu(scp.port, slices[2]).returncode == 0
    assert wait_for(lambda: len(calls.refs) == 2)
    assert calls.refs[0] == calls.refs[1]
    assert len(Spool(scp.spool.root).series_files(calls.refs[1])) == 3


def test_release_grace_completes_a_series_before_the_quiet_period(tmp_path: Path,
                                                                   make_scp) -> None:
    """With ``series_release_grace_seconds`` a series is complete soon after the association
    that sent it is released; a later instance still reopens it."""
    scp, calls = make_scp(series_quiet_seconds=60, series_release_grace_seconds=0.2)
    slices = write_slices(tmp_path / "in", count=4)
    started = time.monotonic()
    assert storescu(scp.port, *slices[:3]).returncode == 0
    assert wait_for(lambda: len(calls.refs) == 1, timeout=10)
    assert time.monotonic() - started < 30  # not the 60 s quiet period
    ref = calls.refs[0]
    assert scp.spool.read_marker(ref, "complete")["reason"] == "association released"
    assert storescu(scp.port, slices[3]).returncode == 0
    assert wait_for(lambda: len(calls.refs) == 2, timeout=10)
    assert len(Spool(scp.spool.root).series_files(calls.refs[1])) == 4


def test_without_release_grace_release_changes_nothing(tmp_path: Path, make_scp) -> None:
    scp, calls = make_scp(series_quiet_seconds=3)
    assert storescu(scp.port, *write_slices(tmp_path / "in", count=2)).returncode == 0
    time.sleep(1.0)
    assert calls.refs == []
    assert wait_for(lambda: len(calls.refs) == 1, timeout=10)
    assert scp.spool.read_marker(calls.refs[0], "complete")["reason"] == "quiet period"


@pytest.mark.parametrize("ts, flag", [
    (ImplicitVRLittleEndian, "-xi"),
    (DeflatedExplicitVRLittleEndian, "-xd"),
    (RLELossless, "-xr"),
    (JPEG2000Lossless, "-xv"),
])
def test_transfer_syntaxes(tmp_path: Path, make_scp, ts: str, flag: str) -> None:
    scp, calls = make_scp(series_quiet_seconds=30)
    src = write_multiframe(tmp_path / "in" / "mf.dcm", transfer_syntax=ts, rows=32, cols=32)
    result = storescu(scp.port, src, args=(flag,))
    assert result.returncode == 0, result.stderr
    [received] = spooled(scp)
    got = pydicom.dcmread(received)
    assert got.file_meta.TransferSyntaxUID == ts
    assert (got.pixel_array == pydicom.dcmread(src).pixel_array).all()
    assert wait_for(lambda: len(calls.refs) == 1, timeout=5)


# --------------------------------------------------------------------------- refusals
def test_unsupported_sop_class_is_refused_and_logged(tmp_path: Path, make_scp, caplog) -> None:
    scp, calls = make_scp()
    with caplog.at_level(logging.WARNING, logger="dicom_node.scp"):
        result = storescu(scp.port, write_rtplan(tmp_path / "rt.dcm"))
    assert result.returncode != 0
    assert "refused presentation context for RT Plan Storage" in caplog.text
    assert spooled(scp) == []


def test_dataset_not_matching_sop_class_gets_a900(tmp_path: Path, make_scp, caplog) -> None:
    scp, calls = make_scp()
    bad = write_mismatched(tmp_path / "mismatch.dcm")
    with caplog.at_level(logging.WARNING):
        with pytest.raises(ExportError) as info:
            send_datasets([bad], ae_title="PICARD", host="127.0.0.1", port=scp.port,
                          calling_ae_title="TESTSCU")
    assert info.value.status == StoreStatus.DATASET_MISMATCH
    assert "differs from the request" in caplog.text
    [kept] = quarantined(scp)
    assert "SOP class" in kept.with_name(kept.name + ".reason.txt").read_text()
    assert spooled(scp) == []


def test_truncated_instance_is_quarantined_and_scp_keeps_serving(tmp_path: Path, make_scp,
                                                                  caplog) -> None:
    scp, calls = make_scp(series_quiet_seconds=30)
    bad = write_truncated(tmp_path / "truncated.dcm")
    with caplog.at_level(logging.WARNING):
        with pytest.raises(ExportError) as info:
            send_datasets([bad], ae_title="PICARD", host="127.0.0.1", port=scp.port,
                          calling_ae_title="TESTSCU")
    assert 0xC000 <= info.value.status <= 0xCFFF
    assert "truncated" in caplog.text
    [kept] = quarantined(scp)
    assert kept.read_bytes().endswith(dataset_bytes(bad))
    assert spooled(scp) == [] and calls.refs == []
    # the next good instance is stored normally
    good = write_multiframe(tmp_path / "good.dcm")
    assert storescu(scp.port, good).returncode == 0
    assert len(spooled(scp)) == 1
    assert wait_for(lambda: len(calls.refs) == 1, timeout=5)


def test_calling_ae_title_allow_list(tmp_path: Path, make_scp) -> None:
    scp, _ = make_scp(allowed_calling_aets=["MODALITY1"], series_quiet_seconds=30)
    src = write_multiframe(tmp_path / "in" / "mf.dcm")
    assert storescu(scp.port, src, args=("-aet", "INTRUDER")).returncode != 0
    assert spooled(scp) == []
    assert storescu(scp.port, src, args=("-aet", "MODALITY1")).returncode == 0
    assert len(spooled(scp)) == 1


def test_low_disk_space_answers_out_of_resources(tmp_path: Path, make_scp) -> None:
    scp, _ = make_scp(min_free_bytes=10**18)
    src = write_multiframe(tmp_path / "in" / "mf.dcm")
    with pytest.raises(ExportError) as info:
        send_datasets([src], ae_title="PICARD", host="127.0.0.1", port=scp.port,
                      calling_ae_title="TESTSCU")
    assert info.value.status == StoreStatus.OUT_OF_RESOURCES
    assert spooled(scp) == []
    assert list(scp.spool.tmp_dir.iterdir()) == []  # the received data set was removed


# --------------------------------------------------------------------------- callback failures, restart
def test_callback_failure_is_logged_and_series_stays_pending(tmp_path: Path, make_scp,
                                                             caplog) -> None:
    failing = Calls(fail=True)
    scp, _ = make_scp(failing, series_quiet_seconds=30)
    src = write_multiframe(tmp_path / "in" / "mf.dcm")
    with caplog.at_level(logging.ERROR, logger="dicom_node.series"):
        assert storescu(scp.port, src).returncode == 0
        assert wait_for(lambda: len(failing.refs) == 1, timeout=5)
        assert wait_for(lambda: "series callback failed" in caplog.text, timeout=5)
    assert Spool(scp.spool.root).pending_series() == failing.refs
    echo("PICARD", "127.0.0.1", scp.port)  # still serving
    scp.stop()
    # a restarted node dispatches what was left pending, as picard-node serve does:
    # listed before the SCP starts, handed to the SCP's callback once it serves
    leftover = unfinished_series(Spool(scp.spool.root), embedded_broker=False)
    assert leftover == failing.refs[:1]
    restarted, calls = make_scp(series_quiet_seconds=30)
    for ref in leftover:
        restarted.on_series_complete(ref)
    assert calls.refs == failing.refs[:1]
    time.sleep(0.3)
    assert calls.refs == failing.refs[:1]  # the SCP itself does not dispatch it again


def test_restart_resumes_a_series_that_was_still_open(tmp_path: Path, make_scp) -> None:
    scp, first_calls = make_scp(series_quiet_seconds=30)
    assert storescu(scp.port, *write_slices(tmp_path / "in", count=2)).returncode == 0
    scp.stop()  # "crash" during the quiet period
    assert first_calls.refs == []
    _, calls = make_scp(series_quiet_seconds=QUIET)
    assert wait_for(lambda: len(calls.refs) == 1, timeout=5)
    assert len(Spool(tmp_path / "spool").series_files(calls.refs[0])) == 2
