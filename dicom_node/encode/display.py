"""What viewers need to tell the result series apart and draw them: names, dates, colours.

Measured with OHIF 3.13.2 (README, "What each viewer shows"):

* study browsers cut series descriptions at about 24 characters, so every description starts
  with the model name and the object kind ("PICARD heatmap", "PICARD lesions",
  "PICARD findings") and puts the details after it;
* SEG and SR series are listed by SeriesDate/SeriesTime, so every result series carries both
  (one instant per result: the objects of one result sort together);
* OHIF prints a measurement's unit code after its value: scores carry :data:`SCORE_UNIT`;
* every segment is drawn red unless it has a Recommended Display CIELab Value: the
  prediction is magenta (not a colour of the heatmap's rainbow scale) and the synthetic
  ground truth green.
"""

from __future__ import annotations

import datetime as _dt

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

#: Unit of the scores: the UCUM annotation ``{score}`` (dimensionless). OHIF prints the unit's
#: code value after a number; "2.63 {score}" reads better than "2.63 1" (UCUM "no units").
SCORE_UNIT = Code("{score}", "UCUM", "score")
#: sRGB colour of the predicted "suspected lesion" segment (magenta).
PREDICTION_RGB: tuple[int, int, int] = (255, 0, 255)
#: sRGB colour of the ground-truth segment of synthetic exams (green).
TRUTH_RGB: tuple[int, int, int] = (0, 200, 0)

#: Series kinds of the burned-in objects for viewers without SEG/PM support:
#: "PICARD key images (...)", "PICARD key objects (...)", "PICARD expected (...)".
KEY_IMAGES_KIND = "key images"
KEY_OBJECTS_KIND = "key objects"
EXPECTED_KIND = "expected"

#: Longest Series Description (VR LO).
_LO_MAX = 64


def display_colour(rgb: tuple[int, int, int]) -> hd.color.CIELabColor:
    """The Recommended Display CIELab Value of an sRGB colour.

    Parameters
    ----------
    rgb : tuple of int
        Red, green, blue, each 0..255.

    Raises
    ------
    ValueError
        If a component is outside 0..255.
    """
    if len(rgb) != 3 or any(not 0 <= int(c) <= 255 for c in rgb):
        raise ValueError(f"rgb must be three values in 0..255, got {rgb!r}")
    return hd.color.CIELabColor.from_rgb(*(int(c) for c in rgb))


def series_description(model_name: str, kind: str, detail: str = "") -> str:
    """``"<model> <kind> (<detail>)"``, cut to 64 characters (LO).

    Parameters
    ----------
    model_name : str
        E.g. ``"PICARD"``.
    kind : str
        What the series holds, one word: ``"heatmap"``, ``"lesions"``, ``"findings"``.
    detail : str
        Appended in parentheses when given, e.g. ``"mean CD, image, M=10, exact"``.

    Raises
    ------
    ValueError
        If ``model_name`` or ``kind`` is empty.
    """
    if not model_name or not kind:
        raise ValueError(f"model_name and kind must not be empty, got {model_name!r}, {kind!r}")
    text = f"{model_name} {kind}"
    if detail:
        text = f"{text} ({detail})"
    return text[:_LO_MAX]


def stamp_series(obj: Dataset, when: _dt.datetime) -> None:
    """Set SeriesDate and SeriesTime of a result object to ``when`` (local time)."""
    obj.SeriesDate = when.strftime("%Y%m%d")
    obj.SeriesTime = when.strftime("%H%M%S")


def model_title(model_name: str, model_version: str) -> str:
    """``"PICARD-0.1-synthetic"`` (a version that already names the model) or
    ``"PICARD 1.0"``: how burned-in text and descriptions name the model."""
    if model_version.startswith(model_name):
        return model_version
    return f"{model_name} {model_version}".strip()
