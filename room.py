"""The chat itself, with no sockets in it: who is in the room, and the rules
of every command.

A :class:`Room` is driven by its front-end (``server.py`` for TCP): the
front-end announces each new connection with :meth:`Room.connect`, hands
over what the connection sent with :meth:`Room.receive`, and reports its
end with :meth:`Room.disconnect`. The room answers by queueing lines on the
connection's :class:`Link`, the only thing it knows of a connection, so it
can be driven by fake links in unit tests, and by other front-ends.

The room keeps the registry the chat is built on, an address -> nickname
dictionary (:meth:`Room.nicknames`), with the :class:`Member` behind each
nickname. A member joins in three steps: ``JOINING`` (asked for a
nickname), ``ONLINE`` (in the registry), ``GONE``.

Each command is a method ``do_<name>``, run for the row ``name`` of
``protocol.COMMANDS`` (found by name and checked before it is called, as
``http.server`` does with ``do_GET``); the table also says which commands
are for admins only, so that check is made once, here, for all of them.

Lock discipline, for the whole module: one lock, ``Room._lock``, guards
everything the room holds: the registry, every member's state, the queue
of announcements. Every public method takes it for its whole run, so each
command happens at once for everyone (a late joiner sees a line either in
full or not at all, and "left" never comes before "joined"). With the lock
held the room only *queues* lines (:meth:`Link.put` must not block or
call back into the room); the links it queued on are flushed after the
lock is released, by the thread whose call queued them, so a burst of
lines from one user costs one send per recipient.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import threading
from typing import (Callable, Dict, Iterator, List, Optional, Sequence, Set,
                    Tuple)

try:
    from typing import Protocol
except ImportError:  # Python 3.7; the room still works, untyped
    Protocol = object  # type: ignore[assignment,misc]

import config
import protocol
from protocol import Command, Frame

log = logging.getLogger("chat")

Address = Tuple  # (host, port) for IPv4, (host, port, flow, scope) for IPv6

# A member's states; it moves only down this list.
JOINING = "joining"   # connected, choosing a nickname
ONLINE = "online"     # in the registry: can talk and be talked to
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


def format_address(address: Address) -> str:
    """``127.0.0.1:4321`` or ``[::1]:4321``; an IPv4 client of a
    dual-stack server (``::ffff:127.0.0.1``) is shown as IPv4."""
    host, port = address[0], address[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:"):]
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
        self.partner: Optional[Member] = None
        self.is_admin = False
        self.admin_tries = 0
        self.close_reason = ""  # why the connection ended, for the log

    def __repr__(self) -> str:
        return f"<Member {self.nick or '?'} {self.name} {self.state}>"


class Room:
    """The chat room. ``on_shutdown(reason)`` is called (with the lock
    held: it must only hand the work to another thread) when an admin
    types ``down server``: every member has the notice by then; the
    front-end stops accepting and closes the connections."""

    def __init__(self, settings: config.ServerConfig,
                 on_shutdown: Callable[[str], None] = lambda reason: None
                 ) -> None:
        self.settings = settings
        self._on_shutdown = on_shutdown
        self._password = settings.admin_password.encode(protocol.ENCODING)
        self._lock = threading.Lock()
        self._members: Set[Member] = set()      # every connection
        self._nicks: Dict[Address, str] = {}    # the registry
        self._by_key: Dict[str, Member] = {}    # nick_key -> member, online
        self._events: List[Tuple[str, str]] = []  # batched joins, departures
        self._touched: Set[Link] = set()        # links to flush
        self._closed = False

    # -- What the front-end calls

    def connect(self, link: Link, address: Address) -> Optional[Member]:
        """A new connection: ask it for a nickname. None when the room is
        shutting down (the front-end just closes the connection)."""
        with self._locked():
            if self._closed:
                return None
            member = Member(link, address)
            self._members.add(member)
            self._send(member, protocol.format_nick_prompt())
        log.info("%s: connected", member.name)
        return member

    def receive(self, member: Member, frames: Sequence[Frame]) -> None:
        """Run what ``member`` sent, a batch of framed lines: a nickname
        while joining, then commands."""
        with self._locked():
            for frame in frames:
                if self._closed or member.state == GONE:
                    # Shutting down (everyone has had the last line), or
                    # gone (kicked, say): the rest goes nowhere.
                    return
                if member.state == JOINING:
                    self._choose_nick(member, frame)
                else:
                    line = self._decode(member, frame)
                    if line is not None:
                        self._run(member, line)

    def disconnect(self, member: Member, reason: str = "",
                   farewell: str = "") -> None:
        """The connection ended (or must end, with ``farewell`` as its
        last line): take the member out and tell the others."""
        with self._locked():
            if member not in self._members:
                return
            self._members.discard(member)
            member.close_reason = member.close_reason or reason
            if farewell:
                self._send(member, farewell, last=True)
            if member.state == ONLINE:
                self._remove(member)
                self._announce("left", member.nick)
            member.state = GONE
            member.link.close()
        why = f": {member.close_reason}" if member.close_reason else ""
        if member.nick:
            log.info("%s (%s) left%s", member.nick, member.name, why)
        else:
            log.info("%s: disconnected%s", member.name, why)

    def expire(self, member: Member) -> bool:
        """The member's time to choose a nickname is up: tell it and close,
        unless it has joined already (True if it had not)."""
        with self._locked():
            if member.state != JOINING:
                return False
            member.state = GONE
            member.close_reason = "no nickname in time"
            self._send(member, protocol.format_register_timeout(), last=True)
            member.link.close()
            return True

    def tick(self) -> None:
        """Send the batched announcements (the front-end calls this every
        ``config.ANNOUNCE_INTERVAL`` seconds)."""
        with self._locked():
            self._send_events()

    def shut_down(self, reason: str = "") -> List[Member]:
        """Give every connection the shutdown notice, after what was already
        queued for it, as its last line; let no one else in. Returns the
        members, whose links the front-end then drains and closes. Safe to
        call more than once."""
        with self._locked():
            if not self._closed:
                self._closed = True
                notice = protocol.encode_line(protocol.format_shutdown(reason))
                for member in self._members:
                    member.link.put(notice, last=True)
                    self._touched.add(member.link)
            return list(self._members)

    # -- Looking (for the front-end and tests)

    def nicknames(self) -> Dict[Address, str]:
        """A copy of the registry: address -> nickname."""
        with self._lock:
            return dict(self._nicks)

    def __len__(self) -> int:
        return len(self._nicks)

    def check_password(self, attempt: str) -> bool:
        """Whether ``attempt`` is the admin password; compared in constant
        time, so that timing does not leak the password. (No lock needed:
        the password never changes.)"""
        return bool(self._password) and hmac.compare_digest(
            attempt.encode(protocol.ENCODING), self._password)

    # -- Inside: every method below runs with the lock held

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the lock; once it is released, flush the links the caller
        queued lines on."""
        with self._lock:
            try:
                yield
            finally:
                touched, self._touched = self._touched, set()
        for link in touched:
            link.flush()

    def _send(self, member: Member, *lines: str, last: bool = False) -> None:
        member.link.put(b"".join(protocol.encode_line(text)
                                 for text in lines), last)
        self._touched.add(member.link)

    def _broadcast(self, text: str, exclude: Optional[Member] = None) -> bool:
        """Send ``text`` to everyone online but ``exclude``, encoded once;
        False if nobody was there to receive it."""
        data = protocol.encode_line(text)
        sent = False
        for member in self._by_key.values():
            if member is not exclude:
                member.link.put(data)
                self._touched.add(member.link)
                sent = True
        return sent

    def _refuse(self, member: Member, error: str) -> None:
        """Send an error line to ``member``, and log it once."""
        log.info("%s (%s): %s", member.nick or "-", member.name,
                 error[len(protocol.ERROR):])
        self._send(member, error)

    def _decode(self, member: Member, frame: Frame) -> Optional[str]:
        """The frame's text, or None after telling the member what was
        wrong with it."""
        if frame is protocol.OVERLONG:
            self._refuse(member, protocol.format_line_too_long(
                self.settings.max_line))
            return None
        try:
            return protocol.decode_line(frame)  # type: ignore[arg-type]
        except protocol.ProtocolError as error:
            self._refuse(member, protocol.format_error(str(error)))
            return None

    # -- Joining

    def _choose_nick(self, member: Member, frame: Frame) -> None:
        """Take a nickname, or say why not and ask again."""
        nick = self._nick_from(member, frame)
        if nick is not None and nick.lower() == "-exit":
            member.state = GONE
            member.link.close()
            return
        if nick:
            reason = protocol.nick_error(nick)
            if reason is None and protocol.nick_key(nick) in self._by_key:
                reason = "it is taken, choose another"
            if reason is None:
                self._join(member, nick)
                return
            self._refuse_nick(member, nick, reason)
        self._send(member, protocol.format_nick_prompt())

    def _nick_from(self, member: Member, frame: Frame) -> Optional[str]:
        """The nickname a frame offers, or None after saying why it cannot
        be one."""
        if frame is protocol.OVERLONG:
            self._refuse_nick(member, "…", "it is far too long")
            return None
        try:
            return protocol.decode_line(frame).strip()  # type: ignore
        except protocol.ProtocolError as error:
            shown = bytes(frame).decode(  # type: ignore[arg-type]
                protocol.ENCODING, "replace")
            self._refuse_nick(member, shown, str(error).split(",")[0])
            return None

    def _refuse_nick(self, member: Member, nick: str, reason: str) -> None:
        # The log gets the reason only: people type all sorts of things at
        # a nickname prompt, passwords included.
        log.info("%s: nickname refused: %s", member.name, reason)
        self._send(member, protocol.format_nick_refused(nick, reason))

    def _join(self, member: Member, nick: str) -> None:
        """Put ``member`` in the registry as ``nick`` and greet it."""
        member.nick = nick
        member.state = ONLINE
        self._nicks[member.address] = nick
        self._by_key[protocol.nick_key(nick)] = member
        first = [member]
        for other in self._by_key.values():
            if len(first) >= protocol.MAX_NAMES_SHOWN:
                break
            if other is not member:
                first.append(other)
        self._send(member, protocol.format_welcome(nick),
                   protocol.format_commands_hint(),
                   protocol.format_users(
                       [m.nick for m in first], nick,
                       [m.nick for m in first if m.is_admin],
                       total=len(self._by_key)))
        log.info("%s registered as %s", member.name, nick)
        self._announce("joined", nick, exclude=member)

    def _remove(self, member: Member) -> None:
        """Take an online member out of the registry."""
        del self._nicks[member.address]
        del self._by_key[protocol.nick_key(member.nick)]

    # -- Announcing joins and departures

    def _announce(self, kind: str, nick: str,
                  exclude: Optional[Member] = None) -> None:
        """Tell everyone that ``nick`` joined or left: at once in a small
        room; in a large one (more than ``announce_limit`` users, where
        a room filling up would send N*N/2 lines) batched, by :meth:`tick`.
        """
        if self._closed:
            return
        # After a departure the registry no longer counts the one who left.
        size = len(self._by_key) + (kind == "left")
        if size > self.settings.announce_limit:
            self._events.append((kind, nick))
            return
        self._send_events()  # what is batched happened first
        self._broadcast(protocol.format_joined(nick) if kind == "joined"
                        else protocol.format_left(nick), exclude)

    def _send_events(self) -> None:
        """Send the batched announcements, in order: one line for each run
        of joins or of departures."""
        start = 0
        events = self._events
        while start < len(events):
            kind = events[start][0]
            end = start
            while end < len(events) and events[end][0] == kind:
                end += 1
            nicks = [nick for _, nick in events[start:end]]
            self._broadcast(protocol.format_joined_many(nicks)
                            if kind == "joined"
                            else protocol.format_left_many(nicks))
            start = end
        events.clear()

    # -- Commands

    def _run(self, member: Member, line: str) -> None:
        """Run one line as a command."""
        if not line.strip():
            return
        try:
            command = protocol.parse_command(line)
        except protocol.CommandError as error:
            self._refuse(member, protocol.format_error(str(error)))
            return
        spec = protocol.COMMANDS_BY_NAME[command.name]
        handler = getattr(self, "do_" + command.name, None)
        if handler is None:
            self._refuse(member, protocol.format_error(
                f"{spec.flag} is not available on this server"))
            return
        if spec.admin_only and not member.is_admin:
            self._refuse(member, protocol.format_admin_only(spec.admin_only))
            return
        log.debug("%s: -%s", member.nick, command.name)
        handler(member, command)

    def do_say(self, member: Member, command: Command) -> None:
        """A plain line: to the partner if there is one, else to all."""
        partner = member.partner
        if partner is None:
            self._say_to_all(member, command.text)
        elif partner.state != ONLINE:
            self._refuse(member, protocol.format_partner_gone(partner.nick))
        else:
            self._send(partner, protocol.format_private(member.nick,
                                                        command.text))

    def do_to(self, member: Member, command: Command) -> None:
        target = self._find_other(member, command.target)
        if target is None:
            return
        if command.text:
            self._send(target, protocol.format_private(member.nick,
                                                       command.text))
        else:
            member.partner = target
            self._send(member, protocol.format_partner(target.nick))

    def do_all(self, member: Member, command: Command) -> None:
        if command.text:
            self._say_to_all(member, command.text)
        else:
            member.partner = None
            self._send(member, protocol.format_everyone())

    def do_users(self, member: Member, command: Command) -> None:
        online = list(self._by_key.values())
        self._send(member, protocol.format_users(
            [m.nick for m in online], member.nick,
            [m.nick for m in online if m.is_admin]))

    def do_help(self, member: Member, command: Command) -> None:
        self._send(member, *protocol.format_help())

    def do_exit(self, member: Member, command: Command) -> None:
        self._send(member, protocol.format_goodbye(member.nick), last=True)
        self._remove(member)
        self._announce("left", member.nick)
        member.state = GONE
        member.link.close()

    def do_admin(self, member: Member, command: Command) -> None:
        if member.is_admin:
            self._send(member, protocol.format_admin_granted())
            return
        if member.admin_tries >= config.ADMIN_MAX_TRIES:
            self._refuse(member, protocol.format_admin_locked())
            return
        if self.check_password(command.target):
            member.is_admin = True
            log.info("%s (%s) is now an admin", member.nick, member.name)
            self._send(member, protocol.format_admin_granted())
            return
        member.admin_tries += 1
        log.warning("%s (%s): wrong admin password, try %d of %d",
                    member.nick, member.name, member.admin_tries,
                    config.ADMIN_MAX_TRIES)
        self._send(member, protocol.format_admin_refused(
            config.ADMIN_MAX_TRIES - member.admin_tries))

    def do_kick(self, member: Member, command: Command) -> None:
        target = self._find_other(member, command.target)
        if target is None:
            return
        reason = command.text
        log.info("%s (%s) kicked %s (%s)%s", member.nick, member.name,
                 target.nick, target.name, f": {reason}" if reason else "")
        target.close_reason = f"kicked by {member.nick}"
        self._send(target, protocol.format_you_were_kicked(member.nick,
                                                           reason),
                   last=True)
        self._remove(target)
        target.state = GONE
        target.link.close()
        self._send_events()  # what is batched happened first
        self._broadcast(protocol.format_kicked(target.nick, member.nick,
                                               reason))

    def do_down(self, member: Member, command: Command) -> None:
        if self._closed:
            return  # another admin was quicker
        reason = f"by admin {member.nick}"
        self._closed = True
        notice = protocol.encode_line(protocol.format_shutdown(reason))
        for other in self._members:
            other.link.put(notice, last=True)
            self._touched.add(other.link)
        self._on_shutdown(reason)

    # -- Helpers for commands

    def _find_other(self, member: Member, nick: str) -> Optional[Member]:
        """The online user ``nick``, not oneself; or None, after telling
        the member why."""
        target = self._by_key.get(protocol.nick_key(nick))
        if target is None:
            self._refuse(member, protocol.format_no_such_user(nick))
        elif target is member:
            self._refuse(member, protocol.format_not_yourself())
        else:
            return target
        return None

    def _say_to_all(self, member: Member, text: str) -> None:
        if not self._broadcast(protocol.format_message(member.nick, text),
                               exclude=member):
            self._refuse(member, protocol.format_nobody_else())
