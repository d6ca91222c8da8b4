"""Bounded resources before authentication (issue 11, finding 3), against a real SCP on
loopback: silent and trickling connections, announced giant PDUs, association caps."""

from __future__ import annotations

import shutil
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dicom_node.admission import (ConnectionGuard, ConnectionLimits, PreAssociationError,
                                  read_associate_rq)
from dicom_node.audit import AuditLog
from dicom_node.scu import echo
from tests.helpers.netdata import write_multiframe
from tests.helpers.servers import storescu

pytestmark = pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk not installed")


def _connect(port: int, payload: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if payload:
        sock.sendall(payload)
    return sock


def _closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_silent_three_byte_connections_lock_no_sender_out(make_scp, tmp_path: Path) -> None:
    scp = make_scp()
    hostile = [_connect(scp.port, b"\x01\x00\x00") for _ in range(24)]  # old limit: 10
    try:
        sent = storescu(scp.port, [write_multiframe(tmp_path / "a.dcm", frames=2)], timeout=30)
        assert sent.returncode == 0, sent.stderr
        assert "Local Limit Exceeded" not in sent.stderr + sent.stdout
    finally:
        for sock in hostile:
            sock.close()


def test_threads_stay_bounded_with_200_half_open_sockets(make_scp, tmp_path: Path) -> None:
    scp = make_scp(max_pending_per_host=8, max_pending_connections=16)
    before = threading.active_count()
    hostile = [_connect(scp.port, b"\x01") for _ in range(200)]
    try:
        time.sleep(1.0)
        assert threading.active_count() - before <= 16 + 4
        assert scp.guard.counts().get("pending", 0) <= 8
        echo("PICARD", "127.0.0.1", scp.port, calling_ae_title="ECHO")  # raises on failure
    finally:
        for sock in hostile:
            sock.close()


def test_announced_4gb_associate_request_is_refused_at_its_header(make_scp) -> None:
    scp = make_scp()
    sock = _connect(scp.port, struct.pack(">BBL", 0x01, 0, 0xFFFFFFFF))
    sent = 0
    try:
        with pytest.raises(OSError):
            for _ in range(200):  # up to 200 MB; the node closes long before
                sock.sendall(b"\0" * (1 << 20))
                sent += 1
    finally:
        sock.close()
    assert sent < 64, f"the node read {sent} MB of an announced 4 GB PDU"

    def audited() -> bool:
        return any(r["outcome"] == "dropped before association" and "4294967295" in r["detail"]
                   for r in AuditLog(scp.settings.spool_dir).records())

    deadline = time.monotonic() + 10
    while not audited() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert audited()


def test_announced_giant_pdata_after_association_aborts_it(make_scp, caplog) -> None:
    scp = make_scp(max_pdu_bytes=65536)
    ae = AE(ae_title="SCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="PICARD")
    assert assoc.is_established
    raw = assoc.dul.socket.socket
    raw.sendall(struct.pack(">BBL", 0x04, 0, 0xFFFFFFF0))  # P-DATA-TF of ~4 GB
    deadline = time.monotonic() + 10
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not assoc.is_established
    assert "announced a PDU of 4294967280 bytes" in caplog.text


def test_silent_and_trickling_connections_are_closed_at_the_artim_deadline(make_scp) -> None:
    scp = make_scp(association_timeout_seconds=1.0)
    silent = _connect(scp.port)
    trickle = _connect(scp.port, struct.pack(">BBL", 0x01, 0, 100))  # then 1 byte / 0.2 s
    started = time.monotonic()

    def drip() -> None:
        try:
            for _ in range(30):
                time.sleep(0.2)
                trickle.sendall(b"\x00")
        except OSError:
            pass

    thread = threading.Thread(target=drip)
    thread.start()
    try:
        assert _closed_by_peer(silent, timeout=5.0)
        assert _closed_by_peer(trickle, timeout=5.0)
        assert time.monotonic() - started < 5.0
    finally:
        thread.join()
        silent.close()
        trickle.close()


def test_associations_beyond_the_per_host_cap_get_local_limit_exceeded(make_scp) -> None:
    scp = make_scp(max_associations_per_host=1)
    ae = AE(ae_title="SCU")
    ae.add_requested_context(Verification)
    first = ae.associate("127.0.0.1", scp.port, ae_title="PICARD")
    assert first.is_established
    second = ae.associate("127.0.0.1", scp.port, ae_title="PICARD")
    assert second.is_rejected
    rejection = second.acceptor.primitive
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == (2, 3, 2)
    first.release()
    time.sleep(0.3)
    third = ae.associate("127.0.0.1", scp.port, ae_title="PICARD")
    assert third.is_established
    third.release()


def test_guard_evicts_the_oldest_pending_connection_per_host() -> None:
    now = [0.0]
    guard = ConnectionGuard(ConnectionLimits(max_pending=10, max_pending_per_host=2),
                            clock=lambda: now[0])
    socks = [socket.socket() for _ in range(4)]
    try:
        a = guard.admit(socks[0], ("10.0.0.1", 1))
        now[0] = 1
        guard.admit(socks[1], ("10.0.0.1", 2))
        guard.admit(socks[2], ("10.0.0.2", 3))  # other host: no effect on 10.0.0.1
        now[0] = 2
        guard.admit(socks[3], ("10.0.0.1", 4))  # third from 10.0.0.1: the oldest goes
        assert a.state == "closed" and "oldest closed" in a.evicted
        assert guard.counts() == {"pending": 3}
    finally:
        for s in socks:
            s.close()


def test_read_associate_rq_refuses_other_pdus_and_respects_the_deadline() -> None:
    a, b = socket.socketpair()
    with a, b:
        b.sendall(struct.pack(">BBL", 0x04, 0, 10))
        with pytest.raises(PreAssociationError, match="not A-ASSOCIATE-RQ"):
            read_associate_rq(a, deadline=time.monotonic() + 1)
    a, b = socket.socketpair()
    with a, b:
        b.sendall(struct.pack(">BBL", 0x01, 0, 100) + b"x" * 10)
        with pytest.raises(PreAssociationError, match="timed out after 10 of 100 bytes"):
            read_associate_rq(a, deadline=time.monotonic() + 0.3)
