"""Receive throughput: dcmtk ``storescp`` versus the node's :class:`StorageSCP` on loopback.

Makes one large uncompressed multi-frame Breast Tomosynthesis-like object (default ~300 MB),
sends it with dcmtk ``storescu -R`` to (a) dcmtk ``storescp`` and (b) the node's storage SCP
running in a subprocess, alternating, and prints the median MB/s of each and their ratio
(target: node >= 0.8 x storescp). Each send is one ``storescu`` process, timed wall clock
from start to exit (association, transfer, the receiver's write and response).

The node fsyncs every instance (file and folder) before answering; ``storescp`` does not,
so the comparison is conservative for the node. A third figure, ``storescp+fsync``, adds the
time to fsync storescp's file after it answered: the cost of the same durability.

Usage::

    .venv/bin/python benchmarks/receive_throughput.py [--size-mb 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from workers.processes import free_port, terminate, wait_for_port

REPO_ROOT = Path(__file__).resolve().parents[1]
BTO = "1.2.840.10008.5.1.4.1.1.13.1.3"


def make_object(path: Path, size_mb: float, *, rows: int = 2048, cols: int = 1024) -> int:
    """Write an uncompressed 16-bit multi-frame BTO-like file of about `size_mb` MB."""
    frames = max(1, round(size_mb * 1e6 / (rows * cols * 2)))
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4096, size=(frames, rows, cols), dtype=np.uint16)
    ds = Dataset()
    ds.SOPClassUID = BTO
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Bench^Mark"
    ds.PatientID = "BENCH"
    ds.Modality = "MG"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    return frames


def send(port: int, path: Path, called: str) -> float:
    """Seconds for one ``storescu -R`` run (raises if it fails)."""
    start = time.perf_counter()
    result = subprocess.run(["storescu", "-R", "-aec", called, "127.0.0.1", str(port), str(path)],
                            capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"storescu to {called} failed: {result.stderr.strip()}")
    return seconds


def serve(spool: Path, port: int) -> int:
    """Run the node's StorageSCP until SIGTERM (the benchmark's subprocess)."""
    sys.path.insert(0, str(REPO_ROOT))
    from dicom_node.config import Settings
    from dicom_node.scp import StorageSCP

    logging.basicConfig(level=logging.WARNING)
    settings = Settings(host="127.0.0.1", port=port, spool_dir=spool, ae_title="PICARD",
                        series_quiet_seconds=3600, min_free_bytes=0)
    scp = StorageSCP(settings, lambda ref: None)
    scp.start()
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    while not stop:
        time.sleep(0.2)
    scp.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=300.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="scratch folder (default: a temporary folder, removed after)")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # subprocess mode
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.serve, args.port)
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            parser.error(f"{tool!r} (dcmtk) is not on PATH")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="picard-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    obj = work / "bto.dcm"
    frames = make_object(obj, args.size_mb)
    size_mb = obj.stat().st_size / 1e6
    print(f"object: {size_mb:.1f} MB, {frames} frames, explicit VR little endian", flush=True)

    dcmtk_out = work / "storescp-out"
    dcmtk_out.mkdir()
    dcmtk_port, node_port = free_port(), free_port()
    dcmtk = subprocess.Popen(["storescp", "-aet", "STORESCP", "-od", str(dcmtk_out),
                              str(dcmtk_port)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    node = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve",
                             str(work / "spool"), "--port", str(node_port)])
    times: dict[str, list[float]] = {"storescp": [], "node": [], "storescp+fsync": []}
    try:
        wait_for_port(dcmtk_port, proc=dcmtk)
        wait_for_port(node_port, proc=node)
        for _ in range(args.repeats):
            for name, port, called in (("storescp", dcmtk_port, "STORESCP"),
                                       ("node", node_port, "PICARD")):
                times[name].append(send(port, obj, called))
                if name == "storescp":  # what storescp would take to make the file durable
                    start = time.perf_counter()
                    for received in dcmtk_out.iterdir():
                        fd = os.open(received, os.O_RDONLY)
                        os.fsync(fd)
                        os.close(fd)
                    times["storescp+fsync"].append(times[name][-1] + time.perf_counter() - start)
                # both receivers write a new file each run; keep disk use flat (not timed)
                for leftover in dcmtk_out.iterdir():
                    leftover.unlink()
                for study in (work / "spool" / "incoming").glob("*"):
                    shutil.rmtree(study)
    finally:
        for proc in (dcmtk, node):
            terminate(proc, 30)
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    rates = {name: size_mb / statistics.median(ts) for name, ts in times.items()}
    for name, ts in times.items():
        print(f"{name:9s}: median {statistics.median(ts):.2f} s = {rates[name]:.0f} MB/s "
              f"(runs: {', '.join(f'{t:.2f}' for t in ts)} s)")
    ratio = rates["node"] / rates["storescp"]
    durable_ratio = rates["node"] / rates["storescp+fsync"]
    print(f"ratio node/storescp: {ratio:.2f} (target >= 0.8); "
          f"node/(storescp+fsync): {durable_ratio:.2f}")
    print(json.dumps({"size_mb": round(size_mb, 1), "repeats": args.repeats,
                      "storescp_mb_s": round(rates["storescp"], 1),
                      "storescp_fsync_mb_s": round(rates["storescp+fsync"], 1),
                      "node_mb_s": round(rates["node"], 1), "ratio": round(ratio, 3),
                      "durable_ratio": round(durable_ratio, 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
