"""Synthetic digital breast tomosynthesis (DBT) phantoms.

A phantom is a reconstructed DBT volume ``(slices, rows, cols)`` in ``[0, 1]`` (0 = air) with
the ground truth of any inserted lesions. It is built to be *plausible*, not physically
exact, and fast enough to make training and test sets on a CPU:

* **Geometry** -- a compressed-breast footprint (a semi-ellipse against the chest wall at
  column 0 for ``laterality="L"``; mirrored for ``"R"``) with a slightly brighter skin rim and
  subcutaneous fat. ``view="MLO"`` adds a pectoral muscle triangle in the upper chest-wall
  corner.
* **Parenchyma** -- 3D power-law noise (``P(f) ~ f**-beta``, ``beta = 3``, as measured for
  mammographic texture), thresholded softly so that the fibroglandular fraction follows
  ``density``, concentrated away from skin and chest wall; Cooper's-ligament-like thin ridges
  in fat.  The noise is generated on a coarse grid (about 0.4 mm in-plane) and upsampled, so a
  full-size ``64 x 2560 x 2048`` volume needs little memory beyond the output itself.
* **Tomosynthesis blur** -- every structure is mixed with a copy blurred along ``z`` (and a
  little along rows): in-plane structures stay sharp on their slice and leave faint
  out-of-plane ghosts on their neighbours.
* **Lesions** -- masses of 5-30 mm (round, lobulated or spiculated, with thin radiating
  spicules), 3D ellipsoid-like extent in ``z``, a little denser than fibroglandular tissue
  (``+0.05 ... +0.15`` above the glandular level); optional microcalcification clusters.
  ``lesion_mask`` marks the mass bodies and the convex hull of each calcification cluster.
* **Noise** -- signal-dependent (quantum-like) Gaussian noise, slightly correlated.

Everything is deterministic from ``seed``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, special

logger = logging.getLogger(__name__)

__all__ = ["Phantom", "make_phantom", "power_law_noise"]

# Intensity levels on the [0, 1] attenuation-like scale.
_FAT = 0.24
_GLAND = 0.56
_SKIN_BOOST = 0.12
_PECTORAL = 0.64
_LIGAMENT = 0.07
_CALC = 0.35
_COARSE_SPACING_MM = 0.4
_SKIN_MM = 1.5
_MASS_KINDS = ("round", "lobulated", "spiculated")


@dataclass
class Phantom:
    """A synthetic DBT volume with its ground truth.

    Attributes
    ----------
    volume : numpy.ndarray
        ``(slices, rows, cols)`` float32 in ``[0, 1]``; 0 is air.
    lesion_mask : numpy.ndarray
        ``(slices, rows, cols)`` bool, True inside masses and calcification-cluster hulls.
    lesions : list of dict
        One entry per lesion: ``kind`` (``"round"``, ``"lobulated"``, ``"spiculated"`` or
        ``"calcifications"``), ``center_zyx`` (voxel indices, stored orientation),
        ``diameter_mm`` (float).
    breast_mask : numpy.ndarray
        ``(rows, cols)`` bool tissue footprint (includes the pectoral muscle).
    laterality : str
        ``"L"`` (chest wall at column 0) or ``"R"`` (chest wall at the last column).
    view : str
        ``"CC"`` or ``"MLO"``.
    pixel_spacing_mm : float
        In-plane spacing of rows and columns.
    slice_thickness_mm : float
        Spacing between slices.
    """

    volume: np.ndarray
    lesion_mask: np.ndarray
    lesions: list[dict] = field(default_factory=list)
    breast_mask: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool))
    laterality: str = "L"
    view: str = "CC"
    pixel_spacing_mm: float = 0.1
    slice_thickness_mm: float = 1.0


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


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _footprint(
    rows: int, cols: int, spacing_y: float, spacing_x: float, view: str, shape_params: dict
) -> tuple[np.ndarray, np.ndarray]:
    """Breast footprint and pectoral mask (chest wall at column 0) on a grid of the given spacing."""
    y = (np.arange(rows, dtype=np.float32) + 0.5) * spacing_y  # mm
    x = (np.arange(cols, dtype=np.float32) + 0.5) * spacing_x
    yy, xx = y[:, None], x[None, :]
    height = rows * spacing_y
    width = cols * spacing_x
    yc = shape_params["yc"] * height
    a = shape_params["a"] * height
    b = shape_params["b"] * width
    tilt = shape_params["tilt"]
    # A slightly skewed semi-ellipse: the row centre drifts with depth (x).
    yd = yy - yc - tilt * xx
    r = (yd / a) ** 2 + (xx / b) ** 2
    # Slight flattening of the nipple end makes it look compressed rather than elliptical.
    footprint = r <= 1.0
    pectoral = np.zeros((rows, cols), dtype=bool)
    if view == "MLO":
        pw = shape_params["pec_w"] * width
        ph = shape_params["pec_h"] * height
        pectoral = (xx / pw + yy / ph) < 1.0
        # Axillary tail: the breast widens towards the top along the chest wall.
        tail = (xx / (pw * 1.45) + yy / (ph * 1.15)) < 1.0
        footprint = footprint | tail | pectoral
        # round off the notch where the axillary tail meets the breast (about 8 mm)
        smooth = ndimage.gaussian_filter(footprint.astype(np.float32),
                                         sigma=(8.0 / spacing_y, 8.0 / spacing_x), mode="nearest")
        footprint = (smooth > 0.5) | pectoral
    return footprint, pectoral & footprint


def _distance_inside(mask: np.ndarray, spacing: tuple[float, float], open_top: bool) -> np.ndarray:
    """Distance (mm) from each inside pixel to the skin; the chest wall (column 0) is not skin."""
    pad_top = 1 if open_top else 0
    padded = np.pad(mask, ((pad_top, 0), (1, 0)), mode="constant", constant_values=True)
    dist = ndimage.distance_transform_edt(padded, sampling=spacing)
    return dist[pad_top:, 1:].astype(np.float32)


def _upsample(slice2d: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Bilinear upsampling of a coarse slice to exactly ``(rows, cols)``."""
    if slice2d.shape == (rows, cols):
        return slice2d.astype(np.float32, copy=False)
    zoom = (rows / slice2d.shape[0], cols / slice2d.shape[1])
    out = ndimage.zoom(slice2d, zoom, order=1, mode="nearest", grid_mode=True)
    if out.shape != (rows, cols):  # rounding in zoom; pad or crop by at most a pixel
        out = np.pad(out, ((0, max(0, rows - out.shape[0])), (0, max(0, cols - out.shape[1]))),
                     mode="edge")[:rows, :cols]
    return out.astype(np.float32, copy=False)


def _tomo_blur(vol: np.ndarray, slice_thickness_mm: float, spacing_y: float) -> np.ndarray:
    """Mix in-focus structure with an out-of-plane blurred copy (along z, a little along rows)."""
    sigma_z = 2.5 / slice_thickness_mm
    blurred = ndimage.gaussian_filter1d(vol, sigma=sigma_z, axis=0, mode="nearest")
    blurred = ndimage.gaussian_filter1d(blurred, sigma=1.0 / spacing_y, axis=1, mode="nearest")
    return (0.6 * vol + 0.4 * blurred).astype(np.float32)


def _tomo_blur_z(delta: np.ndarray, slice_thickness_mm: float) -> np.ndarray:
    sigma_z = 2.5 / slice_thickness_mm
    blurred = ndimage.gaussian_filter1d(delta, sigma=sigma_z, axis=0, mode="constant")
    return (0.6 * delta + 0.4 * blurred).astype(np.float32)


def _mass_body(
    kind: str,
    radius_mm: float,
    zr_mm: float,
    grid: tuple[np.ndarray, np.ndarray, np.ndarray],
    rng: np.random.Generator,
    px_mm: float,
) -> np.ndarray:
    """Soft mass body (0..1) on a local grid of mm offsets ``(w, v, u)``."""
    w, v, u = grid
    theta0 = rng.uniform(0, math.pi)
    ct, st = math.cos(theta0), math.sin(theta0)
    ur = ct * u + st * v
    vr = -st * u + ct * v
    aspect = rng.uniform(0.8, 1.0)
    wz = w * (radius_mm / zr_mm)
    rho = np.sqrt(ur**2 + (vr / aspect) ** 2 + wz**2)
    boundary: np.ndarray | float = radius_mm
    if kind in ("lobulated", "spiculated"):
        theta = np.arctan2(vr, ur)
        elev = np.arctan2(wz, np.sqrt(ur**2 + vr**2))
        mod = np.zeros(np.broadcast_shapes(theta.shape, elev.shape), dtype=np.float32)
        orders = (2, 3, 4, 5) if kind == "lobulated" else (3, 5, 7, 9)
        amp = 0.14 if kind == "lobulated" else 0.08
        for k in orders:
            mod += rng.uniform(0.4, 1.0) * amp * np.cos(k * theta + rng.uniform(0, 2 * math.pi)) \
                * np.cos(int(rng.integers(1, 3)) * elev)
        boundary = radius_mm * (1.0 + mod)
    edge_mm = max(0.4 if kind != "round" else 0.6, px_mm)
    return special.expit((boundary - rho) / (edge_mm / 2.0)).astype(np.float32)


def _spicules_2d(radius_mm: float, shape: tuple[int, int], center: tuple[float, float],
                 rng: np.random.Generator, px_mm: float) -> np.ndarray:
    """Thin radiating lines (0..1) around ``center`` (pixel offsets in a local 2D grid)."""
    out = np.zeros(shape, dtype=np.float32)
    n = int(rng.integers(8, 20))
    cy, cx = center
    width_mm = max(0.25, 0.07 * radius_mm)
    for _ in range(n):
        phi = rng.uniform(0, 2 * math.pi)
        length = radius_mm * rng.uniform(1.4, 2.4)
        t = np.arange(0.5 * radius_mm, length, 0.5 * px_mm)
        ys = np.round(cy + t * math.sin(phi) / px_mm).astype(int)
        xs = np.round(cx + t * math.cos(phi) / px_mm).astype(int)
        ok = (ys >= 0) & (ys < shape[0]) & (xs >= 0) & (xs < shape[1])
        taper = (1.0 - 0.85 * t / length).astype(np.float32)
        np.maximum.at(out, (ys[ok], xs[ok]), taper[ok])
    sigma = max(0.5, width_mm / px_mm)
    out = ndimage.gaussian_filter(out, sigma=sigma)
    peak = float(out.max())
    return out / peak if peak > 0 else out


def make_phantom(
    *,
    seed: int = 0,
    lesions: int = 1,
    slices: int = 32,
    rows: int = 512,
    cols: int = 384,
    laterality: str = "L",
    view: str = "CC",
    pixel_spacing_mm: float = 0.1,
    slice_thickness_mm: float = 1.0,
    density: float = 0.5,
    calcifications: bool = False,
    lesion_diameter_mm: tuple[float, float] = (5.0, 30.0),
) -> Phantom:
    """Make a synthetic DBT volume, optionally with lesions.

    Parameters
    ----------
    seed : int, default 0
        Everything (shape, texture, lesions, noise) is deterministic from it.
    lesions : int, default 1
        Number of masses to insert (0 for a normal volume).
    slices, rows, cols : int
        Volume shape; defaults ``32 x 512 x 384``.
    laterality : {"L", "R"}
        ``"L"``: chest wall at column 0; ``"R"``: the same breast mirrored.
    view : {"CC", "MLO"}
        MLO adds a pectoral muscle in the upper chest-wall corner.
    pixel_spacing_mm : float, default 0.1
        In-plane spacing in mm.
    slice_thickness_mm : float, default 1.0
        Slice spacing in mm.
    density : float, default 0.5
        Fibroglandular fraction of the glandular region, in ``[0, 1]``.
    calcifications : bool, default False
        Add one microcalcification cluster (marked in ``lesion_mask`` by its hull).
    lesion_diameter_mm : (float, float), default (5, 30)
        Range of mass diameters (uniform). A drawn diameter larger than the breast can hold
        (small fields of view) is reduced to the largest that fits; the ``lesions`` entries
        report the diameter actually used.

    Returns
    -------
    Phantom
    """
    laterality = str(laterality).upper()
    view = str(view).upper()
    if laterality not in ("L", "R"):
        raise ValueError(f"laterality must be 'L' or 'R', got {laterality!r}")
    if view not in ("CC", "MLO"):
        raise ValueError(f"view must be 'CC' or 'MLO', got {view!r}")
    if min(slices, rows, cols) < 1 or rows < 16 or cols < 16:
        raise ValueError(f"shape must be at least 1 x 16 x 16, got {(slices, rows, cols)!r}")
    if pixel_spacing_mm <= 0 or slice_thickness_mm <= 0:
        raise ValueError(
            f"spacings must be positive, got pixel {pixel_spacing_mm!r}, slice {slice_thickness_mm!r}"
        )
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density!r}")
    if lesions < 0:
        raise ValueError(f"lesions must be >= 0, got {lesions!r}")
    dmin, dmax = lesion_diameter_mm
    if not 0 < dmin <= dmax:
        raise ValueError(f"lesion_diameter_mm must be (min, max) with 0 < min <= max, got {lesion_diameter_mm!r}")

    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x9E3779B9]))
    px = float(pixel_spacing_mm)
    shape_params = {
        "yc": rng.uniform(0.46, 0.54) if view == "CC" else rng.uniform(0.56, 0.64),
        "a": rng.uniform(0.36, 0.45) if view == "CC" else rng.uniform(0.36, 0.42),
        "b": rng.uniform(0.78, 0.93),
        "tilt": rng.uniform(-0.06, 0.06),
        "pec_w": rng.uniform(0.22, 0.34),
        "pec_h": rng.uniform(0.45, 0.65),
    }

    # ---- full-resolution 2D maps -------------------------------------------------------
    footprint, pectoral = _footprint(rows, cols, px, px, view, shape_params)
    if not footprint.any():
        raise ValueError("breast footprint is empty; the image is too small")
    dist = _distance_inside(footprint, (px, px), open_top=view == "MLO")
    skin = np.clip(1.0 - dist / _SKIN_MM, 0.0, 1.0) * footprint
    # soften the pectoral edge (about 1 mm)
    pec_soft = ndimage.gaussian_filter(pectoral.astype(np.float32), sigma=max(0.5, 0.7 / px))

    # ---- coarse 3D tissue ----------------------------------------------------------------
    f = max(1, int(round(_COARSE_SPACING_MM / px)))
    crows, ccols = math.ceil(rows / f), math.ceil(cols / f)
    cpx = px * f
    cfoot, cpec = _footprint(crows, ccols, cpx, cpx, view, shape_params)
    cdist = _distance_inside(cfoot, (cpx, cpx), open_top=view == "MLO")
    xmm = (np.arange(ccols, dtype=np.float32) + 0.5) * cpx
    gland_env = _smoothstep((cdist - 4.0) / 10.0) * _smoothstep((xmm[None, :] - 2.0) / 8.0)
    gland_env *= ~cpec
    spacing3 = (slice_thickness_mm, cpx, cpx)
    shape3 = (slices, crows, ccols)
    tex = power_law_noise(shape3, rng, beta=3.0, spacing=spacing3, f_min=1.0 / 60.0)
    # local density varies smoothly too (a second, very low-frequency field)
    trend = power_law_noise(shape3, rng, beta=4.0, spacing=spacing3, f_min=1.0 / 120.0)
    field3 = 0.85 * tex + 0.5 * trend
    inside = np.broadcast_to(gland_env > 0.5, shape3)
    if density <= 0.0:
        fg = np.zeros(shape3, np.float32)
    elif density >= 1.0:
        fg = np.ones(shape3, np.float32)
    else:
        vals = field3[inside] if inside.any() else field3.ravel()
        thr = float(np.quantile(vals[:: max(1, vals.size // 200_000)], 1.0 - density))
        fg = special.expit((field3 - thr) / 0.3)
    fg = (fg * gland_env[None]).astype(np.float32)
    del field3, trend
    # Cooper's ligaments: thin ridges (zero crossings) of band-pass noise, in fat
    band = power_law_noise(shape3, rng, beta=2.0, spacing=spacing3, f_min=1.0 / 15.0)
    band = ndimage.gaussian_filter(band, sigma=(0.5, 1.0, 1.0))
    band /= band.std() + 1e-6
    ligament = np.exp(-((band / 0.12) ** 2)) * (1.0 - fg) * _smoothstep(cdist / 6.0)[None]
    del band
    fine = 0.5 * tex  # keeps some in-fat texture
    coarse = _FAT + (_GLAND - _FAT) * fg + _LIGAMENT * ligament + 0.025 * fine
    del ligament, fine
    coarse = _tomo_blur(coarse.astype(np.float32), slice_thickness_mm, cpx)
    # muscle striation texture for the pectoral, from the same coarse texture
    pec_tex = 0.03 * _tomo_blur(tex, slice_thickness_mm, cpx)
    del tex

    # ---- lesions (planned in the L orientation) ------------------------------------------
    lesion_list: list[dict] = []
    lesion_mask = np.zeros((slices, rows, cols), dtype=bool)
    placement_dist = np.where(pectoral, 0.0, dist)
    # keep away from the pectoral too
    if pectoral.any():
        pec_dist = ndimage.distance_transform_edt(~pectoral, sampling=(px, px)).astype(np.float32)
        placement_dist = np.minimum(placement_dist, pec_dist)
    # the chest wall edge (column 0) is inside tissue but lesions must fit in the image
    xmm_full = (np.arange(cols, dtype=np.float32) + 0.5) * px
    placement_dist = np.minimum(placement_dist, xmm_full[None, :])
    ymm_full = (np.arange(rows, dtype=np.float32) + 0.5) * px
    placement_dist = np.minimum(placement_dist, np.minimum(ymm_full, rows * px - ymm_full)[:, None])
    masses: list[dict] = []
    for _ in range(lesions):
        diameter = float(rng.uniform(dmin, dmax))
        kind = _MASS_KINDS[int(rng.integers(0, len(_MASS_KINDS)))]
        # the lobulated outline may exceed the radius by 25 %, plus a 1 mm margin
        margin = 1.0 + 1.5 * px
        fits = (float(placement_dist.max()) - margin) / 1.25 * 2.0
        if fits < min(dmin, 1.0):
            raise ValueError(
                f"no {dmin:.1f} mm mass fits inside the breast of a {rows}x{cols} image "
                f"at {px} mm/pixel; use a larger image or smaller lesion_diameter_mm"
            )
        if diameter > fits:  # a small field of view: limit the mass to what fits
            logger.debug("mass diameter %.1f mm limited to %.1f mm to fit", diameter, fits)
            diameter = max(fits, min(dmin, fits))
        radius = diameter / 2.0
        reach = radius * (2.4 if kind == "spiculated" else 1.2)
        needed = radius * 1.25 + margin
        cand = np.flatnonzero(placement_dist.ravel() >= needed - 1e-3)
        idx = int(cand[rng.integers(0, cand.size)])
        cy, cx = divmod(idx, cols)
        zr_mm = radius * rng.uniform(0.6, 0.9)
        zr = zr_mm / slice_thickness_mm
        lo, hi = zr, slices - 1 - zr
        cz = float(rng.uniform(lo, hi)) if hi > lo else (slices - 1) / 2.0
        masses.append({"kind": kind, "diameter": diameter, "radius": radius, "reach": reach,
                       "zr_mm": zr_mm, "c": (cz, float(cy), float(cx)),
                       "contrast": float(rng.uniform(0.05, 0.15)),
                       "seed": int(rng.integers(0, 2**31))})
    calc_plan = None
    if calcifications:
        spread = float(rng.uniform(3.0, 8.0))  # cluster radius in mm
        cand = np.flatnonzero(placement_dist.ravel() >= spread + 2.0)
        if cand.size == 0:
            raise ValueError("a calcification cluster does not fit inside the breast; use a larger image")
        idx = int(cand[rng.integers(0, cand.size)])
        cy, cx = divmod(idx, cols)
        cz = float(rng.uniform(0, slices - 1))
        calc_plan = {"c": (cz, float(cy), float(cx)), "spread": spread,
                     "n": int(rng.integers(6, 20)), "seed": int(rng.integers(0, 2**31))}
    noise_seed = int(rng.integers(0, 2**31))

    # ---- compose full resolution volume slice by slice -----------------------------------
    volume = np.empty((slices, rows, cols), dtype=np.float32)
    skin_boost = (_SKIN_BOOST * skin).astype(np.float32)
    foot_f = footprint.astype(np.float32)
    for z in range(slices):
        tissue = _upsample(coarse[z], rows, cols)
        ptex = _upsample(pec_tex[z], rows, cols)
        sl = tissue * (1.0 - pec_soft) + (_PECTORAL + ptex) * pec_soft + skin_boost
        volume[z] = sl * foot_f
    del coarse, pec_tex

    for m in masses:
        _insert_mass(volume, lesion_mask, m, px, slice_thickness_mm, footprint)
        cz, cy, cx = m["c"]
        lesion_list.append({"kind": m["kind"], "center_zyx": [float(cz), float(cy), float(cx)],
                            "diameter_mm": float(m["diameter"])})
    if calc_plan is not None:
        diameter = _insert_calcifications(volume, lesion_mask, calc_plan, px, slice_thickness_mm)
        cz, cy, cx = calc_plan["c"]
        lesion_list.append({"kind": "calcifications", "center_zyx": [float(cz), float(cy), float(cx)],
                            "diameter_mm": float(diameter)})

    # ---- quantum-like noise ----------------------------------------------------------------
    nrng = np.random.default_rng(noise_seed)
    sigma_noise = max(0.5, 0.05 / px)  # noise correlation about 0.05 mm -> at least half a pixel
    for z in range(slices):
        n = nrng.standard_normal((rows, cols), dtype=np.float32)
        n = ndimage.gaussian_filter(n, sigma=sigma_noise)
        n *= 1.0 / max(float(n.std()), 1e-6)
        sl = volume[z]
        sl += 0.012 * np.sqrt(np.maximum(sl, 0.0) / _GLAND) * n * foot_f
        np.clip(sl, 0.0, 1.0, out=sl)
        sl *= foot_f
    lesion_mask &= footprint[None]

    if laterality == "R":
        volume = np.ascontiguousarray(volume[:, :, ::-1])
        lesion_mask = np.ascontiguousarray(lesion_mask[:, :, ::-1])
        footprint = np.ascontiguousarray(footprint[:, ::-1])
        for les in lesion_list:
            les["center_zyx"][2] = float(cols - 1 - les["center_zyx"][2])
    logger.debug("phantom seed=%d %s %s shape=%s lesions=%d", seed, laterality, view,
                 volume.shape, len(lesion_list))
    return Phantom(volume=volume, lesion_mask=lesion_mask, lesions=lesion_list,
                   breast_mask=footprint, laterality=laterality, view=view,
                   pixel_spacing_mm=px, slice_thickness_mm=float(slice_thickness_mm))


def _insert_mass(volume: np.ndarray, lesion_mask: np.ndarray, m: dict, px: float, dz: float,
                 footprint: np.ndarray) -> None:
    """Render one mass into ``volume`` (in place) with tomosynthesis blur and mark its body."""
    slices, rows, cols = volume.shape
    cz, cy, cx = m["c"]
    sigma_z = 2.5 / dz
    spiculated = m["kind"] == "spiculated"
    reach_px = m["reach"] / px + 2
    z_extent = m["zr_mm"] * 1.3 / dz + 3 * sigma_z + 1
    z0, z1 = max(0, int(math.floor(cz - z_extent))), min(slices, int(math.ceil(cz + z_extent)) + 1)
    y0, y1 = max(0, int(math.floor(cy - reach_px))), min(rows, int(math.ceil(cy + reach_px)) + 1)
    x0, x1 = max(0, int(math.floor(cx - reach_px))), min(cols, int(math.ceil(cx + reach_px)) + 1)
    w = ((np.arange(z0, z1, dtype=np.float32) - cz) * dz)[:, None, None]
    v = ((np.arange(y0, y1, dtype=np.float32) - cy) * px)[None, :, None]
    u = ((np.arange(x0, x1, dtype=np.float32) - cx) * px)[None, None, :]
    rng = np.random.default_rng(m["seed"])
    body = _mass_body(m["kind"], m["radius"], m["zr_mm"], (w, v, u), rng, px)
    region = volume[z0:z1, y0:y1, x0:x1]
    level = _GLAND + m["contrast"]
    # internal texture: gentle heterogeneity of the mass itself (2D, shared by its slices)
    tex = ndimage.gaussian_filter(rng.standard_normal(body.shape[1:]).astype(np.float32),
                                  sigma=0.6 / px)
    tex /= tex.std() + 1e-6
    delta = body * (level + 0.012 * tex[None] - region)
    delta = np.where(delta > 0, delta, 0.3 * delta)
    if spiculated:
        spic = _spicules_2d(m["radius"], body.shape[1:], (cy - y0, cx - x0), rng, px)
        zprof = np.exp(-0.5 * (w / (0.5 * m["zr_mm"])) ** 2)
        spic_level = _GLAND + 0.5 * m["contrast"]
        delta += (1.0 - body) * (spic[None] * zprof) * np.maximum(spic_level - region, 0.0)
    delta = _tomo_blur_z(delta, dz)
    foot = footprint[y0:y1, x0:x1][None]
    region += delta * foot
    lesion_mask[z0:z1, y0:y1, x0:x1] |= (body > 0.5) & foot


def _insert_calcifications(volume: np.ndarray, lesion_mask: np.ndarray, plan: dict, px: float,
                           dz: float) -> float:
    """Render a microcalcification cluster; mark its convex hull; return its diameter in mm."""
    slices, rows, cols = volume.shape
    rng = np.random.default_rng(plan["seed"])
    cz, cy, cx = plan["c"]
    spread = plan["spread"]
    n = plan["n"]
    pts = rng.normal(0.0, spread / 2.0, size=(n, 2))
    norms = np.linalg.norm(pts, axis=1, keepdims=True)
    pts = np.where(norms > spread, pts / norms * spread, pts)
    zs = np.clip(np.round(cz + rng.normal(0.0, 1.0 / dz, n)), 0, slices - 1).astype(int)
    sizes = rng.uniform(0.15, 0.5, n)  # mm
    for (py, pxx), zc, s in zip(pts, zs, sizes):
        yc, xc = cy + py / px, cx + pxx / px
        r = max(s / 2.0 / px, 0.6)
        rad = int(math.ceil(3 * r)) + 1
        ya, yb = max(0, int(yc) - rad), min(rows, int(yc) + rad + 1)
        xa, xb = max(0, int(xc) - rad), min(cols, int(xc) + rad + 1)
        yy = np.arange(ya, yb)[:, None] - yc
        xx = np.arange(xa, xb)[None, :] - xc
        blob = np.exp(-0.5 * (yy**2 + xx**2) / r**2).astype(np.float32)
        amp = _CALC * rng.uniform(0.6, 1.0)
        for dzi, weight in ((0, 1.0), (-1, 0.35), (1, 0.35), (-2, 0.1), (2, 0.1)):
            zz = zc + dzi
            if 0 <= zz < slices:
                volume[zz, ya:yb, xa:xb] += weight * amp * blob
    # convex hull of the cluster, dilated by 1 mm, over the slices the specks occupy
    hull_pts = np.concatenate([pts, pts + [1.0, 0], pts - [1.0, 0], pts + [0, 1.0], pts - [0, 1.0]])
    from scipy.spatial import Delaunay  # local import: only needed here

    tri = Delaunay(hull_pts)
    reach = int(math.ceil((spread + 1.5) / px)) + 1
    ya, yb = max(0, int(cy) - reach), min(rows, int(cy) + reach + 1)
    xa, xb = max(0, int(cx) - reach), min(cols, int(cx) + reach + 1)
    yy, xx = np.meshgrid((np.arange(ya, yb) - cy) * px, (np.arange(xa, xb) - cx) * px, indexing="ij")
    inside = tri.find_simplex(np.stack([yy.ravel(), xx.ravel()], axis=1)) >= 0
    inside = inside.reshape(yy.shape)
    lesion_mask[zs.min(): zs.max() + 1, ya:yb, xa:xb] |= inside[None]
    return float(2.0 * np.max(np.linalg.norm(pts, axis=1)) + 1.0)
