"""End to end on real parts: dcmtk storescu → picard-node serve → workers → Orthanc.

The node runs as real processes (``python -m workers.cli serve`` / ``worker``); Redis and
Orthanc are real servers; every result object is checked with ``dciodvfy``.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless

from dicom_node.standins.dciodvfy import run_dciodvfy
from tests.helpers.exams import (PM_SOP_CLASS, SEG_SOP_CLASS, Exam, check_results, make_exam,
                                 wait_for_results)
from tests.helpers.servers import NodeProcess, free_port, storescu

pytestmark = pytest.mark.integration

def _round_trip(tmp_path: Path, orthanc_factory, exam: Exam, *, broker_url: str | None = None,
                separate_worker: bool = False) -> dict[str, list]:
    node_port = free_port()
    orthanc = orthanc_factory(modalities={"picard": ["PICARD", "127.0.0.1", node_port]})
    node = NodeProcess(tmp_path / "node", broker_url=broker_url,
                       destinations=[f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}"])
    try:
        node.start(port=node_port)
        if separate_worker:
            node.start_worker()
        sent = storescu(node.port, exam.files)
        assert sent.returncode == 0, sent.stderr
        try:
            return wait_for_results(orthanc, exam, tmp_path / "from_pacs")
        except AssertionError:
            raise AssertionError(node.log())
    finally:
        node.stop()


def test_round_trip_redis_broker_separate_worker(tmp_path, orthanc_factory, redis_server):
    exam = make_exam(tmp_path / "exam", seed=11)
    results = _round_trip(tmp_path, orthanc_factory, exam, broker_url=redis_server.url,
                          separate_worker=True)
    check_results(results, exam)


def test_round_trip_embedded_no_redis(tmp_path, orthanc_factory):
    exam = make_exam(tmp_path / "exam", seed=12, laterality="R")
    results = _round_trip(tmp_path, orthanc_factory, exam)
    check_results(results, exam)
    # the embedded broker kept its queue on disk inside the spool
    assert (tmp_path / "node" / "spool" / "broker" / "queue").is_dir()


def test_round_trip_per_slice_series(tmp_path, orthanc_factory):
    exam = make_exam(tmp_path / "exam", seed=13, per_slice=True)
    assert len(exam.files) == exam.frames
    results = _round_trip(tmp_path, orthanc_factory, exam)
    _, seg = results[SEG_SOP_CLASS][0]
    errors, _ = run_dciodvfy(results[SEG_SOP_CLASS][0][0])
    assert errors == []
    assert len(results[SEG_SOP_CLASS]) == 1 and len(results[PM_SOP_CLASS]) == 1
    _, pm = results[PM_SOP_CLASS][0]
    assert int(pm.NumberOfFrames) == exam.frames


def test_round_trip_jpeg2000(tmp_path, orthanc_factory):
    exam = make_exam(tmp_path / "exam", seed=14, transfer_syntax=JPEG2000Lossless)
    assert pydicom.dcmread(exam.files[0]).file_meta.TransferSyntaxUID == JPEG2000Lossless
    results = _round_trip(tmp_path, orthanc_factory, exam)
    check_results(results, exam)


def test_non_dbt_and_corrupt_are_refused_and_node_keeps_serving(tmp_path, orthanc_factory):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RTPlanStorage, generate_uid

    # an RT Plan: not an image the node accepts
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTPlanStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    rt = Dataset()
    rt.file_meta = meta
    rt.SOPClassUID = meta.MediaStorageSOPClassUID
    rt.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    rt.StudyInstanceUID, rt.SeriesInstanceUID = generate_uid(), generate_uid()
    rt.Modality = "RTPLAN"
    rt_path = tmp_path / "rtplan.dcm"
    rt.save_as(rt_path, enforce_file_format=True)

    exam = make_exam(tmp_path / "exam", seed=15)
    corrupt = tmp_path / "corrupt.dcm"
    data = exam.files[0].read_bytes()
    corrupt.write_bytes(data[: len(data) // 3])  # pixel data cut short

    node_port = free_port()
    orthanc = orthanc_factory(modalities={"picard": ["PICARD", "127.0.0.1", node_port]})
    node = NodeProcess(tmp_path / "node",
                       destinations=[f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}"])
    try:
        node.start(port=node_port)
        refused = storescu(node.port, [rt_path])
        assert refused.returncode != 0 or "Failed" in refused.stderr + refused.stdout \
            or "No presentation context" in refused.stderr + refused.stdout
        storescu(node.port, [corrupt])
        assert node.proc.poll() is None, "node died on a corrupt file"
        sent = storescu(node.port, exam.files)
        assert sent.returncode == 0, sent.stderr
        try:
            results = wait_for_results(orthanc, exam, tmp_path / "from_pacs")
        except AssertionError:
            raise AssertionError(node.log())
        check_results(results, exam)
        log = node.log()
        assert RTPlanStorage in log or "RT Plan" in log
        quarantined = list((node.spool / "quarantine").rglob("*")) if (node.spool / "quarantine").exists() else []
        # the corrupt instance was refused at receive time or quarantined, never processed
        assert quarantined or "corrupt" in log.lower() or "refus" in log.lower()
    finally:
        node.stop()
