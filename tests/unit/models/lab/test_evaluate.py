"""Tests for models.lab.evaluate: evaluation cases, bootstrap figures, method comparison."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from models.lab.evaluate import (
    METHODS,
    compare_methods,
    evaluate_cases,
    method_heatmaps,
)
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
            heat += np.exp(-(((yy - cy) / 6.0) ** 2 + ((xx - cx) / 6.0) ** 2
                             + ((zz - cz) / 2) ** 2))
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
    frac = lambda: lesion_mask_frac(pairs)
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


@pytest.fixture
def tiny_setup():
    """A tiny random PICARD at 0.8 mm and two tiny phantoms with one mass each."""
    import torch

    from models.lab.phantom import make_phantom
    from tests.helpers.tiny_models import tiny_card, tiny_picard

    torch.set_num_threads(1)
    model = tiny_picard(tiny_card(stride=16, pixel_spacing_mm=0.8, batch_size=5))
    exams = [make_phantom(seed=s, lesions=1, slices=4, rows=64, cols=48, pixel_spacing_mm=0.8,
                          lesion_diameter_mm=(8.0, 12.0)) for s in range(2)]
    return model, exams


def test_compare_methods_reports_every_baseline_and_rule(tiny_setup) -> None:
    import json

    from models.lab.baselines import BASELINES

    model, exams = tiny_setup
    r = compare_methods(model, exams, m=3, n_boot=20, print_table=False)
    json.dumps(r)
    assert set(r["methods"]) == set(METHODS) | set(BASELINES)
    for res in r["methods"].values():
        assert 0.0 <= res["pixel_auroc"]["value"] <= 1.0
        for metric in ("pixel_auroc", "pixel_ap", "sens@0.5fp", "sens@1fp", "sens@2fp",
                       "sens@4fp"):
            assert {"value", "lo", "hi"} <= set(res[metric])
        assert res["pixel_auroc"]["lo"] <= res["pixel_auroc"]["hi"]
    # what each row computed
    spec = r["specs"]["MeanCD feature"]
    assert (spec["rule"], spec["space"], spec["M"], spec["p"], spec["mode"]) == \
        ("mean", "feature", 3, 0.5, "exact")
    assert r["specs"]["single image"]["M"] == 1 and r["specs"]["single image"]["dropout"] is False
    assert r["specs"]["DoG 1-8 mm"]["sigma_large_mm"] == 8.0
    assert "MCD image: min of M=3, p=0.5, exact" in r["table"]
    # whole volumes, DBTex rule
    assert r["settings"]["whole_volumes"] and r["settings"]["n_slices_scored"] == 8
    assert r["settings"]["hit_rule"] == "dbtex"
    # every dropout rule minus each trivial baseline and minus the single completion
    for rule in ("MCD image", "MeanCD image", "MCD feature", "MeanCD feature"):
        space = rule.split()[1]
        for other in [*BASELINES, f"single {space}"]:
            d = r["paired"][f"{rule} - {other}"]["pixel_auroc"]
            assert d["value"] == pytest.approx(r["methods"][rule]["pixel_auroc"]["value"]
                                               - r["methods"][other]["pixel_auroc"]["value"])
            assert d["lo"] <= d["hi"]
    assert r["validation"] is None


def test_compare_methods_with_validation_compares_with_the_chosen_baseline(tiny_setup) -> None:
    from models.lab.phantom import make_phantom

    model, exams = tiny_setup
    val = [make_phantom(seed=s, lesions=1, slices=4, rows=64, cols=48, pixel_spacing_mm=0.8,
                        lesion_diameter_mm=(8.0, 12.0)) for s in (50, 51)]
    r = compare_methods(model, exams[:1], m=2, n_boot=5, print_table=False, validation=val,
                        slices=lambda e: [0, 1], keep_heatmaps=True)
    best = r["validation"]["best_baseline"]
    assert best in r["validation"]["scores"]
    assert sorted(r["paired"]) == sorted(
        f"{rule} - {other}" for rule in ("MCD image", "MeanCD image", "MCD feature",
                                         "MeanCD feature")
        for other in (best, f"single {rule.split()[1]}"))
    assert r["slices"] == [[0, 1]] and r["heatmaps"]["raw intensity"][0].shape == (2, 64, 48)
    with pytest.raises(ValueError, match="hit_rule must be one of"):
        compare_methods(model, exams, hit_rule="iou")


def test_method_heatmaps_share_completions_and_batch_across_slices(tiny_setup) -> None:
    model, exams = tiny_setup
    vol = exams[0].volume
    maps = method_heatmaps(model, vol, [1], m=3)
    again = method_heatmaps(model, vol, [1], m=3)
    whole = method_heatmaps(model, vol, m=3)  # batches mix windows of several slices
    air = vol[1] <= model.card["tissue_level"]
    for k in METHODS:
        assert maps[k].shape == (1, 64, 48) and np.isfinite(maps[k]).all()
        np.testing.assert_array_equal(maps[k], again[k])
        assert np.all(maps[k][0][air] == 0.0)
        assert whole[k].shape == (4, 64, 48)
    # without dropout the score of a window does not depend on its batch
    for k in ("single image", "single feature"):
        np.testing.assert_allclose(whole[k][1], maps[k][0], rtol=1e-5, atol=1e-5)
    # the minimum over completions never exceeds their mean (per window, hence per pixel)
    for space in ("image", "feature"):
        assert np.all(maps[f"MCD {space}"] <= maps[f"MeanCD {space}"] + 1e-4)
    only = method_heatmaps(model, vol, [1], m=3, methods=["single image"])
    assert list(only) == ["single image"]
    with pytest.raises(ValueError, match="unknown methods"):
        method_heatmaps(model, vol, [1], methods=["MedCD image"])


def test_method_heatmaps_of_a_finer_volume_are_scored_on_the_model_grid(tiny_setup) -> None:
    from models.stream import load_slice, resample_slice

    model, _ = tiny_setup  # a 0.8 mm model
    from models.lab.phantom import make_phantom

    fine = make_phantom(seed=4, lesions=1, slices=3, rows=128, cols=96, pixel_spacing_mm=0.4,
                        lesion_diameter_mm=(8.0, 12.0)).volume
    maps = method_heatmaps(model, fine, [0, 2], m=2, seed=1, pixel_spacing_mm=0.4)
    coarse = np.stack([load_slice(fine[z], (64, 48), None) for z in (0, 2)])
    on_grid = method_heatmaps(model, coarse, m=2, seed=1, mask_air=False)
    air = fine[[0, 2]] <= model.card["tissue_level"]
    for k in METHODS:
        assert maps[k].shape == (2, 128, 96)
        expected = np.stack([resample_slice(s, (128, 96)) for s in on_grid[k]])
        expected[air] = 0.0
        np.testing.assert_allclose(maps[k], expected, rtol=1e-6, atol=1e-6)
        assert maps[k][~air].std() > 0
    same = method_heatmaps(model, coarse, m=2, seed=1, pixel_spacing_mm=0.8)
    masked = method_heatmaps(model, coarse, m=2, seed=1)
    for k in METHODS:
        np.testing.assert_array_equal(same[k], masked[k])
    # tissue next to the skin line keeps the score of its windows: no air pulled in from the
    # coarser grid
    from scipy import ndimage

    skin = ~air & ndimage.binary_dilation(air, np.ones((1, 5, 5), bool))  # within 2 px of air
    assert skin.any()
    for k in ("MeanCD image", "single image"):
        assert (maps[k][skin] > 0).all()


def test_slice_subset_keeps_z_distances() -> None:
    from models.lab.evaluate import _SliceView
    from models.lab.phantom import make_phantom

    exam = make_phantom(seed=3, lesions=1, slices=24, rows=160, cols=128, pixel_spacing_mm=0.4,
                        lesion_diameter_mm=(6.0, 8.0))
    zc, yc, xc = (round(c) for c in exam.lesions[0]["center_zyx"])
    far = (zc + 12) % 24
    view = _SliceView(exam, sorted([zc, far]))
    assert len(view.lesions) == 1 and view.lesion_mask.shape == (2, 160, 128)
    lo, hi = view.lesions[0]["slice_extent"]
    assert lo <= zc <= hi and not lo <= far <= hi
    heat = np.zeros((2, 160, 128), np.float32)
    k_far = sorted([zc, far]).index(far)
    heat[k_far, yc, xc] = 1.0  # a detection right above the lesion, but 12 slices away
    for rule in ("mask_or_radius", "dbtex"):
        c = evaluate_cases([heat], [view], hit_rule=rule)[0].candidates
        assert c.lesion_index[c.scores > 0].tolist() == [-1]
    heat[1 - k_far, yc, xc] = 2.0  # and one on the lesion's own slice
    for rule in ("mask_or_radius", "dbtex"):
        c = evaluate_cases([heat], [view], hit_rule=rule)[0].candidates
        assert c.lesion_index[c.scores > 0].tolist() == [0, -1]
    # a lesion whose slices are not scored is dropped
    assert _SliceView(exam, [far]).lesions == []


def test_whole_volume_fp_per_volume_with_dbtex_rule() -> None:
    """Two whole volumes: false detections on any slice count, divided by 2 volumes."""
    from models.lab.metrics import froc

    pairs = [_case(s, perfect=True, n_les=1) for s in range(2)]
    heats = []
    for k, (heat, truth) in enumerate(pairs):
        heat = np.full_like(heat, -1.0)
        cz, cy, cx = truth.lesions[0]["center_zyx"]
        heat[cz, cy, cx] = 10.0
        for z in (0, 5):  # two false detections each, 22 mm from the lesion, on two slices
            heat[z, 80, 80 - 60 * k] = 5.0 - z / 10
        heats.append(heat)
    cases = evaluate_cases(heats, [t for _, t in pairs], hit_rule="dbtex",
                           min_distance_slices=1)
    positive = [c.candidates.scores > 0 for c in cases]
    assert [int((c.candidates.lesion_index[m] < 0).sum()) for c, m in zip(cases, positive)] \
        == [2, 2]
    assert [int((c.candidates.lesion_index[m] >= 0).sum()) for c, m in zip(cases, positive)] \
        == [1, 1]
    curve = froc([c.candidates for c in cases])
    above = curve["thresholds"] > 0
    # tied scores in both volumes: 2 false detections per threshold step, over 2 volumes
    assert curve["fp_per_volume"][above].tolist() == [0.0, 1.0, 2.0]
    sens = sensitivity_at([c.candidates for c in cases], (0.5, 2.0))
    assert sens == {0.5: 1.0, 2.0: 1.0}


def test_synthetic_exams_are_the_cli_exams() -> None:
    from models.lab.evaluate import synthetic_exams
    from models.lab.phantom import make_phantom

    a = synthetic_exams(9000, 2, slices=2, rows=64, cols=48, pixel_spacing_mm=0.8)
    assert [e.view for e in a] == ["MLO", "CC"]  # 9000 is divisible by 3
    b = make_phantom(seed=9001, lesions=1, slices=2, rows=64, cols=48, pixel_spacing_mm=0.8,
                     view="CC", density=float(np.random.default_rng(9001).uniform(0.2, 0.8)),
                     lesion_diameter_mm=(5.0, 30.0))
    np.testing.assert_array_equal(a[1].volume, b.volume)
    assert len(a[0].lesions) == 1


def test_select_rule_on_validation_picks_the_best_row(tiny_setup) -> None:
    import json

    from models.lab.evaluate import ROW_TO_CARD, select_rule_on_validation

    model, exams = tiny_setup
    p_before = model.card["dropout"]["p"]
    r = select_rule_on_validation(model, exams, p_grid=(0.5, 0.25), m=2)
    json.dumps(r)
    assert model.card["dropout"]["p"] == p_before  # restored
    # every dropout rule at each p, the single-completion rows once
    expected = {f"{n} p={p}" for n in METHODS if ROW_TO_CARD[n][2] for p in (0.5, 0.25)}
    expected |= {"single image p=0.0", "single feature p=0.0"}
    assert set(r["table"]) == expected
    eligible = [v for v in r["table"].values() if v["pixel_auroc"] > 0.5]
    best = max(eligible, key=lambda v: v["selection_score"])
    chosen = r["chosen"]
    assert chosen["selection_score"] == best["selection_score"]
    key = f"{chosen['row']} p={chosen['p']}"
    assert r["table"][key]["threshold"] == chosen["threshold"]
    assert chosen["metric"] == ROW_TO_CARD[chosen["row"]][0]
    # the p=0.5 scores equal compare_methods' values on the same exams (same protocol)
    c = compare_methods(model, exams, m=2, n_boot=0, print_table=False)
    for n in METHODS:
        key = f"{n} p={0.5 if ROW_TO_CARD[n][2] else 0.0}"
        assert r["table"][key]["pixel_auroc"] == pytest.approx(
            c["methods"][n]["pixel_auroc"]["value"])


def test_choose_rule_skips_rules_below_chance() -> None:
    from models.lab.evaluate import choose_rule

    def row(auroc: float, score: float) -> dict:
        return {"pixel_auroc": auroc, "sens@2fp": score - auroc, "selection_score": score,
                "threshold": 1.0}

    table = {"MeanCD image p=0.1": row(0.45, 0.99),   # hits masses, ranks pixels below chance
             "MeanCD image p=0.5": row(0.64, 0.85),
             "single feature p=0.0": row(0.61, 0.90)}
    chosen = choose_rule(table, m=10)
    assert (chosen["row"], chosen["p"], chosen["M"]) == ("single feature", 0.0, 1)
    assert chosen["validation"] == {"pixel_auroc": 0.61, "sens@2fp": pytest.approx(0.29)}
    assert choose_rule(table, m=10, min_pixel_auroc=0.0)["row"] == "MeanCD image"
    assert choose_rule({"MCD image p=0.5": row(0.3, 2.0)}, m=10) is None
