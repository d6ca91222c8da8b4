"""Write synthetic tomosynthesis volumes as DICOM, standing in for a modality (tests, demo).

Two layouts, both with deterministic UIDs derived from ``seed``:

* one **Breast Tomosynthesis Image** (enhanced multi-frame, SOP class
  ``BreastTomosynthesisImageStorage``), one frame per slice, as most DBT systems store a view;
* one single-frame **Digital Mammography X-Ray Image – For Presentation** instance per
  slice (``per_slice=True``), as some sites store tomosynthesis.

Both use 16-bit ``MONOCHROME2`` pixels; ``volume`` values in [0, 1] are stored as
``round(v * (2**bits_stored - 1))``. :func:`write_truth_seg` adds a binary DICOM SEG of the
ground-truth lesion mask that references the written source.

Geometry (patient coordinate system, LPS): the rows of a frame run along the column
direction cosine, the columns along the row direction cosine. For ``L`` the chest wall is
column 0 and the row direction points anterior (towards the nipple); for ``R`` the image is
mirrored (chest wall at the last column) and the row direction points posterior. The column
direction points to the other breast (medial), so the lateral side is at the top as
mammograms are usually hung: Patient Orientation ``A\\R`` for a left CC, ``P\\L`` for a
right CC, ``A\\FR`` / ``P\\FL`` for MLO. Frames step along the normal (row × column
direction) by the slice thickness, or against it with ``frame_direction=-1``
(:mod:`~dicom_node.standins.geometry`).

Images carry window centre and width but no VOI LUT Function (optional; LINEAR is the
default): OHIF 3.13 shows images that carry ``LINEAR`` black ("Invalid VOI LUT function").
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    BreastTomosynthesisImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)

from dicom_node.encode.display import TRUTH_RGB, display_colour
from dicom_node.standins.geometry import geometry, patient_orientation

logger = logging.getLogger(__name__)

#: Breast Tomosynthesis Image Storage.
BTO_SOP_CLASS_UID = BreastTomosynthesisImageStorage
#: Digital Mammography X-Ray Image Storage – For Presentation.
MG_FOR_PRESENTATION_SOP_CLASS_UID = DigitalMammographyXRayImageStorageForPresentation

#: Transfer syntaxes :func:`write_bto` can write.
SUPPORTED_TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, JPEG2000Lossless)

#: SNOMED CT view codes (CID 4014) by view name.
VIEW_CODES: dict[str, tuple[str, str]] = {
    "CC": ("399162004", "cranio-caudal"),
    "MLO": ("399368009", "medio-lateral oblique"),
}

_MANUFACTURER = "PICARD Node"
_MODEL_NAME = "synthetic"
_SOFTWARE_VERSION = "1"
_DEVICE_SERIAL = "SYNTH-0"


def _uid(seed: int | str, *parts: str) -> UID:
    """Deterministic UID from the seed and the parts naming the object."""
    return generate_uid(entropy_srcs=["picard-synthetic", str(seed), *parts])


def _item(**attributes: Any) -> Dataset:
    """A data set (e.g. a sequence item) with the given attributes, by keyword."""
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def _seq(**attributes: Any) -> DicomSequence:
    """A sequence of one item with the given attributes."""
    return DicomSequence([_item(**attributes)])


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    return _item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def _quantize(volume: np.ndarray, bits_stored: int) -> np.ndarray:
    vmax = (1 << bits_stored) - 1
    return np.rint(np.clip(volume, 0.0, 1.0) * vmax).astype(np.uint16)


def _check_inputs(volume: np.ndarray, laterality: str, view: str, transfer_syntax: str,
                  bits_stored: int) -> np.ndarray:
    """The volume as an array, after checking every argument of :func:`write_bto`."""
    vol = np.asarray(volume)
    if vol.ndim != 3 or min(vol.shape) < 1:
        raise ValueError(f"volume must be (frames, rows, cols), got shape {vol.shape}")
    if not np.issubdtype(vol.dtype, np.floating):
        raise ValueError(f"volume must be floating point in [0, 1], got dtype {vol.dtype}")
    if not np.isfinite(vol).all():
        raise ValueError("volume contains NaN or infinite values")
    if laterality not in ("L", "R"):
        raise ValueError(f"laterality must be 'L' or 'R', got {laterality!r}")
    if view not in VIEW_CODES:
        raise ValueError(f"view must be one of {sorted(VIEW_CODES)}, got {view!r}")
    if UID(transfer_syntax) not in SUPPORTED_TRANSFER_SYNTAXES:
        raise ValueError(
            f"transfer_syntax must be one of {[str(t) for t in SUPPORTED_TRANSFER_SYNTAXES]}, "
            f"got {transfer_syntax!r}"
        )
    if not 8 <= bits_stored <= 16:
        raise ValueError(f"bits_stored must be in 8..16, got {bits_stored}")
    return vol


def _patient_study(ds: Dataset, *, patient_id: str, patient_name: str, study_uid: str,
                   seed: int, now: _dt.datetime) -> None:
    """Patient, General Study and Patient Study modules."""
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = now.strftime("%Y%m%d")
    ds.StudyTime = now.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"S{seed % 100000:05d}"
    ds.AccessionNumber = f"ACC{seed % 10**8:08d}"
    ds.StudyDescription = "Synthetic breast tomosynthesis"


def _equipment(ds: Dataset) -> None:
    """General Equipment and Enhanced General Equipment modules."""
    ds.Manufacturer = _MANUFACTURER
    ds.ManufacturerModelName = _MODEL_NAME
    ds.DeviceSerialNumber = _DEVICE_SERIAL
    ds.SoftwareVersions = _SOFTWARE_VERSION
    ds.InstitutionName = "Synthetic"


def _pixel_module(ds: Dataset, rows: int, cols: int, bits_stored: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0


def _file_meta(ds: Dataset) -> None:
    """File meta for Explicit VR Little Endian (:func:`_set_pixels` sets the final syntax)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "PICARD_NODE"
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128


def _set_pixels(ds: Dataset, stored: np.ndarray, transfer_syntax: UID) -> None:
    """Attach pixel data, compressing when the transfer syntax asks for it."""
    if transfer_syntax == ExplicitVRLittleEndian:
        ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
        ds["PixelData"].VR = "OW"
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        return
    arr = stored if stored.shape[0] > 1 else stored[0]
    ds.compress(transfer_syntax, arr, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    # Lossless: pydicom sets LossyImageCompression only for lossy syntaxes.


def write_bto(
    volume: np.ndarray,
    out_dir: Path,
    *,
    laterality: str,
    view: str,
    pixel_spacing_mm: float,
    slice_thickness_mm: float,
    seed: int,
    per_slice: bool = False,
    transfer_syntax: str = ExplicitVRLittleEndian,
    patient_id: str = "SYNTH0001",
    patient_name: str = "Synthetic^Phantom",
    study_uid: str | None = None,
    bits_stored: int = 12,
    series_number: int = 1,
    frame_direction: int = 1,
) -> list[Path]:
    """Write a synthetic tomosynthesis view as DICOM.

    Parameters
    ----------
    volume : numpy.ndarray
        (frames, rows, cols) floating point in [0, 1] (0 = air), already in stored
        orientation (``L``: chest wall at column 0; ``R``: chest wall at the last column).
    out_dir : Path
        Folder for the files (created if missing).
    laterality : {"L", "R"}
        Breast side, written as FrameLaterality (BTO) or ImageLaterality (per slice).
    view : {"CC", "MLO"}
        View, written as ViewCodeSequence (SNOMED CT).
    pixel_spacing_mm : float
        In-plane pixel spacing, mm (rows and columns).
    slice_thickness_mm : float
        Distance between slices along the normal, mm.
    seed : int
        Seeds every UID, so the same seed and arguments give the same UIDs.
    per_slice : bool
        ``False`` (default): one multi-frame Breast Tomosynthesis Image. ``True``: one
        single-frame Digital Mammography X-Ray Image – For Presentation per slice.
    transfer_syntax : str
        ``ExplicitVRLittleEndian`` (default) or ``JPEG2000Lossless``.
    patient_id, patient_name : str
        Patient module values.
    study_uid : str or None
        Study Instance UID; default derived from ``seed``.
    bits_stored : int
        Bits Stored (8..16), default 12; values are ``round(v * (2**bits_stored - 1))``.
    series_number : int
        Series Number, default 1.
    frame_direction : {1, -1}
        Frame ``k + 1`` lies one slice thickness along the normal (row x column direction)
        from frame ``k`` (default), or against it (``-1``: as some systems store a view;
        also changes the series UIDs).

    Returns
    -------
    list of Path
        The written files (one, or one per slice in slice order).

    Raises
    ------
    ValueError
        On a wrong shape, dtype, laterality, view, transfer syntax or frame direction.
    """
    ts = UID(transfer_syntax)
    vol = _check_inputs(volume, laterality, view, ts, bits_stored)
    if pixel_spacing_mm <= 0 or slice_thickness_mm <= 0:
        raise ValueError(f"pixel_spacing_mm and slice_thickness_mm must be > 0, got "
                         f"{pixel_spacing_mm} and {slice_thickness_mm}")
    if frame_direction not in (1, -1):
        raise ValueError(f"frame_direction must be 1 or -1, got {frame_direction!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stored = _quantize(vol, bits_stored)
    study_uid = study_uid or _uid(seed, patient_id, "study")
    kind = ("slices" if per_slice else "bto") + ("" if frame_direction == 1 else "-reversed")
    series_uid = _uid(seed, study_uid, laterality, view, kind, "series")
    for_uid = _uid(seed, study_uid, laterality, view, "frame-of-reference")
    now = _dt.datetime(2024, 1, 1, 12, 0, 0) + _dt.timedelta(seconds=seed % 86400)
    series = _Series(
        laterality=laterality, view=view, pixel_spacing_mm=float(pixel_spacing_mm),
        slice_thickness_mm=float(slice_thickness_mm), seed=seed, patient_id=patient_id,
        patient_name=patient_name, study_uid=study_uid, series_uid=series_uid, for_uid=for_uid,
        bits_stored=bits_stored, series_number=series_number, now=now, transfer_syntax=ts,
        frame_direction=frame_direction,
    )
    if per_slice:
        paths = []
        for k in range(stored.shape[0]):
            ds = _mg_slice(stored, k, series)
            path = out_dir / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        logger.info("wrote %d MG slices to %s", len(paths), out_dir)
        return paths
    ds = _bto(stored, series)
    path = out_dir / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    logger.info("wrote BTO %s (%d frames) to %s", ds.SOPInstanceUID, stored.shape[0], path)
    return [path]


def _view_code_sequence(view: str) -> DicomSequence:
    value, meaning = VIEW_CODES[view]
    return _seq(CodeValue=value, CodingSchemeDesignator="SCT", CodeMeaning=meaning,
                ViewModifierCodeSequence=DicomSequence([]))


def _anatomic_region() -> DicomSequence:
    return DicomSequence([_code("76752008", "SCT", "Breast")])


def _voi(stored: np.ndarray, bits_stored: int) -> tuple[float, float]:
    lo, hi = float(stored.min()), float(stored.max())
    if hi <= lo:
        return float((1 << (bits_stored - 1))), float(1 << bits_stored)
    return round((lo + hi) / 2.0, 1), round(max(hi - lo, 1.0), 1)


@dataclass(frozen=True)
class _Series:
    """What every instance of one written series shares (see :func:`write_bto`)."""

    laterality: str
    view: str
    pixel_spacing_mm: float
    slice_thickness_mm: float
    seed: int
    patient_id: str
    patient_name: str
    study_uid: str
    series_uid: str
    for_uid: str
    bits_stored: int
    series_number: int
    now: _dt.datetime
    transfer_syntax: UID
    frame_direction: int = 1


def _instance_header(
    sop_class_uid: str, sop_instance_uid: str, s: _Series, series_description: str
) -> tuple[Dataset, str, str]:
    """New instance with SOP Common, file meta, Patient/Study and General Series filled in.

    Returns the dataset and the instance creation date and time (``YYYYMMDD``, ``HHMMSS``).
    """
    ds = Dataset()
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    _file_meta(ds)
    ds.SpecificCharacterSet = "ISO_IR 100"
    date, time = s.now.strftime("%Y%m%d"), s.now.strftime("%H%M%S")
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    _patient_study(
        ds, patient_id=s.patient_id, patient_name=s.patient_name, study_uid=s.study_uid,
        seed=s.seed, now=s.now,
    )
    ds.Modality = "MG"
    ds.SeriesInstanceUID = s.series_uid
    ds.SeriesNumber = s.series_number
    ds.SeriesDate = date
    ds.SeriesTime = time
    ds.SeriesDescription = series_description
    return ds, date, time


def _bto(stored: np.ndarray, s: _Series) -> Dataset:
    """The multi-frame Breast Tomosynthesis Image of ``stored`` (all frames)."""
    frames, rows, cols = stored.shape
    # General Series + Enhanced Mammography Series
    ds, date, time = _instance_header(
        BTO_SOP_CLASS_UID, _uid(s.seed, s.series_uid, "instance"), s,
        f"Synthetic DBT {s.laterality} {s.view}",
    )
    # Laterality (General Series) stays absent: it lives in Frame Anatomy.
    # Frame of Reference
    ds.FrameOfReferenceUID = s.for_uid
    ds.PositionReferenceIndicator = ""
    _equipment(ds)
    # Image Pixel
    _pixel_module(ds, rows, cols, s.bits_stored)
    # X-Ray 3D Image / Breast View / Enhanced Mammography Image
    ds.ImageType = ["ORIGINAL", "PRIMARY", "TOMOSYNTHESIS", "NONE"]
    ds.PresentationLUTShape = "IDENTITY"
    ds.ContentQualification = "RESEARCH"
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "NO"
    ds.LossyImageCompression = "00"
    ds.ImageComments = "Synthetic phantom, not a patient image"
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ViewCodeSequence = _view_code_sequence(s.view)
    ds.BreastImplantPresent = "NO"
    ds.PartialView = "NO"
    ds.AcquisitionContextSequence = DicomSequence([])
    acquired = s.now.strftime("%Y%m%d%H%M%S")
    # Multi-frame Functional Groups
    ds.InstanceNumber = 1
    ds.ContentDate = date
    ds.ContentTime = time
    ds.NumberOfFrames = frames
    orientation, positions = geometry(
        s.laterality, s.view, s.pixel_spacing_mm, s.slice_thickness_mm, frames,
        s.frame_direction,
    )
    center, width = _voi(stored, s.bits_stored)
    ds.SharedFunctionalGroupsSequence = _seq(
        PixelMeasuresSequence=_seq(PixelSpacing=[s.pixel_spacing_mm, s.pixel_spacing_mm],
                                   SliceThickness=s.slice_thickness_mm),
        PlaneOrientationSequence=_seq(ImageOrientationPatient=orientation),
        FrameVOILUTSequence=_seq(WindowCenter=center, WindowWidth=width),
        FrameAnatomySequence=_seq(AnatomicRegionSequence=_anatomic_region(),
                                  FrameLaterality=s.laterality),
        PixelValueTransformationSequence=_seq(RescaleIntercept=0, RescaleSlope=1,
                                              RescaleType="US"),
    )
    dim_org_uid = _uid(s.seed, s.series_uid, "dimension-organization")
    ds.PerFrameFunctionalGroupsSequence = DicomSequence([
        _item(
            FrameContentSequence=_seq(FrameAcquisitionDateTime=acquired,
                                      FrameReferenceDateTime=acquired,
                                      FrameAcquisitionDuration=1.0,
                                      DimensionIndexValues=[k + 1]),
            PlanePositionSequence=_seq(ImagePositionPatient=positions[k]),
            XRay3DFrameTypeSequence=_seq(FrameType=["ORIGINAL", "PRIMARY", "TOMOSYNTHESIS",
                                                    "NONE"],
                                         PixelPresentation="MONOCHROME",
                                         VolumetricProperties="VOLUME",
                                         VolumeBasedCalculationTechnique="NONE"),
        )
        for k in range(frames)
    ])
    # Multi-frame Dimension: frames indexed by position along the normal
    ds.DimensionOrganizationSequence = _seq(DimensionOrganizationUID=dim_org_uid)
    ds.DimensionOrganizationType = "3D"
    ds.DimensionIndexSequence = _seq(
        DimensionOrganizationUID=dim_org_uid,
        DimensionIndexPointer=pydicom.tag.Tag("ImagePositionPatient"),
        FunctionalGroupPointer=pydicom.tag.Tag("PlanePositionSequence"),
        DimensionDescriptionLabel="Image Position (Patient)",
    )
    _set_pixels(ds, stored, s.transfer_syntax)
    return ds


def _mg_slice(stored: np.ndarray, k: int, s: _Series) -> Dataset:
    """Frame ``k`` of ``stored`` as a Digital Mammography For Presentation image."""
    frames, rows, cols = stored.shape
    ds, date, time = _instance_header(
        MG_FOR_PRESENTATION_SOP_CLASS_UID, _uid(s.seed, s.series_uid, "instance", str(k)), s,
        f"Synthetic DBT slices {s.laterality} {s.view}",
    )
    # Laterality (General Series) stays absent: ImageLaterality carries it.
    _equipment(ds)
    ds.InstanceNumber = k + 1
    ds.ContentDate = date
    ds.ContentTime = time
    ds.AcquisitionDateTime = s.now.strftime("%Y%m%d%H%M%S")
    orientation, positions = geometry(
        s.laterality, s.view, s.pixel_spacing_mm, s.slice_thickness_mm, frames,
        s.frame_direction,
    )
    # General Image / DX Image / Mammography Image
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.PatientOrientation = patient_orientation(orientation)
    ds.ImageLaterality = s.laterality
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.ImageComments = "Synthetic phantom slice, not a patient image"
    _pixel_module(ds, rows, cols, s.bits_stored)
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.DetectorType = "DIRECT"
    ds.ImagerPixelSpacing = [s.pixel_spacing_mm, s.pixel_spacing_mm]
    ds.PixelSpacing = [s.pixel_spacing_mm, s.pixel_spacing_mm]
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "Synthetic reconstruction grid"
    ds.OrganExposed = "BREAST"
    ds.PositionerType = "MAMMOGRAPHIC"
    ds.DistanceSourceToDetector = 650.0
    ds.DistanceSourceToPatient = 630.0
    ds.ViewCodeSequence = _view_code_sequence(s.view)
    ds.AnatomicRegionSequence = _anatomic_region()
    ds.BreastImplantPresent = "NO"
    ds.PartialView = "NO"
    ds.QualityControlImage = "NO"
    ds.AcquisitionContextSequence = DicomSequence([])
    ds.FrameOfReferenceUID = s.for_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = orientation
    ds.ImagePositionPatient = positions[k]
    ds.SliceThickness = s.slice_thickness_mm
    center, width = _voi(stored, s.bits_stored)
    ds.WindowCenter = center
    ds.WindowWidth = width
    _set_pixels(ds, stored[k : k + 1], s.transfer_syntax)
    return ds


def read_headers(paths: Sequence[Path]) -> list[Dataset]:
    """Read DICOM headers (no pixel data) of ``paths``, sorted by InstanceNumber."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    return sorted(headers, key=lambda d: int(getattr(d, "InstanceNumber", 0) or 0))


def write_truth_seg(
    source_files: list[Path],
    lesion_mask: np.ndarray,
    out_dir: Path,
    *,
    seed: int | str | None = None,
) -> Path:
    """Write the ground-truth lesion mask as a binary DICOM SEG (drawn green).

    Parameters
    ----------
    source_files : list of Path
        The files :func:`write_bto` wrote (one BTO, or one instance per slice).
    lesion_mask : numpy.ndarray
        (frames, rows, cols) bool, stored orientation, frame order of the source
        (per slice: InstanceNumber order).
    out_dir : Path
        Folder for the SEG (created if missing).
    seed : int or str or None
        Seeds the SEG's UIDs; default derived from the source series UID.

    Returns
    -------
    Path
        The written SEG file.

    Raises
    ------
    ValueError
        If the mask does not match the source grid.
    """
    if not source_files:
        raise ValueError("source_files is empty")
    sources = read_headers(source_files)
    mask = np.asarray(lesion_mask).astype(bool)
    first = sources[0]
    frames = int(getattr(first, "NumberOfFrames", 1)) if len(sources) == 1 else len(sources)
    expected = (frames, int(first.Rows), int(first.Columns))
    if mask.shape != expected:
        raise ValueError(f"lesion_mask shape {mask.shape} does not match source grid {expected}")
    seed_text = str(seed) if seed is not None else str(first.SeriesInstanceUID)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="ground truth lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Mass,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        tracking_uid=_uid(seed_text, "truth-seg", "tracking"),
        tracking_id="synthetic lesion",
        display_color=display_colour(TRUTH_RGB),
    )
    series_uid = _uid(seed_text, "truth-seg", "series")
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=series_uid,
        series_number=990,
        sop_instance_uid=_uid(seed_text, series_uid, "instance"),
        instance_number=1,
        manufacturer=_MANUFACTURER,
        manufacturer_model_name=_MODEL_NAME,
        software_versions=_SOFTWARE_VERSION,
        device_serial_number=_DEVICE_SERIAL,
        series_description="Synthetic ground truth",
        content_label="TRUTH",
        omit_empty_frames=bool(mask.any()),
    )
    # Listed with the exam it belongs to (viewers sort SEG series by date and time).
    seg.SeriesDate = first.get("SeriesDate") or first.get("StudyDate", "")
    seg.SeriesTime = first.get("SeriesTime") or first.get("StudyTime", "")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{seg.SOPInstanceUID}.dcm"
    seg.save_as(path)
    logger.info("wrote truth SEG %s to %s", seg.SOPInstanceUID, path)
    return path
