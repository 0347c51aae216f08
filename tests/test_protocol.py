"""protocol.py on its own: framing, decoding, nicknames, commands, lines."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocol
from protocol import OVERLONG, Command, LineFramer


def frame_all(framer: LineFramer, chunks):
    out = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
    return out


def test_framer_joins_pieces_and_splits_batches():
    framer = LineFramer()
    data = b"hello\nworld\r\nthird\n"
    one_by_one = frame_all(framer, [data[i:i + 1] for i in range(len(data))])
    assert one_by_one == [b"hello", b"world\r", b"third"]
    assert LineFramer().feed(data) == one_by_one
    assert framer.pending == 0


def test_framer_keeps_partial_line():
    framer = LineFramer()
    assert framer.feed(b"par") == []
    assert framer.pending == 3
    assert framer.feed(b"tial\nnext") == [b"partial"]


def test_overlong_line_is_reported_once_and_dropped():
    framer = LineFramer(max_line=10, max_discard=1000)
    assert framer.feed(b"x" * 8) == []
    assert framer.feed(b"x" * 8) == [OVERLONG]
    assert framer.feed(b"x" * 100) == []
    assert framer.pending == 0
    assert framer.feed(b"xx\nok\n") == [b"ok"]
    assert framer.feed(b"y" * 10 + b"\n") == [b"y" * 10]


def test_endless_line_raises_framing_error():
    framer = LineFramer(max_line=10, max_discard=100)
    assert framer.feed(b"z" * 50) == [OVERLONG]
    with pytest.raises(protocol.FramingError):
        framer.feed(b"z" * 60)


@given(st.lists(st.binary(max_size=300), max_size=30))
@settings(max_examples=300, deadline=None)
def test_framer_on_arbitrary_bytes(chunks):
    framer = LineFramer(max_line=64, max_discard=512)
    try:
        frames = frame_all(framer, chunks)
    except protocol.FramingError:
        return
    assert framer.pending <= 64
    for frame in frames:
        assert frame is OVERLONG or (len(frame) <= 64 and b"\n" not in frame)
    # Whatever the chunking, the same stream gives the same frames.
    whole = b"".join(chunks)
    assert LineFramer(max_line=64, max_discard=10 ** 9).feed(whole) == frames


@given(st.binary(max_size=200))
def test_decode_returns_text_or_protocol_error(raw):
    try:
        text = protocol.decode_line(raw)
    except protocol.ProtocolError as error:
        assert str(error)
        return
    assert not any(ord(c) < 32 and c != "\t" or 0x7F <= ord(c) <= 0x9F
                   for c in text)


@pytest.mark.parametrize("raw, expected", [
    (b"plain", "plain"), (b"crlf\r", "crlf"), (b"tab\tok", "tab\tok"),
    ("Привет 😀".encode(), "Привет 😀"),
])
def test_decode_accepts(raw, expected):
    assert protocol.decode_line(raw) == expected


@pytest.mark.parametrize("raw", [
    b"\xff", b"\xc3", b"a\x00b", b"\x1b[31m", b"bell\x07", b"del\x7f",
    "c1\u009b".encode(),
])
def test_decode_refuses(raw):
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_line(raw)


@pytest.mark.parametrize("nick", [
    "a", "alice", "Алиса", "bob_1", "x.y-z", "a" * 20, "日本語", "née",
    "n\u0303o",  # a combining mark after a letter
    "Анна", "らーめん", "東京タワー", "한국어",  # one script each
])
def test_valid_nicks(nick):
    assert protocol.nick_error(nick) is None


@pytest.mark.parametrize("nick, reason", [
    ("", "empty"), ("a" * 21, "at most 20"), ("-bob", "start with '-'"),
    ("a b", "spaces"), ("a\u00a0b", "spaces"), ("a\x1bb", "control"),
    ("a\x00", "control"), ("a@b", "'@'"), ("a:b", "':'"), ("*x", "'*'"),
    ("\u0303x", "cannot contain"), ("a\u202eb", "control"),
    ("alice\ufe0f", "invisible"), ("\u3164", "invisible"),
    ("\u0430lice", "mix scripts"), ("bob\u03bf", "mix scripts"),
    ("admin", "reserved"), ("Root", "reserved"), ("server_1", "reserved"),
    ("a" + "\u0301" * 4, "accents"),
])
def test_invalid_nicks(nick, reason):
    error = protocol.nick_error(nick)
    assert error and reason in error


def test_nick_key_ignores_case_and_composition():
    assert protocol.nick_key("ALICE") == protocol.nick_key("alice")
    assert protocol.nick_key("Борис") == protocol.nick_key("БОРИС")
    assert protocol.nick_key("n\u0303") == protocol.nick_key("\u00f1")


@pytest.mark.parametrize("nick", [
    "\u0430\u0441\u0435",  # Cyrillic, all of it: allowed, but looks "ace"
    "\uff41\uff43\uff45", "\U0001d41a\U0001d41c\U0001d41e", "ACE",
    "\u0410\u0421\u0415",  # the same, in capitals
])
def test_nick_key_maps_look_alikes_together(nick):
    assert protocol.nick_key(nick) == protocol.nick_key("ace")


@pytest.mark.parametrize("line, command", [
    ("hello", Command("say", text="hello")),
    ("-to bob hi there", Command("to", "bob", "hi there")),
    ("-TO bob", Command("to", "bob")),
    ("-all", Command("all")),
    ("-all  spaced out ", Command("all", text="spaced out")),
    ("-users", Command("users")),
    ("-help", Command("help")),
    ("-exit", Command("exit")),
    ("-admin p w", Command("admin", "p w")),
    ("  -admin pw", Command("admin", "pw")),
    ("\t-ADMIN pw", Command("admin", "pw")),
    ("-kick bob too loud", Command("kick", "bob", "too loud")),
    ("down server", Command("down")),
    ("  Down   Server ", Command("down")),
    ("down server now", Command("say", text="down server now")),
])
def test_parse_command(line, command):
    assert protocol.parse_command(line) == command


@pytest.mark.parametrize("line, message", [
    ("-nope", "unknown command"), ("-to", "usage: -to NICK"),
    ("-kick", "usage: -kick NICK"), ("-admin", "usage: -admin PASSWORD"),
    ("-exit now", "takes no arguments"),
    ("-adminPW", "usage: -admin PASSWORD"), ("-admin:PW", "usage: -admin"),
    (" -resumeX", "usage: -resume TOKEN"),
])
def test_parse_command_errors(line, message):
    with pytest.raises(protocol.CommandError, match=message):
        protocol.parse_command(line)


@given(st.text(max_size=100))
def test_parse_command_on_arbitrary_text(line):
    try:
        command = protocol.parse_command(line)
    except protocol.CommandError as error:
        assert str(error)
        return
    assert command.name in protocol.COMMAND_NAMES


def test_server_lines_are_classified():
    parse = protocol.parse_server_line
    assert parse("alice: hi: there") == ("message", "alice", "hi: there")
    assert parse(protocol.format_private("bob", "x")) == ("private", "bob",
                                                          "x")
    assert parse(protocol.format_joined("bob")).kind == "notice"
    assert parse(protocol.format_no_such_user("x")).kind == "error"


def test_welcome_partner_and_shutdown_are_recognised():
    assert protocol.welcomed_nick(protocol.format_welcome("Алиса")) == "Алиса"
    assert protocol.welcomed_nick("alice: * Welcome, x!") is None
    assert protocol.partner_change(protocol.format_partner("bob")) == "bob"
    assert protocol.partner_change(protocol.format_everyone()) == ""
    assert protocol.partner_change("bob: hi") is None
    assert protocol.is_shutdown(protocol.format_shutdown("by admin a"))


def test_users_line_marks_and_counts():
    line = protocol.format_users(["a", "b"], "a", ["b"], total=40)
    assert line == "* Online (40): a (you), b (admin) and 38 more" \
                   " (type -users)"


def test_every_server_line_is_one_line():
    texts = [protocol.format_nick_prompt(), protocol.format_commands_hint(),
             protocol.format_shutdown("x"), *protocol.format_help(),
             protocol.format_joined_many(["a"] * 100)]
    for text in texts:
        assert "\n" not in text and protocol.encode_line(text).endswith(b"\n")


def test_counts_read_right_in_the_singular():
    """"1 try left", "1 line came": never "1 tries", "1 lines"."""
    assert protocol.format_admin_refused(2).endswith("(2 tries left)")
    assert protocol.format_admin_refused(1).endswith("(1 try left)")
    assert protocol.format_missed(1).startswith("* 1 line came")
    assert protocol.format_missed(3).startswith("* 3 lines came")
