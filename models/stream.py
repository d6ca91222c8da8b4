"""Stream a volume through per-slice maps on the model's pixel grid.

:meth:`models.picard.Picard.score_volume` scores one slice at a time: each slice is scaled
to [0, 1], resampled (antialiased bilinear) from the volume's pixel spacing to the model's,
mapped (heatmap, completion spread, ...), and every map is resampled back onto the
volume's grid. Skipped slices (``slice_step`` > 1) are interpolated linearly along z. Only
one slice is held in float32 at a time; the next one can be prepared in a background
thread while the current one is mapped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = ["check_spacing", "check_volume", "grid_size", "load_slice", "map_volume",
           "resample_slice", "scored_slices", "stream_volume"]

#: slice (h, w) in [0, 1] on the model grid -> maps (h, w), one per output volume
SliceMaps = Callable[[np.ndarray], Sequence[np.ndarray]]


def resample_slice(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Antialiased bilinear resize of an (H, W) array to float32 ``size`` (no-op if equal)."""
    if image.shape == tuple(size):
        return image.astype(np.float32, copy=False)
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    r = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
    return r[0, 0].numpy()


def check_spacing(pixel_spacing_mm: float | tuple[float, float]) -> tuple[float, float]:
    """(row, column) spacing in mm from a scalar or a pair; raises ValueError unless > 0."""
    spacing = ((float(pixel_spacing_mm),) * 2 if np.isscalar(pixel_spacing_mm)
               else tuple(float(v) for v in pixel_spacing_mm))  # type: ignore[union-attr]
    if len(spacing) != 2 or min(spacing) <= 0:
        raise ValueError(f"pixel_spacing_mm must be > 0 (row, col), got {pixel_spacing_mm!r}")
    return spacing  # type: ignore[return-value]


def check_volume(volume: np.ndarray, value_scale: float | None, *, ndim: int = 3) -> None:
    """Raise ValueError unless ``volume`` has ``ndim`` axes and a usable ``value_scale``."""
    name, axes = ("volume", "(Z, H, W)") if ndim == 3 else ("image", "2D (H, W)")
    if volume.ndim != ndim:
        raise ValueError(f"{name} must be {axes}, got shape {volume.shape}")
    if np.issubdtype(volume.dtype, np.integer) and value_scale is None:
        raise ValueError(f"{name} has integer dtype {volume.dtype}: pass value_scale "
                         "(e.g. 1 / maximum stored value) to map it to [0, 1]")
    if value_scale is not None and not value_scale > 0:
        raise ValueError(f"value_scale must be > 0, got {value_scale!r}")


def grid_size(shape: tuple[int, int], spacing: tuple[float, float],
              target_mm: float) -> tuple[int, int]:
    """(rows, cols) of a slice of ``shape`` at ``spacing`` resampled to ``target_mm``."""
    return (max(1, round(shape[0] * spacing[0] / target_mm)),
            max(1, round(shape[1] * spacing[1] / target_mm)))


def _unit_slice(image: np.ndarray, value_scale: float | None) -> np.ndarray:
    """One stored slice as float32 in [0, 1] units on its own grid (not clipped)."""
    img = np.asarray(image, dtype=np.float32)
    return img * np.float32(value_scale) if value_scale is not None else img


def _to_model_grid(unit: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.clip(resample_slice(unit, size), 0.0, 1.0)


def load_slice(image: np.ndarray, size: tuple[int, int],
               value_scale: float | None) -> np.ndarray:
    """One stored slice as float32 in [0, 1] on the model grid ``size``."""
    return _to_model_grid(_unit_slice(image, value_scale), size)


def scored_slices(z: int, slice_step: int) -> list[int]:
    """Every ``slice_step``-th of ``z`` slices, and the last one."""
    if not isinstance(slice_step, int) or slice_step < 1:
        raise ValueError(f"slice_step must be an integer >= 1, got {slice_step!r}")
    scored = list(range(0, z, slice_step))
    if scored and scored[-1] != z - 1:
        scored.append(z - 1)
    return scored


def stream_volume(volume: np.ndarray, slice_maps: SliceMaps, outs: Sequence[np.ndarray], *,
                  size: tuple[int, int], slices: Sequence[int], value_scale: float | None,
                  prefetch: bool = True,
                  progress: Callable[[int, int], None] | None = None,
                  background_level: float | None = None) -> None:
    """Fill ``outs`` (each (Z, H, W) float32) with the maps of the ``slices`` of ``volume``.

    Parameters
    ----------
    volume : np.ndarray
        (Z, H, W), [0, 1] after multiplying by ``value_scale`` (if given).
    slice_maps : callable
        ``slice_maps(slice)`` -> one (h, w) map per entry of ``outs``, for a slice in
        [0, 1] of shape ``size``.
    outs : sequence of np.ndarray
        Written in place; slices between two entries of ``slices`` are interpolated
        linearly along z.
    size : tuple of int
        The model grid (:func:`grid_size`).
    slices : sequence of int
        Increasing slice indices to map (:func:`scored_slices`).
    value_scale : float, optional
        Multiplies each slice before resampling.
    prefetch : bool
        Load the next slice in a background thread.
    progress : callable, optional
        ``progress(done_slices, len(slices))``.
    background_level : float, optional
        Pixels of the volume's own slice at or below it (air, in [0, 1]) are set to 0 in
        every map after resampling back, so air on the coarser model grid does not pull the
        maps of tissue near the skin line towards 0.
    """
    h, w = volume.shape[1:]

    def air_of(unit: np.ndarray) -> np.ndarray | None:
        return None if background_level is None else unit <= background_level

    def mask_air(j: int, air: np.ndarray | None) -> None:
        if air is not None:
            for out in outs:
                out[j][air] = 0.0

    def load(k: int) -> tuple[np.ndarray, np.ndarray | None]:
        unit = _unit_slice(volume[k], value_scale)  # once: the model-grid slice and the air mask
        return _to_model_grid(unit, size), air_of(unit)

    pool = ThreadPoolExecutor(max_workers=1) if prefetch and len(slices) > 1 else None
    try:
        pending: Future[tuple[np.ndarray, np.ndarray | None]] | None = (
            pool.submit(load, slices[0]) if pool and slices else None)
        prev: int | None = None
        for done, k in enumerate(slices, start=1):
            img, air = pending.result() if pending is not None else load(k)
            if pool is not None and done < len(slices):
                pending = pool.submit(load, slices[done])
            maps = slice_maps(img)
            if len(maps) != len(outs):
                raise ValueError(f"slice_maps returned {len(maps)} maps for {len(outs)} outputs")
            for out, m in zip(outs, maps):
                out[k] = resample_slice(m, (h, w))
            mask_air(k, air)
            if prev is not None and k - prev > 1:
                for j in range(prev + 1, k):
                    t = (j - prev) / (k - prev)
                    for out in outs:
                        out[j] = (1.0 - t) * out[prev] + t * out[k]
                    if background_level is not None:
                        mask_air(j, air_of(_unit_slice(volume[j], value_scale)))
            prev = k
            if progress is not None:
                progress(done, len(slices))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def map_volume(volume: np.ndarray, slice_maps: SliceMaps, outs: Sequence[np.ndarray | None], *,
               pixel_spacing_mm: float | tuple[float, float], target_mm: float,
               slice_step: int = 1, value_scale: float | None = None, prefetch: bool = True,
               progress: Callable[[int, int], None] | None = None,
               background_level: float | None = None) -> list[np.ndarray]:
    """Validate, allocate and :func:`stream_volume`: the maps of a volume on its own grid.

    Parameters
    ----------
    volume : np.ndarray
        (Z, H, W) in [0, 1], or integer stored values with ``value_scale``.
    slice_maps : callable
        As :func:`stream_volume`, one map per entry of ``outs``.
    outs : sequence of (np.ndarray or None)
        (Z, H, W) float32 arrays to write into (e.g. memory maps); None allocates one.
    pixel_spacing_mm : float or (float, float)
        In-plane spacing (row, column) of ``volume``.
    target_mm : float
        The model's pixel spacing.
    slice_step, value_scale, prefetch, progress, background_level
        As :func:`scored_slices` and :func:`stream_volume`.

    Returns
    -------
    list of np.ndarray
        The filled outputs, in the order of ``outs``.
    """
    check_volume(volume, value_scale)
    slices = scored_slices(volume.shape[0], slice_step)
    spacing = check_spacing(pixel_spacing_mm)
    arrays = []
    for out in outs:
        if out is None:
            out = np.zeros(volume.shape, dtype=np.float32)
        elif out.shape != volume.shape or out.dtype != np.float32:
            raise ValueError(f"out must be float32 {volume.shape}, got {out.dtype} {out.shape}")
        arrays.append(out)
    z, h, w = volume.shape
    size = grid_size((h, w), spacing, target_mm)
    logger.info("mapping %d of %d slices (%d maps), %dx%d -> %dx%d px at %.3f mm", len(slices),
                z, len(arrays), h, w, size[0], size[1], target_mm)
    stream_volume(volume, slice_maps, arrays, size=size, slices=slices, value_scale=value_scale,
                  prefetch=prefetch, progress=progress, background_level=background_level)
    return arrays
