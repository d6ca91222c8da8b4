"""The objects for readers without SEG/PM support, and the second-opinion series, in OHIF.

Same study as ``test_ohif.py`` (scored with ``--objects all``): the burned-in key images and
the expected-tissue series are Secondary Capture images any viewer shows; the spread map is
a second Parametric Map. Screenshots are kept next to the others.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dicom_node.encode.display import PREDICTION_RGB
from tests.viewer import ohif_page as ui
from tests.viewer.conftest import ScoredStudy

pytestmark = [pytest.mark.viewer, pytest.mark.slow]


def _inside(rgb: np.ndarray) -> np.ndarray:
    """The viewport without its margins, where OHIF draws its own coloured text and the
    cine control."""
    h, w = rgb.shape[:2]
    return rgb[int(0.15 * h):int(0.9 * h), int(0.05 * w):int(0.95 * w)]


@pytest.fixture(scope="module")
def page(browser: Any, viewer: Any, scored_study: ScoredStudy) -> Iterator[Any]:
    page = browser.new_page()
    page.add_init_script(
        "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']))")
    page.display_sets = ui.open_study(page, viewer.url, scored_study.study_uid,
                                      scored_study.viewable_series_count())
    yield page
    page.close()


def test_key_image_shows_heatmap_outline_and_warning(page: Any, scored_study: ScoredStudy,
                                                      artefacts: Path) -> None:
    """A key image is a picture: breast, graded heatmap colours, the magenta outline and a
    text band, in any viewer (here as a plain image, no overlay machinery)."""
    assert scored_study.objects("KEYIMG_"), "no key images were made"
    sets = page.display_sets
    (viewport,) = ui.grid(page, 1, 1)
    ui.show(page, {viewport: ui.find(sets, "OT", "PICARD key images")})
    ui.wait_for_image(page, viewport)
    rgb = ui.viewport_image(page, viewport, artefacts / "06-key-image.png")
    coloured, hues = ui.hue_histogram(rgb)
    assert coloured > 0.02, f"only {coloured:.1%} of the key image is coloured"
    assert (hues > 0.03).sum() >= 3, f"heatmap not graded: {np.round(hues, 2)}"
    assert ui.colour_pixels(rgb, PREDICTION_RGB, tolerance=50) > 20, "no magenta outline"
    grey = rgb.mean(axis=-1)
    assert grey.std() > 20, "the key image is blank"


def test_expected_tissue_is_a_grey_slice(page: Any, scored_study: ScoredStudy,
                                         artefacts: Path) -> None:
    """The model-expected tissue shows as a windowed greyscale slice (the source's window)."""
    assert scored_study.objects("EXPECTED_"), "no expected-tissue images were made"
    sets = page.display_sets
    (viewport,) = ui.grid(page, 1, 1)
    ui.show(page, {viewport: ui.find(sets, "OT", "PICARD expected")})
    ui.wait_for_image(page, viewport)
    rgb = ui.viewport_image(page, viewport, artefacts / "07-expected-tissue.png")
    grey = rgb.mean(axis=-1)
    assert grey.std() > 20, "the expected-tissue image is blank"
    lit = float((grey > 40).mean())
    assert 0.1 < lit < 0.95, f"{lit:.0%} of the viewport is lit"
    coloured, _ = ui.hue_histogram(_inside(rgb))
    assert coloured < 0.005, "the expected-tissue image should be greyscale"


def test_spread_map_is_a_second_heatmap(page: Any, scored_study: ScoredStudy,
                                        artefacts: Path) -> None:
    """OHIF shows the completion-spread map as a heatmap over the source, like the scores."""
    assert scored_study.objects("SPREAD_"), "no spread map was made"
    sets = page.display_sets
    (viewport,) = ui.grid(page, 1, 1)
    spread = ui.find(sets, "PMAP", "PICARD spread")
    ui.show(page, {viewport: spread})
    ui.wait_for_volume(page, spread)
    slices = ui.volume_slices(page, viewport)
    assert slices[-1]["type"] == "Float32Array"
    assert max(slices[-1]["means"]) > 0, "the spread map is empty"
    frame = int(np.argmax(slices[-1]["means"])) + 1
    ui.go_to_frame(page, viewport, slices[0]["frames"][frame - 1])
    rgb = ui.viewport_image(page, viewport, artefacts / "08-spread-map.png")
    coloured, _ = ui.hue_histogram(rgb)
    assert coloured > 0.02, f"only {coloured:.1%} of the viewport is coloured"
