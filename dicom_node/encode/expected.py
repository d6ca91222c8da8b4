"""The "what the model expected" series: source slices with the nearest completion pasted in.

PICARD scores a window by how far the real tissue in its hole lies from the model's
completions of that hole. Showing the nearest completion in place lets a reader see what
the model expected instead of what is there. Each image becomes one single-frame grayscale
**Secondary Capture** (16 bits, the source's stored units and Photometric Interpretation,
its window and rescale, so it looks like the source slice):

* the hole is outlined by a dashed line on its own border pixels (white and black, visible
  on any tissue), so everything outside the hole keeps the source's values;
* a text band above the image says "MODEL-EXPECTED TISSUE — NOT FOR DIAGNOSTIC USE", the
  model and what was computed (nearest of M completions, scoring rule and space);
* Source Image Sequence, Laterality, Pixel Spacing, Image Type DERIVED\\SECONDARY,
  Conversion Type WSD and Burned In Annotation YES as for the key images
  (:func:`~dicom_node.encode.keyimages.secondary_capture`).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.encode import burn
from dicom_node.encode.common import frame_ordered, source_grid, source_laterality
from dicom_node.encode.display import EXPECTED_KIND, model_title, series_description
from dicom_node.encode.keyimages import frame_source, secondary_capture
from dicom_node.encode.labels import ScoreLabels
from dicom_node.encode.sanitize import clean_source_headers

#: First line burned into every expected image.
EXPECTED_WARNING = "MODEL-EXPECTED TISSUE \u2014 NOT FOR DIAGNOSTIC USE"
#: The same in DICOM text attributes (the source's character set may lack the dash).
_WARNING_TEXT = "MODEL-EXPECTED TISSUE - NOT FOR DIAGNOSTIC USE"
_UINT16_MAX = 65535


def _what(labels: ScoreLabels, model_name: str) -> str:
    """What was pasted in, e.g. ``nearest of M=10 PICARD completions (image distance)``."""
    if not labels.known:
        return f"nearest {model_name} completion (scoring not recorded)"
    return f"nearest of M={labels.m} {model_name} completions ({labels.space} distance)"


def _check_inputs(
    ordered: Sequence[Dataset], images: np.ndarray, frames: Sequence[int], holes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint16 and holes as bool, both (n, rows, cols), checked."""
    _, rows, cols = source_grid(ordered)
    n = len(frames)
    images = np.asarray(images)
    holes = np.asarray(holes)
    if images.shape != (n, rows, cols):
        raise ValueError(f"images shape {images.shape} does not match {n} frames of the "
                         f"source's {rows} x {cols} grid")
    if holes.shape != images.shape:
        raise ValueError(f"holes shape {holes.shape} differs from images shape {images.shape}")
    if holes.dtype != bool:
        if not np.isin(holes, (0, 1)).all():
            raise ValueError("holes must be boolean masks (or 0/1)")
        holes = holes.astype(bool)
    if not np.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values")
    values = np.rint(images.astype(np.float64))
    if values.size and (values.min() < 0 or values.max() > _UINT16_MAX):
        raise ValueError(f"images must hold the source's stored values in 0..{_UINT16_MAX}, "
                         f"got {values.min():g}..{values.max():g}")
    return values.astype(np.uint16), holes


def _voi(source: Dataset, index: int, black: float, white: float) -> tuple[float, float]:
    """(center, width) to write: the source's own, else the computed window in its units."""
    window = burn.header_window(source, index)
    if window is not None:
        return window
    slope, intercept = burn.rescale(source, index)
    lo, hi = sorted((black * slope + intercept, white * slope + intercept))
    return (lo + hi) / 2 + 0.5, max(hi - lo + 1, 1.0)


def render_expected(
    image: np.ndarray, hole: np.ndarray, *, window: tuple[float, float], invert: bool,
    lines: Sequence[str],
) -> tuple[np.ndarray, int, int]:
    """The grey expected image: (uint16 image, enlargement factor, text band height).

    ``window`` is (black, white) in stored values before a MONOCHROME1 inversion
    (``invert``); text and outline are drawn at the values shown white and black.
    """
    black, white = window
    if invert:
        black, white = white, black
    black = float(np.clip(round(black), 0, _UINT16_MAX))
    white = float(np.clip(round(white), 0, _UINT16_MAX))
    factor = burn.upscale_factor(image.shape[1])
    out = burn.upscale(image, factor).copy()
    width = out.shape[1]
    outline = burn.ring(burn.upscale(hole, factor), burn.line_width(width), outside=False)
    light = burn.dashes(out.shape, 4 * burn.line_width(width))
    out[outline & light] = white
    out[outline & ~light] = black
    colours = [burn.WARNING_RGB] + [burn.TEXT_RGB] * (len(lines) - 1)
    alpha = burn.text_band(lines, width, colours).max(axis=-1).astype(np.float64) / 255.0
    band = np.rint(black + alpha * (white - black)).astype(np.uint16)
    return np.concatenate([band, out], axis=0), factor, band.shape[0]


def encode_expected_series(
    source_datasets: Sequence[Dataset],
    images: np.ndarray,
    frames: Sequence[int],
    holes: np.ndarray,
    *,
    model_name: str = "PICARD",
    model_version: str,
    output_uid_seed: str,
    labels: ScoreLabels | None = None,
    created: _dt.datetime | None = None,
    series_number: int = 906,
) -> list[Dataset]:
    """One grayscale Secondary Capture per image: what the model expected in its hole.

    Parameters
    ----------
    source_datasets : sequence of pydicom.Dataset
        Source headers (one multi-frame object, or single-frame instances in any order).
    images : numpy.ndarray
        (n, rows, cols) source slices ``frames[i]`` with the model's nearest completion
        pasted into ``holes[i]``, in the source's stored values (as decoded, before Rescale
        Slope/Intercept; rounded to integers 0..65535), stored orientation.
    frames : sequence of int
        0-based source frame of each image, in
        :func:`~dicom_node.encode.common.frame_ordered` order.
    holes : numpy.ndarray
        (n, rows, cols) bool: the completed region of each image.
    model_name, model_version : str
        Manufacturer Model Name and Software Versions; burned into the text.
    output_uid_seed : str
        Seeds the series and instance UIDs.
    labels : ScoreLabels, optional
        What was computed (M, rule, space, mode); burned into the text. Default: "not
        recorded".
    created : datetime.datetime, optional
        Series, content and capture date and time; default now.
    series_number : int
        Series Number. Default 906.

    Returns
    -------
    list of pydicom.Dataset
        ``hd.sc.SCImage`` objects in the order of ``images`` (Instance Number ``i + 1``);
        empty when ``frames`` is empty.

    Raises
    ------
    ValueError
        If shapes disagree with the source grid or ``frames``, a frame is outside the
        source, a hole mask is not boolean or the values are not stored values.
    """
    if len(frames) == 0 and np.asarray(images).size == 0:
        return []
    ordered = frame_ordered(clean_source_headers(source_datasets)[0])
    values, holes = _check_inputs(ordered, images, frames, holes)
    labels = labels or ScoreLabels()
    created = created or _dt.datetime.now()
    laterality = source_laterality(ordered)
    total_frames = source_grid(ordered)[0]
    what = _what(labels, model_name)
    detail = (f"nearest of M={labels.m}, {labels.space}, {labels.mode}" if labels.known
              else "nearest completion")
    description = series_description(model_name, EXPECTED_KIND, detail)
    out: list[Dataset] = []
    for i, frame in enumerate(frames):
        source, index, frame_number = frame_source(ordered, int(frame))
        invert = burn.is_monochrome1(source)
        window = burn.display_window(source, index, values[i])
        lines = [
            EXPECTED_WARNING,
            f"{model_title(model_name, model_version)}: {what}",
            f"source frame {int(frame) + 1} of {total_frames}; dashed outline: completed hole",
            labels.description,
        ]
        pixels, factor, _ = render_expected(values[i], holes[i], window=window,
                                            invert=invert, lines=lines)
        derivation = (f"Source frame {int(frame) + 1} with the hole (dashed outline) filled by "
                      f"the {what}: the tissue the model expected there; "
                      f"{labels.description}; text band above the image")
        sc = secondary_capture(
            pixels, "MONOCHROME1" if invert else "MONOCHROME2", source=source, index=index,
            frame_number=frame_number, factor=factor, kind="expected", number=i + 1,
            series_number=series_number, description=description, derivation=derivation,
            comments=f"{_WARNING_TEXT}. {derivation}.", model_name=model_name,
            model_version=model_version, output_uid_seed=output_uid_seed,
            laterality=laterality, created=created,
        )
        center, width = _voi(source, index, *window)
        sc.WindowCenter = round(center, 4)
        sc.WindowWidth = round(width, 4)
        slope, intercept = burn.rescale(source, index)
        if (slope, intercept) != (1.0, 0.0):
            sc.RescaleSlope = slope
            sc.RescaleIntercept = intercept
            sc.RescaleType = "US"
        out.append(sc)
    return out
