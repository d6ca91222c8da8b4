"""Real servers for integration tests: Redis, Orthanc, and the node's own processes.

Each starts on free loopback ports in a temporary folder and is stopped in teardown.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from workers.processes import free_port, wait_for_port  # noqa: F401  (tests import them from here)

REPO_ROOT = Path(__file__).resolve().parents[2]


def stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` s; also kills the process group's children."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def start_storescp(out_dir: Path, *extra: str, ae_title: str = "STORESCP"
                   ) -> tuple[subprocess.Popen, int]:
    """dcmtk ``storescp`` writing what it receives to `out_dir`; returns (process, port)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(["storescp", "-aet", ae_title, "-od", str(out_dir), "+xa",
                             *extra, str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    wait_for_port(port, timeout=10, proc=proc)
    return proc, port


class RedisServer:
    """A throw-away ``redis-server`` on a free port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir)],
            stdout=open(workdir / "redis.log", "w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        wait_for_port(self.port, proc=self.proc)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        stop_process(self.proc)


class Orthanc:
    """A real Orthanc with its own storage, acting as the PACS."""

    def __init__(self, workdir: Path, *, ae_title: str = "ORTHANC",
                 modalities: dict[str, list[Any]] | None = None,
                 extra_config: dict[str, Any] | None = None) -> None:
        if shutil.which("Orthanc") is None:
            raise RuntimeError("Orthanc is not installed (apt-get install orthanc)")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.ae_title = ae_title
        self.http_port = free_port()
        self.dicom_port = free_port()
        config = {
            "Name": "picard-test-pacs",
            "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "DicomModalities": modalities or {},
            "Plugins": [],
            "StableAge": 1,
            "ConcurrentJobs": 1,
        }
        config.update(extra_config or {})  # e.g. plugins (the viewer test's DICOMweb)
        self.config_path = workdir / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(["Orthanc", str(self.config_path)],
                                     stdout=open(self.workdir / "orthanc.log", "a"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(self.http_port, proc=self.proc)
        wait_for_port(self.dicom_port, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def get(self, path: str) -> Any:
        r = requests.get(self.base_url + path, timeout=10)
        r.raise_for_status()
        return r.json()

    def instances_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        """Main tags of every instance in the study with this Study Instance UID."""
        found = requests.post(self.base_url + "/tools/find", timeout=10, json={
            "Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": True})
        found.raise_for_status()
        return found.json()

    def download(self, instance_id: str, dest: Path) -> Path:
        r = requests.get(f"{self.base_url}/instances/{instance_id}/file", timeout=30)
        r.raise_for_status()
        dest.write_bytes(r.content)
        return dest


def _destination(text: str) -> dict[str, Any]:
    ae, rest = text.split("@", 1)
    host, port = rest.rsplit(":", 1)
    return {"ae_title": ae, "host": host, "port": int(port)}


class NodeProcess:
    """``picard-node serve`` (and optionally a separate ``picard-node worker``) as processes."""

    def __init__(self, workdir: Path, *, destinations: list[str], broker_url: str | None = None,
                 quiet_seconds: float = 2.0, extra_env: dict[str, str] | None = None,
                 extra_config: dict[str, Any] | None = None, log_level: str = "info") -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.spool = workdir / "spool"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PICARD_")}
        self.env.update(extra_env or {})
        self.env["PYTHONPATH"] = str(REPO_ROOT)
        # one config file shared by the node and its workers, as on a real site
        config = {"spool_dir": str(self.spool), "series_quiet_seconds": quiet_seconds,
                  "destinations": [_destination(d) for d in destinations]}
        if broker_url:
            config["broker_url"] = broker_url
        config.update(extra_config or {})
        self.config_path = workdir / "picard-node.yaml"
        self.config_path.write_text(json.dumps(config, indent=1))
        self.args = ["--config", str(self.config_path)]
        self.log_level = log_level
        self.port = 0
        self.worker_pid: int | None = None
        self.proc: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.stdout = ""  # what serve (and its embedded worker) printed, after stop()

    def start(self, port: int = 0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "--log-level", self.log_level, "serve",
             "--port", str(port or free_port()), *self.args],
            stdout=subprocess.PIPE, stderr=open(self.workdir / "node.log", "a"), text=True,
            env=self.env, cwd=REPO_ROOT, start_new_session=True)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"node did not start: {(self.workdir / 'node.log').read_text()[-3000:]}")
        listening = json.loads(line)
        self.port = listening["port"]
        self.worker_pid = listening.get("worker_pid")
        wait_for_port(self.port, proc=self.proc)

    def start_worker(self, queues: str = "gpu,io") -> subprocess.Popen:
        worker = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "worker", "--queues", queues, "--pool", "solo",
             *self.args],
            stdout=open(self.workdir / f"worker{len(self.workers)}.log", "a"),
            stderr=subprocess.STDOUT, env=self.env, cwd=REPO_ROOT, start_new_session=True)
        self.workers.append(worker)
        return worker

    def log(self) -> str:
        return "\n".join(p.read_text()[-4000:] for p in sorted(self.workdir.glob("*.log")))

    def stop(self) -> None:
        for w in self.workers:
            stop_process(w)
        if self.proc is not None:
            stop_process(self.proc)
            if self.proc.stdout is not None:
                self.stdout += self.proc.stdout.read()
            self.proc = None

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """Run ``picard-node <args> --config <the node's config>`` (status, retry, outbox)."""
        return subprocess.run([sys.executable, "-m", "workers.cli", *args, *self.args],
                              capture_output=True, text=True, env=self.env, cwd=REPO_ROOT,
                              timeout=120)


def node_and_pacs(tmp_path: Path, orthanc_factory,
                  **node_kwargs) -> tuple["NodeProcess", int, "Orthanc"]:
    """A node process (not started) on a free port that sends to a fresh Orthanc, which
    knows the node as modality ``picard``; returns ``(node, node_port, orthanc)``."""
    node_port = free_port()
    orthanc = orthanc_factory(modalities={"picard": ["PICARD", "127.0.0.1", node_port]})
    node = NodeProcess(tmp_path / "node",
                       destinations=[f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}"],
                       **node_kwargs)
    return node, node_port, orthanc


def wait_for_node(predicate, timeout: float, what: str, node: "NodeProcess",
                  step: float = 0.2) -> None:
    """Poll `predicate` until true; on timeout fail with `what` and the node's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}\n{node.log()}")


def storescu(port: int, files: list[Path], *, called_ae: str = "PICARD",
             calling_ae: str = "STORESCU", timeout: float = 120) -> subprocess.CompletedProcess:
    """Send files with dcmtk's ``storescu``.

    ``-R`` proposes only the SOP classes the files need; compressed files (dcmtk cannot
    transcode JPEG 2000) are proposed in their own transfer syntax with ``-xv``/``-xs``.
    """
    import pydicom
    from pydicom.uid import JPEG2000, JPEG2000Lossless, JPEGLosslessSV1

    syntax = {JPEG2000Lossless: "-xv", JPEG2000: "-xw", JPEGLosslessSV1: "-xs"}
    options = {syntax.get(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID,
                          "") for f in files} - {""}
    return subprocess.run(
        ["storescu", "-R", *sorted(options), "-aet", calling_ae, "-aec", called_ae, "127.0.0.1",
         str(port), *[str(f) for f in files]],
        capture_output=True, text=True, timeout=timeout)
