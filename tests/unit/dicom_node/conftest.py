"""Fixtures shared by the dicom_node unit tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dicom_node.config import Settings
from dicom_node.scp import StorageSCP
from dicom_node.standins.synthetic import write_bto
from dicom_node.volume import LoadedVolume, load_series
from tests.helpers.dicom_data import breast_volume


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


@pytest.fixture(scope="module")
def bto_source(tmp_path_factory: pytest.TempPathFactory) -> LoadedVolume:
    """A right CC multi-frame BTO (synthetic breast), loaded."""
    out = tmp_path_factory.mktemp("bto")
    paths = write_bto(breast_volume(laterality="R"), out, laterality="R", view="CC",
                      pixel_spacing_mm=0.1, slice_thickness_mm=1.0, seed=5)
    return load_series(paths)


@pytest.fixture(scope="module")
def slice_source(tmp_path_factory: pytest.TempPathFactory) -> LoadedVolume:
    """A left MLO as six single-frame instances, loaded."""
    out = tmp_path_factory.mktemp("slices")
    paths = write_bto(breast_volume(frames=6), out, laterality="L", view="MLO",
                      pixel_spacing_mm=0.1, slice_thickness_mm=1.0, seed=6, per_slice=True)
    return load_series(paths)
