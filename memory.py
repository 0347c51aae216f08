"""The room's memory, with no sockets and no lock of its own: the room
(``room.py``) uses these with its lock held.

* :class:`History`: the last public lines, with the time each was said,
  replayed to late joiners and by ``-history``.
* :class:`HeldLines`: what a seat whose connection dropped is sent while
  its user is away, kept (bounded) until they ``-resume``.
* :func:`new_token` / :func:`split_token`: the secret that gets a seat back.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from collections import deque
from typing import Callable, Deque, List, Optional, Tuple

import protocol


class History:
    """The last ``keep`` public lines of the room, each with its time
    (``wall_clock()``, seconds since the epoch)."""

    def __init__(self, keep: int, max_replay_bytes: int,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._lines: Deque[Tuple[float, str]] = deque(maxlen=keep or 1)
        self._keep = keep
        self._max_replay_bytes = max_replay_bytes
        self._wall_clock = wall_clock

    def record(self, text: str) -> float:
        """Keep a public line as it was sent; returns its time."""
        stamp = self._wall_clock()
        if self._keep:
            self._lines.append((stamp, text))
        return stamp

    def replay(self, count: int) -> List[str]:
        """The last ``count`` lines as history lines (``* [history HH:MM]
        ...``, in the server's local time) followed by the end-of-history
        line; no more than the replay's byte limit, newest kept; [] when
        nothing has been said."""
        if count <= 0 or not self._lines:
            return []
        lines: List[str] = []
        size = 0
        for stamp, text in reversed(self._lines):
            if len(lines) >= count:
                break
            clock = time.strftime("%H:%M", time.localtime(stamp))
            line = protocol.format_history(clock, text)
            size += len(line.encode(protocol.ENCODING)) + 1
            if size > self._max_replay_bytes and lines:
                break
            lines.append(line)
        lines.reverse()
        return lines + [protocol.format_history_end()]

    def __len__(self) -> int:
        return len(self._lines) if self._keep else 0


class HeldLines:
    """The link of a seat whose connection dropped: a ``room.Link`` that
    keeps every line put to it, up to ``limit`` bytes. Past that, the
    oldest lines go first (the newest matter most to someone coming back),
    and are counted."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lines: Deque[bytes] = deque()
        self._size = 0
        #: Lines dropped to stay under the limit.
        self.dropped = 0

    def put(self, data: bytes, last: bool = False) -> None:
        for line in data.splitlines(keepends=True):
            self._lines.append(line)
            self._size += len(line)
        while self._size > self._limit and self._lines:
            self._size -= len(self._lines.popleft())
            self.dropped += 1

    def flush(self) -> None:
        """Nothing to send: the lines wait for their user."""

    def close(self) -> None:
        """Nothing to close."""

    def take(self) -> Tuple[bytes, int]:
        """Everything held, as one block of lines, and how many lines."""
        count = len(self._lines)
        data = b"".join(self._lines)
        self._lines.clear()
        self._size = 0
        return data, count


#: Separates a seat's id from its secret in a token.
_TOKEN_SEPARATOR = "."


#: Random bytes read from the system at a time for the tokens: reading
#: lets the GIL go, and the room makes tokens with its lock held, so a
#: read for every token would let thousands of joining threads queue up
#: on the lock.
RANDOM_POOL_BYTES = 4096
#: Bytes of a token's seat id and of its secret.
_ID_BYTES, _SECRET_BYTES = 6, 18
_pool = b""
# Never contended while there is one room (whose lock is held), so taking
# it never lets the GIL go; it keeps two rooms from sharing bytes.
_pool_lock = threading.Lock()


def new_token() -> Tuple[str, str]:
    """A seat id (not secret: it finds the seat) and a secret (compared in
    constant time). The token the user gets is ``ID.SECRET``."""
    global _pool
    with _pool_lock:
        if len(_pool) < _ID_BYTES + _SECRET_BYTES:
            _pool = secrets.token_bytes(RANDOM_POOL_BYTES)
        drawn = _pool[:_ID_BYTES + _SECRET_BYTES]
        _pool = _pool[_ID_BYTES + _SECRET_BYTES:]
    secret = base64.urlsafe_b64encode(drawn[_ID_BYTES:]).rstrip(b"=")
    return drawn[:_ID_BYTES].hex(), secret.decode()


def join_token(seat_id: str, secret: str) -> str:
    return f"{seat_id}{_TOKEN_SEPARATOR}{secret}"


def split_token(token: str) -> Optional[Tuple[str, str]]:
    """(seat id, secret) of a token, or None for something that is not
    one."""
    seat_id, separator, secret = token.strip().partition(_TOKEN_SEPARATOR)
    if not separator or not seat_id or not secret:
        return None
    return seat_id, secret
