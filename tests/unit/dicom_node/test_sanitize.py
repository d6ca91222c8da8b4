"""Source headers with invalid values (finding 1 of issue 11): repaired or removed, the
results still encoded and dciodvfy-clean, and no log line quoting a value."""

from __future__ import annotations

import io
import logging

import numpy as np
import pydicom
import pytest

from dicom_node.encode import encode_results
from dicom_node.encode.sanitize import REQUIRED_TYPE2, clean_source_headers
from dicom_node.encode.ko import encode_rejection_note
from dicom_node.standins.dciodvfy import dciodvfy_available, run_dciodvfy
from dicom_node.standins.synthetic import write_bto
from tests.helpers.dicom_data import breast_volume
from tests.helpers.hostile_data import INVALID_VALUE_CORPUS, damage


@pytest.fixture(scope="module")
def source_file(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("src")
    (path,) = write_bto(breast_volume(frames=3), out, laterality="L", view="CC",
                        pixel_spacing_mm=0.1, slice_thickness_mm=1.0, seed=3)
    return path


def _damaged(source_file, edits) -> pydicom.Dataset:
    ds = damage(pydicom.dcmread(source_file), edits)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()), stop_before_pixels=True)


def test_the_unrepaired_value_used_to_stop_encoding(source_file) -> None:
    source = _damaged(source_file, INVALID_VALUE_CORPUS["da-iso-birth-date"])
    from pydicom.valuerep import DA

    with pytest.raises(ValueError, match="Unable to convert"):
        DA(source.PatientBirthDate)  # what highdicom's constructors do with the raw value


@pytest.mark.parametrize("case", sorted(INVALID_VALUE_CORPUS))
def test_each_corpus_case_still_yields_valid_results(case, source_file, tmp_path, caplog):
    edits = INVALID_VALUE_CORPUS[case]
    source = _damaged(source_file, edits)
    heat = np.random.default_rng(0).uniform(0, 2, size=(3, 64, 48)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="dicom_node.encode.sanitize"):
        objects = encode_results([source], heat, threshold=1.5, model_version="t",
                                 output_uid_seed=case, include_sr=True)
    assert len(objects) >= 2
    for i, obj in enumerate(objects):
        path = tmp_path / f"{i}.dcm"
        obj.save_as(path, enforce_file_format=True)
        if dciodvfy_available():
            errors, _ = run_dciodvfy(path)
            assert errors == [], f"{case}: {obj.Modality} {errors}"
        for keyword in REQUIRED_TYPE2:
            assert keyword in obj
    logged = caplog.text
    for keyword, _, value in edits:
        assert keyword in logged, f"{case}: no warning names {keyword}"
        if value and len(value.strip()) > 2:
            assert value.strip() not in logged, f"{case}: the value of {keyword} was logged"
    if dciodvfy_available():  # a rejection note of these objects is valid too
        ko = encode_rejection_note(objects, output_uid_seed=case)
        ko.save_as(tmp_path / "ko.dcm", enforce_file_format=True)
        assert run_dciodvfy(tmp_path / "ko.dcm")[0] == []


def test_repairs_keep_the_meaning_and_never_truncate(source_file) -> None:
    edits = [*INVALID_VALUE_CORPUS["da-iso-birth-date"], *INVALID_VALUE_CORPUS["tm-colons"],
             *INVALID_VALUE_CORPUS["lo-over-long"], *INVALID_VALUE_CORPUS["cs-lower-case-sex"],
             *INVALID_VALUE_CORPUS["ds-units"], *INVALID_VALUE_CORPUS["wrong-vr"][:1]]
    source = _damaged(source_file, edits)
    (clean,), repairs = clean_source_headers([source])
    assert clean.PatientBirthDate == "19610723" and clean.StudyTime == "123005"
    assert not clean.PatientID and clean.PatientSex == "F"  # emptied, not cut to 64 chars
    assert "PatientWeight" not in clean  # type 3: removed
    assert clean["OtherPatientIDs"].VR == "LO" and clean.OtherPatientIDs == "1.2.3"
    actions = {r.keyword: r.action for r in repairs}
    assert actions == {"PatientBirthDate": "repaired", "StudyTime": "repaired",
                       "PatientID": "emptied", "PatientSex": "repaired",
                       "PatientWeight": "removed", "OtherPatientIDs": "repaired"}
    assert "1961" not in " ".join(map(str, repairs))
    # the source itself is left as it was
    assert source.get_item("PatientBirthDate").value.startswith(b"1961-07-23")
