"""The newer commands over real sockets: -nick, -me, -away/-back, -whois,
-ignore/-unignore, -motd, and for admins -mute/-unmute, -ban/-unban/-bans.

Each command's success and its errors; non-delivery is proved with
markers (a public line from a third user must be the very next line).
Nothing sleeps to synchronise; every wait has a deadline.

A user who sends a private line may get a copy of it back (a line
starting with ``-> ``): the checks on what a *sender* gets tolerate that
copy and nothing else (:func:`reply`, :func:`quiet`).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import List, Optional, Sequence

import pytest

import config
import protocol
from helpers import ADMIN_PASSWORD, LineClient, marker, wait_until

#: The start of the copy of a private line its sender may get back.
SENT_COPY = "-> "


# --- Helpers -----------------------------------------------------------------


def join(server, clients, room: List[LineClient], nick: str,
         bind: Optional[str] = None) -> LineClient:
    """Register ``nick``; everyone already in ``room`` is told, next."""
    user = clients(server, nick, bind=bind)
    for other in room:
        assert reply(other) == protocol.format_joined(nick)
    room.append(user)
    return user


def users(server, clients, *nicks: str) -> List[LineClient]:
    room: List[LineClient] = []
    for nick in nicks:
        join(server, clients, room, nick)
    return room


def make_admin(user: LineClient) -> None:
    user.send(f"-admin {ADMIN_PASSWORD}")
    user.next_is("* You are now an admin.")


def reply(user: LineClient) -> str:
    """The next line but a copy of a private line the user sent."""
    while True:
        line = user.read_line()
        if not line.startswith(SENT_COPY):
            return line


def quiet(via: LineClient, *receivers: LineClient,
          copies: Sequence[LineClient] = (), text: str = "marker") -> None:
    """Proof that nothing reached ``receivers`` lately: ``via``'s public
    ``text`` is the very next line each gets (for those in ``copies``,
    after copies of private lines they sent, and nothing else)."""
    via.send(f"-all {text}")
    expected = f"{via.nick}: {text}"
    for receiver in receivers:
        line = receiver.read_line()
        while receiver in copies and line.startswith(SENT_COPY):
            line = receiver.read_line()
        assert line == expected, (receiver.nick, line)


def settle(user: LineClient) -> None:
    """Wait until the server has run every line ``user`` sent so far
    (they are run in order): ask for -users and read up to the answer,
    which is all it got meanwhile, but copies of its private lines."""
    user.send("-users")
    line = reply(user)
    assert line.startswith("* Online ("), line


def read_until(user: LineClient, last: str) -> List[str]:
    """Every line up to ``last`` (included)."""
    lines = []
    while not lines or lines[-1] != last:
        lines.append(user.read_line())
    return lines


def answer(user: LineClient, answers: Sequence[str]) -> str:
    """The first of ``answers`` the user gets; before it, at most a
    nickname change notice."""
    while True:
        line = user.read_line()
        if line in answers:
            return line
        assert " is now known as " in line, line


def muted_reply(line: str) -> bool:
    return line.startswith("! you are muted") and line.endswith(
        "; your line reached nobody")


# --- -nick -------------------------------------------------------------------


def test_nick_change_told_to_everyone_case_only_allowed(server, clients):
    alice, bob, carol = users(server, clients, "alice", "bob", "carol")
    alice.send("-nick Alice")
    alice.next_is("* You are now known as Alice.")
    bob.next_is("* alice is now known as Alice")
    carol.next_is("* alice is now known as Alice")
    assert sorted(server.room.nicknames().values()) == [
        "Alice", "bob", "carol"]
    alice.nick = "Alice"
    alice.send("-nick zed")
    alice.next_is("* You are now known as zed.")
    bob.next_is("* Alice is now known as zed")
    carol.next_is("* Alice is now known as zed")
    alice.nick = "zed"
    bob.send("-to ZED hi")
    alice.next_is("[private] bob: hi")
    # The old nickname is free at once.
    new = clients(server, "alice")
    for user in (alice, bob, carol):
        assert reply(user) == protocol.format_joined("alice")
    quiet(new, alice, bob, carol)
    assert sorted(server.room.nicknames().values()) == [
        "alice", "bob", "carol", "zed"]


def test_users_keeps_join_order_after_a_rename(server, clients):
    """-users lists the others in the order they joined; a new name does
    not send its holder to the end of the list."""
    alice, bob, carol = users(server, clients, "alice", "bob", "carol")
    alice.send("-nick zed")
    alice.next_is("* You are now known as zed.")
    bob.next_is("* alice is now known as zed")
    bob.send("-users")
    bob.next_is("* Online (3): bob (you), zed, carol")
    carol.next_is("* alice is now known as zed")
    carol.send("-users")
    carol.next_is("* Online (3): carol (you), zed, bob")


def test_nick_refusals_change_nothing(server, clients):
    alice, bob = users(server, clients, "alice", "bob")
    cases = [
        ("-nick bob", "! nickname 'bob' refused: it is taken, choose"
                      " another"),
        ("-nick BoB", "! nickname 'BoB' refused: it is taken, choose"
                      " another"),
        ("-nick a@b", "! nickname 'a@b' refused: a nickname cannot contain"
                      " '@'; use letters, digits and _ - ."),
        ("-nick " + "x" * 21, "! nickname '" + "x" * 21 + "' refused: a"
                              " nickname can have at most 20 characters"),
        ("-nick --x", "! nickname '--x' refused: a nickname cannot start"
                      " with '-'"),
        ("-nick alice", "! nickname 'alice' refused: it is your nickname"
                        " already"),
        ("-nick two words", "! nickname 'two words' refused: a nickname"
                            " is one word"),
        ("-nick", "! usage: -nick NEW"),
    ]
    for line, error in cases:
        alice.send(line)
        alice.next_is(error)
    quiet(alice, bob)  # bob was told of no change
    assert sorted(server.room.nicknames().values()) == ["alice", "bob"]


def test_partner_chosen_by_someone_else_follows_a_rename(server, clients):
    alice, bob, carol = users(server, clients, "alice", "bob", "carol")
    bob.send("-to alice")
    bob.next_is(protocol.format_partner("alice"))
    alice.send("-nick Alicia")
    alice.next_is("* You are now known as Alicia.")
    bob.next_is("* alice is now known as Alicia")
    carol.next_is("* alice is now known as Alicia")
    alice.nick = "Alicia"
    bob.send("still you?")
    alice.next_is("[private] bob: still you?")
    quiet(alice, carol)  # carol got nothing of it
    quiet(alice, bob, copies=[bob])  # and bob no error


def test_nick_race_has_exactly_one_winner(server, clients):
    first, second = users(server, clients, "p0", "q0")
    for attempt in range(20):
        nick = f"same{attempt}"
        barrier = threading.Barrier(2)

        def claim(user: LineClient, nick: str = nick,
                  barrier: threading.Barrier = barrier) -> None:
            barrier.wait(timeout=5)
            user.send(f"-nick {nick}")

        threads = [threading.Thread(target=claim, args=(user,))
                   for user in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=5)
            assert not thread.is_alive()
        won = f"* You are now known as {nick}."
        taken = protocol.format_nick_refused(nick, protocol.NICK_TAKEN)
        assert taken == (f"! nickname '{nick}' refused: it is taken,"
                         " choose another")
        answers = [answer(user, (won, taken)) for user in (first, second)]
        assert sorted(answers) == sorted([won, taken]), answers
        winner, loser = ((first, second) if answers[0] == won
                         else (second, first))
        # The loser hears of the change, before or after its refusal.
        told = f"* {winner.nick} is now known as {nick}"
        heard = loser.seen[-2:]
        if told not in heard:
            loser.next_is(told)
        winner.nick = nick
        names = list(server.room.nicknames().values())
        assert sorted(names) == sorted([nick, loser.nick]), names
    assert len(server.room) == 2
    quiet(first, second)
    quiet(second, first)


# --- -me ---------------------------------------------------------------------


def test_me_is_a_public_action(server, clients):
    alice, bob, carol = users(server, clients, "alice", "bob", "carol")
    alice.send("-me waves")
    bob.next_is("* alice waves")
    carol.next_is("* alice waves")
    quiet(bob, alice, carol)  # no echo to the sender
    for line in ("-me", "-me   "):
        alice.send(line)
        alice.next_is("! usage: -me text")
    quiet(alice, bob, carol)


def test_me_with_a_partner_is_private(server, clients):
    alice, bob, carol = users(server, clients, "alice", "bob", "carol")
    alice.send("-to bob")
    alice.next_is(protocol.format_partner("bob"))
    alice.send("-me waves")
    bob.next_is("[private] * alice waves")
    marker(alice, carol)  # carol got nothing before alice's marker
    bob.next_is("alice: marker")
    quiet(carol, alice, bob, copies=[alice])


def test_me_alone_is_refused(server, clients):
    alice = clients(server, "alice")
    alice.send("-me waves")
    alice.next_is(protocol.format_nobody_else())


# --- -away, -back ------------------------------------------------------------


def test_away_shown_reported_to_private_senders_and_back(server, clients):
    alice, bob, carol = users(server, clients, "alice", "bob", "carol")
    bob.send("-away lunch")
    bob.next_is("* You are marked away (lunch). -back, or any line you"
                " send, clears it.")
    alice.send("-users")
    alice.next_is("* Online (3): alice (you), bob (away), carol")
    alice.send("-to bob are you there?")
    bob.next_is("[private] alice: are you there?")
    assert reply(alice) == "* bob is away: lunch"
    # A private action to an away partner: the same.
    carol.send("-to bob")
    carol.next_is(protocol.format_partner("bob"))
    carol.send("-me knocks")
    bob.next_is("[private] * carol knocks")
    assert reply(carol) == "* bob is away: lunch"
    # A public line is not answered with the reason.
    alice.send("-all hello all")
    bob.next_is("alice: hello all")
    carol.next_is("alice: hello all")
    bob.send("-back")
    bob.next_is("* You are not marked away any more.")
    alice.send("-users")
    alice.next_is("* Online (3): alice (you), bob, carol")
    alice.send("-to bob again")
    bob.next_is("[private] alice: again")
    quiet(carol, alice, bob, copies=[alice])  # no "is away" any more
    bob.send("-back")
    bob.next_is("! you are not marked away")
    bob.send("-back now")
    bob.next_is("! -back takes no arguments")
    quiet(carol, alice, bob)  # bob's refusals reached nobody


def test_away_without_reason_and_changing_reason(server, clients):
    alice, bob = users(server, clients, "alice", "bob")
    bob.send("-away")
    bob.next_is("* You are marked away (away). -back, or any line you"
                " send, clears it.")
    bob.send("-away in a meeting")
    bob.next_is("* You are marked away (in a meeting). -back, or any"
                " line you send, clears it.")
    alice.send("-to bob hi")
    bob.next_is("[private] alice: hi")
    assert reply(alice) == "* bob is away: in a meeting"
    quiet(bob, alice)  # -away itself said nothing to anyone


@pytest.mark.parametrize("line, heard", [
    ("back again", "bob: back again"),
    ("-all back again", "bob: back again"),
    ("-me is here again", "* bob is here again"),
    ("-to alice back again", "[private] bob: back again"),
])
def test_sending_a_line_clears_away(server, clients, line, heard):
    alice, bob = users(server, clients, "alice", "bob")
    bob.send("-away lunch")
    bob.expect(lambda text: text.startswith("* You are marked away"))
    bob.send(line)
    assert reply(bob) == "* You are not marked away any more."
    alice.next_is(heard)
    alice.send("-users")
    alice.next_is("* Online (2): alice (you), bob")
    alice.send("-to bob hi")
    assert reply(bob) == "[private] alice: hi"
    quiet(bob, alice, copies=[alice])  # no "is away"


# --- -whois ------------------------------------------------------------------

WHOIS_RE = re.compile(r"\* (\S+): joined (\d\d:\d\d) \((\d+) s ago\),"
                      r" idle (\d+) s(.*)")


def test_whois_facts_and_address_for_admins_only(server, clients,
                                                 away_from_utc):
    before = time.time()
    alice, bob = users(server, clients, "alice", "bob")
    bob.send("-away lunch")
    bob.expect(lambda text: text.startswith("* You are marked away"))
    alice.send("-whois BOB")
    line = alice.read_line()
    after = time.time()
    match = WHOIS_RE.fullmatch(line)
    assert match, line
    assert match.group(1) == "bob"
    # The server's local time, as -history shows it.
    assert match.group(2) in {time.strftime("%H:%M", time.localtime(t))
                              for t in (before, after)}
    assert match.group(5) == ", away: lunch"  # no address for a user
    # An admin sees where someone connects from, and who is an admin.
    make_admin(bob)
    alice.send("-whois bob")
    match = WHOIS_RE.fullmatch(alice.read_line())
    assert match and match.group(5) == ", away: lunch, admin"
    bob.send("-whois alice")
    match = WHOIS_RE.fullmatch(bob.read_line())
    port = alice.sock.getsockname()[1]
    assert match and match.group(5) == f", from 127.0.0.1:{port}"
    bob.send("-whois bob")
    match = WHOIS_RE.fullmatch(bob.read_line())
    port = bob.sock.getsockname()[1]
    assert match and match.group(5) == (
        f", away: lunch, admin, from 127.0.0.1:{port}")
    for asked in ("dave", "bob x"):
        alice.send(f"-whois {asked}")
        alice.next_is(protocol.format_no_such_user(asked))
    alice.send("-whois")
    alice.next_is("! usage: -whois NICK")


def test_whois_shows_a_mute(server, clients):
    teacher, bob = users(server, clients, "teacher", "bob")
    make_admin(teacher)
    teacher.send("-mute bob")
    bob.expect(lambda line: line.startswith("! you were muted"))
    teacher.expect("* bob was muted by teacher")
    teacher.send("-whois bob")
    match = WHOIS_RE.fullmatch(teacher.read_line())
    port = bob.sock.getsockname()[1]
    assert match and match.group(5) == f", muted, from 127.0.0.1:{port}"


# --- -ignore, -unignore ------------------------------------------------------


def test_ignore_stops_public_private_and_actions(server, clients):
    alice, bob, carol = users(server, clients, "alice", "bob", "carol")
    alice.send("-ignore BOB")
    alice.next_is("* You ignore bob now: their lines do not reach you."
                  " -unignore bob to undo.")
    bob.send("-all hello")
    carol.next_is("bob: hello")
    bob.send("-me waves")
    carol.next_is("* bob waves")
    bob.send("-to alice psst")
    bob.send("-to alice")
    assert reply(bob) == protocol.format_partner("alice")
    bob.send("partner line")
    bob.send("-me winks")
    # alice got none of it; bob was told nothing (no error): he cannot
    # tell he is ignored.
    settle(bob)
    quiet(carol, alice, bob, copies=[bob])
    # Ignored by the only other user, a public line still "goes".
    carol.send("-exit")
    carol.wait_closed()
    alice.next_is(protocol.format_left("carol"))
    bob.next_is(protocol.format_left("carol"))
    bob.send("-all anyone?")
    bob.send("-users")
    bob.next_is("* Online (2): bob (you), alice")
    alice.send("-users")  # alice still hears the server
    alice.next_is("* Online (2): alice (you), bob")


def test_ignore_list_unignore_and_errors(server, clients):
    alice, bob, carol = users(server, clients, "alice", "bob", "carol")
    alice.send("-ignore")
    alice.next_is("* You ignore nobody.")
    for nick in ("carol", "bob"):
        alice.send(f"-ignore {nick}")
        alice.expect(lambda line: line.startswith("* You ignore"))
    alice.send("-ignore")
    alice.next_is("* You ignore: bob, carol")
    cases = [
        ("-ignore alice", protocol.format_not_yourself()),
        ("-ignore dave", protocol.format_no_such_user("dave")),
        ("-ignore Carol", "! you ignore carol already"),
        ("-ignore bob carol", "! usage: -ignore NICK"),
        ("-unignore dave", "! you do not ignore dave; -ignore lists whom"
                           " you do"),
        ("-unignore", "! usage: -unignore NICK"),
    ]
    for line, error in cases:
        alice.send(line)
        alice.next_is(error)
    alice.send("-unignore BOB")
    alice.next_is("* bob's lines reach you again.")
    alice.send("-unignore bob")
    alice.next_is("! you do not ignore bob; -ignore lists whom you do")
    alice.send("-ignore")
    alice.next_is("* You ignore: carol")
    bob.send("-all heard again")
    alice.next_is("bob: heard again")
    carol.next_is("bob: heard again")
    carol.send("-all still ignored")
    bob.next_is("carol: still ignored")
    quiet(bob, alice)


def test_unignore_with_extra_words_changes_nothing(server, clients):
    """A refused -unignore must not lift the ignore it says is not
    there."""
    alice, bob, carol = users(server, clients, "alice", "bob", "carol")
    alice.send("-ignore bob")
    alice.expect(lambda line: line.startswith("* You ignore bob now"))
    alice.send("-unignore bob please")
    assert alice.read_line().startswith("! ")
    alice.send("-ignore")
    alice.next_is("* You ignore: bob")
    bob.send("-all still ignored?")
    carol.next_is("bob: still ignored?")
    quiet(carol, alice)


def test_ignore_follows_a_rename(server, clients):
    alice, bob, carol = users(server, clients, "alice", "bob", "carol")
    alice.send("-ignore bob")
    alice.expect(lambda line: line.startswith("* You ignore bob now"))
    bob.send("-nick robert")
    bob.next_is("* You are now known as robert.")
    alice.next_is("* bob is now known as robert")
    carol.next_is("* bob is now known as robert")
    bob.nick = "robert"
    bob.send("-all new name, same me")
    carol.next_is("robert: new name, same me")
    bob.send("-to alice psst")
    settle(bob)
    quiet(carol, alice, bob, copies=[bob])
    alice.send("-ignore")
    alice.next_is("* You ignore: robert")
    # The old name is nobody's now: a new bob is heard.
    new_bob = join(server, clients, [alice, bob, carol], "bob")
    new_bob.send("-all I am another bob")
    alice.next_is("bob: I am another bob")
    alice.send("-unignore robert")
    alice.next_is("* robert's lines reach you again.")
    bob.send("-all heard")
    alice.next_is("robert: heard")


# --- -mute, -unmute ----------------------------------------------------------


def test_mute_silences_every_kind_of_line(server, clients):
    teacher, bob, carol = users(server, clients, "teacher", "bob", "carol")
    make_admin(teacher)
    teacher.send("-mute BOB")
    bob.next_is("! you were muted by teacher: your lines reach nobody until"
                " then")
    carol.next_is("* bob was muted by teacher")
    teacher.next_is("* bob was muted by teacher")
    refusal = ("! you are muted until an admin lifts it; your line"
               " reached nobody")
    for line in ("hello", "-all hello", "-to carol psst", "-me waves",
                 "-away lunch", "-to carol", "plain to partner",
                 "-me to partner"):
        bob.send(line)
        if line == "-to carol":
            bob.next_is(protocol.format_partner("carol"))
        else:
            bob.next_is(refusal)
    bob.send("-nick robert")
    bob.next_is("! nickname 'robert' refused: you are muted")
    quiet(teacher, carol, bob)  # none of it reached anyone
    carol.send("-users")
    carol.next_is("* Online (3): carol (you), teacher (admin), bob")
    assert sorted(server.room.nicknames().values()) == [
        "bob", "carol", "teacher"]
    teacher.send("-mute bob 5")
    teacher.next_is("! bob is muted already; -unmute bob first to change it")
    teacher.send("-unmute Bob")
    bob.next_is("* teacher unmuted you: you can talk again.")
    carol.next_is("* bob was unmuted by teacher")
    teacher.next_is("* bob was unmuted by teacher")
    bob.send("-all I can talk")
    carol.next_is("bob: I can talk")
    teacher.next_is("bob: I can talk")
    teacher.send("-unmute bob")
    teacher.next_is("! bob is not muted")
    quiet(teacher, carol)


def test_mute_for_minutes_and_its_errors(server, clients, monkeypatch):
    teacher, bob, carol = users(server, clients, "teacher", "bob", "carol")
    make_admin(teacher)
    cases = [
        ("-mute bob 0", "! minutes must be 1 to 10080"),
        (f"-mute bob {config.MAX_SANCTION_MINUTES + 1}",
         "! minutes must be 1 to 10080"),
        ("-mute bob 5 because", "! usage: -mute NICK [minutes]"),
        ("-mute teacher", protocol.format_not_yourself()),
        ("-mute dave", protocol.format_no_such_user("dave")),
        ("-mute", "! usage: -mute NICK"),
        ("-unmute dave", "! dave is not muted"),
    ]
    for line, error in cases:
        teacher.send(line)
        teacher.next_is(error)
    quiet(teacher, bob, carol)  # nobody was muted
    teacher.send("-mute bob 5")
    bob.next_is("! you were muted by teacher for 5 min: your lines reach"
                " nobody until then")
    carol.next_is("* bob was muted by teacher for 5 min")
    teacher.next_is("* bob was muted by teacher for 5 min")
    bob.send("hello")
    assert re.fullmatch(r"! you are muted, [45] min left; your line"
                        r" reached nobody", bob.read_line())
    quiet(teacher, carol, bob)
    # When the minutes are up, the mute lifts itself.
    mutes = server.room._mutes
    real_clock = mutes._clock
    monkeypatch.setattr(mutes, "_clock", lambda: real_clock() + 301)
    bob.send("-all free again")
    carol.next_is("bob: free again")
    teacher.next_is("bob: free again")


def test_mute_survives_leaving_and_joining_again(server, clients):
    teacher, bob, carol = users(server, clients, "teacher", "bob", "carol")
    make_admin(teacher)
    teacher.send("-mute bob")
    bob.expect(lambda line: line.startswith("! you were muted"))
    bob.send("-exit")
    bob.wait_closed()
    for user in (teacher, carol):
        user.expect(protocol.format_left("bob"))
    again = join(server, clients, [teacher, carol], "BOB")
    again.send("-all I am back and loud")
    assert muted_reply(again.read_line())
    again.send("-to carol psst")
    assert muted_reply(again.read_line())
    quiet(teacher, carol, again)


def test_non_admins_cannot_moderate(server, clients):
    alice, bob = users(server, clients, "alice", "bob")
    cases = [
        ("-mute bob", "! only an admin can mute users; see -admin"
                      " PASSWORD"),
        ("-unmute bob", "! only an admin can unmute users; see -admin"
                        " PASSWORD"),
        ("-ban bob", "! only an admin can ban users; see -admin"
                     " PASSWORD"),
        ("-unban 127.0.0.1", "! only an admin can lift bans; see -admin"
                             " PASSWORD"),
        ("-bans", "! only an admin can see the bans; see -admin"
                  " PASSWORD"),
    ]
    assert cases[0][1] == protocol.format_admin_only("mute users")
    for line, error in cases:
        alice.send(line)
        alice.next_is(error)
    bob.send("-all not muted")
    alice.next_is("bob: not muted")
    quiet(alice, bob)


def test_admin_mutes_another_admin_logged_loudly(server, clients, caplog):
    caplog.set_level(logging.WARNING, logger="chat")
    teacher, boss, carol = users(server, clients, "teacher", "boss", "carol")
    make_admin(teacher)
    make_admin(boss)
    teacher.send("-mute boss")
    boss.expect(lambda line: line.startswith("! you were muted by teacher"))
    carol.next_is("* boss was muted by teacher")
    boss.send("-all I am an admin")
    assert muted_reply(boss.read_line())
    quiet(teacher, carol)
    assert any(record.levelno == logging.WARNING
               and "muted admin boss" in record.getMessage()
               for record in caplog.records), caplog.records


# --- -ban, -unban, -bans -----------------------------------------------------


def test_ban_disconnects_and_refuses_the_address(server, clients):
    room: List[LineClient] = []
    teacher = join(server, clients, room, "teacher")
    bob = join(server, clients, room, "bob", bind="127.0.0.2")
    carol = join(server, clients, room, "carol", bind="127.0.0.3")
    make_admin(teacher)
    teacher.send("-ban bob spam")
    assert bob.wait_closed()[-1] == "! you were banned by teacher: spam"
    carol.next_is("* bob was banned by teacher: spam")
    teacher.next_is("* bob was banned by teacher: spam")
    wait_until(lambda: sorted(server.room.nicknames().values())
               == ["carol", "teacher"], what="bob out of the registry")
    refused = clients(server, bind="127.0.0.2")
    assert refused.wait_closed() == [
        "! connection refused: your address is banned from this server"
        " (spam)"]
    # Everyone else carries on, and another address joins freely.
    carol.send("-all still here")
    teacher.next_is("carol: still here")
    dave = join(server, clients, [teacher, carol], "dave", bind="127.0.0.3")
    dave.send("-all hi from .3")
    teacher.next_is("dave: hi from .3")
    carol.next_is("dave: hi from .3")
    teacher.send("-bans")
    teacher.next_is("* 1 ban:")
    teacher.next_is("*   127.0.0.2 (bob, by teacher, until -unban): spam")
    teacher.send("-unban 127.0.0.2")
    teacher.next_is("* The ban on 127.0.0.2 (bob) is lifted.")
    teacher.send("-bans")
    teacher.next_is("* Nobody is banned.")
    back = join(server, clients, [teacher, carol, dave], "bob",
                bind="127.0.0.2")
    back.send("-all I am back")
    teacher.next_is("bob: I am back")


def test_ban_for_minutes_unban_by_nickname_and_errors(server, clients,
                                                      monkeypatch):
    room: List[LineClient] = []
    teacher = join(server, clients, room, "teacher")
    bob = join(server, clients, room, "bob", bind="127.0.0.2")
    eve = join(server, clients, room, "eve", bind="127.0.0.3")
    make_admin(teacher)
    cases = [
        ("-ban bob 0", "! minutes must be 1 to 10080"),
        ("-ban bob 10081 too long", "! minutes must be 1 to 10080"),
        ("-ban teacher", protocol.format_not_yourself()),
        ("-ban dave", protocol.format_no_such_user("dave")),
        ("-ban", "! usage: -ban NICK"),
        ("-unban 127.0.0.2", "! no ban on 127.0.0.2; -bans lists them"),
        ("-unban bob", "! no ban on bob; -bans lists them"),
        ("-bans now", "! -bans takes no arguments"),
    ]
    for line, error in cases:
        teacher.send(line)
        teacher.next_is(error)
    quiet(teacher, bob, eve)  # nobody was banned
    teacher.send("-ban bob 10")
    assert bob.wait_closed()[-1] == "! you were banned by teacher for 10 min"
    eve.next_is("* bob was banned by teacher for 10 min")
    teacher.next_is("* bob was banned by teacher for 10 min")
    refused = clients(server, bind="127.0.0.2")
    assert re.fullmatch(r"! connection refused: your address is banned"
                        r" from this server for 10 min more",
                        refused.read_line())
    teacher.send("-bans")
    teacher.next_is("* 1 ban:")
    assert re.fullmatch(r"\*   127\.0\.0\.2 \(bob, by teacher, (9|10) min"
                        r" left\)", teacher.read_line())
    teacher.send("-unban BOB")
    teacher.next_is("* The ban on 127.0.0.2 (bob) is lifted.")
    again = join(server, clients, [teacher, eve], "bob", bind="127.0.0.2")
    # A ban for minutes lifts itself when they are up.
    teacher.send("-ban eve 1 bye")
    eve.wait_closed()
    teacher.next_is("* eve was banned by teacher for 1 min: bye")
    again.next_is("* eve was banned by teacher for 1 min: bye")
    bans = server.room.guard
    real_clock = bans._clock
    monkeypatch.setattr(bans, "_clock", lambda: real_clock() + 61)
    join(server, clients, [teacher, again], "eve", bind="127.0.0.3")
    teacher.send("-bans")
    teacher.next_is("* Nobody is banned.")


def test_unban_with_extra_words_changes_nothing(server, clients):
    """A refused -unban must not lift the ban it says is not there."""
    room: List[LineClient] = []
    teacher = join(server, clients, room, "teacher")
    bob = join(server, clients, room, "bob", bind="127.0.0.2")
    make_admin(teacher)
    teacher.send("-ban bob")
    bob.wait_closed()
    teacher.next_is("* bob was banned by teacher")
    teacher.send("-unban 127.0.0.2 please")
    assert teacher.read_line().startswith("! ")
    teacher.send("-bans")
    teacher.next_is("* 1 ban:")
    refused = clients(server, bind="127.0.0.2")
    assert refused.wait_closed() == [
        "! connection refused: your address is banned from this server"]


def test_ban_on_the_admins_own_address_is_refused(server, clients):
    teacher, eve = users(server, clients, "teacher", "eve")  # both 127.0.0.1
    make_admin(teacher)
    teacher.send("-ban eve")
    teacher.next_is("! eve connects from your own address (127.0.0.1);"
                  " -kick eve instead")
    eve.send("-all still here")
    teacher.next_is("eve: still here")
    teacher.send("-bans")
    teacher.next_is("* Nobody is banned.")
    newcomer = clients(server, "newcomer")
    for user in (teacher, eve):
        user.next_is(protocol.format_joined("newcomer"))
    quiet(newcomer, teacher, eve)


def test_admin_bans_another_admin_logged_loudly(server, clients, caplog):
    caplog.set_level(logging.WARNING, logger="chat")
    room: List[LineClient] = []
    teacher = join(server, clients, room, "teacher")
    boss = join(server, clients, room, "boss", bind="127.0.0.2")
    make_admin(teacher)
    make_admin(boss)
    teacher.send("-ban boss")
    assert boss.wait_closed()[-1] == "! you were banned by teacher"
    teacher.next_is("* boss was banned by teacher")
    assert any(record.levelno == logging.WARNING
               and "banned admin boss" in record.getMessage()
               for record in caplog.records), caplog.records


# --- -motd -------------------------------------------------------------------


def test_motd_on_joining_after_the_users_and_by_command(make_server,
                                                        clients, tmp_path):
    path = tmp_path / "motd.txt"
    path.write_text("\n\nWelcome to the class chat\nBe kind\n\n",
                    encoding="utf-8")
    server = make_server(motd=str(path))
    alice = clients(server, "alice")
    alice.next_is("* Welcome to the class chat")
    alice.next_is("* Be kind")
    bob = clients(server)
    bob.expect(protocol.format_nick_prompt())
    bob.send("bob")
    bob.next_is(protocol.format_welcome("bob"))
    bob.next_is(protocol.format_commands_hint())
    bob.next_is("* Online (2): bob (you), alice")
    bob.next_is("* Welcome to the class chat")
    bob.next_is("* Be kind")
    alice.next_is(protocol.format_joined("bob"))  # not the motd again
    bob.send("-motd")
    bob.next_is("* Welcome to the class chat")
    bob.next_is("* Be kind")
    bob.send("-motd now")
    bob.next_is("! -motd takes no arguments")
    quiet(alice, bob)


def test_no_motd(server, clients):
    alice, bob = users(server, clients, "alice", "bob")
    quiet(bob, alice)  # nothing after the users line on joining
    alice.send("-motd")
    alice.next_is("* There is no message of the day.")


def test_motd_control_characters_replaced_and_length_cut(make_server,
                                                         clients, tmp_path):
    path = tmp_path / "motd.txt"
    lines = [b"hi \x1b[2J\x07 there \x7f end", b"bad \xff byte",
             b"C1 \xc2\x9b here", b"y" * 400]
    lines += [f"line {n}".encode() for n in range(40)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    server = make_server(motd=str(path))
    alice = clients(server, "alice")
    expected = ["* hi \ufffd[2J\ufffd there \ufffd end",
                "* bad \ufffd byte",
                "* C1 \ufffd here",
                "* " + "y" * config.MAX_MOTD_LINE_CHARS]
    expected += [f"* line {n}"
                 for n in range(config.MAX_MOTD_LINES - len(expected))]
    assert [alice.read_line() for _ in expected] == expected  # joining
    bob = clients(server, "bob")
    alice.next_is(protocol.format_joined("bob"))  # nothing more of it
    assert [bob.read_line() for _ in expected] == expected
    bob.send("-motd")
    assert [bob.read_line() for _ in expected] == expected
    quiet(alice, bob)  # nothing more of the file
    for line in expected:
        assert not protocol.CONTROL_RE.search(line)


# --- -help -------------------------------------------------------------------


def test_help_lists_every_new_command(server, clients):
    alice, bob = users(server, clients, "alice", "bob")
    alice.send("-help")
    alice.send("-users")  # run in order: its answer ends the help
    shown = read_until(alice, "* Online (2): alice (you), bob")
    listed = {line[2:].split("  ")[0].strip() for line in shown[:-1]}
    usages = {"-nick NEW", "-me text", "-away [reason]", "-back",
              "-whois NICK", "-ignore NICK", "-ignore", "-unignore NICK",
              "-motd", "-mute NICK [min]", "-unmute NICK",
              "-ban NICK [min] [reason]", "-unban ADDRESS", "-bans"}
    assert usages <= listed, usages - listed
    quiet(bob, alice)


@pytest.mark.parametrize("text", ["left the chat", "Joined the chat",
                                  "was kicked by teacher", "is now known as x",
                                  "lost connection", "is back"])
def test_an_action_that_reads_as_a_server_notice_is_refused(
        server, clients, text):
    alice, bob = clients(server, "alice"), clients(server, "bob")
    alice.expect(protocol.format_joined("bob"))
    alice.send(f"-me {text}")
    alice.next_is(protocol.format_error(
        "that action would read like a server notice"))
    marker(alice, bob)


@pytest.mark.parametrize("nick, text", [
    ("You", "are now known as bob."),
    ("Your", "lines now go to ghost only. Type -all to talk to everyone."),
    ("Resume", "token: 0123.abcd (if your connection drops, connect again)"),
    ("Online", "(1): ghost"),
    ("Joined", "(2): ghost, phantom"),
    ("carol", "\u3164was kicked by alice"),
    ("carol", "\u200bleft the chat"),
])
def test_an_action_a_client_would_take_for_the_server_is_refused(
        server, clients, nick, text):
    """Whatever the nickname, an action that client.py (or the page) would
    read as the server's own line, and act on, never goes out."""
    user, bob = clients(server, nick), clients(server, "bob")
    user.expect(protocol.format_joined("bob"))
    user.send(f"-me {text}")
    user.next_is(protocol.format_error(
        "that action would read like a server notice"))
    marker(user, bob)
