"""Tests for models.lab.bench: the tiny benchmark runs end to end and reports consistent figures."""

from __future__ import annotations

import time

import pytest
import torch

from models.lab import bench


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_bench_tiny_end_to_end():
    t0 = time.perf_counter()
    r = bench.run_bench(size="tiny", raw_seconds=0.2)
    assert time.perf_counter() - t0 < 20
    e, f = r["modes"]["exact"], r["modes"]["fast"]
    assert e["completions"] == e["windows_computed"] * r["model"]["M"]
    assert e["slices_scored"] == e["slices_total"] == 2 * 4
    assert f["completions"] < e["completions"]
    assert r["comparison"]["work_ratio"] == pytest.approx(e["completions"] / f["completions"])
    for mode in ("exact", "fast"):
        assert 0.0 <= r["modes"][mode]["pixel_auroc"] <= 1.0
        assert r["raw"][mode]["completions_per_s"] > 0
        assert r["modes"][mode]["host_peak_gib"] > 0
    table = bench.format_table(r)
    assert "exact" in table and "fast" in table


def test_bench_rejects_bad_arguments():
    with pytest.raises(ValueError, match="modes must be"):
        bench.run_bench(size="tiny", modes=["turbo"])
    with pytest.raises(ValueError, match="size must be"):
        bench.run_bench(size="huge")
    with pytest.raises(ValueError):
        bench.run_bench(size="tiny", switches={"coarse_factor": 0})


def test_memory_probe_small_volume():
    r = bench.memory_probe(slices=3, rows=300, cols=260, stride=512)
    assert r["shape"] == [3, 300, 260] and r["completions"] > 0
    assert r["host_peak_gib"] >= r["rss_before_gib"] > 0
