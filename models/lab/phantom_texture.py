"""Texture fields of the synthetic DBT phantom (helpers of :mod:`models.lab.phantom`).

* :func:`power_law_noise` -- a whole 2D/3D field with a power-law spectrum in one FFT (kept
  for callers that want plain power-law noise).
* :class:`SpectralField` -- slices of a 3D-coherent Gaussian field with a power-law (or
  band-pass) spectrum, made one slice at a time at the native pixel size.
* :class:`RadialWarp` -- a polar map centred on the nipple: texture drawn on its canvas
  radiates from, and converges on, the nipple, as lobes and ducts do.
* :class:`Parenchyma` -- the two combined: the field that is thresholded into fibroglandular
  tissue (thresholded power-law noise as a breast texture model: Reiser & Nishikawa 2010, Med
  Phys 37:1591; power-law exponent about 3 in mammograms: Burgess et al. 2001, Med Phys
  28:419).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from models.lab.phantom_anatomy import BreastGeometry

__all__ = ["Parenchyma", "RadialWarp", "SpectralField", "power_law_noise"]


# ============================================================================ spectral fields
class SpectralField:
    """Slices of a 3D-coherent Gaussian field with a prescribed in-plane spectrum.

    The field is a sum of octave bands. Band ``k`` (centre frequency ``f_k`` cycles/mm) is a
    2D Gaussian field at the native pixel size; along depth it is held on nodes
    ``z_corr / f_k`` mm apart and interpolated between two independent node fields with
    variance-preserving weights ``cos``/``sin`` -- coarse structure persists over many
    millimetres, fine structure changes from slice to slice, as in an isotropic 3D texture.
    Bands with node spacing below the slice spacing are drawn anew on every slice.
    The band windows are ``cos`` lobes in ``log2 f`` whose squares sum to one, so the sum of
    all bands has exactly the requested 2D power spectrum at every depth. Each band's noise
    lives in the Fourier domain only inside its frequency block, which keeps coarse bands
    cheap; one inverse FFT per output group per slice does the rest.

    Parameters
    ----------
    shape : (int, int)
        Slice shape.
    px, dz : float
        Pixel and slice spacing, mm.
    seed : int
        Seed; node ``i`` of band ``k`` is drawn from ``(seed, k, i)``, so slices can be
        produced in any order.
    beta : float or None
        Power-law exponent of the 2D spectrum ``P(f) ~ f**-beta``; None for a flat band-pass.
    f_lo, f_hi : float
        Lowest and highest band centre, cycles/mm (``f_hi`` defaults to the corner of the
        spectrum). For a power law, frequencies below ``f_lo`` keep the power of ``f_lo``.
    split : float, optional
        Bands with centre frequency ``>= split`` form a second output group (``slice``
        returns two arrays).
    z_corr : float, default 1.0
        Node spacing in wavelengths.
    include : (float, float), optional
        Only bands whose centre lies in ``[lo, hi)``; each keeps its share of the variance of
        the complete field (:attr:`band_fraction`), so fields made of complementary subsets
        add up to one field of unit variance.
    target : dict, optional
        Variance share per band index, overriding the own grid's shares (to match a subset
        made on another grid).
    """

    def __init__(self, shape: tuple[int, int], px: float, dz: float, *, seed: int,
                 beta: float | None, f_lo: float, f_hi: float | None = None,
                 split: float | None = None, z_corr: float = 1.0,
                 include: tuple[float, float] | None = None,
                 target: dict[int, float] | None = None) -> None:
        self.shape = shape
        self.dz = dz
        self.seed = int(seed)
        ny, nx = (sfft.next_fast_len(n, real=True) for n in shape)
        self.fshape = (ny, nx)
        fy = np.abs(np.fft.fftfreq(ny, d=px)).astype(np.float32)
        fx = np.fft.rfftfreq(nx, d=px).astype(np.float32)
        corner = float(math.hypot(fy.max(), fx.max()))
        top = corner if f_hi is None else min(f_hi, corner)
        n_bands = max(1, math.ceil(math.log2(max(top / f_lo, 1.0))) + 1)
        centres = f_lo * 2.0 ** np.arange(n_bands)
        self.bands: list[dict] = []
        var_groups = [0.0, 0.0]
        col_w = np.full(fx.size, 2.0, np.float32)
        col_w[0] = 1.0
        if nx % 2 == 0:
            col_w[-1] = 1.0
        rng = np.random.default_rng([self.seed, 0x5EED])
        for k, fk in enumerate(centres):
            fmax = 2.0 * fk if (k < n_bands - 1 or beta is None) else corner
            my = min(ny // 2, math.ceil(fmax * ny * px) + 1)
            mx = min(nx // 2 + 1, math.ceil(fmax * nx * px) + 2)
            rows_idx = np.r_[0:my + 1, ny - my:ny] if 2 * my + 1 < ny else np.arange(ny)
            f = np.sqrt(fy[rows_idx][:, None] ** 2 + fx[None, :mx] ** 2)
            with np.errstate(divide="ignore"):
                t = np.log2(np.maximum(f, 1e-9) / fk)
            win = np.cos(0.5 * math.pi * np.clip(t, -1.0, 1.0))
            if beta is not None and k == 0:
                win = np.where(t < 0, 1.0, win)
            if beta is not None and k == n_bands - 1:
                win = np.where(t > 0, 1.0, win)
            if beta is None:
                amp = np.ones_like(f)
            else:
                amp = np.maximum(f, f_lo) ** (-beta / 2.0)
            h = (amp * win).astype(np.float32)
            h[f == 0] = 0.0
            group = 1 if split is not None and fk >= split else 0
            spacing = z_corr / fk
            self.bands.append({
                "k": k, "fk": float(fk), "h": h, "rows": rows_idx,
                "full_rows": 2 * my + 1 >= ny, "my": my, "mx": mx, "group": group,
                "spacing": spacing if spacing > dz else None,
                "offset": float(rng.uniform(0.0, 1.0)),
                "var": float(2.0 * np.sum(col_w[None, :mx] * h * h)) / (ny * nx) ** 2,
            })
        total = sum(b["var"] for b in self.bands)
        #: share of each band (by index) in the variance of the complete field on this grid
        self.band_fraction = {b["k"]: b["var"] / total for b in self.bands} if total else {}
        if include is not None:
            self.bands = [b for b in self.bands if include[0] <= b["fk"] < include[1]]
            shares = target if target is not None else self.band_fraction
        else:
            kept = sum(b["var"] for b in self.bands)
            shares = {b["k"]: b["var"] / kept for b in self.bands} if kept else {}
        for b in self.bands:  # scale each band to its share: the output needs no other norm
            gain = math.sqrt(shares.get(b["k"], 0.0) / b["var"]) if b["var"] > 0 else 0.0
            b["h"] = (b["h"] * gain).astype(np.float32)
            b["var"] = shares.get(b["k"], 0.0)
        for group in (0, 1):
            var_groups[group] = sum(b["var"] for b in self.bands if b["group"] == group)
        self.norm = 1.0
        self.group_std = [math.sqrt(v) for v in var_groups]
        self.n_groups = 2 if split is not None else 1
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def _node(self, k: int, i: int) -> np.ndarray:
        key = (k, i)
        block = self._cache.get(key)
        if block is None:
            b = self.bands[k]
            g = np.random.default_rng([self.seed, k, i + 1_000_003])
            raw = g.standard_normal((b["rows"].size, b["mx"], 2), dtype=np.float32)
            block = (raw[..., 0] + 1j * raw[..., 1]).astype(np.complex64) * b["h"]
            self._cache[key] = block
        return block

    def _forget_before(self, k: int, i: int) -> None:
        for key in [key for key in self._cache if key[0] == k and key[1] < i]:
            del self._cache[key]

    def slice(self, z: int) -> list[np.ndarray]:
        """The field on slice ``z``: one float32 array per group (their sum has unit variance)."""
        ny, nx = self.fshape
        specs = [np.zeros((ny, nx // 2 + 1), np.complex64) for _ in range(self.n_groups)]
        z_mm = (z + 0.5) * self.dz
        for k, b in enumerate(self.bands):
            if b["spacing"] is None:
                block = self._node(k, z)
                self._forget_before(k, z)
            else:
                t = z_mm / b["spacing"] + b["offset"]
                i = math.floor(t)
                frac = t - i
                block = (math.cos(0.5 * math.pi * frac) * self._node(k, i)
                         + math.sin(0.5 * math.pi * frac) * self._node(k, i + 1))
                self._forget_before(k, i)
            spec = specs[b["group"]]
            mx, my = b["mx"], b["my"]
            if b["full_rows"]:
                spec[:, :mx] += block
            else:
                spec[:my + 1, :mx] += block[:my + 1]
                spec[ny - my:, :mx] += block[my + 1:]
        out = []
        for spec in specs:
            field_ = sfft.irfft2(spec, s=(ny, nx), workers=1)[: self.shape[0], : self.shape[1]]
            out.append((field_ * self.norm).astype(np.float32))
        return out


class RadialWarp:
    """Maps the image onto a canvas in which parenchyma is drawn isotropically.

    The breast's lobes and ducts radiate from the nipple, so its coarse texture is elongated
    along rays from the nipple and converges on it. Canvas coordinates are ``u = s_r * r``
    and ``v = R0 * theta`` (``r``, ``theta``: distance and angle from the nipple; ``R0`` the
    chest-wall-to-nipple distance; ``s_r = 0.7``): an isotropic canvas texture appears about
    1.4 times as long along the rays as across, narrower near the nipple (converging on it)
    and about isotropic near the chest wall. Within 20 mm of the nipple the angle is scaled
    down with ``r`` so the map has no singularity. With these values the local scale of the
    map is about one in the middle of the breast, so the warped coarse bands join the
    isotropic fine bands without a step in the spectrum.

    Parameters
    ----------
    geom : BreastGeometry
    spacing : float
        Canvas pixel, mm.
    stretch : float, default 0.7
        ``s_r``: canvas units per mm along the rays.
    """

    def __init__(self, geom: BreastGeometry, spacing: float, stretch: float = 0.7) -> None:
        yn, xn = geom.nipple_yx_mm
        y = (np.arange(geom.rows, dtype=np.float32) + 0.5) * geom.px
        dy = (y - yn)[:, None]
        dx = (xn - geom.x_mm)[None, :]
        r = np.sqrt(dy * dy + dx * dx)
        theta = np.arctan2(dy, dx)
        r0 = max(geom.chest_wall_to_nipple_mm, 20.0)
        u = stretch * r
        v = r0 * theta * np.minimum(1.0, r / 20.0)
        inside = geom.footprint
        vmin = float(v[inside].min()) if inside.any() else float(v.min())
        vmax = float(v[inside].max()) if inside.any() else float(v.max())
        umax = float(u[inside].max()) if inside.any() else float(u.max())
        pad = 2
        self.shape = (math.ceil((vmax - vmin) / spacing) + 2 * pad + 1,
                      math.ceil(umax / spacing) + 2 * pad + 1)
        self.coords = np.stack([(v - vmin) / spacing + pad, u / spacing + pad]).astype(np.float32)
        self.spacing = spacing

    def sample(self, canvas: np.ndarray) -> np.ndarray:
        """The canvas field seen through the map, at every image pixel."""
        return ndimage.map_coordinates(canvas, self.coords, order=1, mode="nearest",
                                       prefilter=False).astype(np.float32)


class Parenchyma:
    """The parenchymal field: coarse bands through the radial warp, fine bands isotropic.

    :meth:`slice` returns ``(coarse, fine)`` whose sum has unit variance and a power-law
    spectrum; the coarse part (band centres below ``split``) is drawn on a canvas of 0.5 mm
    (or the pixel, if coarser) and seen through :class:`RadialWarp`, so it radiates from the
    nipple; the fine part is made on the image grid.

    Parameters
    ----------
    geom : BreastGeometry
    seed : int
    beta : float
        Power-law exponent of the generating spectrum.
    f_lo : float
        Lowest band centre, cycles/mm.
    split : float
        Band centre (cycles/mm) from which bands are fine.
    """

    def __init__(self, geom: BreastGeometry, seed: int, *, beta: float, f_lo: float,
                 split: float) -> None:
        px, dz = geom.px, geom.dz
        self.fine = SpectralField((geom.rows, geom.cols), px, dz, seed=seed, beta=beta,
                                  f_lo=f_lo, include=(split, math.inf))
        self.warp = RadialWarp(geom, max(0.5, px))
        self.coarse = SpectralField(self.warp.shape, self.warp.spacing, dz, seed=seed + 1,
                                    beta=beta, f_lo=f_lo, include=(0.0, split),
                                    target=self.fine.band_fraction)
        #: standard deviation of the fine part
        self.fine_std = self.fine.group_std[0]

    def slice(self, z: int) -> tuple[np.ndarray, np.ndarray]:
        """``(coarse, fine)`` parts of the field on slice ``z``."""
        return self.warp.sample(self.coarse.slice(z)[0]), self.fine.slice(z)[0]


def power_law_noise(
    shape: tuple[int, ...],
    rng: np.random.Generator,
    *,
    beta: float = 3.0,
    spacing: tuple[float, ...] | None = None,
    f_min: float = 0.0,
) -> np.ndarray:
    """Gaussian noise with an isotropic power spectrum ``P(f) ~ f**-beta``.

    Parameters
    ----------
    shape : tuple of int
        Output shape (2D or 3D).
    rng : numpy.random.Generator
        Source of randomness.
    beta : float, default 3.0
        Spectral exponent (about 3 for breast parenchyma).
    spacing : tuple of float, optional
        Physical sample spacing per axis (so the spectrum is isotropic in millimetres even on
        an anisotropic grid). Defaults to 1 per axis.
    f_min : float, default 0.0
        Frequencies below ``f_min`` (cycles per unit of ``spacing``) are clamped to it, which
        bounds the largest structures.

    Returns
    -------
    numpy.ndarray
        float32 array of ``shape`` with zero mean and unit standard deviation.
    """
    if spacing is None:
        spacing = (1.0,) * len(shape)
    if len(spacing) != len(shape):
        raise ValueError(f"spacing {spacing!r} must have one value per axis of shape {shape!r}")
    freqs = [np.fft.fftfreq(n, d=s).astype(np.float32) for n, s in zip(shape[:-1], spacing[:-1])]
    freqs.append(np.fft.rfftfreq(shape[-1], d=spacing[-1]).astype(np.float32))
    f2 = np.zeros([len(f) for f in freqs], dtype=np.float32)
    for axis, f in enumerate(freqs):
        view = [1] * len(freqs)
        view[axis] = len(f)
        f2 = f2 + f.reshape(view) ** 2
    f = np.sqrt(f2)
    smallest = min(1.0 / (n * s) for n, s in zip(shape, spacing))
    f = np.maximum(f, max(f_min, smallest))
    amplitude = f ** (-beta / 2.0)
    amplitude.flat[0] = 0.0
    white = rng.standard_normal(shape, dtype=np.float32)
    spectrum = np.fft.rfftn(white) * amplitude
    out = np.fft.irfftn(spectrum, s=shape, axes=tuple(range(len(shape)))).astype(np.float32)
    out -= out.mean()
    std = float(out.std())
    return out / std if std > 0 else out
