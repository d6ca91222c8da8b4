"""Glue between the DICOM side and the model: the three stages as plain functions.

The Celery tasks (``workers.tasks``) and the offline ``picard-node score`` command both call
these, so the network path and the offline path run the same code. Every stage is keyed by a
result id derived from the source SOP Instance UIDs and the model version, writes its outputs
atomically and returns early when they already exist, so a replayed job makes no duplicates.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from dicom_node.config import Destination
from dicom_node.encode import encode_results
from dicom_node.audit import AuditLog
from dicom_node.scu import ExportError, send_to_destination
from dicom_node.spool import Spool, atomic_write_bytes
from dicom_node.volume import group_by_series, load_series, unflip

logger = logging.getLogger(__name__)

HEATMAP_FILE = "heatmap.npy"
RESULT_FILE = "result.json"
OBJECTS_DIR = "objects"
DELIVERY_DIR = "delivered"

_model_lock = threading.Lock()
_models: dict[tuple[str, str], Any] = {}


def default_bundle() -> Path:
    """Folder of the model bundle shipped with the package."""
    from models.bundle import default_bundle_path

    return Path(default_bundle_path())


def get_model(bundle: Path | None, device: str = "cpu") -> Any:
    """Load a model bundle once per process and reuse it (one per bundle and device)."""
    from models import Picard

    key = (str(Path(bundle or default_bundle()).resolve()), device)
    with _model_lock:
        if key not in _models:
            started = time.monotonic()
            _models[key] = Picard.from_bundle(key[0], device=device)
            logger.info("loaded model bundle %s on %s in %.1f s", key[0], device,
                        time.monotonic() - started)
        return _models[key]


def model_version(model: Any) -> str:
    """A short stable version string for the model (card name + version + weights digest)."""
    card = model.card
    name = card.get("name", "PICARD")
    version = card.get("version", "0")
    return f"{name}-{version}"


def series_files(series_dir: Path) -> list[Path]:
    """The instance files of a spooled series, in a stable order."""
    files = sorted(p for p in Path(series_dir).iterdir() if p.suffix == ".dcm" and p.is_file())
    if not files:
        raise FileNotFoundError(f"no .dcm files in series folder {str(series_dir)!r}")
    return files


def result_id(paths: list[Path], version: str) -> str:
    """Key of a result: digest of the source SOP Instance UIDs and the model version.

    A re-sent identical series maps to the same id, so it is not scored or delivered twice.
    """
    uids = sorted(pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
                  .SOPInstanceUID for p in paths)
    digest = hashlib.sha256("\n".join([version, *uids]).encode()).hexdigest()
    return digest[:24]


@dataclass(frozen=True)
class AnalyzeOutcome:
    """Where a result lives and whether this call computed it."""

    result_dir: Path
    computed: bool


def analyze(series_dir: Path, results_root: Path, *, bundle: Path | None = None,
            device: str = "cpu") -> AnalyzeOutcome:
    """Score a series and store its heatmap (stored orientation, source frame order).

    Parameters
    ----------
    series_dir : Path
        Folder holding the instances of one series.
    results_root : Path
        Parent folder of result folders (``<spool>/results``).
    bundle : Path, optional
        Model bundle; the shipped default when omitted.
    device : str
        Torch device, e.g. ``"cpu"`` or ``"cuda"``.

    Returns
    -------
    AnalyzeOutcome
    """
    paths = series_files(series_dir)
    model = get_model(bundle, device)
    version = model_version(model)
    result_dir = Path(results_root) / result_id(paths, version)
    if (result_dir / RESULT_FILE).exists():
        logger.info("result %s already exists; not scoring again", result_dir.name)
        return AnalyzeOutcome(result_dir, computed=False)

    started = time.monotonic()
    volume = load_series(paths)
    loaded = time.monotonic()
    heatmap = model.score_volume(volume.pixels, pixel_spacing_mm=volume.pixel_spacing_mm)
    heatmap = unflip(np.asarray(heatmap, dtype=np.float32), volume)
    scored = time.monotonic()

    threshold = float(model.card["threshold"])
    above = heatmap >= threshold
    result_dir.mkdir(parents=True, exist_ok=True)
    _atomic_save_npy(result_dir / HEATMAP_FILE, heatmap)
    summary = {
        "result_id": result_dir.name,
        "study_uid": volume.study_uid,
        "series_uid": volume.series_uid,
        "sources": [str(p) for p in volume.source_paths],  # frame order
        "laterality": volume.laterality,
        "shape": list(heatmap.shape),
        "model_version": version,
        "threshold": threshold,
        "max_score": float(heatmap.max()) if heatmap.size else 0.0,
        "voxels_above_threshold": int(above.sum()),
        "frames_with_findings": [int(i) + 1 for i in np.flatnonzero(above.any(axis=(1, 2)))],
        "seconds": {"load": round(loaded - started, 3), "score": round(scored - loaded, 3)},
    }
    # result.json last: its presence marks the stage as done.
    _atomic_write_text(result_dir / RESULT_FILE, json.dumps(summary, indent=2))
    logger.info("scored series %s in %.1f s: max %.4g, %d frames above threshold",
                volume.series_uid, scored - started, summary["max_score"],
                len(summary["frames_with_findings"]))
    return AnalyzeOutcome(result_dir, computed=True)


def encode(result_dir: Path) -> list[Path]:
    """Write the DICOM result objects (Parametric Map, Segmentation) of a result folder."""
    result_dir = Path(result_dir)
    summary = json.loads((result_dir / RESULT_FILE).read_text())
    objects_dir = result_dir / OBJECTS_DIR
    done_marker = objects_dir / ".complete"
    if done_marker.exists():
        return sorted(objects_dir.glob("*.dcm"))

    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in summary["sources"]]
    heatmap = np.load(result_dir / HEATMAP_FILE)
    datasets = encode_results(sources, heatmap, threshold=summary["threshold"],
                              model_version=summary["model_version"],
                              output_uid_seed=summary["result_id"],
                              laterality=summary["laterality"], include_sr=True)
    objects_dir.mkdir(exist_ok=True)
    paths = []
    for ds in datasets:
        path = objects_dir / f"{ds.Modality}_{ds.SOPInstanceUID}.dcm"
        _atomic_write_dataset(path, ds)
        paths.append(path)
    _atomic_write_text(done_marker, "\n".join(p.name for p in paths))
    logger.info("encoded %d result objects for %s", len(paths), result_dir.name)
    return sorted(paths)


def export(result_dir: Path, destinations: list[Destination], calling_ae_title: str, *,
           audit: AuditLog | None = None) -> list[str]:
    """Send the result objects to every destination not yet marked delivered.

    Parameters
    ----------
    result_dir : Path
        A result folder with ``objects/``.
    destinations : list of Destination
        Where to send (TLS settings of each destination are used).
    calling_ae_title : str
        The node's AE title.
    audit : AuditLog, optional
        Receives one record per delivery attempt (delivered or failed).

    Returns
    -------
    list of str
        AE titles delivered to by this call.

    Raises
    ------
    dicom_node.scu.ExportError
        If a destination does not answer success for every object; the ones already
        delivered stay marked, so a retry sends only to the rest.
    """
    result_dir = Path(result_dir)
    objects = sorted((result_dir / OBJECTS_DIR).glob("*.dcm"))
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True,
                                specific_tags=["SOPInstanceUID"]).SOPInstanceUID) for p in objects]
    delivered_dir = result_dir / DELIVERY_DIR
    delivered_dir.mkdir(exist_ok=True)
    sent = []
    for dest in destinations:
        marker = delivered_dir / f"{dest.ae_title}@{dest.host}_{dest.port}"
        if marker.exists():
            continue
        try:
            send_to_destination(objects, dest, calling_ae_title=calling_ae_title)
        except (ExportError, ValueError, OSError) as exc:
            if audit is not None:
                audit.delivery(result_dir.name, dest, uids, "failed", str(exc),
                               calling_ae=calling_ae_title)
            raise
        _atomic_write_text(marker, json.dumps({"objects": uids, "time": time.time()}))
        if audit is not None:
            audit.delivery(result_dir.name, dest, uids, "delivered", calling_ae=calling_ae_title)
        logger.info("delivered %d objects of %s to %s@%s:%d", len(objects), result_dir.name,
                    dest.ae_title, dest.host, dest.port)
        sent.append(dest.ae_title)
    return sent


def run_offline(inputs: list[Path], out_dir: Path, *, bundle: Path | None = None,
                device: str = "cpu") -> list[Path]:
    """Analyze and encode files or folders with no network (``picard-node score``).

    Inputs are grouped by Series Instance UID; each series gets a result folder under
    ``out_dir``. Returns the result folders.
    """
    groups = group_by_series(inputs)
    if not groups:
        raise FileNotFoundError(f"no DICOM files found in {[str(i) for i in inputs]}")
    results = []
    for uid, files in groups.items():
        staging = Path(out_dir) / "series" / uid
        staging.mkdir(parents=True, exist_ok=True)
        for f in files:
            link = staging / f"{f.stem}.dcm"
            if not link.exists():
                os.symlink(f.resolve(), link)
        outcome = analyze(staging, Path(out_dir) / "results", bundle=bundle, device=device)
        encode(outcome.result_dir)
        results.append(outcome.result_dir)
    return results


def quarantine_series(series_dir: Path, spool_dir: Path, reason: str) -> None:
    """Move the files of a series that cannot be analyzed to the quarantine, with the reason."""
    spool = Spool(spool_dir)
    for f in series_files(series_dir):
        spool.quarantine(f, name=f.name, reason=reason)
    ref = spool.series_ref(Path(series_dir).parent.name, Path(series_dir).name)
    if Path(ref.directory) == Path(series_dir):
        spool.mark_done(ref)  # nothing left to process; not re-dispatched after a restart
    logger.error("quarantined series folder %s: %s", series_dir, reason)


def mark_series_done(result_dir: Path, spool_dir: Path) -> None:
    """Mark the spooled series of a delivered result as done (if it came through the spool)."""
    summary = json.loads((Path(result_dir) / RESULT_FILE).read_text())
    spool = Spool(spool_dir)
    ref = spool.series_ref(summary["study_uid"], summary["series_uid"])
    if Path(ref.directory).is_dir():
        spool.mark_done(ref)


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write_bytes(path, buffer.getvalue())


def _atomic_write_dataset(path: Path, ds: pydicom.Dataset) -> None:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    atomic_write_bytes(path, buffer.getvalue())
