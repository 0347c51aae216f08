"""The probe pair of the churn scenario: two users of their own, in a
process of their own, exchanging a private line every few milliseconds
(A to B, then B to A, and so on) while thousands of others drop and join.
Each line carries its sequence number and the time it was handed to the
kernel; the receiver notes when it could be read. The main process then
looks at the delays of the lines sent during each event.

Commands over the pipe: ``stop`` (stop sending, wait for the last lines,
reply ``probe_result``). The process replies ``probe_ready`` once both
users are registered, and sends from then on.
"""

from __future__ import annotations

import array
import multiprocessing.connection
import selectors
import signal
import socket
from typing import Any, Dict, List, Optional, Tuple

from common import IRC, NS_PER_S, now_ns

#: How long the probe waits for its last lines after ``stop``.
PROBE_QUIET_NS = 2 * NS_PER_S
PROBE_REGISTER_TIMEOUT_NS = 30 * NS_PER_S
#: Lines the probe sends at most, in all: a bound on its memory.
PROBE_MAX_LINES = 1_000_000


class ProbeUser:
    """One of the pair: a blocking-free socket and what it read."""

    def __init__(self, nick: str, family: int,
                 address: Tuple[Any, ...]) -> None:
        self.nick = nick
        self.sock = socket.create_connection(address[:2], timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.inbuf = b""
        self.out = bytearray()
        self.ready = False

    def send(self, data: bytes) -> None:
        self.out += data
        self.flush()

    def flush(self) -> None:
        if self.out:
            try:
                sent = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                return
            del self.out[:sent]

    def lines(self) -> List[bytes]:
        """Complete lines read now (none if nothing came)."""
        try:
            data = self.sock.recv(256 * 1024)
        except (BlockingIOError, InterruptedError):
            return []
        if not data:
            raise ConnectionError(f"{self.nick}: closed by the server")
        self.inbuf += data
        *lines, self.inbuf = self.inbuf.split(b"\n")
        return lines


def probe_entry(conn: multiprocessing.connection.Connection, family: int,
                address: Tuple[Any, ...], nicks: Tuple[str, str],
                interval_ns: int, protocol: str, deadline_ns: int,
                oper: Tuple[str, str] = ("", "")) -> None:
    """Body of the probe process. ``oper``: the IRC operator's name and
    password, with which each of the pair takes mode +F (no flood
    throttling) on ngIRCd."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        conn.send(("probe_result", Probe(conn, family, address, nicks,
                                         interval_ns, protocol,
                                         deadline_ns, oper).run()))
    except Exception as error:   # report it rather than die silently
        try:
            conn.send(("error", f"probe: {error!r}"))
        except OSError:
            pass


class Probe:
    def __init__(self, conn: multiprocessing.connection.Connection,
                 family: int, address: Tuple[Any, ...],
                 nicks: Tuple[str, str], interval_ns: int, protocol: str,
                 deadline_ns: int, oper: Tuple[str, str]) -> None:
        self.conn = conn
        self.oper = oper
        self.irc = protocol == IRC
        self.interval_ns = interval_ns
        self.deadline_ns = deadline_ns
        self.users = [ProbeUser(nick, family, address) for nick in nicks]
        self.selector = selectors.DefaultSelector()
        for user in self.users:
            self.selector.register(user.sock, selectors.EVENT_READ, user)
        self.selector.register(conn.fileno(), selectors.EVENT_READ, None)
        self.sent = array.array("q")      # send time of line i
        self.arrived = array.array("q")   # arrival time, 0 if none

    def run(self) -> Dict[str, Any]:
        for user in self.users:
            if self.irc:
                user.send(b"NICK %s\r\nUSER %s 0 * :%s\r\n"
                          % ((user.nick.encode(),) * 3))
            else:
                user.send(user.nick.encode() + b"\n")
        limit = now_ns() + PROBE_REGISTER_TIMEOUT_NS
        while not all(u.ready for u in self.users):
            if now_ns() > limit:
                raise RuntimeError("the probe pair did not register")
            self._serve(0.05)
        self.conn.send(("probe_ready", now_ns()))
        next_ns = now_ns()
        stopped = False
        while not stopped and now_ns() < self.deadline_ns:
            now = now_ns()
            if now >= next_ns and len(self.sent) < PROBE_MAX_LINES:
                self._send_line(now)
                next_ns += self.interval_ns
                if next_ns < now:  # the probe itself fell behind
                    next_ns = now + self.interval_ns
            stopped = self._serve(max(0, next_ns - now_ns()) / NS_PER_S)
        quiet_until = now_ns() + PROBE_QUIET_NS
        while 0 in self.arrived and now_ns() < quiet_until:
            self._serve(0.05)
        return {"sent_ns": self.sent.tobytes(),
                "arrived_ns": self.arrived.tobytes()}

    def _send_line(self, now: int) -> None:
        seq = len(self.sent)
        sender = self.users[seq % 2]
        receiver = self.users[1 - seq % 2]
        self.sent.append(now)
        self.arrived.append(0)
        if self.irc:
            sender.send(b"PRIVMSG %s :p %d %d\r\n"
                        % (receiver.nick.encode(), seq, now))
        else:
            sender.send(b"-to %s p %d %d\n"
                        % (receiver.nick.encode(), seq, now))

    def _serve(self, timeout: float) -> bool:
        """Read what came; True once the main process said stop."""
        stop = False
        for key, _ in self.selector.select(timeout):
            user: Optional[ProbeUser] = key.data
            if user is None:
                while self.conn.poll():
                    if self.conn.recv()[0] == "stop":
                        stop = True
                continue
            arrived = now_ns()
            for line in user.lines():
                self._line(user, line.rstrip(b"\r"), arrived)
        for user in self.users:
            user.flush()
        return stop

    def _line(self, user: ProbeUser, line: bytes, arrived: int) -> None:
        if not user.ready:
            if self.irc and b" 001 " in line and self.oper[0]:
                user.send(b"OPER %s %s\r\nMODE %s +F\r\n" % (
                    self.oper[0].encode(), self.oper[1].encode(),
                    user.nick.encode()))
            elif (b" 001 " in line) if self.irc else line.startswith(
                    b"* Welcome, "):
                user.ready = True
            elif self.irc and b" MODE " in line and b"F" in line.split(
                    b" MODE ", 1)[1]:
                user.ready = True
            elif line.startswith(b"! ") or b" 433 " in line:
                raise RuntimeError(f"{user.nick}: refused: {line[:100]!r}")
        if self.irc and line.startswith(b"PING"):
            user.send(b"PONG" + line[4:] + b"\r\n")
            return
        parts = line.split()
        if len(parts) >= 3 and parts[-3] in (b"p", b":p"):
            try:
                seq = int(parts[-2])
            except ValueError:
                return
            if 0 <= seq < len(self.arrived) and not self.arrived[seq]:
                self.arrived[seq] = arrived
