"""Storage SCP: receive tomosynthesis instances, spool them durably, announce complete series.

The SCP (pynetdicom) accepts the image storage SOP classes in :data:`ACCEPTED_SOP_CLASSES`
in every transfer syntax pydicom can decode here (:func:`decodable_transfer_syntaxes`),
plus Verification (C-ECHO). Other SOP classes are not accepted during association
negotiation; a request that still names one is refused with *SOP Class Not Supported*.

Each C-STORE is received in pynetdicom's chunked mode (the data set streams into a temporary
file, see ``STORE_RECV_CHUNKED_DATASET``), checked cheaply (meta, UIDs, complete element
structure, a readable header, pixel data length and dimensions; no pixel decoding), then
moved into the spool and fsynced **before** success is answered. A bad instance is answered
with a failure status and quarantined; the SCP keeps serving.

Access control happens at association level (PS3.8 7.1.1.9): a called AE title other than
``Settings.ae_title`` (unless ``require_called_ae_title`` is off) is rejected with
A-ASSOCIATE-RJ *rejected-permanent, service-user, reason 7*; a calling AE title (or
AE title and source host) not in ``Settings.allowed_calling_aets`` with *reason 3*. With
``Settings.tls_cert``/``tls_key`` the SCP speaks DICOM TLS only; with ``tls_ca`` every client
must present a certificate signed by that CA. The TLS handshake runs in the connection's
own thread with a time limit, so a silent or plain-TCP client blocks nobody.

Every association (accepted, rejected, failed TLS handshake) leaves one record in the audit
trail (:class:`dicom_node.audit.AuditLog`, ``<spool>/audit/audit-YYYYMMDD.jsonl``) and one
log line; neither carries patient names or IDs.

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

import ipaddress
import logging
import os
import shutil
import socket
import ssl
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
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from dicom_node.audit import AuditLog
from dicom_node.config import Settings
from dicom_node.spool import (
    SeriesRef,
    Spool,
    SpoolError,
    StoredInstance,
    check_uid,
    start_writeback,
)
from dicom_node.tls import peer_subject, server_context
from dicom_node.volume import MAX_SHAPE

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
_TAG_SAMPLES = Tag(0x0028, 0x0002)
_TAG_ROWS = Tag(0x0028, 0x0010)
_TAG_COLUMNS = Tag(0x0028, 0x0011)
_TAG_BITS_ALLOCATED = Tag(0x0028, 0x0100)
_TAG_PIXEL_DATA = Tag(0x7FE0, 0x0010)
#: US (unsigned short) elements of the Image Pixel module the checks need.
_US_TAGS = {_TAG_SAMPLES, _TAG_ROWS, _TAG_COLUMNS, _TAG_BITS_ALLOCATED}
_WANTED = {_TAG_SOP_CLASS, _TAG_SOP_INSTANCE, _TAG_STUDY, _TAG_SERIES, _TAG_FRAMES} | _US_TAGS
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
    rows, columns : int
        ``Rows`` and ``Columns`` (0 when absent: not an image).
    """

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    number_of_frames: int
    transfer_syntax: str
    rows: int = 0
    columns: int = 0


@dataclass
class _Scan:
    """What one pass over the top-level elements found."""

    text: dict[Any, str] = field(default_factory=dict)   # UIDs, IS values
    numbers: dict[Any, int | None] = field(default_factory=dict)  # US values (None: bad length)
    seen: set[Any] = field(default_factory=set)           # top-level tags present
    pixel_length: int | None = None                       # native Pixel Data bytes
    pixel_fragments: int | None = None                    # encapsulated fragments (no BOT)


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


def read_instance_header(path: Path | str, *,
                         max_shape: tuple[int, int, int] = MAX_SHAPE) -> InstanceHeader:
    """Check a received Part 10 file cheaply and return its identifiers.

    Reads the file meta, walks the top-level elements of the data set without reading
    large values (pixel data is skipped, not decoded) and checks that the last element ends
    exactly at the end of the file, so truncated transfers are caught. Encapsulated pixel
    data is checked fragment by fragment. A deflated data set is inflated and parsed.

    Then every element before the pixel data, sequences included, is parsed: unknown value
    representations and broken encodings are refused; odd but readable values are left for
    loading to judge.

    For the image storage SOP classes the node accepts (:data:`ACCEPTED_SOP_CLASSES`) it
    also checks, without decoding anything, that

    * Pixel Data, Rows, Columns and Bits Allocated are present and sane;
    * frames, rows and columns stay within `max_shape` (memory bombs);
    * native (uncompressed) Pixel Data holds Rows x Columns x Frames x Samples x Bits
      Allocated bits, and encapsulated Pixel Data has at least one fragment per frame.

    Problems of meaning (missing functional groups of a Breast Tomosynthesis Image,
    inconsistent per-frame geometry, values that are not numbers) are found when the series
    is loaded (:func:`dicom_node.volume.load_series` raises ``VolumeError``; the pipeline
    then quarantines the series).

    Parameters
    ----------
    path : Path or str
        The received Part 10 file.
    max_shape : tuple of int, optional
        Largest accepted (frames, rows, columns); default
        :data:`dicom_node.volume.MAX_SHAPE`, so nothing is accepted that loading would
        refuse for its size.

    Raises
    ------
    InvalidInstanceError
        ``CANNOT_UNDERSTAND`` for unreadable, truncated or corrupt files, pixel data shorter
        than the dimensions need and dimensions over the limits; ``DATASET_MISMATCH`` when a
        required identifier or image attribute is missing or not valid.
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
            scan = _scan_full_read(path)
        else:
            scan = _walk_elements(path, offset, ts)
            _parse_header(path)
    except InvalidInstanceError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise InvalidInstanceError(f"corrupt data set: {type(exc).__name__}: {exc}",
                                   StoreStatus.CANNOT_UNDERSTAND)
    values = scan.text
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
    rows = columns = 0
    if sop_class in ACCEPTED_SOP_CLASSES:
        rows, columns = _check_image(scan, sop_class, frames, ts, max_shape)
    return InstanceHeader(sop_class, sop_instance, study, series, frames, str(ts), rows, columns)


def _check_image(scan: _Scan, sop_class: str, frames: int, ts: UID,
                 max_shape: tuple[int, int, int]) -> tuple[int, int]:
    """Cheap Image Pixel module checks; returns (rows, columns)."""
    mismatch = StoreStatus.DATASET_MISMATCH
    if _TAG_PIXEL_DATA not in scan.seen:
        raise InvalidInstanceError("image without Pixel Data", mismatch)
    needed = {_TAG_ROWS: "Rows", _TAG_COLUMNS: "Columns", _TAG_BITS_ALLOCATED: "BitsAllocated"}
    for tag, name in needed.items():
        if scan.numbers.get(tag) is None:
            raise InvalidInstanceError(f"{name} missing or not an unsigned short", mismatch)
    rows = int(scan.numbers[_TAG_ROWS] or 0)
    columns = int(scan.numbers[_TAG_COLUMNS] or 0)
    bits = int(scan.numbers[_TAG_BITS_ALLOCATED] or 0)
    samples = scan.numbers.get(_TAG_SAMPLES)
    samples = 1 if samples is None else int(samples)
    if min(frames, rows, columns, samples) < 1:
        raise InvalidInstanceError(f"empty image: {frames} frames of {rows} x {columns}, "
                                   f"{samples} samples per pixel", mismatch)
    if bits not in (1, 8, 16, 32, 64):
        raise InvalidInstanceError(f"BitsAllocated {bits} is not 1, 8, 16, 32 or 64", mismatch)
    if frames > max_shape[0] or rows > max_shape[1] or columns > max_shape[2]:
        raise InvalidInstanceError(
            f"{frames} frames of {rows} x {columns} exceed the node's limit of "
            f"{max_shape[0]} frames of {max_shape[1]} x {max_shape[2]}",
            StoreStatus.CANNOT_UNDERSTAND)
    if scan.pixel_length is not None and not ts.is_encapsulated:
        needed_bytes = -(-frames * rows * columns * samples * bits // 8)
        if scan.pixel_length < needed_bytes:
            raise InvalidInstanceError(
                f"pixel data is {scan.pixel_length} bytes; {frames} frames of {rows} x "
                f"{columns} x {bits} bits need {needed_bytes}", StoreStatus.CANNOT_UNDERSTAND)
    if scan.pixel_fragments is not None and not _is_video(ts) and scan.pixel_fragments < frames:
        raise InvalidInstanceError(
            f"encapsulated pixel data has {scan.pixel_fragments} fragments for {frames} frames",
            StoreStatus.CANNOT_UNDERSTAND)
    return rows, columns


def _is_video(ts: UID) -> bool:
    """Video transfer syntaxes put all frames in one stream (fewer fragments than frames)."""
    return any(word in ts.name for word in ("MPEG", "HEVC", "H.265", "H.264"))


def _parse_header(path: Path) -> None:
    """Parse every element before the pixel data, sequences included (raises if unreadable).

    Catches what the top-level walk cannot see: unknown value representations and broken
    encodings inside sequences (e.g. the functional groups). Values are converted, not
    validated: an odd but readable value is left for the loader to judge.
    """
    _convert_all(dcmread(path, stop_before_pixels=True))


def _convert_all(ds: Dataset) -> None:
    for elem in ds:  # iterating converts each raw element (VR, value decoding)
        if elem.VR == "SQ":
            for item in elem.value:
                _convert_all(item)


def _scan_full_read(path: Path) -> _Scan:
    ds = dcmread(path)
    _convert_all(ds)
    scan = _Scan(seen=set(ds.keys()))
    for tag in _WANTED:
        if tag not in ds:
            continue
        value = ds[tag].value
        if tag in _US_TAGS:
            scan.numbers[tag] = value if isinstance(value, int) else None
        else:
            scan.text[tag] = str(value)
    if _TAG_PIXEL_DATA in ds:
        elem = ds[_TAG_PIXEL_DATA]
        value = elem.value if isinstance(elem.value, bytes) else b""
        if ds.file_meta.TransferSyntaxUID.is_encapsulated:
            from pydicom.encaps import generate_fragments

            scan.pixel_fragments = max(sum(1 for _ in generate_fragments(value)) - 1, 0)
        else:
            scan.pixel_length = len(value)
    return scan


def _walk_elements(path: Path, offset: int, ts: UID) -> _Scan:
    size = path.stat().st_size
    scan = _Scan()
    order = "<" if ts.is_little_endian else ">"
    last_end = offset
    with open(path, "rb") as fp:
        fp.seek(offset)
        for elem in data_element_generator(fp, ts.is_implicit_VR, ts.is_little_endian,
                                           defer_size=_DEFER_BYTES):
            tell = getattr(elem, "value_tell", None)
            length = getattr(elem, "length", None)
            scan.seen.add(elem.tag)
            if elem.tag in _WANTED and isinstance(elem.value, bytes):
                if elem.tag in _US_TAGS:
                    scan.numbers[elem.tag] = (struct.unpack(order + "H", elem.value)[0]
                                              if len(elem.value) == 2 else None)
                else:
                    scan.text[elem.tag] = elem.value.decode("ascii", "replace")
            if tell is None:
                continue
            if length == 0xFFFFFFFF:
                if getattr(elem, "VR", None) == "SQ" or isinstance(elem.value, list):
                    last_end = max(last_end, fp.tell())
                    continue
                end, items = _encapsulated_end(fp, tell, size, ts.is_little_endian)
                if elem.tag == _TAG_PIXEL_DATA:
                    scan.pixel_fragments = max(items - 1, 0)  # the first item is the offset table
                fp.seek(end)
            else:
                end = tell + length
                if elem.tag == _TAG_PIXEL_DATA:
                    scan.pixel_length = length
            last_end = max(last_end, end)
        if last_end != size:
            raise InvalidInstanceError(
                f"truncated or trailing bytes: elements end at byte {last_end}, file has {size}",
                StoreStatus.CANNOT_UNDERSTAND)
    return scan


def _encapsulated_end(fp: Any, tell: int, size: int, little_endian: bool) -> tuple[int, int]:
    """Walk the items of an undefined-length value; return (offset after its delimiter, items)."""
    order = "<" if little_endian else ">"
    pos = tell
    items = 0
    while True:
        fp.seek(pos)
        head = fp.read(8)
        if len(head) < 8:
            raise InvalidInstanceError("encapsulated pixel data ends before its delimiter",
                                       StoreStatus.CANNOT_UNDERSTAND)
        group, elem, length = struct.unpack(order + "HHL", head)
        pos += 8
        if (group, elem) == _SEQ_DELIM:
            return pos, items
        if (group, elem) != _ITEM or length == 0xFFFFFFFF:
            raise InvalidInstanceError(
                f"bad item ({group:04X},{elem:04X}) in encapsulated pixel data",
                StoreStatus.CANNOT_UNDERSTAND)
        items += 1
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


class RejectReason(IntEnum):
    """A-ASSOCIATE-RJ diagnostics the SCP sends (result 1 rejected-permanent, source 1
    DICOM UL service-user; PS3.8 9.3.4)."""

    #: Calling AE title not recognized.
    CALLING_AE_TITLE_NOT_RECOGNIZED = 0x03
    #: Called AE title not recognized.
    CALLED_AE_TITLE_NOT_RECOGNIZED = 0x07

    @property
    def text(self) -> str:
        return self.name.lower().replace("_", " ").replace("ae title", "AE title")


#: A-ASSOCIATE-RJ result "rejected-permanent" and source "DICOM UL service-user".
REJECTED_PERMANENT = 0x01
SOURCE_SERVICE_USER = 0x01


def _normalise_ip(text: str) -> str:
    """An IP address in canonical form (IPv4-mapped IPv6 becomes IPv4); text if not an IP."""
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return text
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


@dataclass(frozen=True)
class AccessPolicy:
    """Which associations the SCP accepts (AE titles and source hosts).

    Attributes
    ----------
    ae_title : str
        The node's own AE title.
    require_called_ae_title : bool
        Reject a called AE title other than `ae_title`.
    allowed : tuple of (str, frozenset of str or None)
        Allowed calling AE titles, each with the peer addresses it may come from (``None``:
        any). Empty: every calling AE title is allowed.
    """

    ae_title: str
    require_called_ae_title: bool = True
    allowed: tuple[tuple[str, frozenset[str] | None], ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> "AccessPolicy":
        """Build the policy; host names in ``AET@host`` entries are resolved now.

        Raises
        ------
        ValueError
            If a host name cannot be resolved (the message names the entry).
        """
        allowed = []
        for entry in settings.allowed_calling_aets:
            if "@" not in entry:
                allowed.append((entry.strip(), None))
                continue
            ae, _, host = entry.rpartition("@")
            allowed.append((ae.strip(), frozenset(_resolve(host.strip(), entry))))
        return cls(ae_title=settings.ae_title.strip(),
                   require_called_ae_title=settings.require_called_ae_title,
                   allowed=tuple(allowed))

    def check(self, calling_ae: str, called_ae: str, peer_host: str) -> RejectReason | None:
        """The reason to reject an association request, or ``None`` to go on."""
        if self.require_called_ae_title and called_ae.strip() != self.ae_title:
            return RejectReason.CALLED_AE_TITLE_NOT_RECOGNIZED
        if not self.allowed:
            return None
        calling = calling_ae.strip()
        host = _normalise_ip(peer_host)
        for ae, hosts in self.allowed:
            if ae == calling and (hosts is None or host in hosts):
                return None
        return RejectReason.CALLING_AE_TITLE_NOT_RECOGNIZED


def _resolve(host: str, entry: str) -> set[str]:
    if _normalise_ip(host) != host or _is_ip(host):
        return {_normalise_ip(host)}
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError as exc:
        raise ValueError(f"allowed_calling_aets entry {entry!r}: cannot resolve host "
                         f"{host!r}: {exc}") from exc
    return {_normalise_ip(str(info[4][0])) for info in infos}


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


#: Largest buffer one ``recv`` call allocates up front (a PDU's length comes from the peer).
RECV_BUFFER_MAX = 4 * 1024 * 1024


class _FastReceiveSocket(AssociationSocket):
    """pynetdicom's association socket with a receive loop that does not cost a Python
    round trip per 4 KiB: the PDU is read with ``recv_into`` straight into one buffer
    (at most :data:`RECV_BUFFER_MAX` at a time). Same contract: blocks until ``nr_bytes``
    are read, returns fewer only when the peer closed the connection."""

    def recv(self, nr_bytes: int) -> bytearray:
        sock = self.socket
        assert sock is not None
        out = bytearray()
        while len(out) < nr_bytes:
            want = min(nr_bytes - len(out), RECV_BUFFER_MAX)
            buf = bytearray(want)
            view = memoryview(buf)
            got = 0
            while got < want:
                n = sock.recv_into(view[got:], want - got)
                if not n:
                    break
                got += n
            view.release()
            if not out and got == want == nr_bytes:
                return buf  # the usual case: the whole PDU in one buffer, no copy
            out += buf[:got]
            if got < want:
                break  # connection closed: return what arrived, as pynetdicom does
        return out


class _NodeRequestHandler(RequestHandler):
    """Creates each association with a :class:`_FastReceiveSocket`."""

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        # pynetdicom builds the socket inside this method; only its recv differs, so the
        # instance changes class rather than being created a second time (which would
        # queue a second transport-connection event)
        assoc.dul.socket.__class__ = _FastReceiveSocket
        return assoc


class _NodeServer(ThreadedAssociationServer):
    """Association server whose TLS handshake runs in the connection's thread, with the
    faster receive loop of :class:`_FastReceiveSocket`.

    pynetdicom's server wraps each accepted socket in the accept loop, which handshakes
    there: one silent client would stall every other. Here the socket is wrapped without
    handshaking; the handshake runs in the connection's own thread with a time limit, and a
    failure is reported to ``ae.tls_failed(address, exc)`` and the connection closed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("request_handler") is None:
            kwargs["request_handler"] = _NodeRequestHandler
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = self.socket.accept()  # type: ignore[union-attr]
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True,
                                                  do_handshake_on_connect=False)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            previous = request.gettimeout()
            try:
                request.settimeout(getattr(self.ae, "tls_handshake_seconds", 30.0))
                request.do_handshake()
                request.settimeout(previous)
            except (OSError, ValueError) as exc:  # ssl.SSLError and timeouts are OSErrors
                hook = getattr(self.ae, "tls_failed", None)
                if hook is not None:
                    try:
                        hook(client_address, exc)
                    except Exception:  # noqa: BLE001 - reporting must not kill the thread
                        logger.exception("error while reporting a failed TLS handshake")
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)


class _NodeAE(AE):
    """pynetdicom AE serving through :class:`_NodeServer`."""

    tls_handshake_seconds: float = 30.0
    tls_failed: Callable[[Any, BaseException], None] | None = None

    def make_server(self, address: Any, ae_title: str | None = None,  # type: ignore[override]
                    contexts: Any = None, ssl_context: ssl.SSLContext | None = None,
                    evt_handlers: Any = None, server_class: Any = None,
                    **kwargs: Any) -> Any:
        if server_class is None or server_class is ThreadedAssociationServer:
            server_class = _NodeServer
        return super().make_server(address, ae_title=ae_title, contexts=contexts,
                                   ssl_context=ssl_context, evt_handlers=evt_handlers,
                                   server_class=server_class, **kwargs)


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
    called_ae: str = ""
    peer_host: str = ""
    peer_port: int | None = None
    tls: bool = False
    tls_peer: str | None = None
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
        ``series_quiet_seconds``, ``allowed_calling_aets``, ``require_called_ae_title``,
        ``min_free_bytes`` and the TLS settings ``tls_cert``, ``tls_key``, ``tls_ca``,
        ``tls_handshake_seconds``.
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
    audit : AuditLog
        The audit trail (one record per association).
    """

    def __init__(self, settings: Settings, on_series_complete: Callable[[SeriesRef], Any], *,
                 redispatch_pending: bool = False) -> None:
        self.settings = settings
        self.on_series_complete = on_series_complete
        self.redispatch_pending = redispatch_pending
        self.spool = Spool(settings.spool_dir)
        self.audit = AuditLog(settings.spool_dir)
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
        self._policy = AccessPolicy(ae_title=settings.ae_title.strip())  # resolved in start()

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Bind the port and serve in background threads (returns at once)."""
        if self._server is not None:
            raise RuntimeError("StorageSCP is already started")
        # Raises ValueError (TLSConfigError) for unresolvable hosts or unusable TLS files.
        self._policy = AccessPolicy.from_settings(self.settings)
        ssl_context = None
        if self.settings.tls_cert is not None and self.settings.tls_key is not None:
            ssl_context = server_context(self.settings.tls_cert, self.settings.tls_key,
                                         client_ca=self.settings.tls_ca)
        # Stream data sets to a temporary file instead of memory (large tomosynthesis objects).
        # The flag is process-wide; the previous value comes back when the last SCP stops.
        with _RUNNING_LOCK:
            if not _RUNNING:
                _RUNNING_SAVED["chunked"] = _config.STORE_RECV_CHUNKED_DATASET
            _RUNNING.add(id(self))
            _config.STORE_RECV_CHUNKED_DATASET = True
        ae = _NodeAE(ae_title=self.settings.ae_title)
        ae.maximum_pdu_size = 0  # unlimited: peers may send large PDUs
        ae.tls_handshake_seconds = float(self.settings.tls_handshake_seconds)
        ae.tls_failed = self._tls_failed
        # Access is checked in the EVT_REQUESTED handler (reject reasons 3 and 7, the source
        # host, one log line and an audit record), not by pynetdicom's require_* options.
        ae.require_calling_aet = []
        ae.require_called_aet = False
        syntaxes = decodable_transfer_syntaxes()
        for uid in ACCEPTED_SOP_CLASSES:
            ae.add_supported_context(uid, syntaxes)
        ae.add_supported_context(Verification)
        handlers = [
            (evt.EVT_REQUESTED, self._handle_requested),
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
        try:
            self._server = ae.start_server((self.settings.host, self.settings.port),
                                           block=False, ssl_context=ssl_context,
                                           evt_handlers=handlers)
        except OSError:
            self._release_chunked_flag()
            raise
        self._ae = ae
        self.port = int(self._server.server_address[1])
        self._resume_from_spool()
        self._stop.clear()
        self._monitor = threading.Thread(target=self._run_monitor, name="scp-series-monitor",
                                         daemon=True)
        self._monitor.start()
        logger.info("storage SCP %s listening on %s:%d (%s; spool %s, quiet period %.1f s, "
                    "%d transfer syntaxes, %s)", self.settings.ae_title, self.settings.host,
                    self.port, _tls_text(self.settings), self.spool.root, self._quiet,
                    len(syntaxes), _access_text(self._policy))

    def stop(self) -> None:
        """Stop listening, abort open associations and stop the monitor thread."""
        if self._ae is not None:
            self._ae.shutdown()  # shuts the server down and aborts its associations
        self._server = None
        self._ae = None
        self._release_chunked_flag()
        self._stop.set()
        self._wake.set()
        if self._monitor is not None:
            self._monitor.join(timeout=30)
            self._monitor = None
        logger.info("storage SCP %s stopped", self.settings.ae_title)

    def _release_chunked_flag(self) -> None:
        with _RUNNING_LOCK:
            if id(self) in _RUNNING:
                _RUNNING.discard(id(self))
                if not _RUNNING:
                    _config.STORE_RECV_CHUNKED_DATASET = _RUNNING_SAVED.get("chunked", False)

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

    def _handle_requested(self, event: Any) -> None:
        """A-ASSOCIATE-RQ received: reject it here if the AE titles or host are not allowed."""
        assoc = event.assoc
        request = assoc.requestor.primitive
        calling = str(request.calling_ae_title).strip()
        called = str(request.called_ae_title).strip()
        host, port = str(assoc.requestor.address), assoc.requestor.port
        reason = self._policy.check(calling, called, host)
        if reason is None:
            return
        # Log and audit first: once the reject is out the peer may look at the trail.
        sock = _socket_of(assoc)
        logger.warning("association from %s (%s:%s) to %s rejected: %s (A-ASSOCIATE-RJ "
                       "rejected-permanent, service-user, reason %d)", calling, host, port,
                       called, reason.text, int(reason))
        self._audit_association(calling_ae=calling, called_ae=called, peer_host=host,
                                peer_port=port, tls=isinstance(sock, ssl.SSLSocket),
                                tls_peer=peer_subject(sock), outcome="rejected",
                                detail=f"{reason.text} (reason {int(reason)})")
        assoc.acse.send_reject(REJECTED_PERMANENT, SOURCE_SERVICE_USER, int(reason))
        assoc.kill()  # waits until the reject is sent, as pynetdicom's own rejects do

    def _handle_accepted(self, event: Any) -> None:
        assoc = event.assoc
        requestor = assoc.requestor
        sock = _socket_of(assoc)
        request = requestor.primitive
        stats = _AssocStats(calling_ae=str(requestor.ae_title).strip(),
                            peer=f"{requestor.address}:{requestor.port}",
                            called_ae=str(getattr(request, "called_ae_title", "")).strip(),
                            peer_host=str(requestor.address), peer_port=requestor.port,
                            tls=isinstance(sock, ssl.SSLSocket), tls_peer=peer_subject(sock))
        with self._lock:
            self._assocs[id(assoc)] = stats
        for cx in assoc.rejected_contexts:
            name = ACCEPTED_SOP_CLASSES.get(cx.abstract_syntax) or UID(cx.abstract_syntax).name
            logger.warning("association from %s (%s): refused presentation context for %s "
                           "(%s)", stats.calling_ae, stats.peer, name,
                           ", ".join(UID(ts).name for ts in cx.transfer_syntax))

    def _handle_rejected(self, event: Any) -> None:
        """Rejects made by pynetdicom itself (e.g. too many associations)."""
        requestor = event.assoc.requestor
        request = requestor.primitive
        calling = str(getattr(request, "calling_ae_title", "")).strip()
        called = str(getattr(request, "called_ae_title", "")).strip()
        logger.warning("association from %s (%s:%s) to %s rejected by pynetdicom", calling,
                       requestor.address, requestor.port, called)
        sock = _socket_of(event.assoc)
        self._audit_association(calling_ae=calling, called_ae=called,
                                peer_host=str(requestor.address), peer_port=requestor.port,
                                tls=isinstance(sock, ssl.SSLSocket), outcome="rejected",
                                detail="rejected by pynetdicom (e.g. too many associations)")

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
        logger.info("association from %s (%s%s) %s: %d stored, %d failed, %.1f MB in %.2f s",
                    stats.calling_ae, stats.peer, ", TLS" if stats.tls else "", stats.outcome,
                    stats.stored, stats.failed, stats.nbytes / 1e6, seconds)
        self._audit_association(calling_ae=stats.calling_ae, called_ae=stats.called_ae,
                                peer_host=stats.peer_host, peer_port=stats.peer_port,
                                tls=stats.tls, tls_peer=stats.tls_peer, stored=stats.stored,
                                failed=stats.failed, outcome=stats.outcome,
                                nbytes=stats.nbytes, seconds=seconds)

    def _tls_failed(self, address: Any, exc: BaseException) -> None:
        host, port = (address[0], address[1]) if isinstance(address, tuple) else (address, None)
        detail = f"{type(exc).__name__}: {exc}"
        logger.warning("TLS handshake with %s:%s failed: %s", host, port, detail)
        self._audit_association(calling_ae="", called_ae="", peer_host=str(host),
                                peer_port=port, tls=True, outcome="tls handshake failed",
                                detail=detail[:300])

    def _audit_association(self, **fields: Any) -> None:
        try:
            self.audit.association(**fields)
        except OSError as exc:
            logger.error("cannot write the audit trail in %s: %s", self.audit.directory, exc)


def _socket_of(assoc: Any) -> Any:
    """The association's network socket (an ``ssl.SSLSocket`` under TLS), or ``None``."""
    return getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)


def _tls_text(settings: Settings) -> str:
    if settings.tls_cert is None:
        return "plain TCP"
    return "DICOM TLS" + (", client certificates required" if settings.tls_ca else "")


def _access_text(policy: AccessPolicy) -> str:
    called = "called AE title checked" if policy.require_called_ae_title else "any called AE title"
    if not policy.allowed:
        return f"{called}, any calling AE title"
    return f"{called}, {len(policy.allowed)} allowed calling AE title(s)"
