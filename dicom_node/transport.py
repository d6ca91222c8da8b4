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
4. **Fast receive loop** (:class:`FastReceiveSocket`, :class:`NodeRequestHandler`):
   ``AssociationSocket.recv`` reads 4 KiB per Python call; ours reads a PDU with
   ``recv_into`` into one buffer.
5. **TLS handshake per connection** (:class:`NodeServer`, :class:`NodeAE`):
   ``ThreadedAssociationServer.get_request`` handshakes in the accept loop, where one
   silent client stalls every other; ours handshakes in the connection's thread, with a
   time limit.
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
import weakref
from pathlib import Path
from typing import Any, Callable

import pynetdicom.dimse_messages as _dimse_messages
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from dicom_node.spool import start_writeback

logger = logging.getLogger(__name__)

#: pynetdicom version the adaptations were written against and tested with.
PYNETDICOM_VERSION = "3.0.4"
#: Bytes received between two writeback requests for a chunked data set.
WRITEBACK_BYTES = 8 * 1024 * 1024
#: Largest buffer one ``recv`` call allocates up front (a PDU's length comes from the peer).
RECV_BUFFER_MAX = 4 * 1024 * 1024
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
class FastReceiveSocket(AssociationSocket):
    """pynetdicom's association socket with a receive loop that does not cost a Python
    round trip per 4 KiB.

    Reason: ``AssociationSocket.recv`` (pynetdicom 3.0.4) calls ``socket.recv(4096)`` in a
    Python loop, the bottleneck when receiving hundreds of megabytes. Here the PDU is read
    with ``recv_into`` straight into one buffer (at most :data:`RECV_BUFFER_MAX` at a time).
    Same contract: blocks until ``nr_bytes`` are read, returns fewer only when the peer
    closed the connection.
    """

    def recv(self, nr_bytes: int) -> bytearray:
        """Read `nr_bytes` from the socket (fewer only if the peer closed it)."""
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


class NodeRequestHandler(RequestHandler):
    """Creates each association with a :class:`FastReceiveSocket`.

    Reason: pynetdicom 3.0.4 builds the ``AssociationSocket`` inside
    ``RequestHandler._create_association``; only its ``recv`` differs, so the instance
    changes class rather than being created a second time (which would queue a second
    transport-connection event).
    """

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        assoc.dul.socket.__class__ = FastReceiveSocket
        return assoc


# --------------------------------------------------------------------------- 5. TLS handshake
class NodeServer(ThreadedAssociationServer):
    """Association server whose TLS handshake runs in the connection's thread, with the
    faster receive loop of :class:`FastReceiveSocket`.

    Reason: pynetdicom 3.0.4's server wraps each accepted socket in the accept loop
    (``get_request``), which handshakes there: one silent client would stall every other.
    Here the socket is wrapped without handshaking; the handshake runs in the connection's
    own thread (``process_request_thread``) with a time limit
    (``ae.tls_handshake_seconds``), and a failure is reported to
    ``ae.tls_failed(address, exc)`` and the connection closed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("request_handler") is None:
            kwargs["request_handler"] = NodeRequestHandler
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept a connection; wrap it for TLS without handshaking yet."""
        client, address = self.socket.accept()  # type: ignore[union-attr]
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True,
                                                  do_handshake_on_connect=False)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Handshake (TLS only, with a time limit), then serve the association."""
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
    """

    tls_handshake_seconds: float = 30.0
    tls_failed: Callable[[Any, BaseException], None] | None = None

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
