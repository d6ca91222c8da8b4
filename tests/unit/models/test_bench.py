"""Tests for models.bench: the tiny benchmark runs end to end and reports consistent figures."""

from __future__ import annotations

import json
import time

import pytest
import torch

from models import bench


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_bench_tiny_end_to_end(tmp_path, capsys):
    out = tmp_path / "r.json"
    t0 = time.perf_counter()
    rc = bench.main(["--size", "tiny", "--raw-seconds", "0.2", "--json", str(out)])
    assert time.perf_counter() - t0 < 20
    assert rc == 0
    printed = capsys.readouterr().out
    assert "exact" in printed and "fast" in printed and str(out) in printed
    r = json.loads(out.read_text())
    e, f = r["modes"]["exact"], r["modes"]["fast"]
    assert e["completions"] == e["windows_computed"] * r["model"]["M"]
    assert e["slices_scored"] == e["slices_total"] == 2 * 4
    assert f["completions"] < e["completions"]
    assert r["comparison"]["work_ratio"] == pytest.approx(e["completions"] / f["completions"])
    for mode in ("exact", "fast"):
        assert 0.0 <= r["modes"][mode]["pixel_auroc"] <= 1.0
        assert r["raw"][mode]["completions_per_s"] > 0
        assert r["modes"][mode]["host_peak_gib"] > 0
    assert r["command"][:2] == ["picard-node", "bench"]


def test_bench_rejects_bad_arguments(capsys):
    assert bench.main(["--size", "tiny", "--modes", "turbo"]) == 2
    assert "modes must be" in capsys.readouterr().err
    assert bench.main(["--size", "tiny", "--set", "coarse_factor=0"]) == 2
    with pytest.raises(SystemExit):
        bench.main(["--size", "huge"])


def test_memory_probe_small_volume():
    r = bench.memory_probe(slices=3, rows=300, cols=260, stride=512)
    assert r["shape"] == [3, 300, 260] and r["completions"] > 0
    assert r["host_peak_gib"] >= r["rss_before_gib"] > 0
