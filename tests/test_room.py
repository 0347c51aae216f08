"""Unit tests of the chat core (``room.py``) and of the command table
(``protocol.COMMANDS``), with fake links.

No sockets and no network: every connection is a :class:`FakeLink` that
records the lines the room queued on it, whether its last line was sealed,
how often it was flushed, and whether it was closed. No threads either,
except in the one test that is about concurrency; nothing sleeps, every
loop is bounded, and every thread is joined with a deadline.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import config
import protocol
from config import ServerConfig
from protocol import Command, CommandSpec
from helpers import FakeLink, OwnedLock  # noqa: F401
from room import GONE, JOINING, ONLINE, Member, Room

PASSWORD = "pw"
#: Seconds the concurrency test may take before it fails.
DEADLINE = 5.0

Address = Tuple[str, int]

# --- Fakes and helpers -------------------------------------------------------


_ports = itertools.count(40000)


def next_address() -> Address:
    return ("127.0.0.1", next(_ports))


def make_room(announce_limit: int = config.DEFAULT_ANNOUNCE_LIMIT,
              on_shutdown: Optional[Callable[[str], None]] = None,
              password: str = PASSWORD, cls: type = Room) -> Room:
    # History and kept seats are off: these tests are about the rest (the
    # memory has its own tests, test_memory.py). So is flood control,
    # which holds back the notices of an address (all are 127.0.0.1), and
    # the ban after a kick, which would refuse the kicked one's address.
    settings = ServerConfig(admin_password=password,
                            announce_limit=announce_limit, history=0,
                            resume_grace=0, rate_limit=0,
                            kick_ban_minutes=0)
    if on_shutdown is None:
        return cls(settings)
    return cls(settings, on_shutdown=on_shutdown)


def connect(room: Room, address: Optional[Address] = None
            ) -> Tuple[Member, FakeLink]:
    """A new connection, still choosing a nickname."""
    link = FakeLink(room)
    member = room.connect(link, address or next_address())
    assert member is not None
    return member, link


def join(room: Room, nick: str, address: Optional[Address] = None
         ) -> Tuple[Member, FakeLink]:
    """A member who connected and took ``nick``; its link's lines so far
    are taken, so ``link.take()`` returns what came after joining."""
    member, link = connect(room, address)
    room.receive(member, [nick.encode("utf-8")])
    assert member.state == ONLINE, link.lines
    assert protocol.format_welcome(nick) in link.lines
    link.take()
    return member, link


def say(room: Room, member: Member, line: str) -> None:
    """``member`` sends one line."""
    room.receive(member, [line.encode("utf-8")])


def make_admin(room: Room, member: Member, link: FakeLink) -> None:
    """Make ``member`` an admin; its link's lines so far are taken."""
    say(room, member, f"-admin {PASSWORD}")
    assert link.take()[-1:] == [protocol.format_admin_granted()]


def drain(*links: FakeLink) -> None:
    """Forget what the links got so far."""
    for link in links:
        link.take()


def example_line(spec: CommandSpec) -> str:
    """A valid line for the row ``spec``, made from the row alone."""
    if not spec.flag:
        return "hello there"
    if not spec.flag.startswith("-"):
        return spec.flag.upper()  # a phrase: the whole line, any case
    return {protocol.NO_ARGUMENT: spec.flag,
            protocol.TEXT: f"{spec.flag} some text",
            protocol.NICK: f"{spec.flag} bob more words",
            protocol.SECRET: f"{spec.flag} secret words",
            }[spec.argument]


# --- The command table -------------------------------------------------------


def test_every_command_row_has_a_handler_on_room():
    """Every row of protocol.COMMANDS has a callable do_<name> on Room."""
    missing = [spec.name for spec in protocol.COMMANDS
               if not callable(getattr(Room, "do_" + spec.name, None))]
    assert missing == []


def test_every_row_has_help_lines():
    """Every row documents itself: at least one (usage, what) pair, both
    non-empty, the usage starting with the row's flag."""
    for spec in protocol.COMMANDS:
        assert spec.help, spec.name
        for usage, what in spec.help:
            assert usage.strip() and what.strip(), spec.name
            assert usage.lower().startswith(spec.flag.lower()), spec.name
        if spec.hint:
            assert spec.hint.startswith(spec.flag), spec.name


def test_rows_names_and_flags_are_unique():
    """No two rows share a name or a flag (flags ignore case), and the
    indexes by name hold every row."""
    names = [spec.name for spec in protocol.COMMANDS]
    flags = [spec.flag.lower() for spec in protocol.COMMANDS]
    assert len(set(names)) == len(names)
    assert len(set(flags)) == len(flags)
    assert protocol.COMMAND_NAMES == tuple(names)
    assert list(protocol.COMMANDS_BY_NAME.values()) == list(
        protocol.COMMANDS)


def test_every_row_parses_to_itself():
    """A line made from a row's flag and argument kind parses as that
    row, so parse_command covers the whole table."""
    for spec in protocol.COMMANDS:
        assert protocol.parse_command(example_line(spec)).name == spec.name


def test_every_row_reaches_its_handler():
    """The room runs a line with the do_<name> of its row, by name: a
    Room whose every handler records its calls sees each row once."""
    calls: List[Tuple[str, Command]] = []

    def recorder(name: str) -> Callable[[Room, Member, Command], None]:
        def handler(self: Room, member: Member, command: Command) -> None:
            calls.append((name, command))
        return handler

    recording = type("RecordingRoom", (Room,), {
        "do_" + spec.name: recorder(spec.name)
        for spec in protocol.COMMANDS})
    room = make_room(cls=recording)
    member, _ = join(room, "alice")
    member.is_admin = True  # -admin itself is a recorder here
    for spec in protocol.COMMANDS:
        say(room, member, example_line(spec))
    assert [name for name, _ in calls] == list(protocol.COMMAND_NAMES)
    assert [command for _, command in calls] == [
        protocol.parse_command(example_line(spec))
        for spec in protocol.COMMANDS]


@pytest.fixture
def add_row(monkeypatch) -> Callable[..., CommandSpec]:
    """Add a row to the command table for one test, patching every index
    parse_command and the room read."""

    def add(name: str, admin_only: str = "") -> CommandSpec:
        spec = CommandSpec(name, f"-{name}", protocol.NO_ARGUMENT,
                           ((f"-{name}", f"the {name} command"),),
                           hint=f"-{name}", admin_only=admin_only)
        rows = protocol.COMMANDS + (spec,)
        monkeypatch.setattr(protocol, "COMMANDS", rows)
        monkeypatch.setattr(protocol, "COMMANDS_BY_NAME",
                            {row.name: row for row in rows})
        monkeypatch.setattr(protocol, "COMMAND_NAMES",
                            tuple(row.name for row in rows))
        monkeypatch.setattr(protocol, "_BY_FLAG",
                            {**protocol._BY_FLAG, spec.flag: spec})
        return spec

    return add


class PingRoom(Room):
    """A room with one more command, as a subclass adds it."""

    def do_ping(self, member: Member, command: Command) -> None:
        self._send(member, protocol.format_notice("pong"))

    def do_wipe(self, member: Member, command: Command) -> None:
        self._send(member, protocol.format_notice("wiped"))


def test_hint_and_help_are_derived_from_the_table(add_row):
    """A row added to the table appears in the joining hint and -help,
    parses, and runs with the subclass's do_<name>."""
    assert "-ping" not in protocol.format_commands_hint()
    add_row("ping")
    hint = protocol.format_commands_hint()
    assert hint == protocol.format_notice(
        "Commands: -to NICK [text], -all [text], -users, -exit, -ping;"
        " -help for more")
    assert protocol.format_help()[-1].split() == [
        "*", "-ping", "the", "ping", "command"]
    assert protocol.parse_command("-PING") == Command("ping")
    room = make_room(cls=PingRoom)
    member, link = connect(room)
    room.receive(member, [b"alice"])
    assert hint in link.lines  # the room sends the table as it is now
    drain(link)
    say(room, member, "-help")
    assert link.take() == protocol.format_help()
    say(room, member, "-ping")
    assert link.take() == [protocol.format_notice("pong")]


def test_row_without_handler_gets_an_error_line(add_row):
    """A row the room has no do_<name> for is answered with an error line
    to the sender only, not an exception."""
    add_row("ping")
    room = make_room()
    alice, alice_link = join(room, "alice")
    _, bob_link = join(room, "bob")
    drain(alice_link)
    say(room, alice, "-ping")
    assert alice_link.take() == [
        protocol.format_error("-ping is not available on this server")]
    assert bob_link.take() == []
    assert alice.state == ONLINE


def test_admin_only_column_guards_an_added_row(add_row):
    """The table's admin_only column is enforced by the room for any row:
    a non-admin is refused with its wording, an admin gets the handler."""
    add_row("wipe", admin_only="wipe the room")
    room = make_room(cls=PingRoom)
    alice, link = join(room, "alice")
    say(room, alice, "-wipe")
    assert link.take() == [protocol.format_admin_only("wipe the room")]
    make_admin(room, alice, link)
    say(room, alice, "-wipe")
    assert link.take() == [protocol.format_notice("wiped")]


# --- Registration ------------------------------------------------------------


def test_connect_prompts_for_a_nickname():
    """A new connection gets the nickname prompt, flushed, and is not in
    the registry yet."""
    room = make_room()
    member, link = connect(room)
    assert member.state == JOINING
    assert link.lines == [protocol.format_nick_prompt()]
    assert link.flushes == 1 and not link.sealed and not link.closed
    assert room.nicknames() == {} and len(room) == 0


def test_joining_greets_and_announces():
    """Taking a nickname: welcome, command hint and who is online for the
    joiner; "joined" for the others; the registry maps address to nick."""
    room = make_room()
    alice, alice_link = join(room, "alice")
    address = next_address()
    bob, bob_link = connect(room, address)
    room.receive(bob, [b"  bob  "])  # surrounding spaces are dropped
    assert bob_link.lines[1:] == [
        protocol.format_welcome("bob"),
        protocol.format_commands_hint(),
        protocol.format_users(["bob", "alice"], "bob")]
    assert alice_link.take() == [protocol.format_joined("bob")]
    assert room.nicknames() == {alice.address: "alice", address: "bob"}
    assert len(room) == 2


@pytest.mark.parametrize("frame, shown, reason", [
    (b"bad nick", "bad nick", "a nickname cannot contain spaces"),
    (b"-dash", "-dash", "a nickname cannot start with '-'"),
    (b"x" * 21, "x" * 21, "a nickname can have at most 20 characters"),
    (b"semi;colon", "semi;colon", protocol.nick_error("semi;colon")),
    (b"a\x1bb", "a\x1bb",
     "control characters are not allowed (found U+001B)"),
    (b"\xff\xfe", "\ufffd\ufffd", "line is not valid UTF-8"),
    (protocol.OVERLONG, "…", "it is far too long"),
])
def test_invalid_nickname_is_refused_and_asked_again(frame, shown, reason):
    """A frame that cannot be a nickname gets a refusal saying why and
    the prompt again; the member stays joining, out of the registry."""
    room = make_room()
    member, link = connect(room)
    link.take()
    room.receive(member, [frame])
    assert link.take() == [protocol.format_nick_refused(shown, reason),
                           protocol.format_nick_prompt()]
    assert member.state == JOINING and room.nicknames() == {}
    room.receive(member, [b"alice"])  # and may still join
    assert member.state == ONLINE


def test_blank_nickname_just_asks_again():
    """An empty line at the prompt is not refused, only asked again."""
    room = make_room()
    member, link = connect(room)
    link.take()
    room.receive(member, [b"   "])
    assert link.take() == [protocol.format_nick_prompt()]
    assert member.state == JOINING


@pytest.mark.parametrize("first, second", [
    ("alice", "ALICE"),
    ("Зоя", "зоя"),
    ("Zo\u00e9", "Zoe\u0301"),   # composed, then decomposed
    ("zoe\u0301", "ZO\u00c9"),   # decomposed, then composed
])
def test_taken_nickname_is_refused(first, second):
    """A nickname equal to an online one ignoring case, or composed vs
    decomposed, is refused as taken; the first owner is undisturbed."""
    assert first != second
    assert protocol.nick_key(first) == protocol.nick_key(second)
    room = make_room()
    alice, alice_link = join(room, first)
    member, link = connect(room)
    link.take()
    room.receive(member, [second.encode("utf-8")])
    assert link.take() == [protocol.format_nick_taken(second),
                           protocol.format_nick_prompt()]
    assert member.state == JOINING
    assert room.nicknames() == {alice.address: first}
    assert alice_link.take() == []


def test_nickname_is_free_again_after_its_owner_leaves():
    """Once its owner has gone, a nickname can be taken again."""
    room = make_room()
    alice, _ = join(room, "alice")
    say(room, alice, "-exit")
    again, _ = join(room, "Alice")
    assert room.nicknames() == {again.address: "Alice"}


@pytest.mark.parametrize("line", [b"-exit", b"-EXIT", b"  -exit "])
def test_exit_at_the_prompt_closes(line):
    """-exit at the nickname prompt closes the connection; what follows
    is ignored and no one hears of it."""
    room = make_room()
    bob, bob_link = join(room, "bob")
    member, link = connect(room)
    room.receive(member, [line, b"alice"])
    assert link.closed and member.state == GONE
    assert link.lines == [protocol.format_nick_prompt()]
    assert room.nicknames() == {bob.address: "bob"}
    assert bob_link.take() == []


def test_expire_a_joining_member():
    """expire() on a member still choosing a nickname: the timeout error
    is its last line, its link is closed, and it returns True; a nickname
    it sends afterwards is ignored."""
    room = make_room()
    member, link = connect(room)
    assert room.expire(member) is True
    assert link.lines[-1] == protocol.format_register_timeout()
    assert link.sealed and link.closed and member.state == GONE
    assert link.flushes == 2  # the prompt, then the timeout
    room.receive(member, [b"alice"])
    assert room.nicknames() == {} and member.state == GONE
    assert room.expire(member) is False


def test_expire_an_online_member_does_nothing():
    """expire() on a member who has joined returns False and sends
    nothing: the race between the timer and the nickname is harmless."""
    room = make_room()
    member, link = join(room, "alice")
    assert room.expire(member) is False
    assert link.take() == [] and not link.closed and not link.sealed
    assert member.state == ONLINE


def test_registry_follows_join_exit_kick_and_disconnect():
    """room.nicknames() maps address -> nick, and len(room) counts it,
    through every way in and out."""
    room = make_room()
    alice, alice_link = join(room, "alice")
    bob, _ = join(room, "bob")
    carol, _ = join(room, "carol")
    dave, _ = join(room, "dave")
    joiner, _ = connect(room)
    assert room.nicknames() == {alice.address: "alice", bob.address: "bob",
                                carol.address: "carol",
                                dave.address: "dave"}
    say(room, bob, "-exit")
    assert room.nicknames() == {alice.address: "alice",
                                carol.address: "carol",
                                dave.address: "dave"}
    make_admin(room, alice, alice_link)
    say(room, alice, "-kick carol")
    assert room.nicknames() == {alice.address: "alice",
                                dave.address: "dave"}
    room.disconnect(dave, "reset by peer")
    room.disconnect(joiner)
    assert room.nicknames() == {alice.address: "alice"}
    assert len(room) == 1
    room.disconnect(bob)  # the front-end reports the end of -exit's link
    room.disconnect(carol)
    assert room.nicknames() == {alice.address: "alice"}


@given(st.lists(st.tuples(st.sampled_from(
    ["join", "exit", "disconnect", "kick", "say"]),
    st.integers(0, 5)), max_size=40))
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
def test_registry_matches_a_model(operations):
    """Whatever sequence of joins (clashing nicknames included), exits,
    drops, kicks and lines happens, the registry equals a model of who is
    online, and exactly the members who left have closed links."""
    pool = ["ann", "ANN", "bob", "Bob", "cy", "dee"]
    room = make_room()
    admin, admin_link = join(room, "teacher")
    make_admin(room, admin, admin_link)
    model: Dict[Address, str] = {admin.address: "teacher"}
    members: List[Tuple[Member, FakeLink]] = []
    for name, index in operations:
        if name == "join":
            nick = pool[index]
            member, link = connect(room)
            room.receive(member, [nick.encode("utf-8")])
            taken = nick.lower() in {n.lower() for n in model.values()}
            assert member.state == (JOINING if taken else ONLINE)
            if not taken:
                model[member.address] = nick
            members.append((member, link))
            continue
        if not members:
            continue
        member, link = members[index % len(members)]
        if name == "exit":
            say(room, member, "-exit")
            if member.state == GONE:
                model.pop(member.address, None)
        elif name == "disconnect":
            room.disconnect(member)
            model.pop(member.address, None)
        elif name == "kick" and member.state == ONLINE:
            say(room, admin, f"-kick {member.nick}")
            del model[member.address]
        elif name == "say" and member.state == ONLINE:
            say(room, member, "hello")
        assert member.state in (JOINING, ONLINE, GONE)
        assert room.nicknames() == model
        assert len(room) == len(model)
        for other, other_link in members:
            assert other_link.closed == (other.state == GONE)
            assert (other.address in model) == (other.state == ONLINE)


# --- Commands: talking -------------------------------------------------------


@pytest.fixture
def trio() -> Tuple[Room, List[Tuple[Member, FakeLink]]]:
    """A room with alice, bob and carol online; their lines so far taken."""
    room = make_room()
    people = [join(room, nick) for nick in ("alice", "bob", "carol")]
    drain(*(link for _, link in people))
    return room, people


def test_say_goes_to_everyone_else(trio):
    """A plain line reaches every other member as NICK: text, and not its
    sender."""
    room, [(alice, a), (_, b), (_, c)] = trio
    say(room, alice, "hello: world")
    assert a.take() == []
    assert b.take() == c.take() == [protocol.format_message("alice",
                                                            "hello: world")]


def test_say_goes_to_the_partner_only(trio):
    """After -to bob, plain lines go to bob only, as private messages;
    nicknames ignore case."""
    room, [(alice, a), (_, b), (_, c)] = trio
    say(room, alice, "-to BOB")
    assert a.take() == [protocol.format_partner("bob")]
    say(room, alice, "just us")
    assert b.take() == [protocol.format_private("alice", "just us")]
    # The sender gets a copy that says the line went, and to whom.
    assert a.take() == [protocol.format_private_sent("bob", "just us")]
    assert c.take() == []


def test_say_to_a_partner_who_left_is_refused(trio):
    """When the partner has gone, a plain line is refused to the sender
    and reaches nobody, not even a newcomer with the partner's name; the
    refusal says which: gone, or left and came back (then -to again)."""
    room, [(alice, a), (bob, _), (_, c)] = trio
    say(room, alice, "-to bob")
    say(room, bob, "-exit")
    drain(a, c)
    say(room, alice, "are you there?")
    assert a.take() == [protocol.format_partner_gone("bob")]
    _, new_bob = join(room, "bob")
    drain(a, c)
    say(room, alice, "are you there?")
    assert a.take() == [protocol.format_partner_came_back("bob")]
    assert c.take() == [] and new_bob.take() == []
    say(room, alice, "-to bob")
    say(room, alice, "now you")
    assert new_bob.take() == [protocol.format_private("alice", "now you")]


def test_say_with_nobody_else_is_refused():
    """Alone in the room, a plain line is refused: nobody would read it."""
    room = make_room()
    alice, link = join(room, "alice")
    say(room, alice, "anyone?")
    assert link.take() == [protocol.format_nobody_else()]


def test_to_with_text_sends_one_private_line(trio):
    """-to NICK text goes to NICK only, and does not change the partner."""
    room, [(alice, a), (_, b), (_, c)] = trio
    say(room, alice, "-to bob psst, a secret")
    assert b.take() == [protocol.format_private("alice", "psst, a secret")]
    assert a.take() == [protocol.format_private_sent("bob",
                                                     "psst, a secret")]
    assert c.take() == []
    say(room, alice, "public again")
    assert b.take() == c.take() == [protocol.format_message(
        "alice", "public again")]


@pytest.mark.parametrize("line, error", [
    ("-to nobody hi", protocol.format_no_such_user("nobody")),
    ("-to nobody", protocol.format_no_such_user("nobody")),
    ("-to Alice hi", protocol.format_not_yourself()),
    ("-to alice", protocol.format_not_yourself()),
    ("-to", protocol.format_error("usage: -to NICK")),
    ("-to   ", protocol.format_error("usage: -to NICK")),
])
def test_to_errors_go_to_the_sender_only(trio, line, error):
    """-to with an unknown nick, oneself, or no nick is refused, to the
    sender only, and leaves the partner unchanged."""
    room, [(alice, a), (_, b), (_, c)] = trio
    say(room, alice, line)
    assert a.take() == [error]
    assert b.take() == [] and c.take() == []
    assert alice.partner is None


def test_all_with_text_and_as_a_reset(trio):
    """-all text reaches everyone even with a partner; -all alone sets
    lines back to everyone."""
    room, [(alice, a), (_, b), (_, c)] = trio
    say(room, alice, "-to bob")
    a.take()
    say(room, alice, "-all for all")
    assert b.take() == c.take() == [protocol.format_message("alice",
                                                            "for all")]
    say(room, alice, "-ALL")
    assert a.take() == [protocol.format_everyone()]
    say(room, alice, "plain")
    assert b.take() == c.take() == [protocol.format_message("alice",
                                                            "plain")]


def test_all_alone_is_refused():
    """-all text with nobody else online is refused like a plain line."""
    room = make_room()
    alice, link = join(room, "alice")
    say(room, alice, "-all hello")
    assert link.take() == [protocol.format_nobody_else()]


def test_users_marks_you_and_admins(trio):
    """-users lists everyone online, marking the asker and the admins:
    the asker first, then the others in the order they joined, as in
    the list shown on joining."""
    room, [(alice, a), (bob, b), _] = trio
    make_admin(room, alice, a)
    say(room, bob, "-users")
    (line,) = b.take()
    assert line == protocol.format_users(["bob", "alice", "carol"], "bob",
                                         ["alice"])
    assert line == "* Online (3): bob (you), alice (admin), carol"
    say(room, alice, "-users")
    assert a.take() == ["* Online (3): alice (you, admin), bob, carol"]
    _, d = join(room, "dave")
    on_joining = [line for line in d.lines if line.startswith("* Online")]
    say(room, room._by_key[protocol.nick_key("dave")], "-users")
    assert d.take()[-1] == on_joining[0]
    assert on_joining[0] == "* Online (4): dave (you), alice (admin), bob," \
        " carol"


def test_users_takes_no_arguments(trio):
    """-users with an argument is an error, not a list."""
    room, [(alice, a), _, _] = trio
    say(room, alice, "-users all")
    assert a.take() == [protocol.format_error("-users takes no arguments")]


def test_help_lists_the_table(trio):
    """-help answers with format_help(), one line per usage in the table,
    to the asker only."""
    room, [(alice, a), (_, b), _] = trio
    say(room, alice, "-help")
    lines = a.take()
    assert lines == protocol.format_help()
    assert len(lines) == len(protocol.help_lines())
    for usage, _ in protocol.help_lines():
        assert any(line.startswith(protocol.NOTICE + usage)
                   for line in lines)
    assert b.take() == []


def test_exit_says_goodbye_last_and_tells_the_others(trio):
    """-exit: the goodbye is the member's sealed last line, the link is
    closed, the others hear "left", and later frames go nowhere."""
    room, [(alice, a), (_, b), (_, c)] = trio
    room.receive(alice, [b"-exit", b"too late"])
    assert a.lines[-1] == protocol.format_goodbye("alice")
    assert a.sealed and a.closed and alice.state == GONE
    assert b.take() == c.take() == [protocol.format_left("alice")]
    say(room, alice, "ghost")
    assert b.take() == [] and c.take() == []


# --- Commands: admin ---------------------------------------------------------


def test_admin_with_the_right_password(trio):
    """-admin with the password makes an admin; asking again is
    harmless; the others are not told."""
    room, [(alice, a), (_, b), _] = trio
    say(room, alice, f"-admin {PASSWORD}")
    assert a.take() == [protocol.format_admin_granted()]
    assert alice.is_admin
    say(room, alice, "-admin anything")
    assert a.take() == [protocol.format_admin_granted()]
    assert b.take() == []


def test_admin_wrong_password_counts_down_then_locks(trio):
    """Each wrong password says how many tries are left; after
    config.ADMIN_MAX_TRIES the connection gets no more, right password
    included."""
    room, [(alice, a), _, _] = trio
    for tries_left in range(config.ADMIN_MAX_TRIES - 1, -1, -1):
        say(room, alice, "-admin wrong")
        assert a.take() == [protocol.format_admin_refused(tries_left)]
    assert a.lines[-1] == protocol.format_error(
        "wrong admin password; no more tries on this connection")
    say(room, alice, f"-admin {PASSWORD}")
    assert a.take() == [protocol.format_admin_locked()]
    assert not alice.is_admin
    say(room, alice, "-admin")
    assert a.take() == [protocol.format_error("usage: -admin PASSWORD")]


def test_admin_password_never_in_a_line_sent():
    """Neither the password nor a wrong guess appears in any line the
    room sends anyone, whatever happens."""
    secret = "Sesame-0pen sesame"
    room = make_room(password=secret)
    alice, a = join(room, "alice")
    bob, b = join(room, "bob")
    say(room, bob, "-admin guess-number-one")
    say(room, alice, f"-admin {secret}")
    say(room, alice, "-users")
    say(room, bob, "-help")
    say(room, alice, "-kick bob")
    room.shut_down()
    sent = a.lines + b.lines
    assert protocol.format_admin_granted() in sent  # it did happen
    assert not any(secret in line or "Sesame" in line
                   or "guess-number-one" in line for line in sent)


def test_admin_without_a_configured_password_is_refused():
    """With no password configured nobody can become admin, not even by
    guessing an empty one."""
    room = make_room(password="")
    alice, link = join(room, "alice")
    say(room, alice, "-admin x")
    assert link.take() == [protocol.format_admin_refused(
        config.ADMIN_MAX_TRIES - 1)]
    assert room.check_password("") is False
    assert not alice.is_admin


def test_kick_needs_an_admin(trio):
    """-kick from a non-admin is refused and kicks nobody."""
    room, [(alice, a), (bob, b), _] = trio
    say(room, alice, "-kick bob")
    assert a.take() == [protocol.format_admin_only("kick users")]
    assert b.take() == [] and bob.state == ONLINE


def test_kick_seals_closes_and_tells_the_others(trio):
    """An admin's -kick: the target's last line says who kicked it and
    why, sealed, and its link is closed; everyone else is told; the
    kicked member's later frames go nowhere."""
    room, [(alice, a), (bob, b), (carol, c)] = trio
    make_admin(room, alice, a)
    say(room, carol, "-to bob")
    c.take()
    say(room, alice, "-kick BOB spamming")
    assert b.lines[-1] == protocol.format_you_were_kicked("alice",
                                                          "spamming")
    assert b.sealed and b.closed and bob.state == GONE
    kicked = protocol.format_kicked("bob", "alice", "spamming")
    assert c.take() == [kicked] and a.take() == [kicked]
    room.receive(bob, [b"still here?", b"-all hello", b"down server"])
    assert a.take() == [] and c.take() == []
    say(room, carol, "to my old partner")
    assert c.take() == [protocol.format_partner_gone("bob")]


@pytest.mark.parametrize("line, error", [
    ("-kick nobody", protocol.format_no_such_user("nobody")),
    ("-kick alice", protocol.format_not_yourself()),
    ("-kick", protocol.format_error("usage: -kick NICK")),
])
def test_kick_errors_go_to_the_admin_only(trio, line, error):
    """-kick of nobody, of oneself, or with no nick is refused to the
    admin only."""
    room, [(alice, a), (_, b), _] = trio
    make_admin(room, alice, a)
    say(room, alice, line)
    assert a.take() == [error]
    assert b.take() == [] and len(room) == 3


def test_down_server_needs_an_admin():
    """down server from a non-admin is refused; nothing shuts down."""
    calls: List[str] = []
    room = make_room(on_shutdown=calls.append)
    alice, a = join(room, "alice")
    _, b = join(room, "bob")
    drain(a, b)
    say(room, alice, "down server")
    assert a.take() == [protocol.format_admin_only("shut the server down")]
    assert b.take() == [] and calls == []
    assert connect(room)[0] is not None


def test_down_server_reaches_everyone_last():
    """An admin's down server: every member, joining ones too, gets the
    shutdown notice as its sealed last line; on_shutdown is called once
    with "by admin NICK"; no one can connect afterwards."""
    calls: List[str] = []
    room = make_room(on_shutdown=calls.append)
    alice, a = join(room, "alice")
    _, b = join(room, "bob")
    joiner, j = connect(room)
    make_admin(room, alice, a)
    room.receive(alice, [b"  Down   SERVER ", b"-users"])
    notice = protocol.format_shutdown("by admin alice")
    assert notice == "* Server is shutting down (by admin alice). Goodbye!"
    for link in (a, b, j):
        assert link.lines[-1] == notice and link.sealed
    assert calls == ["by admin alice"]
    assert room.connect(FakeLink(room), next_address()) is None
    members = room.shut_down("signal")  # the front-end's turn
    assert set(members) >= {alice, joiner}
    assert all(link.lines[-1] == notice for link in (a, b, j))


# --- Commands: errors --------------------------------------------------------


@pytest.mark.parametrize("line, error", [
    ("-frobnicate", "unknown command '-frobnicate'; type -help for the list"),
    ("-", "unknown command '-'; type -help for the list"),
    ("-help me", "-help takes no arguments"),
    ("-exit now", "-exit takes no arguments"),
])
def test_unknown_or_malformed_command_is_refused(trio, line, error):
    """A line that is not a valid command is refused, to the sender only,
    and not sent to anyone as a message."""
    room, [(alice, a), (_, b), (_, c)] = trio
    say(room, alice, line)
    assert a.take() == [protocol.format_error(error)]
    assert b.take() == [] and c.take() == [] and alice.state == ONLINE


@pytest.mark.parametrize("frame, error", [
    (b"hi\x1b[2J", "control characters are not allowed (found U+001B),"
                   " line dropped"),
    (b"bell\x07", "control characters are not allowed (found U+0007),"
                  " line dropped"),
    (b"c1 \xc2\x9b", "control characters are not allowed (found U+009B),"
                     " line dropped"),
    (b"\xff\xfebad", "line is not valid UTF-8, dropped"),
    (b"\xed\xa0\x80", "line is not valid UTF-8, dropped"),
    (protocol.OVERLONG, f"line too long (over {protocol.MAX_LINE_BYTES}"
                        " bytes), dropped"),
])
def test_bad_frames_are_refused_to_the_sender_only(trio, frame, error):
    """Control characters, invalid UTF-8 and OVERLONG frames are refused
    with an error to the sender only; the next frame is still run."""
    room, [(alice, a), (_, b), (_, c)] = trio
    room.receive(alice, [frame, b"after"])
    assert a.take() == [protocol.format_error(error)]
    assert b.take() == c.take() == [protocol.format_message("alice",
                                                            "after")]


def test_blank_lines_crlf_and_tabs():
    """A blank line is ignored, a trailing CR is dropped, a tab passes."""
    room = make_room()
    alice, a = join(room, "alice")
    _, b = join(room, "bob")
    drain(a)
    room.receive(alice, [b"", b"  \t ", b"crlf\r", b"tab\there"])
    assert a.take() == []
    assert b.take() == [protocol.format_message("alice", "crlf"),
                        protocol.format_message("alice", "tab\there")]


# --- disconnect() ------------------------------------------------------------


def test_disconnect_of_an_online_member_tells_the_others(trio):
    """A dropped connection counts as leaving: the others hear "left",
    the registry forgets it, its link is closed."""
    room, [(alice, a), (_, b), (_, c)] = trio
    room.disconnect(alice, "connection reset")
    assert b.take() == c.take() == [protocol.format_left("alice")]
    assert a.closed and alice.state == GONE
    assert "alice" not in room.nicknames().values()
    assert alice.close_reason == "connection reset"


def test_disconnect_twice_is_harmless(trio):
    """A second disconnect() of the same member sends nothing and raises
    nothing; so does disconnect() after -exit or a kick."""
    room, [(alice, a), (bob, b), (carol, c)] = trio
    room.disconnect(alice)
    drain(b, c)
    room.disconnect(alice)
    say(room, bob, "-exit")
    c.take()
    room.disconnect(bob)
    room.disconnect(bob)
    assert c.take() == [] and len(room) == 1
    assert a.ignored == 0  # nothing was even attempted on alice's link


def test_disconnect_of_a_joining_member_is_silent(trio):
    """A connection that never chose a nickname leaves unannounced."""
    room, [_, (_, b), _] = trio
    joiner, j = connect(room)
    room.disconnect(joiner)
    assert j.closed and b.take() == [] and len(room) == 3


def test_disconnect_with_a_farewell_makes_it_the_last_line(trio):
    """disconnect(farewell=...) puts the farewell as the sealed last line
    before the link is closed."""
    room, [(alice, a), (_, b), _] = trio
    farewell = protocol.format_line_too_long()
    room.disconnect(alice, "flooding", farewell=farewell)
    assert a.lines[-1] == farewell and a.sealed and a.closed
    assert b.take() == [protocol.format_left("alice")]


def test_after_shut_down_no_left_and_no_connect(trio):
    """After shut_down(): everyone, joining members too, has the notice
    as its sealed last line; nobody is told "left" as connections drop
    or members -exit; connect() returns None; a second call sends
    nothing more."""
    room, [(alice, a), (bob, b), (carol, c)] = trio
    joiner, j = connect(room)
    members = room.shut_down("stopping")
    assert set(members) == {alice, bob, carol, joiner}
    notice = protocol.format_shutdown("stopping")
    for link in (a, b, c, j):
        assert link.take()[-1] == notice and link.sealed
    room.disconnect(alice)
    say(room, bob, "-exit")
    say(room, joiner, "latecomer")
    # Nothing runs once the room is closed: no goodbye is even queued.
    assert b.ignored == 0 and j.ignored == 0
    assert len(room) == 2 and "latecomer" not in room.nicknames().values()
    room.disconnect(bob)
    assert c.take() == [] and c.ignored == 0
    assert room.connect(FakeLink(room), next_address()) is None
    assert set(room.shut_down("again")) == {carol, joiner}
    assert c.ignored == 0 and c.lines[-1] == notice


# --- Announcements -----------------------------------------------------------


@pytest.fixture
def big_room() -> Tuple[Room, List[Tuple[Member, FakeLink]]]:
    """A room with announce_limit=2 and ann, bob, cat online: already
    past the limit, nothing pending, everyone's lines taken."""
    room = make_room(announce_limit=2)
    people = [join(room, nick) for nick in ("ann", "bob", "cat")]
    room.tick()
    drain(*(link for _, link in people))
    return room, people


def test_small_room_announces_at_once():
    """Up to announce_limit users, each join and departure is its own
    notice, sent at once."""
    room = make_room(announce_limit=2)
    _, a = join(room, "ann")
    bob, _ = join(room, "bob")
    assert a.take() == [protocol.format_joined("bob")]
    say(room, bob, "-exit")
    assert a.take() == [protocol.format_left("bob")]


def test_large_room_batches_until_tick():
    """Past the limit a join is not sent at once but by tick(), as one
    Joined (K) line, once."""
    room = make_room(announce_limit=2)
    _, a = join(room, "ann")
    _, b = join(room, "bob")
    drain(a)
    join(room, "cat")
    assert a.take() == [] and b.take() == []
    room.tick()
    assert a.take() == b.take() == [protocol.format_joined_many(["cat"])]
    assert a.lines[-1] == "* Joined (1): cat"
    room.tick()
    assert a.take() == []


def test_tick_with_nothing_pending_sends_and_flushes_nothing(big_room):
    """tick() with no batched announcement sends nothing."""
    room, people = big_room
    flushes = [link.flushes for _, link in people]
    room.tick()
    assert [link.take() for _, link in people] == [[], [], []]
    assert [link.flushes for _, link in people] == flushes


def test_join_then_leave_in_one_tick_keeps_the_order(big_room):
    """A join then a departure of the same nick within one tick come out
    as Joined before Left."""
    room, [(_, a), _, _] = big_room
    dan, _ = join(room, "dan")
    say(room, dan, "-exit")
    assert a.take() == []
    room.tick()
    assert a.take() == [protocol.format_joined_many(["dan"]),
                        protocol.format_left_many(["dan"])]


def test_interleaved_runs_are_separate_lines_in_order(big_room):
    """Each run of joins or of departures is one line, and the lines come
    in the order things happened."""
    room, [(_, a), _, _] = big_room
    dan, _ = join(room, "dan")
    eve, _ = join(room, "eve")
    say(room, dan, "-exit")
    join(room, "fay")
    room.disconnect(eve)
    room.tick()
    assert a.take() == ["* Joined (2): dan, eve", "* Left (1): dan",
                        "* Joined (1): fay", "* Left (1): eve"]


def test_shrinking_room_sends_the_batch_before_the_next_notice(big_room):
    """When the room shrinks back to the limit, what is still batched is
    sent before the next immediate notice: never "left" before "joined",
    and nothing is repeated by the next tick."""
    room, [(_, a), (bob, _), (cat, _)] = big_room
    dan, _ = join(room, "dan")
    say(room, cat, "-exit")
    room.disconnect(dan)
    assert a.take() == []
    say(room, bob, "-exit")
    assert a.take() == ["* Joined (1): dan", "* Left (2): cat, dan",
                        protocol.format_left("bob")]
    room.tick()
    assert a.take() == []


def test_kick_notice_never_precedes_the_batched_join(big_room):
    """In a room past the limit, a member kicked before the tick that
    would announce its join: the others must hear it joined before they
    hear it was kicked."""
    room, [(ann, a), (_, b), _] = big_room
    make_admin(room, ann, a)
    join(room, "dan")
    say(room, ann, "-kick dan")
    room.tick()
    lines = b.take()
    joined = protocol.format_joined_many(["dan"])
    kicked = protocol.format_kicked("dan", "ann")
    assert joined in lines and kicked in lines
    assert lines.index(joined) < lines.index(kicked), lines


# --- Flushing ----------------------------------------------------------------


def test_a_batch_flushes_each_recipient_once_after_unlocking():
    """receive() of 50 lines from one sender to 3 others puts all 50 on
    each other link, then flushes each exactly once, with the room's lock
    released (FakeLink.flush asserts it); the sender's link, given
    nothing, is not flushed."""
    room = make_room()
    alice, a = join(room, "alice")
    others = [join(room, nick)[1] for nick in ("bob", "carol", "dave")]
    drain(a, *others)
    before = {id(link): link.flushes for link in [a] + others}
    room.receive(alice, [f"line {i}".encode() for i in range(50)])
    expected = [protocol.format_message("alice", f"line {i}")
                for i in range(50)]
    for link in others:
        assert link.take() == expected
        assert link.flushes == before[id(link)] + 1
        assert link.queued_at_flush == len(link.lines)
    assert a.flushes == before[id(a)]


def test_every_entry_point_flushes_after_unlocking():
    """connect, receive, expire, disconnect, tick and shut_down each
    flush the links they queued on, once, after releasing the lock."""
    room = make_room(announce_limit=1)
    joiner, j = connect(room)
    assert j.flushes == 1
    room.receive(joiner, [b"ann"])
    assert j.flushes == 2 and j.queued_at_flush == len(j.lines)
    late, late_link = connect(room)
    assert room.expire(late) and late_link.flushes == 2
    bob, b = join(room, "bob")  # batched: ann is not told now
    flushes = j.flushes
    room.tick()
    assert j.flushes == flushes + 1 and j.lines[-1] == "* Joined (1): bob"
    bob_flushes = b.flushes
    room.disconnect(bob)
    room.tick()
    assert j.flushes == flushes + 2 and j.lines[-1] == "* Left (1): bob"
    room.shut_down()
    assert j.flushes == flushes + 3 and j.queued_at_flush == len(j.lines)
    assert b.flushes == bob_flushes  # gone: nothing queued, no flush


# --- Concurrency -------------------------------------------------------------


def test_concurrent_senders_kicks_and_joins_keep_the_room_consistent():
    """8 threads each join a member and send 200 lines through receive()
    in small batches while another thread joins and kicks members. After
    all of it: the registry and len(room) agree with who is online, every
    online member got every public line of every sender in order, every
    join came before its kick, no link was flushed by a thread holding
    the room's lock, and nobody got an error."""
    senders, lines_each, victims = 8, 200, 40
    room = make_room()
    room._lock = OwnedLock()  # type: ignore[assignment]
    boss, boss_link = join(room, "boss")
    make_admin(room, boss, boss_link)
    start = threading.Barrier(senders + 1, timeout=DEADLINE)
    errors: List[BaseException] = []
    links: Dict[str, FakeLink] = {"boss": boss_link}
    members: Dict[str, Member] = {"boss": boss}
    victim_links: List[FakeLink] = []

    def guarded(work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except BaseException as error:  # reported by the main thread
                errors.append(error)
                start.abort()
        return run

    def sender(index: int) -> None:
        nick = f"u{index}"
        member, link = join(room, nick, ("10.0.0.1", 1000 + index))
        links[nick], members[nick] = link, member
        start.wait()
        sent = 0
        for size in itertools.cycle((1, 3, 2, 5)):
            if sent >= lines_each:
                break
            batch = range(sent, min(sent + size, lines_each))
            room.receive(member, [f"line {i}".encode() for i in batch])
            sent = batch[-1] + 1

    def kicker() -> None:
        start.wait()
        for index in range(victims):
            nick = f"v{index}"
            _, link = join(room, nick, ("10.0.0.2", 2000 + index))
            victim_links.append(link)
            say(room, boss, f"-kick {nick}")

    threads = [threading.Thread(target=guarded(lambda i=i: sender(i)))
               for i in range(senders)]
    threads.append(threading.Thread(target=guarded(kicker)))
    began = time.monotonic()
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: more interleavings
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, DEADLINE - (time.monotonic() - began)))
    finally:
        sys.setswitchinterval(switch)
    assert not any(thread.is_alive() for thread in threads), "deadlock?"
    assert errors == []

    online = {f"u{i}" for i in range(senders)} | {"boss"}
    registry = room.nicknames()
    assert sorted(registry.values()) == sorted(online)
    assert len(room) == len(online) == len(registry)
    for nick, member in members.items():
        assert registry[member.address] == nick
    for nick, link in links.items():
        assert not any(line.startswith(protocol.ERROR)
                       for line in link.lines), nick
        for index in range(senders):
            author = f"u{index}"
            if author == nick:
                continue
            heard = [line for line in link.lines
                     if line.startswith(author + ": ")]
            assert heard == [protocol.format_message(author, f"line {i}")
                             for i in range(lines_each)], (nick, author)
        for index in range(victims):
            victim = f"v{index}"
            joined = link.lines.index(protocol.format_joined(victim))
            kicked = link.lines.index(protocol.format_kicked(victim, "boss"))
            assert joined < kicked
    assert len(victim_links) == victims
    for link in victim_links:
        assert link.sealed and link.closed
        assert link.lines[-1] == protocol.format_you_were_kicked("boss")


def test_a_rename_comes_after_the_held_back_join_it_renames():
    """An address past its notice budget has its joins held back for the
    once-a-second summary; if one of its users renames meanwhile, the
    others hear of the join first, under the old name, then the rename,
    and the user list they keep never gets a ghost."""
    settings = ServerConfig(admin_password=PASSWORD, history=0,
                            resume_grace=0, rate_limit=20,
                            kick_ban_minutes=0)
    room = Room(settings, clock=lambda: 1000.0)  # the budget never refills
    observer, link = join(room, "observer", ("10.0.0.1", 1))
    churner = None
    for index in range(config.NOTICE_BURST + 1):
        churner, _ = join(room, f"q{index}", ("10.0.0.2", 100 + index))
    link.take()  # the joins told at once
    say(room, churner, "-nick renamed")
    last = f"q{config.NOTICE_BURST}"
    assert link.take() == [protocol.format_joined_many([last]),
                           protocol.format_nick_changed(last, "renamed")]
