"""C-STORE / C-ECHO SCU: send result objects to a PACS (pynetdicom).

:func:`send_datasets` proposes exactly the (SOP class, transfer syntax) pairs the files need,
streams each file as stored (pynetdicom's ``STORE_SEND_CHUNKED_DATASET``: no decoding, no
re-encoding; a compressed file also proposes Explicit VR Little Endian and is sent decoded,
same SOP Instance UID, to a peer that does not accept its compression) and raises
:class:`ExportError` unless **every** response status is ``0x0000`` — warnings such as
``0xB000`` (coercion of data elements) count as failures, because the stored object may
differ from ours.

Both :func:`send_datasets` and :func:`echo` speak DICOM TLS when given ``tls`` (pynetdicom's
``(ssl_context, server_hostname)``); :func:`send_to_destination` and
:func:`echo_destination` build it from a configured
:class:`~dicom_node.config.Destination` (see :func:`dicom_node.tls.destination_tls_args`).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE, _config, build_context
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import Verification

from dicom_node.phi import PhiFreeError, describe_exception
from dicom_node.tls import destination_tls_args

logger = logging.getLogger(__name__)

#: Most presentation contexts one association may propose (PS3.8: context IDs 1-255, odd).
MAX_CONTEXTS = 128


class ExportError(PhiFreeError, RuntimeError):
    """Sending to a peer failed.

    Attributes
    ----------
    status : int or None
        The first non-success DIMSE status, ``None`` when no status came back (association
        rejected or aborted, connection lost, no accepted presentation context).
    failures : dict of str to int or None
        Every file that was not stored with status ``0x0000``, with its status.
    """

    def __init__(self, message: str, *, status: int | None = None,
                 failures: dict[str, int | None] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.failures = failures or {}


def _file_contexts(paths: Sequence[Path]) -> list[tuple[Path, UID, UID]]:
    """(path, SOP class, transfer syntax) from each file's meta; raises ValueError if absent."""
    found = []
    for path in paths:
        path = Path(path)
        try:
            meta, _ = split_dataset(path)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"cannot read the file meta of {str(path)!r}: {exc}") from exc
        missing = [kw for kw in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID",
                                 "TransferSyntaxUID") if kw not in meta]
        if missing:
            raise ValueError(f"{str(path)!r} lacks file meta element(s) {', '.join(missing)}")
        found.append((path, UID(str(meta.MediaStorageSOPClassUID)),
                      UID(str(meta.TransferSyntaxUID))))
    return found


def _proposed(sop: UID, ts: UID) -> list[tuple[UID, UID]]:
    """The file's own pair, and Explicit VR Little Endian as a fallback for a compressed one."""
    return [(sop, ts), (sop, ExplicitVRLittleEndian)] if ts.is_encapsulated else [(sop, ts)]


def _decompressed(path: Path) -> Dataset:
    """The file decoded to Explicit VR Little Endian, same SOP Instance UID."""
    ds = dcmread(path)
    try:
        ds.decompress(generate_instance_uid=False)
    except Exception as exc:  # noqa: BLE001 - a missing or failing decoder plugin
        ts = UID(ds.file_meta.TransferSyntaxUID).name
        raise ValueError(f"cannot decompress {path.name} ({ts}): "
                         f"{describe_exception(exc)}") from exc
    return ds


def send_datasets(paths: Sequence[Path | str], *, ae_title: str, host: str, port: int,
                  calling_ae_title: str, timeout: float = 60.0,
                  tls: tuple[ssl.SSLContext, str] | None = None) -> None:
    """Send DICOM files to a storage SCP over one association.

    Parameters
    ----------
    paths : sequence of Path or str
        Part 10 files (with file meta). Sent as stored, in this order; a file with
        compressed pixel data is decoded and sent in Explicit VR Little Endian when the peer
        accepts its SOP class only uncompressed.
    ae_title : str
        Called AE title of the peer, e.g. ``"ORTHANC"``.
    host : str
        Peer address, e.g. ``"127.0.0.1"``.
    port : int
        Peer port, e.g. ``4242``.
    calling_ae_title : str
        Our AE title, e.g. ``"PICARD"``.
    timeout : float, optional
        Seconds for association setup, each response and network inactivity. Default 60.
    tls : tuple of (ssl.SSLContext, str), optional
        Use DICOM TLS: the client context and the name the peer's certificate must carry
        (see :func:`dicom_node.tls.client_context`). Default ``None``: plain TCP.

    Raises
    ------
    ValueError
        If a file has no readable file meta, or needs more than 128 presentation contexts.
    ExportError
        If the association cannot be established or any file is not stored with status
        ``0x0000``. All files are attempted while the association stays up; the error lists
        every failure.
    """
    items = _file_contexts(paths)
    if not items:
        return
    pairs = list(dict.fromkeys(pair for _, sop, ts in items for pair in _proposed(sop, ts)))
    if len(pairs) > MAX_CONTEXTS:
        raise ValueError(f"{len(pairs)} SOP class/transfer syntax pairs exceed the "
                         f"{MAX_CONTEXTS} presentation contexts of one association")
    # Send files as they are on disk; needs an exact transfer syntax match, which we propose.
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.requested_contexts = [build_context(sop, [ts]) for sop, ts in pairs]
    peer = f"{ae_title}@{host}:{port}" + (" (TLS)" if tls else "")
    assoc = ae.associate(host, port, ae_title=ae_title, tls_args=tls)
    if not assoc.is_established:
        raise ExportError(f"association with {peer} {_failure_text(assoc)}")
    accepted = {(UID(cx.abstract_syntax), UID(t)) for cx in assoc.accepted_contexts
                for t in cx.transfer_syntax}
    failures: dict[str, int | None] = {}
    try:
        for path, sop, ts in items:
            if not assoc.is_established:
                failures[str(path)] = None
                continue
            try:
                if (sop, ts) in accepted or (sop, ExplicitVRLittleEndian) not in accepted:
                    response = assoc.send_c_store(path)
                else:
                    response = assoc.send_c_store(_decompressed(path))
                    logger.info("%s does not accept %s for %s: sent %s decompressed", peer,
                                ts.name, sop.name, path.name)
            except ValueError as exc:  # no accepted context, or the file cannot be decoded
                logger.error("cannot send %s to %s: %s", path.name, peer, exc)
                failures[str(path)] = None
                continue
            status = int(response.Status) if "Status" in response else None
            if status != 0x0000:
                comment = response.get("ErrorComment", "")
                logger.error("%s answered %s for %s (%s, %s)%s", peer,
                             "no status" if status is None else f"0x{status:04X}", path.name,
                             sop.name, ts.name, f": {comment}" if comment else "")
                failures[str(path)] = status
    finally:
        if assoc.is_established:
            assoc.release()
    if failures:
        first = next((s for s in failures.values() if s is not None), None)
        raise ExportError(
            f"{len(failures)} of {len(items)} objects not stored by {peer}; first status "
            f"{'none' if first is None else f'0x{first:04X}'}", status=first, failures=failures)
    logger.info("sent %d objects to %s", len(items), peer)


def echo(ae_title: str, host: str, port: int, *, calling_ae_title: str = "PICARD",
         timeout: float = 10.0, tls: tuple[ssl.SSLContext, str] | None = None) -> None:
    """C-ECHO a peer (over DICOM TLS when `tls` is given, as in :func:`send_datasets`).

    Raises
    ------
    ExportError
        If the association fails or the echo status is not ``0x0000``.
    """
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    peer = f"{ae_title}@{host}:{port}" + (" (TLS)" if tls else "")
    assoc = ae.associate(host, port, ae_title=ae_title, tls_args=tls)
    if not assoc.is_established:
        raise ExportError(f"association with {peer} for C-ECHO {_failure_text(assoc)}")
    try:
        response = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    status = int(response.Status) if "Status" in response else None
    if status != 0x0000:
        raise ExportError(f"C-ECHO to {peer} answered "
                          f"{'no status' if status is None else f'0x{status:04X}'}", status=status)


def _failure_text(assoc: Any) -> str:
    """Why an association did not come up, with the A-ASSOCIATE-RJ reason when rejected."""
    if assoc.is_rejected:
        primitive = getattr(assoc.acceptor, "primitive", None)
        reason = getattr(primitive, "reason_str", None) if primitive is not None else None
        return f"rejected ({reason})" if reason else "rejected"
    if assoc.is_aborted:
        return "aborted"
    return "failed (connection refused, TLS handshake or timeout)"


def send_to_destination(paths: Sequence[Path | str], destination: Any, *,
                        calling_ae_title: str, timeout: float = 60.0) -> None:
    """:func:`send_datasets` to a configured :class:`~dicom_node.config.Destination`.

    Uses its ``ae_title``, ``host``, ``port`` and TLS settings (``tls``, ``tls_ca``,
    ``tls_cert``, ``tls_key``, ``tls_server_name``, ``tls_check_hostname``).

    Raises
    ------
    ValueError
        As :func:`send_datasets`; also :class:`dicom_node.tls.TLSConfigError` when a TLS
        file cannot be used.
    ExportError
        As :func:`send_datasets`.
    """
    send_datasets(paths, ae_title=destination.ae_title, host=destination.host,
                  port=destination.port, calling_ae_title=calling_ae_title, timeout=timeout,
                  tls=destination_tls_args(destination))


def echo_destination(destination: Any, *, calling_ae_title: str = "PICARD",
                     timeout: float = 10.0) -> None:
    """:func:`echo` a configured :class:`~dicom_node.config.Destination` (TLS if set)."""
    echo(destination.ae_title, destination.host, destination.port,
         calling_ae_title=calling_ae_title, timeout=timeout,
         tls=destination_tls_args(destination))
