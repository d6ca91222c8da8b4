"""Tests for models.lab.train (tiny networks, a few iterations)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.lab.phantom import make_phantom
from models.lab.train import (
    TrainConfig,
    WindowSampler,
    load_image_folder,
    spatial_discounting_mask,
    train,
)
from models.picard import Picard


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _tiny(**kw) -> TrainConfig:
    base = {"window": 32, "hole": 16, "max_delta": 4, "stride": 8, "pixel_spacing_mm": 0.8,
            "ngf": 4, "ndf": 4, "batch_size": 2, "iterations": 6, "n_critic": 2, "val_every": 3,
            "checkpoint_every": 3, "val_windows": 4, "m": 2}
    base.update(kw)
    return TrainConfig(**base)


def _arrays(n: int = 3) -> list[np.ndarray]:
    return [make_phantom(seed=s, lesions=0, slices=2, rows=64, cols=48,
                         pixel_spacing_mm=0.8).volume for s in range(n)]


def test_spatial_discounting_mask_matches_definition() -> None:
    m = spatial_discounting_mask(8, 8, 0.9)
    assert m.shape == (1, 1, 8, 8)
    assert m[0, 0, 0, 0] == 1.0 and m[0, 0, 0, 4] == 1.0  # on an edge row
    assert m[0, 0, 4, 4] == pytest.approx(0.9 ** 4)  # centre: 4 from every edge
    assert m[0, 0, 2, 3] == pytest.approx(max(0.9 ** 2, 0.9 ** 3))


def test_sampler_prefers_tissue() -> None:
    img = np.zeros((1, 64, 64), np.float32)
    img[:, :, :32] = 0.5  # tissue on the left half only
    s = WindowSampler([img], 16, 0.02, np.random.default_rng(0))
    w = s.sample(20, (4, 4, 8, 8), 0.9)
    assert w.shape == (20, 1, 16, 16)
    assert np.all((w[:, 0, 4:12, 4:12] > 0.02).mean(axis=(1, 2)) >= 0.9)
    with pytest.raises(ValueError, match="smaller than"):
        WindowSampler([np.zeros((8, 8))], 16, 0.02, np.random.default_rng(0))


def test_train_writes_loadable_bundle_and_resumes(tmp_path: Path) -> None:
    data = _arrays()
    bundle = train(_tiny(), data, tmp_path, progress=False)
    model = Picard.from_bundle(bundle)
    card = model.card
    assert (card["window"], card["hole"], card["stride"], card["pixel_spacing_mm"]) == (32, 16, 8, 0.8)
    assert card["architecture"]["ngf"] == 4 and card["train_config"]["n_critic"] == 2
    hist = json.loads((tmp_path / "history.json").read_text())
    assert [h["iteration"] for h in hist] == [3, 6]
    assert all(np.isfinite(h["val_l1"]) for h in hist) and "l1" in hist[0]
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporary files
    heat = model.heatmap(data[0][0])
    assert heat.shape == (64, 48) and np.isfinite(heat).all()
    # resume continues from iteration 6 up to 9
    train(_tiny(iterations=9), data, tmp_path, resume=True, progress=False)
    hist = json.loads((tmp_path / "history.json").read_text())
    assert [h["iteration"] for h in hist] == [3, 6, 9]
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert ckpt["iteration"] == 9
    with pytest.raises(ValueError, match="cannot resume"):
        train(_tiny(ngf=6, iterations=12), data, tmp_path, resume=True, progress=False)


def test_train_is_deterministic(tmp_path: Path) -> None:
    data = _arrays(2)
    train(_tiny(iterations=3), data, tmp_path / "a", progress=False)
    train(_tiny(iterations=3), data, tmp_path / "b", progress=False)
    a = torch.load(tmp_path / "a" / "best.pt", weights_only=True)["gen"]
    b = torch.load(tmp_path / "b" / "best.pt", weights_only=True)["gen"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_inputs_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hole"):
        TrainConfig(window=64, hole=24)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        train(_tiny(), [np.full((40, 40), 2.0, np.float32)], tmp_path, progress=False)
    with pytest.raises(ValueError, match="no training data"):
        train(_tiny(), [], tmp_path, progress=False)


def test_load_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((40, 40), 65535, np.uint16)).save(tmp_path / "b.png")
    np.save(tmp_path / "c.npy", np.full((2, 40, 40), 0.25, np.float32))
    (tmp_path / "notes.txt").write_text("ignored")
    arrays = load_image_folder(tmp_path)
    assert [a.shape for a in arrays] == [(40, 40), (40, 40), (2, 40, 40)]
    assert arrays[0].max() == pytest.approx(128 / 255) and arrays[1].max() == 1.0
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "missing")


def test_train_warm_starts_from_a_bundle(tmp_path: Path) -> None:
    data = _arrays(2)
    first = train(_tiny(iterations=3), data, tmp_path / "a", progress=False)
    src = Picard.from_bundle(first)
    # zero iterations of change is not possible, so compare the loaded weights directly
    from models.lab.train import _Trainer, warm_start

    trainer = _Trainer(_tiny(), torch.device("cpu"))
    warm_start(trainer, first)
    for k, v in src.generator.state_dict().items():
        assert torch.equal(trainer.gen.state_dict()[k], v)
    for k, v in src.local_critic.state_dict().items():
        assert torch.equal(trainer.local.state_dict()[k], v)
    for k, v in src.global_critic.state_dict().items():
        assert torch.equal(trainer.glob.state_dict()[k], v)
    # a warm-started run starts from those weights: its first validation L1 differs from a
    # cold start with the same seed, and it writes a loadable bundle
    warm = train(_tiny(iterations=3), data, tmp_path / "b", progress=False, init_from=first)
    cold = json.loads((tmp_path / "a" / "history.json").read_text())
    hot = json.loads((tmp_path / "b" / "history.json").read_text())
    assert hot[0]["val_l1"] != cold[0]["val_l1"]
    Picard.from_bundle(warm)
    # resume ignores init_from (the checkpoint holds the continued weights)
    train(_tiny(iterations=6), data, tmp_path / "b", resume=True, progress=False,
          init_from=tmp_path / "missing")
    # architecture mismatch: a clear error
    with pytest.raises(ValueError, match="cannot warm-start"):
        train(_tiny(ngf=6), data, tmp_path / "c", progress=False, init_from=first)
    with pytest.raises(ValueError, match="cannot warm-start"):
        train(_tiny(window=48, hole=16), data, tmp_path / "d", progress=False, init_from=first)
