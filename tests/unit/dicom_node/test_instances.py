"""Receive-time checks of an instance (dicom_node.instances), without a network."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    BreastTomosynthesisImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from dicom_node.instances import (
    ACCEPTED_SOP_CLASSES,
    InvalidInstanceError,
    StoreStatus,
    decodable_transfer_syntaxes,
    read_instance_header,
)
from tests.helpers.netdata import write_multiframe


def test_accepts_compressed_transfer_syntaxes_it_can_decode() -> None:
    syntaxes = decodable_transfer_syntaxes()
    for uid in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                RLELossless, JPEG2000Lossless):
        assert uid in syntaxes
    assert syntaxes[0] == ExplicitVRLittleEndian  # preferred when a peer offers several


def test_read_instance_header_accepts_good_files(tmp_path: Path) -> None:
    for ts in (ExplicitVRLittleEndian, JPEG2000Lossless, DeflatedExplicitVRLittleEndian):
        path = write_multiframe(tmp_path / f"{ts}.dcm", transfer_syntax=ts, frames=3)
        header = read_instance_header(path)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert header.sop_instance_uid == ds.SOPInstanceUID
        assert header.series_uid == ds.SeriesInstanceUID
        assert header.number_of_frames == 3
        assert header.transfer_syntax == ts


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                JPEG2000Lossless])
@pytest.mark.parametrize("cut", [0.5, 0.95])
def test_read_instance_header_detects_truncation(tmp_path: Path, ts: str, cut: float) -> None:
    path = write_multiframe(tmp_path / "mf.dcm", transfer_syntax=ts, rows=64, cols=64)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(InvalidInstanceError) as info:
        read_instance_header(path)
    assert info.value.status == StoreStatus.CANNOT_UNDERSTAND


def test_read_instance_header_detects_trailing_bytes(tmp_path: Path) -> None:
    path = write_multiframe(tmp_path / "mf.dcm")
    path.write_bytes(path.read_bytes() + b"\x00\x01\x02")
    with pytest.raises(InvalidInstanceError, match="trailing bytes"):
        read_instance_header(path)


def test_read_instance_header_refuses_missing_identifiers(tmp_path: Path) -> None:
    path = write_multiframe(tmp_path / "mf.dcm")
    ds = pydicom.dcmread(path)
    del ds.SeriesInstanceUID
    ds.save_as(path)
    with pytest.raises(InvalidInstanceError, match="SeriesInstanceUID") as info:
        read_instance_header(path)
    assert info.value.status == StoreStatus.DATASET_MISMATCH


def test_read_instance_header_refuses_non_dicom(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(b"not dicom at all" * 20)
    with pytest.raises(InvalidInstanceError) as info:
        read_instance_header(path)
    assert info.value.status == StoreStatus.CANNOT_UNDERSTAND


def test_accepted_sop_classes_are_named_by_pydicom() -> None:
    assert ACCEPTED_SOP_CLASSES[BreastTomosynthesisImageStorage] == (
        "Breast Tomosynthesis Image Storage")
    assert all(name == pydicom.uid.UID(uid).name for uid, name in ACCEPTED_SOP_CLASSES.items())
