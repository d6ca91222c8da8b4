"""Durable on-disk spool for received DICOM instances and the state of their series.

Layout under the spool root (``Settings.spool_dir``)::

    incoming/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    incoming/<StudyInstanceUID>/<SeriesInstanceUID>/.state/{received,complete,dispatched,done}.json
    quarantine/<time>-<name>.dcm  +  <time>-<name>.dcm.reason.txt
    tmp/                          scratch files, always on the spool's file system

An instance is written durably before the storage SCP answers success: the bytes go to a
temporary file in the destination folder, the file is fsynced, renamed over the final name
and the folder is fsynced (new folders are fsynced into their parents too). A file received
by pynetdicom in chunked mode (``event.dataset_path``) is moved into place with the same
guarantees (``os.replace`` on the same file system, else copy + fsync).

UIDs become path components, so they must be DICOM UIDs (digits and dots, at most 64
characters); anything else is rejected with :class:`SpoolError`.

Series state is a set of small JSON marker files written atomically:
``received`` (first instance stored) → ``complete`` (quiet period over, or a multi-frame
instance arrived) → ``dispatched`` (job id, dispatch count) → ``done``, or ``failed`` (stage
and a reason naming no attribute value; a series that cannot be loaded is *quarantined*: its
files move to ``quarantine/`` and the marker lists them so :meth:`Spool.restore_quarantined`
can bring them back for a retry). :meth:`Spool.pending_series` lists complete series that
were not dispatched, so a restarted node can dispatch them again.
A second copy of an instance (same SOP Instance UID) replaces the first and changes no state.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

from dicom_node.phi import PhiFreeError

logger = logging.getLogger(__name__)

#: Sub-folders of the spool root.
INCOMING_DIR = "incoming"
QUARANTINE_DIR = "quarantine"
TMP_DIR = "tmp"
#: Hidden folder inside a series folder holding its state markers.
STATE_DIR = ".state"


class SeriesState(StrEnum):
    """States of a spooled series, in the order it passes through them (marker names)."""

    RECEIVED = "received"
    COMPLETE = "complete"
    DISPATCHED = "dispatched"
    FAILED = "failed"
    DONE = "done"


#: Marker names, in the order a series passes through them.
MARKERS: tuple[SeriesState, ...] = tuple(SeriesState)

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
#: Values made of these only may be quoted in messages (they cannot hold a name or date).
_UID_CHARS_RE = re.compile(r"^[0-9.]{0,80}$")
_NAME_RE = re.compile(r"[^0-9A-Za-z._-]")
_COPY_CHUNK = 16 * 1024 * 1024


class SpoolError(PhiFreeError, ValueError):
    """Raised for input the spool cannot store (bad UID, missing file)."""


@dataclass(frozen=True)
class SeriesRef:
    """A series in the spool.

    Attributes
    ----------
    study_uid : str
        Study Instance UID.
    series_uid : str
        Series Instance UID.
    directory : str
        Spool folder holding the series' ``*.dcm`` files.
    """

    study_uid: str
    series_uid: str
    directory: str


@dataclass(frozen=True)
class StoredInstance:
    """Outcome of storing one instance.

    Attributes
    ----------
    path : Path
        Final location of the instance file.
    series : SeriesRef
        The series it belongs to.
    duplicate : bool
        True if an instance with the same SOP Instance UID was already there (it was replaced).
    new_series : bool
        True if this was the first instance of the series in the spool.
    """

    path: Path
    series: SeriesRef
    duplicate: bool
    new_series: bool


def check_uid(value: Any, name: str = "UID") -> str:
    """Return `value` as a UID string safe to use as a path component.

    Parameters
    ----------
    value : Any
        The UID; surrounding spaces and NUL padding are removed.
    name : str
        What the UID is, for the error message, e.g. ``"SeriesInstanceUID"``.

    Raises
    ------
    SpoolError
        If the value is not 1-64 characters of digits and dots in dot-separated groups.
    """
    text = str(value if value is not None else "").strip(" \x00")
    if not text or len(text) > 64 or not _UID_RE.match(text):
        shown = repr(text) if _UID_CHARS_RE.match(text) else f"of {len(text)} characters"
        raise SpoolError(f"{name} {shown} is not a DICOM UID (digits and dots, 1-64 chars)")
    return text


def fsync_path(path: Path, *, directory: bool = False) -> None:
    """fsync a file or folder by path."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_sync_file_range() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _load_sync_file_range() if sys.platform.startswith("linux") else None
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, nbytes: int) -> bool:
    """Ask the kernel to start writing a byte range of a file to disk, without waiting.

    Used while a large instance is still arriving, so the fsync before the C-STORE response
    only waits for the tail. Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``; elsewhere a
    no-op. It is a hint for speed, never a durability guarantee (fsync still follows).

    Returns
    -------
    bool
        True if the request was issued.
    """
    if _SYNC_FILE_RANGE is None or nbytes <= 0:
        return False
    return _SYNC_FILE_RANGE(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE) == 0


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` durably: temp file in the same folder, fsync, rename, fsync folder."""
    path = Path(path)
    _replace_via_temp(path, lambda fh: fh.write(data))
    fsync_path(path.parent, directory=True)


def _replace_via_temp(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Let `write` fill a temp file beside `path`, fsync it, then rename it over `path`.

    The temp file is removed when anything fails; the caller fsyncs the folder.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(Path(tmp))
        raise


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _makedirs_durable(path: Path) -> None:
    """Create `path` and missing parents, fsyncing each new folder into its parent."""
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue  # another thread made it; it fsyncs the parent itself
        fsync_path(folder.parent, directory=True)


def _move_durable(src: Path, dst: Path) -> None:
    """Move `src` over `dst` durably; copy + fsync when they are on different file systems."""
    fsync_path(src)
    try:
        os.replace(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        with open(src, "rb") as fin:
            _replace_via_temp(dst, lambda fout: shutil.copyfileobj(fin, fout, _COPY_CHUNK))
        _unlink_quietly(src)
    fsync_path(dst.parent, directory=True)


class Spool:
    """The spool folder: instances, quarantine and series state.

    Parameters
    ----------
    root : Path
        Spool root (``Settings.spool_dir``); created if missing.

    Notes
    -----
    Methods are safe to call from several threads (and processes) at once: every file
    appears under its final name only when complete.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.incoming_dir = self.root / INCOMING_DIR
        self.quarantine_dir = self.root / QUARANTINE_DIR
        self.tmp_dir = self.root / TMP_DIR
        for folder in (self.incoming_dir, self.quarantine_dir, self.tmp_dir):
            _makedirs_durable(folder)

    # ------------------------------------------------------------------ instances
    def series_ref(self, study_uid: str, series_uid: str) -> SeriesRef:
        """Return the reference of a series (UIDs checked), whether or not it exists yet."""
        study = check_uid(study_uid, "StudyInstanceUID")
        series = check_uid(series_uid, "SeriesInstanceUID")
        return SeriesRef(study, series, str(self.incoming_dir / study / series))

    def series_ref_of(self, directory: Path | str) -> SeriesRef:
        """The reference of the series stored in `directory`.

        Raises
        ------
        SpoolError
            If `directory` is not a series folder of this spool.
        """
        directory = Path(directory)
        ref = self.series_ref(directory.parent.name, directory.name)
        if Path(ref.directory).resolve() != directory.resolve():
            raise SpoolError(f"{str(directory)!r} is not a series folder of the spool "
                             f"{str(self.root)!r}")
        return ref

    def instance_path(self, ref: SeriesRef, sop_instance_uid: str) -> Path:
        """Final path of an instance of `ref`."""
        return Path(ref.directory) / f"{check_uid(sop_instance_uid, 'SOPInstanceUID')}.dcm"

    def store_bytes(self, data: bytes, *, study_uid: str, series_uid: str,
                    sop_instance_uid: str) -> StoredInstance:
        """Write an encoded DICOM file (preamble, meta, data set) into the spool durably.

        Raises
        ------
        SpoolError
            If a UID is not a valid DICOM UID.
        OSError
            If the file cannot be written (disk full, permissions).
        """
        ref, dst, new_series = self._prepare(study_uid, series_uid, sop_instance_uid)
        duplicate = dst.exists()
        atomic_write_bytes(dst, data)
        return StoredInstance(dst, ref, duplicate, new_series)

    def adopt_file(self, src: Path | str, *, study_uid: str, series_uid: str,
                   sop_instance_uid: str) -> StoredInstance:
        """Move a complete DICOM file (e.g. pynetdicom's ``event.dataset_path``) into the spool.

        The file is fsynced, renamed into the series folder (copied + fsynced if it lies on
        another file system) and the folder is fsynced. `src` no longer exists afterwards.

        Raises
        ------
        SpoolError
            If a UID is not a valid DICOM UID or `src` does not exist.
        OSError
            If the file cannot be moved.
        """
        src = Path(src)
        if not src.is_file():
            raise SpoolError(f"cannot adopt {str(src)!r}: not a file")
        ref, dst, new_series = self._prepare(study_uid, series_uid, sop_instance_uid)
        duplicate = dst.exists()
        _move_durable(src, dst)
        return StoredInstance(dst, ref, duplicate, new_series)

    def _prepare(self, study_uid: str, series_uid: str,
                 sop_instance_uid: str) -> tuple[SeriesRef, Path, bool]:
        ref = self.series_ref(study_uid, series_uid)
        dst = self.instance_path(ref, sop_instance_uid)
        folder = Path(ref.directory)
        new_series = not folder.is_dir()
        if new_series:
            _makedirs_durable(folder)
        return ref, dst, new_series

    def series_files(self, ref: SeriesRef) -> list[Path]:
        """The ``*.dcm`` files of a series, sorted by name."""
        return sorted(p for p in Path(ref.directory).glob("*.dcm") if p.is_file())

    # ------------------------------------------------------------------ quarantine
    def quarantine(self, src: Path | str | bytes, *, name: str, reason: str) -> Path:
        """Keep a bad instance aside with a ``<file>.reason.txt`` next to it and log it.

        Parameters
        ----------
        src : Path, str or bytes
            File to move into the quarantine (it is moved, not copied) or its bytes.
        name : str
            Base name, e.g. the SOP Instance UID; unsafe characters become ``_``.
        reason : str
            Why it was refused; written to the reason file and logged.

        Returns
        -------
        Path
            The quarantined file.
        """
        stamp = time.strftime("%Y%m%dT%H%M%S")
        safe = _NAME_RE.sub("_", name)[:80] or "unknown"
        dst = self.quarantine_dir / f"{stamp}-{safe}-{uuid.uuid4().hex[:8]}.dcm"
        if isinstance(src, bytes):
            atomic_write_bytes(dst, src)
        else:
            _move_durable(Path(src), dst)
        atomic_write_bytes(dst.with_name(dst.name + ".reason.txt"), (reason + "\n").encode())
        logger.warning("quarantined %s: %s", dst.name, reason)
        return dst

    # ------------------------------------------------------------------ series state
    def _marker(self, ref: SeriesRef, name: SeriesState | str) -> Path:
        try:
            state = SeriesState(name)
        except ValueError:
            raise ValueError(f"marker {name!r} is not one of {[str(m) for m in MARKERS]}") from None
        return Path(ref.directory) / STATE_DIR / f"{state}.json"

    def _write_marker(self, ref: SeriesRef, name: SeriesState, **fields: Any) -> None:
        path = self._marker(ref, name)
        if not path.parent.is_dir():
            _makedirs_durable(path.parent)
        body = {"study_uid": ref.study_uid, "series_uid": ref.series_uid, "time": time.time(),
                **fields}
        atomic_write_bytes(path, json.dumps(body, sort_keys=True).encode())

    def _clear_markers(self, ref: SeriesRef, *states: SeriesState) -> None:
        for state in states:
            _unlink_quietly(self._marker(ref, state))

    def read_marker(self, ref: SeriesRef, name: SeriesState | str) -> dict[str, Any] | None:
        """Content of a state marker, or ``None`` if it is not set."""
        try:
            return json.loads(self._marker(ref, name).read_text())
        except FileNotFoundError:
            return None

    def state(self, ref: SeriesRef) -> SeriesState | None:
        """The furthest state marker set for a series, or ``None``."""
        current = None
        for state in MARKERS:
            if self._marker(ref, state).exists():
                current = state
        return current

    def mark_received(self, ref: SeriesRef) -> None:
        """Record that the series has instances in the spool (idempotent)."""
        if not self._marker(ref, SeriesState.RECEIVED).exists():
            self._write_marker(ref, SeriesState.RECEIVED)

    def mark_complete(self, ref: SeriesRef, *, reason: str) -> None:
        """Record that the series is complete, e.g. ``reason="quiet period"``.

        Clears ``dispatched``, ``failed`` and ``done`` from an earlier round: the series needs
        a new job.
        """
        self._clear_markers(ref, SeriesState.DONE, SeriesState.FAILED, SeriesState.DISPATCHED)
        self._write_marker(ref, SeriesState.COMPLETE, reason=reason)

    def mark_dispatched(self, ref: SeriesRef, job_id: str | None) -> None:
        """Record that the series was handed to a job (`job_id` may be ``None``).

        The marker counts the dispatches of this round (``dispatches``: 1, 2, ...), which the
        watchdog reads (:func:`dicom_node.series.stuck_series`).
        """
        previous = self.read_marker(ref, SeriesState.DISPATCHED) or {}
        self._write_marker(ref, SeriesState.DISPATCHED, job_id=job_id,
                           dispatches=int(previous.get("dispatches", 0)) + 1)

    def mark_failed(self, ref: SeriesRef, *, stage: str, reason: str,
                    result_id: str | None = None,
                    quarantined: dict[str, str] | None = None) -> None:
        """Record that the series' job ended without a result (it stays listed until retried).

        Parameters
        ----------
        ref : SeriesRef
            The series.
        stage : str
            ``"analyze"``, ``"encode"``, ``"export"`` or ``"watchdog"``.
        reason : str
            Why, naming tags and UIDs only (see :mod:`dicom_node.phi`).
        result_id : str, optional
            The result folder concerned, when there is one.
        quarantined : dict of str to str, optional
            Original file name → quarantined path, when the files were quarantined.
        """
        self._write_marker(ref, SeriesState.FAILED, stage=stage, reason=reason[:2000],
                           result_id=result_id, quarantined=quarantined or {})
        logger.error("series %s failed in %s: %s", ref.series_uid, stage, reason)

    def mark_done(self, ref: SeriesRef) -> None:
        """Record that the series' job finished."""
        self._write_marker(ref, SeriesState.DONE)

    def reopen(self, ref: SeriesRef) -> None:
        """Clear ``complete``/``dispatched``/``failed``/``done`` after a new instance arrived
        late."""
        self._clear_markers(ref, SeriesState.DONE, SeriesState.FAILED, SeriesState.DISPATCHED,
                            SeriesState.COMPLETE)
        state_dir = Path(ref.directory) / STATE_DIR
        if state_dir.is_dir():
            fsync_path(state_dir, directory=True)

    def quarantine_series(self, ref: SeriesRef, reason: str, *, stage: str = "analyze") -> None:
        """Move every instance of a series that cannot be analyzed to the quarantine.

        The series is marked failed with the list of moved files, so a restarted node does
        not dispatch it again, ``picard-node status`` lists it and ``picard-node retry`` can
        bring the files back (:meth:`restore_quarantined`).
        """
        moved = {f.name: str(self.quarantine(f, name=f.name, reason=reason))
                 for f in self.series_files(ref)}
        self.mark_failed(ref, stage=stage, reason=f"quarantined: {reason}", quarantined=moved)

    def restore_quarantined(self, ref: SeriesRef) -> int:
        """Move a failed series' quarantined files back into its folder; returns how many."""
        failure = self.read_marker(ref, SeriesState.FAILED) or {}
        restored = 0
        for name, where in (failure.get("quarantined") or {}).items():
            src = Path(where)
            if src.is_file():
                _move_durable(src, Path(ref.directory) / name)
                _unlink_quietly(src.with_name(src.name + ".reason.txt"))
                restored += 1
        return restored

    def all_series(self) -> list[SeriesRef]:
        """Every series folder in the spool (sorted by study, then series UID)."""
        refs = []
        for study_dir in sorted(p for p in self.incoming_dir.iterdir() if p.is_dir()):
            for series_dir in sorted(p for p in study_dir.iterdir() if p.is_dir()):
                refs.append(SeriesRef(study_dir.name, series_dir.name, str(series_dir)))
        return refs

    def series_in(self, state: SeriesState) -> list[SeriesRef]:
        """Series whose furthest marker is `state`."""
        return [ref for ref in self.all_series() if self.state(ref) == state]

    def pending_series(self) -> list[SeriesRef]:
        """Series that are complete but were never dispatched."""
        return self.series_in(SeriesState.COMPLETE)

    def open_series(self) -> list[SeriesRef]:
        """Series that received instances but are not complete yet (e.g. after a crash)."""
        return self.series_in(SeriesState.RECEIVED)

    def failed_series(self) -> list[SeriesRef]:
        """Series whose job ended in a failure (quarantined ones included)."""
        return self.series_in(SeriesState.FAILED)


def pending_series(spool_dir: Path | str) -> list[SeriesRef]:
    """Complete but not dispatched series under `spool_dir` (see :meth:`Spool.pending_series`)."""
    return Spool(spool_dir).pending_series()
