"""Tests for models.lab.baselines: trivial detectors on synthetic volumes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.lab.baselines import (
    BASELINES,
    baseline_heatmaps,
    difference_of_gaussians,
    raw_intensity,
    smoothed_intensity,
)

SPACING = 0.5  # mm


def _volume(offset: float = 0.0, *, air_border: int = 0, seed: int = 0) -> np.ndarray:
    """(5, 80, 96) tissue at 0.4 with mild noise and a bright 8 mm blob at (2, 40, 60)."""
    rng = np.random.default_rng(seed)
    vol = 0.4 + 0.01 * rng.standard_normal((5, 80, 96))
    zz, yy, xx = np.mgrid[0:5, 0:80, 0:96]
    blob = ((yy - 40) ** 2 + (xx - 60) ** 2) * SPACING**2 <= 4.0**2
    vol = vol + 0.15 * blob * (zz == 2)
    vol = vol + offset
    if air_border:
        vol[:, :, :air_border] = 0.0
    return vol.astype(np.float32)


@pytest.mark.parametrize("name", list(BASELINES))
def test_baseline_peaks_at_the_blob(name: str) -> None:
    vol = _volume(air_border=10)
    heat = BASELINES[name](vol, pixel_spacing_mm=SPACING)
    assert heat.shape == vol.shape and heat.dtype == np.float32
    assert np.isfinite(heat).all()
    z, y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert z == 2
    assert np.hypot(y - 40, x - 60) * SPACING <= 4.0
    # air scores 0, like the model's heatmaps
    assert np.all(heat[:, :, :10] == 0.0)


def test_dog_ignores_a_uniform_brightness_offset() -> None:
    base = difference_of_gaussians(_volume(), pixel_spacing_mm=SPACING)
    shifted = difference_of_gaussians(_volume(0.3), pixel_spacing_mm=SPACING)
    np.testing.assert_allclose(shifted, base, atol=1e-5)
    # with air around the tissue too: only the tissue is shifted, and the skin line stays flat
    base = difference_of_gaussians(_volume(air_border=12), pixel_spacing_mm=SPACING)
    vol = _volume(air_border=12)
    vol[vol > 0] += 0.3
    np.testing.assert_allclose(difference_of_gaussians(vol, pixel_spacing_mm=SPACING), base,
                               atol=1e-5)
    edge = base[:, 20:60, 12:16]  # tissue next to the air: no skin-line response
    assert np.abs(edge).max() < 0.02


def test_raw_intensity_is_the_pixel_value_in_tissue() -> None:
    vol = _volume(air_border=5)
    heat = raw_intensity(vol, pixel_spacing_mm=SPACING)
    np.testing.assert_array_equal(heat[:, :, 5:], vol[:, :, 5:])


def test_smoothed_intensity_averages_tissue_only() -> None:
    vol = np.full((2, 60, 60), 0.5, np.float32)
    vol[:, :, :20] = 0.0  # air: neither darkens the tissue next to it nor scores
    heat = smoothed_intensity(vol, pixel_spacing_mm=SPACING, sigma_mm=4.0)
    np.testing.assert_allclose(heat[:, :, 20:], 0.5, atol=1e-5)
    assert np.all(heat[:, :, :20] == 0.0)
    # a bright speck is spread over its surroundings: its peak falls, its neighbours rise
    vol[0, 30, 40] = 1.0
    heat = smoothed_intensity(vol, pixel_spacing_mm=SPACING, sigma_mm=4.0)
    assert 0.5 < heat[0, 30, 40] < 0.6 and heat[0, 30, 44] > 0.5
    with pytest.raises(ValueError, match="sigma_mm must be > 0"):
        smoothed_intensity(vol, pixel_spacing_mm=SPACING, sigma_mm=0.0)


def test_dog_scales_are_in_mm() -> None:
    """The same physical blob gives the same response at two pixel spacings."""
    def blob_volume(spacing: float) -> np.ndarray:
        n = round(40.0 / spacing)
        yy, xx = np.mgrid[0:n, 0:n] * spacing
        vol = 0.4 + 0.15 * (((yy - 20) ** 2 + (xx - 20) ** 2) <= 3.0**2)
        return vol[None].astype(np.float32)

    fine = difference_of_gaussians(blob_volume(0.25), pixel_spacing_mm=0.25)
    coarse = difference_of_gaussians(blob_volume(0.5), pixel_spacing_mm=0.5)
    assert fine.max() == pytest.approx(coarse.max(), rel=0.05)


def test_baseline_heatmaps_and_specs() -> None:
    vol = _volume()
    maps = baseline_heatmaps(vol, pixel_spacing_mm=(SPACING, SPACING))
    assert set(maps) == set(BASELINES)
    spec = BASELINES["DoG 1-8 mm"].spec(tissue_level=0.02)
    assert spec["sigma_small_mm"] == 1.0 and spec["sigma_large_mm"] == 8.0
    json.dumps(spec)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="pixel_spacing_mm must be > 0"):
        raw_intensity(_volume(), pixel_spacing_mm=0.0)
    with pytest.raises(ValueError, match="sigma_small_mm < sigma_large_mm"):
        difference_of_gaussians(_volume(), pixel_spacing_mm=SPACING, sigma_small_mm=8.0,
                                sigma_large_mm=1.0)
    with pytest.raises(ValueError, match="volume must be"):
        raw_intensity(np.zeros(5), pixel_spacing_mm=SPACING)
