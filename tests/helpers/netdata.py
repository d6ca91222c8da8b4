"""Small synthetic DICOM files for the network and spool tests (pydicom only).

Every writer returns the written path(s). Pixel data are tiny random 16-bit images, so the
files are a few kB and tests stay fast. UIDs are random unless given.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_preamble, _read_file_meta_info
from pydicom.uid import (
    UID,
    BreastTomosynthesisImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    RTPlanStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

BTO = BreastTomosynthesisImageStorage
SC = SecondaryCaptureImageStorage
MF_GRAY_WORD_SC = MultiFrameGrayscaleWordSecondaryCaptureImageStorage
DM_PRESENTATION = DigitalMammographyXRayImageStorageForPresentation
RT_PLAN = RTPlanStorage  # not accepted by the node


def _base(sop_class: str, *, study_uid: str | None, series_uid: str | None,
          sop_uid: str | None) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName = "Test^Network"
    ds.PatientID = "NET0001"
    ds.Modality = "MG"
    ds.StudyDate = "20240101"
    ds.SeriesNumber = 1
    return ds


def _add_pixels(ds: Dataset, frames: int, rows: int, cols: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 4096, size=(frames, rows, cols), dtype=np.uint16)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = (pixels if frames > 1 else pixels[0]).tobytes()


def _save(ds: Dataset, path: Path, transfer_syntax: str) -> Path:
    ts = UID(transfer_syntax)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    if ts.is_compressed:
        ds.compress(ts)  # sets the meta's transfer syntax and encapsulates
    else:
        meta.TransferSyntaxUID = ts
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True, implicit_vr=ts == ImplicitVRLittleEndian)
    return path


def write_multiframe(path: Path, *, sop_class: str = BTO, frames: int = 4, rows: int = 32,
                     cols: int = 32, transfer_syntax: str = ExplicitVRLittleEndian,
                     seed: int = 0, study_uid: str | None = None,
                     series_uid: str | None = None, sop_uid: str | None = None) -> Path:
    """One multi-frame image instance (BTO-like by default)."""
    ds = _base(sop_class, study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid)
    _add_pixels(ds, frames, rows, cols, seed)
    return _save(ds, path, transfer_syntax)


def write_slices(out_dir: Path, *, count: int = 3, sop_class: str = SC, rows: int = 16,
                 cols: int = 16, transfer_syntax: str = ExplicitVRLittleEndian,
                 study_uid: str | None = None, series_uid: str | None = None) -> list[Path]:
    """A per-slice series: `count` single-frame instances of one study and series."""
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    paths = []
    for i in range(count):
        ds = _base(sop_class, study_uid=study_uid, series_uid=series_uid, sop_uid=None)
        ds.InstanceNumber = i + 1
        _add_pixels(ds, 1, rows, cols, seed=i)
        paths.append(_save(ds, Path(out_dir) / f"slice{i:03d}.dcm", transfer_syntax))
    return paths


def write_rtplan(path: Path) -> Path:
    """A minimal RT Plan instance: a SOP class the node does not accept."""
    ds = _base(RT_PLAN, study_uid=None, series_uid=None, sop_uid=None)
    ds.Modality = "RTPLAN"
    ds.RTPlanLabel = "TEST"
    return _save(ds, path, ExplicitVRLittleEndian)


def write_mismatched(path: Path) -> Path:
    """A file whose meta says Secondary Capture but whose data set is an RT Plan."""
    ds = _base(RT_PLAN, study_uid=None, series_uid=None, sop_uid=None)
    _save(ds, path, ExplicitVRLittleEndian)
    ds.file_meta.MediaStorageSOPClassUID = SC
    ds.preamble = b"\x00" * 128
    ds.save_as(path, enforce_file_format=False)  # keep the (wrong) meta as it is
    return Path(path)


def write_truncated(path: Path, *, keep_fraction: float = 0.6) -> Path:
    """A multi-frame instance whose pixel data is cut short (the file ends early)."""
    write_multiframe(path, frames=4, rows=64, cols=64)
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep_fraction)])
    return Path(path)


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a Part 10 file: everything after the File Meta Information."""
    data = Path(path).read_bytes()
    fp = io.BytesIO(data)
    read_preamble(fp, False)
    _read_file_meta_info(fp)
    return data[fp.tell():]
