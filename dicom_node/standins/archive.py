"""A minimal local archive: a storage SCP that keeps every instance it receives.

Used by ``picard-node demo`` as the "PACS" that receives the results, and handy for site
checks. It accepts every storage SOP class pynetdicom knows, in every transfer syntax, and
writes each instance with the spool's atomic writer before answering.
"""

from __future__ import annotations

import io
import logging
import re
import threading
from pathlib import Path
from typing import Any

from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from dicom_node.instances import StoreStatus
from dicom_node.spool import atomic_write_bytes

logger = logging.getLogger(__name__)

_UID = re.compile(r"^[0-9.]{1,64}$")


class LocalArchive:
    """Storage SCP writing ``<directory>/<SOPInstanceUID>.dcm``.

    Parameters
    ----------
    directory : Path
        Where received instances go (created if missing).
    ae_title : str
        Called AE title. Default ``"LOCALPACS"``.
    host : str
        Bind address. Default ``"127.0.0.1"``.
    port : int
        Bind port; ``0`` picks a free one (see :attr:`port`).
    """

    def __init__(self, directory: Path, *, ae_title: str = "LOCALPACS", host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ae_title = ae_title
        self._address = (host, port)
        self._server: Any = None
        self.received: list[Path] = []
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("archive not started")
        return self._server.server_address[1]

    def start(self) -> None:
        """Start serving in a background thread."""
        ae = AE(ae_title=self.ae_title)
        ae.maximum_pdu_size = 0
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        self._server = ae.start_server(self._address, block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        uid = str(ds.SOPInstanceUID)
        if not _UID.match(uid):
            logger.warning("refused instance with malformed SOP Instance UID")
            return StoreStatus.CANNOT_UNDERSTAND
        path = self.directory / f"{uid}.dcm"
        encoded = io.BytesIO()
        ds.save_as(encoded, enforce_file_format=True)
        atomic_write_bytes(path, encoded.getvalue())
        with self._lock:
            self.received.append(path)
        return StoreStatus.SUCCESS
