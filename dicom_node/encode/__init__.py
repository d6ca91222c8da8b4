"""Encode PICARD results as standard DICOM objects with highdicom.

:func:`encode_results` turns a heatmap of minimum completion distance (MCD) scores on the
source grid into

* a **Parametric Map**: float32 pixels 0..1 (0 = half the threshold, 1 = the highest
  score), a Real World Value Mapping (slope/intercept) back to score units, Frame Anatomy
  with the breast's laterality, frames ordered along the slice normal (what OHIF needs; see
  :mod:`~dicom_node.encode.pm` for why float);
* a **binary Segmentation** of ``heatmap >= threshold``: one segment "suspected lesion"
  (SNOMED CT category Morphologically abnormal structure, type Mass), algorithm PICARD,
  drawn in its own colour;
* on request, a **Comprehensive 3D SR** (TID 1500) with one finding per lesion (3D
  connected component) and its frame range.

Series descriptions, dates and colours that viewers need are in
:mod:`~dicom_node.encode.display`; every object of one result has the same Series Date and
Time.

One module per object kind: :mod:`~dicom_node.encode.pm`, :mod:`~dicom_node.encode.seg`,
:mod:`~dicom_node.encode.sr`; what they share (output UIDs, source grid, frame order,
laterality) is in :mod:`~dicom_node.encode.common`.

Laterality: ``dciodvfy`` accepts either series ``Laterality`` or ``FrameLaterality``, not
both; the Parametric Map carries ``FrameLaterality`` (dcmqi needs Frame Anatomy), the
Segmentation IOD has no Frame Anatomy and ``dciodvfy`` rejects series ``Laterality`` on it,
so it carries none (its source references tie it to the breast).

Each object gets its own new series in the source's study, same rows, columns and frames as
the source, references to the source frames and a Referenced Series Sequence (which OHIF
needs). UIDs come from ``output_uid_seed``, so re-encoding the same job gives the same
objects' UIDs (idempotent export). Every object passes ``dciodvfy`` with no errors.
"""

from __future__ import annotations

import datetime as _dt

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.encode.common import (
    frame_ordered,
    output_uid,
    source_grid,
    source_laterality,
)
from dicom_node.encode.pm import display_range, encode_parametric_map, order_along_normal
from dicom_node.encode.sanitize import REQUIRED_TYPE2, Repair, clean_source_headers
from dicom_node.encode.seg import encode_segmentation
from dicom_node.encode.labels import ScoreLabels
from dicom_node.encode.sr import MAMMOGRAPHY, encode_sr, findings

__all__ = [
    "MAMMOGRAPHY",
    "ScoreLabels",
    "display_range",
    "encode_parametric_map",
    "encode_results",
    "encode_segmentation",
    "encode_sr",
    "findings",
    "frame_ordered",
    "order_along_normal",
    "output_uid",
    "source_grid",
    "source_laterality",
]


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
    labels: ScoreLabels | None = None,
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
        default: the source header's. Written to the Parametric Map only (the Segmentation
        IOD has no Frame Anatomy and ``dciodvfy`` rejects series Laterality on it).
    include_sr : bool
        Also return a Comprehensive 3D SR (TID 1500) with one finding per connected
        component (series number ``series_number_base + 2``), when there is at least one
        finding. Default False.
    labels : ScoreLabels, optional
        What the scores are (rule, space, M, p, exact or fast), from the result summary's
        ``scoring`` entry; every object is labelled with it. Default: "not recorded".

    Returns
    -------
    list of pydicom.Dataset
        ``[ParametricMap, Segmentation]`` or ``[ParametricMap, Segmentation, SR]``.

    Raises
    ------
    ValueError
        If the heatmap does not match the source grid or holds NaN/inf values.

    Notes
    -----
    The source headers are cleaned first (:func:`clean_source_headers`):
    invalid values in attributes the objects copy are repaired or removed with a warning
    naming the tag, so a source the PACS accepted always yields a result.
    """
    source_datasets, _ = clean_source_headers(source_datasets)
    common = dict(
        model_name=model_name,
        model_version=model_version,
        output_uid_seed=output_uid_seed,
        labels=labels,
        created=_dt.datetime.now(),
    )
    pm = encode_parametric_map(
        source_datasets, heatmap, series_number=series_number_base, laterality=laterality,
        threshold=threshold, **common,
    )
    seg = encode_segmentation(
        source_datasets, heatmap, threshold=threshold, series_number=series_number_base + 1,
        **common,
    )
    out: list[Dataset] = [pm, seg]
    if include_sr:
        sr = encode_sr(
            source_datasets, heatmap, threshold=threshold, series_number=series_number_base + 2,
            **common,
        )
        if sr is not None:
            out.append(sr)
    return out
