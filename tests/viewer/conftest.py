"""Fixtures of the viewer test: a scored study in Orthanc + DICOMweb, OHIF, headless chromium.

What it needs (``make viewer-deps`` installs all of it): the Debian packages ``orthanc``,
``orthanc-dicomweb`` and ``chromium``; the pinned OHIF viewer (``python -m
tests.viewer.ohif``); the PyPI package ``playwright`` (driving the system chromium; no
browser download). Screenshots go to ``$PICARD_VIEWER_ARTEFACTS`` (default
``build/viewer-test/``), printed at the end of the run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests

from tests.helpers.servers import REPO_ROOT, Orthanc
from tests.helpers.tiny_models import bundle_with_threshold
from tests.viewer import ohif
from tests.viewer.server import ViewerServer

#: Orthanc's DICOMweb plugin as Debian installs it (package ``orthanc-dicomweb``).
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
#: Flags that run Debian's chromium headless as root, WebGL through SwiftShader.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
#: The synthetic exam: one left CC, one lesion, small enough to score in ~30 s on 2 cores.
EXAM_ARGS = ["--seed", "11", "--lesions", "1", "--slices", "16", "--rows", "512",
             "--cols", "384", "--laterality", "L", "--view", "CC"]
ARTEFACTS_ENV = "PICARD_VIEWER_ARTEFACTS"


def _need(condition: bool, what: str) -> None:
    if not condition:
        pytest.fail(f"viewer test: {what} is missing; `make viewer-deps` installs it")


def artefacts_dir() -> Path:
    """Folder for the screenshots: ``$PICARD_VIEWER_ARTEFACTS`` or ``build/viewer-test``."""
    return Path(os.environ.get(ARTEFACTS_ENV) or REPO_ROOT / "build" / "viewer-test")


@dataclass
class ScoredStudy:
    """A synthetic exam scored by the real pipeline, and what its objects hold.

    Attributes
    ----------
    study_uid : str
        The exam's study.
    files : list of Path
        Source BTO, ground-truth SEG and the result objects (PM, SEG, SR).
    summary : dict
        The result folder's ``result.json``.
    reversed_study_uid : str
        A second study: the same pixels stored with frames running against the normal,
        encoded with the same heatmap (the encoder, not the model, is under test there).
    reversed_files : list of Path
        Its source and result objects.
    """

    study_uid: str
    files: list[Path]
    summary: dict
    reversed_study_uid: str = ""
    reversed_files: list[Path] = field(default_factory=list)

    def objects(self, prefix: str) -> list[Path]:
        """Result objects whose file name starts with ``prefix`` (``PM_``, ``SEG_``, ``SR_``, ``KEYIMG_``...)."""
        return [p for p in self.files if p.name.startswith(prefix)]

    def viewable_series_count(self) -> int:
        """Series of the study OHIF shows: all but the Key Object Selection and the
        Mammography CAD SR (no display set in OHIF 3.13; mammography workstations read them)."""
        return self.series_count([p for p in self.files
                                  if not p.name.startswith(("KOS_", "CADSR_"))])

    @staticmethod
    def series_count(files: list[Path]) -> int:
        """Number of series (display sets OHIF makes) among ``files``."""
        return len({str(pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID)
                    for p in files})


def _cli(*args: str, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "workers.cli", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    if proc.returncode != 0:
        raise RuntimeError(f"picard-node {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def _reversed_copy(source: Path, heatmap: np.ndarray, summary: dict, out: Path) -> list[Path]:
    """The source's pixels as a new study whose frames run against the normal, + results."""
    from dicom_node.encode import ScoreLabels, encode_results
    from dicom_node.standins.synthetic import write_bto

    ds = pydicom.dcmread(source)
    volume = ds.pixel_array.astype(np.float32) / float((1 << int(ds.BitsStored)) - 1)
    spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    files = write_bto(volume, out, laterality="L", view="CC",
                      pixel_spacing_mm=float(spacing.PixelSpacing[0]),
                      slice_thickness_mm=float(spacing.SliceThickness), seed=12,
                      frame_direction=-1, patient_id="SYNTH0002")
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    objects = encode_results([header], heatmap, threshold=summary["threshold"],
                             model_version=summary["model_version"],
                             output_uid_seed="viewer-test-reversed", laterality="L",
                             labels=ScoreLabels.from_summary(summary.get("scoring")))
    for obj in objects:
        path = out / f"result_{obj.Modality}_{obj.SOPInstanceUID}.dcm"
        obj.save_as(path)
        files.append(path)
    return files


#: Threshold of the viewer test's bundle: the shipped weights find nothing at the card's
#: threshold in this small exam (their scores stay below it), and the viewer test needs
#: findings to draw. Every object names the threshold it used (version suffix, SEG label).
VIEWER_THRESHOLD = 20.0


@pytest.fixture(scope="session")
def scored_study(tmp_path_factory: pytest.TempPathFactory) -> ScoredStudy:
    """``picard-node synth`` + ``picard-node score`` (offline), and the reversed copy."""
    work = tmp_path_factory.mktemp("viewer-study")
    _cli("synth", str(work / "exam"), *EXAM_ARGS, cwd=work)
    sources = sorted((work / "exam").glob("*.dcm"))
    truth = sorted((work / "exam" / "truth").glob("*.dcm"))
    bundle = bundle_with_threshold(work / "bundle", VIEWER_THRESHOLD, "viewer-test")
    _cli("score", *map(str, sources), "--out", str(work / "scored"), "--objects", "all",
         "--model", str(bundle), cwd=work)
    (result_dir,) = sorted((work / "scored" / "results").iterdir())
    summary = json.loads((result_dir / "result.json").read_text())
    objects = sorted((result_dir / "objects").glob("*.dcm"))
    if not any(p.name.startswith("SR_") for p in objects):
        pytest.fail(f"the pipeline found no lesion in the viewer test's exam ({EXAM_ARGS}): "
                    "no SR to show; pick another seed")
    heatmap = np.load(result_dir / "heatmap.npy")
    reversed_files = _reversed_copy(sources[0], heatmap, summary, work / "reversed")
    reversed_uid = str(pydicom.dcmread(reversed_files[0], stop_before_pixels=True)
                       .StudyInstanceUID)
    return ScoredStudy(study_uid=summary["study_uid"], files=[*sources, *truth, *objects],
                       summary=summary, reversed_study_uid=reversed_uid,
                       reversed_files=reversed_files)


@pytest.fixture(scope="session")
def dicomweb(tmp_path_factory: pytest.TempPathFactory, scored_study: ScoredStudy
             ) -> Iterator[Orthanc]:
    """Orthanc with its DICOMweb plugin, holding both studies (stored over REST)."""
    _need(shutil.which("Orthanc") is not None, "Orthanc (Debian package orthanc)")
    _need(DICOMWEB_PLUGIN.is_file(), "Orthanc's DICOMweb plugin (orthanc-dicomweb)")
    server = Orthanc(tmp_path_factory.mktemp("orthanc-dicomweb"), extra_config={
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full",
                     "SeriesMetadata": "Full"},
    })
    try:
        for path in [*scored_study.files, *scored_study.reversed_files]:
            reply = requests.post(f"{server.base_url}/instances", data=path.read_bytes(),
                                  timeout=60)
            reply.raise_for_status()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def viewer(dicomweb: Orthanc) -> Iterator[ViewerServer]:
    """The pinned OHIF viewer in front of Orthanc's DICOMweb."""
    _need(ohif.installed(), f"the OHIF viewer {ohif.OHIF_PACKAGE}@{ohif.OHIF_VERSION}")
    server = ViewerServer(ohif.dist_dir(), dicomweb.http_port, "")
    server.app_config = ohif.app_config(f"{server.url}/dicom-web").encode("utf-8")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Headless Debian chromium driven by playwright (no browser download)."""
    chromium = os.environ.get("PICARD_CHROMIUM") or shutil.which("chromium")
    _need(chromium is not None, "chromium (Debian package chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need(False, "the Python package playwright")
    profile = Path(tempfile.mkdtemp(prefix="picard-chromium-"))  # a fresh user-data-dir
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                str(profile), executable_path=chromium, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1400, "height": 900}, service_workers="block")
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def artefacts() -> Path:
    """Empty folder for this run's screenshots."""
    folder = artefacts_dir()
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Say where the screenshots are."""
    folder = artefacts_dir()
    if folder.is_dir() and any(folder.glob("*.png")):
        terminalreporter.write_line(f"viewer test screenshots: {folder}")
