"""Tests for scripts/train_default_bundle.py: the model grid of the training normals."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]


def _script():
    spec = importlib.util.spec_from_file_location(
        "train_default_bundle", ROOT / "scripts" / "train_default_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_normals_are_resampled_to_the_model_grid_as_the_node_resamples() -> None:
    from models.stream import load_slice

    script = _script()
    vol = script.normal_phantom(1001).volume[:2]  # made at 0.4 mm
    assert script.to_model_grid(vol, 0.4) is vol
    coarse = script.to_model_grid(vol, 0.8)
    size = (round(vol.shape[1] / 2), round(vol.shape[2] / 2))
    assert coarse.shape == (2, *size)
    np.testing.assert_array_equal(coarse[1], load_slice(vol[1], size, None))
    # the breast and its brightness survive: same tissue fraction, same mean tissue level
    tissue = vol > 0.02
    small_tissue = coarse > 0.02
    assert abs(small_tissue.mean() - tissue.mean()) < 0.03
    assert abs(coarse[small_tissue].mean() - vol[tissue].mean()) < 0.02


def test_training_text_names_the_model_grid(tmp_path: Path) -> None:
    script = _script()
    (tmp_path / "train_meta.json").write_text(json.dumps(
        {"ngf": 8, "ndf": 8, "spacing_mm": 0.8, "minutes_per_part": [1.0],
         "device_text": "cpu, 1 CPU thread(s)"}))
    (tmp_path / "history.json").write_text(json.dumps(
        [{"iteration": 250, "val_l1": 0.2}, {"iteration": 500, "val_l1": 0.1}]))
    text = script.training_text(tmp_path)
    assert "made at 0.4 mm, resampled to 0.8 mm" in text
    assert "hole 32 at 0.8 mm (a hole of 25.6 mm" in text
    assert "bundle = iteration 500 (best validation L1 0.1000)" in text
    (tmp_path / "train_meta.json").write_text(json.dumps({"ngf": 8}))
    assert "resampled" not in script.training_text(tmp_path)
