"""Hostile peers against a running ``picard-node serve``: does a real sender still get through?

Starts the node as ``python -m workers.cli serve`` (embedded worker, scratch spool, no
destinations), then, from the same loopback address a real sender uses:

1. opens ``--half-open`` TCP connections (default 200) that each send 3 bytes of a PDU
   header and go silent;
2. opens one connection that announces a 4 GB A-ASSOCIATE-RQ and streams zeros into it
   (up to ``--stream-mb``, default 3000) until the node closes it;
3. while both are in place, sends a small instance with dcmtk ``storescu`` and times it.

Meanwhile the serve process's resident memory (VmRSS, and VmHWM, its peak) and thread count
are sampled from ``/proc`` every 50 ms. Targets (issue 11): ``storescu`` succeeds within 30 s
and the node stays below 1 GB resident. The embedded worker (a separate process that loads
the model) is reported apart. ``--reconnect`` re-opens every half-open connection the node
closes, as fast as it can, for a harsher variant.

Usage::

    .venv/bin/python benchmarks/hostile_peers.py [--half-open 200] [--stream-mb 3000] \\
        [--hold 20] [--reconnect] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from workers.processes import free_port, terminate

REPO_ROOT = Path(__file__).resolve().parents[1]
BTO = "1.2.840.10008.5.1.4.1.1.13.1.3"


def make_instance(path: Path) -> None:
    """A small multi-frame BTO-like instance (4 frames of 64 x 64, 16 bit)."""
    ds = Dataset()
    ds.SOPClassUID = BTO
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = (generate_uid()
                                                                     for _ in range(3))
    ds.PatientName, ds.PatientID, ds.Modality = "Bench^Hostile", "BENCH", "MG"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 64
    ds.NumberOfFrames = 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.random.default_rng(0).integers(0, 4096, (4, 64, 64), np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (kB) and Threads of a process, from /proc."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


class Sampler(threading.Thread):
    """Samples a process's memory and threads until stopped; keeps the maxima."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_rss_kb = 0
        self.peak_threads = 0
        self.hwm_kb = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.05):
            s = proc_status(self.pid)
            self.peak_rss_kb = max(self.peak_rss_kb, s.get("VmRSS", 0))
            self.peak_threads = max(self.peak_threads, s.get("Threads", 0))
            self.hwm_kb = max(self.hwm_kb, s.get("VmHWM", 0))

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


class HalfOpen(threading.Thread):
    """Keeps `count` connections that sent 3 header bytes and went silent."""

    def __init__(self, port: int, count: int, *, reconnect: bool) -> None:
        super().__init__(daemon=True)
        self.port, self.count, self.reconnect = port, count, reconnect
        self.socks: list[socket.socket | None] = []
        self.opened = 0
        self.closed_by_node = 0
        self.ready = threading.Event()
        self._halt = threading.Event()

    def _open(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.sendall(b"\x01\x00\x00")
        sock.setblocking(False)
        self.opened += 1
        return sock

    def run(self) -> None:
        self.socks = [self._open() for _ in range(self.count)]
        self.ready.set()
        while not self._halt.wait(0.05):
            for i, sock in enumerate(self.socks):
                if sock is None:
                    continue
                try:
                    if sock.recv(1) == b"":
                        raise ConnectionResetError
                except BlockingIOError:
                    continue
                except OSError:
                    self.closed_by_node += 1
                    sock.close()
                    self.socks[i] = None
                    if self.reconnect and not self._halt.is_set():
                        try:
                            self.socks[i] = self._open()
                        except OSError:
                            pass

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
        for sock in self.socks:
            if sock is not None:
                sock.close()


def stream_giant_pdu(port: int, limit_mb: int, result: dict) -> None:
    """Announce a 4 GB A-ASSOCIATE-RQ and stream zeros until the node closes the socket."""
    started = time.monotonic()
    sent = 0
    chunk = b"\0" * (1 << 20)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFFF))
            while sent < limit_mb:
                sock.sendall(chunk)
                sent += 1
        result["outcome"] = f"streamed all {limit_mb} MB"
    except OSError as exc:
        result["outcome"] = f"closed by the node ({type(exc).__name__})"
    result["mb_sent"] = sent
    result["seconds"] = round(time.monotonic() - started, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--half-open", type=int, default=200)
    parser.add_argument("--stream-mb", type=int, default=3000)
    parser.add_argument("--hold", type=float, default=20.0,
                        help="seconds to keep the attack up after storescu (sampling)")
    parser.add_argument("--reconnect", action="store_true",
                        help="re-open half-open connections the node closes")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if shutil.which("storescu") is None:
        parser.error("'storescu' (dcmtk) is not on PATH")

    work = Path(tempfile.mkdtemp(prefix="picard-hostile-"))
    instance = work / "instance.dcm"
    make_instance(instance)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICARD_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    log = open(work / "node.log", "w")
    node = subprocess.Popen([sys.executable, "-m", "workers.cli", "--log-level", "warning",
                             "serve", "--port", str(port), "--spool-dir", str(work / "spool")],
                            stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                            cwd=REPO_ROOT)
    figures: dict = {"half_open": args.half_open, "reconnect": args.reconnect}
    try:
        listening = json.loads(node.stdout.readline())
        worker_pid = listening.get("worker_pid")
        time.sleep(2.0)  # let the node settle
        baseline = proc_status(node.pid)
        sampler = Sampler(node.pid)
        sampler.start()
        half_open = HalfOpen(port, args.half_open, reconnect=args.reconnect)
        half_open.start()
        half_open.ready.wait(60)
        giant: dict = {}
        streamer = threading.Thread(target=stream_giant_pdu, args=(port, args.stream_mb, giant))
        streamer.start()
        time.sleep(0.5)
        started = time.monotonic()
        sent = subprocess.run(["storescu", "-R", "-aec", "PICARD", "127.0.0.1", str(port),
                               str(instance)], capture_output=True, text=True, timeout=120)
        storescu_s = time.monotonic() - started
        under_attack = proc_status(node.pid)
        time.sleep(args.hold)
        streamer.join(120)
        half_open.stop()
        sampler.stop()
        figures.update({
            "storescu_returncode": sent.returncode,
            "storescu_seconds": round(storescu_s, 2),
            "storescu_error": sent.stderr.strip()[-300:] if sent.returncode else "",
            "node_rss_mb_baseline": round(baseline.get("VmRSS", 0) / 1024, 1),
            "node_rss_mb_under_attack": round(under_attack.get("VmRSS", 0) / 1024, 1),
            "node_rss_mb_peak_sampled": round(sampler.peak_rss_kb / 1024, 1),
            "node_rss_mb_high_water_mark": round(sampler.hwm_kb / 1024, 1),
            "node_threads_baseline": baseline.get("Threads", 0),
            "node_threads_peak": sampler.peak_threads,
            "half_open_opened": half_open.opened,
            "half_open_closed_by_node": half_open.closed_by_node,
            "giant_pdu": giant,
            "worker_rss_mb": (round(proc_status(worker_pid).get("VmRSS", 0) / 1024, 1)
                              if worker_pid else None),
        })
    finally:
        terminate(node, 30)
        log.close()
        shutil.rmtree(work, ignore_errors=True)
    ok = (figures.get("storescu_returncode") == 0 and figures.get("storescu_seconds", 99) < 30
          and figures.get("node_rss_mb_high_water_mark", 1e9) < 1024)
    figures["targets_met"] = ok
    print(f"storescu under attack: rc {figures['storescu_returncode']} in "
          f"{figures['storescu_seconds']} s (target: success within 30 s)")
    print(f"node resident memory: {figures['node_rss_mb_baseline']} MB before, "
          f"{figures['node_rss_mb_under_attack']} MB under attack, high-water mark "
          f"{figures['node_rss_mb_high_water_mark']} MB (target < 1024 MB)")
    print(f"node threads: {figures['node_threads_baseline']} before, "
          f"{figures['node_threads_peak']} at most")
    print(f"half-open: {figures['half_open_opened']} opened, "
          f"{figures['half_open_closed_by_node']} closed by the node")
    print(f"4 GB A-ASSOCIATE-RQ: {giant.get('outcome')} after {giant.get('mb_sent')} MB, "
          f"{giant.get('seconds')} s")
    print(f"embedded worker (separate process, model loaded lazily): "
          f"{figures['worker_rss_mb']} MB")
    print(json.dumps(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
