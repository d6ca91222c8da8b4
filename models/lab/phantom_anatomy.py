"""Normal anatomy of the synthetic DBT phantom: outline, texture fields, ligaments, vessels, ducts.

Helpers of :mod:`models.lab.phantom` (which documents the model as a whole). Everything here
works in the *left* orientation (chest wall at column 0) and in physical units: ``y_mm`` and
``x_mm`` are pixel centres, ``(index + 0.5) * pixel_spacing``; depth is measured from the
centre plane of the compressed breast (``h``, mm, positive towards the paddle).

Sources of the numbers (each constant below repeats the one it uses):

* Skin thickness about 1.4-1.5 mm on average (Huang et al. 2008, Med Phys 35:1199, breast CT);
  the skin line of a DBT slice is drawn 1.5-2 mm wide.
* Tissue arrangement: fibroglandular tissue concentrated centrally, with subcutaneous and
  retromammary fat (Sechopoulos et al. 2012, Med Phys 39:5050, glandular distribution in
  compressed breasts from breast CT; the fat-layer thicknesses used here are approximate).
* Parenchyma as thresholded power-law noise (Reiser & Nishikawa 2010, Med Phys 37:1591 used
  binary 3D power-law textures for DBT; power-law exponent about 3 in mammograms: Burgess et al.
  2001, Med Phys 28:419).
* Cooper's ligaments as thin septa between fat compartments (the compartment idea of Bakic et
  al. 2002, Med Phys 29:2131), here the walls of a warped 3D Voronoi tessellation.
* Lobes and ducts radiate from the nipple: coarse texture is drawn through a polar map
  centred on the nipple (:class:`models.lab.phantom_texture.RadialWarp`).
* About 15-20 lobes whose ducts converge on the nipple (Going & Moffat 2004, J Pathol 203:538);
  fewer drawn here because only the larger ones are visible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

__all__ = ["BreastGeometry", "Compartments", "TubeSet", "grow_ducts", "grow_vessels",
           "make_geometry", "render_tubes", "smoothstep"]

# Skin: 1.45 +- 0.30 mm mean thickness measured with breast CT (Huang et al. 2008); a DBT
# skin line looks a little wider (partial volume, slice blur), so 1.5-2 mm is drawn.
SKIN_MM = (1.5, 2.0)
# Subcutaneous (premammary) and retromammary fat layers, mm (approximate anatomy; thicker in
# fatty breasts).
SUBCUTANEOUS_FAT_MM = (4.0, 12.0)
RETROMAMMARY_FAT_MM = (4.0, 10.0)


def smoothstep(x: np.ndarray | float) -> np.ndarray:
    """Cubic step from 0 (``x <= 0``) to 1 (``x >= 1``)."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


# ============================================================================ geometry
@dataclass
class BreastGeometry:
    """Outline and layer maps of one compressed breast (left orientation).

    Attributes
    ----------
    rows, cols : int
        In-plane size of the image.
    px : float
        Pixel spacing, mm.
    dz : float
        Slice spacing, mm.
    slices : int
        Number of slices; slice ``k`` lies at depth ``h = (k + 0.5) * dz - slices * dz / 2``.
    thickness_mm : float
        Compressed breast thickness; the volume is the central ``slices * dz`` mm of it (or
        extends into air above and below when thicker).
    footprint : numpy.ndarray
        ``(rows, cols)`` bool, the breast outline in the centre plane (with the pectoralis).
    pectoral : numpy.ndarray
        ``(rows, cols)`` bool pectoral muscle (MLO only).
    pec_soft : numpy.ndarray
        Pectoral mask with a soft (about 1 mm) edge, float32.
    dist : numpy.ndarray
        Distance (mm) from each inside pixel to the skin surface in the centre plane; the
        chest wall (column 0) and, in MLO, the top edge (axilla) are not skin.
    pec_dist : numpy.ndarray
        Distance (mm) to the pectoral muscle (large when there is none).
    chest_wall_to_nipple_mm, width_mm : float
        Breast size in the centre plane.
    nipple_yx_mm : tuple of float
        Nipple position (mm).
    skin_mm, subcut_mm, retro_mm : float
        Skin thickness and fat layer thicknesses of this breast.
    """

    rows: int
    cols: int
    px: float
    dz: float
    slices: int
    thickness_mm: float
    footprint: np.ndarray
    pectoral: np.ndarray
    pec_soft: np.ndarray
    dist: np.ndarray
    pec_dist: np.ndarray
    chest_wall_to_nipple_mm: float
    width_mm: float
    nipple_yx_mm: tuple[float, float]
    skin_mm: float
    subcut_mm: float
    retro_mm: float
    x_mm: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def depth(self, z: float) -> float:
        """Depth ``h`` (mm from the centre plane) of slice ``z`` (may be fractional)."""
        return (z + 0.5) * self.dz - self.slices * self.dz / 2.0

    def inset(self, h: float | np.ndarray) -> float | np.ndarray:
        """How far (mm) the rounded periphery pulls the outline in at depth ``h``.

        The compressed breast's edge is modelled as a half-cylinder of radius ``T/2``: at
        depth ``h`` the outline recedes by ``T/2 * (1 - sqrt(1 - (2h/T)**2))``.
        """
        r = self.thickness_mm / 2.0
        u = np.clip(np.abs(h) / r, 0.0, 1.0)
        out = r * (1.0 - np.sqrt(1.0 - u * u))
        return np.where(np.abs(h) >= r, np.inf, out) if isinstance(h, np.ndarray) else (
            math.inf if abs(h) >= r else float(out))

    def slice_footprint(self, z: int) -> np.ndarray:
        """Bool tissue mask of slice ``z`` (the centre outline minus the periphery inset)."""
        return self.dist > self.inset(self.depth(z))

    def slice_coverage(self, z: int) -> np.ndarray:
        """Tissue fraction (0..1) of each pixel of slice ``z``: anti-aliased footprint.

        ``dist`` is the pixel mean of a 0.1 mm distance map; along a straight edge a pixel
        covered by a fraction ``c`` has a mean distance of about ``c**2 * px / 2``.
        """
        e = self.inset(self.depth(z))
        if not math.isfinite(e):
            return np.zeros((self.rows, self.cols), np.float32)
        return np.sqrt(np.clip(2.0 * (self.dist - e) / self.px, 0.0, 1.0)).astype(np.float32)

    def margin_at(self, z_mm: np.ndarray, y_mm: np.ndarray, x_mm: np.ndarray) -> np.ndarray:
        """Distance (mm) inside the rounded skin surface at 3D points (negative outside)."""
        iy = np.clip((y_mm / self.px).astype(int), 0, self.rows - 1)
        ix = np.clip((x_mm / self.px).astype(int), 0, self.cols - 1)
        h = z_mm - self.slices * self.dz / 2.0
        out = self.dist[iy, ix] - self.inset(np.asarray(h, dtype=np.float64))
        out = np.where(self.footprint[iy, ix], out, -1.0)
        out = np.where((y_mm < 0) | (y_mm > self.rows * self.px) | (x_mm > self.cols * self.px),
                       -1.0, out)
        return np.minimum(out, self.thickness_mm / 2.0 - np.abs(h))


def _outline(rows: int, cols: int, px: float, view: str, p: dict[str, float]
             ) -> tuple[np.ndarray, np.ndarray]:
    """Footprint and pectoral masks from shape parameters (fractions of the image)."""
    y = (np.arange(rows, dtype=np.float32) + 0.5) * px
    x = (np.arange(cols, dtype=np.float32) + 0.5) * px
    yy, xx = y[:, None], x[None, :]
    height, width = rows * px, cols * px
    a = p["a"] * height
    b = p["b"] * width
    yd = yy - p["yc"] * height - p["tilt"] * xx
    # a super-ellipse: compressed breasts are a little boxier than an ellipse near the wall
    expo = p["expo"]
    r = np.abs(yd / a) ** expo + np.abs(xx / b) ** expo
    # a gently lumpy contour (a few per cent)
    ang = np.arctan2(yd / a, xx / b)
    r = r * (1.0 + p["lump"] * np.cos(3.0 * ang + p["lump_phase"])) ** expo
    footprint = r <= 1.0
    pectoral = np.zeros((rows, cols), dtype=bool)
    if view == "MLO":
        pw = p["pec_w"] * width
        ph = p["pec_h"] * height
        frac = np.clip(1.0 - yy / ph, 0.0, None)
        pectoral = xx < pw * frac ** p["pec_q"]
        # the axillary tail: the breast widens towards the top along the chest wall
        tail = (xx / (pw * 1.45) + yy / (ph * 1.15)) < 1.0
        footprint = footprint | tail | pectoral
        smooth = ndimage.gaussian_filter(footprint.astype(np.float32), sigma=8.0 / px,
                                         mode="nearest")
        footprint = (smooth > 0.5) | pectoral
    return footprint, pectoral & footprint


def make_geometry(*, rows: int | None, cols: int | None, slices: int | None, px: float,
                  dz: float, view: str, rng: np.random.Generator,
                  size_mm: tuple[float, float] | None, thickness_mm: float | None,
                  density: float) -> BreastGeometry:
    """Draw the outline of one breast.

    Parameters
    ----------
    rows, cols, slices : int or None
        Image size. In physical mode (``size_mm`` given) a missing ``rows``/``cols`` is derived
        from the breast size and a missing ``slices`` from ``thickness_mm``; otherwise they
        must be given and the breast is fitted into the field of view.
    px, dz : float
        Pixel and slice spacing, mm.
    view : {"CC", "MLO"}
    rng : numpy.random.Generator
    size_mm : (float, float) or None
        ``(chest-wall-to-nipple, width along the chest wall)`` in mm, or None to fit the
        breast to ``rows x cols``.
    thickness_mm : float or None
        Compressed thickness; default ``max(slices * dz, 40)`` (thin volumes are the central
        slab of a 40 mm breast).
    density : float
        Glandular fraction of the glandular region; fatty breasts get thicker fat layers.

    Returns
    -------
    BreastGeometry
    """
    p = {
        "yc": rng.uniform(0.46, 0.54) if view == "CC" else rng.uniform(0.56, 0.64),
        "a": rng.uniform(0.36, 0.45) if view == "CC" else rng.uniform(0.36, 0.42),
        "b": rng.uniform(0.78, 0.93),
        "tilt": rng.uniform(-0.06, 0.06),
        "expo": rng.uniform(2.0, 2.6),
        "lump": rng.uniform(0.0, 0.03),
        "lump_phase": rng.uniform(0.0, 2.0 * math.pi),
        "pec_w": rng.uniform(0.22, 0.34),
        "pec_h": rng.uniform(0.45, 0.65),
        "pec_q": rng.uniform(0.8, 1.3),
    }
    margin_y = rng.uniform(4.0, 10.0)
    margin_x = rng.uniform(5.0, 15.0)
    mlo_scale = rng.uniform(1.25, 1.4)
    if size_mm is not None:
        cnd, width = (float(v) for v in size_mm)
        # detector of 24 x 30 cm (chest-wall-to-nipple x along the wall) caps the field of view
        rows_mm = min(300.0, width * mlo_scale if view == "MLO" else width + 2.0 * margin_y)
        cols_mm = min(240.0, cnd + margin_x)
        if rows is None:
            rows = math.ceil(rows_mm / px)
        if cols is None:
            cols = math.ceil(cols_mm / px)
        p["a"] = width / 2.0 / (rows * px)
        p["b"] = cnd / (cols * px)
    assert rows is not None and cols is not None
    if slices is None:
        assert thickness_mm is not None
        slices = max(1, round(thickness_mm / dz))
    if thickness_mm is None:
        thickness_mm = max(slices * dz, 40.0)
    # the outline and its distance map on a grid of about 0.1 mm, averaged down: smooth
    # (anti-aliased) edges at coarse pixel sizes
    k = max(1, round(px / 0.1))
    fine, pectoral_f = _outline(rows * k, cols * k, px / k, view, p)
    pad_top = 1 if view == "MLO" else 0
    padded = np.pad(fine, ((pad_top, 0), (1, 0)), mode="constant", constant_values=True)
    dist_f = ndimage.distance_transform_edt(padded, sampling=(px / k, px / k))[pad_top:, 1:]
    if k > 1:
        dist = dist_f.reshape(rows, k, cols, k).mean(axis=(1, 3)).astype(np.float32)
        pectoral = pectoral_f.reshape(rows, k, cols, k).mean(axis=(1, 3)) >= 0.5
        # a pixel is tissue when the mean distance says its centre is inside
        dist = np.where(fine.reshape(rows, k, cols, k).any(axis=(1, 3)), dist, 0.0)
    else:
        dist, pectoral = dist_f.astype(np.float32), pectoral_f
    footprint = dist > 0
    if not footprint.any():
        raise ValueError("breast footprint is empty; the image is too small")
    pectoral &= footprint
    if pectoral.any():
        pec_dist = ndimage.distance_transform_edt(~pectoral, sampling=(px, px)).astype(np.float32)
    else:
        pec_dist = np.full((rows, cols), 1e6, np.float32)
    pec_soft = ndimage.gaussian_filter(pectoral.astype(np.float32), sigma=max(0.5, 0.7 / px))
    height, width_fov = rows * px, cols * px
    cnd_mm = p["b"] * width_fov
    yc_n = p["yc"] * height + p["tilt"] * cnd_mm
    fatty = 1.0 - float(np.clip(density, 0.0, 1.0))
    sub_lo, sub_hi = SUBCUTANEOUS_FAT_MM
    retro_lo, retro_hi = RETROMAMMARY_FAT_MM
    # small fields of view (tiny test images) get proportionally thinner fat layers
    scale = float(np.clip(min(height, width_fov) / 80.0, 0.25, 1.0))
    return BreastGeometry(
        rows=rows, cols=cols, px=px, dz=dz, slices=slices, thickness_mm=float(thickness_mm),
        footprint=footprint, pectoral=pectoral, pec_soft=pec_soft, dist=dist, pec_dist=pec_dist,
        chest_wall_to_nipple_mm=float(cnd_mm), width_mm=float(2.0 * p["a"] * height),
        nipple_yx_mm=(float(yc_n), float(cnd_mm - 1.0)),
        skin_mm=float(rng.uniform(*SKIN_MM)),
        subcut_mm=scale * (sub_lo + (sub_hi - sub_lo) * fatty * rng.uniform(0.6, 1.0)),
        retro_mm=scale * rng.uniform(retro_lo, retro_hi),
        x_mm=(np.arange(cols, dtype=np.float32) + 0.5) * px,
    )


# ============================================================================ ligaments
def _upsample_linear(a: np.ndarray, k: int, rows: int, cols: int) -> np.ndarray:
    """Separable linear interpolation of a grid sampled every ``k`` pixels (from pixel 0)."""
    if k == 1:
        return a[:rows, :cols]
    out = a
    for axis, n in ((0, rows), (1, cols)):
        i = np.arange(n)
        i0 = np.minimum(i // k, out.shape[axis] - 2)
        t = ((i - i0 * k) / k).astype(np.float32)
        lo = np.take(out, i0, axis=axis)
        hi = np.take(out, i0 + 1, axis=axis)
        shape = (-1, 1) if axis == 0 else (1, -1)
        out = lo + (hi - lo) * t.reshape(shape)
    return out


class Compartments:
    """Cooper's ligaments as the walls between 3D fat compartments.

    The breast's fat is divided into compartments by thin connective-tissue septa that reach
    the skin (the compartment model of Bakic et al. 2002). Here the compartments are the cells
    of a 3D Voronoi tessellation of Poisson seeds about 9-14 mm apart, bent by a smooth
    displacement (so the walls are curved, with varying thickness); each wall has its own
    visibility. :meth:`wall` returns, per pixel of a slice, the distance (mm) to the nearest
    wall, computed exactly on a 0.8 mm grid (it is piecewise linear) and interpolated.

    Parameters
    ----------
    geom : BreastGeometry
    rng : numpy.random.Generator
    """

    def __init__(self, geom: BreastGeometry, rng: np.random.Generator) -> None:
        from scipy.spatial import cKDTree

        self.geom = geom
        spacing = float(rng.uniform(9.0, 14.0))
        lo = np.array([-spacing, -spacing, -spacing])
        hi = np.array([geom.slices * geom.dz + spacing, geom.rows * geom.px + spacing,
                       geom.cols * geom.px + spacing])
        n = max(8, int(rng.poisson(np.prod(hi - lo) / spacing ** 3)))
        self.seeds = rng.uniform(lo, hi, size=(n, 3))
        self.tree = cKDTree(self.seeds)
        self.k = max(1, round(0.8 / geom.px))
        self.ys = np.arange(0, geom.rows - 1 + self.k, self.k) * geom.px + 0.5 * geom.px
        self.xs = np.arange(0, geom.cols - 1 + self.k, self.k) * geom.px + 0.5 * geom.px
        self.waves = [(rng.standard_normal(3), rng.uniform(20.0, 45.0), rng.uniform(0, 6.3),
                       rng.uniform(2.0, 4.5)) for _ in range(5)]
        self.vis_seed = float(rng.uniform(0.0, 1000.0))

    def wall(self, z: int) -> tuple[np.ndarray, np.ndarray]:
        """Distance (mm) to the nearest wall and that wall's visibility (0-1) on slice ``z``."""
        g = self.geom
        yy, xx = np.meshgrid(self.ys, self.xs, indexing="ij")
        pts = np.stack([np.full(yy.shape, (z + 0.5) * g.dz), yy, xx], axis=-1).reshape(-1, 3)
        for d, lam, ph, amp in self.waves:
            dn = d / np.linalg.norm(d)
            pts = pts + amp * np.sin(2 * math.pi * (pts @ dn) / lam + ph)[:, None] * np.roll(
                dn, 1)[None, :]
        _, idx = self.tree.query(pts, k=3)
        s1 = self.seeds[idx[:, 0]]
        best = np.full(len(pts), np.inf)
        vis = np.zeros(len(pts))
        pair = np.zeros(len(pts), np.int64)
        for j in (1, 2):  # walls with the second and third nearest seeds; the nearer counts
            s2 = self.seeds[idx[:, j]]
            # signed distance, oriented from the lower to the higher seed index, so that linear
            # interpolation between grid points on both sides crosses zero on the wall
            a, b = np.minimum(idx[:, 0], idx[:, j]), np.maximum(idx[:, 0], idx[:, j])
            nrm = self.seeds[b] - self.seeds[a]
            length = np.maximum(np.linalg.norm(nrm, axis=1), 1e-9)
            dist = np.einsum("ij,ij->i", pts - 0.5 * (s1 + s2), nrm) / length
            h = np.sin(a * 12.9898 + b * 78.233 + self.vis_seed) * 43758.5453
            v = np.clip(1.6 * (h - np.floor(h)) - 0.4, 0.0, 1.0)  # a quarter of walls unseen
            closer = np.abs(dist) < np.abs(best)
            best = np.where(closer, dist, best)
            vis = np.where(closer, v, vis)
            pair = np.where(closer, a * len(self.seeds) + b, pair)
        dist = best
        shape = yy.shape
        signed = dist.reshape(shape).astype(np.float32)
        d_full = np.abs(_upsample_linear(signed, self.k, g.rows, g.cols))
        if self.k > 1:
            # where a grid cell's corners see different walls the signed values do not
            # interpolate: use the interpolated magnitude there
            pr = pair.reshape(shape)
            same = np.zeros(shape, bool)
            c = pr[:-1, :-1]
            same[:-1, :-1] = (c == pr[1:, :-1]) & (c == pr[:-1, 1:]) & (c == pr[1:, 1:])
            iy = np.minimum(np.arange(g.rows) // self.k, shape[0] - 2)
            ix = np.minimum(np.arange(g.cols) // self.k, shape[1] - 2)
            mixed = ~same[np.ix_(iy, ix)]
            if mixed.any():
                mag = _upsample_linear(np.abs(signed), self.k, g.rows, g.cols)
                d_full = np.where(mixed, mag, d_full)
        v_full = _upsample_linear(vis.reshape(shape).astype(np.float32), self.k, g.rows, g.cols)
        return d_full, v_full


# ============================================================================ tubes
@dataclass
class TubeSet:
    """Points along the centre lines of tubular structures (vessels, ducts, spicules).

    Attributes
    ----------
    pts : numpy.ndarray
        ``(n, 3)`` float64 points ``(z_mm, y_mm, x_mm)``, ``z_mm`` from the volume's first
        slice boundary.
    radius : numpy.ndarray
        ``(n,)`` tube radius at each point, mm.
    amp : numpy.ndarray
        ``(n,)`` glandular-equivalent fraction inside the tube (0..1).
    """

    pts: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    radius: np.ndarray = field(default_factory=lambda: np.zeros(0))
    amp: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def extend(self, other: TubeSet) -> TubeSet:
        """A new set with the points of both."""
        return TubeSet(np.concatenate([self.pts, other.pts]),
                       np.concatenate([self.radius, other.radius]),
                       np.concatenate([self.amp, other.amp]))

    @staticmethod
    def from_polylines(lines: list[tuple[np.ndarray, np.ndarray]], amp: float | list[float],
                       px: float) -> TubeSet:
        """Resample polylines ``(points (m, 3), radii (m,))`` densely enough to render."""
        pts, rad, amps = [], [], []
        amps_in = [amp] * len(lines) if np.isscalar(amp) else list(amp)  # type: ignore[list-item]
        for (p, r), a in zip(lines, amps_in):
            if len(p) < 2:
                continue
            seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
            s = np.concatenate([[0.0], np.cumsum(seg)])
            # step: half the radius, never below half a pixel
            step = np.maximum(0.5 * np.minimum(r[:-1], r[1:]), 0.5 * px)
            t = [0.0]
            while t[-1] < s[-1]:
                i = min(int(np.searchsorted(s, t[-1], side="right")) - 1, len(step) - 1)
                t.append(t[-1] + float(step[i]))
            t_arr = np.minimum(np.asarray(t), s[-1])
            pts.append(np.stack([np.interp(t_arr, s, p[:, d]) for d in range(3)], axis=1))
            rad.append(np.interp(t_arr, s, r))
            amps.append(np.full(t_arr.size, float(a)))
        if not pts:
            return TubeSet()
        return TubeSet(np.concatenate(pts), np.concatenate(rad), np.concatenate(amps))

    def sorted_by_depth(self) -> TubeSet:
        """The same set sorted by ``z_mm`` (what :func:`render_tubes` expects)."""
        order = np.argsort(self.pts[:, 0], kind="stable")
        return TubeSet(self.pts[order], self.radius[order], self.amp[order])


def render_tubes(tubes: TubeSet, z_mm: float, dz: float, shape: tuple[int, int], px: float,
                 out: np.ndarray | None = None) -> np.ndarray:
    """Cross-sections of the tubes with the slab ``z_mm +- dz/2`` (max-combined, 0..1).

    A tube of radius ``r`` whose axis is ``d`` mm above or below the slab shows a band of
    half-width ``sqrt(r**2 - d**2)``, fading out over half a slice beyond the slab; tubes
    thinner than a pixel are drawn one pixel wide with proportionally lower amplitude (partial
    volume). ``tubes`` must be sorted by depth.
    """
    img = np.zeros(shape, np.float32) if out is None else out
    if tubes.pts.shape[0] == 0:
        return img
    rmax = float(tubes.radius.max())
    lo = np.searchsorted(tubes.pts[:, 0], z_mm - dz - rmax, side="left")
    hi = np.searchsorted(tubes.pts[:, 0], z_mm + dz + rmax, side="right")
    if hi <= lo:
        return img
    p = tubes.pts[lo:hi]
    r = tubes.radius[lo:hi]
    off = np.abs(p[:, 0] - z_mm)
    # the slab's sensitivity falls off linearly over half a slice beyond its faces, so a tube
    # leaving the slice fades instead of ending abruptly
    d = np.maximum(off - dz / 2.0, 0.0)
    h = np.sqrt(np.maximum(r * r - d * d, 0.0))
    fade = np.clip((r + dz - off) / (0.5 * dz + r), 0.0, 1.0)
    h = np.maximum(h, np.where(fade > 0, np.minimum(r, 0.5 * px), 0.0))
    keep = (h > 0.05 * px) & (fade > 0)
    if not keep.any():
        return img
    p, h, a = p[keep], h[keep], tubes.amp[lo:hi][keep] * fade[keep]
    hd = np.maximum(h, 0.5 * px)
    a = a * np.minimum(1.0, h / hd)
    edge = max(px, 0.08)
    reach = np.ceil((hd + edge) / px).astype(int) + 1
    rows, cols = shape
    for rp in np.unique(reach):
        sel = reach == rp
        off = np.arange(-rp, rp + 1)
        cy = p[sel, 1] / px - 0.5
        cx = p[sel, 2] / px - 0.5
        iy = np.rint(cy).astype(int)[:, None, None] + off[None, :, None]
        ix = np.rint(cx).astype(int)[:, None, None] + off[None, None, :]
        dy = (iy - cy[:, None, None]) * px
        dx = (ix - cx[:, None, None]) * px
        dd = np.sqrt(dy * dy + dx * dx)
        val = smoothstep((hd[sel][:, None, None] - dd) / edge + 0.5) * a[sel][:, None, None]
        iyb = np.broadcast_to(iy, val.shape)
        ixb = np.broadcast_to(ix, val.shape)
        ok = (val > 1e-3) & (iyb >= 0) & (iyb < rows) & (ixb >= 0) & (ixb < cols)
        np.maximum.at(img, (iyb[ok], ixb[ok]), val[ok].astype(np.float32))
    return img


def _perpendicular(d: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    v -= v.dot(d) * d
    n = np.linalg.norm(v)
    return v / n if n > 0 else np.array([0.0, 1.0, 0.0])


def _grow(geom: BreastGeometry, rng: np.random.Generator, starts: list[tuple[np.ndarray,
          np.ndarray, float]], *, branch_mm: float, taper_mm: float, r_min: float,
          max_len_mm: float, turn: float, z_damp: float, attract: np.ndarray | None,
          min_margin: float, max_branches: int = 400) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random-walk trees with Murray's-law branching; returns polylines (points, radii)."""
    lines: list[tuple[np.ndarray, np.ndarray]] = []
    stack = list(starts)
    step = 1.0
    while stack and len(lines) < max_branches:
        pos, d, r = stack.pop()
        pos = pos.astype(np.float64).copy()
        d = d / np.linalg.norm(d)
        pts, rads = [pos.copy()], [r]
        length = 0.0
        while r >= r_min and length < max_len_mm:
            d = d + turn * rng.standard_normal(3)
            d[0] *= z_damp
            if attract is not None:
                to = attract - pos
                n = np.linalg.norm(to)
                if n > 1e-6:
                    d = d + 0.03 * to / n
            d /= np.linalg.norm(d)
            pos = pos + step * d
            length += step
            if geom.margin_at(np.array([pos[0]]), np.array([pos[1]]),
                              np.array([pos[2]]))[0] < min_margin or pos[2] < 0.5:
                break
            r *= 1.0 - step / taper_mm
            pts.append(pos.copy())
            rads.append(r)
            if rng.random() < step / branch_mm:
                rc = r * rng.uniform(0.55, 0.8)
                r = max(r ** 3 - rc ** 3, 0.0) ** (1.0 / 3.0)  # Murray's law
                ang = math.radians(rng.uniform(25.0, 60.0))
                cd = math.cos(ang) * d + math.sin(ang) * _perpendicular(d, rng)
                stack.append((pos.copy(), cd, rc))
        if len(pts) >= 2:
            lines.append((np.asarray(pts), np.asarray(rads)))
    return lines


def grow_vessels(geom: BreastGeometry, rng: np.random.Generator) -> list[tuple[np.ndarray,
                                                                            np.ndarray]]:
    """Blood-vessel trees entering at the chest wall and the lateral/medial borders.

    Three to six trunks of 1-2.4 mm diameter (approximate calibre of the breast's larger veins
    and arteries on mammograms), branching every 20-35 mm on average with Murray's law
    (``r**3 = r1**3 + r2**3``), tapering, meandering gently, nearly parallel to the detector
    (compression), running on the whole towards the nipple.
    """
    px = geom.px
    t_mid = geom.slices * geom.dz / 2.0
    half = 0.3 * min(geom.thickness_mm, geom.slices * geom.dz)
    inside_y = np.flatnonzero(geom.footprint[:, 0])
    ny, nx = geom.nipple_yx_mm
    starts = []
    for _ in range(int(rng.integers(3, 7))):
        z0 = t_mid + rng.uniform(-half, half)
        if rng.random() < 0.65 and inside_y.size:  # from the chest wall
            y0 = (float(rng.choice(inside_y)) + 0.5) * px
            p0 = np.array([z0, y0, 1.0])
        else:  # from a border (lateral or medial), a third to half-way to the nipple
            x0 = rng.uniform(0.2, 0.5) * geom.chest_wall_to_nipple_mm
            col = geom.footprint[:, min(geom.cols - 1, int(x0 / px))]
            ys = np.flatnonzero(col)
            if ys.size == 0:
                continue
            y0 = (float(ys[0] if rng.random() < 0.5 else ys[-1]) + 0.5) * px
            y0 += (geom.skin_mm + 2.0) * (1.0 if y0 < ny else -1.0)
            p0 = np.array([z0, y0, x0])
        to = np.array([0.0, ny - p0[1], nx - p0[2]])
        to /= np.linalg.norm(to) + 1e-9
        ang = math.radians(rng.uniform(-30.0, 30.0))
        d = np.array([rng.uniform(-0.05, 0.05),
                      math.cos(ang) * to[1] - math.sin(ang) * to[2],
                      math.sin(ang) * to[1] + math.cos(ang) * to[2]])
        starts.append((p0, d, rng.uniform(0.5, 1.2)))
    return _grow(geom, rng, starts, branch_mm=rng.uniform(30.0, 50.0), taper_mm=250.0,
                 r_min=0.2, max_len_mm=1.1 * geom.chest_wall_to_nipple_mm, turn=0.07,
                 z_damp=0.3, attract=None, min_margin=geom.skin_mm + 1.0)


def grow_ducts(geom: BreastGeometry, rng: np.random.Generator) -> list[tuple[np.ndarray,
                                                                          np.ndarray]]:
    """Lactiferous duct trees fanning out from behind the nipple into the glandular region.

    Five to nine visible lobar ducts (of the roughly 15-20 lobes, Going & Moffat 2004), about
    1-1.6 mm in diameter near the nipple, branching every 10-18 mm and tapering, so that they
    converge on the nipple like the real ductal system.
    """
    t_mid = geom.slices * geom.dz / 2.0
    ny, nx = geom.nipple_yx_mm
    cnd = geom.chest_wall_to_nipple_mm
    starts = []
    for _ in range(int(rng.integers(5, 10))):
        ang = math.radians(rng.uniform(-30.0, 30.0))
        elev = rng.uniform(-0.2, 0.2)
        d = np.array([elev, math.sin(ang), -math.cos(ang)])
        p0 = np.array([t_mid + rng.uniform(-1.5, 1.5), ny + rng.uniform(-1.5, 1.5),
                       nx - min(4.0, 0.1 * cnd)])
        starts.append((p0, d, rng.uniform(0.5, 0.8)))
    return _grow(geom, rng, starts, branch_mm=rng.uniform(10.0, 18.0), taper_mm=45.0,
                 r_min=0.15, max_len_mm=0.5 * cnd, turn=0.06, z_damp=0.6, attract=None,
                 min_margin=0.5 * geom.skin_mm)
