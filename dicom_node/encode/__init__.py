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
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.encode.common import (
    check_heatmap,
    frame_ordered,
    output_uid,
    source_grid,
    source_laterality,
)
from dicom_node.encode.labels import ScoreLabels, SpreadLabels
from dicom_node.encode.pm import display_range, encode_parametric_map, order_along_normal
from dicom_node.encode.sanitize import clean_source_headers
from dicom_node.encode.seg import encode_segmentation
from dicom_node.encode.sr import MAMMOGRAPHY, encode_sr, findings
from dicom_node.result_kinds import ResultKind
from dicom_node.volume import stored_values

__all__ = [
    "MAMMOGRAPHY",
    "ScoreLabels",
    "SpreadLabels",
    "display_range",
    "encode_parametric_map",
    "encode_result_objects",
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
    kinds = [ResultKind.PARAMETRIC_MAP, ResultKind.SEGMENTATION]
    if include_sr:
        kinds.append(ResultKind.FINDINGS_SR)
    objects = encode_result_objects(
        kinds, source_datasets, heatmap, threshold=threshold, model_name=model_name,
        model_version=model_version, output_uid_seed=output_uid_seed,
        series_number_base=series_number_base, laterality=laterality, labels=labels)
    return [ds for _, ds in objects]


#: Findings (highest score first) that get a key image and a key frame: a reader wants a
#: few pictures, and each full-resolution RGB key image is about 14 MB uncompressed.
KEY_FINDINGS = 5

#: Kinds that list the findings (:func:`findings`), computed once for all of them.
FINDING_KINDS = frozenset({ResultKind.FINDINGS_SR, ResultKind.MAMMOGRAPHY_CAD_SR,
                           ResultKind.KEY_IMAGES, ResultKind.KEY_OBJECT_SELECTION})

#: Series numbers of the result objects: ``series_number_base + offset``.
SERIES_OFFSETS = {
    ResultKind.PARAMETRIC_MAP: 0, ResultKind.SEGMENTATION: 1, ResultKind.FINDINGS_SR: 2,
    ResultKind.KEY_IMAGES: 3, ResultKind.KEY_OBJECT_SELECTION: 4,
    ResultKind.MAMMOGRAPHY_CAD_SR: 5, ResultKind.EXPECTED_TISSUE: 6, ResultKind.SPREAD_MAP: 7,
}


def encode_result_objects(
    kinds: Sequence[ResultKind],
    source_datasets: list[Dataset],
    heatmap: np.ndarray,
    *,
    threshold: float,
    model_name: str = "PICARD",
    model_version: str,
    output_uid_seed: str,
    series_number_base: int = 900,
    laterality: str | None = None,
    labels: ScoreLabels | None = None,
    source_pixels: np.ndarray | None = None,
    spread: np.ndarray | None = None,
    spread_labels: SpreadLabels | None = None,
    expected: Any = None,
) -> list[tuple[ResultKind, Dataset]]:
    """Encode the result objects of the given kinds, each with its kind.

    Parameters
    ----------
    kinds : sequence of ResultKind
        What to make (a destination's ``objects``, or their union).
    source_datasets, heatmap, threshold, model_name, model_version, output_uid_seed, laterality, labels
        As for :func:`encode_results`.
    series_number_base : int
        Series numbers are ``base + SERIES_OFFSETS[kind]``. Default 900.
    source_pixels : numpy.ndarray, optional
        (frames, rows, cols) source pixels in stored units, stored orientation, source frame
        order; needed for key images and the expected-tissue series.
    spread : numpy.ndarray, optional
        Completion-spread map on the source grid; needed for the spread map.
    spread_labels : SpreadLabels, optional
        What the spread is (M, p, mode).
    expected : ExpectedTissue, optional
        :class:`~dicom_node.results.ExpectedTissue` with images in 0..1 (scaled to stored
        units here, like `source_pixels`); needed for the expected-tissue series.

    Returns
    -------
    list of (ResultKind, pydicom.Dataset)
        Kinds with nothing to show (key images without findings, a spread map that was not
        computed) give no object; the Mammography CAD SR is always made.

    Raises
    ------
    ValueError
        If a kind needs an input that is missing (source pixels), or the heatmap does not
        match the source grid.
    """
    kinds = list(dict.fromkeys(ResultKind(k) for k in kinds))
    if source_pixels is None and any(k.needs_source_pixels for k in kinds):
        raise ValueError("key images need the source pixels")
    source_datasets, _ = clean_source_headers(source_datasets)
    created = _dt.datetime.now()
    common = dict(model_name=model_name, model_version=model_version,
                  output_uid_seed=output_uid_seed, created=created)
    number = {k: series_number_base + off for k, off in SERIES_OFFSETS.items()}
    out: list[tuple[ResultKind, Dataset]] = []
    # the connected components above threshold, once for every kind that lists findings
    found = (findings(check_heatmap(frame_ordered(source_datasets), heatmap), threshold)
             if any(k in FINDING_KINDS for k in kinds) else [])
    for kind in kinds:
        if kind is ResultKind.PARAMETRIC_MAP:
            out.append((kind, encode_parametric_map(
                source_datasets, heatmap, series_number=number[kind], laterality=laterality,
                threshold=threshold, labels=labels, **common)))
        elif kind is ResultKind.SEGMENTATION:
            out.append((kind, encode_segmentation(
                source_datasets, heatmap, threshold=threshold, series_number=number[kind],
                labels=labels, **common)))
        elif kind is ResultKind.FINDINGS_SR:
            sr = encode_sr(source_datasets, heatmap, threshold=threshold,
                           series_number=number[kind], labels=labels, found=found, **common)
            if sr is not None:
                out.append((kind, sr))
        elif kind is ResultKind.MAMMOGRAPHY_CAD_SR:
            from dicom_node.encode.cad_sr import encode_mammography_cad_sr

            out.append((kind, encode_mammography_cad_sr(
                source_datasets, heatmap, threshold=threshold, series_number=number[kind],
                labels=labels, found=found, **common)))
        elif kind is ResultKind.KEY_IMAGES:
            from dicom_node.encode.keyimages import encode_key_images

            out.extend((kind, ds) for ds in encode_key_images(
                source_datasets, source_pixels, heatmap, threshold=threshold, labels=labels,
                series_number=number[kind], max_findings=KEY_FINDINGS, found=found, **common))
        elif kind is ResultKind.KEY_OBJECT_SELECTION:
            # the source frames only: every destination has them, while the key images go
            # only where configured
            frames = sorted({f["frame"] for f in found[:KEY_FINDINGS]})
            if frames:
                from dicom_node.encode.keyimages import encode_key_object_selection

                out.append((kind, encode_key_object_selection(
                    source_datasets, [], frames, series_number=number[kind], **common)))
        elif kind is ResultKind.EXPECTED_TISSUE:
            if expected is not None and len(expected.frames):
                from dicom_node.encode.expected import encode_expected_series

                images = stored_values(expected.images, source_datasets[0])
                out.extend((kind, ds) for ds in encode_expected_series(
                    source_datasets, images, expected.frames,
                    np.asarray(expected.holes), labels=labels, series_number=number[kind],
                    **common))
        elif kind is ResultKind.SPREAD_MAP:
            if spread is not None:
                out.append((kind, encode_parametric_map(
                    source_datasets, spread, series_number=number[kind], laterality=laterality,
                    threshold=None, labels=spread_labels, kind="spread", **common)))
    return out
