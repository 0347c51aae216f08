"""Isolation: one recipient's broken transport never surfaces in another
user's thread.

A TLS peer that sends a forged record (a well-formed application_data
header followed by random bytes, so decryption fails with a bad MAC) has a
broken TLS stream on the server. Whatever the server does with that
connection, the users who are chatting at the same moment, and whose lines
the server is encrypting for that peer, must not notice: no error line, no
disconnect, no lost, doubled or reordered line, no ghost in ``-users``, and
no thread or file descriptor left behind once everyone has gone.

Black box: everything is observed through sockets on 127.0.0.1, plus this
process's thread count and open descriptors. Each user's socket is driven by
exactly one thread at a time (TLS over memory buffers, like the real
client), so the test's own TLS cannot be the thing that breaks. Every wait
is on a condition with a deadline; the only timed pause is the pacing of
the load, which is not synchronisation.
"""

from __future__ import annotations

import os
import selectors
import socket
import ssl
import struct
import threading
import time
from typing import Callable, List, Optional, Sequence, Tuple

import pytest

import protocol
import transport
from helpers import CERT, DEADLINE, KEY, wait_until


#: Lines each user broadcasts during the load, and the bytes added to
#: each (so that what is queued for a peer that does not read soon fills
#: its socket, and stays queued in the server).
LINES_PER_USER = 2000
LINE_PADDING = 1500
#: Seconds the load is spread over.
LOAD_SECONDS = 3.0
#: Seconds a test may wait for threads and descriptors to go back to what
#: they were before its clients started.
SETTLE_SECONDS = 5.0
#: Peers breaking their TLS streams, one after another, in each variant.
SILENT_PEERS = 4
READING_PEERS = 12
#: A silent peer's receive buffer, in bytes (the kernel may double it).
PEER_BUFFER = 4096
#: The server's per-connection queue: large enough that no silent peer is
#: cut for not reading before it has broken its stream.
OUTBOX_LIMIT = 64 * 1024 * 1024
#: The users who must not notice anything.
NICKS = ("ann", "ben", "cat")
#: What a user sends last, after its numbered lines.
MARKER = "end"


def forged_record(length: int = 64) -> bytes:
    """A well-formed TLS application_data record (type 0x17, version 3.3)
    whose body is random: it can only fail to decrypt (bad record MAC)."""
    return b"\x17\x03\x03" + struct.pack(">H", length) + os.urandom(length)


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


class TLSUser:
    """A chat user over TLS: a plain TCP socket with TLS run over memory
    buffers. Until :meth:`start`, the test's thread drives it; after, only
    its own thread does (it sends what it is given and keeps every line it
    receives in :attr:`lines`) until :meth:`join`."""

    def __init__(self, address: Tuple[str, int], nick: str,
                 receive_buffer: int = 0) -> None:
        self.nick = nick
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer:  # before connecting, so the window is small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                 receive_buffer)
        self.sock.settimeout(DEADLINE)
        try:
            self.sock.connect(address)
        except OSError:
            self.sock.close()
            raise
        context = ssl.create_default_context(cafile=CERT)
        self._tls = transport.TLSLayer(context, server_hostname=address[0])
        transport.handshake(self.sock, self._tls, DEADLINE)
        self._decoder = transport.LineDecoder(self._tls, 1024 * 1024)
        #: Every line received, in order (appended by one thread only).
        self.lines: List[str] = []
        self.eof = False            # the server closed the connection
        self.error = ""             # why this client's loop gave up, if so
        self.sent = 0               # numbered lines handed to the socket
        self._extra: List[str] = []  # lines to send after the numbered ones
        self._extra_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._receive(b"")  # what came with the end of the handshake

    # -- Driven by the test's thread, before start()

    def _receive(self, data: bytes) -> None:
        """Decrypt ``data`` and keep the complete lines."""
        self.lines.extend(bytes(frame).decode("utf-8")  # type: ignore
                          for frame in self._decoder.feed(data))

    def send_now(self, text: str) -> None:
        """Send a line from the test's thread (before :meth:`start`)."""
        self.sock.sendall(self._tls.encrypt(protocol.encode_line(text)))

    def read_until(self, match: Callable[[str], bool],
                   timeout: float = DEADLINE) -> str:
        """From the test's thread: read until a line matches."""
        deadline = time.monotonic() + timeout
        checked = 0
        while True:
            for line in self.lines[checked:]:
                if match(line):
                    return line
            checked = len(self.lines)
            try:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise socket.timeout
                self.sock.settimeout(remaining)
                data = self.sock.recv(65536)
            except socket.timeout:
                raise TimeoutError(f"{self.nick}: no such line; last:"
                                   f" {tail(self.lines)}") from None
            if not data:
                raise EOFError(f"{self.nick}: closed; last:"
                               f" {tail(self.lines)}")
            self._receive(data)

    def register(self) -> "TLSUser":
        self.read_until(lambda line: line == protocol.format_nick_prompt())
        self.send_now(self.nick)
        self.read_until(lambda line: line.startswith("* Online ("))
        assert protocol.format_welcome(self.nick) in self.lines
        return self

    # -- Its own thread

    def start(self, script: Sequence[str] = (), duration: float = 0.0,
              drain_only: bool = False, limit: float = 30.0) -> None:
        """Send ``script`` spread over ``duration`` seconds, then what
        :meth:`send` is given, reading all the while, until the server
        closes, :meth:`join` is called, or ``limit`` seconds pass. With
        ``drain_only``, read raw bytes and throw them away."""
        self.sock.setblocking(False)
        self._thread = threading.Thread(
            target=self._loop, args=(list(script), duration, drain_only,
                                     limit),
            name=f"test-{self.nick}", daemon=True)
        self._thread.start()

    def send(self, text: str) -> None:
        """Have the user's thread send ``text`` after its script."""
        with self._extra_lock:
            self._extra.append(text)

    def _next_bytes(self, script: List[str], started: float,
                    duration: float) -> bytes:
        """Encrypted bytes for the lines now due, or b""."""
        lines: List[str] = []
        if self.sent < len(script):
            elapsed = time.monotonic() - started
            due = len(script) if duration <= 0 else min(
                len(script), int(len(script) * elapsed / duration) + 1)
            lines = script[self.sent:due]
            self.sent = due
        else:
            with self._extra_lock:
                lines, self._extra = self._extra, []
        if not lines:
            return b""
        return self._tls.encrypt(b"".join(protocol.encode_line(text)
                                          for text in lines))

    def _loop(self, script: List[str], duration: float, drain_only: bool,
              limit: float) -> None:
        started = time.monotonic()
        deadline = started + limit
        pending = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self.sock, selectors.EVENT_READ)
            writing = False
            while not self._stop.is_set() and time.monotonic() < deadline:
                if not pending and not drain_only:
                    pending = self._next_bytes(script, started, duration)
                if bool(pending) != writing:
                    writing = bool(pending)
                    selector.modify(self.sock, selectors.EVENT_READ | (
                        selectors.EVENT_WRITE if writing else 0))
                for _, events in selector.select(0.01):
                    try:
                        if events & selectors.EVENT_WRITE:
                            pending = pending[self.sock.send(pending):]
                        if events & selectors.EVENT_READ:
                            data = self.sock.recv(65536)
                            if not data:
                                self.eof = True
                                return
                            if not drain_only:
                                self._receive(data)
                    except (BlockingIOError, InterruptedError):
                        pass
                    except (OSError, ssl.SSLError) as error:
                        self.eof = True
                        self.error = repr(error)
                        return
            if not self._stop.is_set():
                self.error = "gave up after its time limit"

    def join(self, timeout: float = DEADLINE) -> None:
        """Stop the user's thread and wait for it to end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            assert not self._thread.is_alive(), f"{self.nick}: thread stuck"

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- Reading what came

    def messages_from(self, nick: str) -> List[str]:
        """The texts of the public messages ``nick`` sent, as received."""
        prefix = f"{nick}: "
        return [line[len(prefix):] for line in self.lines
                if line.startswith(prefix)]


def settle_baseline(address: Tuple[str, int]) -> Tuple[int, int]:
    """Threads and descriptors of this process with the server idle, after
    it has served one TLS user from start to end (so that whatever it
    starts once, on its first connection, is counted in)."""
    descriptors = open_descriptors()
    warm = TLSUser(address, "warmup").register()
    warm.send_now("-exit")
    with pytest.raises((EOFError, ConnectionError)):
        warm.read_until(lambda line: False)
    warm.close()
    try:  # until the server has closed its end too
        wait_until(lambda: open_descriptors() <= descriptors,
                   timeout=SETTLE_SECONDS)
    except AssertionError:
        pass  # it keeps a descriptor it made on its first connection
    return threading.active_count(), open_descriptors()


def settle(what: str, count: Callable[[], int], baseline: int) -> None:
    """Wait until ``count()`` is back to ``baseline`` or below."""
    try:
        wait_until(lambda: count() <= baseline, timeout=SETTLE_SECONDS)
    except AssertionError:
        raise AssertionError(
            f"{what}: {count()} after {SETTLE_SECONDS} s, {baseline}"
            " before the test's clients started") from None


def tail(lines: List[str], count: int = 3) -> List[str]:
    """The last lines, each cut short, for a failure message."""
    return [line[:60] for line in lines[-count:]]


def first_difference(got: List[str], expected: List[str]) -> str:
    """Where two lists of lines part, briefly."""
    for index, (one, other) in enumerate(zip(got, expected)):
        if one != other:
            return (f"line {index} is {one[:20]!r}, not {other[:20]!r}"
                    f" ({len(got)} lines, {len(expected)} expected)")
    return f"{len(got)} lines, {len(expected)} expected"


def online_names(line: str) -> Tuple[int, List[str]]:
    """``* Online (N): a (you), b`` -> (N, [a, b])."""
    head, _, names = line[len("* Online ("):].partition("): ")
    return int(head), [name.split(" (")[0] for name in names.split(", ")]


def forge_points(variant: str) -> List[float]:
    """The fractions of the load at which the peers, in turn, forge."""
    if variant == "silent":
        # Late, so that what the server queued for them fills the sockets.
        return [0.5 + 0.4 * turn / (SILENT_PEERS - 1)
                for turn in range(SILENT_PEERS)]
    return [(turn + 1) / (READING_PEERS + 1)
            for turn in range(READING_PEERS)]


# A server thread that dies of an exception is a failure too.
@pytest.mark.filterwarnings(
    "error::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("variant", ["silent", "reading"])
def test_a_broken_tls_peer_does_not_hurt_other_users(make_server,
                                                     variant: str) -> None:
    """Three TLS users broadcast 2000 lines of 1.5 kB each over 3
    seconds while, one after another, TLS peers (registered users too)
    break their streams with a forged record, each while the server is
    busy encrypting the users' lines for it. One break is a small window
    for a race, so there are several.

    ``silent``: 4 peers join before the load with a small receive buffer
    and never read again, so what the server queues for them stays queued
    (the socket is full); they forge in turn in the second half of the
    load. ``reading``: 12 peers, each joining just before its turn and
    reading everything, forge in turn all through the load, and go on
    reading until the server closes them.

    Proves that the users are never disconnected and never get an error
    line, that each receives every line of the others exactly once and in
    order, that every peer is announced as gone and ``-users`` lists the
    three users only (no ghost), and that the server's threads and
    descriptors go back to what they were before.
    """
    server = make_server(tls_cert=CERT, tls_key=KEY, rate_limit=0,
                         max_clients=200, outbox_limit=OUTBOX_LIMIT)
    threads_before, descriptors_before = settle_baseline(server.address)
    silent = variant == "silent"
    points = forge_points(variant)
    peer_nicks = [f"peer{turn:02d}" for turn in range(len(points))]

    users: List[TLSUser] = []
    peers: List[TLSUser] = []

    def new_peer(nick: str) -> TLSUser:
        peer = TLSUser(server.address, nick,
                       receive_buffer=PEER_BUFFER if silent else 0)
        peers.append(peer)
        peer.register()
        if not silent:
            peer.start(drain_only=True)
        return peer

    try:
        users = [TLSUser(server.address, nick).register() for nick in NICKS]
        if silent:
            for nick in peer_nicks:
                new_peer(nick)
        # Everyone has heard of the last to join before the load starts.
        newest = peer_nicks[-1] if silent else NICKS[-1]
        for user in users:
            if user.nick != newest:
                user.read_until(
                    lambda line: line == protocol.format_joined(newest))

        padding = "x" * LINE_PADDING
        for user in users:
            script = [f"-all m{index} {padding}"
                      for index in range(LINES_PER_USER)]
            user.start(script, duration=LOAD_SECONDS)

        def sent(count: int) -> Callable[[], bool]:
            """Every user has sent ``count`` lines (or one was cut)."""
            return lambda: (all(user.sent >= count for user in users)
                            or any(user.eof for user in users))

        for turn, point in enumerate(points):
            peer = peers[turn] if silent else new_peer(peer_nicks[turn])
            wait_until(sent(int(LINES_PER_USER * point)),
                       timeout=LOAD_SECONDS + DEADLINE,
                       what=f"the load to reach {peer.nick}'s turn")
            peer.sock.sendall(forged_record())  # raw, under the TLS layer

        wait_until(sent(LINES_PER_USER), timeout=LOAD_SECONDS + DEADLINE,
                   what="the load to end")
        for user in users:
            user.send(f"-all {MARKER}")

        def complete(user: TLSUser) -> bool:
            return all(len(user.messages_from(other.nick))
                       >= LINES_PER_USER + 1
                       for other in users if other is not user)

        wait_until(lambda: all(complete(user) for user in users)
                   or any(user.eof for user in users),
                   what="every line to arrive")
        for user in users:
            assert not user.eof, (f"{user.nick} was disconnected"
                                  f" ({user.error or 'by the server'});"
                                  f" last lines: {tail(user.lines)}")
        expected = [f"m{index} {padding}" for index in range(LINES_PER_USER)]
        expected.append(MARKER)
        for user in users:
            for other in users:
                if other is not user:
                    got = user.messages_from(other.nick)
                    assert got == expected, (
                        f"{user.nick} from {other.nick}:"
                        f" {first_difference(got, expected)}")

        # Every peer is gone, for everyone, and nobody else is.
        gone = [protocol.format_left(nick) for nick in peer_nicks]
        wait_until(lambda: all(line in user.lines
                               for user in users for line in gone)
                   or any(user.eof for user in users),
                   what="every peer to be announced as gone")
        asked = len(users[0].lines)
        users[0].send("-users")
        wait_until(lambda: any(line.startswith("* Online (")
                               for line in users[0].lines[asked:])
                   or users[0].eof, what="the reply to -users")
        online = [line for line in users[0].lines[asked:]
                  if line.startswith("* Online (")]
        assert online, f"no reply to -users: {tail(users[0].lines)}"
        count, names = online_names(online[0])
        assert (count, sorted(names)) == (len(NICKS), sorted(NICKS)), online
        for user in users:
            errors = [line for line in user.lines
                      if line.startswith(protocol.ERROR)]
            assert not errors, f"{user.nick} got errors: {tail(errors)}"

        # Everyone leaves in the ordinary way; the server closes each.
        for user in users:
            user.send("-exit")
        wait_until(lambda: all(user.eof for user in users),
                   what="the server to close the users' connections")
        for user in users:
            assert protocol.format_goodbye(user.nick) in user.lines
            assert not user.error, f"{user.nick}: {user.error}"
    finally:
        for user in users + peers:
            user.join()
            user.close()

    # Only the server's own threads and sockets are left, as before.
    settle("threads", threading.active_count, threads_before)
    settle("open descriptors", open_descriptors, descriptors_before)
