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
import time
from typing import Optional, Tuple

import config
import protocol
from members import DETACHED, GONE, ONLINE, Member, host_of
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

    # -- Talking

    def do_say(self, member: Member, command: Command) -> None:
        """A plain line: to the partner if there is one, else to all."""
        self._say(member, command.text, action=False)

    def do_me(self, member: Member, command: Command) -> None:
        """An action, ``* alice waves``: goes where a plain line would."""
        problem = ("usage: -me text" if not command.text
                   else protocol.action_error(member.nick, command.text))
        if problem:
            self._refuse(member, protocol.format_error(problem))
            return
        self._say(member, command.text, action=True)

    def do_to(self, member: Member, command: Command) -> None:
        if command.text and self._muted(member):
            return
        target = self._find_other(member, command.target)
        if target is None:
            return
        if command.text:
            self._tell(member, target, command.text)
            self._spoke(member)
        else:
            member.partner = target
            self._send(member, protocol.format_partner(target.nick))

    def do_all(self, member: Member, command: Command) -> None:
        if command.text:
            if self._muted(member):
                return
            self._say_to_all(member, protocol.format_message(
                member.nick, command.text))
            self._spoke(member)
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

    # -- About yourself and others

    def do_nick(self, member: Member, command: Command) -> None:
        """``-nick NEW``: the rules and uniqueness of joining apply; a
        change of case only is allowed."""
        nick = command.target
        if command.text:
            reason = "a nickname is one word"
        elif self._mutes.find(member.key) is not None:
            reason = "you are muted"
        elif nick == member.nick:
            reason = "it is your nickname already"
        else:
            reason = protocol.nick_error(nick)
            holder = self._by_key.get(protocol.nick_key(nick))
            if reason is None and holder is not None \
                    and holder is not member:
                reason = protocol.NICK_TAKEN
        if reason is not None:
            self._refuse(member, protocol.format_nick_refused(
                f"{nick} {command.text}".strip(), reason))
            return
        old = member.nick
        self._rename(member, nick)
        log.info("%s (%s) is now known as %s", old, member.name, nick)
        self._send(member, protocol.format_you_are_now(nick))
        self._tell_everyone(protocol.format_nick_changed(old, nick),
                            exclude=member)

    def do_away(self, member: Member, command: Command) -> None:
        if self._muted(member):  # the reason would reach people
            return
        member.away = command.text or config.DEFAULT_AWAY_REASON
        self._send(member, protocol.format_away(member.away))

    def do_back(self, member: Member, command: Command) -> None:
        if not member.away:
            self._refuse(member, protocol.format_error(
                "you are not marked away"))
            return
        member.away = ""
        self._send(member, protocol.format_not_away())

    def do_whois(self, member: Member, command: Command) -> None:
        """When NICK joined, idle time, away, admin; the address for
        admins only (it says where someone is)."""
        target = self._by_key.get(protocol.nick_key(command.target))
        if target is None or command.text:
            self._refuse(member, protocol.format_no_such_user(
                f"{command.target} {command.text}".strip()))
            return
        joined = time.strftime("%H:%M", time.localtime(target.joined_at))
        ago = protocol.format_duration(self._wall_clock() - target.joined_at)
        facts = [f"joined {joined} ({ago} ago)",
                 "idle " + protocol.format_duration(
                     self._clock() - target.spoke_at)]
        if target.away:
            facts.append(f"away: {target.away}")
        if target.is_admin:
            facts.append("admin")
        if self._mutes.find(target.key) is not None:
            facts.append("muted")
        if target.state == DETACHED:
            facts.append("reconnecting")
        if member.is_admin:
            facts.append(f"from {target.name}")
        self._send(member, protocol.format_whois(target.nick, facts))

    def do_ignore(self, member: Member, command: Command) -> None:
        """``-ignore NICK``: NICK's lines stop reaching the member (NICK
        is not told); ``-ignore`` alone lists whom the member ignores."""
        if not command.text:
            self._send(member, protocol.format_ignore_list(
                sorted(member.ignoring.values(), key=str.casefold)))
            return
        nick, rest = (command.text.split(None, 1) + [""])[:2]
        target = self._find_other(member, nick) if not rest else None
        if rest:
            self._refuse(member, protocol.format_error(
                "usage: -ignore NICK"))
        if target is None:
            return
        key = target.key
        if key in member.ignoring:
            self._refuse(member, protocol.format_error(
                f"you ignore {target.nick} already"))
        elif len(member.ignoring) >= config.MAX_IGNORED:
            self._refuse(member, protocol.format_error(
                f"you ignore {config.MAX_IGNORED} users already;"
                " -unignore someone first"))
        else:
            member.ignoring[key] = target.nick
            self._ignorers.add(member)
            self._send(member, protocol.format_ignoring(target.nick))

    def do_unignore(self, member: Member, command: Command) -> None:
        key = protocol.nick_key(command.target)
        nick = None if command.text else member.ignoring.pop(key, None)
        if not member.ignoring:
            self._ignorers.discard(member)
        if nick is None:
            self._refuse(member, protocol.format_error(
                f"you do not ignore {command.target[:40]}; -ignore lists"
                " whom you do"))
            return
        self._send(member, protocol.format_unignored(nick))

    def do_motd(self, member: Member, command: Command) -> None:
        self._send(member, *protocol.format_motd(self._motd))

    # -- The rest

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
        host = host_of(member.address)
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

    # -- For admins

    def do_kick(self, member: Member, command: Command) -> None:
        target = self._find_other(member, command.target)
        if target is None:
            return
        reason = command.text
        self._log_sanction(member, "kicked", target, reason)
        # A kick that lets the user straight back in is no kick; but an
        # admin kicking someone on their own machine (a demonstration)
        # does not lock themselves out.
        host = host_of(target.address)
        if host != host_of(member.address):
            self.guard.ban(host, self.settings.kick_ban_minutes, target.nick,
                           reason or f"kicked by {member.nick}", member.nick)
        self._throw_out(target, f"kicked by {member.nick}",
                        protocol.format_you_were_kicked(member.nick, reason),
                        protocol.format_kicked(target.nick, member.nick,
                                               reason))

    def do_mute(self, member: Member, command: Command) -> None:
        """``-mute NICK [minutes]``: NICK's lines reach nobody, and NICK is
        told so at each one; until ``-unmute`` or the minutes are up."""
        given = self._sanctioned(member, command)
        if given is None:
            return
        target, minutes, rest = given
        if rest:
            self._refuse(member, protocol.format_error(
                "usage: -mute NICK [minutes]"))
            return
        key = target.key
        if self._mutes.find(key) is not None:
            self._refuse(member, protocol.format_error(
                f"{target.nick} is muted already; -unmute {target.nick}"
                " first to change it"))
            return
        self._mutes.give(key, target.nick, member.nick, minutes)
        self._log_sanction(member, "muted", target, "")
        self._send(target, protocol.format_you_were_muted(member.nick,
                                                          minutes))
        self._tell_everyone(protocol.format_muted(
            target.nick, member.nick, minutes), exclude=target)

    def do_unmute(self, member: Member, command: Command) -> None:
        mute = self._mutes.lift(protocol.nick_key(command.target))
        if mute is None:
            self._refuse(member, protocol.format_error(
                f"{command.target[:40]} is not muted"))
            return
        log.info("%s (%s) unmuted %s", member.nick, member.name, mute.nick)
        target = self._by_key.get(mute.key)
        if target is not None:
            self._send(target, protocol.format_you_were_unmuted(member.nick))
        self._tell_everyone(protocol.format_unmuted(mute.nick, member.nick),
                            exclude=target)

    def do_ban(self, member: Member, command: Command) -> None:
        """``-ban NICK [minutes] [reason]``: kick NICK and refuse new
        connections from their address, until ``-unban`` or the minutes
        are up. Others on that address stay (a classroom may share one
        behind NAT)."""
        given = self._sanctioned(member, command)
        if given is None:
            return
        target, minutes, reason = given
        host = host_of(target.address)
        if host == host_of(member.address):
            # A ban would lock the admin out too.
            self._refuse(member, protocol.format_error(
                f"{target.nick} connects from your own address ({host});"
                f" -kick {target.nick} instead"))
            return
        self.guard.ban(host, minutes, target.nick, reason, member.nick)
        self._log_sanction(member, "banned", target, reason)
        self._throw_out(target, f"banned by {member.nick}",
                        protocol.format_you_were_banned(member.nick, minutes,
                                                        reason),
                        protocol.format_banned(target.nick, member.nick,
                                               minutes, reason))

    def do_unban(self, member: Member, command: Command) -> None:
        """``-unban ADDRESS``; the nickname the ban was given to works
        too."""
        wanted = host_of(command.target.strip("[]"))
        ban = None
        if not command.text:
            ban = self.guard.banned(wanted)
            if ban is None:  # the nickname the ban was given to
                key = protocol.nick_key(wanted)
                ban = next((given for given in self.guard.bans()
                            if protocol.nick_key(given.nick) == key), None)
        if ban is None or not self.guard.unban(ban.host):
            self._refuse(member, protocol.format_error(
                f"no ban on {command.target[:40]}; -bans lists them"))
            return
        log.info("%s (%s) lifted the ban on %s (%s)", member.nick,
                 member.name, ban.host, ban.nick)
        self._send(member, protocol.format_unbanned(ban.host, ban.nick))

    def do_bans(self, member: Member, command: Command) -> None:
        bans = self.guard.bans()
        self._send(member, protocol.format_bans_header(len(bans)), *(
            protocol.format_ban_entry(ban.host, ban.nick, ban.admin,
                                      ban.reason, self.guard.ban_left(ban))
            for ban in bans))

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

    def _say(self, member: Member, text: str, action: bool) -> None:
        """A plain line or an action: to the partner if there is one,
        else to all."""
        if self._muted(member):
            return
        partner = member.partner
        if partner is None:
            self._say_to_all(member, protocol.format_action(
                member.nick, text) if action
                else protocol.format_message(member.nick, text))
        elif partner.state not in (ONLINE, DETACHED):
            again = self._by_key.get(protocol.nick_key(partner.nick))
            self._refuse(member, protocol.format_partner_came_back(
                partner.nick) if again is not None
                else protocol.format_partner_gone(partner.nick))
        else:
            self._tell(member, partner, text, action)
        self._spoke(member)

    def _say_to_all(self, member: Member, line: str) -> None:
        if self._broadcast(line, exclude=member, sender=member):
            self._record(line)
        else:  # not said, as far as anyone is concerned: not recorded
            self._refuse(member, protocol.format_nobody_else())

    def _tell(self, member: Member, target: Member, text: str,
              action: bool = False) -> None:
        """A private line (or action) from ``member`` to ``target``, and
        its copy to ``member``, which says it went. Not delivered if
        ``target`` ignores ``member``, who is not told: that is the point
        of ignoring. An away target's reason goes back to the sender."""
        line = (protocol.format_action(member.nick, text, private=True)
                if action else protocol.format_private(member.nick, text))
        if member.key not in target.ignoring:
            self._send(target, line)
        self._send(member, protocol.format_private_sent(
            target.nick, line[len(protocol.PRIVATE):] if action
            else text))
        if target.away:
            self._send(member, protocol.format_is_away(target.nick,
                                                       target.away))

    def _spoke(self, member: Member) -> None:
        """The member said something: not idle, and not away any more
        (said after the line's own answers, so that the copy of a private
        line comes first and can stand in for the typed line)."""
        member.spoke_at = self._clock()
        if member.away:
            member.away = ""
            self._send(member, protocol.format_not_away())

    def _muted(self, member: Member) -> bool:
        """True, after telling the member, if it is muted."""
        mute = self._mutes.find(member.key)
        if mute is None:
            return False
        self._refuse(member, protocol.format_you_are_muted(
            self._mutes.seconds_left(mute)))
        return True

    def _sanctioned(self, member: Member, command: Command
                    ) -> Optional[Tuple[Member, Optional[int], str]]:
        """For ``-mute``/``-ban NICK [minutes] ...``: (the user NICK, the
        minutes or None for until lifted, the rest of the text); None
        after telling the member what is wrong."""
        target = self._find_other(member, command.target)
        if target is None:
            return None
        word, rest = (command.text.split(None, 1) + ["", ""])[:2]
        if not (word.isascii() and word.isdecimal()):
            return target, None, command.text  # no minutes: until lifted
        minutes = int(word)
        if not 1 <= minutes <= config.MAX_SANCTION_MINUTES:
            self._refuse(member, protocol.format_error(
                f"minutes must be 1 to {config.MAX_SANCTION_MINUTES}"))
            return None
        return target, minutes, rest.strip()

    def _throw_out(self, target: Member, why: str, told: str,
                   everyone: str) -> None:
        """Close ``target``'s connection with ``told`` as its last line,
        free its nickname, and tell everyone else."""
        target.close_reason = why
        self._send(target, told, last=True)
        self._remove(target)
        target.state = GONE
        target.link.close()
        self._tell_everyone(everyone, history=True)

    def _log_sanction(self, admin: Member, what: str, target: Member,
                      reason: str) -> None:
        """Log an admin's action; louder when it hits another admin."""
        level = logging.WARNING if target.is_admin else logging.INFO
        log.log(level, "%s (%s) %s %s%s (%s)%s", admin.nick, admin.name,
                what, "admin " if target.is_admin else "", target.nick,
                target.name,
                f": {protocol.log_safe(reason)}" if reason else "")
