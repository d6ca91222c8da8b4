"""Synthetic exams and result checks shared by the integration tests."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import ParametricMapStorage, SegmentationStorage

from dicom_node.standins.dciodvfy import run_dciodvfy
from models.lab.phantom import make_phantom
from workers.synthetic_exams import write_exam

PM_SOP_CLASS = ParametricMapStorage
SEG_SOP_CLASS = SegmentationStorage


@dataclass
class Exam:
    files: list[Path]
    study_uid: str
    series_uid: str
    frames: int
    rows: int
    cols: int


def make_exam(out: Path, *, seed: int, per_slice: bool = False, transfer_syntax=None,
              laterality: str = "L", slices: int = 4, rows: int = 160, cols: int = 112) -> Exam:
    """A small synthetic DBT exam (0.4 mm pixels, the default bundle's spacing)."""
    phantom = make_phantom(seed=seed, lesions=1, slices=slices, rows=rows, cols=cols,
                           laterality=laterality, pixel_spacing_mm=0.4,
                           lesion_diameter_mm=(12.0, 20.0))
    kwargs = {} if transfer_syntax is None else {"transfer_syntax": transfer_syntax}
    files = write_exam(phantom, out, seed=seed, per_slice=per_slice, truth=False, **kwargs).files
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    return Exam(files, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                phantom.volume.shape[0], phantom.volume.shape[1], phantom.volume.shape[2])


def wait_for_results(orthanc, exam: Exam, dest: Path, timeout: float = 300) -> dict[str, list]:
    """Poll Orthanc's REST API until a SEG and a Parametric Map of the study are there."""
    dest.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    by_class: dict[str, list] = {}
    settled = False
    while time.monotonic() < deadline:
        by_class = {}
        for inst in orthanc.instances_of_study(exam.study_uid):
            path = orthanc.download(inst["ID"], dest / f"{inst['ID']}.dcm")
            ds = pydicom.dcmread(path)
            by_class.setdefault(str(ds.SOPClassUID), []).append((path, ds))
        if PM_SOP_CLASS in by_class and SEG_SOP_CLASS in by_class:
            if settled:
                return by_class
            # let the rest of the delivery (the SR) and any duplicate arrive, then count again
            settled = True
            time.sleep(2.0)
            continue
        time.sleep(1.0)
    raise AssertionError(f"no SEG + Parametric Map in Orthanc after {timeout} s; got {list(by_class)}")


def check_results(by_class: dict[str, list], exam: Exam) -> None:
    """One SEG and one PM, on the source grid, referencing the source, dciodvfy-clean."""
    assert len(by_class[PM_SOP_CLASS]) == 1, "Parametric Map delivered more than once"
    assert len(by_class[SEG_SOP_CLASS]) == 1, "Segmentation delivered more than once"
    for sop_class in (PM_SOP_CLASS, SEG_SOP_CLASS):
        path, ds = by_class[sop_class][0]
        assert ds.StudyInstanceUID == exam.study_uid
        assert ds.SeriesInstanceUID != exam.series_uid
        assert (ds.Rows, ds.Columns) == (exam.rows, exam.cols)
        referenced = {s.SeriesInstanceUID for s in ds.ReferencedSeriesSequence}
        assert exam.series_uid in referenced
        errors, _ = run_dciodvfy(path)
        assert errors == [], f"dciodvfy errors in {sop_class}: {errors}"
    _, pm = by_class[PM_SOP_CLASS][0]
    assert int(pm.NumberOfFrames) == exam.frames
