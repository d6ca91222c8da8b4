"""Tests for dicom_node.encode.cad_sr: the Mammography CAD SR (TID 4000) of a heatmap."""

from __future__ import annotations

import datetime as _dt
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import MammographyCADSRStorage

from dicom_node.encode.cad_sr import encode_mammography_cad_sr
from dicom_node.encode.labels import ScoreLabels
from dicom_node.standins.dciodvfy import dciodvfy_available, run_dciodvfy
from dicom_node.volume import unflip
from tests.helpers.dicom_data import blob_mask, roundtrip

THRESHOLD = 1.5
LABELS = ScoreLabels.from_summary(
    {"rule": "mean", "space": "image", "M": 10, "p": 0.5, "mode": "exact", "slice_step": 1})
CREATED = _dt.datetime(2024, 5, 6, 7, 8, 9)
#: dciodvfy does not know private ("99...") coding schemes; every other warning is a defect.
PRIVATE_SCHEME_WARNING = ("Warning - Unrecognized defined term <99PICARD> for value 1 of "
                          "attribute <Coding Scheme Designator>")


def _heatmap(volume) -> np.ndarray:
    """Stored-orientation scores with two lesions peaking on frames 2 (2.6) and 5 (1.9)."""
    shape = volume.pixels.shape
    heat = np.random.default_rng(0).uniform(0.0, 1.0, size=shape).astype(np.float32)
    heat[blob_mask(shape, (2, 20, 10), 3)] = 2.5
    heat[blob_mask(shape, (5, 40, 30), 2)] = 1.8
    heat[2, 20, 10] = 2.6
    heat[5, 40, 30] = 1.9
    return unflip(heat, volume)


def _encode(sources, heat: np.ndarray, seed: str = "job-1", **kwargs) -> Dataset:
    args = {"threshold": THRESHOLD, "model_version": "1.2.3", "output_uid_seed": seed,
            "labels": LABELS, "created": CREATED}
    args.update(kwargs)
    return encode_mammography_cad_sr(sources, heat, **args)


def _name(item: Dataset) -> str:
    if "ConceptNameCodeSequence" not in item:
        return ""
    return str(item.ConceptNameCodeSequence[0].CodeValue)


def _value(item: Dataset) -> str:
    return str(item.ConceptCodeSequence[0].CodeValue)


def _children(item: Dataset, name: str = "") -> list[Dataset]:
    return [c for c in item.get("ContentSequence", []) if not name or _name(c) == name]


def _only(item: Dataset, name: str) -> Dataset:
    found = _children(item, name)
    assert len(found) == 1, (name, len(found))
    return found[0]


def _walk(item: Dataset) -> Iterator[Dataset]:
    for child in item.get("ContentSequence", []):
        yield child
        yield from _walk(child)


def _resolve(doc: Dataset, path: list[int]) -> Dataset:
    """The content item a Referenced Content Item Identifier points at (1 = the root)."""
    assert path[0] == 1
    item = doc
    for position in path[1:]:
        item = item.ContentSequence[position - 1]
    return item


def _ref(image: Dataset) -> tuple[str, tuple[int, ...]]:
    """(SOP Instance UID, frame numbers) an IMAGE content item references."""
    ref = image.ReferencedSOPSequence[0]
    frames = ref.get("ReferencedFrameNumber")
    frames = () if frames is None else tuple(int(f) for f in np.atleast_1d(frames))
    return str(ref.ReferencedSOPInstanceUID), frames


def _impressions(doc: Dataset) -> list[Dataset]:
    return _children(_only(doc, "111017"), "111034")


@pytest.mark.parametrize("source", ["bto_source", "slice_source"])
def test_content_tree(source: str, request: pytest.FixtureRequest) -> None:
    volume = request.getfixturevalue(source)
    sources = volume.source_datasets
    heat = _heatmap(volume)
    doc = roundtrip(_encode(sources, heat))
    src = sources[0]
    multi_frame = len(sources) == 1
    rows, cols = int(src.Rows), int(src.Columns)

    # document: Mammography CAD SR in the source's study, a new series
    assert doc.SOPClassUID == MammographyCADSRStorage and doc.Modality == "SR"
    assert (doc.StudyInstanceUID, doc.PatientID) == (src.StudyInstanceUID, src.PatientID)
    assert doc.SeriesInstanceUID != src.SeriesInstanceUID and int(doc.SeriesNumber) == 905
    assert doc.SeriesDescription == "PICARD CAD SR (2 findings)"
    assert (doc.SeriesDate, doc.SeriesTime) == ("20240506", "070809")
    assert (doc.ContentDate, doc.CompletionFlag) == ("20240506", "COMPLETE")
    assert _name(doc) == "111036"
    template = doc.ContentTemplateSequence[0]
    assert (template.MappingResource, template.TemplateIdentifier) == ("DCMR", "4000")
    assert [_name(c) for c in doc.ContentSequence] == [
        "121049", "111028", "111017", "111064", "111065"]
    evidence = doc.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert sorted(r.ReferencedSOPInstanceUID for r in evidence.ReferencedSOPSequence) == sorted(
        s.SOPInstanceUID for s in sources)

    # image library: one entry per source image with laterality, view and pixel spacing
    library = _children(_only(doc, "111028"))
    assert [_ref(e)[0] for e in library] == [s.SOPInstanceUID for s in sources]
    if multi_frame:
        assert _ref(library[0])[1] == tuple(range(1, heat.shape[0] + 1))
    breast = {"L": "80248007", "R": "73056007"}[volume.laterality]
    for entry in library:
        assert entry.ValueType == "IMAGE"
        assert _value(_only(entry, "111027")) == breast
        assert _value(_only(entry, "111031")) == src.ViewCodeSequence[0].CodeValue
        spacing = _only(entry, "111026").MeasuredValueSequence[0]
        assert float(spacing.NumericValue) == pytest.approx(0.1)
        assert spacing.MeasurementUnitsCodeSequence[0].CodeValue == "mm"
        assert bool(_children(entry, "111044")) != multi_frame  # per-slice MG has orientation

    # findings: two impressions, peak frames 2 and 5, marks inside the image on the lesion
    assert _value(_only(doc, "111017")) == "111242"
    impressions = _impressions(doc)
    assert len(impressions) == 2
    peaks = []
    for impression in impressions:
        assert _value(_only(impression, "111056")) == "111150"
        assert "PICARD finding" in _only(impression, "111033").TextValue
        finding = _only(impression, "111059")
        assert _value(finding) == "129793001"
        assert _value(_only(finding, "111056")) == "111150"
        assert _only(finding, "111001").TextValue == "PICARD"
        assert _only(finding, "111003").TextValue == (
            "1.2.3 (mean completion distance, image, M=10 p=0.5, exact)")
        assert "threshold=1.5" in [p.TextValue for p in _children(finding, "111002")]
        score = _only(finding, LABELS.max_concept.value)
        assert score.ConceptNameCodeSequence[0].CodeMeaning == "Max mean CD (image)"
        assert score.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == (
            "{score}")
        center, outline = _only(finding, "111010"), _only(finding, "111041")
        assert (center.GraphicType, outline.GraphicType) == ("POINT", "POLYLINE")
        refs = {_ref(_only(s, "")) for s in (center, outline)}
        assert len(refs) == 1
        uid, frames = refs.pop()
        if multi_frame:
            assert uid == src.SOPInstanceUID and len(frames) == 1
            frame = frames[0] - 1
        else:
            assert frames == ()
            frame = [s.SOPInstanceUID for s in sources].index(uid)
        x, y = (float(v) for v in center.GraphicData)
        points = np.asarray(outline.GraphicData, dtype=float).reshape(-1, 2)
        assert np.array_equal(points[0], points[-1])  # closed
        for px, py in [(x, y), *points]:
            assert 0 <= px <= cols and 0 <= py <= rows
        assert heat[frame, int(y), int(x)] >= THRESHOLD
        (x0, y0), (x1, y1) = points.min(axis=0).astype(int), points.max(axis=0).astype(int)
        boxed = heat[frame, y0:y1, x0:x1]
        assert (boxed >= THRESHOLD).any(axis=0).all() and (boxed >= THRESHOLD).any(axis=1).all()
        value = float(score.MeasuredValueSequence[0].NumericValue)
        assert value == pytest.approx(float(boxed.max()))  # the peak is on this frame, boxed
        peaks.append((frame, value))
    assert sorted(peaks) == [(2, pytest.approx(2.6)), (5, pytest.approx(1.9))]

    # detections: the algorithm, the library entries by reference; analyses: the impressions
    assert _value(_only(doc, "111064")) == "111222"
    detection = _only(_only(_only(doc, "111064"), "111063"), "111022")
    assert _value(detection) == "129793001"
    assert _only(detection, "111001").TextValue == "PICARD"
    targets = [_resolve(doc, list(c.ReferencedContentItemIdentifier))
               for c in _children(detection) if "ReferencedContentItemIdentifier" in c]
    assert [_ref(t)[0] for t in targets] == [s.SOPInstanceUID for s in sources]
    analysis = _only(_only(_only(doc, "111065"), "111062"), "111004")
    assert _value(analysis) == "111233"
    assert _only(analysis, "111003").TextValue.startswith("1.2.3 (")


def test_without_findings_is_a_valid_report(bto_source, tmp_path: Path) -> None:
    heat = np.zeros(bto_source.pixels.shape, np.float32)
    doc = _encode(bto_source.source_datasets, heat)
    assert _value(_only(doc, "111017")) == "111241"  # all algorithms succeeded; without findings
    assert _impressions(doc) == []
    assert _value(_only(doc, "111064")) == "111222"
    assert doc.SeriesDescription == "PICARD CAD SR (no findings)"
    assert not any(_name(i) == "111059" for i in _walk(doc))
    if dciodvfy_available():
        doc.save_as(tmp_path / "empty.dcm", enforce_file_format=True)
        assert run_dciodvfy(tmp_path / "empty.dcm") == ([], [PRIVATE_SCHEME_WARNING])


@pytest.mark.skipif(not dciodvfy_available(), reason="dciodvfy not installed")
@pytest.mark.parametrize("source", ["bto_source", "slice_source"])
def test_dciodvfy_clean(source: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    volume = request.getfixturevalue(source)
    doc = _encode(volume.source_datasets, _heatmap(volume))
    path = tmp_path / "cad.dcm"
    doc.save_as(path, enforce_file_format=True)
    errors, warnings = run_dciodvfy(path)
    assert errors == []
    # one for the Coding Scheme Identification item, one per finding's score concept
    assert warnings == [PRIVATE_SCHEME_WARNING] * 3


@pytest.mark.skipif(shutil.which("dsrdump") is None, reason="dcmtk not installed")
@pytest.mark.parametrize("source", ["bto_source", "slice_source"])
def test_dcmtk_accepts_the_content_relationships(
        source: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """dcmtk checks the relationship constraints of the Mammography CAD SR IOD (PS3.3
    Table A.35.5-2), by-reference items included, which dciodvfy does not."""
    volume = request.getfixturevalue(source)
    path = tmp_path / "cad.dcm"
    _encode(volume.source_datasets, _heatmap(volume)).save_as(path, enforce_file_format=True)
    proc = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    logged = (proc.stdout + proc.stderr).splitlines()
    # dcmtk does not check templates and says so; any other message is a defect (a dangling
    # by-reference target, for one, is only a warning)
    assert [line for line in logged if line[:2] in ("E:", "F:", "W:")] == [
        "W: Check for template constraints not yet supported"]
    assert "Mammography CAD SR Document" in proc.stdout


def test_per_slice_sources_in_any_order(slice_source) -> None:
    sources = slice_source.source_datasets
    heat = _heatmap(slice_source)
    shuffled = [sources[i] for i in (4, 1, 5, 0, 3, 2)]
    a, b = _encode(sources, heat), _encode(shuffled, heat)
    library = [_ref(e)[0] for e in _children(_only(b, "111028"))]
    assert library == [s.SOPInstanceUID for s in sources]
    marks = [[_ref(_only(_only(_only(i, "111059"), "111010"), ""))[0] for i in _impressions(d)]
             for d in (a, b)]
    assert marks[0] == marks[1]


def test_uids_deterministic(bto_source) -> None:
    heat = _heatmap(bto_source)
    a, b, c = (_encode(bto_source.source_datasets, heat, seed=s) for s in ("s1", "s1", "s2"))
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
    assert a.SOPInstanceUID != c.SOPInstanceUID and a.SeriesInstanceUID != c.SeriesInstanceUID
    assert a.StudyInstanceUID == c.StudyInstanceUID


def test_max_findings_keeps_the_highest_score(bto_source) -> None:
    doc = _encode(bto_source.source_datasets, _heatmap(bto_source), max_findings=1)
    (impression,) = _impressions(doc)
    score = _only(_only(impression, "111059"), LABELS.max_concept.value)
    assert float(score.MeasuredValueSequence[0].NumericValue) == pytest.approx(2.6)
    assert doc.SeriesDescription == "PICARD CAD SR (1 finding)"


def test_unrecorded_scoring_rule_is_labelled(bto_source) -> None:
    doc = _encode(bto_source.source_datasets, _heatmap(bto_source), labels=None)
    finding = _only(_impressions(doc)[0], "111059")
    assert _only(finding, "MAXSCORE").ConceptNameCodeSequence[0].CodeMeaning == (
        "Max PICARD score")
    assert "not recorded" in _only(finding, "111003").TextValue


@pytest.mark.parametrize(
    ("mutate", "kwargs", "match"),
    [
        (lambda h: h[:-1], {}, "does not match the source grid"),
        (lambda h: np.where(h > 2, np.nan, h), {}, "NaN or infinite"),
        (lambda h: h, {"max_findings": 0}, "max_findings must be at least 1, got 0"),
    ],
)
def test_rejects_bad_input(bto_source, mutate, kwargs: dict, match: str) -> None:
    heat = mutate(_heatmap(bto_source))
    with pytest.raises(ValueError, match=match):
        _encode(bto_source.source_datasets, heat, **kwargs)
