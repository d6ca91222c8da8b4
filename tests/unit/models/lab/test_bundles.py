"""Tests for models.lab.bundles: the untrained initial bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models import Picard
from models.bundle import CARD_FILE
from models.lab.bundles import make_initial_bundle


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_initial_bundle_loads_with_a_threshold(tmp_path):
    out = make_initial_bundle(tmp_path / "a", seed=3)
    model = Picard.from_bundle(out)
    card = model.card
    assert (card["window"], card["hole"], card["stride"], card["M"]) == (64, 32, 16, 4)
    assert card["pixel_spacing_mm"] == 0.4 and card["version"] == "0.0-initial"
    assert card["architecture"]["ngf"] == 8 and card["architecture"]["ndf"] == 8
    assert np.isfinite(model.threshold) and model.threshold > 0
    assert "phantom" in card["threshold_note"] and "seed 3" in card["training"]


def test_initial_bundle_is_deterministic(tmp_path):
    a = make_initial_bundle(tmp_path / "a", seed=1)
    b = make_initial_bundle(tmp_path / "b", seed=1)
    assert json.loads((a / CARD_FILE).read_text()) == json.loads((b / CARD_FILE).read_text())
    ga = Picard.from_bundle(a).generator.state_dict()
    gb = Picard.from_bundle(b).generator.state_dict()
    assert all(torch.equal(ga[k], gb[k]) for k in ga)
