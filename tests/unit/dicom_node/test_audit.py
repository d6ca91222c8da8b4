"""Audit trail: JSON lines per association and delivery, durable, without patient data."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dicom_node.audit import AuditLog
from dicom_node.config import Destination, Settings
from dicom_node.scp import StorageSCP
from dicom_node.scu import ExportError, send_datasets
from dicom_node.standins.synthetic import write_bto

PATIENT_NAME = "Doe^Janet^Q"
PATIENT_ID = "PID-5550199"


def test_association_and_delivery_records(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "spool")
    log.association(calling_ae="MODALITY1", called_ae="PICARD", peer_host="10.0.0.5",
                    peer_port=50123, tls=True, tls_peer="modality1", stored=3, failed=1,
                    outcome="released", nbytes=1234, seconds=1.23456)
    dest = Destination(ae_title="PACS", host="10.0.0.9", port=104)
    log.delivery("1.2.3.4", dest, ["1.2.3.4.1", "1.2.3.4.2"], "delivered",
                 calling_ae="PICARD")
    log.delivery("1.2.3.5", "ORTHANC@127.0.0.1:4242", ["1.2.3.5.1"], "failed",
                 "status 0xA700")
    today = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d")
    path = tmp_path / "spool" / "audit" / f"audit-{today}.jsonl"
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    first, second, third = (json.loads(line) for line in lines)
    assert first["event"] == "association" and first["tls"] is True
    assert (first["calling_ae"], first["called_ae"], first["peer_host"], first["stored"],
            first["failed"], first["outcome"], first["seconds"]) == (
        "MODALITY1", "PICARD", "10.0.0.5", 3, 1, "released", 1.235)
    assert dt.datetime.fromisoformat(first["time"]).tzinfo is not None
    assert second == {**second, "event": "delivery", "result_id": "1.2.3.4",
                      "destination": "PACS@10.0.0.9:104", "calling_ae": "PICARD",
                      "sop_instance_uids": ["1.2.3.4.1", "1.2.3.4.2"], "count": 2,
                      "outcome": "delivered", "detail": None}
    assert third["destination"] == "ORTHANC@127.0.0.1:4242" and third["detail"] == "status 0xA700"
    assert log.records() == [first, second, third]


def test_each_record_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    log = AuditLog(tmp_path)
    log.delivery("r1", "A@h:1", ["1.2"], "delivered")
    log.delivery("r2", "A@h:1", ["1.3"], "delivered")
    assert synced.count(log.path_for().stat().st_ino) == 2


def test_concurrent_writers_leave_whole_lines(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    other = AuditLog(tmp_path)  # a second instance, as a second process would have
    uids = [f"1.2.{i}" for i in range(200)]

    def write(target: AuditLog, start: int) -> None:
        for i in range(start, 50 + start):
            target.delivery(f"r{i}", "A@h:1", uids, "delivered")

    threads = [threading.Thread(target=write, args=(t, k * 50))
               for k, t in enumerate([log, other, log, other])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = log.records()
    assert sorted(int(r["result_id"][1:]) for r in records) == list(range(200))


def test_patient_reference_is_salted_hash(tmp_path: Path) -> None:
    a, b = AuditLog(tmp_path / "a"), AuditLog(tmp_path / "b")
    ref = a.patient_ref(PATIENT_ID)
    assert ref == AuditLog(tmp_path / "a").patient_ref(PATIENT_ID)  # stable per spool
    assert ref != b.patient_ref(PATIENT_ID)  # other salt elsewhere
    assert ref != a.patient_ref("PID-5550198") and PATIENT_ID not in ref
    assert len(ref) == 16
    assert (tmp_path / "a" / "audit" / ".salt").stat().st_mode & 0o077 == 0


def test_destination_must_be_named(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="destination must be a str"):
        AuditLog(tmp_path).delivery("r", 42, [], "failed")


@pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk is not installed")
def test_no_patient_name_or_id_in_logs_or_audit(tmp_path: Path, caplog) -> None:
    volume = np.zeros((3, 16, 12), np.float32)
    volume[:, :, :6] = 0.6
    [good] = write_bto(volume, tmp_path / "in", laterality="L", view="CC",
                       pixel_spacing_mm=0.1, slice_thickness_mm=1.0, seed=7,
                       patient_id=PATIENT_ID, patient_name=PATIENT_NAME)
    # and a refused copy (pixel data cut short), whose reason is logged and quarantined
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(good.read_bytes()[:-100])
    settings = Settings(host="127.0.0.1", port=0, spool_dir=tmp_path / "spool",
                        series_quiet_seconds=30, min_free_bytes=0)
    scp = StorageSCP(settings, lambda ref: None)
    with caplog.at_level(logging.DEBUG):
        scp.start()
        try:
            sent = subprocess.run(["storescu", "-R", "-aec", "PICARD", "127.0.0.1",
                                   str(scp.port), str(good)], capture_output=True, timeout=30)
            assert sent.returncode == 0, sent.stderr
            with pytest.raises(ExportError):  # storescu will not send a broken file
                send_datasets([bad], ae_title="PICARD", host="127.0.0.1", port=scp.port,
                              calling_ae_title="MODALITY1")
            deadline = time.monotonic() + 5
            while len(AuditLog(settings.spool_dir).records()) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            scp.stop()
    records = AuditLog(settings.spool_dir).records()
    assert [(r["stored"], r["failed"]) for r in records] == [(1, 0), (0, 1)]
    texts = [caplog.text, *(p.read_text() for p in (settings.spool_dir / "audit").glob("*.jsonl")),
             *(p.read_text() for p in settings.spool_dir.rglob("*.reason.txt")),
             *(p.read_text() for p in settings.spool_dir.rglob("*.json"))]
    assert any("truncated" in t for t in texts)  # the refusal was explained somewhere
    for value in (PATIENT_NAME, "Doe^Janet", "Janet", PATIENT_ID, "5550199"):
        for text in texts:
            assert value not in text


def _reference_after_barrier(spool: str, barrier, results) -> None:
    barrier.wait()
    results.put(AuditLog(spool).patient_ref(PATIENT_ID))


def test_processes_racing_for_the_salt_share_one(tmp_path: Path) -> None:
    """Node and workers write one spool's audit trail: the first salt published wins, and no
    process ever reads a half-written one (same patient, same reference everywhere)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    for attempt in range(3):
        spool = tmp_path / f"spool{attempt}"
        barrier, results = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_reference_after_barrier, args=(str(spool), barrier, results))
                 for _ in range(6)]
        for proc in procs:
            proc.start()
        refs = [results.get(timeout=30) for _ in procs]
        for proc in procs:
            proc.join(30)
            assert proc.exitcode == 0
        assert len(set(refs)) == 1
        assert len((spool / "audit" / ".salt").read_bytes()) == 32
        assert [p.name for p in (spool / "audit").iterdir() if p.name.startswith(".salt.")] == []


def test_salt_appears_whole_and_the_first_published_wins(tmp_path: Path, monkeypatch) -> None:
    """The salt file only ever appears complete (linked from a finished temporary file); a
    process that loses the race reads the winner's salt."""
    import dicom_node.audit as audit

    log = AuditLog(tmp_path / "spool")
    salt_path = tmp_path / "spool" / "audit" / ".salt"
    winner = b"w" * 32
    real_link = os.link

    def link(src: str, dst: os.PathLike) -> None:
        assert not salt_path.exists()  # nothing visible before the whole salt is written
        assert len(Path(src).read_bytes()) == 32
        salt_path.write_bytes(winner)  # another process publishes first
        real_link(src, dst)

    monkeypatch.setattr(audit.os, "link", link)
    ref = log.patient_ref(PATIENT_ID)
    assert salt_path.read_bytes() == winner
    assert ref == hashlib.sha256(winner + PATIENT_ID.encode()).hexdigest()[:16]
    assert [p.name for p in salt_path.parent.iterdir()] == [".salt"]
