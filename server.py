"""The chat server: a threaded TCP server that routes lines between users.

Run ``python3 server.py --help`` for the options. Each connection gets a
thread that reads its lines (``ChatHandler``); what is sent to a connection
goes through its ``Outbox``, so a user who stops reading never blocks the
others. Who is online lives in the ``Registry``, an address -> nickname
dictionary behind one lock. The wording of every line and every limit are in
``protocol.py``.

In-process use (tests)::

    server = ChatServer(ServerConfig(port=0, admin_password="pw"))
    server.start()          # serves in a background thread
    host, port = server.address
    server.stop()           # tells everyone, closes every connection
"""

from __future__ import annotations

import argparse
import hmac
import logging
import os
import secrets
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import (Callable, Deque, Dict, Iterator, List, Optional, Set,
                    Tuple)

import protocol
from protocol import Command, Frame

log = logging.getLogger("chat")

#: Bytes asked of one ``recv``: large enough that a flood of lines is read
#: (and its replies coalesced) in few system calls.
RECV_BYTES = 64 * 1024
#: Stack size for connection threads. Python code needs little C stack, and
#: the default 8 MiB of address space per thread adds up at 10,000 users.
THREAD_STACK_BYTES = 256 * 1024
#: TCP keepalive: probe a silent peer after this many seconds, then every
#: interval, and drop it after that many unanswered probes (about 2 minutes).
KEEPALIVE_IDLE = 60
KEEPALIVE_INTERVAL = 10
KEEPALIVE_PROBES = 5
#: Seconds a closing connection gets to receive what is queued for it.
CLOSE_GRACE_SECONDS = 2.0
#: How often the accept loop checks whether it should stop, in seconds.
ACCEPT_POLL_SECONDS = 0.05
#: How often a large room hears who joined and left.
ANNOUNCE_INTERVAL = 1.0
#: Seconds a TLS client has to finish its handshake.
TLS_HANDSHAKE_SECONDS = 10.0
#: Environment variable that may hold the admin password.
PASSWORD_ENV = "CHAT_ADMIN_PASSWORD"

Address = Tuple  # (host, port) for IPv4, (host, port, flow, scope) for IPv6

# MSG_DONTWAIT lets a thread try a send without blocking even though the
# socket is blocking for the reader; where it is missing (Windows) every
# send is left to the connection's writer thread.
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


def format_address(address: Address) -> str:
    """``127.0.0.1:4321`` or ``[::1]:4321``; an IPv4 client of a
    dual-stack server (``::ffff:127.0.0.1``) is shown as IPv4."""
    host, port = address[0], address[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:"):]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class ServerConfig:
    """Everything the server can be told; each field is a command-line
    option of the same name."""

    host: str = protocol.DEFAULT_HOST
    port: int = protocol.DEFAULT_PORT
    admin_password: str = ""
    max_line: int = protocol.MAX_LINE_BYTES
    outbox_limit: int = protocol.DEFAULT_OUTBOX_LIMIT
    rate_limit: float = protocol.DEFAULT_RATE_LIMIT
    rate_burst: int = protocol.DEFAULT_RATE_BURST
    max_clients: int = protocol.DEFAULT_MAX_CLIENTS
    register_timeout: float = protocol.DEFAULT_REGISTER_TIMEOUT
    announce_limit: int = protocol.DEFAULT_ANNOUNCE_LIMIT
    tls_cert: str = ""
    tls_key: str = ""


# --- Sending -----------------------------------------------------------------


class Outbox:
    """Bytes on their way to one connection, in order, without ever
    blocking the thread that queues them.

    :meth:`put` only queues. :meth:`flush` tries one non-blocking send of
    everything queued, so lines queued together leave in one system call;
    whatever the socket does not take is left to a writer thread, started
    the first time it is needed. When more than ``limit`` bytes wait, the
    peer has stopped reading: the outbox drops them, and ``on_overflow`` is
    called (it cuts the connection).

    ``encode`` turns queued bytes into what goes on the wire (TLS encrypts
    there); it is called by one thread at a time, in queue order.
    """

    def __init__(self, sock: socket.socket, limit: int,
                 on_overflow: Callable[[], None],
                 encode: Optional[Callable[[bytes], bytes]] = None) -> None:
        self._sock = sock
        self._limit = limit
        self._on_overflow = on_overflow
        self._encode = encode
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._chunks: List[bytes] = []  # queued, not yet encoded
        self._unsent = b""        # encoded bytes the socket has not taken
        self._size = 0            # bytes in both, for the limit
        self._sending = False     # a thread is sending: the others wait
        self._sealed = False      # no more puts
        self._closing = False     # shut down once drained
        self._done = False        # socket shut down: drop everything
        self._writer: Optional[threading.Thread] = None

    def put(self, data: bytes, last: bool = False) -> None:
        """Queue ``data``; it leaves at the next :meth:`flush`. With
        ``last``, nothing queued after it is taken."""
        with self._lock:
            if self._sealed:
                return
            self._chunks.append(data)
            self._sealed = last
            self._size += len(data)
            if self._size <= self._limit:
                return
            stuck = self._sending or bool(self._unsent)
        if not stuck:
            # Over the limit only because nothing was offered to the
            # socket yet (a burst queued in one go): offer it first.
            self.flush()
        with self._lock:
            if self._closing or self._size <= self._limit:
                return
            self._sealed = self._closing = True
            self._shut_down()
        self._on_overflow()

    def flush(self) -> None:
        """Send what is queued, without blocking; leave what the socket
        does not take to the writer thread."""
        with self._lock:
            if self._sending or self._unsent or not self._chunks:
                return  # nothing to do, or another thread's job
            data = self._take()
        while True:
            sent = 0
            if _DONTWAIT:
                try:
                    sent = self._sock.send(data, _DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    sent = len(data)  # the reader sees the error and leaves
            with self._lock:
                self._size -= sent
                if sent < len(data):
                    self._sending = False
                    self._unsent = data[sent:]
                    self._start_writer()
                    return
                if not self._chunks:
                    # Others may have queued while this thread sent; their
                    # flush() left it to this one, so only stop when empty.
                    self._sending = False
                    if self._closing:
                        self._shut_down()
                    self._wake.notify_all()
                    return
                data = self._take()

    def close(self) -> None:
        """Take no more data; shut the socket down once what is queued has
        been sent, or after :data:`CLOSE_GRACE_SECONDS`."""
        with self._lock:
            if self._closing:
                return
            self._sealed = self._closing = True
            if self._chunks or self._unsent or self._sending:
                # A peer that does not read must not hold the writer forever.
                self._sock.settimeout(CLOSE_GRACE_SECONDS)
                self._start_writer()
            else:
                self._shut_down()

    def wait_drained(self, timeout: float) -> bool:
        """Wait until all queued data has left; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._chunks or self._unsent or self._sending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._wake.wait(remaining)
        return True

    def _take(self) -> bytes:
        # With the lock held: claim the right to send, and what to send.
        self._sending = True
        data = self._chunks[0] if len(self._chunks) == 1 \
            else b"".join(self._chunks)
        self._chunks.clear()
        if self._encode is not None:
            encoded = self._encode(data)
            self._size += len(encoded) - len(data)
            data = encoded
        data, self._unsent = self._unsent + data, b""
        return data

    def _start_writer(self) -> None:
        # With the lock held.
        if self._writer is None:
            self._writer = threading.Thread(
                target=self._write_loop, name="writer", daemon=True)
            self._writer.start()
        self._wake.notify_all()

    def _shut_down(self) -> None:
        # With the lock held: also wakes a reader blocked in recv().
        self._done = True
        self._chunks.clear()
        self._unsent = b""
        self._size = 0
        self._wake.notify_all()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _write_loop(self) -> None:
        """Send, blocking as needed, what the non-blocking path left."""
        while True:
            with self._lock:
                while not self._done and (
                        self._sending
                        or not (self._chunks or self._unsent)):
                    if self._closing and not self._sending:
                        self._shut_down()
                    else:
                        self._wake.wait()
                if self._done:
                    return
                data = self._take()
            try:
                self._sock.sendall(data)
                failed = False
            except OSError:
                failed = True
            with self._lock:
                self._sending = False
                self._size -= len(data)
                self._wake.notify_all()
                if failed:
                    self._shut_down()
                    return


def make_tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context: TLS 1.2 or newer, with the given certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


class TokenBucket:
    """Flood control: ``rate`` lines a second on average, ``burst`` at once.

    :meth:`delay` says how long to wait before the next line may be read;
    the reader sleeps that long without reading, so TCP slows the sender
    down and nothing is dropped. A rate of 0 turns the bucket off.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._tokens = float(self.burst)
        self._stamp = time.monotonic()

    def delay(self) -> float:
        """Take a token; return the seconds to wait before using it."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        self._tokens = min(self.burst,
                           self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


# --- Who is online -----------------------------------------------------------


class Session:
    """One connection: its socket, outbox and chat state."""

    def __init__(self, sock: socket.socket, address: Address,
                 outbox_limit: int,
                 tls: Optional[protocol.TLSLayer] = None) -> None:
        self.sock = sock
        self.address = address
        self.name = format_address(address)
        self.tls = tls
        self.outbox = Outbox(sock, outbox_limit, self._overflowed,
                             tls.encrypt if tls else None)
        self.nick = ""
        self.is_admin = False
        self.admin_tries = 0
        self.partner: Optional[Session] = None
        self.online = False       # in the registry
        self.expired = False      # did not register in time
        self.close_reason = ""    # why the server cut it, for the log

    def _overflowed(self) -> None:
        # The outbox has shut the socket down; the reader thread wakes up
        # and ends the session. The peer is not reading, so no line is sent.
        self.close_reason = "send queue exceeded"

    def send_last(self, text: str) -> None:
        """Send the last line this connection gets (goodbye, kicked)."""
        self.outbox.put(protocol.encode_line(text), last=True)
        self.outbox.flush()

    def __repr__(self) -> str:
        return f"<Session {self.nick or '?'} {self.name}>"


class Registry:
    """Who is online: the address -> nickname dictionary, behind one lock.

    Nicknames are unique ignoring case; :meth:`add` checks and claims one
    under the lock, so two users racing for a nickname cannot both win.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nicks: Dict[Address, str] = {}
        self._by_key: Dict[str, Session] = {}
        self._snapshot: Optional[Tuple[Session, ...]] = ()

    def add(self, session: Session, nick: str,
            greet: Callable[[List[Session], int], None]) -> bool:
        """Register ``session`` as ``nick``; False if the nick is taken.

        ``greet(first_sessions, count)`` runs under the lock once the
        session is in, so the welcome is queued before any message can be.
        """
        key = protocol.nick_key(nick)
        with self._lock:
            if key in self._by_key or session.expired:
                return False
            session.nick = nick
            session.online = True
            self._nicks[session.address] = nick
            self._by_key[key] = session
            self._snapshot = None
            others = []
            for other in self._by_key.values():
                if len(others) >= protocol.MAX_NAMES_SHOWN:
                    break
                if other is not session:
                    others.append(other)
            greet([session] + others, len(self._by_key))
            return True

    def remove(self, session: Session) -> bool:
        """Take ``session`` out; False if it was not in."""
        with self._lock:
            if not session.online:
                return False
            session.online = False
            del self._nicks[session.address]
            del self._by_key[protocol.nick_key(session.nick)]
            self._snapshot = None
            return True

    def expire(self, session: Session) -> bool:
        """Mark ``session`` as out of time to register, unless it already
        has (checked under the lock, so it cannot register meanwhile)."""
        with self._lock:
            if session.online:
                return False
            session.expired = True
            return True

    def find(self, nick: str) -> Optional[Session]:
        """The session using ``nick`` (any case), or None."""
        with self._lock:
            return self._by_key.get(protocol.nick_key(nick))

    def sessions(self) -> Tuple[Session, ...]:
        """Everyone online, as a tuple that later changes do not touch, so
        callers can send to it without holding the lock."""
        snapshot = self._snapshot
        if snapshot is None:
            with self._lock:
                snapshot = self._snapshot = tuple(self._by_key.values())
        return snapshot

    def nicknames(self) -> Dict[Address, str]:
        """A copy of the address -> nickname dictionary."""
        with self._lock:
            return dict(self._nicks)

    def __len__(self) -> int:
        return len(self._nicks)


class RegisterDeadlines:
    """Cuts connections that have not chosen a nickname in time.

    Every connection gets the same time, so deadlines come in the order
    connections do: one thread takes them from the front of a queue. (A
    socket timeout would also do, but while one is set, every send on that
    socket first waits until the socket is writable, and the outbox's
    sends must never wait.)
    """

    def __init__(self, registry: Registry, timeout: float) -> None:
        self._registry = registry
        self._timeout = timeout
        self._queue: Deque[Tuple[float, Session]] = deque()
        self._wake = threading.Condition()
        self._stopped = False
        self._thread: Optional[threading.Thread] = None

    def watch(self, session: Session) -> None:
        with self._wake:
            self._queue.append((time.monotonic() + self._timeout, session))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="deadlines", daemon=True)
                self._thread.start()
            self._wake.notify()

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()

    def _loop(self) -> None:
        while True:
            with self._wake:
                if self._stopped:
                    return
                if not self._queue:
                    self._wake.wait()
                    continue
                deadline, session = self._queue[0]
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._wake.wait(delay)
                    continue
                self._queue.popleft()
            if self._registry.expire(session):
                # Wake the handler's recv(); it says why and closes.
                try:
                    session.sock.shutdown(socket.SHUT_RD)
                except OSError:
                    pass


class Announcer:
    """Tells everyone who joined and who left.

    In a room of up to ``limit`` users, each join and departure is a line of
    its own, as it happens. In a larger room that would be a flood (a room
    filling to N users would send N*N/2 lines), so names are collected and
    sent as one line per :data:`ANNOUNCE_INTERVAL`.
    """

    def __init__(self, server: ChatServer, limit: int) -> None:
        self._server = server
        self._limit = limit
        self._lock = threading.Lock()
        self._joined: List[str] = []
        self._left: List[str] = []
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()

    def joined(self, session: Session) -> None:
        if len(self._server.registry) <= self._limit:
            self._server.broadcast(protocol.format_joined(session.nick),
                                   exclude=session)
        else:
            self._queue(self._joined, session.nick)

    def left(self, nick: str) -> None:
        # The registry no longer counts the one who left.
        if len(self._server.registry) < self._limit:
            self._server.broadcast(protocol.format_left(nick))
        else:
            self._queue(self._left, nick)

    def stop(self) -> None:
        self._stop.set()

    def _queue(self, names: List[str], nick: str) -> None:
        with self._lock:
            names.append(nick)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="announcer", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(ANNOUNCE_INTERVAL):
            with self._lock:
                joined, self._joined = self._joined, []
                left, self._left = self._left, []
            if joined:
                self._server.broadcast(protocol.format_joined_many(joined))
            if left:
                self._server.broadcast(protocol.format_left_many(left))


# --- The connection handler --------------------------------------------------


class _Leave(Exception):
    """Ends a connection's handler: the user left or must go."""


class ChatHandler(socketserver.BaseRequestHandler):
    """Serves one connection: asks for a nickname, then runs commands.

    Each command has a method named after it (``do_to`` for ``-to``), found
    by :meth:`dispatch`. Replies to the user are queued and flushed after
    every ``recv``, so a burst of lines costs one send per recipient.
    """

    server: ChatServer

    def setup(self) -> None:
        sock: socket.socket = self.request
        configure_socket(sock)
        context = self.server.tls_context
        self.session = Session(sock, self.client_address,
                               self.server.config.outbox_limit,
                               protocol.TLSLayer(context, server_side=True)
                               if context else None)
        self.framer = protocol.LineFramer(self.server.config.max_line)
        self.bucket = TokenBucket(self.server.config.rate_limit,
                                  self.server.config.rate_burst)
        self.touched: Set[Outbox] = set()

    def handle(self) -> None:
        session = self.session
        if not self.server.connected(session):
            return
        if session.tls and not self.handshake():
            self.server.disconnected(session)
            return
        # One stream of frames for the whole connection: lines that arrive
        # together with the nickname belong to the chat that follows.
        frames = self.frames()
        try:
            if self.register(frames):
                for frame in frames:
                    line = self.decode(frame)
                    if line is not None:
                        self.dispatch(line)
        except _Leave:
            pass
        except protocol.FramingError as error:
            session.close_reason = str(error)
            session.send_last(protocol.format_flooding())
        except Exception:  # never let a bug in one handler go unlogged
            log.exception("%s: unexpected error", session.name)
            session.close_reason = "internal error"
        finally:
            self.flush()
            self.server.disconnected(session)

    def finish(self) -> None:
        # socketserver closes the socket when this returns: let the last
        # lines (goodbye, errors, the shutdown notice) leave first.
        self.session.outbox.wait_drained(CLOSE_GRACE_SECONDS)

    def handshake(self) -> bool:
        """The TLS handshake, here in the connection's own thread so that a
        slow or broken one holds up nobody else."""
        session = self.session
        try:
            session.sock.settimeout(TLS_HANDSHAKE_SECONDS)
            session.tls.handshake(session.sock.sendall,
                                  lambda: session.sock.recv(RECV_BYTES))
            session.sock.settimeout(None)
            return True
        except OSError as error:  # ssl.SSLError, timeout, reset, closed
            session.close_reason = f"TLS handshake failed: {error}"
            # Most likely a plain-text client: tell it in plain text.
            try:
                session.sock.send(protocol.encode_line(
                    protocol.format_tls_required()), _DONTWAIT)
            except OSError:
                pass
            return False

    # -- Reading

    def frames(self) -> Iterator[Frame]:
        """Framed lines from the socket until it closes, at the pace the
        token bucket allows. Replies are flushed before each wait."""
        sock = self.session.sock
        tls = self.session.tls
        # TLS 1.3: lines the client sent right after its Finished message
        # may have come with it; they wait in the TLS buffers already.
        buffered = tls is not None
        while True:
            self.flush()
            try:
                if buffered:
                    buffered = False
                    data = tls.decrypt(b"")
                else:
                    data = sock.recv(RECV_BYTES)
                    if not data:
                        return  # the peer closed the connection
                    if tls:
                        data = tls.decrypt(data)
            except OSError as error:  # reset, or a broken TLS stream
                self.session.close_reason = str(error)
                return
            if data is None:
                return  # the peer ended TLS (close_notify)
            if not data:
                continue  # TLS: no complete record yet
            for frame in self.framer.feed(data):
                pause = self.bucket.delay()
                if pause:
                    self.flush()
                    time.sleep(pause)  # not reading is the back-pressure
                yield frame

    def decode(self, frame: Frame) -> Optional[str]:
        """The frame's text, or None after telling the user what was
        wrong with it."""
        if frame is protocol.OVERLONG:
            self.refuse(protocol.format_line_too_long(self.framer.max_line))
            return None
        try:
            return protocol.decode_line(frame)  # type: ignore[arg-type]
        except protocol.ProtocolError as error:
            self.refuse(protocol.format_error(str(error)))
            return None

    # -- Writing

    def reply(self, *lines: str) -> None:
        """Queue lines for this user."""
        self.session.outbox.put(
            b"".join(protocol.encode_line(text) for text in lines))
        self.touched.add(self.session.outbox)

    def refuse(self, error: str) -> None:
        """Send an error line to this user, and log it once."""
        log.info("%s (%s): %s", self.session.nick or "-", self.session.name,
                 error[len(protocol.ERROR):])
        self.reply(error)

    def tell(self, other: Session, text: str) -> None:
        """Queue a line for another user."""
        other.outbox.put(protocol.encode_line(text))
        self.touched.add(other.outbox)

    def flush(self) -> None:
        for outbox in self.touched:
            outbox.flush()
        self.touched.clear()

    # -- Registration

    def register(self, frames: Iterator[Frame]) -> bool:
        """Ask for a nickname until one is accepted; False if the
        connection ends first (or its time to register runs out)."""
        session = self.session
        self.server.deadlines.watch(session)
        self.reply(protocol.format_nick_prompt())
        for frame in frames:
            nick = self.nick_from(frame)
            if nick is not None and nick.lower() == "-exit":
                return False
            if nick and self.try_nick(nick):
                return True
            if session.expired:
                break
            self.reply(protocol.format_nick_prompt())
        if session.expired:
            session.close_reason = "no nickname in time"
            self.reply(protocol.format_register_timeout())
        return False

    def nick_from(self, frame: Frame) -> Optional[str]:
        """The nickname a frame offers, or None after saying why it
        cannot be one."""
        if frame is protocol.OVERLONG:
            self.refuse_nick("…", "it is far too long")
            return None
        try:
            return protocol.decode_line(frame).strip()  # type: ignore
        except protocol.ProtocolError as error:
            shown = bytes(frame).decode(  # type: ignore[arg-type]
                protocol.ENCODING, "replace")
            self.refuse_nick(shown, str(error).split(",")[0])
            return None

    def try_nick(self, nick: str) -> bool:
        """Register ``nick`` if it is valid and free, else say why not."""
        reason = protocol.nick_error(nick)
        if reason:
            self.refuse_nick(nick, reason)
            return False
        if not self.server.join(self.session, nick):
            if not self.session.expired:
                self.refuse_nick(nick, "it is taken, choose another")
            return False
        self.touched.add(self.session.outbox)  # the welcome join() queued
        return True

    def refuse_nick(self, nick: str, reason: str) -> None:
        # The log gets the reason only: people type all sorts of things at
        # a nickname prompt, passwords included.
        log.info("%s: nickname refused: %s", self.session.name, reason)
        self.reply(protocol.format_nick_refused(nick, reason))

    # -- Commands

    def dispatch(self, line: str) -> None:
        """Run one line as a command."""
        if not self.session.online:
            raise _Leave  # kicked: what it sent after that goes nowhere
        if not line.strip():
            return
        try:
            command = protocol.parse_command(line)
        except protocol.CommandError as error:
            self.refuse(protocol.format_error(str(error)))
            return
        log.debug("%s: -%s", self.session.nick, command.name)
        getattr(self, "do_" + command.name)(command)

    def do_say(self, command: Command) -> None:
        """A plain line: to the partner if there is one, else to all."""
        partner = self.session.partner
        if partner is None:
            self.broadcast(command.text)
        elif not partner.online:
            self.refuse(protocol.format_partner_gone(partner.nick))
        else:
            self.tell(partner, protocol.format_private(
                self.session.nick, command.text))

    def do_to(self, command: Command) -> None:
        target = self.find_other(command.target)
        if target is None:
            return
        if command.text:
            self.tell(target, protocol.format_private(
                self.session.nick, command.text))
        else:
            self.session.partner = target
            self.reply(protocol.format_partner(target.nick))

    def do_all(self, command: Command) -> None:
        if command.text:
            self.broadcast(command.text)
        else:
            self.session.partner = None
            self.reply(protocol.format_everyone())

    def do_users(self, command: Command) -> None:
        sessions = self.server.registry.sessions()
        self.reply(protocol.format_users(
            [s.nick for s in sessions], self.session.nick,
            [s.nick for s in sessions if s.is_admin]))

    def do_help(self, command: Command) -> None:
        self.reply(*protocol.format_help())

    def do_exit(self, command: Command) -> None:
        self.session.send_last(protocol.format_goodbye(self.session.nick))
        raise _Leave

    def do_admin(self, command: Command) -> None:
        session = self.session
        if session.is_admin:
            self.reply(protocol.format_admin_granted())
            return
        if session.admin_tries >= protocol.ADMIN_MAX_TRIES:
            self.refuse(protocol.format_admin_locked())
            return
        if self.server.check_password(command.target):
            session.is_admin = True
            log.info("%s (%s) is now an admin", session.nick, session.name)
            self.reply(protocol.format_admin_granted())
            return
        session.admin_tries += 1
        log.warning("%s (%s): wrong admin password, try %d of %d",
                    session.nick, session.name, session.admin_tries,
                    protocol.ADMIN_MAX_TRIES)
        self.reply(protocol.format_admin_refused(
            protocol.ADMIN_MAX_TRIES - session.admin_tries))

    def do_kick(self, command: Command) -> None:
        if not self.session.is_admin:
            self.refuse(protocol.format_admin_only("kick users"))
            return
        target = self.find_other(command.target)
        if target is not None:
            self.server.kick(target, self.session, command.text)

    def do_down(self, command: Command) -> None:
        if not self.session.is_admin:
            self.refuse(protocol.format_admin_only("shut the server down"))
            return
        self.flush()
        self.server.stop(f"by admin {self.session.nick}", from_handler=True)
        raise _Leave

    # -- Helpers for commands

    def find_other(self, nick: str) -> Optional[Session]:
        """The online user ``nick``, not oneself; or None, after telling
        the user why."""
        target = self.server.registry.find(nick)
        if target is None:
            self.refuse(protocol.format_no_such_user(nick))
        elif target is self.session:
            self.refuse(protocol.format_not_yourself())
        else:
            return target
        return None

    def broadcast(self, text: str) -> None:
        if not self.server.broadcast(
                protocol.format_message(self.session.nick, text),
                exclude=self.session, touched=self.touched):
            self.refuse(protocol.format_nobody_else())


def configure_socket(sock: socket.socket) -> None:
    """Settings every chat connection gets: no Nagle delay (chat lines are
    small and latency is what people feel) and TCP keepalive (so a peer
    that vanished without a word is found and dropped)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE),
                            ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
                            ("TCP_KEEPCNT", KEEPALIVE_PROBES)):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name),
                                value)
    except OSError:
        pass  # the peer may already be gone; recv() will tell


# --- The server --------------------------------------------------------------


class ChatServer(socketserver.ThreadingTCPServer):
    """The chat: accepts connections, each served by a :class:`ChatHandler`
    in its own thread, and keeps who is online in a :class:`Registry`."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    request_queue_size = 1024
    #: Set by main(): the process exits right after stop(), and its exit
    #: closes every socket at once. Shutting thousands of sockets down one
    #: by one would wake every handler thread at the same moment, all
    #: wanting the GIL, which takes seconds.
    exits_after_stop = False

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.registry = Registry()
        self.announcer = Announcer(self, config.announce_limit)
        self.deadlines = RegisterDeadlines(self.registry,
                                           config.register_timeout)
        self._password = (config.admin_password.encode(protocol.ENCODING)
                          if config.admin_password else b"")
        self._connections: Set[Session] = set()
        self._connection_count = 0  # including those not yet in the set
        self._connections_lock = threading.Lock()
        self._all_closed = threading.Condition(self._connections_lock)
        self._stopping = False
        self._stopped = threading.Event()
        self._accepting = False
        self.tls_context = (make_tls_context(config.tls_cert, config.tls_key)
                            if config.tls_cert else None)
        raise_open_file_limit()
        threading.stack_size(THREAD_STACK_BYTES)
        family = socket.getaddrinfo(config.host or None, config.port,
                                    type=socket.SOCK_STREAM)[0][0]
        self.address_family = family
        super().__init__((config.host, config.port), ChatHandler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and \
                self.config.host in ("::", ""):
            # Dual stack: '::' takes IPv4 clients too, where the OS allows.
            try:
                self.socket.setsockopt(socket.IPPROTO_IPV6,
                                       socket.IPV6_V6ONLY, 0)
            except (AttributeError, OSError):
                pass
        super().server_bind()

    @property
    def address(self) -> Tuple[str, int]:
        """The (host, port) the server listens on; the real port for 0."""
        return self.server_address[0], self.server_address[1]

    # -- Life cycle

    def serve_forever(self,
                      poll_interval: float = ACCEPT_POLL_SECONDS) -> None:
        """Accept connections until :meth:`stop`."""
        self._accepting = True
        super().serve_forever(poll_interval)

    def start(self) -> None:
        """Serve in a background thread (for tests and embedding)."""
        self._accepting = True
        threading.Thread(target=self.serve_forever, name="accept",
                         daemon=True).start()
        self.log_listening()

    def log_listening(self) -> None:
        log.info("listening on %s%s", format_address(self.server_address),
                 " (TLS)" if self.tls_context else "")

    def stop(self, reason: str = "", from_handler: bool = False) -> None:
        """Stop accepting, give every user the shutdown notice after what
        was already queued for them, close every connection, and return.
        Safe to call more than once and from any thread; a connection's
        handler calling it says so, so as not to wait for itself."""
        with self._connections_lock:
            first_call = not self._stopping
            self._stopping = True
        if not first_call:
            self._stopped.wait(CLOSE_GRACE_SECONDS * 2)
            return
        log.info("shutting down%s", f" ({reason})" if reason else "")
        if self._accepting:
            self.shutdown()  # returns once serve_forever has stopped
        self.server_close()
        self.announcer.stop()
        self.deadlines.stop()
        notice = protocol.encode_line(protocol.format_shutdown(reason))
        with self._connections_lock:
            everyone = list(self._connections)
        for session in everyone:
            session.outbox.put(notice, last=True)
            session.outbox.flush()
        deadline = time.monotonic() + CLOSE_GRACE_SECONDS
        for session in everyone:
            session.outbox.wait_drained(max(0.0, deadline - time.monotonic()))
        if self.exits_after_stop:
            log.info("stopped; %d connections close as the process exits",
                     len(everyone))
        else:
            for session in everyone:
                session.outbox.close()
            # Let the handlers finish (and log who left) before saying so.
            with self._all_closed:
                self._all_closed.wait_for(
                    lambda: self._connection_count <= int(from_handler),
                    max(0.0, deadline - time.monotonic()))
            log.info("stopped")
        self._stopped.set()

    def wait_stopped(self, timeout: Optional[float] = None) -> bool:
        """Wait until :meth:`stop` has finished; False on timeout."""
        return self._stopped.wait(timeout)

    @property
    def stopping(self) -> bool:
        return self._stopping

    # -- Connections

    def process_request(self, request: socket.socket,
                        client_address: Address) -> None:
        # Count connections here, in the accept loop, so a burst of them
        # cannot overshoot the limit; refusing needs one short non-blocking
        # send to a new socket, which cannot block.
        with self._connections_lock:
            full = self._connection_count >= self.config.max_clients
            if not full:
                self._connection_count += 1
        if full:
            log.warning("%s: refused, server full",
                        format_address(client_address))
            try:
                request.send(protocol.encode_line(protocol.format_server_full(
                    self.config.max_clients)), _DONTWAIT)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread could be started for it
            self._count_out()
            raise

    def process_request_thread(self, request: socket.socket,
                               client_address: Address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._count_out()

    def _count_out(self) -> None:
        with self._connections_lock:
            self._connection_count -= 1
            if self._connection_count <= 1:
                self._all_closed.notify_all()

    def connected(self, session: Session) -> bool:
        """Note a new connection, so that :meth:`stop` can reach it; False
        when the server is already stopping."""
        with self._connections_lock:
            if self._stopping:
                return False
            self._connections.add(session)
        log.info("%s: connected", session.name)
        return True

    def disconnected(self, session: Session) -> None:
        """A connection ended: take its user out and tell the others."""
        with self._connections_lock:
            self._connections.discard(session)
        if self.registry.remove(session) and not self._stopping:
            self.announcer.left(session.nick)
        why = f": {session.close_reason}" if session.close_reason else ""
        if session.nick:  # registered (perhaps kicked already)
            log.info("%s (%s) left%s", session.nick, session.name, why)
        else:
            log.info("%s: disconnected%s", session.name, why)
        session.outbox.close()

    def join(self, session: Session, nick: str) -> bool:
        """Register ``session`` as ``nick`` and greet it; False if taken."""

        def greet(first: List[Session], count: int) -> None:
            users = protocol.format_users(
                [s.nick for s in first], nick,
                [s.nick for s in first if s.is_admin], total=count)
            lines = (protocol.format_welcome(nick),
                     protocol.format_commands_hint(), users)
            session.outbox.put(
                b"".join(protocol.encode_line(text) for text in lines))

        if not self.registry.add(session, nick, greet):
            return False
        log.info("%s registered as %s", session.name, nick)
        self.announcer.joined(session)
        return True

    def kick(self, target: Session, admin: Session, reason: str) -> None:
        """Disconnect ``target``, telling it and everyone else why."""
        if not self.registry.remove(target):
            return
        log.info("%s (%s) kicked %s (%s)%s", admin.nick, admin.name,
                 target.nick, target.name, f": {reason}" if reason else "")
        target.close_reason = f"kicked by {admin.nick}"
        target.send_last(protocol.format_you_were_kicked(admin.nick, reason))
        target.outbox.close()
        self.broadcast(protocol.format_kicked(target.nick, admin.nick, reason))

    def broadcast(self, text: str, exclude: Optional[Session] = None,
                  touched: Optional[Set[Outbox]] = None) -> bool:
        """Send ``text`` to everyone online but ``exclude``; encoded once.

        With ``touched``, outboxes are only queued and added to it for the
        caller to flush; else they are flushed here. False if nobody was
        there to receive it.
        """
        data = protocol.encode_line(text)
        sent = False
        for session in self.registry.sessions():
            if session is not exclude:
                session.outbox.put(data)
                sent = True
                if touched is None:
                    session.outbox.flush()
                else:
                    touched.add(session.outbox)
        return sent

    def check_password(self, attempt: str) -> bool:
        """Compare in constant time, so timing does not leak the password."""
        return bool(self._password) and hmac.compare_digest(
            attempt.encode(protocol.ENCODING), self._password)

    def handle_error(self, request: socket.socket,
                     client_address: Address) -> None:
        log.exception("%s: error", format_address(client_address))


def raise_open_file_limit() -> None:
    """Raise this process's open-file limit to its hard limit, so that
    thousands of users can really connect."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


# --- Command line ------------------------------------------------------------


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run the chat server. Users connect with client.py or"
                    " with 'nc HOST PORT'.")
    add = parser.add_argument
    add("--host", default=protocol.DEFAULT_HOST,
        help="address to listen on; '::' for every IPv6 and IPv4 address,"
             " '0.0.0.0' for every IPv4 one (default %(default)s)")
    add("--port", type=int, default=protocol.DEFAULT_PORT,
        help="TCP port; 0 picks a free one, named in the log"
             " (default %(default)s)")
    add("--admin-password", default=None,
        help=f"password for -admin; else ${PASSWORD_ENV}; else a random one"
             " is made and printed at start")
    add("--max-line", type=int, default=protocol.MAX_LINE_BYTES,
        metavar="BYTES",
        help="longest line a user may send (default %(default)s)")
    add("--outbox-limit", type=int, default=protocol.DEFAULT_OUTBOX_LIMIT,
        metavar="BYTES",
        help="bytes queued for a user who does not read before the server"
             " disconnects them (default %(default)s)")
    add("--rate-limit", type=float, default=protocol.DEFAULT_RATE_LIMIT,
        metavar="LINES_PER_SECOND",
        help="flood control: lines per second per connection on average;"
             " 0 turns it off (default %(default)s)")
    add("--rate-burst", type=int, default=protocol.DEFAULT_RATE_BURST,
        metavar="LINES",
        help="flood control: lines allowed at once after a pause"
             " (default %(default)s)")
    add("--max-clients", type=int, default=protocol.DEFAULT_MAX_CLIENTS,
        metavar="N", help="connections at once (default %(default)s)")
    add("--register-timeout", type=float,
        default=protocol.DEFAULT_REGISTER_TIMEOUT, metavar="SECONDS",
        help="time a new connection has to choose a nickname"
             " (default %(default)s)")
    add("--announce-limit", type=int, default=protocol.DEFAULT_ANNOUNCE_LIMIT,
        metavar="N",
        help="rooms up to N users hear each join and leave as it happens;"
             " larger rooms get one summary line a second"
             " (default %(default)s)")
    add("--tls-cert", default="", metavar="FILE",
        help="certificate (PEM) to serve TLS with; needs --tls-key")
    add("--tls-key", default="", metavar="FILE",
        help="private key (PEM) for --tls-cert")
    add("-v", "--verbose", action="store_true",
        help="log every command (never its text or passwords)")
    args = parser.parse_args(argv)
    for name in ("max_line", "outbox_limit", "rate_burst", "max_clients"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.rate_limit < 0 or args.register_timeout <= 0:
        parser.error("--rate-limit must be >= 0, --register-timeout > 0")
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s")
    password = args.admin_password or os.environ.get(PASSWORD_ENV, "")
    if password:
        log.info("admin password set from %s", "--admin-password"
                 if args.admin_password else f"${PASSWORD_ENV}")
    else:
        password = secrets.token_urlsafe(9)
        # On the console only, never in the log.
        print(f"Admin password for this run: {password}", file=sys.stderr,
              flush=True)
    config = ServerConfig(
        host=args.host, port=args.port, admin_password=password,
        max_line=args.max_line, outbox_limit=args.outbox_limit,
        rate_limit=args.rate_limit, rate_burst=args.rate_burst,
        max_clients=args.max_clients, register_timeout=args.register_timeout,
        announce_limit=args.announce_limit, tls_cert=args.tls_cert,
        tls_key=args.tls_key)
    try:
        server = ChatServer(config)
    except ssl.SSLError as error:
        log.error("cannot use the TLS certificate or key: %s", error)
        return 1
    except OSError as error:
        log.error("cannot listen on %s port %s: %s", args.host, args.port,
                  error.strerror or error)
        return 1

    def on_signal(signum: int, frame: object) -> None:
        # stop() waits for serve_forever, which runs in this (main) thread,
        # so it must run in another one.
        name = signal.Signals(signum).name
        threading.Thread(target=server.stop, args=(f"{name} at the server",),
                         daemon=True).start()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    server.exits_after_stop = True
    server.log_listening()
    server.serve_forever()
    server.wait_stopped(CLOSE_GRACE_SECONDS * 3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
