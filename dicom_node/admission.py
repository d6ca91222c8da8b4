"""Bounded resources before authentication: connection slots, deadlines and PDU sizes.

Nothing a peer merely *announces* or merely *keeps open* may cost the node more than a
fixed amount, whoever the peer is (AE titles are checked only once the A-ASSOCIATE-RQ has
been read):

* **Pending connections** (accepted, A-ASSOCIATE-RQ not fully read yet) are limited
  overall (``max_pending_connections``) and per peer address (``max_pending_per_host``).
  When a limit is reached the *oldest* pending connection in that scope is closed to admit
  the new one: silent or trickling connections can never lock real senders out, and the
  threads they cost stay bounded (one each).
* **ARTIM**: a pending connection must deliver its whole A-ASSOCIATE-RQ within
  ``association_timeout_seconds``; :func:`read_associate_rq` enforces the deadline itself
  (no reliance on pynetdicom's timers, which a blocked read never checks).
* **Sizes**: an A-ASSOCIATE-RQ announcing more than :data:`MAX_ASSOCIATE_RQ_BYTES` is
  refused at its header, and buffers grow with what actually arrived, never with what was
  announced (:func:`read_exact`).
* **Associations** (A-ASSOCIATE-RQ read, AE titles accepted) are limited overall
  (``max_associations``) and per peer address (``max_associations_per_host``); beyond
  that the SCP answers A-ASSOCIATE-RJ rejected-transient, local-limit-exceeded
  (:meth:`ConnectionGuard.associate`).

:class:`ConnectionGuard` holds the bookkeeping; :mod:`dicom_node.transport` calls it from
pynetdicom's server, and :mod:`dicom_node.scp` from the association handlers.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dicom_node.access import normalise_ip
from dicom_node.config import Settings
from dicom_node.phi import PhiFreeError

logger = logging.getLogger(__name__)

#: Largest A-ASSOCIATE-RQ accepted, bytes (128 presentation contexts with every transfer
#: syntax and user identity fit in a fraction of it).
MAX_ASSOCIATE_RQ_BYTES = 1024 * 1024
#: First buffer of a read; each further one at most doubles what has arrived.
FIRST_CHUNK = 64 * 1024
#: PDU type of A-ASSOCIATE-RQ (PS3.8 9.3.2).
A_ASSOCIATE_RQ = 0x01


class PreAssociationError(PhiFreeError, OSError):
    """A connection dropped before association: silent, too slow, too large, evicted."""


@dataclass(frozen=True)
class ConnectionLimits:
    """The limits of :class:`ConnectionGuard` (see the module docstring).

    Attributes
    ----------
    association_timeout_seconds : float
        ARTIM: time from accept (after any TLS handshake) to a complete A-ASSOCIATE-RQ.
    max_pending, max_pending_per_host : int
        Pending connections overall / per peer address.
    max_associations, max_associations_per_host : int
        Associations overall / per peer address.
    """

    association_timeout_seconds: float = 15.0
    max_pending: int = 64
    max_pending_per_host: int = 16
    max_associations: int = 16
    max_associations_per_host: int = 8

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        """The limits configured in `settings`."""
        return cls(association_timeout_seconds=settings.association_timeout_seconds,
                   max_pending=settings.max_pending_connections,
                   max_pending_per_host=settings.max_pending_per_host,
                   max_associations=settings.max_associations,
                   max_associations_per_host=settings.max_associations_per_host)


@dataclass(eq=False)
class Ticket:
    """One accepted connection as the guard sees it.

    Attributes
    ----------
    sock : socket.socket
        The connection (an ``ssl.SSLSocket`` under TLS).
    host : str
        Peer IP address (canonical form).
    port : int
        Peer port.
    opened : float
        ``time.monotonic()`` at accept.
    state : str
        ``"pending"`` (A-ASSOCIATE-RQ not read), ``"negotiating"``, ``"associated"`` or
        ``"closed"``.
    evicted : str
        Why the guard closed it ("" while it has not).
    """

    sock: socket.socket
    host: str
    port: int
    opened: float
    state: str = "pending"
    evicted: str = ""
    deadline: float = field(default=0.0)


class ConnectionGuard:
    """Counts connections per state and peer; evicts the oldest pending one when full.

    Thread-safe: the accept loop, connection threads and association handlers call it.

    Parameters
    ----------
    limits : ConnectionLimits
        The limits.
    clock : callable, optional
        Monotonic clock (tests). Default ``time.monotonic``.
    """

    def __init__(self, limits: ConnectionLimits,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._tickets: dict[int, Ticket] = {}  # id(socket) -> ticket

    # ------------------------------------------------------------------ life cycle
    def admit(self, sock: socket.socket, address: tuple) -> Ticket:
        """Register a just-accepted connection as pending, closing older pending ones if full.

        Returns
        -------
        Ticket
            The new connection's ticket (always admitted).
        """
        host, port = normalise_ip(str(address[0])), int(address[1]) if len(address) > 1 else 0
        now = self._clock()
        ticket = Ticket(sock, host, port, now,
                        deadline=now + self.limits.association_timeout_seconds)
        victims = []
        with self._lock:
            pending = sorted((t for t in self._tickets.values() if t.state == "pending"),
                             key=lambda t: t.opened)
            same_host = [t for t in pending if t.host == host]
            while len(same_host) >= self.limits.max_pending_per_host:
                victim = same_host.pop(0)
                pending.remove(victim)
                victims.append(victim)
            while len(pending) >= self.limits.max_pending:
                victims.append(pending.pop(0))
            for victim in victims:
                self._close(victim, "pending-connection limit reached; oldest closed")
            self._tickets[id(sock)] = ticket
        for victim in victims:
            logger.debug("closed pending connection from %s:%d after %.1f s: %s",
                         victim.host, victim.port, now - victim.opened, victim.evicted)
        return ticket

    def ticket(self, sock: object) -> Ticket | None:
        """The ticket of a connection's socket, if the guard knows it."""
        with self._lock:
            return self._tickets.get(id(sock))

    def negotiating(self, ticket: Ticket) -> None:
        """The A-ASSOCIATE-RQ is read: the connection is no longer pending (not evictable)."""
        with self._lock:
            if ticket.state == "pending":
                ticket.state = "negotiating"

    def associate(self, sock: object) -> str | None:
        """Count an accepted A-ASSOCIATE-RQ; the reason to reject it when over a limit.

        Returns
        -------
        str or None
            ``None``: counted as an association. Otherwise a reason (the caller answers
            A-ASSOCIATE-RJ rejected-transient, service-provider, local-limit-exceeded).
        """
        with self._lock:
            ticket = self._tickets.get(id(sock))
            if ticket is None:
                return None  # not admitted through the guard (e.g. a test server)
            associated = [t for t in self._tickets.values() if t.state == "associated"]
            if len(associated) >= self.limits.max_associations:
                return f"{len(associated)} associations in progress (max_associations)"
            per_host = sum(1 for t in associated if t.host == ticket.host)
            if per_host >= self.limits.max_associations_per_host:
                return (f"{per_host} associations in progress from {ticket.host} "
                        "(max_associations_per_host)")
            ticket.state = "associated"
            return None

    def release(self, sock: object) -> None:
        """Forget a connection that closed (idempotent)."""
        with self._lock:
            ticket = self._tickets.pop(id(sock), None)
            if ticket is not None:
                ticket.state = "closed"

    def sweep(self) -> int:
        """Close pending connections past their deadline, forget closed sockets; returns how
        many were closed. Called periodically by the server's accept loop."""
        now = self._clock()
        expired = []
        with self._lock:
            for key, ticket in list(self._tickets.items()):
                if _closed(ticket.sock):
                    del self._tickets[key]
                elif ticket.state == "pending" and now > ticket.deadline + 1.0:
                    self._close(ticket, "no A-ASSOCIATE-RQ within the association timeout")
                    expired.append(ticket)
        for ticket in expired:
            logger.debug("closed pending connection from %s:%d: %s", ticket.host,
                         ticket.port, ticket.evicted)
        return len(expired)

    def counts(self) -> dict[str, int]:
        """Connections per state (for logs and tests)."""
        with self._lock:
            out: dict[str, int] = {}
            for ticket in self._tickets.values():
                out[ticket.state] = out.get(ticket.state, 0) + 1
            return out

    def _close(self, ticket: Ticket, why: str) -> None:
        """Shut a connection down (wakes the thread reading it); caller holds the lock."""
        ticket.evicted = why
        ticket.state = "closed"
        self._tickets.pop(id(ticket.sock), None)
        try:
            ticket.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.fileno() < 0
    except (OSError, ValueError):
        return True


def read_exact(sock: socket.socket, nbytes: int, *, deadline: float,
               clock: Callable[[], float] = time.monotonic) -> bytearray:
    """Read exactly `nbytes` before `deadline`, growing the buffer only as data arrives.

    Raises
    ------
    PreAssociationError
        If the peer closes the connection, the deadline passes or the socket fails.
    """
    out = bytearray()
    chunk = FIRST_CHUNK
    while len(out) < nbytes:
        remaining = deadline - clock()
        if remaining <= 0:
            raise PreAssociationError(f"timed out after {len(out)} of {nbytes} bytes")
        want = min(nbytes - len(out), chunk)
        try:
            sock.settimeout(remaining)
            data = sock.recv(want)
        except TimeoutError:
            raise PreAssociationError(f"timed out after {len(out)} of {nbytes} bytes") from None
        except OSError as exc:
            raise PreAssociationError(f"connection failed after {len(out)} of {nbytes} bytes "
                                      f"({type(exc).__name__})") from None
        if not data:
            raise PreAssociationError(f"connection closed after {len(out)} of {nbytes} bytes")
        out += data
        chunk = max(FIRST_CHUNK, min(2 * len(out), 4 * 1024 * 1024))
    return out


def read_associate_rq(sock: socket.socket, *, deadline: float,
                      max_length: int = MAX_ASSOCIATE_RQ_BYTES,
                      clock: Callable[[], float] = time.monotonic) -> bytearray:
    """Read the first PDU of a connection, which must be an A-ASSOCIATE-RQ, by `deadline`.

    Parameters
    ----------
    sock : socket.socket
        The accepted connection (TLS handshake done).
    deadline : float
        ``clock()`` value by which the whole PDU must have arrived (ARTIM).
    max_length : int
        Largest PDU length field accepted. Default :data:`MAX_ASSOCIATE_RQ_BYTES`.
    clock : callable
        Monotonic clock. Default ``time.monotonic``.

    Returns
    -------
    bytearray
        The whole PDU (6-byte header and body), for pynetdicom to decode.

    Raises
    ------
    PreAssociationError
        Another PDU type, a length above `max_length`, a closed connection or the deadline.
    """
    header = read_exact(sock, 6, deadline=deadline, clock=clock)
    pdu_type, _, length = struct.unpack(">BBL", bytes(header))
    if pdu_type != A_ASSOCIATE_RQ:
        raise PreAssociationError(f"first PDU is of type 0x{pdu_type:02X}, not A-ASSOCIATE-RQ")
    if length > max_length:
        raise PreAssociationError(f"A-ASSOCIATE-RQ announces {length} bytes; at most "
                                  f"{max_length} accepted")
    return header + read_exact(sock, length, deadline=deadline, clock=clock)
