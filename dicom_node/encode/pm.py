"""The Parametric Map of a heatmap: uint16 pixels, Real World Value Mapping, Frame Anatomy.

Stored values 0..:data:`PM_LEVELS` - 1 map back to score units through a Real World Value
Mapping (slope/intercept); Frame Anatomy carries the breast's laterality (dcmqi needs it);
frames are put back in the source's order (OHIF pairs frames by index); a hot palette colour
LUT is added on request only (dicom3tools 2022 reports errors on COLOR_RANGE attributes).
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes

from dicom_node.encode.common import (
    fix_dimension_uids,
    ordered_and_checked,
    output_uid,
    series_and_device,
    source_laterality,
)
from dicom_node.encode.labels import ScoreLabels

#: Largest stored value of the Parametric Map (and size - 1 of its palette).
PM_LEVELS = 4096


def hot_palette(levels: int = PM_LEVELS) -> hd.PaletteColorLUTTransformation:
    """A black-red-yellow-white ("hot") 16-bit palette colour LUT with ``levels`` entries."""
    x = np.linspace(0.0, 1.0, levels)
    channels = {
        "red": np.clip(3 * x, 0, 1),
        "green": np.clip(3 * x - 1, 0, 1),
        "blue": np.clip(3 * x - 2, 0, 1),
    }
    luts = {
        name: hd.PaletteColorLUT(
            first_mapped_value=0,
            lut_data=np.rint(values * 65535).astype(np.uint16),
            color=name,
        )
        for name, values in channels.items()
    }
    return hd.PaletteColorLUTTransformation(
        red_lut=luts["red"], green_lut=luts["green"], blue_lut=luts["blue"]
    )


def _scale(heatmap: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Map scores to 0..PM_LEVELS-1; return (stored, slope, intercept)."""
    lo = float(heatmap.min())
    hi = float(heatmap.max())
    span = hi - lo
    slope = span / (PM_LEVELS - 1) if span > 0 else 1.0
    stored = np.rint((heatmap - lo) / slope)
    stored = np.clip(stored, 0, PM_LEVELS - 1).astype(np.uint16)
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


def _source_frame_index(item: Dataset, source_datasets: Sequence[Dataset]) -> int:
    """0-based source frame that a per-frame functional group item was derived from."""
    ref = item.DerivationImageSequence[0].SourceImageSequence[0]
    if len(source_datasets) == 1:
        return int(ref.get("ReferencedFrameNumber", 1)) - 1
    uids = [str(ds.SOPInstanceUID) for ds in source_datasets]
    return uids.index(str(ref.ReferencedSOPInstanceUID))


def _restore_source_order(pm: Dataset, source_datasets: Sequence[Dataset]) -> None:
    """Put the map's frames back in the source's frame order.

    highdicom sorts frames along its own slice normal; OHIF pairs Parametric Map frames with
    source frames by index, so frame ``k`` must derive from source frame ``k``.
    """
    items = list(pm.PerFrameFunctionalGroupsSequence)
    order = [_source_frame_index(item, source_datasets) for item in items]
    if order == sorted(order):
        return
    perm = np.argsort(order)
    frames, rows, cols = len(items), int(pm.Rows), int(pm.Columns)
    dtype = np.dtype(f"<u{int(pm.BitsAllocated) // 8}")
    if pm.file_meta.TransferSyntaxUID.is_compressed or int(pm.BitsAllocated) not in (8, 16, 32):
        raise ValueError("cannot reorder frames of a compressed or bit-packed Parametric Map")
    pixels = np.frombuffer(pm.PixelData, dtype=dtype, count=frames * rows * cols)
    pm.PixelData = pixels.reshape(frames, rows, cols)[perm].tobytes()
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
    palette: bool = False,
    labels: ScoreLabels | None = None,
) -> hd.pm.ParametricMap:
    """Heatmap as a Parametric Map (uint16 + Real World Value Mapping + hot palette).

    Parameters
    ----------
    source_datasets : sequence of pydicom.Dataset
        Source headers (one multi-frame object, or single-frame instances in frame order).
    heatmap : numpy.ndarray
        (frames, rows, cols) MCD scores on the source grid, stored orientation.
    model_name, model_version : str
        Written as Manufacturer Model Name and Software Versions.
    output_uid_seed : str
        Seeds the series and instance UIDs.
    series_number : int
        Series Number. Default 900.
    laterality : str or None
        ``"L"``/``"R"``; default taken from the source header.
    palette : bool
        Add the hot palette colour LUT (Pixel Presentation COLOR_RANGE). Default False:
        dicom3tools 2022 reports errors on such maps and OHIF ignores the palette.
    labels : ScoreLabels, optional
        What the scores are (rule, space, M, p, mode): content label, description and
        the real-world value mapping's label and explanation. Default: "not recorded".

    Returns
    -------
    highdicom.pm.ParametricMap
        Real world value = stored value x slope + intercept (score units).
    """
    source_datasets, heat = ordered_and_checked(source_datasets, heatmap)
    laterality = laterality or source_laterality(source_datasets)
    stored, slope, intercept = _scale(heat)
    labels = labels or ScoreLabels()
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=labels.content_label,
        lut_explanation=labels.description,
        unit=codes.UCUM.NoUnits,
        value_range=(0, PM_LEVELS - 1),
        slope=slope,
        intercept=intercept,
    )
    pm = hd.pm.ParametricMap(
        source_images=list(source_datasets),
        pixel_array=stored,
        **series_and_device("pm", output_uid_seed, series_number, model_name, model_version),
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[
            hd.VOILUTTransformation(
                window_center=(PM_LEVELS - 1) / 2.0, window_width=float(PM_LEVELS)
            )
        ],
        content_label=labels.content_label,
        content_description=labels.description,
        palette_color_lut_transformation=hot_palette() if palette else None,
        series_description=f"{model_name} heatmap",
    )
    _set_frame_laterality(pm, laterality)
    _restore_source_order(pm, source_datasets)
    fix_dimension_uids(pm, output_uid(output_uid_seed, "pm", "dimension-organization"))
    return pm
