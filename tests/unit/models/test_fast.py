"""Tests for models.fast: fast inference cuts agree with exact mode where they should."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from models import Picard
from models.fast import InferenceConfig, InferenceStats, complete_shared, fast_slice_grid
from models.heatmap import HeatmapConfig, centred_mask, prepare_slice
from models.networks import _with_boundary_channels
from models.fast import _coarse_after_conv1
from tests.helpers.tiny_models import tiny_card as _tiny_card, tiny_picard


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


tiny_card = partial(_tiny_card, stride=8)


@pytest.fixture
def model() -> Picard:
    return tiny_picard(tiny_card())


def half_tissue_image(h: int = 64, w: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((h, w), np.float32)
    image[:, :56] = 0.3 + 0.4 * rng.random((h, 56))
    return image


def test_coarse_after_conv1_reproduces_the_coarse_network(model):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 1, 32, 32, generator=g) * 2 - 1
    mask = centred_mask(32, 16)
    net = model.generator.coarse_generator
    model.generator.set_dropout(None)
    with torch.inference_mode():
        ref = net(x * (1 - mask), mask)
        h1 = net.conv1(_with_boundary_channels(x * (1 - mask), mask))
        assert torch.equal(_coarse_after_conv1(net, h1), ref)


def test_shared_conv1_gives_the_unshared_completions_with_the_same_seed(model):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, 1, 32, 32, generator=g) * 2 - 1
    mask = centred_mask(32, 16)
    torch.manual_seed(7)
    ref = model.complete(x, mask, m=3, max_batch=2 * 3)
    torch.manual_seed(7)
    drop = model.card["dropout"]
    model.generator.set_dropout(drop["layers"], drop["p"])
    with torch.inference_mode():
        shared = complete_shared(model.generator, x, mask, 3, windows_per_pass=2)
    assert shared.shape == ref.shape == (5, 3, 1, 32, 32)
    torch.testing.assert_close(shared, ref, rtol=0, atol=1e-6)
    assert not torch.equal(shared[:, 0], shared[:, 1])  # still pluralistic


def test_fast_with_every_cut_off_equals_exact_without_dropout(model):
    image = half_tissue_image()
    exact = model.heatmap(image, mode="exact", dropout=False)
    n_exact = model.last_stats.completions
    fast = model.heatmap(image, mode="fast", dropout=False, coarse_factor=1, first_samples=3)
    torch.testing.assert_close(torch.from_numpy(fast), torch.from_numpy(exact), rtol=1e-5,
                               atol=1e-5)
    assert model.last_stats.completions == n_exact
    # coarse-to-fine refining everything also reproduces exact
    fast2 = model.heatmap(image, mode="fast", dropout=False, coarse_factor=2,
                          refine_quantile=0.0, first_samples=3)
    torch.testing.assert_close(torch.from_numpy(fast2), torch.from_numpy(exact), rtol=1e-5,
                               atol=1e-5)
    assert model.last_stats.windows_interpolated == 0


@pytest.mark.parametrize("switches", [{}, {"coarse_factor": 3}, {"first_samples": 2},
                                      {"refine_quantile": 0.0, "sample_quantile": 0.0}])
def test_fast_never_does_more_work_than_exact(model, switches):
    image = half_tissue_image(seed=3)
    model.heatmap(image, mode="exact")
    exact = model.last_stats
    model.heatmap(image, mode="fast", **switches)
    fast = model.last_stats
    assert fast.windows_total == exact.windows_total
    assert fast.windows_tissue == exact.windows_tissue == exact.windows_computed
    assert fast.windows_computed + fast.windows_interpolated == fast.windows_tissue
    assert fast.completions <= exact.completions
    assert fast.mode == "fast" and exact.mode == "exact"


def test_default_mode_is_exact_and_fast_cuts_work(model):
    image = half_tissue_image(seed=4)
    model.heatmap(image)  # default mode: exact, the paper's procedure
    assert model.last_stats.mode == "exact"
    exact = model.last_stats.completions
    model.heatmap(image, mode="fast")
    assert model.last_stats.mode == "fast"
    assert model.last_stats.completions < exact / 2


def test_background_windows_score_zero_in_fast_mode(model):
    image = half_tissue_image()
    heat = model.heatmap(image, mode="fast")
    assert np.all(heat[:, 88:] == 0)
    assert heat[:, :24].min() > 0


class HoleDistances:
    """Deterministic per-sample distances: hole mean + 1, decreasing with the sample index."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, windows: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
        self.calls.append(k)
        base = (windows * mask).sum(dim=(1, 2, 3)) / mask.sum() + 2.0
        offset = len(self.calls)  # later draws are smaller: the minimum falls
        return base[:, None] * torch.linspace(1.0, 0.5, k)[None] / offset


def test_sample_stopping_draws_all_samples_only_for_high_windows():
    cfg = HeatmapConfig(window=32, hole=16, stride=8, batch_size=1000, min_tissue_fraction=0.5)
    image = half_tissue_image()
    sw = prepare_slice(image, cfg)
    n_valid = int((sw.fraction >= 0.5).sum())
    for q, expect_all in ((0.0, True), (1.0, False)):
        stats = InferenceStats(mode="fast")
        scorer = HoleDistances()
        icfg = InferenceConfig(coarse_factor=1, first_samples=1, sample_quantile=q)
        grid = fast_slice_grid(sw, scorer, cfg, icfg, m=4, reduce="min", stats=stats)
        assert stats.windows_computed == n_valid
        if expect_all:
            assert stats.completions == n_valid * 4
        else:  # only the top window(s) get the other 3 samples
            assert n_valid < stats.completions <= n_valid + 3 * 2
        assert np.all(grid[sw.fraction < 0.5] == 0)
        assert np.all(grid[sw.fraction >= 0.5] > 0)


class ConstantDistances:
    """Every sample of a window has the same distance (hole mean + 2): any partial mean is
    the full mean, so staged and unstaged mean scores must agree exactly."""

    def __call__(self, windows: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
        base = (windows * mask).sum(dim=(1, 2, 3)) / mask.sum() + 2.0
        return base[:, None].expand(-1, k)


def recording(scorer, calls: list[int]):
    """``scorer`` that also appends each call's sample count ``k`` to ``calls``."""

    def wrapped(w: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
        calls.append(k)
        return scorer(w, mask, k)

    return wrapped


def test_sample_stopping_for_mean_keeps_the_partial_mean_unscaled():
    cfg = HeatmapConfig(window=32, hole=16, stride=8, batch_size=1000, min_tissue_fraction=0.5)
    sw = prepare_slice(half_tissue_image(), cfg)
    n_valid = int((sw.fraction >= 0.5).sum())
    grids, completions = [], []
    for q in (0.0, 0.75):
        stats = InferenceStats(mode="fast")
        icfg = InferenceConfig(coarse_factor=1, first_samples=2, sample_quantile=q)
        grids.append(fast_slice_grid(sw, ConstantDistances(), cfg, icfg, m=6, reduce="mean",
                                     stats=stats))
        completions.append(stats.completions)
    assert completions[0] == n_valid * 6
    assert n_valid * 2 < completions[1] < completions[0]
    np.testing.assert_allclose(grids[1], grids[0], rtol=1e-6)


def test_sample_stopping_for_mean_averages_all_samples_of_high_windows():
    cfg = HeatmapConfig(window=32, hole=16, stride=8, batch_size=1000, min_tissue_fraction=0.5)
    sw = prepare_slice(half_tissue_image(), cfg)
    stats = InferenceStats(mode="fast")
    # first draw (k=2): distances 1, 2 -> partial mean 1.5; later draw (k=4): 10 each
    scorer = lambda w, mask, k: torch.full((w.shape[0], k), 10.0) if k == 4 else \
        torch.tensor([[1.0, 2.0]]).expand(w.shape[0], -1)
    icfg = InferenceConfig(coarse_factor=1, first_samples=2, sample_quantile=0.0)
    grid = fast_slice_grid(sw, scorer, cfg, icfg, m=6, reduce="mean", stats=stats)
    inside = sw.fraction >= 0.5
    np.testing.assert_allclose(grid[inside], (1 + 2 + 4 * 10) / 6, rtol=1e-6)


def test_median_reduction_disables_sample_stopping(model):
    image = half_tissue_image()
    model.heatmap(image, mode="fast", metric="MedCD_image", coarse_factor=1)
    st = model.last_stats
    assert st.completions == st.windows_computed * model.card["M"]


def test_inference_config_from_card_and_validation(model):
    card = tiny_card(inference={"mode": "exact", "slice_step": 2})
    cfg = InferenceConfig.from_card(card)
    assert cfg.mode == "exact" and cfg.slice_step == 2 and cfg.coarse_factor == 2
    assert InferenceConfig.from_card(card, mode="fast").mode == "fast"
    with pytest.raises(ValueError, match="unknown keys"):
        InferenceConfig.from_card(tiny_card(inference={"turbo": True}))
    with pytest.raises(ValueError, match="mode must be one of"):
        InferenceConfig(mode="quick")
    with pytest.raises(ValueError, match="coarse_factor must be an integer"):
        InferenceConfig(coarse_factor=0)
    with pytest.raises(ValueError, match="sample_quantile must be in"):
        InferenceConfig(sample_quantile=1.5)
    with pytest.raises(ValueError, match="amp must be one of"):
        InferenceConfig(amp="fp8")
    with pytest.raises(ValueError, match="unknown heatmap settings"):
        model.heatmap(half_tissue_image(), turbo=True)


def test_card_mode_is_the_default(model):
    image = half_tissue_image()
    exact = model.heatmap(image, mode="exact")
    card = dict(model.card, inference={"mode": "exact"})
    m2 = Picard(model.generator, model.local_critic, model.global_critic, card=card)
    assert np.array_equal(m2.heatmap(image), exact)
    assert m2.last_stats.mode == "exact"


def test_score_volume_fast_streams_and_counts(model):
    rng = np.random.default_rng(0)
    vol = np.zeros((9, 40, 60), np.uint16)
    vol[:, :, :30] = rng.integers(20000, 40000, size=(9, 40, 30))
    with pytest.raises(ValueError, match="value_scale"):
        model.score_volume(vol, pixel_spacing_mm=0.4)
    out = np.full(vol.shape, -1.0, np.float32)
    res = model.score_volume(vol, pixel_spacing_mm=0.4, value_scale=1 / 65535, out=out,
                             mode="fast")
    assert res is out and np.all(out >= 0) and np.isfinite(out).all()
    st = model.last_stats
    assert st.slices_total == 9 and st.slices_scored == 3  # 0, 4, 8 with slice_step 4
    assert st.config["slice_step"] == 4
    model.score_volume(vol, pixel_spacing_mm=0.4, value_scale=1 / 65535, mode="exact")
    assert model.last_stats.slices_scored == 9
    # 3 of 9 slices; on this small grid every tissue window is a coarse one (all M)
    assert model.last_stats.completions >= 3 * st.completions
    scaled = vol.astype(np.float32) / 65535
    a = model.score_volume(scaled, pixel_spacing_mm=0.4, mode="exact", prefetch=False)
    b = model.score_volume(vol, pixel_spacing_mm=0.4, value_scale=1 / 65535, mode="exact")
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_coarse_windows_get_all_samples_and_refinement_windows_may_stop():
    cfg = HeatmapConfig(window=32, hole=16, stride=8, batch_size=1000, min_tissue_fraction=0.5)
    sw = prepare_slice(half_tissue_image(), cfg)
    calls: list[int] = []
    scorer = recording(ConstantDistances(), calls)
    stats = InferenceStats(mode="fast")
    icfg = InferenceConfig(coarse_factor=2, refine_quantile=0.0, first_samples=2,
                           sample_quantile=0.75)
    fast_slice_grid(sw, scorer, cfg, icfg, m=6, reduce="mean", stats=stats)
    assert calls[0] == 6  # the coarse pass: every window gets all M
    assert calls[1] == 2  # refinement windows start with first_samples
    valid = int((sw.fraction >= 0.5).sum())
    assert stats.windows_computed == valid and stats.completions < valid * 6


def test_first_samples_default_depends_on_the_reduction():
    cfg = InferenceConfig()
    assert cfg.first_samples is None
    assert cfg.resolved_first_samples("min") == 1
    assert cfg.resolved_first_samples("mean") == 5
    assert InferenceConfig(first_samples=3).resolved_first_samples("mean") == 3
    with pytest.raises(ValueError, match="first_samples must be an integer"):
        InferenceConfig(first_samples=0)


def test_default_mean_stopping_draws_five_samples_first():
    cfg = HeatmapConfig(window=32, hole=16, stride=8, batch_size=1000, min_tissue_fraction=0.5)
    sw = prepare_slice(half_tissue_image(), cfg)
    calls: list[int] = []
    scorer = recording(ConstantDistances(), calls)
    fast_slice_grid(sw, scorer, cfg, InferenceConfig(coarse_factor=1), m=10, reduce="mean",
                    stats=InferenceStats(mode="fast"))
    assert calls[0] == 5
