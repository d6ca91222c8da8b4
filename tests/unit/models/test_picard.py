"""Tests for models.picard: completion, MCD, device checks, official checkpoints, volumes."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import Picard
from models.networks import CompletionNetwork, Critic
from models.picard import resolve_device
from tests.helpers.tiny_models import tiny_card as _tiny_card, tiny_picard


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


tiny_card = partial(_tiny_card, stride=16)


@pytest.fixture
def model() -> Picard:
    return tiny_picard(tiny_card())


def windows_and_mask(n: int = 3, size: int = 32, hole: int = 16):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, size, size, generator=g) * 2 - 1
    mask = torch.zeros(1, 1, size, size)
    a = (size - hole) // 2
    mask[..., a:a + hole, a:a + hole] = 1
    return x, mask


def test_complete_shape_and_composite(model):
    x, mask = windows_and_mask()
    out = model.complete(x, mask, m=4)
    assert out.shape == (3, 4, 1, 32, 32)
    assert torch.isfinite(out).all()
    keep = (mask == 0).expand_as(x)
    for j in range(4):
        assert torch.equal(out[:, j][keep], x[keep])  # surroundings untouched


def test_complete_hides_the_hole_from_the_network(model):
    x, mask = windows_and_mask()
    y = x.clone()
    y[mask.expand_as(x) == 1] = 0.7  # different hole content
    torch.testing.assert_close(model.complete(x, mask, m=2, dropout=False)[..., 8:24, 8:24],
                               model.complete(y, mask, m=2, dropout=False)[..., 8:24, 8:24])


def test_dropout_on_gives_different_samples_off_identical(model):
    x, mask = windows_and_mask()
    on = model.complete(x, mask, m=3, dropout=True)
    assert (on[:, 0] - on[:, 1]).abs().max() > 0.05
    off = model.complete(x, mask, m=3, dropout=False)
    assert torch.equal(off[:, 0], off[:, 1]) and torch.equal(off[:, 1], off[:, 2])


def test_per_window_mask_equals_shared_mask(model):
    x, mask = windows_and_mask()
    a = model.complete(x, mask, m=2, dropout=False)
    b = model.complete(x, mask.expand(3, -1, -1, -1), m=2, dropout=False, max_batch=4)
    torch.testing.assert_close(a, b)


def test_batched_completions_equal_single_ones(model):
    x, mask = windows_and_mask()
    together = model.complete(x, mask, m=2, dropout=False)
    alone = torch.cat([model.complete(x[i:i + 1], mask, m=2, dropout=False) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("reduce", ["min", "mean", "median"])
def test_mcd_image_matches_manual_l2(model, reduce):
    x, mask = windows_and_mask()
    torch.manual_seed(5)
    comps = model.complete(x, mask, m=4)
    torch.manual_seed(5)
    score = model.mcd(x, mask, m=4, space="image", reduce=reduce)
    dist = (comps[..., 8:24, 8:24] - x[:, None, :, 8:24, 8:24]).flatten(2).norm(dim=2)
    expected = {"min": dist.min(1).values, "mean": dist.mean(1),
                "median": dist.median(1).values}[reduce]
    assert score.shape == (3,)
    torch.testing.assert_close(score, expected)


def test_mcd_feature_uses_local_critic_on_hole_crop(model):
    x, mask = windows_and_mask()
    torch.manual_seed(3)
    comps = model.complete(x, mask, m=2)
    torch.manual_seed(3)
    score = model.mcd(x, mask, m=2, space="feature")
    crop = lambda t: t[..., 8:24, 8:24]  # noqa: E731 - hole is 16 = critic input
    real = model.local_critic.features(crop(x)).flatten(1)
    fake = model.local_critic.features(crop(comps.flatten(0, 1))).flatten(1).view(3, 2, -1)
    torch.testing.assert_close(score, (fake - real[:, None]).norm(dim=2).min(1).values)


def test_mcd_feature_resizes_crop_to_critic_input():
    torch.manual_seed(0)
    m = Picard(CompletionNetwork(4), Critic(4, 32), None, card=tiny_card())
    x, mask = windows_and_mask()
    score = m.mcd(x, mask, m=2, dropout=False, space="feature")
    comps = m.complete(x, mask, m=1, dropout=False)[:, 0]
    up = lambda t: F.interpolate(t[..., 8:24, 8:24], size=(32, 32), mode="nearest")  # noqa: E731
    expected = (m.local_critic.features(up(comps)) - m.local_critic.features(up(x))).flatten(1).norm(dim=1)
    torch.testing.assert_close(score, expected)


def test_mcd_deterministic_reductions_agree(model):
    x, mask = windows_and_mask()
    scores = [model.mcd(x, mask, m=3, dropout=False, reduce=r) for r in ("min", "mean", "median")]
    torch.testing.assert_close(scores[0], scores[1])
    torch.testing.assert_close(scores[0], scores[2])
    assert (scores[0] > 0).all()


def test_mcd_rejects_bad_arguments(model):
    x, mask = windows_and_mask()
    with pytest.raises(ValueError, match="space must be one of"):
        model.mcd(x, mask, space="pixels")
    with pytest.raises(ValueError, match="reduce must be one of"):
        model.mcd(x, mask, reduce="max")
    with pytest.raises(ValueError, match="mask must be"):
        model.complete(x, mask[..., :16])


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "CPU", "cuda:0:1", ""])
def test_device_string_validated(bad):
    with pytest.raises(ValueError, match="device must be one of 'cpu', 'cuda', 'cuda:N' or 'mps'"):
        resolve_device(bad)


def test_cpu_device_accepted():
    assert resolve_device("cpu") == torch.device("cpu")


def test_from_official_round_trip(tmp_path, model):
    gen_path, dis_path = tmp_path / "gen_00001000.pt", tmp_path / "dis_00001000.pt"
    torch.save(model.generator.state_dict(), gen_path)
    torch.save({"localD": model.local_critic.state_dict(),
                "globalD": model.global_critic.state_dict()}, dis_path)
    loaded = Picard.from_official(gen_path, dis_path, card=tiny_card())
    assert loaded.card["architecture"]["ngf"] == 4
    assert loaded.card["architecture"]["local_critic_input"] == 16
    x, mask = windows_and_mask()
    torch.testing.assert_close(loaded.complete(x, mask, m=1, dropout=False),
                               model.complete(x, mask, m=1, dropout=False))
    torch.testing.assert_close(loaded.mcd(x, mask, m=1, dropout=False, space="feature"),
                               model.mcd(x, mask, m=1, dropout=False, space="feature"))
    with pytest.raises(ValueError, match="ngf=8 given but the generator weights have ngf=4"):
        Picard.from_official(gen_path, dis_path, ngf=8)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Picard.from_official(tmp_path / "missing.pt", dis_path)
    with pytest.raises(ValueError, match="device must be one of"):
        Picard.from_official(gen_path, dis_path, device="tpu")


def test_threshold_required(model):
    model.card["threshold"] = None
    with pytest.raises(ValueError, match="no threshold"):
        _ = model.threshold


def test_heatmap_rejects_unknown_override_and_bad_range(model):
    with pytest.raises(ValueError, match="unknown heatmap settings"):
        model.heatmap(np.zeros((32, 32), np.float32), window_size=64)
    with pytest.raises(ValueError, match=r"image values must lie in \[0, 1\]"):
        model.heatmap(np.full((32, 32), 3.0, np.float32))


def test_heatmap_seed_makes_it_reproducible(model):
    rng = np.random.default_rng(0)
    image = (0.3 + 0.4 * rng.random((48, 48))).astype(np.float32)
    a = model.heatmap(image, seed=7)
    assert np.array_equal(a, model.heatmap(image, seed=7))
    assert not np.array_equal(a, model.heatmap(image, seed=8))


def test_score_volume_resamples_and_interpolates_slices(model):
    rng = np.random.default_rng(0)
    volume = (0.3 + 0.4 * rng.random((4, 20, 18))).astype(np.float32)  # 0.8 mm -> 40x36 at 0.4
    calls = []
    out = model.score_volume(volume, pixel_spacing_mm=(0.8, 0.8), slice_step=2,
                             progress=lambda d, t: calls.append((d, t)))
    assert out.shape == volume.shape and out.dtype == np.float32
    assert np.isfinite(out).all() and (out[0] > 0).any()
    assert calls == [(1, 3), (2, 3), (3, 3)]  # slices 0, 2 and the last one
    np.testing.assert_allclose(out[1], 0.5 * (out[0] + out[2]), rtol=1e-6)


def test_score_volume_validates(model):
    with pytest.raises(ValueError, match="volume must be"):
        model.score_volume(np.zeros((4, 4), np.float32), pixel_spacing_mm=0.4)
    with pytest.raises(ValueError, match="slice_step must be"):
        model.score_volume(np.zeros((1, 32, 32), np.float32), pixel_spacing_mm=0.4, slice_step=0)
    with pytest.raises(ValueError, match="pixel_spacing_mm must be"):
        model.score_volume(np.zeros((1, 32, 32), np.float32), pixel_spacing_mm=(0.4, -1))
