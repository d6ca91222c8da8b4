"""Glue between the DICOM side and the model: the three stages as plain functions.

The Celery tasks (``workers.tasks``) and the offline ``picard-node score`` command both call
these, so the network path and the offline path run the same code. Each stage reads and
writes one :class:`~dicom_node.results.ResultFolder`, keyed by the source SOP Instance UIDs
and the model version, and returns early when its output already exists, so a replayed job
makes no duplicates.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from dicom_node.config import Settings
from dicom_node.encode import ScoreLabels, encode_results
from dicom_node.encode.ko import encode_rejection_note
from dicom_node.results import (DeliveryReport, ResultFolder, RetryPolicy, deliver, is_current,
                                results_root, supersede_earlier)
from dicom_node.volume import group_by_series, load_series, unflip

logger = logging.getLogger(__name__)

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
    """The model's version string: ``<card name>-<card version>``.

    It keys result folders and is written into the result objects; a bundle with new
    weights must get a new card version.
    """
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


@dataclass(frozen=True)
class AnalyzeOutcome:
    """Where a result lives and whether this call computed it."""

    folder: ResultFolder
    computed: bool

    @property
    def result_dir(self) -> Path:
        """The result folder's path."""
        return self.folder.path


def analyze(series_dir: Path, results_dir: Path, *, bundle: Path | None = None,
            device: str = "cpu", mode: str | None = None) -> AnalyzeOutcome:
    """Score a series and store its heatmap (stored orientation, source frame order).

    Parameters
    ----------
    series_dir : Path
        Folder holding the instances of one series.
    results_dir : Path
        Parent folder of result folders (``<spool>/results``).
    bundle : Path, optional
        Model bundle; the shipped default when omitted.
    device : str
        Torch device, e.g. ``"cpu"`` or ``"cuda"``.
    mode : {"exact", "fast"}, optional
        Inference mode; default the model card's. Part of the result id, so results of
        different modes never share a folder.

    Returns
    -------
    AnalyzeOutcome
    """
    paths = series_files(series_dir)
    model = get_model(bundle, device)
    scoring = model.scoring_description(mode)
    version = model_version(model)
    key = version if scoring["mode"] == "exact" else f"{version}+{scoring['mode']}"
    folder = ResultFolder.for_sources(results_dir, paths, key)
    if folder.analyzed:
        logger.info("result %s already exists; not scoring again", folder.result_id)
        return AnalyzeOutcome(folder, computed=False)

    started = time.monotonic()
    volume = load_series(paths)
    loaded = time.monotonic()
    heatmap = model.score_volume(volume.pixels, pixel_spacing_mm=volume.pixel_spacing_mm,
                                 mode=scoring["mode"])
    heatmap = unflip(np.asarray(heatmap, dtype=np.float32), volume)
    scored = time.monotonic()

    threshold = float(model.card["threshold"])
    above = heatmap >= threshold
    summary = {
        "result_id": folder.result_id,
        "study_uid": volume.study_uid,
        "series_uid": volume.series_uid,
        "sources": [str(p) for p in volume.source_paths],  # frame order
        "laterality": volume.laterality,
        "shape": list(heatmap.shape),
        "model_version": version,
        "scoring": scoring,
        "threshold": threshold,
        "max_score": float(heatmap.max()) if heatmap.size else 0.0,
        "voxels_above_threshold": int(above.sum()),
        "frames_with_findings": [int(i) + 1 for i in np.flatnonzero(above.any(axis=(1, 2)))],
        "seconds": {"load": round(loaded - started, 3), "score": round(scored - loaded, 3)},
    }
    folder.write_analysis(heatmap, summary)
    logger.info("scored series %s in %.1f s: max %.4g, %d frames above threshold",
                volume.series_uid, scored - started, summary["max_score"],
                len(summary["frames_with_findings"]))
    return AnalyzeOutcome(folder, computed=True)


def encode(result_dir: Path, *, spool_dir: Path | None = None) -> list[Path]:
    """Write the DICOM result objects (Parametric Map, Segmentation, SR) of a result folder.

    With `spool_dir` (the node's path, not ``picard-node score``): a result whose series
    changed after scoring is marked superseded and not encoded (returns ``[]``; a newer job
    covers the series), and earlier results of the same series are withdrawn by an IOCM
    rejection note written with this result's objects
    (:func:`~dicom_node.encode.ko.encode_rejection_note`).
    """
    folder = ResultFolder(result_dir)
    if folder.encoded:
        return folder.objects()
    if spool_dir is not None and not is_current(folder, spool_dir):
        folder.mark_superseded(None, "the series changed after scoring; a newer job covers it")
        return []
    summary = folder.summary()
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in summary["sources"]]
    datasets = encode_results(sources, folder.heatmap(), threshold=summary["threshold"],
                              model_version=summary["model_version"],
                              output_uid_seed=summary["result_id"],
                              laterality=summary["laterality"], include_sr=True,
                              labels=ScoreLabels.from_summary(summary.get("scoring")))
    withdrawn = supersede_earlier(folder) if spool_dir is not None else []
    if withdrawn:
        datasets.append(encode_rejection_note(withdrawn, output_uid_seed=summary["result_id"]))
        logger.info("result %s withdraws %d earlier objects of its series", folder.result_id,
                    len(withdrawn))
    paths = folder.write_objects(datasets)
    logger.info("encoded %d result objects for %s", len(paths), folder.result_id)
    return paths


def export(result_dir: Path, settings: Settings, *, job_id: str | None = None) -> DeliveryReport:
    """Send a result's objects to the configured destinations (see :func:`deliver`)."""
    return deliver(ResultFolder(result_dir), settings.destinations,
                   spool_dir=Path(settings.spool_dir), calling_ae_title=settings.ae_title,
                   policy=RetryPolicy.from_settings(settings), job_id=job_id)


def run_offline(inputs: list[Path], out_dir: Path, *, bundle: Path | None = None,
                device: str = "cpu", mode: str | None = None) -> list[Path]:
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
        outcome = analyze(staging, results_root(out_dir), bundle=bundle, device=device,
                          mode=mode)
        encode(outcome.result_dir)
        results.append(outcome.result_dir)
    return results
