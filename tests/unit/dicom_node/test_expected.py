"""Tests for dicom_node.encode.expected: the "what the model expected" Secondary Captures."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage

from dicom_node.encode import burn
from dicom_node.encode.expected import encode_expected_series
from dicom_node.encode.labels import ScoreLabels
from dicom_node.volume import unflip
from tests.helpers.dicom_data import assert_dciodvfy_clean, roundtrip

LABELS = ScoreLabels.from_summary({"rule": "min", "space": "feature", "M": 10, "p": 0.5,
                                   "mode": "fast"})
WHEN = dt.datetime(2025, 3, 4, 5, 6, 7)
FRAMES = [5, 2]


def _inputs(volume) -> tuple[np.ndarray, np.ndarray]:
    """Stored slices FRAMES with a 'completion' (a smooth ramp) pasted into a hole."""
    stored = np.rint(unflip(volume.pixels, volume) * 4095.0).astype(np.uint16)
    holes = np.zeros((len(FRAMES), *stored.shape[1:]), bool)
    holes[0, 20:36, 8:24] = True
    holes[1, 30:50, 20:40] = True
    images = stored[FRAMES].copy()
    ramp = np.linspace(1500, 2500, holes.size).reshape(holes.shape).astype(np.uint16)
    images[holes] = ramp[holes]
    return images, holes


def _encode(volume, seed: str = "job-1", **kwargs) -> list[Dataset]:
    images, holes = _inputs(volume)
    args = {"model_version": "1.2.3", "output_uid_seed": seed, "labels": LABELS,
            "created": WHEN}
    args.update(kwargs)
    return encode_expected_series(volume.source_datasets, images, FRAMES, holes, **args)


def _body(obj: Dataset, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(image part on the source grid, text band, factor) of an expected image."""
    pixels = obj.pixel_array
    factor = burn.upscale_factor(cols)
    band = pixels.shape[0] - rows * factor
    assert band > 0 and pixels.shape[1] == cols * factor
    return pixels[band:], pixels[:band], factor


@pytest.mark.parametrize("source", ["bto_source", "slice_source"])
def test_expected_images(source: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    volume = request.getfixturevalue(source)
    sources = volume.source_datasets
    images, holes = _inputs(volume)
    rows, cols = images.shape[1:]
    objs = [roundtrip(o) for o in _encode(volume)]
    assert len(objs) == len(FRAMES)
    for i, (obj, frame) in enumerate(zip(objs, FRAMES)):
        assert obj.SOPClassUID == SecondaryCaptureImageStorage
        assert obj.StudyInstanceUID == sources[0].StudyInstanceUID
        assert int(obj.SeriesNumber) == 906 and int(obj.InstanceNumber) == i + 1
        assert obj.SeriesDescription.startswith("PICARD expected (nearest of M=10, feature")
        assert obj.PhotometricInterpretation == "MONOCHROME2" and obj.BitsAllocated == 16
        assert list(obj.ImageType) == ["DERIVED", "SECONDARY"]
        assert obj.ConversionType == "WSD" and obj.BurnedInAnnotation == "YES"
        assert obj.Laterality == volume.laterality
        assert obj.ImageComments.startswith("MODEL-EXPECTED TISSUE - NOT FOR DIAGNOSTIC USE")
        assert "nearest of M=10 PICARD completions (feature distance)" in obj.ImageComments
        ref = obj.SourceImageSequence[0]
        if len(sources) == 1:
            assert ref.ReferencedSOPInstanceUID == sources[0].SOPInstanceUID
            assert int(ref.ReferencedFrameNumber) == frame + 1
            voi = sources[0].SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0]
        else:
            assert ref.ReferencedSOPInstanceUID == sources[frame].SOPInstanceUID
            assert "ReferencedFrameNumber" not in ref
            voi = sources[frame]
        assert (float(obj.WindowCenter), float(obj.WindowWidth)) == (
            float(voi.WindowCenter), float(voi.WindowWidth))
        body, text, factor = _body(obj, rows, cols)
        assert [float(v) for v in obj.PixelSpacing] == pytest.approx([0.1 / factor] * 2)
        on_grid = body[::factor, ::factor]
        # the source's stored values outside the hole, the completion inside it
        np.testing.assert_array_equal(on_grid[~holes[i]], images[i][~holes[i]])
        outline = burn.ring(burn.upscale(holes[i], factor), burn.line_width(cols * factor),
                            outside=False)
        inside = burn.upscale(holes[i], factor) & ~outline
        np.testing.assert_array_equal(body[inside], burn.upscale(images[i], factor)[inside])
        holder, index = (sources[0], frame) if len(sources) == 1 else (sources[frame], 0)
        black, white = burn.display_window(holder, index, images[i])
        assert set(np.unique(body[outline])) == {round(black), round(white)}  # dashed
        assert text.min() == round(black) and text.max() == round(white)  # text on black
        assert_dciodvfy_clean(obj, tmp_path / f"exp{i}.dcm")


def test_burned_text_differs_with_what_was_computed(bto_source) -> None:
    rows, cols = bto_source.pixels.shape[1:]
    a = _body(_encode(bto_source)[0], rows, cols)
    b = _body(_encode(bto_source, labels=ScoreLabels())[0], rows, cols)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[1], b[1])


def test_empty_input_gives_no_images(bto_source) -> None:
    rows, cols = bto_source.pixels.shape[1:]
    empty = np.zeros((0, rows, cols), np.uint16)
    assert encode_expected_series(bto_source.source_datasets, empty, [], empty.astype(bool),
                                  model_version="1", output_uid_seed="x") == []


def test_deterministic_uids(slice_source) -> None:
    a, b, c = _encode(slice_source), _encode(slice_source), _encode(slice_source, seed="s2")
    assert [o.SOPInstanceUID for o in a] == [o.SOPInstanceUID for o in b]
    assert a[0].SeriesInstanceUID == a[1].SeriesInstanceUID == b[0].SeriesInstanceUID
    assert not {o.SOPInstanceUID for o in a} & {o.SOPInstanceUID for o in c}
    assert a[0].SeriesInstanceUID != c[0].SeriesInstanceUID


def test_monochrome1_source_without_window(slice_source, tmp_path: Path) -> None:
    """Photometric Interpretation and rescale follow the source; a window is computed."""
    sources = [copy.deepcopy(ds) for ds in slice_source.source_datasets]
    for ds in sources:
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.RescaleSlope, ds.RescaleIntercept = 2, -10
        del ds.WindowCenter, ds.WindowWidth
    images, holes = _inputs(slice_source)
    obj = roundtrip(encode_expected_series(sources, images, FRAMES, holes, model_version="1",
                                            output_uid_seed="m1")[0])
    assert obj.PhotometricInterpretation == "MONOCHROME1"
    assert (float(obj.RescaleSlope), float(obj.RescaleIntercept)) == (2.0, -10.0)
    black, white = burn.percentile_window(images[0], monochrome1=True)
    center, width = float(obj.WindowCenter), float(obj.WindowWidth)
    assert center - 0.5 - (width - 1) / 2 == pytest.approx(black * 2 - 10)
    assert center - 0.5 + (width - 1) / 2 == pytest.approx(white * 2 - 10)
    _, text, _ = _body(obj, *images.shape[1:])
    assert text.max() == round(white) and text.min() == round(black)
    assert (text == round(white)).mean() > 0.5  # MONOCHROME1: the band's black is high
    assert_dciodvfy_clean(obj, tmp_path / "mono1.dcm")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ("short", "does not match 2 frames"),
        ("holes", "holes must be boolean"),
        ("negative", "stored values in 0..65535"),
        ("nan", "NaN or infinite"),
        ("frame", "outside the source's 8 frames"),
    ],
)
def test_rejects_bad_input(bto_source, change: str, match: str) -> None:
    images, holes = _inputs(bto_source)
    images = images.astype(np.float32)
    frames = list(FRAMES)
    if change == "short":
        images = images[:, :-1]
    elif change == "holes":
        holes = holes.astype(np.uint8) * 2
    elif change == "negative":
        images[0, 0, 0] = -5
    elif change == "nan":
        images[0, 0, 0] = np.nan
    else:
        frames[0] = 8
    with pytest.raises(ValueError, match=match):
        encode_expected_series(bto_source.source_datasets, images, frames, holes,
                               model_version="1", output_uid_seed="x")
