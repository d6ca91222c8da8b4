"""Storage SCP: the association life cycle and the event handlers of the node's DICOM server.

:class:`StorageSCP` accepts the image storage SOP classes in
:data:`~dicom_node.instances.ACCEPTED_SOP_CLASSES` in every transfer syntax pydicom can decode
here (:func:`~dicom_node.instances.decodable_transfer_syntaxes`), plus Verification (C-ECHO).
Other SOP classes are not accepted during association negotiation; a request that still
names one is refused with *SOP Class Not Supported*.

Each C-STORE is received in pynetdicom's chunked mode (the data set streams into a file in
the spool's ``tmp/``, see :mod:`dicom_node.transport`), checked cheaply
(:func:`~dicom_node.instances.read_instance_header`), then moved into the spool and fsynced
**before** success is answered. A bad instance is answered with a failure status and
quarantined; the SCP keeps serving. The series it belongs to is then handed to the
:class:`~dicom_node.series.SeriesTracker`, which announces complete series through the
``on_series_complete`` callback.

Access control (AE titles, source hosts, DICOM TLS) follows :mod:`dicom_node.access`; a
refused association gets an A-ASSOCIATE-RJ from the ``EVT_REQUESTED`` handler here. What a
connection may cost before that check is bounded by :mod:`dicom_node.admission` (pending
connections per host and overall, the oldest evicted; the ARTIM deadline for the
A-ASSOCIATE-RQ; PDU sizes; idle timeouts); associations beyond ``max_associations`` (or
``max_associations_per_host``) get A-ASSOCIATE-RJ rejected-transient, local-limit-exceeded.
The TLS handshake runs in the connection's own thread with a time limit, so a silent or
plain-TCP client blocks nobody.

Every association (accepted, rejected, failed TLS handshake) leaves one record in the audit
trail (:class:`dicom_node.audit.AuditLog`, ``<spool>/audit/audit-YYYYMMDD.jsonl``) and one
log line; connections dropped before their A-ASSOCIATE-RQ was read are counted and leave one
record and one line per peer address and reason every few seconds. None of them carries an
attribute value (:mod:`dicom_node.phi`).
"""

from __future__ import annotations

import logging
import shutil
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.access import (
    REJECTED_PERMANENT,
    SOURCE_SERVICE_USER,
    AccessPolicy,
    describe_tls,
    server_ssl_context,
)
from dicom_node.admission import ConnectionGuard, ConnectionLimits
from dicom_node.audit import AuditLog
from dicom_node.config import Settings
from dicom_node.instances import (
    ACCEPTED_SOP_CLASSES,
    InvalidInstanceError,
    StoreStatus,
    decodable_transfer_syntaxes,
    read_instance_header,
)
from dicom_node.phi import describe_exception
from dicom_node.series import SeriesTracker
from dicom_node.spool import SeriesRef, Spool
from dicom_node.tls import peer_subject
from dicom_node.transport import (
    NodeAE,
    association_socket,
    hold_chunked_receive,
    received_file,
    release_chunked_receive,
    remove_stale_chunk_files,
    route_chunk_files,
)

logger = logging.getLogger(__name__)

#: Seconds between two reports of connections dropped before association.
DROP_REPORT_SECONDS = 2.0
#: A-ASSOCIATE-RJ for an association over the limits: rejected-transient, DICOM UL
#: service-provider (presentation related function), local-limit-exceeded (PS3.8 9.3.4).
LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)


def _failure(status: StoreStatus, comment: str) -> Dataset:
    """A C-STORE response data set with a failure `status` and an Error Comment."""
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
    series: dict[tuple[str, str], SeriesRef] = field(default_factory=dict)


class StorageSCP:
    """pynetdicom storage SCP that spools instances and reports complete series.

    Parameters
    ----------
    settings : Settings
        Uses ``ae_title``, ``host``, ``port`` (0: a free port), ``spool_dir``,
        ``series_quiet_seconds``, ``allowed_calling_aets``, ``require_called_ae_title``,
        ``min_free_bytes``, the TLS settings ``tls_cert``, ``tls_key``, ``tls_ca``,
        ``tls_handshake_seconds`` and the limits ``association_timeout_seconds``,
        ``idle_timeout_seconds``, ``max_pdu_bytes``, ``max_associations``,
        ``max_associations_per_host``, ``max_pending_connections``, ``max_pending_per_host``.
    on_series_complete : callable
        Called as ``on_series_complete(ref)`` once per complete series, in the SCP's monitor
        thread. Exceptions are logged and the call is retried later. Series a previous run
        left open are resumed; series it completed but did not see through are not announced
        again (the node dispatches them, see :func:`dicom_node.series.unfinished_series`).

    Attributes
    ----------
    port : int
        The TCP port actually bound (valid after :meth:`start`).
    spool : Spool
        The spool instances are written to.
    audit : AuditLog
        The audit trail (one record per association).
    series : SeriesTracker
        Decides when series are complete.
    """

    def __init__(self, settings: Settings,
                 on_series_complete: Callable[[SeriesRef], Any]) -> None:
        self.settings = settings
        self.spool = Spool(settings.spool_dir)
        self.audit = AuditLog(settings.spool_dir)
        self.port: int = settings.port
        self.series = SeriesTracker(
            self.spool, on_series_complete, quiet_seconds=float(settings.series_quiet_seconds),
            release_grace_seconds=settings.series_release_grace_seconds)
        self._ae: NodeAE | None = None
        self._server: ThreadedAssociationServer | None = None
        self._lock = threading.Lock()
        self._assocs: dict[int, _AssocStats] = {}
        self._sockets: dict[int, Any] = {}  # id(association) -> its socket, for the guard
        self._drops: dict[tuple[str, str], tuple[int, str]] = {}  # (host, kind) -> count
        self._drops_reported = 0.0
        self.guard = ConnectionGuard(ConnectionLimits.from_settings(settings))
        self._policy = AccessPolicy(ae_title=settings.ae_title.strip())  # resolved in start()

    @property
    def on_series_complete(self) -> Callable[[SeriesRef], Any]:
        """The callback announcing complete series (held by :attr:`series`)."""
        return self.series.on_series_complete

    @on_series_complete.setter
    def on_series_complete(self, callback: Callable[[SeriesRef], Any]) -> None:
        self.series.on_series_complete = callback

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Bind the port and serve in background threads (returns at once).

        Raises
        ------
        RuntimeError
            If the SCP is already started.
        ValueError
            If an allowed host cannot be resolved or a TLS file cannot be used
            (:class:`~dicom_node.tls.TLSConfigError`).
        OSError
            If the port cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("StorageSCP is already started")
        self._policy = AccessPolicy.from_settings(self.settings)
        ssl_context = server_ssl_context(self.settings)
        # Stream data sets to a file instead of memory (large tomosynthesis objects).
        hold_chunked_receive(self)
        ae = NodeAE(ae_title=self.settings.ae_title)
        self._limit(ae)
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
        remove_stale_chunk_files(self.spool.tmp_dir)
        route_chunk_files(ae, self.spool.tmp_dir)
        try:
            self._server = ae.start_server((self.settings.host, self.settings.port),
                                           block=False, ssl_context=ssl_context,
                                           evt_handlers=handlers)
        except OSError:
            release_chunked_receive(self)
            raise
        self._ae = ae
        self.port = int(self._server.server_address[1])
        self.series.start()
        logger.info("storage SCP %s listening on %s:%d (%s; spool %s, quiet period %.1f s, "
                    "%d transfer syntaxes, %s)", self.settings.ae_title, self.settings.host,
                    self.port, describe_tls(self.settings), self.spool.root,
                    self.series.quiet_seconds, len(syntaxes), self._policy.describe())

    def _limit(self, ae: NodeAE) -> None:
        """Bounded resources before and after authentication (:mod:`dicom_node.admission`)."""
        settings = self.settings
        ae.maximum_pdu_size = int(settings.max_pdu_bytes)
        ae.guard = self.guard
        ae.pre_association_failed = self._pre_association_failed
        ae.housekeeping = self._report_drops
        ae.association_timeout_seconds = float(settings.association_timeout_seconds)
        ae.idle_timeout_seconds = float(settings.idle_timeout_seconds)
        ae.acse_timeout = float(settings.association_timeout_seconds)
        ae.network_timeout = float(settings.idle_timeout_seconds)
        # the guard decides (per host and overall); pynetdicom's own count includes
        # connections still negotiating, so it must never be the one to refuse
        ae.maximum_associations = (settings.max_associations + settings.max_pending_connections
                                   + 16)

    def stop(self) -> None:
        """Stop listening, abort open associations and stop the monitor thread."""
        if self._ae is not None:
            self._ae.shutdown()  # shuts the server down and aborts its associations
        self._server = None
        self._ae = None
        release_chunked_receive(self)
        self.series.stop()
        self._report_drops(force=True)
        logger.info("storage SCP %s stopped", self.settings.ae_title)

    def __enter__(self) -> StorageSCP:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ C-STORE
    def _handle_store(self, event: Event) -> int | Dataset:
        """EVT_C_STORE: store the instance; never raises (an error is a failure status)."""
        stats = self._stats(event.assoc)
        try:
            status = self._store(event)
        except Exception as exc:  # noqa: BLE001 - never let a bug kill the association
            logger.error("unexpected error while storing an instance: %s",
                         describe_exception(exc), exc_info=True)
            status = _failure(StoreStatus.PROCESSING_FAILURE, "internal error in the node")
        code = status if isinstance(status, int) else int(status.Status)
        if stats is not None:
            if code == StoreStatus.SUCCESS:
                stats.stored += 1
            else:
                stats.failed += 1
        return status

    def _store(self, event: Event) -> int | Dataset:
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
        src, owned = received_file(event, self.spool.tmp_dir)
        try:
            if stats is not None:
                stats.nbytes += src.stat().st_size
            return self._check_and_spool(src, affected_class, affected_uid, stats)
        finally:
            if owned and src.exists():
                src.unlink()

    def _check_and_spool(self, src: Path, affected_class: str, affected_uid: str,
                         stats: _AssocStats | None) -> int | Dataset:
        """Check the received file, then spool it (success) or quarantine it (failure); the
        association's `stats` remember its series (see :meth:`_handle_released`)."""
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
            self.series.note_instance(stored, multi_frame=header.number_of_frames > 1)
            if stats is not None:
                stats.series[(header.study_uid, header.series_uid)] = stored.series
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

    # ------------------------------------------------------------------ associations
    def _stats(self, assoc: Association) -> _AssocStats | None:
        with self._lock:
            return self._assocs.get(id(assoc))

    def _handle_requested(self, event: Event) -> None:
        """A-ASSOCIATE-RQ received: reject it here if the AE titles or host are not allowed."""
        assoc = event.assoc
        request = assoc.requestor.primitive
        calling = str(request.calling_ae_title).strip()
        called = str(request.called_ae_title).strip()
        host, port = str(assoc.requestor.address), assoc.requestor.port
        reason = self._policy.check(calling, called, host)
        if reason is None:
            self._check_limits(event, calling, called)
            return
        # Log and audit first: once the reject is out the peer may look at the trail.
        sock = association_socket(assoc)
        logger.warning("association from %s (%s:%s) to %s rejected: %s (A-ASSOCIATE-RJ "
                       "rejected-permanent, service-user, reason %d)", calling, host, port,
                       called, reason.text, int(reason))
        self._audit_association(calling_ae=calling, called_ae=called, peer_host=host,
                                peer_port=port, tls=isinstance(sock, ssl.SSLSocket),
                                tls_peer=peer_subject(sock), outcome="rejected",
                                detail=f"{reason.text} (reason {int(reason)})")
        # pynetdicom skips its own negotiation when EVT_REQUESTED sent a reject
        assoc.acse.send_reject(REJECTED_PERMANENT, SOURCE_SERVICE_USER, int(reason))
        assoc.kill()  # waits until the reject is sent, as pynetdicom's own rejects do

    def _check_limits(self, event: Event, calling: str, called: str) -> None:
        """Count the association; over a limit, answer rejected-transient (local limit)."""
        assoc = event.assoc
        sock = association_socket(assoc)
        with self._lock:
            self._sockets[id(assoc)] = sock
        over = self.guard.associate(sock)
        if over is None:
            return
        host, port = str(assoc.requestor.address), assoc.requestor.port
        logger.warning("association from %s (%s:%s) to %s rejected: local limit exceeded, %s",
                       calling, host, port, called, over)
        self._audit_association(calling_ae=calling, called_ae=called, peer_host=host,
                                peer_port=port, tls=isinstance(sock, ssl.SSLSocket),
                                outcome="rejected", detail=f"local limit exceeded: {over}")
        assoc.acse.send_reject(*LOCAL_LIMIT_EXCEEDED)
        assoc.kill()

    def _pre_association_failed(self, address: Any, reason: str) -> None:
        """A connection was dropped before its A-ASSOCIATE-RQ was read (transport hook).

        Counted per peer address and reason, reported by :meth:`_report_drops` (one log
        line and one audit record per address and reason every few seconds): a flood of
        connections must not become a flood of fsynced audit writes.
        """
        host = str(address[0]) if isinstance(address, tuple) else str(address)
        kind = reason.split(" after ")[0].split(";")[0][:80]
        with self._lock:
            count, example = self._drops.get((host, kind), (0, reason))
            self._drops[(host, kind)] = (count + 1, example)

    def _report_drops(self, *, force: bool = False) -> None:
        """Log and audit the connections dropped before association since the last report."""
        now = time.monotonic()
        with self._lock:
            due = force or now - self._drops_reported >= DROP_REPORT_SECONDS
            if not self._drops or not due:
                return
            drops, self._drops = self._drops, {}
            self._drops_reported = now
        for (host, _), (count, example) in sorted(drops.items()):
            logger.warning("%d connection(s) from %s closed before association: %s", count,
                           host, example)
            self._audit_association(calling_ae="", called_ae="", peer_host=host,
                                    outcome="dropped before association",
                                    detail=f"{count} connection(s): {example}"[:300])

    def _handle_accepted(self, event: Event) -> None:
        """A-ASSOCIATE-AC sent: start the association's statistics; log refused contexts."""
        assoc = event.assoc
        requestor = assoc.requestor
        sock = association_socket(assoc)
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

    def _handle_rejected(self, event: Event) -> None:
        """Rejects made by pynetdicom itself (e.g. too many associations)."""
        requestor = event.assoc.requestor
        request = requestor.primitive
        calling = str(getattr(request, "calling_ae_title", "")).strip()
        called = str(getattr(request, "called_ae_title", "")).strip()
        logger.warning("association from %s (%s:%s) to %s rejected by pynetdicom", calling,
                       requestor.address, requestor.port, called)
        sock = association_socket(event.assoc)
        self._audit_association(calling_ae=calling, called_ae=called,
                                peer_host=str(requestor.address), peer_port=requestor.port,
                                tls=isinstance(sock, ssl.SSLSocket), outcome="rejected",
                                detail="rejected by pynetdicom (e.g. too many associations)")

    def _handle_released(self, event: Event) -> None:
        self._set_outcome(event.assoc, "released")
        stats = self._stats(event.assoc)
        if stats is not None and stats.series:
            self.series.note_association_released(list(stats.series.values()))

    def _handle_aborted(self, event: Event) -> None:
        self._set_outcome(event.assoc, "aborted")

    def _set_outcome(self, assoc: Association, outcome: str) -> None:
        stats = self._stats(assoc)
        if stats is not None:
            stats.outcome = outcome

    def _handle_conn_close(self, event: Event) -> None:
        """Connection closed: one log line and one audit record for the association."""
        with self._lock:
            stats = self._assocs.pop(id(event.assoc), None)
            sock = self._sockets.pop(id(event.assoc), None)
        if sock is not None:
            self.guard.release(sock)
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
        """A TLS handshake failed (called by :class:`~dicom_node.transport.NodeServer`)."""
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
