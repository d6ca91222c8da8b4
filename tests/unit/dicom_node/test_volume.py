"""Tests for dicom_node.volume: loading BTO and per-slice series, laterality, errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, MultiFrameGrayscaleWordSecondaryCaptureImageStorage

from dicom_node.standins.synthetic import write_bto
from dicom_node.laterality import chest_wall_side
from dicom_node.volume import VolumeError, load_series, stored_values, unflip, unflip_frames
from tests.helpers.dicom_data import breast_volume

QUANT = 0.5 / 4095 + 1e-6
GEOM = dict(pixel_spacing_mm=0.1, slice_thickness_mm=1.0)


def _write(tmp_path: Path, vol: np.ndarray, name: str = "bto", **kwargs) -> list[Path]:
    args = dict(laterality="L", view="CC", seed=11, **GEOM)
    args.update(kwargs)
    return write_bto(vol, tmp_path / name, **args)


def test_load_bto_left(tmp_path: Path) -> None:
    vol = breast_volume()
    paths = _write(tmp_path, vol)
    loaded = load_series(paths)
    assert loaded.pixels.dtype == np.float32 and loaded.pixels.shape == vol.shape
    np.testing.assert_allclose(loaded.pixels, vol, atol=QUANT)
    assert not loaded.flipped and loaded.laterality == "L" and loaded.header_laterality == "L"
    assert loaded.pixel_spacing_mm == (0.1, 0.1)
    assert loaded.slice_thickness_mm == pytest.approx(1.0)
    header = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert loaded.study_uid == header.StudyInstanceUID
    assert loaded.series_uid == header.SeriesInstanceUID
    assert len(loaded.source_datasets) == 1 and "PixelData" not in loaded.source_datasets[0]


def test_right_breast_flip_and_unflip(tmp_path: Path) -> None:
    stored = breast_volume(laterality="R")
    loaded = load_series(_write(tmp_path, stored, laterality="R"))
    assert loaded.flipped and loaded.laterality == "R"
    assert chest_wall_side(loaded.pixels) == "left"
    np.testing.assert_allclose(loaded.pixels, stored[..., ::-1], atol=QUANT)
    back = unflip(loaded.pixels, loaded)
    np.testing.assert_allclose(back, stored, atol=QUANT)
    with pytest.raises(ValueError, match="differs from volume shape"):
        unflip(loaded.pixels[:2], loaded)
    # some frames only (the expected-tissue images): the same mirror
    some = unflip_frames(loaded.pixels[[0, 2]], loaded)
    np.testing.assert_allclose(some, stored[[0, 2]], atol=QUANT)
    with pytest.raises(ValueError, match="differ from the volume"):
        unflip_frames(loaded.pixels[:, 1:], loaded)


def test_header_laterality_wrong_pixels_win(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stored = breast_volume(laterality="R")  # chest wall at the last column
    with caplog.at_level(logging.WARNING, logger="dicom_node.volume"):
        loaded = load_series(_write(tmp_path, stored, laterality="L"))
    assert loaded.header_laterality == "L"
    assert loaded.laterality == "R" and loaded.flipped
    assert "disagrees with the pixels" in caplog.text


def test_ambiguous_pixels_trust_header(tmp_path: Path) -> None:
    vol = np.full((3, 16, 16), 0.5, np.float32)
    loaded = load_series(_write(tmp_path, vol, laterality="R"))
    assert loaded.laterality == "R" and loaded.flipped


def test_jpeg2000(tmp_path: Path) -> None:
    vol = breast_volume(frames=4)
    loaded = load_series(_write(tmp_path, vol, transfer_syntax=JPEG2000Lossless))
    np.testing.assert_allclose(loaded.pixels, vol, atol=QUANT)


@pytest.mark.parametrize("transfer_syntax", ["1.2.840.10008.1.2.1", JPEG2000Lossless])
def test_per_slice_series_sorted_by_position(tmp_path: Path, transfer_syntax: str) -> None:
    vol = breast_volume(frames=6)
    paths = _write(tmp_path, vol, per_slice=True, view="MLO", transfer_syntax=transfer_syntax)
    shuffled = [paths[i] for i in (3, 0, 5, 1, 4, 2)]
    loaded = load_series(shuffled)
    np.testing.assert_allclose(loaded.pixels, vol, atol=QUANT)
    assert [int(d.InstanceNumber) for d in loaded.source_datasets] == [1, 2, 3, 4, 5, 6]
    assert all("PixelData" not in d for d in loaded.source_datasets)
    assert loaded.source_paths == paths
    assert loaded.slice_thickness_mm == pytest.approx(1.0)


def test_per_slice_without_positions_uses_instance_number(tmp_path: Path) -> None:
    vol = breast_volume(frames=4)
    paths = _write(tmp_path, vol, per_slice=True)
    for p in paths:
        ds = pydicom.dcmread(p)
        del ds.ImagePositionPatient
        ds.save_as(p)
    loaded = load_series(list(reversed(paths)))
    np.testing.assert_allclose(loaded.pixels, vol, atol=QUANT)


def test_monochrome1_inverted(tmp_path: Path) -> None:
    vol = breast_volume(frames=2)
    paths = _write(tmp_path, 1.0 - vol, per_slice=True)  # stored: air = max
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.save_as(p)
    loaded = load_series(paths)
    assert not loaded.flipped
    np.testing.assert_allclose(loaded.pixels, vol, atol=QUANT)
    # stored_values undoes the normalisation, inversion included (what burned-in images use)
    stored = np.stack([pydicom.dcmread(p).pixel_array for p in paths]).astype(np.float32)
    back = stored_values(loaded.pixels, loaded.source_datasets[0])
    np.testing.assert_allclose(back, stored, atol=0.5)


# ----------------------------------------------------------------------------- errors


def test_no_files() -> None:
    with pytest.raises(VolumeError, match="no files"):
        load_series([])


def test_mixed_series(tmp_path: Path) -> None:
    vol = breast_volume(frames=2)
    a = _write(tmp_path, vol, name="a", per_slice=True, seed=1)
    b = _write(tmp_path, vol, name="b", per_slice=True, seed=2)
    with pytest.raises(VolumeError, match="mixed series"):
        load_series(a + b)


def test_two_multiframe_objects(tmp_path: Path) -> None:
    vol = breast_volume(frames=2)
    (a,) = _write(tmp_path, vol, name="a")
    ds = pydicom.dcmread(a)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    b = tmp_path / "b.dcm"
    ds.save_as(b)
    with pytest.raises(VolumeError, match="expected one multi-frame object"):
        load_series([a, b])


def test_pixel_data_too_short(tmp_path: Path) -> None:
    (path,) = _write(tmp_path, breast_volume(frames=3))
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(path)
    with pytest.raises(VolumeError, match="shorter than Rows x Columns x Frames"):
        load_series([path])


def test_absurd_dimensions(tmp_path: Path) -> None:
    paths = _write(tmp_path, breast_volume(frames=3))
    with pytest.raises(VolumeError, match="absurd dimensions"):
        load_series(paths, max_shape=(2, 4096, 4096))
    with pytest.raises(VolumeError, match="bytes as float32"):
        load_series(paths, max_bytes=1000)
    ds = pydicom.dcmread(paths[0])
    ds.Rows = 60000
    ds.save_as(paths[0])
    with pytest.raises(VolumeError, match="absurd dimensions"):
        load_series(paths)


def test_bto_missing_functional_groups(tmp_path: Path) -> None:
    (path,) = _write(tmp_path, breast_volume(frames=2))
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence
    ds.save_as(path)
    with pytest.raises(VolumeError, match="Functional Groups"):
        load_series([path])


def test_bto_missing_plane_position(tmp_path: Path) -> None:
    (path,) = _write(tmp_path, breast_volume(frames=2))
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence
    ds.save_as(path)
    with pytest.raises(VolumeError, match="Plane Position functional group for frame 2"):
        load_series([path])


def test_duplicate_positions(tmp_path: Path) -> None:
    (path,) = _write(tmp_path, breast_volume(frames=3))
    ds = pydicom.dcmread(path)
    for item in ds.PerFrameFunctionalGroupsSequence:
        item.PlanePositionSequence[0].ImagePositionPatient = [0, 0, 0]
    ds.save_as(path)
    with pytest.raises(VolumeError, match="duplicate frame positions"):
        load_series([path])


def test_per_slice_inconsistent_size(tmp_path: Path) -> None:
    vol = breast_volume(frames=2)
    paths = _write(tmp_path, vol, per_slice=True)
    ds = pydicom.dcmread(paths[1])
    small = np.zeros((32, 48), np.uint16)
    ds.Rows = 32
    ds.PixelData = small.tobytes()
    ds.save_as(paths[1])
    with pytest.raises(VolumeError, match="inconsistent geometry"):
        load_series(paths)


def test_not_greyscale(tmp_path: Path) -> None:
    paths = _write(tmp_path, breast_volume(frames=1), per_slice=True)
    ds = pydicom.dcmread(paths[0])
    ds.PhotometricInterpretation = "RGB"
    ds.save_as(paths[0])
    with pytest.raises(VolumeError, match="not greyscale"):
        load_series(paths)


def test_volume_error_is_value_error() -> None:
    assert issubclass(VolumeError, ValueError)


def test_multiframe_without_functional_groups(tmp_path: Path) -> None:
    vol = breast_volume(frames=3)
    (path,) = _write(tmp_path, vol)
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    del ds.SharedFunctionalGroupsSequence
    del ds.PerFrameFunctionalGroupsSequence
    ds.ImageLaterality = "L"
    ds.save_as(path)
    with pytest.raises(VolumeError, match="no pixel spacing"):
        load_series([path])
    ds.NominalScannedPixelSpacing = [0.2, 0.2]
    ds.save_as(path)
    loaded = load_series([path])
    assert loaded.pixel_spacing_mm == (0.2, 0.2) and loaded.laterality == "L"
    np.testing.assert_allclose(loaded.pixels, vol, atol=QUANT)
