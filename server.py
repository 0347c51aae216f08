"""The chat server: the TCP front-end of the chat room in ``room.py``.

Run ``python3 server.py --help`` for the options (they are the fields of
``config.ServerConfig``). The server is a ``socketserver.ThreadingTCPServer``:
each connection gets a thread (:class:`ChatHandler`) that does the TLS
handshake if there is one, reads lines and hands them to the room, pacing
its reading for flood control (``guard.py`` keeps what each address may
do). What the room sends to a connection goes through the connection's
``outbox.Outbox``, so a user who stops reading never blocks the
others. The rules of the chat (nicknames, commands, who
hears what) are all in the room; sockets and TLS in ``transport.py``.

In-process use (tests)::

    server = ChatServer(ServerConfig(port=0, admin_password="pw"))
    server.start()          # serves in a background thread
    host, port = server.address
    server.stop()           # tells everyone, closes every connection
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import itertools
import logging
import os
import queue
import re
import secrets
import signal
import socket
import socketserver
import ssl
import sys
import tempfile
import threading
import time
from typing import Iterator, List, Optional, Sequence, Tuple, Type

import config
import guard
import protocol
import serverlog
import transport
import web
from config import ServerConfig
from outbox import Outbox
from protocol import Frame
from members import GONE, Address, Member, format_address
from room import Room
from transcript import Transcript
from transport import ACCEPT_POLL_SECONDS, DONTWAIT

__all__ = ["ChatServer", "ServerConfig", "main"]

log = logging.getLogger("chat")

#: Stack size for connection threads. Python code needs little C stack, and
#: the default 8 MiB of address space per thread adds up at 10,000 users.
THREAD_STACK_BYTES = 256 * 1024
#: How long a thread may run on before it must hand the GIL to a waiting
#: one (Python's default is 0.005 s). A handler thread gives the GIL up
#: by itself long before that, at every socket call; what a forced switch
#: mostly interrupts is a thread holding a lock (the room's, an outbox's),
#: and then every thread that wants that lock queues behind it until it
#: gets the GIL back, after every other runnable thread. When thousands
#: of users drop at once that is thousands of threads: a longer interval
#: makes such switches rare (the churn benchmark in README.md).
GIL_SWITCH_SECONDS = 0.2


class Housekeeper:
    """One thread for the server's timed chores: it tells the room when a
    member's time to choose a nickname is up, and ticks the room's batched
    announcements every ``config.ANNOUNCE_INTERVAL``.

    Every connection gets the same time to register, counted from when it
    was accepted (a TLS handshake spends it too); handshakes end in any
    order, so the deadlines wait in a heap, soonest first. (A socket
    timeout would also do, but while one is set, every send on that socket
    first waits until the socket is writable, and the outbox's sends must
    never wait.)
    """

    def __init__(self, room: Room, register_timeout: float) -> None:
        self._room = room
        self._timeout = register_timeout
        self._queue: List[Tuple[float, int, Member]] = []
        self._count = itertools.count()  # ties go in arrival order
        self._wake = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop,
                                        name="housekeeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def watch(self, member: Member,
              since: Optional[float] = None) -> None:
        """Give ``member`` until ``since`` (a ``time.monotonic()``, by
        default now) plus the registration time to choose a nickname."""
        start = time.monotonic() if since is None else since
        entry = (start + self._timeout, next(self._count), member)
        with self._wake:
            heapq.heappush(self._queue, entry)
            if self._queue[0] is entry:
                self._wake.notify()

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()

    def _loop(self) -> None:
        next_tick = time.monotonic() + config.ANNOUNCE_INTERVAL
        while True:
            due: List[Member] = []
            with self._wake:
                if self._stopped:
                    return
                now = time.monotonic()
                while self._queue and self._queue[0][0] <= now:
                    due.append(heapq.heappop(self._queue)[2])
                wake_at = next_tick
                if self._queue:
                    wake_at = min(wake_at, self._queue[0][0])
                if not due and now < next_tick:
                    self._wake.wait(wake_at - now)
                    continue
            for member in due:
                self._room.expire(member)
            if now >= next_tick:
                next_tick = now + config.ANNOUNCE_INTERVAL
                self._room.tick()


class ChatHandler(socketserver.BaseRequestHandler):
    """Serves one connection: TLS handshake, then lines in, to the room.

    Frames are read in bursts (whatever one ``recv`` brought) and handed to
    the room a burst at a time, so the replies to a burst leave in one send
    per recipient; flood control splits a burst where it must pause.
    """

    server: ChatServer
    #: What the room's lines go through (the web handler's frames them).
    outbox_class: Type[Outbox] = Outbox

    def setup(self) -> None:
        # One deadline from here covers the TLS handshake and choosing a
        # nickname: a byte now and then cannot stretch either.
        self.accepted = time.monotonic()
        self.sock: socket.socket = self.request
        transport.configure_socket(self.sock)
        context = self.server.tls_context
        self.tls = (transport.TLSLayer(context, server_side=True)
                    if context else None)
        self.outbox = self.make_outbox()
        self.decoder = self.make_decoder()
        # Shared by every connection from the address: ten connections
        # flood no faster than one.
        self.bucket = self.server.room.guard.bucket(
            guard.host_of(self.client_address))
        self.read_error = ""
        self.cut = False  # the server ended the connection, not the network

    def make_outbox(self) -> Outbox:
        """The connection's outbox (of :attr:`outbox_class`): it encrypts
        with TLS, if there is TLS, and ends TLS politely (close_notify)
        when it closes."""
        return self.outbox_class(
            self.sock, self.server.config.outbox_limit,
            self.tls.encrypt if self.tls else None,
            grace=config.CLOSE_GRACE_SECONDS,
            goodbye=self.tls.close_notify if self.tls else None)

    def make_decoder(self) -> transport.LineDecoder:
        """Bytes received -> lines for the room (called after
        :meth:`make_outbox`)."""
        # One byte more than a line may have: room for the "\r" of a line
        # ending in "\r\n", which the room does not count (Room._fits).
        return transport.LineDecoder(self.tls,
                                     self.server.config.max_line + 1)

    def handle(self) -> None:
        room = self.server.room
        if self.tls is not None and not self.handshake():
            return
        if not self.begin():
            return
        member = room.connect(self.outbox, self.client_address)
        if member is None:
            return  # the server is stopping
        self.server.housekeeper.watch(member, self.accepted)
        farewell = ""
        try:
            for frames in self.bursts():
                member = self.pass_on(member, frames)
                if member.state == GONE or member.link is not self.outbox:
                    break  # left, kicked, out of time, or replaced
        except protocol.FramingError as error:
            self.read_error = str(error)
            self.cut = True
            farewell = protocol.format_flooding()
        except Exception:  # never let a bug in one handler go unlogged
            log.exception("%s: unexpected error", member.name)
            self.read_error = "internal error"
            self.cut = True
        finally:
            # This thread reads no more: closing the outbox need not wake
            # it (the socket is closed when the handler returns).
            self.outbox.reader_left()
            # The network dropped it (the user may come back for the
            # seat), unless the server cut it: a broken stream either way,
            # a reader too slow, a bug. A failed send is the network's.
            dropped = not self.cut and (not self.outbox.failure
                                        or self.outbox.failure_is_network)
            room.disconnect(member, self.outbox.failure or self.read_error,
                            farewell, link=self.outbox, dropped=dropped)

    def finish(self) -> None:
        # socketserver closes the socket when this returns: let the last
        # lines (goodbye, errors, the shutdown notice) leave first.
        self.outbox.wait_drained(config.CLOSE_GRACE_SECONDS)

    def begin(self) -> bool:
        """Whatever comes before the chat on this kind of connection;
        False if the connection is over. Nothing on the TCP port; the web
        handler answers an HTTP request here (web.WebSession)."""
        return True

    def handshake(self) -> bool:
        """The TLS handshake, here in the connection's own thread so that a
        slow or broken one holds up nobody else."""
        name = format_address(self.client_address)
        try:
            transport.handshake(self.sock, self.tls, min(
                config.TLS_HANDSHAKE_SECONDS,
                self.accepted + self.server.config.register_timeout
                - time.monotonic()))
            return True
        except OSError as error:  # ssl.SSLError, timeout, reset, closed
            log.info("%s: TLS handshake failed: %s", name, error)
            # Most likely a plain-text client: tell it in plain text.
            try:
                self.sock.send(self.tls_refusal(), DONTWAIT)
            except OSError:
                pass
            return False

    def tls_refusal(self) -> bytes:
        """What a plain-text client of a TLS port is told, in plain text
        (the web handler says it in HTTP)."""
        return protocol.encode_line(protocol.format_tls_required())

    def bursts(self) -> Iterator[List[Frame]]:
        """Framed lines from the socket, a ``recv`` at a time, until the
        peer closes or the connection breaks (said in ``read_error``)."""
        # TLS 1.3: lines the client sent right after its Finished message
        # may have come with it; they wait in the TLS buffers already.
        data = b""
        # recv() holds a buffer of the size asked for while it waits: an
        # idle user's thread asks for little (every idle connection would
        # hold 64 KiB otherwise, some of it in memory), a busy one for a
        # lot, after a read that filled what it asked for.
        size = transport.IDLE_RECV_BYTES
        while True:
            try:
                frames = self.decoder.feed(data)
            except ssl.SSLError as error:  # a broken TLS stream
                self.read_error = str(error)
                self.cut = True
                return
            if frames:
                yield frames
            if self.decoder.ended:
                return  # the peer ended TLS (close_notify)
            try:
                data = self.sock.recv(size)
            except OSError as error:  # reset, or shut down by the outbox
                self.read_error = str(error)
                return
            if not data:
                return  # the peer closed the connection
            size = (transport.RECV_BYTES if len(data) == size
                    else transport.IDLE_RECV_BYTES)

    def pass_on(self, member: Member, frames: Sequence[Frame]) -> Member:
        """Give the room ``frames`` at the pace the token bucket allows:
        not reading while it says wait is the back-pressure. Returns the
        member the connection now is (a seat, after ``-resume``)."""
        start = 0
        for index in range(len(frames)):
            pause = self.bucket.delay()
            if pause:
                if index > start:
                    member = self.server.room.receive(
                        member, frames[start:index], self.outbox)
                    start = index
                time.sleep(pause)
        return self.server.room.receive(member, frames[start:], self.outbox)


class WebHandler(web.WebSession, ChatHandler):
    """A browser's connection: an HTTP request, then (after the WebSocket
    upgrade) the same chat session as on the TCP port; see web.py."""


class ChatServer(transport.ListeningServer):
    """The chat over TCP: accepts connections, each served by a
    :class:`ChatHandler` in its own thread, for one :class:`room.Room`.

    The constructor changes nothing outside this object (``main()`` sets
    the process-wide things: thread stack size, open-file limit, logging).
    """

    #: Set by main(): the process exits right after stop(), and its exit
    #: closes every socket at once. Shutting thousands of sockets down one
    #: by one would wake every handler thread at the same moment, all
    #: wanting the GIL, which takes seconds.
    exits_after_stop = False

    def __init__(self, settings: ServerConfig) -> None:
        self.config = settings
        # Opened first: a transcript that cannot be written is an error at
        # start, before anything is bound.
        self.transcript = (Transcript(settings.log,
                                      config.TRANSCRIPT_QUEUE_LINES)
                           if settings.log else None)
        self.room = Room(settings, on_shutdown=self.stop_soon,
                         transcript=self.transcript.write
                         if self.transcript else None,
                         motd=read_motd(settings.motd)
                         if settings.motd else ())
        self.housekeeper = Housekeeper(self.room, settings.register_timeout)
        self.tls_context = (make_tls_context(settings.tls_cert,
                                             settings.tls_key)
                            if settings.tls_cert else None)
        # Connections are counted without a lock their threads could queue
        # on: the accept loops alone count them in (_connection_count, under
        # _seat_lock, which only the two accept loops, TCP and web, take),
        # and a handler thread that ends only drops a token into _ended, a
        # SimpleQueue (it takes no lock a thread could wait on); the
        # accept loops take the tokens out as they count.
        self._seat_lock = threading.Lock()
        self._connection_count = 0  # accepted; by the accept loops only
        self._ended: "queue.SimpleQueue[None]" = queue.SimpleQueue()
        # _count_lock guards _stopping; stop() waits on _all_closed.
        self._count_lock = threading.Lock()
        self._all_closed = threading.Condition(self._count_lock)
        self._stopping = False
        self._stopped = threading.Event()
        self._serving = False
        self.address_family = socket.getaddrinfo(
            settings.host or None, settings.port,
            type=socket.SOCK_STREAM)[0][0]
        try:
            super().__init__((settings.host, settings.port), ChatHandler)
        except BaseException:
            if self.transcript is not None:
                self.transcript.close()
            raise
        self.housekeeper.start()
        # The web page and its WebSocket endpoint, on a port of their own
        # (None if off, or if that port cannot be had: logged).
        self.web = web.open_web(self, WebHandler)

    @property
    def address(self) -> Tuple[str, int]:
        """The (host, port) the server listens on; the real port for 0."""
        return self.server_address[0], self.server_address[1]

    @property
    def connection_count(self) -> int:
        """Connections being served now (registered or not)."""
        return self._connection_count - self._ended.qsize()

    @property
    def stopping(self) -> bool:
        return self._stopping

    # -- Life cycle

    def serve_forever(self,
                      poll_interval: float = ACCEPT_POLL_SECONDS) -> None:
        """Accept connections until :meth:`stop`."""
        self._serving = True
        if self.web is not None:
            self.web.start()
        super().serve_forever(poll_interval)

    def start(self) -> None:
        """Serve in a background thread (for tests and embedding)."""
        self._serving = True
        threading.Thread(target=self.serve_forever, name="accept",
                         daemon=True).start()
        self.log_listening()

    def log_listening(self) -> None:
        log.info("listening on %s%s", format_address(self.server_address),
                 " (TLS)" if self.tls_context else "",
                 extra={"always": True})
        if self.web is not None:
            log.info("%s", self.web.describe(), extra={"always": True})

    def stop(self, reason: str = "") -> None:
        """Stop accepting, give every user the shutdown notice after what
        was already queued for them, close every connection, and return.
        Safe to call more than once, from any thread but the one running
        :meth:`serve_forever` (signal handlers and ``down server`` hand it
        to a thread of its own)."""
        with self._count_lock:
            first_call = not self._stopping
            self._stopping = True
        if not first_call:
            self._stopped.wait(config.CLOSE_GRACE_SECONDS * 2)
            return
        log.info("shutting down%s", f" ({reason})" if reason else "",
                 extra={"always": True})
        deadline = time.monotonic() + config.CLOSE_GRACE_SECONDS
        if self._serving:
            self.shutdown()  # returns once serve_forever has stopped
        self.server_close()
        if self.web is not None:
            self.web.stop()
        self.housekeeper.stop()
        members = self.room.shut_down(reason)
        for member in members:
            member.link.wait_drained(max(0.0, deadline - time.monotonic()))
        if self.exits_after_stop:
            log.info("stopped; %d connection%s close as the process exits",
                     len(members), "" if len(members) == 1 else "s",
                     extra={"always": True})
        else:
            for member in members:
                member.link.close()
            # Let the handlers finish (and log who left) before saying so.
            # A thread that ended just as stopping began may not have
            # notified: look again every poll interval.
            with self._all_closed:
                while self.connection_count > 0 and \
                        time.monotonic() < deadline:
                    self._all_closed.wait(min(
                        ACCEPT_POLL_SECONDS, deadline - time.monotonic()))
            log.info("stopped", extra={"always": True})
        if self.transcript is not None:
            self.transcript.close()
        self._stopped.set()

    def stop_soon(self, reason: str) -> None:
        """``down server``: stop, from a thread of its own (the room calls
        this from a handler, with its lock held)."""
        threading.Thread(target=self.stop, args=(reason,), name="stop",
                         daemon=True).start()

    def wait_stopped(self, timeout: Optional[float] = None) -> bool:
        """Wait until :meth:`stop` has finished; False on timeout."""
        return self._stopped.wait(timeout)

    # -- Connections

    def take_seat(self, client_address: Address,
                  connect: bool = True) -> Optional[str]:
        """Count a new connection in, from an accept loop (this server's
        or the web one's): None if it may stay, else the one line to
        refuse it with. Counting in the accept loop means a burst of
        connections cannot overshoot the limits. A connection let in gives
        its seat back with :meth:`give_seat_back` when it ends. With
        ``connect`` False (the web port, which cannot yet tell a request
        for the page from a chat connection) it is not counted towards
        ``--connects-per-minute``: see ``guard.Guard.admit``."""
        with self._seat_lock:
            for _ in range(self._ended.qsize()):  # the threads that ended
                self._ended.get_nowait()
                self._connection_count -= 1
            if self._connection_count >= self.config.max_clients:
                return protocol.format_server_full(self.config.max_clients)
            # Then what this one address may have: a host cannot take
            # every seat, reconnect in a loop, or come back straight after
            # a kick.
            why = self.room.guard.admit(guard.host_of(client_address),
                                        connect)
            if why is not None:
                return protocol.format_refused(why)
            self._connection_count += 1
            return None

    def give_seat_back(self, client_address: Address) -> None:
        """A connection :meth:`take_seat` let in has ended (or no thread
        could be started for it). Takes no lock but the guard's."""
        self.room.guard.release(guard.host_of(client_address))
        self._count_out()

    def process_request(self, request: socket.socket,
                        client_address: Address) -> None:
        refusal = self.take_seat(client_address)
        if refusal is not None:
            log.info("%s: %s", format_address(client_address),
                     refusal[len(protocol.ERROR):],
                     extra={"burst": "connections refused"})
            self._refuse(request, refusal)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread could be started for it
            self.give_seat_back(client_address)
            raise

    def _refuse(self, request: socket.socket, line: str) -> None:
        """Send a refused connection its one line, and close it."""
        try:
            request.send(protocol.encode_line(line), DONTWAIT)
        except OSError:
            pass
        self.shutdown_request(request)

    def process_request_thread(self, request: socket.socket,
                               client_address: Address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.give_seat_back(client_address)

    def _count_out(self) -> None:
        """A connection's thread ends (or none could be started for it)."""
        self._ended.put(None)
        if self._stopping:  # stop() may be waiting for the last one
            with self._all_closed:
                self._all_closed.notify_all()


def make_tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context: TLS 1.2 or newer, with the given certificate.
    Raises OSError naming the file that cannot be read, ssl.SSLError for
    files that are not a PEM certificate and its key."""
    for path in (cert, key):
        with open(path, "rb"):  # OpenSSL's own error would not name it
            pass
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def read_motd(path: str) -> List[str]:
    """The message of the day from ``path``: its first lines, control
    characters shown as U+FFFD (the file is the operator's, but a stray
    escape sequence must not reach every terminal), blank lines at either
    end left out. Raises OSError naming the file."""
    with open(path, encoding=protocol.ENCODING, errors="replace") as file:
        lines: List[str] = []
        for line in file:
            line = line.rstrip("\r\n").expandtabs(4)
            line = protocol.CONTROL_RE.sub("\ufffd", line)
            line = line[:config.MAX_MOTD_LINE_CHARS].rstrip()
            if line or lines:  # blank lines at the top do not count
                lines.append(line)
            if len(lines) >= config.MAX_MOTD_LINES:
                break
    while lines and not lines[-1]:
        lines.pop()
    return lines


def option_problem(settings: ServerConfig, error: OSError) -> str:
    """What is wrong with an option, for an error the server met while
    being made (before it binds); "" when it is none of its files."""
    if isinstance(error, ssl.SSLError):
        # "[SSL] PEM lib (_ssl.c:3905)" says "PEM lib".
        reason = error.reason or re.sub(r"^\[\w+\] | \(_ssl\.c:\d+\)$", "",
                                        str(error))
        return (f"--tls-cert {settings.tls_cert} --tls-key {settings.tls_key}:"
                f" not a PEM certificate and its key ({reason})")
    why = error.strerror or str(error)
    for option, value in (("--tls-cert", settings.tls_cert),
                          ("--tls-key", settings.tls_key),
                          ("--log", settings.log),
                          ("--motd", settings.motd)):
        if value and error.filename == value:
            return f"{option} {value}: {why}"
    return ""


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


def admin_password(settings: ServerConfig) -> Tuple[str, str]:
    """The admin password and where it came from: ``--admin-password``,
    else ``--admin-password-file`` (its first line), else the environment
    variable; ("", "") for none. Raises ValueError, naming the option,
    for a file that cannot be read or holds no password."""
    if settings.admin_password and settings.admin_password_file:
        raise ValueError("--admin-password and --admin-password-file:"
                         " give one of them")
    if settings.admin_password:
        return settings.admin_password, "--admin-password"
    path = settings.admin_password_file
    if path:
        try:
            with open(path, encoding="utf-8") as file:
                password = file.readline().strip()
        except (OSError, UnicodeDecodeError) as error:
            why = getattr(error, "strerror", None) or str(error)
            raise ValueError(f"--admin-password-file {path}: {why}"
                             ) from None
        if not password:
            raise ValueError(f"--admin-password-file {path}: no password"
                             " on its first line")
        return password, f"--admin-password-file {path}"
    password = os.environ.get(config.PASSWORD_ENV, "")
    return password, (f"${config.PASSWORD_ENV}" if password else "")


def show_password(password: str) -> str:
    """Show a generated admin password to whoever started the server, and
    never on the log's stream (``2> server.log``, a journal, container
    logs keep that): on the terminal (``/dev/tty``) if there is one, else
    in a new file only this user can read, which the log names. Returns
    that file's path ("" for the terminal): the password is for this run
    only, so the server removes the file when it stops."""
    line = f"Admin password for this run: {password}\n"
    try:
        with open("/dev/tty", "w", encoding="utf-8") as tty:
            tty.write(line)
        return ""
    except OSError:  # no controlling terminal: a service, a container
        pass
    handle, path = tempfile.mkstemp(prefix="chat-admin-password-",
                                    suffix=".txt")  # mode 0600
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        file.write(line)
    log.info("no terminal: the admin password for this run is in %s"
             " (readable by this user only)", path, extra={"always": True})
    return path


def main(argv: Optional[List[str]] = None) -> int:
    args = config.parse_args(argv)
    # Connection threads only queue their log records; one thread writes.
    listener = serverlog.start(logging.DEBUG if args.verbose
                               else logging.INFO)
    # Whatever clients do, the log grows by a bounded number of lines a
    # second (guard.LogBudget); the server's own start and stop always
    # get in.
    log.addFilter(guard.LogBudget())
    try:
        return serve(args)
    finally:
        serverlog.stop(listener)


def serve(args: argparse.Namespace) -> int:
    """main(), once the log is set up."""
    settings: ServerConfig = args.config
    try:
        password, source = admin_password(settings)
    except ValueError as error:  # a bad --admin-password-file
        print(f"{os.path.basename(sys.argv[0])}: error: {error}",
              file=sys.stderr, flush=True)
        return 2
    generated = not password
    if generated:
        password = secrets.token_urlsafe(9)
    settings = dataclasses.replace(settings, admin_password=password)
    # Process-wide settings, made here rather than by ChatServer, which
    # may be one of many in a test process.
    raise_open_file_limit()
    threading.stack_size(THREAD_STACK_BYTES)
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    try:
        server = ChatServer(settings)
    except OSError as error:  # ssl.SSLError is one too
        problem = option_problem(settings, error)
        if problem:  # a bad option: one line, status 2, as argparse does
            print(f"{os.path.basename(sys.argv[0])}: error: {problem}",
                  file=sys.stderr, flush=True)
            return 2
        log.error("cannot listen on %s port %s: %s", settings.host,
                  settings.port, error.strerror or error)
        return 1
    password_file = show_password(password) if generated else ""
    if not generated:
        log.info("admin password set from %s", source)
        if source == "--admin-password":
            log.warning("--admin-password is visible to every user of this"
                        " machine (ps); prefer --admin-password-file or"
                        " $%s", config.PASSWORD_ENV)
        if len(password) < config.ADMIN_PASSWORD_MIN_CHARS:
            log.warning("the admin password is short (%d characters):"
                        " anyone may try it; use %d or more",
                        len(password), config.ADMIN_PASSWORD_MIN_CHARS)

    def on_signal(signum: int, frame: object) -> None:
        # stop() waits for serve_forever, which runs in this (main) thread,
        # so it must run in another one.
        server.stop_soon(f"{signal.Signals(signum).name} at the server")

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    server.exits_after_stop = True
    server.log_listening()
    server.serve_forever()
    server.wait_stopped(config.CLOSE_GRACE_SECONDS * 3)
    if password_file:
        try:
            os.remove(password_file)
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
