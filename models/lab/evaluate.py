"""Evaluation of PICARD heatmaps on exams with ground truth, beside trivial baselines.

:func:`evaluate_cases` reduces each heatmap volume and its truth (a
:class:`models.lab.phantom.Phantom` or anything shaped like one) to a
:class:`models.lab.metrics.Case`: the detections matched to the lesions and the pixel scores
inside the breast, which :func:`models.lab.metrics.bootstrap_metrics` turns into figures with
confidence intervals.

:func:`compare_methods` runs one model over the same exams with the scoring rules of the
PICARD paper (minimum and mean completion distance over M dropout completions, in image and
critic-feature space), one deterministic completion (M = 1, dropout off) and the trivial
baselines of :mod:`models.lab.baselines` (raw intensity, difference of Gaussians), all
measured the same way:

* **Whole volumes** -- every slice of every volume is scored (the paper's exact procedure:
  every tissue window of every slice, all M completions; no fast-mode shortcuts).
  Completions are drawn once per window and every rule is computed from them
  (:func:`method_heatmaps`), with windows of several slices batched together.
* **Pixel level** -- AUROC and average precision over the pixels inside the breast.
* **Lesion level** -- detections are local maxima of the heatmap volume (non-maximum
  suppression 5 mm in plane and in depth, inside the breast); a detection is a true positive
  by the DBTex rule (:func:`models.lab.metrics.match_dbtex`: in-plane distance to the
  lesion centre at most ``max(diameter / 2, 10 mm)``, slice within the lesion's slice
  extent); false positives per volume = false detections over all slices of all volumes /
  number of volumes; sensitivity at 0.5, 1, 2 and 4 FP per volume.
* **Uncertainty** -- 95 % percentile bootstrap over volumes, the same resamples for every
  row, so differences between rows come with paired CIs: each PICARD rule minus each trivial
  baseline (or minus the one that did best on a validation set, when one is given) and minus
  the single completion in the same space.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from models.lab.baselines import BASELINES, Baseline
from models.lab.metrics import (
    DBTEX_MIN_DISTANCE_MM,
    FP_RATES,
    HIT_RULES,
    Case,
    bootstrap_indices,
    bootstrap_metrics,
    detect,
    flatten_pixels,
    lesion_slice_extent,
    match_candidates,
    match_dbtex,
)
from models.lab.rule_heatmaps import METHODS, method_heatmaps, method_specs

logger = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "ROW_TO_CARD",
    "choose_rule",
    "compare_methods",
    "evaluate_cases",
    "format_table",
    "method_heatmaps",
    "method_specs",
    "select_rule_on_validation",
    "synthetic_exams",
]


# --------------------------------------------------------------------------------------------
# the synthetic evaluation exams


def synthetic_exams(first_seed: int, count: int, *, slices: int = 24, rows: int = 224,
                    cols: int = 160, pixel_spacing_mm: float = 0.4) -> list[Any]:
    """The lesion phantoms of ``picard-node evaluate`` (validation and test sets).

    One 5-30 mm mass per volume, seeds ``first_seed .. first_seed + count - 1``; view (MLO
    for seeds divisible by 3, CC otherwise) and density (uniform 0.2-0.8 from the seed's
    generator) drawn from the seed; the breast fitted into ``rows x cols`` at
    ``pixel_spacing_mm``. ``picard-node evaluate`` and ``scripts/train_default_bundle.py``
    both build their exams here, so the same seeds give the same volumes.
    """
    from models.lab.phantom import make_phantom

    return [make_phantom(seed=s, lesions=1, slices=slices, rows=rows, cols=cols,
                         pixel_spacing_mm=pixel_spacing_mm,
                         view="MLO" if s % 3 == 0 else "CC",
                         density=float(np.random.default_rng(s).uniform(0.2, 0.8)),
                         lesion_diameter_mm=(5.0, 30.0))
            for s in range(first_seed, first_seed + count)]


# --------------------------------------------------------------------------------------------
# per-case evaluation


class _VolumeLike(Protocol):
    """What the evaluation reads of a volume's truth (:class:`models.lab.phantom.Phantom`)."""

    lesion_mask: np.ndarray
    lesions: list[dict]
    breast_mask: np.ndarray
    pixel_spacing_mm: float
    slice_thickness_mm: float


def _make_case(heatmap: np.ndarray, truth: _VolumeLike, *, inside_breast: bool,
               min_distance_mm: float, hit_rule: str,
               min_distance_slices: int | None) -> Case:
    """Detections matched to the lesions and the counted pixels of one volume."""
    hm = np.asarray(heatmap, np.float32)
    if hm.shape != truth.lesion_mask.shape:
        raise ValueError(f"heatmap shape {hm.shape} differs from lesion_mask shape "
                         f"{truth.lesion_mask.shape}")
    region = np.broadcast_to(truth.breast_mask, hm.shape) if inside_breast else None
    nms = max(1, round(min_distance_mm / truth.pixel_spacing_mm))
    nms_z = 1 if min_distance_slices is None else int(min_distance_slices)
    bm = truth.breast_mask if inside_breast else None
    positions = getattr(truth, "slice_positions", None)
    if positions is not None and np.any(np.diff(positions) != 1):
        # scored slices are not neighbours: no suppression across them
        found = [detect(hm[k:k + 1], min_distance_px=nms, breast_mask=bm) for k in range(len(hm))]
        centers = np.concatenate([c + [k, 0, 0] for k, (c, _) in enumerate(found)])
        scores = np.concatenate([sc for _, sc in found])
        order = np.argsort(-scores, kind="stable")
        centers, scores = centers[order], scores[order]
    else:
        centers, scores = detect(hm, min_distance_px=nms, breast_mask=bm,
                                 min_distance_slices=nms_z)
    if hit_rule == "dbtex":
        extents = [lesion_slice_extent(les, truth.lesion_mask,
                                       pixel_spacing_mm=truth.pixel_spacing_mm,
                                       slice_thickness_mm=truth.slice_thickness_mm,
                                       z_positions=positions) for les in truth.lesions]
        cands = match_dbtex(centers, scores, truth.lesions,
                            pixel_spacing_mm=truth.pixel_spacing_mm, slice_extents=extents,
                            z_positions=positions)
    elif hit_rule == "mask_or_radius":
        cands = match_candidates(centers, scores, truth.lesions, lesion_mask=truth.lesion_mask,
                                 pixel_spacing_mm=truth.pixel_spacing_mm,
                                 slice_thickness_mm=truth.slice_thickness_mm,
                                 z_positions=positions)
    else:
        raise ValueError(f"hit_rule must be one of {HIT_RULES}, got {hit_rule!r}")
    s, y = flatten_pixels(hm, truth.lesion_mask, region)
    keep = np.isfinite(s)
    return Case(candidates=cands, pos_hist=np.zeros(0), neg_hist=np.zeros(0),
                scores=s[keep].astype(np.float32), labels=y[keep])


def evaluate_cases(heatmaps: Sequence[np.ndarray], truths: Sequence[_VolumeLike], *,
                   inside_breast: bool = True, min_distance_mm: float = 5.0,
                   hit_rule: str = "mask_or_radius",
                   min_distance_slices: int | None = None) -> list[Case]:
    """Reduce heatmap/truth pairs to :class:`models.lab.metrics.Case` objects for the metrics.

    Parameters
    ----------
    heatmaps : sequence of numpy.ndarray
        ``(Z, H, W)`` scores per volume (NaN pixels are ignored).
    truths : sequence
        Objects with ``lesion_mask``, ``lesions``, ``breast_mask``, ``pixel_spacing_mm`` and
        ``slice_thickness_mm`` (e.g. :class:`models.lab.phantom.Phantom`).
    inside_breast : bool, default True
        Count only pixels and detections inside the breast.
    min_distance_mm : float, default 5
        In-plane non-maximum suppression distance for detections.
    hit_rule : {"mask_or_radius", "dbtex"}, default "mask_or_radius"
        Lesion-level matching: :func:`models.lab.metrics.match_candidates` or
        :func:`models.lab.metrics.match_dbtex` (:func:`compare_methods` uses ``dbtex``).
    min_distance_slices : int, optional
        Non-maximum suppression distance along ``z`` in slices (default 1).

    Returns
    -------
    list of models.lab.metrics.Case
        One per volume, for :func:`models.lab.metrics.bootstrap_metrics`.
    """
    if len(heatmaps) != len(truths):
        raise ValueError(f"{len(heatmaps)} heatmaps for {len(truths)} truths")
    if hit_rule not in HIT_RULES:
        raise ValueError(f"hit_rule must be one of {HIT_RULES}, got {hit_rule!r}")
    return [_make_case(h, t, inside_breast=inside_breast, min_distance_mm=min_distance_mm,
                       hit_rule=hit_rule, min_distance_slices=min_distance_slices)
            for h, t in zip(heatmaps, truths)]


# --------------------------------------------------------------------------------------------
# method comparison


def _selection_score(r: Mapping[str, Mapping[str, float]], fp_rates: Sequence[float]) -> float:
    """Validation criterion: pixel AUROC + mean lesion sensitivity over ``fp_rates``."""
    sens = [r[f"sens@{f:g}fp"]["value"] for f in fp_rates]
    return float(r["pixel_auroc"]["value"] + np.nanmean(sens))


def _choose_baseline(validation: Sequence[Any], baselines: Mapping[str, Baseline], *,
                     tissue_level: float, inside_breast: bool, fp_rates: Sequence[float],
                     eval_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The trivial baseline with the best selection score on the validation exams."""
    scores: dict[str, dict[str, float]] = {}
    for name, b in baselines.items():
        heat = [b(e.volume, pixel_spacing_mm=e.pixel_spacing_mm, tissue_level=tissue_level)
                for e in validation]
        cases = evaluate_cases(heat, validation, inside_breast=inside_breast, **eval_kwargs)
        r = bootstrap_metrics(cases, n_boot=0, fp_rates=fp_rates)
        r.pop("_samples")
        scores[name] = {**{k: v["value"] for k, v in r.items()},
                        "selection_score": _selection_score(r, fp_rates)}
    best = max(scores, key=lambda n: scores[n]["selection_score"])
    return {"best_baseline": best, "n_exams": len(validation),
            "criterion": "pixel AUROC + mean lesion sensitivity at the FP rates",
            "scores": scores}


def _paired(results: dict[str, dict[str, dict[str, float]]],
            samples: dict[str, dict[str, np.ndarray]], a: str, b: str,
            alpha: float = 0.05) -> dict[str, dict[str, float]]:
    """Point difference ``a - b`` and its percentile CI from the shared bootstrap resamples."""
    out: dict[str, dict[str, float]] = {}
    for metric in results[a]:
        d = samples[a][metric] - samples[b][metric]
        d = d[np.isfinite(d)]
        lo, hi = (np.quantile(d, [alpha / 2, 1 - alpha / 2]) if d.size
                  else (float("nan"), float("nan")))
        out[metric] = {"value": results[a][metric]["value"] - results[b][metric]["value"],
                       "lo": float(lo), "hi": float(hi)}
    return out


def compare_methods(model: Any, exams: Sequence[Any], *, m: int = 10, n_boot: int = 1000,
                    seed: int = 0, slices: Callable[[Any], Sequence[int]] | None = None,
                    inside_breast: bool = True, fp_rates: Sequence[float] = FP_RATES,
                    validation: Sequence[Any] | None = None,
                    baselines: Mapping[str, Baseline] | None = None,
                    hit_rule: str = "dbtex", min_distance_mm: float = 5.0,
                    progress: bool = False, print_table: bool = True,
                    keep_heatmaps: bool = False) -> dict[str, Any]:
    """Every PICARD rule beside trivial baselines, on whole volumes, with paired CIs.

    Rows: the trivial baselines (:data:`models.lab.baselines.BASELINES`: raw intensity,
    difference of Gaussians), one deterministic completion (M = 1, dropout off) in image and
    feature space, and the dropout rules (min = MCD and mean = MeanCD of ``m`` completions,
    image and feature space; :func:`method_specs`). The completions are drawn once per
    window and every rule is scored from them (:func:`method_heatmaps`).

    Parameters
    ----------
    model : models.picard.Picard
        A loaded model (its card gives window, hole, stride, dropout p and pixel spacing).
    exams : sequence
        Phantom-like objects (``volume``, ``lesion_mask``, ``lesions``, ``breast_mask``,
        ``pixel_spacing_mm``, ``slice_thickness_mm``) at any pixel spacing (the model
        scores each slice on its own grid and its maps are resampled back, as in the node).
    m : int, default 10
        Completions per window for the dropout rules.
    n_boot, seed : int
        Bootstrap resamples and seed (shared by all rows: paired comparisons); ``seed`` also
        seeds the dropout draws.
    slices : callable, optional
        ``exam -> slice indices`` to score; default: every slice (whole volumes). With a
        subset, "per volume" means per scored-slice stack and lesions none of whose slices
        are scored are left out.
    inside_breast : bool, default True
        Count only pixels and detections inside the breast.
    fp_rates : sequence of float
        Operating points (false positives per volume) for lesion sensitivity.
    validation : sequence, optional
        Phantom-like exams (not the test exams) on which the best trivial baseline is chosen
        (pixel AUROC + mean sensitivity at ``fp_rates``); the paired rows then compare each
        PICARD rule with that baseline only. Without it, with each baseline.
    baselines : mapping, optional
        ``{name: Baseline}``; default :data:`models.lab.baselines.BASELINES`.
    hit_rule : {"dbtex", "mask_or_radius"}, default "dbtex"
        Lesion-level matching (:func:`evaluate_cases`).
    min_distance_mm : float, default 5
        Non-maximum suppression distance of detections, in plane and along ``z``.
    progress : bool, default False
        Show a tqdm progress bar.
    print_table : bool, default True
        Print the table to stdout.
    keep_heatmaps : bool, default False
        Add ``heatmaps`` (``{row: [per-exam (n_slices, H, W) arrays]}``, not JSON-able) and
        ``slices`` (scored slice indices per exam) to the result.

    Returns
    -------
    dict
        JSON-able: ``methods`` (``{row: {metric: {value, lo, hi}}}``), ``specs`` (what each
        row computed: rule, space, M, p, mode; baseline parameters), ``paired`` (bootstrap
        CIs of differences), ``validation`` (baseline choice, or None), ``table`` (text) and
        ``settings`` (protocol).
    """
    exams = list(exams)
    if not exams:
        raise ValueError("no exams to compare on")
    if hit_rule not in HIT_RULES:
        raise ValueError(f"hit_rule must be one of {HIT_RULES}, got {hit_rule!r}")
    chosen_baselines = dict(BASELINES if baselines is None else baselines)
    t0 = time.time()
    card = model.card
    tissue_level = float(card["tissue_level"])
    pspecs = method_specs(model, m)
    specs: dict[str, dict[str, Any]] = {}
    for name, b in chosen_baselines.items():
        specs[name] = b.spec(tissue_level=tissue_level)
    rows = [n for n in METHODS if METHODS[n][0] == "single"] + \
           [n for n in METHODS if METHODS[n][0] == "mcd"]
    for name in rows:
        specs[name] = pspecs[name]
    eval_kwargs: dict[str, Any] = {"min_distance_mm": min_distance_mm, "hit_rule": hit_rule}

    val_report = None
    if validation:  # chosen before any test volume is scored; validation volumes are whole
        val = list(validation)
        nms_z = max(1, round(min_distance_mm / float(val[0].slice_thickness_mm)))
        val_report = _choose_baseline(val, chosen_baselines, tissue_level=tissue_level,
                                      inside_breast=inside_breast, fp_rates=fp_rates,
                                      eval_kwargs={**eval_kwargs,
                                                   "min_distance_slices": nms_z})
        logger.info("best trivial baseline on %d validation volumes: %s", len(val),
                    val_report["best_baseline"])

    cases: dict[str, list[Case]] = {k: [] for k in specs}
    kept: dict[str, list[np.ndarray]] = {k: [] for k in specs}
    truths: list[_SliceView] = []
    n_slices = 0
    iterator: Iterable[Any] = exams
    if progress:
        from tqdm import tqdm

        iterator = tqdm(exams, desc="compare", unit="volume")
    for exam in iterator:
        t_exam = time.time()
        z_all = exam.volume.shape[0]
        idx = list(range(z_all)) if slices is None else [int(z) for z in slices(exam)]
        truth = _SliceView(exam, idx)
        truths.append(truth)
        n_slices += len(idx)
        nms_z = max(1, round(min_distance_mm / float(exam.slice_thickness_mm)))
        maps = method_heatmaps(model, exam.volume, idx, m=m, seed=seed,
                               pixel_spacing_mm=exam.pixel_spacing_mm)
        for name, b in chosen_baselines.items():
            maps[name] = b(exam.volume, pixel_spacing_mm=exam.pixel_spacing_mm,
                           tissue_level=tissue_level)[idx]
        for name in specs:
            cases[name].append(_make_case(maps[name], truth, inside_breast=inside_breast,
                                          min_distance_slices=nms_z, **eval_kwargs))
            if keep_heatmaps:
                kept[name].append(maps[name])
        logger.info("volume %d/%d: %d slices in %.1f s", len(truths), len(exams), len(idx),
                    time.time() - t_exam)

    indices = bootstrap_indices(len(exams), n_boot, seed)
    results: dict[str, dict[str, dict[str, float]]] = {}
    samples: dict[str, dict[str, np.ndarray]] = {}
    for name in specs:
        r = bootstrap_metrics(cases[name], n_boot=n_boot, seed=seed, fp_rates=fp_rates,
                              indices=indices)
        samples[name] = r.pop("_samples")  # type: ignore[assignment]
        results[name] = r
    paired: dict[str, dict[str, dict[str, float]]] = {}
    versus = ([val_report["best_baseline"]] if val_report is not None
              else list(chosen_baselines))
    for name in rows:
        sampling, _, space = METHODS[name]
        if sampling != "mcd":
            continue
        for other in versus + [f"single {space}"]:
            paired[f"{name} - {other}"] = _paired(results, samples, name, other)

    labels = {k: v["label"] for k, v in specs.items()}
    scope = (f"whole volumes, {n_slices} slices" if slices is None
             else f"{n_slices} selected slices")
    caption = [
        (f"{len(exams)} volumes ({scope}); pixel metrics inside the breast; lesions: "
         f"{_hit_rule_text(hit_rule)}; detections: local maxima, {min_distance_mm:g} mm "
         f"suppression; FP per volume over all scored slices; 95 % bootstrap CIs over volumes "
         f"(n={n_boot}, shared resamples)."),
    ]
    if val_report is not None:
        caption.append(f"Best trivial baseline on {val_report['n_exams']} validation volumes: "
                       f"{val_report['best_baseline']} ({val_report['criterion']}).")
    table = format_table(results, paired, labels=labels) + "\n\n" + "\n".join(caption)
    if print_table:
        print(table)
    settings = {
        "m": m, "p": float(card["dropout"]["p"]), "mode": "exact", "n_boot": n_boot,
        "seed": seed, "n_exams": len(exams), "n_slices_scored": n_slices,
        "whole_volumes": slices is None,
        "n_lesions": int(sum(len(t.lesions) for t in truths)),
        "inside_breast": inside_breast, "fp_rates": list(fp_rates),
        "hit_rule": hit_rule,
        "hit_rule_text": _hit_rule_text(hit_rule),
        "nms_mm": min_distance_mm,
        "fp_per_volume": "false detections over all scored slices of all volumes / volumes",
        "paired": ("row minus the validation-chosen trivial baseline and minus the single "
                   "completion in the same space" if val_report is not None else
                   "row minus each trivial baseline and minus the single completion in the "
                   "same space") + "; percentile bootstrap over volumes, shared resamples",
        "seconds": round(time.time() - t0, 1),
    }
    out: dict[str, Any] = {"methods": results, "specs": specs, "paired": paired,
                           "validation": val_report, "table": table, "settings": settings}
    json.dumps(out, allow_nan=True)  # fail here, not in the caller, if something is not JSON-able
    if keep_heatmaps:
        out["heatmaps"] = kept
        out["slices"] = [t.slice_positions.tolist() for t in truths]
    return out


#: A rule must rank lesion pixels above chance on validation to be chosen (:func:`choose_rule`).
MIN_PIXEL_AUROC = 0.5

#: compare_methods row -> card settings (metric, M, dropout at inference)
ROW_TO_CARD: dict[str, tuple[str, int, bool]] = {
    "MCD image": ("MCD_image", 10, True),
    "MCD feature": ("MCD_feature", 10, True),
    "MeanCD image": ("MeanCD_image", 10, True),
    "MeanCD feature": ("MeanCD_feature", 10, True),
    "single image": ("MCD_image", 1, False),
    "single feature": ("MCD_feature", 1, False),
}


def select_rule_on_validation(model: Any, exams: Sequence[Any], *,
                              p_grid: Sequence[float] = (0.5,), m: int = 10, seed: int = 0,
                              fp_rates: Sequence[float] = FP_RATES, fp_for_threshold: float = 1.0,
                              min_distance_mm: float = 5.0, hit_rule: str = "dbtex",
                              min_pixel_auroc: float = MIN_PIXEL_AUROC,
                              progress: bool = False) -> dict[str, Any]:
    """Choose the PICARD scoring rule, dropout p and SEG threshold on validation exams.

    Every slice of every exam is scored as :func:`compare_methods` scores it (same
    completions, seed, detections, hit rule, metrics), for each rule of :data:`METHODS` and
    each dropout ``p`` of ``p_grid`` (the single-completion rows, which use no dropout, once).
    The criterion is pixel AUROC + mean lesion sensitivity at ``fp_rates`` among the rules
    whose pixel AUROC exceeds ``min_pixel_auroc`` (:func:`choose_rule`); the threshold is
    the lowest score of the chosen rule with at most ``fp_for_threshold`` false-positive
    detections per volume (:func:`models.lab.metrics.threshold_for_fp_rate`). Use validation
    exams only: the choice must not see the test set.

    Returns
    -------
    dict
        JSON-able: ``table`` (``{"<row> p=<p>": {metric: value, selection_score,
        threshold}}``), ``chosen`` (``row``, ``metric``, ``M``, ``p``, ``selection_score``,
        ``threshold``, ``validation``), ``p_grid``, ``n_exams``, ``criterion``.
    """
    from models.lab.metrics import threshold_for_fp_rate

    exams = list(exams)
    if not exams:
        raise ValueError("no validation exams")
    card = model.card
    p0 = float(card["dropout"]["p"])
    mcd_rows = [n for n in METHODS if METHODS[n][0] == "mcd"]
    table: dict[str, dict[str, float]] = {}
    try:
        for i, p in enumerate(p_grid):
            card["dropout"]["p"] = float(p)
            names = list(METHODS) if i == 0 else mcd_rows
            cases: dict[str, list[Case]] = {n: [] for n in names}
            for exam in exams:
                t = time.time()
                idx = list(range(exam.volume.shape[0]))
                maps = method_heatmaps(model, exam.volume, idx, m=m, seed=seed, methods=names,
                                       pixel_spacing_mm=exam.pixel_spacing_mm)
                truth = _SliceView(exam, idx)
                nms_z = max(1, round(min_distance_mm / float(exam.slice_thickness_mm)))
                for n in names:
                    cases[n].append(_make_case(maps[n], truth, inside_breast=True,
                                               min_distance_mm=min_distance_mm,
                                               hit_rule=hit_rule, min_distance_slices=nms_z))
                if progress:
                    logger.info("validation p=%g: volume scored in %.1f s", p, time.time() - t)
            for n in names:
                r = bootstrap_metrics(cases[n], n_boot=0, fp_rates=fp_rates)
                r.pop("_samples")
                drop = METHODS[n][0] == "mcd"
                key = f"{n} p={float(p) if drop else 0.0}"
                score = _selection_score(r, fp_rates)
                thr = threshold_for_fp_rate([c.candidates for c in cases[n]], fp_for_threshold)
                values = {k: v["value"] for k, v in r.items()}
                table[key] = {**values, "selection_score": score, "threshold": thr}
                logger.info("validation %-28s score %.3f auroc %.3f", key, score,
                            values["pixel_auroc"])
    finally:
        card["dropout"]["p"] = p0
    return {"table": table, "chosen": choose_rule(table, m=m, min_pixel_auroc=min_pixel_auroc),
            "p_grid": [float(p) for p in p_grid],
            "n_exams": len(exams), "fp_for_threshold": fp_for_threshold,
            "criterion": "pixel AUROC + mean lesion sensitivity at "
                         f"{'/'.join(f'{f:g}' for f in fp_rates)} FP per volume, among the "
                         f"rules with pixel AUROC > {min_pixel_auroc:g}",
            "min_pixel_auroc": float(min_pixel_auroc),
            "stride": int(card["stride"])}


def choose_rule(table: dict[str, dict[str, float]], *, m: int = 10,
                min_pixel_auroc: float = MIN_PIXEL_AUROC) -> dict[str, Any] | None:
    """The row of a validation ``table`` (:func:`select_rule_on_validation`) with the highest
    selection score among those whose pixel AUROC exceeds ``min_pixel_auroc``.

    A rule that ranks lesion pixels below normal tissue on validation is not shipped, however
    many masses its peaks happened to hit: with one mass per volume, lesion sensitivity moves
    in steps of one mass. Ties keep the first row in table order. None when no row qualifies.
    """
    best: dict[str, Any] | None = None
    for key, values in table.items():
        if not values["pixel_auroc"] > min_pixel_auroc:
            continue
        name, _, p_text = key.rpartition(" p=")
        p = float(p_text)
        drop = METHODS[name][0] == "mcd"
        if best is None or values["selection_score"] > best["selection_score"]:
            best = {"row": name, "metric": ROW_TO_CARD[name][0], "M": m if drop else 1,
                    "p": p if drop else 0.0, "selection_score": values["selection_score"],
                    "threshold": values["threshold"],
                    "validation": {k: v for k, v in values.items()
                                   if k not in ("selection_score", "threshold")}}
    return best


def _hit_rule_text(hit_rule: str) -> str:
    if hit_rule == "dbtex":
        return (f"DBTex-like: in-plane distance from detection to lesion centre <= "
                f"max(diameter/2, {DBTEX_MIN_DISTANCE_MM:g} mm) and detection slice within "
                "the lesion's slice extent (its mask component)")
    return ("inside the lesion mask, or within max(radius, 2.5 mm) in plane and radius + 2 "
            "slices in z")


class _SliceView:
    """A phantom restricted to some slices (all of them for a whole volume).

    ``lesion_mask`` holds the scored slices only; lesion centres stay in the volume's slice
    coordinates and ``slice_positions`` maps heatmap slices to them. Each lesion gets its
    ``slice_extent`` from the full mask (:func:`models.lab.metrics.lesion_slice_extent`);
    lesions none of whose slices are scored are left out (they cannot be found).
    """

    def __init__(self, exam: Any, idx: Sequence[int]) -> None:
        idx = [int(z) for z in idx]
        full_mask = np.asarray(exam.lesion_mask)
        self.lesion_mask = full_mask if idx == list(range(full_mask.shape[0])) else full_mask[idx]
        self.breast_mask = exam.breast_mask
        self.pixel_spacing_mm = float(exam.pixel_spacing_mm)
        self.slice_thickness_mm = float(exam.slice_thickness_mm)
        self.slice_positions = np.asarray(idx, dtype=int)
        lesions = []
        for les in exam.lesions:
            lo, hi = lesion_slice_extent(les, full_mask, pixel_spacing_mm=self.pixel_spacing_mm,
                                         slice_thickness_mm=self.slice_thickness_mm)
            if not np.any((self.slice_positions >= lo) & (self.slice_positions <= hi)):
                continue
            lesions.append({**les, "slice_extent": (lo, hi)})
        self.lesions = lesions


def _cell(v: Mapping[str, float], signed: bool = False) -> str:
    if not math.isfinite(v["value"]):
        return "n/a"
    f = "{:+.3f}" if signed else "{:.3f}"
    if not (math.isfinite(v["lo"]) and math.isfinite(v["hi"])):
        return f.format(v["value"])
    return f"{f.format(v['value'])} [{f.format(v['lo'])}, {f.format(v['hi'])}]"


def format_table(results: dict[str, dict[str, dict[str, float]]],
                 paired: dict[str, dict[str, dict[str, float]]] | None = None, *,
                 labels: Mapping[str, str] | None = None) -> str:
    """Render results as Markdown tables: one row per method, then the paired differences.

    Parameters
    ----------
    results : dict
        ``{row: {metric: {value, lo, hi}}}``.
    paired : dict, optional
        ``{"a - b": {metric: {value, lo, hi}}}``; a second table.
    labels : mapping, optional
        ``{row: text}`` shown instead of the row name (e.g. the ``label`` of the specs).

    Returns
    -------
    str
        Markdown; each cell ``value [lo, hi]`` (95 % CI).
    """
    if not results:
        return ""
    labels = labels or {}
    metrics = [k for k in next(iter(results.values())) if not k.startswith("_")]
    lines = ["| method | " + " | ".join(metrics) + " |",
             "|---|" + "---|" * len(metrics)]
    for name, r in results.items():
        lines.append(f"| {labels.get(name, name)} | "
                     + " | ".join(_cell(r[k]) for k in metrics) + " |")
    if paired:
        lines += ["", "| paired difference (same volumes) | " + " | ".join(metrics) + " |",
                  "|---|" + "---|" * len(metrics)]
        for name, r in paired.items():
            lines.append(f"| {name} | " + " | ".join(_cell(r[k], signed=True) for k in metrics)
                         + " |")
    return "\n".join(lines)
