"""The chat itself, with no sockets in it: who is in the room, and the rules
of every command.

A :class:`Room` is driven by its front-end (``server.py`` for TCP): the
front-end announces each new connection with :meth:`Room.connect`, hands
over what the connection sent with :meth:`Room.receive`, and reports its
end with :meth:`Room.disconnect`. The room answers by queueing lines on the
connection's :class:`Link`, the only thing it knows of a connection, so it
can be driven by fake links in unit tests, and by other front-ends.

The room keeps the registry the chat is built on, an address -> nickname
dictionary (:meth:`Room.nicknames`), with the ``members.Member`` behind
each nickname. A member goes ``JOINING`` (asked for a nickname), ``ONLINE``
(in the registry), and ``GONE``; or, when its connection drops, it waits
``DETACHED`` for its user to ``-resume`` (the seat kept, lines held for it:
``memory.py``), and is ``ONLINE`` again. The room also keeps the last
public lines for late joiners and ``-history`` (``memory.History``), and
hands every public line to a transcript, if there is one.

Each command is a method ``do_<name>`` of ``commands.Commands``, which
the room mixes in, run for the row ``name`` of ``protocol.COMMANDS`` (found
by name and checked before it is called, as ``http.server`` does with
``do_GET``); the table also says which commands are for admins only, so
that check is made once, there, for all of them.

Lock discipline, for the room and everything it uses (members.py,
commands.py, memory.py): one lock, ``Room._lock``, guards everything the
room holds: the registry, every member's state, the queue of
announcements, the history, the seats kept. Every public method takes it
for its whole run, so each command happens at once for everyone (a late
joiner sees a line either in full or not at all, and "left" never comes
before "joined"). With the lock held the room only *queues* lines
(:meth:`Link.put` must not block or call back into the room); the links it
queued on are flushed after the lock is released, by the thread whose call
queued them, so a burst of lines from one user costs one send per
recipient.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import threading
import time
from collections import deque
from typing import (Callable, Deque, Dict, Iterator, List, Optional, Sequence,
                    Set, Tuple)

import config
import guard
import memory
import protocol
from commands import Commands
from moderation import Mutes
# The states and Member are the room's vocabulary; importers of the room
# find them here too.
from members import (DETACHED, GONE, JOINING, ONLINE, Address,  # noqa: F401
                     Link, Member, format_address, host_of)
from protocol import Frame

log = logging.getLogger("chat")
# What happens to many users at once is counted, past a rate, rather than
# logged line by line (see serverlog.py).
_CONNECTED = {"burst": "new connections"}
_REGISTERED = {"burst": "users registered"}
_DEPARTED = {"burst": "users disconnected"}

class Room(Commands):
    """The chat room.

    ``on_shutdown(reason)`` is called (with the lock held: it must only
    hand the work to another thread) when an admin types ``down server``:
    every member has the notice by then; the front-end stops accepting and
    closes the connections. ``transcript(stamp, line)``, if given, gets
    every line sent to everyone (never a private one), with the lock held:
    it must not block. ``motd`` is the message of the day, shown on
    joining. ``clock`` (monotonic) and ``wall_clock`` (seconds since the
    epoch) may be replaced in tests.
    """

    def __init__(self, settings: config.ServerConfig,
                 on_shutdown: Callable[[str], None] = lambda reason: None,
                 transcript: Optional[Callable[[float, str], None]] = None,
                 motd: Sequence[str] = (),
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._on_shutdown = on_shutdown
        self._transcript = transcript
        self._clock = clock
        self._wall_clock = wall_clock
        self._password = settings.admin_password.encode(protocol.ENCODING)
        #: What each address may do (connections, floods, passwords, bans);
        #: the front-end asks it before a connection reaches the room.
        self.guard = guard.Guard(settings, clock)
        self._lock = threading.Lock()
        self._members: Set[Member] = set()      # every connection's member
        self._nicks: Dict[Address, str] = {}    # the registry
        self._by_key: Dict[str, Member] = {}    # nick_key -> member in it
        self._seats: Dict[str, Member] = {}     # seat id -> member in it
        # Seats kept for dropped connections, by when they are given up:
        # the grace is the same for all, so the oldest comes first.
        self._detached: Deque[Tuple[float, Member]] = deque()
        self._events: List[Tuple[str, str]] = []  # batched joins, departures
        # Joins and departures of addresses past their notice budget (a
        # host connecting and leaving in a loop): told once a second, in
        # at most two lines, by tick().
        self._quiet_joined: List[str] = []
        self._quiet_left: List[str] = []
        self._touched: Set[Link] = set()        # links to flush
        self._history = memory.History(settings.history_keep,
                                       config.MAX_HISTORY_REPLAY_BYTES,
                                       wall_clock)
        self._motd = list(motd)
        self._mutes = Mutes(clock)       # by nick_key; bans: self.guard
        self._ignorers: Set[Member] = set()  # members who -ignore someone
        self._closed = False

    # -- What the front-end calls

    def connect(self, link: Link, address: Address) -> Optional[Member]:
        """A new connection: ask it for a nickname. None when the room is
        shutting down, or the address is banned (told so): the front-end
        just lets the link drain and close."""
        with self._locked():
            if self._closed:
                return None
            # The front-end's guard.admit() refused it already, if it
            # asked; a front-end that did not is covered here.
            ban = self.guard.banned(host_of(address))
            if ban is not None:
                link.put(protocol.encode_line(protocol.format_refused(
                    protocol.banned_address(self.guard.ban_left(ban),
                                            ban.reason))), last=True)
                self._touched.add(link)
                link.close()
            else:
                member = Member(link, address)
                self._members.add(member)
                self._send(member, protocol.format_nick_prompt())
        if ban is not None:
            log.info("%s: refused: banned", format_address(address))
            return None
        log.info("%s: connected", member.name, extra=_CONNECTED)
        return member

    def receive(self, member: Member, frames: Sequence[Frame],
                link: Optional[Link] = None) -> Member:
        """Run what ``member`` sent on ``link`` (by default its own), a
        batch of framed lines: a nickname (or ``-resume``) while joining,
        then commands. Returns the member the connection speaks for from
        now on: after ``-resume``, the seat it got back."""
        with self._locked():
            for frame in frames:
                if self._closed or member.state not in (JOINING, ONLINE) \
                        or (link is not None and link is not member.link):
                    # Shutting down (everyone has had the last line), gone
                    # (kicked, say), or the seat went to a new connection:
                    # the rest goes nowhere.
                    break
                if member.state == JOINING:
                    member = self._choose_nick(member, frame)
                else:
                    line = self._decode(member, frame)
                    if line is not None:
                        self._run(member, line)
        return member

    def disconnect(self, member: Member, reason: str = "",
                   farewell: str = "", link: Optional[Link] = None,
                   dropped: bool = False) -> None:
        """The connection on ``link`` (by default the member's) ended, or
        must end with ``farewell`` as its last line: take the member out
        and tell the others. With ``dropped`` (the network lost it, rather
        than the user leaving or the server cutting it), an online member's
        seat is kept for ``--resume-grace`` seconds instead."""
        with self._locked():
            kept, ended = self._depart(member, reason, farewell, link,
                                       dropped)
        if ended is not None:
            ended.close()
        self._log_departure(member, kept)

    def _depart(self, member: Member, reason: str, farewell: str,
                link: Optional[Link], dropped: bool
                ) -> Tuple[Optional[bool], Optional[Link]]:
        """:meth:`disconnect`, with the lock held. Returns whether the
        seat was kept (None if the member was gone already), and the link
        the caller closes once the lock is released and the links are
        flushed (closing shuts a socket down: a system call, which lets
        the GIL go, and thousands of threads would queue on the lock)."""
        if member not in self._members or (
                link is not None and link is not member.link):
            return None, None  # gone already, or its seat went to another
        self._members.discard(member)
        member.close_reason = member.close_reason or reason
        if farewell:
            self._send(member, farewell, last=True)
        ended = member.link
        if member.state == ONLINE and dropped and not self._closed \
                and self.settings.resume_grace > 0:
            self._detach(member)
            return True, ended
        if member.state == ONLINE:
            self._leave(member)
        member.state = GONE
        return False, ended

    def _log_departure(self, member: Member, kept: Optional[bool]) -> None:
        if kept is None:
            return
        why = f": {member.close_reason}" if member.close_reason else ""
        unlogged = member.refusals - config.LOG_REFUSALS_PER_CONNECTION
        if unlogged > 0:
            why += f" ({unlogged} more refused lines, not logged)"
        if kept:
            log.info("%s (%s) lost connection%s; seat kept %g s",
                     member.nick, member.name, why,
                     self.settings.resume_grace, extra=_DEPARTED)
        elif member.nick:
            log.info("%s (%s) left%s", member.nick, member.name, why,
                     extra=_DEPARTED)
        else:
            log.info("%s: disconnected%s", member.name, why,
                     extra=_DEPARTED)

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
        """Give up the seats kept too long, and send the batched
        announcements (the front-end calls this every
        ``config.ANNOUNCE_INTERVAL`` seconds)."""
        self.guard.tidy()
        with self._locked():
            now = self._clock()
            while self._detached and self._detached[0][0] <= now:
                keep_until, seat = self._detached.popleft()
                # Skip seats that came back (and perhaps dropped again).
                if seat.state == DETACHED and seat.keep_until == keep_until:
                    seat.close_reason = "did not come back in time"
                    self._leave(seat)
                    seat.state = GONE
                    log.info("%s (%s) left: %s", seat.nick, seat.name,
                             seat.close_reason, extra=_DEPARTED)
            self._send_events()
            self._send_quiet_events()

    def shut_down(self, reason: str = "") -> List[Member]:
        """Give every connection the shutdown notice, after what was already
        queued for it, as its last line; let no one else in. Returns the
        members, whose links the front-end then drains and closes. Safe to
        call more than once."""
        with self._locked():
            if not self._closed:
                self._close_room(reason)
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

    def _broadcast(self, text: str, exclude: Optional[Member] = None,
                   sender: Optional[Member] = None) -> bool:
        """Send ``text`` to everyone in the room but ``exclude`` and those
        who ignore ``sender``, encoded once (a seat kept for a dropped user
        keeps it for them); False if nobody else was there."""
        data = protocol.encode_line(text)
        # Those who ignore the sender (found among the few who ignore
        # anyone, so that the loop below, run for every line and every
        # member, stays as short as it can be).
        skip = {exclude}
        if sender is not None and self._ignorers:
            skip.update(member for member in self._ignorers
                        if sender.key in member.ignoring)
        touch = self._touched.add
        for member in self._by_key.values():
            if member not in skip:
                member.link.put(data)
                touch(member.link)
        # Someone is there, whether or not they ignore the sender: being
        # ignored by everyone must not look different.
        excluded = exclude is not None and \
            self._by_key.get(exclude.key) is exclude
        return len(self._by_key) > excluded

    def _tell_everyone(self, text: str, exclude: Optional[Member] = None,
                       history: bool = False) -> None:
        """A notice for the whole room, now, after the announcements still
        batched or held back (they happened first), and into the
        transcript (and, with ``history``, the history)."""
        self._send_events()
        self._send_quiet_events()
        self._broadcast(text, exclude)
        self._record(text, history)

    def _record(self, text: str, history: bool = True) -> None:
        """Keep a public line in the transcript and, with ``history``, in
        the history. Joins and departures stay out of the history: in a
        class that arrives together they would crowd out what was said,
        and the joiner sees who is here anyway."""
        if history:
            stamp = self._history.record(text)
        else:
            stamp = self._wall_clock()
        if self._transcript is not None:
            self._transcript(stamp, text)

    def _refuse(self, member: Member, error: str, logged: str = "") -> None:
        """Send an error line to ``member``, and log it (or ``logged``,
        when the error quotes what the user typed) once: the first
        ``config.LOG_REFUSALS_PER_CONNECTION`` of a connection, then only
        counted, the count logged when it ends. Errors may quote what the
        user typed (``no such user: ...``): escaped for the log."""
        member.refusals += 1
        if member.refusals <= config.LOG_REFUSALS_PER_CONNECTION:
            log.info("%s (%s): %s", member.nick or "-", member.name,
                     protocol.log_safe(logged or error[len(protocol.ERROR):]))
        self._send(member, error)

    def _decode(self, member: Member, frame: Frame) -> Optional[str]:
        """The frame's text, or None after telling the member what was
        wrong with it."""
        if not self._fits(frame):
            self._refuse(member, protocol.format_line_too_long(
                self.settings.max_line))
            return None
        try:
            return protocol.decode_line(frame)  # type: ignore[arg-type]
        except protocol.ProtocolError as error:
            self._refuse(member, protocol.format_error(str(error)))
            return None

    def _fits(self, frame: Frame) -> bool:
        """Whether a frame is a line within ``--max-line`` bytes, not
        counting the ``\r`` of a line that ended in ``\r\n`` (the
        front-end frames with one byte to spare for it)."""
        if frame is protocol.OVERLONG:
            return False
        size = len(frame)  # type: ignore[arg-type]
        return size <= self.settings.max_line or (
            size == self.settings.max_line + 1
            and frame.endswith(b"\r"))  # type: ignore[union-attr]

    # -- Joining

    def _choose_nick(self, member: Member, frame: Frame) -> Member:
        """Take a nickname (or a seat back, with ``-resume``), or say why
        not and ask again. Returns the member the connection now is."""
        nick = self._nick_from(member, frame)
        if nick is not None and nick.lower() == "-exit":
            member.state = GONE
            member.link.close()
            return member
        if nick is not None and protocol.is_http_request(nick):
            # A browser, or a form posted to the port: its body must not
            # become a chat session.
            self._cut(member, protocol.format_not_http(), "HTTP request")
            return member
        if nick and nick.split(None, 1)[0].lower() == "-resume":
            seat = self._resume(member, (nick.split(None, 1) + [""])[1])
            if seat is not None:
                return seat
            member.nick_failures += 1
        elif nick:
            reason = protocol.nick_error(nick)
            if reason is None and protocol.nick_key(nick) in self._by_key:
                reason = protocol.NICK_TAKEN
            if reason is None:
                self._join(member, nick)
                return member
            self._refuse_nick(member, nick, reason)
        if member.nick_failures >= config.MAX_NICK_FAILURES:
            # Whatever is talking, it is not someone choosing a nickname.
            self._cut(member, protocol.format_too_many_nicks(),
                      "too many refused nicknames")
            return member
        self._send(member, protocol.format_nick_prompt())
        return member

    def _cut(self, member: Member, farewell: str, why: str) -> None:
        """Close a joining connection at once, with one last line."""
        member.state = GONE
        member.close_reason = why
        self._send(member, farewell, last=True)
        member.link.close()

    def _nick_from(self, member: Member, frame: Frame) -> Optional[str]:
        """The nickname a frame offers, or None after saying why it cannot
        be one."""
        if not self._fits(frame):
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
        member.nick_failures += 1
        member.refusals += 1
        if member.refusals <= config.LOG_REFUSALS_PER_CONNECTION:
            log.info("%s: nickname refused: %s", member.name, reason)
        self._send(member, protocol.format_nick_refused(nick, reason))

    def _join(self, member: Member, nick: str) -> None:
        """Put ``member`` in the registry as ``nick`` and greet it: the
        welcome, who is here, its resume token, what was said before."""
        member.nick, member.key = nick, protocol.nick_key(nick)
        member.state = ONLINE
        member.joined_at = self._wall_clock()
        member.spoke_at = self._clock()
        self._nicks[member.address] = nick
        self._by_key[protocol.nick_key(nick)] = member
        self._greet(member, protocol.format_welcome(nick))
        if self._motd:
            self._send(member, *protocol.format_motd(self._motd))
        if self.settings.resume_grace > 0:
            member.seat_id, member.secret = memory.new_token()
            while member.seat_id in self._seats:  # 48 random bits: rare
                member.seat_id, member.secret = memory.new_token()
            self._seats[member.seat_id] = member
            self._send(member, protocol.format_resume_token(
                memory.join_token(member.seat_id, member.secret)))
        replay = self._history.replay(self.settings.history)
        if replay:
            self._send(member, *replay)
        log.info("%s registered as %s", member.name, nick,
                 extra=_REGISTERED)
        self._announce("joined", nick, exclude=member, by=member)

    def _greet(self, member: Member, welcome: str) -> None:
        """The welcome, the commands, and who is here (the first names)."""
        first = [member]
        for other in self._by_key.values():
            if len(first) >= protocol.MAX_NAMES_SHOWN:
                break
            if other is not member:
                first.append(other)
        self._send(member, welcome, protocol.format_commands_hint(),
                   self._format_users(first, member,
                                      total=len(self._by_key)))

    def _format_users(self, members: Sequence[Member], me: Member,
                      total: Optional[int] = None) -> str:
        """The users line: ``me`` first, then the others in the order they
        joined (the same order on joining and for ``-users``)."""
        if me in members:
            members = [me] + [m for m in members if m is not me]
        return protocol.format_users(
            [m.nick for m in members], me.nick,
            [m.nick for m in members if m.is_admin], total,
            [m.nick for m in members if m.state == DETACHED],
            [m.nick for m in members if m.away])

    def _rename(self, member: Member, nick: str) -> None:
        """Give an online member a new nickname: in the registry, in the
        ignore lists that named the old one; its partners need nothing,
        they point at the member, not at its name."""
        old_key, new_key = member.key, protocol.nick_key(nick)
        # Rebuilt rather than updated, so that the member keeps its place
        # in the join order (-users lists by it); a rename is rare.
        self._by_key = {(new_key if key == old_key else key): other
                        for key, other in self._by_key.items()}
        self._nicks[member.address] = nick
        member.nick, member.key = nick, new_key
        for other in self._ignorers:
            if old_key in other.ignoring:
                del other.ignoring[old_key]
                other.ignoring[new_key] = nick

    def _leave(self, member: Member) -> None:
        """Take a member out of the room for good, and tell the others."""
        self._remove(member)
        self._announce("left", member.nick, by=member)

    def _remove(self, member: Member) -> None:
        """Take a member out of the registry (its nickname is free)."""
        if member.state != DETACHED:  # a detached seat has no address
            del self._nicks[member.address]
        del self._by_key[member.key]
        self._ignorers.discard(member)
        self._seats.pop(member.seat_id, None)

    # -- A seat kept for a dropped connection

    def _detach(self, member: Member) -> None:
        """The member's connection dropped: keep its seat, and what is sent
        to it, until it resumes or its time is up (see :meth:`tick`)."""
        member.state = DETACHED
        # The registry maps connections' addresses: this one is gone (and
        # a new connection may come from the same address and port).
        del self._nicks[member.address]
        member.link = memory.HeldLines(self.settings.outbox_limit)
        member.keep_until = self._clock() + self.settings.resume_grace
        self._detached.append((member.keep_until, member))
        self._notice_others(member, protocol.format_lost_connection(
            member.nick))

    def _resume(self, joining: Member, token: str) -> Optional[Member]:
        """Give ``joining``'s connection the seat ``token`` names, with the
        lines kept for it; None (after saying so) if the token is wrong or
        expired. A connection still holding the seat is replaced."""
        parts = memory.split_token(token)
        seat = self._seats.get(parts[0]) if parts else None
        if seat is None or parts is None or not hmac.compare_digest(
                parts[1].encode(protocol.ENCODING),
                seat.secret.encode(protocol.ENCODING)):
            log.info("%s: resume refused", joining.name)
            self._send(joining, protocol.format_resume_refused())
            return None
        was = seat.state
        if was == ONLINE:  # its old connection has not noticed yet
            self._send(seat, protocol.format_replaced(), last=True)
            seat.link.close()
            self._members.discard(seat)
            held, count, dropped = b"", 0, 0
        else:
            held_lines: memory.HeldLines = seat.link  # type: ignore
            held, count = held_lines.take()
            dropped = held_lines.dropped
        # The joining connection becomes the seat's.
        self._members.discard(joining)
        joining.state = GONE
        if was == ONLINE:
            del self._nicks[seat.address]
        seat.address, seat.name = joining.address, joining.name
        self._nicks[seat.address] = seat.nick
        seat.link = joining.link
        seat.state = ONLINE
        seat.close_reason = ""
        self._members.add(seat)
        self._greet(seat, protocol.format_welcome_back(seat.nick))
        # A new secret each time: a token works once, so one seen (on a
        # shoulder, in a scrollback) is worth nothing after its use.
        seat.secret = memory.new_token()[1]
        self._send(seat, protocol.format_resume_token(
            memory.join_token(seat.seat_id, seat.secret)))
        self._send(seat, protocol.format_missed(count, dropped))
        if held:
            seat.link.put(held)
        log.info("%s resumed as %s (%d lines kept for it)", seat.name,
                 seat.nick, count)
        if was == DETACHED:
            self._notice_others(seat, protocol.format_back(seat.nick))
        return seat

    def _notice_others(self, member: Member, text: str) -> None:
        """Tell the others about ``member``'s connection (lost, back): in
        a small room only; a large one is not told of every blip. Not in
        the history: it is not part of the conversation."""
        if len(self._by_key) <= self.settings.announce_limit and \
                self.guard.may_announce(host_of(member.address)):
            self._send_events()  # what is batched happened first
            self._broadcast(text, exclude=member)

    # -- Announcing joins and departures

    def _announce(self, kind: str, nick: str,
                  exclude: Optional[Member] = None,
                  by: Optional[Member] = None) -> None:
        """Tell everyone that ``nick`` joined or left: at once in a small
        room; in a large one (more than ``announce_limit`` users, where
        a room filling up would send N*N/2 lines) batched, by :meth:`tick`.
        A member (``by``) whose address has used its notice budget is
        told of in the once-a-second summary instead, whatever the size
        of the room: one host joining and leaving in a loop makes at most
        two lines a second for everyone.
        """
        if self._closed:
            return
        if kind == "left" and nick in self._quiet_joined:
            self._quiet_joined.remove(nick)  # came and went unseen
            return
        if by is not None and not self.guard.may_announce(
                host_of(by.address)):
            (self._quiet_joined if kind == "joined"
             else self._quiet_left).append(nick)
            return
        if kind == "joined" and nick in self._quiet_left:
            self._send_quiet_events()  # its departure came first
        # After a departure the registry no longer counts the one who left.
        size = len(self._by_key) + (kind == "left")
        if size > self.settings.announce_limit:
            self._events.append((kind, nick))
            return
        self._send_events()  # what is batched happened first
        line = (protocol.format_joined(nick) if kind == "joined"
                else protocol.format_left(nick))
        self._broadcast(line, exclude)
        self._record(line, history=False)

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
            line = (protocol.format_joined_many(nicks) if kind == "joined"
                    else protocol.format_left_many(nicks))
            self._broadcast(line)
            self._record(line, history=False)
            start = end
        events.clear()

    def _send_quiet_events(self) -> None:
        """Send the joins and departures held back from churning
        addresses: one line for those who left, one for those who came."""
        for nicks, make in ((self._quiet_left, protocol.format_left_many),
                            (self._quiet_joined,
                             protocol.format_joined_many)):
            if nicks:
                line = make(nicks)
                self._broadcast(line)
                self._record(line, history=False)
                nicks.clear()

    # -- Closing

    def _close_room(self, reason: str) -> None:
        """Give every connection the shutdown notice as its last line, and
        let no one else in."""
        self._closed = True
        text = protocol.format_shutdown(reason)
        notice = protocol.encode_line(text)
        for other in self._members:
            other.link.put(notice, last=True)
            self._touched.add(other.link)
        self._record(text, history=False)
