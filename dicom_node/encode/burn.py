"""Drawing shared by the burned-in result images: windowing, heatmap colours, outlines, text.

The key images (:mod:`~dicom_node.encode.keyimages`) and the "model-expected tissue" images
(:mod:`~dicom_node.encode.expected`) are for viewers that show neither Segmentation nor
Parametric Map, so everything they say is drawn into their pixels:

* the source slice is shown as the source asks (its Window Center/Width after its Rescale
  Slope/Intercept; MONOCHROME1 inverted), else through a robust percentile window over the
  breast (:func:`display_window`);
* images narrower than :data:`MIN_WIDTH` columns are enlarged by an integer factor, pixel
  replication (:func:`upscale_factor`), so the text stays readable;
* the text goes into a black band above the image (:func:`text_band`), never over tissue;
  its font size follows the image width (the font bundled with Pillow, no system fonts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from scipy import ndimage

#: Images narrower than this (columns) are enlarged by pixel replication.
MIN_WIDTH = 512
#: Text colours of the band (sRGB).
WARNING_RGB: tuple[int, int, int] = (255, 220, 0)
TEXT_RGB: tuple[int, int, int] = (255, 255, 255)
#: Heatmap colour scale anchors (blue, cyan, green, yellow, red): no grey, no magenta
#: (magenta is the prediction outline, :data:`~dicom_node.encode.display.PREDICTION_RGB`).
HEAT_ANCHORS: tuple[tuple[int, int, int], ...] = (
    (0, 64, 255), (0, 220, 255), (0, 230, 0), (255, 235, 0), (255, 30, 0),
)
#: Opacity of the heatmap at the lowest and the highest coloured score.
HEAT_ALPHA = (0.35, 0.7)

_SMALLEST_FONT = 6
#: Characters the bundled font lacks, drawn as the nearest ones it has.
_SUBSTITUTES = str.maketrans({"\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-",
                              "\u2212": "-", "\u2018": "'", "\u2019": "'", "\u201c": '"',
                              "\u201d": '"'})


def upscale_factor(cols: int) -> int:
    """Integer enlargement that makes an image at least :data:`MIN_WIDTH` wide (1 if it is)."""
    if cols <= 0:
        raise ValueError(f"cols must be > 0, got {cols}")
    return max(1, math.ceil(MIN_WIDTH / cols))


def upscale(array: np.ndarray, factor: int) -> np.ndarray:
    """Enlarge the first two axes by ``factor`` (pixel replication; values unchanged)."""
    if factor == 1:
        return array
    return np.repeat(np.repeat(array, factor, axis=0), factor, axis=1)


def line_width(width: int) -> int:
    """Outline thickness in pixels for an image ``width`` columns wide."""
    return max(1, round(width / 500))


def _item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """First item of ``sequence`` in the frame's per-frame group, else the shared group."""
    for group, index in (("PerFrameFunctionalGroupsSequence", frame),
                         ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(group)
        if items and index < len(items) and items[index].get(sequence):
            return items[index][sequence].value[0]
    return None


def _first(value: object) -> float:
    """A number, or the first of several (Window Center may hold one per window)."""
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0]
    return float(value)  # type: ignore[arg-type]


def rescale(ds: Dataset, frame: int = 0) -> tuple[float, float]:
    """(slope, intercept) of the source's Modality LUT for ``frame``; (1, 0) if none.

    Read from the Pixel Value Transformation functional group (enhanced objects) or the top
    level (single-frame objects).
    """
    holder = _item(ds, frame, "PixelValueTransformationSequence") or ds
    slope = holder.get("RescaleSlope")
    intercept = holder.get("RescaleIntercept")
    slope_f = _first(slope) if slope not in (None, "") else 1.0
    intercept_f = _first(intercept) if intercept not in (None, "") else 0.0
    if slope_f == 0:
        slope_f = 1.0
    return slope_f, intercept_f


def header_window(ds: Dataset, frame: int = 0) -> tuple[float, float] | None:
    """(center, width) the source states for ``frame`` (first of several), else None."""
    holder = _item(ds, frame, "FrameVOILUTSequence") or ds
    center, width = holder.get("WindowCenter"), holder.get("WindowWidth")
    if center in (None, "") or width in (None, ""):
        return None
    c, w = _first(center), _first(width)
    if not (math.isfinite(c) and math.isfinite(w)) or w < 1:
        return None
    return c, w


def percentile_window(pixels: np.ndarray, monochrome1: bool = False) -> tuple[float, float]:
    """(black, white) stored values: 0.5th and 99.5th percentile over the breast.

    The breast is every pixel brighter than the darkest value (MONOCHROME1: darker than the
    brightest), i.e. the air, typically 0, is left out; all pixels if that leaves too few.
    """
    values = np.asarray(pixels, dtype=np.float64).ravel()
    air = values.max() if monochrome1 else values.min()
    tissue = values[values != air]
    if tissue.size < max(16, values.size // 100):
        tissue = values
    lo, hi = (float(v) for v in np.percentile(tissue, [0.5, 99.5]))
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def display_window(ds: Dataset, frame: int, pixels: np.ndarray) -> tuple[float, float]:
    """(black, white): the stored values shown black and white (before any MONOCHROME1
    inversion), from the header window (:func:`header_window`, :func:`rescale`) or else
    :func:`percentile_window`.

    Parameters
    ----------
    ds : pydicom.Dataset
        Header of the source instance holding the frame.
    frame : int
        0-based frame within ``ds`` (0 for a single-frame instance).
    pixels : numpy.ndarray
        The frame's stored values (used only when the header has no window).
    """
    window = header_window(ds, frame)
    if window is None:
        return percentile_window(pixels, is_monochrome1(ds))
    slope, intercept = rescale(ds, frame)
    center, width = window
    # PS3.3 C.11.2.1.2.1: linear window over [c - 0.5 - (w-1)/2, c - 0.5 + (w-1)/2].
    lo = (center - 0.5 - (width - 1) / 2 - intercept) / slope
    hi = (center - 0.5 + (width - 1) / 2 - intercept) / slope
    lo, hi = min(lo, hi), max(lo, hi)
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def is_monochrome1(ds: Dataset) -> bool:
    """Whether the source is shown inverted (Photometric Interpretation MONOCHROME1)."""
    return str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"


def to_grey8(pixels: np.ndarray, black: float, white: float, invert: bool = False) -> np.ndarray:
    """Stored values windowed to uint8 grey (``black`` → 0, ``white`` → 255)."""
    scaled = (np.asarray(pixels, dtype=np.float32) - black) / max(white - black, 1e-6)
    grey = np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)
    return 255 - grey if invert else grey


def heat_colours(t: np.ndarray) -> np.ndarray:
    """RGB float32 colours of values ``t`` in [0, 1] on the :data:`HEAT_ANCHORS` scale."""
    anchors = np.asarray(HEAT_ANCHORS, dtype=np.float32)
    x = np.clip(np.asarray(t, dtype=np.float32), 0.0, 1.0) * (len(anchors) - 1)
    i = np.minimum(np.floor(x).astype(int), len(anchors) - 2)
    f = (x - i)[..., None]
    return anchors[i] * (1.0 - f) + anchors[i + 1] * f


def blend_heatmap(rgb: np.ndarray, heat: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Colour the pixels of ``rgb`` whose score is ``>= lo``; the others stay as they are.

    Parameters
    ----------
    rgb : numpy.ndarray
        (rows, cols, 3) uint8 image.
    heat : numpy.ndarray
        (rows, cols) scores.
    lo, hi : float
        Scores drawn at the bottom and the top of the colour scale (``hi > lo``).

    Returns
    -------
    numpy.ndarray
        A new (rows, cols, 3) uint8 image.
    """
    out = rgb.copy()
    shown = heat >= lo
    if not shown.any():
        return out
    t = np.clip((heat[shown].astype(np.float32) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    alpha = (HEAT_ALPHA[0] + (HEAT_ALPHA[1] - HEAT_ALPHA[0]) * t)[:, None]
    base = out[shown].astype(np.float32)
    out[shown] = np.clip(np.rint(base * (1.0 - alpha) + heat_colours(t) * alpha), 0, 255
                         ).astype(np.uint8)
    return out


def ring(mask: np.ndarray, thickness: int, *, outside: bool) -> np.ndarray:
    """Outline of a 2D mask, ``thickness`` pixels wide (8-connected).

    ``outside=True``: the pixels just outside the mask (the mask itself stays visible);
    ``False``: its own border pixels (what lies outside stays untouched).
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros_like(mask)
    square = np.ones((3, 3), bool)
    if outside:
        return ndimage.binary_dilation(mask, square, iterations=thickness) & ~mask
    eroded = ndimage.binary_erosion(mask, square, iterations=thickness, border_value=0)
    return mask & ~eroded


def dashes(shape: tuple[int, int], period: int) -> np.ndarray:
    """Boolean (rows, cols): diagonal stripes ``period`` pixels long, for dashed outlines."""
    r, c = np.indices(shape)
    return ((r + c) // max(1, period)) % 2 == 0


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _fit(lines: Sequence[str], width: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The largest font up to ``width / 45`` (at least 12) in which every line fits."""
    size = max(12, width // 45)
    margin = max(2, width // 100)
    while True:
        font = _font(size)
        longest = max(font.getlength(line) for line in lines)
        if longest <= width - 2 * margin or size <= _SMALLEST_FONT:
            return font
        size = max(_SMALLEST_FONT, int(size * min(0.9, (width - 2 * margin) / longest)))


def text_band(lines: Sequence[str], width: int,
              colours: Sequence[tuple[int, int, int]] | None = None) -> np.ndarray:
    """A black band ``width`` pixels wide holding ``lines`` of text, one per line.

    Parameters
    ----------
    lines : sequence of str
        Text lines, top to bottom (a line too long even at the smallest font is cut).
        Typographic dashes and quotes are drawn as ``-``, ``'`` and ``"`` (the font
        bundled with Pillow has none).
    width : int
        Band width in pixels (the image's, after :func:`upscale`).
    colours : sequence of tuple of int, optional
        sRGB colour of each line; default white.

    Returns
    -------
    numpy.ndarray
        (height, width, 3) uint8, anti-aliased text on black.

    Raises
    ------
    ValueError
        If ``lines`` is empty or ``colours`` has another length.
    """
    if not lines:
        raise ValueError("lines is empty")
    colours = list(colours) if colours is not None else [TEXT_RGB] * len(lines)
    if len(colours) != len(lines):
        raise ValueError(f"{len(colours)} colours given for {len(lines)} lines")
    lines = [line.translate(_SUBSTITUTES) for line in lines]
    font = _fit(lines, width)
    margin = max(2, width // 100)
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (11, 2)
    step = ascent + descent + max(1, (ascent + descent) // 4)
    height = 2 * margin + step * len(lines)
    image = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    for k, (line, colour) in enumerate(zip(lines, colours)):
        draw.text((margin, margin + k * step), line, font=font, fill=tuple(colour))
    return np.asarray(image, dtype=np.uint8).copy()


def pixel_spacing(ds: Dataset, frame: int = 0) -> tuple[float, float] | None:
    """(row, column) spacing in mm of the source frame (Pixel Measures or top level)."""
    holder = _item(ds, frame, "PixelMeasuresSequence")
    for source in (holder, ds):
        if source is not None and source.get("PixelSpacing"):
            values = [float(v) for v in source.PixelSpacing]
            if len(values) == 2 and all(v > 0 and math.isfinite(v) for v in values):
                return values[0], values[1]
    return None


def patient_orientation(ds: Dataset, frame: int = 0) -> tuple[str, str] | None:
    """Patient Orientation letters (row direction, column direction) of the source frame.

    The source's own Patient Orientation when it has one, else derived from Image
    Orientation (Patient) (each direction's dominant LPS axis); None if neither is known.
    """
    given = [str(v) for v in (ds.get("PatientOrientation") or [])]
    if len(given) == 2 and all(v and set(v) <= set("APRLHF") for v in given):
        return given[0], given[1]
    holder = _item(ds, frame, "PlaneOrientationSequence") or ds
    iop = holder.get("ImageOrientationPatient")
    if not iop or len(iop) != 6:
        return None
    letters = []
    for vector in (iop[:3], iop[3:]):
        v = [float(x) for x in vector]
        axis = int(np.argmax(np.abs(v)))
        plus, minus = (("L", "R"), ("P", "A"), ("H", "F"))[axis]
        letters.append(plus if v[axis] > 0 else minus)
    return letters[0], letters[1]
