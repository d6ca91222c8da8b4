"""A small HTTP server for the viewer test: the built OHIF viewer, and DICOMweb via Orthanc.

``/dicom-web/...`` is passed on to Orthanc's DICOMweb plugin with a ``Forwarded`` header
naming this server, so the bulk-data links Orthanc writes into metadata point back through
this server (the browser never talks to Orthanc directly: one origin, no CORS).
``/app-config.js`` is the generated configuration; every other path is a file of the
viewer's ``dist/`` folder, or ``index.html`` (the viewer routes itself).
"""

from __future__ import annotations

import http.client
import logging
import mimetypes
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

#: Headers that describe one connection and are not passed through the proxy.
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
               "trailers", "transfer-encoding", "upgrade", "host", "content-length"}
_TYPES = {".js": "application/javascript", ".mjs": "application/javascript",
          ".wasm": "application/wasm", ".json": "application/json", ".css": "text/css",
          ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml", ".woff2": "font/woff2"}


class ViewerServer:
    """Serve ``dist`` and proxy ``/dicom-web`` to ``orthanc_http_port`` on 127.0.0.1.

    Parameters
    ----------
    dist : Path
        The viewer's built files (``index.html`` inside).
    orthanc_http_port : int
        Orthanc's HTTP port (DICOMweb plugin at ``/dicom-web``).
    app_config : str
        Content served as ``/app-config.js``.
    """

    def __init__(self, dist: Path, orthanc_http_port: int, app_config: str) -> None:
        self.dist = Path(dist).resolve()
        if not (self.dist / "index.html").is_file():
            raise FileNotFoundError(f"no index.html in {self.dist}")
        self.orthanc_http_port = orthanc_http_port
        self.app_config = app_config.encode("utf-8")
        self.requests: list[tuple[str, int]] = []  # (path, status), for failure messages
        handler = self._handler_class()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                        name="viewer-http")

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ViewerServer:
        """Start serving in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)

    def failed_requests(self) -> list[tuple[str, int]]:
        """Requests answered with a status of 400 or more."""
        return [(path, status) for path, status in self.requests if status >= 400]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                logger.debug("%s " + format, self.address_string(), *args)

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                if path.startswith("/dicom-web/"):
                    self._proxy()
                elif path == "/app-config.js":
                    self._send(200, server.app_config, "application/javascript")
                else:
                    self._static(path)

            def _send(self, status: int, body: bytes, content_type: str,
                      headers: list[tuple[str, str]] | None = None) -> None:
                server.requests.append((self.path, status))
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                for name, value in headers or []:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def _static(self, path: str) -> None:
                target = (server.dist / path.lstrip("/")).resolve()
                if server.dist not in target.parents or not target.is_file():
                    target = server.dist / "index.html"
                content_type = _TYPES.get(target.suffix) or (
                    mimetypes.guess_type(target.name)[0] or "application/octet-stream")
                self._send(200, target.read_bytes(), content_type)

            def _proxy(self) -> None:
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in _HOP_BY_HOP}
                headers["Forwarded"] = f"host=127.0.0.1:{server.port};proto=http"
                conn = http.client.HTTPConnection("127.0.0.1", server.orthanc_http_port,
                                                  timeout=120)
                try:
                    conn.request("GET", self.path, headers=headers)
                    reply = conn.getresponse()
                    body = reply.read()
                    passed = [(k, v) for k, v in reply.getheaders()
                              if k.lower() not in _HOP_BY_HOP | {"content-type"}]
                    self._send(reply.status, body,
                               reply.getheader("Content-Type", "application/octet-stream"),
                               passed)
                finally:
                    conn.close()

        return Handler
