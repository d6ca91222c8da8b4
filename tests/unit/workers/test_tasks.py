"""The Celery tasks called in-process: what they pass on, quarantine, retry and dispatch."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery.exceptions import Reject

from dicom_node.config import Destination, Settings
from dicom_node.outbox import Outbox
from dicom_node.results import ResultFolder
from dicom_node.spool import SeriesRef, SeriesState, Spool
from tests.helpers.servers import free_port
from workers import tasks
from workers.celery_app import broker_folders, install_app


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    install_app(settings)
    return settings


def test_chain_of_stages_passes_the_result_folder(app_settings: Settings,
                                                  spooled_series: SeriesRef) -> None:
    result_dir = tasks.analyze(spooled_series.directory)
    folder = ResultFolder(result_dir)
    assert folder.analyzed and folder.path.parent == app_settings.spool_dir / "results"
    assert tasks.encode(result_dir) == result_dir and folder.encoded
    assert tasks.export(result_dir) == []  # no destinations: nothing sent, nothing pending
    assert Outbox(app_settings.spool_dir).entries() == []


def test_unloadable_series_is_quarantined_and_rejected(app_settings: Settings,
                                                       spooled_series: SeriesRef) -> None:
    spool = Spool(app_settings.spool_dir)
    for path in spool.series_files(spooled_series):
        path.write_bytes(path.read_bytes()[:2000])  # header only, pixel data cut off
    with pytest.raises(Reject, match="quarantined"):
        tasks.analyze(spooled_series.directory)
    assert spool.series_files(spooled_series) == []
    reasons = list(spool.quarantine_dir.glob("*.reason.txt"))
    assert len(reasons) == 1
    # listed as failed (quarantined), not dispatched again on restart, retried on demand
    assert spool.state(spooled_series) is SeriesState.FAILED
    failure = spool.read_marker(spooled_series, SeriesState.FAILED)
    assert failure["stage"] == "analyze" and failure["reason"].startswith("quarantined:")
    assert spool.restore_quarantined(spooled_series) == 1
    assert len(spool.series_files(spooled_series)) == 1
    assert list(spool.quarantine_dir.glob("*.reason.txt")) == []


def test_failed_export_raises_for_a_retry(app_settings: Settings,
                                          spooled_series: SeriesRef) -> None:
    result_dir = tasks.encode(tasks.analyze(spooled_series.directory))
    nobody = Destination(ae_title="NOBODY", host="127.0.0.1", port=free_port())
    app_settings.destinations.append(nobody)
    # called directly, Task.retry raises the error it was given instead of re-queuing
    with pytest.raises(RuntimeError, match="ExportError|ConnectionRefused|association"):
        tasks.export(result_dir)
    assert Outbox(app_settings.spool_dir).get(Path(result_dir).name).attempts == 1


def test_dispatch_series_enqueues_one_message_on_the_gpu_queue(app_settings: Settings,
                                                               spooled_series: SeriesRef) -> None:
    queue = broker_folders(app_settings.spool_dir)["queue"]
    before = set(queue.iterdir())
    job_id = tasks.dispatch_series(spooled_series.directory)
    new = set(queue.iterdir()) - before
    assert job_id and len(new) == 1
    assert "picard.analyze" in next(iter(new)).read_text()
