"""Tests for models.evaluate metrics (synthetic score maps with known answers)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from models.evaluate import (
    METHODS,
    compare_methods,
    method_heatmaps,
    auroc,
    average_precision,
    bootstrap_metrics,
    detect,
    evaluate_cases,
    froc,
    match_candidates,
    sensitivity_at,
    threshold_for_fp_rate,
)


def test_auroc_perfect_inverted_random_and_ties() -> None:
    y = np.array([0, 0, 0, 1, 1], bool)
    assert auroc(np.array([0.1, 0.2, 0.3, 0.8, 0.9]), y) == 1.0
    assert auroc(np.array([0.9, 0.8, 0.7, 0.1, 0.2]), y) == 0.0
    assert auroc(np.ones(5), y) == 0.5  # all tied
    rng = np.random.default_rng(0)
    big_y = rng.random(20000) < 0.1
    assert abs(auroc(rng.random(20000), big_y) - 0.5) < 0.03
    assert np.isnan(auroc(np.arange(3.0), np.zeros(3, bool)))


def test_auroc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(1)
    s = rng.integers(0, 5, 200).astype(float)  # many ties
    y = rng.random(200) < 0.3
    pos, neg = s[y], s[~y]
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (
        pos.size * neg.size)
    assert auroc(s, y) == pytest.approx(pairwise)


def test_auroc_mask_restricts_pixels() -> None:
    scores = np.array([[0.9, 0.1], [0.5, 0.2]])
    labels = np.array([[1, 0], [0, 0]], bool)
    # outside the mask a high-scoring negative would hurt
    scores[1, 1] = 0.95
    mask = np.array([[True, True], [True, False]])
    assert auroc(scores, labels) < 1.0
    assert auroc(scores, labels, mask) == 1.0


def test_average_precision_known_values() -> None:
    y = np.array([1, 0, 1, 0], bool)
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.1]), y) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(np.array([4.0, 1, 3, 2]), y) == 1.0
    rng = np.random.default_rng(2)
    yy = rng.random(50000) < 0.05
    assert abs(average_precision(rng.random(50000), yy) - 0.05) < 0.01


def test_detect_finds_blobs_in_order() -> None:
    vol = np.zeros((5, 64, 64), np.float32)
    vol[2, 20, 20] = 3.0
    vol[3, 50, 40] = 2.0
    vol[1, 10, 55] = 1.0
    from scipy import ndimage

    vol = ndimage.gaussian_filter(vol, (0.7, 2, 2))
    centers, scores = detect(vol, min_distance_px=5)
    assert [tuple(c) for c in centers[:3]] == [(2, 20, 20), (3, 50, 40), (1, 10, 55)]
    assert np.all(np.diff(scores) <= 0)
    c2, _ = detect(vol, min_distance_px=5, threshold=float(scores[1]))
    assert len(c2) == 2
    bm = np.ones((64, 64), bool)
    bm[:, 30:] = False
    c3, _ = detect(vol, min_distance_px=5, breast_mask=bm)
    assert all(c[2] < 30 for c in c3)


def test_detect_plateau_gives_one_detection() -> None:
    vol = np.zeros((1, 32, 32), np.float32)
    vol[0, 10:14, 10:14] = 1.0
    centers, _ = detect(vol, min_distance_px=3, threshold=0.5)
    assert len(centers) == 1


def test_match_candidates_radius_mask_and_duplicates() -> None:
    lesions = [{"center_zyx": [5, 50, 50], "diameter_mm": 10.0}]  # radius 5 mm = 12.5 px at 0.4
    mask = np.zeros((20, 100, 100), bool)
    mask[4:7, 45:56, 45:56] = True
    centers = np.array([[5, 60, 50], [5, 70, 50], [15, 50, 50], [5, 50, 50]])  # z 15: too far
    c = match_candidates(centers, np.array([4.0, 3, 2, 1]), lesions, lesion_mask=mask,
                         pixel_spacing_mm=0.4, slice_thickness_mm=1.0)
    assert c.lesion_index.tolist() == [0, -1, -1, 0]
    # 2 volumes: the duplicate hit is neither a second TP nor an FP
    curve = froc([c, c])
    assert curve["sensitivity"][-1] == 1.0
    assert curve["fp_per_volume"][-1] == 2.0  # two FPs in each volume


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
    from models.networks import CompletionNetwork, Critic
    from models.phantom import make_phantom
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
    from models.evaluate import _SliceView
    from models.phantom import make_phantom

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
