"""Synthetic digital breast tomosynthesis (DBT) phantoms.

A phantom is a reconstructed DBT volume ``(slices, rows, cols)`` in ``[0, 1]`` (0 = air) with
the ground truth of any inserted lesions. It is built to look like real reconstructed slices
-- texture statistics, anatomical structures, blur -- not to simulate acquisition physics, and
fast enough to make training and test sets on a CPU. Everything is in physical units
(millimetres), so the same kind of breast can be drawn at 0.1 mm (the native DBT pixel) or at
0.4 mm.

The model, in the order it is built (left orientation: chest wall at column 0):

1. **Breast** (:mod:`~models.lab.phantom_anatomy`): a compressed-breast outline (a slightly
   boxy semi-ellipse; MLO adds the axillary tail and the pectoralis major), of real size
   (``real_size=True``: chest-wall-to-nipple distance, width and compressed thickness drawn
   from population-like ranges, :data:`BREAST_SIZE_MM`; or ``breast_size_mm``) or fitted into a
   given field of view. The periphery is rounded (the outline recedes on slices away from the
   centre plane), the skin is a 1.5-2 mm band, fat layers (subcutaneous, retromammary, above
   and below) separate the glandular region from skin and chest wall.
2. **Parenchyma**: a Gaussian field with a power-law spectrum, coherent in depth over a
   distance proportional to each octave band's wavelength, soft-thresholded so that the
   fibroglandular fraction of the glandular region equals ``density`` (or a value drawn for a
   BI-RADS category, :data:`BIRADS_DENSITY`). Its coarse bands are drawn on a canvas seen
   through a polar map centred on the nipple, so that the tissue radiates from and converges
   on the nipple; the fine bands are isotropic and made at the native pixel size. Dense tissue
   keeps a fibrous texture, fat a faint one.
3. **Cooper's ligaments**: thin (FWHM about 0.5 mm) bright curved septa, the walls of 3D fat
   compartments (a warped Voronoi tessellation with cells about 9-14 mm across).
4. **Vessels and ducts**: 3D branching tubes (Murray's-law random-walk trees) -- vessels from
   the chest wall and the borders, ducts converging on the nipple -- drawn as their
   cross-section with each slice.
5. **Lesions** (:mod:`~models.lab.phantom_lesions`): masses of fibroglandular attenuation with
   3D shapes and 3D spicules, optional calcification clusters and architectural distortion.
6. **Tomosynthesis blur** (:class:`~models.lab.phantom_blur.TomoBlur`): structure coarser
   than about 2 mm is averaged over neighbouring slices (DBT resolves coarse structure poorly
   in depth); finer structure stays sharp on its own slice and leaves faint ghosts on its
   neighbours. Every neighbour's contribution is smeared along the tube-travel direction (the
   rows, parallel to the chest wall) by ``2 |dz| tan(sweep / 2)``, the shift-and-add trace of
   an out-of-plane structure.
7. **Noise**: signal-dependent, slightly correlated quantum-like noise.

Each 2D field is made at its resolution one slice at a time (an inverse FFT per field per
slice) and slices are mixed from a small ring buffer, so a real-size breast (about
50 x 1300 x 1000 at 0.1 mm) takes seconds to tens of seconds and little memory beyond the
output. :func:`~models.lab.phantom_realism.realism_report` (re-exported here) measures how
realistic a phantom is: slice power-law exponent, mass contrast and conspicuity, density.

Everything is deterministic from ``seed``; the normal tissue does not depend on the lesions (a
phantom with ``lesions=0`` is the same breast without them, identical away from them).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage, special

from models.lab.phantom_anatomy import (
    BreastGeometry,
    Compartments,
    TubeSet,
    grow_ducts,
    grow_vessels,
    make_geometry,
    render_tubes,
    smoothstep,
)
from models.lab.phantom_blur import TomoBlur
from models.lab.phantom_lesions import (
    Calcifications,
    Distortion,
    Mass,
    calcification_hull,
    distortion_core,
    keep_apart,
    placement_distance,
    plan_calcifications,
    plan_distortion,
    plan_mass,
    render_calcifications,
)
from models.lab.phantom_realism import realism_report
from models.lab.phantom_texture import Parenchyma, power_law_noise

logger = logging.getLogger(__name__)

__all__ = ["BIRADS_DENSITY", "BREAST_SIZE_MM", "Phantom", "make_phantom", "power_law_noise",
           "realism_report"]

GENERATOR_VERSION = "2"

# ---- intensity scale ([0, 1], attenuation-like) -------------------------------------------
_FAT = 0.24
_GLAND = 0.56
# skin is soft tissue of about glandular attenuation (its composition: Hammerstein et al. 1979,
# Radiology 130:485; approximate)
_SKIN = 0.58
# the pectoralis: muscle attenuates about like gland, but it is thick; drawn a little brighter
_PECTORAL = 0.64
# calcium (hydroxyapatite / oxalate) attenuates far more than soft tissue: the contrast of a
# speck covering a whole pixel; it saturates at 1 after clipping
_CALC = 2.0

# ---- texture ---------------------------------------------------------------------------------
# Power-law exponent of the *generating* field. The target is the measured slice exponent: about
# 3 for mammograms (Burgess et al. 2001, Med Phys 28:419), in the same neighbourhood for
# reconstructed DBT slices, lower (about 1.9) for breast CT (Metheany et al. 2008, Med Phys
# 35:4685). Thresholding, the radial warp, thin lines (ligaments, vessels) and noise change the
# measured spectrum, so this value was tuned until realism_report measured about 3 (2.8-3.4
# over densities and seeds) at 0.1 mm and at 0.4 mm.
_BETA_GEN = 3.2
_F_LOWEST = 1.0 / 64.0  # cycles/mm: larger structures keep the power of 64 mm
_F_TEXTURE_SPLIT = 0.5  # cycles/mm: coarser bands radiate from the nipple, finer are isotropic
_THRESHOLD_SOFTNESS = 0.5  # soft threshold width (field std units): partial volume of gland
# the glandular envelope lowers the field by this much (std units) where it is 0, so that the
# gland's border follows the texture (scalloped) instead of the envelope's smooth outline
_ENVELOPE_BIAS = 2.5
# texture inside fibroglandular tissue (and masses) and inside fat, as a fraction of the
# fat-to-gland step per unit of the (bounded) field; no published figure, set by eye and by
# the measured exponent
_FIBROUS_TEXTURE = 0.2
_FAT_TEXTURE = 0.1
# a mass's own glandular fraction: _MASS_FILL + _MASS_TEXTURE * (fine texture, unit std)
_MASS_FILL = 0.95
_MASS_TEXTURE = 0.05
# Cooper's ligaments: thin septa, a few tenths of a millimetre (approximate anatomy)
_LIGAMENT_SIGMA_MM = 0.2  # Gaussian sigma of a ligament's profile (FWHM ~0.47 mm)
_LIGAMENT_LEVEL = 0.4  # glandular-equivalent peak of a ligament
# ducts and vessels: glandular-equivalent level inside the tube (blood and duct walls
# attenuate about like fibroglandular tissue; thin tubes are partial-volumed)
_DUCT_LEVEL = 0.5
_VESSEL_LEVEL = 0.65
# ---- tomosynthesis blur ------------------------------------------------------------------------
# Two-band depth mix (see phantom_blur.TomoBlur). DBT's depth resolution depends on object
# size and sweep angle -- roughly size / tan(sweep / 2) (the out-of-plane blur of
# tomosynthesis, reviewed by Dobbins & Godfrey 2003, Phys Med Biol 48:R65) -- so structure
# coarser than _SPLIT_MM is averaged over depth with scale _COARSE_DEPTH_MM, while finer
# structure stays in focus with ghosts of strength _GHOST_LEVEL * exp(-|dz| / _FINE_DEPTH_MM)
# (values set by eye). Default sweep angle: total angular range of about 15 deg (Hologic;
# GE about 25, Siemens about 50 deg); the Duke BCS-DBT set is Hologic.
_SPLIT_MM = 2.0
_COARSE_DEPTH_MM = 3.0
_FINE_DEPTH_MM = 1.0
_GHOST_LEVEL = 0.5
_SWEEP_DEG = 15.0
# ---- noise -----------------------------------------------------------------------------------
# std at 0.1 mm pixels and glandular level, scaling as 0.1 / pixel (white-noise averaging); an
# approximate, visually plausible level, not a measured one
_NOISE_AT_0P1MM = 0.01

# BI-RADS density (5th ed., 2013: a almost entirely fatty, b scattered areas of fibroglandular
# density, c heterogeneously dense, d extremely dense) -> fibroglandular fraction of the
# *glandular region*, drawn uniformly. The categories are visual, so the ranges are set by the
# look of a slice, loosely after the 4th edition's quartiles of percent dense area (<25,
# 25-50, 51-75, >75 %). The whole-breast glandular fraction that results
# (``info["glandular_fraction"]``, which also counts partial-volume tissue, ligaments, vessels
# and ducts) measured about 0.10-0.2 for a and 0.5-0.7 for d: for d higher than volumetric
# breast density measured in women (Yaffe et al. 2009, Med Phys 36:5437: mean about 19 %, few
# above 45 %) -- a known limitation.
BIRADS_DENSITY: dict[str, tuple[float, float]] = {
    "a": (0.02, 0.10), "b": (0.10, 0.30), "c": (0.30, 0.55), "d": (0.55, 0.80)}

# Real-size mode: median and log-normal spread (sigma of ln) of the compressed breast in a CC
# view, with bounds. Approximate population values, chosen to be consistent with published
# ranges rather than quoted from one study: compressed thickness median ~55 mm, most between
# 30 and 80 mm (screening samples, e.g. Dance et al. 2000, Phys Med Biol 45:3225);
# chest-wall-to-nipple distance and width of the compressed breast of the order of 6-14 cm and
# 9-20 cm (in-vivo shape study of Rodriguez-Ruiz et al. 2017, Phys Med Biol 62:6920).
BREAST_SIZE_MM: dict[str, tuple[float, float, float, float]] = {
    "chest_wall_to_nipple": (92.0, 0.20, 55.0, 150.0),
    "width": (125.0, 0.18, 80.0, 200.0),
    "thickness": (55.0, 0.22, 25.0, 85.0),
}


@dataclass
class Phantom:
    """A synthetic DBT volume with its ground truth.

    Attributes
    ----------
    volume : numpy.ndarray
        ``(slices, rows, cols)`` float32 in ``[0, 1]``; 0 is air.
    lesion_mask : numpy.ndarray
        ``(slices, rows, cols)`` bool, True inside mass bodies, calcification-cluster hulls and
        the centre region of an architectural distortion.
    lesions : list of dict
        One entry per lesion: ``kind`` (``"round"``, ``"lobulated"``, ``"irregular"``,
        ``"spiculated"``, ``"calcifications"`` or ``"distortion"``), ``center_zyx`` (voxel
        indices, stored orientation), ``diameter_mm`` (float; for a distortion, that of the
        marked centre region) and kind-specific descriptors (BI-RADS ``shape``/``margin``,
        ``diameter_z_mm``, ``attenuation_excess``, ``spicules``; ``count``; ``extent_mm``).
    breast_mask : numpy.ndarray
        ``(rows, cols)`` bool tissue footprint in the centre plane (includes the pectoral
        muscle); slices away from the centre plane are a little smaller (rounded periphery).
    laterality : str
        ``"L"`` (chest wall at column 0) or ``"R"`` (chest wall at the last column).
    view : str
        ``"CC"`` or ``"MLO"``.
    pixel_spacing_mm : float
        In-plane spacing of rows and columns.
    slice_thickness_mm : float
        Spacing between slices.
    pectoral_mask : numpy.ndarray or None
        ``(rows, cols)`` bool pectoral muscle (all False in CC).
    info : dict
        Generation parameters and true values: ``birads``, ``density``,
        ``glandular_fraction`` (whole-breast volumetric, true), ``chest_wall_to_nipple_mm``,
        ``width_mm``, ``thickness_mm``, ``sweep_angle_deg``, ``skin_mm``, ``generator``.
    """

    volume: np.ndarray
    lesion_mask: np.ndarray
    lesions: list[dict] = field(default_factory=list)
    breast_mask: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool))
    laterality: str = "L"
    view: str = "CC"
    pixel_spacing_mm: float = 0.1
    slice_thickness_mm: float = 1.0
    pectoral_mask: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)


# ============================================================================ helpers
def _draw_size(rng: np.random.Generator) -> tuple[float, float, float]:
    """Chest-wall-to-nipple, width, thickness (mm): correlated log-normal draws."""
    common = rng.standard_normal()
    out = []
    for key in ("chest_wall_to_nipple", "width", "thickness"):
        median, sigma, lo, hi = BREAST_SIZE_MM[key]
        zed = 0.7 * common + math.sqrt(1.0 - 0.49) * rng.standard_normal()
        out.append(float(np.clip(median * math.exp(sigma * zed), lo, hi)))
    return out[0], out[1], out[2]


def _envelope(geom: BreastGeometry, z: int, retro: np.ndarray, pec_env: np.ndarray) -> np.ndarray:
    """Soft glandular-region envelope (0..1) of slice ``z``."""
    h = geom.depth(z)
    e = geom.inset(h)
    if not math.isfinite(e):
        return np.zeros((geom.rows, geom.cols), np.float32)
    env = smoothstep((geom.dist - e - geom.subcut_mm) / 15.0)
    sub_z = min(geom.subcut_mm, 0.2 * geom.thickness_mm)
    env *= float(smoothstep((geom.thickness_mm / 2.0 - abs(h) - sub_z) / 8.0))
    return (env * retro * pec_env).astype(np.float32)


def _threshold(tex: Parenchyma, geom: BreastGeometry, density: float, retro: np.ndarray,
               pec_env: np.ndarray) -> float:
    """Field level whose exceedance fraction in the glandular region equals ``density``."""
    if density <= 0.0:
        return math.inf
    if density >= 1.0:
        return -math.inf
    inside = [z for z in range(geom.slices) if geom.slice_footprint(z).any()]
    picks = sorted({inside[int(i)] for i in np.linspace(0, len(inside) - 1, min(6, len(inside)))})
    vals = []
    step = max(1, (geom.rows * geom.cols) // 60_000)
    for z in picks:
        env = _envelope(geom, z, retro, pec_env)
        f = sum(tex.slice(z)) - _ENVELOPE_BIAS * (1.0 - env)
        sel = (env > 0.5).ravel()[::step]
        vals.append(f.ravel()[::step][sel] if sel.any() else f.ravel()[::step])
    return float(np.quantile(np.concatenate(vals), 1.0 - density))


def _pectoral_texture(geom: BreastGeometry, rng: np.random.Generator, view: str) -> np.ndarray:
    """Muscle-fibre striations along the pectoralis (static, small amplitude)."""
    if view != "MLO" or not geom.pectoral.any():
        return np.zeros((1, 1), np.float32)
    ny, nx = geom.rows, geom.cols
    white = rng.standard_normal((ny, nx), dtype=np.float32)
    fy = np.fft.fftfreq(ny, d=geom.px)[:, None]
    fx = np.fft.rfftfreq(nx, d=geom.px)[None, :]
    # fibres run roughly parallel to the muscle's front edge (down and out from the corner)
    ang = math.atan2(1.0, 0.6)
    along = fy * math.cos(ang) + fx * math.sin(ang)
    across = -fy * math.sin(ang) + fx * math.cos(ang)
    filt = np.exp(-0.5 * ((along / 0.03) ** 2 + (across / 0.6) ** 2)).astype(np.float32)
    tex = np.fft.irfft2(np.fft.rfft2(white) * filt, s=(ny, nx)).astype(np.float32)
    tex /= float(tex.std()) + 1e-6
    return 0.012 * tex


# ============================================================================ the generator
def make_phantom(
    *,
    seed: int = 0,
    lesions: int = 1,
    slices: int | None = None,
    rows: int | None = None,
    cols: int | None = None,
    laterality: str = "L",
    view: str = "CC",
    pixel_spacing_mm: float = 0.1,
    slice_thickness_mm: float = 1.0,
    density: float | None = None,
    calcifications: bool = False,
    lesion_diameter_mm: tuple[float, float] = (5.0, 30.0),
    birads: str | None = None,
    real_size: bool = False,
    breast_size_mm: tuple[float, float] | None = None,
    thickness_mm: float | None = None,
    distortion: bool = False,
    sweep_angle_deg: float = _SWEEP_DEG,
) -> Phantom:
    """Make a synthetic DBT volume, optionally with lesions.

    Parameters
    ----------
    seed : int, default 0
        Everything (shape, texture, lesions, noise) is deterministic from it.
    lesions : int, default 1
        Number of masses to insert (0 for a normal volume).
    slices, rows, cols : int, optional
        Volume shape. Defaults ``32 x 512 x 384`` with the breast fitted into that field of
        view; in physical mode (``real_size`` or ``breast_size_mm``) a missing ``rows``/``cols``
        is derived from the breast size and a missing ``slices`` from the compressed thickness.
    laterality : {"L", "R"}
        ``"L"``: chest wall at column 0; ``"R"``: the same breast mirrored.
    view : {"CC", "MLO"}
        MLO adds the pectoralis major in the upper chest-wall corner and an axillary tail.
    pixel_spacing_mm : float, default 0.1
        In-plane spacing in mm (structures are made at this resolution).
    slice_thickness_mm : float, default 1.0
        Slice spacing in mm.
    density : float, optional
        Fibroglandular fraction of the glandular region, in ``[0, 1]``; default 0.5, or drawn
        from ``birads``.
    calcifications : bool, default False
        Add one microcalcification cluster (marked in ``lesion_mask`` by its hull).
    lesion_diameter_mm : (float, float), default (5, 30)
        Range of mass diameters (uniform). A drawn diameter larger than the breast can hold
        (small fields of view) is reduced to the largest that fits; the ``lesions`` entries
        report the diameter actually used.
    birads : {"a", "b", "c", "d"}, optional
        BI-RADS density category; draws ``density`` from :data:`BIRADS_DENSITY`. Not together
        with ``density``.
    real_size : bool, default False
        Draw the breast's chest-wall-to-nipple distance, width and compressed thickness from
        :data:`BREAST_SIZE_MM`.
    breast_size_mm : (float, float), optional
        ``(chest-wall-to-nipple, width)`` in mm: physical mode with a given size.
    thickness_mm : float, optional
        Compressed breast thickness in mm. Default: drawn in real-size mode, otherwise
        ``max(slices * slice_thickness_mm, 40)`` (a thin volume is the central slab of a
        40 mm breast).
    distortion : bool, default False
        Add one architectural distortion.
    sweep_angle_deg : float, default 15
        Angular range of the tube sweep; sets the length of out-of-plane ghost streaks.

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
    physical = bool(real_size) or breast_size_mm is not None
    if not physical:
        slices = 32 if slices is None else slices
        rows = 512 if rows is None else rows
        cols = 384 if cols is None else cols
    for name, value in (("slices", slices), ("rows", rows), ("cols", cols)):
        if value is not None and value < (1 if name == "slices" else 16):
            raise ValueError(f"shape must be at least 1 x 16 x 16, got {name}={value!r}")
    if pixel_spacing_mm <= 0 or slice_thickness_mm <= 0:
        raise ValueError(f"spacings must be positive, got pixel {pixel_spacing_mm!r}, "
                         f"slice {slice_thickness_mm!r}")
    if birads is not None and density is not None:
        raise ValueError("give either density or birads, not both")
    if birads is not None and str(birads).lower() not in BIRADS_DENSITY:
        raise ValueError(f"birads must be one of {sorted(BIRADS_DENSITY)}, got {birads!r}")
    if density is not None and not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density!r}")
    if lesions < 0:
        raise ValueError(f"lesions must be >= 0, got {lesions!r}")
    dmin, dmax = lesion_diameter_mm
    if not 0 < dmin <= dmax:
        raise ValueError("lesion_diameter_mm must be (min, max) with 0 < min <= max, "
                         f"got {lesion_diameter_mm!r}")
    if breast_size_mm is not None and min(breast_size_mm) <= 0:
        raise ValueError(f"breast_size_mm must be positive (mm), got {breast_size_mm!r}")
    if thickness_mm is not None and thickness_mm <= 0:
        raise ValueError(f"thickness_mm must be positive, got {thickness_mm!r}")
    if not 0.0 < sweep_angle_deg < 90.0:
        raise ValueError(f"sweep_angle_deg must be in (0, 90), got {sweep_angle_deg!r}")

    px, dz = float(pixel_spacing_mm), float(slice_thickness_mm)
    root = np.random.SeedSequence([seed, 0x9E3779B9])
    (s_geom, s_tex, s_anat, s_les, s_noise, s_dens, s_size, s_pec) = root.spawn(8)

    # ---- breast ----------------------------------------------------------------------------
    if birads is not None:
        birads = str(birads).lower()
        density = float(np.random.default_rng(s_dens).uniform(*BIRADS_DENSITY[birads]))
    density = 0.5 if density is None else float(density)
    size = None
    if physical:
        cnd, width, thick = _draw_size(np.random.default_rng(s_size))
        size = (cnd, width) if breast_size_mm is None else tuple(float(v) for v in breast_size_mm)
        if thickness_mm is None:
            thickness_mm = thick if slices is None else max(slices * dz, thick)
    geom = make_geometry(rows=rows, cols=cols, slices=slices, px=px, dz=dz, view=view,
                         rng=np.random.default_rng(s_geom), size_mm=size,
                         thickness_mm=thickness_mm, density=density)
    n_sl, rows, cols = geom.slices, geom.rows, geom.cols
    # the retromammary fat boundary: roughly parallel to the chest wall, gently wavy
    grng = np.random.default_rng(s_geom.spawn(1)[0])
    y_mm = (np.arange(rows, dtype=np.float32) + 0.5) * px
    wave = sum(grng.uniform(1.5, 4.0) * np.sin(2 * math.pi * y_mm / grng.uniform(25.0, 70.0)
                                              + grng.uniform(0, 2 * math.pi)) for _ in range(2))
    retro = smoothstep((geom.x_mm[None, :] - geom.retro_mm - wave[:, None]) / 12.0)
    retro = retro.astype(np.float32)
    pec_env = smoothstep((geom.pec_dist - 2.0) / 6.0).astype(np.float32)

    # ---- texture fields ----------------------------------------------------------------------
    tex_seeds = s_tex.generate_state(2)
    tex = Parenchyma(geom, int(tex_seeds[0]), beta=_BETA_GEN, f_lo=_F_LOWEST,
                     split=_F_TEXTURE_SPLIT)
    lig = Compartments(geom, np.random.default_rng(int(tex_seeds[1])))
    thr = _threshold(tex, geom, density, retro, pec_env)
    hi_std = max(tex.fine_std, 1e-6)
    pec_tex = _pectoral_texture(geom, np.random.default_rng(s_pec), view)

    # ---- vessels and ducts ---------------------------------------------------------------
    arng = np.random.default_rng(s_anat)
    tubes = TubeSet.from_polylines(grow_vessels(geom, arng), _VESSEL_LEVEL, px)
    tubes = tubes.extend(TubeSet.from_polylines(grow_ducts(geom, arng), _DUCT_LEVEL, px))

    # ---- lesions (left orientation) --------------------------------------------------------
    lrng = np.random.default_rng(s_les)
    place0 = place = placement_distance(geom)
    prefer = _envelope(geom, (n_sl - 1) // 2, retro, pec_env) > 0.5
    masses: list[Mass] = []
    # later lesions keep clear of earlier ones while a smallest mass still fits elsewhere
    room = 1.25 * dmin / 2.0 + 1.0 + 1.5 * px
    for _ in range(lesions):
        masses.append(plan_mass(geom, lrng, place, prefer, (dmin, dmax), logger))
        apart = keep_apart(place, geom, masses[-1].center, masses[-1].reach_mm)
        place = apart if float(apart.max()) >= room else place
    calc: Calcifications | None = None
    if calcifications:
        calc = plan_calcifications(geom, lrng, place if float(place.max()) >= 6.0 else place0,
                                   prefer)
        place = keep_apart(place, geom, calc.center, calc.diameter_mm / 2.0 + 1.0)
    dist_plan: Distortion | None = None
    if distortion:
        dist_plan = plan_distortion(geom, lrng, place if float(place.max()) >= 14.0 else place0,
                                    prefer)
    for m in masses:
        tubes = tubes.extend(m.spicules)
    if dist_plan is not None:
        tubes = tubes.extend(dist_plan.strands)
    tubes = tubes.sorted_by_depth()

    # ---- compose slice by slice, mix neighbours (tomosynthesis blur), add noise ---------------
    blur = TomoBlur(geom, sweep_angle_deg, split_mm=_SPLIT_MM,
                    coarse_depth_mm=_COARSE_DEPTH_MM, fine_depth_mm=_FINE_DEPTH_MM,
                    ghost_level=_GHOST_LEVEL)
    volume = np.empty((n_sl, rows, cols), dtype=np.float32)
    lesion_mask = np.zeros((n_sl, rows, cols), dtype=bool)
    nrng = np.random.default_rng(s_noise)
    noise_sigma = _NOISE_AT_0P1MM * 0.1 / px
    noise_corr = max(0.5, 0.05 / px)
    gland_sum = 0.0
    tissue_sum = 0.0
    lig_sigma = max(_LIGAMENT_SIGMA_MM, 0.45 * px)
    lig_amp = _LIGAMENT_LEVEL * _LIGAMENT_SIGMA_MM / lig_sigma
    for zs in range(n_sl + blur.reach):
        if zs < n_sl:
            s, fg_total, foot = _compose(
                zs, geom, tex, lig, thr, hi_std, retro, pec_env, pec_tex, tubes,
                masses, calc, dist_plan, lig_sigma, lig_amp, lesion_mask)
            blur.push(zs, s)
            weight = foot * (1.0 - geom.pec_soft)
            gland_sum += float(np.sum(fg_total * weight))
            tissue_sum += float(np.sum(weight))
        zo = zs - blur.reach
        if zo < 0:
            continue
        acc = blur.pop(zo)
        foot_o = geom.slice_footprint(zo)
        n = nrng.standard_normal((rows, cols), dtype=np.float32)
        n = ndimage.gaussian_filter(n, sigma=noise_corr)
        n *= noise_sigma / max(float(n.std()), 1e-6)
        acc += np.sqrt(np.maximum(acc, 0.0) / _GLAND) * n
        np.clip(acc, 0.0, 1.0, out=acc)
        acc *= geom.slice_coverage(zo)
        volume[zo] = acc
        lesion_mask[zo] &= foot_o

    # ---- ground truth -----------------------------------------------------------------------
    lesion_list = [m.entry() for m in masses]
    if calc is not None:
        hull, (ya, xa) = calcification_hull(calc, geom)
        z0, z1 = calc.z_range
        for z in range(z0, z1 + 1):
            lesion_mask[z, ya:ya + hull.shape[0], xa:xa + hull.shape[1]] |= (
                hull & geom.slice_footprint(z)[ya:ya + hull.shape[0], xa:xa + hull.shape[1]])
        lesion_list.append(calc.entry())
    if dist_plan is not None:
        for z in range(n_sl):
            core = distortion_core(dist_plan, z, geom)
            if core is None:
                continue
            cm, (ya, xa) = core
            foot = geom.slice_footprint(z)[ya:ya + cm.shape[0], xa:xa + cm.shape[1]]
            lesion_mask[z, ya:ya + cm.shape[0], xa:xa + cm.shape[1]] |= cm & foot
        lesion_list.append(dist_plan.entry())
    footprint = geom.footprint
    pectoral = geom.pectoral
    if laterality == "R":
        volume = np.ascontiguousarray(volume[:, :, ::-1])
        lesion_mask = np.ascontiguousarray(lesion_mask[:, :, ::-1])
        footprint = np.ascontiguousarray(footprint[:, ::-1])
        pectoral = np.ascontiguousarray(pectoral[:, ::-1])
        for les in lesion_list:
            les["center_zyx"][2] = float(cols - 1 - les["center_zyx"][2])
    info = {
        "generator": GENERATOR_VERSION, "birads": birads, "density": density,
        "glandular_fraction": gland_sum / tissue_sum if tissue_sum > 0 else 0.0,
        "chest_wall_to_nipple_mm": geom.chest_wall_to_nipple_mm, "width_mm": geom.width_mm,
        "thickness_mm": geom.thickness_mm, "real_size": physical,
        "sweep_angle_deg": float(sweep_angle_deg), "skin_mm": geom.skin_mm,
    }
    logger.debug("phantom seed=%d %s %s shape=%s lesions=%d", seed, laterality, view,
                 volume.shape, len(lesion_list))
    return Phantom(volume=volume, lesion_mask=lesion_mask, lesions=lesion_list,
                   breast_mask=footprint, laterality=laterality, view=view,
                   pixel_spacing_mm=px, slice_thickness_mm=dz, pectoral_mask=pectoral, info=info)


def _compose(z: int, geom: BreastGeometry, tex: Parenchyma, lig: Compartments,
             thr: float, hi_std: float, retro: np.ndarray,
             pec_env: np.ndarray, pec_tex: np.ndarray, tubes: TubeSet, masses: list[Mass],
             calc: Calcifications | None, dist_plan: Distortion | None, lig_sigma: float,
             lig_amp: float, lesion_mask: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The in-focus structure of slice ``z`` (before the tomosynthesis mix).

    Returns the attenuation-like slice, its total glandular fraction and its footprint; marks
    the mass bodies of this slice in ``lesion_mask``.
    """
    px = geom.px
    shape = (geom.rows, geom.cols)
    foot = geom.slice_footprint(z)
    if not foot.any():
        zero = np.zeros(shape, np.float32)
        return zero, zero, foot
    h = geom.depth(z)
    e = geom.inset(h)
    # parenchyma: soft-thresholded power-law field inside the glandular envelope
    lo, hi = tex.slice(z)
    env = _envelope(geom, z, retro, pec_env)
    keep = smoothstep((geom.dist - e - geom.skin_mm - 1.0) / 3.0)  # never on the skin
    if math.isinf(thr):
        fg = np.zeros(shape, np.float32) if thr > 0 else env * keep
    else:
        fg = special.expit((lo + hi - _ENVELOPE_BIAS * (1.0 - env) - thr)
                           / _THRESHOLD_SOFTNESS).astype(np.float32) * keep
    # Cooper's ligaments: walls between fat compartments
    wall, vis = lig.wall(z)
    lig_fg = (lig_amp * np.exp(-0.5 * (wall / lig_sigma) ** 2) * vis).astype(np.float32)
    # vessels, ducts, spicules, distortion strands
    tub = render_tubes(tubes, (z + 0.5) * geom.dz, geom.dz, shape, px)
    fgt = 1.0 - (1.0 - fg) * (1.0 - lig_fg) * (1.0 - tub)
    if dist_plan is not None:
        dist_plan.apply(fgt, z, geom)
    excess = np.zeros(shape, np.float32)
    for m in masses:
        z0, y0, x0 = m.origin
        k = z - z0
        if not 0 <= k < m.body.shape[0]:
            continue
        b = m.body[k]
        sl = (slice(y0, y0 + b.shape[0]), slice(x0, x0 + b.shape[1]))
        # the mass is fibroglandular-like tissue with its own fine texture
        own = np.clip(_MASS_FILL + _MASS_TEXTURE * hi[sl] / hi_std, 0.0, 1.0)
        fgt[sl] = np.maximum(fgt[sl], b * own)
        excess[sl] += b * m.excess
        lesion_mask[z][sl] |= b > 0.5
    # attenuation: fat/gland mix with fibrous fine texture in the glandular part
    level = 2.0 * np.tanh(0.5 * (lo + hi - min(max(thr, -3.0), 3.0)))
    # fat keeps a faint trace of the texture too (partial volume of sub-threshold tissue)
    mu = _FAT + (_GLAND - _FAT) * (fgt * (1.0 + _FIBROUS_TEXTURE * level)
                                   + _FAT_TEXTURE * level * (1.0 - fgt) + excess)
    # skin: a band along the (rounded) surface, wider where the slice cuts it obliquely
    u = min(abs(h) / (geom.thickness_mm / 2.0), 0.98)
    skin_w = min(geom.skin_mm / math.sqrt(1.0 - u * u), 5.0 * geom.skin_mm)
    d_in = geom.dist - e
    sk = smoothstep((skin_w - d_in) / max(px, 0.2) + 0.5)
    mu = mu * (1.0 - sk) + _SKIN * sk
    if geom.pectoral.any():
        pec = geom.pec_soft
        mu = mu * (1.0 - pec) + (_PECTORAL + pec_tex) * pec
    if calc is not None:
        render_calcifications(calc, z, geom, mu, _CALC)
    mu = (mu * geom.slice_coverage(z)).astype(np.float32)
    return mu, fgt.astype(np.float32), foot
