"""Tests for workers.bench_cli: ``picard-node bench`` options, table, JSON and exit status."""

from __future__ import annotations

import json

import pytest
import torch

from workers.bench_cli import build_bench_parser, run_bench_command


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_bench_command_tiny_end_to_end(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = run_bench_command(["--size", "tiny", "--raw-seconds", "0.2", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "exact" in printed and "fast" in printed and str(out) in printed
    r = json.loads(out.read_text())
    assert set(r["modes"]) == {"exact", "fast"}
    assert r["command"] == ["picard-node", "bench", "--size", "tiny", "--raw-seconds", "0.2",
                            "--json", str(out)]


def test_bench_command_rejects_bad_arguments(capsys):
    assert run_bench_command(["--size", "tiny", "--modes", "turbo"]) == 2
    assert "modes must be" in capsys.readouterr().err
    assert run_bench_command(["--size", "tiny", "--set", "coarse_factor=0"]) == 2
    assert run_bench_command(["--size", "tiny", "--set", "coarse_factor"]) == 2
    assert "--set expects KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_bench_command(["--size", "huge"])


def test_bench_parser_reads_switches_and_variants():
    args = build_bench_parser().parse_args(["--set", "slice_step=2", "--variant",
                                            "coarse_factor=1,first_samples=10", "--M", "3"])
    assert args.set == ["slice_step=2"] and args.variant == ["coarse_factor=1,first_samples=10"]
    assert args.m == 3 and args.size == "small" and args.modes == "exact,fast"
