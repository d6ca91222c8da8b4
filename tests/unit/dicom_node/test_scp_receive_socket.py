"""The SCP's receive loop (:class:`dicom_node.scp._FastReceiveSocket`) on a real socket pair."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from dicom_node import scp


def _reader(sock: socket.socket) -> scp._FastReceiveSocket:
    reader = object.__new__(scp._FastReceiveSocket)  # only .socket is used by recv
    reader.socket = sock
    return reader


def _send_later(sock: socket.socket, pieces: list[bytes], close: bool) -> threading.Thread:
    def run() -> None:
        for piece in pieces:
            sock.sendall(piece)
        if close:
            sock.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=run)
    t.start()
    return t


@pytest.fixture(params=[scp.RECV_BUFFER_MAX, 1000], ids=["one-buffer", "chunked"])
def pair(request, monkeypatch):
    """A connected socket pair, with the receive buffer limit at its default or small."""
    monkeypatch.setattr(scp, "RECV_BUFFER_MAX", request.param)
    a, b = socket.socketpair()
    with a, b:
        yield a, b


def test_recv_returns_exactly_the_requested_bytes_across_sends(pair):
    a, b = pair
    data = os.urandom(300_000)
    t = _send_later(b, [data[:7], data[7:150_000], data[150_000:]], close=False)
    reader = _reader(a)
    first = reader.recv(6)
    rest = reader.recv(len(data) - 6)
    t.join()
    assert bytes(first) == data[:6]
    assert bytes(rest) == data[6:]
    assert isinstance(rest, bytearray)


def test_recv_returns_what_arrived_when_the_peer_closes(pair):
    a, b = pair
    data = os.urandom(5_500)
    t = _send_later(b, [data], close=True)
    got = _reader(a).recv(10_000)
    t.join()
    assert bytes(got) == data
    assert bytes(_reader(a).recv(10)) == b""


def test_the_scp_server_creates_associations_with_the_fast_socket(monkeypatch):
    captured: dict = {}
    monkeypatch.setattr(scp.ThreadedAssociationServer, "__init__",
                        lambda self, *args, **kwargs: captured.update(kwargs))
    scp._NodeServer(None, ("127.0.0.1", 0), "X", [], None)
    assert captured["request_handler"] is scp._NodeRequestHandler
    assert issubclass(scp._FastReceiveSocket, scp.AssociationSocket)
