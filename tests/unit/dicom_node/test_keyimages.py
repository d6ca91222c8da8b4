"""Tests for dicom_node.encode.keyimages (key images, Key Object Selection) and burn."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    KeyObjectSelectionDocumentStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
)
from scipy import ndimage

from dicom_node.encode import burn
from dicom_node.encode.display import PREDICTION_RGB
from dicom_node.encode.keyimages import encode_key_images, encode_key_object_selection
from dicom_node.encode.labels import ScoreLabels
from dicom_node.volume import unflip
from tests.helpers.dicom_data import assert_dciodvfy_clean, blob_mask, roundtrip

THRESHOLD = 1.5
PEAKS = {2: 2.6, 5: 1.9}  # frame of each finding's highest score: score
LABELS = ScoreLabels.from_summary({"rule": "min", "space": "image", "M": 10, "p": 0.5,
                                   "mode": "exact"})
WHEN = dt.datetime(2025, 3, 4, 5, 6, 7)


def _stored(volume) -> np.ndarray:
    """The source's stored values (12 bits) in stored orientation."""
    return np.rint(unflip(volume.pixels, volume) * 4095.0).astype(np.uint16)


def _heatmap(volume) -> np.ndarray:
    shape = volume.pixels.shape
    heat = np.random.default_rng(0).uniform(0.0, 1.0, size=shape).astype(np.float32)
    heat[blob_mask(shape, (2, 20, 10), 3)] = 2.5
    heat[blob_mask(shape, (5, 40, 30), 2)] = 1.8
    heat[2, 20, 10], heat[5, 40, 30] = PEAKS[2], PEAKS[5]
    return unflip(heat, volume)


def _encode(volume, seed: str = "job-1", **kwargs) -> list[Dataset]:
    args = {"threshold": THRESHOLD, "model_version": "1.2.3", "output_uid_seed": seed,
            "labels": LABELS, "created": WHEN}
    args.update(kwargs)
    return encode_key_images(volume.source_datasets, _stored(volume), _heatmap(volume), **args)


@pytest.mark.parametrize("source", ["bto_source", "slice_source"])
def test_key_images_header(source: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    volume = request.getfixturevalue(source)
    sources = volume.source_datasets
    images = [roundtrip(d) for d in _encode(volume)]
    assert len(images) == 2  # one per finding, highest score first
    for n, (image, frame) in enumerate(zip(images, (2, 5)), start=1):
        assert image.SOPClassUID == SecondaryCaptureImageStorage
        assert image.StudyInstanceUID == sources[0].StudyInstanceUID
        assert image.PatientID == sources[0].PatientID
        assert image.SeriesInstanceUID not in {s.SeriesInstanceUID for s in sources}
        assert int(image.SeriesNumber) == 903 and int(image.InstanceNumber) == n
        assert image.SeriesDescription.startswith("PICARD key images (2 findings")
        assert (image.SeriesDate, image.SeriesTime) == ("20250304", "050607")
        assert list(image.ImageType) == ["DERIVED", "SECONDARY"]
        assert image.ConversionType == "WSD" and image.BurnedInAnnotation == "YES"
        assert image.PhotometricInterpretation == "RGB" and image.SamplesPerPixel == 3
        assert image.Laterality == volume.laterality
        assert f"finding {n} of 2 on source frame {frame + 1}" in image.ImageComments
        assert "NOT FOR DIAGNOSTIC USE" in image.ImageComments
        assert image.DerivationDescription
        ref = image.SourceImageSequence[0]
        if len(sources) == 1:
            assert ref.ReferencedSOPInstanceUID == sources[0].SOPInstanceUID
            assert int(ref.ReferencedFrameNumber) == frame + 1
        else:
            assert ref.ReferencedSOPInstanceUID == sources[frame].SOPInstanceUID
            assert "ReferencedFrameNumber" not in ref
        factor = burn.upscale_factor(int(sources[0].Columns))
        assert [float(v) for v in image.PixelSpacing] == pytest.approx([0.1 / factor] * 2)
        assert int(image.Columns) == int(sources[0].Columns) * factor
    assert images[0].SeriesInstanceUID == images[1].SeriesInstanceUID
    assert images[0].SOPInstanceUID != images[1].SOPInstanceUID
    for i, image in enumerate(images):
        assert_dciodvfy_clean(image, tmp_path / f"key{i}.dcm")


def _component(heat: np.ndarray, frame: int) -> np.ndarray:
    """2D mask of the 3D component of ``heat >= THRESHOLD`` holding the finding's peak
    (the frame may cross other components too)."""
    labels, _ = ndimage.label(heat >= THRESHOLD)
    (peak,) = np.argwhere(heat[frame] == np.float32(PEAKS[frame]))
    return labels[frame] == labels[frame][tuple(peak)]


def test_key_image_pixels(bto_source) -> None:
    """Grey = the windowed slice; colour exactly where score >= threshold / 2; magenta
    exactly on the ring just outside the finding's threshold contour; text above."""
    heat, stored = _heatmap(bto_source), _stored(bto_source)
    src = bto_source.source_datasets[0]
    rows, cols = stored.shape[1:]
    factor = burn.upscale_factor(cols)
    lo = THRESHOLD / 2
    for image, frame in zip(_encode(bto_source), (2, 5)):
        # stored losslessly compressed; the exact pixel checks below read the decoded data
        assert image.file_meta.TransferSyntaxUID == RLELossless
        pixels = image.pixel_array
        band = pixels.shape[0] - rows * factor
        assert band > 0
        body = pixels[band:]
        ring = burn.ring(burn.upscale(_component(heat, frame), factor),
                         burn.line_width(cols * factor), outside=True)
        magenta = (body == PREDICTION_RGB).all(axis=-1)
        np.testing.assert_array_equal(magenta, ring)
        coloured = ~((body[..., 0] == body[..., 1]) & (body[..., 1] == body[..., 2]))
        hot = burn.upscale(heat[frame] >= lo, factor)
        np.testing.assert_array_equal(coloured & ~ring, hot & ~ring)
        black, white = burn.display_window(src, frame, stored[frame])
        grey = burn.upscale(burn.to_grey8(stored[frame], black, white), factor)
        np.testing.assert_array_equal(body[..., 0][~hot & ~ring], grey[~hot & ~ring])
        text = pixels[:band]
        assert text.any()  # text drawn on the black band
        assert ((text[..., 0] > 200) & (text[..., 2] < 60)).any()  # the yellow warning line


def test_burned_text_names_the_scoring(bto_source) -> None:
    """The band holds text: other labels or another model version draw other pixels."""
    a = _encode(bto_source)[0].pixel_array
    b = _encode(bto_source, labels=ScoreLabels())[0].pixel_array
    c = _encode(bto_source, model_version="9.9.9")[0].pixel_array
    rows, cols = bto_source.pixels.shape[1:]
    band = a.shape[0] - rows * burn.upscale_factor(cols)
    assert a.shape == b.shape == c.shape
    assert not np.array_equal(a[:band], b[:band]) and not np.array_equal(a[:band], c[:band])
    np.testing.assert_array_equal(a[band:], b[band:])


def test_no_findings_no_key_images(bto_source) -> None:
    heat = np.full(bto_source.pixels.shape, THRESHOLD / 2, np.float32)
    assert encode_key_images(bto_source.source_datasets, _stored(bto_source), heat,
                             threshold=THRESHOLD, model_version="1", output_uid_seed="x") == []


def test_max_findings_and_deterministic_uids(bto_source) -> None:
    a, b = _encode(bto_source, seed="s1"), _encode(bto_source, seed="s1")
    c = _encode(bto_source, seed="s2", max_findings=1)
    assert [x.SOPInstanceUID for x in a] == [x.SOPInstanceUID for x in b]
    assert a[0].SeriesInstanceUID == b[0].SeriesInstanceUID != c[0].SeriesInstanceUID
    assert len(c) == 1 and c[0].SOPInstanceUID not in {x.SOPInstanceUID for x in a}


def test_per_slice_sources_in_any_order(slice_source) -> None:
    sources = slice_source.source_datasets
    shuffled = [sources[i] for i in (4, 1, 5, 0, 3, 2)]
    images = encode_key_images(shuffled, _stored(slice_source), _heatmap(slice_source),
                               threshold=THRESHOLD, model_version="1.2.3",
                               output_uid_seed="job-1", labels=LABELS, created=WHEN)
    expected = _encode(slice_source)
    assert [i.SourceImageSequence[0].ReferencedSOPInstanceUID for i in images] == [
        sources[2].SOPInstanceUID, sources[5].SOPInstanceUID]
    np.testing.assert_array_equal(images[0].pixel_array, expected[0].pixel_array)


@pytest.mark.parametrize(
    ("what", "match"),
    [("pixels", "source_pixels shape"), ("heat", "does not match the source grid")],
)
def test_rejects_arrays_off_the_grid(bto_source, what: str, match: str) -> None:
    pixels, heat = _stored(bto_source), _heatmap(bto_source)
    if what == "pixels":
        pixels = pixels[:-1]
    else:
        heat = heat[:, :-1]
    with pytest.raises(ValueError, match=match):
        encode_key_images(bto_source.source_datasets, pixels, heat, threshold=THRESHOLD,
                          model_version="1", output_uid_seed="x")


def _references(kos: Dataset) -> list[Dataset]:
    return [item.ReferencedSOPSequence[0] for item in kos.ContentSequence
            if item.ValueType == "IMAGE"]


@pytest.mark.parametrize("source", ["bto_source", "slice_source"])
def test_key_object_selection(source: str, request: pytest.FixtureRequest,
                              tmp_path: Path) -> None:
    volume = request.getfixturevalue(source)
    sources = volume.source_datasets
    images = _encode(volume)
    kos = roundtrip(encode_key_object_selection(
        sources, images, [5, 2, 5], model_version="1.2.3", output_uid_seed="job-1",
        created=WHEN))
    assert kos.SOPClassUID == KeyObjectSelectionDocumentStorage and kos.Modality == "KO"
    title = kos.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == (
        "113000", "DCM", "Of Interest")
    assert kos.StudyInstanceUID == sources[0].StudyInstanceUID
    assert int(kos.SeriesNumber) == 904 and kos.SeriesDescription.startswith("PICARD key obj")
    refs = _references(kos)
    known = {str(d.SOPInstanceUID): d for d in [*sources, *images]}
    assert {str(r.ReferencedSOPInstanceUID) for r in refs} <= set(known)
    for ref in refs:
        assert ref.ReferencedSOPClassUID == known[str(ref.ReferencedSOPInstanceUID)].SOPClassUID
    if len(sources) == 1:
        source_refs = [r for r in refs if r.ReferencedSOPInstanceUID == sources[0].SOPInstanceUID]
        assert len(source_refs) == 1
        numbers = [int(v) for v in source_refs[0].ReferencedFrameNumber]
        assert numbers == [3, 6] and max(numbers) <= int(sources[0].NumberOfFrames)
    else:
        uids = [str(r.ReferencedSOPInstanceUID) for r in refs[:2]]
        assert uids == [sources[2].SOPInstanceUID, sources[5].SOPInstanceUID]
        assert not any("ReferencedFrameNumber" in r for r in refs)
    assert [str(r.ReferencedSOPInstanceUID) for r in refs[-2:]] == [
        i.SOPInstanceUID for i in images]
    texts = [item.TextValue for item in kos.ContentSequence if item.ValueType == "TEXT"
             and item.ConceptNameCodeSequence[0].CodeValue == "113012"]  # Key Object Descr.
    assert len(texts) == 1 and "PICARD" in texts[0] and "findings" in texts[0]
    assert "3, 6" in texts[0]
    doc = hd.ko.KeyObjectSelectionDocument.from_dataset(kos)
    for ref in refs:
        assert doc.resolve_reference(ref.ReferencedSOPInstanceUID)[0] == kos.StudyInstanceUID
    assert_dciodvfy_clean(kos, tmp_path / "kos.dcm")


def test_key_object_selection_checks(bto_source, tmp_path: Path) -> None:
    sources = bto_source.source_datasets
    common = {"model_version": "1", "output_uid_seed": "x"}
    with pytest.raises(ValueError, match="nothing to select"):
        encode_key_object_selection(sources, [], [], **common)
    with pytest.raises(ValueError, match="outside the source's 8 frames"):
        encode_key_object_selection(sources, [], [8], **common)
    other = _encode(bto_source)[0]
    other.StudyInstanceUID = "1.2.3.4"
    with pytest.raises(ValueError, match="another study"):
        encode_key_object_selection(sources, [other], [2], **common)
    a = encode_key_object_selection(sources, [], [2], **common)
    b = encode_key_object_selection(sources, [], [2], **common)
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
    # source frames only (what every destination has): no key images named
    refs = _references(a)
    assert len(refs) == 1 and int(refs[0].ReferencedFrameNumber) == 3
    text = next(item.TextValue for item in a.ContentSequence if item.ValueType == "TEXT"
                and item.ConceptNameCodeSequence[0].CodeValue == "113012")
    assert "frames (3) hold PICARD findings" in text and "key image" not in text
    assert_dciodvfy_clean(a, tmp_path / "kos.dcm")


# --------------------------------------------------------------------------- burn


def test_display_window_from_header_and_rescale() -> None:
    ds = Dataset()
    ds.WindowCenter, ds.WindowWidth = 110.5, 201
    ds.RescaleSlope, ds.RescaleIntercept = 2, 10
    black, white = burn.display_window(ds, 0, np.zeros((2, 2)))
    # modality window [10, 210] -> stored [0, 100]
    assert (black, white) == pytest.approx((0.0, 100.0))
    grey = burn.to_grey8(np.array([[0, 50, 100, 400]]), black, white)
    np.testing.assert_array_equal(grey, [[0, 128, 255, 255]])
    np.testing.assert_array_equal(burn.to_grey8(np.array([[0, 100]]), 0, 100, invert=True),
                                  [[255, 0]])


def test_percentile_window_leaves_out_the_air() -> None:
    pixels = np.zeros((100, 100))
    pixels[:, 60:] = np.linspace(1000, 2000, 40)[None, :]
    black, white = burn.percentile_window(pixels)
    assert 1000 <= black < 1020 and 1980 < white <= 2000
    mono1 = 4095 - pixels
    black1, white1 = burn.percentile_window(mono1, monochrome1=True)
    assert 2075 <= black1 < 2100 and 3075 < white1 <= 3095
    ds = Dataset()  # no window in the header: the percentile window
    assert burn.display_window(ds, 0, pixels) == (black, white)


def test_heat_colours_are_never_grey_or_magenta() -> None:
    colours = burn.heat_colours(np.linspace(0.0, 1.0, 101))
    spread = colours.max(axis=-1) - colours.min(axis=-1)
    assert spread.min() > 150
    assert not ((colours[:, 0] > 200) & (colours[:, 1] < 60) & (colours[:, 2] > 200)).any()


def test_text_band_fits_and_substitutes_dashes() -> None:
    band = burn.text_band(["A \u2014 B", "x" * 300], 200)
    assert band.shape[1] == 200 and band.dtype == np.uint8 and band.any()
    assert np.array_equal(burn.text_band(["A \u2014 B"], 300), burn.text_band(["A - B"], 300))
    with pytest.raises(ValueError, match="lines is empty"):
        burn.text_band([], 100)
