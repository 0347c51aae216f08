"""What one address may do: the server's defence against a host that
opens every connection, floods, churns, guesses the admin password, or
comes back after a kick. No sockets, no logging of its own.

The chat counts per *address* (the host part only: every connection
from one machine has its own port), because a prankster's script opens
as many connections as it likes, and what it can take from the others
must not grow with them:

* connections open at once (``--max-per-address``) and new connections a
  minute (``--connects-per-minute``), checked by :meth:`Guard.admit` (on
  the web port, a connect is counted only for a chat connection, by
  :meth:`Guard.count_connect`: the page's files are not connects);
* one flood budget for all of an address's connections
  (:meth:`Guard.bucket`): ten connections share the lines one may send;
* join and leave notices (:meth:`Guard.may_announce`): past a small
  budget, an address's notices are batched by the room;
* wrong admin passwords (:meth:`Guard.admin_wait`,
  :meth:`Guard.admin_failed`): each wrong one makes the address wait
  longer, many lock it out, and a global budget caps the guesses of all
  addresses together, without stopping an address that has not failed;
* bans (:meth:`Guard.ban`): a kicked user's address cannot come back for
  ``--kick-ban-minutes``; an admin may ban and unban by hand.

Every method takes the guard's own lock, so the accept loop, connection
threads and the room (with its lock held: the guard never calls out) may
all use it. ``clock`` is monotonic seconds, replaceable in tests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, Deque, Dict, List, NamedTuple, Optional

import config
import protocol
from members import host_of

__all__ = ["Ban", "Guard", "LogBudget", "TokenBucket", "host_of"]


class Ban(NamedTuple):
    """An address barred from connecting. ``until`` is on the guard's
    clock (monotonic seconds), None for the life of the server."""

    host: str
    nick: str
    reason: str
    until: Optional[float]
    admin: str = ""  # who gave it


class TokenBucket:
    """A token bucket several threads may take from: ``rate`` lines a
    second on average, ``burst`` at once. :meth:`delay` says how long the
    caller should wait before its line; the waiting is the caller's. A
    rate of 0 turns it off."""

    def __init__(self, rate: float, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._clock = clock
        self._tokens = float(self.burst)
        self._stamp = clock()
        self._lock = threading.Lock()

    def delay(self) -> float:
        """Take a token; return the seconds to wait before using it."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens
                               + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= 1
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def level(self) -> float:
        """The tokens there are now (negative: in debt)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens
                               + (now - self._stamp) * self.rate)
            self._stamp = now
            return self._tokens

    def take(self) -> bool:
        """Take a token if there is one, without going into debt."""
        if self.rate <= 0:
            return True
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens
                               + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens < 1:
                return False
            self._tokens -= 1
            return True


class _Host:
    """What the guard knows of one address."""

    __slots__ = ("connections", "connects", "bucket", "notices",
                 "failures", "not_before", "last_failure")

    def __init__(self) -> None:
        self.connections = 0
        self.connects: Deque[float] = deque()  # times of recent connects
        self.bucket: Optional[TokenBucket] = None
        self.notices: Optional[TokenBucket] = None
        self.failures = 0        # wrong admin passwords, recently
        self.not_before = 0.0    # no admin try before this time
        self.last_failure = 0.0


class Guard:
    """Per-address accounting for one server (see the module docstring).
    ``settings`` gives the limits; 0 turns a limit off."""

    def __init__(self, settings: config.ServerConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._hosts: Dict[str, _Host] = {}
        self._bans: Dict[str, Ban] = {}
        # All addresses' wrong passwords together: a budget, so a
        # thousand addresses cannot guess a thousand times as fast.
        self._global_failures = TokenBucket(
            config.ADMIN_GLOBAL_FAILURES_PER_MINUTE / 60.0,
            config.ADMIN_GLOBAL_FAILURES_PER_MINUTE, clock)

    # -- Connections

    def admit(self, host: str, connect: bool = True) -> Optional[str]:
        """Count a new connection from ``host``; None if it may stay, else
        why not (one line for the peer; the connection is not counted and
        :meth:`release` must not be called for it). With ``connect``
        False it is not counted as a connect of the minute yet: the web
        port takes requests for the page's files that way, and counts a
        connect (:meth:`count_connect`) only for a chat connection."""
        with self._lock:
            now = self._clock()
            ban = self._banned(host, now)
            if ban is not None:
                return protocol.banned_address(
                    None if ban.until is None else ban.until - now,
                    ban.reason)
            entry = self._hosts.get(host)
            if entry is None:
                entry = self._hosts[host] = _Host()
            limit = self.settings.max_per_address
            if limit and entry.connections >= limit:
                return (f"too many connections from your address ({limit});"
                        " close one and try again")
            if connect:
                why = self._connect(entry, now)
                if why is not None:
                    return why
            entry.connections += 1
            return None

    def count_connect(self, host: str) -> Optional[str]:
        """Count a connect of the minute for a connection :meth:`admit`
        let in with ``connect`` False, now that it asks for the chat;
        None if it may go on, else why not (one line for the peer; it is
        still counted as a connection until :meth:`release`)."""
        with self._lock:
            entry = self._hosts.setdefault(host, _Host())
            return self._connect(entry, self._clock())

    def _connect(self, entry: _Host, now: float) -> Optional[str]:
        """Count a connect in ``entry`` unless its minute is full: then
        why not (the guard's lock held)."""
        per_minute = self.settings.connects_per_minute
        if not per_minute:
            return None
        stamps = entry.connects
        while stamps and stamps[0] <= now - 60.0:
            stamps.popleft()
        if len(stamps) >= per_minute:
            wait = max(1, int(stamps[0] + 60.0 - now + 0.999))
            return (f"too many connections from your address"
                    f" ({per_minute} a minute); try again in {wait} s")
        stamps.append(now)
        return None

    def release(self, host: str) -> None:
        """A connection :meth:`admit` let in has ended."""
        with self._lock:
            entry = self._hosts.get(host)
            if entry is not None and entry.connections > 0:
                entry.connections -= 1

    def connections(self, host: str) -> int:
        """Connections open from ``host`` now."""
        with self._lock:
            entry = self._hosts.get(host)
            return entry.connections if entry else 0

    def bucket(self, host: str) -> TokenBucket:
        """The flood budget every connection from ``host`` draws from
        (``--rate-limit`` lines a second, ``--rate-burst`` at once)."""
        with self._lock:
            entry = self._hosts.setdefault(host, _Host())
            if entry.bucket is None:
                entry.bucket = TokenBucket(self.settings.rate_limit,
                                           self.settings.rate_burst,
                                           self._clock)
            return entry.bucket

    def may_announce(self, host: str) -> bool:
        """Whether a join or leave from ``host`` may be told to everyone
        at once; False once the address has used its budget of notices
        (the room then batches them). Always True with ``--rate-limit
        0`` (no flood control)."""
        if self.settings.rate_limit <= 0:
            return True
        with self._lock:
            entry = self._hosts.setdefault(host, _Host())
            if entry.notices is None:
                entry.notices = TokenBucket(
                    config.NOTICES_PER_MINUTE / 60.0, config.NOTICE_BURST,
                    self._clock)
            return entry.notices.take()

    def tidy(self) -> None:
        """Forget what no longer matters (addresses with nothing open and
        nothing recent, bans past their time), so memory stays bounded by
        the addresses seen in the last few minutes."""
        with self._lock:
            now = self._clock()
            for host in [host for host, ban in self._bans.items()
                         if ban.until is not None and ban.until <= now]:
                del self._bans[host]
            forget = config.ADMIN_LOCKOUT_SECONDS
            for host, entry in list(self._hosts.items()):
                if entry.connections:
                    continue
                if entry.connects and entry.connects[-1] > now - 60.0:
                    continue
                if entry.failures and entry.last_failure > now - forget:
                    continue
                # A budget not yet full again would be a fresh one.
                if any(bucket is not None and bucket.rate > 0
                       and bucket.level() < bucket.burst
                       for bucket in (entry.bucket, entry.notices)):
                    continue
                del self._hosts[host]

    # -- Admin passwords

    def admin_wait(self, host: str) -> float:
        """Seconds ``host`` must wait before its next admin password is
        even looked at; 0 when it may try now. An address that has not
        failed lately is never held up by others' failures."""
        with self._lock:
            now = self._clock()
            entry = self._hosts.get(host)
            if entry is None or not entry.failures:
                return 0.0
            if entry.last_failure <= now - config.ADMIN_LOCKOUT_SECONDS:
                entry.failures = 0  # long ago: forgiven
                return 0.0
            wait = entry.not_before - now
            if wait <= 0 and entry.failures >= config.ADMIN_FREE_FAILURES \
                    and self._global_failures.level() < 1:
                # Everyone together has guessed too much: who has failed
                # already waits for the budget; others may still try.
                wait = 60.0 / config.ADMIN_GLOBAL_FAILURES_PER_MINUTE
            return max(0.0, wait)

    def admin_failed(self, host: str) -> float:
        """A wrong admin password from ``host``: returns the seconds it
        must now wait (growing with each failure; a lockout after
        ``config.ADMIN_LOCKOUT_FAILURES``)."""
        with self._lock:
            now = self._clock()
            self._global_failures.delay()  # spend, in debt if need be
            entry = self._hosts.setdefault(host, _Host())
            entry.failures += 1
            entry.last_failure = now
            over = entry.failures - config.ADMIN_FREE_FAILURES
            if entry.failures >= config.ADMIN_LOCKOUT_FAILURES:
                wait = config.ADMIN_LOCKOUT_SECONDS
            elif over <= 0:
                wait = 0.0
            else:
                wait = min(config.ADMIN_DELAY_MAX_SECONDS,
                           config.ADMIN_DELAY_SECONDS * 2 ** (over - 1))
            entry.not_before = now + wait
            return wait

    def admin_succeeded(self, host: str) -> None:
        """The right password from ``host``: its failures are forgiven."""
        with self._lock:
            entry = self._hosts.get(host)
            if entry is not None:
                entry.failures = 0
                entry.not_before = 0.0

    # -- Bans

    def ban(self, host: str, minutes: Optional[float], nick: str = "",
            reason: str = "", admin: str = "") -> None:
        """Bar ``host`` from connecting for ``minutes`` (None: for the
        life of the server; 0 or less: not at all). ``nick``, ``reason``
        and the ``admin`` who gave it are kept for :meth:`bans`. A longer
        ban already there stays."""
        if minutes is not None and minutes <= 0:
            return
        host = host_of(host)
        with self._lock:
            now = self._clock()
            until = None if minutes is None else now + minutes * 60.0
            old = self._banned(host, now)
            if old is not None and (old.until is None or (
                    until is not None and old.until >= until)):
                return
            self._bans[host] = Ban(host, nick, reason, until, admin)

    def unban(self, host: str) -> bool:
        """Lift the ban on ``host``; False if there was none."""
        with self._lock:
            return self._bans.pop(host_of(host), None) is not None

    def bans(self) -> List[Ban]:
        """The bans in force, oldest end first (for-ever ones last)."""
        with self._lock:
            now = self._clock()
            live = [ban for ban in self._bans.values()
                    if ban.until is None or ban.until > now]
        return sorted(live, key=lambda ban: (ban.until is None,
                                             ban.until or 0.0))

    def banned(self, host: str) -> Optional[Ban]:
        """The ban on ``host`` in force now, or None."""
        with self._lock:
            return self._banned(host_of(host), self._clock())

    def ban_left(self, ban: Ban) -> Optional[float]:
        """Seconds left of ``ban``; None for one without an end."""
        if ban.until is None:
            return None
        return max(0.0, ban.until - self._clock())

    def _banned(self, host: str, now: float) -> Optional[Ban]:
        ban = self._bans.get(host)
        if ban is not None and ban.until is not None and ban.until <= now:
            del self._bans[host]
            return None
        return ban


class LogBudget(logging.Filter):
    """Caps how fast the chat's log may grow, whatever clients do: at most
    ``burst`` lines at once and ``rate`` a second on average. A line over
    budget is dropped and counted; the next line let through says how
    many were dropped. Errors, and records logged with
    ``extra={"always": True}`` (the server starting and stopping), always
    pass; so do records of a mass event (``extra={"burst": KIND}``):
    ``serverlog`` writes a few of each kind a second and counts the rest
    in one line, a budget of their own."""

    def __init__(self, rate: float = config.LOG_LINES_PER_SECOND,
                 burst: int = config.LOG_BURST,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._bucket = TokenBucket(rate, burst, clock)
        self._lock = threading.Lock()
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "burst", None):
            return True  # counted by serverlog (and maybe not written)
        if record.levelno < logging.ERROR and \
                not getattr(record, "always", False) and \
                not self._bucket.take():
            with self._lock:
                self.dropped += 1
            return False
        with self._lock:
            dropped, self.dropped = self.dropped, 0
        if dropped:
            record.msg = f"[{dropped} log lines dropped] {record.msg}"
        return True
