"""The Celery app configuration: brokers, queues and reliability settings."""

from __future__ import annotations

from pathlib import Path

from celery import current_app

from dicom_node.config import Settings
from workers.celery_app import GPU_QUEUE, IO_QUEUE, broker_folders, get_app, install_app, make_celery


def test_embedded_broker_is_a_folder_in_the_spool(tmp_path: Path) -> None:
    settings = Settings(spool_dir=tmp_path / "spool")
    app = make_celery(settings)
    folders = broker_folders(settings.spool_dir)
    assert app.conf.broker_url == "filesystem://"
    options = app.conf.broker_transport_options
    assert options["data_folder_in"] == options["data_folder_out"] == str(folders["queue"])
    assert all(folder.is_dir() for folder in folders.values())
    assert app.conf.picard_settings is settings


def test_redis_broker_redelivers_after_the_visibility_timeout(tmp_path: Path) -> None:
    settings = Settings(spool_dir=tmp_path, broker_url="redis://127.0.0.1:6399/0",
                        visibility_timeout_seconds=1234)
    app = make_celery(settings)
    assert app.conf.broker_url == "redis://127.0.0.1:6399/0"
    assert app.conf.broker_transport_options == {"visibility_timeout": 1234}
    assert not (tmp_path / "broker").exists()


def test_queues_and_reliability(tmp_path: Path) -> None:
    conf = make_celery(Settings(spool_dir=tmp_path)).conf
    assert conf.task_routes["picard.analyze"] == {"queue": GPU_QUEUE}
    assert conf.task_routes["picard.encode"] == conf.task_routes["picard.export"] == {"queue": IO_QUEUE}
    # long GPU jobs: one reserved at a time, acknowledged only when done, re-run if lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]


def test_install_app_is_what_every_caller_sees(tmp_path: Path) -> None:
    app = install_app(Settings(spool_dir=tmp_path))
    assert get_app() is app and current_app._get_current_object() is app
