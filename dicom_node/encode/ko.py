"""The IHE IOCM rejection note that withdraws result objects a newer result replaces.

A per-slice series that pauses longer than the quiet period is scored twice: once on the
slices that had arrived, once on all of them. The first result set is already in the PACS;
the second one's delivery carries a **Key Object Selection document** (IHE RAD IOCM,
"Rejection Note Stored") that references every object of the first set, titled
(113001, DCM, "Rejected for Quality Reasons").

Why that title (CID 7011 "Rejected for ..." titles): the withdrawn objects are correct for the
pixels they were computed from but incomplete: a result built on half the slices. IOCM's
*quality* rejection hides such instances from regular display and worklists while the archive
keeps them (audit, reproducibility), which is what a superseded automated result needs.
(113037, "Rejected for Patient Safety Reasons") is for instances that must never be used
again (wrong patient, wrong side) and makes archives block retrieval; (113038, "Incorrect
Modality Worklist Entry") for wrong order data; (113039, "Data Retention Policy Expired") for
life-cycle deletion. None of those describes a superseded result.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from dicom_node.encode.common import MANUFACTURER, output_uid

#: IOCM rejection note title used by the node (CID 7011).
REJECTED_FOR_QUALITY_REASONS = Code("113001", "DCM", "Rejected for Quality Reasons")
#: Other IOCM titles, for reference (not used by the node; see the module docstring).
REJECTED_FOR_PATIENT_SAFETY_REASONS = Code("113037", "DCM",
                                           "Rejected for Patient Safety Reasons")
DATA_RETENTION_POLICY_EXPIRED = Code("113039", "DCM", "Data Retention Policy Expired")
#: Modality of the rejection note, and the file-name prefix ``ResultFolder`` sends last.
KO_MODALITY = "KO"


def encode_rejection_note(
    rejected: Sequence[Dataset],
    *,
    output_uid_seed: str,
    model_name: str = "PICARD",
    series_number: int = 999,
    title: Code = REJECTED_FOR_QUALITY_REASONS,
) -> hd.ko.KeyObjectSelectionDocument:
    """A Key Object Selection document that rejects `rejected` (IHE IOCM rejection note).

    Parameters
    ----------
    rejected : sequence of pydicom.Dataset
        Headers of the objects withdrawn (pixel data not needed), all of one study; their
        patient and study attributes are the note's.
    output_uid_seed : str
        Seeds the note's series and instance UIDs (the replacing result's id: re-encoding
        gives the same note).
    model_name : str
        Written in the Key Object Description. Default ``"PICARD"``.
    series_number : int
        Series Number. Default 999 (after every result series, see ``encode.SERIES_OFFSETS``).
    title : pydicom.sr.coding.Code
        Document title from CID 7011. Default :data:`REJECTED_FOR_QUALITY_REASONS`.

    Returns
    -------
    highdicom.ko.KeyObjectSelectionDocument
        References every rejected object in its content and in the Current Requested
        Procedure Evidence Sequence.

    Raises
    ------
    ValueError
        If `rejected` is empty or spans several studies.
    """
    if not rejected:
        raise ValueError("rejected is empty: a rejection note must reference objects")
    studies = {str(ds.StudyInstanceUID) for ds in rejected}
    if len(studies) != 1:
        raise ValueError(f"rejected objects belong to {len(studies)} studies; expected one")
    content = hd.ko.KeyObjectSelection(
        document_title=title,
        referenced_objects=list(rejected),
        description=f"{model_name} result superseded by a result on the complete series",
    )
    return hd.ko.KeyObjectSelectionDocument(
        evidence=list(rejected),
        content=content,
        series_instance_uid=output_uid(output_uid_seed, "ko", "series"),
        series_number=series_number,
        sop_instance_uid=output_uid(output_uid_seed, "ko", "instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        series_description=f"{model_name} rejection note",
    )
