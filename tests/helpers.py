"""What the tests share: a chat user over a real socket (plain or TLS), the
places of things, and ways to wait without sleeping.

Every wait has a deadline (:data:`DEADLINE` unless told), so a test that
goes wrong fails with what it saw instead of hanging.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import sys
import threading
import time
from collections import deque
from typing import (TYPE_CHECKING, Callable, Deque, List, Optional, Tuple,
                    Union)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import protocol  # noqa: E402
import transport  # noqa: E402

if TYPE_CHECKING:
    from room import Room

ADMIN_PASSWORD = "test-secret"
#: Seconds any single wait in a test may take before it fails.
DEADLINE = 10.0

TLS_DIR = os.path.join(ROOT, "tests", "tls")
#: The test certificate (CN=localhost, 127.0.0.1 and ::1) and its key.
CERT = os.path.join(TLS_DIR, "cert.pem")
KEY = os.path.join(TLS_DIR, "key.pem")

Match = Union[str, Callable[[str], bool]]
Address = Tuple


class ChatUser:
    """What every test user does with lines, whatever carries them: a
    subclass gives ``send(text)``, ``read_line(timeout)`` (the next line,
    appended to ``seen``; raises when none comes), ``timeout`` and
    ``nick``."""

    timeout: float = DEADLINE
    nick: str = ""

    def send(self, text: str) -> None:
        raise NotImplementedError

    def read_line(self, timeout: Optional[float] = None) -> str:
        raise NotImplementedError

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

    def register(self, nick: str) -> "ChatUser":
        self.expect(protocol.format_nick_prompt())
        self.send(nick)
        self.expect(protocol.format_welcome(nick))
        self.expect(lambda line: line.startswith("* Online ("))
        self.nick = nick
        return self



class LineClient(ChatUser):
    """A test's chat user: a real TCP socket that reads whole lines, each
    strictly UTF-8 (the server must never send anything else).

    With ``tls``, the connection is encrypted (``transport.TLSLayer``,
    the certificate checked against ``cafile``); ``rcvbuf`` shrinks the
    receive buffer (a slow reader); ``bind`` picks the local address (all
    of 127.0.0.0/8 is loopback: ``127.0.0.2`` plays a second host).
    Only one thread uses a client.
    """

    def __init__(self, address: Address, timeout: float = DEADLINE,
                 tls: bool = False, cafile: str = CERT,
                 rcvbuf: Optional[int] = None,
                 bind: Optional[str] = None) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.timeout = timeout
        self.nick = ""
        self.seen: List[str] = []
        self._lines: Deque[str] = deque()
        try:
            if rcvbuf:
                # Before connecting, so that the TCP window is small too.
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                     rcvbuf)
            if bind:
                self.sock.bind((bind, 0))
            self.sock.settimeout(timeout)
            self.sock.connect(address)
            self.tls: Optional[transport.TLSLayer] = None
            if tls:
                context = ssl.create_default_context(cafile=cafile)
                self.tls = transport.TLSLayer(context,
                                              server_hostname=address[0])
                transport.handshake(self.sock, self.tls, timeout)
        except BaseException:
            self.sock.close()
            raise
        self._decoder = transport.LineDecoder(self.tls, 1024 * 1024)
        self._take(b"")  # what came with the end of a TLS handshake

    def send(self, text: str) -> None:
        self.send_raw(protocol.encode_line(text))

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (encrypted, with TLS)."""
        if self.tls is not None:
            data = self.tls.encrypt(data)
        self.sock.settimeout(self.timeout)
        self.sock.sendall(data)

    def _take(self, data: bytes) -> None:
        self._lines.extend(self.feed(data))

    def feed(self, data: bytes) -> List[str]:
        """The lines ``data`` completes: for a thread that receives on
        :attr:`sock` itself (and then owns the client)."""
        lines = []
        for frame in self._decoder.feed(data):
            assert frame is not protocol.OVERLONG, "server line over 1 MiB"
            lines.append(bytes(frame).decode("utf-8"))  # strict
        return lines

    def take_unread(self) -> List[str]:
        """The lines received but not read yet, which the caller takes."""
        lines = list(self._lines)
        self._lines.clear()
        return lines

    def read_line(self, timeout: Optional[float] = None) -> str:
        """The next line (without newline); raises on timeout or EOF."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self._lines:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._decoder.ended:
                break
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                break
            if not data:
                raise EOFError(f"connection closed; seen: {self.seen[-5:]}")
            self._take(data)
        if not self._lines:
            if self._decoder.ended:
                raise EOFError(f"TLS closed; seen: {self.seen[-5:]}")
            raise TimeoutError(f"no line; seen so far: {self.seen[-5:]}")
        text = self._lines.popleft()
        self.seen.append(text)
        return text

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

    def leave(self) -> None:
        """Leave with -exit when registered, so that the server closes
        first; then close."""
        try:
            if self.nick:
                self.send("-exit")
                self.wait_closed(timeout=2.0)
        except (OSError, TimeoutError, ssl.SSLError):
            pass
        self.close()

    def end_tls(self) -> None:
        """Send TLS's close_notify, keeping the TCP connection open."""
        assert self.tls is not None
        self.sock.sendall(self.tls.close_notify())

    def abort(self) -> None:
        """Close with a reset (RST) rather than an orderly end of stream."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                 struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()
        self.nick = ""  # nothing more to say at the end of the test

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def marker(sender: LineClient, receiver: LineClient,
           text: str = "marker") -> None:
    """Proof of non-delivery: ``sender``'s public ``text`` must be the very
    next line ``receiver`` gets, so nothing else reached it in between."""
    sender.send(f"-all {text}")
    receiver.next_is(protocol.format_message(sender.nick, text))


def wait_until(condition: Callable[[], bool], timeout: float = DEADLINE,
               what: str = "condition") -> None:
    """Poll ``condition`` until true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


# --- Fakes for the chat core (room.py), which needs no sockets ---------------


class OwnedLock:
    """A drop-in for the room's ``threading.Lock`` that knows which thread
    holds it, so a link flushed by one thread can tell whether *that*
    thread holds the room's lock while others legitimately hold it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: Optional[int] = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = self._lock.acquire(blocking, timeout)
        if got:
            self._owner = threading.get_ident()
        return got

    def release(self) -> None:
        self._owner = None
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def held_here(self) -> bool:
        return self._owner == threading.get_ident()


class FakeLink:
    """A connection as the room sees it (``room.Link``), recording all.

    It obeys the contract: whole lines only, nothing taken after a line
    put with ``last=True`` (nor after :meth:`close`). :meth:`flush`
    asserts the room's lock is not held by the flushing thread.
    Thread-safe: its own lock guards everything it records.
    """

    def __init__(self, room: Optional["Room"] = None) -> None:
        self.room = room
        self._guard = threading.Lock()
        self.lines: List[str] = []
        self.sealed = False       # the last line was put with last=True
        self.closed = False
        self.flushes = 0
        self.queued_at_flush = 0  # len(lines) at the latest flush
        self.ignored = 0          # puts refused: after the last line
        self._taken = 0

    def put(self, data: bytes, last: bool = False) -> None:
        assert isinstance(data, bytes)
        text = data.decode("utf-8")
        assert text == "" or text.endswith("\n"), f"not whole lines: {text!r}"
        with self._guard:
            if self.sealed or self.closed:
                self.ignored += 1
                return
            self.lines.extend(text.split("\n")[:-1])
            self.sealed = last

    def flush(self) -> None:
        if self.room is not None:
            lock = self.room._lock
            held = (lock.held_here() if isinstance(lock, OwnedLock)
                    else lock.locked())
            assert not held, "link flushed with the room's lock held"
        with self._guard:
            self.flushes += 1
            self.queued_at_flush = len(self.lines)

    def close(self) -> None:
        with self._guard:
            self.closed = True

    def take(self) -> List[str]:
        """The lines put since the previous call."""
        with self._guard:
            new = self.lines[self._taken:]
            self._taken = len(self.lines)
            return new
