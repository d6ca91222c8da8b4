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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from dicom_node.config import Settings
from dicom_node.encode import ScoreLabels, SpreadLabels, encode_result_objects, findings
from dicom_node.encode.ko import encode_rejection_note
from dicom_node.result_kinds import DEFAULT_KINDS, ResultKind
from dicom_node.results import (DeliveryReport, ExpectedTissue, ResultFolder, RetryPolicy,
                                deliver, is_current, results_root, supersede_earlier)
from dicom_node.volume import (group_by_series, load_series, stored_values, unflip,
                               unflip_frames)

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
    scores = model.score_volume_with_spread(volume.pixels,
                                            pixel_spacing_mm=volume.pixel_spacing_mm,
                                            mode=scoring["mode"])
    heatmap = np.asarray(scores.heatmap, dtype=np.float32)
    threshold = float(model.card["threshold"])
    expected = expected_tissue(model, volume, heatmap, threshold)
    heatmap = unflip(heatmap, volume)
    spread = None if scores.spread is None else unflip(np.asarray(scores.spread, np.float32),
                                                       volume)
    scored = time.monotonic()

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
        "spread": model.spread_description(scoring["mode"]) if spread is not None else None,
        "threshold": threshold,
        "max_score": float(heatmap.max()) if heatmap.size else 0.0,
        "voxels_above_threshold": int(above.sum()),
        "frames_with_findings": [int(i) + 1 for i in np.flatnonzero(above.any(axis=(1, 2)))],
        "expected_frames": [f + 1 for f in expected.frames],
        "seconds": {"load": round(loaded - started, 3), "score": round(scored - loaded, 3)},
    }
    folder.write_analysis(heatmap, summary, spread=spread, expected=expected)
    logger.info("scored series %s in %.1f s: max %.4g, %d frames above threshold",
                volume.series_uid, scored - started, summary["max_score"],
                len(summary["frames_with_findings"]))
    return AnalyzeOutcome(folder, computed=True)


#: Findings (highest score first) whose expected tissue is computed, and frames per finding.
EXPECTED_FINDINGS = 5


def expected_tissue(model: Any, volume: Any, heatmap: np.ndarray,
                    threshold: float) -> ExpectedTissue:
    """What the model expected at each finding: its first, peak and last frame with the
    completion nearest to the original pasted into the hole centred on the finding's peak.

    Parameters
    ----------
    model : models.Picard
        The model that scored the volume.
    volume : LoadedVolume
        The scored volume (loaded orientation).
    heatmap : numpy.ndarray
        Its scores, oriented like ``volume.pixels``.
    threshold : float
        Findings are the connected components at or above it.

    Returns
    -------
    ExpectedTissue
        Images and holes in the source's stored orientation (0..1 intensity); empty when
        there is no finding. A frame shared by two findings is completed for the first.
    """
    images, holes, frames, distances = [], [], [], []
    for finding in findings(heatmap, threshold, max_findings=EXPECTED_FINDINGS):
        first, last = finding["frames"]
        box = finding["box"]
        centre = ((box[0] + box[2]) // 2, (box[1] + box[3]) // 2)
        for frame in sorted({first, finding["frame"], last}):
            if frame in frames:
                continue
            done = model.expected_completion(volume.pixels[frame], centre,
                                             pixel_spacing_mm=volume.pixel_spacing_mm)
            images.append(done.image)
            holes.append(done.hole)
            frames.append(frame)
            distances.append(float(done.distance))
    if not frames:
        rows, cols = heatmap.shape[1:]
        return ExpectedTissue([], np.zeros((0, rows, cols), np.float32),
                              np.zeros((0, rows, cols), bool), [])
    return ExpectedTissue(frames, unflip_frames(np.stack(images), volume),
                          unflip_frames(np.stack(holes), volume), distances)


def encode(result_dir: Path, *, spool_dir: Path | None = None,
           kinds: Sequence[ResultKind] | None = None) -> list[Path]:
    """Write the DICOM result objects of a result folder.

    Parameters
    ----------
    result_dir : Path
        An analyzed result folder.
    spool_dir : Path, optional
        The node's spool. With it, a result whose series changed after scoring is marked
        superseded and not encoded (returns ``[]``; a newer job covers the series), and
        earlier results of the same series are withdrawn by an IOCM rejection note written
        with this result's objects (:func:`~dicom_node.encode.ko.encode_rejection_note`).
        Without it (``picard-node score``) nothing is withdrawn.
    kinds : sequence of ResultKind, optional
        What to make (``Settings.result_kinds``: what the destinations take); default the
        heatmap, segmentation and findings SR. Kinds an earlier call made are not made
        again, so a destination added later gets its kinds on the next export.

    Returns
    -------
    list of Path
        Every object file of the result.
    """
    folder = ResultFolder(result_dir)
    wanted = list(kinds) if kinds is not None else list(DEFAULT_KINDS)
    missing = [k for k in wanted if k not in folder.encoded_kinds()]
    if folder.encoded and not missing:
        return folder.objects()
    if spool_dir is not None and not is_current(folder, spool_dir):
        folder.mark_superseded(None, "the series changed after scoring; a newer job covers it")
        return []
    summary = folder.summary()
    pixels = None
    if any(k.needs_source_pixels for k in missing):
        source = load_series([Path(p) for p in summary["sources"]])
        pixels = stored_values(unflip(source.pixels, source), source.source_datasets[0])
        sources = source.source_datasets  # the headers, already read with the pixels
    else:
        sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in summary["sources"]]
    spread_entry = summary.get("spread")
    objects: list[tuple[ResultKind | None, Any]] = list(encode_result_objects(
        missing, sources, folder.heatmap(), threshold=summary["threshold"],
        model_version=summary["model_version"], output_uid_seed=summary["result_id"],
        laterality=summary["laterality"],
        labels=ScoreLabels.from_summary(summary.get("scoring")), source_pixels=pixels,
        spread=folder.spread(),
        spread_labels=SpreadLabels.from_summary(spread_entry) if spread_entry else None,
        expected=folder.expected()))
    withdrawn = supersede_earlier(folder) if spool_dir is not None and not folder.encoded else []
    if withdrawn:
        objects.append((None, encode_rejection_note(withdrawn,
                                                    output_uid_seed=summary["result_id"])))
        logger.info("result %s withdraws %d earlier objects of its series", folder.result_id,
                    len(withdrawn))
    paths = folder.write_objects(objects, missing)
    logger.info("encoded %d result objects (%s) for %s", len(objects),
                ", ".join(k.value for k in missing), folder.result_id)
    return paths


def export(result_dir: Path, settings: Settings, *, job_id: str | None = None) -> DeliveryReport:
    """Send a result's objects to the configured destinations, each the kinds it takes
    (see :func:`deliver`). Kinds a destination takes that were not encoded yet (it was
    added to the configuration later) are encoded first."""
    folder = ResultFolder(result_dir)
    if folder.superseded is None and set(settings.result_kinds) - folder.encoded_kinds():
        encode(folder.path, spool_dir=Path(settings.spool_dir), kinds=settings.result_kinds)
    return deliver(folder, settings.destinations,
                   spool_dir=Path(settings.spool_dir), calling_ae_title=settings.ae_title,
                   policy=RetryPolicy.from_settings(settings), job_id=job_id)


def run_offline(inputs: list[Path], out_dir: Path, *, bundle: Path | None = None,
                device: str = "cpu", mode: str | None = None,
                kinds: Sequence[ResultKind] | None = None) -> list[Path]:
    """Analyze and encode files or folders with no network (``picard-node score``).

    Inputs are grouped by Series Instance UID; each series gets a result folder under
    ``out_dir`` with the objects of `kinds` (default: heatmap, segmentation, findings SR).
    Returns the result folders.
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
        encode(outcome.result_dir, kinds=kinds)
        results.append(outcome.result_dir)
    return results
