"""The chat in a browser: an HTTP front-end that serves the page in
``web/`` and takes WebSocket (RFC 6455) connections to the same room.

A browser's chat connection is the same session as a terminal's
(``server.ChatHandler``: registration, flood control, the outbox limit,
history and resume), with two things swapped:

* :class:`WebDecoder` reads WebSocket frames instead of lines: each text
  message is one line for the room (one over ``--max-line`` is dropped
  and the room says so, as on TCP); it answers pings and close frames
  itself, and closes with the right code on anything the chat does not
  take (see ``wscodec.py``).
* :class:`WebOutbox` sends each line the room queues as one text frame
  (then TLS encrypts it, with ``--tls-cert``), and ends with a close frame.

:class:`WebSession` is the part of the handler that comes first: one HTTP
request, within a total deadline and a size limit, answered with a file
of the page, an error, or the WebSocket upgrade. ``server.py`` mixes it
into its handler (``WebHandler``) and runs a :class:`WebServer` beside the
TCP one (:func:`open_web`); the two share the room and the count of
connections. The pinger (:meth:`WebServer._ping_loop`) pings browsers that
have been silent for a while and drops those that do not answer.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Dict, List, NamedTuple, Optional, Set, \
    Tuple

import config
import protocol
import wscodec
from members import Address, format_address, host_of
from outbox import Outbox
from protocol import Frame
from transport import ACCEPT_POLL_SECONDS, DONTWAIT, RECV_BYTES, \
    ListeningServer, TLSLayer

if TYPE_CHECKING:
    from server import ChatServer

log = logging.getLogger("chat")

#: Where the page's files are: ``web/`` beside this module.
WEB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")
#: The path of the WebSocket endpoint.
CHAT_PATH = "/chat"
#: The page's files by path, and their content types.
FILES: Dict[str, Tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/chat.js": ("chat.js", "text/javascript; charset=utf-8"),
    "/chat.css": ("chat.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
#: Made from the command table (protocol.COMMANDS), for Tab completion.
COMMANDS_PATH = "/commands.json"
#: Every response says this: scripts and styles from this server only,
#: never inline, no other connections than back to it, no framing.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self';"
       " connect-src 'self'; img-src 'self'; base-uri 'none';"
       " form-action 'none'; frame-ancestors 'none'")
_REASONS = {101: "Switching Protocols", 200: "OK", 400: "Bad Request",
            403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            426: "Upgrade Required", 429: "Too Many Requests",
            431: "Request Header Fields Too Large",
            503: "Service Unavailable", 505: "HTTP Version Not Supported"}


# --- The WebSocket session ---------------------------------------------------


# The room encodes a public line once and puts the same bytes object to
# every recipient: framing it once too keeps a broadcast to many browsers
# from framing the same line again for each (the last one is kept).
_last_framed: Tuple[bytes, bytes] = (b"", b"")


def frame_lines(data: bytes) -> bytes:
    """Lines as the room queues them (each ending in ``\\n``) -> one text
    frame each, without the ``\\n``."""
    global _last_framed
    last = _last_framed  # one read: another thread may replace it
    if last[0] is data:
        return last[1]
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the room's lines end in \n: nothing after it
    framed = b"".join(wscodec.text_frame(line) for line in lines)
    _last_framed = (data, framed)
    return framed


class WebOutbox(Outbox):
    """An outbox whose lines leave as text frames, one a line.

    The room puts encoded lines (each ending in ``\\n``); :meth:`put`
    frames them there and then, so that control frames
    (:meth:`put_frame`: pong, ping, close) can go in the same queue, in
    order, and the limit counts what really waits. The last thing sent is
    a close frame: after the room's last line, or on :meth:`close`.
    """

    def put(self, data: bytes, last: bool = False) -> None:
        frames = frame_lines(data)
        if last:
            frames += wscodec.close_frame(wscodec.NORMAL)
        super().put(frames, last)

    def put_frame(self, frame: bytes, last: bool = False) -> None:
        """Queue a frame as it is (with ``last``, a close frame), and
        start sending it."""
        super().put(frame, last)
        self.flush()

    def close(self) -> None:
        self.put_frame(wscodec.close_frame(wscodec.NORMAL), last=True)
        super().close()


class WebDecoder:
    """Bytes from a browser -> lines for the room (``protocol.Frame``),
    like ``transport.LineDecoder``: decrypts with ``tls`` first, then
    reads WebSocket frames, answering pings and a close on ``outbox``.

    After the browser's close frame (or its TLS close_notify),
    :attr:`ended` is true. A message over ``max_line`` bytes comes out as
    ``protocol.OVERLONG``, as an overlong line does on TCP. A frame the
    chat does not take gets a close frame with its code, and :meth:`feed`
    raises ``protocol.FramingError``: the connection goes, as for an
    endless line on TCP.
    """

    def __init__(self, tls: Optional[TLSLayer], max_line: int,
                 outbox: WebOutbox) -> None:
        self.tls = tls
        self.outbox = outbox
        self.messages = wscodec.MessageDecoder(max_line)
        self.ended = False
        self.pending = b""  # plain bytes that came with the HTTP request
        #: When the browser last sent anything, and when it was last
        #: pinged (0: not since), for the pinger; monotonic seconds.
        self.heard = time.monotonic()
        self.pinged = 0.0

    def feed(self, data: bytes) -> List[Frame]:
        """The lines ``data`` completed (``b""``: what is already held)."""
        if self.tls is not None:
            data = self.tls.decrypt(data) or b""
            self.ended = self.tls.ended
        if self.pending:
            data, self.pending = self.pending + data, b""
        if not data:
            return []
        self.heard = time.monotonic()
        try:
            events = self.messages.feed(data)
        except wscodec.WebSocketError as error:
            self.outbox.put_frame(
                wscodec.close_frame(error.code, str(error)), last=True)
            raise protocol.FramingError(
                f"WebSocket {error.code}: {error}") from None
        frames: List[Frame] = []
        for event in events:
            if event.opcode == wscodec.TEXT:
                frames.append(event.data)
            elif event.opcode == wscodec.PING:
                self.outbox.put_frame(
                    wscodec.encode_frame(wscodec.PONG, event.data))
            elif event.opcode == wscodec.CLOSE:
                # Answer with the same code (RFC 6455 section 5.5.1): the
                # browser closed, as a terminal user closing the socket.
                code = (wscodec.NORMAL if event.code == wscodec.NO_STATUS
                        else event.code)
                self.outbox.put_frame(wscodec.close_frame(code),
                                      last=True)
                self.ended = True
        return frames


class Request(NamedTuple):
    """An HTTP request line and its headers (names in lower case; a
    repeated header's values joined with ``, ``)."""

    method: str
    path: str
    version: str
    headers: Dict[str, str]


class BadRequest(Exception):
    """An HTTP request that gets an error: ``status`` and a line saying
    why."""

    def __init__(self, status: int, why: str,
                 headers: Tuple[Tuple[str, str], ...] = ()) -> None:
        super().__init__(why)
        self.status = status
        self.headers = headers


def parse_request(head: bytes) -> Request:
    """Read an HTTP request's head (without its blank line). Raises
    :class:`BadRequest`."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise BadRequest(400, "bad request line")
    method, target, version = parts
    if not version.startswith("HTTP/1."):
        raise BadRequest(505, "HTTP/1.1 only")
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise BadRequest(400, "bad header line")
        name, value = name.lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers \
            else value
    return Request(method, target.split("?", 1)[0], version, headers)


def tokens(value: str) -> Set[str]:
    """A comma-separated header value as a set of lower-case tokens
    (``Connection: keep-alive, Upgrade``)."""
    return {token.strip().lower() for token in value.split(",")}


def origin_allowed(origin: Optional[str], host: str, tls: bool,
                   allowed: str) -> bool:
    """May a page from ``origin`` open a chat connection? Its own page may
    (same scheme, host and port as the request's ``Host``), and so may the
    origins in ``allowed`` (``--web-origin``: comma-separated, ``*`` for
    any). No ``Origin`` at all is not a browser (which always sends it),
    and such a program could connect to the TCP port anyway."""
    if origin is None:
        return True
    origin = origin.strip().lower()
    extra = {item.strip().lower().rstrip("/")
             for item in allowed.split(",") if item.strip()}
    if "*" in extra or origin in extra:
        return True
    scheme = "https" if tls else "http"
    default = ":443" if tls else ":80"
    host = host.strip().lower()
    if host.endswith(default):
        host = host[:-len(default)]
    return origin == f"{scheme}://{host}"


def commands_json(max_line: int = protocol.MAX_LINE_BYTES) -> bytes:
    """The command table, for the page's Tab completion: each command's
    flag, what follows it (``nick``, ``text``, ...) and what a client does
    with it (``hide``: keep it out of the input history); and
    ``max_line``, the longest line the server takes (``--max-line``, in
    UTF-8 bytes), so that the page refuses a longer one before sending
    it."""
    rows = [{"flag": spec.flag, "argument": spec.argument,
             "client": spec.client}
            for spec in protocol.COMMANDS if spec.flag]
    return json.dumps({"commands": rows, "max_line": max_line}
                      ).encode("utf-8")


def load_files(max_line: int = protocol.MAX_LINE_BYTES
               ) -> Dict[str, Tuple[bytes, str]]:
    """The page's files, read once: path -> (bytes, content type). Raises
    OSError if one is missing."""
    files = {}
    for path, (name, kind) in FILES.items():
        with open(os.path.join(WEB_DIR, name), "rb") as file:
            files[path] = (file.read(), kind)
    files[COMMANDS_PATH] = (commands_json(max_line),
                            "application/json; charset=utf-8")
    return files


class WebSession:
    """What a browser's connection does before (and around) the chat
    session of ``server.ChatHandler``, into which it is mixed: one HTTP
    request, then either a file and the end, or the WebSocket upgrade and
    the chat through a :class:`WebOutbox` and a :class:`WebDecoder`.
    """

    server: "WebServer"
    sock: socket.socket
    tls: Optional[TLSLayer]
    outbox: WebOutbox
    decoder: WebDecoder
    client_address: Address
    read_error: str
    #: ``server.ChatHandler.make_outbox`` makes one of these.
    outbox_class = WebOutbox

    def setup(self) -> None:
        self.upgraded = False
        super().setup()  # type: ignore[misc]

    def make_decoder(self) -> WebDecoder:
        """Frames in instead of lines (``server.ChatHandler`` calls this
        once its outbox is made: pongs and closes go through it)."""
        return WebDecoder(self.tls, self.server.config.max_line,
                          self.outbox)

    def begin(self) -> bool:
        """Read the request and answer it; True once the connection is a
        chat connection (the upgrade done), False when it is over."""
        deadline = time.monotonic() + config.WEB_REQUEST_SECONDS
        name = format_address(self.client_address)
        try:
            head, rest = self._read_head(deadline)
            if head is None:
                return False
            request = parse_request(head)
            if request.path == CHAT_PATH:
                if request.method != "GET":
                    raise BadRequest(405, "GET only", (("Allow", "GET"),))
                self._upgrade(request, deadline)
                self.decoder.pending = rest
                self.sock.settimeout(None)
                self.server.watch(self)
                self.upgraded = True
                log.debug("%s: WebSocket connection", name)
                return True
            if request.path not in self.server.files:
                raise BadRequest(404, "no such page")
            if request.method not in ("GET", "HEAD"):
                raise BadRequest(405, "GET or HEAD only",
                                 (("Allow", "GET, HEAD"),))
            body, kind = self.server.files[request.path]
            self._respond(200, body, kind, head_only=request.method == "HEAD",
                          deadline=deadline)
        except BadRequest as error:
            # A refused origin or connection is worth knowing; a missing
            # favicon is not.
            if error.status == 429:
                log.info("%s (web): %s", name, error,
                         extra={"burst": "connections refused"})
            else:
                log.log(logging.INFO if error.status == 403
                        else logging.DEBUG,
                        "%s: HTTP %d: %s", name, error.status, error)
            try:
                self._respond(error.status, f"{error}\n".encode(),
                              headers=error.headers, deadline=deadline)
            except OSError:
                pass
        except OSError as error:  # timeout, reset, broken TLS
            log.info("%s: HTTP request failed: %s", name, error)
        return False

    def tls_refusal(self) -> bytes:
        """http:// typed for an https:// page: say so, in HTTP."""
        body = b"This chat uses HTTPS: open https:// instead of http://\n"
        return (b"HTTP/1.1 400 Bad Request\r\n"
                b"Content-Type: text/plain; charset=utf-8\r\n"
                b"Content-Length: %d\r\n"
                b"X-Content-Type-Options: nosniff\r\n"
                b"Connection: close\r\n\r\n" % len(body)) + body

    def finish(self) -> None:
        if self.upgraded:
            self.server.forget(self)
        super().finish()  # type: ignore[misc]

    def drop(self, why: str) -> None:
        """End the connection as lost (called by the pinger): the reader
        wakes up, and the room keeps the seat as for a dropped one."""
        self.read_error = why
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _read_head(self, deadline: float
                   ) -> Tuple[Optional[bytes], bytes]:
        """The request's head and what came after it (plain text); None
        if the browser went away first. Raises BadRequest, OSError."""
        data = b""
        if self.tls is not None:
            # TLS 1.3: the request may have come with the client's last
            # handshake message; it waits in the TLS buffers already.
            data = self.tls.decrypt(b"") or b""
        while True:
            end = data.find(b"\r\n\r\n")
            if end >= 0 and end <= config.WEB_MAX_HEAD_BYTES:
                return data[:end], data[end + 4:]
            if len(data) > config.WEB_MAX_HEAD_BYTES:
                raise BadRequest(431, "request head over"
                                 f" {config.WEB_MAX_HEAD_BYTES} bytes")
            self.sock.settimeout(_left(deadline))
            received = self.sock.recv(RECV_BYTES)
            if not received:
                return None, b""
            if self.tls is not None:
                plain = self.tls.decrypt(received)
                if plain is None:
                    return None, b""
                received = plain
            data += received

    def _upgrade(self, request: Request, deadline: float) -> None:
        """Check the WebSocket handshake and answer 101, or raise
        BadRequest."""
        headers = request.headers
        if "websocket" not in tokens(headers.get("upgrade", "")) or \
                "upgrade" not in tokens(headers.get("connection", "")):
            raise BadRequest(426, "this address takes WebSocket"
                             " connections only",
                             (("Upgrade", "websocket"),))
        if request.version != "HTTP/1.1":
            raise BadRequest(505, "WebSocket needs HTTP/1.1")
        if headers.get("sec-websocket-version", "").strip() != "13":
            raise BadRequest(426, "WebSocket version 13 only",
                             (("Sec-WebSocket-Version", "13"),))
        key = headers.get("sec-websocket-key", "").strip()
        if not wscodec.valid_key(key):
            raise BadRequest(400, "bad Sec-WebSocket-Key")
        if not origin_allowed(headers.get("origin"),
                              headers.get("host", ""),
                              self.tls is not None,
                              self.server.config.web_origin):
            raise BadRequest(403, f"origin {headers['origin'][:100]!r}"
                             " may not connect (see --web-origin)")
        # Only now is this a connect (--connects-per-minute), as a
        # connection to the TCP port is: the page's files are not.
        why = self.server.room.guard.count_connect(
            host_of(self.client_address))
        if why is not None:
            raise BadRequest(429, f"connection refused: {why}")
        # No Sec-WebSocket-Extensions: no compression is agreed.
        self._send(
            "HTTP/1.1 101 Switching Protocols\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {wscodec.accept_key(key)}\r\n\r\n"
            .encode("latin-1"), deadline)

    def _respond(self, status: int, body: bytes,
                 kind: str = "text/plain; charset=utf-8",
                 headers: Tuple[Tuple[str, str], ...] = (),
                 head_only: bool = False, deadline: float = 0.0) -> None:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
                 f"Content-Type: {kind}",
                 f"Content-Length: {len(body)}",
                 f"Content-Security-Policy: {CSP}",
                 "X-Content-Type-Options: nosniff",
                 "Referrer-Policy: no-referrer",
                 "Cache-Control: no-cache",
                 "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self._send(head if head_only else head + body, deadline)

    def _send(self, data: bytes, deadline: float) -> None:
        if self.tls is not None:
            data = self.tls.encrypt(data)
        self.sock.settimeout(_left(deadline))
        self.sock.sendall(data)


def _left(deadline: float) -> float:
    """Seconds to ``deadline``; raises socket.timeout once it is past."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise socket.timeout("the request took too long")
    return left


# --- The server --------------------------------------------------------------


class WebServer(ListeningServer):
    """The web front-end, beside a ``server.ChatServer`` (``chat``): same
    host, room, registration timeouts, TLS context and connection count.
    Each connection is served by ``handler`` (a WebSession mixed into the
    chat's handler) in a thread of its own."""

    def __init__(self, chat: "ChatServer",
                 handler: type, port: int) -> None:
        self.chat = chat
        self.config = chat.config
        self.room = chat.room
        self.housekeeper = chat.housekeeper
        self.tls_context = chat.tls_context
        self.files = load_files(chat.config.max_line)
        self.ping_interval = config.WEB_PING_INTERVAL
        self.pong_seconds = config.WEB_PONG_SECONDS
        self._sessions: Set[WebSession] = set()
        self._lock = threading.Lock()  # guards _sessions
        self._stop = threading.Event()
        self._serving = False
        self.address_family = chat.address_family
        super().__init__((chat.config.host, port), handler)

    @property
    def url(self) -> str:
        """The address of the page, as a browser on this computer would
        open it."""
        host, port = self.server_address[0], self.server_address[1]
        if host in WILDCARD_HOSTS:
            host = "127.0.0.1"
        scheme = "https" if self.tls_context else "http"
        return f"{scheme}://{format_address((host, port))}/"

    def describe(self) -> str:
        """The line the server logs at start: where to open the page."""
        line = f"web page on {self.url}"
        if self.server_address[0] in WILDCARD_HOSTS:
            port = self.server_address[1]
            line += (f" (from other computers: this computer's address,"
                     f" port {port})")
        return line

    def start(self) -> None:
        """Serve, and ping, in background threads."""
        self._serving = True
        threading.Thread(target=self.serve_forever, name="web-accept",
                         args=(ACCEPT_POLL_SECONDS,), daemon=True).start()
        threading.Thread(target=self._ping_loop, name="web-ping",
                         daemon=True).start()

    def stop(self) -> None:
        """Stop accepting and pinging (the room closes the chat
        connections)."""
        self._stop.set()
        if self._serving:
            self.shutdown()
        self.server_close()

    # -- Connections, counted with the chat's (so --max-clients is for both)

    def process_request(self, request: socket.socket,
                        client_address: Address) -> None:
        # A connect of the minute is counted at the upgrade, for a chat
        # connection only: loading the page is not connecting.
        refusal = self.chat.take_seat(client_address, connect=False)
        if refusal is None and self.chat.stopping:
            self.chat.give_seat_back(client_address)
            refusal = protocol.format_shutdown()
        if refusal is not None:
            log.info("%s (web): %s", format_address(client_address),
                     unmarked(refusal),
                     extra={"burst": "connections refused"})
            if self.tls_context is None:  # else no TLS yet to say it in
                try:  # one short non-blocking send to a new socket
                    request.send(refused_response(refusal), DONTWAIT)
                except OSError:
                    pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.chat.give_seat_back(client_address)
            raise

    def process_request_thread(self, request: socket.socket,
                               client_address: Address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.chat.give_seat_back(client_address)

    # -- The pinger

    def watch(self, session: WebSession) -> None:
        with self._lock:
            self._sessions.add(session)

    def forget(self, session: WebSession) -> None:
        with self._lock:
            self._sessions.discard(session)

    def _ping_loop(self) -> None:
        """Ping each browser silent for ``ping_interval`` seconds; drop
        one that has not answered ``pong_seconds`` after its ping."""
        while not self._stop.wait(
                min(self.ping_interval, self.pong_seconds) / 4):
            now = time.monotonic()
            with self._lock:
                sessions = list(self._sessions)
            for session in sessions:
                decoder = session.decoder
                if decoder.pinged and decoder.heard < decoder.pinged:
                    if now - decoder.pinged >= self.pong_seconds:
                        session.drop("no answer to a ping")
                elif now - decoder.heard >= self.ping_interval:
                    decoder.pinged = now
                    session.outbox.put_frame(
                        wscodec.encode_frame(wscodec.PING))


#: Hosts that mean "every address of this computer".
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def unmarked(line: str) -> str:
    """A server's line without its ``! `` or ``* `` in front."""
    for mark in (protocol.ERROR, protocol.NOTICE):
        if line.startswith(mark):
            return line[len(mark):]
    return line


def refused_response(line: str) -> bytes:
    """The HTTP answer to a connection the chat will not take (full, too
    many from one address, a ban, shutting down): 503, with the server's
    line as the text (plain HTTP only; with TLS there is nothing to say
    it in yet)."""
    body = unmarked(line).encode("utf-8") + b"\n"
    return (b"HTTP/1.1 503 Service Unavailable\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n"
            b"Connection: close\r\n\r\n" + body)


def open_web(chat: "ChatServer", handler: type) -> Optional[WebServer]:
    """The web front-end for ``chat``, bound but not started; None when
    ``--web-port off``, or (with a warning: the terminal chat runs on
    without it) when its port cannot be had or the page is missing."""
    settings = chat.config
    if settings.web_port is None:
        return None
    port = settings.web_port
    if settings.port == 0 and port == config.DEFAULT_WEB_PORT:
        port = 0  # tests and second servers: no fixed port anywhere
    try:
        return WebServer(chat, handler, port)
    except OSError as error:  # the port is taken; or web/ is missing
        log.warning("web page: cannot serve on %s port %s: %s; the chat"
                    " runs without it", settings.host, port,
                    error.strerror or error)
        return None
