"""Measured realism figures of a synthetic DBT phantom.

:func:`realism_report` measures, on the phantom's volume only (not on generator internals):

* **Slice power-law exponent** ``beta`` of ``P(f) ~ f**-beta``: the radially averaged power
  spectrum of square breast-interior patches (25.6 mm, away from skin, pectoralis and lesions,
  mean removed, Hann-windowed), averaged over patches of up to 8 central slices, with a straight
  line fitted in log-log over a stated frequency band -- the way anatomical noise of mammograms
  and DBT slices is usually measured (Burgess et al. 2001, Med Phys 28:419, reported beta about
  3 for mammograms). Measured at the phantom's spacing and, when it is finer, again after
  block-averaging the slices to 0.4 mm.
* **Mass contrast**: mean of the mass core (within half the radius of the centre, on the
  centre slice) minus the mean of a ring 2 to 2 + max(3, R/2) mm outside the mass, divided by
  the tissue range (1st to 99th percentile of the slice's breast interior).
* **Mass conspicuity**: the fraction of mass-core voxels (all slices of the mass) brighter than
  the 99th percentile of all other breast-interior tissue.
* **Mass texture ratio**: standard deviation of the high-pass (1 mm Gaussian) image inside the
  core over that in the ring; 1 means the mass is as textured as its surroundings.
* **Density**: the requested density / BI-RADS, the true volumetric glandular fraction, and
  the measured fraction of interior voxels closer to gland than to fat.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:  # pragma: no cover
    from models.lab.phantom import Phantom

__all__ = ["fit_power_law", "radial_power_spectrum", "realism_report"]

PATCH_MM = 25.6
# fit bands, cycles/mm
BAND_NATIVE = (0.1, 3.0)  # capped at 0.6 x Nyquist
BAND_FINE = (0.5, 3.0)  # only for pixels of 0.1 mm or finer
BAND_0P4 = (0.1, 0.75)  # 0.6 x the Nyquist frequency of 0.4 mm pixels
_MASS_KINDS = ("round", "lobulated", "irregular", "spiculated")
_FAT_GLAND_MID = 0.40  # halfway between the phantom's fat (0.24) and gland (0.56) levels


def radial_power_spectrum(slices: list[np.ndarray], masks: list[np.ndarray], px: float,
                          patch_px: int, max_patches: int = 16
                          ) -> tuple[np.ndarray, np.ndarray, int]:
    """Patch-averaged 2D power spectrum of ``slices`` inside ``masks``.

    Parameters
    ----------
    slices : list of numpy.ndarray
        2D images.
    masks : list of numpy.ndarray
        Where patches may lie (a patch must be wholly inside).
    px : float
        Pixel spacing, mm.
    patch_px : int
        Patch side in pixels.
    max_patches : int, default 16
        Per slice, evenly chosen among those that fit.

    Returns
    -------
    f : numpy.ndarray
        Radial frequency (cycles/mm) of each 2D spectrum sample.
    power : numpy.ndarray
        Mean power at those samples (same shape as ``f``).
    n : int
        Number of patches used (0: nothing fitted, ``power`` is zeros).
    """
    win = np.outer(np.hanning(patch_px), np.hanning(patch_px)).astype(np.float64)
    acc = np.zeros((patch_px, patch_px), np.float64)
    n = 0
    for img, mask in zip(slices, masks):
        integral = np.pad(np.cumsum(np.cumsum(mask.astype(np.int64), 0), 1), ((1, 0), (1, 0)))
        step = max(1, patch_px // 2)
        cands = []
        for y in range(0, img.shape[0] - patch_px + 1, step):
            for x in range(0, img.shape[1] - patch_px + 1, step):
                s = (integral[y + patch_px, x + patch_px] - integral[y, x + patch_px]
                     - integral[y + patch_px, x] + integral[y, x])
                if s == patch_px * patch_px:
                    cands.append((y, x))
        if not cands:
            continue
        pick = np.linspace(0, len(cands) - 1, min(max_patches, len(cands))).round().astype(int)
        for i in sorted(set(pick.tolist())):
            y, x = cands[i]
            p = img[y:y + patch_px, x:x + patch_px].astype(np.float64)
            p = (p - p.mean()) * win
            acc += np.abs(np.fft.fft2(p)) ** 2
            n += 1
    fy = np.fft.fftfreq(patch_px, d=px)
    f = np.hypot(fy[:, None], fy[None, :])
    return f, acc / max(n, 1), n


def fit_power_law(f: np.ndarray, power: np.ndarray, band: tuple[float, float],
                  bins_per_octave: int = 4) -> float | None:
    """``beta`` of a straight-line fit of log power against log frequency within ``band``.

    The spectrum is first averaged in logarithmic frequency bins, so that every octave has the
    same weight in the fit. Returns None when fewer than three bins have data.
    """
    lo, hi = band
    if hi <= lo:
        return None
    edges = lo * 2.0 ** (np.arange(0, math.log2(hi / lo) * bins_per_octave + 1) / bins_per_octave)
    xs, ys = [], []
    for a, b in itertools.pairwise(edges):
        sel = (f >= a) & (f < b)
        if sel.sum() >= 2 and np.all(np.isfinite(power[sel])):
            m = float(power[sel].mean())
            if m > 0:
                xs.append(math.log10(float(f[sel].mean())))
                ys.append(math.log10(m))
    if len(xs) < 3:
        return None
    slope = np.polyfit(xs, ys, 1)[0]
    return float(-slope)


def _block_mean(img: np.ndarray, k: int) -> np.ndarray:
    r, c = (img.shape[0] // k) * k, (img.shape[1] // k) * k
    return img[:r, :c].reshape(r // k, k, c // k, k).mean(axis=(1, 3))


def _exclusion(phantom: Phantom) -> np.ndarray:
    """In-plane pixels near a lesion (any depth) or the pectoralis: not 'normal tissue'."""
    rows, cols = phantom.breast_mask.shape
    px = phantom.pixel_spacing_mm
    out = np.zeros((rows, cols), bool)
    yy, xx = np.ogrid[:rows, :cols]
    for les in phantom.lesions:
        _, cy, cx = les["center_zyx"]
        kind = les.get("kind")
        if kind == "distortion":
            reach = 0.7 * les.get("extent_mm", les["diameter_mm"]) + 3.0
        elif kind == "calcifications":
            reach = 0.5 * les["diameter_mm"] + 3.0
        else:  # a mass: its lobulation and blur, or its spicules
            reach = les["diameter_mm"] * (1.3 if kind == "spiculated" else 0.75) + 3.0
            reach += 8.0 if kind == "spiculated" else 0.0
        out |= (yy - cy) ** 2 + (xx - cx) ** 2 <= (reach / px) ** 2
    if phantom.pectoral_mask is not None and phantom.pectoral_mask.any():
        out |= ndimage.distance_transform_edt(~phantom.pectoral_mask, sampling=px) < 5.0
    return out


def _interior(img: np.ndarray, px: float, margin_mm: float) -> np.ndarray:
    """Tissue pixels at least ``margin_mm`` from air (the image border counts as tissue)."""
    tissue = np.pad(img > 0, 1, mode="edge")
    return (ndimage.distance_transform_edt(tissue, sampling=px) >= margin_mm)[1:-1, 1:-1]


def _beta(slices: list[np.ndarray], masks: list[np.ndarray], px: float,
          band: tuple[float, float]) -> tuple[float | None, int]:
    patch = round(PATCH_MM / px)
    f, p, n = radial_power_spectrum(slices, masks, px, patch)
    if n == 0:
        # small images: the largest square patch that fits (at least 8 mm)
        for size_mm in (19.2, 12.8, 8.0):
            patch = round(size_mm / px)
            f, p, n = radial_power_spectrum(slices, masks, px, patch)
            if n:
                break
    if n == 0:
        return None, 0
    lo = max(band[0], 2.0 / (patch * px))  # at least two frequency steps above zero
    return fit_power_law(f, p, (lo, band[1])), n


def realism_report(phantom: Phantom, *, max_slices: int = 8) -> dict[str, Any]:
    """Measure the realism figures of a phantom (see the module docstring).

    Parameters
    ----------
    phantom : Phantom
        Any phantom (``lesions`` entries need ``kind``, ``center_zyx``, ``diameter_mm``).
    max_slices : int, default 8
        Slices (evenly spread over the central 60 % of the volume) used for the spectra.

    Returns
    -------
    dict
        JSON-friendly figures: ``slice_beta``, ``slice_beta_fine``, ``slice_beta_0p4mm`` (None
        when not measurable) with their bands in cycles/mm, ``patches``, per-mass
        ``masses`` and their means ``mass_contrast``, ``mass_core_above_p99``,
        ``mass_texture_ratio``, and ``density``, ``birads``, ``glandular_fraction``,
        ``dense_fraction``, ``breast_mm``, ``shape``, ``pixel_spacing_mm``.
    """
    vol = phantom.volume
    n_sl = vol.shape[0]
    px = float(phantom.pixel_spacing_mm)
    nyq = 0.5 / px
    excl = _exclusion(phantom)
    lo_z, hi_z = round(0.2 * (n_sl - 1)), round(0.8 * (n_sl - 1))
    zs = sorted(set(np.linspace(lo_z, hi_z, min(max_slices, hi_z - lo_z + 1)).round()
                    .astype(int).tolist()))
    imgs = [vol[z] for z in zs]
    masks = [_interior(im, px, 5.0) & ~excl for im in imgs]
    band = (BAND_NATIVE[0], min(BAND_NATIVE[1], 0.6 * nyq))
    beta, n_patches = _beta(imgs, masks, px, band)
    beta_fine = None
    if px <= 0.1 + 1e-9:
        beta_fine, _ = _beta(imgs, masks, px, BAND_FINE)
    beta_04 = None
    if px < 0.4 - 1e-9:
        k = 0.4 / px
        if abs(k - round(k)) < 1e-6:
            k = round(k)
            small = [_block_mean(im, k) for im in imgs]
            small_masks = [_block_mean(m.astype(np.float32), k) >= 1.0 for m in masks]
        else:
            small = [ndimage.zoom(ndimage.gaussian_filter(im, 0.4 * k), 1.0 / k, order=1)
                     for im in imgs]
            small_masks = [ndimage.zoom(m.astype(np.float32), 1.0 / k, order=0) > 0.5
                           for m in masks]
        beta_04, _ = _beta(small, small_masks, 0.4, BAND_0P4)
    elif abs(px - 0.4) < 1e-9:
        beta_04, _ = _beta(imgs, masks, px, BAND_0P4)

    # ---- tissue statistics over the whole volume (interior, no lesions, no pectoralis) -------
    rng = np.random.default_rng(0)
    sample_z = sorted(set(np.linspace(0, n_sl - 1, min(12, n_sl)).round().astype(int).tolist()))
    vals = []
    for z in sample_z:
        m = _interior(vol[z], px, 3.0) & ~excl & ~phantom.lesion_mask[z]
        v = vol[z][m]
        if v.size > 40_000:
            v = rng.choice(v, 40_000, replace=False)
        vals.append(v)
    tissue = np.concatenate(vals) if vals else np.zeros(0, np.float32)
    p99_all = float(np.percentile(tissue, 99)) if tissue.size else math.nan
    dense_fraction = float(np.mean(tissue > _FAT_GLAND_MID)) if tissue.size else None

    masses = []
    for les in phantom.lesions:
        if les.get("kind") not in _MASS_KINDS:
            continue
        masses.append(_mass_figures(phantom, les, p99_all))
    info = getattr(phantom, "info", {}) or {}

    def _mean(key: str) -> float | None:
        v = [m[key] for m in masses if m[key] is not None]
        return float(np.mean(v)) if v else None

    return {
        "shape": list(vol.shape), "pixel_spacing_mm": px,
        "slice_thickness_mm": float(phantom.slice_thickness_mm),
        "slice_beta": beta, "slice_beta_band_cpmm": [band[0], band[1]],
        "slice_beta_fine": beta_fine, "slice_beta_fine_band_cpmm": list(BAND_FINE),
        "slice_beta_0p4mm": beta_04, "slice_beta_0p4mm_band_cpmm": list(BAND_0P4),
        "patches": n_patches,
        "masses": masses,
        "mass_contrast": _mean("contrast"),
        "mass_core_above_p99": _mean("core_above_p99"),
        "mass_texture_ratio": _mean("texture_ratio"),
        "density": info.get("density"), "birads": info.get("birads"),
        "glandular_fraction": info.get("glandular_fraction"),
        "dense_fraction": dense_fraction,
        "breast_mm": {k: info.get(k) for k in ("chest_wall_to_nipple_mm", "width_mm",
                                               "thickness_mm")},
    }


def _mass_figures(phantom: Phantom, les: dict, p99_all: float) -> dict[str, Any]:
    vol, mask = phantom.volume, phantom.lesion_mask
    px = float(phantom.pixel_spacing_mm)
    n_sl, rows, cols = vol.shape
    cz, cy, cx = (round(c) for c in les["center_zyx"])
    radius = les["diameter_mm"] / 2.0
    reach = math.ceil((radius * 2.5 + 8.0) / px)
    ya, yb = max(0, cy - reach), min(rows, cy + reach + 1)
    xa, xb = max(0, cx - reach), min(cols, cx + reach + 1)
    yy, xx = np.meshgrid((np.arange(ya, yb) - cy) * px, (np.arange(xa, xb) - cx) * px,
                         indexing="ij")
    near = np.hypot(yy, xx) <= 0.5 * radius
    img = vol[cz, ya:yb, xa:xb]
    m2 = mask[cz, ya:yb, xa:xb]
    core = m2 & near
    out: dict[str, Any] = {"kind": les["kind"], "diameter_mm": float(les["diameter_mm"]),
                           "contrast": None, "core_above_p99": None, "texture_ratio": None}
    if not core.any():
        return out
    d_out = ndimage.distance_transform_edt(~m2, sampling=px)
    width = max(3.0, 0.5 * radius)
    ring = (d_out >= 2.0) & (d_out <= 2.0 + width) & _interior(img, px, 3.0)
    inside = _interior(vol[cz], px, 3.0) & ~mask[cz]
    if ring.sum() < 10 or inside.sum() < 100:
        return out
    p1, p99 = np.percentile(vol[cz][inside], [1, 99])
    rng_t = max(float(p99 - p1), 1e-6)
    out["contrast"] = float((img[core].mean() - img[ring].mean()) / rng_t)
    hp = img - ndimage.gaussian_filter(img, 1.0 / px)
    out["texture_ratio"] = float(hp[core].std() / max(float(hp[ring].std()), 1e-9))
    core_vals = []
    for z in range(n_sl):
        if mask[z, cy, cx]:
            core_vals.append(vol[z, ya:yb, xa:xb][mask[z, ya:yb, xa:xb] & near])
    cv = np.concatenate(core_vals) if core_vals else img[core]
    out["core_above_p99"] = float(np.mean(cv > p99_all)) if math.isfinite(p99_all) else None
    return out
