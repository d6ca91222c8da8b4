"""Fixtures of the workers tests: one small synthetic exam in a real spool."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.config import Settings
from dicom_node.spool import SeriesRef, Spool
from tests.helpers.tiny_models import bundle_with_threshold
from workers.cli import main


@pytest.fixture(scope="module")
def exam_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A 3-slice left CC BTO at the default bundle's 0.4 mm, written by ``picard-node synth``."""
    out = tmp_path_factory.mktemp("exam")
    assert main(["--log-level", "warning", "synth", str(out), "--seed", "5", "--slices", "3",
                 "--rows", "128", "--cols", "96", "--pixel-spacing", "0.4"]) == 0
    files = sorted(out.glob("*.dcm"))
    assert len(files) == 1
    return files


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Node settings spooling under ``tmp_path`` with no destinations."""
    return Settings(spool_dir=tmp_path / "spool", min_free_bytes=0)


@pytest.fixture
def spooled_series(settings: Settings, exam_files: list[Path]) -> SeriesRef:
    """The exam stored in the spool the way the SCP stores it."""
    import pydicom

    spool = Spool(settings.spool_dir)
    ref = None
    for path in exam_files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ref = spool.store_bytes(path.read_bytes(), study_uid=ds.StudyInstanceUID,
                                series_uid=ds.SeriesInstanceUID,
                                sop_instance_uid=ds.SOPInstanceUID).series
        spool.mark_received(ref)
    spool.mark_complete(ref, reason="test")
    return ref


@pytest.fixture(scope="session")
def low_threshold_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped bundle with its threshold at 0: every scored voxel is a finding, so the
    finding-dependent objects (key images, expected tissue) always exist."""
    return bundle_with_threshold(tmp_path_factory.mktemp("bundle") / "low-threshold", 0.0,
                                 "test")
