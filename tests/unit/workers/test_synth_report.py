"""``picard-node synth --report``: measured realism figures of synthetic exams."""

from __future__ import annotations

import json

from workers.cli import main

TINY = ["--slices", "6", "--rows", "200", "--cols", "160", "--pixel-spacing", "0.4",
        "--lesion-diameter", "8", "12"]


def test_report_only_prints_per_exam_figures_and_medians(tmp_path, capsys):
    out = tmp_path / "nothing"
    assert main(["synth", str(out), "--seed", "4", "--count", "2", "--report-only",
                 "--birads", "c", *TINY]) == 0
    result = json.loads(capsys.readouterr().out)
    assert not out.exists()  # --report-only writes no DICOM
    assert [e["seed"] for e in result["exams"]] == [4, 5]
    for exam in result["exams"]:
        report = exam["report"]
        assert report["birads"] == "c" and report["shape"] == [6, 200, 160]
        assert "files" not in exam and exam["seconds"] > 0
        assert len(report["masses"]) == 1
    median = result["median"]
    assert {"slice_beta", "mass_contrast", "mass_core_above_p99", "glandular_fraction",
            "seconds"} <= set(median)
    assert median["density"] is not None


def test_report_with_one_exam_also_writes_it(tmp_path, capsys):
    exam = tmp_path / "exam"
    assert main(["synth", str(exam), "--seed", "2", "--report", "--distortion",
                 "--calcifications", *TINY]) == 0
    written = json.loads(capsys.readouterr().out)
    assert len(written["files"]) == 1 and (exam / "truth").is_dir()
    assert written["lesions"] == 3
    kinds = [m["kind"] for m in written["report"]["masses"]]
    assert len(kinds) == 1  # figures are for masses; the other lesions are in lesions.json
    lesions = json.loads((exam / "truth" / "lesions.json").read_text())
    assert {les["kind"] for les in lesions} >= {"calcifications", "distortion"}


def test_density_and_birads_together_fail_cleanly(tmp_path):
    assert main(["synth", str(tmp_path / "x"), "--report-only", "--density", "0.3",
                 "--birads", "a", *TINY]) == 2
