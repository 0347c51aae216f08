"""The web front-end (web.py) over real sockets: the page over HTTP, and
browser users through an independent WebSocket client (``websockets``
from PyPI) in the same chat as TCP users; a few raw sockets for what no
well-behaved client sends."""

from __future__ import annotations

import http.client
import random
import logging
import socket
import ssl
import struct
import threading
from typing import Dict, List, Optional, Tuple

import pytest

try:  # a test dependency (see README): the tests that need it skip without
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect
except ImportError:
    connect = None

    class ConnectionClosed(Exception):  # type: ignore[no-redef]
        """Stands in, so the module loads; never raised."""

    class InvalidStatus(Exception):  # type: ignore[no-redef]
        """Stands in, so the module loads; never raised."""

import config
import protocol
import wscodec as ws
from helpers import (CERT, DEADLINE, KEY, ChatUser, LineClient, marker,
                     wait_until)
from server import ChatServer, ServerConfig


@pytest.fixture
def web_server(make_server) -> ChatServer:
    return make_server(web_port=0)


def web_address(server: ChatServer) -> Tuple[str, int]:
    assert server.web is not None
    return server.web.server_address[0], server.web.server_address[1]


def chat_url(server: ChatServer, scheme: str = "ws") -> str:
    host, port = web_address(server)
    return f"{scheme}://{host}:{port}/chat"


class WebUser(ChatUser):
    """A browser user, as far as the server can tell: a ``websockets``
    client sending the Origin of the server's own page."""

    def __init__(self, server: ChatServer, origin: Optional[str] = "same",
                 **options) -> None:
        if connect is None:
            pytest.skip("needs websockets from PyPI (see the README's test"
                        " line)")
        host, port = web_address(server)
        scheme = "https" if server.tls_context else "http"
        if origin == "same":
            origin = f"{scheme}://{host}:{port}"
        self.conn = connect(chat_url(server, "wss" if scheme == "https"
                                     else "ws"),
                            origin=origin, open_timeout=DEADLINE,
                            close_timeout=2, max_queue=None, **options)
        # As the context manager would; the fixture or the test closes it.
        self.conn.__enter__()
        self.nick = ""
        self.seen: List[str] = []

    def send(self, text: str) -> None:
        self.conn.send(text)

    def read_line(self, timeout: Optional[float] = None) -> str:
        line = self.conn.recv(timeout=timeout or DEADLINE)
        assert isinstance(line, str)
        self.seen.append(line)
        return line

    def close_code(self) -> int:
        """Read until the server closes; the code it closed with."""
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(1000):
                self.read_line()
        assert closed.value.rcvd is not None, "closed without a close frame"
        return closed.value.rcvd.code


@pytest.fixture
def web_users():
    made: List[WebUser] = []

    def make(server: ChatServer, nick: Optional[str] = None,
             **options) -> WebUser:
        user = WebUser(server, **options)
        made.append(user)
        return user.register(nick) if nick else user

    yield make
    for user in made:
        user.conn.close()


def http_get(server: ChatServer, path: str, method: str = "GET",
             headers: Optional[Dict[str, str]] = None
             ) -> http.client.HTTPResponse:
    host, port = web_address(server)
    conn = http.client.HTTPConnection(host, port, timeout=DEADLINE)
    conn.request(method, path, headers=headers or {})
    response = conn.getresponse()
    response.body = response.read()  # type: ignore[attr-defined]
    conn.close()
    return response


class RawWeb:
    """A WebSocket client written by hand, for what ``websockets`` will
    not send: unmasked or bad frames, no pong, an abrupt end."""

    def __init__(self, server: ChatServer, request: bytes,
                 tls: Optional[ssl.SSLContext] = None) -> None:
        self.sock = socket.create_connection(web_address(server),
                                             timeout=DEADLINE)
        if tls is not None:
            # A missing close_notify is an error (SSLEOFError), not an end.
            self.sock = tls.wrap_socket(
                self.sock, server_hostname=web_address(server)[0],
                suppress_ragged_eofs=False)
        self.sock.sendall(request)
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            data = self.sock.recv(4096)
            assert data, "closed during the handshake"
            self.buffer += data
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        self.status = int(head.split()[1])
        self.head = head.decode("latin-1")

    @classmethod
    def upgraded(cls, server: ChatServer) -> "RawWeb":
        raw = cls(server, upgrade_request(server))
        assert raw.status == 101, raw.head
        return raw

    def rest(self) -> bytes:
        """Everything until the server closes."""
        while True:
            data = self.sock.recv(4096)
            if not data:
                return self.buffer
            self.buffer += data

    def _need(self, count: int) -> bytes:
        while len(self.buffer) < count:
            data = self.sock.recv(4096)
            if not data:
                raise EOFError("closed")
            self.buffer += data
        taken, self.buffer = self.buffer[:count], self.buffer[count:]
        return taken

    def read_frame(self) -> Tuple[int, bytes]:
        """The next frame from the server: (opcode, payload)."""
        first, second = self._need(2)
        assert second & 0x80 == 0, "a server frame must not be masked"
        assert first & 0x70 == 0
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._need(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._need(8))[0]
        return first & 0x0F, self._need(length)

    def read_until(self, opcode: int) -> bytes:
        for _ in range(1000):
            kind, payload = self.read_frame()
            if kind == opcode:
                return payload
        raise AssertionError("not seen")

    def send(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        self.sock.sendall(ws.client_frame(opcode, payload, fin))


def upgrade_request(server: ChatServer, **headers: str) -> bytes:
    host, port = web_address(server)
    scheme = "https" if server.tls_context else "http"
    fields = {"Host": f"{host}:{port}", "Upgrade": "websocket",
              "Connection": "keep-alive, Upgrade",  # as Firefox says it
              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
              "Sec-WebSocket-Version": "13",
              "Origin": f"{scheme}://{host}:{port}"}
    for name, value in headers.items():
        name = name.replace("_", "-")
        if value is None:
            fields.pop(name, None)
        else:
            fields[name] = value
    lines = ["GET /chat HTTP/1.1"] + [f"{k}: {v}" for k, v in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# --- The page over HTTP ------------------------------------------------------


@pytest.mark.parametrize("path, kind", [
    ("/", "text/html; charset=utf-8"),
    ("/chat.js", "text/javascript; charset=utf-8"),
    ("/chat.css", "text/css; charset=utf-8"),
    ("/commands.json", "application/json; charset=utf-8"),
])
def test_the_page_and_its_files_are_served_safely(web_server, path, kind):
    response = http_get(web_server, path)
    assert response.status == 200
    assert response.getheader("Content-Type") == kind
    assert response.getheader("X-Content-Type-Options") == "nosniff"
    policy = response.getheader("Content-Security-Policy")
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert int(response.getheader("Content-Length")) == \
        len(response.body) > 0


def test_commands_json_is_the_command_table(web_server):
    import json
    flags = [row["flag"] for row in
             json.loads(http_get(web_server, "/commands.json").body)[
                 "commands"]]
    assert flags == [spec.flag for spec in protocol.COMMANDS if spec.flag]


def test_commands_json_says_the_longest_line(make_server):
    import json
    server = make_server(web_port=0, max_line=100)
    table = json.loads(http_get(server, "/commands.json").body)
    assert table["max_line"] == 100


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/etc/passwd", 404),
    ("GET", "/../server.py", 404),
    ("POST", "/", 405),
    ("PUT", "/chat", 405),
    ("GET", "/chat", 426),     # no upgrade: not a page
])
def test_anything_else_is_an_http_error(web_server, method, path, status):
    response = http_get(web_server, path, method)
    assert response.status == status
    assert response.getheader("X-Content-Type-Options") == "nosniff"


def test_head_has_no_body(web_server):
    response = http_get(web_server, "/", "HEAD")
    assert response.status == 200 and response.body == b""


def test_an_oversized_request_head_is_refused(web_server):
    request = (b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * config.WEB_MAX_HEAD_BYTES
               + b"\r\n\r\n")
    assert RawWeb(web_server, request).status == 431


def test_a_request_that_never_ends_is_cut_at_its_deadline(make_server,
                                                          monkeypatch):
    monkeypatch.setattr(config, "WEB_REQUEST_SECONDS", 0.3)
    server = make_server(web_port=0)
    sock = socket.create_connection(web_address(server), timeout=DEADLINE)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and nothing more
    assert sock.recv(100) == b""  # closed, within the test's deadline
    sock.close()
    wait_until(lambda: server.connection_count == 0)


@pytest.mark.parametrize("headers, status", [
    ({"Sec-WebSocket-Version": "8"}, 426),
    ({"Sec-WebSocket-Key": "short"}, 400),
    ({"Upgrade": None}, 426),
    ({"Connection": "keep-alive"}, 426),
    ({"Origin": "http://evil.example"}, 403),
])
def test_a_bad_handshake_gets_a_plain_http_error(web_server, headers,
                                                 status):
    raw = RawWeb(web_server, upgrade_request(web_server, **headers))
    assert raw.status == status
    raw.sock.close()


def test_the_upgrade_answer_and_no_compression(web_server):
    raw = RawWeb(web_server, upgrade_request(
        web_server, Sec_WebSocket_Extensions="permessage-deflate"))
    assert raw.status == 101
    assert "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in raw.head
    assert "Extensions" not in raw.head
    assert raw.read_frame() == (ws.TEXT,
                                protocol.format_nick_prompt().encode())
    raw.sock.close()


# --- Browser users and terminal users in one chat ----------------------------


def test_web_and_tcp_users_chat_both_ways(web_server, web_users, clients):
    bob = clients(web_server, "bob")
    alice = web_users(web_server, "alice")
    bob.expect(protocol.format_joined("alice"))
    alice.send("hello from the browser")
    bob.expect(protocol.format_message("alice", "hello from the browser"))
    bob.send("hello from the terminal")
    alice.expect(protocol.format_message("bob", "hello from the terminal"))
    alice.send("-to bob psst")
    bob.expect(protocol.format_private("alice", "psst"))
    bob.send("-to alice back")
    alice.expect(protocol.format_private("bob", "back"))
    alice.send("-users")
    alice.expect(lambda line: line.startswith("* Online (2): alice (you)"))
    marker(bob, LineClient(web_server.address).register("carol"))


def test_a_line_with_a_newline_inside_is_refused_not_split(web_server,
                                                           web_users,
                                                           clients):
    bob = clients(web_server, "bob")
    alice = web_users(web_server, "alice")
    bob.expect(protocol.format_joined("alice"))
    alice.send("one\n-kick bob")
    alice.expect(lambda line: line.startswith("! control characters"))
    alice.send("-all fine")
    bob.next_is(protocol.format_message("alice", "fine"))


def test_a_fragmented_message_is_one_line(web_server, web_users, clients):
    bob = clients(web_server, "bob")
    alice = web_users(web_server, "alice")
    bob.expect(protocol.format_joined("alice"))
    alice.conn.send(["frag", "men", "ted"])
    bob.expect(protocol.format_message("alice", "fragmented"))


def test_another_origin_is_refused_unless_allowed(make_server):
    server = make_server(web_port=0)
    with pytest.raises(InvalidStatus) as refused:
        WebUser(server, origin="http://evil.example")
    assert refused.value.response.status_code == 403
    allowed = make_server(web_port=0, web_origin="http://school.example")
    WebUser(allowed, origin="http://school.example").register("ok").conn \
        .close()


def test_no_origin_is_a_program_not_a_browser(web_server):
    user = WebUser(web_server, origin=None).register("script")
    user.conn.close()


def test_a_binary_message_closes_with_its_code(make_server, web_users,
                                               clients):
    server = make_server(web_port=0, max_line=100)
    bob = clients(server, "bob")
    alice = web_users(server, "alice")
    bob.expect(protocol.format_joined("alice"))
    alice.send(b"\x00\x01")
    assert alice.close_code() == ws.UNSUPPORTED_DATA
    bob.expect(protocol.format_left("alice"))  # cut: no seat kept


def test_an_overlong_message_is_refused_and_the_user_stays(make_server,
                                                          web_users,
                                                          clients):
    """As on TCP: a line over --max-line gets the same error line, and
    the user stays, whether it came in one frame or in several."""
    server = make_server(web_port=0, max_line=100)
    bob = clients(server, "bob")
    alice = web_users(server, "alice")
    bob.expect(protocol.format_joined("alice"))
    alice.send("x" * 101)
    alice.expect(protocol.format_line_too_long(100))
    alice.conn.send(["y" * 60, "y" * 60])  # fragmented, over in all
    alice.expect(protocol.format_line_too_long(100))
    alice.send("x" * 100)  # at the limit: taken
    bob.next_is(protocol.format_message("alice", "x" * 100))
    # Over TCP, the same line.
    bob.send("x" * 101)
    bob.next_is(protocol.format_line_too_long(100))


def test_a_message_past_the_discard_limit_closes_with_1009(web_server):
    """An endless message is cut, as an endless line is on TCP: on the
    header that says it, before any of it is read."""
    raw = RawWeb.upgraded(web_server)
    raw.sock.sendall(bytes([0x81, 0x80 | 127])
                     + struct.pack("!Q", protocol.MAX_DISCARD_BYTES + 1)
                     + b"mask")
    assert struct.unpack("!H", raw.read_until(ws.CLOSE)[:2])[0] == \
        ws.TOO_BIG


def test_invalid_utf8_and_unmasked_frames_close(web_server):
    raw = RawWeb.upgraded(web_server)
    raw.send(ws.TEXT, b"\xc3")
    assert struct.unpack("!H", raw.read_until(ws.CLOSE)[:2])[0] == \
        ws.INVALID_DATA
    raw = RawWeb.upgraded(web_server)
    raw.sock.sendall(ws.encode_frame(ws.TEXT, b"bob"))  # no mask
    assert struct.unpack("!H", raw.read_until(ws.CLOSE)[:2])[0] == \
        ws.PROTOCOL_ERROR


def test_ping_is_answered_and_close_is_echoed(web_server):
    raw = RawWeb.upgraded(web_server)
    raw.send(ws.PING, b"are you there")
    assert raw.read_until(ws.PONG) == b"are you there"
    raw.send(ws.CLOSE, struct.pack("!H", ws.GOING_AWAY))
    assert raw.read_until(ws.CLOSE) == struct.pack("!H", ws.GOING_AWAY)
    assert raw.sock.recv(10) == b""


def test_an_abrupt_close_is_a_drop_and_the_seat_comes_back(
        make_server, web_users, clients):
    server = make_server(web_port=0, resume_grace=30)
    bob = clients(server, "bob")
    alice = WebUser(server)
    alice.expect(protocol.format_nick_prompt())
    alice.send("alice")
    token_line = alice.expect(lambda line: protocol.resume_token(line))
    bob.expect(protocol.format_joined("alice"))
    # No close frame: the TCP connection just goes (a tab killed, Wi-Fi).
    alice.conn.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                 struct.pack("ii", 1, 0))
    alice.conn.socket.close()
    bob.expect(protocol.format_lost_connection("alice"))
    bob.send("-to alice while you were away")
    again = web_users(server)
    again.expect(protocol.format_nick_prompt())
    again.send(f"-resume {protocol.resume_token(token_line)}")
    again.expect(protocol.format_welcome_back("alice"))
    again.expect(protocol.format_private("bob", "while you were away"))
    bob.expect(protocol.format_back("alice"))


def test_a_silent_browser_is_pinged_and_dropped(make_server, monkeypatch,
                                                clients, web_users):
    monkeypatch.setattr(config, "WEB_PING_INTERVAL", 0.2)
    monkeypatch.setattr(config, "WEB_PONG_SECONDS", 0.3)
    server = make_server(web_port=0, resume_grace=30)
    bob = clients(server, "bob")
    answering = web_users(server, "carol")  # websockets answers pings
    raw = RawWeb.upgraded(server)
    raw.send(ws.TEXT, b"alice")
    bob.expect(protocol.format_joined("alice"))
    raw.read_until(ws.PING)  # and never answer it
    bob.expect(protocol.format_lost_connection("alice"))
    with pytest.raises((EOFError, ConnectionResetError)):
        for _ in range(1000):
            raw.read_frame()
    # The one who answers pings is still there.
    answering.send("still here")
    bob.expect(protocol.format_message("carol", "still here"))


def test_flood_control_and_kick_work_for_browsers(make_server, web_users,
                                                  clients):
    server = make_server(web_port=0, rate_limit=5, rate_burst=2)
    admin = clients(server, "teacher")
    admin.send("-admin " + "test-secret")
    admin.expect(protocol.format_admin_granted())
    alice = web_users(server, "alice")
    admin.expect(protocol.format_joined("alice"))
    admin.send("-kick alice bye")
    alice.expect(protocol.format_you_were_kicked("teacher", "bye"))
    assert alice.close_code() == ws.NORMAL


def test_shutdown_tells_browsers_and_closes(web_server, web_users):
    alice = web_users(web_server, "alice")
    web_server.stop("test")
    alice.expect(protocol.format_shutdown("test"))
    assert alice.close_code() == ws.NORMAL


def test_wss_with_the_same_certificate(make_server, clients):
    server = make_server(web_port=0, tls_cert=CERT, tls_key=KEY)
    host, port = web_address(server)
    response_context = ssl.create_default_context(cafile=CERT)
    conn = http.client.HTTPSConnection(host, port, timeout=DEADLINE,
                                       context=response_context)
    conn.request("GET", "/")
    assert conn.getresponse().status == 200
    conn.close()
    bob = clients(server, "bob", tls=True)
    alice = WebUser(server, ssl=ssl.create_default_context(cafile=CERT))
    alice.register("alice")
    alice.send("over TLS")
    bob.expect(protocol.format_message("alice", "over TLS"))
    alice.conn.close()


def test_wss_ends_tls_with_a_close_notify(make_server, clients):
    """The server ends TLS politely on a chat connection, as on the TCP
    port: after its close frame, a close_notify, then the end."""
    server = make_server(web_port=0, tls_cert=CERT, tls_key=KEY)
    raw = RawWeb(server, upgrade_request(server),
                 tls=ssl.create_default_context(cafile=CERT))
    assert raw.status == 101, raw.head
    raw.send(ws.TEXT, b"alice")
    raw.read_until(ws.TEXT)
    raw.send(ws.CLOSE, struct.pack("!H", ws.NORMAL))
    raw.read_until(ws.CLOSE)
    # b"" only after a close_notify; without one, ssl.SSLEOFError.
    assert raw.rest() == b""
    raw.sock.close()


def refused_answer(server: ChatServer, request: bytes,
                   source: str = "127.0.0.1") -> bytes:
    """What the web port answers a connection it refuses: all of it, or
    b"" if the server's close reset the connection first (it closes
    without reading the request)."""
    answer = b""
    with socket.create_connection(web_address(server), timeout=DEADLINE,
                                  source_address=(source, 0)) as sock:
        try:
            sock.sendall(request)
            while True:
                data = sock.recv(4096)
                if not data:
                    break
                answer += data
        except ConnectionError:  # reset, or a broken pipe
            pass
    return answer


def test_web_connections_count_towards_max_clients(make_server, clients):
    server = make_server(web_port=0, max_clients=1)
    user = WebUser(server).register("alice")
    refused = clients(server)
    assert refused.read_line() == protocol.format_server_full(1)
    answer = refused_answer(server, upgrade_request(server))
    assert answer == b"" or answer.startswith(b"HTTP/1.1 503 "), answer
    user.conn.close()


def test_the_page_does_not_use_up_the_connects_a_minute(make_server,
                                                        web_users, clients):
    """--connects-per-minute counts chat connections: reloading the page
    (five files each time) does not lock a student out, while the chat
    connections of one address, web and TCP, share the budget."""
    server = make_server(web_port=0, connects_per_minute=3)
    for _ in range(4):
        for path in ("/", "/chat.css", "/chat.js", "/favicon.svg",
                     "/commands.json"):
            assert http_get(server, path).status == 200
    web_users(server, "alice")
    web_users(server, "bob")
    clients(server, "carol")
    raw = RawWeb(server, upgrade_request(server))
    assert raw.status == 429, raw.head
    assert b"connection refused: too many connections from your address" \
        b" (3 a minute)" in raw.rest()
    raw.sock.close()
    assert clients(server).read_line().startswith(
        "! connection refused: too many connections from your address")
    assert http_get(server, "/").status == 200
    wait_until(lambda: server.connection_count == 3)


def test_refused_while_stopping_says_the_notice_in_full(make_server,
                                                        monkeypatch):
    server = make_server(web_port=0)
    monkeypatch.setattr(type(server), "stopping", property(lambda _: True))
    answer = refused_answer(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 503 "), answer
    body = answer.partition(b"\r\n\r\n")[2].decode()
    assert body == protocol.format_shutdown()[len(protocol.NOTICE):] + "\n"


def test_per_address_limits_count_web_and_tcp_together(make_server,
                                                        clients):
    """One address's connections are counted whichever port they come
    to: with --max-per-address 1, a terminal user's address gets a 503
    saying why from the web port, while another address is served."""
    server = make_server(web_port=0, max_per_address=1)
    clients(server, "alice", bind="127.0.0.2")
    host, port = web_address(server)
    with socket.create_connection((host, port), timeout=DEADLINE,
                                  source_address=("127.0.0.2", 0)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while True:
            data = sock.recv(4096)
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert b"too many connections from your address (1)" in answer
    assert http_get(server, "/").status == 200  # another address


# --- Options -----------------------------------------------------------------


def test_web_port_options():
    assert config.parse_args(["--web-port", "off"]).config.web_port is None
    assert config.parse_args([]).config.web_port == config.DEFAULT_WEB_PORT
    with pytest.raises(ValueError):
        ServerConfig(port=4000, web_port=4000)
    with pytest.raises(ValueError):
        ServerConfig(web_port=70000)


def test_a_taken_web_port_is_a_warning_and_the_chat_runs(
        make_server, clients, caplog):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    with caplog.at_level(logging.WARNING, logger="chat"):
        server = make_server(web_port=taken.getsockname()[1])
    taken.close()
    assert server.web is None
    assert any("web page: cannot serve" in record.getMessage()
               for record in caplog.records)
    clients(server, "alice")


# --- Random input ------------------------------------------------------------


def random_frames(rng: random.Random) -> bytes:
    """Frames a broken or hostile client might send: mostly valid ones
    (lines, fragments, pings, pongs), now and then an invalid frame or
    plain garbage, after which the server must close."""
    out = []
    for _ in range(rng.randrange(1, 12)):
        kind = rng.random()
        payload = bytes(rng.randrange(256)
                        for _ in range(rng.choice([0, 3, 50, 200])))
        if kind < 0.45:
            text = rng.choice(["hi", "-users", "-to x y", "", "-exit",
                               "ж" * 30, "-history 5"]).encode()
            out.append(ws.client_frame(ws.TEXT, text, rng.random() < 0.9))
        elif kind < 0.8:
            out.append(ws.client_frame(rng.choice([ws.PING, ws.PONG]),
                                       payload[:125]))
        elif kind < 0.9:
            opcode = rng.choice([0, 1, 2, 3, 8, 9, 10, 11, 15])
            out.append(ws.client_frame(opcode, payload[:130],
                                       rng.random() < 0.7))
        else:
            out.append(payload)
    return b"".join(out)


def test_random_requests_and_frames_leave_the_server_standing(
        make_server, web_users, clients, caplog, monkeypatch):
    thread_errors: List[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: thread_errors
                        .append(f"{args.exc_type.__name__}: {args.exc_value}"))
    server = make_server(web_port=0, register_timeout=2)
    rng = random.Random(1655)
    answered = 0  # bytes the server sent back, to see that it ran
    for attempt in range(60):
        if attempt % 2:
            raw = RawWeb.upgraded(server)
            if rng.random() < 0.5:
                raw.send(ws.TEXT, b"fz%d" % attempt)
            data = random_frames(rng)
        else:
            raw = socket.create_connection(web_address(server),
                                           timeout=DEADLINE)
            data = rng.choice([b"GET / HTTP/1.1\r\n", b"", b"\r\n\r\n",
                               b"GET /chat HTTP/1.1\r\nHost: x\r\n"]) \
                + bytes(rng.randrange(256) for _ in range(300)) \
                + rng.choice([b"\r\n\r\n", b""])
        sock = raw.sock if isinstance(raw, RawWeb) else raw
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while True:  # the server answers, then closes
                answer = sock.recv(65536)
                if not answer:
                    break
                answered += len(answer)
        except OSError:
            pass  # reset by the server: fine
        finally:
            sock.close()
    assert answered > 60 * 100, answered
    wait_until(lambda: len(server.room) == 0 and server.connection_count == 0,
               what="no ghost nickname or connection")
    bob = clients(server, "bob")
    alice = web_users(server, "alice")
    bob.expect(protocol.format_joined("alice"))
    alice.send("still standing")
    bob.expect(protocol.format_message("alice", "still standing"))
    errors = [f"{r.levelname} {r.getMessage()}" for r in caplog.records
              if r.levelno >= 40 or r.exc_info]
    assert not errors, errors[:5]
    assert not thread_errors, thread_errors[:5]


def test_http_on_the_https_port_is_told_in_http(make_server):
    server = make_server(web_port=0, tls_cert=CERT, tls_key=KEY)
    response = http_get(server, "/")
    assert response.status == 400
    assert b"https://" in response.body
