"""Which breast a view shows: the header's laterality checked against the pixels.

Laterality comes from the header (Frame Anatomy ``FrameLaterality``, shared or per frame,
then ``ImageLaterality``, then ``Laterality``) and is checked against the pixels: the chest
wall is the side edge holding more tissue. When the two disagree the pixels win and a
warning is logged, because header laterality is known to be wrong on some public images.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

#: Relative difference of edge tissue below which the pixels do not tell the side.
SIDE_MARGIN = 0.15


class LateralityError(ValueError):
    """The header contradicts itself about the laterality."""


def _lat_value(value: object) -> str | None:
    text = str(value or "").strip().upper()
    return text if text in ("L", "R") else None


def header_laterality_multiframe(ds: Dataset, frame_anatomy: Sequence[Dataset | None]
                                 ) -> str | None:
    """Laterality of a multi-frame object: ``FrameLaterality``, else the image-level tags.

    Parameters
    ----------
    ds : Dataset
        The multi-frame object.
    frame_anatomy : sequence of Dataset or None
        The Frame Anatomy item in effect for each frame (per-frame or shared).

    Raises
    ------
    LateralityError
        If frames disagree.
    """
    values = {lat for item in frame_anatomy if item is not None
              if (lat := _lat_value(item.get("FrameLaterality")))}
    if len(values) > 1:
        raise LateralityError(f"frames disagree on FrameLaterality {sorted(values)}")
    if values:
        return values.pop()
    return header_laterality(ds)


def header_laterality(ds: Dataset) -> str | None:
    """``ImageLaterality``, else ``Laterality``, as ``"L"``/``"R"``; ``None`` if neither."""
    for attr in ("ImageLaterality", "Laterality"):
        lat = _lat_value(ds.get(attr))
        if lat:
            return lat
    return None


def chest_wall_side(pixels: np.ndarray) -> str | None:
    """Which side edge holds the tissue: ``"left"`` (column 0), ``"right"`` or ``None``.

    Parameters
    ----------
    pixels : numpy.ndarray
        (frames, rows, cols) or (rows, cols), values in [0, 1], 0 = air.

    Returns
    -------
    str or None
        ``None`` when both edges hold about the same tissue (relative difference below
        :data:`SIDE_MARGIN`) or the image is empty.
    """
    img = pixels.mean(axis=0) if pixels.ndim == 3 else pixels
    band = max(1, img.shape[1] // 20)
    left = float(img[:, :band].mean())
    right = float(img[:, -band:].mean())
    top = max(left, right)
    if top <= 1e-6 or abs(left - right) < SIDE_MARGIN * top:
        return None
    return "left" if left > right else "right"


def resolve_laterality(pixels: np.ndarray, header_lat: str | None) -> str:
    """The laterality to use: the pixels' when they tell, else the header's, else ``"L"``."""
    side = chest_wall_side(pixels)
    pixel_lat = {"left": "L", "right": "R", None: None}[side]
    if pixel_lat is None:
        if header_lat is None:
            logger.warning("no laterality in the header and none visible in the pixels; assuming L")
        return header_lat or "L"
    if header_lat is not None and header_lat != pixel_lat:
        logger.warning("header laterality %s disagrees with the pixels (chest wall on the %s); "
                       "using %s", header_lat, side, pixel_lat)
    return pixel_lat
