"""The command line driven in-process: synth, offline score, argument errors."""

from __future__ import annotations

import json

import pydicom
import pytest
from pydicom.uid import ParametricMapStorage, SegmentationStorage

from dicom_node.standins.dciodvfy import dciodvfy_available, run_dciodvfy
from workers.cli import _parse_destination, main


def test_destination_syntax():
    dest = _parse_destination("ORTHANC@127.0.0.1:4242")
    assert (dest.ae_title, dest.host, dest.port) == ("ORTHANC", "127.0.0.1", 4242)
    with pytest.raises(Exception, match="must look like AE@host:port"):
        _parse_destination("ORTHANC:4242")


def test_synth_then_offline_score(tmp_path, capsys):
    exam = tmp_path / "exam"
    assert main(["synth", str(exam), "--seed", "3", "--slices", "3", "--rows", "128",
                 "--cols", "96", "--pixel-spacing", "0.4", "--laterality", "R"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert len(written["files"]) == 1 and (exam / "truth").is_dir()
    assert main(["score", str(exam), "--out", str(tmp_path / "out")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["laterality"] == "R" and summary["shape"] == [3, 128, 96]
    classes = {}
    for path in summary["objects"]:
        ds = pydicom.dcmread(path)
        classes[str(ds.SOPClassUID)] = ds
        assert ds.StudyInstanceUID == pydicom.dcmread(written["files"][0]).StudyInstanceUID
        if dciodvfy_available():
            errors, _ = run_dciodvfy(path)
            assert errors == []
    assert {ParametricMapStorage, SegmentationStorage} <= set(classes)
    # scoring the same input again reuses the result: same objects, same UIDs
    assert main(["score", str(exam), "--out", str(tmp_path / "out")]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["objects"] == summary["objects"] and again["result_id"] == summary["result_id"]


def test_score_without_dicom_fails_cleanly(tmp_path):
    (tmp_path / "empty").mkdir()
    assert main(["score", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2


def test_bench_options_reach_the_benchmark(tmp_path):
    out = tmp_path / "bench.json"
    rc = main(["--log-level", "warning", "bench", "--size", "tiny", "--volumes", "1",
               "--modes", "exact", "--raw-seconds", "0.1", "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["size"] == "tiny" and result["volumes"] == 1
    assert list(result["modes"]) == ["exact"]


def test_unknown_option_of_another_command_is_still_an_error():
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--no-such-option"])
    assert exc.value.code == 2


def test_evaluate_builds_the_shared_exams(tmp_path):
    from models.lab.evaluate import synthetic_exams
    from tests.helpers.tiny_models import tiny_card, tiny_picard

    bundle = tmp_path / "bundle"
    tiny_picard(tiny_card(stride=16, batch_size=5)).save_bundle(bundle)
    out = tmp_path / "eval.json"
    rc = main(["--log-level", "warning", "evaluate", "--model", str(bundle), "--count", "1",
               "--seed", "9000", "--validation-count", "1", "--validation-seed", "5000",
               "--slices", "2", "--rows", "64", "--cols", "48", "--m", "2", "--n-boot", "5",
               "--threads", "1", "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    s = result["settings"]
    assert s["seeds"] == [9000, 9000] and s["validation_seeds"] == [5000, 5000]
    assert s["volume_shape"] == [2, 64, 48] and s["device"] == "cpu"
    exam = synthetic_exams(9000, 1, slices=2, rows=64, cols=48, pixel_spacing_mm=0.4)[0]
    assert s["n_lesions"] == len(exam.lesions) == 1
