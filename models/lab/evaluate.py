"""Evaluation of PICARD heatmaps on exams with ground truth, and comparison of scoring rules.

:func:`evaluate_cases` reduces each heatmap volume and its truth (a
:class:`models.lab.phantom.Phantom` or anything shaped like one) to a
:class:`models.lab.metrics.Case`: the detections matched to the lesions and the pixel scores
inside the breast, which :func:`models.lab.metrics.bootstrap_metrics` turns into figures with
confidence intervals.

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
from typing import Any, Protocol

import numpy as np
import torch

from models.heatmap import HeatmapConfig, sliding_window_heatmap
from models.lab.metrics import (FP_RATES, Case, bootstrap_indices, bootstrap_metrics, detect,
                                flatten_pixels, match_candidates)

logger = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "compare_methods",
    "evaluate_cases",
    "format_table",
    "method_heatmaps",
]


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
               min_distance_mm: float) -> Case:
    """Detections matched to the lesions and the counted pixels of one volume."""
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
    s, y = flatten_pixels(hm, truth.lesion_mask, region)
    keep = np.isfinite(s)
    return Case(candidates=cands, pos_hist=np.zeros(0), neg_hist=np.zeros(0),
                scores=s[keep].astype(np.float32), labels=y[keep])


def evaluate_cases(heatmaps: Sequence[np.ndarray], truths: Sequence[_VolumeLike], *,
                   inside_breast: bool = True, min_distance_mm: float = 5.0) -> list[Case]:
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
        Non-maximum suppression distance for detections.

    Returns
    -------
    list of models.lab.metrics.Case
        One per volume, for :func:`models.lab.metrics.bootstrap_metrics`.
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
    indices = bootstrap_indices(len(exams), n_boot, seed)
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
