"""Moving lines over a socket, with or without TLS: the part of the chat
that knows about sockets, for both ends (and the tests and the bench).

* :class:`TLSLayer`: TLS for one connection over memory buffers, so that
  one thread may decrypt what it received while others encrypt what they
  send, and the socket itself stays a plain TCP socket.
* :func:`handshake`: runs a TLS handshake within one total deadline.
* :class:`LineDecoder`: bytes as received -> framed lines (decrypting
  first, with TLS). It does no I/O, so a non-blocking program (the bench)
  uses it as it is.
* :class:`LineSocket`: a connected socket read and written as lines; what
  a client (``client.py``, the tests) talks through.
* :func:`configure_socket`: the TCP settings every chat connection gets.
* :class:`ListeningServer`: what the server's two ports (the chat's and
  the web page's) have in common.

The server's sending side, which must never block, is ``outbox.py``.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
import time
from collections import deque
from typing import Callable, Deque, List, Optional, Tuple

import protocol
from members import Address, format_address
from protocol import Frame

#: Bytes asked of one ``recv``: large enough that a flood of lines is read
#: (and its replies coalesced) in few system calls.
RECV_BYTES = 64 * 1024
#: Bytes the server asks of a ``recv`` while a connection is quiet (the
#: last read did not fill what it asked for): the buffer is held while
#: the thread waits, and the server has thousands of them waiting.
IDLE_RECV_BYTES = 4 * 1024
#: Plain text asked of TLS at a time: large pieces mean fewer, larger
#: allocations, which the bench shows is measurably cheaper.
TLS_READ_BYTES = 256 * 1024
#: TCP keepalive: probe a silent peer after this many seconds, then every
#: interval, and drop it after that many unanswered probes (about 2 minutes).
KEEPALIVE_IDLE = 60
KEEPALIVE_INTERVAL = 10
KEEPALIVE_PROBES = 5
#: How often a server's accept loop checks whether it should stop.
ACCEPT_POLL_SECONDS = 0.05
#: MSG_DONTWAIT: one send that does not block, on a blocking socket (see
#: outbox.py); a server uses it for the one line a refused connection
#: gets, and a TLS refusal.
DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


class TLSLayer:
    """TLS for one connection, kept apart from its socket.

    OpenSSL must not be used by two threads at once, yet one thread reads
    (and decrypts) while others send (and encrypt). So the socket stays a
    plain TCP socket and TLS runs over memory buffers behind one lock:
    :meth:`decrypt` what ``recv`` returned, :meth:`encrypt` what is about
    to be sent. Both ends use it: the server with ``server_side=True``, the
    client with the ``server_hostname`` it verifies.
    """

    def __init__(self, context: ssl.SSLContext, server_side: bool = False,
                 server_hostname: Optional[str] = None) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing,
                                     server_side=server_side,
                                     server_hostname=server_hostname)
        self._lock = threading.Lock()
        self._ended = False  # the peer's close_notify has come

    def step(self, received: bytes = b"") -> Tuple[bool, bytes]:
        """One step of the handshake: take what the peer sent; return
        whether the handshake is done, and the bytes to send to the peer.
        Raises ``ssl.SSLError`` if it fails."""
        with self._lock:
            if received:
                self._incoming.write(received)
            try:
                self._tls.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            return done, self._outgoing.read()

    def decrypt(self, data: bytes) -> Optional[bytes]:
        """The plain text in ``data`` (possibly none yet), or None once
        the peer has closed TLS. Raises ``ssl.SSLError`` on a broken
        stream."""
        with self._lock:
            self._incoming.write(data)
            pieces = []
            while not self._ended:
                try:
                    piece = self._tls.read(TLS_READ_BYTES)
                except ssl.SSLWantReadError:
                    break  # no complete record left
                except ssl.SSLZeroReturnError:
                    piece = b""
                if not piece:
                    # Python's read() returns b"" (rather than raising)
                    # once the peer's close_notify has come.
                    self._ended = True
                    break
                pieces.append(piece)
            if self._ended and not pieces:
                return None
            return b"".join(pieces)

    def version(self) -> Optional[str]:
        """The TLS version agreed on, such as ``TLSv1.3``."""
        with self._lock:
            return self._tls.version()

    def close_notify(self) -> bytes:
        """The bytes that end TLS politely (a close_notify alert), to send
        before closing the connection."""
        with self._lock:
            try:
                self._tls.unwrap()
            except ssl.SSLError:
                pass  # SSLWantReadError: the peer's reply is not awaited
            return self._outgoing.read()

    @property
    def ended(self) -> bool:
        """True once the peer's close_notify has come (perhaps together
        with the last data :meth:`decrypt` returned)."""
        return self._ended

    def encrypt(self, data: bytes) -> bytes:
        """The bytes to send for ``data``, with any TLS messages that
        are waiting to go (such as replies to the peer's). Raises
        ``ssl.SSLError`` once the stream is broken."""
        with self._lock:
            if data:
                self._tls.write(data)
            return self._outgoing.read()


def handshake(sock: socket.socket, tls: TLSLayer, seconds: float,
              received: Optional[Callable[[bytes], None]] = None) -> None:
    """Run ``tls``'s handshake on the blocking socket ``sock``, all of it
    within ``seconds``: a peer sending a byte now and then cannot stretch
    it. ``received`` sees every piece that came from the peer (a client
    uses it to recognise a plain-text answer).

    Raises ``ssl.SSLError`` if the handshake fails, ``socket.timeout``
    when the time is up, ``ConnectionError`` if the peer closes, and any
    other ``OSError`` of the socket. Leaves the socket's timeout as it
    was.
    """
    deadline = time.monotonic() + seconds
    before = sock.gettimeout()

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("handshake timed out")
        return left

    data = b""
    try:
        while True:
            done, reply = tls.step(data)
            if reply:
                sock.settimeout(remaining())
                sock.sendall(reply)
            if done:
                return
            sock.settimeout(remaining())
            data = sock.recv(RECV_BYTES)
            if not data:
                raise ConnectionError("connection closed during the TLS"
                                      " handshake")
            if received is not None:
                received(data)
    finally:
        sock.settimeout(before)


class LineDecoder:
    """Turns bytes as they come from the socket into framed lines:
    decrypts them first with ``tls``, then cuts them into lines with a
    :class:`protocol.LineFramer`. No I/O: the caller receives.

    :meth:`feed` raises ``ssl.SSLError`` for a broken TLS stream and
    :class:`protocol.FramingError` for an endless line; after the peer's
    TLS close_notify, :attr:`ended` is true.
    """

    def __init__(self, tls: Optional[TLSLayer] = None,
                 max_line: int = protocol.MAX_LINE_BYTES,
                 max_discard: int = protocol.MAX_DISCARD_BYTES) -> None:
        self.tls = tls
        self.framer = protocol.LineFramer(max_line, max_discard)
        self.ended = False

    def feed(self, data: bytes) -> List[Frame]:
        """The lines ``data`` completed (``b""`` asks TLS for what it
        already holds, such as lines that came with its handshake)."""
        if self.tls is not None:
            data = self.tls.decrypt(data) or b""
            self.ended = self.tls.ended
        return self.framer.feed(data) if data else []


class LineSocket:
    """A connected, blocking socket read and written as text lines; with
    ``tls``, encrypted. One thread may read while another sends.

    Lines from the peer are decoded leniently (invalid UTF-8 becomes
    U+FFFD, an overlong line becomes a note saying so): a client shows
    what it got. The server reads frames strictly instead, through
    :class:`LineDecoder`.
    """

    def __init__(self, sock: socket.socket, tls: Optional[TLSLayer] = None,
                 max_line: int = protocol.MAX_LINE_BYTES,
                 max_discard: int = protocol.MAX_DISCARD_BYTES) -> None:
        self.sock = sock
        self.tls = tls
        self._decoder = LineDecoder(tls, max_line, max_discard)
        self._lines: Deque[str] = deque()  # received, not yet read
        self._send_lock = threading.Lock()
        if tls is not None:
            # What came in with the end of the handshake, if anything.
            self._take(b"")

    def read_line(self) -> Optional[str]:
        """The next line (without its newline), or None when the peer
        closed the connection. Raises OSError (``ssl.SSLError`` for a
        broken TLS stream, ``socket.timeout`` if the socket has a timeout)
        or :class:`protocol.FramingError` if the connection broke."""
        while not self._lines:
            if self._decoder.ended:
                return None
            data = self.sock.recv(RECV_BYTES)
            if not data:
                return None
            self._take(data)
        return self._lines.popleft()

    def _take(self, data: bytes) -> None:
        for frame in self._decoder.feed(data):
            self._lines.append(decode_leniently(frame))

    def take_received(self) -> List[str]:
        """The lines already received but not read yet (without waiting)."""
        lines = list(self._lines)
        self._lines.clear()
        return lines

    def send_line(self, text: str) -> None:
        """Send one line (without its newline)."""
        self.send_raw(protocol.encode_line(text))

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (encrypted, with TLS)."""
        with self._send_lock:  # keeps each TLS record whole and in order
            if self.tls is not None:
                data = self.tls.encrypt(data)
            self.sock.sendall(data)

    def close(self) -> None:
        """Close the connection; wakes up a thread blocked in
        :meth:`read_line`."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed by the other end
        self.sock.close()


def decode_leniently(frame: Frame) -> str:
    """A frame as text to show: invalid UTF-8 becomes U+FFFD rather than
    an exception, and a line too long to keep is a note saying so."""
    if frame is protocol.OVERLONG:
        return protocol.format_error(
            "(a line from the server was too long to show)")
    # Control characters are kept here: whoever shows the line makes them
    # harmless (client.py's sanitiser).
    return bytes(frame).decode(  # type: ignore[arg-type]
        protocol.ENCODING, "replace").rstrip("\r")


def configure_socket(sock: socket.socket, keepalive: bool = True) -> None:
    """Settings a chat connection gets: no Nagle delay (chat lines are
    small and latency is what people feel) and, with ``keepalive``, TCP
    keepalive (so a peer that vanished without a word is found and
    dropped)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not keepalive:
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE),
                            ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
                            ("TCP_KEEPCNT", KEEPALIVE_PROBES)):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name),
                                value)
    except OSError:
        pass  # the peer may already be gone; recv() will tell


class ListeningServer(socketserver.ThreadingTCPServer):
    """What the server's two ports (the chat's, ``server.ChatServer``, and
    the web page's, ``web.WebServer``) have in common: a thread for each
    connection, never waited for on close; a deep queue of connections
    not yet accepted; the port reused at once after a restart; IPv4
    clients too on ``::``, where the OS allows; and an error in a
    connection's thread logged with the peer's address. Set
    ``address_family`` before calling ``__init__``."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    request_queue_size = 1024

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and \
                self.server_address[0] in ("::", ""):
            # Dual stack: '::' takes IPv4 clients too, where the OS allows.
            try:
                self.socket.setsockopt(socket.IPPROTO_IPV6,
                                       socket.IPV6_V6ONLY, 0)
            except (AttributeError, OSError):
                pass
        super().server_bind()

    def process_request_thread(self, request: socket.socket,
                               client_address: Address) -> None:
        """A connection's thread (socketserver's, ending with one
        ``close()``: it sends the FIN itself, as nothing else holds the
        descriptor, no ``makefile()``; socketserver's ``shutdown(SHUT_WR)``
        first would be one more system call, and when thousands of
        connections end at once each is one more wait for the GIL among
        thousands of threads)."""
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.close_request(request)

    def handle_error(self, request: socket.socket,
                     client_address: Address) -> None:
        logging.getLogger("chat").exception(
            "%s: error", format_address(client_address))
