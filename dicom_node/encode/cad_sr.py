"""Mammography CAD SR (TID 4000): the object mammography workstations read CAD marks from.

Vendor mammography and tomosynthesis workstations draw CAD marks from a **Mammography CAD
SR** (SOP Class 1.2.840.10008.5.1.4.1.1.88.50), not from a TID 1500 measurement report. One
document covers one source view; its content tree (PS3.16, concept codes in brackets)::

    CONTAINER Mammography CAD Report (111036, DCM)                       TID 4000, root
     +- HAS CONCEPT MOD  CODE Language of Content Item... = en-US          TID 1204
     +- CONTAINS CONTAINER Image Library (111028, DCM)
     |   +- CONTAINS IMAGE <source image, all frames>                      TID 4020 (1 per image)
     |       +- HAS ACQ CONTEXT CODE Image Laterality (111027) = Left/Right breast (CID 6022)
     |       +- HAS ACQ CONTEXT CODE Image View (111031) = ViewCodeSequence (CID 4014)
     |       |   +- HAS CONCEPT MOD CODE Image View Modifier (111032)      if the source has one
     |       +- HAS ACQ CONTEXT TEXT Patient Orientation Row/Column (111044/111043)
     |       +- HAS ACQ CONTEXT DATE/TIME Study Date/Time, Content Date/Time (111060/1, 111018/9)
     |       +- HAS ACQ CONTEXT NUM Horizontal/Vertical Pixel Spacing (111026/111066), mm
     +- CONTAINS CODE CAD Processing and Findings Summary (111017) = CID 6047   TID 4001
     |   +- INFERRED FROM CONTAINER Individual Impression/Recommendation (111034)  TID 4003
     |       +- HAS CONCEPT MOD CODE Rendering Intent (111056) = Presentation Required
     |       +- CONTAINS TEXT Impression Description (111033)             TID 4002
     |       +- CONTAINS CODE Single Image Finding (111059) = Mammography breast density  TID 4006
     |           +- HAS CONCEPT MOD CODE Rendering Intent (111056) = Presentation Required
     |           +- HAS PROPERTIES TEXT Algorithm Name/Version/Parameters (111001/3/2)  TID 4019
     |           +- HAS PROPERTIES SCOORD Center (111010) POINT               TID 4021
     |           |   +- SELECTED FROM IMAGE <source image [, peak frame]>
     |           +- HAS PROPERTIES SCOORD Outline (111041) closed POLYLINE    TID 4021
     |           |   +- SELECTED FROM IMAGE <source image [, peak frame]>
     |           +- HAS PROPERTIES NUM <ScoreLabels.max_concept> {score}     (extension, see below)
     +- CONTAINS CODE Summary of Detections (111064) = Succeeded (CID 6042)
     |   +- INFERRED FROM CONTAINER Successful Detections (111063)          TID 4015
     |       +- CONTAINS CODE Detection Performed (111022) = Mammography breast density  TID 4017
     |           +- HAS PROPERTIES TEXT Algorithm Name/Version/Parameters  TID 4019
     |           +- R-HAS PROPERTIES -> each Image Library IMAGE (by reference)
     +- CONTAINS CODE Summary of Analyses (111065) = Succeeded (CID 6042)
         +- INFERRED FROM CONTAINER Successful Analyses (111062)            TID 4016
             +- CONTAINS CODE Analysis Performed (111004)
                 = Individual Impression/Recommendation Analysis (111233, CID 6043)  TID 4018
                 +- HAS PROPERTIES TEXT Algorithm Name/Version/Parameters  TID 4019

Choices, and why:

* **Finding type** (129793001, SCT, "Mammography breast density") (SRT F-01796): CID 6014
  (Mammography Single Image Finding) has no "mass"; BI-RADS calls a mass seen on one image a
  density, and "Mammographic breast mass" (129788004) is a Composite Feature (CID 6016) that
  needs two views. The same code names the Detection Performed.
* **Rendering Intent** "Presentation Required" on every impression and finding: the node
  reports only components at or above the configured threshold, so the threshold *is* the
  operating point; there are no CAD operating point bins (TID 4023) that would let a
  workstation choose among "Presentation Optional" marks, and workstations may hide optional
  marks by default, which would make a positive result look empty (PS3.4 O.2.2.1).
* **No Certainty of Finding / Probability of cancer / CAD Operating Point**: all optional in
  TID 4006; PICARD scores are uncalibrated completion distances, not percentages, so any
  percentage would be invented.
* **Score**: TID 4006 has no row for a raw algorithm score. The peak score is written as a NUM
  named :attr:`ScoreLabels.max_concept` (private scheme ``99PICARD``, declared in the Coding
  Scheme Identification Sequence) in ``{score}`` as the last child of the Single Image
  Finding, an extension of a template the standard marks non-extensible (readers that do not
  know the concept skip it), and is also spelled out in the Impression Description.
* **SELECTED FROM by value**: TID 4021 selects the SCOORDs from Image Library entries by
  reference, but a multi-frame entry lists all frames and a 2D coordinate on a multi-frame
  image needs exactly one Referenced Frame Number, so each SCOORD carries its own IMAGE (with
  the peak frame for a multi-frame source; PS3.3 Table A.35.5-2 allows SELECTED FROM by value).
  Detection Performed points at the library entries by reference (Referenced Content Item
  Identifier ``[1, 2, k]``), as TID 4017 asks for in a Mammography CAD SR.

The content items are plain pydicom datasets: highdicom's ``ContentSequence`` accepts only its
own content items, which cannot express unnamed IMAGE items or by-reference relationships.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Callable, Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.coding import Code
from pydicom.uid import MammographyCADSRStorage
from pydicom.valuerep import DSfloat

from dicom_node.encode.common import (
    MANUFACTURER,
    ordered_and_checked,
    series_and_device,
    source_laterality,
)
from dicom_node.encode.display import SCORE_UNIT, series_description, stamp_series
from dicom_node.encode.labels import CODING_SCHEME, ScoreLabels
from dicom_node.encode.sr import findings

logger = logging.getLogger(__name__)

# Document structure (PS3.16 TID 4000-4021)
MAMMOGRAPHY_CAD_REPORT = Code("111036", "DCM", "Mammography CAD Report")
LANGUAGE = Code("121049", "DCM", "Language of Content Item and Descendants")
ENGLISH_US = Code("en-US", "RFC5646", "English (United States)")
IMAGE_LIBRARY = Code("111028", "DCM", "Image Library")
IMAGE_LATERALITY = Code("111027", "DCM", "Image Laterality")
IMAGE_VIEW = Code("111031", "DCM", "Image View")
IMAGE_VIEW_MODIFIER = Code("111032", "DCM", "Image View Modifier")
ORIENTATION_ROW = Code("111044", "DCM", "Patient Orientation Row")
ORIENTATION_COLUMN = Code("111043", "DCM", "Patient Orientation Column")
STUDY_DATE = Code("111060", "DCM", "Study Date")
STUDY_TIME = Code("111061", "DCM", "Study Time")
CONTENT_DATE = Code("111018", "DCM", "Content Date")
CONTENT_TIME = Code("111019", "DCM", "Content Time")
HORIZONTAL_SPACING = Code("111026", "DCM", "Horizontal Pixel Spacing")
VERTICAL_SPACING = Code("111066", "DCM", "Vertical Pixel Spacing")
MILLIMETER = Code("mm", "UCUM", "millimeter")
FINDINGS_SUMMARY = Code("111017", "DCM", "CAD Processing and Findings Summary")
WITH_FINDINGS = Code("111242", "DCM", "All algorithms succeeded; with findings")
WITHOUT_FINDINGS = Code("111241", "DCM", "All algorithms succeeded; without findings")
INDIVIDUAL_IMPRESSION = Code("111034", "DCM", "Individual Impression/Recommendation")
IMPRESSION_DESCRIPTION = Code("111033", "DCM", "Impression Description")
RENDERING_INTENT = Code("111056", "DCM", "Rendering Intent")
PRESENTATION_REQUIRED = Code(
    "111150", "DCM", "Presentation Required: Rendering device is expected to present")
SINGLE_IMAGE_FINDING = Code("111059", "DCM", "Single Image Finding")
#: Single Image Finding of a mass (CID 6014 via CID 6015; SRT F-01796).
BREAST_DENSITY = Code("129793001", "SCT", "Mammography breast density")
CENTER = Code("111010", "DCM", "Center")
OUTLINE = Code("111041", "DCM", "Outline")
ALGORITHM_NAME = Code("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = Code("111003", "DCM", "Algorithm Version")
ALGORITHM_PARAMETERS = Code("111002", "DCM", "Algorithm Parameters")
SUMMARY_OF_DETECTIONS = Code("111064", "DCM", "Summary of Detections")
SUMMARY_OF_ANALYSES = Code("111065", "DCM", "Summary of Analyses")
SUCCEEDED = Code("111222", "DCM", "Succeeded")
SUCCESSFUL_DETECTIONS = Code("111063", "DCM", "Successful Detections")
SUCCESSFUL_ANALYSES = Code("111062", "DCM", "Successful Analyses")
DETECTION_PERFORMED = Code("111022", "DCM", "Detection Performed")
ANALYSIS_PERFORMED = Code("111004", "DCM", "Analysis Performed")
INDIVIDUAL_ANALYSIS = Code(
    "111233", "DCM", "Individual Impression/Recommendation Analysis")
#: CID 6022 values by laterality letter.
BREASTS = {"L": Code("80248007", "SCT", "Left breast"),
           "R": Code("73056007", "SCT", "Right breast")}

#: Position of the Image Library in the root's Content Sequence (after the language).
_LIBRARY_POSITION = 2


# ----------------------------------------------------------------------------- content items
def _coded(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    if code.scheme_version:
        item.CodingSchemeVersion = code.scheme_version
    item.CodeMeaning = code.meaning
    return item


def _item(relationship: str | None, value_type: str, name: Code | None,
          children: Sequence[Dataset] = ()) -> Dataset:
    item = Dataset()
    if relationship:
        item.RelationshipType = relationship
    item.ValueType = value_type
    if name is not None:
        item.ConceptNameCodeSequence = DicomSequence([_coded(name)])
    if children:
        item.ContentSequence = DicomSequence(list(children))
    return item


def _container(relationship: str | None, name: Code, children: Sequence[Dataset]) -> Dataset:
    item = _item(relationship, "CONTAINER", name, children)
    item.ContinuityOfContent = "SEPARATE"
    return item


def _code(relationship: str, name: Code, value: Code,
          children: Sequence[Dataset] = ()) -> Dataset:
    item = _item(relationship, "CODE", name, children)
    item.ConceptCodeSequence = DicomSequence([_coded(value)])
    return item


def _text(relationship: str, name: Code, value: str) -> Dataset:
    item = _item(relationship, "TEXT", name)
    item.TextValue = value
    return item


def _num(relationship: str, name: Code, value: float, unit: Code) -> Dataset:
    measured = Dataset()
    measured.NumericValue = DSfloat(float(value), auto_format=True)
    measured.MeasurementUnitsCodeSequence = DicomSequence([_coded(unit)])
    item = _item(relationship, "NUM", name)
    item.MeasuredValueSequence = DicomSequence([measured])
    return item


def _date_time(name_date: Code, name_time: Code, date: str, time: str) -> list[Dataset]:
    out = []
    if date:
        item = _item("HAS ACQ CONTEXT", "DATE", name_date)
        item.Date = date
        out.append(item)
    if time:
        item = _item("HAS ACQ CONTEXT", "TIME", name_time)
        item.Time = time
        out.append(item)
    return out


def _image(relationship: str, source: Dataset, frames: Sequence[int] | None,
           children: Sequence[Dataset] = ()) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frames:
        ref.ReferencedFrameNumber = [int(f) for f in frames]
    item = _item(relationship, "IMAGE", None, children)
    item.ReferencedSOPSequence = DicomSequence([ref])
    return item


def _scoord(name: Code, graphic_type: str, points: np.ndarray, source: Dataset,
            frame: int | None) -> Dataset:
    item = _item("HAS PROPERTIES", "SCOORD", name,
                 [_image("SELECTED FROM", source, [frame] if frame else None)])
    item.GraphicType = graphic_type
    item.GraphicData = [float(v) for v in np.asarray(points, dtype=float).ravel()]
    return item


def _by_reference(relationship: str, position: Sequence[int]) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ReferencedContentItemIdentifier = [int(p) for p in position]
    return item


# ------------------------------------------------------------------------------- templates
def _source_code(item: Dataset) -> Code:
    return Code(str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.CodeMeaning))


def _holders(source: Dataset) -> list[Dataset]:
    """The source and its shared and first per-frame functional group items."""
    holders = [source]
    for seq in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        if source.get(seq):
            holders.append(source[seq].value[0])
    return holders


def _patient_orientation(source: Dataset) -> tuple[str, str] | None:
    """(row, column) Patient Orientation: top level or Patient Orientation in Frame."""
    for holder in _holders(source):
        values = holder.get("PatientOrientation")
        if not values and holder.get("PatientOrientationInFrameSequence"):
            values = holder.PatientOrientationInFrameSequence[0].get("PatientOrientation")
        values = list(values or [])
        if len(values) == 2 and all(values):
            return str(values[0]), str(values[1])
    return None


def _pixel_spacing(source: Dataset) -> tuple[float, float] | None:
    """(row, column) spacing in mm: Pixel Spacing (top level or Pixel Measures), else
    Imager Pixel Spacing."""
    for holder in _holders(source):
        if holder.get("PixelSpacing"):
            return float(holder.PixelSpacing[0]), float(holder.PixelSpacing[1])
        if holder.get("PixelMeasuresSequence") and holder.PixelMeasuresSequence[0].get(
                "PixelSpacing"):
            spacing = holder.PixelMeasuresSequence[0].PixelSpacing
            return float(spacing[0]), float(spacing[1])
    if source.get("ImagerPixelSpacing"):
        return float(source.ImagerPixelSpacing[0]), float(source.ImagerPixelSpacing[1])
    return None


def _library_entry(source: Dataset, frames: Sequence[int] | None) -> Dataset:
    """TID 4020 CAD Image Library Entry of one source image."""
    context: list[Dataset] = []
    laterality = source_laterality([source])
    if laterality:
        context.append(_code("HAS ACQ CONTEXT", IMAGE_LATERALITY, BREASTS[laterality]))
    if source.get("ViewCodeSequence"):
        view = source.ViewCodeSequence[0]
        modifiers = [_code("HAS CONCEPT MOD", IMAGE_VIEW_MODIFIER, _source_code(m))
                     for m in view.get("ViewModifierCodeSequence") or []]
        context.append(_code("HAS ACQ CONTEXT", IMAGE_VIEW, _source_code(view), modifiers))
    orientation = _patient_orientation(source)
    if orientation is not None:
        context.append(_text("HAS ACQ CONTEXT", ORIENTATION_ROW, orientation[0]))
        context.append(_text("HAS ACQ CONTEXT", ORIENTATION_COLUMN, orientation[1]))
    context += _date_time(STUDY_DATE, STUDY_TIME, str(source.get("StudyDate") or ""),
                          str(source.get("StudyTime") or ""))
    context += _date_time(CONTENT_DATE, CONTENT_TIME, str(source.get("ContentDate") or ""),
                          str(source.get("ContentTime") or ""))
    spacing = _pixel_spacing(source)
    if spacing is not None:
        context.append(_num("HAS ACQ CONTEXT", HORIZONTAL_SPACING, spacing[1], MILLIMETER))
        context.append(_num("HAS ACQ CONTEXT", VERTICAL_SPACING, spacing[0], MILLIMETER))
    return _image("CONTAINS", source, frames, context)


def _algorithm(model_name: str, version: str, parameters: dict[str, str]) -> list[Dataset]:
    """TID 4019 Algorithm Identification, as HAS PROPERTIES children."""
    return [
        _text("HAS PROPERTIES", ALGORITHM_NAME, model_name),
        _text("HAS PROPERTIES", ALGORITHM_VERSION, version),
        *(_text("HAS PROPERTIES", ALGORITHM_PARAMETERS, f"{k}={v}")
          for k, v in parameters.items()),
    ]


def _impression(number: int, finding: dict, source: Dataset, frame: int | None,
                n_frames: int, algorithm: Callable[[], list[Dataset]],
                labels: ScoreLabels, model_name: str) -> Dataset:
    """TID 4003 Individual Impression/Recommendation holding one TID 4006 finding.

    ``frame`` is the Referenced Frame Number of the peak on a multi-frame ``source``, else
    None; ``n_frames`` the number of source frames (for the description).
    """
    r0, c0, r1, c1 = finding["box"]
    # Image coordinates: (column, row); pixel (0, 0) covers [0, 1) x [0, 1).
    outline = np.array([[c0, r0], [c1 + 1, r0], [c1 + 1, r1 + 1], [c0, r1 + 1], [c0, r0]],
                       dtype=float)
    center = np.array([[(c0 + c1 + 1) / 2.0, (r0 + r1 + 1) / 2.0]])
    score = round(float(finding["max_score"]), 6)
    first, last = (f + 1 for f in finding["frames"])
    span = f"frame {first}" if first == last else f"frames {first}-{last}"
    description = (f"{model_name} finding {number}: {span} of {n_frames}, peak on frame "
                   f"{finding['frame'] + 1}, {labels.max_concept.meaning} {score:g} "
                   f"{SCORE_UNIT.value}")
    single_image_finding = _code("CONTAINS", SINGLE_IMAGE_FINDING, BREAST_DENSITY, [
        _code("HAS CONCEPT MOD", RENDERING_INTENT, PRESENTATION_REQUIRED),
        *algorithm(),
        _scoord(CENTER, "POINT", center, source, frame),
        _scoord(OUTLINE, "POLYLINE", outline, source, frame),
        _num("HAS PROPERTIES", labels.max_concept, score, SCORE_UNIT),
    ])
    return _container("INFERRED FROM", INDIVIDUAL_IMPRESSION, [
        _code("HAS CONCEPT MOD", RENDERING_INTENT, PRESENTATION_REQUIRED),
        _text("CONTAINS", IMPRESSION_DESCRIPTION, description),
        single_image_finding,
    ])


def _summary(name: Code, container: Code, performed: Code, value: Code,
             children: Sequence[Dataset]) -> Dataset:
    """Summary of Detections/Analyses: Succeeded, inferred from one algorithm run."""
    run = _code("CONTAINS", performed, value, children)
    return _code("CONTAINS", name, SUCCEEDED, [_container("INFERRED FROM", container, [run])])


# ---------------------------------------------------------------------------------- encoder
def encode_mammography_cad_sr(
    source_datasets: Sequence[Dataset],
    heatmap: np.ndarray,
    *,
    threshold: float,
    model_name: str = "PICARD",
    model_version: str,
    output_uid_seed: str,
    labels: ScoreLabels | None = None,
    created: _dt.datetime | None = None,
    series_number: int = 905,
    max_findings: int = 20,
    found: Sequence[dict] | None = None,
) -> Dataset:
    """Mammography CAD SR (TID 4000) with one Single Image Finding per lesion.

    A lesion is a 3D connected component of ``heatmap >= threshold``
    (:func:`~dicom_node.encode.sr.findings`); it is marked on the frame of its highest score
    by its bounding box (Outline, closed polyline) and the box centre (Center, point). The
    content tree and the choices behind it are in the module docstring.

    Parameters
    ----------
    source_datasets : sequence of pydicom.Dataset
        Source headers, pixel data not needed: one multi-frame Breast Tomosynthesis Image, or
        single-frame per-slice instances in any order (put in
        :func:`~dicom_node.encode.common.frame_ordered` order). Their patient and study
        attributes are copied as they are: pass cleaned headers
        (:func:`~dicom_node.encode.sanitize.clean_source_headers`), as ``encode_results`` does.
    heatmap : numpy.ndarray
        (frames, rows, cols) scores on the source grid, frame-ordered, stored orientation.
    threshold : float
        Scores at or above it form findings.
    model_name : str
        Algorithm Name and Manufacturer Model Name. Default ``"PICARD"``.
    model_version : str
        Algorithm Version (followed by the scoring rule) and Software Versions.
    output_uid_seed : str
        Seeds the series and instance UIDs (same seed, same UIDs).
    labels : ScoreLabels, optional
        What the scores are (rule, space, M, p, mode). Default: "not recorded".
    created : datetime.datetime, optional
        Content and Series Date/Time; default now.
    series_number : int
        Series Number. Default 905.
    max_findings : int
        At most this many findings, highest score first. Default 20.
    found : sequence of dict, optional
        :func:`~dicom_node.encode.sr.findings` of this heatmap and threshold when the caller
        has them already (highest score first); default: computed here.

    Returns
    -------
    pydicom.Dataset
        The document (a :class:`highdicom.SOPClass`), "All algorithms succeeded; without
        findings" when no score reaches ``threshold``.

    Raises
    ------
    ValueError
        If the heatmap does not match the source grid or holds NaN/inf values, if
        ``max_findings`` is below 1, or if the sources span several studies.
    """
    if max_findings < 1:
        raise ValueError(f"max_findings must be at least 1, got {max_findings}")
    ordered, heat = ordered_and_checked(source_datasets, heatmap)
    if len({str(ds.StudyInstanceUID) for ds in ordered}) != 1:
        raise ValueError("source_datasets span several studies; expected one view")
    labels = labels or ScoreLabels()
    created = created or _dt.datetime.now()
    multi_frame = len(ordered) == 1
    n_frames = heat.shape[0]
    all_frames = list(range(1, n_frames + 1)) if multi_frame else None

    library = [_library_entry(src, all_frames) for src in ordered]
    version = f"{model_version} ({labels.description})"
    parameters = labels.algorithm_parameters(threshold)

    def algorithm() -> list[Dataset]:
        return _algorithm(model_name, version, parameters)

    found = (findings(heat, threshold, max_findings=max_findings) if found is None
             else list(found)[:max_findings])
    impressions = []
    for number, finding in enumerate(found, start=1):
        frame = finding["frame"]
        source, ref_frame = (ordered[0], frame + 1) if multi_frame else (ordered[frame], None)
        impressions.append(
            _impression(number, finding, source, ref_frame, n_frames, algorithm, labels,
                        model_name))
    summary = _code("CONTAINS", FINDINGS_SUMMARY,
                    WITH_FINDINGS if impressions else WITHOUT_FINDINGS, impressions)
    detections = _summary(
        SUMMARY_OF_DETECTIONS, SUCCESSFUL_DETECTIONS, DETECTION_PERFORMED, BREAST_DENSITY,
        [*algorithm(), *(_by_reference("HAS PROPERTIES", [1, _LIBRARY_POSITION, k])
                       for k in range(1, len(library) + 1))])
    analyses = _summary(SUMMARY_OF_ANALYSES, SUCCESSFUL_ANALYSES, ANALYSIS_PERFORMED,
                        INDIVIDUAL_ANALYSIS, algorithm())
    content = [
        _code("HAS CONCEPT MOD", LANGUAGE, ENGLISH_US),
        _container("CONTAINS", IMAGE_LIBRARY, library),
        summary,
        detections,
        analyses,
    ]

    first = ordered[0]
    plural = "s" if len(found) != 1 else ""
    detail = f"{len(found)} finding{plural}" if found else "no findings"
    doc = hd.SOPClass(
        study_instance_uid=first.StudyInstanceUID,
        sop_class_uid=MammographyCADSRStorage,
        modality="SR",
        patient_id=first.get("PatientID"),
        patient_name=first.get("PatientName"),
        patient_birth_date=first.get("PatientBirthDate"),
        patient_sex=first.get("PatientSex"),
        accession_number=first.get("AccessionNumber"),
        study_id=first.get("StudyID"),
        study_date=first.get("StudyDate"),
        study_time=first.get("StudyTime"),
        referring_physician_name=first.get("ReferringPhysicianName"),
        specific_character_set=first.get("SpecificCharacterSet"),
        series_description=series_description(model_name, "CAD SR", detail),
        content_date=created.date(),
        content_time=created.time(),
        **series_and_device("cadsr", output_uid_seed, series_number, model_name,
                            model_version),
    )
    doc.copy_patient_and_study_information(first)
    scheme = Dataset()
    scheme.CodingSchemeDesignator = CODING_SCHEME
    scheme.CodingSchemeName = "PICARD Node score concepts"
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    doc.CodingSchemeIdentificationSequence = DicomSequence([scheme])
    stamp_series(doc, created)
    # SR Document Series / General
    doc.ReferencedPerformedProcedureStepSequence = DicomSequence([])
    doc.CompletionFlag = "COMPLETE"
    doc.VerificationFlag = "UNVERIFIED"
    doc.PerformedProcedureCodeSequence = DicomSequence([])
    doc.CurrentRequestedProcedureEvidenceSequence = _evidence(ordered)
    # SR Document Content: the root content item
    doc.ValueType = "CONTAINER"
    doc.ConceptNameCodeSequence = DicomSequence([_coded(MAMMOGRAPHY_CAD_REPORT)])
    doc.ContinuityOfContent = "SEPARATE"
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "4000"
    doc.ContentTemplateSequence = DicomSequence([template])
    doc.ContentSequence = DicomSequence(content)
    logger.info("Mammography CAD SR: %d findings", len(found))
    return doc


def _evidence(sources: Sequence[Dataset]) -> DicomSequence:
    """Current Requested Procedure Evidence: every source instance, by series."""
    by_series: dict[str, list[Dataset]] = {}
    for src in sources:
        by_series.setdefault(str(src.SeriesInstanceUID), []).append(src)
    series_items = []
    for series_uid, instances in by_series.items():
        refs = []
        for src in instances:
            ref = Dataset()
            ref.ReferencedSOPClassUID = src.SOPClassUID
            ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
            refs.append(ref)
        series = Dataset()
        series.SeriesInstanceUID = series_uid
        series.ReferencedSOPSequence = DicomSequence(refs)
        series_items.append(series)
    study = Dataset()
    study.StudyInstanceUID = sources[0].StudyInstanceUID
    study.ReferencedSeriesSequence = DicomSequence(series_items)
    return DicomSequence([study])
