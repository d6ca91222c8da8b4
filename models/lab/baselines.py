"""Trivial lesion detectors to report beside every PICARD figure.

A detection figure means something only beside detectors that know nothing about normal
tissue, measured the same way. On synthetic phantoms a mass is a blob a little brighter
than the glandular tissue around it, so three one-line filters are the floor any learned
detector has to clear:

* :func:`raw_intensity` -- the pixel value itself (brighter = more suspicious).
* :func:`difference_of_gaussians` -- a band-pass blob detector: the slice blurred with a
  Gaussian of sigma 1 mm minus the slice blurred with sigma 8 mm, in plane, each blur
  computed over tissue only (normalised convolution), so the skin line does not look like a
  blob and a uniform brightness offset cancels. The scales are fixed here in millimetres,
  chosen before looking at any test data: 1 mm smooths pixel noise, 8 mm is about the radius
  of a mid-sized (5-30 mm) mass.
* :func:`smoothed_intensity` -- the slice blurred in plane with a Gaussian of sigma 4 mm
  over tissue: brightness averaged over about a mass's size. Added after a diagnostic on
  the validation volumes (seeds 5000-5003, never the test seeds) showed a 12.8 mm local
  mean ranking mass pixels above raw intensity there (pixel AUROC 0.85-0.93 against
  0.81-0.92): masses as dense as gland are brighter than the fat-gland mixture on average
  but not pixel by pixel. Sigma fixed at 4 mm (a 12.8 mm box has sigma 3.7 mm), not tuned.

Each function takes a volume ``(slices, rows, cols)`` in ``[0, 1]`` (0 = air) and its
in-plane pixel spacing and returns a heatmap on the same grid in which air
(``<= tissue_level``) scores 0, as the model's heatmaps do
(:meth:`models.picard.Picard.heatmap`). :data:`BASELINES` names them with their parameters,
for :func:`models.lab.evaluate.compare_methods`.

The third baseline, one deterministic completion (M = 1, dropout off), needs the PICARD
network and lives with the other completion rules in :mod:`models.lab.evaluate`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

__all__ = [
    "BASELINES",
    "Baseline",
    "baseline_heatmaps",
    "difference_of_gaussians",
    "raw_intensity",
    "smoothed_intensity",
]

#: Default tissue level in image units (the model cards' ``tissue_level``).
TISSUE_LEVEL = 0.02


def _as_volume(volume: np.ndarray) -> np.ndarray:
    """``volume`` as float32 ``(Z, H, W)``; a 2D slice becomes one slice."""
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim == 2:
        vol = vol[None]
    if vol.ndim != 3:
        raise ValueError(f"volume must be (slices, rows, cols), got shape {np.shape(volume)}")
    if not np.isfinite(vol).all():
        raise ValueError("volume contains NaN or infinite values")
    return vol


def _spacing(pixel_spacing_mm: float | Sequence[float]) -> tuple[float, float]:
    """(row, col) spacing in mm from a scalar or a pair; both must be > 0."""
    if np.isscalar(pixel_spacing_mm):
        spacing = (float(pixel_spacing_mm),) * 2  # type: ignore[arg-type]
    else:
        spacing = tuple(float(v) for v in pixel_spacing_mm)  # type: ignore[union-attr]
    if len(spacing) != 2 or not min(spacing) > 0:
        raise ValueError(f"pixel_spacing_mm must be > 0 (one value or row, col), "
                         f"got {pixel_spacing_mm!r}")
    return spacing  # type: ignore[return-value]


def raw_intensity(volume: np.ndarray, *, pixel_spacing_mm: float | Sequence[float],
                  tissue_level: float = TISSUE_LEVEL) -> np.ndarray:
    """The pixel value as the anomaly score.

    Parameters
    ----------
    volume : numpy.ndarray
        ``(slices, rows, cols)`` in ``[0, 1]`` (a 2D slice is accepted as one slice).
    pixel_spacing_mm : float or (float, float)
        In-plane spacing; checked, not used (the score has no scale).
    tissue_level : float, default 0.02
        Pixels at or below it are air and score 0.

    Returns
    -------
    numpy.ndarray
        ``(slices, rows, cols)`` float32.
    """
    _spacing(pixel_spacing_mm)
    vol = _as_volume(volume)
    heat = vol.copy()
    heat[vol <= tissue_level] = 0.0
    return heat


def _tissue_blur(values: np.ndarray, weights: np.ndarray, sigma_mm: float,
                 spacing: tuple[float, float]) -> np.ndarray:
    """In-plane Gaussian blur (sigma in mm, ``spacing`` (row, col) mm) of ``values`` over the
    pixels where ``weights`` is 1."""
    sigma = (0.0, sigma_mm / spacing[0], sigma_mm / spacing[1])
    num = ndimage.gaussian_filter(values * weights, sigma, mode="constant", cval=0.0)
    den = ndimage.gaussian_filter(weights, sigma, mode="constant", cval=0.0)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 1e-6)


def difference_of_gaussians(volume: np.ndarray, *, pixel_spacing_mm: float | Sequence[float],
                            sigma_small_mm: float = 1.0, sigma_large_mm: float = 8.0,
                            tissue_level: float = TISSUE_LEVEL) -> np.ndarray:
    """In-plane difference of Gaussians over tissue: blur(sigma_small) - blur(sigma_large).

    Each slice is blurred on its own (tomosynthesis slices are sharp in plane only). Both
    blurs are normalised convolutions over the tissue pixels (``> tissue_level``): air
    neither darkens the blur at the skin line nor counts as background, and adding a
    constant to the tissue leaves the result unchanged.

    Parameters
    ----------
    volume : numpy.ndarray
        ``(slices, rows, cols)`` in ``[0, 1]`` (a 2D slice is accepted as one slice).
    pixel_spacing_mm : float or (float, float)
        In-plane spacing (row, col), to turn the sigmas into pixels.
    sigma_small_mm, sigma_large_mm : float, default 1 and 8
        Gaussian sigmas in mm; ``0 <= sigma_small_mm < sigma_large_mm``.
    tissue_level : float, default 0.02
        Pixels at or below it are air: left out of the blurs, and score 0.

    Returns
    -------
    numpy.ndarray
        ``(slices, rows, cols)`` float32; positive where a pixel is brighter than the tissue
        around it.
    """
    if not 0.0 <= sigma_small_mm < sigma_large_mm:
        raise ValueError(f"need 0 <= sigma_small_mm < sigma_large_mm, got {sigma_small_mm!r} "
                         f"and {sigma_large_mm!r}")
    spacing = _spacing(pixel_spacing_mm)
    vol = _as_volume(volume)
    tissue = (vol > tissue_level).astype(np.float32)
    small = _tissue_blur(vol, tissue, sigma_small_mm, spacing)
    large = _tissue_blur(vol, tissue, sigma_large_mm, spacing)
    heat = (small - large).astype(np.float32)
    heat[tissue == 0] = 0.0
    return heat


def smoothed_intensity(volume: np.ndarray, *, pixel_spacing_mm: float | Sequence[float],
                       sigma_mm: float = 4.0, tissue_level: float = TISSUE_LEVEL) -> np.ndarray:
    """In-plane Gaussian blur of each slice over tissue (normalised convolution).

    Parameters
    ----------
    volume : numpy.ndarray
        ``(slices, rows, cols)`` in ``[0, 1]`` (a 2D slice is accepted as one slice).
    pixel_spacing_mm : float or (float, float)
        In-plane spacing (row, col), to turn the sigma into pixels.
    sigma_mm : float, default 4
        Gaussian sigma in mm; > 0.
    tissue_level : float, default 0.02
        Pixels at or below it are air: left out of the blur (the skin line is not darkened),
        and score 0.

    Returns
    -------
    numpy.ndarray
        ``(slices, rows, cols)`` float32.
    """
    if not sigma_mm > 0:
        raise ValueError(f"sigma_mm must be > 0, got {sigma_mm!r}")
    spacing = _spacing(pixel_spacing_mm)
    vol = _as_volume(volume)
    tissue = (vol > tissue_level).astype(np.float32)
    heat = _tissue_blur(vol, tissue, sigma_mm, spacing).astype(np.float32)
    heat[tissue == 0] = 0.0
    return heat


@dataclass(frozen=True)
class Baseline:
    """A trivial detector with its fixed parameters.

    Attributes
    ----------
    name : str
        Row name in evaluation tables.
    function : callable
        ``function(volume, *, pixel_spacing_mm, tissue_level, **params) -> heatmap``.
    params : mapping
        Keyword parameters passed to ``function`` (scales in mm).
    label : str
        Short text for table rows, with the parameters.
    description : str
        One line saying what is computed.
    """

    name: str
    function: Callable[..., np.ndarray]
    params: Mapping[str, float] = field(default_factory=dict)
    label: str = ""
    description: str = ""

    def __call__(self, volume: np.ndarray, *, pixel_spacing_mm: float | Sequence[float],
                 tissue_level: float = TISSUE_LEVEL) -> np.ndarray:
        """Heatmap of ``volume`` (see :attr:`function`)."""
        return self.function(volume, pixel_spacing_mm=pixel_spacing_mm,
                             tissue_level=tissue_level, **self.params)

    def spec(self, *, tissue_level: float = TISSUE_LEVEL) -> dict[str, Any]:
        """JSON-able record of what this baseline computes."""
        return {"label": self.label or self.name, "kind": "trivial baseline",
                "function": self.function.__name__,
                **{k: float(v) for k, v in self.params.items()},
                "tissue_level": float(tissue_level), "description": self.description}


#: The trivial baselines reported beside every PICARD rule, by row name.
BASELINES: dict[str, Baseline] = {
    "raw intensity": Baseline(
        "raw intensity", raw_intensity, {},
        label="raw intensity: pixel value, no parameters",
        description="pixel value in [0, 1]; air (<= tissue level) 0"),
    "DoG 1-8 mm": Baseline(
        "DoG 1-8 mm", difference_of_gaussians, {"sigma_small_mm": 1.0, "sigma_large_mm": 8.0},
        label="DoG 1-8 mm: in-plane blur sigma 1 mm - sigma 8 mm, over tissue",
        description="in-plane Gaussian blur sigma 1 mm minus sigma 8 mm, each over tissue only "
                    "(normalised convolution); air 0"),
    "smoothed intensity 4 mm": Baseline(
        "smoothed intensity 4 mm", smoothed_intensity, {"sigma_mm": 4.0},
        label="smoothed intensity 4 mm: in-plane blur sigma 4 mm, over tissue",
        description="in-plane Gaussian blur sigma 4 mm over tissue only (normalised "
                    "convolution); air 0"),
}


def baseline_heatmaps(volume: np.ndarray, *, pixel_spacing_mm: float | Sequence[float],
                      tissue_level: float = TISSUE_LEVEL,
                      baselines: Mapping[str, Baseline] | None = None
                      ) -> dict[str, np.ndarray]:
    """Heatmaps of every baseline for one volume.

    Parameters
    ----------
    volume : numpy.ndarray
        ``(slices, rows, cols)`` in ``[0, 1]``.
    pixel_spacing_mm : float or (float, float)
        In-plane spacing.
    tissue_level : float, default 0.02
        Air level (air scores 0).
    baselines : mapping, optional
        ``{name: Baseline}``; default :data:`BASELINES`.

    Returns
    -------
    dict
        ``{name: (slices, rows, cols) float32}``.
    """
    chosen = BASELINES if baselines is None else baselines
    return {name: b(volume, pixel_spacing_mm=pixel_spacing_mm, tissue_level=tissue_level)
            for name, b in chosen.items()}
