"""The binary Segmentation of ``heatmap >= threshold``: one segment "suspected lesion".

The Segmentation IOD has no Frame Anatomy and ``dciodvfy`` rejects series ``Laterality`` on
it, so it carries no laterality; its source references tie it to the breast. The segment has
a Recommended Display CIELab Value (:data:`~dicom_node.encode.display.PREDICTION_RGB`), so
viewers draw it apart from other segmentations of the study (OHIF draws every segment
without one in red).
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicom_node.encode.common import (
    fix_dimension_uids,
    ordered_and_checked,
    output_uid,
    series_and_device,
)
from dicom_node.encode.display import (
    PREDICTION_RGB,
    display_colour,
    series_description,
    stamp_series,
)
from dicom_node.encode.labels import ScoreLabels

logger = logging.getLogger(__name__)


def encode_segmentation(
    source_datasets: Sequence[Dataset],
    heatmap: np.ndarray,
    *,
    threshold: float,
    model_name: str = "PICARD",
    model_version: str,
    output_uid_seed: str,
    series_number: int = 901,
    labels: ScoreLabels | None = None,
    created: _dt.datetime | None = None,
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
    labels : ScoreLabels, optional
        What the scores are (rule, space, M, p, mode); written to the content
        description and the algorithm parameters. Default: "not recorded".
    created : datetime.datetime, optional
        Series Date and Time; default now.

    Returns
    -------
    highdicom.seg.Segmentation
        Frames holding no marked pixel are left out, unless no pixel is marked at all (then
        every frame is kept, empty, so the object stays valid).
    """
    source_datasets, heat = ordered_and_checked(source_datasets, heatmap)
    mask = heat >= float(threshold)
    labels = labels or ScoreLabels()
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model_name,
        family=codes.cid7162.ArtificialIntelligence,
        version=model_version,
        parameters=labels.algorithm_parameters(threshold),
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
        display_color=display_colour(PREDICTION_RGB),
    )
    seg = hd.seg.Segmentation(
        source_images=list(source_datasets),
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        **series_and_device("seg", output_uid_seed, series_number, model_name, model_version),
        content_label="PICARD",
        content_description=f"{labels.description} >= {threshold:.4g}"[:64],
        omit_empty_frames=bool(mask.any()),
        series_description=series_description(
            model_name, "lesions", f"{labels.short} >= {threshold:.4g}"),
    )
    if "Laterality" in seg:
        del seg.Laterality
    fix_dimension_uids(seg, output_uid(output_uid_seed, "seg", "dimension-organization"))
    stamp_series(seg, created or _dt.datetime.now())
    if not mask.any():
        logger.info("no score >= %g: writing an empty segmentation", threshold)
    return seg
