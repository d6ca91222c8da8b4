"""The README's detection tables say exactly what the stored evaluation results say."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _script():
    spec = importlib.util.spec_from_file_location("detection_table",
                                                  ROOT / "scripts" / "detection_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _blocks(text: str) -> list[tuple[list[str], str]]:
    pattern = re.compile(r"<!-- detection-table:begin \(scripts/detection_table\.py (.*?)\) -->"
                         r".*?<!-- detection-table:end -->", re.S)
    return [(m.group(1).split(), m.group(0)) for m in pattern.finditer(text)]


def test_readme_detection_tables_match_the_stored_results() -> None:
    script = _script()
    blocks = _blocks((ROOT / "README.md").read_text())
    assert blocks, "the README has no detection table"
    for args, shown in blocks:
        assert shown == script.block(args, ROOT), f"README table for {args} is stale"
        for arg in args:
            result = json.loads((ROOT / arg.partition("=")[2]).read_text())
            st = result["settings"]
            # the protocol the README's command documents: whole volumes, seeds 9000+ with
            # the best baseline chosen on seeds 5000+, M = 10
            assert st["whole_volumes"] and st["seeds"][0] == 9000 and st["m"] == 10
            assert st["validation_seeds"][0] == 5000


def test_table_lists_every_shared_row_with_its_ci(tmp_path: Path) -> None:
    script = _script()
    ci = {"value": 0.5, "lo": 0.4, "hi": 0.6}
    spec = {"kind": "PICARD rule", "rule": "min", "M": 10, "mode": "exact", "p": 0.5,
            "pixel_spacing_mm": 0.8, "window_px": 64, "hole_px": 32, "stride_px": 6}
    result = {"methods": {"raw intensity": {"pixel_auroc": ci, "sens@2fp": ci},
                          "MCD image": {"pixel_auroc": ci, "sens@2fp": ci}},
              "specs": {"raw intensity": {"label": "raw intensity: pixel value"},
                        "MCD image": spec},
              "paired": {"MCD image - raw intensity": {"pixel_auroc": ci, "sens@2fp": ci}},
              "validation": {"best_baseline": "raw intensity"}}
    (tmp_path / "r.json").write_text(json.dumps(result))
    text = script.block(["new=r.json"], tmp_path)
    assert "| MCD image (min of M=10, exact) | 0.500 [0.400, 0.600] | 0.50 [0.40, 0.60] |" in text
    assert "**0.500 [0.400, 0.600]** (best baseline on validation)" in text
    assert "hole 25.6 mm, stride 4.8 mm, dropout p=0.5" in text
    assert "| MCD image - raw intensity | +0.500 [+0.400, +0.600] |" in text
