"""The three stages as plain functions, on a real spool, the shipped bundle and real peers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pynetdicom.sop_class import (Comprehensive3DSRStorage, ParametricMapStorage,
                                  SegmentationStorage)

from dicom_node.config import Destination, Settings
from dicom_node.audit import AuditLog
from dicom_node.outbox import Outbox, OutboxState
from dicom_node.results import ResultFolder, result_id, results_root
from dicom_node.spool import SeriesRef, SeriesState, Spool
from tests.helpers.servers import free_port, start_storescp, stop_process
from workers import pipeline


def _analyzed(settings: Settings, ref: SeriesRef, bundle: Path | None = None) -> ResultFolder:
    outcome = pipeline.analyze(Path(ref.directory), results_root(settings.spool_dir),
                               bundle=bundle)
    assert outcome.computed
    return outcome.folder


def test_analyze_writes_the_folder_once(settings: Settings, spooled_series: SeriesRef) -> None:
    folder = _analyzed(settings, spooled_series)
    summary = folder.summary()
    uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
            for p in Spool(settings.spool_dir).series_files(spooled_series)]
    model = pipeline.get_model(None)
    assert folder.result_id == result_id(uids, pipeline.model_version(model)) == summary["result_id"]
    assert summary["series_uid"] == spooled_series.series_uid
    heatmap = folder.heatmap()
    assert heatmap.shape == tuple(summary["shape"]) == (3, 128, 96)
    assert np.isclose(heatmap.max(), summary["max_score"])
    again = pipeline.analyze(Path(spooled_series.directory), results_root(settings.spool_dir))
    assert not again.computed and again.folder.path == folder.path


def test_encode_is_idempotent(settings: Settings, spooled_series: SeriesRef,
                              low_threshold_bundle: Path) -> None:
    folder = _analyzed(settings, spooled_series, low_threshold_bundle)  # findings: an SR
    assert not folder.encoded
    paths = pipeline.encode(folder.path)
    assert folder.encoded and paths == folder.objects()
    classes = {pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID for p in paths}
    assert classes == {ParametricMapStorage, SegmentationStorage, Comprehensive3DSRStorage}
    stamps = [p.stat().st_mtime_ns for p in paths]
    assert pipeline.encode(folder.path) == paths
    assert [p.stat().st_mtime_ns for p in paths] == stamps  # not written again


def test_export_delivers_once_and_marks_the_series_done(
        tmp_path: Path, settings: Settings, spooled_series: SeriesRef,
        low_threshold_bundle: Path) -> None:
    folder = _analyzed(settings, spooled_series, low_threshold_bundle)
    pipeline.encode(folder.path)
    proc, port = start_storescp(tmp_path / "pacs")
    try:
        dest = Destination(ae_title="STORESCP", host="127.0.0.1", port=port)
        settings = settings.model_copy(update={"destinations": [dest]})
        report = pipeline.export(folder.path, settings)
        assert report.complete and report.sent == ["STORESCP"] and report.retry_in is None
        assert len(list((tmp_path / "pacs").iterdir())) == 3
        assert folder.delivered_to(dest)
        again = pipeline.export(folder.path, settings)
        assert again.complete and again.sent == []  # the marker stops a second delivery
    finally:
        stop_process(proc)
    assert len(list((tmp_path / "pacs").iterdir())) == 3
    assert Spool(settings.spool_dir).state(spooled_series) is SeriesState.DONE
    assert Outbox(settings.spool_dir).entries() == []
    outcomes = [r["outcome"] for r in AuditLog(settings.spool_dir).records()
                if r["event"] == "delivery"]
    assert outcomes == ["delivered"]


def test_failed_export_waits_in_the_outbox_then_dead_letters(
        settings: Settings, spooled_series: SeriesRef) -> None:
    folder = _analyzed(settings, spooled_series)
    pipeline.encode(folder.path)
    nobody = Destination(ae_title="NOBODY", host="127.0.0.1", port=free_port())
    settings = settings.model_copy(update={"destinations": [nobody],
                                           "export_retry_base_seconds": 7})
    report = pipeline.export(folder.path, settings)
    assert not report.complete and report.retry_in == 7 and report.error
    (entry,) = Outbox(settings.spool_dir).entries()
    assert entry.state is OutboxState.PENDING and entry.attempts == 1
    report = pipeline.export(folder.path, settings)
    assert report.retry_in == 14  # exponential backoff
    dead = pipeline.export(folder.path,
                           settings.model_copy(update={"dead_letter_after_seconds": 0}))
    assert dead.dead_letter and dead.retry_in is None
    assert [e.state for e in Outbox(settings.spool_dir).entries()] == [OutboxState.DEAD_LETTER]
    assert Spool(settings.spool_dir).state(spooled_series) is SeriesState.COMPLETE
    # a dead-lettered result is not tried again until `outbox retry` revives it
    assert pipeline.export(folder.path, settings).dead_letter


def test_export_without_destinations_keeps_the_result(settings: Settings,
                                                      spooled_series: SeriesRef) -> None:
    folder = _analyzed(settings, spooled_series)
    pipeline.encode(folder.path)
    report = pipeline.export(folder.path, settings)
    assert report.complete and report.sent == []
    assert folder.objects() and Outbox(settings.spool_dir).entries() == []


def test_series_files_refuses_an_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no .dcm files"):
        pipeline.series_files(tmp_path)


def test_fast_mode_is_recorded_and_keyed_apart(settings: Settings,
                                               spooled_series: SeriesRef) -> None:
    root = results_root(settings.spool_dir)
    exact = pipeline.analyze(Path(spooled_series.directory), root)
    fast = pipeline.analyze(Path(spooled_series.directory), root, mode="fast")
    assert fast.computed and fast.folder.path != exact.folder.path
    assert exact.folder.summary()["scoring"]["mode"] == "exact"
    scoring = fast.folder.summary()["scoring"]
    assert scoring["mode"] == "fast" and scoring["slice_step"] > 1
    assert scoring["rule"] in ("min", "mean", "median") and scoring["M"] >= 1
