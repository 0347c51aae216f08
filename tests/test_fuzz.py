"""Fuzzing: protocol.py with hypothesis, and a live server with random bytes.

The protocol functions get arbitrary input and may only return a value or
raise the errors they document (subclasses of ``ProtocolError``); the
framer is checked step by step against a plain reference model. Then
several clients throw seeded random byte streams at a real server for a
few seconds, after which it must still serve new users, hold no ghosts and
have logged no exception.
"""

from __future__ import annotations

import random
import select
import socket
import threading
import time
import unicodedata
from typing import List

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize,
                                 invariant, rule)

import protocol
from helpers import DEADLINE, LineClient, wait_until
from protocol import OVERLONG, LineFramer

# --- The framer against a reference model ------------------------------------


class ReferenceFramer:
    """What :class:`protocol.LineFramer` documents, written the slow and
    obvious way: it keeps the whole unfinished line, however long.

    A line longer than ``max_line`` is reported once (``OVERLONG``) in the
    chunk where it passes the limit and then dropped; a chunk that leaves
    an unfinished line of more than ``max_discard`` bytes raises
    ``FramingError``.
    """

    def __init__(self, max_line: int, max_discard: int) -> None:
        self.max_line = max_line
        self.max_discard = max_discard
        self.tail = b""        # the unfinished line, all of it
        self.reported = False  # OVERLONG already given for it

    def feed(self, chunk: bytes) -> list:
        *complete, rest = chunk.split(b"\n")
        frames: list = []
        for part in complete:
            line, self.tail = self.tail + part, b""
            if len(line) <= self.max_line:
                frames.append(line)
            elif not self.reported:
                frames.append(OVERLONG)
            self.reported = False
        self.tail += rest
        if len(self.tail) > self.max_line and not self.reported:
            frames.append(OVERLONG)
            self.reported = True
        if len(self.tail) > self.max_discard:
            raise protocol.FramingError("endless line")
        return frames

    @property
    def pending(self) -> int:
        return 0 if self.reported else len(self.tail)


# Pieces that make newlines, long runs and bad bytes common.
PIECES = st.sampled_from([
    b"\n", b"\n\n", b"a", b"bc", b"\r", b"\r\n", b"\xff", b"\xe2\x82",
    b"\x00", b"\x1b[2J", b"x" * 7, b"y" * 33, b"z" * 90,
])
CHUNKS = st.one_of(
    st.lists(PIECES, max_size=12).map(b"".join),
    st.binary(max_size=64),
)


class FramerMachine(RuleBasedStateMachine):
    """Random chunk after random chunk: the framer agrees with the model
    on every frame, on what it holds, and on when it gives up."""

    @initialize(max_line=st.integers(1, 40), extra=st.integers(0, 120))
    def make(self, max_line: int, extra: int) -> None:
        self.limits = (max_line, max_line + extra)
        self.connect()

    def connect(self) -> None:
        self.framer = LineFramer(*self.limits)
        self.model = ReferenceFramer(*self.limits)

    @rule(chunk=CHUNKS)
    def feed(self, chunk: bytes) -> None:
        try:
            expected = self.model.feed(chunk)
        except protocol.FramingError:
            try:
                self.framer.feed(chunk)
            except protocol.FramingError:
                self.connect()  # the server would cut it; start over
                return
            raise AssertionError("the framer did not give up on an"
                                 " endless line") from None
        assert self.framer.feed(chunk) == expected

    @invariant()
    def bounded(self) -> None:
        assert self.framer.pending == self.model.pending
        assert self.framer.pending <= self.framer.max_line


FramerMachine.TestCase.settings = settings(max_examples=100,
                                           stateful_step_count=25,
                                           deadline=None)
test_framer_matches_reference = FramerMachine.TestCase


@given(st.lists(CHUNKS, max_size=20), st.randoms(use_true_random=False))
@settings(max_examples=200, deadline=None)
def test_framer_frames_do_not_depend_on_chunking(chunks, rnd):
    # The same bytes cut at other places give the same lines, as long as
    # no endless line makes either framer give up.
    stream = b"".join(chunks)
    cuts = sorted(rnd.sample(range(len(stream) + 1),
                             min(len(stream) + 1, rnd.randint(0, 10))))
    pieces = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
    outputs = []
    for split in (chunks, pieces):
        framer = LineFramer(16, 10 ** 9)
        frames = []
        for chunk in split:
            frames.extend(framer.feed(chunk))
        outputs.append((frames, framer.pending))
    assert outputs[0] == outputs[1]


# --- decode_line -------------------------------------------------------------


def is_control(char: str) -> bool:
    """What decode_line refuses: C0 but tab, DEL, C1, and the bidi
    embeddings, overrides and isolates."""
    code = ord(char)
    return ((code < 0x20 and char != "\t") or 0x7F <= code <= 0x9F
            or 0x202A <= code <= 0x202E or 0x2066 <= code <= 0x2069)


def assert_safe_message(text: str) -> None:
    """An error text fit to send: one line, nothing a terminal obeys."""
    assert text and not any(is_control(c) for c in text), repr(text)


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_decode_line_on_arbitrary_bytes(raw):
    try:
        text = protocol.decode_line(raw)
    except protocol.ProtocolError as error:
        assert_safe_message(str(error))
        return
    assert not any(is_control(c) for c in text)
    # Nothing is changed but one trailing \r.
    assert text.encode() == (raw[:-1] if raw.endswith(b"\r") else raw)


@given(st.text(max_size=100))
@settings(max_examples=300)
def test_decode_line_accepts_exactly_text_without_controls(text):
    raw = text.encode()
    body = text[:-1] if text.endswith("\r") else text
    if any(is_control(c) for c in body):
        try:
            protocol.decode_line(raw)
        except protocol.ProtocolError:
            return
        raise AssertionError(f"{text!r} accepted")
    assert protocol.decode_line(raw) == body


# --- parse_command -----------------------------------------------------------

FLAGS = ["-to", "-all", "-users", "-help", "-exit", "-admin", "-kick",
         "-TO", "-All", "-KICK", "-", "--to", "-nope", "down", "DOWN"]
SEPARATORS = ["", " ", "  ", "\t", "\u00a0", " \u3000", "\u2028"]
WORDS = st.text(alphabet=st.sampled_from(
    "ab -\t\u00a0\u2028é😀\u0303:*!server"), max_size=20)


@given(st.one_of(
    st.text(max_size=100),
    st.tuples(st.sampled_from(FLAGS), st.sampled_from(SEPARATORS), WORDS,
              st.sampled_from(SEPARATORS), WORDS).map("".join),
))
@settings(max_examples=500)
def test_parse_command_on_arbitrary_lines(line):
    try:
        command = protocol.parse_command(line)
    except protocol.CommandError as error:
        assert line.startswith("-")
        assert_safe_message(str(error))
        return
    assert command.name in protocol.COMMAND_NAMES
    if command.name == "say":
        assert command.text == line
    elif command.name == "down":
        assert line.split() and " ".join(line.split()).lower() == "down server"
    else:
        assert line.startswith("-")
        if command.name in ("to", "kick", "admin"):
            assert command.target and not command.target[0].isspace()
        if command.name in ("to", "kick"):
            assert not any(char.isspace() for char in command.target)
        # Flags are case-insensitive: the same line, flag upper-cased.
        flag = line.split(None, 1)[0]
        upper = flag.upper() + line[len(flag):]
        assert protocol.parse_command(upper) == command


# --- Nicknames and the lines that carry them ---------------------------------

NICKISH = st.text(alphabet=st.one_of(
    st.characters(whitelist_categories=("Lu", "Ll", "Lo", "Mn", "Nd", "Zs",
                                        "Cc", "Cf", "Po", "Sm")),
    st.sampled_from("_-.:*![] "),
), max_size=24)


@given(st.one_of(st.text(max_size=30), NICKISH), st.text(max_size=40))
@settings(max_examples=500)
def test_nick_error_on_arbitrary_text(nick, text):
    reason = protocol.nick_error(nick)
    protocol.nick_key(nick)  # never raises either
    if reason is not None:
        assert isinstance(reason, str) and reason
        line = protocol.format_nick_refused(nick, reason)
        assert "\n" not in line and line.startswith(protocol.ERROR)
        return
    assert protocol.NICK_MIN_CHARS <= len(nick) <= protocol.NICK_MAX_CHARS
    assert not nick.startswith("-")
    for char in nick:
        assert not char.isspace()
        assert unicodedata.category(char)[0] != "C"
    # A valid nick can never be mistaken for a server marker, so every
    # line carrying it reads back as what it is.
    text = text.replace("\n", " ")
    parse = protocol.parse_server_line
    shown = protocol.clean_text(text)  # white space runs are one space
    assert parse(protocol.format_message(nick, text)) == \
        ("message", nick, shown)
    assert parse(protocol.format_private(nick, text)) == \
        ("private", nick, shown)
    assert parse(protocol.format_joined(nick)).kind == "notice"
    assert protocol.welcomed_nick(protocol.format_welcome(nick)) == nick
    assert protocol.partner_change(protocol.format_partner(nick)) == nick


@given(st.text(max_size=200))
@settings(max_examples=300)
def test_parse_server_line_never_fails(line):
    kind, nick, text = protocol.parse_server_line(line)
    assert kind in ("message", "private", "notice", "error")
    protocol.welcomed_nick(line)
    protocol.partner_change(line)
    protocol.is_shutdown(line)


# --- A live server under random bytes ----------------------------------------

COMMANDS = [
    b"-to x hi", b"-to", b"-to fz1", b"-to fz2 psst", b"-kick", b"-kick fz3",
    b"-kick fz0 out", b"down server", b"DOWN   server", b"-admin guess",
    b"-admin", b"-exit", b"-exit now", b"-all", b"-all hi all", b"-users",
    b"-help", b"-nope", b"hello", b"fz1", b"fz2", b"-ALL \xc3\xa9",
]
ESCAPES = [b"\x1b[2J", b"\x1b]0;pwned\x07", b"\x1b[31m", b"\x9b",
           "\u009b".encode(), b"\x00", b"\x7f", b"\r", b"\x08", b"\x07"]
PARTIAL_UTF8 = [b"\xe2\x82", b"\xc3", b"\xf0\x9f\x98", b"\xed\xa0\x80",
                b"\xc0\xaf", b"\xff\xfe", "😀".encode()[:3]]


def random_stream(rng: random.Random) -> bytes:
    """A few kilobytes (sometimes a megabyte) of hostile input."""
    out = []
    for _ in range(rng.randint(1, 20)):
        kind = rng.random()
        if kind < 0.3:
            out.append(rng.choice(COMMANDS) + b"\n")
        elif kind < 0.5:
            out.append(rng.randbytes(rng.randint(1, 300)))
        elif kind < 0.65:
            out.append(b"\n" * rng.randint(1, 4))
        elif kind < 0.75:
            out.append(rng.choice(PARTIAL_UTF8))
        elif kind < 0.85:
            out.append(rng.choice(ESCAPES))
        elif kind < 0.94:
            out.append("plain ☃ текст 😀 \t".encode())
        elif kind < 0.996:
            out.append(bytes([rng.randrange(256)]) * rng.randint(1000, 70000))
        else:  # an endless line: the server must cut this connection
            out.append(b"z" * (protocol.MAX_DISCARD_BYTES + 70000))
    return b"".join(out)


def send_while_reading(sock: socket.socket, data: bytes,
                       rng: random.Random) -> bool:
    """Send ``data`` in random pieces, reading (and dropping) whatever the
    server answers meanwhile, so that neither side waits on the other.
    False once the server has closed the connection; raises TimeoutError
    if the server neither reads nor writes for DEADLINE seconds."""
    while data:
        readable, writable, _ = select.select([sock], [sock], [], DEADLINE)
        if not readable and not writable:
            raise TimeoutError("server stopped reading")
        if readable and not sock.recv(65536):
            return False
        if writable:
            # Random cuts, so lines and characters arrive in pieces.
            size = rng.choice([1, 7, 100, 4096, 65536])
            try:
                data = data[sock.send(data[:size]):]
            except BlockingIOError:
                pass
    return True


def fuzz_client(server, seed: int, stop_at: float,
                problems: List[str], stats: List[int]) -> None:
    rng = random.Random(seed)
    while time.monotonic() < stop_at:
        try:
            sock = socket.create_connection(server.address, timeout=DEADLINE)
        except OSError as error:
            problems.append(f"client {seed}: cannot connect: {error}")
            return
        sock.setblocking(False)
        stats[1] += 1
        try:
            if rng.random() < 0.7:
                send_while_reading(sock, b"fz%d\n" % rng.randrange(6), rng)
            while time.monotonic() < stop_at:
                data = random_stream(rng)
                if not send_while_reading(sock, data, rng):
                    break  # cut, kicked or exited: connect again
                stats[0] += len(data)
        except TimeoutError as error:
            problems.append(f"client {seed}: {error}")
        except OSError:
            pass  # the server cut us: fine, connect again
        finally:
            sock.close()


def test_live_server_survives_random_bytes(make_server, caplog, monkeypatch):
    thread_errors: List[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: thread_errors
                        .append(f"{args.exc_type.__name__}: {args.exc_value}"))
    server = make_server()
    problems: List[str] = []
    stats = [0, 0]  # bytes sent, connections used
    stop_at = time.monotonic() + 3.0
    threads = [threading.Thread(target=fuzz_client,
                                args=(server, seed, stop_at, problems, stats),
                                daemon=True)
               for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(stop_at - time.monotonic() + DEADLINE)
    assert not [t for t in threads if t.is_alive()], "a fuzz client hung"
    assert not problems, problems[:5]
    assert stats[0] > 1_000_000, stats  # the fuzz really ran
    assert not server.stopping
    # Every fuzz connection is closed: no connection or nickname is left.
    wait_until(lambda: len(server.room) == 0 and server.connection_count == 0,
               what="no ghost nickname or connection")
    # And the server still works for ordinary users.
    alice = LineClient(server.address).register("alice")
    bob = LineClient(server.address).register("bob")
    try:
        alice.expect(protocol.format_joined("bob"))
        alice.send("-all still standing")
        bob.next_is("alice: still standing")
        bob.send("-to alice thanks")
        alice.next_is(protocol.format_private("bob", "thanks"))
    finally:
        alice.close()
        bob.close()
    errors = [f"{r.levelname} {r.getMessage()}" for r in caplog.records
              if r.levelno >= 40 or r.exc_info]
    assert not errors, errors[:5]
    assert not thread_errors, thread_errors[:5]
