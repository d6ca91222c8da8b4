"""``picard-node bench``: the command line of the inference benchmark.

Speed and accuracy of the exact and fast inference modes on this machine. The measurements
are :func:`models.lab.bench.run_bench` (see its module for the sizes and the figures); this
module only parses the options, prints the table and writes the result as JSON, by default
to ``benchmarks/results/<device>-<cores>core-<date>-<size>.json``.
:func:`run_bench_command` is called by ``workers.cli`` with everything typed after
``bench``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from models.lab.bench import SIZES, format_table, run_bench

__all__ = ["build_bench_parser", "run_bench_command"]

PROG = "picard-node bench"
RESULTS_DIR = Path("benchmarks/results")


def build_bench_parser() -> argparse.ArgumentParser:
    """The parser of ``picard-node bench`` options.

    Returns
    -------
    argparse.ArgumentParser
        Options: ``--size``, ``--volumes``, ``--slices``, ``--rows``, ``--cols``, ``--modes``,
        ``--device``, ``--bundle``, ``--seed``, ``--threads``, ``--M``, ``--raw-seconds``,
        ``--set``, ``--variant``, ``--memory-probe`` and ``--json``.
    """
    p = argparse.ArgumentParser(
        prog=PROG, description="Speed and accuracy of the exact and fast inference modes.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="small",
                   help="tiny (tests), small (default bundle, 8x192x144 px), full (64x2560x2048)")
    p.add_argument("--volumes", type=int, help="number of synthetic volumes (default per size)")
    p.add_argument("--slices", type=int, help="override slices per volume")
    p.add_argument("--rows", type=int, help="override rows per slice")
    p.add_argument("--cols", type=int, help="override columns per slice")
    p.add_argument("--modes", default="exact,fast", help="comma list of exact,fast")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bundle", help="model bundle folder (default: per size)")
    p.add_argument("--seed", type=int, default=9000, help="first phantom seed")
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    p.add_argument("--M", type=int, dest="m", help="completions per window (default: card)")
    p.add_argument("--raw-seconds", type=float, default=3.0,
                   help="duration of the raw generator throughput measurement")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="fast-mode switch, e.g. --set slice_step=2 --set coarse_factor=1")
    p.add_argument("--variant", action="append", default=[], metavar="K=V[,K=V]",
                   help="also run fast mode with these switches (repeatable), e.g. "
                   "--variant slice_step=2,coarse_factor=3")
    p.add_argument("--memory-probe", action="store_true",
                   help="also stream a full-size uint16 view with a tiny network")
    p.add_argument("--json", type=Path, help="output JSON (default benchmarks/results/"
                   "<device>-<cores>core-<date>-<size>.json)")
    return p


def run_bench_command(argv: list[str]) -> int:
    """Run ``picard-node bench`` with the options typed after ``bench``.

    Parameters
    ----------
    argv : list of str
        The options (e.g. ``["--size", "tiny", "--json", "r.json"]``).

    Returns
    -------
    int
        Exit status: 0 on success, 2 for a bad option value (the message on stderr).

    Raises
    ------
    SystemExit
        From argparse, for unknown options or ``--help``.
    """
    args = build_bench_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = run_bench(size=args.size, volumes=args.volumes, device=args.device,
                           modes=[m.strip() for m in args.modes.split(",") if m.strip()],
                           bundle=args.bundle, seed0=args.seed, switches=_parse_set(args.set),
                           raw_seconds=args.raw_seconds, slices=args.slices, rows=args.rows,
                           cols=args.cols, m=args.m, probe=args.memory_probe,
                           variants=[_parse_set(v.split(",")) for v in args.variant])
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    result["command"] = ["picard-node", "bench", *argv]
    print(format_table(result))
    path = args.json
    if path is None:
        dev = result["machine"]["device"].split(":")[0]
        path = RESULTS_DIR / (
            f"{dev}-{os.cpu_count()}core-{_dt.date.today().isoformat()}-{args.size}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"wrote {path}")
    return 0


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> ``{k: v}`` with JSON values where they parse (``2``, ``true``)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out
