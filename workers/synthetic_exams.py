"""A synthetic phantom written as a DICOM exam with its ground truth (demo, synth, tests).

Glue between :mod:`models.lab.phantom` (the arrays) and :mod:`dicom_node.standins.synthetic`
(the DICOM writer); nothing here runs in the node itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import UID, ExplicitVRLittleEndian

from dicom_node.standins.synthetic import write_bto, write_truth_seg
from models.lab.phantom import Phantom

TRUTH_DIR = "truth"
LESIONS_FILE = "lesions.json"


@dataclass(frozen=True)
class SyntheticExam:
    """Where an exam was written.

    Attributes
    ----------
    files : list of Path
        The image instances (one BTO, or one instance per slice).
    truth_seg : Path or None
        The ground-truth Segmentation (``truth/``), None when not written.
    """

    files: list[Path]
    truth_seg: Path | None


def write_exam(phantom: Phantom, exam_dir: Path, *, seed: int, per_slice: bool = False,
               transfer_syntax: UID = ExplicitVRLittleEndian, truth: bool = True
               ) -> SyntheticExam:
    """Write `phantom` as DICOM under `exam_dir`, and its truth under ``exam_dir/truth``.

    Parameters
    ----------
    phantom : Phantom
        The volume and its lesions.
    exam_dir : Path
        Output folder (created).
    seed : int
        Seeds the UIDs (the same seed gives the same UIDs).
    per_slice : bool
        One single-frame instance per slice instead of one multi-frame BTO.
    transfer_syntax : UID
        Explicit VR Little Endian or JPEG 2000 Lossless.
    truth : bool
        Also write the ground-truth SEG and ``lesions.json``.

    Returns
    -------
    SyntheticExam
    """
    exam_dir = Path(exam_dir)
    exam_dir.mkdir(parents=True, exist_ok=True)
    files = write_bto(phantom.volume, exam_dir, laterality=phantom.laterality,
                      view=phantom.view, pixel_spacing_mm=phantom.pixel_spacing_mm,
                      slice_thickness_mm=phantom.slice_thickness_mm, seed=seed,
                      per_slice=per_slice, transfer_syntax=transfer_syntax)
    if not truth:
        return SyntheticExam(files, None)
    truth_dir = exam_dir / TRUTH_DIR
    truth_dir.mkdir(exist_ok=True)
    seg = write_truth_seg(files, phantom.lesion_mask, truth_dir)
    (truth_dir / LESIONS_FILE).write_text(json.dumps(phantom.lesions, indent=2))
    return SyntheticExam(files, seg)
