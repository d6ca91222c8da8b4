"""PICARD scoring rules computed from shared completions, for the evaluation.

:data:`METHODS` names every rule the evaluation reports (minimum and mean completion
distance over M dropout completions, image and critic-feature space, and one deterministic
completion); :func:`method_heatmaps` draws the completions of each window once and derives
every rule from them, batching the windows of several slices together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from models.heatmap import (
    HeatmapConfig,
    SliceWindows,
    centred_mask,
    fill_unscored,
    normalize_windows,
    prepare_slice,
    upsample_scores,
)
from models.stream import grid_size, load_slice, resample_slice

__all__ = ["METHODS", "method_heatmaps", "method_specs"]


#: PICARD rows: name -> (sampling, reduction over the completions, space). ``mcd`` draws
#: M completions with dropout on; ``single`` one completion with dropout off.
METHODS: dict[str, tuple[str, str, str]] = {
    "MCD image": ("mcd", "min", "image"),
    "MeanCD image": ("mcd", "mean", "image"),
    "MCD feature": ("mcd", "min", "feature"),
    "MeanCD feature": ("mcd", "mean", "feature"),
    "single image": ("single", "single", "image"),
    "single feature": ("single", "single", "feature"),
}


def method_specs(model: Any, m: int) -> dict[str, dict[str, Any]]:
    """What each :data:`METHODS` row computes with ``model`` and ``m`` completions.

    Parameters
    ----------
    model : models.picard.Picard
        Its card gives dropout p, window, hole, stride and pixel spacing.
    m : int
        Completions per window of the dropout rules.

    Returns
    -------
    dict
        ``{name: spec}``; each spec has ``label`` (one line for tables), ``kind``,
        ``rule`` (``min``/``mean``/``single``), ``space``, ``M``, ``p``, ``dropout``,
        ``mode`` (``exact``) and the window geometry.
    """
    card = model.card
    p = float(card["dropout"]["p"])
    geometry = {"window_px": int(card["window"]), "hole_px": int(card["hole"]),
                "stride_px": int(card["stride"]),
                "pixel_spacing_mm": float(card["pixel_spacing_mm"]),
                "intensity": card["intensity"]["mode"],
                "min_tissue_fraction": float(card["min_tissue_fraction"])}
    specs: dict[str, dict[str, Any]] = {}
    for name, (sampling, reduce, space) in METHODS.items():
        if sampling == "mcd":
            label = f"{name}: {reduce} of M={m}, p={p:g}, exact"
            spec = {"kind": "PICARD rule", "rule": reduce, "space": space, "M": int(m), "p": p,
                    "dropout": True}
        else:
            label = f"{name}: M=1, dropout off, exact"
            spec = {"kind": "PICARD network baseline", "rule": "single", "space": space, "M": 1,
                    "p": 0.0, "dropout": False}
        specs[name] = {"label": label, **spec, "mode": "exact", "slice_step": 1, **geometry}
    return specs


def _heatmap_config(card: dict[str, Any]) -> HeatmapConfig:
    return HeatmapConfig(window=card["window"], hole=card["hole"], stride=card["stride"],
                         batch_size=card["batch_size"], tissue_level=card["tissue_level"],
                         min_tissue_fraction=card["min_tissue_fraction"],
                         intensity=card["intensity"]["mode"])


def _window_scores(model: Any, x: torch.Tensor, mask: torch.Tensor, m: int,
                   box: tuple[int, int, int, int], names: Sequence[str]
                   ) -> dict[str, np.ndarray]:
    """Scores of the rules ``names`` for windows ``x`` from one set of completions."""
    y0, y1, x0, x1 = box
    needed = {METHODS[n][0] for n in names}
    comps: dict[str, torch.Tensor] = {}
    if "mcd" in needed:
        comps["mcd"] = model.complete(x, mask, m, True)
    if "single" in needed:
        comps["single"] = model.complete(x, mask, 1, False)
    spaces = {METHODS[n][2] for n in names}
    real_feat = model.critic_features(x[:, :, y0:y1, x0:x1]) if "feature" in spaces else None
    dists: dict[tuple[str, str], torch.Tensor] = {}
    with torch.inference_mode():
        for sampling, c in comps.items():
            n, mm = c.shape[:2]
            if "image" in spaces:
                diff = (c - x.unsqueeze(1)) * mask.unsqueeze(1)
                dists[(sampling, "image")] = diff.flatten(2).norm(dim=2)
            if real_feat is not None:
                feats = model.critic_features(c.flatten(0, 1)[:, :, y0:y1, x0:x1]).view(n, mm, -1)
                dists[(sampling, "feature")] = (feats - real_feat.unsqueeze(1)).norm(dim=2)
        out = {}
        for name in names:
            sampling, reduce, space = METHODS[name]
            d = dists[(sampling, space)]
            score = d.mean(dim=1) if reduce == "mean" else d.min(dim=1).values
            out[name] = score.float().cpu().numpy()
    return out


def _on_model_grid(model: Any, vol: np.ndarray, slice_idx: Sequence[int] | None,
                   spacing: float, **kwargs: Any) -> dict[str, np.ndarray]:
    """:func:`method_heatmaps` of a volume at ``spacing`` mm, scored on the model's grid."""
    idx = list(range(vol.shape[0])) if slice_idx is None else [int(z) for z in slice_idx]
    h, w = vol.shape[1:]
    size = grid_size((h, w), (spacing, spacing), float(model.card["pixel_spacing_mm"]))
    small = np.stack([load_slice(vol[z], size, None) for z in idx])
    # air is set to 0 on the volume's grid after resampling back, as in the node
    # (models.stream): on the coarser model grid it would pull the skin line towards 0
    mask_air = kwargs.pop("mask_air", True)
    maps = method_heatmaps(model, small, None, mask_air=False, **kwargs)
    air = np.asarray(vol[idx]) <= float(model.card["tissue_level"])
    out = {}
    for name, grid_maps in maps.items():
        back = np.stack([resample_slice(s, (h, w)) for s in grid_maps])
        if mask_air:
            back[air] = 0.0
        out[name] = back
    return out


def method_heatmaps(model: Any, volume: np.ndarray, slice_idx: Sequence[int] | None = None, *,
                    m: int = 10, seed: int = 0, methods: Sequence[str] | None = None,
                    mask_air: bool = True,
                    pixel_spacing_mm: float | None = None) -> dict[str, np.ndarray]:
    """Heatmaps of the :data:`METHODS` rules for some slices, from shared completions.

    Every tissue window of every slice is completed ``m`` times with dropout (and once
    without) and each rule is computed from these completions, so rules differ by the
    scoring alone. Windows of consecutive slices are batched together
    (``card["batch_size"]`` windows per forward pass, whatever slice they come from); a
    slice's heatmap is finished (nearest-fill of air windows, bicubic upsampling, air set
    to 0) as soon as its last window is scored, so only a few slices are held at a time.

    Parameters
    ----------
    model : models.picard.Picard
        Scores windows with its card's window, hole, stride and tissue settings.
    volume : numpy.ndarray
        ``(Z, H, W)`` in ``[0, 1]`` at the model's pixel spacing.
    slice_idx : sequence of int, optional
        Slices to score (default: all).
    m : int, default 10
        Dropout completions per window.
    seed : int, default 0
        Seeds the dropout draws (once per call; the draws follow the batch order).
    methods : sequence of str, optional
        Rules to compute (default: all of :data:`METHODS`).
    mask_air : bool, default True
        Set air pixels (``<= card["tissue_level"]``) to 0, as
        :meth:`models.picard.Picard.heatmap` does.
    pixel_spacing_mm : float, optional
        In-plane spacing of ``volume``; default the model's. When it differs, each slice is
        resampled to the model's grid, scored there and its maps resampled back, as
        :meth:`models.picard.Picard.score_volume` does in the node.

    Returns
    -------
    dict
        ``{method: (len(slice_idx), H, W) float32}``.
    """
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"volume must be (Z, H, W), got shape {vol.shape}")
    target = float(model.card["pixel_spacing_mm"])
    if pixel_spacing_mm is not None and float(pixel_spacing_mm) != target:
        return _on_model_grid(model, vol, slice_idx, float(pixel_spacing_mm), m=m, seed=seed,
                              methods=methods, mask_air=mask_air)
    names = list(METHODS) if methods is None else list(methods)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {list(METHODS)}")
    if m < 1:
        raise ValueError(f"m must be >= 1, got {m!r}")
    idx = list(range(vol.shape[0])) if slice_idx is None else [int(z) for z in slice_idx]
    config = _heatmap_config(model.card)
    device = model.device
    h, w = vol.shape[1:]
    out = {n: np.zeros((len(idx), h, w), np.float32) for n in names}
    mask = centred_mask(config.window, config.hole, device=device)
    a = (config.window - config.hole) // 2
    box = (a, a + config.hole, a, a + config.hole)

    live: dict[int, tuple[SliceWindows, dict[str, np.ndarray], int]] = {}
    pending: list[tuple[int, int, int]] = []  # (position in idx, grid row, grid col)

    def finish(k: int) -> None:
        sw, grids, _ = live.pop(k)
        ph, pw = sw.padded.shape
        scored = sw.fraction >= config.min_tissue_fraction
        air = np.asarray(vol[idx[k]]) <= config.tissue_level
        for n in names:
            heat = upsample_scores(fill_unscored(grids[n], scored), (ph, pw),
                                   window=config.window, stride=config.stride)[:h, :w]
            if mask_air:
                heat = np.where(air, np.float32(0.0), heat)
            out[n][k] = heat

    def run(batch: list[tuple[int, int, int]]) -> None:
        windows = torch.cat([live[k][0].windows(np.array([[i, j]]), config.window)
                             for k, i, j in batch])
        x = normalize_windows(windows, config.intensity).to(device)
        scores = _window_scores(model, x, mask, m, box, names)
        for b, (k, i, j) in enumerate(batch):
            sw, grids, left = live[k]
            for n in names:
                grids[n][i, j] = scores[n][b]
            live[k] = (sw, grids, left - 1)

    def drain(final: bool) -> None:
        while len(pending) >= config.batch_size or (final and pending):
            batch = pending[:config.batch_size]
            del pending[:config.batch_size]
            run(batch)
            for k in [k for k, (_, _, left) in live.items() if left == 0]:
                finish(k)

    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for k, z in enumerate(idx):
            image = np.clip(np.asarray(vol[z], np.float32), 0.0, 1.0)
            sw = prepare_slice(image, config, device=device)
            todo = np.argwhere(sw.fraction >= config.min_tissue_fraction)
            grids = {n: np.zeros(sw.fraction.shape, np.float32) for n in names}
            live[k] = (sw, grids, len(todo))
            if len(todo) == 0:
                finish(k)
                continue
            pending.extend((k, int(i), int(j)) for i, j in todo)
            drain(final=False)
        drain(final=True)
    return out
