"""What a radiologist sees in OHIF 3.13.2: the scored study, object by object, in a real browser.

A synthetic exam goes through the real pipeline (``picard-node synth``, ``picard-node score``),
the exam, its ground truth and the results go into Orthanc, and OHIF (pinned from npm, served
in front of Orthanc's DICOMweb) shows them in headless chromium. The tests run in order on
one page: source image, then a 2 x 2 grid (ground-truth SEG | heatmap / predicted SEG | SR),
then a second study whose frames run against the slice normal. Screenshots are kept (see
``conftest.artefacts_dir``); ``PICARD_UPDATE_SCREENSHOT=1`` also refreshes the README's
``docs/ohif-study.png``.

Run alone: ``.venv/bin/python -m pytest tests/viewer -q`` (after ``make viewer-deps``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image

from dicom_node.encode.display import PREDICTION_RGB, TRUTH_RGB
from tests.helpers.dicom_data import seg_to_volume, source_frame_index
from tests.helpers.servers import REPO_ROOT
from tests.viewer import ohif_page as ui
from tests.viewer.conftest import ScoredStudy

pytestmark = [pytest.mark.viewer, pytest.mark.slow]

#: The README's screenshot (written when PICARD_UPDATE_SCREENSHOT=1).
DOCS_SCREENSHOT = REPO_ROOT / "docs" / "ohif-study.png"


@pytest.fixture(scope="module")
def page(browser: Any, viewer: Any, scored_study: ScoredStudy) -> Iterator[Any]:
    """One page on the scored study; the onboarding tour marked as seen."""
    page = browser.new_page()
    page.add_init_script(
        "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']))")
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.display_sets = ui.open_study(page, viewer.url, scored_study.study_uid,
                                      scored_study.viewable_series_count())
    page.page_errors = errors
    yield page
    page.close()


@pytest.fixture(scope="module")
def layout(page: Any) -> dict[str, str]:
    """The 2 x 2 grid: truth SEG, heatmap, predicted SEG, SR (viewport ids by role)."""
    sets = page.display_sets
    ids = ui.grid(page, 2, 2)
    roles = dict(zip(("truth", "heatmap", "lesions", "findings"), ids))
    ui.activate(page, roles["heatmap"])
    ui.show(page, {roles["truth"]: ui.find(sets, "SEG", "Synthetic ground truth"),
                   roles["heatmap"]: ui.find(sets, "PMAP", "PICARD heatmap"),
                   roles["lesions"]: ui.find(sets, "SEG", "PICARD lesions"),
                   roles["findings"]: ui.find(sets, "SR", "PICARD findings")})
    ui.wait_for_volume(page, ui.find(sets, "PMAP", "PICARD heatmap"))
    page.wait_for_function(
        """ids => ids.every(id => window.services.segmentationService.getSegmentation(id))""",
        arg=[ui.find(sets, "SEG", "PICARD"), ui.find(sets, "SEG", "Synthetic")],
        timeout=ui.LOAD_TIMEOUT_S * 1000)
    page.wait_for_function(
        """() => window.cornerstoneTools.annotation.state.getAllAnnotations()
                   .some(a => a.metadata.toolName === 'DICOMSRDisplay')""",
        timeout=ui.LOAD_TIMEOUT_S * 1000)
    return roles


def _pm_frames(path: Path, sources: list[pydicom.Dataset]) -> dict[int, np.ndarray]:
    """Stored values of a Parametric Map by 1-based source frame."""
    pm = pydicom.dcmread(path)
    pixels = pm.pixel_array.reshape(int(pm.NumberOfFrames), pm.Rows, pm.Columns)
    return {source_frame_index(item, sources) + 1: pixels[i]
            for i, item in enumerate(pm.PerFrameFunctionalGroupsSequence)}


def _assert_heatmap_follows_frames(slices: list[dict], pm_path: Path, source: Path) -> None:
    """Each slice of OHIF's heatmap volume holds the map of the source frame shown there."""
    header = pydicom.dcmread(source, stop_before_pixels=True)
    expected = _pm_frames(pm_path, [header])
    source_volume, heat_volume = slices
    assert heat_volume["type"] == "Float32Array"
    frames = source_volume["frames"]
    assert sorted(frames) == sorted(expected)
    # OHIF multiplies stored values by 100
    want = [float(expected[f].astype(np.float64).mean()) * 100 for f in frames]
    np.testing.assert_allclose(heat_volume["means"], want, rtol=1e-4, atol=1e-3)


def test_source_image_is_not_blank(page: Any, artefacts: Path) -> None:
    """No "Invalid VOI LUT function": the BTO shows as a grey image with a proper window."""
    viewport = page.evaluate("() => window.services.viewportGridService.getActiveViewportId()")
    rgb = ui.viewport_image(page, viewport, artefacts / "01-source.png")
    grey = rgb.mean(axis=-1)
    assert grey.std() > 20, "the source image is blank"
    lit = float((grey > 40).mean())
    assert 0.15 < lit < 0.95, f"{lit:.0%} of the viewport is lit"
    voi = page.evaluate(
        """id => window.services.cornerstoneViewportService.getCornerstoneViewport(id)
                  .getProperties().voiRange""", viewport)
    assert voi["upper"] > voi["lower"]
    assert not [e for e in page.page_errors if "VOI" in e]


def test_heatmap_is_graded_over_the_breast(page: Any, layout: dict[str, str],
                                           scored_study: ScoredStudy, artefacts: Path) -> None:
    viewport = layout["heatmap"]
    slices = ui.volume_slices(page, viewport)
    _assert_heatmap_follows_frames(slices, scored_study.objects("PM_")[0],
                                   scored_study.files[0])
    # the frame of the top finding (highest score)
    sr = hd.sr.srread(scored_study.objects("SR_")[0])
    group = sr.content.get_planar_roi_measurement_groups()[0]
    peak = int(group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedFrameNumber)
    assert ui.go_to_frame(page, viewport, peak) == peak
    rgb = ui.viewport_image(page, viewport, artefacts / "02-heatmap.png")
    coloured, hues = ui.hue_histogram(rgb)
    assert coloured > 0.05, f"only {coloured:.1%} of the viewport is coloured"
    assert (hues > 0.03).sum() >= 3, f"not graded: hue histogram {np.round(hues, 2)}"


def test_segmentations_on_their_frames_in_their_colours(
        page: Any, layout: dict[str, str], scored_study: ScoredStudy, artefacts: Path) -> None:
    sources = [pydicom.dcmread(scored_study.files[0], stop_before_pixels=True)]
    truth_path = next(p for p in scored_study.files if "truth" in p.parts)
    cases = (("lesions", scored_study.objects("SEG_")[0], "PICARD lesions", PREDICTION_RGB),
             ("truth", truth_path, "Synthetic ground truth", TRUTH_RGB))
    for role, path, description, rgb in cases:
        mask = seg_to_volume(pydicom.dcmread(path), sources)
        in_file = {f + 1: int(n) for f, n in enumerate(mask.sum(axis=(1, 2))) if n}
        segmentation = ui.find(page.display_sets, "SEG", description)
        drawn = {f: n for f, n in ui.labelmap_pixels(page, segmentation).items() if n}
        assert drawn == in_file, f"{role}: frames/pixels drawn differ from the SEG file"
        colour = ui.segment_colour(page, layout[role], segmentation)
        assert colour[:3] == pytest.approx(list(rgb), abs=3), role
        busiest = max(in_file, key=in_file.get)
        assert ui.go_to_frame(page, layout[role], busiest) == busiest
        shot = ui.viewport_image(page, layout[role], artefacts / f"03-seg-{role}.png")
        assert ui.colour_pixels(shot, rgb, tolerance=70) > 50, f"{role}: colour not drawn"
        empty = set(range(1, mask.shape[0] + 1)) - set(in_file)
        if empty:
            frame = min(empty)
            assert ui.go_to_frame(page, layout[role], frame) == frame
            shot = ui.viewport_image(page, layout[role])
            assert ui.colour_pixels(shot, rgb, tolerance=40) < 20, f"{role} drawn on {frame}"
            ui.go_to_frame(page, layout[role], busiest)


def test_sr_findings_on_their_frames(page: Any, layout: dict[str, str],
                                     scored_study: ScoredStudy, artefacts: Path) -> None:
    sr = hd.sr.srread(scored_study.objects("SR_")[0])
    groups = sr.content.get_planar_roi_measurement_groups()
    frames = [int(g.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedFrameNumber)
              for g in groups]
    drawn = ui.sr_annotations(page)
    assert sorted(a["frame"] for a in drawn) == sorted(frames)
    for annotation in drawn:
        (line,) = annotation["labels"]
        assert line.startswith("Max ") and line.endswith(" {score}"), line
    viewport = layout["findings"]
    assert ui.current_frame(page, viewport) in frames
    assert ui.go_to_frame(page, viewport, frames[0]) == frames[0]
    shot = ui.viewport_image(page, viewport, artefacts / "04-sr.png")
    assert ui.colour_pixels(shot, (0, 255, 0), tolerance=80) > 30, "no outline drawn"
    # the README's picture: the whole grid, every viewport on the top finding's frame
    for role in ("truth", "heatmap", "lesions"):
        ui.go_to_frame(page, layout[role], frames[0])
    whole = artefacts / "ohif-study.png"
    page.screenshot(path=str(whole))
    if os.environ.get("PICARD_UPDATE_SCREENSHOT") == "1":
        image = Image.open(whole).convert("RGB")
        image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.LANCZOS)
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        image.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(
            DOCS_SCREENSHOT, optimize=True)
    assert not page.page_errors, page.page_errors


def test_heatmap_follows_frames_running_against_the_normal(
        browser: Any, viewer: Any, scored_study: ScoredStudy, artefacts: Path) -> None:
    """OHIF stacks heatmap frames along the normal, whatever the source's frame order."""
    page = browser.new_page()
    try:
        sets = ui.open_study(page, viewer.url, scored_study.reversed_study_uid,
                             scored_study.series_count(scored_study.reversed_files))
        viewport = page.evaluate(
            "() => window.services.viewportGridService.getActiveViewportId()")
        pm_uid = ui.find(sets, "PMAP")
        ui.show(page, {viewport: pm_uid})
        ui.wait_for_volume(page, pm_uid)
        slices = ui.volume_slices(page, viewport)
        frames = slices[0]["frames"]
        assert frames == sorted(frames, reverse=True), "source frames do not run backwards"
        pm_path = next(p for p in scored_study.reversed_files if p.name.startswith("result_OT"))
        _assert_heatmap_follows_frames(slices, pm_path, scored_study.reversed_files[0])
        ui.viewport_image(page, viewport, artefacts / "05-heatmap-reversed-frames.png")
    finally:
        page.close()
