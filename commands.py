"""The chat's commands: one ``do_<name>`` method for each row ``name`` of
``protocol.COMMANDS``, in the style of ``http.server``'s ``do_GET``.

:class:`Commands` is mixed into ``room.Room``, and only makes sense there:
its methods run with the room's lock held and use the room's state and
helpers (``_send``, ``_refuse``, ``_broadcast``, ``_by_key``, ...; see
room.py). :meth:`Commands._run` parses a line, finds its method by name,
checks that it exists and whether the command is for admins only (said by
the table), then calls it. Adding a command is a row in the table plus a
method here.
"""

from __future__ import annotations

import logging
from typing import Optional

import config
import guard
import protocol
from members import DETACHED, GONE, ONLINE, Member
from protocol import Command

log = logging.getLogger("chat")


class Commands:
    """The commands of ``room.Room`` (see the module docstring)."""

    def _run(self, member: Member, line: str) -> None:
        """Run one line as a command."""
        if not line.strip():
            return
        try:
            command = protocol.parse_command(line)
        except protocol.CommandError as error:
            # Never the line's text in the log: a mistyped -admin carries
            # a password.
            self._refuse(member, protocol.format_error(str(error)),
                         logged="unknown or malformed command")
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
        elif partner.state not in (ONLINE, DETACHED):
            again = self._by_key.get(protocol.nick_key(partner.nick))
            self._refuse(member, protocol.format_partner_came_back(
                partner.nick) if again is not None
                else protocol.format_partner_gone(partner.nick))
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
        self._send(member, self._format_users(list(self._by_key.values()),
                                              member))

    def do_history(self, member: Member, command: Command) -> None:
        """``-history [N]``: the last N public lines, 20 by default."""
        count = config.DEFAULT_HISTORY
        if command.text:
            # isdecimal() alone would let '²' or '٣' through to int().
            if not (command.text.isascii() and command.text.isdecimal()) \
                    or int(command.text) < 1:
                self._refuse(member, protocol.format_error(
                    "usage: -history [N], N a number of lines"))
                return
            count = int(command.text)
        lines = self._history.replay(min(count,
                                         self.settings.history_keep))
        self._send(member, *(lines or [protocol.format_no_history()]))

    def do_help(self, member: Member, command: Command) -> None:
        self._send(member, *protocol.format_help())

    def do_exit(self, member: Member, command: Command) -> None:
        self._send(member, protocol.format_goodbye(member.nick), last=True)
        self._leave(member)
        member.state = GONE
        member.link.close()

    def do_resume(self, member: Member, command: Command) -> None:
        # Resuming happens at the nickname prompt (see _choose_nick).
        self._refuse(member, protocol.format_already_joined())

    def do_admin(self, member: Member, command: Command) -> None:
        if member.is_admin:
            self._send(member, protocol.format_admin_granted())
            return
        if member.admin_tries >= config.ADMIN_MAX_TRIES:
            self._refuse(member, protocol.format_admin_locked())
            return
        host = guard.host_of(member.address)
        # An address that guessed wrong too often waits; its try is not
        # even looked at, so guessing from many connections gains nothing.
        wait = self.guard.admin_wait(host)
        if wait > 0:
            self._refuse(member, protocol.format_admin_wait(wait))
            return
        if self.check_password(command.target):
            member.is_admin = True
            self.guard.admin_succeeded(host)
            log.info("%s (%s) is now an admin", member.nick, member.name)
            self._send(member, protocol.format_admin_granted())
            return
        member.admin_tries += 1
        wait = self.guard.admin_failed(host)
        log.warning("%s (%s): wrong admin password, try %d of %d",
                    member.nick, member.name, member.admin_tries,
                    config.ADMIN_MAX_TRIES)
        self._send(member, protocol.format_admin_refused(
            config.ADMIN_MAX_TRIES - member.admin_tries, wait))

    def do_kick(self, member: Member, command: Command) -> None:
        target = self._find_other(member, command.target)
        if target is None:
            return
        reason = command.text
        log.info("%s (%s) kicked %s (%s)%s", member.nick, member.name,
                 target.nick, target.name,
                 f": {protocol.log_safe(reason)}" if reason else "")
        target.close_reason = f"kicked by {member.nick}"
        # A kick that lets the user straight back in is no kick; but an
        # admin kicking someone on their own machine (a demonstration)
        # does not lock themselves out.
        host = guard.host_of(target.address)
        if host != guard.host_of(member.address):
            self.guard.ban(host, self.settings.kick_ban_minutes,
                           target.nick, reason or f"kicked by {member.nick}")
        self._send(target, protocol.format_you_were_kicked(member.nick,
                                                           reason),
                   last=True)
        self._remove(target)
        target.state = GONE
        target.link.close()
        self._send_events()  # what is batched happened first
        line = protocol.format_kicked(target.nick, member.nick, reason)
        self._broadcast(line)
        self._record(line)

    def do_down(self, member: Member, command: Command) -> None:
        if self._closed:
            return  # another admin was quicker
        reason = f"by admin {member.nick}"
        self._close_room(reason)
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
        line = protocol.format_message(member.nick, text)
        if self._broadcast(line, exclude=member):
            self._record(line)
        else:  # not said, as far as anyone is concerned: not recorded
            self._refuse(member, protocol.format_nobody_else())
