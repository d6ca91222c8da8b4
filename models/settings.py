"""Scoring settings of a model card: window geometry, sampling, rule, and their descriptions.

:class:`models.picard.Picard` reads every scoring setting through :func:`scoring_settings`
(card values with per-call overrides), reduces completion distances with
:func:`reduce_distances`, and describes what it computes (for result labels and records)
with :func:`scoring_description` and :func:`spread_description`.
"""

from __future__ import annotations

from typing import Any

import torch

from models import bundle as _bundle
from models.fast import INFERENCE_KEYS, InferenceConfig
from models.heatmap import HeatmapConfig

__all__ = ["HEATMAP_OVERRIDES", "REDUCTIONS", "RULE_NAMES", "SPACES", "reduce_distances",
           "scoring_description", "scoring_settings", "spread_description"]

SPACES = ("image", "feature")
REDUCTIONS = ("min", "mean", "median")
#: What each reduction over the M completion distances is called.
RULE_NAMES = {"min": "minimum completion distance", "mean": "mean completion distance",
              "median": "median completion distance"}

#: keyword overrides accepted by :meth:`Picard.heatmap` and :meth:`Picard.score_volume`
HEATMAP_OVERRIDES = ("window", "hole", "stride", "M", "p", "metric", "batch_size",
                     "tissue_level", "min_tissue_fraction", "intensity", "dropout", "seed")


def scoring_settings(card: dict[str, Any], overrides: dict[str, Any]
                     ) -> tuple[HeatmapConfig, dict[str, Any]]:
    """Sliding-window geometry and sampling settings: the card's, with ``overrides``.

    Parameters
    ----------
    card : dict
        A validated model card.
    overrides : dict
        Keys of :data:`HEATMAP_OVERRIDES` (or :data:`models.fast.INFERENCE_KEYS`, ignored
        here); anything else is a ValueError.

    Returns
    -------
    (HeatmapConfig, dict)
        The geometry, and ``m``, ``p``, ``dropout``, ``space``, ``reduce``, ``seed``.
    """
    allowed = set(HEATMAP_OVERRIDES) | set(INFERENCE_KEYS)
    unknown = set(overrides) - allowed
    if unknown:
        raise ValueError(f"unknown heatmap settings {sorted(unknown)}; "
                         f"allowed: {list(HEATMAP_OVERRIDES) + list(INFERENCE_KEYS)}")

    def get(key: str, default: Any) -> Any:
        return overrides.get(key, default)

    config = HeatmapConfig(
        window=get("window", card["window"]), hole=get("hole", card["hole"]),
        stride=get("stride", card["stride"]), batch_size=get("batch_size", card["batch_size"]),
        tissue_level=get("tissue_level", card["tissue_level"]),
        min_tissue_fraction=get("min_tissue_fraction", card["min_tissue_fraction"]),
        intensity=get("intensity", card["intensity"]["mode"]),
    )
    space, reduce = _bundle.parse_metric(get("metric", card["metric"]))
    scoring = {"m": get("M", card["M"]), "p": get("p", card["dropout"]["p"]),
               "dropout": get("dropout", True), "space": space, "reduce": reduce,
               "seed": get("seed", 0)}
    return config, scoring


def reduce_distances(dist: torch.Tensor, reduce: str) -> torch.Tensor:
    """Reduce (N, M) completion distances over the M samples (``median``: the lower one)."""
    if reduce == "min":
        return dist.min(dim=1).values
    if reduce == "mean":
        return dist.mean(dim=1)
    if reduce == "median":
        return dist.median(dim=1).values
    raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")


def scoring_description(card: dict[str, Any], icfg: InferenceConfig) -> dict[str, Any]:
    """What the scores of ``card`` in mode ``icfg`` are (see
    :meth:`models.picard.Picard.scoring_description`)."""
    config, s = scoring_settings(card, {})
    return {"rule": s["reduce"], "rule_name": RULE_NAMES[s["reduce"]], "space": s["space"],
            "M": int(s["m"]), "p": float(s["p"]), "mode": icfg.mode,
            "slice_step": icfg.slice_step if icfg.mode == "fast" else 1,
            "window_px": config.window, "hole_px": config.hole, "stride_px": config.stride,
            "pixel_spacing_mm": float(card["pixel_spacing_mm"])}


def spread_description(card: dict[str, Any], icfg: InferenceConfig) -> dict[str, Any] | None:
    """What the completion spread of ``card`` in mode ``icfg`` is; None in fast mode (see
    :meth:`models.picard.Picard.spread_description`)."""
    if icfg.mode != "exact":
        return None
    _, s = scoring_settings(card, {})
    return {"quantity": "completion spread",
            "statistic": "mean over the hole of the per-pixel standard deviation over "
                         "M completions",
            "space": "image", "M": int(s["m"]), "p": float(s["p"]), "mode": icfg.mode,
            "units": "slice intensity (0..1)"}
