"""The client's screen: what the chat shows, and what the user types.

This module owns the terminal. ``client.py`` shows every chat line, and
reads every typed line, through one :class:`Terminal`, and never writes an
escape sequence itself (only ``--help`` and its messages on stderr bypass
the Terminal). In return this module promises:

* nothing a peer sends can drive the terminal: :func:`sanitize` removes
  escape sequences and bidirectional overrides and shows any other control
  character in caret notation (``^G``); :func:`render`, through which every
  line from the server is shown, sanitises first;
* lines printed from any thread appear above the prompt, and the prompt
  and the user's half-typed text are drawn again below them, with the
  cursor where it was (with readline; without it, on a new prompt line),
  so typing is never mangled;
* colour only where it is wanted (:func:`wants_colour`: on a terminal,
  without ``NO_COLOR``, not with ``TERM=dumb`` or the classic Windows
  console);
* the terminal's settings are put back as they were found, even before a
  hard exit (:meth:`Terminal.finish`), and what was half typed at the
  prompt then stays on the screen, ``(not sent: ...)``;
* when nobody reads the output any more (``client.py | head -1``), the
  write that finds out raises :class:`OutputClosed`, once; from then on
  output goes quietly to the null device.

Public names:

* :class:`Terminal`: prints lines (``show``, ``show_lines``, ``finish``),
  reads them (``read_line``, ``ask``), rewrites the line just typed
  (``rewrite_typed``) and keeps a password out of the history
  (``forget_last_line``);
* :class:`OutputClosed`, raised when nobody reads the output;
* :func:`sanitize`, :func:`render`, :func:`is_history`,
  :func:`local_notice` and :func:`wants_colour`, and the styles
  ``RESET``, ``BOLD``, ``NOTICE_STYLE``, ``ERROR_STYLE``,
  ``PRIVATE_STYLE``, ``MENTION_STYLE`` and ``HISTORY_STYLE``;
* the screen arithmetic: :func:`char_width`, :func:`text_width`,
  :func:`screen_position`, :func:`screen_rows`, and :class:`InputLine`
  (the prompt and the typed text as on the screen, wrapped: how to clear
  it and draw it again).

Names starting with ``_`` are private: the readline glue (which reads GNU
readline's ``rl_point`` and ``rl_done`` through ctypes) and the regular
expressions. Standard library only: ``readline``, ``ctypes`` and
``termios`` are used where they exist; without them the screen is only
plainer.
"""

from __future__ import annotations

import locale
import os
import re
import shutil
import sys
import threading
import unicodedata
from types import ModuleType
from typing import Callable, List, Optional, Sequence, TextIO, Tuple

import protocol

try:  # used to find where readline's cursor is; missing on a few systems
    import ctypes
except ImportError:
    ctypes = None  # type: ignore[assignment]

try:  # Unix only; used to put the terminal back before a hard exit.
    import termios
except ImportError:  # Windows
    termios = None  # type: ignore[assignment]


# --- Making received text safe to show ---------------------------------------
#
# A terminal obeys escape sequences found in the text it prints: "ESC [ 2 J"
# clears the screen, "ESC ] 0 ; title BEL" sets the window title, BEL rings
# the bell, a bare carriage return lets a line overwrite itself. Anything a
# peer sends must therefore be cleaned before it reaches our stdout.

_ESCAPE_SEQUENCE_RE = re.compile(
    r"""
      (?: \x1b\[ | \x9b ) [\x30-\x3f]* [\x20-\x2f]* [\x40-\x7e]
        # CSI: cursor moves, clearing, colours ("ESC [ 2 J")
    | (?: \x1b[\]PX^_] | [\x90\x98\x9d\x9e\x9f] ) [^\x07\x1b\x9c]*
      (?: \x07 | \x1b\\ | \x9c )?
        # OSC, DCS, SOS, PM, APC: a string up to its terminator
        # ("ESC ] 0 ; title BEL" sets the window title)
    | \x1b [\x20-\x2f]* [\x30-\x7e]
        # any other escape sequence ("ESC c" resets the terminal)
    """,
    re.VERBOSE)

# C0 controls but tab, DEL, and the C1 controls (U+0080-U+009F).
_CONTROL_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")

# Bidirectional embeddings, overrides and isolates: one of these can make
# the rest of the line display in a different order than it was written.
# (The marks U+200E, U+200F and U+061C only affect their neighbours and
# have real uses in right-to-left text, so they are kept.)
_BIDI_RE = re.compile("[\u202a-\u202e\u2066-\u2069]")


def _show_control(match: "re.Match[str]") -> str:
    """Caret notation for one control character, as ``cat -v`` shows it:
    BEL is ``^G``, ESC ``^[``, DEL ``^?``; a C1 control is the two-character
    form it abbreviates, so U+009B (CSI) is ``^[[``."""
    code = ord(match.group())
    if code == 0x7F:
        return "^?"
    if code < 0x20:
        return "^" + chr(code + 0x40)
    return "^[" + chr(code - 0x40)


def sanitize(text: str) -> str:
    """Make text from the network harmless to print on a terminal.

    Whole escape sequences (CSI, OSC and the like) are removed; any other
    control character is shown in caret notation (``^G``); bidirectional
    overrides and isolates are removed. Tabs and every printable character
    of any script (Cyrillic, emoji, ...) are kept as they are.
    """
    text = _ESCAPE_SEQUENCE_RE.sub("", text)
    text = _CONTROL_RE.sub(_show_control, text)
    return _BIDI_RE.sub("", text)


# --- Rendering lines, with or without colour ---------------------------------

RESET = "\x1b[0m"
BOLD = "\x1b[1m"
NOTICE_STYLE = "\x1b[36m"        # cyan: the server speaking
ERROR_STYLE = "\x1b[1;31m"       # bold red: something went wrong
PRIVATE_STYLE = "\x1b[35m"       # magenta: for your eyes only
MENTION_STYLE = "\x1b[1;33;4m"   # bold yellow underlined: your nickname
HISTORY_STYLE = "\x1b[2m"        # dim: said before you came, not live


def _mention_pattern(my_nick: str) -> "re.Pattern[str]":
    return re.compile(r"(?<!\w)" + re.escape(my_nick) + r"(?!\w)",
                      re.IGNORECASE)


def mentions(text: str, my_nick: str) -> bool:
    """Whether ``text`` names ``my_nick`` as a whole word."""
    return bool(my_nick) and bool(_mention_pattern(my_nick).search(text))


def _highlight_mentions(text: str, my_nick: str, base: str) -> str:
    """Highlight ``my_nick`` as a whole word in ``text``; ``base`` is the
    style to return to after each highlight."""
    if not my_nick:
        return text
    return _mention_pattern(my_nick).sub(
        lambda m: MENTION_STYLE + m.group() + RESET + base, text)


def is_history(line: str) -> bool:
    """True for a line the server replays from its history (``* [history
    14:02] alice: hello``) and for the line that ends a replay."""
    return (protocol.history_line(line) is not None
            or line == protocol.format_history_end())


def render(line: str, my_nick: str, colour: bool) -> str:
    """The text to print for one line from the server.

    The line is sanitised first. With ``colour``, notices, errors and
    private messages each get their own colour, the sender of a public
    message is bold, and ``my_nick`` is highlighted where someone else
    mentions it. History (:func:`is_history`) is dim, all of it: it was
    said before, so a mention in it is old news. Without colour the
    sanitised line is returned as it is.
    """
    text = sanitize(line)
    if not colour:
        return text
    if is_history(text):
        return HISTORY_STYLE + text + RESET
    parsed = protocol.parse_server_line(text)
    if parsed.kind == "notice":
        return NOTICE_STYLE + text + RESET
    if parsed.kind == "error":
        return ERROR_STYLE + text + RESET
    if parsed.kind == "sent" or (parsed.kind == "private"
                                 and parsed.text.startswith(protocol.NOTICE)):
        # Our own private line, or a private action: one style throughout.
        return PRIVATE_STYLE + text + RESET
    from_me = protocol.nick_key(parsed.nick) == protocol.nick_key(my_nick)
    mention_nick = "" if from_me else my_nick
    if parsed.kind == "private":
        body = _highlight_mentions(parsed.text, mention_nick, PRIVATE_STYLE)
        return (PRIVATE_STYLE + protocol.PRIVATE + parsed.nick + ": " + body
                + RESET)
    body = _highlight_mentions(parsed.text, mention_nick, "")
    return BOLD + parsed.nick + RESET + ": " + body


def local_notice(text: str) -> str:
    """A line the client itself shows, in the server's notice format so it
    is rendered (and coloured) like one."""
    return protocol.format_notice(text)


def wants_colour(stream: TextIO) -> bool:
    """Colour only on a terminal, and not when the user asked for none
    (https://no-color.org) or the terminal cannot show it."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    if os.name == "nt":  # the classic Windows console prints ESC literally
        return False
    return stream.isatty()


# --- The screen --------------------------------------------------------------


def _is_libedit(readline: ModuleType) -> bool:
    """True for macOS's stand-in for GNU readline, which differs a bit."""
    return "libedit" in (readline.__doc__ or "")


def _load_readline() -> Optional[ModuleType]:
    """The readline module, set up for a chat; None where it is missing."""
    try:
        import readline
    except ImportError:  # Windows: input() still works, just plainer
        return None
    if not _is_libedit(readline):
        # With bracketed paste on, readline switches the terminal into a
        # paste mode while it reads; if the server goes down mid-line we
        # exit without readline's clean-up, which would leave it on.
        readline.parse_and_bind("set enable-bracketed-paste off")
    return readline


def _readline_variable(readline: Optional[ModuleType],
                       name: str) -> Optional[ctypes.c_int]:
    """One of GNU readline's int variables, such as ``rl_point``.

    The readline module does not tell where the cursor is in the line
    (``rl_point``) or whether Enter was just pressed (``rl_done``), but the
    C library keeps both in variables, which ctypes can read. None if they
    cannot be found: redrawing then works a little less well.
    """
    if readline is None or ctypes is None:
        return None
    try:
        return ctypes.c_int.in_dll(ctypes.CDLL(readline.__file__), name)
    except (AttributeError, OSError, ValueError):
        return None


def _readline_cursor(rl_point: Optional[ctypes.c_int], typed: str) -> int:
    """How many characters of ``typed`` are left of the cursor."""
    if rl_point is None:
        return len(typed)
    # rl_point counts bytes of the line as readline holds it, encoded.
    encoding = locale.getpreferredencoding(False)
    encoded = typed.encode(encoding, "surrogateescape")
    before = encoded[:rl_point.value].decode(encoding, "surrogateescape")
    return min(len(before), len(typed))


def char_width(char: str) -> int:
    """Columns one character takes on a terminal: wide characters (Chinese,
    emoji, ...) take two, combining marks and invisible ones none."""
    if unicodedata.combining(char) or unicodedata.category(char) == "Cf":
        return 0
    return 2 if unicodedata.east_asian_width(char) in "WF" else 1


def text_width(text: str) -> int:
    """Columns ``text`` takes on a terminal (see :func:`char_width`)."""
    return sum(char_width(char) for char in text)


def screen_position(text: str, columns: int) -> Tuple[int, int]:
    """Where the cursor is, as (row, column) counted from 0, after ``text``
    is printed from the start of a row on a terminal ``columns`` wide.

    Text wraps at the right edge, and a wide character that does not fit in
    what is left of a row goes whole to the next one (terminals and readline
    both do that). A row filled exactly counts as ending at the start of
    the next row: readline puts its cursor there.
    """
    columns = max(columns, 1)
    row = column = 0
    for char in text:
        width = char_width(char)
        if column + width > columns:  # does not fit: to the next row
            row, column = row + 1, 0
        column += width
        if column >= columns:
            row, column = row + 1, 0
    return row, column


def screen_rows(text: str, columns: int) -> int:
    """How many rows ``text`` takes when printed from the start of a row on
    a terminal ``columns`` wide (at least one)."""
    row, column = screen_position(text, columns)
    return max(row + (1 if column else 0), 1)


#: Columns a wrapped line's continuation rows are indented by, so that no
#: row of a long line can pass for a line of its own (a fake server line).
WRAP_INDENT = 4
# A colour sequence of render(): it takes no columns.
_SGR_RE = re.compile("\x1b\\[[0-9;]*m")


def wrap(text: str, columns: int, indent: int = WRAP_INDENT) -> str:
    """``text`` cut into rows of at most ``columns`` columns, every row
    after the first indented by ``indent`` spaces (a hanging indent).
    Colour sequences take no room; a wide character that does not fit
    goes whole to the next row. Rows are joined with newlines."""
    if columns <= indent + 1:
        return text
    rows: List[str] = []
    row: List[str] = []
    column = 0
    position = 0
    while position < len(text):
        sgr = _SGR_RE.match(text, position)
        if sgr:
            row.append(sgr.group())
            position = sgr.end()
            continue
        char = text[position]
        width = char_width(char)
        if column + width > columns:
            rows.append("".join(row))
            row, column = [" " * indent], indent
        row.append(char)
        column += width
        position += 1
    rows.append("".join(row))
    return "\n".join(rows)


class InputLine:
    """The prompt and the text being typed after it, as on the screen; it
    may wrap onto several screen rows. Knows how to clear it and how to
    draw it again with the cursor where it was.

    ``end`` and ``cursor`` are widths in columns from the start of the
    prompt; the escape sequences work with (row, column) positions, which
    also take wrapping into account (see :func:`screen_position`).
    """

    def __init__(self, prompt: str, typed: str, cursor: int, columns: int,
                 dumb: bool) -> None:
        self.text = prompt + typed
        self.typed = typed
        self.columns = max(columns, 1)
        self.dumb = dumb  # a terminal without cursor movement
        self.end = text_width(self.text)
        self.cursor = text_width(prompt + typed[:cursor])
        self._end_at = screen_position(self.text, self.columns)
        self._cursor_at = screen_position(prompt + typed[:cursor],
                                          self.columns)

    def clear(self) -> str:
        """Blank the input and put the cursor where it started."""
        if self.dumb:  # overwrite with spaces; one row is all we can do
            return "\r" + " " * min(self.end, self.columns - 1) + "\r"
        # Up to the row where the prompt starts, then erase to the end of
        # the screen.
        return self._move(self._cursor_at, (0, 0)) + "\x1b[J"

    def draw(self) -> str:
        """Draw the prompt and the typed text; put the cursor back."""
        if self.dumb:
            return self.text + "\b" * (self.end - self.cursor)
        wrap = ""
        if self.end and self._end_at[1] == 0:
            # The text fills its last row exactly: the terminal holds the
            # cursor at that row's end; a space and a carriage return put
            # it at the start of the next row, as readline expects.
            wrap = " \r"
        return self.text + wrap + self._move(self._end_at, self._cursor_at)

    @staticmethod
    def _move(start: Tuple[int, int], to: Tuple[int, int]) -> str:
        """Escape sequences moving the cursor between two (row, column)
        positions of the input."""
        if start == to:
            return ""
        rows_up = start[0] - to[0]
        return ((f"\x1b[{rows_up}A" if rows_up > 0 else "") + "\r"
                + (f"\x1b[{to[1]}C" if to[1] else ""))


def _unsent_note(typed: str) -> str:
    """``typed``, half-typed text left at the prompt when the program ends,
    as a line of its own to print so that it is not lost ("" for none).
    Sanitised: it may hold a control character typed with Ctrl+V."""
    if not typed.strip():
        return ""
    return f"(not sent: {sanitize(typed)})\n"


class OutputClosed(Exception):
    """Nobody reads our output any more: it is a pipe whose reader has
    ended (``client.py | head -1``, once head has its line)."""


class Terminal:
    """Owns the screen: prints lines (from any thread) above the prompt,
    and reads what the user types.

    While the main thread waits in ``input()``, the prompt and the user's
    half-typed line are on the last screen line. To print a message then,
    we clear that line, print the message, and draw the prompt and the
    typed text again, so typing is never mangled. A lock keeps two threads
    from writing at once.

    If standard output is a pipe whose reader has gone (``client.py | head
    -1``), the write that finds out raises :class:`OutputClosed`; from then
    on output goes to the null device, and ``output_closed`` is True.
    """

    #: Longest wait for readline to finish drawing the prompt.
    PROMPT_DRAW_TIMEOUT = 0.2

    def __init__(self, interactive: bool, colour: bool,
                 out: Optional[TextIO] = None) -> None:
        #: stdin is a terminal: show prompts and edit lines.
        self.interactive = interactive
        self.colour = colour
        self._out = sys.stdout if out is None else out
        self._lock = threading.Lock()
        self._prompt = ""          # what input() is showing
        self._reading = False      # True while the main thread is in input()
        # For rewrite_typed(): the line input() returned last, if it may be
        # rewritten, and how many lines show() has printed below the input
        # line since input() started (once Enter is pressed, show() prints
        # below it).
        self._typed: Optional[str] = None
        self._printed_below = 0
        self.output_closed = False
        # input() uses readline only when both ends are a terminal.
        self._readline = (_load_readline()
                          if interactive and self._out.isatty() else None)
        self._rl_point = _readline_variable(self._readline, "rl_point")
        self._rl_done = _readline_variable(self._readline, "rl_done")
        self._saved_mode = self._save_mode()
        self._dumb = os.environ.get("TERM") == "dumb"
        try:
            self._wraps = self._out.isatty()
        except (AttributeError, ValueError):
            self._wraps = False
        # readline draws the prompt in several writes, which must not be
        # mixed with ours. GNU readline calls a "pre-input hook" once the
        # prompt is on the screen; it sets this event, and show() waits for
        # it. (libedit, on macOS, may not call the hook: there, and without
        # readline, we do without and treat the prompt as drawn at once.)
        self._prompt_drawn = threading.Event()
        self._hooked = (self._readline is not None
                        and hasattr(self._readline, "set_pre_input_hook")
                        and not _is_libedit(self._readline))
        if self._hooked:
            self._readline.set_pre_input_hook(self._prompt_drawn.set)

    # -- Output

    def show(self, text: str) -> None:
        """Print one line of text (already rendered) above the prompt; on
        a terminal, a line too long for it wraps with a hanging indent
        (:func:`wrap`)."""
        if self._wraps:
            text = wrap(text, shutil.get_terminal_size().columns)
        with self._lock:
            if not self._prompt_on_screen():
                self._printed_below += 1
                self._write(text + "\n")
            elif self._readline is None:
                # Without readline we cannot see what was typed so far (the
                # terminal driver holds it), so just start a new prompt line.
                self._write("\n" + text + "\n" + self._prompt)
            else:
                line = self._input_line()
                self._write(line.clear() + text + "\n" + line.draw())

    def show_lines(self, lines: Sequence[str]) -> None:
        for line in lines:
            self.show(line)

    def show_instead_of_typed(self, text: str) -> None:
        """Show ``text`` in place of the line just typed, if that can be
        done (see :meth:`rewrite_typed`); otherwise as a new line. For a
        server's answer that says better than the typed line what it
        did: ``-> bob: hi`` for ``-to bob hi``."""
        with self._lock:
            if self._rewrite(text):
                return
        self.show(text)

    def bell(self) -> None:
        """Ring the terminal's bell (BEL), only if the output is a
        terminal: in a pipe or a file it would be a stray byte."""
        with self._lock:
            if self._out.isatty():
                self._write("\a")

    def set_completer(self, complete: Callable[[str, int], Optional[str]]
                      ) -> None:
        """Complete words with Tab, by ``complete(text, index)`` (see
        ``completion.Completer``); nothing without readline."""
        readline = self._readline
        if readline is None:
            return
        readline.set_completer(complete)
        # A word is what lies between spaces: nicknames may hold "-" and
        # ".", which readline's default delimiters would split at.
        readline.set_completer_delims(" \t")
        if _is_libedit(readline):
            readline.parse_and_bind("bind ^I rl_complete")
        else:
            readline.parse_and_bind("tab: complete")

    def completing_line_start(self) -> bool:
        """While completing: whether the word starts the line."""
        readline = self._readline
        return readline is None or readline.get_begidx() == 0

    def finish(self, text: Optional[str]) -> None:
        """Last output before a hard exit: clear the prompt line, print
        ``text`` (if any) and put the terminal back as we found it.

        What the user had typed at the prompt, and not sent yet, is kept:
        it is printed on a line of its own, ``(not sent: ...)``, before
        ``text``; the user may want to send it again somewhere. (Only with
        readline: without it, the terminal driver holds what was typed.)
        """
        with self._lock:
            try:
                if self._prompt_on_screen() and self._readline is not None:
                    line = self._input_line()
                    self._write(line.clear() + _unsent_note(line.typed))
                if text:
                    self._write(text + "\n")
            except OutputClosed:
                pass  # nobody would see it anyway
            self._reading = False
            self._restore_mode()

    def _prompt_on_screen(self) -> bool:
        """True when the prompt (and what is typed after it) is on the
        screen's last line, where the cursor is. Call with the lock held."""
        if not self._reading:
            return False
        self._wait_for_prompt()
        # Once Enter is pressed the cursor has moved to the next line, even
        # if input() has not returned yet.
        return not (self._rl_done is not None and self._rl_done.value)

    def _input_line(self) -> InputLine:
        """The prompt line as readline has it now."""
        typed = self._readline.get_line_buffer()
        return InputLine(self._prompt, typed,
                         _readline_cursor(self._rl_point, typed),
                         shutil.get_terminal_size().columns, self._dumb)

    def _wait_for_prompt(self) -> None:
        """Wait until readline has drawn the prompt. If the hook did not
        run (a Ctrl+C at that very moment can stop it), go on after a
        short while rather than hang."""
        if not self._prompt_drawn.wait(self.PROMPT_DRAW_TIMEOUT):
            self._prompt_drawn.set()

    def _write(self, text: str) -> None:
        if self.output_closed:
            return
        try:
            try:
                self._out.write(text)
            except UnicodeEncodeError:
                # A locale that cannot show every character (an emoji in
                # Latin-1): show what it can, a "?" for the rest.
                encoding = getattr(self._out, "encoding", None) or "ascii"
                self._out.write(text.encode(encoding, "replace")
                                .decode(encoding, "replace"))
            self._out.flush()
        except BrokenPipeError:
            self._output_gone()
            raise OutputClosed() from None

    def _output_gone(self) -> None:
        """Our output is a pipe nobody reads any more. As the Python
        documentation advises (for SIGPIPE), point the file descriptor at
        the null device, so that what is still buffered, and the flush at
        exit, go there instead of raising BrokenPipeError again."""
        self.output_closed = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._out.fileno())
            os.close(devnull)
        except (OSError, ValueError):  # no file descriptor (tests)
            pass

    def rewrite_typed(self, text: str) -> None:
        """Show ``text`` in place of the line just typed (the prompt and
        what the user typed after it, as Enter left them on the screen).

        Enter leaves the cursor at the start of the row below the typed
        line, which may have wrapped onto several rows: move up that many
        rows, erase from there to the end of the screen, and print ``text``
        instead. This is done only where it is safe; elsewhere the typed
        line simply stays:

        * with readline on a terminal that can move the cursor, for the
          line input() has just returned (not after another read);
        * if nothing was printed since Enter: that would have gone below
          the typed line (see show()), and moving up would miss it;
        * if the typed line is on the screen whole, and without tabs or
          control characters, whose width on the screen we cannot be sure
          of (the server refuses control characters anyway).
        """
        with self._lock:
            self._rewrite(text)

    def _rewrite(self, text: str) -> bool:
        """:meth:`rewrite_typed`, with the lock held; True if done."""
        typed, self._typed = self._typed, None
        # (``text`` is printed after the erase, so its width does not
        # matter; it may be styled.)
        if (typed is None or self._printed_below or self._dumb
                or self._rl_done is None
                or _CONTROL_RE.search(typed) or "\t" in typed):
            return False
        size = shutil.get_terminal_size()
        rows = screen_rows(self._prompt + typed, size.columns)
        if rows >= size.lines:
            return False  # its first row has scrolled off the screen
        self._write(f"\x1b[{rows}A\r\x1b[J{text}\n")
        return True

    # -- Input

    def read_line(self, prompt: str) -> Optional[str]:
        """One line typed by the user (without its newline), or None at
        end of input (Ctrl+D, or the end of piped input). Raises
        KeyboardInterrupt on Ctrl+C."""
        if not self.interactive:
            line = sys.stdin.readline()  # no prompt when input is piped
            return line.rstrip("\r\n") if line else None
        with self._lock:
            self._prompt = prompt
            self._reading = True
            self._typed = None
            self._printed_below = 0
            if self._hooked:
                self._prompt_drawn.clear()  # readline sets it when drawn
            else:
                self._prompt_drawn.set()
        ended_by_key = False
        line = None
        try:
            line = input(prompt)
            return line
        except EOFError:  # Ctrl+D
            ended_by_key = True
            return None
        except KeyboardInterrupt:  # Ctrl+C
            ended_by_key = True
            raise
        except BrokenPipeError:  # input() writes the prompt to stdout
            with self._lock:
                self._output_gone()
            raise OutputClosed() from None
        finally:
            with self._lock:
                self._reading = False
                if self._readline is not None:
                    self._typed = line  # rewrite_typed() may replace it
                if ended_by_key:
                    # The cursor is still on the prompt line (Enter would
                    # have moved it on): start a new line for what follows.
                    self._write("\n")

    def ask(self, prompt: str) -> Optional[str]:
        """Ask a question: the answer typed, stripped, or None at end of
        input; as :meth:`read_line` (lines shown meanwhile go above it)."""
        line = self.read_line(prompt)
        return None if line is None else line.strip()

    def forget_last_line(self) -> None:
        """Drop the last typed line from the history (it held a password)."""
        if self._readline is not None:
            length = self._readline.get_current_history_length()
            if length:
                self._readline.remove_history_item(length - 1)

    # -- Terminal mode

    def _save_mode(self) -> Optional[list]:
        """The terminal's settings now, before readline changes them."""
        if termios is None or not self.interactive:
            return None
        try:
            return termios.tcgetattr(sys.stdin.fileno())
        except (termios.error, OSError, ValueError):
            return None

    def _restore_mode(self) -> None:
        """Put back the settings saved at start (echo on, line mode), which
        readline would have restored itself had input() returned."""
        if self._saved_mode is not None:
            try:
                termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN,
                                  self._saved_mode)
            except (termios.error, OSError, ValueError):
                pass
