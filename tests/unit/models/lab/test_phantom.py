"""Tests for models.lab.phantom."""

from __future__ import annotations

import numpy as np
import pytest

from models.lab.phantom import make_phantom, power_law_noise

SMALL = dict(slices=8, rows=160, cols=128, pixel_spacing_mm=0.4, lesion_diameter_mm=(5.0, 15.0))


def test_shape_dtype_range_and_air() -> None:
    p = make_phantom(seed=1, lesions=1, **SMALL)
    assert p.volume.shape == (8, 160, 128)
    assert p.volume.dtype == np.float32
    assert p.lesion_mask.shape == p.volume.shape and p.lesion_mask.dtype == bool
    assert p.breast_mask.shape == (160, 128) and p.breast_mask.dtype == bool
    assert 0.0 <= float(p.volume.min()) and float(p.volume.max()) <= 1.0
    assert np.all(p.volume[:, ~p.breast_mask] == 0.0)
    tissue = p.volume[:, p.breast_mask]
    assert float(tissue.mean()) > 0.15
    # air on the far (nipple) side, tissue at the chest wall for L
    assert not p.breast_mask[:, -1].any() and p.breast_mask[:, 0].any()
    assert (p.pixel_spacing_mm, p.slice_thickness_mm) == (0.4, 1.0)


def test_deterministic_from_seed() -> None:
    a = make_phantom(seed=7, lesions=2, calcifications=True, **SMALL)
    b = make_phantom(seed=7, lesions=2, calcifications=True, **SMALL)
    c = make_phantom(seed=8, lesions=2, calcifications=True, **SMALL)
    np.testing.assert_array_equal(a.volume, b.volume)
    np.testing.assert_array_equal(a.lesion_mask, b.lesion_mask)
    assert a.lesions == b.lesions
    assert not np.array_equal(a.volume, c.volume)


@pytest.mark.parametrize("view", ["CC", "MLO"])
def test_laterality_mirrors(view: str) -> None:
    left = make_phantom(seed=3, lesions=1, laterality="L", view=view, **SMALL)
    right = make_phantom(seed=3, lesions=1, laterality="R", view=view, **SMALL)
    np.testing.assert_array_equal(right.volume, left.volume[:, :, ::-1])
    np.testing.assert_array_equal(right.lesion_mask, left.lesion_mask[:, :, ::-1])
    np.testing.assert_array_equal(right.breast_mask, left.breast_mask[:, ::-1])
    assert right.lesions[0]["center_zyx"][2] == pytest.approx(127 - left.lesions[0]["center_zyx"][2])
    assert right.laterality == "R" and left.laterality == "L"


def test_mlo_has_bright_pectoral_in_upper_chest_wall_corner() -> None:
    p = make_phantom(seed=4, lesions=0, view="MLO", density=0.2, **SMALL)
    corner = p.volume[:, :10, :10].mean()
    middle = p.volume[:, 70:90, 40:60].mean()
    assert corner > middle + 0.1
    cc = make_phantom(seed=4, lesions=0, view="CC", density=0.2, **SMALL)
    assert not cc.breast_mask[0, 0]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_lesions_inside_breast_and_denser(seed: int) -> None:
    p = make_phantom(seed=seed, lesions=2, calcifications=seed % 2 == 0, **SMALL)
    assert p.lesion_mask.any()
    assert not np.any(p.lesion_mask & ~p.breast_mask[None])
    assert len(p.lesions) == 2 + (seed % 2 == 0)
    for les in p.lesions:
        z, y, x = (int(round(c)) for c in les["center_zyx"])
        assert p.breast_mask[y, x]
        if les["kind"] != "calcifications":
            assert 5.0 <= les["diameter_mm"] <= 15.0
            assert p.lesion_mask[z, y, x]
    # masses are brighter than the tissue around them
    normal = make_phantom(seed=seed, lesions=0, **SMALL)
    assert p.volume[p.lesion_mask].mean() > normal.volume[p.lesion_mask].mean() + 0.03


def test_mass_spans_several_slices() -> None:
    p = make_phantom(seed=11, lesions=1, slices=24, rows=200, cols=160, pixel_spacing_mm=0.4,
                     lesion_diameter_mm=(12.0, 12.0))
    per_slice = p.lesion_mask.any(axis=(1, 2))
    assert 5 <= per_slice.sum() <= 13


def test_no_lesions_gives_empty_mask() -> None:
    p = make_phantom(seed=5, lesions=0, **SMALL)
    assert not p.lesion_mask.any() and p.lesions == []


def test_density_controls_brightness() -> None:
    fatty = make_phantom(seed=6, lesions=0, density=0.1, **SMALL)
    dense = make_phantom(seed=6, lesions=0, density=0.9, **SMALL)
    m = fatty.breast_mask
    assert dense.volume[:, m].mean() > fatty.volume[:, m].mean() + 0.05


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="laterality"):
        make_phantom(laterality="X", **SMALL)
    with pytest.raises(ValueError, match="view"):
        make_phantom(view="ML", **SMALL)
    with pytest.raises(ValueError, match="density"):
        make_phantom(density=1.5, **SMALL)


def test_power_law_noise_spectrum_slope() -> None:
    rng = np.random.default_rng(0)
    n = power_law_noise((256, 256), rng, beta=3.0)
    assert n.dtype == np.float32
    assert abs(float(n.mean())) < 1e-4 and abs(float(n.std()) - 1.0) < 1e-3
    power = np.abs(np.fft.fft2(n)) ** 2
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(256), np.fft.fftfreq(256), indexing="ij"))
    low = power[(f > 0.02) & (f < 0.03)].mean()
    high = power[(f > 0.2) & (f < 0.3)].mean()
    slope = np.log(high / low) / np.log(0.25 / 0.025)
    assert -3.5 < slope < -2.5
