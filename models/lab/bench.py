"""Speed and accuracy of the exact and fast inference modes, measured side by side.

:func:`run_bench` runs both modes (:mod:`models.fast`) on the same synthetic DBT volumes
(:func:`models.lab.phantom.make_phantom`, one mass each) in one process and returns the
figures: windows and completions computed, completions/s, seconds per slice and per volume,
peak host and GPU memory, pixel AUROC (inside the breast) and lesion sensitivity at 1/2/4
false positives per volume. The generator's raw forward throughput at the same batch size is
measured in the same run, so the pipeline's overhead is visible. :func:`format_table`
renders the result; the ``picard-node bench`` command line (``workers/bench_cli.py``)
parses the options, prints the table and writes the JSON.

Sizes (:data:`SIZES`):

* ``tiny`` -- a random tiny network and 2 small volumes (seconds; for tests).
* ``small`` (default) -- the default bundle (:func:`models.bundle.default_bundle_path`)
  on 3 volumes of 8 x 192 x 144 px at 0.4 mm.
* ``full`` -- real DBT dimensions (64 x 2560 x 2048 px at 0.1 mm) with the official
  architecture (ngf 32, window 256, hole 128, stride 32) -- untrained weights unless
  ``bundle`` names official ones; hours on a CPU, meant for a GPU.

:func:`memory_probe` streams one full-size uint16 view through :meth:`Picard.score_volume`
with a tiny network and a huge stride and reports the peak host memory.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
import resource
import threading
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from models import bundle as _bundle
from models.fast import MODES, InferenceConfig, runtime
from models.heatmap import centred_mask
from models.lab.evaluate import evaluate_cases
from models.lab.metrics import auroc, sensitivity_at
from models.lab.phantom import Phantom, make_phantom
from models.networks import CompletionNetwork, Critic, he_normal_
from models.picard import Picard, resolve_device

logger = logging.getLogger(__name__)

__all__ = ["SIZES", "TARGETS", "PeakRSS", "format_table", "full_model", "machine_info",
           "make_volumes", "memory_probe", "raw_throughput", "run_bench", "run_mode",
           "tiny_model"]

GIB = float(1 << 30)
FP_RATES = (1.0, 2.0, 4.0)

#: per size: volume shape, spacing, volumes, model
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"slices": 4, "rows": 64, "cols": 48, "spacing": 0.4, "volumes": 2},
    "small": {"slices": 8, "rows": 192, "cols": 144, "spacing": 0.4, "volumes": 3},
    "full": {"slices": 64, "rows": 2560, "cols": 2048, "spacing": 0.1, "volumes": 1},
}

TARGETS = {"work_ratio_min": 20.0, "auroc_delta_max": 0.01, "sens2fp_delta_max": 0.02,
           "overhead_ratio_min": 0.90, "full_view_host_gib_max": 6.0}


# ------------------------------------------------------------------------------ memory


class PeakRSS:
    """Samples this process's resident set size in a thread; ``peak`` in bytes."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def current(self) -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * self._page
        except OSError:  # not Linux: the lifetime maximum is the best we have
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.current())

    def __enter__(self) -> PeakRSS:
        self.peak = self.current()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self.current())


@contextmanager
def _gpu_peak(device: torch.device) -> Iterator[dict[str, float]]:
    out: dict[str, float] = {"gpu_peak_gib": float("nan")}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    try:
        yield out
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            out["gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / GIB


# ------------------------------------------------------------------------------ models/data


def tiny_model(device: str = "cpu", *, window: int = 32, hole: int = 16, stride: int = 8,
               ngf: int = 4, m: int = 3, spacing: float = 0.4, seed: int = 0) -> Picard:
    """A random He-initialised tiny PICARD model (tests, probes)."""
    g = torch.Generator().manual_seed(seed)
    side = max(16, 16 * round(hole / 16))
    nets = [he_normal_(n, generator=g) for n in
            (CompletionNetwork(ngf), Critic(ngf, side), Critic(ngf, 2 * side))]
    card = _bundle.official_card(threshold=1.0)
    card.update(window=window, hole=hole, stride=stride, pixel_spacing_mm=spacing, M=m,
                batch_size=8, training="untrained (bench)", version="bench-tiny")
    return Picard(*nets, card=card, device=device)


def full_model(device: str = "cpu", seed: int = 0) -> Picard:
    """Official architecture and settings with untrained (He-normal) weights."""
    g = torch.Generator().manual_seed(seed)
    nets = [he_normal_(n, generator=g) for n in (CompletionNetwork(32), Critic(32, 128),
                                                  Critic(32, 256))]
    card = _bundle.official_card(threshold=1.0)
    card.update(training="untrained (bench, official architecture)", version="bench-full")
    return Picard(*nets, card=card, device=device)


def make_volumes(size: str, n: int, seed0: int, shape: dict[str, Any]) -> list[Phantom]:
    """``n`` phantoms with one mass each, seeds ``seed0...`` (CC/MLO, densities 0.2-0.8)."""
    out = []
    for s in range(seed0, seed0 + n):
        r = np.random.default_rng(s)
        out.append(make_phantom(seed=s, lesions=1, slices=shape["slices"], rows=shape["rows"],
                                cols=shape["cols"], pixel_spacing_mm=shape["spacing"],
                                view="MLO" if s % 3 == 0 else "CC",
                                density=float(r.uniform(0.2, 0.8))))
    return out


# ------------------------------------------------------------------------------ measurements


def raw_throughput(model: Picard, *, mode: str = "exact", seconds: float = 3.0,
                   min_iters: int = 2) -> dict[str, float]:
    """Completions/s of bare generator forward passes at the pipeline's batch size.

    The batch is ``card["batch_size"] * card["M"]`` random windows with the centred hole,
    dropout as at inference, under the mode's autocast/layout (:func:`models.fast.runtime`).
    """
    card = model.card
    dev = model.device
    batch = card["batch_size"] * card["M"]
    icfg = model.inference_config(mode)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(batch, model.generator.in_channels, card["window"], card["window"],
                    generator=g) * 2 - 1).to(dev)
    mask = centred_mask(card["window"], card["hole"], device=dev)
    model.generator.set_dropout(card["dropout"]["layers"], card["dropout"]["p"])
    xin = x * (1 - mask)
    with runtime(model.generator, dev, icfg):
        if icfg.resolved_channels_last(dev):
            xin = xin.contiguous(memory_format=torch.channels_last)
        model.generator(xin, mask)  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        iters, t0 = 0, time.perf_counter()
        while iters < min_iters or time.perf_counter() - t0 < seconds:
            model.generator(xin, mask)
            iters += 1
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        dt = time.perf_counter() - t0
    return {"batch": batch, "iterations": iters, "seconds": dt,
            "completions_per_s": iters * batch / dt}


def _accuracy(heatmaps: Sequence[np.ndarray], phantoms: Sequence[Phantom]) -> dict[str, float]:
    cases = evaluate_cases(heatmaps, phantoms)
    s = np.concatenate([c.scores for c in cases])
    y = np.concatenate([c.labels for c in cases])
    out = {"pixel_auroc": auroc(s, y)}
    for r, v in sensitivity_at([c.candidates for c in cases], FP_RATES).items():
        out[f"sens@{r:g}fp"] = v
    return out


def run_mode(model: Picard, phantoms: Sequence[Phantom], mode: str,
             switches: dict[str, Any]) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Score every phantom in ``mode``; returns the figures and the heatmaps."""
    heatmaps: list[np.ndarray] = []
    totals: dict[str, float] = {}
    t0 = time.perf_counter()
    with PeakRSS() as rss, _gpu_peak(model.device) as gpu:
        for ph in phantoms:
            heatmaps.append(model.score_volume(ph.volume, pixel_spacing_mm=ph.pixel_spacing_mm,
                                               mode=mode, **(switches if mode == "fast" else {})))
            st = model.last_stats
            assert st is not None
            for k in ("slices_total", "slices_scored", "windows_total", "windows_tissue",
                      "windows_computed", "windows_interpolated", "completions", "seconds",
                      "generator_seconds"):
                totals[k] = totals.get(k, 0) + getattr(st, k)
    wall = time.perf_counter() - t0
    nvol = max(len(phantoms), 1)
    res: dict[str, Any] = {k: (int(v) if float(v).is_integer() and "seconds" not in k else v)
                           for k, v in totals.items()}
    res.update(
        mode=mode, wall_seconds=wall,
        completions_per_s=totals["completions"] / totals["seconds"] if totals["seconds"] else 0.0,
        generator_completions_per_s=(totals["completions"] / totals["generator_seconds"]
                                     if totals["generator_seconds"] else 0.0),
        seconds_per_slice=totals["seconds"] / max(totals["slices_total"], 1),
        seconds_per_volume=totals["seconds"] / nvol,
        host_peak_gib=rss.peak / GIB,
        gpu_peak_gib=gpu["gpu_peak_gib"],
        config=model.last_stats.config if model.last_stats else {},
    )
    return res, heatmaps


def memory_probe(*, slices: int = 64, rows: int = 2560, cols: int = 2048,
                 stride: int = 1024, mode: str = "fast") -> dict[str, Any]:
    """Peak host memory of streaming one full-size uint16 view through ``score_volume``.

    A tiny network (ngf 2) with the official window/hole and a huge stride keeps the
    compute small; the memory is the streaming design's: the uint16 volume, the float32
    output and per-slice buffers.
    """
    model = tiny_model(window=256, hole=128, stride=stride, ngf=2, m=1, spacing=0.1)
    vol = np.empty((slices, rows, cols), np.uint16)
    yy, xx = np.mgrid[0:rows, 0:cols]
    inside = ((yy - rows / 2) / (rows / 2)) ** 2 + (xx / (0.8 * cols)) ** 2 < 1
    rng = np.random.default_rng(0)
    for k in range(slices):  # built slice by slice: no float copy of the volume
        sl = rng.integers(9000, 30000, size=(rows, cols), dtype=np.uint16)
        sl[~inside] = 0
        vol[k] = sl
    del yy, xx, inside
    tracemalloc.start()
    t0 = time.perf_counter()
    with PeakRSS() as rss:
        before = rss.current()
        heat = model.score_volume(vol, pixel_spacing_mm=0.1, value_scale=1 / 65535, mode=mode)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    st = model.last_stats
    return {"shape": [slices, rows, cols], "dtype": "uint16", "mode": mode, "stride": stride,
            "volume_gib": vol.nbytes / GIB, "output_gib": heat.nbytes / GIB,
            "rss_before_gib": before / GIB, "host_peak_gib": rss.peak / GIB,
            "ru_maxrss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB,
            "tracemalloc_peak_gib": traced_peak / GIB,
            "float32_input_estimate_gib": rss.peak / GIB + vol.size * 2 / GIB,
            "seconds": time.perf_counter() - t0,
            "completions": st.completions if st else 0}


def run_bench(*, size: str = "small", volumes: int | None = None, modes: Sequence[str] = MODES,
              device: str = "cpu", bundle: str | None = None, seed0: int = 9000,
              switches: dict[str, Any] | None = None, raw_seconds: float = 3.0,
              slices: int | None = None, rows: int | None = None, cols: int | None = None,
              m: int | None = None, probe: bool = False,
              variants: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Run the benchmark and return the JSON-ready result (see module docstring).

    Parameters
    ----------
    size : {"tiny", "small", "full"}, default "small"
        Volume shape, count and model (:data:`SIZES`).
    volumes, slices, rows, cols : int, optional
        Override the size's number of volumes and their shape.
    modes : sequence of str, default ("exact", "fast")
        Inference modes to run (:data:`models.fast.MODES`).
    device : str, default "cpu"
        ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    bundle : str, optional
        Model bundle folder (default: per size).
    seed0 : int, default 9000
        Seed of the first phantom.
    switches : dict, optional
        Fast-mode switches (:data:`models.fast.INFERENCE_KEYS`).
    raw_seconds : float, default 3.0
        Duration of the raw generator throughput measurement per mode.
    m : int, optional
        Completions per window (default: the card's ``M``).
    probe : bool, default False
        Also run :func:`memory_probe`.
    variants : sequence of dict
        Extra fast-mode switch sets (on top of ``switches``), each run as a mode named
        ``fast[k=v,...]`` and compared with exact, to choose defaults by measurement.

    Returns
    -------
    dict
        JSON-ready: ``machine``, ``model``, ``raw`` and ``modes`` (figures per mode),
        ``comparisons`` (fast vs exact) and ``memory_probe`` when asked.

    Raises
    ------
    ValueError
        For an unknown size, mode, device, switch or ``m < 1``.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    bad = set(modes) - set(MODES)
    if bad or not modes:
        raise ValueError(f"modes must be a non-empty subset of {MODES}, got {list(modes)}")
    switches = dict(switches or {})
    resolve_device(device)
    shape = dict(SIZES[size])
    for k, v in (("slices", slices), ("rows", rows), ("cols", cols), ("volumes", volumes)):
        if v is not None:
            shape[k] = v
    if bundle is not None:
        model = Picard.from_bundle(bundle, device=device)
    elif size == "small":
        model = Picard.from_bundle(None, device=device)
    elif size == "full":
        model = full_model(device)
    else:
        model = tiny_model(device)
    if m is not None:
        if m < 1:
            raise ValueError(f"M must be >= 1, got {m}")
        model.card["M"] = m  # this bench's own model: both modes and the raw measurement
    InferenceConfig.from_card(model.card, mode="fast", **switches)  # validate early
    logger.info("making %d phantoms %s", shape["volumes"], shape)
    phantoms = make_volumes(size, shape["volumes"], seed0, shape)

    result: dict[str, Any] = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info(model.device),
        "size": size, "volume_shape": [shape["slices"], shape["rows"], shape["cols"]],
        "pixel_spacing_mm": shape["spacing"], "volumes": shape["volumes"], "seeds": [
            seed0, seed0 + shape["volumes"] - 1],
        "model": {"version": model.card.get("version"), "training": model.card.get("training"),
                  "window": model.card["window"], "hole": model.card["hole"],
                  "stride": model.card["stride"], "M": model.card["M"],
                  "batch_size": model.card["batch_size"],
                  "ngf": model.card["architecture"]["ngf"],
                  "pixel_spacing_mm": model.card["pixel_spacing_mm"]},
        "switches": switches, "raw": {}, "modes": {}, "targets": dict(TARGETS),
    }
    heat: dict[str, list[np.ndarray]] = {}
    runs: list[tuple[str, str, dict[str, Any]]] = [(mode, mode, switches) for mode in modes]
    for v in variants:
        InferenceConfig.from_card(model.card, mode="fast", **switches, **v)
        name = "fast[" + ",".join(f"{k}={v[k]}" for k in sorted(v)) + "]"
        runs.append((name, "fast", {**switches, **v}))
    for name, mode, sw in runs:
        if mode not in result["raw"]:
            result["raw"][mode] = raw_throughput(model, mode=mode, seconds=raw_seconds)
        figs, heat[name] = run_mode(model, phantoms, mode, sw)
        figs.update(_accuracy(heat[name], phantoms))
        figs["overhead_ratio"] = (figs["completions_per_s"]
                                  / result["raw"][mode]["completions_per_s"])
        result["modes"][name] = figs
    comparisons = {name: _compare(result["modes"]["exact"], result["modes"][name],
                                  heat["exact"], heat[name])
                   for name, mode, _ in runs if mode == "fast" and "exact" in heat}
    if comparisons:
        result["comparisons"] = comparisons
        result["comparison"] = comparisons.get("fast", next(iter(comparisons.values())))
    if probe:
        result["memory_probe"] = memory_probe()
    return result


def _compare(e: dict[str, Any], f: dict[str, Any], he: Sequence[np.ndarray],
             hf: Sequence[np.ndarray]) -> dict[str, float]:
    return {
            "work_ratio": e["completions"] / max(f["completions"], 1),
            "window_ratio": e["windows_computed"] / max(f["windows_computed"], 1),
            "speedup": e["seconds"] / max(f["seconds"], 1e-9),
            "auroc_delta": f["pixel_auroc"] - e["pixel_auroc"],
            "sens2fp_delta": f["sens@2fp"] - e["sens@2fp"],
            "heatmap_correlation": float(np.corrcoef(
                np.concatenate([h.ravel() for h in hf]),
                np.concatenate([h.ravel() for h in he]))[0, 1]),
        }


def machine_info(device: torch.device) -> dict[str, Any]:
    """Platform, Python and torch versions, CPU count and threads, device (and GPU name)."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "torch": torch.__version__, "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def format_table(result: dict[str, Any]) -> str:
    """Human-readable table of :func:`run_bench`'s result."""
    head = (f"{'mode':6} {'windows':>8} {'complet.':>9} {'compl/s':>8} {'raw c/s':>8} "
            f"{'ovh':>5} {'s/slice':>8} {'s/vol':>8} {'host GiB':>8} {'GPU GiB':>7} "
            f"{'AUROC':>6} {'s@1FP':>5} {'s@2FP':>5} {'s@4FP':>5}")
    lines = [f"PICARD bench: size={result['size']} volumes={result['volumes']} "
             f"shape={result['volume_shape']} device={result['machine']['device']} "
             f"model={result['model']['version']}", head, "-" * len(head)]
    for mode, f in result["modes"].items():
        raw = result["raw"][f["mode"]]["completions_per_s"]
        if mode not in ("exact", "fast"):
            lines.append(mode)
            mode = "  ''"
        lines.append(
            f"{mode:6} {f['windows_computed']:>8d} {f['completions']:>9d} "
            f"{f['completions_per_s']:>8.1f} {raw:>8.1f} {f['overhead_ratio']:>5.2f} "
            f"{f['seconds_per_slice']:>8.3f} {f['seconds_per_volume']:>8.2f} "
            f"{f['host_peak_gib']:>8.2f} {f['gpu_peak_gib']:>7.2f} {f['pixel_auroc']:>6.3f} "
            f"{f['sens@1fp']:>5.2f} {f['sens@2fp']:>5.2f} {f['sens@4fp']:>5.2f}")
    for name, c in result.get("comparisons", {}).items():
        lines.append(f"{name} vs exact: {c['work_ratio']:.1f}x fewer completions "
                     f"({c['window_ratio']:.1f}x fewer windows), {c['speedup']:.1f}x faster, "
                     f"AUROC delta {c['auroc_delta']:+.4f}, sens@2FP delta "
                     f"{c['sens2fp_delta']:+.3f}, heatmap r={c['heatmap_correlation']:.3f}")
    p = result.get("memory_probe")
    if p:
        lines.append(f"memory probe {p['shape']} {p['dtype']}: peak host {p['host_peak_gib']:.2f} "
                     f"GiB (volume {p['volume_gib']:.2f} + output {p['output_gib']:.2f}); "
                     f"float32 input estimate {p['float32_input_estimate_gib']:.2f} GiB")
    return "\n".join(lines)
