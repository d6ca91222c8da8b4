"""Cheap checks on each received instance: accepted SOP classes, header checks, C-STORE statuses.

This module owns what the storage SCP decides about one received Part 10 file before it is
spooled, without decoding pixel data:

* :data:`ACCEPTED_SOP_CLASSES`, the image storage SOP classes the node accepts, and
  :func:`decodable_transfer_syntaxes`, the transfer syntaxes it accepts them in;
* :func:`read_instance_header`, which checks the file's structure (meta, complete elements,
  a readable header, pixel data length and dimensions) and returns its identifiers as an
  :class:`InstanceHeader`;
* :class:`StoreStatus`, the C-STORE statuses the SCP answers, and
  :class:`InvalidInstanceError`, which carries the status for a refused instance.

Problems of meaning (functional groups, geometry) are left to
:func:`dicom_node.volume.load_series`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import BinaryIO

from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator, dcmread
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    BreastTomosynthesisImageStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameSingleBitSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
)
from pynetdicom.dsutils import split_dataset

from dicom_node.phi import PhiFreeError, describe_exception
from dicom_node.spool import SpoolError, check_uid
from dicom_node.volume import MAX_SHAPE

#: Storage SOP classes the node accepts, UID → name.
ACCEPTED_SOP_CLASSES: dict[str, str] = {
    uid: uid.name
    for uid in (
        BreastTomosynthesisImageStorage,
        DigitalMammographyXRayImageStorageForPresentation,
        DigitalMammographyXRayImageStorageForProcessing,
        SecondaryCaptureImageStorage,
        MultiFrameSingleBitSecondaryCaptureImageStorage,
        MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
        MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
        MultiFrameTrueColorSecondaryCaptureImageStorage,
        CTImageStorage,
    )
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


class InvalidInstanceError(PhiFreeError, ValueError):
    """A received instance the node refuses; `status` is the C-STORE status to answer.

    The message names tags and UIDs, never attribute values (it is logged and audited).
    """

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

    text: dict[BaseTag, str] = field(default_factory=dict)   # UIDs, IS values
    numbers: dict[BaseTag, int | None] = field(default_factory=dict)  # US (None: bad length)
    seen: set[BaseTag] = field(default_factory=set)           # top-level tags present
    pixel_length: int | None = None                       # native Pixel Data bytes
    pixel_fragments: int | None = None                    # encapsulated fragments (no BOT)


def decodable_transfer_syntaxes() -> list[UID]:
    """Transfer syntaxes pydicom can read and decode with the plugins installed here.

    Uncompressed syntaxes always; compressed ones when a pixel data decoder plugin
    (pylibjpeg-openjpeg, pylibjpeg-libjpeg, pyjpegls, Pillow, GDCM...) is available.

    Returns
    -------
    list of pydicom.uid.UID
        Explicit VR Little Endian first (preferred when a peer offers several).
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

    Returns
    -------
    InstanceHeader
        The identifiers from the data set; ``rows`` and ``columns`` are 0 for SOP classes
        not in :data:`ACCEPTED_SOP_CLASSES`.

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
        raise InvalidInstanceError(f"unreadable file meta: {describe_exception(exc)}",
                                   StoreStatus.CANNOT_UNDERSTAND)
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
        raise InvalidInstanceError(f"corrupt data set: {describe_exception(exc)}",
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
    """Convert every raw element of `ds` and of its sequence items (raises if unreadable)."""
    for elem in ds:  # iterating converts each raw element (VR, value decoding)
        if elem.VR == "SQ":
            for item in elem.value:
                _convert_all(item)


def _scan_full_read(path: Path) -> _Scan:
    """Scan a deflated data set: it cannot be walked in place, so it is read whole."""
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
    """Walk the top-level elements from `offset` without reading large values.

    Collects the wanted values, the Pixel Data length or fragment count, and checks that
    the last element ends exactly at the end of the file.
    """
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


def _encapsulated_end(fp: BinaryIO, tell: int, size: int, little_endian: bool) -> tuple[int, int]:
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
