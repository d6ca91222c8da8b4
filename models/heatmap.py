"""Sliding-window MCD heatmaps for one 2D slice (PICARD, Konz et al. 2023).

A window of side ``window`` slides over the image with step ``stride``; its centred
``hole`` is masked, completed M times and scored (see :meth:`models.picard.Picard.mcd`).
Each window is normalised on its own to [-1, 1] before completion, as the official
code does. The grid of window scores is then upsampled bicubically to the image size
with every score placed at the centre of its window (the official code stretches the
grid over the whole image; placing scores at window centres keeps them aligned with the
pixels they describe). Windows whose hole is mostly air are not completed (like the official
``ignore_black_regions`` option); before upsampling they take the score of the nearest
scored window, so no artificial zero is interpolated into the skin line. Images that do not
fit a whole number of strides are padded by mirroring their own border (never with air, which
would add a tissue-to-air edge that is not in the image).

The scoring itself is a callable, so this module needs no network.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

logger = logging.getLogger(__name__)

__all__ = ["INTENSITY_MODES", "HeatmapConfig", "SliceWindows", "WindowMapper", "WindowScorer",
           "centred_mask", "denormalize_windows", "fill_unscored", "grid_heatmap", "hole_box",
           "intensity_scale", "normalize_windows", "prepare_slice", "sliding_window_heatmap",
           "sliding_window_maps", "upsample_scores", "window_origins"]

#: (windows (B, 1, w, w) in [-1, 1], mask (1, 1, w, w)) -> scores (B,)
WindowScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: (windows (B, 1, w, w) in image units, mask (1, 1, w, w)) -> values (B, C), C maps at once
WindowMapper = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: ``fixed``: the image is already in [0, 1]; each window is mapped by 2x - 1 (official).
#: ``window_minmax``: each window is first stretched to [0, 1] by its own min and max.
INTENSITY_MODES = ("fixed", "window_minmax")


@dataclass(frozen=True)
class HeatmapConfig:
    """Sliding-window settings.

    Attributes
    ----------
    window : int
        Window side in pixels (official 256); a multiple of 8.
    hole : int
        Centred hole side in pixels (official 128), < window.
    stride : int
        Window step in pixels (official 32).
    batch_size : int
        Windows per forward pass (each with M completions), default 8.
    tissue_level : float
        Pixel value (image units, [0, 1]) above which a pixel counts as tissue.
    min_tissue_fraction : float
        Windows whose hole has a smaller tissue fraction are skipped (score 0);
        0 scores every window.
    intensity : str
        One of :data:`INTENSITY_MODES`.
    """

    window: int = 256
    hole: int = 128
    stride: int = 32
    batch_size: int = 8
    tissue_level: float = 0.02
    min_tissue_fraction: float = 0.5
    intensity: str = "fixed"

    def __post_init__(self) -> None:
        if self.window <= 0 or self.window % 8:
            raise ValueError(f"window must be a positive multiple of 8, got {self.window!r}")
        if not 0 < self.hole < self.window:
            raise ValueError(f"hole must be in (0, window={self.window}), got {self.hole!r}")
        if self.stride <= 0:
            raise ValueError(f"stride must be positive, got {self.stride!r}")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size!r}")
        if not 0.0 <= self.min_tissue_fraction <= 1.0:
            raise ValueError(
                f"min_tissue_fraction must be in [0, 1], got {self.min_tissue_fraction!r}")
        if self.intensity not in INTENSITY_MODES:
            raise ValueError(
                f"intensity must be one of {INTENSITY_MODES}, got {self.intensity!r}")


def centred_mask(window: int, hole: int, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """(1, 1, window, window) float mask, 1 in the centred ``hole`` x ``hole`` square."""
    mask = torch.zeros(1, 1, window, window, device=device)
    a = (window - hole) // 2
    mask[:, :, a:a + hole, a:a + hole] = 1.0
    return mask


def hole_box(mask: torch.Tensor) -> tuple[tuple[int, int], tuple[int, int]]:
    """Bounding box ((y0, y1), (x0, x1)) of the one rectangular hole of every mask in a
    (N, 1, H, W) batch; ValueError if the masks have no hole or holes that differ."""
    union = mask.amax(dim=(0, 1)) > 0
    if not union.any():
        raise ValueError("mask has no hole pixels")
    rows = torch.nonzero(union.any(dim=1)).flatten()
    cols = torch.nonzero(union.any(dim=0)).flatten()
    box = ((int(rows[0]), int(rows[-1]) + 1), (int(cols[0]), int(cols[-1]) + 1))
    inter = mask.amin(dim=(0, 1)) > 0
    if int(inter.sum()) != (box[0][1] - box[0][0]) * (box[1][1] - box[1][0]):
        raise ValueError("feature-space MCD needs one rectangular hole shared by the whole batch")
    return box


def window_origins(length: int, window: int, stride: int) -> np.ndarray:
    """Window start positions along one axis of a (padded) image.

    ``length`` must be ``window + k * stride`` (see :func:`_padded_length`).
    """
    return np.arange(0, length - window + 1, stride)


def _padded_length(length: int, window: int, stride: int) -> int:
    """Smallest ``window + k * stride`` >= ``length``."""
    if length <= window:
        return window
    return window + math.ceil((length - window) / stride) * stride


def normalize_windows(windows: torch.Tensor, mode: str = "fixed") -> torch.Tensor:
    """Map windows (B, 1, h, w) from image units to the network's [-1, 1].

    Parameters
    ----------
    windows : torch.Tensor
        Windows in image units ([0, 1] for ``fixed``).
    mode : str
        One of :data:`INTENSITY_MODES`.
    """
    if mode == "fixed":
        return windows * 2.0 - 1.0
    if mode == "window_minmax":
        lo = windows.amin(dim=(1, 2, 3), keepdim=True)
        hi = windows.amax(dim=(1, 2, 3), keepdim=True)
        scaled = (windows - lo) / torch.clamp(hi - lo, min=1e-6)
        return scaled * 2.0 - 1.0
    raise ValueError(f"intensity mode must be one of {INTENSITY_MODES}, got {mode!r}")


def intensity_scale(windows: torch.Tensor, mode: str = "fixed") -> torch.Tensor:
    """Image units per network unit of each window (B,): the slope of the inverse of
    :func:`normalize_windows` (0.5 for ``fixed``; (max - min) / 2 for ``window_minmax``).

    Parameters
    ----------
    windows : torch.Tensor
        (B, 1, h, w) windows in image units, as passed to :func:`normalize_windows`.
    mode : str
        One of :data:`INTENSITY_MODES`.
    """
    if mode == "fixed":
        return torch.full((windows.shape[0],), 0.5, dtype=windows.dtype, device=windows.device)
    if mode == "window_minmax":
        lo = windows.amin(dim=(1, 2, 3))
        hi = windows.amax(dim=(1, 2, 3))
        return torch.clamp(hi - lo, min=1e-6) * 0.5
    raise ValueError(f"intensity mode must be one of {INTENSITY_MODES}, got {mode!r}")


def denormalize_windows(network: torch.Tensor, windows: torch.Tensor,
                        mode: str = "fixed") -> torch.Tensor:
    """Map network-space values (B, 1, h, w) back to image units: the inverse of
    :func:`normalize_windows` for the image-unit ``windows`` they were normalised from."""
    scale = intensity_scale(windows, mode).view(-1, 1, 1, 1)
    lo = (windows.amin(dim=(1, 2, 3), keepdim=True) if mode == "window_minmax"
          else torch.zeros_like(scale))
    return (network + 1.0) * scale + lo


def upsample_scores(grid: np.ndarray, shape: tuple[int, int], *, window: int,
                    stride: int) -> np.ndarray:
    """Bicubic interpolation of a window-score grid onto the image pixels.

    Score ``grid[i, j]`` belongs to the window with top-left corner
    ``(i * stride, j * stride)``, i.e. to the point ``i * stride + (window - 1) / 2``.
    Pixels outside the hull of window centres take the nearest border value; negative
    overshoot of the cubic kernel is clipped at 0 (MCD is non-negative).

    Parameters
    ----------
    grid : np.ndarray
        (gh, gw) scores.
    shape : tuple of int
        (H, W) of the output.
    window, stride : int
        Window geometry.

    Returns
    -------
    np.ndarray
        (H, W) float32.
    """
    gh, gw = grid.shape
    h, w = shape
    centre = (window - 1) / 2.0

    def axis(n_out: int, n_grid: int) -> torch.Tensor:
        u = (torch.arange(n_out, dtype=torch.float64) - centre) / stride  # grid index units
        if n_grid == 1:
            return torch.zeros(n_out, dtype=torch.float64)
        return (2.0 * u / (n_grid - 1) - 1.0).clamp(-1.0, 1.0)

    gy, gx = axis(h, gh), axis(w, gw)
    sample = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)  # (H, W, 2) = (x, y)
    src = torch.as_tensor(grid, dtype=torch.float32).view(1, 1, gh, gw)
    out = F.grid_sample(src, sample.unsqueeze(0).to(torch.float32), mode="bicubic",
                        padding_mode="border", align_corners=True)
    return np.clip(out[0, 0].numpy(), 0.0, None).astype(np.float32)


def fill_unscored(grid: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """Give every unscored window the score of the nearest scored one.

    Skipped (air) windows would otherwise enter the bicubic upsampling as zeros and pull
    the scores of the skin line down; the air pixels themselves are masked afterwards.

    Parameters
    ----------
    grid : np.ndarray
        (gh, gw) window scores.
    scored : np.ndarray
        (gh, gw) bool, True where ``grid`` holds a computed score.

    Returns
    -------
    np.ndarray
        A filled copy (all zeros when nothing was scored).
    """
    if scored.all():
        return grid.copy()
    if not scored.any():
        return np.zeros_like(grid)
    _, (iy, ix) = ndimage.distance_transform_edt(~scored, return_indices=True)
    return grid[iy, ix]


@dataclass
class SliceWindows:
    """A slice padded to whole strides, its window grid and each hole's tissue fraction.

    Attributes
    ----------
    padded : torch.Tensor
        (PH, PW) float32 image, padded at the bottom and right by mirroring its border.
    ys, xs : numpy.ndarray
        Window top-left rows and columns (grid axes).
    fraction : numpy.ndarray
        (len(ys), len(xs)) tissue fraction of each window's hole.
    shape : tuple of int
        (H, W) of the unpadded image.
    """

    padded: torch.Tensor
    ys: np.ndarray
    xs: np.ndarray
    fraction: np.ndarray
    shape: tuple[int, int]

    def windows(self, idx: np.ndarray, window: int) -> torch.Tensor:
        """Windows (B, 1, window, window) in image units at grid positions ``idx`` (B, 2)."""
        p, ys, xs = self.padded, self.ys, self.xs
        return torch.stack([p[ys[i]:ys[i] + window, xs[j]:xs[j] + window]
                            for i, j in idx]).unsqueeze(1)


def prepare_slice(image: np.ndarray, config: HeatmapConfig, *,
                  device: torch.device | str = "cpu") -> SliceWindows:
    """Pad ``image`` (H, W) in [0, 1] and measure the tissue fraction of every window's hole.

    Images that do not fit a whole number of strides (or are smaller than the window) are
    padded at the bottom and right with their mirror image (``numpy.pad`` "symmetric"), so
    the padding adds no edge: tissue that reaches the border continues past it.
    """
    if image.ndim != 2:
        raise ValueError(f"image must be 2D (H, W), got shape {image.shape}")
    if not np.isfinite(image).all():
        raise ValueError("image contains NaN or infinite values")
    h, w = image.shape
    cfg = config
    ph, pw = _padded_length(h, cfg.window, cfg.stride), _padded_length(w, cfg.window, cfg.stride)
    mirrored = np.pad(np.asarray(image, dtype=np.float32), ((0, ph - h), (0, pw - w)),
                      mode="symmetric")
    padded = torch.as_tensor(mirrored, device=device)

    ys = window_origins(ph, cfg.window, cfg.stride)
    xs = window_origins(pw, cfg.window, cfg.stride)

    # tissue fraction of each hole, from an integral image (cheap for all positions)
    a = (cfg.window - cfg.hole) // 2
    tissue = (padded > cfg.tissue_level).to(torch.float64)
    integral = F.pad(tissue.cumsum(0).cumsum(1), (1, 0, 1, 0))
    y0 = torch.as_tensor(ys + a, device=device)
    x0 = torch.as_tensor(xs + a, device=device)
    y1, x1 = y0 + cfg.hole, x0 + cfg.hole
    counts = (integral[y1][:, x1] - integral[y0][:, x1] - integral[y1][:, x0]
              + integral[y0][:, x0])
    fraction = (counts / float(cfg.hole * cfg.hole)).cpu().numpy()
    return SliceWindows(padded=padded, ys=ys, xs=xs, fraction=fraction, shape=(h, w))


def sliding_window_heatmap(
    image: np.ndarray,
    scorer: WindowScorer,
    config: HeatmapConfig,
    *,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    stats: dict[str, int] | None = None,
) -> np.ndarray:
    """Score every window position of a 2D image and upsample to an (H, W) heatmap.

    Parameters
    ----------
    image : np.ndarray
        (H, W) image in [0, 1] (0 = air). Images that do not fit a whole number of
        strides (or are smaller than the window) are padded at the bottom and right
        by mirroring (see :func:`prepare_slice`); the heatmap is cropped back.
    scorer : callable
        ``scorer(windows, mask) -> (B,)`` with windows (B, 1, w, w) in [-1, 1].
    config : HeatmapConfig
        Geometry and batching.
    device : str or torch.device
        Where windows are assembled.
    progress : callable, optional
        Called as ``progress(done_windows, total_windows)`` after each batch.
    stats : dict, optional
        Incremented in place: ``windows_total`` (grid positions) and ``windows_tissue``
        (positions whose hole holds enough tissue, i.e. the windows scored).

    Returns
    -------
    np.ndarray
        (H, W) float32 scores; where windows were skipped, the nearest scored window's
        score (see :func:`fill_unscored`).
    """
    def mapper(windows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = scorer(normalize_windows(windows, config.intensity), mask)
        if scores.shape != (len(windows),):
            raise ValueError(f"scorer returned shape {tuple(scores.shape)}, "
                             f"expected ({len(windows)},)")
        return scores[:, None]

    return sliding_window_maps(image, mapper, config, channels=1, device=device,
                               progress=progress, stats=stats)[0]


def sliding_window_maps(
    image: np.ndarray,
    mapper: WindowMapper,
    config: HeatmapConfig,
    *,
    channels: int,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    stats: dict[str, int] | None = None,
) -> np.ndarray:
    """:func:`sliding_window_heatmap` for ``channels`` per-window values computed together.

    Every channel gets the heatmap treatment: the same windows, skipped air windows filled
    from the nearest scored one, bicubic upsampling, cropping.

    Parameters
    ----------
    image, config, device, progress, stats
        As :func:`sliding_window_heatmap`.
    mapper : callable
        ``mapper(windows, mask) -> (B, channels)`` with windows (B, 1, w, w) in image
        units (not normalised: the mapper normalises them itself).
    channels : int
        Values per window.

    Returns
    -------
    np.ndarray
        (channels, H, W) float32.
    """
    cfg = config
    sw = prepare_slice(image, cfg, device=device)
    h, w = sw.shape
    grid = np.zeros((channels, *sw.fraction.shape), dtype=np.float32)
    todo = np.argwhere(sw.fraction >= cfg.min_tissue_fraction)
    total = len(todo)
    logger.debug("heatmap %dx%d: %d of %d windows scored", h, w, total, sw.fraction.size)
    if stats is not None:
        stats["windows_total"] = stats.get("windows_total", 0) + int(sw.fraction.size)
        stats["windows_tissue"] = stats.get("windows_tissue", 0) + total

    mask = centred_mask(cfg.window, cfg.hole, device=device)
    for start in range(0, total, cfg.batch_size):
        idx = todo[start:start + cfg.batch_size]
        values = mapper(sw.windows(idx, cfg.window), mask)
        if values.shape != (len(idx), channels):
            raise ValueError(f"mapper returned shape {tuple(values.shape)}, "
                             f"expected ({len(idx)}, {channels})")
        grid[:, idx[:, 0], idx[:, 1]] = values.detach().float().cpu().numpy().T
        if progress is not None:
            progress(min(start + cfg.batch_size, total), total)
    return np.stack([grid_heatmap(g, sw, cfg) for g in grid])


def grid_heatmap(grid: np.ndarray, sw: SliceWindows, config: HeatmapConfig) -> np.ndarray:
    """(H, W) float32 map of a window grid of ``sw``: windows below ``min_tissue_fraction``
    take the nearest scored value (:func:`fill_unscored`), then bicubic upsampling
    (:func:`upsample_scores`) and cropping of the padding."""
    scored = sw.fraction >= config.min_tissue_fraction
    heat = upsample_scores(fill_unscored(grid, scored), tuple(sw.padded.shape),
                           window=config.window, stride=config.stride)
    return heat[:sw.shape[0], :sw.shape[1]]
