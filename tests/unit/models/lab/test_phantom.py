"""Tests for models.lab.phantom (and its anatomy, lesion and realism helpers)."""

from __future__ import annotations

import numpy as np
import pytest

from models.lab.phantom import (
    BIRADS_DENSITY,
    make_phantom,
    power_law_noise,
    realism_report,
)
from models.lab.phantom_anatomy import TubeSet, render_tubes
from models.lab.phantom_realism import fit_power_law, radial_power_spectrum
from models.lab.phantom_texture import SpectralField

SMALL = {"slices": 8, "rows": 160, "cols": 128, "pixel_spacing_mm": 0.4,
         "lesion_diameter_mm": (5.0, 15.0)}
# a breast big enough for texture measurements, still quick at 0.4 mm
MEDIUM = {"slices": 16, "rows": 260, "cols": 200, "pixel_spacing_mm": 0.4}


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
    assert p.info["generator"] and p.info["density"] == 0.5


def test_default_shape_and_single_slice() -> None:
    p = make_phantom(seed=0, lesions=0, slices=1, rows=64, cols=48, pixel_spacing_mm=0.8)
    assert p.volume.shape == (1, 64, 48)
    assert make_phantom.__kwdefaults__["slices"] is None  # 32 unless physical mode


def test_deterministic_from_seed() -> None:
    a = make_phantom(seed=7, lesions=2, calcifications=True, distortion=True, **SMALL)
    b = make_phantom(seed=7, lesions=2, calcifications=True, distortion=True, **SMALL)
    c = make_phantom(seed=8, lesions=2, calcifications=True, distortion=True, **SMALL)
    np.testing.assert_array_equal(a.volume, b.volume)
    np.testing.assert_array_equal(a.lesion_mask, b.lesion_mask)
    assert a.lesions == b.lesions
    assert not np.array_equal(a.volume, c.volume)


def test_normal_tissue_does_not_depend_on_lesions() -> None:
    normal = make_phantom(seed=12, lesions=0, **MEDIUM)
    with_mass = make_phantom(seed=12, lesions=1, lesion_diameter_mm=(8.0, 8.0), **MEDIUM)
    _, cy, cx = with_mass.lesions[0]["center_zyx"]
    yy, xx = np.ogrid[:260, :200]
    far = (yy - cy) ** 2 + (xx - cx) ** 2 > (40.0 / 0.4) ** 2
    np.testing.assert_array_equal(normal.volume[:, far], with_mass.volume[:, far])
    assert not np.array_equal(normal.volume, with_mass.volume)


@pytest.mark.parametrize("view", ["CC", "MLO"])
def test_laterality_mirrors(view: str) -> None:
    left = make_phantom(seed=3, lesions=1, laterality="L", view=view, **SMALL)
    right = make_phantom(seed=3, lesions=1, laterality="R", view=view, **SMALL)
    np.testing.assert_array_equal(right.volume, left.volume[:, :, ::-1])
    np.testing.assert_array_equal(right.lesion_mask, left.lesion_mask[:, :, ::-1])
    np.testing.assert_array_equal(right.breast_mask, left.breast_mask[:, ::-1])
    np.testing.assert_array_equal(right.pectoral_mask, left.pectoral_mask[:, ::-1])
    x_left = left.lesions[0]["center_zyx"][2]
    assert right.lesions[0]["center_zyx"][2] == pytest.approx(127 - x_left)
    assert right.laterality == "R" and left.laterality == "L"


def test_mlo_has_bright_pectoral_in_upper_chest_wall_corner() -> None:
    p = make_phantom(seed=4, lesions=0, view="MLO", density=0.2, **SMALL)
    assert p.pectoral_mask is not None and p.pectoral_mask[:10, :10].all()
    corner = p.volume[:, :10, :10].mean()
    middle = p.volume[:, 70:90, 40:60].mean()
    assert corner > middle + 0.1
    cc = make_phantom(seed=4, lesions=0, view="CC", density=0.2, **SMALL)
    assert not cc.breast_mask[0, 0] and not cc.pectoral_mask.any()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_lesions_inside_breast(seed: int) -> None:
    p = make_phantom(seed=seed, lesions=2, calcifications=seed % 2 == 0, **SMALL)
    assert p.lesion_mask.any()
    assert not np.any(p.lesion_mask & ~p.breast_mask[None])
    assert len(p.lesions) == 2 + (seed % 2 == 0)
    for les in p.lesions:
        z, y, x = (round(c) for c in les["center_zyx"])
        assert p.breast_mask[y, x]
        if les["kind"] != "calcifications":
            assert 5.0 <= les["diameter_mm"] <= 15.0
            assert p.lesion_mask[z, y, x]
            assert {"shape", "margin", "diameter_z_mm", "attenuation_excess"} <= set(les)


def test_masses_conspicuous_in_fatty_tissue() -> None:
    kw = dict(MEDIUM, density=0.1, lesion_diameter_mm=(10.0, 14.0))
    for seed in (0, 1):
        p = make_phantom(seed=seed, lesions=1, **kw)
        normal = make_phantom(seed=seed, lesions=0, **kw)
        m = p.lesion_mask
        assert p.volume[m].mean() > normal.volume[m].mean() + 0.1


def test_masses_iso_dense_in_dense_tissue() -> None:
    # the old generator put 99.5 % of the mass core above the 99th tissue percentile
    fractions = []
    for seed in (0, 1, 2):
        p = make_phantom(seed=seed, lesions=1, birads="d", lesion_diameter_mm=(10.0, 14.0),
                         **MEDIUM)
        fractions.append(realism_report(p)["mass_core_above_p99"])
    assert np.mean(fractions) < 0.5


def test_mass_spans_several_slices_in_3d() -> None:
    p = make_phantom(seed=11, lesions=1, slices=24, rows=200, cols=160, pixel_spacing_mm=0.4,
                     lesion_diameter_mm=(12.0, 12.0))
    les = p.lesions[0]
    per_slice = p.lesion_mask.any(axis=(1, 2))
    assert 7 <= per_slice.sum() <= 13
    assert per_slice.sum() == pytest.approx(les["diameter_z_mm"] / p.slice_thickness_mm, abs=2)


def test_spiculated_mass_has_3d_spicules() -> None:
    kw = dict(MEDIUM, density=0.05, lesion_diameter_mm=(10.0, 10.0))
    seed = 5  # draws a spiculated mass
    p = make_phantom(seed=seed, lesions=1, **kw)
    assert p.lesions[0]["kind"] == "spiculated" and p.lesions[0]["spicules"] >= 10
    normal = make_phantom(seed=seed, lesions=0, **kw)
    diff = np.abs(p.volume - normal.volume) > 0.05
    body = p.lesion_mask
    # spicules change tissue outside the body, on slices above and below it as well
    z_body = np.flatnonzero(body.any(axis=(1, 2)))
    outside = diff & ~body
    z_spic = np.flatnonzero(outside.any(axis=(1, 2)))
    assert outside.sum() > 50
    assert z_spic.min() < z_body.min() or z_spic.max() > z_body.max()


def test_calcifications_and_distortion_are_marked() -> None:
    p = make_phantom(seed=5, lesions=0, calcifications=True, distortion=True, **MEDIUM)
    kinds = [les["kind"] for les in p.lesions]
    assert kinds == ["calcifications", "distortion"]
    for les in p.lesions:
        _, y, x = (round(c) for c in les["center_zyx"])
        assert p.lesion_mask[:, y, x].any()
    assert p.lesions[1]["extent_mm"] > p.lesions[1]["diameter_mm"]
    # calcium is far brighter than tissue: the cluster holds the brightest voxels
    _z, y, x = (round(c) for c in p.lesions[0]["center_zyx"])
    r = int(p.lesions[0]["diameter_mm"] / 0.4)
    cluster = p.volume[:, max(0, y - r):y + r + 1, max(0, x - r):x + r + 1]
    tissue = p.volume[:, p.breast_mask]
    assert cluster.max() > np.percentile(tissue, 99.9) + 0.1


def test_no_lesions_gives_empty_mask() -> None:
    p = make_phantom(seed=5, lesions=0, **SMALL)
    assert not p.lesion_mask.any() and p.lesions == []


def test_density_and_birads_control_brightness() -> None:
    fatty = make_phantom(seed=6, lesions=0, density=0.1, **SMALL)
    dense = make_phantom(seed=6, lesions=0, density=0.9, **SMALL)
    m = fatty.breast_mask
    assert dense.volume[:, m].mean() > fatty.volume[:, m].mean() + 0.05
    a = make_phantom(seed=6, lesions=0, birads="a", **SMALL)
    d = make_phantom(seed=6, lesions=0, birads="D", **SMALL)
    assert BIRADS_DENSITY["a"][0] <= a.info["density"] <= BIRADS_DENSITY["a"][1]
    assert BIRADS_DENSITY["d"][0] <= d.info["density"] <= BIRADS_DENSITY["d"][1]
    assert d.info["glandular_fraction"] > a.info["glandular_fraction"] + 0.1
    assert d.info["birads"] == "d"


def test_real_size_derives_field_of_view() -> None:
    p = make_phantom(seed=2, lesions=0, real_size=True, pixel_spacing_mm=0.8,
                     slice_thickness_mm=4.0)
    info = p.info
    assert 55.0 <= info["chest_wall_to_nipple_mm"] <= 150.0
    assert 80.0 <= info["width_mm"] <= 200.0
    assert 25.0 <= info["thickness_mm"] <= 85.0
    assert p.volume.shape[0] == round(info["thickness_mm"] / 4.0)
    assert p.volume.shape[2] * 0.8 > info["chest_wall_to_nipple_mm"]
    assert p.volume.shape[1] * 0.8 > info["width_mm"]
    # the breast fills its field of view; the outer slices are smaller (rounded periphery)
    tissue = (p.volume > 0).sum(axis=(1, 2))
    assert tissue[len(tissue) // 2] > tissue[0] and tissue[len(tissue) // 2] > tissue[-1]


def test_explicit_breast_size_in_given_field_of_view() -> None:
    p = make_phantom(seed=2, lesions=0, breast_size_mm=(60.0, 80.0), slices=4, rows=240,
                     cols=180, pixel_spacing_mm=0.5)
    assert p.volume.shape == (4, 240, 180)
    assert p.info["chest_wall_to_nipple_mm"] == pytest.approx(60.0)
    cols_with_tissue = np.flatnonzero(p.breast_mask.any(axis=0))
    assert cols_with_tissue.max() * 0.5 == pytest.approx(60.0, abs=2.0)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="laterality"):
        make_phantom(laterality="X", **SMALL)
    with pytest.raises(ValueError, match="view"):
        make_phantom(view="ML", **SMALL)
    with pytest.raises(ValueError, match="density"):
        make_phantom(density=1.5, **SMALL)
    with pytest.raises(ValueError, match="birads"):
        make_phantom(birads="e", **SMALL)
    with pytest.raises(ValueError, match="either density or birads"):
        make_phantom(birads="a", density=0.3, **SMALL)
    with pytest.raises(ValueError, match="sweep_angle_deg"):
        make_phantom(sweep_angle_deg=0.0, **SMALL)


def test_realism_report_keys_and_slice_exponent_near_three() -> None:
    p = make_phantom(seed=21, lesions=1, birads="c", lesion_diameter_mm=(8.0, 12.0), **MEDIUM)
    r = realism_report(p)
    assert {"slice_beta", "slice_beta_fine", "slice_beta_0p4mm", "slice_beta_band_cpmm",
            "masses", "mass_contrast", "mass_core_above_p99", "mass_texture_ratio", "density",
            "birads", "glandular_fraction", "dense_fraction", "breast_mm", "patches"} <= set(r)
    assert r["slice_beta_fine"] is None  # 0.4 mm pixels: no 0.5-3 cycles/mm band
    assert r["slice_beta_0p4mm"] == r["slice_beta"]
    assert r["patches"] > 0
    assert 2.4 < r["slice_beta"] < 3.6
    assert len(r["masses"]) == 1 and set(r["masses"][0]) >= {"contrast", "core_above_p99"}


def test_slice_exponent_near_three_at_0p1mm() -> None:
    p = make_phantom(seed=3, lesions=0, breast_size_mm=(45.0, 60.0), slices=6,
                     pixel_spacing_mm=0.1, density=0.4)
    r = realism_report(p)
    assert 2.4 < r["slice_beta"] < 3.6
    assert 2.4 < r["slice_beta_0p4mm"] < 3.6


def test_spectral_field_unit_variance_and_depth_coherence() -> None:
    field = SpectralField((128, 128), 0.4, 1.0, seed=1, beta=3.0, f_lo=1 / 64, split=0.5)
    lo0, hi0 = field.slice(0)
    lo1, hi1 = field.slice(1)
    total = np.concatenate([(lo0 + hi0).ravel(), (lo1 + hi1).ravel()])
    assert 0.5 < total.std() < 1.5
    # coarse structure persists from slice to slice, fine structure much less
    coherence_lo = np.corrcoef(lo0.ravel(), lo1.ravel())[0, 1]
    coherence_hi = np.corrcoef(hi0.ravel(), hi1.ravel())[0, 1]
    assert coherence_lo > 0.9 and coherence_hi < coherence_lo - 0.2
    # slices can be made in any order
    np.testing.assert_array_equal(field.slice(0)[0], lo0)


def test_render_tubes_cross_section() -> None:
    pts = np.array([[5.0, 10.0, x] for x in np.arange(2.0, 18.0, 0.1)])
    tubes = TubeSet(pts, np.full(len(pts), 1.0), np.full(len(pts), 1.0)).sorted_by_depth()
    on = render_tubes(tubes, 5.0, 1.0, (50, 50), 0.4)
    off = render_tubes(tubes, 9.0, 1.0, (50, 50), 0.4)
    assert on.max() == pytest.approx(1.0) and off.max() == 0.0
    width = (on[:, 25] > 0.5).sum() * 0.4
    assert width == pytest.approx(2.0, abs=0.5)


def test_power_law_fit_recovers_exponent() -> None:
    rng = np.random.default_rng(0)
    img = power_law_noise((512, 512), rng, beta=3.0, spacing=(0.1, 0.1))
    f, power, n = radial_power_spectrum([img], [np.ones_like(img, bool)], 0.1, 256)
    assert n > 0
    assert fit_power_law(f, power, (0.1, 3.0)) == pytest.approx(3.0, abs=0.25)


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
