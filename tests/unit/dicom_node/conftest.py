"""Fixtures shared by the dicom_node unit tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dicom_node.config import Settings
from dicom_node.scp import StorageSCP


@pytest.fixture
def make_scp(tmp_path: Path) -> Iterator[Callable[..., StorageSCP]]:
    """Start storage SCPs on a free loopback port (``Settings`` overrides as keywords).

    Each SCP spools under ``tmp_path / "spool"``, ignores completed series and is stopped
    after the test. ``test_scp.py`` overrides this fixture with one that records callbacks.
    """
    started: list[StorageSCP] = []

    def factory(**overrides: object) -> StorageSCP:
        values = dict(host="127.0.0.1", port=0, spool_dir=tmp_path / "spool",
                      series_quiet_seconds=30, min_free_bytes=0)
        values.update(overrides)
        scp = StorageSCP(Settings(**values), lambda ref: None)
        scp.start()
        started.append(scp)
        return scp

    yield factory
    for scp in started:
        scp.stop()
