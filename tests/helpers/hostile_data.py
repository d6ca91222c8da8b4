"""Instances a PACS accepts but a strict encoder chokes on, and exams full of PHI markers.

``INVALID_VALUE_CORPUS`` names one kind of damage each (invalid DA/TM/DT/PN/UI/IS/DS values,
over-long strings, wrong VRs, missing type 2 attributes); :func:`damage` writes it into a
data set as raw bytes, exactly as a sender's file would carry it (pydicom would refuse to
build such elements itself). :data:`PHI_MARKERS` and :func:`mark_phi` put unique, greppable
markers in every patient-identifying attribute, as valid and as invalid values.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

#: (keyword, VR written, value written) edits, or (keyword, None, None) to delete.
Edit = tuple[str, str | None, str | None]

INVALID_VALUE_CORPUS: dict[str, list[Edit]] = {
    "da-iso-birth-date": [("PatientBirthDate", "DA", "1961-07-23")],
    "da-impossible": [("StudyDate", "DA", "2024-13-45")],
    "tm-colons": [("StudyTime", "TM", "12:30:05")],
    "tm-impossible": [("StudyTime", "TM", "25:99")],
    "dt-iso": [("AcquisitionDateTime", "DT", "2024-01-01T10:00:00")],
    "pn-seven-components": [("PatientName", "PN", "A^B^C^D^E^F^G")],
    "pn-over-long": [("ReferringPhysicianName", "PN", "X" * 70 + "^Y")],
    "ui-letters": [("SynchronizationFrameOfReferenceUID", "UI", "1.2.abc.4")],
    "is-word": [("SeriesNumber", "IS", "twelve")],
    "ds-units": [("PatientWeight", "DS", "70 kg")],
    "ds-over-long": [("PatientSize", "DS", "1.7500000000000000001")],
    "sh-over-long": [("AccessionNumber", "SH", "ACC-" + "9" * 30)],
    "lo-over-long": [("PatientID", "LO", "P" * 70)],
    "cs-lower-case-sex": [("PatientSex", "CS", "f")],
    "as-words": [("PatientAge", "AS", "61 years")],
    "lo-control-chars": [("InstitutionName", "LO", "General\x01Hospital")],
    "wrong-vr": [("OtherPatientIDs", "UI", "1.2.3"), ("PatientBirthDate", "LO", "19610723")],
    "missing-type2": [(k, None, None) for k in ("PatientName", "PatientID", "PatientBirthDate",
                                                "PatientSex", "StudyDate", "StudyTime",
                                                "StudyID", "AccessionNumber",
                                                "ReferringPhysicianName")],
}


def _raw(ds: Dataset, keyword: str, vr: str, value: str) -> None:
    tag = Tag(keyword)
    data = value.encode("latin-1")
    if len(data) % 2:
        data += b" "
    ds._dict[tag] = RawDataElement(tag, vr, len(data), data, 0, False, True)  # noqa: SLF001


def damage(ds: Dataset, edits: Iterable[Edit]) -> Dataset:
    """Apply corpus `edits` to `ds` in place (raw values, as a sender's file holds them)."""
    for keyword, vr, value in edits:
        if vr is None:
            if keyword in ds:
                del ds[keyword]
        else:
            _raw(ds, keyword, vr, value or "")
    return ds


def damage_file(path: Path, edits: Iterable[Edit], out: Path) -> Path:
    """Write a damaged copy of the Part 10 file `path` to `out` (explicit VR kept)."""
    ds = pydicom.dcmread(path)
    damage(ds, edits)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out


#: Unique markers, as they would be grepped for, per attribute (valid values).
PHI_MARKERS: dict[str, tuple[str, str]] = {
    "PatientName": ("PN", "Zqxname^Vmarkfirst"),
    "PatientID": ("LO", "ZQXPID4711"),
    "PatientBirthDate": ("DA", "19230417"),
    "AccessionNumber": ("SH", "ZQXACC9981"),
    "ReferringPhysicianName": ("PN", "Zqxdoctor^Hmarker"),
    "StudyID": ("SH", "ZQXSTUDY5"),
    "InstitutionName": ("LO", "Zqx Marker Hospital"),
    "OtherPatientIDs": ("LO", "ZQXOTHERID"),
    "PatientAddress": ("LO", "Zqx Marker Street 7"),
    "PatientTelephoneNumbers": ("SH", "ZQX5551234"),
    "PatientComments": ("LT", "Zqx marker comment"),
    "OperatorsName": ("PN", "Zqxoperator^Q"),
    "StudyDescription": ("LO", "Zqx marker study"),
}
#: The same attributes with invalid values that still carry markers.
PHI_MARKERS_INVALID: dict[str, tuple[str, str]] = {
    "PatientName": ("PN", "Zqxbad^A^B^C^D^E^F"),
    "PatientID": ("LO", "ZQXBADPID" + "7" * 60),
    "PatientBirthDate": ("DA", "1923-04-18"),
    "AccessionNumber": ("SH", "ZQXBADACC" + "8" * 20),
    "ReferringPhysicianName": ("PN", "Zqxbaddoc^" + "W" * 70),
    "StudyDate": ("DA", "2031-02-29"),
    "PatientSex": ("CS", "zqx"),
    "PatientAge": ("AS", "ZQX years"),
    "PatientWeight": ("DS", "ZQX kg"),
}


def mark_phi(ds: Dataset, *, invalid: bool = False) -> Dataset:
    """Put :data:`PHI_MARKERS` (and with `invalid` also :data:`PHI_MARKERS_INVALID`) in `ds`."""
    for keyword, (vr, value) in PHI_MARKERS.items():
        _raw(ds, keyword, vr, value)
    if invalid:
        for keyword, (vr, value) in PHI_MARKERS_INVALID.items():
            _raw(ds, keyword, vr, value)
    return ds


def phi_needles() -> list[str]:
    """Every string that must never appear in a log, audit record or status output."""
    needles = set()
    for vr, value in [*PHI_MARKERS.values(), *PHI_MARKERS_INVALID.values()]:
        needles.add(value)
        needles.update(part for part in value.replace("=", "^").split("^") if len(part) >= 5)
    needles.update({"19230417", "1923-04-18", "2031-02-29", "Zqx", "ZQX", "zqx"})
    return sorted(needles)
