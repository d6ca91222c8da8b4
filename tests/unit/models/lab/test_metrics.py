"""Tests for models.lab.metrics (synthetic score maps with known answers)."""

from __future__ import annotations

import numpy as np
import pytest

from models.lab.metrics import (
    auroc,
    average_precision,
    detect,
    froc,
    match_candidates,
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
