"""End-to-end tests of client.py: the real program, run in a pseudo-terminal
(so it sees a terminal, uses readline, and gets Ctrl+C and Ctrl+D as a user
would send them), against a real in-process server on a free port. The other
chat users are plain sockets in the test.

Nothing here sleeps to synchronise: every wait is for a condition (text in
the client's screen output or on a socket, the process ending), with a
deadline. Unix only: it needs pseudo-terminals.
"""

from __future__ import annotations

import os
import re
import select
import socket
import struct
import subprocess
import sys
import time
from typing import Callable, Dict, Iterator, List, Optional

import pytest

import client
import protocol
from helpers import ADMIN_PASSWORD, DEADLINE, ROOT, wait_until
from terminal import (HISTORY_STYLE, MENTION_STYLE, PRIVATE_STYLE, RESET,
                      char_width)

fcntl = pytest.importorskip("fcntl", reason="needs Unix pseudo-terminals")
termios = pytest.importorskip("termios", reason="needs Unix pseudo-terminals")

CLIENT = os.path.join(ROOT, "client.py")

# Run in the child before client.py: make the pseudo-terminal its
# controlling terminal (the child is a new session leader thanks to
# start_new_session), so that typing Ctrl+C sends it SIGINT as in a real
# terminal; and let SIGINT do what it does there (a shell starts a
# background job, "pytest &", with SIGINT ignored, which exec passes on,
# and Python then leaves it ignored). Then become client.py.
_TAKE_TERMINAL = (
    "import fcntl, os, signal, sys, termios;"
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0);"
    "signal.signal(signal.SIGINT, signal.SIG_DFL);"
    "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")


def _environment(**changes: Optional[str]) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(TERM="xterm", NO_COLOR="1", PYTHONDONTWRITEBYTECODE="1")
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


class PtyClient:
    """``python3 client.py ARGS`` with a pseudo-terminal as its stdin,
    stdout and stderr; the test reads the "screen" from the master side."""

    def __init__(self, *args: str, env: Dict[str, str],
                 columns: int = 120) -> None:
        self.master, self.slave = os.openpty()
        self.columns = columns
        # A fixed, known window size, as a real terminal would have.
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ,
                    struct.pack("HHHH", 30, columns, 0, 0))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _TAKE_TERMINAL, CLIENT, *args],
            stdin=self.slave, stdout=self.slave, stderr=self.slave,
            start_new_session=True, cwd=ROOT, env=env)
        self.output = b""  # everything the client wrote so far
        self._seen = 0     # how far expect() has matched

    def write(self, text: str) -> None:
        """Type ``text`` (use "\\r" for Enter, "\\x04" for Ctrl+D)."""
        os.write(self.master, text.encode("utf-8"))

    def _read_some(self, timeout: float) -> bool:
        """Read what is available within ``timeout``; False if nothing."""
        ready, _, _ = select.select([self.master], [], [], max(0, timeout))
        if not ready:
            return False
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: no process has the terminal open any more
            return False
        self.output += chunk
        return bool(chunk)

    def expect(self, text: str, timeout: float = DEADLINE) -> str:
        """Wait until ``text`` appears in the output after the previous
        match; return the output from there up to and including it."""
        needle = text.encode("utf-8")
        deadline = time.monotonic() + timeout
        while True:
            found = self.output.find(needle, self._seen)
            if found >= 0:
                start, self._seen = self._seen, found + len(needle)
                return self.output[start:self._seen].decode("utf-8",
                                                            "replace")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{text!r} not seen in {timeout} s; output so far:\n"
                    f"{self.output.decode('utf-8', 'replace')}")
            self._read_some(remaining)

    def wait_exit(self, timeout: float = DEADLINE) -> int:
        """Wait for the client to end, reading its output meanwhile (so it
        never blocks on a full terminal); its exit status."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"client still running after {timeout} s; output:\n"
                    f"{self.output.decode('utf-8', 'replace')}")
            # Wake up at least every 50 ms to check whether it has ended.
            self._read_some(min(remaining, 0.05))
        while self._read_some(0):
            pass
        return self.proc.returncode

    def wait_idle(self) -> None:
        """Wait until the client has read every key typed so far and its
        main thread sleeps, waiting for the next one.

        People type slowly enough for the client to be idle at each key; a
        test does not, and some checks need it: a Ctrl+C that comes while
        readline is still busy with the keys before it is only noticed at
        the next key (Python's readline loop checks for signals only when
        its wait for input is interrupted), and a redraw shows the cursor
        where readline has got to. Linux only (elsewhere this returns at
        once).
        """
        stat = f"/proc/{self.proc.pid}/stat"
        if not os.path.exists(stat):
            return

        def idle() -> bool:
            unread = fcntl.ioctl(self.slave, termios.FIONREAD, b"\0" * 4)
            if struct.unpack("i", unread)[0]:
                return False  # keys still waiting to be read
            with open(stat) as file:
                # "pid (name) state ...": the state follows the name.
                return file.read().rpartition(")")[2].split()[0] == "S"

        wait_until(idle, what="the client to wait for input")

    def terminal_mode(self) -> List:
        return termios.tcgetattr(self.slave)

    def assert_terminal_restored(self) -> None:
        """No traceback, and echo and line mode are on again: readline had
        the terminal in raw mode, and a hard exit skips its clean-up."""
        assert b"Traceback" not in self.output
        mode = self.terminal_mode()
        assert mode[3] & termios.ECHO and mode[3] & termios.ICANON

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(DEADLINE)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def spawn(server) -> Iterator[Callable[..., PtyClient]]:
    """``spawn("--nick", "alice")``: client.py in a terminal, connected to
    the test's server (or to ``port=``)."""
    started: List[PtyClient] = []

    def start(*args: str, port: Optional[int] = None, columns: int = 120,
              **env: Optional[str]) -> PtyClient:
        port = server.address[1] if port is None else port
        pty_client = PtyClient("--port", str(port), *args,
                               env=_environment(**env), columns=columns)
        started.append(pty_client)
        return pty_client

    yield start
    for pty_client in started:
        pty_client.close()


def joined(spawn: Callable[..., PtyClient], nick: str = "alice",
           columns: int = 120, **env: Optional[str]) -> PtyClient:
    """A client that has joined as ``nick`` and shows its prompt."""
    alice = spawn("--nick", nick, columns=columns, **env)
    alice.expect(f"Welcome, {nick}!")
    alice.expect("[everyone]> ")
    return alice


# Escape sequences a screen() knows or skips: CSI, OSC, and two-character
# ones (readline's keypad mode, "ESC =").
_SEQUENCE_RE = re.compile(r"\x1b\[([0-9;?]*)([@-~])|\x1b\][^\x07]*\x07|\x1b.")


def screen(output: bytes, columns: int) -> List[str]:
    """The rows of text a terminal ``columns`` wide shows after printing
    ``output``: a minimal emulator, for what the client and readline
    write. Text wraps (a wide character that does not fit goes to the next
    row); CR, LF, BS and the CSI sequences moving the cursor (A, B, C, D)
    and erasing (J, K) are obeyed; others are skipped. The screen is as tall
    as needed: nothing scrolls off (keep the tests short)."""
    rows: List[List[str]] = [[]]
    row = column = 0
    pending = False  # in the last column, the next character wraps first

    def cells() -> List[str]:
        while len(rows) <= row:
            rows.append([])
        line = rows[row]
        while len(line) < columns:
            line.append(" ")
        return line

    text = output.decode("utf-8", "replace")
    index = 0
    while index < len(text):
        match = _SEQUENCE_RE.match(text, index)
        if match:
            index = match.end()
            params, final = match.group(1), match.group(2)
            if final is None or "?" in params:
                continue
            count = int(params or "1") if params.isdigit() else 1
            pending = False
            if final == "A":
                row = max(row - count, 0)
            elif final == "B":
                row += count
            elif final == "C":
                column = min(column + count, columns - 1)
            elif final == "D":
                column = max(column - count, 0)
            elif final == "J" and params in ("", "0"):
                cells()[column:] = [" "] * (columns - column)
                del rows[row + 1:]
            elif final == "K" and params in ("", "0"):
                cells()[column:] = [" "] * (columns - column)
            continue
        char = text[index]
        index += 1
        if char == "\r":
            column, pending = 0, False
        elif char == "\n":
            row, pending = row + 1, False
        elif char == "\b":
            column, pending = max(column - 1, 0), False
        elif char >= " ":
            width = char_width(char)
            if width == 0:
                continue
            if pending or column + width > columns:
                row, column, pending = row + 1, 0, False
            line = cells()
            line[column] = char
            if width == 2:
                line[column + 1] = ""
            column += width
            if column >= columns:
                column, pending = columns - 1, True
    return ["".join(line).rstrip() for line in rows]


def run_piped(port: int, *args: str, stdin: str = "",
              ) -> subprocess.CompletedProcess:
    """client.py with its input and output as pipes, not a terminal."""
    return subprocess.run(
        [sys.executable, CLIENT, "--port", str(port), *args], input=stdin,
        capture_output=True, text=True, timeout=DEADLINE, cwd=ROOT,
        env=_environment())


def free_port() -> int:
    """A port nobody listens on (bound for a moment, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- Joining -----------------------------------------------------------------


def test_join_shows_welcome_users_and_commands(spawn, server, clients) -> None:
    bob = clients(server, "bob")
    alice = spawn("--nick", "alice")
    alice.expect("* Welcome, alice! You are in the chat.")
    alice.expect("* Commands: -to NICK")
    alice.expect("* Online (2): ")
    users = alice.expect("\n")
    assert "alice (you)" in users and "bob" in users
    alice.expect("[everyone]> ")
    bob.expect("* alice joined the chat")


def test_asks_for_a_nickname_again_when_refused(spawn, server,
                                                clients) -> None:
    clients(server, "bob")
    alice = spawn()
    alice.expect("Choose a nickname")
    alice.expect("\r\nnickname> ")  # the question, then a short prompt
    alice.write("bob\r")
    alice.expect("nickname 'bob' refused: it is taken")
    alice.expect("Choose a nickname")
    alice.expect("\r\nnickname> ")
    alice.write("alice\r")
    alice.expect("* Welcome, alice!")
    alice.expect("[everyone]> ")


def test_the_nickname_prompt_leaves_room_for_a_long_nick(spawn) -> None:
    # In 80 columns, the longest nickname fits on the prompt's row.
    nick = "a_twenty_char_nick_x"
    alice = spawn(columns=80)
    alice.expect("nickname> ")
    alice.write(nick + "\r")
    alice.expect(f"* Welcome, {nick}!")
    alice.expect("[everyone]> ")
    alice.wait_idle()
    shown = screen(alice.output, 80)
    assert shown[0] == ("* Choose a nickname (1-20 letters, digits, _ - .)"
                        " and press Enter:")
    assert shown[1] == "nickname> " + nick
    assert all(len(row) <= 80 for row in shown)


def test_a_refused_nick_option_asks_interactively(spawn, server,
                                                  clients) -> None:
    clients(server, "bob")
    alice = spawn("--nick", "b o b")
    alice.expect("refused: a nickname cannot contain spaces")
    alice.expect("Choose a nickname")
    alice.expect("nickname> ")
    alice.write("alice\r")
    alice.expect("* Welcome, alice!")


def test_ctrl_d_at_the_nickname_question_leaves(spawn) -> None:
    alice = spawn()
    alice.expect("Choose a nickname")
    alice.expect("nickname> ")
    alice.write("\x04")
    assert alice.wait_exit() == 0
    assert b"Traceback" not in alice.output


def test_help_at_the_nickname_prompt_is_answered_locally(spawn, server,
                                                         clients) -> None:
    # The server would take "-help" for a nickname, and refuse it.
    bob = clients(server, "bob")
    alice = spawn()
    alice.expect("nickname> ")
    alice.write("-help\r")
    alice.expect("send text to NICK only")  # the chat's -help
    alice.expect("Choose a nickname first")
    alice.expect("\r\nnickname> ")  # asked again
    alice.write("alice\r")
    alice.expect("* Welcome, alice!")
    alice.expect("[everyone]> ")
    bob.expect("* alice joined the chat")
    assert b"refused" not in alice.output
    shown = screen(alice.output, alice.columns)
    help_rows = [row for row in shown if row.startswith("* -")]
    assert help_rows == [row for row in client.help_lines()
                         if row.startswith("* -")]


def test_shutdown_at_the_nickname_prompt_ends_the_client(
        spawn, server, clients) -> None:
    # Noticed at once, not after Enter; the half-typed name is kept.
    bob = clients(server, "bob")
    bob.send(f"-admin {ADMIN_PASSWORD}")
    bob.expect(protocol.format_admin_granted())
    alice = spawn()
    alice.expect("nickname> ")
    alice.write("ali")
    alice.expect("ali")  # echoed: readline has it
    alice.wait_idle()
    bob.send("down server")
    assert alice.wait_exit() == 0
    alice.expect("* Server is shutting down")
    alice.expect("(not sent: ali)")
    assert b"cannot join" not in alice.output
    alice.assert_terminal_restored()


def test_registration_timeout_at_the_nickname_prompt_ends_the_client(
        spawn, make_server) -> None:
    server = make_server(register_timeout=0.5)
    alice = spawn(port=server.address[1])
    alice.expect("nickname> ")
    # Nothing typed, no Enter: the client ends by itself.
    assert alice.wait_exit() == 1
    alice.expect("! timed out waiting for a nickname")
    alice.expect("client.py: cannot join the chat: the server closed the"
                 " connection")
    alice.assert_terminal_restored()
    shown = [row for row in screen(alice.output, alice.columns) if row]
    assert shown[-2:] == [
        "! timed out waiting for a nickname",
        "client.py: cannot join the chat: the server closed the connection"]


def test_a_line_while_choosing_a_nickname_keeps_the_typing(
        spawn, fake_server) -> None:
    # A line the server sends while the user is asked is shown above the
    # prompt; the half-typed name is drawn again, and joining goes on.
    alice = spawn(port=fake_server.port)
    fake_server.accept()
    alice.expect("nickname> ")
    alice.write("al")
    alice.expect("al")  # echoed: readline has it
    alice.wait_idle()
    fake_server.send("* The teacher is here")
    alice.expect("* The teacher is here")
    alice.expect("nickname> al")  # drawn again
    alice.wait_idle()
    alice.write("ice\r")
    assert fake_server.greet() == "alice"
    alice.expect("* Welcome, alice!")
    alice.expect("[everyone]> ")
    alice.wait_idle()
    shown = [row for row in screen(alice.output, alice.columns) if row]
    assert shown[-6:-3] == ["* The teacher is here", "nickname> alice",
                            "* Welcome, alice! You are in the chat."]
    alice.write("hi\r")  # the chat goes on as usual
    assert fake_server.read_line() == "hi"


# --- Sending and receiving ---------------------------------------------------


def test_a_typed_line_reaches_the_others(spawn, server, clients) -> None:
    bob = clients(server, "bob")
    alice = joined(spawn)
    alice.write("hi there, Привет 👋\r")
    bob.expect("alice: hi there, Привет 👋")


def test_an_incoming_message_keeps_the_half_typed_line(
        spawn, server, clients) -> None:
    bob = clients(server, "bob")
    alice = joined(spawn)
    alice.write("hello wor")
    alice.expect("hello wor")  # echoed: readline has it
    bob.send("are you there?")
    alice.expect("bob: are you there?")
    # After the message, the prompt and the typed text are drawn again.
    alice.expect("[everyone]> hello wor")
    alice.write("ld\r")
    bob.expect("alice: hello world")


def test_the_cursor_stays_where_it_was_in_the_line(spawn, server,
                                                   clients) -> None:
    bob = clients(server, "bob")
    alice = joined(spawn)
    alice.write("hello world")
    alice.expect("hello world")
    alice.write("\x02" * 5)  # Ctrl+B (left) five times: before "world"
    alice.expect("\b" * 5)  # readline moved the cursor back
    bob.send("interruption")
    alice.expect("bob: interruption")
    # Redrawn, with the cursor moved back to column 12 + 6.
    alice.expect("[everyone]> hello world\r\x1b[18C")
    alice.write("big \r")
    bob.expect("alice: hello big world")


def test_prompt_shows_the_partner_confirmed_by_the_server(
        spawn, server, clients) -> None:
    bob = clients(server, "bob")
    alice = joined(spawn)
    alice.write("-to bob\r")
    alice.expect("Your lines now go to bob only.")
    alice.expect("[to bob]> ")
    alice.write("-to nobody\r")  # refused: the partner stays bob
    alice.expect("no such user: nobody")
    alice.expect("[to bob]> ")
    alice.write("just for you\r")
    bob.expect("[private] alice: just for you")
    alice.write("-all\r")
    alice.expect("Your lines now go to everyone.")
    alice.expect("[everyone]> ")


def test_screen_emulator() -> None:
    # The emulator the rewrite tests rely on, on what they need.
    assert screen(b"abc\r\nde\x1b[1A\r\x1b[Jxy\r\n", 10) == ["xy"]
    assert screen(b"0123456789ab", 10) == ["0123456789", "ab"]
    assert screen(b"0123456789\r\nx", 10) == ["0123456789", "x"]
    assert screen("1234567日".encode(), 8) == ["1234567", "日"]


# --- Rewriting the line just sent --------------------------------------------


def test_sent_lines_are_rewritten_to_show_where_they_went(
        spawn, server, clients) -> None:
    bob = clients(server, "bob")
    alice = joined(spawn)
    alice.write("-to bob hello\r")
    bob.expect("[private] alice: hello")
    # The server's copy says it went: up one row (the typed line took
    # one), erase, and the copy in its place.
    alice.expect("-to bob hello\r\n\x1b[1A\r\x1b[J-> bob: hello\r\n")
    alice.expect("[everyone]> ")
    alice.write("-admin secret\r")
    # The password starred out, after the prompt it was typed at.
    alice.expect("\x1b[1A\r\x1b[J[everyone]> -admin ********\r\n")
    alice.expect("wrong admin password")
    alice.expect("[everyone]> ")
    alice.write("just typed\r")  # a plain line stays as typed
    bob.expect("alice: just typed")
    # Wait for the prompt: keys typed before it would be echoed by the
    # terminal driver rather than by readline.
    alice.expect("just typed\r\n[everyone]> ")
    alice.write("-all hi all\r")
    bob.expect("alice: hi all")
    alice.expect("[everyone]> hi all\r\n")
    alice.expect("[everyone]> ")
    alice.wait_idle()
    shown = screen(alice.output, alice.columns)
    assert shown[-6:] == [
        "-> bob: hello",
        "[everyone]> -admin ********",
        "! wrong admin password (2 tries left)",
        "[everyone]> just typed",
        "[everyone]> hi all",
        "[everyone]>"]
    assert not any("secret" in row for row in shown)


def test_a_wrapped_line_is_rewritten_whole(spawn, server, clients) -> None:
    bob = clients(server, "bob")
    alice = joined(spawn, columns=40)
    # Typed, "[everyone]> -to bob " and the text take three rows of 40:
    # "日" does not fit in the first row's last column, so the rest takes
    # 41 columns. As sent, "-> bob: " and the text take two rows.
    text = "a" * 19 + "日" + "b" * 39
    alice.write(f"-to bob {text}\r")
    bob.expect(f"[private] alice: {text}")
    alice.expect(f"\x1b[3A\r\x1b[J-> bob: {text}\r\n")
    alice.expect("[everyone]> ")
    # Typed, three rows; as sent, exactly two: the next prompt must come
    # right after them, with no empty row.
    alice.write("-all " + "c" * 68 + "\r")
    bob.expect("alice: " + "c" * 68)
    alice.expect("\x1b[3A\r\x1b[J[everyone]> " + "c" * 68 + "\r\n")
    alice.expect("[everyone]> ")
    alice.wait_idle()
    assert screen(alice.output, 40)[-5:] == [
        "-> bob: " + "a" * 19 + "日" + "b" * 11,
        "b" * 28,
        "[everyone]> " + "c" * 28,
        "c" * 40,
        "[everyone]>"]


def test_colours_on_a_terminal(spawn, server, clients) -> None:
    bob = clients(server, "bob")
    alice = joined(spawn, NO_COLOR=None)
    bob.send("-to alice psst alice")
    alice.expect(PRIVATE_STYLE + "[private] bob: psst "
                 + MENTION_STYLE + "alice" + RESET)


def test_history_is_dim_and_apart_from_live_lines(spawn, make_server,
                                                  clients) -> None:
    server = make_server(history=20, resume_grace=60)
    bob = clients(server, "bob")
    carol = clients(server, "carol")  # a line nobody hears is not kept
    bob.send("-all hi alice, -to bob when you are here")
    carol.expect("bob: hi alice, -to bob when you are here")
    alice = spawn("--nick", "alice", port=server.address[1], NO_COLOR=None)
    said = re.escape("bob: hi alice, -to bob when you are here")
    replay = alice.expect(protocol.format_history_end() + RESET)
    assert re.search(re.escape(HISTORY_STYLE) + r"\* \[history \d\d:\d\d\] "
                     + said + re.escape(RESET), replay)
    assert MENTION_STYLE not in replay  # old news, not a mention
    alice.expect("[everyone]> ")
    bob.send("-all hi alice")  # said now: a mention
    alice.expect("hi " + MENTION_STYLE + "alice" + RESET)
    alice.write("-history 1\r")
    alice.expect(HISTORY_STYLE + "* [history ")
    alice.expect("bob: hi alice" + RESET)
    alice.expect(HISTORY_STYLE + protocol.format_history_end() + RESET)
    alice.expect("[everyone]> ")
    assert b"Resume token" not in alice.output  # kept, never shown


# --- Leaving -----------------------------------------------------------------


@pytest.mark.parametrize("typed, key", [("", "\x04"), ("half typed", "\x03"),
                                        ("-exit", "\r")],
                         ids=["ctrl-d", "ctrl-c", "exit-command"])
def test_leaving_says_goodbye(spawn, server, clients, typed: str,
                              key: str) -> None:
    bob = clients(server, "bob")
    alice = joined(spawn)
    if typed:
        alice.write(typed)
        alice.expect(typed)  # echoed: readline is reading keys now
        alice.wait_idle()
    alice.write(key)
    bob.expect("* alice left the chat")
    assert alice.wait_exit() == 0
    alice.expect("* Goodbye, alice!")
    assert b"Traceback" not in alice.output


def test_server_shutdown_ends_the_client_by_itself(spawn, server,
                                                   clients) -> None:
    bob = clients(server, "bob")
    bob.send(f"-admin {ADMIN_PASSWORD}")
    bob.expect(protocol.format_admin_granted())
    alice = joined(spawn)
    alice.write("never finished")
    alice.expect("never finished")
    alice.wait_idle()
    bob.send("down server")
    assert alice.wait_exit(timeout=3) == 0
    alice.expect("* Server is shutting down")
    # The half-typed line is not lost: it stays, on a line of its own.
    alice.expect("(not sent: never finished)")
    shown = screen(alice.output, alice.columns)
    assert shown[-2].startswith("* Server is shutting down")
    assert shown[-1] == "(not sent: never finished)"
    alice.assert_terminal_restored()


def test_being_kicked_ends_the_client_by_itself(spawn, server,
                                                clients) -> None:
    bob = clients(server, "bob")
    bob.send(f"-admin {ADMIN_PASSWORD}")
    bob.expect(protocol.format_admin_granted())
    alice = joined(spawn)
    alice.write("half typed")
    alice.expect("half typed")  # echoed: readline has it
    alice.wait_idle()
    bob.send("-kick alice enough")
    # Being kicked is no error of the client's: status 0, and the server's
    # line is the last word (no "Disconnected" after it).
    assert alice.wait_exit(timeout=3) == 0
    alice.expect("! you were kicked by bob: enough")
    assert b"Disconnected" not in alice.output
    assert b"the server closed the connection" not in alice.output
    alice.expect("(not sent: half typed)")
    alice.assert_terminal_restored()


# --- Against a fake server: what the real one would never send ---------------


class FakeServer:
    """A listening socket that plays the server by hand, for lines the real
    server refuses to pass on (it drops control characters)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(DEADLINE)
        self.port = self.listener.getsockname()[1]
        self.sock: Optional[socket.socket] = None

    def welcome(self) -> str:
        """Accept the client, take its nickname, greet it."""
        self.accept()
        return self.greet()

    def accept(self) -> None:
        """Accept the client and ask for a nickname."""
        self.sock, _ = self.listener.accept()
        self.sock.settimeout(DEADLINE)
        self._lines = self.sock.makefile("rb")
        self.send(protocol.format_nick_prompt())

    def greet(self) -> str:
        """Take the client's nickname and greet it; the nickname."""
        nick = self.read_line()
        self.send(protocol.format_welcome(nick),
                  protocol.format_commands_hint(),
                  protocol.format_users([nick], nick))
        return nick

    def send(self, *lines: str) -> None:
        assert self.sock is not None
        self.sock.sendall(b"".join(protocol.encode_line(line)
                                   for line in lines))

    def read_line(self) -> str:
        return self._lines.readline().decode("utf-8").rstrip("\n")

    def close(self) -> None:
        if self.sock is not None:
            self._lines.close()
            self.sock.close()
        self.listener.close()


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    fake = FakeServer()
    yield fake
    fake.close()


def test_escape_sequences_from_a_peer_do_not_reach_the_terminal(
        spawn, fake_server) -> None:
    alice = spawn("--nick", "alice", port=fake_server.port, TERM="dumb")
    fake_server.welcome()
    alice.expect("[everyone]> ")
    fake_server.send("mallory: title\x1b]0;pwned\x07 clear\x1b[2J"
                     " csi\x9b31m bell\x07 \u202eevil\u202c Привет 👋 end")
    shown = alice.expect(" end")
    assert "mallory: title clear csi bell^G evil Привет 👋 end" in shown
    alice.expect("[everyone]> ")
    assert b"pwned" not in alice.output
    assert b"\x07" not in alice.output
    assert "\u202e".encode() not in alice.output
    assert "\x9b".encode() not in alice.output
    # With TERM=dumb and NO_COLOR the client writes no escape at all, so
    # any ESC byte would have come from the peer.
    assert b"\x1b" not in alice.output


def test_help_is_answered_locally(spawn, fake_server) -> None:
    alice = spawn("--nick", "alice", port=fake_server.port)
    fake_server.welcome()
    alice.expect("[everyone]> ")
    alice.write("-help\r")
    alice.expect("send text to NICK only")
    alice.expect("[everyone]> ")
    alice.write("-users\r")
    # The fake server never answers -help: the next line it gets is -users.
    assert fake_server.read_line() == "-users"


def test_lost_connection_ends_the_client(spawn, fake_server) -> None:
    alice = spawn("--nick", "alice", port=fake_server.port)
    fake_server.welcome()
    alice.expect("[everyone]> ")
    alice.write("half")
    alice.expect("half")
    alice.wait_idle()
    fake_server.close()
    assert alice.wait_exit(timeout=3) == 1
    alice.expect("(not sent: half)\r\n")  # kept, on a line of its own
    alice.expect("* Disconnected: the server closed the connection.")
    alice.assert_terminal_restored()


# --- Without a terminal, and failing to connect ------------------------------


def test_piped_input(server, clients) -> None:
    bob = clients(server, "bob")
    result = run_piped(server.address[1],
                       stdin="carol\n-all hi from a pipe\n-users\n")
    assert result.returncode == 0, result.stderr
    bob.expect("carol: hi from a pipe")
    bob.expect("* carol left the chat")
    assert "* Welcome, carol! You are in the chat." in result.stdout
    assert "* Online (2): " in result.stdout
    assert "* Goodbye, carol!" in result.stdout
    assert "]> " not in result.stdout  # no prompts without a terminal
    assert result.stderr == ""


def test_piped_input_with_a_taken_nick_fails(server, clients) -> None:
    clients(server, "bob")
    result = run_piped(server.address[1], "--nick", "bob", stdin="hi\n")
    assert result.returncode == 1
    assert "it is taken" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def _start_piped(port: int, *args: str) -> subprocess.Popen:
    """client.py with pipes for stdin, stdout and stderr (bytes)."""
    return subprocess.Popen(
        [sys.executable, CLIENT, "--port", str(port), *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=ROOT, env=_environment())


@pytest.mark.parametrize("who", ["reader", "main"])
def test_output_closed_early_leaves_quietly(fake_server, who: str) -> None:
    # "client.py | head -1": the reader of our output goes away. Whichever
    # thread writes next (the reader thread with a message, or the main
    # thread with -help, answered locally) finds out; the client says -exit
    # and ends, with no traceback.
    proc = _start_piped(fake_server.port, "--nick", "carol")
    try:
        assert fake_server.welcome() == "carol"
        assert proc.stdout.readline().startswith(b"* Welcome, carol!")
        proc.stdout.close()  # as head does once it has its line
        if who == "reader":
            fake_server.send("bob: is anyone reading?")
        else:
            proc.stdin.write(b"-help\n")
            proc.stdin.flush()
        assert fake_server.read_line() == "-exit"
        fake_server.send(protocol.format_goodbye("carol"))
        fake_server.sock.shutdown(socket.SHUT_RDWR)
        assert proc.wait(DEADLINE) == 1
        assert proc.stderr.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(DEADLINE)
        proc.stdin.close()
        proc.stderr.close()


def test_piped_into_head(server, clients) -> None:
    # The pipeline from the bug report, a few times over: the client's
    # output ends early, wherever it is at that moment.
    bob = clients(server, "bob")
    for _ in range(3):
        result = subprocess.run(
            ["sh", "-c", f"printf 'carol\\n-users\\n' | '{sys.executable}'"
             f" '{CLIENT}' --port {server.address[1]} | head -1"],
            capture_output=True, text=True, timeout=DEADLINE, cwd=ROOT,
            env=_environment())
        assert result.stdout == "* Welcome, carol! You are in the chat.\n"
        assert result.stderr == ""
        bob.expect("* carol left the chat")


@pytest.mark.parametrize("host", ["127.0.0.1", "no-such-host.invalid"])
def test_cannot_connect_is_one_line_and_status_1(host: str) -> None:
    result = run_piped(free_port(), "--host", host, "--nick", "alice")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "refused" in lines[0] or "cannot find host" in lines[0]
    assert "Traceback" not in result.stderr


# --- Comforts: Tab completion, the bell, timestamps --------------------------


def test_tab_completes_flags_and_nicknames(spawn, server, clients) -> None:
    bob = clients(server, "bob")
    zakhar = clients(server, "Захар")
    alice = joined(spawn)
    # A flag at the start of the line, then a nickname, ignoring case: the
    # line sent proves what the completion wrote.
    alice.write("-to\t" + "BO\t" + "hello\r")
    bob.expect("[private] alice: hello")
    alice.expect("-> bob: hello")
    alice.expect("[everyone]> ")
    alice.write("-to за\t" + "привет\r")  # Unicode, lower case typed
    zakhar.expect("[private] alice: привет")
    alice.expect("[everyone]> ")
    # Someone who came later, and a new nickname, complete too.
    carol = clients(server, "carol")
    alice.expect("carol joined the chat")
    bob.send("-nick robert")
    alice.expect("bob is now known as robert")
    alice.write("-whoi\t" + "ca\t\r")
    alice.expect("* carol: joined ")
    alice.write("hi ROB\t" + "and c\t" + "!\r")
    carol.expect("alice: hi robert and carol !")


def test_the_bell_rings_for_a_private_message_only(spawn, server,
                                                    clients) -> None:
    bob = clients(server, "bob")
    alice = joined(spawn)
    bob.send("hi alice, in public")
    alice.expect("bob: hi alice, in public")
    bob.send("-to alice psst")
    alice.expect("[private] bob: psst")
    alice.expect("\a")
    start = alice.output.index(b"in public")
    end = alice.output.index(b"[private] bob: psst")
    assert b"\a" not in alice.output[start:end]  # not for a public line


def test_the_bell_on_mentions(spawn, server, clients) -> None:
    bob = clients(server, "bob")
    alice = spawn("--nick", "alice", "--bell", "mention")
    alice.expect("[everyone]> ")
    bob.send("nothing for anyone")
    alice.expect("bob: nothing for anyone")
    bob.send("hey Alice, look")
    alice.expect("hey Alice, look")
    alice.expect("\a")
    assert alice.output.count(b"\a") == 1


def test_timestamps_and_the_time_toggle(spawn, server, clients) -> None:
    bob = clients(server, "bob")
    alice = spawn("--nick", "alice", "--timestamps")
    alice.expect("[everyone]> ")
    bob.send("stamped")
    alice.expect("bob: stamped")
    alice.wait_idle()
    rows = screen(alice.output, alice.columns)
    assert any(re.fullmatch(r"\d\d:\d\d bob: stamped", row) for row in rows)
    alice.write("-time\r")
    alice.expect("Timestamps off.")
    bob.send("plain")
    alice.expect("bob: plain")
    alice.expect("[everyone]> ")
    alice.wait_idle()
    assert "bob: plain" in screen(alice.output, alice.columns)


def test_a_failed_private_line_stays_as_typed_with_the_error_under_it(
        spawn, server, clients) -> None:
    clients(server, "bob")
    alice = joined(spawn)
    alice.write("-to nobody are you there\r")
    alice.expect("no such user: nobody")
    alice.expect("[everyone]> ")
    alice.wait_idle()
    rows = screen(alice.output, alice.columns)
    at = rows.index("[everyone]> -to nobody are you there")
    assert rows[at + 1].startswith("! no such user: nobody")
