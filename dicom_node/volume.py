"""Load a received tomosynthesis series into one normalised volume.

Accepts one enhanced multi-frame object (Breast Tomosynthesis Image, or another multi-frame
image such as a multi-frame Secondary Capture) or a series of single-frame instances (DX, MG,
SC, CT, ...), in any transfer syntax pydicom can decode (JPEG 2000 through ``pylibjpeg``).

The result, :class:`LoadedVolume`, holds float32 pixels in [0, 1] (stored value divided by the
largest value Bits Stored allows, ``MONOCHROME1`` inverted), always with the chest wall at
column 0: right breasts, stored with the chest wall at the last column, are mirrored, and
:func:`unflip` mirrors results back. Frames keep the source's order for a multi-frame object
(frame ``k`` is frame ``k + 1`` of the source) and are sorted along the slice normal for a
per-slice series (frame ``k`` belongs to ``source_datasets[k]``).

Laterality: see :mod:`dicom_node.laterality` (header checked against the pixels).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import BreastTomosynthesisImageStorage

from dicom_node.laterality import (LateralityError, header_laterality,
                                   header_laterality_multiframe, resolve_laterality)
from dicom_node.phi import PhiFreeError, describe_exception

logger = logging.getLogger(__name__)

#: Breast Tomosynthesis Image Storage.
BTO_SOP_CLASS_UID = BreastTomosynthesisImageStorage

#: Largest accepted (frames, rows, columns).
MAX_SHAPE: tuple[int, int, int] = (512, 4096, 4096)
#: Largest accepted float32 volume, bytes (default 4 GiB).
MAX_BYTES: int = 4 * 1024**3


class VolumeError(PhiFreeError, ValueError):
    """A series cannot be turned into a volume; the message says why (no attribute values
    that could identify the patient: tags, geometry, counts)."""


@dataclass
class LoadedVolume:
    """One view as a normalised volume.

    Attributes
    ----------
    pixels : numpy.ndarray
        (frames, rows, cols) float32 in [0, 1], chest wall at column 0.
    flipped : bool
        True if columns were mirrored to put the chest wall at column 0.
    laterality : str
        ``"L"`` or ``"R"`` (header, checked against the pixels).
    pixel_spacing_mm : tuple of float
        (row spacing, column spacing), mm.
    source_datasets : list of pydicom.Dataset
        Headers in frame order (one for a multi-frame object, one per frame for a per-slice
        series), without Pixel Data.
    study_uid : str
        Study Instance UID.
    series_uid : str
        Series Instance UID.
    slice_thickness_mm : float or None
        Distance between frames along the normal, mm, when the geometry gives it.
    header_laterality : str or None
        What the header said (``None`` if nothing usable).
    """

    pixels: np.ndarray
    flipped: bool
    laterality: str
    pixel_spacing_mm: tuple[float, float]
    source_datasets: list[Dataset]
    study_uid: str
    series_uid: str
    slice_thickness_mm: float | None = None
    header_laterality: str | None = None
    source_paths: list[Path] = field(default_factory=list)


def load_series(
    paths: Sequence[Path | str],
    *,
    max_shape: tuple[int, int, int] = MAX_SHAPE,
    max_bytes: int = MAX_BYTES,
) -> LoadedVolume:
    """Load one series (one multi-frame object or single-frame instances) as a volume.

    Parameters
    ----------
    paths : sequence of Path or str
        The series' files, in any order.
    max_shape : tuple of int
        Largest accepted (frames, rows, columns). Default ``(512, 4096, 4096)``.
    max_bytes : int
        Largest accepted float32 volume in bytes. Default 4 GiB.

    Returns
    -------
    LoadedVolume
        Pixels in [0, 1], chest wall at column 0.

    Raises
    ------
    VolumeError
        No files, unreadable files, mixed series, several multi-frame objects, unsupported
        pixels, pixel data shorter than Rows x Columns x Frames, absurd dimensions, missing
        functional groups in a BTO, or inconsistent geometry.
    """
    if not paths:
        raise VolumeError("no files given")
    try:
        return _load_series(paths, max_shape, max_bytes)
    except VolumeError:
        raise
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, NotImplementedError,
            OverflowError) as exc:
        # a malformed header value (e.g. a DS that is not a number, an item without the
        # attribute it must hold): the series cannot be loaded, say why
        raise VolumeError(f"malformed header: {describe_exception(exc)}") from exc


def _load_series(
    paths: Sequence[Path | str], max_shape: tuple[int, int, int], max_bytes: int
) -> LoadedVolume:
    datasets = []
    for p in paths:
        try:
            datasets.append(pydicom.dcmread(p))
        except Exception as exc:  # pydicom raises several types for broken files
            raise VolumeError(f"cannot read DICOM file {p}: {describe_exception(exc)}") from exc
    for ds, p in zip(datasets, paths):
        if "PixelData" not in ds:
            raise VolumeError(f"{p} has no Pixel Data")
    _check_same_series(datasets)
    multi = [ds for ds in datasets if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1]
    if multi or _has_functional_groups(datasets[0]):
        if len(datasets) > 1:
            raise VolumeError(
                f"series holds {len(datasets)} instances of which {len(multi)} are multi-frame; "
                "expected one multi-frame object or only single-frame instances"
            )
        vol = _load_multiframe(datasets[0], max_shape, max_bytes)
        source_paths = [Path(paths[0])]
    else:
        vol, order = _load_single_frames(datasets, max_shape, max_bytes)
        source_paths = [Path(paths[i]) for i in order]
    vol.source_paths = source_paths
    return vol


def group_by_series(inputs: Sequence[Path | str]) -> dict[str, list[Path]]:
    """DICOM files of files and folders (recursively, ``*.dcm``), by Series Instance UID.

    Files under a ``truth`` folder (the ground truth written by ``picard-node synth``) are
    left out. Returns ``{series_uid: [paths]}`` in input order; empty when nothing matched.
    """
    groups: dict[str, list[Path]] = {}
    for item in map(Path, inputs):
        files = sorted(item.rglob("*.dcm")) if item.is_dir() else [item]
        for f in files:
            if "truth" in f.parts:
                continue
            uid = pydicom.dcmread(f, stop_before_pixels=True,
                                  specific_tags=["SeriesInstanceUID"]).SeriesInstanceUID
            groups.setdefault(str(uid), []).append(f)
    return groups


def load_at_spacing(paths: Sequence[Path | str], spacing_mm: float) -> np.ndarray:
    """Load a series (:func:`load_series`) and resample it in-plane to `spacing_mm`.

    Parameters
    ----------
    paths : sequence of Path or str
        The instance files of one series.
    spacing_mm : float
        Wanted pixel spacing (rows and columns), mm; bilinear resampling.

    Returns
    -------
    numpy.ndarray
        (frames, rows', cols') float32 in [0, 1], chest wall at column 0.
    """
    from scipy.ndimage import zoom

    volume = load_series(paths)
    factors = (1.0, volume.pixel_spacing_mm[0] / spacing_mm,
               volume.pixel_spacing_mm[1] / spacing_mm)
    pixels = volume.pixels if factors == (1.0, 1.0, 1.0) else zoom(volume.pixels, factors, order=1)
    return np.clip(pixels, 0, 1).astype(np.float32)


def unflip(heatmap: np.ndarray, volume: LoadedVolume) -> np.ndarray:
    """Return ``heatmap`` in the source's stored orientation.

    Parameters
    ----------
    heatmap : numpy.ndarray
        (frames, rows, cols), oriented like ``volume.pixels`` (chest wall at column 0).
    volume : LoadedVolume
        The volume the heatmap was computed on.

    Returns
    -------
    numpy.ndarray
        A new array, columns mirrored back if ``volume.flipped``.

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    heatmap = np.asarray(heatmap)
    if heatmap.shape != volume.pixels.shape:
        raise ValueError(
            f"heatmap shape {heatmap.shape} differs from volume shape {volume.pixels.shape}"
        )
    return unflip_frames(heatmap, volume)


def unflip_frames(frames: np.ndarray, volume: LoadedVolume) -> np.ndarray:
    """Some frames ``(n, rows, cols)`` oriented like ``volume.pixels`` back to the stored
    orientation: a new array, columns mirrored back if ``volume.flipped``.

    Raises
    ------
    ValueError
        If rows and columns differ from the volume's.
    """
    frames = np.asarray(frames)
    if frames.shape[-2:] != volume.pixels.shape[-2:]:
        raise ValueError(f"frames of {frames.shape[-2:]} px differ from the volume's "
                         f"{volume.pixels.shape[-2:]}")
    if volume.flipped:
        return np.ascontiguousarray(frames[..., ::-1])
    return frames.copy()


# --------------------------------------------------------------------------- checks


def _check_same_series(datasets: list[Dataset]) -> None:
    for attr in ("StudyInstanceUID", "SeriesInstanceUID"):
        values = {str(getattr(ds, attr, "")) for ds in datasets}
        if "" in values:
            raise VolumeError(f"an instance lacks {attr}")
        if len(values) > 1:
            raise VolumeError(
                f"mixed series: {len(values)} different {attr} values {sorted(values)}"
            )
    sops = [str(getattr(ds, "SOPInstanceUID", "")) for ds in datasets]
    if len(set(sops)) != len(sops):
        raise VolumeError("the same SOP Instance UID appears more than once")


def _has_functional_groups(ds: Dataset) -> bool:
    return (
        "PerFrameFunctionalGroupsSequence" in ds
        or "SharedFunctionalGroupsSequence" in ds
        or ds.get("SOPClassUID") == BTO_SOP_CLASS_UID
    )


def _check_pixel_module(ds: Dataset) -> tuple[int, int, int]:
    """Check the Image Pixel module; return (rows, cols, bits_stored)."""
    for attr in ("Rows", "Columns", "BitsAllocated", "BitsStored", "PhotometricInterpretation"):
        if attr not in ds or ds[attr].value in (None, ""):
            raise VolumeError(f"missing {attr}")
    if int(getattr(ds, "SamplesPerPixel", 1)) != 1:
        raise VolumeError(f"SamplesPerPixel is {ds.SamplesPerPixel}; expected 1 (greyscale)")
    if ds.PhotometricInterpretation not in ("MONOCHROME1", "MONOCHROME2"):
        raise VolumeError(
            f"PhotometricInterpretation {ds.PhotometricInterpretation!r} is not greyscale"
        )
    bits_stored = int(ds.BitsStored)
    if not 1 <= bits_stored <= int(ds.BitsAllocated) <= 32:
        raise VolumeError(f"BitsStored {bits_stored} / BitsAllocated {ds.BitsAllocated} invalid")
    return int(ds.Rows), int(ds.Columns), bits_stored


def _check_dimensions(
    frames: int, rows: int, cols: int, max_shape: tuple[int, int, int], max_bytes: int
) -> None:
    if min(frames, rows, cols) < 1:
        raise VolumeError(f"empty dimensions: frames={frames}, rows={rows}, columns={cols}")
    if frames > max_shape[0] or rows > max_shape[1] or cols > max_shape[2]:
        raise VolumeError(
            f"absurd dimensions {frames}x{rows}x{cols} (frames x rows x columns); "
            f"limit {max_shape[0]}x{max_shape[1]}x{max_shape[2]}"
        )
    nbytes = frames * rows * cols * 4
    if nbytes > max_bytes:
        raise VolumeError(
            f"volume {frames}x{rows}x{cols} needs {nbytes} bytes as float32; limit {max_bytes}"
        )


def _check_pixel_length(ds: Dataset, frames: int, rows: int, cols: int) -> None:
    """Native (uncompressed) pixel data must hold every frame."""
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        return
    expected = frames * rows * cols * int(ds.BitsAllocated) // 8
    actual = len(ds.PixelData)
    if actual < expected:
        raise VolumeError(
            f"pixel data is {actual} bytes, shorter than Rows x Columns x Frames "
            f"({rows}x{cols}x{frames}) = {expected} bytes"
        )


def _decode(ds: Dataset, frames: int, rows: int, cols: int) -> np.ndarray:
    """Decoded stored values as (frames, rows, cols)."""
    _check_pixel_length(ds, frames, rows, cols)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # decoder plugins raise various types
        ts = ds.file_meta.get("TransferSyntaxUID", "?")
        raise VolumeError(f"cannot decode pixel data (transfer syntax {ts}): {exc}") from exc
    arr = np.asarray(arr).reshape(frames, rows, cols) if arr.size == frames * rows * cols else arr
    if arr.shape != (frames, rows, cols):
        raise VolumeError(f"decoded pixels have shape {arr.shape}, expected {(frames, rows, cols)}")
    return arr


def stored_values(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """Undo :func:`load_series`'s normalisation: 0..1 intensity back to stored values.

    Parameters
    ----------
    pixels : numpy.ndarray
        Values as ``LoadedVolume.pixels`` holds them (0..1, MONOCHROME1 inverted).
    ds : pydicom.Dataset
        A source header (Bits Stored, Pixel Representation, Photometric Interpretation).

    Returns
    -------
    numpy.ndarray
        float32 stored values (before any Rescale Slope/Intercept), as decoded.
    """
    bits_stored = int(ds.BitsStored)
    out = np.asarray(pixels, dtype=np.float32)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        out = 1.0 - out
    out = out * float((1 << bits_stored) - 1)
    if int(getattr(ds, "PixelRepresentation", 0)) == 1:
        out -= float(1 << (bits_stored - 1))
    return out


def _normalise(arr: np.ndarray, ds: Dataset, bits_stored: int) -> np.ndarray:
    """Stored values to float32 in [0, 1]; MONOCHROME1 inverted."""
    vmax = float((1 << bits_stored) - 1)
    out = arr.astype(np.float32)
    if int(getattr(ds, "PixelRepresentation", 0)) == 1:
        out += float(1 << (bits_stored - 1))
    out /= vmax
    np.clip(out, 0.0, 1.0, out=out)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        out = 1.0 - out
    return out


# --------------------------------------------------------------------------- geometry


def _orientation_normal(iop: Sequence[float], where: str) -> np.ndarray:
    v = np.asarray([float(x) for x in iop], dtype=float)
    if v.shape != (6,):
        raise VolumeError(f"ImageOrientationPatient in {where} has {v.size} values, expected 6")
    row, col = v[:3], v[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3:
        raise VolumeError(f"ImageOrientationPatient in {where} is not made of unit vectors")
    if abs(float(row @ col)) > 1e-3:
        raise VolumeError(f"ImageOrientationPatient in {where} is not orthogonal")
    return np.cross(row, col)


def _slice_steps(positions: np.ndarray, normal: np.ndarray, what: str) -> float | None:
    """Check positions along the normal; return the median step (mm) or None (1 frame)."""
    if len(positions) < 2:
        return None
    dist = positions @ normal
    if len(np.unique(np.round(dist, 4))) != len(dist):
        raise VolumeError(f"inconsistent geometry: duplicate {what} positions along the normal")
    steps = np.diff(dist)
    if not (np.all(steps > 0) or np.all(steps < 0)):
        logger.warning(
            "%s positions are not monotonic along the normal; keeping source order", what
        )
    return round(float(np.median(np.abs(steps))), 4)


def _fg_item(ds: Dataset, frame: Dataset | None, seq: str) -> Dataset | None:
    """Functional group macro ``seq`` for a frame: per-frame first, then shared."""
    for holder in (frame, (ds.get("SharedFunctionalGroupsSequence") or [None])[0]):
        if holder is not None and seq in holder and len(holder[seq].value) > 0:
            return holder[seq].value[0]
    return None


def _spacing(value: object, where: str) -> tuple[float, float]:
    try:
        sp = tuple(float(x) for x in value)  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise VolumeError(f"unreadable PixelSpacing in {where}: {value!r}") from exc
    if len(sp) != 2 or min(sp) <= 0:
        raise VolumeError(f"PixelSpacing in {where} must be two positive values, got {value!r}")
    return sp[0], sp[1]


def _top_level_spacing(ds: Dataset, where: str) -> tuple[float, float] | None:
    for attr in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        if attr in ds and ds[attr].value:
            return _spacing(ds[attr].value, where)
    return None


# --------------------------------------------------------------------------- loaders


def _load_multiframe(
    ds: Dataset, max_shape: tuple[int, int, int], max_bytes: int
) -> LoadedVolume:
    rows, cols, bits_stored = _check_pixel_module(ds)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    _check_dimensions(frames, rows, cols, max_shape, max_bytes)
    is_bto = ds.get("SOPClassUID") == BTO_SOP_CLASS_UID
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    shared_present = bool(ds.get("SharedFunctionalGroupsSequence"))
    if is_bto and (not per_frame or not shared_present):
        raise VolumeError(
            "Breast Tomosynthesis Image lacks Shared or Per-frame Functional Groups Sequence"
        )
    if per_frame and len(per_frame) != frames:
        raise VolumeError(
            f"Per-frame Functional Groups Sequence has {len(per_frame)} items, "
            f"NumberOfFrames is {frames}"
        )
    spacing: tuple[float, float] | None = None
    thickness: float | None = None
    if per_frame or shared_present:
        frame_items: list[Dataset | None] = per_frame or [None] * frames
        spacings = set()
        for i, item in enumerate(frame_items):
            pm = _fg_item(ds, item, "PixelMeasuresSequence")
            if pm is None or "PixelSpacing" not in pm:
                raise VolumeError(f"missing Pixel Measures functional group for frame {i + 1}")
            spacings.add(_spacing(pm.PixelSpacing, f"frame {i + 1}"))
        if len(spacings) > 1:
            raise VolumeError(
                f"inconsistent geometry: PixelSpacing varies by frame {sorted(spacings)}"
            )
        spacing = spacings.pop()
        orients = []
        positions = []
        for i, item in enumerate(frame_items):
            po = _fg_item(ds, item, "PlaneOrientationSequence")
            pp = _fg_item(ds, item, "PlanePositionSequence")
            if po is None or pp is None:
                if is_bto:
                    raise VolumeError(
                        f"missing Plane Orientation or Plane Position functional group for "
                        f"frame {i + 1}"
                    )
                orients = []
                break
            orients.append(tuple(round(float(x), 4) for x in po.ImageOrientationPatient))
            positions.append([float(x) for x in pp.ImagePositionPatient])
        if orients:
            if len(set(orients)) > 1:
                raise VolumeError("inconsistent geometry: ImageOrientationPatient varies by frame")
            normal = _orientation_normal(orients[0], "the functional groups")
            thickness = _slice_steps(np.asarray(positions), normal, "frame")
    else:
        spacing = _top_level_spacing(ds, "the dataset")
    if spacing is None:
        raise VolumeError("no pixel spacing (Pixel Measures, PixelSpacing or ImagerPixelSpacing)")
    if thickness is None:
        thickness = _float_or_none(_fg_attr(ds, "PixelMeasuresSequence", "SliceThickness"))
    stored = _decode(ds, frames, rows, cols)
    pixels = _normalise(stored, ds, bits_stored)
    del ds.PixelData
    frame_anatomy = [_fg_item(ds, item, "FrameAnatomySequence") for item in per_frame or [None]]
    try:
        header_lat = header_laterality_multiframe(ds, frame_anatomy)
    except LateralityError as exc:
        raise VolumeError(str(exc)) from exc
    return _orient(pixels, header_lat, spacing, [ds], thickness)


def _load_single_frames(
    datasets: list[Dataset], max_shape: tuple[int, int, int], max_bytes: int
) -> tuple[LoadedVolume, list[int]]:
    shapes = set()
    bits = set()
    for ds in datasets:
        rows, cols, bits_stored = _check_pixel_module(ds)
        shapes.add((rows, cols))
        bits.add((bits_stored, str(ds.PhotometricInterpretation)))
    if len(shapes) > 1:
        raise VolumeError(f"inconsistent geometry: instances have different sizes {sorted(shapes)}")
    rows, cols = shapes.pop()
    frames = len(datasets)
    _check_dimensions(frames, rows, cols, max_shape, max_bytes)
    if len(bits) > 1:
        raise VolumeError(
            f"instances differ in BitsStored/PhotometricInterpretation {sorted(bits)}"
        )
    spacings = {_top_level_spacing(ds, f"instance {ds.SOPInstanceUID}") for ds in datasets}
    if None in spacings:
        raise VolumeError("an instance has neither PixelSpacing nor ImagerPixelSpacing")
    if len(spacings) > 1:
        raise VolumeError(f"inconsistent geometry: PixelSpacing differs {sorted(spacings)}")
    spacing = spacings.pop()
    assert spacing is not None
    order, thickness = slice_order(datasets)
    if thickness is None:
        thickness = _float_or_none(datasets[0].get("SliceThickness"))
    pixels = np.empty((frames, rows, cols), dtype=np.float32)
    sorted_ds = [datasets[i] for i in order]
    for k, ds in enumerate(sorted_ds):
        bits_stored = int(ds.BitsStored)
        pixels[k] = _normalise(_decode(ds, 1, rows, cols), ds, bits_stored)[0]
        del ds.PixelData
    lats = {header_laterality(ds) for ds in sorted_ds} - {None}
    if len(lats) > 1:
        raise VolumeError(f"instances disagree on laterality {sorted(lats)}")
    header_lat = lats.pop() if lats else None
    return _orient(pixels, header_lat, spacing, sorted_ds, thickness), order



def slice_order(datasets: Sequence[Dataset]) -> tuple[list[int], float | None]:
    """Frame order of a per-slice series, as :func:`load_series` uses it.

    Sorted by position along the slice normal (ascending) when every instance has
    ImagePositionPatient and ImageOrientationPatient, else by InstanceNumber.

    Parameters
    ----------
    datasets : sequence of pydicom.Dataset
        Single-frame instances of one series (headers are enough).

    Returns
    -------
    order : list of int
        Indices into ``datasets``, first frame first.
    slice_thickness_mm : float or None
        Median distance between neighbouring slices along the normal, if known.

    Raises
    ------
    VolumeError
        Differing orientations, duplicate positions or instance numbers, or neither
        positions nor instance numbers.
    """
    order = list(range(len(datasets)))
    has_geometry = all(
        "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds for ds in datasets
    )
    if has_geometry:
        orients = {
            tuple(round(float(x), 4) for x in ds.ImageOrientationPatient) for ds in datasets
        }
        if len(orients) > 1:
            raise VolumeError(
                "inconsistent geometry: ImageOrientationPatient differs between instances"
            )
        normal = _orientation_normal(next(iter(orients)), "the instances")
        positions = np.asarray([[float(x) for x in ds.ImagePositionPatient] for ds in datasets])
        dist = positions @ normal
        order.sort(key=lambda i: dist[i])
        return order, _slice_steps(positions[order], normal, "slice")
    numbers = [getattr(ds, "InstanceNumber", None) for ds in datasets]
    if any(n is None or n == "" for n in numbers):
        raise VolumeError("instances have neither ImagePositionPatient nor InstanceNumber")
    if len({int(n) for n in numbers}) != len(numbers):  # type: ignore[arg-type]
        raise VolumeError("inconsistent geometry: duplicate InstanceNumber values")
    order.sort(key=lambda i: int(numbers[i]))  # type: ignore[arg-type]
    return order, None

def _float_or_none(value: object) -> float | None:
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if f > 0 else None


def _fg_attr(ds: Dataset, seq: str, attr: str) -> object:
    pf = ds.get("PerFrameFunctionalGroupsSequence") or [None]
    item = _fg_item(ds, pf[0], seq)
    return item.get(attr) if item is not None else None


def _orient(
    pixels: np.ndarray,
    header_lat: str | None,
    spacing: tuple[float, float],
    datasets: list[Dataset],
    thickness: float | None,
) -> LoadedVolume:
    lat = resolve_laterality(pixels, header_lat)
    flipped = lat == "R"
    if flipped:
        pixels = np.ascontiguousarray(pixels[..., ::-1])
    first = datasets[0]
    return LoadedVolume(
        pixels=pixels,
        flipped=flipped,
        laterality=lat,
        pixel_spacing_mm=spacing,
        source_datasets=datasets,
        study_uid=str(first.StudyInstanceUID),
        series_uid=str(first.SeriesInstanceUID),
        slice_thickness_mm=thickness,
        header_laterality=header_lat,
    )
