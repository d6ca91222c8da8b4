"""Key images and their Key Object Selection, for viewers that show neither SEG nor PM.

Key images are RGB **Secondary Capture** images, one per finding (a 3D connected
component of ``heatmap >= threshold``, :func:`~dicom_node.encode.sr.findings`, numbered as
in the SR) on the frame of its highest score:

* the source slice as the source asks it to be shown
  (:func:`~dicom_node.encode.burn.display_window`);
* the heatmap as a graded colour overlay where the score is at least half the threshold
  (the range the Parametric Map colours, :func:`~dicom_node.encode.pm.display_range`);
* the finding's outline (the threshold contour of its component on that frame, drawn just
  outside it) in the prediction colour :data:`~dicom_node.encode.display.PREDICTION_RGB`;
* a text band above the image: "NOT FOR DIAGNOSTIC USE", model, scoring rule, finding
  number, source frame number, highest score.

Each has Burned In Annotation YES, Image Type DERIVED\\SECONDARY, Conversion Type WSD
(workstation), a Source Image Sequence naming the source instance (and frame) and the
breast's Laterality (General Series; the SC IOD has no Image Laterality). Images narrower
than :data:`~dicom_node.encode.burn.MIN_WIDTH` are enlarged by pixel replication (their
Pixel Spacing divided accordingly).

The **Key Object Selection** document (title (113000, DCM, "Of Interest")) references the
source frames holding findings and the key images, with a Key Object Description naming the
model.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import RLELossless
from scipy import ndimage

from dicom_node.encode import burn
from dicom_node.encode.common import (
    DEVICE_SERIAL,
    MANUFACTURER,
    check_heatmap,
    frame_ordered,
    output_uid,
    series_and_device,
    source_grid,
    source_laterality,
)
from dicom_node.encode.display import (
    KEY_IMAGES_KIND,
    KEY_OBJECTS_KIND,
    PREDICTION_RGB,
    model_title,
    series_description,
    stamp_series,
)
from dicom_node.encode.labels import ScoreLabels
from dicom_node.encode.pm import display_range
from dicom_node.encode.sanitize import clean_source_headers
from dicom_node.encode.sr import findings

#: Title of the Key Object Selection document (CID 7010).
OF_INTEREST = Code("113000", "DCM", "Of Interest")
#: Purpose of reference of the source image of every burned-in image (CID 7202).
SOURCE_FOR_PROCESSING = Code("121322", "DCM", "Source image for image processing operation")
#: Image Type of every burned-in image.
IMAGE_TYPE = ["DERIVED", "SECONDARY"]
#: Conversion Type of every burned-in image: made on a workstation.
CONVERSION_TYPE = "WSD"
#: Lossless and decoded by every DICOM toolkit and viewer; a burned-in RGB key image of a
#: full DBT frame shrinks about 3x (the SCU sends it decompressed to a peer that refuses it).
TRANSFER_SYNTAX = RLELossless


def frame_source(ordered: Sequence[Dataset], frame: int) -> tuple[Dataset, int, int | None]:
    """Where a frame of the source grid lives.

    Parameters
    ----------
    ordered : sequence of pydicom.Dataset
        Source headers in frame order (:func:`~dicom_node.encode.common.frame_ordered`).
    frame : int
        0-based frame index.

    Returns
    -------
    instance : pydicom.Dataset
        The source instance holding the frame.
    index : int
        0-based frame within that instance.
    number : int or None
        Referenced Frame Number (1-based) for a multi-frame instance, else None.

    Raises
    ------
    ValueError
        If ``frame`` is outside the source grid.
    """
    frames = source_grid(ordered)[0]
    if not 0 <= int(frame) < frames:
        raise ValueError(f"frame {frame} is outside the source's {frames} frames")
    if len(ordered) == 1:
        ds = ordered[0]
        multi = "NumberOfFrames" in ds
        return ds, int(frame), int(frame) + 1 if multi else None
    return ordered[int(frame)], 0, None


def source_image_item(ds: Dataset, frame_number: int | None) -> Dataset:
    """One Source Image Sequence item naming ``ds`` (and its frame)."""
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    if frame_number is not None:
        item.ReferencedFrameNumber = frame_number
    purpose = Dataset()
    purpose.CodeValue = SOURCE_FOR_PROCESSING.value
    purpose.CodingSchemeDesignator = SOURCE_FOR_PROCESSING.scheme_designator
    purpose.CodeMeaning = SOURCE_FOR_PROCESSING.meaning
    item.PurposeOfReferenceCodeSequence = DicomSequence([purpose])
    return item


def secondary_capture(
    pixels: np.ndarray,
    photometric: str,
    *,
    source: Dataset,
    index: int,
    frame_number: int | None,
    factor: int,
    kind: str,
    number: int,
    series_number: int,
    description: str,
    derivation: str,
    comments: str,
    model_name: str,
    model_version: str,
    output_uid_seed: str,
    laterality: str | None,
    created: _dt.datetime,
) -> hd.sc.SCImage:
    """A burned-in Secondary Capture of one source frame, with what every such image carries.

    Parameters
    ----------
    pixels : numpy.ndarray
        (rows, cols, 3) uint8 RGB or (rows, cols) uint16 grey.
    photometric : str
        ``RGB``, ``MONOCHROME2`` or ``MONOCHROME1``.
    source, index, frame_number
        The source instance, the 0-based frame within it and its Referenced Frame Number
        (:func:`frame_source`).
    factor : int
        Enlargement over the source grid (Pixel Spacing is divided by it).
    kind : str
        Keeps the UIDs of the series apart (``"keyimages"``, ``"expected"``).
    number : int
        Instance Number (1-based); also seeds the instance UID.
    series_number, description : int, str
        Series Number and Series Description.
    derivation, comments : str
        Derivation Description (ST) and Image Comments (LT): what the pixels show.
    model_name, model_version, output_uid_seed
        Equipment and UID seed, as for the other result objects.
    laterality : str or None
        ``L``/``R`` written as the series' Laterality; anything else leaves it out.
    created : datetime.datetime
        Series, content and secondary-capture date and time.
    """
    spacing = burn.pixel_spacing(source, index)
    if spacing is not None:
        spacing = (spacing[0] / factor, spacing[1] / factor)
    orientation = burn.patient_orientation(source, index)
    identity = series_and_device(kind, output_uid_seed, series_number, model_name,
                                 model_version)
    identity["sop_instance_uid"] = output_uid(output_uid_seed, kind, "instance", str(number))
    identity["instance_number"] = number
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=photometric,
        bits_allocated=8 if pixels.dtype == np.uint8 else 16,
        coordinate_system="PATIENT",
        patient_orientation=tuple(o[0] for o in orientation) if orientation else ("L", "F"),
        laterality=laterality if laterality in ("L", "R") else None,
        pixel_spacing=spacing,
        transfer_syntax_uid=TRANSFER_SYNTAX,
        series_description=description,
        content_date=created.date(),
        content_time=created.time(),
        **identity,
    )
    if orientation is None:
        sc.PatientOrientation = ""
    else:
        sc.PatientOrientation = list(orientation)
    sc.ImageType = list(IMAGE_TYPE)
    sc.ConversionType = CONVERSION_TYPE
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = derivation[:1024]
    sc.ImageComments = comments
    sc.SourceImageSequence = DicomSequence([source_image_item(source, frame_number)])
    sc.DateOfSecondaryCapture = created.strftime("%Y%m%d")
    sc.TimeOfSecondaryCapture = created.strftime("%H%M%S")
    sc.InstanceCreationDate = created.strftime("%Y%m%d")
    sc.InstanceCreationTime = created.strftime("%H%M%S")
    stamp_series(sc, created)
    return sc


def _check_source_pixels(ordered: Sequence[Dataset], source_pixels: np.ndarray) -> np.ndarray:
    grid = source_grid(ordered)
    pixels = np.asarray(source_pixels)
    if pixels.ndim == 2 and grid[0] == 1:
        pixels = pixels[None]
    if pixels.shape != grid:
        raise ValueError(f"source_pixels shape {pixels.shape} does not match the source grid "
                         f"{grid} (frames, rows, cols)")
    if not np.isfinite(pixels).all():
        raise ValueError("source_pixels contains NaN or infinite values")
    return pixels


def _component_on_frame(heat: np.ndarray, threshold: float, finding: dict) -> np.ndarray:
    """The finding's component (3D, ``heat >= threshold``) on its peak frame, as a 2D mask.

    Labels only the frames the component spans (it lies wholly within them, so the part
    connected to its peak there is the whole component).
    """
    first, last = finding["frames"]
    frame = finding["frame"]
    labels, _ = ndimage.label(heat[first:last + 1] >= float(threshold))
    on_frame = labels[frame - first]
    r0, c0, r1, c1 = finding["box"]
    box = (slice(r0, r1 + 1), slice(c0, c1 + 1))
    peaks = np.argwhere((heat[frame][box] == np.float32(finding["max_score"]))
                        & (on_frame[box] > 0))
    masks = [on_frame == on_frame[r0 + r, c0 + c] for r, c in peaks]
    for mask in masks:  # the one whose extent on the frame is the finding's box
        rr, cc = np.nonzero(mask)
        if (rr.min(), cc.min(), rr.max(), cc.max()) == (r0, c0, r1, c1):
            return mask
    raise ValueError(f"finding on frame {frame} not found in the heatmap")


def render_key_image(
    pixels: np.ndarray, heat: np.ndarray, component: np.ndarray, *,
    window: tuple[float, float], invert: bool, heat_range: tuple[float, float],
    lines: Sequence[str],
) -> tuple[np.ndarray, int, int]:
    """The RGB key image of one frame: (image, enlargement factor, text band height).

    The image is the text band (:func:`~dicom_node.encode.burn.text_band`) over the
    enlarged frame: grey, heatmap colour where the score is ``>= heat_range[0]``, the
    component's outline in :data:`~dicom_node.encode.display.PREDICTION_RGB`.
    """
    grey = burn.to_grey8(pixels, *window, invert=invert)
    rgb = burn.blend_heatmap(np.repeat(grey[..., None], 3, axis=-1), heat, *heat_range)
    factor = burn.upscale_factor(pixels.shape[1])
    rgb = burn.upscale(rgb, factor)
    width = rgb.shape[1]
    outline = burn.ring(burn.upscale(component, factor), burn.line_width(width), outside=True)
    rgb[outline] = PREDICTION_RGB
    colours = [burn.WARNING_RGB] + [burn.TEXT_RGB] * (len(lines) - 1)
    band = burn.text_band(lines, width, colours)
    return np.concatenate([band, rgb], axis=0), factor, band.shape[0]


def encode_key_images(
    source_datasets: Sequence[Dataset],
    source_pixels: np.ndarray,
    heatmap: np.ndarray,
    *,
    threshold: float,
    model_name: str = "PICARD",
    model_version: str,
    output_uid_seed: str,
    labels: ScoreLabels | None = None,
    created: _dt.datetime | None = None,
    series_number: int = 903,
    max_findings: int = 20,
    found: Sequence[dict] | None = None,
) -> list[Dataset]:
    """One RGB Secondary Capture per finding, on the frame of its highest score.

    Parameters
    ----------
    source_datasets : sequence of pydicom.Dataset
        Source headers (one multi-frame object, or single-frame instances in any order).
    source_pixels : numpy.ndarray
        (frames, rows, cols) stored values (as decoded, before Rescale Slope/Intercept) on
        the source grid, stored orientation, in
        :func:`~dicom_node.encode.common.frame_ordered` order.
    heatmap : numpy.ndarray
        Scores on the same grid and in the same order.
    threshold : float
        Scores at or above it form findings (the Segmentation's threshold).
    model_name, model_version : str
        Manufacturer Model Name and Software Versions; burned into the text.
    output_uid_seed : str
        Seeds the series and instance UIDs.
    labels : ScoreLabels, optional
        What the scores are; burned into the text. Default: "not recorded".
    created : datetime.datetime, optional
        Series, content and capture date and time; default now.
    series_number : int
        Series Number. Default 903.
    max_findings : int
        At most this many key images, highest score first. Default 20.
    found : sequence of dict, optional
        :func:`~dicom_node.encode.sr.findings` of this heatmap and threshold when the caller
        has them already (highest score first); default: computed here.

    Returns
    -------
    list of pydicom.Dataset
        ``hd.sc.SCImage`` objects, Instance Number = finding number; empty without findings.

    Raises
    ------
    ValueError
        If the pixels or the heatmap do not match the source grid or hold NaN/inf values.
    """
    ordered = frame_ordered(clean_source_headers(source_datasets)[0])
    heat = check_heatmap(ordered, heatmap)
    pixels = _check_source_pixels(ordered, source_pixels)
    found = (findings(heat, threshold, max_findings=max_findings) if found is None
             else list(found)[:max_findings])
    if not found:
        return []
    labels = labels or ScoreLabels()
    created = created or _dt.datetime.now()
    heat_range = display_range(heat, threshold)
    laterality = source_laterality(ordered)
    total_frames = heat.shape[0]
    description = series_description(
        model_name, KEY_IMAGES_KIND,
        f"{len(found)} finding{'s' if len(found) > 1 else ''}, {labels.short}")
    out: list[Dataset] = []
    for n, finding in enumerate(found, start=1):
        frame = finding["frame"]
        source, index, frame_number = frame_source(ordered, frame)
        first, last = (f + 1 for f in finding["frames"])
        score = finding["max_score"]
        lines = [
            "NOT FOR DIAGNOSTIC USE",
            f"{model_title(model_name, model_version)} - finding {n} of {len(found)}",
            (f"frame {frame + 1} of {total_frames} (finding spans {first}-{last}), "
             f"max score {score:.4g}"),
            labels.description,
            f"colour: score >= {heat_range[0]:.4g}; magenta outline: >= {threshold:.4g}",
        ]
        image, factor, _ = render_key_image(
            pixels[frame], heat[frame], _component_on_frame(heat, threshold, finding),
            window=burn.display_window(source, index, pixels[frame]),
            invert=burn.is_monochrome1(source), heat_range=heat_range, lines=lines,
        )
        what = (f"{model_title(model_name, model_version)} finding {n} of {len(found)} on source frame "
                f"{frame + 1}: the source slice with the score heatmap ({labels.description}) "
                f"burned in as colour where the score is >= {heat_range[0]:.4g}, the "
                f"finding's outline at score {threshold:.4g} in magenta and a text band")
        comments = (f"{what}; highest score {score:.6g}; finding spans frames {first}-{last}. "
                    "NOT FOR DIAGNOSTIC USE.")
        out.append(secondary_capture(
            image, "RGB", source=source, index=index, frame_number=frame_number,
            factor=factor, kind="keyimages", number=n, series_number=series_number,
            description=description, derivation=what, comments=comments,
            model_name=model_name, model_version=model_version,
            output_uid_seed=output_uid_seed, laterality=laterality, created=created,
        ))
    return out


def encode_key_object_selection(
    source_datasets: Sequence[Dataset],
    key_images: Sequence[Dataset],
    frames: Sequence[int],
    *,
    model_name: str = "PICARD",
    model_version: str,
    output_uid_seed: str,
    created: _dt.datetime | None = None,
    series_number: int = 904,
) -> Dataset:
    """Key Object Selection "Of Interest": the source frames holding findings, the key images.

    Parameters
    ----------
    source_datasets : sequence of pydicom.Dataset
        Source headers (one multi-frame object, or single-frame instances in any order).
    key_images : sequence of pydicom.Dataset
        Key images of the same study (:func:`encode_key_images`), referenced after the
        source; may be empty.
    frames : sequence of int
        0-based frames (:func:`~dicom_node.encode.common.frame_ordered` order) holding
        findings, e.g. each finding's ``frame``; duplicates are merged. A multi-frame source
        is referenced once with these Referenced Frame Numbers, a per-slice source by the
        instances holding them.
    model_name, model_version : str
        Named in the Key Object Description and the observer device.
    output_uid_seed : str
        Seeds the series, instance and device UIDs.
    created : datetime.datetime, optional
        Series Date and Time; default now.
    series_number : int
        Series Number. Default 904.

    Returns
    -------
    highdicom.ko.KeyObjectSelectionDocument

    Raises
    ------
    ValueError
        If nothing is to be referenced, a frame is outside the source or a key image
        belongs to another study.
    """
    ordered = frame_ordered(clean_source_headers(source_datasets)[0])
    wanted = sorted({int(f) for f in frames})
    if not wanted and not key_images:
        raise ValueError("frames and key_images are empty: nothing to select")
    study = str(ordered[0].StudyInstanceUID)
    for image in key_images:
        if str(image.StudyInstanceUID) != study:
            raise ValueError(f"key image {image.SOPInstanceUID} belongs to another study")
    located = [frame_source(ordered, f) for f in wanted]
    if len(ordered) == 1 and located:
        sources = [ordered[0]]
    else:
        sources = [ds for ds, _, _ in located]
    frame_numbers = [number for _, _, number in located if number is not None]
    listed = ", ".join(str(f + 1) for f in wanted) or "none"
    shown = (f"; {len(key_images)} key image{'s' if len(key_images) > 1 else ''} "
             f"show{'' if len(key_images) > 1 else 's'} them" if key_images else "")
    text = (f"{model_title(model_name, model_version)}: the selected source frames ({listed}) hold "
            f"{model_name} findings (suspected lesions, anomaly localization){shown}. "
            "Not for diagnostic use.")
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=output_uid(output_uid_seed, "kos", "device"), name=model_name,
            manufacturer_name=MANUFACTURER, model_name=model_version),
    )
    content = hd.ko.KeyObjectSelection(
        document_title=OF_INTEREST,
        referenced_objects=[*sources, *key_images],
        observer_device_context=device,
        description=text,
    )
    if frame_numbers:
        for item in content[0].ContentSequence:
            ref = item.get("ReferencedSOPSequence")
            if ref and ref[0].ReferencedSOPInstanceUID == ordered[0].SOPInstanceUID:
                ref[0].ReferencedFrameNumber = frame_numbers
    created = created or _dt.datetime.now()
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=[*sources, *key_images],
        content=content,
        series_instance_uid=output_uid(output_uid_seed, "kos", "series"),
        series_number=series_number,
        sop_instance_uid=output_uid(output_uid_seed, "kos", "instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=model_name,
        software_versions=model_version,
        device_serial_number=DEVICE_SERIAL,
        series_description=series_description(
            model_name, KEY_OBJECTS_KIND,
            f"{len(wanted)} frame{'s' if len(wanted) != 1 else ''}"),
        content_date=created.date(),
        content_time=created.time(),
    )
    stamp_series(kos, created)
    return kos
