"""The Parametric Map of a heatmap: float32 pixels, Real World Value Mapping, Frame Anatomy.

Why float32 with stored values 0..1: OHIF 3.13 (``cornerstone-dicom-pmap``) ignores the
Real World Value Mapping and any palette; it copies the stored values into an array of the
same type, multiplies them by 100 and shows them with its rainbow colour map over a fixed
0..100 window, transparent at 0 and opaque at 100. Integer maps wrap into bands there
(uint16 x 100 overflows); float32 values 0..1 show as a graded heatmap. So:

* stored value 0 is half the SEG threshold (normal tissue stays uncoloured; lower scores
  are negative, hence transparent in OHIF) and 1 is the highest score, at least the
  threshold (:func:`display_range`);
* the Real World Value Mapping (slope, intercept) gives every reader the real scores back,
  exactly up to float32 precision, with the scoring rule as its label;
* frames are ordered along the source's slice normal (row x column direction), ascending:
  OHIF fills its volume in that order and ignores the frame references, so a source whose
  frames run the other way would otherwise get its heatmap upside down in depth.

Frame Anatomy carries the breast's laterality (dcmqi needs it). A float map cannot carry a
palette colour LUT.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from dicom_node.encode.common import (
    fix_dimension_uids,
    ordered_and_checked,
    output_uid,
    series_and_device,
    source_laterality,
)
from dicom_node.encode.display import SCORE_UNIT, series_description, stamp_series
from dicom_node.encode.labels import SPREAD_UNIT, ScoreLabels, SpreadLabels


def display_range(heatmap: np.ndarray, threshold: float | None) -> tuple[float, float]:
    """Scores stored as 0 and 1: (half the threshold, max(highest score, threshold)).

    Parameters
    ----------
    heatmap : numpy.ndarray
        Scores.
    threshold : float or None
        SEG threshold; ``None``: the heatmap's own minimum and maximum.

    Returns
    -------
    lo, hi : float
        ``hi > lo`` always (a flat map without threshold gets ``hi = lo + 1``).
    """
    if threshold is None:
        lo, hi = float(heatmap.min()), float(heatmap.max())
    else:
        lo = float(threshold) / 2.0
        hi = max(float(heatmap.max()), float(threshold))
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def _scale(heatmap: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, float, float]:
    """Stored float32 values ``(score - lo) / (hi - lo)``; return (stored, slope, intercept)."""
    slope = hi - lo
    stored = ((heatmap.astype(np.float64) - lo) / slope).astype(np.float32)
    return stored, slope, lo


def _frame_anatomy(laterality: str) -> Dataset:
    region = Dataset()
    region.CodeValue = "76752008"
    region.CodingSchemeDesignator = "SCT"
    region.CodeMeaning = "Breast"
    item = Dataset()
    item.AnatomicRegionSequence = DicomSequence([region])
    item.FrameLaterality = laterality
    return item


def _set_frame_laterality(obj: Dataset, laterality: str | None) -> None:
    """Shared Frame Anatomy with FrameLaterality (``U`` if unknown), no series Laterality."""
    if laterality not in ("L", "R"):
        laterality = "U"
    if "Laterality" in obj:
        del obj.Laterality
    shared = obj.SharedFunctionalGroupsSequence[0]
    shared.FrameAnatomySequence = DicomSequence([_frame_anatomy(laterality)])


def _distance_along_normal(item: Dataset, normal: np.ndarray) -> float:
    """Position of a per-frame functional group item along the slice normal (mm)."""
    position = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
    return float(position @ normal)


def order_along_normal(pm: Dataset) -> None:
    """Reorder the map's frames by position along the slice normal, ascending.

    The normal is row direction x column direction of the shared Plane Orientation. This is
    the order OHIF (cornerstone ``sortImageIdsAndGetSpacing``) gives the source volume, and
    OHIF copies Parametric Map frames into that volume by index.

    Raises
    ------
    ValueError
        If the map is compressed or its pixels are not 32-bit float or 8/16-bit integer.
    """
    items = list(pm.PerFrameFunctionalGroupsSequence)
    iop = np.asarray(
        pm.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient,
        dtype=float,
    )
    normal = np.cross(iop[:3], iop[3:])
    distances = [_distance_along_normal(item, normal) for item in items]
    perm = np.argsort(distances, kind="stable")
    if np.array_equal(perm, np.arange(len(items))):
        return
    if pm.file_meta.TransferSyntaxUID.is_compressed:
        raise ValueError("cannot reorder the frames of a compressed Parametric Map")
    keyword = "FloatPixelData" if "FloatPixelData" in pm else "PixelData"
    bits = int(pm.BitsAllocated)
    if keyword == "FloatPixelData" and bits == 32:
        dtype = np.dtype("<f4")
    elif keyword == "PixelData" and bits in (8, 16):
        dtype = np.dtype(f"<u{bits // 8}")
    else:
        raise ValueError(f"cannot reorder {keyword} with BitsAllocated {bits}")
    frames, rows, cols = len(items), int(pm.Rows), int(pm.Columns)
    pixels = np.frombuffer(pm[keyword].value, dtype=dtype, count=frames * rows * cols)
    setattr(pm, keyword, pixels.reshape(frames, rows, cols)[perm].tobytes())
    pm.PerFrameFunctionalGroupsSequence = DicomSequence([items[i] for i in perm])


def encode_parametric_map(
    source_datasets: Sequence[Dataset],
    heatmap: np.ndarray,
    *,
    model_name: str = "PICARD",
    model_version: str,
    output_uid_seed: str,
    series_number: int = 900,
    laterality: str | None = None,
    threshold: float | None = None,
    labels: ScoreLabels | SpreadLabels | None = None,
    created: _dt.datetime | None = None,
    kind: str = "heatmap",
) -> hd.pm.ParametricMap:
    """Heatmap as a float32 Parametric Map with a Real World Value Mapping to scores.

    Parameters
    ----------
    source_datasets : sequence of pydicom.Dataset
        Source headers (one multi-frame object, or single-frame instances in any order).
    heatmap : numpy.ndarray
        (frames, rows, cols) scores on the source grid, stored orientation, in the order
        :func:`~dicom_node.encode.common.frame_ordered` gives the sources.
    model_name, model_version : str
        Written as Manufacturer Model Name and Software Versions.
    output_uid_seed : str
        Seeds the series and instance UIDs.
    series_number : int
        Series Number. Default 900.
    laterality : str or None
        ``"L"``/``"R"``; default taken from the source header.
    threshold : float or None
        SEG threshold: stored 0 is half of it, stored 1 the highest score (at least the
        threshold), see :func:`display_range`. Default ``None``: the map's own range.
    labels : ScoreLabels or SpreadLabels, optional
        What the values are (rule, space, M, p, mode): content label, description and
        the real-world value mapping's label, explanation and unit. Default: scores,
        "not recorded".
    created : datetime.datetime, optional
        Series Date and Time; default now.
    kind : str
        Second word of the series description: ``"heatmap"`` (default) or ``"spread"``.

    Returns
    -------
    highdicom.pm.ParametricMap
        Real world value = stored value x slope + intercept (score units); frames ordered
        along the slice normal (:func:`order_along_normal`).
    """
    source_datasets, heat = ordered_and_checked(source_datasets, heatmap)
    laterality = laterality or source_laterality(source_datasets)
    lo, hi = display_range(heat, threshold)
    stored, slope, intercept = _scale(heat, lo, hi)
    labels = labels or ScoreLabels()
    uid_kind = "pm" if kind == "heatmap" else f"pm-{kind}"  # the heatmap's UIDs as before
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=labels.content_label,
        lut_explanation=labels.description,
        unit=SPREAD_UNIT if isinstance(labels, SpreadLabels) else SCORE_UNIT,
        value_range=(min(float(stored.min()), 0.0), max(float(stored.max()), 1.0)),
        slope=slope,
        intercept=intercept,
    )
    pm = hd.pm.ParametricMap(
        source_images=list(source_datasets),
        pixel_array=stored,
        **series_and_device(uid_kind, output_uid_seed, series_number, model_name, model_version),
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
        content_label=labels.content_label,
        content_description=labels.description,
        series_description=series_description(model_name, kind, labels.short),
    )
    _set_frame_laterality(pm, laterality)
    order_along_normal(pm)
    fix_dimension_uids(pm, output_uid(output_uid_seed, uid_kind, "dimension-organization"))
    stamp_series(pm, created or _dt.datetime.now())
    return pm
