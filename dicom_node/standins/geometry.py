"""Where a synthetic view lies in the patient: orientation, frame positions, orientation letters.

Patient coordinate system LPS. Rows of a frame run along the column direction cosine,
columns along the row direction cosine. For ``L`` the chest wall is column 0 and the row
direction points anterior (towards the nipple); for ``R`` the image is mirrored (chest wall
at the last column) and the row direction points posterior. The column direction points
medially (to the other breast), so the lateral side is at the top as mammograms are usually
hung: Patient Orientation ``A\\R`` for a left CC, ``P\\L`` for a right CC, ``A\\FR`` /
``P\\FL`` for MLO.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def geometry(
    laterality: str, view: str, pixel_spacing_mm: float, slice_thickness_mm: float, frames: int,
    frame_direction: int = 1,
) -> tuple[list[float], list[list[float]]]:
    """Image orientation and per-frame image positions of a synthetic view.

    Parameters
    ----------
    laterality : {"L", "R"}
        Breast side.
    view : {"CC", "MLO"}
        Mammographic view.
    pixel_spacing_mm : float
        In-plane spacing (rows and columns), mm.
    slice_thickness_mm : float
        Distance between frames along the normal, mm.
    frames : int
        Number of frames.
    frame_direction : {1, -1}
        Frames step along the normal (row x column direction, default) or against it.

    Returns
    -------
    orientation : list of float
        Image Orientation (Patient): row direction cosines, then column direction cosines.
    positions : list of list of float
        Image Position (Patient) of the first pixel of each frame, mm.
    """
    if frame_direction not in (1, -1):
        raise ValueError(f"frame_direction must be 1 or -1, got {frame_direction!r}")
    # Rows run towards the nipple (anterior for L, posterior for R: R images are mirrored);
    # columns run medially (to the patient's right for L, left for R): lateral side up.
    row_dir = np.array([0.0, -1.0, 0.0]) if laterality == "L" else np.array([0.0, 1.0, 0.0])
    medial = -1.0 if laterality == "L" else 1.0
    if view == "CC":
        col_dir = np.array([medial, 0.0, 0.0])
    else:  # MLO: oblique, 45 degrees between medial and inferior
        s = float(np.sqrt(0.5))
        col_dir = np.array([medial * s, 0.0, -s])
    normal = np.cross(row_dir, col_dir)
    origin = np.array([0.0, 0.0, 0.0])
    orientation = [round(float(v), 10) for v in (*row_dir, *col_dir)]
    positions = [
        [round(float(v), 6) for v in origin + frame_direction * k * slice_thickness_mm * normal]
        for k in range(frames)
    ]
    return orientation, positions


def patient_orientation(orientation: Sequence[float]) -> list[str]:
    """Patient Orientation (row, column direction letters) of an Image Orientation (Patient).

    Letters name the LPS axes (``L``/``R``, ``P``/``A``, ``H``/``F``) each direction cosine
    has a component of at least 0.25 along, largest first, ties as ``F``/``H`` before
    ``R``/``L`` before ``A``/``P`` (``A\\FR`` for a left MLO).
    """
    letters = []
    for vector in (orientation[:3], orientation[3:]):
        parts = []
        for axis, (plus, minus), rank in ((2, ("H", "F"), 0), (0, ("L", "R"), 1),
                                          (1, ("P", "A"), 2)):
            value = float(vector[axis])
            if abs(value) >= 0.25:
                parts.append((-round(abs(value), 3), rank, plus if value > 0 else minus))
        letters.append("".join(letter for *_, letter in sorted(parts)))
    return letters
