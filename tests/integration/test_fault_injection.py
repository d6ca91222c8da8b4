"""Issue 11, "dependability holes found under attack": one fault-injection test per finding,
on real processes (``picard-node serve`` with its embedded worker), a real Orthanc as the
PACS and dcmtk's ``storescu``. Finding 3 (hostile peers) is in
``tests/unit/dicom_node/test_admission.py`` (a real SCP) and ``benchmarks/hostile_peers.py``;
finding 5 (idempotent ``outbox retry``) in ``tests/unit/workers/test_outcomes.py``.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom.sop_class import KeyObjectSelectionDocumentStorage

from dicom_node.inventory import node_status
from dicom_node.standins.dciodvfy import dciodvfy_available, run_dciodvfy
from tests.helpers.exams import (PM_SOP_CLASS, SEG_SOP_CLASS, check_results, make_exam,
                                 wait_for_results)
from tests.helpers.hostile_data import (INVALID_VALUE_CORPUS, damage, damage_file, mark_phi,
                                        phi_needles)
from tests.helpers.servers import NodeProcess, node_and_pacs, storescu, wait_for_node

pytestmark = pytest.mark.integration
KOS_SOP_CLASS = KeyObjectSelectionDocumentStorage
#: Small exams: scoring takes seconds on a CPU (the findings are not about scoring).
SMALL = dict(slices=2, rows=96, cols=64)


def _failed_series(node: NodeProcess) -> set[str]:
    """Series UIDs ``picard-node status`` lists as failed or quarantined."""
    status = node_status(node.spool, stuck_after_seconds=3600)
    return {s.series_uid for s in status.failed}


def _classes_in_pacs(orthanc, study_uid: str) -> list[str]:
    """SOP Class UIDs of the study's instances in Orthanc."""
    return [str(orthanc.get(f"/instances/{i['ID']}/simplified-tags").get("SOPClassUID"))
            for i in orthanc.instances_of_study(study_uid)]


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --------------------------------------------------------------------------- finding 1
def test_invalid_header_corpus_each_ends_delivered_or_listed(tmp_path, orthanc_factory):
    node, port, orthanc = node_and_pacs(tmp_path, orthanc_factory)
    exams = {}
    for i, (case, edits) in enumerate(sorted(INVALID_VALUE_CORPUS.items())):
        exam = make_exam(tmp_path / "exams" / case, seed=300 + i, **SMALL)
        exam.files = [damage_file(exam.files[0], edits, tmp_path / "damaged" / f"{case}.dcm")]
        exams[case] = exam
    try:
        node.start(port=port)
        for exam in exams.values():
            sent = storescu(node.port, exam.files)
            assert sent.returncode == 0, sent.stderr  # every one is acknowledged
        outcome: dict[str, str] = {}

        def settled() -> bool:
            failed = _failed_series(node)
            for case, exam in exams.items():
                if case in outcome:
                    continue
                if exam.series_uid in failed:
                    outcome[case] = "listed"
                elif {PM_SOP_CLASS, SEG_SOP_CLASS} <= set(_classes_in_pacs(orthanc,
                                                                          exam.study_uid)):
                    outcome[case] = "delivered"
            return len(outcome) == len(exams)

        wait_for_node(settled, 900, "every corpus exam delivered or listed", node, step=3)
        print(f"corpus outcomes: {outcome}")
        for case, how in outcome.items():
            if how == "delivered":
                results = wait_for_results(orthanc, exams[case], tmp_path / "pacs" / case)
                check_results(results, exams[case])  # one PM + one SEG, dciodvfy-clean
        assert set(outcome.values()) == {"delivered"}, outcome  # the repairs cover them all
    finally:
        node.stop()


# --------------------------------------------------------------------------- finding 2
def test_no_phi_marker_in_any_log_audit_or_status(tmp_path, orthanc_factory):
    node, port, orthanc = node_and_pacs(tmp_path, orthanc_factory, log_level="debug")
    valid = make_exam(tmp_path / "valid", seed=401, **SMALL)
    invalid = make_exam(tmp_path / "invalid", seed=402, **SMALL)
    unloadable = make_exam(tmp_path / "unloadable", seed=403, per_slice=True, **SMALL)
    for exam, bad in ((valid, False), (invalid, True)):
        ds = mark_phi(pydicom.dcmread(exam.files[0]), invalid=bad)
        ds.save_as(exam.files[0], enforce_file_format=True)
    for path in unloadable.files:  # loading fails on a quoted value: quarantined
        ds = mark_phi(pydicom.dcmread(path), invalid=True)
        if path == unloadable.files[1]:
            damage(ds, [("ImagePositionPatient", "DS", "Zqxpos\\1\\2")])
        ds.save_as(path, enforce_file_format=True)
    try:
        node.start(port=port)
        for exam in (valid, invalid, unloadable):
            assert storescu(node.port, exam.files).returncode == 0
        for exam in (valid, invalid):
            check_results(wait_for_results(orthanc, exam, tmp_path / exam.series_uid), exam)
        wait_for_node(lambda: unloadable.series_uid in _failed_series(node), 300, "the quarantine",
              node)
        status = node.cli("status")
        outbox = node.cli("outbox", "list")
    finally:
        node.stop()
    texts = {
        "node.log (serve + embedded worker stderr)": (node.workdir / "node.log").read_text(),
        "serve + worker stdout (Celery)": node.stdout,
        "status": status.stdout + status.stderr,
        "outbox list": outbox.stdout + outbox.stderr,
    }
    for path in [*node.spool.glob("audit/*.jsonl"), *node.spool.glob("outbox/*.json"),
                 *node.spool.glob("dead-letter/*.json"), *node.spool.glob("quarantine/*.txt"),
                 *node.spool.glob("incoming/*/*/.state/*.json")]:
        texts[str(path.relative_to(node.spool))] = path.read_text()
    assert unloadable.series_uid in texts["status"] and "quarantined" in texts["status"]
    found = []
    for name, text in texts.items():
        for needle in phi_needles():
            pattern = (rf"(?<![0-9.]){re.escape(needle)}(?![0-9])" if needle.isdigit()
                       else re.escape(needle))
            if re.search(pattern, text):
                found.append(f"{needle!r} in {name}")
    assert not found, "PHI in logs: " + "; ".join(found)


# --------------------------------------------------------------------------- finding 4
def test_killed_embedded_worker_job_is_requeued_without_restarting_serve(tmp_path,
                                                                          orthanc_factory):
    node, port, orthanc = node_and_pacs(tmp_path, orthanc_factory)
    exam = make_exam(tmp_path / "exam", seed=411, slices=6, rows=192, cols=144)
    inflight = node.spool / "broker" / "inflight"
    try:
        node.start(port=port)
        first_worker = node.worker_pid
        pool = _children(first_worker)
        assert storescu(node.port, exam.files).returncode == 0
        wait_for_node(lambda: any("picard.analyze" in p.read_text() for p in inflight.glob("*.json")),
              120, "analyze to be in flight", node, step=0.1)
        time.sleep(1.0)
        assert not list(node.spool.glob("results/*/result.json")), "analyze finished too soon"
        os.kill(first_worker, signal.SIGKILL)
        for pid in pool:  # pool processes follow their worker (parent-death signal)
            wait_for_node(lambda: not _alive(pid), 15, f"pool process {pid} to die", node)
        results = wait_for_results(orthanc, exam, tmp_path / "from_pacs", timeout=400)
        check_results(results, exam)
        assert node.proc.poll() is None  # serve never restarted
        assert len(list(node.spool.glob("results/*/delivered/*"))) == 1
        assert "re-queuing picard.analyze" in node.log()
    finally:
        node.stop()


def test_killed_serve_takes_its_worker_and_a_second_serve_refuses(tmp_path, orthanc_factory):
    node, port, _ = node_and_pacs(tmp_path, orthanc_factory)
    twin = NodeProcess(tmp_path / "twin", destinations=[])
    twin.config_path.write_text(node.config_path.read_text())  # same spool
    try:
        node.start(port=port)
        worker = node.worker_pid
        family = [worker, *_children(worker)]
        with pytest.raises(RuntimeError, match="is in use by another node"):
            twin.start()
        assert all(_alive(pid) for pid in family)  # the refusal touched nothing
        os.kill(node.proc.pid, signal.SIGKILL)  # serve only, not its process group
        node.proc.wait(10)
        for pid in family:
            wait_for_node(lambda: not _alive(pid), 15, f"process {pid} to die with serve", node)
        node.proc = None
        twin.start()  # the lock died with them
        assert twin.proc.poll() is None
    finally:
        twin.stop()
        node.stop()


# --------------------------------------------------------------------------- finding 6
def test_rescored_per_slice_series_withdraws_the_first_result(tmp_path, orthanc_factory):
    node, port, orthanc = node_and_pacs(tmp_path, orthanc_factory, quiet_seconds=2.0)
    exam = make_exam(tmp_path / "exam", seed=421, per_slice=True, slices=6, rows=96, cols=64)
    first_half, second_half = exam.files[:3], exam.files[3:]
    try:
        node.start(port=port)
        assert storescu(node.port, first_half).returncode == 0
        first = wait_for_results(orthanc, exam, tmp_path / "first", timeout=400)
        first_uids = {str(ds.SOPInstanceUID) for objs in first.values() for _, ds in objs}
        assert storescu(node.port, second_half).returncode == 0  # after the quiet period

        def withdrawn() -> bool:
            return KOS_SOP_CLASS in _classes_in_pacs(orthanc, exam.study_uid)

        wait_for_node(withdrawn, 400, "the rejection note in the PACS", node, step=2)
        time.sleep(3)
        objects = {}
        for inst in orthanc.instances_of_study(exam.study_uid):
            path = orthanc.download(inst["ID"], tmp_path / f"{inst['ID']}.dcm")
            objects[path] = pydicom.dcmread(path)
    finally:
        node.stop()
    notes = [(p, ds) for p, ds in objects.items() if ds.SOPClassUID == KOS_SOP_CLASS]
    assert len(notes) == 1
    path, note = notes[0]
    title = note.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("113001", "DCM")
    referenced = {str(ref.ReferencedSOPInstanceUID)
                  for study in note.CurrentRequestedProcedureEvidenceSequence
                  for series in study.ReferencedSeriesSequence
                  for ref in series.ReferencedSOPSequence}
    assert referenced == first_uids
    if dciodvfy_available():
        assert run_dciodvfy(path)[0] == []
    maps = [ds for ds in objects.values() if ds.SOPClassUID == PM_SOP_CLASS]
    assert sorted(int(ds.NumberOfFrames) for ds in maps) == [3, 6]  # first and final result
