"""Every accepted series ends delivered or listed (issue 11, findings 1, 2 and 5): stage
failures, the status view, retries, the watchdog and idempotent ``outbox retry``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from celery.exceptions import Reject

from dicom_node.config import Settings
from dicom_node.inventory import node_status
from dicom_node.outbox import Outbox
from dicom_node.results import ResultFolder
from dicom_node.series import MAX_DISPATCHES
from dicom_node.spool import SeriesRef, SeriesState, Spool
from workers import pipeline, tasks
from workers.celery_app import broker_folders, install_app
from workers.cli import main
from workers.node import Dispatcher
from workers.ops import retry_exports, retry_series

SECRET = "1961-07-23"


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    install_app(settings)
    return settings


def _queued(settings: Settings) -> list[dict]:
    """The messages waiting in the embedded broker's queue folder."""
    folder = broker_folders(settings.spool_dir)["queue"]
    return [json.loads(p.read_text()) for p in sorted(folder.iterdir()) if p.is_file()]


def _fake_result(settings: Settings, ref: SeriesRef) -> ResultFolder:
    """An analyzed result folder of `ref` without running the model."""
    import numpy as np

    folder = ResultFolder(settings.spool_dir / "results" / "r0")
    folder.write_analysis(np.zeros((1, 2, 2), np.float32), {
        "result_id": "r0", "study_uid": ref.study_uid, "series_uid": ref.series_uid,
        "sources": [str(p) for p in Spool(settings.spool_dir).series_files(ref)]})
    return folder


def test_non_retryable_encode_failure_is_listed_without_phi_and_retried(
        app_settings: Settings, spooled_series: SeriesRef, monkeypatch, caplog) -> None:
    folder = _fake_result(app_settings, spooled_series)

    def broken(*args, **kwargs):
        raise ValueError(f"Unable to convert '{SECRET}' to 'DA' object")

    monkeypatch.setattr(pipeline, "encode", broken)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(Reject, match="picard.encode failed: ValueError") as info:
            tasks.encode(str(folder.path))
    assert SECRET not in str(info.value) and info.value.__cause__ is None
    spool = Spool(app_settings.spool_dir)
    assert spool.state(spooled_series) is SeriesState.FAILED
    status = node_status(app_settings.spool_dir, stuck_after_seconds=60)
    (failed,) = status.failed
    assert (failed.series_uid, failed.stage) == (spooled_series.series_uid, "encode")
    assert "ValueError" in failed.reason and SECRET not in failed.reason
    assert SECRET not in caplog.text
    # `picard-node retry` dispatches it again
    lines = retry_series(app_settings, [spooled_series.series_uid], all_=False)
    assert "queued as job" in lines[0]
    assert spool.state(spooled_series) is SeriesState.DISPATCHED
    assert [m["headers"]["task"] for m in _queued(app_settings)] == ["picard.analyze"]


def test_oserror_that_outlives_its_retries_ends_failed(app_settings: Settings,
                                                       spooled_series: SeriesRef,
                                                       monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/spool/results/x")

    monkeypatch.setattr(pipeline, "analyze", broken)
    with pytest.raises(Reject, match="PermissionError"):
        tasks.analyze(spooled_series.directory)  # called directly: retry re-raises at once
    failure = Spool(app_settings.spool_dir).read_marker(spooled_series, SeriesState.FAILED)
    assert failure["stage"] == "analyze" and "Permission denied" in failure["reason"]


def test_status_command_lists_failures_and_exits_1(app_settings: Settings,
                                                   spooled_series: SeriesRef, capsys) -> None:
    spool = Spool(app_settings.spool_dir)
    assert main(["status", "--spool-dir", str(app_settings.spool_dir)]) == 0
    capsys.readouterr()
    spool.mark_failed(spooled_series, stage="encode", reason="ValueError at x.py:1")
    assert main(["status", "--spool-dir", str(app_settings.spool_dir), "--json"]) == 1
    listed = json.loads(capsys.readouterr().out)
    assert [s["series_uid"] for s in listed["failed"]] == [spooled_series.series_uid]
    assert main(["status", "--spool-dir", str(app_settings.spool_dir)]) == 1
    out = capsys.readouterr().out
    assert spooled_series.series_uid in out and "ValueError at x.py:1" in out


def test_watchdog_redispatches_stuck_series_then_gives_up(app_settings: Settings,
                                                          spooled_series: SeriesRef) -> None:
    spool = Spool(app_settings.spool_dir)
    settings = app_settings.model_copy(update={"stuck_after_seconds": 0.01})
    dispatch = Dispatcher(settings)
    dispatch(spooled_series)
    for _ in range(MAX_DISPATCHES):
        time.sleep(0.05)
        dispatch.watchdog()
    assert spool.state(spooled_series) is SeriesState.FAILED
    failure = spool.read_marker(spooled_series, SeriesState.FAILED)
    assert failure["stage"] == "watchdog" and f"{MAX_DISPATCHES} dispatches" in failure["reason"]
    assert len(_queued(app_settings)) == MAX_DISPATCHES


def test_watchdog_leaves_series_waiting_in_the_outbox(app_settings: Settings,
                                                      spooled_series: SeriesRef) -> None:
    folder = _fake_result(app_settings, spooled_series)
    Outbox(app_settings.spool_dir).open(folder.result_id, folder.path, "job-1")
    settings = app_settings.model_copy(update={"stuck_after_seconds": 0.01})
    dispatch = Dispatcher(settings)
    dispatch(spooled_series)
    time.sleep(0.05)
    assert dispatch.watchdog() == 0


def test_outbox_retry_is_idempotent(app_settings: Settings, spooled_series: SeriesRef) -> None:
    folder = _fake_result(app_settings, spooled_series)
    outbox = Outbox(app_settings.spool_dir)
    outbox.open(folder.result_id, folder.path, "export-job-1")  # pending, its job queued
    lines = retry_exports(app_settings, [], all_=True)
    assert lines == ["r0: export already queued as job export-job-1; not queued again"]
    assert _queued(app_settings) == []
    outbox.dead_letter(folder.result_id)
    first = retry_exports(app_settings, [], all_=True)
    assert "export queued as job" in first[0]
    job = outbox.get(folder.result_id).job_id
    assert job and job in first[0]
    second = retry_exports(app_settings, [], all_=True)
    assert second == [f"r0: export already queued as job {job}; not queued again"]
    assert [m["headers"]["task"] for m in _queued(app_settings)] == ["picard.export"]


def test_a_pending_entry_without_a_job_is_queued(app_settings: Settings,
                                                 spooled_series: SeriesRef) -> None:
    folder = _fake_result(app_settings, spooled_series)
    Outbox(app_settings.spool_dir).open(folder.result_id, folder.path)  # e.g. job lost
    assert "export queued as job" in retry_exports(app_settings, ["r0"], all_=False)[0]
    assert len(_queued(app_settings)) == 1
    with pytest.raises(ValueError, match="not in the outbox"):
        retry_exports(app_settings, ["nope"], all_=False)


def test_quarantined_series_is_listed_and_comes_back_on_retry(app_settings: Settings,
                                                              spooled_series: SeriesRef) -> None:
    spool = Spool(app_settings.spool_dir)
    spool.quarantine_series(spooled_series, "cannot decode pixel data")
    status = node_status(app_settings.spool_dir, stuck_after_seconds=60)
    assert [s.state for s in status.failed] == ["quarantined"]
    assert status.refused_instances == 0  # its files are listed with the series
    retry_series(app_settings, [], all_=True)
    assert len(spool.series_files(spooled_series)) == 1
    assert spool.state(spooled_series) is SeriesState.DISPATCHED
    assert Path(spooled_series.directory).is_dir()


def test_export_that_fails_unexpectedly_frees_its_outbox_entry(app_settings: Settings,
                                                               spooled_series: SeriesRef,
                                                               monkeypatch) -> None:
    folder = _fake_result(app_settings, spooled_series)
    Outbox(app_settings.spool_dir).open(folder.result_id, folder.path, "export-job-1")

    def broken(*args, **kwargs):
        raise KeyError("sources")

    monkeypatch.setattr(pipeline, "export", broken)
    with pytest.raises(Reject, match="picard.export failed: KeyError"):
        tasks.export(str(folder.path))
    assert Outbox(app_settings.spool_dir).get("r0").job_id is None
    assert Spool(app_settings.spool_dir).state(spooled_series) is SeriesState.FAILED
    assert "export queued as job" in retry_exports(app_settings, [], all_=True)[0]
