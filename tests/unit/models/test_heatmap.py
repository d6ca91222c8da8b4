"""Tests for models.heatmap: window grid, skipping air, batching, score placement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import Picard
from models.bundle import official_card
from models.heatmap import (HeatmapConfig, centred_mask, normalize_windows, prepare_slice,
                            sliding_window_heatmap, upsample_scores, window_origins)
from models.networks import CompletionNetwork, Critic, he_normal_


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


class HoleMean:
    """A simple real scorer: mean of the hole pixels (in network units), records batches."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, windows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.batches.append(windows.shape[0])
        return (windows * mask).sum(dim=(1, 2, 3)) / mask.sum() + 1.0


def test_centred_mask_geometry():
    mask = centred_mask(32, 16)
    assert mask.shape == (1, 1, 32, 32) and mask.sum() == 256
    assert mask[0, 0, 8:24, 8:24].all() and mask[0, 0, :8].sum() == 0


def test_window_origins_cover_padded_length():
    assert window_origins(96, 32, 16).tolist() == [0, 16, 32, 48, 64]


def test_normalize_windows_modes():
    w = torch.tensor([0.25, 0.5, 0.75]).view(1, 1, 1, 3)
    torch.testing.assert_close(normalize_windows(w, "fixed"), torch.tensor([-0.5, 0.0, 0.5]).view(1, 1, 1, 3))
    torch.testing.assert_close(normalize_windows(w, "window_minmax"), torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 1, 3))
    with pytest.raises(ValueError, match="intensity mode must be one of"):
        normalize_windows(w, "zscore")


def test_config_validates():
    with pytest.raises(ValueError, match="window must be a positive multiple of 8"):
        HeatmapConfig(window=30)
    with pytest.raises(ValueError, match="hole must be in"):
        HeatmapConfig(window=32, hole=32)
    with pytest.raises(ValueError, match="intensity must be one of"):
        HeatmapConfig(intensity="zscore")


def test_upsample_scores_places_values_at_window_centres():
    grid = np.arange(12, dtype=np.float32).reshape(3, 4) + 1.0
    window, stride = 33, 16  # odd window: centre (window - 1) / 2 = 16 is a pixel
    heat = upsample_scores(grid, (70, 90), window=window, stride=stride)
    for i in range(3):
        for j in range(4):
            assert heat[i * stride + 16, j * stride + 16] == pytest.approx(grid[i, j], abs=1e-4)
    # between centres the values are interpolated, beyond the outermost ones held
    assert grid[0, 0] < heat[24, 24] < grid[1, 1]
    assert heat[0, 0] == pytest.approx(grid[0, 0], abs=1e-5)
    assert heat[69, 89] == pytest.approx(grid[2, 3], abs=1e-5)


def test_upsample_constant_grid_is_constant():
    heat = upsample_scores(np.full((2, 3), 2.5, np.float32), (40, 50), window=32, stride=8)
    np.testing.assert_allclose(heat, 2.5, rtol=1e-6)


def test_air_windows_skipped_and_take_the_nearest_score():
    image = np.zeros((64, 128), np.float32)
    image[:, :44] = 0.6  # tissue only on the left (chest wall side)
    scorer = HoleMean()
    cfg = HeatmapConfig(window=32, hole=16, stride=16, batch_size=3)
    heat = sliding_window_heatmap(image, scorer, cfg)
    assert heat.shape == image.shape
    # 3 x 7 windows; holes (columns x+8..x+24) with >= 50 % tissue: x = 0, 16 -> 6 windows
    assert sum(scorer.batches) == 6
    assert max(scorer.batches) <= 3
    assert heat[:, :30].min() > 1.0
    # skipped windows are not zeros pulling the skin line (columns ~40-44) down: beyond the
    # last scored window centre (column 31.5) the score is held, not interpolated to 0
    np.testing.assert_allclose(heat[:, 32:], heat[:, 32:33].repeat(96, axis=1), rtol=1e-5)
    assert heat[:, 40:44].min() > 1.0


def test_padding_mirrors_the_image_instead_of_adding_air():
    image = np.full((40, 40), 0.6, np.float32)  # tissue up to the bottom and right border
    cfg = HeatmapConfig(window=32, hole=16, stride=16)
    sw = prepare_slice(image, cfg)
    assert tuple(sw.padded.shape) == (48, 48)
    assert float(sw.padded.min()) == pytest.approx(0.6)  # no air edge at the padding
    assert (sw.fraction == 1.0).all()


def test_every_window_scored_when_threshold_zero():
    image = np.zeros((64, 64), np.float32)
    scorer = HoleMean()
    sliding_window_heatmap(image, scorer, HeatmapConfig(window=32, hole=16, stride=16,
                                                        min_tissue_fraction=0.0))
    assert sum(scorer.batches) == 9


def test_bright_spot_peaks_near_its_location():
    image = np.full((96, 96), 0.3, np.float32)
    image[60:76, 20:36] = 0.9
    heat = sliding_window_heatmap(image, HoleMean(), HeatmapConfig(window=32, hole=16, stride=8))
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert abs(y - 68) <= 6 and abs(x - 28) <= 6


def test_small_and_ragged_images_are_padded():
    scorer = HoleMean()
    cfg = HeatmapConfig(window=32, hole=16, stride=16, min_tissue_fraction=0.0)
    assert sliding_window_heatmap(np.full((20, 10), 0.5, np.float32), scorer, cfg).shape == (20, 10)
    assert sliding_window_heatmap(np.full((50, 41), 0.5, np.float32), scorer, cfg).shape == (50, 41)


def test_rejects_bad_image():
    cfg = HeatmapConfig(window=32, hole=16, stride=16)
    with pytest.raises(ValueError, match="image must be 2D"):
        sliding_window_heatmap(np.zeros((2, 32, 32), np.float32), HoleMean(), cfg)
    bad = np.zeros((32, 32), np.float32)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sliding_window_heatmap(bad, HoleMean(), cfg)


def test_picard_heatmap_with_tiny_network():
    g = torch.Generator().manual_seed(0)
    nets = [he_normal_(n, generator=g) for n in (CompletionNetwork(4), Critic(4, 16), Critic(4, 32))]
    card = official_card(threshold=1.0)
    card.update(window=32, hole=16, stride=16, M=2, batch_size=4, training="test")
    model = Picard(*nets, card=card)
    rng = np.random.default_rng(0)
    image = np.zeros((64, 96), np.float32)
    image[:, :40] = 0.3 + 0.4 * rng.random((64, 40))
    progress = []
    heat = model.heatmap(image, progress=lambda d, t: progress.append((d, t)))
    assert heat.shape == image.shape and heat.dtype == np.float32
    assert np.isfinite(heat).all()
    assert heat[:, :16].min() > 0 and np.all(heat[:, 80:] == 0)
    assert progress[-1][0] == progress[-1][1] > 0
    feat = model.heatmap(image, metric="MCD_feature", M=2)
    assert feat.shape == image.shape and np.isfinite(feat).all()
