"""Who may talk to the storage SCP: called/calling AE titles, peer hosts and DICOM TLS.

This module owns the access policy of the SCP (PS3.8 7.1.1.9), decided at association
level:

* a called AE title other than ``Settings.ae_title`` (unless ``require_called_ae_title`` is
  off) is rejected with A-ASSOCIATE-RJ *rejected-permanent, service-user, reason 7*;
* a calling AE title (or AE title and source host, ``AET@host``) not in
  ``Settings.allowed_calling_aets`` with *reason 3*; an empty list allows every AE title;
* with ``Settings.tls_cert``/``tls_key`` the SCP speaks DICOM TLS only
  (:func:`server_ssl_context`); with ``tls_ca`` every client must present a certificate
  signed by that CA.

The SCP's ``EVT_REQUESTED`` handler asks :meth:`AccessPolicy.check` and sends the reject;
the TLS handshake itself runs in :mod:`dicom_node.transport`.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from dataclasses import dataclass
from enum import IntEnum

from dicom_node.config import Settings
from dicom_node.tls import server_context

#: A-ASSOCIATE-RJ result "rejected-permanent" and source "DICOM UL service-user".
REJECTED_PERMANENT = 0x01
SOURCE_SERVICE_USER = 0x01


class RejectReason(IntEnum):
    """A-ASSOCIATE-RJ diagnostics the SCP sends (result 1 rejected-permanent, source 1
    DICOM UL service-user; PS3.8 9.3.4)."""

    #: Calling AE title not recognized.
    CALLING_AE_TITLE_NOT_RECOGNIZED = 0x03
    #: Called AE title not recognized.
    CALLED_AE_TITLE_NOT_RECOGNIZED = 0x07

    @property
    def text(self) -> str:
        """The reason in words, e.g. ``"calling AE title not recognized"``."""
        return self.name.lower().replace("_", " ").replace("ae title", "AE title")


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
    def from_settings(cls, settings: Settings) -> AccessPolicy:
        """Build the policy; host names in ``AET@host`` entries are resolved now.

        Parameters
        ----------
        settings : Settings
            Uses ``ae_title``, ``require_called_ae_title`` and ``allowed_calling_aets``.

        Returns
        -------
        AccessPolicy
            The policy, with every host as a set of canonical IP addresses.

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
        """The reason to reject an association request, or ``None`` to go on.

        Parameters
        ----------
        calling_ae, called_ae : str
            AE titles from the A-ASSOCIATE-RQ (surrounding spaces are ignored).
        peer_host : str
            The peer's IP address (IPv4-mapped IPv6 addresses count as IPv4).

        Returns
        -------
        RejectReason or None
            Why to reject; ``None`` if the association may go on.
        """
        if self.require_called_ae_title and called_ae.strip() != self.ae_title:
            return RejectReason.CALLED_AE_TITLE_NOT_RECOGNIZED
        if not self.allowed:
            return None
        calling = calling_ae.strip()
        host = normalise_ip(peer_host)
        for ae, hosts in self.allowed:
            if ae == calling and (hosts is None or host in hosts):
                return None
        return RejectReason.CALLING_AE_TITLE_NOT_RECOGNIZED

    def describe(self) -> str:
        """The policy in a few words, for the SCP's start-up log line."""
        called = ("called AE title checked" if self.require_called_ae_title
                  else "any called AE title")
        if not self.allowed:
            return f"{called}, any calling AE title"
        return f"{called}, {len(self.allowed)} allowed calling AE title(s)"


def server_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The SCP's TLS context, or ``None`` for plain TCP.

    Parameters
    ----------
    settings : Settings
        Uses ``tls_cert``, ``tls_key`` and ``tls_ca`` (client certificates required when set).

    Returns
    -------
    ssl.SSLContext or None
        ``None`` unless both ``tls_cert`` and ``tls_key`` are set.

    Raises
    ------
    dicom_node.tls.TLSConfigError
        If a certificate, key or CA file cannot be used.
    """
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    return server_context(settings.tls_cert, settings.tls_key, client_ca=settings.tls_ca)


def describe_tls(settings: Settings) -> str:
    """``"plain TCP"`` or ``"DICOM TLS"`` (with client certificates if required), for logs."""
    if settings.tls_cert is None:
        return "plain TCP"
    return "DICOM TLS" + (", client certificates required" if settings.tls_ca else "")


def normalise_ip(text: str) -> str:
    """An IP address in canonical form (IPv4-mapped IPv6 becomes IPv4); text if not an IP."""
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return text
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _resolve(host: str, entry: str) -> set[str]:
    """Canonical IP addresses of `host` (an address or a name) from `entry` ``AET@host``."""
    if normalise_ip(host) != host or _is_ip(host):
        return {normalise_ip(host)}
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError as exc:
        raise ValueError(f"allowed_calling_aets entry {entry!r}: cannot resolve host "
                         f"{host!r}: {exc}") from exc
    return {normalise_ip(str(info[4][0])) for info in infos}


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True
