"""Every adaptation of pynetdicom internals the storage SCP relies on, in one place.

Written against **pynetdicom 3.0.4** (pydicom 3.0). Each adaptation below says why it exists
and what of pynetdicom it touches; when pynetdicom changes, this is the module to check
(``tests/unit/dicom_node/test_transport.py`` covers each piece).

1. **Chunked receive** (:func:`hold_chunked_receive`, :func:`release_chunked_receive`):
   ``pynetdicom._config.STORE_RECV_CHUNKED_DATASET`` streams each C-STORE data set into a
   file instead of memory (300-650 MB tomosynthesis objects). The flag is process-wide, so
   it is reference-counted: set while at least one SCP runs, restored when the last stops.
2. **Chunk files in the spool** (:func:`route_chunk_files`, :class:`SpoolChunkFile`):
   pynetdicom opens those files with ``dimse_messages.NamedTemporaryFile`` in the system
   temporary folder; the factory is replaced so files of our SCPs land in the spool's
   ``tmp/`` (renamed into place later, never copied) with early writeback.
3. **Received file** (:func:`received_file`): ``event.dataset_path`` exists only in chunked
   mode; when another library turned the flag off, the data set is written out instead.
4. **Fast, bounded receive loop** (:class:`FastReceiveSocket`, :class:`NodeRequestHandler`):
   ``AssociationSocket.recv`` reads 4 KiB per Python call and trusts the PDU length the
   peer announces; ours reads a PDU with ``recv_into``, refuses a PDU longer than the
   Maximum Length it announced (plus :data:`PDU_LENGTH_SLACK`) before reading it, and grows
   its buffer with what actually arrived.
5. **TLS handshake and A-ASSOCIATE-RQ per connection, bounded** (:class:`NodeServer`,
   :class:`NodeAE`): ``ThreadedAssociationServer.get_request`` handshakes in the accept
   loop, where one silent client stalls every other, and pynetdicom reads the
   A-ASSOCIATE-RQ with a blocking read that its ARTIM timer never interrupts (ten
   connections sending 3 bytes each used to lock every sender out). Ours handshakes in the
   connection's thread with a time limit, admits each connection through a
   :class:`~dicom_node.admission.ConnectionGuard` (pending-connection limits, oldest
   evicted), reads the A-ASSOCIATE-RQ itself by the ARTIM deadline with a size limit
   (:func:`~dicom_node.admission.read_associate_rq`), and hands the bytes to pynetdicom
   through the socket (:attr:`FastReceiveSocket.prefix`). Accepted sockets get the idle
   timeout as their socket timeout, so no read blocks forever.
6. **The association's socket** (:func:`association_socket`): reads
   ``assoc.dul.socket.socket`` for the TLS state and peer certificate.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable

import pynetdicom.dimse_messages as _dimse_messages
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from dicom_node.admission import (ConnectionGuard, PreAssociationError, Ticket,
                                  read_associate_rq)
from dicom_node.phi import PhiFreeError
from dicom_node.spool import start_writeback

logger = logging.getLogger(__name__)

#: pynetdicom version the adaptations were written against and tested with.
PYNETDICOM_VERSION = "3.0.4"
#: Bytes received between two writeback requests for a chunked data set.
WRITEBACK_BYTES = 8 * 1024 * 1024
#: Largest buffer one ``recv`` call allocates before data has arrived (a PDU's length comes
#: from the peer); the buffer then grows to at most twice what arrived.
RECV_BUFFER_MAX = 4 * 1024 * 1024
#: Accepted excess of a PDU's length over the Maximum Length announced (implementations
#: differ on whether it counts the 6-byte PDU header and PDV item headers).
PDU_LENGTH_SLACK = 1024
#: Prefix of the chunk files in the spool's ``tmp/`` (see :func:`remove_stale_chunk_files`).
CHUNK_FILE_PREFIX = "rx-"


# --------------------------------------------------------------------------- 1. chunked flag
_HOLDERS: set[int] = set()
_SAVED: dict[str, bool] = {}
_HOLDERS_LOCK = threading.Lock()


def hold_chunked_receive(owner: object) -> None:
    """Turn pynetdicom's chunked receive on for as long as `owner` holds it.

    Reason: ``STORE_RECV_CHUNKED_DATASET`` (pynetdicom 3.0.4, ``pynetdicom._config``) is a
    module-level flag shared by every AE in the process. The value it had before the first
    holder comes back when the last holder releases it.

    Parameters
    ----------
    owner : object
        The holder (e.g. a :class:`~dicom_node.scp.StorageSCP`); holding twice is one hold.
    """
    with _HOLDERS_LOCK:
        if not _HOLDERS:
            _SAVED["chunked"] = _config.STORE_RECV_CHUNKED_DATASET
        _HOLDERS.add(id(owner))
        _config.STORE_RECV_CHUNKED_DATASET = True


def release_chunked_receive(owner: object) -> None:
    """Release `owner`'s hold (no-op if it holds none); the last release restores the flag."""
    with _HOLDERS_LOCK:
        if id(owner) in _HOLDERS:
            _HOLDERS.discard(id(owner))
            if not _HOLDERS:
                _config.STORE_RECV_CHUNKED_DATASET = _SAVED.get("chunked", False)


# --------------------------------------------------------------------------- 2. chunk files
class SpoolChunkFile:
    """Where pynetdicom streams one chunked C-STORE data set: in the spool's ``tmp/``.

    Reason: stands in for the ``NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")``
    pynetdicom 3.0.4 opens in ``dimse_messages`` (it uses ``write``, ``file.flush``,
    ``close`` and ``name``). Living on the spool's file system, the file is later renamed
    into place, never copied; every :data:`WRITEBACK_BYTES` the kernel is asked to start
    writing it to disk, so the fsync before the response waits only for the last few
    megabytes.

    Parameters
    ----------
    directory : Path
        The spool's ``tmp/`` folder.
    suffix : str, optional
        File name suffix. Default ``".dcm"``.
    """

    def __init__(self, directory: Path, suffix: str = ".dcm") -> None:
        fd, self.name = tempfile.mkstemp(suffix=suffix, prefix=CHUNK_FILE_PREFIX, dir=directory)
        self._fh = os.fdopen(fd, "wb")
        self._requested = 0

    @property
    def file(self) -> SpoolChunkFile:
        """Itself (pynetdicom calls ``fh.file.flush()``, as on a ``NamedTemporaryFile``)."""
        return self

    def write(self, data: bytes) -> int:
        """Append `data`; returns the number of bytes written."""
        return self._fh.write(data)

    def flush(self) -> None:
        """Flush, and start writeback once :data:`WRITEBACK_BYTES` more have arrived."""
        self._fh.flush()
        written = self._fh.tell()
        if written - self._requested >= WRITEBACK_BYTES:
            start_writeback(self._fh.fileno(), self._requested, written - self._requested)
            self._requested = written

    def close(self) -> None:
        """Close the file (it stays on disk)."""
        self._fh.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


#: Spool ``tmp/`` folder of each running SCP's AE (chunk files of its associations go there).
_CHUNK_DIRS: weakref.WeakKeyDictionary[AE, Path] = weakref.WeakKeyDictionary()
_PYNETDICOM_TEMPFILE = getattr(_dimse_messages, "NamedTemporaryFile", None)


def _chunk_file(*args: Any, **kwargs: Any) -> Any:
    """pynetdicom's temporary-file factory, redirected for associations of our SCPs."""
    dul = threading.current_thread()  # pynetdicom decodes P-DATA in the DUL thread
    ae = getattr(getattr(dul, "assoc", None), "ae", None)
    directory = _CHUNK_DIRS.get(ae) if ae is not None else None
    if directory is None or args or kwargs.get("mode", "wb") != "wb":
        return _PYNETDICOM_TEMPFILE(*args, **kwargs)  # type: ignore[misc]
    return SpoolChunkFile(directory, kwargs.get("suffix", ".dcm"))


def route_chunk_files(ae: AE, directory: Path) -> bool:
    """Let chunked data sets received by `ae`'s associations stream into `directory`.

    Reason: pynetdicom 3.0.4 creates the chunk file with ``NamedTemporaryFile`` imported
    into ``pynetdicom.dimse_messages``; that name is replaced (once, idempotent) by a
    factory that returns a :class:`SpoolChunkFile` in `directory` for associations of `ae`
    and pynetdicom's own file for every other AE. The factory finds the AE through the DUL
    thread that decodes the P-DATA (``threading.current_thread().assoc.ae``).

    If this pynetdicom no longer has ``dimse_messages.NamedTemporaryFile`` the files stay in
    the system temporary folder and are copied into the spool when that is another file
    system: slower, equally durable.

    Parameters
    ----------
    ae : pynetdicom.AE
        The SCP's application entity (held weakly).
    directory : Path
        The spool's ``tmp/`` folder.

    Returns
    -------
    bool
        True if the chunk files are routed, False if they stay in the system folder.
    """
    if _PYNETDICOM_TEMPFILE is None:
        logger.warning("pynetdicom has no dimse_messages.NamedTemporaryFile; received data "
                       "sets stay in %s until moved", tempfile.gettempdir())
        return False
    _dimse_messages.NamedTemporaryFile = _chunk_file  # type: ignore[attr-defined]
    _CHUNK_DIRS[ae] = directory
    return True


def remove_stale_chunk_files(directory: Path) -> None:
    """Remove chunk files a crash left in `directory` mid-transfer."""
    for stale in directory.glob(f"{CHUNK_FILE_PREFIX}*.dcm"):
        stale.unlink(missing_ok=True)


# --------------------------------------------------------------------------- 3. received file
def received_file(event: Event, scratch_dir: Path) -> tuple[Path, bool]:
    """The received Part 10 file of a C-STORE event.

    Reason: in chunked mode pynetdicom 3.0.4 offers the file as ``event.dataset_path`` (and
    ``event.encoded_dataset()`` would return the header without the pixel data); without
    it (another library turned the flag off) the attribute raises ``AttributeError`` and
    the encoded data set is written to a file in `scratch_dir` here.

    Parameters
    ----------
    event : pynetdicom.events.Event
        The ``EVT_C_STORE`` event.
    scratch_dir : Path
        Where to write the data set when it is not in a file yet (the spool's ``tmp/``).

    Returns
    -------
    path : Path
        The Part 10 file.
    owned : bool
        True when the file was made here and the caller must remove it if not moved.
    """
    try:
        return Path(event.dataset_path), False
    except AttributeError:  # chunked mode off
        fd, name = tempfile.mkstemp(suffix=".dcm", dir=scratch_dir)
        with open(fd, "wb") as fh:
            fh.write(event.encoded_dataset())
        return Path(name), True


# --------------------------------------------------------------------------- 4. receive loop
class PDUTooLargeError(PhiFreeError, OSError):
    """A peer announced a PDU longer than the node accepts (the connection is dropped)."""


class FastReceiveSocket(AssociationSocket):
    """pynetdicom's association socket with a bounded receive loop that does not cost a
    Python round trip per 4 KiB.

    Reason: ``AssociationSocket.recv`` (pynetdicom 3.0.4) calls ``socket.recv(4096)`` in a
    Python loop, the bottleneck when receiving hundreds of megabytes, and reads whatever
    length the PDU header announces. Here the PDU is read with ``recv_into``; a read longer
    than :attr:`max_read` raises :class:`PDUTooLargeError` (an ``OSError``: pynetdicom
    reports a closed connection, Evt17) before anything is allocated; the buffer starts at
    most :data:`RECV_BUFFER_MAX` long and grows to at most twice what has arrived. Same
    contract otherwise: blocks until ``nr_bytes`` are read, returns fewer only when the peer
    closed the connection.

    Attributes
    ----------
    prefix : bytearray
        Bytes already read from the connection (the A-ASSOCIATE-RQ read by
        :class:`NodeServer`), returned before anything is read from the socket.
    max_read : int
        Longest single read (a PDU body) accepted; 0 for no limit.
    """

    prefix: bytearray = bytearray()
    max_read: int = 0

    @property
    def ready(self) -> bool:
        """True when :attr:`prefix` holds data or the socket has data to read."""
        if self.prefix:
            return True
        return bool(AssociationSocket.ready.fget(self))  # type: ignore[attr-defined]

    def recv(self, nr_bytes: int) -> bytearray:
        """Read `nr_bytes` from the socket (fewer only if the peer closed it).

        Raises
        ------
        PDUTooLargeError
            If `nr_bytes` exceeds :attr:`max_read`.
        """
        out = bytearray()
        if self.prefix:
            out = self.prefix[:nr_bytes]
            self.prefix = self.prefix[nr_bytes:]
            if len(out) == nr_bytes:
                return out
        need = nr_bytes - len(out)
        if self.max_read and need > self.max_read:
            assoc = getattr(self, "_assoc", None)
            peer = getattr(getattr(assoc, "requestor", None), "address", "?")
            logger.warning("peer %s announced a PDU of %d bytes; at most %d accepted: "
                           "disconnecting", peer, need, self.max_read)
            raise PDUTooLargeError(f"PDU of {need} bytes announced; at most {self.max_read}")
        sock = self.socket
        assert sock is not None
        buf = bytearray(min(need, RECV_BUFFER_MAX))
        got = 0
        while got < need:
            if got == len(buf):  # full: grow to at most twice what arrived
                buf.extend(bytes(min(need, 2 * len(buf)) - len(buf)))
            with memoryview(buf) as view:
                n = sock.recv_into(view[got:], len(buf) - got)
            if not n:
                del buf[got:]
                break  # connection closed: return what arrived, as pynetdicom does
            got += n
        if out:
            out += buf
            return out
        return buf


class NodeRequestHandler(RequestHandler):
    """Creates each association with a :class:`FastReceiveSocket`.

    Reason: pynetdicom 3.0.4 builds the ``AssociationSocket`` inside
    ``RequestHandler._create_association``; only its ``recv`` and ``ready`` differ, so the
    instance changes class rather than being created a second time (which would queue a
    second transport-connection event). The A-ASSOCIATE-RQ :class:`NodeServer` already
    read becomes the socket's :attr:`~FastReceiveSocket.prefix`, and the read limit is the
    Maximum Length the node announces plus :data:`PDU_LENGTH_SLACK`.
    """

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        sock = assoc.dul.socket
        sock.__class__ = FastReceiveSocket
        prefetched = getattr(self.server, "take_prefetched", None)
        sock.prefix = prefetched(self.request) if prefetched is not None else bytearray()
        limit = int(self.ae.maximum_pdu_size or 0)
        sock.max_read = limit + PDU_LENGTH_SLACK if limit else 0
        return assoc


# --------------------------------------------------------------------------- 5. admission
class NodeServer(ThreadedAssociationServer):
    """Association server with bounded pre-association work (see item 5 of the module
    docstring) and the faster receive loop of :class:`FastReceiveSocket`.

    Reason: pynetdicom 3.0.4's server wraps each accepted socket in the accept loop
    (``get_request``), which handshakes there (one silent client would stall every other),
    leaves accepted sockets blocking without a timeout, and lets pynetdicom read the
    A-ASSOCIATE-RQ with a blocking read. Here, in the connection's own thread
    (``process_request_thread``): the TLS handshake runs with a time limit
    (``ae.tls_handshake_seconds``; a failure goes to ``ae.tls_failed(address, exc)``), then
    :func:`~dicom_node.admission.read_associate_rq` reads the A-ASSOCIATE-RQ by the ARTIM
    deadline (``ae.association_timeout_seconds``; a failure goes to
    ``ae.pre_association_failed(address, reason)``). The accept loop admits each
    connection through ``ae.guard`` and sweeps expired ones (``service_actions``).
    """

    #: Listen backlog (``socketserver``'s default of 5 makes connections beyond it wait for
    #: SYN retries, seconds each, while many arrive at once).
    request_queue_size = socket.SOMAXCONN

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("request_handler") is None:
            kwargs["request_handler"] = NodeRequestHandler
        self._prefetched: dict[int, bytearray] = {}
        self._prefetched_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    @property
    def guard(self) -> ConnectionGuard | None:
        """The AE's connection guard (``None``: no admission control)."""
        return getattr(self.ae, "guard", None)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept a connection with the idle timeout; wrap it for TLS without handshaking."""
        client, address = self.socket.accept()  # type: ignore[union-attr]
        client.settimeout(getattr(self.ae, "idle_timeout_seconds", None))
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True,
                                                  do_handshake_on_connect=False)
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Admit the connection through the guard (which may close older pending ones)."""
        if self.guard is not None:
            ticket = self.guard.admit(request, client_address)
            if self.ssl_context:  # the handshake has its own limit before ARTIM starts
                ticket.deadline += float(getattr(self.ae, "tls_handshake_seconds", 30.0))
        return True

    def service_actions(self) -> None:
        """pynetdicom's housekeeping, close pending connections past their deadline, then
        the AE's own ``housekeeping`` hook (about every half second)."""
        super().service_actions()
        if self.guard is not None:
            self.guard.sweep()
        hook = getattr(self.ae, "housekeeping", None)
        if hook is not None:
            try:
                hook()
            except Exception:  # noqa: BLE001 - housekeeping must not stop the accept loop
                logger.exception("error in the server's housekeeping")

    def take_prefetched(self, request: Any) -> bytearray:
        """The A-ASSOCIATE-RQ read for `request` (empty if none), removed from the server."""
        with self._prefetched_lock:
            return self._prefetched.pop(id(request), bytearray())

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Handshake (TLS only), read the A-ASSOCIATE-RQ (both bounded), then associate."""
        ticket = self.guard.ticket(request) if self.guard is not None else None
        if isinstance(request, ssl.SSLSocket) and not self._handshake(request, client_address):
            self._drop(request, ticket)
            return
        if ticket is not None:
            timeout = float(getattr(self.ae, "association_timeout_seconds", 30.0))
            ticket.deadline = time.monotonic() + timeout
            try:
                pdu = read_associate_rq(request, deadline=ticket.deadline)
            except PreAssociationError as exc:
                self._report_pre_association(client_address, ticket.evicted or str(exc))
                self._drop(request, ticket)
                return
            self.guard.negotiating(ticket)  # type: ignore[union-attr]
            request.settimeout(getattr(self.ae, "idle_timeout_seconds", None))
            with self._prefetched_lock:
                self._prefetched[id(request)] = pdu
        super().process_request_thread(request, client_address)

    def _handshake(self, request: ssl.SSLSocket, client_address: Any) -> bool:
        previous = request.gettimeout()
        try:
            request.settimeout(getattr(self.ae, "tls_handshake_seconds", 30.0))
            request.do_handshake()
            request.settimeout(previous)
            return True
        except (OSError, ValueError) as exc:  # ssl.SSLError and timeouts are OSErrors
            hook = getattr(self.ae, "tls_failed", None)
            if hook is not None:
                try:
                    hook(client_address, exc)
                except Exception:  # noqa: BLE001 - reporting must not kill the thread
                    logger.exception("error while reporting a failed TLS handshake")
            return False

    def _report_pre_association(self, client_address: Any, reason: str) -> None:
        hook = getattr(self.ae, "pre_association_failed", None)
        if hook is None:
            return
        try:
            hook(client_address, reason)
        except Exception:  # noqa: BLE001 - reporting must not kill the thread
            logger.exception("error while reporting a dropped connection")

    def _drop(self, request: Any, ticket: Ticket | None) -> None:
        if self.guard is not None:
            self.guard.release(request)
        self.shutdown_request(request)


class NodeAE(AE):
    """pynetdicom AE serving through :class:`NodeServer`.

    Reason: ``AE.start_server`` (pynetdicom 3.0.4) creates a ``ThreadedAssociationServer``
    through ``make_server``; overriding it is how the server class is chosen.

    Attributes
    ----------
    tls_handshake_seconds : float
        Time limit of a TLS handshake. Default 30.
    tls_failed : callable or None
        Called as ``tls_failed(address, exc)`` when a handshake fails.
    guard : ConnectionGuard or None
        Admission control of connections (``None``: none, pynetdicom's behaviour).
    association_timeout_seconds : float
        ARTIM: time from accept (after TLS) to a complete A-ASSOCIATE-RQ. Default 30.
    idle_timeout_seconds : float or None
        Socket timeout of accepted connections. Default None (blocking).
    pre_association_failed : callable or None
        Called as ``pre_association_failed(address, reason)`` when a connection is dropped
        before its A-ASSOCIATE-RQ was read.
    housekeeping : callable or None
        Called with no argument by the accept loop about every half second.
    """

    tls_handshake_seconds: float = 30.0
    tls_failed: Callable[[Any, BaseException], None] | None = None
    guard: ConnectionGuard | None = None
    association_timeout_seconds: float = 30.0
    idle_timeout_seconds: float | None = None
    pre_association_failed: Callable[[Any, str], None] | None = None
    housekeeping: Callable[[], None] | None = None

    def make_server(self, address: Any, ae_title: str | None = None,  # type: ignore[override]
                    contexts: Any = None, ssl_context: ssl.SSLContext | None = None,
                    evt_handlers: Any = None, server_class: Any = None,
                    **kwargs: Any) -> Any:
        """pynetdicom's ``make_server`` with :class:`NodeServer` as the default class."""
        if server_class is None or server_class is ThreadedAssociationServer:
            server_class = NodeServer
        return super().make_server(address, ae_title=ae_title, contexts=contexts,
                                   ssl_context=ssl_context, evt_handlers=evt_handlers,
                                   server_class=server_class, **kwargs)


# --------------------------------------------------------------------------- 6. socket
def association_socket(assoc: Association | None) -> socket.socket | None:
    """The association's network socket (an ``ssl.SSLSocket`` under TLS), or ``None``.

    Reason: pynetdicom 3.0.4 keeps it at ``assoc.dul.socket.socket`` and offers no public
    accessor; it is needed for the TLS state and the peer's certificate.
    """
    return getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
