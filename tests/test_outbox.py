"""Unit tests of :class:`outbox.Outbox` over ``socket.socketpair()``.

No server runs here: each test drives one outbox on one end of a socket
pair and plays the peer on the other end. Small ``SO_SNDBUF`` values make
a socket fill up after a few kilobytes, large ones let it take a burst at
once. Nothing sleeps to synchronise: every wait is for a condition, with
a deadline, and every loop is bounded in count and in time. A thread that
dies of an uncaught exception fails the test (``filterwarnings`` below):
the outbox must never raise into anyone's thread, its writer's included.
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
import threading
import time
from functools import partial
from typing import Callable, Iterator, List, Optional, Set, Tuple

import pytest

import outbox
from helpers import wait_until

pytestmark = pytest.mark.filterwarnings(
    "error::pytest.PytestUnhandledThreadExceptionWarning")

#: Seconds a single wait may take before the test fails: a hang guard,
#: well under the 5 s a test may take, never a performance claim.
HANG = 3.0
#: Longest a put() or flush() may take before we call it blocking: a hang
#: guard too (a non-blocking call takes microseconds).
PROMPT = 1.0
#: A send buffer small enough to fill after a few kilobytes.
SMALL_BUFFER = 4096
#: A send buffer large enough for every burst these tests make at once
#: (the kernel caps it, but well above what is sent in one go here).
LARGE_BUFFER = 1 << 20
#: A limit no test reaches unless it means to.
NO_LIMIT = 64 << 20

Pair = Tuple[outbox.Outbox, socket.socket, socket.socket]


# --- Helpers -----------------------------------------------------------------


def read_exactly(peer: socket.socket, size: int,
                 timeout: float = HANG) -> bytes:
    """Read ``size`` bytes from ``peer``; fail on EOF or after
    ``timeout``."""
    deadline = time.monotonic() + timeout
    data = b""
    while len(data) < size:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"only {len(data)} of {size} bytes came")
        peer.settimeout(left)
        chunk = peer.recv(size - len(data))
        if not chunk:
            raise AssertionError(f"EOF after {len(data)} of {size} bytes")
        data += chunk
    return data


def read_until_eof(peer: socket.socket, timeout: float = HANG) -> bytes:
    """Everything ``peer`` receives until EOF; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no EOF after {len(data)} bytes")
        peer.settimeout(left)
        try:
            chunk = peer.recv(1 << 16)
        except socket.timeout:
            raise AssertionError(f"no EOF after {len(data)} bytes") from None
        if not chunk:
            return data
        data += chunk


def readable(sock: socket.socket) -> bool:
    """Whether ``sock`` has data (or EOF) to read right now."""
    return bool(select.select([sock], [], [], 0)[0])


def writer_threads() -> Set[threading.Thread]:
    """The live threads named like an outbox's writer."""
    return {thread for thread in threading.enumerate()
            if thread.name == "writer" and thread.is_alive()}


def timed(call: Callable[[], None]) -> float:
    """Seconds ``call()`` took."""
    start = time.monotonic()
    call()
    return time.monotonic() - start


def line(number: int, width: int = 0) -> bytes:
    """A numbered line, padded with dots to ``width`` bytes if asked."""
    text = f"line {number} ".encode()
    return text.ljust(max(width - 1, len(text)), b".") + b"\n"


class CountingSocket:
    """A socket as the outbox uses it (``send``, ``shutdown``,
    ``fileno``), counting the sends that reach the real one."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sends: List[int] = []

    def send(self, data: bytes, flags: int = 0) -> int:
        sent = self.sock.send(data, flags)
        self.sends.append(sent)
        return sent

    def sendall(self, data: bytes) -> None:
        self.sends.append(len(data))
        self.sock.sendall(data)

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def fileno(self) -> int:
        return self.sock.fileno()


@pytest.fixture
def make_outbox() -> Iterator[Callable[..., Pair]]:
    """``make_outbox(limit=..., encode=..., grace=..., sndbuf=...)``: an
    outbox on one end of a fresh socket pair; returns (outbox, its socket,
    the peer). Afterwards the peer is closed first (so that a writer still
    sending fails at once), then the outbox, then its socket."""
    made: List[Pair] = []

    def make(limit: int = NO_LIMIT,
             encode: Optional[Callable[[bytes], bytes]] = None,
             grace: float = 2.0, sndbuf: Optional[int] = None,
             peer: Optional[Tuple[socket.socket, socket.socket]] = None,
             wrap: Optional[Callable[[socket.socket], object]] = None
             ) -> Pair:
        sock, other = peer if peer is not None else socket.socketpair()
        if sndbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            other.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
        target = wrap(sock) if wrap is not None else sock
        box = outbox.Outbox(target, limit, encode=encode,  # type: ignore
                            grace=grace)
        made.append((box, sock, other))
        return box, sock, other

    yield make
    for box, sock, other in made:
        other.close()
        box.close()
        deadline = time.monotonic() + HANG
        while not box.done and time.monotonic() < deadline:
            time.sleep(0.005)
        sock.close()


@pytest.fixture
def tcp_pair() -> Iterator[Callable[[], Tuple[socket.socket,
                                              socket.socket]]]:
    """``tcp_pair()``: two connected TCP sockets on 127.0.0.1 (made with
    a listening socket on port 0, closed at once), closed afterwards."""
    made: List[socket.socket] = []

    def make() -> Tuple[socket.socket, socket.socket]:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            near = socket.create_connection(listener.getsockname(), HANG)
            made.append(near)
            far, _ = listener.accept()
            made.append(far)
        near.settimeout(None)
        far.settimeout(HANG)
        return near, far

    yield make
    for sock in made:
        sock.close()


# --- Order and coalescing ----------------------------------------------------


def test_lines_put_and_flushed_arrive_in_order_and_whole(make_outbox):
    """Each line put and flushed reaches the peer whole, in the order put,
    and nothing else does; the outbox stays open and sets no timeout."""
    box, sock, peer = make_outbox()
    lines = [line(number, width=1 + number % 300) for number in range(500)]
    for data in lines:
        box.put(data)
        box.flush()
    expected = b"".join(lines)
    assert read_exactly(peer, len(expected)) == expected
    assert not readable(peer)
    assert box.state == outbox.OPEN and box.failure == ""
    assert sock.gettimeout() is None


def test_many_puts_then_one_flush_leave_in_one_send(make_outbox):
    """Puts alone send nothing; the flush after them sends everything
    queued in a single ``send`` call (one system call for many lines)."""
    pair = socket.socketpair()
    counting = CountingSocket(pair[0])
    box, sock, peer = make_outbox(peer=pair, wrap=lambda _: counting)
    lines = [line(number) for number in range(200)]
    for data in lines:
        box.put(data)
    assert counting.sends == []
    assert not readable(peer)
    box.flush()
    expected = b"".join(lines)
    assert read_exactly(peer, len(expected)) == expected
    assert counting.sends == [len(expected)]


# --- A peer that stops reading -----------------------------------------------


def test_slow_reader_ends_the_outbox_without_blocking_the_sender(
        make_outbox):
    """A peer that never reads: once more than ``limit`` bytes wait, the
    outbox ends itself ("send queue exceeded") and shuts the socket down,
    which wakes a reader blocked in ``recv`` on the outbox's side and
    gives the peer EOF after what was sent; later puts are ignored. No
    put() or flush() blocked the putting thread meanwhile."""
    limit = 32 * 1024
    box, sock, peer = make_outbox(limit=limit, sndbuf=SMALL_BUFFER)
    own_side: List[bytes] = []
    own_reader = threading.Thread(
        target=lambda: own_side.append(sock.recv(1024)), daemon=True)
    own_reader.start()

    sent: List[bytes] = []
    slowest: List[float] = [0.0]

    def putter() -> None:
        for number in range(1000):  # 1 MB at most: far above the limit
            data = line(number, width=1000)
            sent.append(data)  # offered; some of it may go out
            slowest[0] = max(slowest[0], timed(partial(box.put, data)),
                             timed(box.flush))
            if box.done:
                return

    thread = threading.Thread(target=putter, daemon=True)
    thread.start()
    thread.join(HANG)
    assert not thread.is_alive(), "put() or flush() blocked"
    assert slowest[0] < PROMPT
    assert box.state == outbox.DONE
    assert box.failure == "send queue exceeded"
    assert not box.failure_is_network  # the outbox's own decision
    assert sum(map(len, sent)) > limit
    assert sock.gettimeout() is None

    own_reader.join(HANG)
    assert own_side == [b""], "a reader on the outbox's side is not woken"

    box.put(b"too late\n")
    box.flush()
    assert box.state == outbox.DONE
    assert box.failure == "send queue exceeded"

    received = read_until_eof(peer)
    expected = b"".join(sent)
    assert 0 < len(received) < len(expected)
    assert expected.startswith(received)  # in order, nothing else
    assert b"too late" not in received


def test_burst_over_the_limit_that_the_socket_takes_is_not_cut(make_outbox):
    """The limit judges what the socket would not take: a reader who keeps
    up survives bursts far bigger than ``limit``, whether one put or many
    puts before a flush, because the burst is offered first."""
    limit = 1000
    box, sock, peer = make_outbox(limit=limit, sndbuf=LARGE_BUFFER)
    for round_ in range(20):
        big = line(round_, width=5 * limit)
        box.put(big)
        assert box.failure == ""
        assert read_exactly(peer, len(big)) == big
        many = [line(number, width=200) for number in range(25)]
        for data in many:
            box.put(data)
        box.flush()
        assert box.failure == ""
        expected = b"".join(many)
        assert read_exactly(peer, len(expected)) == expected
    assert box.state == outbox.OPEN


# --- Sealing and closing -----------------------------------------------------


def test_last_put_seals_the_outbox(make_outbox):
    """``put(last=True)`` is the last line taken: it is sent, later puts
    are dropped, and close() then gives the peer EOF right after it."""
    box, sock, peer = make_outbox()
    box.put(b"first\n")
    box.put(b"bye\n", last=True)
    assert box.state == outbox.SEALED
    box.put(b"dropped\n")
    box.flush()
    box.put(b"dropped too\n")
    box.flush()
    assert read_exactly(peer, len(b"first\nbye\n")) == b"first\nbye\n"
    assert box.state == outbox.SEALED and box.failure == ""
    box.close()
    assert read_until_eof(peer) == b""
    assert box.state == outbox.DONE and box.failure == ""


def test_close_sends_what_is_pending_then_eof(make_outbox):
    """close() with queued data, more than the socket holds: the peer,
    reading after the close, gets all of it in order, then EOF; later
    puts are dropped."""
    box, sock, peer = make_outbox(sndbuf=SMALL_BUFFER, grace=HANG)
    lines = [line(number, width=500) for number in range(200)]  # 100 KB
    for data in lines:
        box.put(data)
    box.close()
    box.put(b"after close\n")
    assert read_until_eof(peer) == b"".join(lines)
    wait_until(lambda: box.done, HANG, "the outbox to end")
    assert box.failure == ""
    assert sock.gettimeout() is None


def test_close_after_reader_left_leaves_the_socket_to_its_owner(
        make_outbox):
    """After reader_left() there is no reader to wake: ending the outbox
    sends what it holds but does not shut the socket down (its owner
    closes it); the socket still takes data afterwards."""
    box, sock, peer = make_outbox()
    box.put(b"bye\n")
    box.reader_left()
    box.close()
    wait_until(lambda: box.done, HANG, "the outbox to end")
    assert read_exactly(peer, 4) == b"bye\n"
    sock.sendall(b"still open\n")  # EPIPE had it been shut down
    assert read_exactly(peer, 11) == b"still open\n"


def test_close_keeps_lines_queued_while_the_writer_sends(make_outbox):
    """Lines queued while the writer thread is sending, then close(): the
    peer gets them too before EOF (close() promises to send what is
    queued), or at least the outbox says it failed."""
    took = threading.Event()

    def encode(data: bytes) -> bytes:
        # Called where a thread takes the queue to send it; in the writer,
        # that means the writer is now sending (and holds the queue).
        if threading.current_thread().name == "writer":
            took.set()
        return data

    box, sock, peer = make_outbox(sndbuf=SMALL_BUFFER, encode=encode,
                                  grace=HANG)
    first = line(1, width=64 * 1024)  # more than the socket holds
    box.put(first)
    box.flush()
    assert took.wait(HANG), "the writer thread did not start sending"
    box.put(b"second\n")
    box.flush()  # the writer's job: it returns at once
    box.close()
    received = read_until_eof(peer)
    assert received[:len(first)] == first
    assert received == first + b"second\n" or box.failure != ""


def test_close_gives_up_on_a_peer_that_never_reads(make_outbox):
    """close() with data the peer never reads: after the grace period (and
    not before) the outbox is done, says why, and its writer thread has
    ended; no socket timeout was ever set to get there."""
    grace = 0.2
    before = writer_threads()
    box, sock, peer = make_outbox(sndbuf=SMALL_BUFFER, grace=grace)
    box.put(line(1, width=256 * 1024))
    box.flush()
    assert sock.gettimeout() is None
    wait_until(lambda: writer_threads() - before, HANG, "a writer thread")
    started = time.monotonic()
    box.close()
    assert box.state == outbox.CLOSING
    assert sock.gettimeout() is None
    wait_until(lambda: box.done, HANG, "the outbox to give up")
    elapsed = time.monotonic() - started
    # Not before the grace period; after it, within one writer poll.
    assert grace * 0.9 <= elapsed < grace + outbox.WRITER_POLL_SECONDS + 1
    assert box.failure == "peer did not read before close"
    assert not box.failure_is_network
    wait_until(lambda: not writer_threads() - before, HANG,
               "the writer thread to end")
    assert sock.gettimeout() is None


# --- Many senders ------------------------------------------------------------


def test_concurrent_puts_arrive_once_each_and_in_order_per_thread(
        make_outbox):
    """Eight threads each put and flush 2,000 numbered lines at once: the
    peer receives every line exactly once, and each thread's lines in the
    order that thread put them."""
    threads, count = 8, 2000
    box, sock, peer = make_outbox()
    received: List[bytes] = []

    def reader() -> None:
        data = read_until_eof(peer, HANG)
        received.append(data)

    reading = threading.Thread(target=reader, daemon=True)
    reading.start()
    go = threading.Barrier(threads)

    def sender(who: int) -> None:
        go.wait(HANG)
        for number in range(count):
            box.put(f"{who} {number}\n".encode())
            box.flush()

    senders = [threading.Thread(target=sender, args=(who,), daemon=True)
               for who in range(threads)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join(HANG)
    assert not any(thread.is_alive() for thread in senders)
    assert box.wait_drained(HANG)
    box.close()
    reading.join(HANG)
    assert received, "the reader did not see EOF"
    per_thread: List[List[int]] = [[] for _ in range(threads)]
    for text in received[0].decode().splitlines():
        who, number = text.split()
        per_thread[int(who)].append(int(number))
    for numbers in per_thread:
        assert numbers == list(range(count))
    assert box.failure == ""


# --- Failures end the outbox, never the caller -------------------------------


class FlakyEncoder:
    """An ``encode`` that passes data through, except on call number
    ``fail_at`` and after, where it raises ``error``."""

    def __init__(self, fail_at: int, error: Exception) -> None:
        self.fail_at = fail_at
        self.error = error
        self.calls = 0

    def __call__(self, data: bytes) -> bytes:
        self.calls += 1
        if self.calls >= self.fail_at:
            raise self.error
        return data


@pytest.mark.parametrize("error", [
    ValueError("cipher exploded"),
    ssl.SSLError(1, "cipher exploded"),
], ids=["ValueError", "SSLError"])
def test_encode_failure_ends_only_that_outbox(make_outbox, error):
    """``encode`` raising on its third call: put() and flush() do not
    raise, the outbox ends with a failure naming the error and shuts its
    socket down (the peer gets the two lines before it, then EOF), and
    another outbox goes on working."""
    encoder = FlakyEncoder(3, error)
    box, sock, peer = make_outbox(encode=encoder, sndbuf=LARGE_BUFFER)
    other, _, other_peer = make_outbox()
    for number in range(5):
        box.put(line(number))
        box.flush()
        other.put(line(number))
        other.flush()
    assert encoder.calls == 3  # nothing encoded once the outbox ended
    assert box.state == outbox.DONE
    assert "cannot encode" in box.failure
    assert "cipher exploded" in box.failure
    assert read_until_eof(peer) == line(0) + line(1)

    expected = b"".join(line(number) for number in range(5))
    assert read_exactly(other_peer, len(expected)) == expected
    assert other.state == outbox.OPEN and other.failure == ""


def test_encode_failure_in_the_writer_thread_ends_the_outbox(make_outbox):
    """``encode`` failing when the writer thread (not a sender) encodes:
    the writer ends the outbox, shuts the socket down and ends itself, and
    nothing escapes into any thread."""
    before = writer_threads()
    encoder = FlakyEncoder(2, ssl.SSLError(1, "broken stream"))
    box, sock, peer = make_outbox(encode=encoder, sndbuf=SMALL_BUFFER)
    box.put(line(1, width=64 * 1024))  # more than the socket takes
    box.flush()  # encodes once, leaves the rest to the writer
    box.put(line(2))
    box.flush()  # the writer's job now: whoever encodes next fails
    wait_until(lambda: box.done, HANG, "the outbox to end")
    assert "broken stream" in box.failure
    received = read_until_eof(peer)
    assert line(1, width=64 * 1024).startswith(received)
    wait_until(lambda: not writer_threads() - before, HANG,
               "the writer thread to end")


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` so that its peer gets a reset, not an orderly EOF."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                    struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_send_failure_ends_the_outbox_without_raising(make_outbox, tcp_pair,
                                                      kind):
    """The peer closed with a reset (SO_LINGER 0): put() and flush() keep
    returning normally, and the outbox ends with a "send failed"
    failure."""
    pair = socket.socketpair() if kind == "unix" else tcp_pair()
    box, sock, peer = make_outbox(peer=pair)
    box.put(b"hello\n")
    box.flush()
    assert read_exactly(peer, 6) == b"hello\n"
    _reset(peer)
    numbers = iter(range(10 ** 6))

    def send_and_check() -> bool:
        box.put(line(next(numbers)))
        box.flush()
        return box.done

    wait_until(send_and_check, HANG, "a send to fail")
    assert box.failure.startswith("send failed")
    assert box.failure_is_network  # the peer is gone: the network's doing
    assert sock.gettimeout() is None


def test_send_failure_in_the_writer_thread_ends_the_outbox(make_outbox):
    """The writer thread waiting on a full socket when the peer resets:
    the writer's send fails, the outbox ends ("send failed") and the
    writer thread ends."""
    before = writer_threads()
    box, sock, peer = make_outbox(sndbuf=SMALL_BUFFER)
    box.put(line(1, width=64 * 1024))
    box.flush()
    wait_until(lambda: writer_threads() - before, HANG, "a writer thread")
    _reset(peer)
    wait_until(lambda: box.done, HANG, "the outbox to end")
    assert box.failure.startswith("send failed")
    wait_until(lambda: not writer_threads() - before, HANG,
               "the writer thread to end")


# --- wait_drained ------------------------------------------------------------


def test_wait_drained_true_once_everything_is_sent(make_outbox):
    """wait_drained() is True at once when the socket took everything, and
    True again once a peer reads what had to wait for the writer."""
    box, sock, peer = make_outbox(sndbuf=SMALL_BUFFER)
    box.put(b"small\n")
    box.flush()
    assert box.wait_drained(0)
    big = line(2, width=128 * 1024)
    box.put(big)
    box.flush()
    reading = threading.Thread(target=read_exactly,
                               args=(peer, 6 + len(big)), daemon=True)
    reading.start()
    assert box.wait_drained(HANG)
    reading.join(HANG)
    assert box.state == outbox.OPEN and box.failure == ""


def test_wait_drained_false_on_timeout_when_the_peer_does_not_read(
        make_outbox):
    """wait_drained() returns False after its timeout while the peer does
    not read, leaving the outbox open; it turns True once the peer reads."""
    box, sock, peer = make_outbox(sndbuf=SMALL_BUFFER)
    big = line(1, width=128 * 1024)
    box.put(big)
    box.flush()
    assert not box.wait_drained(0.0)
    started = time.monotonic()
    assert not box.wait_drained(0.2)
    assert time.monotonic() - started >= 0.18
    assert box.state == outbox.OPEN
    assert read_exactly(peer, len(big)) == big
    assert box.wait_drained(HANG)
