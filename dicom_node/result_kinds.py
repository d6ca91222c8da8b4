"""The kinds of result object the node can write, and which ones each destination gets.

Each kind is named in the configuration (``destinations[].objects``) by its value and in
the result folder by its file-name prefix (``objects/<prefix>_<SOP Instance UID>.dcm``).
Which viewers display which kind is in the README ("What each viewer shows").

IOCM rejection notes (withdrawing an earlier result) are not a configurable kind: a
destination gets the rejection notes with whatever else it gets.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from pathlib import Path


class ResultKind(str, Enum):
    """A kind of result object (its value is the configuration name)."""

    PARAMETRIC_MAP = "parametric-map"
    SEGMENTATION = "segmentation"
    FINDINGS_SR = "findings-sr"
    MAMMOGRAPHY_CAD_SR = "mammography-cad-sr"
    KEY_IMAGES = "key-images"
    KEY_OBJECT_SELECTION = "key-object-selection"
    EXPECTED_TISSUE = "expected-tissue"
    SPREAD_MAP = "spread-map"

    @property
    def prefix(self) -> str:
        """File-name prefix in the result folder's ``objects/``."""
        return _PREFIXES[self]

    @property
    def needs_source_pixels(self) -> bool:
        """Whether encoding it reads the source images' pixels (burned-in images)."""
        return self is ResultKind.KEY_IMAGES


_PREFIXES = {
    ResultKind.PARAMETRIC_MAP: "PM",
    ResultKind.SEGMENTATION: "SEG",
    ResultKind.FINDINGS_SR: "SR",
    ResultKind.MAMMOGRAPHY_CAD_SR: "CADSR",
    ResultKind.KEY_IMAGES: "KEYIMG",
    ResultKind.KEY_OBJECT_SELECTION: "KOS",
    ResultKind.EXPECTED_TISSUE: "EXPECTED",
    ResultKind.SPREAD_MAP: "SPREAD",
}

#: Prefixes of result folders written before kinds had names (the object's Modality:
#: a Parametric Map's is OT).
_LEGACY_PREFIXES = {"OT": "PM"}

#: File-name prefix of IOCM rejection notes (Key Object Selection, modality KO): sent last,
#: to every destination.
REJECTION_NOTE_PREFIX = "KO"

#: What a destination gets when its configuration names nothing: the objects every
#: DICOM-SEG-capable viewer shows (heatmap, lesion segmentation, findings report).
DEFAULT_KINDS: tuple[ResultKind, ...] = (ResultKind.PARAMETRIC_MAP, ResultKind.SEGMENTATION,
                                         ResultKind.FINDINGS_SR)


def object_file_name(kind: ResultKind | None, sop_instance_uid: str) -> str:
    """``<prefix>_<uid>.dcm``; ``kind`` None names a rejection note."""
    prefix = REJECTION_NOTE_PREFIX if kind is None else kind.prefix
    return f"{prefix}_{sop_instance_uid}.dcm"


def kind_of(path: Path | str) -> ResultKind | None:
    """The kind of a result object file from its name; None for a rejection note.

    Raises
    ------
    ValueError
        If the name has no known prefix.
    """
    prefix = Path(path).name.split("_", 1)[0]
    prefix = _LEGACY_PREFIXES.get(prefix, prefix)
    if prefix == REJECTION_NOTE_PREFIX:
        return None
    for kind, known in _PREFIXES.items():
        if known == prefix:
            return kind
    raise ValueError(f"result object file {Path(path).name!r} has no known kind prefix")


def union(kind_lists: Iterable[Iterable[ResultKind]]) -> list[ResultKind]:
    """Every kind named in any of the lists, in :class:`ResultKind` order."""
    wanted = {ResultKind(k) for kinds in kind_lists for k in kinds}
    return [k for k in ResultKind if k in wanted]
