"""Audit trail: one JSON line per association and per delivered result.

Records go to ``<spool_dir>/audit/audit-YYYYMMDD.jsonl`` (UTC date of the record), one JSON
object per line, appended with a single ``write`` and made durable (flush + fsync) before the
call returns. Several threads and processes may write to the same file: each line is written
whole with ``O_APPEND``.

The trail carries no patient names or IDs in clear. It holds AE titles, network addresses,
UIDs, counts and outcomes. Where a patient must be traceable, :meth:`AuditLog.patient_ref`
gives a salted SHA-256 reference (the salt is random per spool and kept in
``audit/.salt``, readable by the owner only), so the same patient maps to the same reference
within one node without the trail revealing who it is.

Record fields
-------------
Every record: ``time`` (ISO 8601 UTC), ``event`` (``"association"`` or ``"delivery"``),
``outcome``.

``association``: ``calling_ae``, ``called_ae``, ``peer_host``, ``peer_port``, ``tls``
(bool), ``tls_peer`` (certificate common name or ``null``), ``stored``, ``failed``,
``bytes``, ``seconds``, ``detail``. Outcomes: ``released``, ``aborted``, ``connection
closed``, ``rejected``, ``tls handshake failed``, ``dropped before association``.

``delivery``: ``result_id``, ``destination``, ``calling_ae``, ``sop_instance_uids``,
``count``, ``detail``. Outcomes are the caller's, e.g. ``"delivered"`` / ``"failed"``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import secrets
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dicom_node.spool import fsync_path

logger = logging.getLogger(__name__)

#: Sub-folder of the spool holding the audit files.
AUDIT_DIR = "audit"
_SALT_FILE = ".salt"


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _destination_text(destination: Any) -> str:
    if isinstance(destination, str):
        return destination
    ae = getattr(destination, "ae_title", None)
    host = getattr(destination, "host", None)
    port = getattr(destination, "port", None)
    if ae is None or host is None:
        raise TypeError(f"destination must be a str or have ae_title/host/port, got "
                        f"{type(destination).__name__}")
    tls = "+tls" if getattr(destination, "tls", False) else ""
    return f"{ae}@{host}:{port}{tls}"


class AuditLog:
    """Appends audit records under ``<spool_dir>/audit``.

    Parameters
    ----------
    spool_dir : Path or str
        The node's spool folder (``Settings.spool_dir``); ``audit/`` is created inside.
    """

    def __init__(self, spool_dir: Path | str) -> None:
        self.directory = Path(spool_dir) / AUDIT_DIR
        self._lock = threading.Lock()
        self._salt: bytes | None = None

    # ------------------------------------------------------------------ records
    def association(self, *, calling_ae: str, called_ae: str, peer_host: str,
                    peer_port: int | None = None, tls: bool = False,
                    tls_peer: str | None = None, stored: int = 0, failed: int = 0,
                    outcome: str, nbytes: int = 0, seconds: float | None = None,
                    detail: str | None = None) -> dict[str, Any]:
        """Record one association (accepted and ended, rejected, or failed TLS).

        Parameters
        ----------
        calling_ae, called_ae : str
            AE titles from the A-ASSOCIATE-RQ (``""`` when unknown, e.g. failed TLS).
        peer_host : str
            Peer IP address.
        peer_port : int, optional
            Peer TCP port.
        tls : bool
            Whether the connection used TLS.
        tls_peer : str, optional
            Common name of the verified client certificate.
        stored, failed : int
            Instances stored / refused on this association.
        outcome : str
            ``"released"``, ``"aborted"``, ``"rejected"``, ``"tls handshake failed"``, ...
        nbytes : int
            Bytes received.
        seconds : float, optional
            Duration of the association.
        detail : str, optional
            Reason text (reject reason, TLS error); must not hold patient data.

        Returns
        -------
        dict
            The record as written.
        """
        record = {
            "event": "association", "calling_ae": calling_ae, "called_ae": called_ae,
            "peer_host": peer_host, "peer_port": peer_port, "tls": bool(tls),
            "tls_peer": tls_peer, "stored": int(stored), "failed": int(failed),
            "bytes": int(nbytes),
            "seconds": None if seconds is None else round(float(seconds), 3),
            "outcome": outcome, "detail": detail,
        }
        return self.write(record)

    def delivery(self, result_id: str, destination: Any, sop_instance_uids: Sequence[str],
                 outcome: str, detail: str | None = None, *,
                 calling_ae: str | None = None) -> dict[str, Any]:
        """Record one delivery of result objects to a destination.

        Parameters
        ----------
        result_id : str
            What was delivered: the job or result key (e.g. the source series UID).
        destination : str or Destination
            Where: ``"AE@host:port"`` or a :class:`~dicom_node.config.Destination`.
        sop_instance_uids : sequence of str
            SOP Instance UIDs of the objects sent.
        outcome : str
            E.g. ``"delivered"`` or ``"failed"``.
        detail : str, optional
            Error text or statuses; must not hold patient data.
        calling_ae : str, optional
            Who sent: the node's calling AE title.

        Returns
        -------
        dict
            The record as written.
        """
        uids = [str(u) for u in sop_instance_uids]
        record = {
            "event": "delivery", "result_id": str(result_id),
            "destination": _destination_text(destination), "calling_ae": calling_ae,
            "sop_instance_uids": uids, "count": len(uids), "outcome": outcome,
            "detail": detail,
        }
        return self.write(record)

    def write(self, record: dict[str, Any]) -> dict[str, Any]:
        """Append `record` (plus ``time``) as one JSON line; fsync before returning.

        Raises
        ------
        OSError
            If the audit file cannot be written.
        """
        now = _now()
        record = {"time": now.isoformat(timespec="milliseconds"), **record}
        line = (json.dumps(record, ensure_ascii=True, sort_keys=False) + "\n").encode()
        path = self.path_for(now)
        with self._lock:
            new_dir = not self.directory.exists()
            self.directory.mkdir(parents=True, exist_ok=True)
            if new_dir:
                fsync_path(self.directory.parent, directory=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        return record

    # ------------------------------------------------------------------ helpers
    def path_for(self, when: _dt.datetime | None = None) -> Path:
        """The audit file for the UTC date of `when` (default now)."""
        when = when or _now()
        return self.directory / f"audit-{when.astimezone(_dt.timezone.utc):%Y%m%d}.jsonl"

    def patient_ref(self, patient_id: str) -> str:
        """Salted SHA-256 reference for a patient ID (first 16 hex digits), never the ID."""
        return hashlib.sha256(self._get_salt() + str(patient_id).encode()).hexdigest()[:16]

    def _get_salt(self) -> bytes:
        with self._lock:
            if self._salt is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                path = self.directory / _SALT_FILE
                if not path.exists():
                    _publish_once(path, secrets.token_bytes(32))
                self._salt = path.read_bytes()
            return self._salt

    def records(self) -> list[dict[str, Any]]:
        """Every record of every audit file, oldest file first (for tests and tools)."""
        out = []
        for path in sorted(self.directory.glob("audit-*.jsonl")):
            with open(path, encoding="ascii") as fh:
                out.extend(json.loads(line) for line in fh if line.strip())
        return out


def _publish_once(path: Path, data: bytes) -> None:
    """Create `path` holding `data` unless it exists, never visible half-written.

    The bytes go to a private temporary file first, which is then hard-linked to `path`:
    the link fails if another process published first, and then its (complete) file wins.
    Several processes writing the audit trail of one spool therefore share one salt.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
