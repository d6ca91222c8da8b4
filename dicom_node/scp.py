"""Storage SCP: receive tomosynthesis instances, spool them durably, announce complete series.

The SCP (pynetdicom) accepts the image storage SOP classes in :data:`ACCEPTED_SOP_CLASSES`
in every transfer syntax pydicom can decode here (:func:`decodable_transfer_syntaxes`),
plus Verification (C-ECHO). Other SOP classes are not accepted during association
negotiation; a request that still names one is refused with *SOP Class Not Supported*.

Each C-STORE is received in pynetdicom's chunked mode (the data set streams into a temporary
file, see ``STORE_RECV_CHUNKED_DATASET``), checked cheaply (meta, UIDs, complete element
structure, no pixel decoding), then moved into the spool and fsynced **before** success is
answered. A bad instance is answered with a failure status and quarantined; the SCP keeps
serving.

A series is complete

* at once, when a multi-frame instance (``NumberOfFrames > 1``, e.g. one Breast
  Tomosynthesis Image) arrives;
* otherwise after ``Settings.series_quiet_seconds`` without a new instance of the series
  (a quiet-period monitor thread, as in mercure's router).

Then ``on_series_complete(SeriesRef)`` runs once, in the monitor thread. An exception
from it is logged and the call is retried later with backoff; the series stays ``complete``
in the spool (see :meth:`dicom_node.spool.Spool.pending_series`). The callback is expected
to record the job with :meth:`~dicom_node.spool.Spool.mark_dispatched`.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Callable

from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator, dcmread
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
import pynetdicom.dimse_messages as _dimse_messages
from pynetdicom import AE, _config, evt
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import Verification

from dicom_node.config import Settings
from dicom_node.spool import (
    SeriesRef,
    Spool,
    SpoolError,
    StoredInstance,
    check_uid,
    start_writeback,
)

logger = logging.getLogger(__name__)

#: Storage SOP classes the node accepts, UID → name.
ACCEPTED_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.13.1.3": "Breast Tomosynthesis Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.2": "Digital Mammography X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "Digital Mammography X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
}

_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                 ExplicitVRBigEndian)
#: Element values above this many bytes are skipped, not read, while checking an instance.
_DEFER_BYTES = 4096
_TAG_SOP_CLASS = Tag(0x0008, 0x0016)
_TAG_SOP_INSTANCE = Tag(0x0008, 0x0018)
_TAG_STUDY = Tag(0x0020, 0x000D)
_TAG_SERIES = Tag(0x0020, 0x000E)
_TAG_FRAMES = Tag(0x0028, 0x0008)
_WANTED = {_TAG_SOP_CLASS, _TAG_SOP_INSTANCE, _TAG_STUDY, _TAG_SERIES, _TAG_FRAMES}
_ITEM = (0xFFFE, 0xE000)
_SEQ_DELIM = (0xFFFE, 0xE0DD)
#: Longest wait between retries of a failing series callback, seconds.
MAX_RETRY_SECONDS = 300.0


class StoreStatus(IntEnum):
    """C-STORE response statuses the SCP answers (PS3.4 B.2.3 and PS3.7 C)."""

    SUCCESS = 0x0000
    #: Refused: SOP Class not supported (general status).
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    #: Processing failure (general status): an unexpected error in the node.
    PROCESSING_FAILURE = 0x0110
    #: Refused: Out of resources (disk full, cannot write the spool).
    OUT_OF_RESOURCES = 0xA700
    #: Error: Data Set does not match SOP Class (missing/invalid/mismatched identifiers).
    DATASET_MISMATCH = 0xA900
    #: Error: Cannot understand (unreadable, truncated or corrupt data set).
    CANNOT_UNDERSTAND = 0xC000


class InvalidInstanceError(ValueError):
    """A received instance the node refuses; `status` is the C-STORE status to answer."""

    def __init__(self, message: str, status: StoreStatus) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InstanceHeader:
    """The identifiers the SCP needs from a received instance.

    Attributes
    ----------
    sop_class_uid, sop_instance_uid, study_uid, series_uid : str
        From the data set (not the command or file meta).
    number_of_frames : int
        ``NumberOfFrames``, 1 when absent.
    transfer_syntax : str
        Transfer Syntax UID from the file meta.
    """

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    number_of_frames: int
    transfer_syntax: str


def decodable_transfer_syntaxes() -> list[UID]:
    """Transfer syntaxes pydicom can read and decode with the plugins installed here.

    Uncompressed syntaxes always; compressed ones when a pixel data decoder plugin
    (pylibjpeg-openjpeg, pylibjpeg-libjpeg, pyjpegls, Pillow, GDCM...) is available.
    """
    from pydicom.pixels.decoders.base import get_decoder

    found: list[UID] = list(_UNCOMPRESSED)
    for uid in AllTransferSyntaxes:
        if uid in found:
            continue
        try:
            if get_decoder(uid).is_available:
                found.append(uid)
        except NotImplementedError:
            continue
    return found


def read_instance_header(path: Path | str) -> InstanceHeader:
    """Check a received Part 10 file cheaply and return its identifiers.

    Reads the file meta, walks the top-level elements of the data set without reading
    large values (pixel data is skipped, not decoded) and checks that the last element ends
    exactly at the end of the file, so truncated transfers are caught. Encapsulated pixel
    data is checked fragment by fragment. A deflated data set is inflated and parsed.

    Raises
    ------
    InvalidInstanceError
        ``CANNOT_UNDERSTAND`` for unreadable, truncated or corrupt files;
        ``DATASET_MISMATCH`` when a required identifier is missing or not a UID.
    """
    path = Path(path)
    try:
        meta, offset = split_dataset(path)
        ts = UID(str(meta.TransferSyntaxUID)) if "TransferSyntaxUID" in meta else None
    except Exception as exc:  # noqa: BLE001 - any parser failure means "cannot understand"
        raise InvalidInstanceError(f"unreadable file meta: {exc}", StoreStatus.CANNOT_UNDERSTAND)
    if ts is None or not ts.is_transfer_syntax:
        raise InvalidInstanceError(f"unknown transfer syntax {ts!r}", StoreStatus.CANNOT_UNDERSTAND)
    try:
        if ts.is_deflated:
            values = _values_from_full_read(path)
        else:
            values = _walk_elements(path, offset, ts)
    except InvalidInstanceError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise InvalidInstanceError(f"corrupt data set: {type(exc).__name__}: {exc}",
                                   StoreStatus.CANNOT_UNDERSTAND)
    try:
        sop_class = check_uid(values.get(_TAG_SOP_CLASS), "SOPClassUID")
        sop_instance = check_uid(values.get(_TAG_SOP_INSTANCE), "SOPInstanceUID")
        study = check_uid(values.get(_TAG_STUDY), "StudyInstanceUID")
        series = check_uid(values.get(_TAG_SERIES), "SeriesInstanceUID")
    except SpoolError as exc:
        raise InvalidInstanceError(str(exc), StoreStatus.DATASET_MISMATCH)
    frames_text = values.get(_TAG_FRAMES, "").strip(" \x00") or "1"
    try:
        frames = int(frames_text)
    except ValueError:
        raise InvalidInstanceError(f"NumberOfFrames {frames_text!r} is not an integer",
                                   StoreStatus.DATASET_MISMATCH)
    return InstanceHeader(sop_class, sop_instance, study, series, frames, str(ts))


def _values_from_full_read(path: Path) -> dict[Any, str]:
    ds = dcmread(path)
    return {tag: str(ds[tag].value) for tag in _WANTED if tag in ds}


def _walk_elements(path: Path, offset: int, ts: UID) -> dict[Any, str]:
    size = path.stat().st_size
    values: dict[Any, str] = {}
    last_end = offset
    with open(path, "rb") as fp:
        fp.seek(offset)
        for elem in data_element_generator(fp, ts.is_implicit_VR, ts.is_little_endian,
                                           defer_size=_DEFER_BYTES):
            tell = getattr(elem, "value_tell", None)
            length = getattr(elem, "length", None)
            if elem.tag in _WANTED and isinstance(elem.value, bytes):
                values[elem.tag] = elem.value.decode("ascii", "replace")
            if tell is None:
                continue
            if length == 0xFFFFFFFF:
                if getattr(elem, "VR", None) == "SQ" or isinstance(elem.value, list):
                    last_end = max(last_end, fp.tell())
                    continue
                end = _encapsulated_end(fp, tell, size, ts.is_little_endian)
                fp.seek(end)
            else:
                end = tell + length
            last_end = max(last_end, end)
        if last_end != size:
            raise InvalidInstanceError(
                f"truncated or trailing bytes: elements end at byte {last_end}, file has {size}",
                StoreStatus.CANNOT_UNDERSTAND)
    return values


def _encapsulated_end(fp: Any, tell: int, size: int, little_endian: bool) -> int:
    """Walk the items of an undefined-length value; return the offset after its delimiter."""
    order = "<" if little_endian else ">"
    pos = tell
    while True:
        fp.seek(pos)
        head = fp.read(8)
        if len(head) < 8:
            raise InvalidInstanceError("encapsulated pixel data ends before its delimiter",
                                       StoreStatus.CANNOT_UNDERSTAND)
        group, elem, length = struct.unpack(order + "HHL", head)
        pos += 8
        if (group, elem) == _SEQ_DELIM:
            return pos
        if (group, elem) != _ITEM or length == 0xFFFFFFFF:
            raise InvalidInstanceError(
                f"bad item ({group:04X},{elem:04X}) in encapsulated pixel data",
                StoreStatus.CANNOT_UNDERSTAND)
        pos += length
        if pos > size:
            raise InvalidInstanceError("encapsulated pixel data fragment runs past end of file",
                                       StoreStatus.CANNOT_UNDERSTAND)


#: Bytes received between two writeback requests for a chunked data set.
WRITEBACK_BYTES = 8 * 1024 * 1024


class _SpoolChunkFile:
    """Where pynetdicom streams one chunked C-STORE data set: in the spool's ``tmp/``.

    Stands in for the ``NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")``
    pynetdicom opens (it uses ``write``, ``file.flush``, ``close`` and ``name``). Living on
    the spool's file system, the file is later renamed into place, never copied; every
    :data:`WRITEBACK_BYTES` the kernel is asked to start writing it to disk, so the fsync
    before the response waits only for the last few megabytes.
    """

    def __init__(self, directory: Path, suffix: str = ".dcm") -> None:
        fd, self.name = tempfile.mkstemp(suffix=suffix, prefix="rx-", dir=directory)
        self._fh = os.fdopen(fd, "wb")
        self._requested = 0

    @property
    def file(self) -> "_SpoolChunkFile":
        return self

    def write(self, data: bytes) -> int:
        return self._fh.write(data)

    def flush(self) -> None:
        self._fh.flush()
        written = self._fh.tell()
        if written - self._requested >= WRITEBACK_BYTES:
            start_writeback(self._fh.fileno(), self._requested, written - self._requested)
            self._requested = written

    def close(self) -> None:
        self._fh.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


_RUNNING: set[int] = set()
_RUNNING_SAVED: dict[str, bool] = {}
_RUNNING_LOCK = threading.Lock()

#: Spool ``tmp/`` folder of each running SCP's AE (chunk files of its associations go there).
_CHUNK_DIRS: "weakref.WeakKeyDictionary[AE, Path]" = weakref.WeakKeyDictionary()
_PYNETDICOM_TEMPFILE = getattr(_dimse_messages, "NamedTemporaryFile", None)


def _chunk_file(*args: Any, **kwargs: Any) -> Any:
    """pynetdicom's temporary-file factory, redirected for associations of our SCPs."""
    dul = threading.current_thread()  # pynetdicom decodes P-DATA in the DUL thread
    ae = getattr(getattr(dul, "assoc", None), "ae", None)
    directory = _CHUNK_DIRS.get(ae) if ae is not None else None
    if directory is None or args or kwargs.get("mode", "wb") != "wb":
        return _PYNETDICOM_TEMPFILE(*args, **kwargs)  # type: ignore[misc]
    return _SpoolChunkFile(directory, kwargs.get("suffix", ".dcm"))


def _install_chunk_file_factory() -> bool:
    """Route pynetdicom's chunked-receive files through :func:`_chunk_file` (idempotent).

    If this pynetdicom no longer creates them with ``NamedTemporaryFile`` the files stay in
    the system temporary folder and are copied into the spool when that is another file
    system: slower, equally durable.
    """
    if _PYNETDICOM_TEMPFILE is None:
        logger.warning("pynetdicom has no dimse_messages.NamedTemporaryFile; received data "
                       "sets stay in %s until moved", tempfile.gettempdir())
        return False
    _dimse_messages.NamedTemporaryFile = _chunk_file  # type: ignore[attr-defined]
    return True


def _failure(status: StoreStatus, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = int(status)
    ds.ErrorComment = comment[:64]
    return ds


@dataclass
class _AssocStats:
    calling_ae: str
    peer: str
    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    failed: int = 0
    duplicates: int = 0
    nbytes: int = 0
    outcome: str = "connection closed"


@dataclass
class _SeriesEntry:
    ref: SeriesRef
    last_activity: float
    state: str = "open"  # "open" | "complete" (waiting for / in the callback)
    attempts: int = 0
    next_try: float = 0.0


class StorageSCP:
    """pynetdicom storage SCP that spools instances and reports complete series.

    Parameters
    ----------
    settings : Settings
        Uses ``ae_title``, ``host``, ``port`` (0: a free port), ``spool_dir``,
        ``series_quiet_seconds``, ``allowed_calling_aets`` and ``min_free_bytes``.
    on_series_complete : callable
        Called as ``on_series_complete(ref)`` once per complete series, in the SCP's monitor
        thread. Exceptions are logged and the call is retried later.
    redispatch_pending : bool, optional
        On :meth:`start`, also call `on_series_complete` for series left ``complete`` but not
        dispatched by an earlier run. Default ``False`` (the ``picard-node`` CLI does it).

    Attributes
    ----------
    port : int
        The TCP port actually bound (valid after :meth:`start`).
    spool : Spool
        The spool instances are written to.
    """

    def __init__(self, settings: Settings, on_series_complete: Callable[[SeriesRef], Any], *,
                 redispatch_pending: bool = False) -> None:
        self.settings = settings
        self.on_series_complete = on_series_complete
        self.redispatch_pending = redispatch_pending
        self.spool = Spool(settings.spool_dir)
        self.port: int = settings.port
        self._quiet = float(settings.series_quiet_seconds)
        self._ae: AE | None = None
        self._server: Any = None
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str], _SeriesEntry] = {}
        self._assocs: dict[int, _AssocStats] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Bind the port and serve in background threads (returns at once)."""
        if self._server is not None:
            raise RuntimeError("StorageSCP is already started")
        # Stream data sets to a temporary file instead of memory (large tomosynthesis objects).
        # The flag is process-wide; the previous value comes back when the last SCP stops.
        with _RUNNING_LOCK:
            if not _RUNNING:
                _RUNNING_SAVED["chunked"] = _config.STORE_RECV_CHUNKED_DATASET
            _RUNNING.add(id(self))
            _config.STORE_RECV_CHUNKED_DATASET = True
        ae = AE(ae_title=self.settings.ae_title)
        ae.maximum_pdu_size = 0  # unlimited: peers may send large PDUs
        allowed = list(getattr(self.settings, "allowed_calling_aets", []) or [])
        if allowed:
            ae.require_calling_aet = allowed
        syntaxes = decodable_transfer_syntaxes()
        for uid in ACCEPTED_SOP_CLASSES:
            ae.add_supported_context(uid, syntaxes)
        ae.add_supported_context(Verification)
        handlers = [
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_ACCEPTED, self._handle_accepted),
            (evt.EVT_REJECTED, self._handle_rejected),
            (evt.EVT_RELEASED, self._handle_released),
            (evt.EVT_ABORTED, self._handle_aborted),
            (evt.EVT_CONN_CLOSE, self._handle_conn_close),
        ]
        for stale in self.spool.tmp_dir.glob("rx-*.dcm"):  # left by a crash mid-transfer
            stale.unlink(missing_ok=True)
        if _install_chunk_file_factory():
            _CHUNK_DIRS[ae] = self.spool.tmp_dir
        self._server = ae.start_server((self.settings.host, self.settings.port), block=False,
                                       evt_handlers=handlers)
        self._ae = ae
        self.port = int(self._server.server_address[1])
        self._resume_from_spool()
        self._stop.clear()
        self._monitor = threading.Thread(target=self._run_monitor, name="scp-series-monitor",
                                         daemon=True)
        self._monitor.start()
        logger.info("storage SCP %s listening on %s:%d (spool %s, quiet period %.1f s, "
                    "%d transfer syntaxes)", self.settings.ae_title, self.settings.host,
                    self.port, self.spool.root, self._quiet, len(syntaxes))

    def stop(self) -> None:
        """Stop listening, abort open associations and stop the monitor thread."""
        if self._ae is not None:
            self._ae.shutdown()  # shuts the server down and aborts its associations
        self._server = None
        self._ae = None
        with _RUNNING_LOCK:
            if id(self) in _RUNNING:
                _RUNNING.discard(id(self))
                if not _RUNNING:
                    _config.STORE_RECV_CHUNKED_DATASET = _RUNNING_SAVED.get("chunked", False)
        self._stop.set()
        self._wake.set()
        if self._monitor is not None:
            self._monitor.join(timeout=30)
            self._monitor = None
        logger.info("storage SCP %s stopped", self.settings.ae_title)

    def __enter__(self) -> "StorageSCP":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _resume_from_spool(self) -> None:
        now = time.monotonic()
        with self._lock:
            for ref in self.spool.open_series():
                logger.info("series %s was still open at the last stop; quiet period restarts",
                            ref.series_uid)
                self._series[(ref.study_uid, ref.series_uid)] = _SeriesEntry(ref, now)
            if self.redispatch_pending:
                for ref in self.spool.pending_series():
                    logger.info("series %s is complete but was not dispatched; dispatching",
                                ref.series_uid)
                    self._series[(ref.study_uid, ref.series_uid)] = _SeriesEntry(
                        ref, now, state="complete")

    # ------------------------------------------------------------------ C-STORE
    def _handle_store(self, event: Any) -> int | Dataset:
        stats = self._stats(event.assoc)
        try:
            status = self._store(event)
        except Exception:  # noqa: BLE001 - never let a bug kill the association
            logger.exception("unexpected error while storing an instance")
            status = _failure(StoreStatus.PROCESSING_FAILURE, "internal error in the node")
        code = status if isinstance(status, int) else int(status.Status)
        if stats is not None:
            if code == StoreStatus.SUCCESS:
                stats.stored += 1
            else:
                stats.failed += 1
        return status

    def _store(self, event: Any) -> int | Dataset:
        req = event.request
        affected_class = str(req.AffectedSOPClassUID)
        affected_uid = str(req.AffectedSOPInstanceUID)
        stats = self._stats(event.assoc)
        if affected_class not in ACCEPTED_SOP_CLASSES:
            logger.warning("refused instance %s: SOP class %s is not supported", affected_uid,
                           affected_class)
            return _failure(StoreStatus.SOP_CLASS_NOT_SUPPORTED,
                            f"SOP class {affected_class} not supported")
        free = shutil.disk_usage(self.spool.root).free
        min_free = int(getattr(self.settings, "min_free_bytes", 0))
        if free < min_free:
            logger.error("refused instance %s: %d bytes free in %s, need %d", affected_uid,
                         free, self.spool.root, min_free)
            return _failure(StoreStatus.OUT_OF_RESOURCES, "spool disk full")
        src, owned = self._received_file(event)
        try:
            if stats is not None:
                stats.nbytes += src.stat().st_size
            return self._check_and_spool(src, affected_class, affected_uid)
        finally:
            if owned and src.exists():
                src.unlink()

    def _received_file(self, event: Any) -> tuple[Path, bool]:
        """The received Part 10 file; ``owned`` when the SCP made it and must remove it."""
        try:
            return Path(event.dataset_path), False
        except AttributeError:  # chunked mode off (e.g. another library changed the flag)
            fd, name = tempfile.mkstemp(suffix=".dcm", dir=self.spool.tmp_dir)
            with open(fd, "wb") as fh:
                fh.write(event.encoded_dataset())
            return Path(name), True

    def _check_and_spool(self, src: Path, affected_class: str, affected_uid: str) -> int | Dataset:
        try:
            header = read_instance_header(src)
            if header.sop_class_uid != affected_class:
                raise InvalidInstanceError(
                    f"data set SOP class {header.sop_class_uid} differs from the request's "
                    f"{affected_class}", StoreStatus.DATASET_MISMATCH)
            if header.sop_instance_uid != affected_uid.strip(" \x00"):
                raise InvalidInstanceError(
                    f"data set SOP instance {header.sop_instance_uid} differs from the "
                    f"request's {affected_uid}", StoreStatus.DATASET_MISMATCH)
        except InvalidInstanceError as exc:
            logger.warning("refused instance %s (status 0x%04X): %s", affected_uid,
                           exc.status, exc)
            self._quarantine(src, affected_uid, str(exc))
            return _failure(exc.status, str(exc))
        try:
            stored = self.spool.adopt_file(src, study_uid=header.study_uid,
                                           series_uid=header.series_uid,
                                           sop_instance_uid=header.sop_instance_uid)
            self._note_instance(stored, header)
        except OSError as exc:
            logger.error("cannot spool instance %s: %s", affected_uid, exc)
            return _failure(StoreStatus.OUT_OF_RESOURCES, f"cannot write spool: {exc}")
        logger.debug("stored %s (%d frames) in %s%s", header.sop_instance_uid,
                     header.number_of_frames, stored.path.parent,
                     " (duplicate)" if stored.duplicate else "")
        return StoreStatus.SUCCESS

    def _quarantine(self, src: Path, name: str, reason: str) -> None:
        try:
            self.spool.quarantine(src, name=name, reason=reason)
        except OSError as exc:
            logger.error("cannot quarantine %s: %s", name, exc)

    # ------------------------------------------------------------------ series state
    def _note_instance(self, stored: StoredInstance, header: InstanceHeader) -> None:
        """Update series state after an instance is durably in the spool."""
        ref = stored.series
        key = (ref.study_uid, ref.series_uid)
        now = time.monotonic()
        multi_frame = header.number_of_frames > 1
        with self._lock:
            entry = self._series.get(key)
            if entry is None:
                state = self.spool.state(ref)
                if state not in (None, "received"):
                    if stored.duplicate:
                        return  # same instance again: nothing changes
                    logger.warning("series %s was %s; a new instance arrived, so it reopens",
                                   ref.series_uid, state)
                    self.spool.reopen(ref)
                self.spool.mark_received(ref)
                entry = _SeriesEntry(ref, now)
                self._series[key] = entry
            elif entry.state == "complete" and not stored.duplicate and not multi_frame:
                logger.warning("series %s got a new instance after completion; it reopens",
                               ref.series_uid)
                self.spool.reopen(ref)
                self.spool.mark_received(ref)
                entry.state = "open"
            entry.last_activity = now
            if multi_frame and entry.state == "open":
                self._complete(entry, reason="multi-frame instance")
        if multi_frame:
            self._wake.set()

    def _complete(self, entry: _SeriesEntry, *, reason: str) -> None:
        """Mark a series complete (caller holds the lock); the monitor runs the callback."""
        self.spool.mark_complete(entry.ref, reason=reason)
        entry.state = "complete"
        entry.attempts = 0
        entry.next_try = 0.0
        logger.info("series %s complete (%s)", entry.ref.series_uid, reason)

    def _run_monitor(self) -> None:
        tick = min(max(self._quiet / 5.0, 0.05), 1.0)
        while not self._stop.is_set():
            self._wake.wait(tick)
            self._wake.clear()
            if self._stop.is_set():
                break
            now = time.monotonic()
            due: list[_SeriesEntry] = []
            with self._lock:
                for entry in list(self._series.values()):
                    if entry.state == "open" and now - entry.last_activity >= self._quiet:
                        try:
                            self._complete(entry, reason="quiet period")
                        except OSError as exc:
                            logger.error("cannot mark series %s complete: %s",
                                         entry.ref.series_uid, exc)
                            continue
                    if entry.state == "complete" and entry.next_try <= now:
                        due.append(entry)
            for entry in due:
                self._dispatch(entry)

    def _dispatch(self, entry: _SeriesEntry) -> None:
        key = (entry.ref.study_uid, entry.ref.series_uid)
        try:
            self.on_series_complete(entry.ref)
        except Exception:  # noqa: BLE001 - the callback must never stop the SCP
            with self._lock:
                entry.attempts += 1
                delay = min(self._quiet * 2 ** entry.attempts, MAX_RETRY_SECONDS)
                entry.next_try = time.monotonic() + delay
            logger.exception("series callback failed for %s (attempt %d); retry in %.1f s",
                             entry.ref.series_uid, entry.attempts, delay)
            return
        with self._lock:
            # A new instance may have reopened the series during the call: keep it then.
            if self._series.get(key) is entry and entry.state == "complete":
                del self._series[key]

    # ------------------------------------------------------------------ associations
    def _stats(self, assoc: Any) -> _AssocStats | None:
        with self._lock:
            return self._assocs.get(id(assoc))

    def _handle_accepted(self, event: Any) -> None:
        requestor = event.assoc.requestor
        stats = _AssocStats(calling_ae=str(requestor.ae_title).strip(),
                            peer=f"{requestor.address}:{requestor.port}")
        with self._lock:
            self._assocs[id(event.assoc)] = stats
        for cx in event.assoc.rejected_contexts:
            name = ACCEPTED_SOP_CLASSES.get(cx.abstract_syntax) or UID(cx.abstract_syntax).name
            logger.warning("association from %s (%s): refused presentation context for %s "
                           "(%s)", stats.calling_ae, stats.peer, name,
                           ", ".join(UID(ts).name for ts in cx.transfer_syntax))

    def _handle_rejected(self, event: Any) -> None:
        requestor = event.assoc.requestor
        logger.warning("association from %s (%s:%s) rejected", str(requestor.ae_title).strip(),
                       requestor.address, requestor.port)

    def _handle_released(self, event: Any) -> None:
        self._set_outcome(event.assoc, "released")

    def _handle_aborted(self, event: Any) -> None:
        self._set_outcome(event.assoc, "aborted")

    def _set_outcome(self, assoc: Any, outcome: str) -> None:
        stats = self._stats(assoc)
        if stats is not None:
            stats.outcome = outcome

    def _handle_conn_close(self, event: Any) -> None:
        with self._lock:
            stats = self._assocs.pop(id(event.assoc), None)
        if stats is None:
            return
        seconds = time.monotonic() - stats.started
        logger.info("association from %s (%s) %s: %d stored, %d failed, %.1f MB in %.2f s",
                    stats.calling_ae, stats.peer, stats.outcome, stats.stored, stats.failed,
                    stats.nbytes / 1e6, seconds)
