"""Outputs that help a reader judge a PICARD score: completion spread, expected completion.

PICARD (Konz et al. 2023) scores a window by how far its real centre lies from M dropout
completions of it. Two by-products of the same completions help read that score:

* **completion spread** -- how much the M completions disagree with each other (mean over
  the hole of the per-pixel standard deviation across the M samples). A high score where the
  completions agree is a confident "this is not what normal tissue looks like"; a high score
  where they disagree widely says the network had no clear expectation there.
* **expected completion** -- the slice with the hole filled by the completion nearest to the
  real content (the sample that defines the minimum completion distance): what the model
  expected to see at a finding.

This module holds the result types and the array arithmetic; :class:`models.picard.Picard`
runs the network (:meth:`~models.picard.Picard.score_volume_with_spread`,
:meth:`~models.picard.Picard.expected_completion`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from models import stream as _stream
from models.heatmap import (
    HeatmapConfig,
    centred_mask,
    denormalize_windows,
    normalize_windows,
    prepare_slice,
)

__all__ = ["ExpectedCompletion", "Sampler", "VolumeScores", "completion_spread",
           "nearest_completion", "source_hole", "window_origin"]

#: (window (1, 1, w, w) in [-1, 1], mask (1, 1, w, w)) -> (completions (1, M, 1, w, w),
#: distances (1, M)) of M dropout completions
Sampler = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class VolumeScores:
    """Score heatmap and completion spread of a volume, from the same completions.

    Attributes
    ----------
    heatmap : np.ndarray
        (Z, H, W) float32: exactly what :meth:`models.picard.Picard.score_volume` returns.
    spread : np.ndarray or None
        (Z, H, W) float32 completion spread (see :func:`completion_spread`) in slice
        intensity units, i.e. the [0, 1] scale the model scores (stored value times
        ``value_scale``), mapped onto the volume like the heatmap. None where it was not
        computed (fast mode).
    """

    heatmap: np.ndarray
    spread: np.ndarray | None


@dataclass(frozen=True)
class ExpectedCompletion:
    """One slice with a window's hole filled by its nearest dropout completion.

    Attributes
    ----------
    image : np.ndarray
        float32, the input slice's shape and intensity units; only ``hole`` pixels differ.
    hole : np.ndarray
        bool, same shape: the pixels that were replaced.
    distance : float
        Completion distance of the chosen completion (the card's space, network units: the
        value the minimum completion distance takes for this window).
    m : int
        Number of completions drawn.
    """

    image: np.ndarray
    hole: np.ndarray
    distance: float
    m: int


def completion_spread(completions: torch.Tensor, mask: torch.Tensor,
                      scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Mean over the hole of the per-pixel standard deviation across the M completions.

    Parameters
    ----------
    completions : torch.Tensor
        (N, M, C, H, W) completions (:meth:`models.picard.Picard.complete`).
    mask : torch.Tensor
        (N or 1, 1, H, W), 1 inside the hole.
    scale : torch.Tensor or float
        (N,) or scalar factor applied to each window's value, e.g. image units per network
        unit (:func:`models.heatmap.intensity_scale`).

    Returns
    -------
    torch.Tensor
        (N,) float32. The population standard deviation (divisor M) is used, so M = 1 and
        identical completions (no dropout) give 0.
    """
    std = completions.float().std(dim=1, correction=0)  # (N, C, H, W)
    weight = mask.float().expand(std.shape[0], std.shape[1], -1, -1)
    spread = (std * weight).flatten(1).sum(dim=1) / weight.flatten(1).sum(dim=1).clamp(min=1.0)
    return spread * scale


def window_origin(shape: tuple[int, int], center_rc: tuple[int, int], window: int
                  ) -> tuple[int, int]:
    """Top-left corner of the ``window`` x ``window`` window centred on ``center_rc``,
    shifted to lie inside an image of ``shape`` (which must be at least ``window`` on
    each side). Its centred hole then covers ``center_rc`` unless the shift was larger than
    half the hole."""
    return tuple(int(min(max(c - window // 2, 0), n - window))  # type: ignore[return-value]
                 for c, n in zip(center_rc, shape))


def source_hole(shape: tuple[int, int], grid: tuple[int, int],
                box: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    """Pixels of an image of ``shape`` whose centres fall in ``box`` of its resampled copy.

    Parameters
    ----------
    shape : tuple of int
        (H, W) of the image.
    grid : tuple of int
        (h, w) of the resampled copy (the same field of view).
    box : ((y0, y1), (x0, x1))
        Half-open pixel box on the resampled copy.

    Returns
    -------
    np.ndarray
        (H, W) bool; equals the box itself when ``grid == shape``.
    """
    axes = []
    for n, g, (a, b) in zip(shape, grid, box):
        u = (np.arange(n) + 0.5) * (g / n)  # pixel centres in resampled pixel-edge units
        axes.append((u >= a) & (u < b))
    return axes[0][:, None] & axes[1][None, :]


def nearest_completion(image: np.ndarray, center_rc: tuple[int, int], sampler: Sampler,
                       config: HeatmapConfig, *, pixel_spacing_mm: float | tuple[float, float],
                       target_mm: float, value_scale: float | None = None
                       ) -> ExpectedCompletion:
    """Fill the hole of the window at ``center_rc`` with its nearest completion.

    The slice is scaled and resampled to the model grid as in
    :func:`models.stream.stream_volume` (and mirror-padded as in
    :func:`models.heatmap.prepare_slice`), the window centred on the finding is shifted
    inside it (:func:`window_origin`), ``sampler`` completes its hole, the completion
    with the smallest distance is mapped back to image units
    (:func:`models.heatmap.denormalize_windows`) and resampled to the slice's grid; only
    the slice pixels whose centres fall in the hole (:func:`source_hole`) are replaced.

    Parameters
    ----------
    image : np.ndarray
        (H, W) slice in stored units (see :meth:`models.picard.Picard.expected_completion`).
    center_rc : (int, int)
        Row and column on ``image``.
    sampler : callable
        See :data:`Sampler`.
    config : HeatmapConfig
        Window, hole and intensity mode.
    pixel_spacing_mm : float or (float, float)
        Spacing of ``image``.
    target_mm : float
        Spacing of the model grid.
    value_scale : float, optional
        Stored units to [0, 1]; required for integer images.

    Returns
    -------
    ExpectedCompletion
    """
    image = np.asarray(image)
    _stream.check_volume(image, value_scale, ndim=2)
    spacing = _stream.check_spacing(pixel_spacing_mm)
    h, w = image.shape
    r, c = (int(v) for v in center_rc)
    if not (0 <= r < h and 0 <= c < w):
        raise ValueError(f"center_rc must lie inside the {h}x{w} image, got {center_rc!r}")
    size = _stream.grid_size((h, w), spacing, target_mm)
    sw = prepare_slice(_stream.load_slice(image, size, value_scale), config)
    centre = tuple(min(int((v + 0.5) * g / n), g - 1) for v, n, g in zip((r, c), (h, w), size))
    y, x = window_origin(tuple(sw.padded.shape), centre, config.window)  # type: ignore[arg-type]
    raw = sw.padded[y:y + config.window, x:x + config.window][None, None]
    comps, dist = sampler(normalize_windows(raw, config.intensity),
                          centred_mask(config.window, config.hole))
    k = int(torch.argmin(dist[0]))
    filled = denormalize_windows(comps[:, k].float().cpu(), raw, config.intensity)[0, 0]
    a = (config.window - config.hole) // 2
    b = a + config.hole
    model_img = sw.padded.clone()
    model_img[y + a:y + b, x + a:x + b] = filled[a:b, a:b]
    back = _stream.resample_slice(model_img.numpy()[:size[0], :size[1]], (h, w))
    hole = source_hole((h, w), size, ((y + a, y + b), (x + a, x + b)))
    result = image.astype(np.float32)  # a copy
    result[hole] = back[hole] / np.float32(value_scale or 1.0)
    return ExpectedCompletion(image=result, hole=hole, distance=float(dist[0, k]),
                              m=int(comps.shape[1]))
