"""The tests' fixtures: in-process servers on free ports, and the one way
to make chat users for them. What the tests share besides fixtures (the
user class, markers, waiting) is in ``helpers.py``."""

from __future__ import annotations

import time
from typing import Callable, Iterator, List, Optional, Union

import pytest

from helpers import ADMIN_PASSWORD, Address, LineClient
from server import ChatServer, ServerConfig


@pytest.fixture
def make_server() -> Iterator[Callable[..., ChatServer]]:
    """Start servers with ServerConfig fields as keywords; stop them after.
    Flood control, history, seats kept for dropped users, the
    per-address limits (connections, connects a minute, kick bans) and
    the web front-end are off unless a test asks for them, so that each
    test sees only what it is about (``web_port=0``: the web page on a
    free port)."""
    servers: List[ChatServer] = []

    def make(**fields) -> ChatServer:
        fields.setdefault("port", 0)
        fields.setdefault("admin_password", ADMIN_PASSWORD)
        fields.setdefault("rate_limit", 0)
        fields.setdefault("history", 0)
        fields.setdefault("resume_grace", 0)
        fields.setdefault("web_port", None)
        # Every test connects from 127.0.0.1: per-address limits are off
        # unless a test is about them.
        fields.setdefault("max_per_address", 0)
        fields.setdefault("connects_per_minute", 0)
        fields.setdefault("kick_ban_minutes", 0)
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
def clients() -> Iterator[Callable[..., LineClient]]:
    """``clients(server, "alice")``: a registered user of that server (or
    of an address); without a nick, a connection that has not registered.
    Keywords go to :class:`helpers.LineClient` (``tls=True``,
    ``rcvbuf=4096``, ``bind="127.0.0.2"``). After the test, TLS users
    leave with ``-exit`` and the others are closed."""
    made: List[LineClient] = []

    def make(target: Union[ChatServer, Address], nick: Optional[str] = None,
             **options) -> LineClient:
        address = target.address if isinstance(target, ChatServer) \
            else target
        client = LineClient(address, **options)
        made.append(client)
        if nick:
            client.register(nick)
        return client

    yield make
    for client in made:
        if client.tls is not None:
            client.leave()
        else:
            client.close()


@pytest.fixture
def away_from_utc(monkeypatch) -> Iterator[None]:
    """The process's local time is 5:30 ahead of UTC for the test (a
    POSIX TZ string: no time zone database needed), so a local time
    where UTC is due (or the reverse) shows."""
    if not hasattr(time, "tzset"):
        pytest.skip("time.tzset is POSIX only")
    monkeypatch.setenv("TZ", "XST-05:30")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()
