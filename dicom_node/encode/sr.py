"""The Comprehensive 3D SR (TID 1500) of a heatmap: one finding per lesion.

A lesion is a 3D connected component of ``heatmap >= threshold``. Its finding names the
frames it spans ("lesion 1, frames 7-21", 1-based source frame numbers), outlines it on the
frame of its highest score and gives that score as a measurement with a short concept name
and the unit ``{score}``: OHIF draws ``<concept>: <value> <unit code>`` beside the outline.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from scipy import ndimage

from dicom_node.encode.common import MANUFACTURER, ordered_and_checked, output_uid
from dicom_node.encode.display import SCORE_UNIT, series_description, stamp_series
from dicom_node.encode.labels import ScoreLabels

logger = logging.getLogger(__name__)

#: Procedure reported in the SR (SNOMED CT "Mammography").
MAMMOGRAPHY = Code("71651007", "SCT", "Mammography")


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
    found: Sequence[dict] | None = None,
    labels: ScoreLabels | None = None,
    created: _dt.datetime | None = None,
) -> hd.sr.Comprehensive3DSR | None:
    """TID 1500 measurement report: one finding per lesion (3D connected component).

    Each finding is tracked as ``"lesion <n>, frames <first>-<last>"`` (1-based source frame
    numbers), outlined by a 2D ``SCOORD`` closed polyline (the component's bounding box on
    the frame holding its highest score; OHIF draws 2D SCOORD on DBT, not SCOORD3D), has
    finding type Mass, and its highest score as a measurement named after the scoring rule
    (:attr:`ScoreLabels.max_concept`) in :data:`~dicom_node.encode.display.SCORE_UNIT`.

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
    found : sequence of dict, optional
        :func:`~dicom_node.encode.sr.findings` of this heatmap and threshold when the caller
        has them already (highest score first); default: computed here.
    labels : ScoreLabels, optional
        What the scores are (rule, space, M, p, mode). Default: "not recorded".
    created : datetime.datetime, optional
        Series Date and Time; default now.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR or None
        ``None`` when no score reaches ``threshold`` (TID 1500 needs at least one
        measurement group; the empty Segmentation already says "nothing found").
    """
    source_datasets, heat = ordered_and_checked(source_datasets, heatmap)
    labels = labels or ScoreLabels()
    device = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=output_uid(output_uid_seed, "sr", "device"),
            name=model_name,
            manufacturer_name=MANUFACTURER,
            model_name=model_version,
        ),
    )
    algorithm = hd.sr.AlgorithmIdentification(
        name=model_name, version=model_version,
        parameters=[f"{k}={v}" for k, v in labels.algorithm_parameters().items()])
    groups = []
    found = (findings(heat, threshold, max_findings=max_findings) if found is None
             else list(found)[:max_findings])
    for n, finding in enumerate(found, start=1):
        frame = finding["frame"]
        first, last = (f + 1 for f in finding["frames"])
        span = f"frame {first}" if first == last else f"frames {first}-{last}"
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
                    identifier=f"lesion {n}, {span}",
                ),
                referenced_region=region,
                finding_type=codes.SCT.Mass,
                finding_category=codes.SCT.MorphologicallyAbnormalStructure,
                algorithm_id=algorithm,
                measurements=[
                    hd.sr.Measurement(
                        name=labels.max_concept,
                        value=round(finding["max_score"], 6),
                        unit=SCORE_UNIT,
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
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=series_description(
            model_name, "findings", f"{len(groups)} lesion{'s' if len(groups) > 1 else ''}"),
    )
    stamp_series(sr, created or _dt.datetime.now())
    return sr
