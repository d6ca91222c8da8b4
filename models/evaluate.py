"""Evaluation of anomaly heatmaps against lesion ground truth.

Three families of figures, all plain numpy:

* **Pixel level** -- area under the ROC curve (rank based, Mann-Whitney U with tied scores
  sharing their average rank) and average precision, optionally restricted to the breast.
* **Lesion level** (DBTex style) -- detections are the local maxima of a heatmap volume; a
  detection is a true positive when its centre lies inside a lesion's mask or within the
  lesion's radius (in plane) and ``z`` extent of the lesion centre. Several detections on one
  lesion count once and are not false positives. Sweeping the score threshold gives an FROC
  curve; we report the sensitivity at 0.5, 1, 2 and 4 false positives per volume.
* **Uncertainty** -- bootstrap confidence intervals over volumes (seeded, 1000 resamples by
  default); the pixel metrics use per-volume histograms on shared bins inside the bootstrap.

:func:`compare_methods` runs one model over the same exams with the scoring variants of the
PICARD paper (MCD with M = 10 and dropout, one deterministic completion, mean completion
distance; image and critic-feature space) and tabulates the results.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

__all__ = [
    "Candidates",
    "Case",
    "FP_RATES",
    "auroc",
    "average_precision",
    "bootstrap_metrics",
    "compare_methods",
    "detect",
    "evaluate_cases",
    "froc",
    "match_candidates",
    "method_heatmaps",
    "sensitivity_at",
    "threshold_for_fp_rate",
]

FP_RATES: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)


# --------------------------------------------------------------------------------------------
# pixel level


def _flatten(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None
             ) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.shape != labels.shape:
        raise ValueError(f"scores shape {scores.shape} differs from labels shape {labels.shape}")
    if mask is not None:
        mask = np.broadcast_to(np.asarray(mask, dtype=bool), scores.shape)
        return scores[mask].astype(np.float64).ravel(), labels[mask].astype(bool).ravel()
    return scores.astype(np.float64).ravel(), labels.astype(bool).ravel()


def auroc(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Area under the ROC curve, from ranks (ties share their average rank).

    Parameters
    ----------
    scores : numpy.ndarray
        Anomaly scores, higher = more suspicious; any shape.
    labels : numpy.ndarray
        Same shape, truthy for positives (lesion pixels).
    mask : numpy.ndarray, optional
        Bool, broadcastable to ``scores``; only these pixels count (e.g. the breast).

    Returns
    -------
    float
        AUROC in ``[0, 1]``; NaN when one class is absent.
    """
    s, y = _flatten(scores, labels, mask)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    # average rank (1-based) of each distinct value
    ends = np.cumsum(counts)
    avg_rank = ends - (counts - 1) / 2.0
    rank_sum_pos = float(avg_rank[inverse][y].sum())
    u = rank_sum_pos - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def average_precision(scores: np.ndarray, labels: np.ndarray,
                      mask: np.ndarray | None = None) -> float:
    """Average precision (area under the precision-recall step curve; ties form one step).

    Parameters
    ----------
    scores, labels, mask
        As for :func:`auroc`.

    Returns
    -------
    float
        AP in ``[0, 1]``; NaN when there are no positives.
    """
    s, y = _flatten(scores, labels, mask)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    uniq, inverse = np.unique(-s, return_inverse=True)  # ascending -s = descending s
    tp = np.bincount(inverse, weights=y, minlength=uniq.size)
    total = np.bincount(inverse, minlength=uniq.size)
    return _ap_from_counts(tp, total - tp)


def _ap_from_counts(tp: np.ndarray, fp: np.ndarray) -> float:
    """AP from positive/negative counts per score level, ordered from the highest score."""
    ctp = np.cumsum(tp)
    cfp = np.cumsum(fp)
    n_pos = ctp[-1] if ctp.size else 0
    if n_pos == 0:
        return float("nan")
    precision = ctp / np.maximum(ctp + cfp, 1)
    recall_step = tp / n_pos
    return float(np.sum(precision * recall_step))


def _auc_from_counts(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUROC from positive/negative counts per score level in ascending score order."""
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    return float(np.sum(pos * (neg_below + 0.5 * neg)) / (n_pos * n_neg))


# --------------------------------------------------------------------------------------------
# lesion level


@dataclass
class Candidates:
    """Detections of one volume, matched to its lesions.

    Attributes
    ----------
    scores : numpy.ndarray
        (K,) detection scores (heatmap value at the detection centre).
    centers_zyx : numpy.ndarray
        (K, 3) int detection centres.
    lesion_index : numpy.ndarray
        (K,) int: index of the lesion hit, -1 for a false positive.
    n_lesions : int
        Number of lesions in the volume.
    """

    scores: np.ndarray
    centers_zyx: np.ndarray
    lesion_index: np.ndarray
    n_lesions: int


def detect(heatmap: np.ndarray, *, min_distance_px: int = 12, threshold: float | None = None,
           breast_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of a heatmap volume as detections.

    Parameters
    ----------
    heatmap : numpy.ndarray
        ``(Z, H, W)`` (or ``(H, W)``) scores.
    min_distance_px : int, default 12
        In-plane suppression window (a maximum must be the largest value within
        ``2 * min_distance_px + 1`` pixels and +-1 slice).
    threshold : float, optional
        Keep only maxima with a score at least this.
    breast_mask : numpy.ndarray, optional
        ``(H, W)`` or ``(Z, H, W)`` bool; maxima outside it are dropped.

    Returns
    -------
    centers : numpy.ndarray
        ``(K, 3)`` int ``(z, y, x)``, sorted by descending score.
    scores : numpy.ndarray
        ``(K,)`` float64.
    """
    vol = np.asarray(heatmap, dtype=np.float32)
    if vol.ndim == 2:
        vol = vol[None]
    if vol.ndim != 3:
        raise ValueError(f"heatmap must be 2D or 3D, got shape {np.shape(heatmap)}")
    if min_distance_px < 1:
        raise ValueError(f"min_distance_px must be >= 1, got {min_distance_px}")
    finite = np.isfinite(vol)
    filled = np.where(finite, vol, -np.inf)
    size = (3, 2 * min_distance_px + 1, 2 * min_distance_px + 1)  # odd: centred windows
    peaks = (filled == ndimage.maximum_filter(filled, size=size, mode="nearest")) & finite
    if breast_mask is not None:
        peaks &= np.broadcast_to(np.asarray(breast_mask, bool), vol.shape)
    if threshold is not None:
        peaks &= filled >= threshold
    # a plateau gives several equal maxima: keep one per connected plateau
    labels, n = ndimage.label(peaks, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return np.zeros((0, 3), int), np.zeros(0)
    safe = np.where(np.isfinite(filled), filled, np.finfo(np.float32).min)
    idx = ndimage.maximum_position(safe, labels, index=np.arange(1, n + 1))
    centers = np.asarray(idx, dtype=int).reshape(-1, 3)
    scores = filled[tuple(centers.T)].astype(np.float64)
    order = np.argsort(-scores, kind="stable")
    return centers[order], scores[order]


def match_candidates(centers_zyx: np.ndarray, scores: np.ndarray, lesions: Sequence[dict], *,
                     lesion_mask: np.ndarray | None, pixel_spacing_mm: float,
                     slice_thickness_mm: float = 1.0, min_radius_mm: float = 2.5,
                     z_margin_slices: float = 2.0,
                     z_positions: np.ndarray | None = None) -> Candidates:
    """Match detections to lesions.

    A detection hits a lesion when its centre lies inside ``lesion_mask`` (attributed to the
    nearest lesion centre) or when its in-plane distance to the lesion centre is at most the
    lesion radius (at least ``min_radius_mm``) and its slice distance at most the radius in
    slices plus ``z_margin_slices``.

    Parameters
    ----------
    centers_zyx, scores
        From :func:`detect`.
    lesions : sequence of dict
        Each with ``center_zyx`` (voxels) and ``diameter_mm``.
    lesion_mask : numpy.ndarray, optional
        ``(Z, H, W)`` bool.
    pixel_spacing_mm, slice_thickness_mm : float
        Voxel size.
    min_radius_mm : float, default 2.5
        Smallest matching radius.
    z_margin_slices : float, default 2
        Extra slice tolerance (tomosynthesis blur).
    z_positions : numpy.ndarray, optional
        Slice index in the lesions' coordinates of each heatmap slice, when the heatmap holds
        only some slices of the volume (``lesion_mask`` is indexed like the heatmap).

    Returns
    -------
    Candidates
    """
    centers = np.asarray(centers_zyx, dtype=int).reshape(-1, 3)
    k = centers.shape[0]
    hit = np.full(k, -1, dtype=int)
    if lesions and k:
        lc = np.asarray([les["center_zyx"] for les in lesions], dtype=np.float64)
        radius_mm = np.maximum(np.asarray([les["diameter_mm"] for les in lesions]) / 2.0,
                               min_radius_mm)
        d_plane = np.hypot(centers[:, None, 1] - lc[None, :, 1],
                           centers[:, None, 2] - lc[None, :, 2]) * pixel_spacing_mm
        cz = centers[:, 0] if z_positions is None else np.asarray(z_positions)[centers[:, 0]]
        d_z = np.abs(cz[:, None] - lc[None, :, 0])
        within = (d_plane <= radius_mm[None]) & (
            d_z <= radius_mm[None] / slice_thickness_mm + z_margin_slices)
        dist3 = np.sqrt(d_plane**2 + (d_z * slice_thickness_mm) ** 2)
        if lesion_mask is not None:
            inside = np.asarray(lesion_mask, bool)[tuple(centers.T)]
            within |= inside[:, None] & (dist3 == dist3.min(axis=1, keepdims=True))
        masked = np.where(within, dist3, np.inf)
        best = masked.argmin(axis=1)
        hit = np.where(np.isfinite(masked[np.arange(k), best]), best, -1)
    return Candidates(scores=np.asarray(scores, np.float64), centers_zyx=centers,
                      lesion_index=hit, n_lesions=len(lesions))


def _sweep(cands: Sequence[Candidates]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thresholds (descending), false positives and detected lesions at each threshold."""
    scores, is_fp, lesion_key = [], [], []
    offset = 0
    for c in cands:
        scores.append(c.scores)
        is_fp.append(c.lesion_index < 0)
        lesion_key.append(np.where(c.lesion_index >= 0, c.lesion_index + offset, -1))
        offset += c.n_lesions
    if not scores:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    s = np.concatenate(scores)
    fp = np.concatenate(is_fp)
    key = np.concatenate(lesion_key)
    order = np.argsort(-s, kind="stable")
    s, fp, key = s[order], fp[order], key[order]
    # a lesion counts as detected at the first (highest) detection hitting it
    first = np.zeros(s.size, bool)
    if (key >= 0).any():
        _, first_idx = np.unique(key, return_index=True)
        first_idx = first_idx[key[first_idx] >= 0]
        first[first_idx] = True
    cum_fp = np.cumsum(fp)
    cum_tp = np.cumsum(first)
    # evaluate only at the last index of each tied score group
    last = np.r_[s[1:] != s[:-1], True] if s.size else np.zeros(0, bool)
    return s[last], cum_fp[last], cum_tp[last]


def froc(cands: Sequence[Candidates]) -> dict[str, np.ndarray]:
    """FROC curve over volumes.

    Returns
    -------
    dict
        ``thresholds`` (descending), ``fp_per_volume`` and ``sensitivity`` at each threshold.
    """
    n_vol = len(cands)
    n_les = sum(c.n_lesions for c in cands)
    thr, fp, tp = _sweep(cands)
    return {
        "thresholds": thr,
        "fp_per_volume": fp / max(n_vol, 1),
        "sensitivity": tp / n_les if n_les else np.full(thr.shape, np.nan),
    }


def sensitivity_at(cands: Sequence[Candidates], fp_rates: Iterable[float] = FP_RATES
                   ) -> dict[float, float]:
    """Largest lesion sensitivity reachable with at most each number of FPs per volume."""
    curve = froc(cands)
    n_les = sum(c.n_lesions for c in cands)
    out: dict[float, float] = {}
    for r in fp_rates:
        if n_les == 0:
            out[float(r)] = float("nan")
            continue
        ok = curve["fp_per_volume"] <= r
        out[float(r)] = float(curve["sensitivity"][ok].max()) if ok.any() else 0.0
    return out


def threshold_for_fp_rate(cands: Sequence[Candidates], fp_rate: float = 1.0) -> float:
    """Lowest score threshold whose false positives per volume stay within ``fp_rate``.

    Use it on a validation set to choose the operating point of the binary segmentation.
    """
    curve = froc(cands)
    ok = curve["fp_per_volume"] <= fp_rate
    if not ok.any():
        return float("inf") if curve["thresholds"].size == 0 else float(curve["thresholds"][0])
    return float(curve["thresholds"][ok][-1])


# --------------------------------------------------------------------------------------------
# per-case evaluation and bootstrap


@dataclass
class Case:
    """One evaluated volume: its heatmap and truth, reduced to what the metrics need."""

    candidates: Candidates
    pos_hist: np.ndarray = field(repr=False)
    neg_hist: np.ndarray = field(repr=False)
    scores: np.ndarray = field(repr=False)  # pixels counted at pixel level (float32)
    labels: np.ndarray = field(repr=False)


class _VolumeLike(Protocol):
    lesion_mask: np.ndarray
    lesions: list[dict]
    breast_mask: np.ndarray
    pixel_spacing_mm: float
    slice_thickness_mm: float


def _make_case(heatmap: np.ndarray, truth: _VolumeLike, *, inside_breast: bool,
               min_distance_mm: float) -> Case:
    hm = np.asarray(heatmap, np.float32)
    if hm.shape != truth.lesion_mask.shape:
        raise ValueError(f"heatmap shape {hm.shape} differs from lesion_mask shape "
                         f"{truth.lesion_mask.shape}")
    region = np.broadcast_to(truth.breast_mask, hm.shape) if inside_breast else None
    nms = max(1, int(round(min_distance_mm / truth.pixel_spacing_mm)))
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
        centers, scores = detect(hm, min_distance_px=nms, breast_mask=bm)
    cands = match_candidates(centers, scores, truth.lesions, lesion_mask=truth.lesion_mask,
                             pixel_spacing_mm=truth.pixel_spacing_mm,
                             slice_thickness_mm=truth.slice_thickness_mm,
                             z_positions=getattr(truth, "slice_positions", None))
    s, y = _flatten(hm, truth.lesion_mask, region)
    keep = np.isfinite(s)
    return Case(candidates=cands, pos_hist=np.zeros(0), neg_hist=np.zeros(0),
                scores=s[keep].astype(np.float32), labels=y[keep])


def _bin_cases(cases: Sequence[Case], n_bins: int) -> None:
    pooled = np.concatenate([c.scores for c in cases]) if cases else np.zeros(0)
    if pooled.size == 0:
        edges = np.array([0.0, 1.0])
    else:
        edges = np.unique(np.quantile(pooled, np.linspace(0, 1, n_bins + 1)))
    for c in cases:
        b = np.clip(np.searchsorted(edges, c.scores, side="right") - 1, 0, max(edges.size - 2, 0))
        nb = max(edges.size - 1, 1)
        c.pos_hist = np.bincount(b[c.labels], minlength=nb).astype(np.float64)
        c.neg_hist = np.bincount(b[~c.labels], minlength=nb).astype(np.float64)


def _metrics(cases: Sequence[Case], fp_rates: Sequence[float], exact: bool) -> dict[str, float]:
    if exact:
        s = np.concatenate([c.scores for c in cases])
        y = np.concatenate([c.labels for c in cases])
        auc, ap = auroc(s, y), average_precision(s, y)
    else:
        pos = np.sum([c.pos_hist for c in cases], axis=0)
        neg = np.sum([c.neg_hist for c in cases], axis=0)
        auc = _auc_from_counts(pos, neg)
        ap = _ap_from_counts(pos[::-1], neg[::-1])
    out = {"pixel_auroc": auc, "pixel_ap": ap}
    for r, v in sensitivity_at([c.candidates for c in cases], fp_rates).items():
        out[f"sens@{r:g}fp"] = v
    return out


def bootstrap_metrics(cases: Sequence[Case], *, n_boot: int = 1000, seed: int = 0,
                      fp_rates: Sequence[float] = FP_RATES, n_bins: int = 4096,
                      alpha: float = 0.05, indices: np.ndarray | None = None
                      ) -> dict[str, dict[str, float]]:
    """Point estimates and percentile bootstrap CIs over volumes.

    Parameters
    ----------
    cases : sequence of Case
        From :func:`evaluate_cases`.
    n_boot : int, default 1000
        Number of resamples (volumes drawn with replacement).
    seed : int, default 0
        Seed of the resampling.
    fp_rates : sequence of float
        FP-per-volume operating points for lesion sensitivity.
    n_bins : int, default 4096
        Quantile bins shared by all volumes for the bootstrap pixel metrics.
    alpha : float, default 0.05
        ``1 - alpha`` intervals.
    indices : numpy.ndarray, optional
        ``(n_boot, n_cases)`` resampling indices (pass the same to several methods for paired
        comparisons); drawn from ``seed`` when omitted.

    Returns
    -------
    dict
        ``{metric: {"value": v, "lo": lo, "hi": hi}}``.
    """
    if not cases:
        raise ValueError("no cases to evaluate")
    _bin_cases(cases, n_bins)
    point = _metrics(cases, fp_rates, exact=True)
    idx = _boot_indices(len(cases), n_boot, seed) if indices is None else indices
    samples = np.array([[_metrics([cases[i] for i in row], fp_rates, exact=False)[k]
                         for k in point] for row in idx]) if len(idx) else np.zeros((0, len(point)))
    out: dict[str, dict[str, float]] = {}
    for j, k in enumerate(point):
        col = samples[:, j] if samples.size else np.zeros(0)
        col = col[np.isfinite(col)]
        lo, hi = (np.quantile(col, [alpha / 2, 1 - alpha / 2]) if col.size
                  else (float("nan"), float("nan")))
        out[k] = {"value": float(point[k]), "lo": float(lo), "hi": float(hi)}
    out["_samples"] = {k: samples[:, j] for j, k in enumerate(point)}  # type: ignore[dict-item]
    return out


def _boot_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_boot, n))


def evaluate_cases(heatmaps: Sequence[np.ndarray], truths: Sequence[_VolumeLike], *,
                   inside_breast: bool = True, min_distance_mm: float = 5.0) -> list[Case]:
    """Reduce heatmap/truth pairs to :class:`Case` objects for the metrics.

    Parameters
    ----------
    heatmaps : sequence of numpy.ndarray
        ``(Z, H, W)`` scores per volume (NaN pixels are ignored).
    truths : sequence
        Objects with ``lesion_mask``, ``lesions``, ``breast_mask``, ``pixel_spacing_mm`` and
        ``slice_thickness_mm`` (e.g. :class:`models.phantom.Phantom`).
    inside_breast : bool, default True
        Count only pixels and detections inside the breast.
    min_distance_mm : float, default 5
        Non-maximum suppression distance for detections.
    """
    if len(heatmaps) != len(truths):
        raise ValueError(f"{len(heatmaps)} heatmaps for {len(truths)} truths")
    return [_make_case(h, t, inside_breast=inside_breast, min_distance_mm=min_distance_mm)
            for h, t in zip(heatmaps, truths)]


# --------------------------------------------------------------------------------------------
# method comparison


METHODS: dict[str, tuple[str, str, str]] = {
    # name: (sampling, reduce, space)
    "MCD image (M=10)": ("mcd", "min", "image"),
    "MCD feature (M=10)": ("mcd", "min", "feature"),
    "MeanCD image (M=10)": ("mcd", "mean", "image"),
    "MeanCD feature (M=10)": ("mcd", "mean", "feature"),
    "single image (M=1, no dropout)": ("single", "min", "image"),
    "single feature (M=1, no dropout)": ("single", "min", "feature"),
}


def compare_methods(model: Any, exams: Sequence[Any], *, m: int = 10, n_boot: int = 1000,
                    seed: int = 0, slices: Callable[[Any], Sequence[int]] | None = None,
                    inside_breast: bool = True, fp_rates: Sequence[float] = FP_RATES,
                    progress: bool = False, print_table: bool = True,
                    keep_heatmaps: bool = False) -> dict[str, Any]:
    """Compare PICARD scoring variants on the same exams.

    The completions are drawn once per window (``m`` with dropout, one without) and every
    variant is scored from them, so differences come from the scoring rule alone.

    Parameters
    ----------
    model : models.picard.Picard
        A loaded model (its card gives window, hole, stride and pixel spacing).
    exams : sequence
        Phantom-like objects (``volume``, ``lesion_mask``, ``lesions``, ``breast_mask``,
        ``pixel_spacing_mm``, ``slice_thickness_mm``) at the model's pixel spacing.
    m : int, default 10
        Completions per window for the dropout variants.
    n_boot, seed : int
        Bootstrap resamples and seed (shared by all methods: paired comparisons).
    slices : callable, optional
        ``exam -> slice indices`` to score (default: all); unscored slices are ignored.
    inside_breast : bool, default True
        Count only pixels and detections inside the breast.
    fp_rates : sequence of float
        Operating points for lesion sensitivity.
    progress : bool, default False
        Show a tqdm progress bar.
    print_table : bool, default True
        Print the table to stdout.
    keep_heatmaps : bool, default False
        Add ``heatmaps`` (``{method: [per-exam (n_slices, H, W) arrays]}``, not JSON-able)
        and ``slices`` (scored slice indices per exam) to the result.

    Returns
    -------
    dict
        JSON-able: ``methods`` (metric -> value/lo/hi per method), ``paired`` (bootstrap CI of
        MCD minus single completion for each metric and space), ``table`` (text), ``settings``.
    """
    exams = list(exams)
    if not exams:
        raise ValueError("no exams to compare on")
    t0 = time.time()
    per_method: dict[str, list[np.ndarray]] = {k: [] for k in METHODS}
    truths: list[Any] = []
    iterator: Iterable[Any] = exams
    if progress:
        from tqdm import tqdm

        iterator = tqdm(exams, desc="compare", unit="exam")
    for exam in iterator:
        idx = list(range(exam.volume.shape[0])) if slices is None else list(slices(exam))
        maps = method_heatmaps(model, exam.volume, idx, m=m, seed=seed)
        for k in METHODS:
            per_method[k].append(maps[k])
        truths.append(_SliceView(exam, idx))
    indices = _boot_indices(len(exams), n_boot, seed)
    results: dict[str, dict[str, dict[str, float]]] = {}
    samples: dict[str, dict[str, np.ndarray]] = {}
    for k in METHODS:
        cases = evaluate_cases(per_method[k], truths, inside_breast=inside_breast)
        r = bootstrap_metrics(cases, n_boot=n_boot, seed=seed, fp_rates=fp_rates, indices=indices)
        samples[k] = r.pop("_samples")  # type: ignore[arg-type]
        results[k] = r
    paired: dict[str, dict[str, dict[str, float]]] = {}
    for space in ("image", "feature"):
        a, b = f"MCD {space} (M=10)", f"single {space} (M=1, no dropout)"
        name = f"MCD - single ({space})"
        paired[name] = {}
        for metric in results[a]:
            d = samples[a][metric] - samples[b][metric]
            d = d[np.isfinite(d)]
            lo, hi = (np.quantile(d, [0.025, 0.975]) if d.size else (np.nan, np.nan))
            paired[name][metric] = {
                "value": results[a][metric]["value"] - results[b][metric]["value"],
                "lo": float(lo), "hi": float(hi)}
    table = format_table(results, paired)
    if print_table:
        print(table)
    out = {
        "methods": results,
        "paired": paired,
        "table": table,
        "settings": {"m": m, "n_boot": n_boot, "seed": seed, "n_exams": len(exams),
                     "n_lesions": int(sum(len(t.lesions) for t in truths)),
                     "inside_breast": inside_breast, "fp_rates": list(fp_rates),
                     "seconds": round(time.time() - t0, 1)},
    }
    json.dumps(out, allow_nan=True)  # fail here, not in the caller, if something is not JSON-able
    if keep_heatmaps:
        out["heatmaps"] = per_method
        out["slices"] = [t.slice_positions.tolist() for t in truths]
    return out


def method_heatmaps(model: Any, volume: np.ndarray, slice_idx: Sequence[int], *, m: int = 10,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """Heatmaps of every :data:`METHODS` variant for some slices, from shared completions.

    Parameters
    ----------
    model : models.picard.Picard
        Scores windows with its card's window, hole, stride and tissue settings.
    volume : numpy.ndarray
        ``(Z, H, W)`` in ``[0, 1]`` at the model's pixel spacing.
    slice_idx : sequence of int
        Slices to score.
    m : int, default 10
        Dropout completions per window.
    seed : int, default 0
        Seeds the dropout draws (per slice ``seed + index``).

    Returns
    -------
    dict
        ``{method: (len(slice_idx), H, W) float32}``.
    """
    import torch

    from models.heatmap import HeatmapConfig, sliding_window_heatmap

    card = model.card
    config = HeatmapConfig(window=card["window"], hole=card["hole"], stride=card["stride"],
                           batch_size=card["batch_size"], tissue_level=card["tissue_level"],
                           min_tissue_fraction=card["min_tissue_fraction"],
                           intensity=card["intensity"]["mode"])
    names = list(METHODS)
    out = {k: np.zeros((len(slice_idx),) + volume.shape[1:], np.float32) for k in names}
    for n_slice, z in enumerate(slice_idx):
        image = np.clip(np.asarray(volume[z], np.float32), 0.0, 1.0)
        recorded: list[dict[str, torch.Tensor]] = []

        def scorer(windows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            x = windows.to(model.device)
            mk = mask.to(model.device)
            hole = mk.amax(dim=(0, 1)) > 0
            rows = torch.nonzero(hole.any(dim=1)).flatten()
            cols = torch.nonzero(hole.any(dim=0)).flatten()
            y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            comps = {"mcd": model.complete(x, mk, m, True),
                     "single": model.complete(x, mk, 1, False)}
            real_feat = model.critic_features(x[:, :, y0:y1, x0:x1])
            dists: dict[tuple[str, str], torch.Tensor] = {}
            for sampling, c in comps.items():
                n, mm = c.shape[:2]
                dists[(sampling, "image")] = ((c - x.unsqueeze(1)) * mk.unsqueeze(1)).flatten(2).norm(dim=2)
                feats = model.critic_features(c.flatten(0, 1)[:, :, y0:y1, x0:x1]).view(n, mm, -1)
                dists[(sampling, "feature")] = (feats - real_feat.unsqueeze(1)).norm(dim=2)
            scores = {}
            for name, (sampling, reduce, space) in METHODS.items():
                d = dists[(sampling, space)]
                scores[name] = d.min(dim=1).values if reduce == "min" else d.mean(dim=1)
            recorded.append(scores)
            return scores[names[0]]

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + int(z))
            out[names[0]][n_slice] = sliding_window_heatmap(image, scorer, config,
                                                            device=model.device)
        for name in names[1:]:
            replay = iter(recorded)
            out[name][n_slice] = sliding_window_heatmap(
                image, lambda w, mk, _n=name: next(replay)[_n], config, device=model.device)
    return out


class _SliceView:
    """A phantom restricted to some slices.

    ``lesion_mask`` holds the scored slices only; lesion centres stay in the volume's slice
    coordinates and ``slice_positions`` maps heatmap slices to them. Lesions whose mask
    touches none of the scored slices are left out (they cannot be found).
    """

    def __init__(self, exam: Any, idx: Sequence[int]) -> None:
        idx = list(idx)
        full_mask = np.asarray(exam.lesion_mask)
        self.lesion_mask = full_mask[idx]
        self.breast_mask = exam.breast_mask
        self.pixel_spacing_mm = float(exam.pixel_spacing_mm)
        self.slice_thickness_mm = float(exam.slice_thickness_mm)
        self.slice_positions = np.asarray(idx, dtype=int)
        lesions = []
        for les in exam.lesions:
            z, y, x = (int(round(float(c))) for c in les["center_zyx"])
            # the lesion's own mask component: slices where the mask exists at its centre column
            z_span = np.flatnonzero(full_mask[:, min(max(y, 0), full_mask.shape[1] - 1),
                                              min(max(x, 0), full_mask.shape[2] - 1)])
            if z_span.size and not np.isin(z_span, self.slice_positions).any():
                continue
            lesions.append(dict(les))
        self.lesions = lesions


def format_table(results: dict[str, dict[str, dict[str, float]]],
                 paired: dict[str, dict[str, dict[str, float]]] | None = None) -> str:
    """Render method results (``{method: {metric: {value, lo, hi}}}``) as a Markdown table."""
    if not results:
        return ""
    metrics = [k for k in next(iter(results.values())) if not k.startswith("_")]

    def cell(v: dict[str, float]) -> str:
        if not math.isfinite(v["value"]):
            return "n/a"
        return f"{v['value']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]"

    lines = ["| method | " + " | ".join(metrics) + " |",
             "|---|" + "---|" * len(metrics)]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(cell(r[k]) for k in metrics) + " |")
    for name, r in (paired or {}).items():
        lines.append(f"| {name} (paired diff) | " + " | ".join(
            f"{r[k]['value']:+.3f} [{r[k]['lo']:+.3f}, {r[k]['hi']:+.3f}]"
            if math.isfinite(r[k]["value"]) else "n/a" for k in metrics) + " |")
    return "\n".join(lines)
