"""The client side of one worker process: its connections to the server
and the event loop that serves them.

:class:`Client` is one connection and what it received. :class:`ClientLoop`
owns the non-blocking sockets and the pipe from the main process, all
served by one ``selectors`` loop; with ``--tls`` each connection runs TLS
over memory buffers (``transport.TLSLayer``) next to its socket, so the
loop is the same. What comes from the server is framed into lines by the
chat's own ``transport.LineDecoder``, or, while a phase keeps raw bytes
(the send phase), only decrypted. What to do with connections and lines,
phase by phase, is ``workers.Worker``'s job: the loop calls its hooks.
"""

from __future__ import annotations

import errno
import multiprocessing.connection
import os
import selectors
import socket
import ssl
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

# common first: importing it puts the repository root on sys.path.
from common import CHAT, IRC, NS_PER_S, Plan, now_ns

import protocol
from transport import LineDecoder, TLSLayer

RECV_SIZE = 256 * 1024
#: Longest line a client accepts from the server, in bytes (its framer's
#: limit): a longer one drops the connection.
MAX_LINE = 1024 * 1024
#: Longest sleep of a worker's event loop, so it notices timers and stops.
MAX_SELECT_S = 0.05

# Client states.
NEW, CONNECTING, REGISTERING, READY, CLOSED = range(5)
READ = selectors.EVENT_READ
READ_WRITE = selectors.EVENT_READ | selectors.EVENT_WRITE


class Client:
    """One connection of a worker, with what it has received."""

    __slots__ = ("index", "nick", "sock", "state", "events", "out",
                 "decoder", "tail", "chunks", "tokens", "expected",
                 "seen_barrier", "started_ns", "registered_ns", "next_seq",
                 "tls", "secured")

    def __init__(self, index: int, nick: str, expected: int) -> None:
        self.index = index
        self.nick = nick
        self.sock: Optional[socket.socket] = None
        self.state = NEW
        self.events = 0
        self.out = bytearray()            # bytes not yet taken by the kernel
        # Line framing (and with --tls decryption, see _connected) of what
        # the server sends.
        self.decoder = LineDecoder(max_line=MAX_LINE)
        # The send phase: (arrival ns, plain bytes as received), framed
        # only afterwards (report.analyse), with the last bytes seen.
        self.chunks: List[Tuple[int, bytes]] = []
        self.tail = b"\n"
        self.tokens = 0                   # token lines received, roughly
        self.expected = expected
        self.seen_barrier = False
        self.started_ns = 0
        self.registered_ns = 0
        self.next_seq = 0                 # next line a sender sends
        self.tls: Optional[TLSLayer] = None   # with --tls
        self.secured = False              # the TLS handshake is done


class ClientLoop:
    """The event loop of one worker process: its clients' sockets and the
    command pipe from the main process (``conn``).

    Commands are queued in :attr:`inbox`, but for ``senders_done`` (noted
    in :attr:`all_sent_ns`) and ``stop`` (:attr:`stopped`). A subclass
    runs the phases; the loop tells it through :attr:`on_lines` and the
    methods marked as hooks.
    """

    def __init__(self, conn: multiprocessing.connection.Connection,
                 plan: Plan, clients: List[Client]) -> None:
        self.conn = conn
        self.plan = plan
        # An IRC server (the churn scenario's comparison) is driven like
        # the chat: one line to register, a welcome line to wait for.
        self.irc = plan.protocol == IRC
        self.chat = plan.protocol == CHAT or self.irc
        self.clients = clients
        self.selector = selectors.DefaultSelector()
        self.selector.register(conn.fileno(), READ, None)
        self.inbox: Deque[tuple] = deque()
        self.stopped = False
        self.all_sent_ns = 0
        # What the phase does with the lines a client received (and when
        # they came).
        self.on_lines: Callable[[Client, List[bytes], int],
                                None] = self._ignore
        self.errors: Dict[str, int] = {}
        self.tls_context: Optional[ssl.SSLContext] = None
        if plan.tls:
            self.tls_context = ssl.create_default_context(
                cafile=plan.cafile or None)
            self.tls_context.minimum_version = ssl.TLSVersion.TLSv1_2

    # Hooks for the phases.

    def _secured(self, client: Client) -> None:
        """Hook: ``client`` is connected (and through the TLS
        handshake)."""

    def _dropped(self, client: Client, was: int) -> None:
        """Hook: ``client``, in state ``was``, was closed on an error."""

    def _writable(self, client: Client) -> None:
        """Hook: ``client``'s socket takes more bytes."""
        self._flush(client)

    def _received(self, client: Client, data: bytes) -> None:
        """Hook: ``data`` came from the server (through the TLS
        handshake, if any); by default, its lines go to on_lines."""
        self._decode(client, data)

    def _ignore(self, client: Client, lines: List[bytes], now: int) -> None:
        pass

    # The event loop.

    def serve(self, until: Callable[[], bool], deadline_ns: int,
              tick: Optional[Callable[[int], int]] = None) -> bool:
        """Serve sockets and commands until ``until()`` is true (return
        True) or ``deadline_ns`` passes (return False). ``tick(now)`` runs
        every round and returns when it next wants to run."""
        while not until():
            now = now_ns()
            if now >= deadline_ns:
                return False
            wake = deadline_ns
            if tick is not None:
                wake = min(wake, tick(now))
            timeout = min(MAX_SELECT_S, max(0.0, (wake - now_ns()) / NS_PER_S))
            for key, mask in self.selector.select(timeout):
                client = key.data
                if client is None:
                    self._read_commands()
                    continue
                if mask & selectors.EVENT_WRITE:
                    self._on_writable(client)
                if mask & selectors.EVENT_READ and client.state != CLOSED:
                    self._on_readable(client)
        return True

    def _read_commands(self) -> None:
        try:
            while self.conn.poll():
                message = self.conn.recv()
                if message[0] == "senders_done":
                    self.all_sent_ns = now_ns()
                elif message[0] == "stop":
                    self.stopped = True
                else:
                    self.inbox.append(message)
        except (EOFError, OSError):
            raise SystemExit(1) from None   # the main process is gone

    def _interrupted(self) -> bool:
        return self.stopped or bool(self.inbox)

    def reply(self, tag: str, payload: Any = None) -> None:
        self.conn.send((tag, payload))

    # Sockets.

    def _set_events(self, client: Client, events: int) -> None:
        if client.events != events:
            self.selector.modify(client.sock, events, client)
            client.events = events

    def _send(self, client: Client, data: bytes) -> None:
        client.out += self._wire(client, data)
        self._flush(client)

    @staticmethod
    def _wire(client: Client, data: bytes) -> bytes:
        """What goes on the wire for ``data``: itself, or with TLS the
        records that carry it."""
        if client.tls is None:
            return data
        return client.tls.encrypt(data)

    def _flush(self, client: Client) -> bool:
        """Hand queued bytes to the kernel; True when none are left."""
        if client.out:
            try:
                sent = client.sock.send(client.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as error:
                self._drop(client, f"send: {error.strerror or error}")
                return False
            del client.out[:sent]
        self._set_events(client, READ_WRITE if client.out else READ)
        return not client.out

    def _on_writable(self, client: Client) -> None:
        if client.state == CONNECTING:
            self._connected(client)
        else:
            self._writable(client)

    def _on_readable(self, client: Client) -> None:
        try:
            data = client.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._drop(client, f"recv: {error.strerror or error}")
            return
        if not data:
            self._drop(client, "connection closed by the server")
            return
        if client.tls is not None and not client.secured:
            if not self._handshake(client, data):
                return
            data = b""   # lines that came with its end are held by TLS
        try:
            self._received(client, data)
        except ssl.SSLError as error:
            self._drop(client, f"TLS: {error.reason or error}")
        except protocol.FramingError:
            self._drop(client, "line without end from the server")
        else:
            # The server's close_notify, perhaps with the last lines.
            if (client.tls is not None and client.tls.ended
                    and client.state != CLOSED):
                self._drop(client, "TLS closed by the server")

    def _decode(self, client: Client, data: bytes) -> None:
        """Decrypt and frame ``data`` now, and hand its complete lines to
        the phase, stamped with when they could be read."""
        frames = client.decoder.feed(data)
        arrived = now_ns()
        self._send_tls_replies(client)
        if not frames:
            return
        if protocol.OVERLONG in frames:
            self._drop(client, "line without end from the server")
            return
        if self.irc:
            for frame in frames:
                if frame.startswith(b"PING"):  # type: ignore[union-attr]
                    self._send(client, b"PONG" + bytes(frame[4:]).rstrip(
                        b"\r") + b"\r\n")
        self.on_lines(client, frames, arrived)  # type: ignore[arg-type]

    def _decrypt(self, client: Client, data: bytes) -> bytes:
        """The plain text in ``data`` (possibly none yet); without TLS,
        ``data``. Raises ``ssl.SSLError`` on a broken stream."""
        if client.tls is None:
            return data
        plain = client.tls.decrypt(data) or b""
        self._send_tls_replies(client)
        return plain

    def _send_tls_replies(self, client: Client) -> None:
        """Send what TLS itself has to answer to what it read, if any."""
        if (client.tls is not None and client.state != CLOSED
                and not client.tls.ended):
            reply = client.tls.encrypt(b"")
            if reply:
                client.out += reply
                self._flush(client)

    def _handshake(self, client: Client, received: bytes = b"") -> bool:
        """One step of the TLS handshake with what came from the server;
        True once it is done (the client then registers). Drops the client
        if the handshake fails."""
        try:
            done, reply = client.tls.step(received)
        except ssl.SSLError as error:
            reason = getattr(error, "verify_message", None) or error.reason
            self._drop(client, f"TLS handshake: {reason or error}")
            return False
        client.out += reply
        self._flush(client)
        if done and client.state == REGISTERING:
            client.secured = True
            self._secured(client)
        return client.secured and client.state == REGISTERING

    def _connect(self, client: Client) -> None:
        """Start connecting ``client`` (without waiting)."""
        client.state = CONNECTING
        try:
            sock = socket.socket(self.plan.family, socket.SOCK_STREAM)
        except OSError as error:
            self._drop(client, f"socket: {error.strerror or error}")
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.sock = sock
        code = sock.connect_ex(self.plan.address)
        if code not in (0, errno.EINPROGRESS):
            self._drop(client, f"connect: {os.strerror(code)}")
            return
        client.events = READ_WRITE
        self.selector.register(sock, READ_WRITE, client)

    def _connected(self, client: Client) -> None:
        code = client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._drop(client, f"connect: {os.strerror(code)}")
            return
        client.state = REGISTERING
        client.started_ns = client.started_ns or now_ns()
        if self.tls_context is not None:
            client.tls = TLSLayer(self.tls_context,
                                  server_hostname=self.plan.address[0])
            client.decoder = LineDecoder(client.tls, max_line=MAX_LINE)
            self._handshake(client)   # sends the ClientHello
        else:
            self._secured(client)

    def _note_error(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1

    def _drop(self, client: Client, reason: str) -> None:
        """Close ``client`` because something went wrong."""
        was = client.state
        self._close(client)
        self._note_error(reason)
        self._dropped(client, was)

    def _close(self, client: Client) -> None:
        if client.sock is not None:
            if client.events:
                self.selector.unregister(client.sock)
            client.sock.close()
        client.events = 0
        client.state = CLOSED

    def close(self) -> None:
        for client in self.clients:
            if client.sock is not None:
                client.sock.close()
        self.selector.close()
