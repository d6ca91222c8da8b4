"""Metrics of anomaly heatmaps against lesion ground truth (plain numpy).

* **Pixel level** -- area under the ROC curve (rank based, Mann-Whitney U with tied scores
  sharing their average rank) and average precision, optionally restricted to the breast.
* **Lesion level** -- detections are the local maxima of a heatmap volume. Two hit rules:

  - :func:`match_dbtex` (the DBTex challenge's rule, in millimetres): a detection hits a
    lesion when the in-plane distance between its centre and the lesion's centre is at most
    ``max(diameter / 2, 10 mm)`` -- DBTex allows half the ground-truth box's size or 100
    pixels at its ~0.1 mm pixels, whichever is larger -- and its slice lies within the
    lesion's slice extent (:func:`lesion_slice_extent`: the slices its mask spans).
  - :func:`match_candidates` (stricter, older): inside the lesion's mask, or within the
    lesion's radius (at least 2.5 mm) in plane and its radius plus 2 slices in ``z``.

  Several detections on one lesion count once and are not false positives. Sweeping the
  score threshold gives an FROC curve; false positives per volume are all false detections
  of all volumes (every slice of each) divided by the number of volumes. We report the
  sensitivity at 0.5, 1, 2 and 4 false positives per volume.
* **Uncertainty** -- bootstrap confidence intervals over volumes (seeded, 1000 resamples by
  default); the pixel metrics use per-volume histograms on shared bins inside the bootstrap.

The bootstrap works on :class:`Case` objects, one per volume, which
:func:`models.lab.evaluate.evaluate_cases` builds from heatmaps and ground truth.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

__all__ = [
    "DBTEX_MIN_DISTANCE_MM",
    "FP_RATES",
    "HIT_RULES",
    "Candidates",
    "Case",
    "auroc",
    "average_precision",
    "bootstrap_indices",
    "bootstrap_metrics",
    "detect",
    "flatten_pixels",
    "froc",
    "lesion_slice_extent",
    "match_candidates",
    "match_dbtex",
    "sensitivity_at",
    "threshold_for_fp_rate",
]

FP_RATES: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)

#: Smallest hit distance of :func:`match_dbtex`, mm: DBTex's 100 px at its ~0.1 mm pixels.
DBTEX_MIN_DISTANCE_MM: float = 10.0

#: Lesion-level hit rules: ``dbtex`` (:func:`match_dbtex`) and ``mask_or_radius``
#: (:func:`match_candidates`).
HIT_RULES: tuple[str, ...] = ("dbtex", "mask_or_radius")


# --------------------------------------------------------------------------------------------
# pixel level


def flatten_pixels(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The pixels that count at pixel level, as flat arrays.

    Parameters
    ----------
    scores, labels : numpy.ndarray
        Same shape; labels truthy for positives.
    mask : numpy.ndarray, optional
        Bool, broadcastable to ``scores``; only these pixels are kept.

    Returns
    -------
    tuple of numpy.ndarray
        ``(scores as float64, labels as bool)``, both 1D.
    """
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
    s, y = flatten_pixels(scores, labels, mask)
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
    s, y = flatten_pixels(scores, labels, mask)
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
           breast_mask: np.ndarray | None = None,
           min_distance_slices: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of a heatmap volume as detections.

    Parameters
    ----------
    heatmap : numpy.ndarray
        ``(Z, H, W)`` (or ``(H, W)``) scores.
    min_distance_px : int, default 12
        In-plane suppression window (a maximum must be the largest value within
        ``2 * min_distance_px + 1`` pixels and ``+-min_distance_slices`` slices).
    threshold : float, optional
        Keep only maxima with a score at least this.
    breast_mask : numpy.ndarray, optional
        ``(H, W)`` or ``(Z, H, W)`` bool; maxima outside it are dropped.
    min_distance_slices : int, default 1
        Suppression distance along ``z``, in slices (0: every slice on its own).

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
    if min_distance_slices < 0:
        raise ValueError(f"min_distance_slices must be >= 0, got {min_distance_slices}")
    finite = np.isfinite(vol)
    filled = np.where(finite, vol, -np.inf)
    size = (2 * min_distance_slices + 1, 2 * min_distance_px + 1,
            2 * min_distance_px + 1)  # odd: centred windows
    peaks = (filled == ndimage.maximum_filter(filled, size=size, mode="nearest")) & finite
    if breast_mask is not None:
        peaks &= np.broadcast_to(np.asarray(breast_mask, bool), vol.shape)
    if threshold is not None:
        peaks &= filled >= threshold
    # a plateau gives several equal maxima: keep one per connected plateau
    structure = np.ones((3, 3, 3), bool)
    if min_distance_slices == 0:
        structure[[0, 2]] = False  # slices are independent
    labels, n = ndimage.label(peaks, structure=structure)
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


def lesion_slice_extent(lesion: dict, lesion_mask: np.ndarray | None, *,
                        pixel_spacing_mm: float, slice_thickness_mm: float = 1.0,
                        z_positions: np.ndarray | None = None) -> tuple[int, int]:
    """First and last slice a lesion spans, in the lesion's slice coordinates.

    The extent is that of the connected component of ``lesion_mask`` (26-connected) nearest
    to the lesion centre, looked for within one diameter of the centre in plane (so other
    lesions far away in plane do not widen it). Without a mask, or with no mask voxel near
    the lesion, it is the centre slice plus and minus the radius in slices.

    Parameters
    ----------
    lesion : dict
        ``center_zyx`` (voxels) and ``diameter_mm``; a ``slice_extent`` entry
        ``(first, last)`` is returned as it is.
    lesion_mask : numpy.ndarray, optional
        ``(Z, H, W)`` bool.
    pixel_spacing_mm, slice_thickness_mm : float
        Voxel size.
    z_positions : numpy.ndarray, optional
        Slice index in the lesion's coordinates of each slice of ``lesion_mask`` when the
        mask holds only some slices of the volume.

    Returns
    -------
    tuple of int
        ``(first, last)`` slice, inclusive.
    """
    if lesion.get("slice_extent") is not None:
        lo, hi = lesion["slice_extent"]
        return int(lo), int(hi)
    cz, cy, cx = (float(c) for c in lesion["center_zyx"])
    diameter = float(lesion["diameter_mm"])
    if lesion_mask is not None:
        mask = np.asarray(lesion_mask, bool)
        if mask.ndim != 3:
            raise ValueError(f"lesion_mask must be (Z, H, W), got shape {mask.shape}")
        zpos = (np.arange(mask.shape[0]) if z_positions is None
                else np.asarray(z_positions, dtype=int))
        reach = max(2, math.ceil(diameter / pixel_spacing_mm))
        y0, x0 = max(0, round(cy) - reach), max(0, round(cx) - reach)
        y1, x1 = round(cy) + reach + 1, round(cx) + reach + 1
        box = mask[:, y0:y1, x0:x1]
        if box.any():
            labels, _ = ndimage.label(box, structure=np.ones((3, 3, 3), bool))
            vz, vy, vx = np.nonzero(labels)
            d = np.sqrt(((zpos[vz] - cz) * slice_thickness_mm) ** 2
                        + ((vy + y0 - cy) * pixel_spacing_mm) ** 2
                        + ((vx + x0 - cx) * pixel_spacing_mm) ** 2)
            nearest = int(np.argmin(d))
            label = labels[vz[nearest], vy[nearest], vx[nearest]]
            zs = zpos[np.flatnonzero((labels == label).any(axis=(1, 2)))]
            return int(zs.min()), int(zs.max())
    half = diameter / 2.0 / slice_thickness_mm
    return math.floor(cz - half), math.ceil(cz + half)


def match_dbtex(centers_zyx: np.ndarray, scores: np.ndarray, lesions: Sequence[dict], *,
                pixel_spacing_mm: float, slice_extents: Sequence[tuple[int, int]],
                min_distance_mm: float = DBTEX_MIN_DISTANCE_MM, z_margin_slices: int = 0,
                z_positions: np.ndarray | None = None) -> Candidates:
    """Match detections to lesions with the DBTex challenge's rule, in millimetres.

    A detection hits a lesion when (a) the in-plane distance between its centre and the
    lesion's centre is at most ``max(diameter_mm / 2, min_distance_mm)`` and (b) its slice
    lies within the lesion's slice extent (widened by ``z_margin_slices`` on each side).
    DBTex counts a box as a true positive when its centre is within half the ground-truth
    box's diagonal or 100 pixels (~10 mm at its ~0.1 mm pixels) of the ground-truth centre,
    whichever is larger, and within the ground-truth box's slices; here the lesion's
    diameter stands for the box and the distances are in mm, so the rule does not depend on
    the pixel spacing. A detection meeting several lesions goes to the nearest in plane.

    Parameters
    ----------
    centers_zyx, scores
        From :func:`detect`.
    lesions : sequence of dict
        Each with ``center_zyx`` (voxels) and ``diameter_mm``.
    pixel_spacing_mm : float
        In-plane pixel spacing.
    slice_extents : sequence of (int, int)
        First and last slice of each lesion (:func:`lesion_slice_extent`), in the lesions'
        slice coordinates.
    min_distance_mm : float, default :data:`DBTEX_MIN_DISTANCE_MM`
        Smallest hit distance.
    z_margin_slices : int, default 0
        Extra slices allowed beyond each end of the extent.
    z_positions : numpy.ndarray, optional
        Slice index in the lesions' coordinates of each heatmap slice, when the heatmap holds
        only some slices of the volume.

    Returns
    -------
    Candidates
    """
    if len(slice_extents) != len(lesions):
        raise ValueError(f"{len(slice_extents)} slice extents for {len(lesions)} lesions")
    if pixel_spacing_mm <= 0:
        raise ValueError(f"pixel_spacing_mm must be > 0, got {pixel_spacing_mm!r}")
    centers = np.asarray(centers_zyx, dtype=int).reshape(-1, 3)
    k = centers.shape[0]
    hit = np.full(k, -1, dtype=int)
    if lesions and k:
        lc = np.asarray([les["center_zyx"] for les in lesions], dtype=np.float64)
        reach = np.maximum(np.asarray([les["diameter_mm"] for les in lesions], np.float64) / 2.0,
                           min_distance_mm)
        d_plane = np.hypot(centers[:, None, 1] - lc[None, :, 1],
                           centers[:, None, 2] - lc[None, :, 2]) * pixel_spacing_mm
        cz = centers[:, 0] if z_positions is None else np.asarray(z_positions)[centers[:, 0]]
        ext = np.asarray(slice_extents, dtype=np.float64).reshape(-1, 2)
        in_z = ((cz[:, None] >= ext[None, :, 0] - z_margin_slices)
                & (cz[:, None] <= ext[None, :, 1] + z_margin_slices))
        masked = np.where((d_plane <= reach[None]) & in_z, d_plane, np.inf)
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
# bootstrap over volumes


@dataclass
class Case:
    """One evaluated volume: its heatmap and truth, reduced to what the metrics need.

    Built by :func:`models.lab.evaluate.evaluate_cases`; ``pos_hist`` and ``neg_hist`` are
    filled by :func:`bootstrap_metrics` (pixel counts per shared score bin).
    """

    candidates: Candidates
    pos_hist: np.ndarray = field(repr=False)
    neg_hist: np.ndarray = field(repr=False)
    scores: np.ndarray = field(repr=False)  # pixels counted at pixel level (float32)
    labels: np.ndarray = field(repr=False)



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
        From :func:`models.lab.evaluate.evaluate_cases`.
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
    idx = bootstrap_indices(len(cases), n_boot, seed) if indices is None else indices
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


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """Resampling indices ``(n_boot, n)`` (volumes drawn with replacement) from ``seed``.

    Pass the same indices to :func:`bootstrap_metrics` for several methods to compare them
    paired.
    """
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_boot, n))


