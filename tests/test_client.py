"""Unit tests for client.py and terminal.py: the sanitiser, rendering, and
the small pieces of state that need no terminal (prompt, partner tracking,
the resume token, connect errors, and the steps of reconnecting, against a
server played by hand over a socket pair)."""

from __future__ import annotations

import ctypes
import io
import os
import socket
import threading
from typing import Callable, List, Tuple

import pytest

import client
from completion import Completer, Roster
import protocol
from helpers import DEADLINE, wait_until
from terminal import (BOLD, ERROR_STYLE, HISTORY_STYLE, MENTION_STYLE,
                      NOTICE_STYLE, PRIVATE_STYLE, RESET, InputLine,
                      OutputClosed, Terminal, _ESCAPE_SEQUENCE_RE, render,
                      sanitize, screen_position, screen_rows, text_width,
                      wants_colour)

ESC = "\x1b"


# --- sanitize ----------------------------------------------------------------


@pytest.mark.parametrize("attack", [
    "\x1b]0;pwned\x07",            # OSC: set the window title, BEL-terminated
    "\x1b]0;pwned\x1b\\",          # ... ST-terminated
    "\x9d0;pwned\x9c",             # ... in its 8-bit C1 form
    "\x1b[2J",                     # CSI: clear the screen
    "\x1b[H",                      # CSI: cursor home
    "\x1b[10;20H",                 # CSI: move the cursor
    "\x1b[31m",                    # CSI: colour
    "\x1b[?1049h",                 # CSI: private mode (alternate screen)
    "\x9b2J",                      # CSI in its 8-bit C1 form
    "\x1bc",                       # RIS: reset the terminal
    "\x1bPq#0;2;0;0;0\x1b\\",      # DCS (sixel)
    "\x1b_payload\x1b\\",          # APC
])
def test_escape_sequences_are_removed_whole(attack: str) -> None:
    assert sanitize(f"before{attack}after") == "beforeafter"


def test_unterminated_string_sequence_runs_to_the_end_of_line() -> None:
    # A terminal would swallow the rest of the line too, so nothing is lost.
    assert sanitize("before\x1b]2;pwned and more") == "before"


def test_no_control_character_survives() -> None:
    every_control = "".join(chr(c) for c in range(0x20) if c != 0x09) \
        + "\x7f" + "".join(chr(c) for c in range(0x80, 0xA0))
    result = sanitize(every_control)
    assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in result)


@pytest.mark.parametrize("raw, shown", [
    ("ding\x07", "ding^G"),        # BEL would ring the bell
    ("a\x7fb", "a^?b"),            # DEL
    ("over\rwrite", "over^Mwrite"),  # CR would let text overwrite the line
    ("a\x08b", "a^Hb"),            # backspace
    ("a\x00b", "a^@b"),            # NUL
    ("x\x1b", "x^["),              # a lone ESC at the end
    ("x\x85y", "x^[Ey"),           # C1 NEL, shown as its 7-bit form
])
def test_stray_controls_are_shown_in_caret_notation(raw: str,
                                                    shown: str) -> None:
    assert sanitize(raw) == shown


def test_nested_escape_cannot_rebuild_a_sequence() -> None:
    result = sanitize("\x1b\x1b[2J[2J")
    assert ESC not in result


@pytest.mark.parametrize("bidi", [
    "\u202a", "\u202b", "\u202c", "\u202d", "\u202e",  # embeddings/overrides
    "\u2066", "\u2067", "\u2068", "\u2069",            # isolates
])
def test_bidi_overrides_and_isolates_are_removed(bidi: str) -> None:
    assert sanitize(f"abc{bidi}def") == "abcdef"


@pytest.mark.parametrize("text", [
    "Привет, мир!",
    "emoji 👋🏽 and 👨‍👩‍👧 family",
    "tab\tseparated",
    "日本語のテキスト",
    "שלום \u200f mark kept",
    "plain ASCII: ~!@#$%^&*()_+{}|:\"<>?[];',./`",
])
def test_printable_text_is_kept(text: str) -> None:
    assert sanitize(text) == text


# --- render ------------------------------------------------------------------


LINES = {
    "message": "bob: hello there",
    "private": "[private] bob: psst",
    "notice": "* bob joined the chat",
    "error": "! no such user: carol; type -users to see who is online",
}


@pytest.mark.parametrize("kind", sorted(LINES))
def test_render_without_colour_is_the_line(kind: str) -> None:
    assert render(LINES[kind], "alice", colour=False) == LINES[kind]


def test_render_without_colour_has_no_escape() -> None:
    for line in LINES.values():
        assert ESC not in render(line + " alice", "alice", colour=False)


def _without_styles(text: str) -> str:
    return _ESCAPE_SEQUENCE_RE.sub("", text)


@pytest.mark.parametrize("kind", sorted(LINES))
def test_render_with_colour_keeps_the_text(kind: str) -> None:
    rendered = render(LINES[kind], "alice", colour=True)
    assert ESC in rendered
    assert _without_styles(rendered) == LINES[kind]
    # Whatever style was set, the line ends back in the normal one.
    assert rendered[rendered.rindex(ESC):].startswith(RESET)


def test_each_kind_has_its_own_colour() -> None:
    styles = {kind: render(line, "alice", colour=True)
              for kind, line in LINES.items()}
    assert styles["notice"].startswith(NOTICE_STYLE)
    assert styles["error"].startswith(ERROR_STYLE)
    assert styles["private"].startswith(PRIVATE_STYLE)
    assert styles["message"].startswith(BOLD + "bob" + RESET)
    assert len({NOTICE_STYLE, ERROR_STYLE, PRIVATE_STYLE,
                MENTION_STYLE, BOLD, HISTORY_STYLE}) == 6


def test_mention_of_my_nick_is_highlighted() -> None:
    rendered = render("bob: hi Alice, how are you?", "alice", colour=True)
    assert MENTION_STYLE + "Alice" + RESET in rendered
    assert _without_styles(rendered) == "bob: hi Alice, how are you?"


def test_mention_in_private_returns_to_private_colour() -> None:
    rendered = render("[private] bob: alice?", "alice", colour=True)
    assert (MENTION_STYLE + "alice" + RESET
            + PRIVATE_STYLE) in rendered


def test_mention_is_a_whole_word_only() -> None:
    rendered = render("bob: malice and alicex", "alice", colour=True)
    assert MENTION_STYLE not in rendered


def test_my_own_nick_in_my_own_message_is_not_highlighted() -> None:
    rendered = render("alice: I am alice", "alice", colour=True)
    assert MENTION_STYLE not in rendered


def test_mention_without_colour_is_plain() -> None:
    assert render("bob: hi alice", "alice", colour=False) == "bob: hi alice"


def test_render_sanitises_before_colouring() -> None:
    rendered = render("bob: \x1b]0;pwned\x07hi \x1b[2Jalice", "alice",
                      colour=True)
    assert "pwned" not in rendered
    assert "\x07" not in rendered
    assert "[2J" not in rendered
    assert _without_styles(rendered) == "bob: hi alice"


def test_render_sanitises_without_colour() -> None:
    assert render("bob: \x1b[2Jboo\x07", "alice", colour=False) == \
        "bob: boo^G"


def test_a_peer_cannot_forge_a_notice_colour() -> None:
    # A nickname cannot start with "*", so "bob: * x" stays a message.
    rendered = render("bob: * fake notice", "alice", colour=True)
    assert rendered.startswith(BOLD)


# --- history ----------------------------------------------------------------


HISTORY = [
    protocol.format_history("14:02", "bob: hi alice, you there?"),
    protocol.format_history("14:03", protocol.format_joined("carol")),
    protocol.format_history_end(),
]


@pytest.mark.parametrize("line", HISTORY)
def test_history_is_dim_with_colour(line: str) -> None:
    rendered = render(line, "alice", colour=True)
    assert rendered == HISTORY_STYLE + line + RESET


@pytest.mark.parametrize("line", HISTORY)
def test_history_without_colour_is_the_line(line: str) -> None:
    assert render(line, "alice", colour=False) == line


def test_a_mention_in_history_is_not_highlighted() -> None:
    rendered = render(HISTORY[0], "alice", colour=True)
    assert MENTION_STYLE not in rendered
    # The same words said now are a mention.
    assert MENTION_STYLE in render("bob: hi alice, you there?", "alice",
                                   colour=True)


def test_only_history_is_dim() -> None:
    for line in (*LINES.values(), protocol.format_no_history(),
                 "bob: * [history 14:02] forged"):
        assert HISTORY_STYLE not in render(line, "alice", colour=True)


def test_history_is_sanitised_too() -> None:
    line = protocol.format_history("14:02", "bob: \x1b]0;pwned\x07hi")
    assert render(line, "alice", colour=True) == (
        HISTORY_STYLE + "* [history 14:02] bob: hi" + RESET)


def test_history_is_not_taken_as_live() -> None:
    state = client.ChatState("alice")
    state.note(protocol.format_partner("bob"))
    replies = state.replies
    for said in (protocol.format_everyone(), protocol.format_shutdown(),
                 protocol.format_welcome("alice"),
                 protocol.format_you_were_kicked("bob")):
        state.note(protocol.format_history("14:02", said))
    assert state.prompt() == "[to bob]> "
    assert state.replies == replies
    assert not state.shut_down and not state.sent_away


# --- colour choice -----------------------------------------------------------


class _FakeTty(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_colour_only_on_a_terminal(monkeypatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setattr(os, "name", "posix")
    assert wants_colour(_FakeTty(True))
    assert not wants_colour(_FakeTty(False))


def test_no_color_and_dumb_terminal_turn_colour_off(monkeypatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setattr(os, "name", "posix")
    monkeypatch.setenv("NO_COLOR", "1")
    assert not wants_colour(_FakeTty(True))
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert not wants_colour(_FakeTty(True))


# --- prompt and partner ------------------------------------------------------


def test_prompt_follows_the_servers_confirmations() -> None:
    state = client.ChatState("alice")
    assert state.prompt() == "[everyone]> "
    state.note(protocol.format_partner("bob"))
    assert state.prompt() == "[to bob]> "
    state.note(protocol.format_no_such_user("carol"))  # a failed -to carol
    assert state.prompt() == "[to bob]> "
    state.note("bob: -to carol")  # a message is not a confirmation
    assert state.prompt() == "[to bob]> "
    state.note(protocol.format_everyone())
    assert state.prompt() == "[everyone]> "


def test_replies_are_counted_for_waiting() -> None:
    state = client.ChatState("alice")
    seen = state.replies
    state.note(protocol.format_joined("bob"))
    assert state.replies == seen
    state.note(protocol.format_error("no such user: x"))
    assert state.replies == seen + 1
    state.wait_for_reply(seen, timeout=0)  # returns at once: reply came


# --- Terminal output without a terminal --------------------------------------


def test_terminal_show_writes_whole_lines() -> None:
    out = io.StringIO()
    terminal = Terminal(interactive=False, colour=False, out=out)
    terminal.show("one")
    terminal.show_lines(["two", "three"])
    assert out.getvalue() == "one\ntwo\nthree\n"


# --- Redrawing the input line ------------------------------------------------


def test_text_width_counts_terminal_columns() -> None:
    assert text_width("abc") == 3
    assert text_width("Привет") == 6
    assert text_width("日本") == 4
    assert text_width("👋") == 2
    assert text_width("e\u0301") == 1  # e + combining acute


def test_input_line_with_cursor_at_the_end() -> None:
    line = InputLine("[everyone]> ", "hello", 5, 80, dumb=False)
    assert line.clear() == "\r\x1b[J"
    assert line.draw() == "[everyone]> hello"


def test_input_line_puts_the_cursor_back_in_the_middle() -> None:
    line = InputLine("[everyone]> ", "hello world", 6, 80, dumb=False)
    assert line.clear() == "\r\x1b[J"
    assert line.draw() == "[everyone]> hello world\r\x1b[18C"


def test_input_line_that_wraps_is_cleared_from_its_first_row() -> None:
    typed = "x" * 20  # 12 + 20 columns: two rows of 20
    line = InputLine("[everyone]> ", typed, 20, 20, dumb=False)
    assert line.clear() == "\x1b[1A\r\x1b[J"
    assert line.draw() == "[everyone]> " + typed
    line = InputLine("[everyone]> ", typed, 2, 20, dumb=False)
    assert line.clear() == "\r\x1b[J"  # the cursor is on the first row
    assert line.draw() == "[everyone]> " + typed + "\x1b[1A\r\x1b[14C"


def test_input_line_filling_its_row_exactly_moves_to_the_next() -> None:
    line = InputLine("[everyone]> ", "x" * 8, 8, 20, dumb=False)
    assert line.draw() == "[everyone]> xxxxxxxx \r"


def test_input_line_on_a_dumb_terminal_uses_no_escapes() -> None:
    line = InputLine("[everyone]> ", "hello world", 6, 80, dumb=True)
    assert ESC not in line.clear() + line.draw()
    assert line.clear() == "\r" + " " * 23 + "\r"
    assert line.draw() == "[everyone]> hello world" + "\b" * 5


def test_input_line_counts_wide_characters() -> None:
    line = InputLine("> ", "日本語", 1, 80, dumb=False)
    assert line.draw() == "> 日本語\r\x1b[4C"


def test_input_line_moves_a_wide_character_that_does_not_fit() -> None:
    # 8 columns: "> " + "abcde" leaves one column, too narrow for "日",
    # which goes to the next row; the cursor after it is at column 2.
    line = InputLine("> ", "abcde日", 6, 8, dumb=False)
    assert line.clear() == "\x1b[1A\r\x1b[J"
    line = InputLine("> ", "abcde日x", 6, 8, dumb=False)
    assert line.draw() == "> abcde日x\r\x1b[2C"  # before the x


@pytest.mark.parametrize("text, columns, position, rows", [
    ("", 10, (0, 0), 1),
    ("abc", 10, (0, 3), 1),
    ("x" * 10, 10, (1, 0), 1),      # fills its row exactly
    ("x" * 11, 10, (1, 1), 2),
    ("x" * 25, 10, (2, 5), 3),
    ("日本語", 5, (1, 2), 2),        # the third one does not fit in row 0
    ("abcd日", 5, (1, 2), 2),        # one column left: too narrow for 日
    ("e\u0301" * 4, 3, (1, 1), 2),  # combining marks take no column
])
def test_screen_position_and_rows(text: str, columns: int, position,
                                  rows: int) -> None:
    assert screen_position(text, columns) == position
    assert screen_rows(text, columns) == rows


# --- Rewriting the line just sent -------------------------------------------


@pytest.mark.parametrize("line, prompt, partner, echo", [
    # A private line waits for the server's copy, "-> alice: sure",
    # which replaces it once it went (Terminal.show_instead_of_typed).
    ("-to alice sure, see you", "[everyone]> ", "", None),
    ("-to alice sure", "[to bob]> ", "bob", None),
    ("-TO  alice   spaced out  ", "[everyone]> ", "", None),
    # -all text reads as typed at the prompt of where it went.
    ("-all the meeting starts", "[to bob]> ", "bob",
     "[everyone]> the meeting starts"),
    ("-all hi", "[everyone]> ", "", "[everyone]> hi"),
    # The password does not stay on the screen, nor its length.
    # It keeps the prompt it was typed at, as every rewritten line does.
    ("-admin secret", "[everyone]> ", "", "[everyone]> -admin ********"),
    ("-admin a much longer pass phrase", "[to bob]> ", "bob",
     "[to bob]> -admin ********"),
    ("-ADMIN pw", "[everyone]> ", "", "[everyone]> -ADMIN ********"),
    # A plain line: the prompt already says where it went...
    ("hello", "[everyone]> ", "", None),
    ("hello", "[to bob]> ", "bob", None),
    # ...unless the partner changed while it was typed (to a partner, the
    # server's copy says where it went).
    ("hello", "[everyone]> ", "bob", None),
    ("hello", "[to bob]> ", "", "[everyone]> hello"),
    # Other commands, and lines that send nothing, stay as typed.
    ("-to bob", "[everyone]> ", "bob", None),
    ("-all", "[to bob]> ", "", None),
    ("-users", "[everyone]> ", "", None),
    ("-help", "[everyone]> ", "", None),
    ("-exit", "[everyone]> ", "", None),
    ("-kick bob flooding", "[everyone]> ", "", None),
    ("down server", "[everyone]> ", "", None),
    ("", "[everyone]> ", "bob", None),
    ("   ", "[everyone]> ", "bob", None),
    # Refused by the server, which says why: stays as typed.
    ("-to", "[everyone]> ", "", None),
    ("-admin", "[everyone]> ", "", None),
    ("-nosuch thing", "[everyone]> ", "", None),
])
def test_echo_for(line: str, prompt: str, partner: str, echo) -> None:
    assert client.echo_for(line, prompt, partner) == echo


def test_prompt_for_sanitises_the_nick() -> None:
    assert client.prompt_for("b\x1b[2Job") == "[to bob]> "


def test_no_rewrite_without_a_terminal() -> None:
    out = io.StringIO()
    terminal = Terminal(interactive=False, colour=False, out=out)
    terminal.rewrite_typed("[to bob]> hi")
    assert out.getvalue() == ""


def _after_enter(monkeypatch,
                 typed: str) -> Tuple[Terminal, io.StringIO]:
    """A Terminal in the state input() leaves it in on a real terminal,
    with readline, once ``typed`` was entered at ``[everyone]> `` (readline
    itself is not used: it needs a terminal)."""
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("COLUMNS", "20")
    monkeypatch.setenv("LINES", "10")
    out = io.StringIO()
    terminal = Terminal(interactive=False, colour=False, out=out)
    terminal._rl_done = ctypes.c_int(1)  # Enter was pressed
    terminal._prompt = "[everyone]> "
    terminal._typed = typed
    return terminal, out


def test_rewrite_goes_up_the_rows_the_typed_line_took(monkeypatch) -> None:
    terminal, out = _after_enter(monkeypatch, "-all " + "x" * 10)  # 27 > 20
    terminal.rewrite_typed("[everyone]> " + "x" * 10)
    assert out.getvalue() == "\x1b[2A\r\x1b[J[everyone]> xxxxxxxxxx\n"
    terminal.rewrite_typed("again")  # only once, for the line just typed
    assert out.getvalue().count("\x1b[J") == 1


def test_no_rewrite_once_a_line_was_printed_below(monkeypatch) -> None:
    # Between Enter and the rewrite, the reader thread printed a line: it
    # went below the typed line, so moving up would erase the wrong rows.
    terminal, out = _after_enter(monkeypatch, "-to bob hi")
    terminal.show("bob: hello")
    terminal.rewrite_typed("[to bob]> hi")
    assert out.getvalue() == "bob: hello\n"


@pytest.mark.parametrize("typed", ["-to bob tab\there", "x" * 300])
def test_no_rewrite_of_what_cannot_be_measured(monkeypatch,
                                               typed: str) -> None:
    # A tab's width depends on where it is; 300 columns take more rows
    # than the screen (10 rows of 20) has.
    terminal, out = _after_enter(monkeypatch, typed)
    terminal.rewrite_typed("anything")
    assert out.getvalue() == ""


# --- The last output before a hard exit -------------------------------------


class _FakeReadline:
    """What Terminal uses of readline while input() waits: the line typed
    so far."""

    def __init__(self, typed: str) -> None:
        self.typed = typed

    def get_line_buffer(self) -> str:
        return self.typed


def _typing(monkeypatch, typed: str) -> Tuple[Terminal, io.StringIO]:
    """A Terminal as it is while input() waits at ``[everyone]> `` with
    ``typed`` typed so far (readline stood in for: it needs a terminal)."""
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("COLUMNS", "80")
    out = io.StringIO()
    terminal = Terminal(interactive=False, colour=False, out=out)
    terminal._readline = _FakeReadline(typed)  # type: ignore[assignment]
    terminal._rl_point = None
    terminal._rl_done = ctypes.c_int(0)  # Enter not pressed
    terminal._prompt = "[everyone]> "
    terminal._reading = True
    terminal._prompt_drawn.set()
    return terminal, out


def test_finish_keeps_the_half_typed_line(monkeypatch) -> None:
    # The server went away mid-line: what was typed is not lost with the
    # prompt, but printed on a line of its own, before the last word.
    terminal, out = _typing(monkeypatch, "half \x1b[2Jtyped")
    terminal.finish("* Could not reconnect: gave up.")
    assert out.getvalue() == ("\r\x1b[J(not sent: half typed)\n"
                              "* Could not reconnect: gave up.\n")


@pytest.mark.parametrize("typed", ["", "   "])
def test_finish_without_typed_text_prints_no_note(monkeypatch,
                                                  typed: str) -> None:
    terminal, out = _typing(monkeypatch, typed)
    terminal.finish(None)
    assert out.getvalue() == "\r\x1b[J"


def test_finish_after_enter_prints_no_note(monkeypatch) -> None:
    # Once Enter is pressed the line is being sent, not half typed.
    terminal, out = _typing(monkeypatch, "sent")
    terminal._rl_done = ctypes.c_int(1)
    terminal.finish("bye")
    assert out.getvalue() == "bye\n"


# --- Output to a pipe nobody reads -------------------------------------------


def test_a_closed_pipe_raises_once_then_output_is_dropped() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # like "| head -1" once head has its line
    with open(write_end, "w") as out:
        terminal = Terminal(interactive=False, colour=False, out=out)
        with pytest.raises(OutputClosed):
            terminal.show("nobody reads this")
        assert terminal.output_closed
        terminal.show("nor this")  # no error: it goes nowhere
        terminal.finish("bye")
        # The file descriptor now leads to the null device, so that the
        # buffered text can be flushed (at exit) without an error.
        out.write("more")
        out.flush()


# --- Connection --------------------------------------------------------------


def test_connection_reads_lines_across_packets() -> None:
    ours, theirs = socket.socketpair()
    conn = client.Connection(ours)
    try:
        theirs.sendall(b"* one\r\nbob: tw")
        theirs.sendall("o \xff\n".encode("utf-8") + b"bad \xff\n")
        theirs.shutdown(socket.SHUT_WR)
        assert conn.read_line() == "* one"
        assert conn.read_line() == "bob: two \xff"
        assert conn.read_line() == "bad \ufffd"
        assert conn.read_line() is None
    finally:
        conn.close()
        theirs.close()


def test_connect_to_a_closed_port_says_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OSError, match="refused"):
        client.connect("127.0.0.1", port)


def test_connect_to_an_unknown_host_says_so(monkeypatch) -> None:
    def no_such_host(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(client.socket, "create_connection", no_such_host)
    with pytest.raises(OSError, match="cannot find host 'nowhere.invalid'"):
        client.connect("nowhere.invalid", 4321)


def test_connect_sets_tcp_nodelay_and_keepalive() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        conn = client.connect(*listener.getsockname())
        try:
            assert conn.sock.getsockopt(socket.IPPROTO_TCP,
                                        socket.TCP_NODELAY)
            # A network that fails silently is found out, too.
            assert conn.sock.getsockopt(socket.SOL_SOCKET,
                                        socket.SO_KEEPALIVE)
        finally:
            conn.close()


# --- Command line ------------------------------------------------------------


def test_help_explains_each_option(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        client.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--host", "--port", "--nick"):
        assert option in text
    assert "-to NICK" in text


def test_defaults() -> None:
    args = client.parse_args([])
    assert (args.host, args.port, args.nick) == (
        protocol.DEFAULT_HOST, protocol.DEFAULT_PORT, None)


def test_bad_port_is_refused(capsys) -> None:
    with pytest.raises(SystemExit):
        client.parse_args(["--port", "70000"])
    assert "port" in capsys.readouterr().err


# --- The resume token --------------------------------------------------------


def _screen() -> Tuple[Terminal, io.StringIO]:
    out = io.StringIO()
    return Terminal(interactive=False, colour=False, out=out), out


TOKEN = "93dacfbdf57e.kVfas5p5kfEtr-ZglxkLSWBG"


def test_the_token_is_kept_and_not_shown() -> None:
    terminal, out = _screen()
    state = client.ChatState("alice")
    assert state.token is None and not state.may_resume()
    client.show_server_line(protocol.format_resume_token(TOKEN), terminal,
                            state)
    assert state.token == TOKEN
    assert state.may_resume()
    assert out.getvalue() == ""


@pytest.mark.parametrize("line", [
    f"bob: * Resume token: {TOKEN} (if your connection drops)",
    f"[private] bob: * Resume token: {TOKEN} (x)",
    protocol.format_history("14:02", f"Resume token: {TOKEN} (x)"),
])
def test_only_the_servers_token_line_is_taken(line: str) -> None:
    terminal, out = _screen()
    state = client.ChatState("alice")
    client.show_server_line(line, terminal, state)
    assert state.token is None
    assert out.getvalue() == line + "\n"


def test_the_commands_hint_is_shown_once() -> None:
    terminal, out = _screen()
    state = client.ChatState("alice")
    for _ in range(2):  # on joining, then again on getting back in
        client.show_server_line(protocol.format_commands_hint(), terminal,
                                state)
    assert out.getvalue() == protocol.format_commands_hint() + "\n"


@pytest.mark.parametrize("last_word", [
    protocol.format_shutdown("maintenance"),
    protocol.format_you_were_kicked("bob", "enough"),
    protocol.format_replaced(),
])
def test_no_resume_once_the_server_ended_the_chat(last_word: str) -> None:
    state = client.ChatState("alice")
    state.token = TOKEN
    state.note(last_word)
    assert not state.may_resume()


def test_a_typed_resume_has_its_token_starred_out() -> None:
    assert client.echo_for(f"-resume {TOKEN}", "[everyone]> ", "") == \
        "[everyone]> -resume ********"
    spec = protocol.COMMANDS_BY_NAME["resume"]
    assert spec.client == protocol.HIDE  # so handle_line forgets it too


def test_a_new_welcome_resets_the_partner_a_welcome_back_does_not() -> None:
    state = client.ChatState("alice")
    state.note(protocol.format_partner("bob"))
    state.note(protocol.format_welcome_back("alice"))
    assert state.prompt() == "[to bob]> "
    assert state.token is None
    state.token = TOKEN
    state.note(protocol.format_welcome_back("alice"))
    assert state.token == TOKEN  # the seat, and its token, are the same
    state.note(protocol.format_welcome("alice"))
    assert state.prompt() == "[everyone]> "
    assert state.token is None  # a new seat: a new token will come


# --- Waiting between tries ---------------------------------------------------


def test_backoff_doubles_up_to_30_s_and_stops_at_the_give_up_time() -> None:
    delays = list(client.backoff_delays())
    assert delays[:7] == [1, 2, 4, 8, 16, 30, 30]
    assert set(delays[5:-1]) == {30}
    assert sum(delays) == client.RECONNECT_GIVE_UP == 300
    assert delays[-1] == 29  # cut short to end at the give-up time


def test_backoff_from_a_short_first_delay() -> None:
    assert list(client.backoff_delays(0.25, 1, 3)) == [0.25, 0.5, 1, 1, 0.25]
    assert list(client.backoff_delays(5, 2, 3)) == [2, 1]
    with pytest.raises(ValueError):
        next(client.backoff_delays(0))


@pytest.mark.parametrize("value, seconds", [
    (None, 1.0), ("0.1", 0.1), ("2", 2.0), ("0", 1.0), ("-1", 1.0),
    ("nan", 1.0), ("inf", 1.0), ("soon", 1.0), ("", 1.0),
])
def test_the_first_delay_may_come_from_the_environment(monkeypatch, value,
                                                       seconds) -> None:
    if value is None:
        monkeypatch.delenv(client.FIRST_DELAY_ENV, raising=False)
    else:
        monkeypatch.setenv(client.FIRST_DELAY_ENV, value)
    assert client.first_delay() == seconds


# --- Getting back in, against a server played over a socket pair ------------


class FakeServerEnd:
    """The server's end of a socket pair: what it says is sent before the
    client reads (its answers do not depend on what the client says), and
    what the client said is read afterwards."""

    def __init__(self, *lines: str, close: bool = False) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.conn = client.Connection(self.ours)
        self.theirs.sendall(b"".join(protocol.encode_line(line)
                                     for line in lines))
        if close:
            self.theirs.shutdown(socket.SHUT_WR)

    def said(self) -> List[str]:
        """The lines the client sent so far."""
        self.theirs.settimeout(0.0)
        data = b""
        try:
            while True:
                chunk = self.theirs.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (BlockingIOError, ConnectionResetError):
            pass  # nothing more for now; or the client closed its end
        return data.decode("utf-8").splitlines()

    def close(self) -> None:
        self.conn.close()
        self.theirs.close()


@pytest.fixture
def ends() -> Callable[..., FakeServerEnd]:
    made: List[FakeServerEnd] = []

    def make(*lines: str, close: bool = False) -> FakeServerEnd:
        made.append(FakeServerEnd(*lines, close=close))
        return made[-1]

    yield make
    for end in made:
        end.close()


def _resuming_state() -> client.ChatState:
    state = client.ChatState("alice")
    state.token = TOKEN
    state.hint_shown = True  # as after joining
    state.note(protocol.format_partner("bob"))
    return state


PROMPT = protocol.format_nick_prompt()


def test_rejoin_takes_the_seat_back(ends) -> None:
    server = ends(PROMPT, protocol.format_welcome_back("alice"),
                  protocol.format_commands_hint(),
                  protocol.format_users(["alice", "bob"], "alice"),
                  protocol.format_missed(1), "bob: while you were away")
    terminal, out = _screen()
    state = _resuming_state()
    client.rejoin(server.conn, terminal, state)
    assert server.said() == [f"-resume {TOKEN}"]
    assert out.getvalue() == protocol.format_welcome_back("alice") + "\n"
    assert state.prompt() == "[to bob]> "  # the seat, partner and all
    # What follows the welcome is left for the reader thread.
    assert server.conn.read_line() == protocol.format_commands_hint()
    assert server.conn.sock.gettimeout() is None


def test_rejoin_joins_again_when_the_seat_is_gone(ends) -> None:
    server = ends(PROMPT, protocol.format_resume_refused(), PROMPT,
                  protocol.format_welcome("alice"))
    terminal, out = _screen()
    state = _resuming_state()
    client.rejoin(server.conn, terminal, state)
    assert server.said() == [f"-resume {TOKEN}", "alice"]
    shown = out.getvalue().splitlines()
    assert "did not keep your seat" in shown[0]
    assert "joining again as alice" in shown[0]
    assert shown[1:] == [protocol.format_welcome("alice")]
    assert state.prompt() == "[everyone]> "  # a new seat: no partner
    assert state.token is None  # the old seat's, which is void
    assert TOKEN not in out.getvalue()


def test_rejoin_gives_up_when_the_nickname_is_refused(ends) -> None:
    server = ends(PROMPT, protocol.format_resume_refused(), PROMPT,
                  protocol.format_nick_taken("alice"), PROMPT)
    terminal, _ = _screen()
    with pytest.raises(client.JoinError, match="'alice' refused: it is"):
        client.rejoin(server.conn, terminal, _resuming_state())


def test_rejoin_on_a_connection_that_closes_may_be_tried_again(ends) -> None:
    server = ends(protocol.format_server_full(5), close=True)
    terminal, out = _screen()
    with pytest.raises(ConnectionError):
        client.rejoin(server.conn, terminal, _resuming_state())
    assert out.getvalue() == ""
    assert server.said() == []


def test_rejoin_with_a_silent_server_times_out(ends, monkeypatch) -> None:
    monkeypatch.setattr(client, "REJOIN_TIMEOUT", 0.05)
    server = ends()
    terminal, _ = _screen()
    with pytest.raises(socket.timeout):
        client.rejoin(server.conn, terminal, _resuming_state())


class Dialer:
    """Plays ``dial()``: each call gives the next of ``outcomes``, a
    connection, or an OSError to raise."""

    def __init__(self, *outcomes) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    def __call__(self) -> client.Connection:
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, OSError):
            raise outcome
        return outcome


def _lost_link(ends) -> client.Link:
    link = client.Link(ends().conn)
    link.lost()
    return link


def test_reconnect_tries_until_it_gets_back_in(ends) -> None:
    link = _lost_link(ends)
    closing = ends(protocol.format_server_full(5), close=True)
    good = ends(PROMPT, protocol.format_welcome_back("alice"))
    dial = Dialer(OSError("cannot connect: refused"), closing.conn,
                  good.conn)
    terminal, out = _screen()
    assert client.reconnect(link, dial, terminal, _resuming_state(),
                            "the server closed the connection",
                            delays=[0, 0, 0, 0])
    assert dial.calls == 3
    assert out.getvalue().splitlines() == [
        "* Connection lost (the server closed the connection);"
        " reconnecting...",
        protocol.format_welcome_back("alice")]
    link.send_line("back")  # through the new connection
    assert good.said() == [f"-resume {TOKEN}", "back"]


def test_reconnect_gives_up_when_the_tries_are_over(ends) -> None:
    dial = Dialer(*(OSError(f"try {n} refused") for n in range(3)))
    terminal, _ = _screen()
    with pytest.raises(client.JoinError, match="gave up after 300 s; the"
                       " last try: try 2 refused"):
        client.reconnect(_lost_link(ends), dial, terminal,
                         _resuming_state(), "reset", delays=[0, 0, 0])
    assert dial.calls == 3


def test_reconnect_gives_up_at_the_deadline(ends, monkeypatch) -> None:
    monkeypatch.setattr(client, "RECONNECT_GIVE_UP", 0)
    dial = Dialer()
    terminal, _ = _screen()
    with pytest.raises(client.JoinError, match="the last try: reset"):
        client.reconnect(_lost_link(ends), dial, terminal,
                         _resuming_state(), "reset", delays=[0, 0])
    assert dial.calls == 0


def test_reconnect_stops_at_a_refused_nickname(ends) -> None:
    refused = ends(PROMPT, protocol.format_resume_refused(), PROMPT,
                   protocol.format_nick_taken("alice"))
    dial = Dialer(refused.conn)
    terminal, _ = _screen()
    with pytest.raises(client.JoinError, match="it is taken"):
        client.reconnect(_lost_link(ends), dial, terminal,
                         _resuming_state(), "reset", delays=[0, 0, 0])
    assert dial.calls == 1


def test_reconnect_stops_when_the_user_leaves(ends) -> None:
    link = _lost_link(ends)
    assert not link.say_goodbye()  # nothing to say it on: the link is down
    dial = Dialer()
    terminal, _ = _screen()
    assert not client.reconnect(link, dial, terminal, _resuming_state(),
                                "reset", delays=[0])
    assert dial.calls == 0


def test_the_user_leaving_while_rejoining_wins(ends) -> None:
    # The seat is taken back just as the user leaves: say goodbye on it.
    link = _lost_link(ends)
    good = ends(PROMPT, protocol.format_welcome_back("alice"))
    terminal, _ = _screen()

    def dial() -> client.Connection:
        link.say_goodbye()  # the main thread, at that very moment
        return good.conn

    assert not client.reconnect(link, dial, terminal, _resuming_state(),
                                "reset", delays=[0])
    assert good.said() == []  # not even tried: the user left first
    link = _lost_link(ends)
    good = ends(PROMPT, protocol.format_welcome_back("alice"))

    def leave_on_welcome(line: str, *args) -> None:
        link.say_goodbye()

    state = _resuming_state()
    state.note = leave_on_welcome  # type: ignore[method-assign]
    assert not client.reconnect(link, Dialer(good.conn), terminal, state,
                                "reset", delays=[0])
    assert good.said() == [f"-resume {TOKEN}", "-exit"]


# --- The link, and typing while it is down -----------------------------------


def test_a_link_that_is_down_refuses_lines(ends) -> None:
    first = ends()
    link = client.Link(first.conn)
    link.send_line("one")
    assert first.said() == ["one"]
    link.lost()
    with pytest.raises(client.NotConnected):
        link.send_line("two")
    second = ends()
    assert link.attempt(second.conn)
    with pytest.raises(client.NotConnected):  # not in the chat yet
        link.send_line("three")
    assert link.rejoined()
    link.send_line("four")
    assert second.said() == ["four"]
    assert link.say_goodbye()
    assert second.said() == ["-exit"]
    assert link.leaving.is_set()
    assert not link.attempt(ends().conn)  # no reconnecting after that


def test_a_line_typed_while_down_is_not_sent_and_the_user_told(ends) -> None:
    link = _lost_link(ends)
    terminal, out = _screen()
    state = client.ChatState("alice")
    for line in ("hello?", "-to bob hi", "-help", ""):
        assert client.handle_line(line, link, terminal, state)
    shown = out.getvalue().splitlines()
    assert shown.count("* " + client.NOT_SENT) == 2
    assert shown[0] == shown[1] == "* " + client.NOT_SENT
    assert len(shown) > 2  # -help is answered all the same
    assert not client.handle_line("-exit", link, terminal, state)


def test_leave_with_the_link_down_does_not_wait(ends) -> None:
    link = _lost_link(ends)
    done = threading.Event()

    def leave() -> None:
        client.leave(link)
        done.set()

    threading.Thread(target=leave, daemon=True).start()
    assert done.wait(client.LEAVE_TIMEOUT / 2)
    assert link.leaving.is_set()


# --- The reader thread's ends ------------------------------------------------


class Exited(Exception):
    """Stands in for os._exit() in exit_now()."""


@pytest.fixture
def exits(monkeypatch) -> List[Tuple[object, ...]]:
    """The (message, status) exit_now() was called with (and "stderr"
    with ``stderr``); it raises Exited instead of ending the test run."""
    calls: List[Tuple[object, ...]] = []

    def exit_now(terminal, message, status, stderr=False) -> None:
        calls.append((message, status, "stderr") if stderr
                     else (message, status))
        raise Exited()

    monkeypatch.setattr(client, "exit_now", exit_now)
    return calls


def _read(link: client.Link, state: client.ChatState, dial=None) -> str:
    """Run the reader thread's loop here, until it ends the program; what
    it showed."""
    terminal, out = _screen()
    with pytest.raises(Exited):
        client.read_from_server(link, terminal, state, dial)
    return out.getvalue()


def test_without_a_token_a_lost_connection_ends_the_program(
        ends, exits) -> None:
    server = ends("bob: hi", close=True)
    assert _read(client.Link(server.conn),
                 client.ChatState("alice")) == "bob: hi\n"
    assert exits == [("Disconnected: the server closed the connection.", 1)]


@pytest.mark.parametrize("last, message, status", [
    # The server's line says it all, and ending the chat on purpose is no
    # error of the client's: status 0, and no "Disconnected" line.
    (protocol.format_shutdown(), None, 0),
    (protocol.format_you_were_kicked("bob"), None, 0),
    (protocol.format_you_were_kicked("bob", "enough"), None, 0),
    (protocol.format_replaced(),
     "Disconnected: the server closed the connection.", 1),
])
def test_no_reconnect_when_the_server_ends_the_chat(
        ends, exits, last: str, message, status: int) -> None:
    server = ends(protocol.format_resume_token(TOKEN), last, close=True)
    dial = Dialer()
    shown = _read(client.Link(server.conn), client.ChatState("alice"), dial)
    assert shown == last + "\n"
    assert exits == [(message, status)]
    assert dial.calls == 0


def test_the_reader_gets_back_in_and_goes_on(ends, exits,
                                             monkeypatch) -> None:
    monkeypatch.setenv(client.FIRST_DELAY_ENV, "0.01")
    first = ends(protocol.format_resume_token(TOKEN), "bob: one",
                 close=True)
    second = ends(PROMPT, protocol.format_welcome_back("alice"),
                  protocol.format_commands_hint(), protocol.format_missed(1),
                  "bob: two", protocol.format_shutdown(), close=True)
    shown = _read(client.Link(first.conn), client.ChatState("alice"),
                  Dialer(second.conn))
    assert shown.splitlines() == [
        "bob: one",
        "* Connection lost (the server closed the connection);"
        " reconnecting...",
        protocol.format_welcome_back("alice"),
        protocol.format_commands_hint(),  # shown once: not seen before
        protocol.format_missed(1),
        "bob: two",
        protocol.format_shutdown()]
    assert exits == [(None, 0)]


def test_the_reader_gives_up_with_the_reason(ends, exits,
                                             monkeypatch) -> None:
    monkeypatch.setattr(client, "RECONNECT_GIVE_UP", 0)
    server = ends(protocol.format_resume_token(TOKEN), close=True)
    _read(client.Link(server.conn), client.ChatState("alice"), Dialer())
    assert exits == [("Could not reconnect: gave up after 0 s; the last"
                      " try: the server closed the connection.", 1)]


def test_the_reader_ends_quietly_when_the_user_leaves(ends) -> None:
    server = ends(protocol.format_resume_token(TOKEN), close=True)
    link = client.Link(server.conn)
    link.say_goodbye()
    terminal, out = _screen()
    client.read_from_server(link, terminal, client.ChatState("alice"),
                            Dialer())
    assert link.ended.is_set()
    assert out.getvalue() == ""


# --- Heard while choosing a nickname -----------------------------------------


@pytest.fixture
def ended(monkeypatch) -> List[Tuple[object, ...]]:
    """As ``exits``, but exit_now() returns: so that it may be called from
    the thread that reads while the user is asked, and the test go on."""
    calls: List[Tuple[object, ...]] = []

    def exit_now(terminal, message, status, stderr=False) -> None:
        calls.append((message, status, "stderr") if stderr
                     else (message, status))

    monkeypatch.setattr(client, "exit_now", exit_now)
    return calls


def _asking_terminal(ask: Callable[[str], object],
                     ) -> Tuple[Terminal, io.StringIO]:
    """A terminal that asks for a nickname, as a real one would, with
    ``ask`` standing in for the user."""
    terminal, out = _screen()
    terminal.interactive = True
    terminal.ask = ask  # type: ignore[method-assign]
    return terminal, out


@pytest.mark.parametrize("last, end", [
    (protocol.format_register_timeout(),
     ("cannot join the chat: the server closed the connection", 1,
      "stderr")),
    (protocol.format_shutdown(), (None, 0)),
])
def test_the_end_of_the_connection_at_the_nickname_prompt_ends_the_program(
        ends, ended, last: str, end) -> None:
    # The server's last line and its closing come while (or just before)
    # the user is asked: they are shown, and the program is ended at
    # once, without waiting for a nickname to be typed.
    server = ends(PROMPT, last, close=True)

    def ask(prompt: str) -> None:
        wait_until(lambda: ended, what="the program to be ended")
        return None  # Ctrl+D, had the program not ended

    terminal, out = _asking_terminal(ask)
    assert client.register(server.conn, terminal, None) is None
    assert ended == [end]
    assert out.getvalue().splitlines() == [PROMPT, last]
    assert server.said() == []


def test_lines_after_the_nickname_go_to_register_in_order(ends) -> None:
    # Once the user has answered, the lines are register()'s again, in
    # order; -help is answered at the prompt, not sent; the lines after
    # the welcome are left on the connection for the chat's reader.
    server = ends(PROMPT)
    server.theirs.settimeout(DEADLINE)
    server.conn.sock.settimeout(DEADLINE)  # fail rather than hang
    said: List[str] = []

    def play() -> None:  # the server: answers each nickname, until alice
        with server.theirs.makefile("rb") as lines:
            while "alice" not in said:
                said.append(lines.readline().decode().rstrip("\n"))
                replies = ([protocol.format_welcome("alice"),
                            protocol.format_commands_hint()]
                           if said[-1] == "alice" else
                           [protocol.format_nick_taken(said[-1]), PROMPT])
                server.theirs.sendall(b"".join(
                    protocol.encode_line(line) for line in replies))

    player = threading.Thread(target=play, daemon=True)
    player.start()
    answers = ["bob", "-help", "alice"]
    terminal, out = _asking_terminal(lambda prompt: answers.pop(0))
    assert client.register(server.conn, terminal, None) == "alice"
    player.join(DEADLINE)
    assert said == ["bob", "alice"]
    assert answers == []
    assert out.getvalue().splitlines() == [
        PROMPT, protocol.format_nick_taken("bob"), PROMPT,
        *client.help_lines(), "* " + client.NICK_FIRST,
        protocol.format_welcome("alice")]
    left = server.conn.take_received() or [server.conn.read_line()]
    assert left == [protocol.format_commands_hint()]


# --- Comforts: completion, ignoring, the bell, timestamps --------------------


def test_the_roster_follows_the_servers_lines() -> None:
    roster = Roster()
    roster.note(protocol.format_users(["alice", "bob", "Захар"], "alice",
                                      ["bob"], 60, [], ["Захар"]))
    assert sorted(roster.nicks()) == ["alice", "bob", "Захар"]
    roster.note(protocol.format_joined("carol"))
    roster.note(protocol.format_left("bob"))
    roster.note(protocol.format_nick_changed("carol", "Carola"))
    roster.note(protocol.format_kicked("alice", "root", "spam"))
    roster.note(protocol.format_joined_many(["d1", "d2"]))
    roster.note(protocol.format_left_many(["d1"]))
    assert sorted(roster.nicks()) == ["Carola", "d2", "Захар"]
    # A message's text never changes the roster, whatever it says.
    roster.note("eve: * mallory joined the chat")
    assert "mallory" not in roster.nicks()


def test_completion_of_flags_at_the_start_and_nicknames_elsewhere() -> None:
    roster = Roster()
    roster.note(protocol.format_users(["alice", "Bob", "Захар", "bobby"],
                                      "alice"))
    at_start = [True]
    completer = Completer(roster, lambda: at_start[0], ["-time"])

    def all_of(text: str) -> List[str]:
        found, index = [], 0
        while True:
            word = completer.complete(text, index)
            if word is None:
                return found
            found.append(word)
            index += 1

    assert all_of("-us") == ["-users "]
    assert all_of("-WH") == ["-whois "]          # flags ignore case
    assert all_of("-ti") == ["-time "]           # the client's own
    assert all_of("-u") == ["-unban ", "-unignore ", "-unmute ", "-users "]
    assert all_of("bo") == ["Bob ", "bobby "]    # nicknames ignore case
    assert all_of("зах") == ["Захар "]           # Unicode too
    at_start[0] = False
    assert all_of("ЗА") == ["Захар "]
    assert all_of("-us") == []                    # a flag only comes first
    assert all_of("x") == []


def test_lines_of_an_ignored_user_are_not_shown() -> None:
    terminal, out = _screen()
    state = client.ChatState("alice")
    client.note_ignore(protocol.parse_command("-ignore BOB"), state)
    for line in ("bob: hi", "[private] bob: psst", "carol: hi"):
        client.show_server_line(line, terminal, state)
    assert out.getvalue() == "carol: hi\n"
    client.note_ignore(protocol.parse_command("-unignore bob"), state)
    client.show_server_line("bob: back", terminal, state)
    assert out.getvalue() == "carol: hi\nbob: back\n"


@pytest.mark.parametrize("bell, line, rings", [
    ("pm", "[private] bob: psst", True),
    ("pm", "bob: hi alice", False),
    ("mention", "bob: hi Alice!", True),
    ("mention", "bob: hi alicea", False),
    ("mention", "[private] bob: psst", True),
    ("all", "bob: anything", True),
    ("off", "[private] bob: psst", False),
    ("all", "alice: my own line", False),
    ("all", "* bob joined the chat", False),
])
def test_when_the_bell_rings(bell: str, line: str, rings: bool) -> None:
    state = client.ChatState("alice", bell=bell)
    assert client.rings_bell(protocol.parse_server_line(line),
                             state) is rings


def test_no_bell_byte_when_the_output_is_not_a_terminal() -> None:
    terminal, out = _screen()
    client.show_server_line("[private] bob: psst", terminal,
                            client.ChatState("alice"))
    assert "\a" not in out.getvalue()


def test_our_own_nickname_change_is_noted() -> None:
    state = client.ChatState("alice")
    state.partner = "bob"
    state.note(protocol.format_you_are_now("Alice"))
    assert state.nick == "Alice"
    state.note(protocol.format_nick_changed("BOB", "robert"))
    assert state.current_partner() == "robert"


def test_completion_is_not_fooled_by_look_alike_folding() -> None:
    roster = Roster()
    roster.note(protocol.format_users(["arnold", "Bernard", "vvera"], "x"))
    completer = Completer(roster, lambda: False)
    assert completer.matches("ar", False) == ["arnold "]
    assert completer.matches("Ber", False) == ["Bernard "]
    assert completer.matches("v", False) == ["vvera "]
