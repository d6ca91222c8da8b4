"""Encode PICARD results as standard DICOM objects with highdicom.

:func:`encode_results` turns a heatmap of minimum completion distance (MCD) scores on the
source grid into

* a **Parametric Map**: uint16 pixels, a Real World Value Mapping (slope/intercept) back to
  MCD units, Frame Anatomy with the breast's laterality, frames in the source's order (OHIF
  needs that); a hot palette colour LUT on request (``palette=True``: dicom3tools 2022 then
  reports errors on the COLOR_RANGE attributes, so it is off by default);
* a **binary Segmentation** of ``heatmap >= threshold``: one segment "suspected lesion"
  (SNOMED CT category Morphologically abnormal structure, type Mass), algorithm PICARD.

Laterality: ``dciodvfy`` accepts either series ``Laterality`` or ``FrameLaterality``, not
both; the Parametric Map carries ``FrameLaterality`` (dcmqi needs Frame Anatomy), the
Segmentation IOD has no Frame Anatomy and ``dciodvfy`` rejects series ``Laterality`` on it,
so it carries none (its source references tie it to the breast).

Each object gets its own new series in the source's study, same rows, columns and frames as
the source, references to the source frames and a Referenced Series Sequence (which OHIF
needs). UIDs come from ``output_uid_seed``, so re-encoding the same job gives the same
objects' UIDs (idempotent export). Both objects pass ``dciodvfy`` with no errors.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.sr.coding import Code
from scipy import ndimage
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import UID, generate_uid

from dicom_node.volume import VolumeError, slice_order

logger = logging.getLogger(__name__)

#: Largest stored value of the Parametric Map (and size - 1 of its palette).
PM_LEVELS = 4096
#: Measurement name for the highest MCD score of a finding (private coding scheme).
MAX_MCD = Code("MAXMCD", "99PICARD", "Maximum minimum completion distance")
#: Procedure reported in the SR (SNOMED CT "Mammography").
MAMMOGRAPHY = Code("71651007", "SCT", "Mammography")
_MANUFACTURER = "PICARD Node"
_DEVICE_SERIAL = "0"


def output_uid(seed: str, *parts: str) -> UID:
    """Deterministic UID for one output object or series.

    Parameters
    ----------
    seed : str
        The job's ``output_uid_seed``.
    *parts : str
        What the UID names, e.g. ``("seg", "series")``.
    """
    return generate_uid(entropy_srcs=["picard-node-output", seed, *parts])


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


def source_grid(source_datasets: Sequence[Dataset]) -> tuple[int, int, int]:
    """(frames, rows, cols) of a source: one multi-frame object or single-frame instances.

    Raises
    ------
    ValueError
        If ``source_datasets`` is empty or mixes sizes, or holds several multi-frame objects.
    """
    if not source_datasets:
        raise ValueError("source_datasets is empty")
    sizes = {(int(ds.Rows), int(ds.Columns)) for ds in source_datasets}
    if len(sizes) != 1:
        raise ValueError(f"source datasets differ in size: {sorted(sizes)}")
    rows, cols = sizes.pop()
    if len(source_datasets) == 1:
        return int(getattr(source_datasets[0], "NumberOfFrames", 1) or 1), rows, cols
    if any(int(getattr(ds, "NumberOfFrames", 1) or 1) != 1 for ds in source_datasets):
        raise ValueError("several source datasets given, but not all are single-frame")
    return len(source_datasets), rows, cols


def source_laterality(source_datasets: Sequence[Dataset]) -> str | None:
    """Laterality the source header states (FrameLaterality, ImageLaterality, Laterality)."""
    ds = source_datasets[0]
    holders: list[Dataset] = []
    for seq in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        if ds.get(seq):
            holders.append(ds[seq].value[0])
    for holder in holders:
        if holder.get("FrameAnatomySequence"):
            lat = str(holder.FrameAnatomySequence[0].get("FrameLaterality", "")).upper()
            if lat in ("L", "R"):
                return lat
    for attr in ("ImageLaterality", "Laterality"):
        lat = str(ds.get(attr, "") or "").upper()
        if lat in ("L", "R"):
            return lat
    return None


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


def _fix_dimension_uids(obj: Dataset, uid: str) -> None:
    """Replace highdicom's random Dimension Organization UID with a deterministic one."""
    for seq in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
        for item in obj.get(seq) or []:
            if "DimensionOrganizationUID" in item:
                item.DimensionOrganizationUID = uid


def _scale(heatmap: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Map scores to 0..PM_LEVELS-1; return (stored, slope, intercept)."""
    lo = float(heatmap.min())
    hi = float(heatmap.max())
    span = hi - lo
    slope = span / (PM_LEVELS - 1) if span > 0 else 1.0
    stored = np.rint((heatmap - lo) / slope)
    stored = np.clip(stored, 0, PM_LEVELS - 1).astype(np.uint16)
    return stored, slope, lo


def _series_and_device(
    kind: str, output_uid_seed: str, series_number: int, model_name: str, model_version: str
) -> dict:
    """Series/instance identity and equipment keywords of a highdicom derived object.

    ``kind`` (``"pm"``, ``"seg"``) keeps the UIDs of the objects of one result apart.
    """
    return dict(
        series_instance_uid=output_uid(output_uid_seed, kind, "series"),
        series_number=series_number,
        sop_instance_uid=output_uid(output_uid_seed, kind, "instance"),
        instance_number=1,
        manufacturer=_MANUFACTURER,
        manufacturer_model_name=model_name,
        software_versions=model_version,
        device_serial_number=_DEVICE_SERIAL,
    )


def _ordered_and_checked(
    source_datasets: Sequence[Dataset], heatmap: np.ndarray
) -> tuple[list[Dataset], np.ndarray]:
    """Sources in frame order (:func:`frame_ordered`) and the heatmap checked against them."""
    ordered = frame_ordered(source_datasets)
    return ordered, _check_heatmap(ordered, heatmap)


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

    Returns
    -------
    highdicom.pm.ParametricMap
        Real world value = stored value x slope + intercept (MCD units).
    """
    source_datasets, heat = _ordered_and_checked(source_datasets, heatmap)
    laterality = laterality or source_laterality(source_datasets)
    stored, slope, intercept = _scale(heat)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="MCD",
        lut_explanation="PICARD minimum completion distance",
        unit=codes.UCUM.NoUnits,
        value_range=(0, PM_LEVELS - 1),
        slope=slope,
        intercept=intercept,
    )
    pm = hd.pm.ParametricMap(
        source_images=list(source_datasets),
        pixel_array=stored,
        **_series_and_device("pm", output_uid_seed, series_number, model_name, model_version),
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[
            hd.VOILUTTransformation(
                window_center=(PM_LEVELS - 1) / 2.0, window_width=float(PM_LEVELS)
            )
        ],
        content_label="MCD",
        content_description=f"{model_name} {model_version} MCD heatmap",
        palette_color_lut_transformation=hot_palette() if palette else None,
        series_description=f"{model_name} heatmap",
    )
    _set_frame_laterality(pm, laterality)
    _restore_source_order(pm, source_datasets)
    _fix_dimension_uids(pm, output_uid(output_uid_seed, "pm", "dimension-organization"))
    return pm


def encode_segmentation(
    source_datasets: Sequence[Dataset],
    heatmap: np.ndarray,
    *,
    threshold: float,
    model_name: str = "PICARD",
    model_version: str,
    output_uid_seed: str,
    series_number: int = 901,
    laterality: str | None = None,
) -> hd.seg.Segmentation:
    """Binary Segmentation of ``heatmap >= threshold`` ("suspected lesion").

    Parameters
    ----------
    source_datasets : sequence of pydicom.Dataset
        Source headers (one multi-frame object, or single-frame instances in frame order).
    heatmap : numpy.ndarray
        (frames, rows, cols) MCD scores on the source grid, stored orientation.
    threshold : float
        Scores at or above it are marked.
    model_name, model_version : str
        Algorithm Identification (name, version).
    output_uid_seed : str
        Seeds the series, instance and tracking UIDs.
    series_number : int
        Series Number. Default 901.
    laterality : str or None
        Accepted for symmetry and ignored: ``dciodvfy`` rejects series Laterality on a
        Segmentation and the IOD has no Frame Anatomy.

    Returns
    -------
    highdicom.seg.Segmentation
        Frames holding no marked pixel are left out, unless no pixel is marked at all (then
        every frame is kept, empty, so the object stays valid).
    """
    source_datasets, heat = _ordered_and_checked(source_datasets, heatmap)
    mask = heat >= float(threshold)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model_name,
        family=codes.cid7162.ArtificialIntelligence,
        version=model_version,
    )
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="suspected lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Mass,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=output_uid(output_uid_seed, "seg", "tracking"),
        tracking_id="PICARD suspected lesion",
    )
    seg = hd.seg.Segmentation(
        source_images=list(source_datasets),
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        **_series_and_device("seg", output_uid_seed, series_number, model_name, model_version),
        content_label="PICARD",
        content_description=f"{model_name} {model_version} MCD >= {threshold:g}",
        omit_empty_frames=bool(mask.any()),
        series_description=f"{model_name} suspected lesions",
    )
    if "Laterality" in seg:
        del seg.Laterality
    _fix_dimension_uids(seg, output_uid(output_uid_seed, "seg", "dimension-organization"))
    if not mask.any():
        logger.info("no score >= %g: writing an empty segmentation", threshold)
    return seg



def findings(heatmap: np.ndarray, threshold: float, *, max_findings: int = 20) -> list[dict]:
    """Connected components of ``heatmap >= threshold``, highest score first.

    Parameters
    ----------
    heatmap : numpy.ndarray
        (frames, rows, cols) scores.
    threshold : float
        Scores at or above it form findings.
    max_findings : int
        Keep at most this many components (highest maximum score first). Default 20.

    Returns
    -------
    list of dict
        Each: ``frame`` (0-based frame holding the component's highest score),
        ``box`` (row0, col0, row1, col1) of the component on that frame, inclusive,
        ``max_score``, ``voxels`` (component size), ``frames`` (first, last) spanned.
    """
    mask = heatmap >= float(threshold)
    labels, count = ndimage.label(mask)
    out = []
    for index, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        component = labels[sl] == index
        scores = np.where(component, heatmap[sl], -np.inf)
        peak = np.unravel_index(int(np.argmax(scores)), scores.shape)
        frame = sl[0].start + int(peak[0])
        on_frame = component[peak[0]]
        rr, cc = np.nonzero(on_frame)
        out.append(
            {
                "frame": frame,
                "box": (
                    sl[1].start + int(rr.min()),
                    sl[2].start + int(cc.min()),
                    sl[1].start + int(rr.max()),
                    sl[2].start + int(cc.max()),
                ),
                "max_score": float(scores[peak]),
                "voxels": int(component.sum()),
                "frames": (sl[0].start, sl[0].stop - 1),
            }
        )
    out.sort(key=lambda f: -f["max_score"])
    if len(out) > max_findings:
        logger.info("keeping %d of %d findings", max_findings, len(out))
    return out[:max_findings]


def encode_sr(
    source_datasets: Sequence[Dataset],
    heatmap: np.ndarray,
    *,
    threshold: float,
    model_name: str = "PICARD",
    model_version: str,
    output_uid_seed: str,
    series_number: int = 902,
    max_findings: int = 20,
) -> hd.sr.Comprehensive3DSR | None:
    """TID 1500 measurement report: one finding per connected component.

    Each finding is a 2D ``SCOORD`` closed polyline (the component's bounding box on the
    frame holding its highest score; OHIF draws 2D SCOORD on DBT, not SCOORD3D), finding
    type Mass, and its highest MCD score as a measurement.

    Parameters
    ----------
    source_datasets : sequence of pydicom.Dataset
        Source headers in frame order.
    heatmap : numpy.ndarray
        (frames, rows, cols) MCD scores on the source grid, stored orientation.
    threshold : float
        Scores at or above it form findings.
    model_name, model_version : str
        Observer device and algorithm identification.
    output_uid_seed : str
        Seeds the series, instance, device and tracking UIDs.
    series_number : int
        Series Number. Default 902.
    max_findings : int
        At most this many findings, highest score first. Default 20.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR or None
        ``None`` when no score reaches ``threshold`` (TID 1500 needs at least one
        measurement group; the empty Segmentation already says "nothing found").
    """
    source_datasets, heat = _ordered_and_checked(source_datasets, heatmap)
    device = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=output_uid(output_uid_seed, "sr", "device"),
            name=model_name,
            manufacturer_name=_MANUFACTURER,
            model_name=model_version,
        ),
    )
    algorithm = hd.sr.AlgorithmIdentification(name=model_name, version=model_version)
    groups = []
    for n, finding in enumerate(
        findings(heat, threshold, max_findings=max_findings), start=1
    ):
        frame = finding["frame"]
        r0, c0, r1, c1 = finding["box"]
        # Image coordinates: (column, row), pixel (0, 0) covers [0, 1) x [0, 1).
        outline = np.array(
            [[c0, r0], [c1 + 1, r0], [c1 + 1, r1 + 1], [c0, r1 + 1], [c0, r0]], dtype=float
        )
        if len(source_datasets) == 1:
            src = source_datasets[0]
            frames = [frame + 1]
        else:
            src = source_datasets[frame]
            frames = None
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=outline,
            source_image=hd.sr.SourceImageForRegion(
                referenced_sop_class_uid=src.SOPClassUID,
                referenced_sop_instance_uid=src.SOPInstanceUID,
                referenced_frame_numbers=frames,
            ),
        )
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=output_uid(output_uid_seed, "sr", "finding", str(n)),
                    identifier=f"suspected lesion {n}",
                ),
                referenced_region=region,
                finding_type=codes.SCT.Mass,
                finding_category=codes.SCT.MorphologicallyAbnormalStructure,
                algorithm_id=algorithm,
                measurements=[
                    hd.sr.Measurement(
                        name=MAX_MCD,
                        value=round(finding["max_score"], 6),
                        unit=codes.UCUM.NoUnits,
                        algorithm_id=algorithm,
                    )
                ],
            )
        )
    if not groups:
        logger.info("no score >= %g: no SR", threshold)
        return None
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=MAMMOGRAPHY,
        imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(source_datasets),
        content=report,
        series_instance_uid=output_uid(output_uid_seed, "sr", "series"),
        series_number=series_number,
        sop_instance_uid=output_uid(output_uid_seed, "sr", "instance"),
        instance_number=1,
        manufacturer=_MANUFACTURER,
        is_complete=True,
        series_description=f"{model_name} findings",
    )
    return sr


def encode_results(
    source_datasets: list[Dataset],
    heatmap: np.ndarray,
    *,
    threshold: float,
    model_name: str = "PICARD",
    model_version: str,
    output_uid_seed: str,
    series_number_base: int = 900,
    laterality: str | None = None,
    include_sr: bool = False,
) -> list[Dataset]:
    """Encode a heatmap as [Parametric Map, Segmentation] (+ SR on request).

    Parameters
    ----------
    source_datasets : list of pydicom.Dataset
        Source headers (one multi-frame object, or the single-frame instances in any order:
        they are put in :func:`~dicom_node.volume.load_series` frame order), pixel data not
        needed.
    heatmap : numpy.ndarray
        (frames, rows, cols) float32 MCD scores on the SOURCE grid, stored orientation,
        source frame order.
    threshold : float
        MCD at or above which a pixel is a suspected lesion.
    model_name : str
        Default ``"PICARD"``.
    model_version : str
        Model (bundle) version, e.g. ``"1.0.0"``.
    output_uid_seed : str
        Seeds all new UIDs (same seed, same UIDs); the study stays the source's.
    series_number_base : int
        Parametric Map series number; the Segmentation gets ``+ 1``. Default 900.
    laterality : str or None
        ``"L"``/``"R"`` as established from the pixels (``LoadedVolume.laterality``);
        default: the source header's.
    include_sr : bool
        Also return a Comprehensive 3D SR (TID 1500) with one finding per connected
        component (series number ``series_number_base + 2``), when there is at least one
        finding. Default False.

    Returns
    -------
    list of pydicom.Dataset
        ``[ParametricMap, Segmentation]`` or ``[ParametricMap, Segmentation, SR]``.

    Raises
    ------
    ValueError
        If the heatmap does not match the source grid or holds NaN/inf values.
    """
    common = dict(
        model_name=model_name,
        model_version=model_version,
        output_uid_seed=output_uid_seed,
        laterality=laterality,
    )
    pm = encode_parametric_map(
        source_datasets, heatmap, series_number=series_number_base, **common
    )
    seg = encode_segmentation(
        source_datasets, heatmap, threshold=threshold, series_number=series_number_base + 1,
        **common,
    )
    out: list[Dataset] = [pm, seg]
    if include_sr:
        sr = encode_sr(
            source_datasets, heatmap, threshold=threshold, model_name=model_name,
            model_version=model_version, output_uid_seed=output_uid_seed,
            series_number=series_number_base + 2,
        )
        if sr is not None:
            out.append(sr)
    return out


def frame_ordered(source_datasets: Sequence[Dataset]) -> list[Dataset]:
    """Source headers in heatmap frame order (the order :func:`load_series` gives).

    A multi-frame source is returned as is; single-frame instances are sorted along the slice
    normal (else by InstanceNumber), so callers may pass them in any order.
    """
    datasets = list(source_datasets)
    if len(datasets) <= 1:
        return datasets
    try:
        order, _ = slice_order(datasets)
    except VolumeError as exc:
        raise ValueError(f"cannot order the source instances: {exc}") from exc
    return [datasets[i] for i in order]


def _check_heatmap(source_datasets: Sequence[Dataset], heatmap: np.ndarray) -> np.ndarray:
    grid = source_grid(source_datasets)
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim == 2 and grid[0] == 1:
        heat = heat[None]
    if heat.shape != grid:
        raise ValueError(
            f"heatmap shape {heat.shape} does not match the source grid {grid} "
            "(frames, rows, cols)"
        )
    if not np.isfinite(heat).all():
        raise ValueError("heatmap contains NaN or infinite values")
    return heat
