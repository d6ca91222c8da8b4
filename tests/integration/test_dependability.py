"""No study lost, no duplicate results: real processes, real signals, real Orthanc.

Exactly once is checked in the PACS (one Parametric Map and one SEG per study, found through
Orthanc's REST API) and in the node (one delivery marker per destination).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from dicom_node.outbox import Outbox
from tests.helpers.exams import (PM_SOP_CLASS, SEG_SOP_CLASS, check_results, make_exam,
                                 wait_for_results)
from tests.helpers.servers import node_and_pacs, storescu, wait_for_node

pytestmark = pytest.mark.integration


def _delivery_markers(spool: Path) -> list[Path]:
    return sorted(spool.glob("results/*/delivered/*"))


def _deliveries(spool: Path) -> list[dict]:
    """Audit records of successful deliveries."""
    records = [json.loads(line) for f in sorted(spool.glob("audit/*.jsonl"))
               for line in f.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("event") == "delivery" and r.get("outcome") == "delivered"]


def test_kill_worker_during_analyze_redelivers_once(tmp_path, orthanc_factory, redis_server):
    node, port, orthanc = node_and_pacs(
        tmp_path, orthanc_factory, broker_url=redis_server.url,
        extra_env={"PICARD_VISIBILITY_TIMEOUT_SECONDS": "8"})
    exam = make_exam(tmp_path / "exam", seed=21, slices=6, rows=192, cols=144)
    try:
        node.start(port=port)
        worker = node.start_worker()
        assert storescu(node.port, exam.files).returncode == 0
        worker_log = node.workdir / "worker0.log"
        wait_for_node(lambda: "picard.analyze" in worker_log.read_text(), 120,
                      "analyze to start", node)
        time.sleep(1.0)
        assert not list(node.spool.glob("results/*/result.json")), "analyze finished too soon"
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
        node.start_worker()
        results = wait_for_results(orthanc, exam, tmp_path / "from_pacs", timeout=400)
        check_results(results, exam)
        assert len(_delivery_markers(node.spool)) == 1
    finally:
        node.stop()


def test_kill_node_after_ack_processes_after_restart(tmp_path, orthanc_factory):
    node, port, orthanc = node_and_pacs(tmp_path, orthanc_factory)
    exam = make_exam(tmp_path / "exam", seed=22)
    try:
        node.start(port=port)
        assert storescu(node.port, exam.files).returncode == 0
        # acknowledged = durably spooled; kill the node and its embedded worker at once
        assert list(node.spool.glob("incoming/*/*/*.dcm"))
        os.killpg(node.proc.pid, signal.SIGKILL)
        node.proc.wait(10)
        assert not list(node.spool.glob("results/*/delivered/*"))
        node.start(port=port)
        results = wait_for_results(orthanc, exam, tmp_path / "from_pacs", timeout=400)
        check_results(results, exam)
        assert len(_delivery_markers(node.spool)) == 1
    finally:
        node.stop()


def test_resent_identical_study_gives_no_second_results(tmp_path, orthanc_factory):
    node, port, orthanc = node_and_pacs(tmp_path, orthanc_factory)
    exam = make_exam(tmp_path / "exam", seed=25)
    try:
        node.start(port=port)
        assert storescu(node.port, exam.files).returncode == 0
        first = wait_for_results(orthanc, exam, tmp_path / "first", timeout=300)
        check_results(first, exam)
        assert storescu(node.port, exam.files).returncode == 0
        time.sleep(8)  # two quiet periods and a job's worth of time for a duplicate to show
        again = wait_for_results(orthanc, exam, tmp_path / "again", timeout=60)
        check_results(again, exam)
        assert len(orthanc.instances_of_study(exam.study_uid)) == sum(map(len, first.values()))
        assert len(_delivery_markers(node.spool)) == 1
        assert len(_deliveries(node.spool)) == 1, "the re-sent study was delivered again"
        assert len(list(node.spool.glob("results/*/result.json"))) == 1
    finally:
        node.stop()


def test_pacs_down_results_wait_in_outbox_then_arrive_once(tmp_path, orthanc_factory):
    node, port, orthanc = node_and_pacs(
        tmp_path, orthanc_factory,
        extra_env={"PICARD_EXPORT_RETRY_BASE_SECONDS": "1", "PICARD_EXPORT_RETRY_MAX_SECONDS": "3"})
    exam = make_exam(tmp_path / "exam", seed=23)
    orthanc.stop()
    try:
        node.start(port=port)
        assert storescu(node.port, exam.files).returncode == 0
        outbox = Outbox(node.spool)
        wait_for_node(lambda: any(e.attempts >= 2 for e in outbox.entries()), 400,
              "two failed export attempts", node)
        assert not _delivery_markers(node.spool)
        orthanc.start()
        results = wait_for_results(orthanc, exam, tmp_path / "from_pacs", timeout=120)
        check_results(results, exam)
        wait_for_node(lambda: not outbox.entries(), 30, "the outbox to empty", node)
        assert len(_delivery_markers(node.spool)) == 1
        assert len(_deliveries(node.spool)) == 1
    finally:
        node.stop()


def test_dead_letter_and_outbox_retry(tmp_path, orthanc_factory):
    node, port, orthanc = node_and_pacs(
        tmp_path, orthanc_factory,
        extra_env={"PICARD_EXPORT_RETRY_BASE_SECONDS": "1", "PICARD_EXPORT_RETRY_MAX_SECONDS": "1",
                   "PICARD_DEAD_LETTER_AFTER_SECONDS": "3"})
    exam = make_exam(tmp_path / "exam", seed=24)
    orthanc.stop()
    try:
        node.start(port=port)
        assert storescu(node.port, exam.files).returncode == 0
        outbox = Outbox(node.spool)
        wait_for_node(lambda: any(e.state == "dead-letter" for e in outbox.entries()), 400,
              "the result to be dead-lettered", node)
        orthanc.start()
        time.sleep(3)
        assert not orthanc.instances_of_study(exam.study_uid), "dead letter was still retried"
        import subprocess
        import sys

        listed = subprocess.run([sys.executable, "-m", "workers.cli", "outbox", "list",
                                 "--spool-dir", str(node.spool)], capture_output=True, text=True,
                                env=node.env, cwd=node.env["PYTHONPATH"])
        assert "dead-letter" in listed.stdout, listed.stdout + listed.stderr
        retried = subprocess.run([sys.executable, "-m", "workers.cli", "outbox", "retry", "--all",
                                  "--spool-dir", str(node.spool)], capture_output=True, text=True,
                                 env=node.env, cwd=node.env["PYTHONPATH"])
        assert retried.returncode == 0, retried.stderr
        results = wait_for_results(orthanc, exam, tmp_path / "from_pacs", timeout=120)
        check_results(results, exam)
    finally:
        node.stop()


def test_load_four_senders_five_exams_each(tmp_path, orthanc_factory):
    node, port, orthanc = node_and_pacs(tmp_path, orthanc_factory)
    exams = [[make_exam(tmp_path / f"s{s}" / f"e{e}", seed=100 + 10 * s + e, slices=3, rows=128,
                        cols=96) for e in range(5)] for s in range(4)]
    failures: list[str] = []

    def sender(i: int) -> None:
        for exam in exams[i]:
            done = storescu(node.port, exam.files, calling_ae=f"SENDER{i}")
            if done.returncode != 0:
                failures.append(done.stderr)

    try:
        node.start(port=port)
        threads = [threading.Thread(target=sender, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not failures, failures
        counts = {"studies": 0, "pm": 0, "seg": 0}
        for batch in exams:
            for exam in batch:
                results = wait_for_results(orthanc, exam, tmp_path / "pacs" / exam.study_uid,
                                           timeout=900)
                check_results(results, exam)
                counts["studies"] += 1
                counts["pm"] += len(results[PM_SOP_CLASS])
                counts["seg"] += len(results[SEG_SOP_CLASS])
        print(f"load: {counts['studies']} studies sent by 4 senders, "
              f"{counts['pm']} Parametric Maps, {counts['seg']} SEGs in the PACS, "
              f"{len(_delivery_markers(node.spool))} deliveries")
        assert counts == {"studies": 20, "pm": 20, "seg": 20}
        assert len(_delivery_markers(node.spool)) == 20
        assert len(_deliveries(node.spool)) == 20
    finally:
        node.stop()
