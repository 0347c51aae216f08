"""Unit tests of the chat's memory, with no network: the history replayed
to late joiners and by ``-history``, the transcript the room hands its
public lines to, and the seat kept for a dropped connection (``-resume``).

Every room here runs on fake clocks (a monotonic one for the grace period,
a wall clock for the history's HH:MM and the transcript's stamps) and fake
links that record what the room queued on them, so nothing sleeps and
nothing depends on when the test runs.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import time
from typing import List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import config
import memory
import protocol
from config import ServerConfig
from helpers import FakeLink, wait_until
from room import DETACHED, GONE, ONLINE, Member, Room
from transcript import Transcript

PASSWORD = "s3cret-Pw"
#: A wall clock time (seconds since the epoch) far from any DST change.
WALL_START = 1_700_000_000.0
#: The resume grace of the rooms with kept seats, in (fake) seconds.
GRACE = 30.0

Address = Tuple[str, int]
Record = Tuple[float, str]

# --- Fakes and helpers -------------------------------------------------------


class FakeClock:
    """A clock that moves only when the test says so."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Chat:
    """A room on fake clocks, its transcript kept in :attr:`records`."""

    def __init__(self, **fields: object) -> None:
        fields.setdefault("admin_password", PASSWORD)
        fields.setdefault("history", 0)
        fields.setdefault("resume_grace", 0)
        fields.setdefault("rate_limit", 0)  # notices per address: off
        self.clock = FakeClock(1000.0)
        self.wall = FakeClock(WALL_START)
        self.records: List[Record] = []
        self.room = Room(ServerConfig(**fields),  # type: ignore[arg-type]
                         transcript=lambda stamp, text: self.records.append(
                             (stamp, text)),
                         clock=self.clock, wall_clock=self.wall)
        self.tokens: dict = {}
        self._ports = itertools.count(41000)

    def address(self) -> Address:
        """A client address no one has used yet."""
        return ("127.0.0.1", next(self._ports))

    def connect(self, address: Optional[Address] = None
                ) -> Tuple[Member, FakeLink]:
        """A new connection at the nickname prompt; its prompt is taken."""
        link = FakeLink()
        member = self.room.connect(link, address or self.address())
        assert member is not None
        assert link.take() == [protocol.format_nick_prompt()]
        return member, link

    def join(self, nick: str, address: Optional[Address] = None
             ) -> Tuple[Member, FakeLink]:
        """A member who took ``nick``; what it got on joining is taken
        (its resume token, if any, is in :attr:`tokens`)."""
        member, link = self.connect(address)
        self.say(member, nick)
        assert member.state == ONLINE, link.lines
        for line in link.take():
            token = protocol.resume_token(line)
            if token:
                self.tokens[nick] = token
        return member, link

    def say(self, member: Member, line: str) -> Member:
        """``member`` sends one line; the member it speaks for after."""
        return self.room.receive(member, [line.encode("utf-8")])

    def texts(self) -> List[str]:
        """The texts the transcript got, in order."""
        return [text for _, text in self.records]


def drain(*links: FakeLink) -> None:
    """Forget what the links got so far."""
    for link in links:
        link.take()


def hhmm(stamp: float) -> str:
    """HH:MM of ``stamp`` in the local time (as the server shows it)."""
    return time.strftime("%H:%M", time.localtime(stamp))


def marked(stamp: float, text: str) -> str:
    """``text`` as a history line said at ``stamp``, written out here
    rather than by the code under test."""
    if text.startswith("* "):
        text = text[2:]
    return f"* [history {hhmm(stamp)}] {text}"


def history_texts(lines: List[str]) -> List[str]:
    """The texts of the history lines among ``lines``, in order."""
    found = [protocol.history_line(line) for line in lines]
    return [item[1] for item in found if item is not None]


END = "* End of history."



# --- History on joining ------------------------------------------------------


def test_join_replays_exactly_the_last_n_public_lines_marked_in_order(
        away_from_utc):
    """A late joiner gets the last N (here 3) public lines, each marked
    ``* [history HH:MM]`` with the wall clock's local time (not UTC) when
    it was said, oldest first, then the end line and nothing else; private
    lines (``-to NICK text`` and a partner's plain lines) are neither
    replayed nor counted among the N."""
    chat = Chat(history=3)
    alice, _ = chat.join("alice")
    bob, b_link = chat.join("bob")
    carol, _ = chat.join("carol")
    said = []  # (stamp, text) of each public line

    def public(member: Member, text: str, stamp: float) -> None:
        chat.wall.now = stamp
        chat.say(member, text)
        said.append((stamp, f"{member.nick}: {text}"))

    public(alice, "one", WALL_START + 60)
    public(bob, "two", WALL_START + 120)
    public(alice, "three", WALL_START + 3600)
    chat.say(bob, "-to alice private one")
    public(carol, "four", WALL_START + 7260)
    chat.say(alice, "-to bob")  # alice's plain lines now go to bob only
    chat.say(alice, "private two")
    chat.say(carol, "-to alice private three")
    public(bob, "five", WALL_START + 9000)
    chat.say(alice, "-to carol private four")
    assert "[private] alice: private two" in b_link.lines  # went to bob

    chat.wall.now = WALL_START + 10000
    dave, d_link = chat.connect()
    chat.say(dave, "dave")
    lines = d_link.take()
    assert lines[0] == protocol.format_welcome("dave")
    assert lines[3:] == [marked(stamp, text) for stamp, text in said[-3:]] \
        + [END]
    assert not any("private" in line for line in lines)
    assert len({hhmm(stamp) for stamp, _ in said[-3:]}) == 3  # real clocks
    assert hhmm(said[-3][0]) == "04:43"  # 23:13 UTC, shown in local time


def test_join_replay_leaves_out_joins_and_departures():
    """Joins and departures are not in the history (a class arriving at
    once would crowd out what was said): a late joiner's replay has the
    messages only, though the transcript has every one of them."""
    chat = Chat(history=5)
    alice, _ = chat.join("alice")
    bob, _ = chat.join("bob")
    chat.say(bob, "hi")
    chat.say(bob, "-exit")
    carol, link = chat.connect()
    chat.say(carol, "carol")
    assert history_texts(link.lines) == ["bob: hi"]
    assert link.lines[-1] == END
    assert [text for _, text in chat.records] == [
        "* alice joined the chat", "* bob joined the chat", "bob: hi",
        "* bob left the chat", "* carol joined the chat"]


def test_history_zero_replays_nothing_and_sends_no_end_line():
    """With ``--history 0`` a joiner gets the welcome, the hint and the
    users line only: no history line and no end-of-history line."""
    chat = Chat(history=0)
    alice, _ = chat.join("alice")
    bob, _ = chat.join("bob")
    for number in range(5):
        chat.say(alice, f"line {number}")
    carol, link = chat.connect()
    chat.say(carol, "carol")
    lines = link.take()
    assert lines[0] == protocol.format_welcome("carol")
    assert len(lines) == 3, lines
    assert END not in lines
    assert history_texts(lines) == []


def test_first_user_of_an_empty_room_gets_no_end_line():
    """Nothing said yet: the first user gets no history block at all (an
    end line with nothing before it would be noise)."""
    chat = Chat(history=20)
    alice, link = chat.connect()
    chat.say(alice, "alice")
    assert END not in link.lines
    assert history_texts(link.lines) == []


def test_replay_on_join_is_bounded_in_bytes_keeping_the_newest():
    """However long the lines, a replay's history lines take at most
    ``config.MAX_HISTORY_REPLAY_BYTES`` (newlines counted); the newest
    are the ones kept, contiguous and in order, and one line more would
    not have fitted. ``-history N`` obeys the same bound."""
    chat = Chat(history=50, history_keep=100)
    alice, _ = chat.join("alice")
    bob, b_link = chat.join("bob")
    texts = [f"alice: {number:03d}" + "x" * 3900 for number in range(40)]
    for text in texts:
        chat.say(alice, text[len("alice: "):])
    carol, link = chat.connect()
    chat.say(carol, "carol")
    replayed = [line for line in link.lines
                if protocol.history_line(line) is not None]
    size = sum(len(line.encode("utf-8")) + 1 for line in replayed)
    assert size <= config.MAX_HISTORY_REPLAY_BYTES
    count = len(replayed)
    assert 0 < count < len(texts)
    assert history_texts(replayed) == texts[-count:]
    one_more = len(marked(WALL_START, texts[-count - 1]).encode()) + 1
    assert size + one_more > config.MAX_HISTORY_REPLAY_BYTES
    assert link.lines[-1] == END

    drain(b_link)
    chat.say(bob, "-history 50")
    b_lines = b_link.take()
    asked = [line for line in b_lines if protocol.history_line(line)]
    assert sum(len(line.encode()) + 1 for line in asked) \
        <= config.MAX_HISTORY_REPLAY_BYTES
    assert history_texts(asked)[-1] == texts[-1]
    assert b_lines[-1] == END


# --- -history ----------------------------------------------------------------


def make_chatter(history_keep: int = 100, lines: int = 25
                 ) -> Tuple[Chat, Member, FakeLink, List[str]]:
    """A room (no replay on joining) where alice and bob said ``lines``
    public lines in all; returns bob, his link (drained) and every public
    text in the room's order."""
    chat = Chat(history=0, history_keep=history_keep)
    alice, _ = chat.join("alice")
    bob, b_link = chat.join("bob")
    said = ["* alice joined the chat", "* bob joined the chat"]
    for number in range(lines):
        speaker = alice if number % 2 else bob
        chat.say(speaker, f"line {number}")
        said.append(f"{speaker.nick}: line {number}")
    chat.say(bob, "-to alice never in the history")
    drain(b_link)
    return chat, bob, b_link, said


def test_history_command_with_a_count():
    """``-history 5``: the last 5 public lines, marked, in order, then the
    end line; the private line said last is not among them."""
    chat, bob, link, said = make_chatter()
    chat.say(bob, "-history 5")
    assert link.take() == [marked(WALL_START, text)
                           for text in said[-5:]] + [END]


def test_history_command_default_is_twenty():
    """``-history`` alone: the last 20 public lines (the default)."""
    chat, bob, link, said = make_chatter(lines=30)
    chat.say(bob, "-history")
    lines = link.take()
    assert lines == [marked(WALL_START, text)
                     for text in said[-config.DEFAULT_HISTORY:]] + [END]


@pytest.mark.parametrize("argument", ["0", "x", "-3", "2x", "1.5", "00"])
def test_history_command_refuses_what_is_not_a_positive_count(argument):
    """``-history 0`` or ``-history x``: one error line to the asker
    (no history line, no end line), nothing to anyone else."""
    chat, bob, link, _ = make_chatter()
    alice_link = chat.room._by_key[protocol.nick_key("alice")].link
    drain(alice_link)
    chat.say(bob, f"-history {argument}")
    lines = link.take()
    assert len(lines) == 1 and lines[0].startswith(protocol.ERROR), lines
    assert "-history" in lines[0]
    assert alice_link.take() == []


@pytest.mark.parametrize("argument", ["²", "①", "3²"])
def test_history_command_refuses_unicode_digits_without_raising(argument):
    """``-history ²`` (a character ``str.isdigit`` accepts but ``int``
    does not) is refused like any other non-number: one error line, and
    the room does not raise (over TCP, an exception cuts the user's
    connection)."""
    chat, bob, link, _ = make_chatter()
    chat.say(bob, f"-history {argument}")
    lines = link.take()
    assert len(lines) == 1 and lines[0].startswith(protocol.ERROR), lines


def test_history_command_is_capped_at_history_keep():
    """``-history 99999`` gives every kept line, no more: the room keeps
    ``--history-keep`` (here 7) lines, the older are forgotten."""
    chat, bob, link, said = make_chatter(history_keep=7, lines=12)
    chat.say(bob, "-history 99999")
    assert link.take() == [marked(WALL_START, text)
                           for text in said[-7:]] + [END]


def test_history_command_with_nothing_kept_says_so():
    """With ``--history-keep 0`` nothing is kept: ``-history`` says that
    nothing has been said, with no end line."""
    chat = Chat(history=0, history_keep=0)
    alice, link = chat.join("alice")
    chat.join("bob")
    chat.say(alice, "hello")
    drain(link)
    chat.say(alice, "-history")
    assert link.take() == [protocol.format_no_history()]


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(argument=st.text(alphabet=st.characters(min_codepoint=0x20,
                                               max_codepoint=0x7e),
                        max_size=30))
def test_history_command_never_raises_on_ascii(argument):
    """Whatever printable ASCII follows ``-history``, the asker gets a
    replay ending in the end line or one error line, never an
    exception."""
    chat = Chat(history=0, history_keep=10)
    bob, link = chat.join("bob")
    alice, _ = chat.join("alice")
    chat.say(alice, "something to replay")
    drain(link)
    chat.say(bob, f"-history {argument}")
    lines = link.take()
    assert lines[-1] == END or (len(lines) == 1 and
                                lines[0].startswith(protocol.ERROR)), lines


# --- Transcript --------------------------------------------------------------


def test_transcript_gets_public_lines_joins_departures_kick_shutdown():
    """The transcript callback gets, in order and stamped with the wall
    clock, every public line, join, departure, kick and the shutdown;
    never a private line (``-to`` or a partner's), the admin password,
    a resume token, or a refused nickname."""
    chat = Chat(resume_grace=GRACE)
    chat.wall.now = WALL_START + 1
    alice, _ = chat.join("alice")
    chat.wall.now = WALL_START + 2
    bob, _ = chat.join("bob")
    chat.say(alice, f"-admin {PASSWORD}")
    chat.wall.now = WALL_START + 3
    chat.say(alice, "hi all")
    chat.say(bob, "-to alice psst secret words")
    chat.say(bob, "-to alice")
    chat.say(bob, "partner only words")
    chat.wall.now = WALL_START + 4
    chat.say(alice, "-all loud")
    carol, c_link = chat.connect()
    chat.say(carol, f"-admin {PASSWORD}")  # typed at the nickname prompt
    chat.wall.now = WALL_START + 5
    chat.say(carol, "carol")
    chat.tokens["carol"] = next(filter(None, map(protocol.resume_token,
                                                 c_link.lines)))
    chat.wall.now = WALL_START + 6
    chat.say(alice, "-kick carol spamming")
    chat.wall.now = WALL_START + 7
    chat.say(bob, "-exit")
    chat.wall.now = WALL_START + 8
    chat.room.shut_down("by test")
    assert chat.records == [
        (WALL_START + 1, "* alice joined the chat"),
        (WALL_START + 2, "* bob joined the chat"),
        (WALL_START + 3, "alice: hi all"),
        (WALL_START + 4, "alice: loud"),
        (WALL_START + 5, "* carol joined the chat"),
        (WALL_START + 6, "* carol was kicked by alice: spamming"),
        (WALL_START + 7, "* bob left the chat"),
        (WALL_START + 8, protocol.format_shutdown("by test")),
    ]
    everything = "\n".join(chat.texts())
    for secret in [PASSWORD, "psst", "partner only", *chat.tokens.values()]:
        assert secret not in everything
    assert len(chat.tokens) == 3  # the tokens were there to leak


def test_line_refused_as_not_sent_is_not_replayed_nor_logged():
    """Alone in the room, alice's line is refused ("nobody else is online;
    message not sent"): it must then not be replayed to the next joiner
    nor written to the transcript, or the sender was misinformed."""
    chat = Chat(history=20)
    alice, link = chat.join("alice")
    chat.say(alice, "hello, anyone?")
    assert link.take() == [protocol.format_nobody_else()]
    bob, b_link = chat.connect()
    chat.say(bob, "bob")
    assert "alice: hello, anyone?" not in chat.texts()
    assert "alice: hello, anyone?" not in history_texts(b_link.lines)


def test_transcript_file_format_and_utf8(tmp_path, away_from_utc):
    """``Transcript`` appends one line per call, ``ISO8601Z text``, in
    UTC (not the local time), UTF-8, to what the file held already."""
    path = tmp_path / "chat.log"
    path.write_text("earlier\n", encoding="utf-8")
    writer = Transcript(str(path), 100)
    writer.write(WALL_START, "alice: héllo ☕")
    writer.write(WALL_START + 61, "* bob joined the chat")
    writer.close()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(WALL_START))
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(WALL_START + 61))
    assert path.read_bytes().decode("utf-8") == (
        f"earlier\n{stamp} alice: héllo ☕\n{later} * bob joined the chat\n")
    assert stamp == "2023-11-14T22:13:20Z"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_transcript_disk_failure_is_logged_once_and_never_raises(caplog):
    """A disk that fails (``/dev/full``: every flush is ENOSPC) is logged
    once at ERROR, however many lines follow; writing and closing never
    raise, and a room writing to it carries on."""
    caplog.set_level(logging.DEBUG, logger="chat")
    writer = Transcript("/dev/full", 100)
    room = Room(ServerConfig(admin_password=PASSWORD, history=0,
                             resume_grace=0), transcript=writer.write)
    links = []
    members = []
    for nick in ("alice", "bob"):
        link = FakeLink()
        member = room.connect(link, ("127.0.0.1", 42000 + len(links)))
        room.receive(member, [nick.encode()])
        links.append(link)
        members.append(member)
    for number in range(20):
        room.receive(members[0], [f"line {number}".encode()])

    def errors() -> List[str]:
        return [r.getMessage() for r in caplog.records
                if r.levelno >= logging.ERROR]

    wait_until(lambda: errors(), what="the disk failure logged")
    room.receive(members[0], [b"after the failure"])
    writer.close()
    assert links[1].lines[-1] == "alice: after the failure"
    assert len(errors()) == 1, errors()
    assert "/dev/full" in errors()[0]


class FailingFile:
    """A file on a disk that has failed: every write raises (ENOSPC)."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self) -> None:
        pass


def test_transcript_write_failures_are_logged_once(tmp_path, caplog):
    """When every write fails, the first failure is logged (naming the
    file) and the next ones are not: one ERROR for 30 failed lines;
    write() and close() never raise."""
    caplog.set_level(logging.DEBUG, logger="chat")
    path = tmp_path / "chat.log"
    writer = Transcript(str(path), 100)
    failing = FailingFile()
    writer._file.close()
    writer._file = failing  # type: ignore[assignment]
    for number in range(30):
        writer.write(WALL_START + number, f"alice: line {number}")
    wait_until(lambda: failing.writes == 30, what="30 write attempts")
    writer.close()
    errors = [r.getMessage() for r in caplog.records
              if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert str(path) in errors[0]


# --- A seat kept for a dropped connection ------------------------------------


class Dropped:
    """alice, bob and carol in a room with kept seats; alice was an admin
    whose partner was bob, bob's partner was alice, and alice's connection
    has just dropped. Every link has been drained."""

    def __init__(self, **fields: object) -> None:
        fields.setdefault("resume_grace", GRACE)
        self.chat = chat = Chat(**fields)
        self.alice, self.a_link = chat.join("alice")
        self.bob, self.b_link = chat.join("bob")
        self.carol, self.c_link = chat.join("carol")
        self.old_address = self.alice.address
        chat.say(self.alice, f"-admin {PASSWORD}")
        chat.say(self.alice, "-to bob")
        chat.say(self.bob, "-to alice")
        drain(self.a_link, self.b_link, self.c_link)
        chat.room.disconnect(self.alice, "reset by peer", link=self.a_link,
                             dropped=True)
        self.token = chat.tokens["alice"]

    def resume(self, token: Optional[str] = None
               ) -> Tuple[Member, Member, FakeLink]:
        """A new connection sends ``-resume TOKEN``: (the joining member,
        the member it speaks for after, its link)."""
        joining, link = self.chat.connect()
        seat = self.chat.say(joining, f"-resume {token or self.token}")
        return joining, seat, link


def test_dropped_user_keeps_the_seat_and_others_see_lost_connection():
    """A dropped connection (not -exit, not cut) keeps the seat: the
    others get ``* alice lost connection`` and nothing else (not "left"),
    the nickname stays taken, the registry (of connections' addresses)
    no longer maps the dead address, and nothing is put on the dead link
    after it dropped."""
    case = Dropped()
    lost = protocol.format_lost_connection("alice")
    assert lost == "* alice lost connection"
    assert case.b_link.take() == [lost]
    assert case.c_link.take() == [lost]
    assert case.alice.state == DETACHED
    assert case.a_link.closed and case.a_link.take() == []
    assert "alice" not in case.chat.room.nicknames().values()
    assert case.alice.address not in case.chat.room.nicknames()
    taker, link = case.chat.connect()
    case.chat.say(taker, "ALICE")
    assert link.take() == [protocol.format_nick_taken("ALICE"),
                           protocol.format_nick_prompt()]
    assert taker.state != ONLINE
    assert "* alice lost connection" not in case.chat.texts()


def test_lines_for_a_dropped_user_are_held_and_given_back_once_in_order():
    """While alice is away, the public lines, the private lines to her
    (``-to alice text``) and the lines of bob, whose partner she is, are
    kept; ``-resume TOKEN`` from a new connection gets her seat back
    (receive returns it), with the welcome back, the hint, the users
    line, ``format_missed(K)`` and then exactly those K lines in order.
    The others get ``* alice is back`` and never a left/joined pair;
    nothing is delivered twice afterwards."""
    case = Dropped()
    chat = case.chat
    drain(case.b_link, case.c_link)
    chat.say(case.carol, "public while away")
    chat.say(case.bob, "partner line while away")
    chat.say(case.carol, "-to alice private while away")
    dave, d_link = chat.join("dave")
    held = ["carol: public while away",
            "[private] bob: partner line while away",
            "[private] carol: private while away",
            "* dave joined the chat"]
    drain(case.b_link, case.c_link, d_link)

    joining, seat, link = case.resume()
    assert seat is case.alice and seat is not joining
    assert joining.state == GONE and seat.state == ONLINE
    lines = link.take()
    assert lines[0] == protocol.format_welcome_back("alice")
    assert lines[0] == "* Welcome back, alice! You are in the chat."
    assert lines[1] == protocol.format_commands_hint()
    assert lines[2].startswith("* Online (4): alice (you, admin)")
    # A new token (a token works once), then what was kept.
    new_token = protocol.resume_token(lines[3])
    assert new_token and new_token != case.token
    assert new_token.split(".")[0] == case.token.split(".")[0]
    assert lines[4:] == [protocol.format_missed(len(held))] + held
    assert "4 lines" in lines[4]
    back = protocol.format_back("alice")
    assert back == "* alice is back"
    for other in (case.b_link, case.c_link, d_link):
        assert other.take() == [back]

    chat.say(case.carol, "after")
    assert link.take() == ["carol: after"]  # nothing held comes again
    assert case.a_link.take() == []         # the dead link got nothing


def test_resumed_seat_has_the_new_address_its_partner_and_admin_rights():
    """After ``-resume``, the registry maps the NEW connection's address
    to alice (the old one is gone), her plain lines still go to her
    partner bob, bob's plain lines still reach her, and she is still an
    admin (``-kick`` works)."""
    case = Dropped()
    chat = case.chat
    _, seat, link = case.resume()
    registry = chat.room.nicknames()
    assert registry[seat.address] == "alice"
    assert case.old_address not in registry
    assert sorted(registry.values()) == ["alice", "bob", "carol"]
    drain(link, case.b_link, case.c_link)

    chat.say(seat, "just to you")
    assert case.b_link.take() == ["[private] alice: just to you"]
    assert case.c_link.take() == []
    chat.say(case.bob, "and back")
    assert link.take() == ["-> bob: just to you", "[private] bob: and back"]
    chat.say(seat, "-kick carol")
    assert case.carol.state == GONE
    assert case.c_link.sealed and case.c_link.closed


@pytest.mark.parametrize("token", [
    "garbage", "", ".", "nodot", "abc.", ".abc", "alice",
])
def test_resume_with_a_malformed_token_is_refused(token):
    """A token that is not one is refused with ``format_resume_refused``
    and the nickname prompt; the seat stays kept."""
    case = Dropped()
    joining, link = case.chat.connect()
    member = case.chat.say(joining, f"-resume {token}".strip())
    assert member is joining
    assert link.take() == [protocol.format_resume_refused(),
                           protocol.format_nick_prompt()]
    assert case.alice.state == DETACHED


def test_wrong_token_and_wrong_secret_are_refused_then_a_nickname_works():
    """A token with an unknown id, and one with alice's id but a wrong
    secret (same length), are refused (the prompt again, no one told);
    a normal nickname then works on that connection, and alice's right
    token still works afterwards."""
    case = Dropped()
    chat = case.chat
    drain(case.b_link, case.c_link)
    seat_id, secret = memory.split_token(case.token)
    wrong_secret = ("A" if secret[0] != "A" else "B") + secret[1:]
    unknown_id = ("0" if seat_id[0] != "0" else "1") + seat_id[1:]
    joining, link = chat.connect()
    for token in (f"{seat_id}.{wrong_secret}", f"{unknown_id}.{secret}",
                  f"{seat_id}.{secret}x", f"{seat_id}.{secret[:-1]}"):
        member = chat.say(joining, f"-resume {token}")
        assert member is joining
        assert link.take() == [protocol.format_resume_refused(),
                               protocol.format_nick_prompt()]
    assert case.alice.state == DETACHED
    assert case.b_link.take() == [] and case.c_link.take() == []
    chat.say(joining, "erin")
    assert joining.state == ONLINE
    assert link.take()[0] == protocol.format_welcome("erin")
    _, seat, _ = case.resume()
    assert seat is case.alice and seat.state == ONLINE


def test_seat_is_given_up_when_the_grace_period_is_over():
    """Until ``--resume-grace`` seconds have passed (fake clock), tick()
    keeps the seat; then alice leaves as usual: the others get ``* alice
    left the chat`` (recorded in the transcript), her nickname is free
    and her token is refused."""
    case = Dropped()
    chat = case.chat
    drain(case.b_link, case.c_link)
    chat.clock.now += GRACE - 0.5
    chat.room.tick()
    assert case.b_link.take() == []
    assert case.alice.state == DETACHED
    chat.clock.now += 0.5
    chat.room.tick()
    left = protocol.format_left("alice")
    assert case.b_link.take() == [left]
    assert case.c_link.take() == [left]
    assert case.alice.state == GONE
    assert chat.texts()[-1] == left
    assert "alice" not in chat.room.nicknames().values()
    joining, link = chat.connect()
    assert chat.say(joining, f"-resume {case.token}") is joining
    assert link.take() == [protocol.format_resume_refused(),
                           protocol.format_nick_prompt()]
    chat.say(joining, "alice")
    assert joining.state == ONLINE and joining is not case.alice
    # bob's partner left, and a new alice came: refused, and told so.
    chat.say(case.bob, "to the new alice")
    assert case.b_link.take()[-1] == protocol.format_partner_came_back(
        "alice")


def test_resume_while_the_old_link_is_open_replaces_it():
    """``-resume`` while alice's old connection is still open: the old
    link gets ``format_replaced()`` as its sealed last line and is
    closed; the new one has the seat (nothing was missed); the others
    hear of no departure or join. The old connection's own end,
    reported later with ``dropped=True``, changes nothing."""
    chat = Chat(resume_grace=GRACE)
    alice, old_link = chat.join("alice")
    bob, b_link = chat.join("bob")
    drain(old_link, b_link)
    joining, new_link = chat.connect()
    seat = chat.say(joining, f"-resume {chat.tokens['alice']}")
    assert seat is alice
    assert old_link.take() == [protocol.format_replaced()]
    assert old_link.sealed and old_link.closed
    lines = new_link.take()
    assert lines[0] == protocol.format_welcome_back("alice")
    assert protocol.resume_token(lines[3])
    assert lines[4:] == [protocol.format_missed(0)]
    assert not any(word in line for line in b_link.take()
                   for word in ("left", "joined", "lost"))

    chat.room.disconnect(alice, "reset by peer", link=old_link,
                         dropped=True)
    assert alice.state == ONLINE and alice.link is new_link
    assert not new_link.closed
    assert b_link.take() == []
    assert chat.room.nicknames()[joining.address] == "alice"
    chat.say(bob, "still there?")
    assert new_link.take() == ["bob: still there?"]
    assert old_link.ignored == 0  # nothing more was even tried on it


def test_held_lines_past_the_limit_drop_the_oldest_and_say_how_many():
    """The lines kept for a dropped user are bounded (``--outbox-limit``
    bytes): past it, the oldest go; on resuming she gets the newest that
    fit, and ``format_missed`` says how many came and how many earlier
    ones were not kept."""
    limit = 300
    case = Dropped(outbox_limit=limit)
    chat = case.chat
    sent = [f"carol: {number:02d} " + "y" * 40 for number in range(20)]
    for text in sent:
        chat.say(case.carol, text[len("carol: "):])
    kept: List[str] = []
    size = 0
    for text in reversed(sent):
        size += len(text.encode()) + 1
        if size > limit:
            break
        kept.insert(0, text)
    dropped = len(sent) - len(kept)
    assert 0 < len(kept) < len(sent)
    _, _, link = case.resume()
    lines = link.take()
    assert protocol.resume_token(lines[3])
    assert lines[4] == protocol.format_missed(len(kept), dropped)
    assert f"{dropped} earlier" in lines[4]
    assert lines[5:] == kept


def test_kicked_user_gets_no_kept_seat():
    """A kicked user's connection then ends as if dropped (the server
    reports it so): no seat is kept, nobody hears "lost connection",
    the nickname is free and the token refused."""
    chat = Chat(resume_grace=GRACE)
    admin, _ = chat.join("teacher")
    alice, a_link = chat.join("alice")
    bob, b_link = chat.join("bob")
    chat.say(admin, f"-admin {PASSWORD}")
    drain(b_link)
    chat.say(admin, "-kick alice")
    chat.room.disconnect(alice, "reset", link=a_link, dropped=True)
    assert alice.state == GONE
    assert b_link.take() == [protocol.format_kicked("alice", "teacher")]
    assert "alice" not in chat.room.nicknames().values()
    joining, link = chat.connect()
    chat.say(joining, f"-resume {chat.tokens['alice']}")
    assert link.take()[0] == protocol.format_resume_refused()
    chat.say(joining, "alice")
    assert joining.state == ONLINE


def test_exited_user_gets_no_kept_seat():
    """A user who typed ``-exit`` keeps no seat when the connection then
    ends: "left" once, no "lost connection", the token refused."""
    chat = Chat(resume_grace=GRACE)
    alice, a_link = chat.join("alice")
    bob, b_link = chat.join("bob")
    drain(b_link)
    chat.say(alice, "-exit")
    chat.room.disconnect(alice, "", link=a_link, dropped=True)
    assert b_link.take() == [protocol.format_left("alice")]
    assert alice.state == GONE
    joining, link = chat.connect()
    chat.say(joining, f"-resume {chat.tokens['alice']}")
    assert link.take()[0] == protocol.format_resume_refused()


def test_connection_cut_by_the_server_keeps_no_seat():
    """``disconnect`` without ``dropped`` (the server cut the connection:
    a broken stream, a slow reader): the user leaves at once."""
    chat = Chat(resume_grace=GRACE)
    alice, a_link = chat.join("alice")
    bob, b_link = chat.join("bob")
    drain(b_link)
    chat.room.disconnect(alice, "send queue exceeded", link=a_link)
    assert b_link.take() == [protocol.format_left("alice")]
    assert alice.state == GONE
    assert "alice" not in chat.room.nicknames().values()


def test_no_seat_is_kept_when_resume_grace_is_zero():
    """``--resume-grace 0``: no token on joining, and a dropped user
    simply leaves."""
    chat = Chat(resume_grace=0)
    alice, a_link = chat.connect()
    chat.say(alice, "alice")
    assert not any(protocol.resume_token(line) for line in a_link.lines)
    bob, b_link = chat.join("bob")
    drain(b_link)
    chat.room.disconnect(alice, "reset", link=a_link, dropped=True)
    assert b_link.take() == [protocol.format_left("alice")]


def test_after_shut_down_nothing_is_kept():
    """Once the room shut down, connections that then drop keep no seat:
    everyone is out of the registry, nothing more is put on any link
    after the shutdown notice, and tick() announces nothing."""
    chat = Chat(resume_grace=GRACE)
    alice, a_link = chat.join("alice")
    bob, b_link = chat.join("bob")
    drain(a_link, b_link)
    members = chat.room.shut_down("test over")
    assert {alice, bob} <= set(members)
    notice = protocol.format_shutdown("test over")
    assert a_link.take() == [notice] and b_link.take() == [notice]
    chat.room.disconnect(alice, "reset", link=a_link, dropped=True)
    chat.room.disconnect(bob, "reset", link=b_link, dropped=True)
    assert alice.state == GONE and bob.state == GONE
    assert chat.room.nicknames() == {}
    chat.clock.now += GRACE * 2
    chat.room.tick()
    assert a_link.ignored == 0 and b_link.ignored == 0
    assert chat.room.connect(FakeLink(), chat.address()) is None


def test_new_user_from_the_address_of_a_kept_seat():
    """A new connection may come from the (host, port) a dropped user's
    connection had (the OS reuses ports; NAT). carol joins from alice's
    old address while alice's seat is kept: when alice's seat is given
    up, carol must still be in the registry, and carol can then leave
    cleanly, freeing her nickname."""
    case = Dropped()
    chat = case.chat
    carol2, link = chat.join("carol2", address=case.old_address)
    assert chat.room.nicknames()[case.old_address] == "carol2"
    chat.clock.now += GRACE
    chat.room.tick()
    assert chat.room.nicknames().get(case.old_address) == "carol2"
    chat.say(carol2, "-exit")
    chat.room.disconnect(carol2, "", link=link)
    assert "carol2" not in chat.room.nicknames().values()
    again, _ = chat.connect()
    chat.say(again, "carol2")
    assert again.state == ONLINE


# --- Tokens ------------------------------------------------------------------


@given(st.text())
def test_split_token_never_raises(token):
    """Any string at all: split_token returns None or (id, secret), both
    non-empty, and never raises."""
    parts = memory.split_token(token)
    if parts is not None:
        seat_id, secret = parts
        assert seat_id and secret


def test_new_tokens_round_trip_and_differ():
    """A new token splits back into its id and secret; two tokens differ
    (they are random)."""
    seat_id, secret = memory.new_token()
    token = memory.join_token(seat_id, secret)
    assert memory.split_token(token) == (seat_id, secret)
    assert memory.split_token(f"  {token}  ") == (seat_id, secret)
    assert memory.new_token() != memory.new_token()


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(token=st.text(max_size=60).filter(lambda t: "\n" not in t))
def test_any_resume_line_at_the_prompt_is_refused_without_raising(token):
    """Arbitrary text after ``-resume`` at the prompt never raises and,
    not being a live token, is refused with the prompt again."""
    chat = Chat(resume_grace=GRACE)
    joining, link = chat.connect()
    member = chat.say(joining, f"-resume {token}")
    assert member is joining
    lines = link.take()
    assert lines[-1] == protocol.format_nick_prompt()
