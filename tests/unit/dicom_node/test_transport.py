"""Adaptations of pynetdicom internals (dicom_node.transport): the fast receive loop on a real
socket pair, the server and request handler that use it, and the chunked-receive flag."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from dicom_node import transport


def _reader(sock: socket.socket) -> transport.FastReceiveSocket:
    reader = object.__new__(transport.FastReceiveSocket)  # only .socket is used by recv
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


@pytest.fixture(params=[transport.RECV_BUFFER_MAX, 1000], ids=["one-buffer", "chunked"])
def pair(request, monkeypatch):
    """A connected socket pair, with the receive buffer limit at its default or small."""
    monkeypatch.setattr(transport, "RECV_BUFFER_MAX", request.param)
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
    monkeypatch.setattr(transport.ThreadedAssociationServer, "__init__",
                        lambda self, *args, **kwargs: captured.update(kwargs))
    transport.NodeServer(None, ("127.0.0.1", 0), "X", [], None)
    assert captured["request_handler"] is transport.NodeRequestHandler
    assert issubclass(transport.FastReceiveSocket, transport.AssociationSocket)


def test_chunked_receive_flag_is_restored_after_stop(make_scp) -> None:
    from pynetdicom import _config

    before = _config.STORE_RECV_CHUNKED_DATASET
    first = make_scp()
    second = make_scp()
    assert _config.STORE_RECV_CHUNKED_DATASET is True
    first.stop()
    assert _config.STORE_RECV_CHUNKED_DATASET is True  # the second SCP still needs it
    second.stop()
    assert _config.STORE_RECV_CHUNKED_DATASET == before


def test_chunked_receive_flag_is_reference_counted() -> None:
    from pynetdicom import _config

    before = _config.STORE_RECV_CHUNKED_DATASET
    a, b = object(), object()
    transport.hold_chunked_receive(a)
    transport.hold_chunked_receive(a)  # holding twice is one hold
    transport.hold_chunked_receive(b)
    transport.release_chunked_receive(a)
    assert _config.STORE_RECV_CHUNKED_DATASET is True
    transport.release_chunked_receive(a)  # not held any more: no effect
    assert _config.STORE_RECV_CHUNKED_DATASET is True
    transport.release_chunked_receive(b)
    assert _config.STORE_RECV_CHUNKED_DATASET == before


def test_received_file_in_chunked_mode_and_without_it(tmp_path) -> None:
    class Chunked:
        dataset_path = str(tmp_path / "rx-1.dcm")

    class InMemory:
        def encoded_dataset(self) -> bytes:
            return b"DICM data set"

    assert transport.received_file(Chunked(), tmp_path) == (tmp_path / "rx-1.dcm", False)
    path, owned = transport.received_file(InMemory(), tmp_path)
    assert owned and path.parent == tmp_path and path.read_bytes() == b"DICM data set"


def test_stale_chunk_files_are_removed(tmp_path) -> None:
    chunk = transport.SpoolChunkFile(tmp_path)
    chunk.write(b"partial")
    chunk.close()
    keep = tmp_path / "other.dcm"
    keep.write_bytes(b"x")
    transport.remove_stale_chunk_files(tmp_path)
    assert list(tmp_path.iterdir()) == [keep]
