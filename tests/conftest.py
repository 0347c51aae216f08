"""Shared test fixtures: an in-process server on a free port, and a small
line-oriented client over a real socket, with deadlines instead of sleeps."""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Callable, Iterator, List, Optional, Union

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import protocol  # noqa: E402
from server import ChatServer, ServerConfig  # noqa: E402

ADMIN_PASSWORD = "test-secret"
#: Seconds any single wait in a test may take before it fails.
DEADLINE = 10.0

Match = Union[str, Callable[[str], bool]]


class LineClient:
    """A test's chat user: a real TCP socket that reads whole lines."""

    def __init__(self, address, timeout: float = DEADLINE) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.timeout = timeout
        self._buffer = b""
        self.nick = ""
        self.seen: List[str] = []

    def send(self, text: str) -> None:
        self.sock.sendall(protocol.encode_line(text))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_line(self, timeout: Optional[float] = None) -> str:
        """The next line (without newline); raises on timeout or EOF."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no line; seen so far: {self.seen[-5:]}")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise TimeoutError(
                    f"no line; seen so far: {self.seen[-5:]}") from None
            if not data:
                raise EOFError(f"connection closed; seen: {self.seen[-5:]}")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        text = line.decode("utf-8")
        self.seen.append(text)
        return text

    def expect(self, match: Match, timeout: Optional[float] = None) -> str:
        """Read lines until one matches (equal string, or predicate)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            line = self.read_line(max(0.01, deadline - time.monotonic()))
            if (match(line) if callable(match) else line == match):
                return line

    def next_is(self, expected: str) -> None:
        """The very next line is ``expected``."""
        line = self.read_line()
        assert line == expected

    def register(self, nick: str) -> "LineClient":
        self.expect(protocol.format_nick_prompt())
        self.send(nick)
        self.expect(protocol.format_welcome(nick))
        self.expect(lambda line: line.startswith("* Online ("))
        self.nick = nick
        return self

    def wait_closed(self, timeout: Optional[float] = None) -> List[str]:
        """Read until the server closes the connection; the lines read."""
        lines = []
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try:
                lines.append(self.read_line(
                    max(0.01, deadline - time.monotonic())))
            except (EOFError, ConnectionResetError):
                return lines

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def wait_until(condition: Callable[[], bool], timeout: float = DEADLINE,
               what: str = "condition") -> None:
    """Poll ``condition`` until true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@pytest.fixture
def make_server() -> Iterator[Callable[..., ChatServer]]:
    """Start servers with ServerConfig fields as keywords; stop them after."""
    servers: List[ChatServer] = []

    def make(**fields) -> ChatServer:
        fields.setdefault("port", 0)
        fields.setdefault("admin_password", ADMIN_PASSWORD)
        fields.setdefault("rate_limit", 0)
        server = ChatServer(ServerConfig(**fields))
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def server(make_server) -> ChatServer:
    return make_server()


@pytest.fixture
def connect(server) -> Iterator[Callable[..., LineClient]]:
    """``connect("alice")``: a registered user; ``connect()``: unregistered."""
    clients: List[LineClient] = []

    def make(nick: Optional[str] = None, target=None) -> LineClient:
        client = LineClient((target or server).address)
        clients.append(client)
        if nick:
            client.register(nick)
        return client

    yield make
    for client in clients:
        client.close()
