"""The README's detection table, from stored ``picard-node evaluate --json`` results.

    python scripts/detection_table.py NAME=RESULT.json [NAME=RESULT.json ...]

One column pair (pixel AUROC with its 95 % CI, lesion sensitivity at 2 FP/volume) per result,
one row per method of any of them (trivial baselines, single completion, every PICARD rule;
"not in this run" where a result lacks it), then the paired differences they share. The README pastes the output between the
``detection-table`` markers; ``tests/unit/scripts/test_detection_table.py`` checks that the
README still shows exactly what the stored results say.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

BEGIN = "<!-- detection-table:begin (scripts/detection_table.py {args}) -->"
END = "<!-- detection-table:end -->"


def _ci(v: Mapping[str, float], signed: bool = False, digits: int = 3) -> str:
    f = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    return f"{f.format(v['value'])} [{f.format(v['lo'])}, {f.format(v['hi'])}]"


def _label(name: str, result: Mapping[str, Any]) -> str:
    spec = result["specs"].get(name, {})
    if spec.get("kind") == "PICARD rule":
        return f"{name} ({spec['rule']} of M={spec['M']}, {spec['mode']})"
    if name.startswith("single"):
        return f"{name} (M=1, dropout off)"
    return spec.get("label", name)


def _geometry(result: Mapping[str, Any]) -> str:
    """What the PICARD rows of one result computed: pixel size, hole, stride, dropout p."""
    spec = next(v for v in result["specs"].values() if v.get("kind") == "PICARD rule")
    mm = spec["pixel_spacing_mm"]
    return (f"model grid {mm:g} mm, window {spec['window_px'] * mm:.1f} mm, hole "
            f"{spec['hole_px'] * mm:.1f} mm, stride {spec['stride_px'] * mm:.1f} mm, "
            f"dropout p={spec['p']:g}")


def table(results: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """Markdown table of ``(column name, evaluate result)`` pairs."""
    names = list(dict.fromkeys(n for _, r in results for n in r["methods"]))
    head = "| method | " + " | ".join(f"pixel AUROC, {c} | sens@2 FP, {c}" for c, _ in results)
    rule = "|---|" + "---|---|" * len(results)
    lines = [head + " |", rule,
             "| *PICARD rows computed with* | "
             + " | ".join(f"*{_geometry(r)}* | " for _, r in results) + " |"]
    for n in names:
        cells = []
        for _, r in results:
            m = r["methods"].get(n)
            if m is None:
                cells += ["not in this run", ""]
                continue
            best = r.get("validation") and r["validation"].get("best_baseline") == n
            auroc = _ci(m["pixel_auroc"])
            cells += [f"**{auroc}** (best baseline on validation)" if best else auroc,
                      _ci(m["sens@2fp"], digits=2)]
        first = next(r for _, r in results if n in r["methods"])
        lines.append(f"| {_label(n, first)} | " + " | ".join(cells) + " |")
    lines += ["", "| paired difference (same volumes) | "
              + " | ".join(f"pixel AUROC, {c} | sens@2 FP, {c}" for c, _ in results) + " |",
              rule]
    pairs = [p for p in results[0][1]["paired"] if all(p in r["paired"] for _, r in results)]
    for p in pairs:
        cells = []
        for _, r in results:
            d = r["paired"][p]
            cells += [_ci(d["pixel_auroc"], signed=True), _ci(d["sens@2fp"], signed=True, digits=2)]
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def block(args: Sequence[str], root: Path = Path(".")) -> str:
    """The README block (markers included) for ``NAME=PATH`` arguments."""
    pairs = []
    for a in args:
        name, _, path = a.partition("=")
        if not path:
            raise ValueError(f"expected NAME=RESULT.json, got {a!r}")
        pairs.append((name, json.loads((root / path).read_text())))
    return "\n".join([BEGIN.format(args=" ".join(args)), "", table(pairs), "", END])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(__doc__)
        return 2
    print(block(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
