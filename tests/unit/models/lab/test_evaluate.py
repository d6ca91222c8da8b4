"""Tests for models.lab.evaluate: evaluation cases, bootstrap figures, method comparison."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from models.lab.evaluate import METHODS, compare_methods, evaluate_cases, method_heatmaps
from models.lab.metrics import (
    auroc,
    bootstrap_metrics,
    sensitivity_at,
    threshold_for_fp_rate,
)


def _case(seed: int, *, perfect: bool, n_les: int = 2):
    """A synthetic volume with lesions and a heatmap (perfect or pure noise)."""
    rng = np.random.default_rng(seed)
    shape = (6, 96, 96)
    lesion_mask = np.zeros(shape, bool)
    lesions = []
    zz, yy, xx = np.mgrid[0:6, 0:96, 0:96]
    heat = rng.random(shape).astype(np.float32) * 0.2
    for k in range(n_les):
        cz, cy, cx = 3, 25 + 45 * k, int(rng.integers(20, 76))
        blob = ((zz - cz) / 2.0) ** 2 + ((yy - cy) / 8.0) ** 2 + ((xx - cx) / 8.0) ** 2 <= 1
        lesion_mask |= blob
        lesions.append({"kind": "round", "center_zyx": [cz, cy, cx], "diameter_mm": 6.4})
        if perfect:
            heat += np.exp(-(((yy - cy) / 6.0) ** 2 + ((xx - cx) / 6.0) ** 2 + ((zz - cz) / 2) ** 2))
    return heat, _Truth(lesion_mask, lesions, np.ones((96, 96), bool))


@dataclass
class _Truth:
    lesion_mask: np.ndarray
    lesions: list = field(default_factory=list)
    breast_mask: np.ndarray = None  # type: ignore[assignment]
    pixel_spacing_mm: float = 0.4
    slice_thickness_mm: float = 1.0


def test_perfect_detector_metrics() -> None:
    pairs = [_case(s, perfect=True) for s in range(6)]
    cases = evaluate_cases([p[0] for p in pairs], [p[1] for p in pairs])
    sens = sensitivity_at([c.candidates for c in cases])
    assert sens[0.5] == 1.0 and sens[4.0] == 1.0
    r = bootstrap_metrics(cases, n_boot=50, seed=0)
    assert r["pixel_auroc"]["value"] > 0.97
    assert r["pixel_auroc"]["lo"] <= r["pixel_auroc"]["value"] <= r["pixel_auroc"]["hi"]
    assert r["sens@2fp"]["value"] == 1.0


def test_random_detector_metrics() -> None:
    pairs = [_case(s, perfect=False) for s in range(12)]
    cases = evaluate_cases([p[0] for p in pairs], [p[1] for p in pairs])
    r = bootstrap_metrics(cases, n_boot=200, seed=1)
    assert 0.4 < r["pixel_auroc"]["value"] < 0.6
    assert r["pixel_auroc"]["lo"] < 0.5 < r["pixel_auroc"]["hi"]
    assert r["sens@0.5fp"]["value"] < 0.5
    frac = lambda: lesion_mask_frac(pairs)  # noqa: E731
    assert r["pixel_ap"]["value"] < 2 * frac()


def lesion_mask_frac(pairs) -> float:
    return float(np.mean([p[1].lesion_mask.mean() for p in pairs]))


def test_bootstrap_is_seeded() -> None:
    pairs = [_case(s, perfect=s % 2 == 0) for s in range(6)]
    cases = evaluate_cases([p[0] for p in pairs], [p[1] for p in pairs])
    a = bootstrap_metrics(cases, n_boot=30, seed=3)
    b = bootstrap_metrics(cases, n_boot=30, seed=3)
    assert a["pixel_auroc"] == b["pixel_auroc"] and a["sens@1fp"] == b["sens@1fp"]


def test_threshold_for_fp_rate_respects_rate() -> None:
    pairs = [_case(s, perfect=True) for s in range(4)]
    cases = evaluate_cases([p[0] for p in pairs], [p[1] for p in pairs])
    cands = [c.candidates for c in cases]
    thr = threshold_for_fp_rate(cands, 1.0)
    fps = sum(int(((c.scores >= thr) & (c.lesion_index < 0)).sum()) for c in cands)
    assert fps / len(cands) <= 1.0
    found = {(i, int(j)) for i, c in enumerate(cands) for j in c.lesion_index[c.scores >= thr]
             if j >= 0}
    assert len(found) == 8


def test_shape_mismatch_raises() -> None:
    heat, truth = _case(0, perfect=True)
    with pytest.raises(ValueError, match="differs"):
        evaluate_cases([heat[:3]], [truth])
    with pytest.raises(ValueError, match="differs"):
        auroc(np.zeros(3), np.zeros(4, bool))


def test_compare_methods_runs_on_tiny_model() -> None:
    import torch

    from models.bundle import official_card
    from models.lab.phantom import make_phantom
    from models.networks import CompletionNetwork, Critic
    from models.picard import Picard

    torch.set_num_threads(1)
    card = official_card()
    card.pop("pixel_spacing_note")
    card.update(window=32, hole=16, stride=16, pixel_spacing_mm=0.8, M=3, batch_size=32)
    torch.manual_seed(0)
    model = Picard(CompletionNetwork(ngf=4), Critic(4, 16), Critic(4, 32), card=card)
    exams = [make_phantom(seed=s, lesions=1, slices=4, rows=64, cols=48, pixel_spacing_mm=0.8,
                          lesion_diameter_mm=(8.0, 12.0)) for s in range(2)]
    r = compare_methods(model, exams, m=3, n_boot=20, slices=lambda e: [1, 2],
                        print_table=False)
    import json

    json.dumps(r)
    assert set(r["methods"]) == set(METHODS)
    for res in r["methods"].values():
        assert 0.0 <= res["pixel_auroc"]["value"] <= 1.0
    assert "MCD - single (image)" in r["paired"]
    assert "| MCD image (M=10) |" in r["table"]
    maps = method_heatmaps(model, exams[0].volume, [1], m=3)
    again = method_heatmaps(model, exams[0].volume, [1], m=3)
    for k in METHODS:
        assert maps[k].shape == (1, 64, 48) and np.isfinite(maps[k]).all()
        np.testing.assert_array_equal(maps[k], again[k])
    # the minimum over completions never exceeds their mean (per window, hence per pixel)
    for space in ("image", "feature"):
        assert np.all(maps[f"MCD {space} (M=10)"] <= maps[f"MeanCD {space} (M=10)"] + 1e-4)


def test_slice_subset_keeps_z_distances() -> None:
    from models.lab.evaluate import _SliceView
    from models.lab.phantom import make_phantom

    exam = make_phantom(seed=3, lesions=1, slices=24, rows=160, cols=128, pixel_spacing_mm=0.4,
                        lesion_diameter_mm=(6.0, 8.0))
    zc, yc, xc = (int(round(c)) for c in exam.lesions[0]["center_zyx"])
    far = (zc + 12) % 24
    view = _SliceView(exam, sorted([zc, far]))
    assert len(view.lesions) == 1 and view.lesion_mask.shape == (2, 160, 128)
    heat = np.zeros((2, 160, 128), np.float32)
    k_far = sorted([zc, far]).index(far)
    heat[k_far, yc, xc] = 1.0  # a detection right above the lesion, but 12 slices away
    c = evaluate_cases([heat], [view])[0].candidates
    assert c.lesion_index[c.scores > 0].tolist() == [-1]
    heat[1 - k_far, yc, xc] = 2.0  # and one on the lesion's own slice
    c = evaluate_cases([heat], [view])[0].candidates
    assert c.lesion_index[c.scores > 0].tolist() == [0, -1]
    # a lesion whose slices are not scored is dropped
    assert _SliceView(exam, [far]).lesions == []
