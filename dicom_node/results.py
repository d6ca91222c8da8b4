"""The result folder of a scored series, and the bookkeeping of its delivery.

One folder per result under ``<spool>/results/<result_id>/``::

    heatmap.npy              scores on the source grid (stored orientation, source frame order)
    spread.npy               completion spread on the same grid (exact mode only)
    expected.npz             per finding frame: the slice with the model's nearest completion
                             in the hole (0..1 intensity, stored orientation), and the hole
    result.json              summary; written last by analyze: its presence means "analyzed"
    objects/<prefix>_<uid>.dcm  the encoded result objects (prefix: their kind,
                             :mod:`dicom_node.result_kinds`; ``KO``: a rejection note)
    objects/.complete        their names and the kinds encoded; written last by encode
    delivered/<AE>@<host>_<port>   one marker per destination that answered success
    superseded.json          a newer result of the same series replaces this one (never sent
                             again; withdrawn from the PACS by the newer one's rejection note)

The result id is a digest of the source SOP Instance UIDs and the model version, so a
re-sent identical series maps to the same folder and is neither scored nor delivered twice.
Every file is written atomically (:func:`dicom_node.spool.atomic_write_bytes`).

:func:`deliver` is the one call behind which delivery bookkeeping lives: outbox entry,
per-destination markers, audit records, dead-lettering and marking the spooled series done.
A result whose series changed after it was scored (new instances arrived: a newer job
covers the series) or that a newer result superseded is not sent.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from dicom_node.audit import AuditLog
from dicom_node.config import Destination, Settings
from dicom_node.outbox import Outbox, OutboxState
from dicom_node.phi import describe_exception
from dicom_node.result_kinds import DEFAULT_KINDS, ResultKind, kind_of, object_file_name
from dicom_node.scu import ExportError, send_to_destination
from dicom_node.spool import Spool, SpoolError, atomic_write_bytes

logger = logging.getLogger(__name__)

#: Folder of the result folders, under the spool root (or the ``score`` output folder).
RESULTS_DIR = "results"
HEATMAP_FILE = "heatmap.npy"
SUMMARY_FILE = "result.json"
SPREAD_FILE = "spread.npy"
EXPECTED_FILE = "expected.npz"
OBJECTS_DIR = "objects"
OBJECTS_COMPLETE = ".complete"
DELIVERED_DIR = "delivered"
SUPERSEDED_FILE = "superseded.json"


@dataclass(frozen=True)
class ExpectedTissue:
    """What the model expected at the findings: source slices with the completion nearest
    to the original pasted into the hole.

    Attributes
    ----------
    frames : list of int
        0-based source frames (source frame order).
    images : numpy.ndarray
        (n, rows, cols) float32, the slice intensity the model works on (0..1, stored value /
        maximum), stored orientation.
    holes : numpy.ndarray
        (n, rows, cols) bool, the pixels the completion replaced.
    distances : list of float
        The chosen completion's distance to the original (the card's rule space).
    """

    frames: list[int]
    images: np.ndarray
    holes: np.ndarray
    distances: list[float]


def results_root(base_dir: Path | str) -> Path:
    """Parent folder of the result folders under a spool root or output folder."""
    return Path(base_dir) / RESULTS_DIR


def result_id(sop_instance_uids: Iterable[str], model_version: str) -> str:
    """Key of a result: digest of the source SOP Instance UIDs (any order) and the model version.

    Parameters
    ----------
    sop_instance_uids : iterable of str
        SOP Instance UIDs of the scored instances.
    model_version : str
        The model's version string (``pipeline.model_version``).

    Returns
    -------
    str
        24 hexadecimal digits.
    """
    uids = sorted(str(u) for u in sop_instance_uids)
    return hashlib.sha256("\n".join([model_version, *uids]).encode()).hexdigest()[:24]


def _sop_instance_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True,
                               specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


class ResultFolder:
    """One result folder (see the module docstring for its layout).

    Parameters
    ----------
    path : Path or str
        ``<results root>/<result_id>``; created by :meth:`write_analysis`.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @classmethod
    def for_sources(cls, root: Path | str, source_paths: Sequence[Path],
                    model_version: str) -> ResultFolder:
        """The folder for scoring `source_paths` with a model of `model_version`."""
        uids = [_sop_instance_uid(p) for p in source_paths]
        return cls(Path(root) / result_id(uids, model_version))

    def __repr__(self) -> str:
        return f"ResultFolder({str(self.path)!r})"

    @property
    def result_id(self) -> str:
        """The folder name."""
        return self.path.name

    @property
    def objects_dir(self) -> Path:
        """Folder of the encoded DICOM objects."""
        return self.path / OBJECTS_DIR

    # ------------------------------------------------------------------ analyze
    @property
    def analyzed(self) -> bool:
        """Whether the analyze stage finished (the summary exists)."""
        return (self.path / SUMMARY_FILE).exists()

    def write_analysis(self, heatmap: np.ndarray, summary: dict[str, Any], *,
                       spread: np.ndarray | None = None,
                       expected: ExpectedTissue | None = None) -> None:
        """Store the heatmap (and the spread map and expected tissue when given), then the
        summary (last: it marks the stage as done)."""
        self.path.mkdir(parents=True, exist_ok=True)
        arrays = {HEATMAP_FILE: np.asarray(heatmap, dtype=np.float32)}
        if spread is not None:
            arrays[SPREAD_FILE] = np.asarray(spread, dtype=np.float32)
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.save(buffer, array)
            atomic_write_bytes(self.path / name, buffer.getvalue())
        if expected is not None:
            buffer = io.BytesIO()
            np.savez_compressed(buffer, frames=np.asarray(expected.frames, dtype=np.int32),
                                images=np.asarray(expected.images, dtype=np.float32),
                                holes=np.asarray(expected.holes, dtype=bool),
                                distances=np.asarray(expected.distances, dtype=np.float64))
            atomic_write_bytes(self.path / EXPECTED_FILE, buffer.getvalue())
        atomic_write_bytes(self.path / SUMMARY_FILE, json.dumps(summary, indent=2).encode())

    def summary(self) -> dict[str, Any]:
        """The analyze summary (``result.json``)."""
        return json.loads((self.path / SUMMARY_FILE).read_text())

    def heatmap(self) -> np.ndarray:
        """The stored heatmap, (frames, rows, columns) float32."""
        return np.load(self.path / HEATMAP_FILE)

    def spread(self) -> np.ndarray | None:
        """The completion-spread map (like the heatmap), or None when not computed."""
        path = self.path / SPREAD_FILE
        return np.load(path) if path.exists() else None

    def expected(self) -> ExpectedTissue | None:
        """The model-expected tissue of the findings, or None when not computed."""
        path = self.path / EXPECTED_FILE
        if not path.exists():
            return None
        with np.load(path) as data:
            return ExpectedTissue(frames=[int(f) for f in data["frames"]],
                                  images=data["images"], holes=data["holes"],
                                  distances=[float(d) for d in data["distances"]])

    # ------------------------------------------------------------------ encode
    @property
    def encoded(self) -> bool:
        """Whether the encode stage finished (for the kinds in :meth:`encoded_kinds`)."""
        return (self.objects_dir / OBJECTS_COMPLETE).exists()

    def encoded_kinds(self) -> set[ResultKind]:
        """The kinds the encode stage made (or found nothing to make for, e.g. key images
        of a result without findings); empty before encoding."""
        marker = self.objects_dir / OBJECTS_COMPLETE
        if not marker.exists():
            return set()
        text = marker.read_text()
        try:
            return {ResultKind(k) for k in json.loads(text)["kinds"]}
        except (ValueError, KeyError, TypeError):
            return set(DEFAULT_KINDS)  # written before kinds were recorded

    def write_objects(self, objects: Sequence[tuple[ResultKind | None, Dataset]],
                      kinds: Iterable[ResultKind]) -> list[Path]:
        """Write result objects, then the completion marker; returns all the objects' paths.

        Objects already written stay (a later call adds kinds a new destination wants).

        Parameters
        ----------
        objects : sequence of (ResultKind or None, pydicom.Dataset)
            Each object with its kind (None: a rejection note), which names its file.
        kinds : iterable of ResultKind
            The kinds this call encoded, including those it found nothing to make for.
        """
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        for kind, ds in objects:
            path = self.objects_dir / object_file_name(kind, ds.SOPInstanceUID)
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            atomic_write_bytes(path, buffer.getvalue())
        done = self.encoded_kinds() | set(kinds)
        paths = self.objects()
        record = {"files": [p.name for p in paths],
                  "kinds": [k.value for k in ResultKind if k in done]}
        atomic_write_bytes(self.objects_dir / OBJECTS_COMPLETE,
                           json.dumps(record, indent=1).encode())
        return paths

    def objects(self, kinds: Iterable[ResultKind] | None = None) -> list[Path]:
        """The encoded result objects, sorted by name, rejection notes last.

        Parameters
        ----------
        kinds : iterable of ResultKind, optional
            Only objects of these kinds, plus every rejection note. Default: all.
        """
        wanted = None if kinds is None else set(kinds)
        found = [p for p in self.objects_dir.glob("*.dcm")
                 if wanted is None or kind_of(p) in wanted or kind_of(p) is None]
        return sorted(found, key=lambda p: (kind_of(p) is None, p.name))

    def result_objects(self) -> list[Path]:
        """The encoded objects without rejection notes (what a newer result withdraws)."""
        return [p for p in self.objects() if kind_of(p) is not None]

    # ------------------------------------------------------------------ superseded
    @property
    def superseded(self) -> dict[str, Any] | None:
        """``{"by": result_id or None, "reason": ..., "time": ...}`` once superseded."""
        try:
            return json.loads((self.path / SUPERSEDED_FILE).read_text())
        except FileNotFoundError:
            return None

    def mark_superseded(self, by: str | None, reason: str) -> None:
        """Record that this result must not be sent (idempotent: the first record stays)."""
        if self.superseded is None:
            atomic_write_bytes(self.path / SUPERSEDED_FILE, json.dumps(
                {"by": by, "reason": reason, "time": time.time()}).encode())
            logger.warning("result %s superseded%s: %s", self.result_id,
                           f" by {by}" if by else "", reason)

    # ------------------------------------------------------------------ delivery markers
    def _delivery_marker(self, destination: Destination) -> Path:
        return self.path / DELIVERED_DIR / \
            f"{destination.ae_title}@{destination.host}_{destination.port}"

    def delivered_to(self, destination: Destination) -> bool:
        """Whether `destination` already answered success for every object."""
        return self._delivery_marker(destination).exists()

    def mark_delivered(self, destination: Destination, sop_instance_uids: Sequence[str]) -> None:
        """Record that `destination` answered success for the objects."""
        marker = self._delivery_marker(destination)
        marker.parent.mkdir(exist_ok=True)
        atomic_write_bytes(marker, json.dumps({"objects": list(sop_instance_uids),
                                               "time": time.time()}).encode())


def series_results(root: Path | str, study_uid: str, series_uid: str) -> list[ResultFolder]:
    """Analyzed result folders under `root` made from one series (any model, any round)."""
    found = []
    for summary_path in sorted(Path(root).glob(f"*/{SUMMARY_FILE}")):
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, ValueError):
            continue
        if summary.get("study_uid") == study_uid and summary.get("series_uid") == series_uid:
            found.append(ResultFolder(summary_path.parent))
    return found


def supersede_earlier(folder: ResultFolder) -> list[Dataset]:
    """Mark every other result of `folder`'s series superseded by it; return the headers of
    their result objects (rejection notes excluded), for the rejection note that withdraws
    them from the PACS.

    Call it only for a result whose series still holds its sources (:func:`is_current`):
    every other result of the series is then older (scored on fewer or other instances, or
    by another model version).
    """
    summary = folder.summary()
    headers = []
    for other in series_results(folder.path.parent, summary["study_uid"], summary["series_uid"]):
        if other.result_id == folder.result_id:
            continue
        other.mark_superseded(folder.result_id, "a newer result of the same series replaces it")
        headers.extend(pydicom.dcmread(p, stop_before_pixels=True)
                       for p in other.result_objects())
    return headers


def series_in_outbox(spool_dir: Path | str) -> set[tuple[str, str]]:
    """(study, series) UIDs of the results waiting in the outbox or dead-lettered.

    Their delivery is being retried or waits for ``outbox retry``: they are not stuck.
    """
    found = set()
    for entry in Outbox(spool_dir).entries():
        try:
            summary = ResultFolder(entry.result_dir).summary()
        except (OSError, ValueError):
            continue
        found.add((str(summary.get("study_uid")), str(summary.get("series_uid"))))
    return found


def is_current(folder: ResultFolder, spool_dir: Path | str) -> bool:
    """Whether the spooled series still holds exactly the instances `folder` was scored on.

    ``False`` when instances arrived (or left) after scoring: the series reopened and a
    newer job covers it. ``True`` for results not made from a spooled series
    (``picard-node score``).
    """
    summary = folder.summary()
    spool = Spool(spool_dir)
    try:
        ref = spool.series_ref(summary["study_uid"], summary["series_uid"])
    except (SpoolError, KeyError):
        return True
    directory = Path(ref.directory)
    sources = [Path(p) for p in summary.get("sources", [])]
    if not directory.is_dir() or any(p.parent != directory for p in sources):
        return True
    return {p.name for p in spool.series_files(ref)} == {p.name for p in sources}


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed delivery is tried again, and when it is given up (dead-lettered).

    Attributes
    ----------
    base_seconds, max_seconds : float
        Backoff: ``min(max_seconds, base_seconds * 2 ** (attempts - 1))``.
    dead_letter_after_seconds : float
        Age of the first attempt after which a failing result goes to the dead-letter folder.
    """

    base_seconds: float
    max_seconds: float
    dead_letter_after_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """The policy configured in `settings`."""
        return cls(settings.export_retry_base_seconds, settings.export_retry_max_seconds,
                   settings.dead_letter_after_seconds)

    def delay(self, attempts: int) -> float:
        """Seconds to wait before attempt ``attempts + 1``."""
        return min(self.max_seconds, self.base_seconds * 2 ** (attempts - 1))


@dataclass(frozen=True)
class DeliveryReport:
    """What one :func:`deliver` call did.

    Attributes
    ----------
    result_id : str
        The result.
    sent : list of str
        AE titles delivered to by this call.
    complete : bool
        Every destination has answered success (now or earlier).
    retry_in : float or None
        Seconds until the next attempt when a destination failed and the result stays in
        the outbox; None otherwise.
    dead_letter : bool
        The result is in the dead-letter folder (no automatic retries).
    error : str
        The failure of this call ("" when none).
    """

    result_id: str
    sent: list[str] = field(default_factory=list)
    complete: bool = False
    retry_in: float | None = None
    dead_letter: bool = False
    error: str = ""


def deliver(folder: ResultFolder, destinations: Sequence[Destination], *, spool_dir: Path,
            calling_ae_title: str, policy: RetryPolicy,
            job_id: str | None = None) -> DeliveryReport:
    """Send a result's objects to every destination that has not answered success yet.

    The bookkeeping happens here and nowhere else: the outbox entry is opened on the first
    attempt and counts failures; each attempt gets an audit record; each destination that
    answers success gets a marker (so a retry sends only to the rest); a result failing for
    longer than ``policy.dead_letter_after_seconds`` moves to the dead-letter folder; when
    every destination has it, the entry is removed and the spooled series is marked done.

    Parameters
    ----------
    folder : ResultFolder
        An encoded result.
    destinations : sequence of Destination
        Where to send (the TLS settings of each are used).
    spool_dir : Path
        The node's spool (outbox, audit trail, series state).
    calling_ae_title : str
        The node's AE title.
    policy : RetryPolicy
        Backoff and dead-letter limits.
    job_id : str, optional
        The export job calling (recorded in the outbox entry, see
        :attr:`~dicom_node.outbox.OutboxEntry.job_id`).

    Returns
    -------
    DeliveryReport
        ``complete`` without sending when the result is superseded or its series changed
        after scoring (its outbox entry is dropped; the newer result is delivered instead).
    """
    if folder.superseded is None and not is_current(folder, spool_dir):
        folder.mark_superseded(None, "the series changed after scoring; a newer job covers it")
    if folder.superseded is not None:
        Outbox(spool_dir).delivered(folder.result_id)
        logger.info("result %s is superseded; not sent", folder.result_id)
        return DeliveryReport(folder.result_id, complete=True)
    if not destinations:
        logger.info("no destinations configured; result %s stays in %s", folder.result_id,
                    folder.path)
        _mark_series_done(folder, spool_dir)
        return DeliveryReport(folder.result_id, complete=True)
    outbox = Outbox(spool_dir)
    entry = outbox.open(folder.result_id, folder.path, job_id)
    if entry.state is OutboxState.DEAD_LETTER:
        logger.warning("result %s is dead-lettered; `picard-node outbox retry` resends it",
                       folder.result_id)
        return DeliveryReport(folder.result_id, dead_letter=True, error=entry.last_error)
    audit = AuditLog(spool_dir)
    sent = []
    for dest in destinations:
        if folder.delivered_to(dest):
            continue
        objects = folder.objects(dest.objects)
        uids = [_sop_instance_uid(p) for p in objects]
        if not objects:
            logger.info("result %s has none of the objects %s takes (%s: none made, e.g. "
                        "key images without findings); nothing sent", folder.result_id,
                        dest.ae_title, ", ".join(k.value for k in dest.objects))
            folder.mark_delivered(dest, [])
            continue
        try:
            send_to_destination(objects, dest, calling_ae_title=calling_ae_title)
        except (ExportError, ValueError, OSError) as exc:
            error = describe_exception(exc)
            audit.delivery(folder.result_id, dest, uids, "failed", error,
                           calling_ae=calling_ae_title)
            entry = outbox.record_failure(folder.result_id, error)
            if time.time() - entry.first_attempt >= policy.dead_letter_after_seconds:
                outbox.dead_letter(folder.result_id)
                return DeliveryReport(folder.result_id, sent, dead_letter=True, error=error)
            delay = policy.delay(entry.attempts)
            logger.warning("export of %s failed (attempt %d), retrying in %.0f s: %s",
                           folder.result_id, entry.attempts, delay, error)
            return DeliveryReport(folder.result_id, sent, retry_in=delay, error=error)
        folder.mark_delivered(dest, uids)
        audit.delivery(folder.result_id, dest, uids, "delivered", calling_ae=calling_ae_title)
        logger.info("delivered %d objects of %s to %s@%s:%d", len(objects), folder.result_id,
                    dest.ae_title, dest.host, dest.port)
        sent.append(dest.ae_title)
    outbox.delivered(folder.result_id)
    _mark_series_done(folder, spool_dir)
    return DeliveryReport(folder.result_id, sent, complete=True)


def _mark_series_done(folder: ResultFolder, spool_dir: Path) -> None:
    """Mark the spooled series of a delivered result done (when it came through the spool)."""
    summary = folder.summary()
    spool = Spool(spool_dir)
    try:
        ref = spool.series_ref(summary["study_uid"], summary["series_uid"])
    except SpoolError:
        return
    if Path(ref.directory).is_dir():
        spool.mark_done(ref)
