"""Labels that name exactly what was computed: rule, space, M, p, exact or fast mode.

The analyze stage records the model's scoring description (``Picard.scoring_description``)
in the result summary; :class:`ScoreLabels` turns it into the strings and codes the result
objects carry (Parametric Map content label and real-world value mapping, Segmentation
description and algorithm parameters, SR measurement concept), within the VR limits
(CS 16 characters, LO 64, SH 16).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.sr.coding import Code

#: Private coding scheme of the measurement concepts.
CODING_SCHEME = "99PICARD"

_RULE_CODES = {"min": "MCD", "mean": "MEANCD", "median": "MEDCD"}
_RULE_NAMES = {"min": "minimum completion distance", "mean": "mean completion distance",
               "median": "median completion distance"}
_SPACE_CODES = {"image": "IMAGE", "feature": "FEAT"}
_RULE_SHORT = {"min": "MCD", "mean": "mean CD", "median": "median CD"}


def _number(value: Any) -> str:
    return f"{float(value):g}"


@dataclass(frozen=True)
class ScoreLabels:
    """Names of one scoring rule, for every object that carries the score.

    Attributes
    ----------
    rule : str
        ``min``, ``mean`` or ``median`` over the M completion distances; ``""`` if unknown.
    space : str
        ``image`` or ``feature``; ``""`` if unknown.
    m : int
        Completions per window (0 if unknown).
    p : float
        Dropout probability.
    mode : str
        ``exact`` or ``fast``.
    slice_step : int
        Every ``slice_step``-th slice scored (1 in exact mode).
    """

    rule: str = ""
    space: str = ""
    m: int = 0
    p: float = 0.0
    mode: str = ""
    slice_step: int = 1

    @classmethod
    def from_summary(cls, scoring: Mapping[str, Any] | None) -> ScoreLabels:
        """From the ``scoring`` entry of a result summary (None: not recorded).

        Raises
        ------
        ValueError
            If the rule or space is not one this node knows.
        """
        if not scoring:
            return cls()
        rule, space = str(scoring["rule"]), str(scoring["space"])
        if rule not in _RULE_CODES or space not in _SPACE_CODES:
            raise ValueError(f"unknown scoring rule {rule!r} / space {space!r}; expected one of "
                             f"{sorted(_RULE_CODES)} / {sorted(_SPACE_CODES)}")
        return cls(rule=rule, space=space, m=int(scoring["M"]), p=float(scoring["p"]),
                   mode=str(scoring["mode"]), slice_step=int(scoring.get("slice_step", 1)))

    @property
    def known(self) -> bool:
        """Whether the scoring rule was recorded."""
        return bool(self.rule)

    @property
    def content_label(self) -> str:
        """Code string (CS, <= 16 characters), e.g. ``MEANCD_IMAGE_M10``."""
        if not self.known:
            return "PICARD_SCORE"
        return f"{_RULE_CODES[self.rule]}_{_SPACE_CODES[self.space]}_M{self.m}"[:16]

    @property
    def description(self) -> str:
        """One line (LO, <= 64), e.g. ``mean completion distance, image, M=10 p=0.5, exact``."""
        if not self.known:
            return "PICARD anomaly score (scoring rule not recorded)"
        return (f"{_RULE_NAMES[self.rule]}, {self.space}, M={self.m} p={_number(self.p)}, "
                f"{self.mode}")[:64]

    @property
    def short(self) -> str:
        """A few words for viewers that cut long text, e.g. ``mean CD, image, M=10, exact``."""
        if not self.known:
            return "rule not recorded"
        return f"{_RULE_SHORT[self.rule]}, {self.space}, M={self.m}, {self.mode}"

    @property
    def max_concept(self) -> Code:
        """SR concept of a finding's highest score, e.g. ``Max mean CD (image)``.

        Short because OHIF draws ``<meaning>: <value> <unit>`` beside the outline and cuts
        it at the viewport edge: rule and space (and ``fast`` when it was), while M, p and
        the mode are in the SR's algorithm parameters.
        """
        if not self.known:
            return Code("MAXSCORE", CODING_SCHEME, "Max PICARD score")
        value = f"MAX{_RULE_CODES[self.rule]}_{_SPACE_CODES[self.space]}"[:16]
        detail = self.space if self.mode != "fast" else f"{self.space}, fast"
        return Code(value, CODING_SCHEME, f"Max {_RULE_SHORT[self.rule]} ({detail})")

    def algorithm_parameters(self, threshold: float | None = None) -> dict[str, str]:
        """Algorithm Parameters of the Algorithm Identification macro."""
        params = {"rule": self.rule or "not recorded", "space": self.space or "not recorded",
                  "M": str(self.m), "p": _number(self.p), "mode": self.mode or "not recorded",
                  "slice_step": str(self.slice_step)}
        if threshold is not None:
            params["threshold"] = _number(threshold)
        return params


#: Unit of the completion spread: the slice intensity the model works on (stored value /
#: maximum), dimensionless.
SPREAD_UNIT = Code("{intensity}", "UCUM", "slice intensity")


@dataclass(frozen=True)
class SpreadLabels:
    """Names of the completion-spread map (how much the M dropout completions disagree).

    Built from the result summary's ``spread`` entry (``Picard.spread_description``).

    Attributes
    ----------
    statistic : str
        What was computed per window, e.g. "mean over the hole of the per-pixel standard
        deviation over M completions".
    space : str
        ``image`` (the completions' pixels).
    m : int
        Completions per window.
    p : float
        Dropout probability.
    mode : str
        ``exact`` or ``fast``.
    """

    statistic: str
    space: str
    m: int
    p: float
    mode: str

    @classmethod
    def from_summary(cls, spread: Mapping[str, Any]) -> SpreadLabels:
        """From the ``spread`` entry of a result summary."""
        return cls(statistic=str(spread["statistic"]), space=str(spread.get("space", "image")),
                   m=int(spread["M"]), p=float(spread["p"]), mode=str(spread["mode"]))

    @property
    def content_label(self) -> str:
        """Code string (CS, <= 16), e.g. ``SPREAD_SD_M10``."""
        return f"SPREAD_SD_M{self.m}"[:16]

    @property
    def description(self) -> str:
        """One line (LO, <= 64), e.g. ``completion spread (SD), M=10 p=0.5, exact``."""
        return f"completion spread (SD of M completions), M={self.m} p={_number(self.p)}, " \
               f"{self.mode}"[:64]

    @property
    def short(self) -> str:
        """A few words, e.g. ``SD of M=10, exact``."""
        return f"SD of M={self.m}, {self.mode}"
