"""The server's sending side: an :class:`Outbox` per connection.

Many threads send to one connection (everyone who talks to that user), and
none of them may ever wait for it: a user who stops reading must not stall
the others. So a sender only queues (:meth:`Outbox.put`) and then tries one
non-blocking send (:meth:`Outbox.flush`); what the socket does not take is
left to a writer thread of the connection's own, started the first time it
is needed. And nothing that goes wrong with one connection (its peer gone,
its TLS stream broken, its queue over the limit) is raised into the thread
that was sending to it: the outbox ends itself, shuts its socket down so
that the connection's reader wakes up and leaves, and says why in
:attr:`Outbox.failure`.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from typing import Callable, List, Optional, Tuple

#: How long a stuck writer waits for the socket at a time before it looks
#: again at whether it should give up, in seconds: a closing outbox may
#: overrun its grace period by this much.
WRITER_POLL_SECONDS = 0.25

# MSG_DONTWAIT lets a thread try a send without blocking even though the
# socket is blocking for its reader. Where it is missing (Windows) every
# send is left to the writer thread, which then blocks in sendall() and
# cannot keep the closing deadline: a simplification for that platform.
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)

#: The failure of a closing outbox whose peer did not take what was left.
_GAVE_UP = "peer did not read before close"

# The states of an outbox. It only ever moves down this list, skipping
# some: OPEN -> SEALED -> CLOSING -> DONE, or straight to DONE on a failure.
OPEN = "open"          # takes lines
SEALED = "sealed"      # took its last line; sends what it holds
CLOSING = "closing"    # sends what it holds, then shuts the socket down
DONE = "done"          # socket shut down; holds and takes nothing


class Outbox:
    """Bytes on their way to one connection, in order, without ever
    blocking or raising into the thread that queues them.

    ``encode`` turns queued bytes into what goes on the wire (TLS encrypts
    there); it is called by one thread at a time, in queue order. When
    more than ``limit`` bytes wait, the peer has stopped reading and the
    outbox ends itself. After :meth:`close`, the peer has ``grace``
    seconds to take what is queued; once it has, the bytes ``goodbye``
    returns (TLS's close_notify) are offered to the socket, without
    waiting, just before it is shut down.

    Lock discipline: ``_lock`` guards every field below it. No blocking
    call is made with it held (``socket.shutdown`` and non-blocking sends
    do not block); ``encode`` runs with it held, so that bytes are encoded
    in queue order, and must not call back into the outbox.
    """

    def __init__(self, sock: socket.socket, limit: int,
                 encode: Optional[Callable[[bytes], bytes]] = None,
                 grace: float = 2.0,
                 goodbye: Optional[Callable[[], bytes]] = None) -> None:
        self._sock = sock
        self._limit = limit
        self._encode = encode
        self._goodbye = goodbye
        self._grace = grace
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self.state = OPEN
        #: Why the outbox ended before its peer had everything ("" if not).
        self.failure = ""
        #: The failure was the network's (a send failed: the peer is gone)
        #: rather than the outbox's own decision (over the limit, TLS
        #: broken, a closing peer given up on).
        self.failure_is_network = False
        self._chunks: List[bytes] = []  # queued, not yet encoded
        self._unsent = b""        # encoded bytes the socket has not taken
        self._size = 0            # bytes in both, for the limit
        self._sending = False     # a thread is sending: the others wait
        self._close_by = 0.0      # CLOSING: when to give up on the peer
        self._writer: Optional[threading.Thread] = None
        self._reader_waits = True  # a reader may be blocked in recv()

    # -- What senders call

    def put(self, data: bytes, last: bool = False) -> None:
        """Queue ``data``; it leaves at the next :meth:`flush`. With
        ``last``, nothing queued after it is taken."""
        with self._lock:
            if self.state != OPEN:
                return
            self._chunks.append(data)
            if last:
                self.state = SEALED
            self._size += len(data)
            if self._size <= self._limit:
                return
            stuck = self._sending or bool(self._unsent)
        if not stuck:
            # Over the limit only because nothing was offered to the
            # socket yet (a burst queued in one go): offer it first.
            self.flush()
        with self._lock:
            if self._size > self._limit and self.state in (OPEN, SEALED):
                self._fail("send queue exceeded")

    def flush(self) -> None:
        """Send what is queued, without blocking; leave what the socket
        does not take to the writer thread."""
        with self._lock:
            if self._sending or self._unsent or not self._chunks:
                return  # nothing to do, or another thread's job
            data = self._take()
        while data is not None:
            if not _DONTWAIT:
                sent = 0
            else:
                try:
                    sent = self._sock.send(data, _DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError as error:
                    with self._lock:
                        self._sending = False
                        self._fail(f"send failed: {error}", network=True)
                    return
            with self._lock:
                self._size -= sent
                if self.state == DONE:
                    self._sending = False
                    return
                if sent < len(data):
                    self._sending = False
                    self._unsent = data[sent:]
                    self._start_writer()
                    return
                if not self._chunks:
                    # Others may have queued while this thread sent; their
                    # flush() left it to this one, so only stop when empty.
                    self._sending = False
                    self._drained()
                    return
                data = self._take()

    def close(self) -> None:
        """Take no more data; shut the socket down once what is queued has
        been sent, or after the grace period."""
        with self._lock:
            if self.state in (CLOSING, DONE):
                return
            self.state = CLOSING
            self._close_by = time.monotonic() + self._grace
            if self._pending():
                self._start_writer()
            else:
                self._end()

    def reader_left(self) -> None:
        """The connection's reader has stopped reading for good: ending
        the outbox then need not shut the socket down to wake it (the
        socket's owner closes it). When thousands of connections end at
        once, every system call an ending thread makes is one more wait
        for the GIL among thousands of threads."""
        with self._lock:
            self._reader_waits = False

    def wait_drained(self, timeout: float) -> bool:
        """Wait until all queued data has left (or the outbox has ended);
        False on timeout."""
        with self._lock:
            return self._wake.wait_for(
                lambda: self.state == DONE or not self._pending(), timeout)

    @property
    def done(self) -> bool:
        """True once the socket is shut down."""
        return self.state == DONE

    # -- Inside; every method below runs with the lock held

    def _pending(self) -> bool:
        return bool(self._chunks or self._unsent or self._sending)

    def _take(self) -> Optional[bytes]:
        """Claim the right to send, and what to send; None if encoding
        failed (the outbox has then ended)."""
        data = self._chunks[0] if len(self._chunks) == 1 \
            else b"".join(self._chunks)
        self._chunks.clear()
        if self._encode is not None:
            try:
                encoded = self._encode(data)
            except Exception as error:  # noqa: BLE001 - a broken stream
                self._fail(f"cannot encode: {error}")
                return None
            self._size += len(encoded) - len(data)
            data = encoded
        self._sending = True
        data, self._unsent = self._unsent + data, b""
        return data

    def _drained(self) -> None:
        """Everything queued has left."""
        if self.state == CLOSING:
            self._end()
        self._wake.notify_all()

    def _start_writer(self) -> None:
        if self._writer is None:
            self._writer = threading.Thread(
                target=self._write_loop, name="writer", daemon=True)
            self._writer.start()
        self._wake.notify_all()

    def _fail(self, reason: str, network: bool = False) -> None:
        if not self.failure:
            self.failure = reason
            self.failure_is_network = network
        self._shut_down()

    def _end(self) -> None:
        """Everything was sent and the outbox is closing: say goodbye (a
        non-blocking send of a few bytes into a drained socket), then shut
        the socket down."""
        if self._goodbye is not None:
            try:
                self._sock.send(self._goodbye(), _DONTWAIT)
            except Exception:  # noqa: BLE001 - a goodbye is best effort
                pass
        self._shut_down()

    def _shut_down(self) -> None:
        """Drop everything; also wakes a reader blocked in ``recv``
        (unless it has left: :meth:`reader_left`)."""
        self.state = DONE
        self._chunks.clear()
        self._unsent = b""
        self._size = 0
        self._wake.notify_all()
        if not self._reader_waits:
            return
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- The writer thread

    def _write_loop(self) -> None:
        """Send, waiting for the socket as needed, what the non-blocking
        path left; give up on a closing peer after the grace period."""
        while True:
            with self._lock:
                while self.state != DONE and (
                        self._sending or not (self._chunks or self._unsent)):
                    if self.state == CLOSING and not self._sending:
                        self._end()
                    else:
                        self._wake.wait(self._time_left())
                        if self._time_left() == 0.0:
                            self._fail(_GAVE_UP)
                if self.state == DONE:
                    return
                data = self._take()
            if data is None:
                return
            sent, error = self._send_waiting(data)
            with self._lock:
                self._sending = False
                self._size -= sent
                if self.state == DONE:
                    return
                if error:
                    self._fail(error, network=error != _GAVE_UP)
                elif sent < len(data):
                    self._unsent = data[sent:] + self._unsent
                elif not self._chunks:
                    self._drained()  # else: what others queued meanwhile

    def _time_left(self) -> Optional[float]:
        """Seconds until a closing outbox gives up; None when open."""
        if self.state != CLOSING:
            return None
        return max(0.0, self._close_by - time.monotonic())

    def _send_waiting(self, data: bytes) -> Tuple[int, str]:
        """Send ``data`` (without the lock), waiting for the socket to take
        it; stop early when the outbox is closing and its time is up.
        Returns the bytes sent and an error, or ""."""
        if not _DONTWAIT:
            try:
                self._sock.sendall(data)
                return len(data), ""
            except OSError as error:
                return 0, f"send failed: {error}"
        view = memoryview(data)
        sent = 0
        while sent < len(data):
            try:
                sent += self._sock.send(view[sent:], _DONTWAIT)
                continue
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as error:
                return sent, f"send failed: {error}"
            with self._lock:
                if self.state == DONE:
                    return sent, ""
                left = self._time_left()
            if left == 0.0:
                return sent, _GAVE_UP
            wait_writable(self._sock, WRITER_POLL_SECONDS if left is None
                          else min(left, WRITER_POLL_SECONDS))
        return sent, ""


def wait_writable(sock: socket.socket, timeout: float) -> None:
    """Wait until ``sock`` can take more data, or ``timeout`` seconds."""
    if hasattr(select, "poll"):  # any number of descriptors
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        poller.poll(timeout * 1000)
    else:
        select.select([], [sock], [], timeout)
