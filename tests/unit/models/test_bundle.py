"""Tests for models.bundle: card validation, round trips, official import, default bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models import Picard, default_bundle_path, import_official
from models.bundle import (CARD_FILE, CRITICS_FILE, GENERATOR_FILE, official_card,
                           parse_metric, read_bundle, validate_card)
from models.networks import OFFICIAL_COARSE_DROPOUT_LAYERS, CompletionNetwork, Critic, he_normal_


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def model() -> Picard:
    g = torch.Generator().manual_seed(2)
    nets = [he_normal_(n, generator=g) for n in (CompletionNetwork(4), Critic(4, 16), Critic(4, 32))]
    card = official_card(threshold=2.5)
    card.update(window=32, hole=16, stride=16, M=2, batch_size=4, training="unit test",
                metrics={"auroc": 0.5})
    return Picard(*nets, card=card)


def _windows():
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    return x, mask


def test_parse_metric():
    assert parse_metric("MCD_feature") == ("feature", "min")
    assert parse_metric("MedCD_image") == ("image", "median")
    with pytest.raises(ValueError, match="metric must be one of"):
        parse_metric("MSE")


def test_official_card_is_valid_and_official():
    card = validate_card(official_card())
    assert (card["window"], card["hole"], card["stride"], card["M"]) == (256, 128, 32, 10)
    assert card["dropout"] == {"layers": list(OFFICIAL_COARSE_DROPOUT_LAYERS), "p": 0.5}


@pytest.mark.parametrize("change, message", [
    ({"window": 100}, "window % 8 == 0"),
    ({"metric": "SSIM"}, "metric must be one of"),
    ({"M": "10"}, "'M' has type str"),
    ({"dropout": {"layers": [], "p": 1.5}}, r"dropout p must be in \[0, 1\)"),
    ({"pixel_spacing_mm": 0}, "pixel_spacing_mm must be > 0"),
])
def test_validate_card_rejects(change, message):
    card = official_card()
    card.update(change)
    with pytest.raises(ValueError, match=message):
        validate_card(card)


def test_validate_card_missing_key():
    card = official_card()
    del card["threshold"]
    with pytest.raises(ValueError, match="model card lacks 'threshold'"):
        validate_card(card)


def test_bundle_round_trip(tmp_path, model):
    model.save_bundle(tmp_path / "b")
    assert {p.name for p in (tmp_path / "b").iterdir()} == {GENERATOR_FILE, CRITICS_FILE, CARD_FILE}
    loaded = Picard.from_bundle(tmp_path / "b")
    assert loaded.card == model.card
    assert loaded.threshold == 2.5 and loaded.card["metrics"] == {"auroc": 0.5}
    x, mask = _windows()
    for space in ("image", "feature"):
        torch.testing.assert_close(loaded.mcd(x, mask, m=1, dropout=False, space=space),
                                   model.mcd(x, mask, m=1, dropout=False, space=space))
    gen, dis, card = read_bundle(tmp_path / "b")
    assert set(dis) == {"localD", "globalD"} and card == model.card
    for k, v in model.generator.state_dict().items():
        assert torch.equal(gen[k], v)


def test_bundle_files_load_as_official_checkpoints(tmp_path, model):
    model.save_bundle(tmp_path)
    loaded = Picard.from_official(tmp_path / GENERATOR_FILE, tmp_path / CRITICS_FILE)
    assert loaded.card["window"] == 256  # official card by default
    x, mask = _windows()
    torch.testing.assert_close(loaded.complete(x, mask, m=1, dropout=False),
                               model.complete(x, mask, m=1, dropout=False))


def test_save_bundle_with_new_card(tmp_path, model):
    card = dict(model.card, threshold=9.0, metrics={"auroc": 0.9})
    model.save_bundle(tmp_path, card)
    saved = json.loads((tmp_path / CARD_FILE).read_text())
    assert saved["threshold"] == 9.0 and saved["architecture"]["ngf"] == 4


def test_from_bundle_reports_missing_files(tmp_path, model):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Picard.from_bundle(tmp_path / "nothing")
    model.save_bundle(tmp_path)
    (tmp_path / CRITICS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="has no critics.pt"):
        Picard.from_bundle(tmp_path)


def test_from_bundle_rejects_card_weight_mismatch(tmp_path, model):
    model.save_bundle(tmp_path)
    card = json.loads((tmp_path / CARD_FILE).read_text())
    card["architecture"]["ngf"] = 32
    (tmp_path / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ValueError, match="ngf=32 given but the generator weights have ngf=4"):
        Picard.from_bundle(tmp_path)


def test_import_official(tmp_path, model):
    torch.save(model.generator.state_dict(), tmp_path / "gen_00430000.pt")
    torch.save({"localD": model.local_critic.state_dict(),
                "globalD": model.global_critic.state_dict()}, tmp_path / "dis_00430000.pt")
    out = import_official(tmp_path / "gen_00430000.pt", tmp_path / "dis_00430000.pt",
                          tmp_path / "bundle")
    card = json.loads((out / CARD_FILE).read_text())
    assert (card["window"], card["hole"], card["stride"], card["M"]) == (256, 128, 32, 10)
    assert card["dropout"]["p"] == 0.5 and card["pixel_spacing_mm"] == 0.1
    assert card["threshold"] is None
    assert Picard.from_bundle(out).card["architecture"]["ngf"] == 4


def test_import_official_equals_loading_and_saving_with_picard(tmp_path, model):
    gen, dis = tmp_path / "gen.pt", tmp_path / "dis.pt"
    torch.save({f"module.{k}": v for k, v in model.generator.state_dict().items()}, gen)
    torch.save({"localD": model.local_critic.state_dict(),
                "globalD": model.global_critic.state_dict()}, dis)
    out = import_official(gen, dis, tmp_path / "imported", threshold=1.5)
    card = official_card(threshold=1.5)
    loaded = Picard.from_official(gen, dis, card=card)
    ref = loaded.save_bundle(tmp_path / "saved", loaded.card)
    assert json.loads((out / CARD_FILE).read_text()) == json.loads((ref / CARD_FILE).read_text())
    for name in (GENERATOR_FILE, CRITICS_FILE):
        a = torch.load(out / name, weights_only=True)
        b = torch.load(ref / name, weights_only=True)
        flat_a = a if name == GENERATOR_FILE else {f"{c}.{k}": v for c, sd in a.items()
                                                   for k, v in sd.items()}
        flat_b = b if name == GENERATOR_FILE else {f"{c}.{k}": v for c, sd in b.items()
                                                   for k, v in sd.items()}
        assert flat_a.keys() == flat_b.keys()
        assert all(torch.equal(flat_a[k], flat_b[k]) for k in flat_a)


def test_default_bundle_loads_and_runs():
    path = default_bundle_path()
    if not path.is_dir():
        pytest.skip(f"no default bundle at {path}")
    assert sum(p.stat().st_size for p in path.iterdir()) < 2 * 1024 * 1024
    model = Picard.from_bundle()
    card = model.card
    assert card["threshold"] is not None and card["training"]
    rng = np.random.default_rng(0)
    image = (0.3 + 0.4 * rng.random((80, 72))).astype(np.float32)
    heat = model.heatmap(image, M=2)
    assert heat.shape == image.shape and np.isfinite(heat).all() and heat.max() > 0


def test_default_bundle_stride_resolves_a_5_mm_mass():
    """Issue 10: window centres at most 5 mm apart, so every 5 mm mass holds one."""
    path = default_bundle_path()
    if not path.is_dir():
        pytest.skip(f"no default bundle at {path}")
    card = Picard.from_bundle().card
    assert card["stride"] * float(card["pixel_spacing_mm"]) <= 5.0
    assert card["inference"]["mode"] == "exact"  # the PACS path (fast not shown equal)
