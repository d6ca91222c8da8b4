"""Session-wide fixtures: real servers on free loopback ports, synthetic exams."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers.servers import Orthanc, RedisServer


def _require(binary: str) -> None:
    if shutil.which(binary) is None:
        pytest.fail(f"{binary!r} is not installed; `make test` installs it (apt)")


@pytest.fixture
def redis_server(tmp_path: Path):
    """A real redis-server for one test."""
    _require("redis-server")
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def orthanc_factory(tmp_path: Path):
    """Start Orthanc instances (PACS stand-ins) that are stopped after the test."""
    _require("Orthanc")
    started: list[Orthanc] = []

    def make(**kwargs) -> Orthanc:
        server = Orthanc(tmp_path / f"orthanc{len(started)}", **kwargs)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
