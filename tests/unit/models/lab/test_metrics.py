"""Tests for models.lab.metrics (synthetic score maps with known answers)."""

from __future__ import annotations

import numpy as np
import pytest

from models.lab.metrics import (
    auroc,
    average_precision,
    detect,
    froc,
    lesion_slice_extent,
    match_candidates,
    match_dbtex,
    sensitivity_at,
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


# --------------------------------------------------------------------------------------------
# DBTex hit rule


def _offsets(spacing: float, distances_mm: list[float]) -> np.ndarray:
    """Detections on slice 10, ``distances_mm`` to the right of a centre at (10, 200, 200)."""
    return np.array([[10, 200, 200 + round(d / spacing)] for d in distances_mm])


@pytest.mark.parametrize("spacing", [0.1, 0.4])
def test_dbtex_distance_is_max_of_half_diameter_and_10mm(spacing: float) -> None:
    # small lesion: 6 mm -> the 10 mm floor applies
    small = [{"center_zyx": [10, 200, 200], "diameter_mm": 6.0}]
    centers = _offsets(spacing, [0.0, 9.6, 10.4])
    c = match_dbtex(centers, np.array([3.0, 2, 1]), small, pixel_spacing_mm=spacing,
                    slice_extents=[(8, 12)])
    assert c.lesion_index.tolist() == [0, 0, -1]
    # large lesion: 30 mm -> half the diameter, 15 mm
    large = [{"center_zyx": [10, 200, 200], "diameter_mm": 30.0}]
    centers = _offsets(spacing, [14.4, 15.6])
    c = match_dbtex(centers, np.array([2.0, 1]), large, pixel_spacing_mm=spacing,
                    slice_extents=[(8, 12)])
    assert c.lesion_index.tolist() == [0, -1]


def test_dbtex_slice_extent_and_nearest_lesion() -> None:
    lesions = [{"center_zyx": [10, 200, 200], "diameter_mm": 6.0},
               {"center_zyx": [10, 200, 260], "diameter_mm": 6.0}]
    centers = np.array([[7, 200, 200], [8, 200, 200], [12, 200, 200], [13, 200, 200],
                        [10, 200, 236], [10, 200, 224]])
    c = match_dbtex(centers, np.arange(6.0, 0, -1), lesions, pixel_spacing_mm=0.4,
                    slice_extents=[(8, 12), (9, 11)])
    # z 7 and 13 are outside 8..12; (236 - 200) * 0.4 = 14.4 mm from lesion 0 but 9.6 mm
    # from lesion 1; x 224 is 9.6 mm from lesion 0 and 14.4 from lesion 1
    assert c.lesion_index.tolist() == [-1, 0, 0, -1, 1, 0]
    widened = match_dbtex(centers, np.arange(6.0, 0, -1), lesions, pixel_spacing_mm=0.4,
                          slice_extents=[(8, 12), (9, 11)], z_margin_slices=1)
    assert widened.lesion_index.tolist()[:4] == [0, 0, 0, 0]
    # heatmap of slices 7 and 12 only: heatmap slice 1 is volume slice 12
    sub = match_dbtex(np.array([[0, 200, 200], [1, 200, 200]]), np.array([2.0, 1]), lesions,
                      pixel_spacing_mm=0.4, slice_extents=[(8, 12), (9, 11)],
                      z_positions=np.array([7, 12]))
    assert sub.lesion_index.tolist() == [-1, 0]
    with pytest.raises(ValueError, match="2 slice extents for 1 lesions"):
        match_dbtex(centers, np.ones(6), lesions[:1], pixel_spacing_mm=0.4,
                    slice_extents=[(8, 12), (9, 11)])


def test_lesion_slice_extent_from_its_own_mask_component() -> None:
    mask = np.zeros((30, 100, 100), bool)
    mask[5:12, 40:50, 40:50] = True      # the lesion: slices 5-11
    mask[20:25, 40:50, 40:50] = True     # another lesion straight below, slices 20-24
    les = {"center_zyx": [8, 45, 45], "diameter_mm": 4.0}
    assert lesion_slice_extent(les, mask, pixel_spacing_mm=0.4) == (5, 11)
    # centre just outside the mask: the nearest component
    assert lesion_slice_extent({"center_zyx": [13, 45, 45], "diameter_mm": 4.0}, mask,
                               pixel_spacing_mm=0.4) == (5, 11)
    # no mask: centre +- radius in slices; an explicit extent wins
    assert lesion_slice_extent(les, None, pixel_spacing_mm=0.4, slice_thickness_mm=1.0) == (6, 10)
    explicit = {**les, "slice_extent": (1, 2)}
    assert lesion_slice_extent(explicit, mask, pixel_spacing_mm=0.4) == (1, 2)


def test_fp_per_volume_counts_every_slice_of_every_volume() -> None:
    """FP per volume = false detections over all slices of all volumes / volumes."""
    lesions = [{"center_zyx": [10, 50, 50], "diameter_mm": 10.0}]
    extents = [(8, 12)]
    heat_a = np.zeros((20, 100, 100), np.float32)
    heat_a[10, 50, 50] = 5.0                     # the lesion
    for z, v in ((0, 4.0), (5, 3.0), (15, 2.0), (19, 1.0)):
        heat_a[z, 10, 90] = v                    # 4 false detections on 4 slices
    heat_b = np.zeros((20, 100, 100), np.float32)
    heat_b[2, 90, 10] = 4.5                      # 2 false detections, lesion missed
    heat_b[18, 90, 10] = 0.5
    cands = []
    for heat in (heat_a, heat_b):
        centers, scores = detect(heat, min_distance_px=5, min_distance_slices=2,
                                 threshold=0.1)
        cands.append(match_dbtex(centers, scores, lesions, pixel_spacing_mm=0.4,
                                 slice_extents=extents))
    assert [int((c.lesion_index < 0).sum()) for c in cands] == [4, 2]
    curve = froc(cands)
    assert curve["fp_per_volume"][-1] == pytest.approx(6 / 2)
    assert curve["sensitivity"][-1] == pytest.approx(0.5)
    # the lesion (score 5) ranks first: found at 0 FP; the next detections are false
    sens = sensitivity_at(cands, (0.5, 1.0, 4.0))
    assert sens == {0.5: 0.5, 1.0: 0.5, 4.0: 0.5}
    assert curve["fp_per_volume"].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]


def test_detect_suppresses_along_z_in_slices() -> None:
    heat = np.zeros((12, 40, 40), np.float32)
    heat[3, 20, 20] = 2.0
    heat[6, 20, 20] = 1.0  # 3 slices away
    found = lambda n: len(detect(heat, min_distance_px=3, min_distance_slices=n,
                                 threshold=0.5)[0])
    assert found(1) == 2 and found(2) == 2
    assert found(3) == 1
    with pytest.raises(ValueError, match="min_distance_slices"):
        detect(heat, min_distance_slices=-1)
