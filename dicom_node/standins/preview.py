"""PNG previews: a heatmap in a hot colour scale over a slice, with the SEG outline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def hot_colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 with a black-red-yellow-white "hot" scale."""
    v = np.clip(values, 0.0, 1.0)
    r = np.clip(3.0 * v, 0, 1)
    g = np.clip(3.0 * v - 1.0, 0, 1)
    b = np.clip(3.0 * v - 2.0, 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


def render_overlay(image: np.ndarray, heatmap: np.ndarray, *, vmax: float, threshold: float,
                   truth: np.ndarray | None = None, alpha: float = 0.5,
                   vmin: float = 0.0) -> Image.Image:
    """Blend a heatmap over a grey slice and outline the thresholded region.

    Parameters
    ----------
    image : ndarray (rows, cols)
        Slice intensities, any range (scaled to its own 1st-99.5th percentiles).
    heatmap : ndarray (rows, cols)
        Scores in model units.
    vmax : float
        Score drawn at full colour (e.g. the volume's maximum).
    vmin : float
        Scores at or below it are not coloured (default 0).
    threshold : float
        SEG threshold; pixels at or above it are outlined in cyan.
    truth : ndarray (rows, cols) of bool, optional
        Ground truth, outlined in green.
    alpha : float
        Heatmap opacity where the score reaches ``vmax``.
    """
    img = image.astype(np.float32)
    lo, hi = np.percentile(img, [1, 99.5])
    grey = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1) * 255
    norm = np.clip((heatmap - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    weight = (alpha * norm)[..., None]
    out = rgb * (1 - weight) + hot_colormap(norm).astype(np.float32) * weight
    for mask, colour in ((heatmap >= threshold, (0, 255, 255)), (truth, (0, 255, 0))):
        if mask is None:
            continue
        edge = mask & ~_erode(mask)
        out[edge] = colour
    return Image.fromarray(out.astype(np.uint8))


def _erode(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(bool)
    core = m.copy()
    core[1:, :] &= m[:-1, :]
    core[:-1, :] &= m[1:, :]
    core[:, 1:] &= m[:, :-1]
    core[:, :-1] &= m[:, 1:]
    return core


def write_previews(volume: np.ndarray, heatmap: np.ndarray, out_dir: Path, *, threshold: float,
                   truth: np.ndarray | None = None, max_slices: int = 4) -> list[Path]:
    """Write PNGs of the slices with the highest scores; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_slice = heatmap.reshape(heatmap.shape[0], -1).max(axis=1)
    order = np.argsort(per_slice)[::-1][:max_slices]
    vmax = float(heatmap.max()) if heatmap.size else 1.0
    paths = []
    for z in sorted(int(i) for i in order):
        # colour only the upper range, from half the SEG threshold: normal tissue has
        # non-zero scores too, and colouring all of it hides the anatomy
        img = render_overlay(volume[z], heatmap[z], vmax=vmax, vmin=0.5 * threshold,
                             threshold=threshold,
                             truth=None if truth is None else truth[z])
        path = out_dir / f"slice_{z + 1:03d}.png"
        img.save(path)
        paths.append(path)
    return paths
