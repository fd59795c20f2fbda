"""The partition relay really cuts a live TCP link and lets it back."""

from __future__ import annotations

import socket
import socketserver
import threading
import time

import pytest

from sim.netproxy import TcpRelay


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(1024):
            self.request.sendall(data)


@pytest.fixture
def echo_server():  # noqa: ANN201
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def _roundtrip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(payload)
        return s.recv(1024)


def test_cut_and_restore(echo_server: int) -> None:
    relay = TcpRelay("127.0.0.1", echo_server)
    try:
        assert _roundtrip(relay.port, b"hello") == b"hello"
        live = socket.create_connection(("127.0.0.1", relay.port), timeout=2)
        live.sendall(b"a")
        assert live.recv(10) == b"a"
        relay.cut()
        time.sleep(0.2)
        live.sendall(b"b")
        assert live.recv(10) == b""  # the relayed connection was closed
        try:  # new connections are closed at once (or reset): nothing gets through
            got = _roundtrip(relay.port, b"x")
        except OSError:
            got = b""
        assert got == b""
        relay.restore()
        time.sleep(0.1)
        assert _roundtrip(relay.port, b"back") == b"back"
    finally:
        relay.close()
