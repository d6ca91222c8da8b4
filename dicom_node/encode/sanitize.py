"""Source headers made safe to copy into result objects: invalid values repaired or removed.

highdicom copies the Patient, General Study, Patient Study, Clinical Trial and Specimen
modules of the source into every result object and converts dates, times and numbers as it
does; one invalid value (a birth date ``1961-07-23`` written as DA, a DS ``70 kg``) used to
stop the whole result after the sender had been told "success". The PACS accepted the
source, so the node must still deliver a result: :func:`clean_source_headers` returns copies
of the source headers in which every standard attribute (top level and inside sequences)
either is valid for its dictionary VR or was repaired or removed, each change logged with
the tag and keyword, never the value.

Rules, per data element (private attributes and bulk data are left alone):

* **Wrong VR** (an explicit-VR file giving another VR than the data dictionary): the text is
  re-checked under the dictionary VR and kept with that VR when valid.
* **DA, TM, DT**: common non-DICOM spellings are repaired (``1961-07-23`` and
  ``1961.07.23`` → ``19610723``, ``12:30:05`` → ``123005``, ISO 8601 date-times);
  anything else invalid is removed.
* **DS, IS**: numbers are rewritten canonically (DS to at most 16 characters, IS ``12.0`` →
  ``12``); anything else is removed.
* **CS**: upper-cased when that makes it valid; **PatientSex** must be ``M``, ``F`` or ``O``.
* **PN**: at most three component groups of five components of at most 64 characters.
* **Other strings** (UI, AE, AS, LO, SH, ST, LT, UC, UT, UR): too long or invalid
  characters → removed. Values are never truncated: a cut patient ID could name another
  patient.
* **Removed** means *emptied* for the type 2 attributes highdicom requires
  (:data:`REQUIRED_TYPE2`) and *deleted* otherwise; required type 2 attributes that are
  missing are added empty.
"""

from __future__ import annotations

import copy
import datetime
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.charset import decode_bytes
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.valuerep import MAX_VALUE_LEN, VALIDATORS, format_number_as_ds

logger = logging.getLogger(__name__)

#: Type 2 attributes every result object copies by name from its first source (highdicom
#: reads them as attributes): emptied, never deleted, and added empty when missing.
REQUIRED_TYPE2: tuple[str, ...] = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName",
)
_REQUIRED_TAGS = {Tag(keyword) for keyword in REQUIRED_TYPE2}
#: VRs whose values are checked here (text VRs); the others are bulk or binary.
_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM",
             "UC", "UI", "UR", "UT"}
#: Text VRs limited to the default character repertoire (decoded as ASCII).
_ASCII_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_DATE = re.compile(r"^(\d{4})[-./](\d{2})[-./](\d{2})$")
_TIME = re.compile(r"^(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,6})?)?$")
_DATETIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(\.\d{1,6})?)?"
                       r"(Z|[+-]\d{2}:?\d{2})?$")
_PATIENT_SEX = {"M", "F", "O"}


@dataclass(frozen=True)
class Repair:
    """One change made to a source header (no value: tag, keyword and what was wrong).

    Attributes
    ----------
    tag : str
        ``"(0010,0030)"``.
    keyword : str
        ``"PatientBirthDate"``.
    action : str
        ``"repaired"``, ``"emptied"``, ``"removed"`` or ``"added empty"``.
    problem : str
        E.g. ``"not a valid DA"``, ``"longer than 16 characters"``, ``"VR LO, expected DA"``.
    """

    tag: str
    keyword: str
    action: str
    problem: str

    def __str__(self) -> str:
        return f"{self.action} {self.tag} {self.keyword}: {self.problem}"


def _tag_text(tag: BaseTag) -> str:
    return f"({tag.group:04X},{tag.element:04X})"


def _valid(vr: str, text: str) -> str | None:
    """Why `text` is not a valid single value of `vr` (``None`` when it is)."""
    if _CONTROL.search(text) and vr not in ("LT", "ST", "UT", "UC"):
        return "holds control characters"
    limit = MAX_VALUE_LEN.get(vr)
    if limit is not None and len(text) > limit:
        return f"longer than {limit} characters"
    if vr == "PN":
        return _pn_problem(text)
    if vr == "IS":
        if not re.fullmatch(r" *[+-]?\d+ *", text) or not -2**31 <= int(text) < 2**31:
            return "not a valid IS"
        return None
    validator = VALIDATORS.get(vr)
    if validator is not None and text:
        ok, _ = validator(vr, text)  # the message quotes the value: not used
        if not ok:
            return f"not a valid {vr}"
    return None


def _pn_problem(text: str) -> str | None:
    groups = text.split("=")
    if len(groups) > 3:
        return "more than three PN component groups"
    for group in groups:
        parts = group.split("^")
        if len(parts) > 5:
            return "more than five PN components"
        if any(len(p) > 64 for p in parts):
            return "a PN component longer than 64 characters"
    return None


def _repair(vr: str, text: str) -> str | None:
    """A valid spelling of `text` as `vr` with the same meaning, or ``None``."""
    text = text.strip(" \x00")
    candidate: str | None = None
    try:
        if vr == "DA" and (m := _DATE.match(text)):
            candidate = datetime.date(*map(int, m.groups())).strftime("%Y%m%d")
        elif vr == "TM" and (m := _TIME.match(text)):
            hh, mm, ss, frac = m.groups()
            candidate = f"{hh}{mm}{ss or ''}{frac or ''}"
        elif vr == "DT" and (m := _DATETIME.match(text)):
            y, mo, d, hh, mm, ss, frac, zone = m.groups()
            datetime.date(int(y), int(mo), int(d))
            offset = "" if zone is None else ("+0000" if zone == "Z" else zone.replace(":", ""))
            candidate = f"{y}{mo}{d}{hh}{mm}{ss or ''}{frac or ''}{offset}"
        elif vr == "DS":
            number = float(text)
            candidate = format_number_as_ds(number) if math.isfinite(number) else None
        elif vr == "IS":
            number = float(text)
            candidate = str(int(number)) if number.is_integer() else None
        elif vr == "CS":
            candidate = text.upper()
        elif vr in ("UI", "AE", "SH", "LO", "PN"):
            candidate = text
    except (ValueError, OverflowError):
        return None
    if candidate is None or _valid(vr, candidate) is not None:
        return None
    return candidate


def _texts(ds: Dataset, tag: BaseTag, elem: Any) -> list[str] | None:
    """The element's values as text, undecoded from the file if need be (``None``: not text)."""
    if isinstance(elem, RawDataElement):
        raw = elem.value
        if raw is None:
            return []
        vr = elem.VR or dictionary_VR(tag)
        try:
            if vr in _ASCII_VRS:
                text = raw.decode("ascii")
            else:
                encodings = getattr(ds, "_character_set", None) or ["iso8859"]
                text = decode_bytes(raw, encodings, set())
        except (UnicodeDecodeError, LookupError, ValueError):
            return None
        text = text.rstrip(" \x00")
        if not text:
            return []
        return text.split("\\") if vr not in ("LT", "ST", "UT", "UR") else [text]
    value = elem.value
    if value is None or value == "":
        return []
    if isinstance(value, (list, MultiValue)):
        return [str(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return None
    return [str(value)]


def _dictionary_vr(tag: BaseTag) -> str | None:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return vr if vr in _TEXT_VRS or vr == "SQ" else None


def _clean_element(ds: Dataset, tag: BaseTag, where: str, repairs: list[Repair]) -> None:
    """Check one element of `ds`; repair, empty or delete it in place."""
    expected = _dictionary_vr(tag)
    elem = ds.get_item(tag)
    if expected is None or elem is None:
        return
    keyword = keyword_for_tag(tag) or "unknown"
    actual = elem.VR or expected
    if expected == "SQ":
        if actual == "SQ":
            for item in ds[tag].value or []:
                _clean_dataset(item, where, repairs)
        return
    textual = actual in _TEXT_VRS or actual == "UN"
    texts = _texts(ds, tag, elem) if textual else None
    problem = None
    if actual not in (expected, "UN"):
        problem = f"VR {actual}, expected {expected}"
    elif texts is None:
        problem = "text that cannot be decoded"
    fixed: list[str] = []
    if texts is not None:
        for text in texts:
            issue = _valid(expected, text.strip(" \x00") if expected != "PN" else text)
            if issue is None and (tag != Tag("PatientSex") or text in _PATIENT_SEX):
                fixed.append(text.strip(" \x00") if expected not in ("LT", "ST", "UT") else text)
                continue
            repaired = _repair(expected, text)
            if repaired is not None and tag == Tag("PatientSex") and repaired not in _PATIENT_SEX:
                repaired = None
            if repaired is None:
                problem = issue or ("not M, F or O" if tag == Tag("PatientSex") else
                                    f"not a valid {expected}")
                break
            problem = problem or issue or f"not a valid {expected}"
            fixed.append(repaired)
    if problem is None:
        if actual == "UN":  # known attribute sent as UN: give it its VR
            _set(ds, tag, expected, fixed)
        return
    entry = dict(tag=_tag_text(tag), keyword=keyword, problem=problem)
    if texts is not None and len(fixed) == len(texts):
        _set(ds, tag, expected, fixed)
        repairs.append(Repair(action="repaired", **entry))
    elif tag in _REQUIRED_TAGS:
        ds[tag] = DataElement(tag, expected, None)
        repairs.append(Repair(action="emptied", **entry))
    else:
        del ds[tag]
        repairs.append(Repair(action="removed", **entry))
    logger.warning("source %s: %s", where, repairs[-1])


def _set(ds: Dataset, tag: BaseTag, vr: str, values: list[str]) -> None:
    value: Any = None if not values else values[0] if len(values) == 1 else values
    ds[tag] = DataElement(tag, vr, value)


def _clean_dataset(ds: Dataset, where: str, repairs: list[Repair]) -> None:
    for tag in list(ds.keys()):
        tag = Tag(tag)
        if tag.is_private or tag.group in (0x0002, 0x7FE0) or tag.element == 0:
            continue
        _clean_element(ds, tag, where, repairs)


def clean_source_headers(source_datasets: Sequence[Dataset]) -> tuple[list[Dataset], list[Repair]]:
    """Copies of the source headers whose attributes are valid for their VRs.

    Parameters
    ----------
    source_datasets : sequence of pydicom.Dataset
        Source headers as read from the spool (not modified).

    Returns
    -------
    datasets : list of pydicom.Dataset
        Deep copies, cleaned by the rules of the module docstring.
    repairs : list of Repair
        Every change, in order (also logged as warnings naming the SOP Instance UID and tag).
    """
    cleaned: list[Dataset] = []
    repairs: list[Repair] = []
    for source in source_datasets:
        ds = copy.deepcopy(source)
        where = str(ds.get("SOPInstanceUID", "") or "unknown instance")
        _clean_dataset(ds, where, repairs)
        for keyword in REQUIRED_TYPE2:
            if keyword not in ds:
                tag = Tag(keyword)
                ds[tag] = DataElement(tag, dictionary_VR(tag), None)
                repairs.append(Repair(_tag_text(tag), keyword, "added empty",
                                      "missing type 2 attribute"))
                logger.warning("source %s: %s", where, repairs[-1])
        cleaned.append(ds)
    return cleaned, repairs
