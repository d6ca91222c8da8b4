"""``picard-node demo``: the whole product on one machine in one command.

A synthetic exam is sent with a C-STORE client to ``picard-node serve`` (embedded worker, no
Redis); the results go to a local archive standing in for the PACS; the demo prints a summary
and writes PNG previews of the Parametric Map over the slices with the highest scores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
from pynetdicom.sop_class import ParametricMapStorage, SegmentationStorage

from dicom_node.scu import send_datasets
from dicom_node.standins.archive import LocalArchive
from dicom_node.standins.preview import write_previews
from dicom_node.encode import ScoreLabels
from dicom_node.results import ResultFolder, results_root
from models.lab.phantom import make_phantom
from workers.processes import terminate
from workers.synthetic_exams import write_exam


def parametric_map_values(ds: pydicom.Dataset) -> np.ndarray:
    """Decode a Parametric Map of a multi-frame source to model units, in source frame order.

    Values go through the Real World Value Mapping; frames are put in the order of the
    source frames they reference (the map stores them along the slice normal).
    """
    pixels = ds.pixel_array.astype(np.float32)
    if pixels.ndim == 2:
        pixels = pixels[None]
    shared = ds.SharedFunctionalGroupsSequence[0]
    if "RealWorldValueMappingSequence" in shared:
        mappings = [shared.RealWorldValueMappingSequence[0]] * pixels.shape[0]
    else:
        mappings = [f.RealWorldValueMappingSequence[0] for f in ds.PerFrameFunctionalGroupsSequence]
    out = np.empty_like(pixels)
    for i, m in enumerate(mappings):
        out[i] = pixels[i] * float(m.RealWorldValueSlope) + float(m.RealWorldValueIntercept)
    frames = [int(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
              for f in ds.PerFrameFunctionalGroupsSequence]
    return out[np.argsort(frames)]


#: The demo breast: a right CC of real physical size at 0.1 mm (chest wall to nipple 80 mm,
#: 120 mm wide, 40 mm compressed, BI-RADS b) with one 10-20 mm mass.
DEMO_BREAST = dict(lesions=1, laterality="R", view="CC", birads="b", breast_size_mm=(80.0, 120.0),
                   thickness_mm=40.0, pixel_spacing_mm=0.1, lesion_diameter_mm=(10.0, 20.0))
#: Inference mode of the demo's node: fast, so the demo stays within minutes on two CPU
#: cores; every result object says "fast" (the card's own mode is exact).
DEMO_INFERENCE_MODE = "fast"


def run_demo(out: Path, *, seed: int = 7, timeout: float = 900) -> int:
    """Run the demo; returns a process exit code."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    phantom = make_phantom(seed=seed, **DEMO_BREAST)
    files = write_exam(phantom, out / "exam", seed=seed).files
    t_synth = time.monotonic() - t0
    print(f"synthetic exam: {files[0]} ({phantom.volume.shape[0]} slices "
          f"{phantom.volume.shape[1]}x{phantom.volume.shape[2]}, laterality "
          f"{phantom.laterality}, {len(phantom.lesions)} lesions) in {t_synth:.1f} s")

    archive = LocalArchive(out / "pacs", ae_title="LOCALPACS")
    archive.start()
    node_log = open(out / "node.log", "w")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICARD_")}
    node = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "serve", "--port", "0", "--ae-title", "PICARD",
         "--spool-dir", str(out / "spool"), "--quiet-seconds", "2",
         "--inference-mode", DEMO_INFERENCE_MODE,
         "--destination", f"LOCALPACS@127.0.0.1:{archive.port}=all"],
        stdout=subprocess.PIPE, stderr=node_log, text=True, env=env)
    try:
        line = node.stdout.readline()
        if not line:
            print(f"node did not start; see {out / 'node.log'}")
            return 1
        port = json.loads(line)["port"]
        print(f"node listening on port {port} (embedded worker); local PACS on {archive.port}")
        t_send = time.monotonic()
        send_datasets(files, ae_title="PICARD", host="127.0.0.1", port=port,
                      calling_ae_title="DEMOSCU")
        print(f"sent {len(files)} instance(s) with C-STORE in {time.monotonic() - t_send:.1f} s")
        results = _wait_for_results(archive, out / "spool", timeout)
        t_done = time.monotonic()
        if results is None:
            print(f"no results after {timeout:.0f} s; see {out / 'node.log'}")
            return 1
    finally:
        terminate(node, 30)
        archive.stop()
        node_log.close()

    pm, seg = results
    heatmap = parametric_map_values(pm)
    (result_dir,) = [p for p in results_root(out / "spool").iterdir() if p.is_dir()]
    summary = ResultFolder(result_dir).summary()
    previews = write_previews(phantom.volume, heatmap, out / "previews",
                              threshold=summary["threshold"], truth=phantom.lesion_mask)
    seg_frames = int(getattr(seg, "NumberOfFrames", 0))
    print("\n=== PICARD demo summary ===")
    print(f"model:                 {summary['model_version']} (threshold {summary['threshold']:.4g})")
    print(f"score:                 {ScoreLabels.from_summary(summary.get('scoring')).description}")
    print(f"max score:             {summary['max_score']:.4g}")
    print(f"frames with findings:  {summary['frames_with_findings'] or 'none'}")
    print(f"SEG frames stored:     {seg_frames}")
    truth_frames = [int(z) + 1 for z in np.flatnonzero(phantom.lesion_mask.any(axis=(1, 2)))]
    print(f"truth lesion frames:   {truth_frames[0]}-{truth_frames[-1]}" if truth_frames else
          "truth lesion frames:   none")
    print(f"timings:               synth {t_synth:.1f} s, load {summary['seconds']['load']:.1f} s,"
          f" score {summary['seconds']['score']:.1f} s, send→results {t_done - t_send:.1f} s")
    print(f"results in local PACS: {out / 'pacs'} ({len(archive.received)} objects, every "
          "kind; the spread map is made in exact mode only)")
    for line in _received_series(archive):
        print(f"    {line}")
    print(f"previews:              {', '.join(str(p) for p in previews)}")
    return 0


def _wait_for_results(archive: LocalArchive, spool: Path, timeout: float):
    """(Parametric Map, Segmentation) once the node has marked its delivery done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        delivered = any(results_root(spool).glob("*/delivered/*"))
        found = {}
        for path in list(archive.received) if delivered else []:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            found[str(ds.SOPClassUID)] = path
        if ParametricMapStorage in found and SegmentationStorage in found:
            return (pydicom.dcmread(found[ParametricMapStorage]),
                    pydicom.dcmread(found[SegmentationStorage]))
        time.sleep(1.0)
    return None


def _received_series(archive: LocalArchive) -> list[str]:
    """``"<series number> <description>: <n> object(s)"`` per series the archive holds."""
    series: dict[tuple[int, str], int] = {}
    for path in list(archive.received):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        key = (int(ds.get("SeriesNumber", 0) or 0), str(ds.get("SeriesDescription", "")))
        series[key] = series.get(key, 0) + 1
    return [f"{number} {text}: {count}" for (number, text), count in sorted(series.items())]
