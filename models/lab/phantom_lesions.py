"""Lesions of the synthetic DBT phantom: masses, calcification clusters, architectural distortion.

Helpers of :mod:`models.lab.phantom`; left orientation, physical units (see
:mod:`models.lab.phantom_anatomy`). Lesions are planned here and rendered slice by slice by the
phantom's composer *before* the tomosynthesis blur, so they get the same in-plane sharpness and
out-of-plane ghosts as normal tissue.

* **Masses** (BI-RADS 5th ed. shapes oval/round and irregular; margins circumscribed,
  microlobulated, indistinct, spiculated) of 5-30 mm. A mass is fibroglandular-like tissue: it
  sets the local glandular fraction to one and adds a small attenuation excess (invasive ductal
  carcinoma attenuates only a few per cent more than fibroglandular tissue at mammographic
  energies, Johns & Yaffe 1987, Phys Med Biol 32:675; drawn here as 0-12 % of the fat-to-gland
  difference). It is therefore about iso-dense in dense tissue and conspicuous in fat. Shapes are
  3D (a radius function on the sphere), with 3D spicules: thin tapering strands leaving the
  surface in all directions.
* **Calcification clusters**: 5-20 specks of 0.1-0.6 mm within a group of 6-16 mm (BI-RADS
  "grouped": at least five calcifications within about 1-2 cm), much more attenuating than
  tissue.
* **Architectural distortion**: tissue pulled towards a point (a radial contraction of the
  in-plane structure that fades with depth), thin straight strands radiating from it and a
  slightly lucent centre (the radial-scar-like pattern), no central mass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, special
from scipy.spatial import Delaunay

from models.lab.phantom_anatomy import BreastGeometry, TubeSet

__all__ = [
    "MASS_KINDS",
    "Calcifications",
    "Distortion",
    "Mass",
    "keep_apart",
    "placement_distance",
    "plan_calcifications",
    "plan_distortion",
    "plan_mass",
]

MASS_KINDS = ("round", "lobulated", "irregular", "spiculated")
# BI-RADS descriptors of each kind (shape, margin)
_DESCRIPTORS = {"round": ("oval/round", "circumscribed"), "lobulated": ("oval", "microlobulated"),
                "irregular": ("irregular", "indistinct"), "spiculated": ("irregular", "spiculated")}
# Attenuation excess of a carcinoma over fibroglandular tissue, as a fraction of the fat-to-gland
# difference: a few per cent of mu at mammographic energies (Johns & Yaffe 1987); approximate.
MASS_EXCESS = (0.0, 0.12)


# ============================================================================ placement
def placement_distance(geom: BreastGeometry) -> np.ndarray:
    """How far (mm) a lesion centred at each pixel may reach and stay inside breast and image."""
    d = np.minimum(geom.dist, geom.pec_dist)
    d = np.where(geom.pectoral, 0.0, d)
    d = np.minimum(d, geom.x_mm[None, :])
    y = (np.arange(geom.rows, dtype=np.float32) + 0.5) * geom.px
    return np.minimum(d, np.minimum(y, geom.rows * geom.px - y)[:, None])


def keep_apart(place: np.ndarray, geom: BreastGeometry, center: tuple[float, float, float],
               reach_mm: float) -> np.ndarray:
    """``place`` limited so that later lesions stay clear of one reaching ``reach_mm``.

    A later lesion needs ``place >= its own reach`` at its centre, so it ends up at least the
    sum of both reaches away (in plane) and the two never overlap.
    """
    _, cy, cx = center
    yy = ((np.arange(geom.rows, dtype=np.float32) - cy) * geom.px)[:, None]
    xx = ((np.arange(geom.cols, dtype=np.float32) - cx) * geom.px)[None, :]
    return np.minimum(place, np.sqrt(yy * yy + xx * xx) - reach_mm)


def _pick(place: np.ndarray, needed: float, prefer: np.ndarray, rng: np.random.Generator
          ) -> tuple[int, int] | None:
    """A random pixel with ``place >= needed``, from the glandular region 80 % of the time."""
    ok = place >= needed
    if not ok.any():
        return None
    good = ok & prefer
    cand = np.flatnonzero(good if good.any() and rng.random() < 0.8 else ok)
    idx = int(cand[rng.integers(0, cand.size)])
    return divmod(idx, place.shape[1])


def _depth_range(geom: BreastGeometry, half_z_mm: float) -> tuple[float, float]:
    """Slice-index range for a centre whose object reaches ``half_z_mm`` up and down."""
    lo = half_z_mm / geom.dz - 0.5
    hi = geom.slices - 0.5 - half_z_mm / geom.dz
    half_t = geom.thickness_mm / 2.0 - half_z_mm - 1.0
    if half_t > 0:  # stay inside the breast when the volume is thicker than it
        lo = max(lo, geom.slices / 2.0 - 0.5 - half_t / geom.dz)
        hi = min(hi, geom.slices / 2.0 - 0.5 + half_t / geom.dz)
    return lo, hi


def _draw_depth(geom: BreastGeometry, half_z_mm: float, rng: np.random.Generator) -> float:
    lo, hi = _depth_range(geom, half_z_mm)
    return float(rng.uniform(lo, hi)) if hi > lo else (geom.slices - 1) / 2.0


def _max_inset(geom: BreastGeometry, cz: float, half_z_mm: float) -> float:
    h = geom.depth(cz)
    hs = np.linspace(h - half_z_mm, h + half_z_mm, 9)
    ins = np.asarray(geom.inset(hs), dtype=np.float64)
    return float(np.min([np.max(ins), 1e6]))


# ============================================================================ masses
@dataclass
class Mass:
    """One planned mass (left orientation).

    Attributes
    ----------
    kind : str
        One of :data:`MASS_KINDS`.
    diameter_mm, diameter_z_mm : float
        In-plane and depth extent of the body.
    center : (float, float, float)
        Voxel indices ``(z, y, x)``.
    excess : float
        Attenuation excess over fibroglandular tissue (fraction of the fat-to-gland step).
    body : numpy.ndarray
        Soft body (0..1) on the local box starting at ``origin``.
    origin : (int, int, int)
        Index of the box's first voxel.
    spicules : TubeSet
        3D spicules (empty unless spiculated).
    """

    kind: str
    diameter_mm: float
    diameter_z_mm: float
    center: tuple[float, float, float]
    excess: float
    body: np.ndarray
    origin: tuple[int, int, int]
    spicules: TubeSet = field(default_factory=TubeSet)
    n_spicules: int = 0

    @property
    def reach_mm(self) -> float:
        """In-plane radius that holds the body (and its spicules)."""
        r = self.diameter_mm / 2.0
        return r * 1.25 + (r * 1.6 + 8.0 if self.kind == "spiculated" else 0.0)

    def entry(self) -> dict:
        """The ``lesions`` entry (JSON-friendly)."""
        shape, margin = _DESCRIPTORS[self.kind]
        return {"kind": self.kind, "center_zyx": [float(c) for c in self.center],
                "diameter_mm": float(self.diameter_mm),
                "diameter_z_mm": float(self.diameter_z_mm), "shape": shape, "margin": margin,
                "attenuation_excess": float(self.excess),
                "spicules": int(self.n_spicules)}


def _sphere_modulation(n: tuple[np.ndarray, np.ndarray, np.ndarray], rng: np.random.Generator,
                       n_waves: int, k_range: tuple[int, int], amp: float) -> np.ndarray:
    """A smooth random function of direction: sum of cosines of ``n . d_j``."""
    nz, ny, nx = n
    out = np.zeros(np.broadcast_shapes(nz.shape, ny.shape, nx.shape), np.float32)
    for _ in range(n_waves):
        d = rng.standard_normal(3)
        d /= np.linalg.norm(d)
        k = rng.uniform(*k_range)
        out += (amp * rng.uniform(0.4, 1.0)) * np.cos(
            math.pi * k * (d[0] * nz + d[1] * ny + d[2] * nx) + rng.uniform(0, 2 * math.pi))
    return out


def plan_mass(geom: BreastGeometry, rng: np.random.Generator, place: np.ndarray,
              prefer: np.ndarray, diameter_range: tuple[float, float], logger=None) -> Mass:
    """Draw a mass, place it inside the breast and render its body on a local box.

    Raises
    ------
    ValueError
        When not even a ``diameter_range[0]`` mass fits into the breast.
    """
    px = geom.px
    dmin, dmax = diameter_range
    diameter = float(rng.uniform(dmin, dmax))
    kind = MASS_KINDS[int(rng.integers(0, len(MASS_KINDS)))]
    margin = 1.0 + 1.5 * px
    fits = (float(place.max()) - margin) / 1.25 * 2.0
    if fits < min(dmin, 1.0):
        raise ValueError(
            f"no {dmin:.1f} mm mass fits inside the breast of a {geom.rows}x{geom.cols} image "
            f"at {px} mm/pixel; use a larger image or smaller lesion_diameter_mm")
    if diameter > fits:
        if logger is not None:
            logger.debug("mass diameter %.1f mm limited to %.1f mm to fit", diameter, fits)
        diameter = max(fits, min(dmin, fits))
    radius = diameter / 2.0
    zr = radius * rng.uniform(0.7, 1.0)
    cz = _draw_depth(geom, zr, rng)
    needed = radius * 1.25 + margin
    inset = _max_inset(geom, cz, zr)
    pick = _pick(place, needed + inset, prefer, rng)
    if pick is None:  # the rounded periphery: retry in the centre plane
        cz = (geom.slices - 1) / 2.0
        pick = _pick(place, needed + _max_inset(geom, cz, zr), prefer, rng)
    if pick is None:
        pick = _pick(place, needed, prefer, rng)
    assert pick is not None
    cy, cx = pick
    sub = np.random.default_rng(int(rng.integers(0, 2**63)))
    excess = float(sub.uniform(*MASS_EXCESS))
    body, origin = _mass_body(kind, radius, zr, (cz, float(cy), float(cx)), geom, sub)
    spicules = TubeSet()
    n_spic = 0
    if kind == "spiculated":
        n_spic = int(sub.integers(10, 26))
        spicules = _spicules((cz, float(cy), float(cx)), radius, zr, n_spic, geom, sub)
    return Mass(kind=kind, diameter_mm=diameter, diameter_z_mm=2.0 * zr,
                center=(float(cz), float(cy), float(cx)), excess=excess, body=body,
                origin=origin, spicules=spicules, n_spicules=n_spic)


def _mass_body(kind: str, radius: float, zr: float, center: tuple[float, float, float],
               geom: BreastGeometry, rng: np.random.Generator
               ) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Soft 3D body (0..1) of a mass on its local box."""
    px, dz = geom.px, geom.dz
    cz, cy, cx = center
    reach = radius * 1.35 + 2.0 * px
    reach_z = zr * 1.35 + dz
    z0, z1 = max(0, math.floor(cz - reach_z / dz)), min(geom.slices,
                                                            math.ceil(cz + reach_z / dz) + 1)
    y0, y1 = max(0, math.floor(cy - reach / px)), min(geom.rows,
                                                          math.ceil(cy + reach / px) + 1)
    x0, x1 = max(0, math.floor(cx - reach / px)), min(geom.cols,
                                                          math.ceil(cx + reach / px) + 1)
    w = ((np.arange(z0, z1, dtype=np.float32) - cz) * dz * (radius / zr))[:, None, None]
    v = ((np.arange(y0, y1, dtype=np.float32) - cy) * px)[None, :, None]
    u = ((np.arange(x0, x1, dtype=np.float32) - cx) * px)[None, None, :]
    th = rng.uniform(0, math.pi)
    aspect = rng.uniform(0.75, 1.0) if kind != "irregular" else rng.uniform(0.6, 1.0)
    ur = math.cos(th) * u + math.sin(th) * v
    vr = (-math.sin(th) * u + math.cos(th) * v) / aspect
    rho = np.sqrt(ur * ur + vr * vr + w * w) + 1e-6
    n = (w / rho, vr / rho, ur / rho)
    if kind == "round":
        mod = _sphere_modulation(n, rng, 3, (0.5, 1.0), 0.03)
        edge = 0.3
    elif kind == "lobulated":
        mod = (_sphere_modulation(n, rng, 4, (1.0, 2.5), 0.12)
               + _sphere_modulation(n, rng, 6, (4.0, 8.0), 0.035))
        edge = 0.45
    elif kind == "irregular":
        mod = (_sphere_modulation(n, rng, 6, (1.0, 3.0), 0.12)
               + _sphere_modulation(n, rng, 10, (3.0, 8.0), 0.05))
        edge = rng.uniform(1.0, 1.6)  # indistinct margin
    else:  # spiculated: an irregular core with a fairly sharp margin; spicules separately
        mod = (_sphere_modulation(n, rng, 5, (1.0, 3.0), 0.08)
               + _sphere_modulation(n, rng, 8, (3.0, 8.0), 0.04))
        edge = 0.6
    edge = max(edge, geom.px)
    boundary = radius * (1.0 + np.clip(mod, -0.3, 0.3))
    body = special.expit((boundary - rho) / (edge / 3.0))
    return body.astype(np.float32), (z0, y0, x0)


def _spicules(center: tuple[float, float, float], radius: float, zr: float, n: int,
              geom: BreastGeometry, rng: np.random.Generator) -> TubeSet:
    """3D spicules: tapering, slightly curved strands leaving the surface in all directions."""
    cz, cy, cx = center
    c = np.array([(cz + 0.5) * geom.dz, (cy + 0.5) * geom.px, (cx + 0.5) * geom.px])
    lines = []
    for _ in range(n):
        d = rng.standard_normal(3)
        d /= np.linalg.norm(d)
        start = c + 0.8 * np.array([d[0] * zr, d[1] * radius, d[2] * radius])
        length = radius * rng.uniform(0.6, 1.6) + rng.uniform(2.0, 8.0)
        steps = max(2, int(length / 0.5))
        pts = [start]
        for _ in range(steps):
            d = d + 0.04 * rng.standard_normal(3)
            d /= np.linalg.norm(d)
            pts.append(pts[-1] + 0.5 * d)
        r0 = rng.uniform(0.25, 0.5)
        radii = np.linspace(r0, rng.uniform(0.05, 0.1), len(pts))
        lines.append((np.asarray(pts), radii))
    return TubeSet.from_polylines(lines, 0.85, geom.px)


# ============================================================================ calcifications
@dataclass
class Calcifications:
    """A planned microcalcification cluster (left orientation, mm from the volume origin)."""

    specks: np.ndarray  # (n, 4): z_mm, y_mm, x_mm, size_mm
    center: tuple[float, float, float]  # voxel indices
    diameter_mm: float
    hull_offsets_mm: np.ndarray  # (m, 2) in-plane points spanning the hull, around the centre
    z_range: tuple[int, int]

    def entry(self) -> dict:
        """The ``lesions`` entry."""
        return {"kind": "calcifications", "center_zyx": [float(c) for c in self.center],
                "diameter_mm": float(self.diameter_mm), "count": len(self.specks)}


def plan_calcifications(geom: BreastGeometry, rng: np.random.Generator, place: np.ndarray,
                        prefer: np.ndarray) -> Calcifications:
    """Draw a cluster of 5-20 specks within a 3-8 mm radius inside the glandular region."""
    spread = float(rng.uniform(3.0, 8.0))
    cz = _draw_depth(geom, 2.0, rng)
    inset = _max_inset(geom, cz, 2.0)
    if float(place.max()) - 2.0 - inset < 3.0:  # the rounded periphery: use the centre plane
        cz = (geom.slices - 1) / 2.0
        inset = _max_inset(geom, cz, 2.0)
    spread = min(spread, float(place.max()) - 2.0 - inset)
    pick = _pick(place, spread + 2.0 + inset, prefer, rng) if spread >= 1.5 else None
    if pick is None:
        raise ValueError("a calcification cluster does not fit inside the breast; "
                         "use a larger image")
    cy, cx = pick
    n = int(rng.integers(5, 21))
    pts = rng.normal(0.0, spread / 2.0, size=(n, 2))
    norms = np.linalg.norm(pts, axis=1, keepdims=True)
    pts = np.where(norms > spread, pts / norms * spread, pts)
    z_mm = (cz + 0.5) * geom.dz + rng.normal(0.0, 1.5, n)
    z_mm = np.clip(z_mm, 0.5 * geom.dz, (geom.slices - 0.5) * geom.dz)
    sizes = rng.uniform(0.1, 0.6, n)
    specks = np.column_stack([z_mm, (cy + 0.5) * geom.px + pts[:, 0],
                              (cx + 0.5) * geom.px + pts[:, 1], sizes])
    zs = np.clip(np.floor(z_mm / geom.dz).astype(int), 0, geom.slices - 1)
    hull = np.concatenate([pts, pts + [1.0, 0], pts - [1.0, 0], pts + [0, 1.0], pts - [0, 1.0]])
    return Calcifications(specks=specks, center=(float(cz), float(cy), float(cx)),
                          diameter_mm=float(2.0 * np.max(np.linalg.norm(pts, axis=1)) + 1.0),
                          hull_offsets_mm=hull, z_range=(int(zs.min()), int(zs.max())))


def render_calcifications(calc: Calcifications, z: int, geom: BreastGeometry, img: np.ndarray,
                          amplitude: float) -> None:
    """Add the specks that cross slice ``z`` to ``img`` (in place).

    A speck of diameter ``s`` is a Gaussian blob with the integrated contrast of a disc,
    ``amplitude * pi * (s / 2)**2``, never narrower than half a pixel: small specks on coarse
    pixels are dimmer (partial volume), large ones saturate (calcium attenuates far more than
    tissue).
    """
    px, dz = geom.px, geom.dz
    zc = (z + 0.5) * dz
    for zm, ym, xm, s in calc.specks:
        if abs(zm - zc) > s / 2.0 + dz / 2.0:
            continue
        sig = max(s / 2.5, 0.5 * px)
        amp = amplitude * s * s / (8.0 * sig * sig)
        rad = math.ceil(3.0 * sig / px) + 1
        iy, ix = int(ym / px), int(xm / px)
        ya, yb = max(0, iy - rad), min(geom.rows, iy + rad + 1)
        xa, xb = max(0, ix - rad), min(geom.cols, ix + rad + 1)
        if ya >= yb or xa >= xb:
            continue
        yy = (np.arange(ya, yb) + 0.5)[:, None] * px - ym
        xx = (np.arange(xa, xb) + 0.5)[None, :] * px - xm
        img[ya:yb, xa:xb] += (amp * np.exp(-0.5 * (yy ** 2 + xx ** 2) / sig ** 2)).astype(
            np.float32)


def calcification_hull(calc: Calcifications, geom: BreastGeometry) -> tuple[
        np.ndarray, tuple[int, int]]:
    """In-plane hull mask of the cluster (dilated by 1 mm) and its top-left index."""
    _, cy, cx = calc.center
    tri = Delaunay(calc.hull_offsets_mm)
    reach = math.ceil((calc.diameter_mm / 2.0 + 1.5) / geom.px) + 1
    ya, yb = max(0, int(cy) - reach), min(geom.rows, int(cy) + reach + 1)
    xa, xb = max(0, int(cx) - reach), min(geom.cols, int(cx) + reach + 1)
    yy, xx = np.meshgrid((np.arange(ya, yb) - cy) * geom.px, (np.arange(xa, xb) - cx) * geom.px,
                         indexing="ij")
    inside = tri.find_simplex(np.stack([yy.ravel(), xx.ravel()], axis=1)) >= 0
    return inside.reshape(yy.shape), (ya, xa)


# ============================================================================ distortion
@dataclass
class Distortion:
    """A planned architectural distortion (left orientation)."""

    center: tuple[float, float, float]  # voxel indices
    extent_mm: float  # radius of the pulled-in region
    strength: float
    strands: TubeSet

    @property
    def core_radius_mm(self) -> float:
        """Radius of the region marked in ``lesion_mask``."""
        return 0.35 * self.extent_mm

    def entry(self) -> dict:
        """The ``lesions`` entry (``diameter_mm`` is that of the marked centre region)."""
        return {"kind": "distortion", "center_zyx": [float(c) for c in self.center],
                "diameter_mm": float(2.0 * self.core_radius_mm),
                "extent_mm": float(2.0 * self.extent_mm), "strength": float(self.strength)}

    def weight(self, z: int, dz: float) -> float:
        """How strongly slice ``z`` is distorted (1 at the centre depth)."""
        dzm = (z - self.center[0]) * dz
        return math.exp(-0.5 * (dzm / (0.6 * self.extent_mm)) ** 2)

    def apply(self, fg: np.ndarray, z: int, geom: BreastGeometry) -> None:
        """Pull the glandular-fraction map of slice ``z`` towards the centre (in place)."""
        g = self.weight(z, geom.dz)
        if g < 0.02:
            return
        _, cy, cx = self.center
        big = 1.8 * self.extent_mm / geom.px
        ya, yb = max(0, int(cy - big)), min(geom.rows, int(cy + big) + 1)
        xa, xb = max(0, int(cx - big)), min(geom.cols, int(cx + big) + 1)
        yy, xx = np.meshgrid(np.arange(ya, yb, dtype=np.float32) - cy,
                             np.arange(xa, xb, dtype=np.float32) - cx, indexing="ij")
        r_mm = np.sqrt(yy * yy + xx * xx) * geom.px
        k = 1.0 + self.strength * g * np.exp(-((r_mm / self.extent_mm) ** 2))
        src = np.stack([cy + yy * k - ya, cx + xx * k - xa])
        win = fg[ya:yb, xa:xb]
        warped = ndimage.map_coordinates(win, src, order=1, mode="nearest")
        # a slightly lucent centre: the radial-scar pattern has no central mass
        warped *= 1.0 - 0.5 * g * np.exp(-((r_mm / (0.2 * self.extent_mm)) ** 2))
        fg[ya:yb, xa:xb] = warped


def plan_distortion(geom: BreastGeometry, rng: np.random.Generator, place: np.ndarray,
                    prefer: np.ndarray) -> Distortion:
    """Draw an architectural distortion of 8-20 mm radius in the glandular region."""
    extent = float(rng.uniform(8.0, 20.0))
    fits = (float(place.max()) - 2.0) / 1.5
    if fits < 4.0:
        raise ValueError("an architectural distortion does not fit inside the breast; "
                         "use a larger image")
    extent = min(extent, fits)
    cz = _draw_depth(geom, 0.35 * extent, rng)
    pick = _pick(place, 1.5 * extent + 2.0 + _max_inset(geom, cz, 0.35 * extent), prefer, rng)
    if pick is None:
        cz = (geom.slices - 1) / 2.0
        pick = _pick(place, 1.5 * extent + 2.0, prefer, rng)
    assert pick is not None
    cy, cx = pick
    c = np.array([(cz + 0.5) * geom.dz, (cy + 0.5) * geom.px, (cx + 0.5) * geom.px])
    lines = []
    for _ in range(int(rng.integers(12, 26))):
        d = rng.standard_normal(3)
        d[0] *= 0.5
        d /= np.linalg.norm(d)
        length = extent * rng.uniform(0.6, 1.4)
        t = np.linspace(0.15 * extent, length, max(3, int(length / 0.5)))
        pts = c[None, :] + t[:, None] * d[None, :]
        lines.append((pts, np.linspace(rng.uniform(0.15, 0.35), 0.06, t.size)))
    strands = TubeSet.from_polylines(lines, 0.8, geom.px)
    return Distortion(center=(float(cz), float(cy), float(cx)), extent_mm=extent,
                      strength=float(rng.uniform(0.3, 0.6)), strands=strands)


def distortion_core(dist: Distortion, z: int, geom: BreastGeometry) -> tuple[
        np.ndarray, tuple[int, int]] | None:
    """In-plane mask of the distortion's centre region on slice ``z`` (None when off it)."""
    cz, cy, cx = dist.center
    rc = dist.core_radius_mm
    dzm = (z - cz) * geom.dz
    if abs(dzm) >= rc:
        return None
    r_in = math.sqrt(rc * rc - dzm * dzm) / geom.px
    ya, yb = max(0, int(cy - r_in) - 1), min(geom.rows, int(cy + r_in) + 2)
    xa, xb = max(0, int(cx - r_in) - 1), min(geom.cols, int(cx + r_in) + 2)
    yy, xx = np.meshgrid(np.arange(ya, yb) - cy, np.arange(xa, xb) - cx, indexing="ij")
    return (yy * yy + xx * xx) <= r_in * r_in, (ya, xa)


def soft_body_slice(m: Mass, z: int) -> tuple[np.ndarray, tuple[int, int]] | None:
    """The body of mass ``m`` on slice ``z`` and its top-left index (None when off it)."""
    z0, y0, x0 = m.origin
    k = z - z0
    if k < 0 or k >= m.body.shape[0]:
        return None
    return m.body[k], (y0, x0)

