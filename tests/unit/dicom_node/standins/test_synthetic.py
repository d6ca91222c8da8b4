"""Tests for dicom_node.standins.synthetic: BTO / per-slice writers and the truth SEG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from dicom_node.encode.display import TRUTH_RGB
from dicom_node.standins.dciodvfy import dciodvfy_available, run_dciodvfy
from dicom_node.standins.geometry import geometry, patient_orientation
from dicom_node.standins.synthetic import (
    BTO_SOP_CLASS_UID,
    MG_FOR_PRESENTATION_SOP_CLASS_UID,
    write_bto,
    write_truth_seg,
)
from tests.helpers.dicom_data import blob_mask, breast_volume, seg_to_volume

needs_dciodvfy = pytest.mark.skipif(not dciodvfy_available(), reason="dciodvfy not installed")

GEOM = dict(pixel_spacing_mm=0.1, slice_thickness_mm=1.0)


def _write(tmp_path: Path, name: str = "bto", **kwargs) -> list[Path]:
    args = dict(laterality="L", view="CC", seed=7, **GEOM)
    args.update(kwargs)
    vol = args.pop("volume", breast_volume())
    return write_bto(vol, tmp_path / name, **args)


def test_bto_header_and_pixels(tmp_path: Path) -> None:
    vol = breast_volume()
    (path,) = _write(tmp_path, volume=vol)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == BTO_SOP_CLASS_UID
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert int(ds.NumberOfFrames) == 8 and (ds.Rows, ds.Columns) == (64, 48)
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsAllocated == 16
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert shared.FrameAnatomySequence[0].FrameLaterality == "L"
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [0.1, 0.1]
    assert ds.ViewCodeSequence[0].CodeValue == "399162004"
    positions = np.array(
        [
            f.PlanePositionSequence[0].ImagePositionPatient
            for f in ds.PerFrameFunctionalGroupsSequence
        ],
        dtype=float,
    )
    iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    np.testing.assert_allclose(np.diff(positions, axis=0), np.tile(normal, (7, 1)), atol=1e-5)
    expected = np.rint(vol * 4095).astype(np.uint16)
    np.testing.assert_array_equal(ds.pixel_array, expected)


@needs_dciodvfy
def test_bto_dciodvfy_clean(tmp_path: Path) -> None:
    (path,) = _write(tmp_path, view="MLO", laterality="R", volume=breast_volume(laterality="R"))
    errors, _ = run_dciodvfy(path)
    assert errors == []


def test_jpeg2000_round_trip(tmp_path: Path) -> None:
    (plain,) = _write(tmp_path, name="plain")
    (j2k,) = _write(tmp_path, name="j2k", transfer_syntax=JPEG2000Lossless)
    a, b = pydicom.dcmread(plain), pydicom.dcmread(j2k)
    assert b.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert b.SOPInstanceUID == a.SOPInstanceUID == b.file_meta.MediaStorageSOPInstanceUID
    np.testing.assert_array_equal(b.pixel_array, a.pixel_array)
    if dciodvfy_available():
        assert run_dciodvfy(j2k)[0] == []


def test_per_slice_series(tmp_path: Path) -> None:
    vol = breast_volume(frames=5)
    paths = _write(tmp_path, per_slice=True, volume=vol)
    assert len(paths) == 5
    headers = [pydicom.dcmread(p) for p in paths]
    assert {h.SOPClassUID for h in headers} == {MG_FOR_PRESENTATION_SOP_CLASS_UID}
    assert len({h.SeriesInstanceUID for h in headers}) == 1
    assert len({h.SOPInstanceUID for h in headers}) == 5
    assert [int(h.InstanceNumber) for h in headers] == [1, 2, 3, 4, 5]
    z = [np.array(h.ImagePositionPatient, dtype=float) for h in headers]
    steps = [np.linalg.norm(b - a) for a, b in zip(z, z[1:])]
    np.testing.assert_allclose(steps, 1.0, atol=1e-5)
    for k, h in enumerate(headers):
        np.testing.assert_array_equal(h.pixel_array, np.rint(vol[k] * 4095).astype(np.uint16))
        assert h.ImageLaterality == "L"
    if dciodvfy_available():
        errors, _ = run_dciodvfy(paths[0])
        assert errors == []


def test_uids_deterministic(tmp_path: Path) -> None:
    a = pydicom.dcmread(_write(tmp_path, name="a", seed=3)[0])
    b = pydicom.dcmread(_write(tmp_path, name="b", seed=3)[0])
    c = pydicom.dcmread(_write(tmp_path, name="c", seed=4)[0])
    for attr in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        assert getattr(a, attr) == getattr(b, attr)
        assert getattr(a, attr) != getattr(c, attr)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(laterality="B"), "laterality must be"),
        (dict(view="ML"), "view must be one of"),
        (dict(volume=np.zeros((4, 4), np.float32)), "frames, rows, cols"),
        (dict(volume=np.zeros((2, 4, 4), np.uint16)), "floating point"),
        (dict(transfer_syntax="1.2.840.10008.1.2.5"), "transfer_syntax must be"),
    ],
)
def test_write_bto_rejects_bad_input(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _write(tmp_path, **kwargs)


@pytest.mark.parametrize("per_slice", [False, True])
def test_truth_seg(tmp_path: Path, per_slice: bool) -> None:
    vol = breast_volume()
    paths = _write(tmp_path, per_slice=per_slice, volume=vol)
    mask = blob_mask(vol.shape, (3, 30, 12), 4)
    seg_path = write_truth_seg(paths, mask, tmp_path / "truth")
    seg = pydicom.dcmread(seg_path)
    sources = sorted(
        (pydicom.dcmread(p, stop_before_pixels=True) for p in paths),
        key=lambda d: int(d.InstanceNumber),
    )
    assert seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    np.testing.assert_array_equal(seg_to_volume(seg, sources), mask)
    if dciodvfy_available():
        assert run_dciodvfy(seg_path)[0] == []


def test_truth_seg_rejects_wrong_shape(tmp_path: Path) -> None:
    paths = _write(tmp_path)
    with pytest.raises(ValueError, match="does not match source grid"):
        write_truth_seg(paths, np.zeros((7, 64, 48), bool), tmp_path / "truth")


def _all_keywords(ds: pydicom.Dataset) -> set[str]:
    found = set()
    for elem in ds.iterall():
        found.add(elem.keyword)
    return found


@pytest.mark.parametrize("per_slice", [False, True])
def test_no_voi_lut_function_and_usual_orientation(tmp_path: Path, per_slice: bool) -> None:
    """OHIF shows images carrying VOI LUT Function LINEAR black; a left CC hangs A\\R."""
    paths = _write(tmp_path, per_slice=per_slice)
    ds = pydicom.dcmread(paths[0])
    assert "VOILUTFunction" not in _all_keywords(ds)
    if per_slice:
        iop = [float(v) for v in ds.ImageOrientationPatient]
        assert list(ds.PatientOrientation) == ["A", "R"]
        assert float(ds.WindowWidth) > 0
    else:
        shared = ds.SharedFunctionalGroupsSequence[0]
        iop = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
        assert float(shared.FrameVOILUTSequence[0].WindowWidth) > 0
    # rows run anterior (towards the nipple), columns towards the patient's right (medial)
    assert iop == [0.0, -1.0, 0.0, -1.0, 0.0, 0.0]


@pytest.mark.parametrize(("laterality", "view", "expected"), [
    ("L", "CC", ["A", "R"]), ("R", "CC", ["P", "L"]),
    ("L", "MLO", ["A", "FR"]), ("R", "MLO", ["P", "FL"]),
])
def test_patient_orientation_letters(laterality: str, view: str, expected: list[str]) -> None:
    orientation, _ = geometry(laterality, view, 0.1, 1.0, 2)
    assert patient_orientation(orientation) == expected


def test_frames_against_the_normal(tmp_path: Path) -> None:
    vol = breast_volume()
    (path,) = _write(tmp_path, volume=vol, frame_direction=-1)
    ds = pydicom.dcmread(path)
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    positions = np.array([f.PlanePositionSequence[0].ImagePositionPatient
                          for f in ds.PerFrameFunctionalGroupsSequence], dtype=float)
    np.testing.assert_allclose(np.diff(positions @ normal), -1.0, atol=1e-6)
    (forward,) = _write(tmp_path, name="forward", volume=vol)
    assert pydicom.dcmread(forward).SeriesInstanceUID != ds.SeriesInstanceUID
    with pytest.raises(ValueError, match="frame_direction must be 1 or -1"):
        _write(tmp_path, name="bad", frame_direction=0)
    if dciodvfy_available():
        assert run_dciodvfy(path)[0] == []


def test_truth_seg_colour_and_date(tmp_path: Path) -> None:
    import highdicom as hd

    vol = breast_volume()
    paths = _write(tmp_path, volume=vol)
    mask = blob_mask(vol.shape, (3, 30, 10), 3)
    seg = pydicom.dcmread(write_truth_seg(paths, mask, tmp_path / "truth"))
    lab = tuple(seg.SegmentSequence[0].RecommendedDisplayCIELabValue)
    assert hd.color.CIELabColor.from_dicom_value(lab).to_rgb() == pytest.approx(TRUTH_RGB, abs=2)
    source = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert (seg.SeriesDate, seg.SeriesTime) == (source.SeriesDate, source.SeriesTime)
