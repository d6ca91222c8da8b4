"""Tests for the completion spread and the expected completion (models.explain, Picard)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import ExpectedCompletion, Picard, VolumeScores
from models.explain import completion_spread, source_hole, window_origin
from models.heatmap import (
    HeatmapConfig,
    centred_mask,
    denormalize_windows,
    intensity_scale,
    normalize_windows,
    sliding_window_heatmap,
    sliding_window_maps,
)
from models.lab.phantom import make_phantom

SPACING = 0.4  # the test volume's pixel spacing, and the model grid of the `model` fixture


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> Picard:
    """The shipped weights on a 0.4 mm grid (stride 16), so the small test volume is scored
    on its own grid: these tests are about the maps, not the shipped geometry."""
    m = Picard.from_bundle()
    m.card.update(pixel_spacing_mm=SPACING, stride=16)
    return m


def test_a_coarser_model_grid_keeps_the_skin_line_scored() -> None:
    """A model on a 1 mm grid: air is set to 0 on the volume's own grid after resampling
    back, so tissue next to the skin keeps a score and a spread."""
    shipped = Picard.from_bundle()
    shipped.card.update(pixel_spacing_mm=1.0, stride=5)
    vol = make_phantom(seed=5, lesions=1, slices=1, rows=240, cols=200,
                       pixel_spacing_mm=SPACING).volume
    res = shipped.score_volume_with_spread(vol, pixel_spacing_mm=SPACING)
    air = vol <= shipped.card["tissue_level"]
    assert (res.heatmap[air] == 0).all() and (res.spread[air] == 0).all()
    from scipy import ndimage

    skin = ~air & ndimage.binary_dilation(air, np.ones((1, 7, 7), bool))  # within 3 px of air
    assert skin.any()
    assert (res.heatmap[skin] > 0).all() and (res.spread[skin] > 0).all()
    # tissue keeps exactly what the model grid gave it: nothing pulled down by air there
    unmasked = shipped.score_volume(vol, pixel_spacing_mm=SPACING, mask_background=False)
    np.testing.assert_array_equal(res.heatmap[~air], unmasked[~air])


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    return make_phantom(seed=3, lesions=1, slices=2, rows=112, cols=96,
                        pixel_spacing_mm=SPACING).volume


# ---------------------------------------------------------------------- array helpers


def test_completion_spread_is_the_mean_hole_std_in_the_given_units():
    comps = torch.zeros(2, 4, 1, 8, 8)
    comps[0, :, :, 2:6, 2:6] = torch.tensor([0.0, 1.0, 0.0, 1.0]).view(4, 1, 1, 1)  # std 0.5
    comps[1, :, :, 0, 0] = torch.tensor([5.0, -5.0, 5.0, -5.0]).view(4, 1)  # outside the hole
    mask = centred_mask(8, 4)
    np.testing.assert_allclose(completion_spread(comps, mask).numpy(), [0.5, 0.0])
    scaled = completion_spread(comps, mask, torch.tensor([0.5, 2.0]))
    np.testing.assert_allclose(scaled.numpy(), [0.25, 0.0])
    assert completion_spread(comps[:, :1], mask).abs().max() == 0  # M = 1: no spread


@pytest.mark.parametrize("mode", ["fixed", "window_minmax"])
def test_denormalize_inverts_normalize(mode):
    raw = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.6 + 0.2
    net = normalize_windows(raw, mode)
    torch.testing.assert_close(denormalize_windows(net, raw, mode), raw, atol=1e-6, rtol=0)
    # the slope: one network unit is intensity_scale image units
    torch.testing.assert_close(denormalize_windows(net + 1.0, raw, mode) - raw,
                               intensity_scale(raw, mode).view(-1, 1, 1, 1).expand_as(raw),
                               atol=1e-5, rtol=0)


def test_window_origin_is_centred_and_clamped():
    assert window_origin((100, 100), (50, 40), 64) == (18, 8)
    assert window_origin((100, 100), (0, 99), 64) == (0, 36)
    assert window_origin((64, 70), (30, 69), 64) == (0, 6)


def test_source_hole_on_the_same_and_a_finer_grid():
    hole = source_hole((10, 12), (10, 12), ((2, 5), (3, 9)))
    expected = np.zeros((10, 12), bool)
    expected[2:5, 3:9] = True
    np.testing.assert_array_equal(hole, expected)
    fine = source_hole((20, 24), (10, 12), ((2, 5), (3, 9)))  # each model pixel = 2x2
    np.testing.assert_array_equal(fine, np.kron(expected, np.ones((2, 2), bool)))


def test_sliding_window_maps_channels_match_the_heatmap():
    rng = np.random.default_rng(0)
    image = (0.3 + 0.4 * rng.random((48, 56))).astype(np.float32)
    image[:, 40:] = 0.0  # air: skipped windows take the nearest value in every channel
    cfg = HeatmapConfig(window=32, hole=16, stride=8)

    def scorer(windows, mask):
        return (windows * mask).sum(dim=(1, 2, 3))

    def mapper(raw, mask):
        s = scorer(normalize_windows(raw, cfg.intensity), mask)
        return torch.stack([s, 2 * s], dim=1)

    maps = sliding_window_maps(image, mapper, cfg, channels=2)
    heat = sliding_window_heatmap(image, scorer, cfg)
    assert maps.shape == (2, 48, 56) and maps.dtype == np.float32
    np.testing.assert_array_equal(maps[0], heat)
    np.testing.assert_allclose(maps[1], np.clip(2 * heat, 0, None), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- completion spread


def test_heatmap_equals_score_volume_and_spread_is_a_map(model, volume):
    res = model.score_volume_with_spread(volume, pixel_spacing_mm=SPACING)
    assert isinstance(res, VolumeScores)
    np.testing.assert_array_equal(res.heatmap, model.score_volume(volume, pixel_spacing_mm=SPACING))
    assert model.last_stats.slices_scored == 2
    spread = res.spread
    assert spread is not None and spread.shape == volume.shape and spread.dtype == np.float32
    assert np.isfinite(spread).all() and spread.min() >= 0
    air = volume <= model.card["tissue_level"]
    assert air.any() and (spread[air] == 0).all() and (res.heatmap[air] == 0).all()
    tissue = spread[~air]
    assert tissue.min() > 0 and tissue.max() < 0.5  # slice intensity units, not [-1, 1]


def test_spread_grows_with_dropout_p(model, volume):
    one = volume[:1]
    spreads = {p: model.score_volume_with_spread(one, pixel_spacing_mm=SPACING, p=p).spread
               for p in (0.0, 0.1, 0.5)}
    np.testing.assert_allclose(spreads[0.0], 0.0, atol=1e-6)  # no dropout: M equal samples
    tissue = one > model.card["tissue_level"]
    assert 0 < spreads[0.1][tissue].mean() < spreads[0.5][tissue].mean()


def test_spread_follows_resampling_and_writes_into_outputs(model, volume):
    vol = (volume[:1] * 65535).astype(np.uint16)  # at 0.3 mm: scored on a 84 x 72 grid
    out = np.full(vol.shape, -1, np.float32)
    spread_out = np.full(vol.shape, -1, np.float32)
    res = model.score_volume_with_spread(vol, pixel_spacing_mm=0.3,
                                         value_scale=1 / 65535, out=out, spread_out=spread_out)
    assert res.heatmap is out and res.spread is spread_out
    assert np.isfinite(out).all() and (spread_out >= 0).all() and spread_out.max() > 0
    with pytest.raises(ValueError, match="out must be float32"):
        model.score_volume_with_spread(vol, pixel_spacing_mm=SPACING, value_scale=1 / 65535,
                                       spread_out=np.zeros((1, 2, 2), np.float32))


def test_fast_mode_gives_no_spread(model, volume):
    res = model.score_volume_with_spread(volume[:1], pixel_spacing_mm=SPACING, mode="fast")
    assert res.spread is None
    fast = model.score_volume(volume[:1], pixel_spacing_mm=SPACING, mode="fast")
    np.testing.assert_array_equal(res.heatmap, fast)
    assert model.spread_description("fast") is None


def test_spread_description(model):
    assert model.spread_description("exact") == {
        "quantity": "completion spread",
        "statistic": "mean over the hole of the per-pixel standard deviation over M completions",
        "space": "image", "M": model.card["M"], "p": model.card["dropout"]["p"],
        "mode": "exact", "units": "slice intensity (0..1)"}


# ---------------------------------------------------------------------- expected completion


def _window_of(result: ExpectedCompletion, window: int, hole: int) -> tuple[int, int]:
    rows, cols = np.nonzero(result.hole)
    a = (window - hole) // 2
    return int(rows.min()) - a, int(cols.min()) - a


def test_expected_completion_fills_only_the_hole_with_the_nearest_completion(model, volume):
    image = volume[0]
    window, hole, m = model.card["window"], model.card["hole"], 6
    res = model.expected_completion(image, (50, 40), pixel_spacing_mm=SPACING, m=m, seed=4)
    assert res.image.dtype == np.float32 and res.image.shape == image.shape and res.m == m
    assert res.hole.dtype == bool and res.hole.sum() == hole * hole
    rows, cols = np.nonzero(res.hole)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (34, 65, 24, 55)  # centred
    assert np.array_equal(res.image[~res.hole], image[~res.hole])
    assert not np.array_equal(res.image[res.hole], image[res.hole])

    # the same window, completed through the public API with the same seed
    y, x = _window_of(res, window, hole)
    raw = torch.from_numpy(image[y:y + window, x:x + window].copy())[None, None]
    net, mask = normalize_windows(raw), centred_mask(window, hole)
    space = "image" if model.card["metric"].endswith("image") else "feature"
    with torch.random.fork_rng():
        torch.manual_seed(4)
        dist = model.sample_distances(net, mask, m, space=space, share_conv1=False)[0]
    assert res.distance == pytest.approx(float(dist.min()), rel=1e-6)
    with torch.random.fork_rng():
        torch.manual_seed(4)
        comps = model.complete(net, mask, m)
    nearest = denormalize_windows(comps[:, int(dist.argmin())], raw)[0, 0].numpy()
    a = (window - hole) // 2
    np.testing.assert_allclose(res.image[res.hole],
                               nearest[a:a + hole, a:a + hole].ravel(), atol=1e-6)

    again = model.expected_completion(image, (50, 40), pixel_spacing_mm=SPACING, m=m, seed=4)
    assert np.array_equal(again.image, res.image) and again.distance == res.distance


def test_expected_completion_window_is_clamped_at_the_border(model, volume):
    res = model.expected_completion(volume[0], (0, 95), pixel_spacing_mm=SPACING, m=2)
    rows, cols = np.nonzero(res.hole)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (16, 47, 48, 79)


def test_expected_completion_keeps_stored_units(model, volume):
    image = volume[0]
    stored = np.round(image * 4000).astype(np.uint16)
    with pytest.raises(ValueError, match="value_scale"):
        model.expected_completion(stored, (50, 40), pixel_spacing_mm=SPACING)
    res = model.expected_completion(stored, (50, 40), pixel_spacing_mm=SPACING,
                                    value_scale=1 / 4000, m=3)
    ref = model.expected_completion(stored / 4000, (50, 40), pixel_spacing_mm=SPACING, m=3)
    assert np.array_equal(res.hole, ref.hole)
    assert np.array_equal(res.image[~res.hole], stored[~res.hole].astype(np.float32))
    np.testing.assert_allclose(res.image[res.hole], ref.image[ref.hole] * 4000, rtol=1e-4)


def test_expected_completion_on_another_pixel_spacing(model, volume):
    image = volume[0]
    res = model.expected_completion(image, (50, 40), pixel_spacing_mm=0.3, m=3)
    assert res.image.shape == image.shape
    assert np.array_equal(res.image[~res.hole], image[~res.hole])
    side = model.card["hole"] * SPACING / 0.3  # the same physical hole, ~42.7 px
    rows, cols = np.nonzero(res.hole)
    assert abs((rows.max() - rows.min() + 1) - side) <= 1.5
    assert abs((cols.max() - cols.min() + 1) - side) <= 1.5
    assert abs(rows.mean() - 50) <= 2 and abs(cols.mean() - 40) <= 2
    assert np.isfinite(res.distance) and res.distance >= 0
    assert 0 <= res.image[res.hole].min() and res.image[res.hole].max() <= 1


def test_expected_completion_validates(model, volume):
    with pytest.raises(ValueError, match="center_rc must lie inside"):
        model.expected_completion(volume[0], (112, 0), pixel_spacing_mm=SPACING)
    with pytest.raises(ValueError, match="image must be 2D"):
        model.expected_completion(volume, (1, 1), pixel_spacing_mm=SPACING)
    with pytest.raises(ValueError, match="m must be >= 1"):
        model.expected_completion(volume[0], (1, 1), pixel_spacing_mm=SPACING, m=0)
