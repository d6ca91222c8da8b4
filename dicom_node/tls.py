"""DICOM TLS (PS3.15 B.1, BCP 195): SSL contexts for the storage SCP and the SCU.

Both sides use TLS 1.2 or newer with the ciphers of Python's default context (ECDHE with
AES-GCM or ChaCha20 first), which dcmtk's default BCP 195 profile accepts. Certificates and
keys are PEM files; keys must not be encrypted.

* :func:`server_context` — the SCP's certificate; with a client CA every client must present
  a certificate signed by it (mutual TLS), else the handshake fails.
* :func:`client_context` — verifies the peer's certificate (a given CA file or the system
  trust store) and optionally presents a client certificate.
* :func:`destination_tls_args` — the ``(context, server_hostname)`` pair pynetdicom wants for
  a configured :class:`~dicom_node.config.Destination`.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Oldest TLS version either side speaks.
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class TLSConfigError(ValueError):
    """A certificate, key or CA file cannot be used; the message names the file."""


def _load_chain(context: ssl.SSLContext, cert: Path | str, key: Path | str) -> None:
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"cannot load TLS certificate {str(cert)!r} with key "
                             f"{str(key)!r}: {exc}") from exc


def _load_ca(context: ssl.SSLContext, ca: Path | str) -> None:
    try:
        context.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"cannot load TLS CA file {str(ca)!r}: {exc}") from exc


def server_context(cert: Path | str, key: Path | str, *,
                   client_ca: Path | str | None = None) -> ssl.SSLContext:
    """SSL context for the storage SCP.

    Parameters
    ----------
    cert : Path or str
        PEM server certificate (chain), e.g. ``/etc/picard/node.crt``.
    key : Path or str
        PEM private key of `cert` (unencrypted).
    client_ca : Path or str, optional
        PEM CA certificate(s). When given, clients must present a certificate signed by one
        of them (``CERT_REQUIRED``); default ``None`` asks for no client certificate.

    Returns
    -------
    ssl.SSLContext

    Raises
    ------
    TLSConfigError
        If a file is missing or not a usable certificate/key/CA.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    _load_chain(context, cert, key)
    if client_ca is not None:
        _load_ca(context, client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(*, ca: Path | str | None = None, cert: Path | str | None = None,
                   key: Path | str | None = None,
                   check_hostname: bool = True) -> ssl.SSLContext:
    """SSL context for an SCU (C-STORE/C-ECHO to a TLS peer).

    Parameters
    ----------
    ca : Path or str, optional
        PEM CA certificate(s) the peer's certificate must chain to; ``None`` (default) uses
        the system trust store.
    cert, key : Path or str, optional
        Client certificate and its key, presented when the peer asks; both or neither.
    check_hostname : bool, optional
        Check that the peer's certificate names the host connected to. Default ``True``.

    Returns
    -------
    ssl.SSLContext
        Always verifies the peer's certificate chain (``CERT_REQUIRED``).

    Raises
    ------
    TLSConfigError
        If a file is missing or unusable, or only one of `cert` and `key` is given.
    """
    if (cert is None) != (key is None):
        raise TLSConfigError("a client certificate needs both cert and key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = MINIMUM_VERSION
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if ca is not None:
        _load_ca(context, ca)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cert is not None and key is not None:
        _load_chain(context, cert, key)
    return context


def destination_tls_args(destination: Any) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom ``tls_args`` for a :class:`~dicom_node.config.Destination`.

    Returns
    -------
    tuple of (ssl.SSLContext, str) or None
        ``None`` when ``destination.tls`` is false; else the client context and the name the
        peer's certificate must carry (``tls_server_name`` or ``host``).
    """
    if not getattr(destination, "tls", False):
        return None
    context = client_context(ca=destination.tls_ca, cert=destination.tls_cert,
                             key=destination.tls_key,
                             check_hostname=destination.tls_check_hostname)
    return context, destination.tls_server_name or destination.host


def peer_subject(sock: Any) -> str | None:
    """Common name (else the whole subject) of the verified peer certificate, if any."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    try:
        cert = sock.getpeercert()
    except (ValueError, OSError):
        return None
    if not cert:
        return None
    fields = [f"{k}={v}" for rdn in cert.get("subject", ()) for k, v in rdn]
    names = [f.split("=", 1)[1] for f in fields if f.startswith("commonName=")]
    return names[0] if names else ",".join(fields) or None
