"""The embedded worker's life lines (issue 11, finding 4): parent-death signal, the spool lock,
in-flight records re-queued."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dicom_node.config import Settings
from dicom_node.spool import SeriesRef
from dicom_node.spool_lock import SpoolInUseError, SpoolLock
from tests.helpers.servers import REPO_ROOT
from workers.cli import main
from workers.embedded import InflightJob, InflightRegistry, requeue_inflight

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux prctl")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _wait_dead(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_child_dies_with_its_parent_even_when_killed_9(tmp_path: Path) -> None:
    # parent: starts a child that arms the parent-death signal, prints its pid, then waits
    child_code = ("import os, sys, time; from workers.embedded import arm_parent_death_signal;"
                  "assert arm_parent_death_signal(int(sys.argv[1])); print(os.getpid(), "
                  "flush=True); time.sleep(120)")
    parent_code = textwrap.dedent(f"""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", {child_code!r}, str(os.getpid())])
        time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE,
                              text=True, cwd=REPO_ROOT,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        child_pid = int(parent.stdout.readline())
        assert _alive(child_pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        assert _wait_dead(child_pid), "the child outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_spool_lock_is_exclusive_and_names_the_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from dicom_node.spool_lock import SpoolLock;"
         "l = SpoolLock(sys.argv[1]); l.acquire(); print('held', flush=True); time.sleep(60)",
         str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SpoolInUseError, match=f"pid {holder.pid}"):
            SpoolLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait(10)
    with SpoolLock(tmp_path) as lock:  # released by the kernel when the holder died
        assert lock.held


def test_second_serve_on_one_spool_refuses_to_start(tmp_path: Path, caplog) -> None:
    settings = Settings(spool_dir=tmp_path / "spool")
    with SpoolLock(settings.spool_dir):
        rc = main(["serve", "--spool-dir", str(settings.spool_dir), "--port", "0"])
    assert rc == 2
    assert "is in use by another node" in caplog.text
    assert not (settings.spool_dir / "broker").exists()  # refused before touching the queue


def test_manual_worker_on_an_embedded_spool_refuses_while_a_node_holds_it(
        tmp_path: Path, caplog) -> None:
    with SpoolLock(tmp_path / "spool"):
        rc = main(["worker", "--spool-dir", str(tmp_path / "spool"), "--pool", "solo"])
    assert rc == 2 and "is in use by another node" in caplog.text


def test_inflight_jobs_of_a_dead_worker_are_requeued_once(tmp_path: Path) -> None:
    registry = InflightRegistry(tmp_path)
    series = SeriesRef("1.2", "1.2.3", str(tmp_path / "incoming" / "1.2" / "1.2.3"))
    registry.record(InflightJob("a", 0, "picard.analyze", series.directory))
    registry.record(InflightJob("b", 1, "picard.encode", str(tmp_path / "results" / "r1")))
    registry.record(InflightJob("c", 2, "picard.export", str(tmp_path / "results" / "r2")))
    registry.remove("a", 1)  # another attempt's record: not this one
    redispatched: list[SeriesRef] = []
    exported: list[str] = []
    count = requeue_inflight(registry, series_of=lambda job: series,
                             redispatch_series=redispatched.append,
                             dispatch_export=lambda path: exported.append(path) or "job")
    assert count == 3
    assert redispatched == [series]  # analyze and encode of one series: one new chain
    assert exported == [str(tmp_path / "results" / "r2")]
    assert registry.jobs() == []
