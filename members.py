"""Who is in the room, one connection at a time: a :class:`Member` (its
state, nickname, partner, rights), the :class:`Link` through which the room
reaches its connection, and the states a member goes through. No sockets,
no lock: every field is guarded by the room's lock (see room.py).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

try:
    from typing import Protocol
except ImportError:  # Python 3.7; the room still works, untyped
    Protocol = object  # type: ignore[assignment,misc]

Address = Tuple  # (host, port) for IPv4, (host, port, flow, scope) for IPv6

# A member's states; it moves down this list, but for DETACHED, which goes
# back to ONLINE when its user resumes.
JOINING = "joining"   # connected, choosing a nickname
ONLINE = "online"     # in the registry: can talk and be talked to
DETACHED = "detached"  # its connection dropped: the seat is kept a while
GONE = "gone"         # left, kicked, or out of time: hears nothing more


class Link(Protocol):
    """What the room needs of a connection. ``server.py``'s is an
    ``outbox.Outbox``; the unit tests have a fake one."""

    def put(self, data: bytes, last: bool = False) -> None:
        """Queue encoded lines, without blocking; with ``last``, nothing
        queued later is taken. Never raises."""

    def flush(self) -> None:
        """Start sending what is queued, without blocking."""

    def close(self) -> None:
        """End the connection once what is queued has been sent."""


def host_of(address: Union[Address, str]) -> str:
    """The host of an address (or a host), without the port:
    ``127.0.0.1``, ``::1``; an IPv4 client of a dual-stack server
    (``::ffff:127.0.0.1``) is given as IPv4, so that it is one host
    whichever way it came (and counted once, banned once)."""
    host = address if isinstance(address, str) else address[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:"):]
    return host


def format_address(address: Address) -> str:
    """``127.0.0.1:4321`` or ``[::1]:4321`` (the host as :func:`host_of`
    gives it)."""
    host, port = host_of(address), address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Member:
    """One connection's place in the room: its link and its chat state.
    Every field is guarded by the room's lock."""

    def __init__(self, link: Link, address: Address) -> None:
        self.link = link
        self.address = address
        self.name = format_address(address)  # for the log
        self.state = JOINING
        self.nick = ""
        self.key = ""           # protocol.nick_key(nick), kept with it
        self.partner: Optional[Member] = None
        self.is_admin = False
        self.admin_tries = 0
        self.close_reason = ""  # why the connection ended, for the log
        self.refusals = 0       # lines refused, for the log's budget
        self.nick_failures = 0  # nicknames refused in a row
        self.seat_id = ""       # with secret: the resume token
        self.secret = ""
        self.keep_until = 0.0   # DETACHED: when the seat is given up
        self.joined_at = 0.0    # wall clock, for -whois
        self.spoke_at = 0.0     # monotonic: the last line said, for idle
        self.away = ""          # the -away reason; "" when here
        #: Whose lines must not reach this member: nick_key() -> nickname;
        #: kept by key, so that leaving and coming back does not undo it.
        self.ignoring: Dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<Member {self.nick or '?'} {self.name} {self.state}>"
