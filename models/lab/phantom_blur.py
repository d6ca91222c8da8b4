"""Tomosynthesis blur of the synthetic DBT phantom (helper of :mod:`models.lab.phantom`).

Reconstructed DBT slices are sharp in plane and blurred in depth, and how much depends on the
size of a structure: a structure of size ``s`` stays in focus over roughly
``s / tan(sweep / 2)`` of depth (the limited-angle geometry of tomosynthesis, reviewed by
Dobbins & Godfrey 2003, Phys Med Biol 48:R65). :class:`TomoBlur` imitates this with two bands
and a shift-and-add smear along the tube's travel.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from models.lab.phantom_anatomy import BreastGeometry

__all__ = ["TomoBlur"]


def _block_mean(a: np.ndarray, q: int) -> np.ndarray:
    """Means of ``q x q`` blocks (the last partial blocks padded with edge values)."""
    if q == 1:
        return a.copy()
    r, c = a.shape
    pr, pc = (-r) % q, (-c) % q
    if pr or pc:
        a = np.pad(a, ((0, pr), (0, pc)), mode="edge")
    return a.reshape(a.shape[0] // q, q, a.shape[1] // q, q).mean(axis=(1, 3))


def _upsample(a: np.ndarray, q: int, rows: int, cols: int) -> np.ndarray:
    """Linear interpolation of block means (see :func:`_block_mean`) back to ``rows x cols``."""
    if q == 1:
        return a[:rows, :cols]
    out = a
    for axis, n in ((0, rows), (1, cols)):
        m = out.shape[axis]
        c = (np.arange(n) - (q - 1) / 2.0) / q
        i0 = np.clip(np.floor(c).astype(int), 0, max(m - 2, 0))
        t = np.clip(c - i0, 0.0, 1.0).astype(np.float32) if m > 1 else np.zeros(n, np.float32)
        lo = np.take(out, i0, axis=axis)
        hi = np.take(out, np.minimum(i0 + 1, m - 1), axis=axis)
        shape = (-1, 1) if axis == 0 else (1, -1)
        out = lo + (hi - lo) * t.reshape(shape)
    return out.astype(np.float32, copy=False)


class TomoBlur:
    """Depth mixing of composed slices: what a DBT reconstruction does to in-focus structure.

    Depth resolution of tomosynthesis depends on feature size: fine detail is in focus over
    about ``size / tan(sweep / 2)`` of depth, coarse structure over much more. Two bands model
    this. The coarse band (Gaussian of sigma ``split_mm``) of each slice is averaged over
    neighbours with weights ``exp(-|dz| / coarse_depth_mm)``, on a grid of about 0.4 mm. The
    fine band keeps its full in-focus contrast and receives faint ghosts of its neighbours'
    fine bands (``ghost_level * exp(-|dz| / fine_depth_mm)``). Every neighbour, coarse or
    fine, is smeared along the tube-travel direction (rows) by ``2 |dz| tan(sweep / 2)``, the
    shift-and-add trace of an out-of-plane structure.

    Slices are pushed in order (:meth:`push`); slice ``z`` can be popped (:meth:`pop`) once
    slice ``z + reach`` (or the last) is in, so only ``2 * reach + 1`` slices are held.

    Parameters
    ----------
    geom : BreastGeometry
    sweep_deg : float
        Angular range of the tube sweep.
    split_mm, coarse_depth_mm, fine_depth_mm, ghost_level : float
        See above.
    """

    def __init__(self, geom: BreastGeometry, sweep_deg: float, *, split_mm: float,
                 coarse_depth_mm: float, fine_depth_mm: float, ghost_level: float) -> None:
        self.geom = geom
        px, dz = geom.px, geom.dz
        self.q = max(1, round(0.4 / px))
        self.sigma_c = split_mm / (px * self.q)
        tan = math.tan(math.radians(sweep_deg) / 2.0)
        k_c = max(0, min(10, math.ceil(2.5 * coarse_depth_mm / dz)))
        k_f = max(0, min(6, math.ceil(2.5 * fine_depth_mm / dz)))

        def smear(d: int, pix: float) -> int:
            return 2 * round(d * dz * tan / pix) + 1

        self.coarse = [(d, math.exp(-d * dz / coarse_depth_mm), smear(d, px * self.q))
                       for d in range(k_c + 1)]
        self.fine = [(d, ghost_level * math.exp(-d * dz / fine_depth_mm), smear(d, px))
                     for d in range(1, k_f + 1)]
        self.reach = max(k_c, k_f)
        self._lo: dict[int, np.ndarray] = {}
        self._hi: dict[int, np.ndarray] = {}

    def push(self, z: int, s: np.ndarray) -> None:
        """Add composed slice ``z`` (slices must come in order)."""
        g = self.geom
        lo = ndimage.gaussian_filter(_block_mean(s, self.q), self.sigma_c, mode="nearest")
        self._lo[z] = lo.astype(np.float32)
        self._hi[z] = s - _upsample(lo, self.q, g.rows, g.cols)

    def pop(self, z: int) -> np.ndarray:
        """The blurred slice ``z``; needs slices up to ``z + reach`` pushed (or the last)."""
        g = self.geom
        acc_lo = np.zeros_like(self._lo[z])
        wsum = 0.0
        for d, w, size in self.coarse:
            for zn in {z - d, z + d}:
                src = self._lo.get(zn)
                if src is None:
                    continue
                acc_lo += w * (ndimage.uniform_filter1d(src, size, axis=0, mode="nearest")
                               if size > 1 else src)
                wsum += w
        out = _upsample(acc_lo / wsum, self.q, g.rows, g.cols) + self._hi[z]
        for d, w, size in self.fine:
            for zn in (z - d, z + d):
                src = self._hi.get(zn)
                if src is not None:
                    out += w * (ndimage.uniform_filter1d(src, size, axis=0, mode="constant")
                                if size > 1 else src)
        self._lo.pop(z - self.reach, None)
        self._hi.pop(z - self.reach, None)
        return out
