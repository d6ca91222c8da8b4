"""Tests for dicom_node.encode: Parametric Map + binary SEG on BTO and per-slice sources."""

from __future__ import annotations

import copy
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ParametricMapStorage, SegmentationStorage

from dicom_node.encode import ScoreLabels, display_range, encode_results
from dicom_node.encode.display import PREDICTION_RGB
from dicom_node.standins.dciodvfy import dciodvfy_available, run_dciodvfy
from dicom_node.volume import unflip
from tests.helpers.dicom_data import (
    blob_mask,
    roundtrip,
    seg_to_volume,
    source_frame_index,
)

THRESHOLD = 1.5


def _heatmap(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    heat = rng.uniform(0.0, 1.0, size=shape).astype(np.float32)
    heat[blob_mask(shape, (2, 20, 10), 3)] = 2.5
    heat[blob_mask(shape, (5, 40, 30), 2)] = 1.8
    return heat


def _encode(volume, heat: np.ndarray, seed: str = "job-1", **kwargs) -> list[Dataset]:
    args = dict(threshold=THRESHOLD, model_version="1.2.3", output_uid_seed=seed)
    args.update(kwargs)
    return encode_results(volume.source_datasets, heat, laterality=volume.laterality, **args)


@pytest.mark.parametrize("source", ["bto_source", "slice_source"])
def test_seg_and_pm_content(source: str, request: pytest.FixtureRequest) -> None:
    volume = request.getfixturevalue(source)
    stored_heat = unflip(_heatmap(volume.pixels.shape), volume)
    pm, seg = (roundtrip(d) for d in _encode(volume, stored_heat))
    sources = volume.source_datasets
    src = sources[0]

    assert pm.SOPClassUID == ParametricMapStorage and seg.SOPClassUID == SegmentationStorage
    for obj in (pm, seg):
        assert obj.StudyInstanceUID == src.StudyInstanceUID
        assert obj.SeriesInstanceUID != src.SeriesInstanceUID
        assert (obj.Rows, obj.Columns) == (src.Rows, src.Columns)
        assert obj.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    assert pm.SeriesInstanceUID != seg.SeriesInstanceUID
    assert (int(pm.SeriesNumber), int(seg.SeriesNumber)) == (900, 901)

    # SEG: binary, exactly heatmap >= threshold on the source grid
    assert seg.SegmentationType == "BINARY"
    np.testing.assert_array_equal(seg_to_volume(seg, sources), stored_heat >= THRESHOLD)
    segment = seg.SegmentSequence[0]
    assert segment.SegmentLabel == "suspected lesion"
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "4147007"
    algo = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("PICARD", "1.2.3")

    # PM: every source frame (these sources step along the normal: source order), float32
    # stored values 0 at half the threshold and 1 at the highest score, RWVM back to scores
    assert int(pm.NumberOfFrames) == stored_heat.shape[0]
    order = [source_frame_index(it, sources) for it in pm.PerFrameFunctionalGroupsSequence]
    assert order == list(range(stored_heat.shape[0]))
    assert pm.BitsAllocated == 32 and "FloatPixelData" in pm and "PixelData" not in pm
    stored = pm.pixel_array.reshape(stored_heat.shape)
    assert stored.dtype == np.float32
    assert stored.max() == pytest.approx(1.0, abs=1e-6)
    expected_stored = (stored_heat - THRESHOLD / 2) / (stored_heat.max() - THRESHOLD / 2)
    np.testing.assert_allclose(stored, expected_stored, rtol=1e-6, atol=1e-6)
    rwvm = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    slope, intercept = float(rwvm.RealWorldValueSlope), float(rwvm.RealWorldValueIntercept)
    assert intercept == pytest.approx(THRESHOLD / 2)
    decoded = stored.astype(np.float64) * slope + intercept
    np.testing.assert_allclose(decoded, stored_heat, rtol=1e-6, atol=1e-6 * stored_heat.max())
    assert rwvm.MeasurementUnitsCodeSequence[0].CodeValue == "{score}"
    assert float(rwvm.DoubleFloatRealWorldValueLastValueMapped) >= 1.0
    anatomy = pm.SharedFunctionalGroupsSequence[0].FrameAnatomySequence[0]
    assert anatomy.FrameLaterality == volume.laterality

    # what viewers need: a colour for the segment, series dates, telling descriptions
    rgb = hd.color.CIELabColor.from_dicom_value(
        tuple(segment.RecommendedDisplayCIELabValue)).to_rgb()
    assert rgb == pytest.approx(PREDICTION_RGB, abs=2)
    for obj, kind in ((pm, "heatmap"), (seg, "lesions")):
        assert obj.SeriesDescription.startswith(f"PICARD {kind} (")
        assert len(obj.SeriesDate) == 8 and len(obj.SeriesTime) >= 6
    assert (pm.SeriesDate, pm.SeriesTime) == (seg.SeriesDate, seg.SeriesTime)


def _reverse_frame_positions(volume):
    """The source's headers with frame k placed where frame N-1-k was (frames run the other
    way along the normal); the pixels are not needed for encoding."""
    ds = copy.deepcopy(volume.source_datasets[0])
    items = ds.PerFrameFunctionalGroupsSequence
    positions = [list(it.PlanePositionSequence[0].ImagePositionPatient) for it in items]
    for item, position in zip(items, reversed(positions)):
        item.PlanePositionSequence[0].ImagePositionPatient = position
    return ds


def test_pm_frames_follow_the_normal_whatever_the_source_direction(
        bto_source, tmp_path: Path) -> None:
    """OHIF fills its volume along the normal, ascending, and copies PM frames by index:
    a source whose frames run against the normal gets its PM frames in reverse, each frame
    still referencing (and holding the scores of) its own source frame."""
    reversed_src = _reverse_frame_positions(bto_source)
    heat = unflip(_heatmap(bto_source.pixels.shape), bto_source)
    pm = roundtrip(encode_results([reversed_src], heat, threshold=THRESHOLD,
                                   model_version="1", output_uid_seed="rev")[0])
    if dciodvfy_available():
        pm.save_as(tmp_path / "pm.dcm")
        assert run_dciodvfy(tmp_path / "pm.dcm")[0] == []
    items = pm.PerFrameFunctionalGroupsSequence
    order = [source_frame_index(it, [reversed_src]) for it in items]
    assert order == list(range(heat.shape[0]))[::-1]
    iop = np.asarray(pm.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
                     .ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    along = [float(np.asarray(it.PlanePositionSequence[0].ImagePositionPatient, float) @ normal)
             for it in items]
    assert along == sorted(along)
    rwvm = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    decoded = (pm.pixel_array.astype(np.float64) * float(rwvm.RealWorldValueSlope)
               + float(rwvm.RealWorldValueIntercept))
    np.testing.assert_allclose(decoded, heat[order], rtol=1e-6, atol=1e-5)


def test_pm_display_range() -> None:
    heat = np.array([[[0.0, 1.0, 3.0]]], np.float32)
    assert display_range(heat, 2.0) == (1.0, 3.0)
    assert display_range(heat * 0.1, 2.0) == (1.0, 2.0)  # nothing found: 1 stays the threshold
    assert display_range(heat, None) == (0.0, 3.0)
    assert display_range(np.zeros((1, 2, 2)), None) == (0.0, 1.0)


@pytest.mark.skipif(not dciodvfy_available(), reason="dciodvfy not installed")
@pytest.mark.parametrize("source", ["bto_source", "slice_source"])
@pytest.mark.parametrize("empty", [False, True])
def test_dciodvfy_clean(
    source: str, empty: bool, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    volume = request.getfixturevalue(source)
    heat = unflip(_heatmap(volume.pixels.shape), volume)
    if empty:
        heat = np.minimum(heat, THRESHOLD / 2)
    for i, obj in enumerate(_encode(volume, heat)):
        path = tmp_path / f"{i}.dcm"
        obj.save_as(path)
        errors, _ = run_dciodvfy(path)
        assert errors == [], (obj.SOPClassUID, errors)


def test_empty_segmentation_is_valid(bto_source) -> None:
    heat = np.zeros(bto_source.pixels.shape, np.float32)
    _, seg = (roundtrip(d) for d in _encode(bto_source, heat))
    mask = seg_to_volume(seg, bto_source.source_datasets)
    assert not mask.any()
    assert int(seg.NumberOfFrames) == heat.shape[0]


def test_uids_deterministic(bto_source) -> None:
    heat = _heatmap(bto_source.pixels.shape)
    a = _encode(bto_source, heat, seed="s1")
    b = _encode(bto_source, heat, seed="s1")
    c = _encode(bto_source, heat, seed="s2")
    for x, y, z in zip(a, b, c):
        assert (x.SOPInstanceUID, x.SeriesInstanceUID) == (y.SOPInstanceUID, y.SeriesInstanceUID)
        assert x.SOPInstanceUID != z.SOPInstanceUID
        assert x.SeriesInstanceUID != z.SeriesInstanceUID
        assert x.StudyInstanceUID == z.StudyInstanceUID


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda h: h[:-1], "does not match the source grid"),
        (lambda h: np.where(h > 2, np.nan, h), "NaN or infinite"),
    ],
)
def test_rejects_bad_heatmap(bto_source, mutate, match: str) -> None:
    heat = mutate(_heatmap(bto_source.pixels.shape))
    with pytest.raises(ValueError, match=match):
        _encode(bto_source, heat)


def test_findings_components() -> None:
    heat = np.zeros((4, 20, 20), np.float32)
    heat[1:3, 2:5, 3:7] = 2.0
    heat[2, 3, 4] = 2.2  # peak of the first component on frame 2
    heat[3, 15:17, 15:18] = 3.0
    from dicom_node.encode import findings

    found = findings(heat, THRESHOLD)
    assert [f["max_score"] for f in found] == pytest.approx([3.0, 2.2])
    assert found[0]["frame"] == 3 and found[0]["box"] == (15, 15, 16, 17)
    assert found[1]["frame"] == 2 and found[1]["box"] == (2, 3, 4, 6)
    assert found[1]["frames"] == (1, 2) and found[1]["voxels"] == 24
    assert findings(heat, THRESHOLD, max_findings=1) == found[:1]
    assert findings(heat, 5.0) == []


@pytest.mark.parametrize("source", ["bto_source", "slice_source"])
def test_sr_findings(source: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    import highdicom as hd

    volume = request.getfixturevalue(source)
    heat = _heatmap(volume.pixels.shape)
    heat[2, 20, 10] = 2.6  # peaks at the blob centres
    heat[5, 40, 30] = 1.9
    heat = unflip(heat, volume)
    objs = _encode(volume, heat, include_sr=True)
    assert len(objs) == 3
    path = tmp_path / "sr.dcm"
    objs[2].save_as(path)
    sr = hd.sr.srread(path)
    assert sr.StudyInstanceUID == volume.study_uid
    assert int(sr.SeriesNumber) == 902
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == 2  # the two blobs above the threshold
    frames = sorted(
        source_frame_index_for_region(g.roi, volume.source_datasets) for g in groups
    )
    assert frames == [2, 5]
    values = sorted(g.get_measurements()[0].value for g in groups)
    assert values == pytest.approx([1.9, 2.6])
    # one finding per lesion, named with the frames it spans (1-based), score in {score}
    last = heat.shape[0]
    assert sorted(g.tracking_identifier for g in groups) == [
        "lesion 1, frames 1-6", f"lesion 2, frames 4-{min(last, 8)}"]
    assert {g.get_measurements()[0].unit.value for g in groups} == {"{score}"}
    assert sr.SeriesDescription == "PICARD findings (2 lesions)"
    assert len(sr.SeriesDate) == 8 and len(sr.SeriesTime) >= 6
    if dciodvfy_available():
        assert run_dciodvfy(path)[0] == []
    empty = _encode(volume, np.zeros_like(heat), include_sr=True)
    assert len(empty) == 2
    # findings the caller already has are used as given (the encode stage computes them once)
    from dicom_node.encode import encode_sr, findings

    kw = dict(threshold=THRESHOLD, model_name="PICARD", model_version="t", output_uid_seed="x")
    assert encode_sr(volume.source_datasets, heat, found=[], **kw) is None
    found = findings(heat, THRESHOLD)
    one = encode_sr(volume.source_datasets, heat, found=found[1:], **kw)
    one.save_as(tmp_path / "one.dcm")
    groups = hd.sr.srread(tmp_path / "one.dcm").content.get_planar_roi_measurement_groups()
    assert [g.get_measurements()[0].value for g in groups] == pytest.approx([1.9])


def source_frame_index_for_region(roi: Dataset, sources: list[Dataset]) -> int:
    ref = roi.ContentSequence[0].ReferencedSOPSequence[0]
    if len(sources) == 1:
        return int(ref.ReferencedFrameNumber) - 1
    return [str(s.SOPInstanceUID) for s in sources].index(str(ref.ReferencedSOPInstanceUID))


def test_per_slice_sources_in_any_order(slice_source) -> None:
    heat = unflip(_heatmap(slice_source.pixels.shape), slice_source)
    sources = slice_source.source_datasets
    shuffled = [sources[i] for i in (4, 1, 5, 0, 3, 2)]
    pm, seg = (
        roundtrip(d)
        for d in encode_results(
            shuffled, heat, threshold=THRESHOLD, model_version="1", output_uid_seed="x"
        )
    )
    np.testing.assert_array_equal(seg_to_volume(seg, sources), heat >= THRESHOLD)
    order = [source_frame_index(it, sources) for it in pm.PerFrameFunctionalGroupsSequence]
    assert order == list(range(len(sources)))


def test_every_object_names_the_scoring_rule(bto_source, tmp_path: Path) -> None:
    scoring = {"rule": "mean", "space": "image", "M": 10, "p": 0.5, "mode": "exact",
               "slice_step": 1}
    labels = ScoreLabels.from_summary(scoring)
    heat = unflip(_heatmap(bto_source.pixels.shape), bto_source)
    pm, seg, sr = (roundtrip(d) for d in _encode(bto_source, heat, include_sr=True,
                                                  labels=labels))
    assert pm.ContentLabel == "MEANCD_IMAGE_M10"
    assert pm.ContentDescription == "mean completion distance, image, M=10 p=0.5, exact"
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.LUTExplanation == pm.ContentDescription and mapping.LUTLabel == pm.ContentLabel
    assert seg.ContentDescription.startswith("mean completion distance, image, M=10 p=0.5, exact")
    params = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert "rule" in params.AlgorithmParameters and "exact" in params.AlgorithmParameters
    concepts = {item.ConceptNameCodeSequence[0].CodeMeaning
                for item in _walk_content(sr) if "ConceptNameCodeSequence" in item}
    assert "Max mean CD (image)" in concepts
    assert pm.SeriesDescription == "PICARD heatmap (mean CD, image, M=10, exact)"
    assert not any("minimum" in c.lower() for c in concepts)
    if dciodvfy_available():
        for name, ds in (("pm", pm), ("seg", seg), ("sr", sr)):
            path = tmp_path / f"{name}.dcm"
            ds.save_as(path)
            errors, _ = run_dciodvfy(path)
            assert errors == [], f"{name}: {errors}"


def test_fast_mode_and_unrecorded_rules_are_labelled_as_such() -> None:
    fast = ScoreLabels.from_summary({"rule": "min", "space": "feature", "M": 10, "p": 0.1,
                                     "mode": "fast", "slice_step": 4})
    assert fast.content_label == "MCD_FEAT_M10"
    assert fast.description == "minimum completion distance, feature, M=10 p=0.1, fast"
    assert fast.algorithm_parameters()["slice_step"] == "4"
    assert fast.max_concept.meaning == "Max MCD (feature, fast)"
    assert fast.short == "MCD, feature, M=10, fast"
    unknown = ScoreLabels.from_summary(None)
    assert unknown.content_label == "PICARD_SCORE" and "not recorded" in unknown.description
    with pytest.raises(ValueError, match="unknown scoring rule"):
        ScoreLabels.from_summary({"rule": "max", "space": "image", "M": 1, "p": 0, "mode": "exact"})
    for labels in (fast, unknown):
        assert len(labels.content_label) <= 16 and len(labels.description) <= 64
        assert len(labels.max_concept.value) <= 16 and len(labels.max_concept.meaning) <= 64


def _walk_content(ds: Dataset):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _walk_content(item)
