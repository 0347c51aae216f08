"""The chat's wire protocol, with no sockets in it.

Everything both ends must agree on lives here, so that ``server.py`` and
``client.py`` only move bytes and keep state:

* the limits and defaults, as named constants;
* framing: :class:`LineFramer` turns a byte stream into bounded lines;
* :func:`decode_line`: bytes to text, refusing what may not travel;
* nickname rules: :func:`nick_error` and :func:`nick_key`;
* the command table, :data:`COMMANDS`: one row per command, from which the
  parser (:func:`parse_command`), ``-help``, the hint shown on joining and
  the client's handling of what you type are all derived;
* the text of every line the server sends (the ``format_*`` functions) and
  :func:`parse_server_line`, which lets a client tell those lines apart.

What only the server decides (rate limits, queue sizes, how many users) is
in ``config.py``; sockets and TLS are in ``transport.py``.

The protocol is UTF-8 text, one message per line, ending in ``\\n``
(``\\r\\n`` is accepted), so ``nc 127.0.0.1 4321`` is a usable client.
A notice starts with ``* ``, an error with ``! ``, a private message with
``[private] ``, markers no nickname can start with; a public message is
``NICK: text``.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import (Dict, Iterable, List, NamedTuple, Optional, Sequence,
                    Tuple, Union)

# --- Limits and defaults (each one is documented in README.md) ---------------

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4321
ENCODING = "utf-8"

#: Longest line a client may send, in bytes, without the newline.
MAX_LINE_BYTES = 4096
#: Bytes of one endless line the server discards before it gives up on the
#: connection: a peer sending megabytes with no newline is not chatting.
MAX_DISCARD_BYTES = 1024 * 1024
#: Nickname length, in characters.
NICK_MIN_CHARS = 1
NICK_MAX_CHARS = 20
#: Characters a nickname may hold besides letters and digits of any script.
NICK_PUNCTUATION = "_-."
#: Names listed by name in a batched or joining notice; the rest are counted.
MAX_NAMES_SHOWN = 50

# --- Framing -----------------------------------------------------------------


class ProtocolError(ValueError):
    """A line that breaks the protocol; ``str(error)`` is fit to show the
    user who sent it."""


class FramingError(ProtocolError):
    """The byte stream cannot be framed any more: the connection must go."""


class _Overlong:
    """Type of :data:`OVERLONG`."""

    def __repr__(self) -> str:
        return "OVERLONG"


#: Stands in :meth:`LineFramer.feed`'s output for a line that was too long
#: and was dropped.
OVERLONG = _Overlong()

Frame = Union[bytes, _Overlong]


class LineFramer:
    """Cuts a byte stream into lines, holding at most ``max_line`` bytes.

    Feed it whatever ``recv`` returned; it returns the complete lines, in
    order, without their ``\\n``. A line longer than ``max_line`` comes out
    once as :data:`OVERLONG` as soon as it passes the limit, and the rest of
    it is discarded up to the next newline, so memory stays bounded. If more
    than ``max_discard`` bytes go by with no newline, :meth:`feed` raises
    :class:`FramingError`.
    """

    def __init__(self, max_line: int = MAX_LINE_BYTES,
                 max_discard: int = MAX_DISCARD_BYTES) -> None:
        self.max_line = max_line
        self.max_discard = max_discard
        self._buffer = bytearray()
        self._discarded: Optional[int] = None  # bytes dropped so far, or None

    def feed(self, data: bytes) -> List[Frame]:
        """Add ``data`` and return the frames it completed."""
        frames: List[Frame] = []
        start = 0
        while start < len(data):
            end = data.find(b"\n", start)
            piece = data[start:] if end < 0 else data[start:end]
            start = len(data) if end < 0 else end + 1
            if self._discarded is not None:
                self._discarded += len(piece)
                if end >= 0:
                    self._discarded = None
                elif self._discarded > self.max_discard:
                    raise FramingError(
                        f"no end of line in {self._discarded} bytes")
                continue
            if len(self._buffer) + len(piece) > self.max_line:
                frames.append(OVERLONG)
                discarded = len(self._buffer) + len(piece)
                self._buffer.clear()
                if end < 0:
                    self._discarded = discarded
                    if discarded > self.max_discard:
                        raise FramingError(
                            f"no end of line in {discarded} bytes")
                continue
            if end < 0:
                self._buffer += piece
            elif self._buffer:
                self._buffer += piece
                frames.append(bytes(self._buffer))
                self._buffer.clear()
            else:
                frames.append(piece)
        return frames

    @property
    def pending(self) -> int:
        """Bytes held for a line not yet complete."""
        return len(self._buffer)


# A line is almost always printable ASCII; a regex finds the rare control
# character far faster than a Python loop over every character.
CONTROL_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def decode_line(raw: bytes) -> str:
    """Decode one framed line, refusing what must not reach other users.

    A trailing ``\\r`` (telnet, Windows) is removed. Raises
    :class:`ProtocolError` for invalid UTF-8, for control characters
    (anything in C0, DEL or C1 but tab): they could drive another user's
    terminal, so the server refuses them rather than pass them on; and for
    bidirectional controls (U+202A-202E, U+2066-2069), which make text
    show as something else.
    """
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    try:
        text = raw.decode(ENCODING)
    except UnicodeDecodeError:
        raise ProtocolError("line is not valid UTF-8, dropped") from None
    found = _REFUSED_RE.search(text)  # one pass for both kinds
    if found:
        raise ProtocolError(
            "control characters are not allowed"
            f" (found U+{ord(found.group()):04X}), line dropped")
    return text


# Bidirectional controls (embeddings, overrides, isolates) reorder what
# follows them on the reader's screen: text could show as something else.
_BIDI = "\u202a-\u202e\u2066-\u2069"
_REFUSED_RE = re.compile(f"[\x00-\x08\x0a-\x1f\x7f-\x9f{_BIDI}]")
# Runs of white space, and characters that show as blank (fillers,
# zero-width spaces): padding that could push text to a terminal row of
# its own, where it would pass for a line of the server's.
_FILLERS = "\u115f\u1160\u180e\u200b\u2060\u2800\u3164\ufeff\uffa0"
_BLANK_RE = re.compile(f"[\\s{_FILLERS}]{{2,}}|[{_FILLERS}]")


def clean_text(text: str) -> str:
    """User text as it may reach others: every run of white space and
    every blank-looking character (fillers, zero-width spaces) is one
    space, so no padding can start a fresh terminal row. Every
    ``format_*`` that carries user text uses it."""
    if text.isascii() and "  " not in text and "\t" not in text:
        return text  # the usual line: nothing to do, and fast to tell
    return _BLANK_RE.sub(" ", text)


def log_safe(text: str, limit: int = 200) -> str:
    """User text fit for a log line: at most ``limit`` characters, and
    anything that is not printable (controls, format characters) shown
    as an escape, so a log viewer shows what was sent."""
    out = []
    for char in text[:limit]:
        if char.isprintable() and unicodedata.category(char) != "Cf":
            out.append(char)
        else:
            out.append(f"\\u{ord(char):04x}")
    return "".join(out) + ("..." if len(text) > limit else "")


def encode_line(text: str) -> bytes:
    """The bytes of one line as it goes on the wire."""
    return (text + "\n").encode(ENCODING)


# --- Nicknames ---------------------------------------------------------------


#: Nicknames nobody may take (nor anything that looks like one of them,
#: with digits or ``_ - .`` added): they would pass for the server.
RESERVED_NICKS = ("admin", "administrator", "server", "root", "system",
                  "moderator", "chat")

# Characters that render as nothing (Unicode's default-ignorable code
# points that are letters or marks; the format characters among them are
# refused as control characters anyway), and the blank-looking fillers.
_INVISIBLE_RE = re.compile(
    "[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u3164"
    "\ufe00-\ufe0f\uffa0\U000e0100-\U000e01ef]")
#: Combining marks allowed on one letter (more stack into other rows).
_MAX_MARKS = 3
# Scripts that are written together: Japanese mixes kanji and kana,
# Korean may mix hangul and hanja.
_SCRIPT_GROUPS = {"CJK": "HAN", "HIRAGANA": "HAN", "KATAKANA": "HAN",
                  "KATAKANA-HIRAGANA": "HAN", "HANGUL": "HAN",
                  "IDEOGRAPHIC": "HAN"}
# The look-alike skeleton: letters of other scripts (after NFKC and
# casefold) that pass for a Latin one, and Latin letters and digits that
# pass for each other, mapped to one form. Two nicknames with the same
# skeleton look the same to a reader, so only one may be online.
_SKELETON = str.maketrans({
    # Cyrillic
    "а": "a", "в": "b", "г": "r", "е": "e", "ё": "ë", "з": "3", "і": "l",
    "ї": "ï", "ј": "j", "к": "k", "м": "m", "н": "h", "о": "o", "п": "n",
    "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "һ": "h",
    "ԁ": "d", "ԛ": "q", "ԝ": "w", "ӏ": "l", "ь": "b", "ү": "y",
    # Greek
    "α": "a", "β": "b", "γ": "y", "ε": "e", "ζ": "z", "η": "n", "ι": "l",
    "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x",
    "ω": "w", "μ": "u",
    # Latin and digits: i, l, I and 1 are one stroke; 0 is o
    "i": "l", "ı": "l", "1": "l", "0": "o", "ɡ": "g", "ɑ": "a",
})
_SKELETON_PAIRS = (("rn", "m"), ("vv", "w"))


def _script(char: str) -> str:
    """The script of a letter, from its Unicode name (``LATIN SMALL
    LETTER A`` is LATIN), with scripts written together grouped."""
    try:
        first = unicodedata.name(char).split()[0]
    except ValueError:
        return "?"
    return _SCRIPT_GROUPS.get(first, first)


def nick_error(nick: str) -> Optional[str]:
    """Why ``nick`` is not a valid nickname, or None when it is.

    Valid: 1-20 characters, each a letter of any script (with up to three
    combining marks), a decimal digit, or one of ``_ - .``; not starting
    with ``-``, which would read as a command; no invisible characters
    (variation selectors, fillers); letters of one script only (``Анна``
    or ``anna``, not ``аnna`` with a Cyrillic ``а``); and not a reserved
    name (:data:`RESERVED_NICKS`) or one that looks like it.
    """
    if not nick:
        return "a nickname cannot be empty"
    if len(nick) > NICK_MAX_CHARS:
        return f"a nickname can have at most {NICK_MAX_CHARS} characters"
    if nick.startswith("-"):
        return "a nickname cannot start with '-'"
    marks = 0
    for index, char in enumerate(nick):
        category = unicodedata.category(char)
        if _INVISIBLE_RE.match(char):
            return ("a nickname cannot contain invisible characters"
                    f" (U+{ord(char):04X})")
        if category[0] == "M" and index > 0:
            marks += 1
            if marks > _MAX_MARKS:
                return "a nickname cannot stack so many accents"
            continue
        marks = 0
        if category[0] == "L" or category == "Nd" or char in NICK_PUNCTUATION:
            continue
        if char.isspace():
            return "a nickname cannot contain spaces"
        if category[0] == "C":
            return "a nickname cannot contain control characters"
        return (f"a nickname cannot contain {char!r}; use letters, digits"
                f" and {' '.join(NICK_PUNCTUATION)}")
    normal = unicodedata.normalize("NFKC", nick)
    scripts = sorted({_script(char) for char in normal
                      if unicodedata.category(char)[0] == "L"})
    if len(scripts) > 1:
        names = " and ".join(script.title() for script in scripts[:2])
        return (f"a nickname cannot mix scripts ({names}): it could pass"
                " for another")
    # Digits and punctuation around a reserved name (``root_``, ``admin1``:
    # 1 is l and 0 is o in the skeleton) do not make it another name.
    if nick_key(nick).strip(NICK_PUNCTUATION + "0123456789lo") \
            in _RESERVED_KEYS:
        return "that name is reserved"
    return None


def nick_key(nick: str) -> str:
    """The form under which nicknames are compared (the registry's key):
    NFKC, so fullwidth and mathematical letters are the plain ones; case
    ignored (casefold); and the look-alike skeleton, so ``аlice`` with a
    Cyrillic ``а``, ``ALICE``, ``a1ice`` and ``ａｌｉｃｅ`` are all
    ``alice``. Nicknames with one key cannot be online at once."""
    folded = unicodedata.normalize(
        "NFKC", unicodedata.normalize("NFKC", nick).casefold())
    key = folded.translate(_SKELETON)
    for pair, one in _SKELETON_PAIRS:
        key = key.replace(pair, one)
    return key


_RESERVED_KEYS = frozenset(nick_key(name) for name in RESERVED_NICKS)


# --- Commands ----------------------------------------------------------------


class CommandError(ProtocolError):
    """A line that reads as a command but is not a valid one."""


class Command(NamedTuple):
    """One line from a user, parsed.

    ``name`` is the name of a row of :data:`COMMANDS`; ``target`` is the
    nickname a command names (``-to``, ``-kick``) or the password
    (``-admin``); ``text`` is the message, possibly empty.
    """

    name: str
    target: str = ""
    text: str = ""


# What follows a command's flag, and how it is read:
NO_ARGUMENT = ""      # -users: nothing may follow
TEXT = "text"         # -all [text]: the rest of the line, possibly empty
NICK = "nick"         # -to NICK [text]: a nickname, then optional text
SECRET = "secret"     # -admin PASSWORD: the rest, required, never shown

# What client.py does with a command before (or instead of) sending it:
SEND = ""             # just send it
LOCAL = "local"       # answer it locally: it works with the server gone
LEAVE = "leave"       # leave the chat politely
HIDE = "hide"         # star the argument out on screen, keep it out of
                      # the input history
ROUTE = "route"       # it says where lines go: show the typed line as
                      # going there, and wait for the partner to change


class CommandSpec(NamedTuple):
    """One row of the command table.

    The server runs a command with the method ``do_<name>`` of
    ``commands.Commands`` (mixed into ``room.Room``); a test checks that
    every row has one.
    """

    name: str
    #: What the line starts with: ``-to``; ``""`` for a plain line; a
    #: phrase with a space (``down server``) must be the whole line.
    flag: str
    #: How what follows the flag is read: one of the constants above.
    argument: str
    #: Lines of ``-help``: (usage, what it does).
    help: Tuple[Tuple[str, str], ...]
    #: How the command is listed in the hint shown on joining; "" = not.
    hint: str = ""
    #: For admins only: what the refusal says they cannot do.
    admin_only: str = ""
    #: What client.py does with it (see the constants above).
    client: str = SEND


#: Every command, in the order ``-help`` lists them. Adding a command is a
#: row here plus a ``do_<name>`` method in ``commands.Commands``.
COMMANDS: Tuple[CommandSpec, ...] = (
    CommandSpec("to", "-to", NICK, (
        ("-to NICK text", "send text to NICK only (private)"),
        ("-to NICK", "make NICK your partner: plain lines go to NICK only"),
    ), hint="-to NICK [text]", client=ROUTE),
    CommandSpec("all", "-all", TEXT, (
        ("-all text", "send text to everyone"),
        ("-all", "plain lines go to everyone again (the default)"),
    ), hint="-all [text]", client=ROUTE),
    CommandSpec("say", "", TEXT, (
        ("text", "a plain line goes to your partner, or to everyone"),
    )),
    CommandSpec("users", "-users", NO_ARGUMENT, (
        ("-users", "who is online"),
    ), hint="-users"),
    CommandSpec("history", "-history", TEXT, (
        ("-history [N]", "the last N public lines (default 20)"),
    )),
    CommandSpec("help", "-help", NO_ARGUMENT, (
        ("-help", "this list"),
    ), client=LOCAL),
    CommandSpec("exit", "-exit", NO_ARGUMENT, (
        ("-exit", "leave the chat"),
    ), hint="-exit", client=LEAVE),
    CommandSpec("admin", "-admin", SECRET, (
        ("-admin PASSWORD", "become an admin"),
    ), client=HIDE),
    CommandSpec("resume", "-resume", SECRET, (
        ("-resume TOKEN", "first line after a drop: get your seat back"),
    ), client=HIDE),
    CommandSpec("me", "-me", TEXT, (
        ("-me text", "an action: others see '* YOURNICK text'"),
    )),
    CommandSpec("nick", "-nick", NICK, (
        ("-nick NEW", "change your nickname"),
    )),
    CommandSpec("away", "-away", TEXT, (
        ("-away [reason]", "mark yourself away; -back or any line"
         " clears it"),
    )),
    CommandSpec("back", "-back", NO_ARGUMENT, (
        ("-back", "you are not away any more"),
    )),
    CommandSpec("whois", "-whois", NICK, (
        ("-whois NICK", "when NICK joined, how long idle, away or not"),
    )),
    CommandSpec("ignore", "-ignore", TEXT, (
        ("-ignore NICK", "NICK's lines stop reaching you (not told)"),
        ("-ignore", "who you ignore"),
    )),
    CommandSpec("unignore", "-unignore", NICK, (
        ("-unignore NICK", "let NICK's lines reach you again"),
    )),
    CommandSpec("motd", "-motd", NO_ARGUMENT, (
        ("-motd", "the message of the day"),
    )),
    CommandSpec("kick", "-kick", NICK, (
        ("-kick NICK [reason]", "admin: disconnect NICK"),
    ), admin_only="kick users"),
    CommandSpec("mute", "-mute", NICK, (
        ("-mute NICK [min]", "admin: NICK's lines reach nobody"),
    ), admin_only="mute users"),
    CommandSpec("unmute", "-unmute", NICK, (
        ("-unmute NICK", "admin: let NICK talk again"),
    ), admin_only="unmute users"),
    CommandSpec("ban", "-ban", NICK, (
        ("-ban NICK [min] [reason]", "admin: kick NICK, refuse their"
         " address"),
    ), admin_only="ban users"),
    CommandSpec("unban", "-unban", NICK, (
        ("-unban ADDRESS", "admin: lift a ban (address or nickname)"),
    ), admin_only="lift bans"),
    CommandSpec("bans", "-bans", NO_ARGUMENT, (
        ("-bans", "admin: who is banned, by whom, why"),
    ), admin_only="see the bans"),
    CommandSpec("down", "down server", NO_ARGUMENT, (
        ("down server", "admin: tell everyone, then stop the server"),
    ), admin_only="shut the server down"),
)

#: Rows by name.
COMMANDS_BY_NAME: Dict[str, CommandSpec] = {
    spec.name: spec for spec in COMMANDS}
#: Every value :attr:`Command.name` can take.
COMMAND_NAMES = tuple(COMMANDS_BY_NAME)
#: Flag commands by their flag, lower case (flags ignore case).
_BY_FLAG = {spec.flag: spec for spec in COMMANDS
            if spec.flag.startswith("-")}
#: Whole-line commands (``down server``) by their words, lower case.
_BY_PHRASE = {spec.flag: spec for spec in COMMANDS
              if " " in spec.flag and not spec.flag.startswith("-")}
_SAY = COMMANDS_BY_NAME["say"]

#: Commands whose argument is a secret (``-admin PASSWORD``).
_SECRET_FLAGS = tuple(spec.flag for spec in COMMANDS
                      if spec.argument == SECRET)


def _secret_spec(line: str) -> Optional[CommandSpec]:
    """The row of a secret command for a line whose first word, after
    any leading white space, starts with its flag: `` -admin PW`` and the
    typos ``-adminPW`` or ``-admin:PW`` must never be said to everyone,
    nor logged as an unknown command."""
    if not line.lstrip().startswith("-"):
        return None  # the usual line, at once
    word = _split_word(line)[0].lower()
    for flag in _SECRET_FLAGS:
        if word.startswith(flag):
            return _BY_FLAG[flag]
    return None


def command_spec(line: str) -> Optional[CommandSpec]:
    """The row of the command a line is, without checking its arguments;
    None for a line starting with an unknown flag."""
    secret = _secret_spec(line)
    if secret is not None:
        return secret
    if not line.startswith("-"):
        return _BY_PHRASE.get(" ".join(line.split()).lower(), _SAY)
    return _BY_FLAG.get(_split_word(line)[0].lower())


def parse_command(line: str) -> Command:
    """Parse one decoded line into a :class:`Command`.

    A line starting with ``-`` is a command (flags are case-insensitive);
    a whole-line phrase such as ``down server`` is its command; anything
    else is ``say``, a plain message. Raises :class:`CommandError`, with a
    message for the user, for an unknown flag or a command missing its
    argument.
    """
    spec = command_spec(line)
    if spec is not None and spec.argument == SECRET:
        word, rest = _split_word(line)
        if word.lower() != spec.flag or not rest:
            # Not sent on, and not a try: the user sees how to type it.
            raise CommandError(f"usage: {spec.help[0][0]}")
        return Command(spec.name, target=rest)
    if spec is None:
        flag = _split_word(line)[0].lower()
        raise CommandError(
            f"unknown command {flag[:30]!r}; type -help for the list")
    if spec is _SAY:
        return Command("say", text=line)
    if not spec.flag.startswith("-"):
        return Command(spec.name)  # a phrase: the whole line
    rest = _split_word(line)[1]
    if spec.argument == NO_ARGUMENT:
        if rest:
            raise CommandError(f"{spec.flag} takes no arguments")
        return Command(spec.name)
    if spec.argument == TEXT:
        return Command(spec.name, text=rest)
    if not rest:
        what = spec.help[0][0].split()[1]  # NICK, PASSWORD
        raise CommandError(f"usage: {spec.flag} {what}")
    if spec.argument == SECRET:
        return Command(spec.name, target=rest)
    target, text = _split_word(rest)
    return Command(spec.name, target=target, text=text)


def _split_word(text: str) -> Tuple[str, str]:
    """The first word of ``text`` and the rest, both stripped; words are
    split at any white space (a tab too)."""
    parts = text.split(None, 1)
    if not parts:
        return "", ""
    return parts[0], (parts[1].strip() if len(parts) > 1 else "")


def help_lines() -> List[Tuple[str, str]]:
    """Every (usage, what it does) pair of ``-help``, in order."""
    return [line for spec in COMMANDS for line in spec.help]


# --- Server lines ------------------------------------------------------------
# Every line the server sends is made by one of these functions, so its wording
# lives in one place; parse_server_line() reads them back for the client.

NOTICE = "* "
ERROR = "! "
PRIVATE = "[private] "


def format_message(nick: str, text: str) -> str:
    """A public message: ``alice: hello`` (its text cleaned:
    :func:`clean_text`)."""
    return f"{nick}: {clean_text(text)}"


def format_private(nick: str, text: str) -> str:
    """A private message, as its receiver sees it."""
    return f"{PRIVATE}{nick}: {clean_text(text)}"


#: Starts the copy of a private line its sender gets: ``-> bob: hi``.
SENT = "-> "


def format_private_sent(nick: str, text: str) -> str:
    """Confirms a private line to its sender: ``-> bob: hi`` (the line
    went to ``nick``; an error comes instead when it did not)."""
    return f"{SENT}{nick}: {clean_text(text)}"


def format_notice(text: str) -> str:
    """A line from the server itself."""
    return NOTICE + text


def format_error(text: str) -> str:
    """An error, sent only to the user who caused it."""
    return ERROR + text


def format_nick_prompt() -> str:
    return format_notice(
        f"Choose a nickname ({NICK_MIN_CHARS}-{NICK_MAX_CHARS} letters,"
        f" digits, {' '.join(NICK_PUNCTUATION)}) and press Enter:")


def format_nick_refused(nick: str, reason: str) -> str:
    return format_error(f"nickname {nick[:40]!r} refused: {reason}")


#: Why a nickname someone else has is refused.
NICK_TAKEN = "it is taken, choose another"


def format_nick_taken(nick: str) -> str:
    return format_nick_refused(nick, NICK_TAKEN)


_WELCOME = "Welcome, {}! You are in the chat."
_WELCOME_BACK = "Welcome back, {}! You are in the chat."
_WELCOME_RE = re.compile(
    r"\* Welcome(?: back)?, (\S+)! You are in the chat\.")


def format_welcome(nick: str) -> str:
    return format_notice(_WELCOME.format(nick))


def format_welcome_back(nick: str) -> str:
    """Greets a user who got their seat back with ``-resume``."""
    return format_notice(_WELCOME_BACK.format(nick))


def format_commands_hint() -> str:
    """The one-line list of commands shown on joining."""
    # Short enough for an 80-column terminal; -help has the rest.
    listed = ", ".join(spec.hint for spec in COMMANDS if spec.hint)
    return format_notice(f"Commands: {listed}; -help for more")


def format_help(extra: Sequence[Tuple[str, str]] = ()) -> List[str]:
    """The lines of ``-help``; ``extra`` (usage, what it does) pairs are
    a client's own commands, listed last."""
    lines = help_lines() + list(extra)
    width = max(len(usage) for usage, _ in lines)
    return [format_notice(f"{usage.ljust(width)}  {what}")
            for usage, what in lines]


def format_users(nicks: Sequence[str], me: str, admins: Iterable[str] = (),
                 total: Optional[int] = None,
                 reconnecting: Iterable[str] = (),
                 away: Iterable[str] = ()) -> str:
    """The users online, with ``me``, the admins and those whose connection
    dropped (their seat is kept for them) marked.

    ``total`` is how many are online when ``nicks`` lists only some of
    them (a joining user in a room of thousands gets one short line).
    """
    admins = set(admins)
    reconnecting = set(reconnecting)
    away = set(away)
    names = []
    for nick in nicks:
        marks = [mark for mark, yes in (
            ("you", nick == me), ("admin", nick in admins),
            ("away", nick in away),
            ("reconnecting", nick in reconnecting)) if yes]
        names.append(f"{nick} ({', '.join(marks)})" if marks else nick)
    total = len(nicks) if total is None else total
    more = total - len(nicks)
    tail = f" and {more} more (type -users)" if more > 0 else ""
    return format_notice(f"Online ({total}): {', '.join(names)}{tail}")


def format_joined(nick: str) -> str:
    return format_notice(f"{nick} joined the chat")


def format_left(nick: str) -> str:
    return format_notice(f"{nick} left the chat")


def _some_names(nicks: Sequence[str]) -> str:
    shown = ", ".join(nicks[:MAX_NAMES_SHOWN])
    more = len(nicks) - MAX_NAMES_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


def format_joined_many(nicks: Sequence[str]) -> str:
    """One notice for many joins, for large rooms."""
    return format_notice(f"Joined ({len(nicks)}): {_some_names(nicks)}")


def format_left_many(nicks: Sequence[str]) -> str:
    """One notice for many departures, for large rooms."""
    return format_notice(f"Left ({len(nicks)}): {_some_names(nicks)}")


def format_goodbye(nick: str) -> str:
    return format_notice(f"Goodbye, {nick}!")


_PARTNER = "Your lines now go to {} only. Type -all to talk to everyone."
_PARTNER_RE = re.compile(
    r"\* Your lines now go to (\S+) only\. Type -all to talk to everyone\.")
_EVERYONE = "Your lines now go to everyone."


def format_partner(nick: str) -> str:
    """Confirms ``-to NICK``: plain lines now go to NICK."""
    return format_notice(_PARTNER.format(nick))


def format_everyone() -> str:
    """Confirms ``-all``: plain lines go to everyone again."""
    return format_notice(_EVERYONE)


def format_partner_gone(nick: str) -> str:
    return format_error(
        f"{nick} is not online any more; message not sent."
        " Choose with -to NICK or -all")


def format_partner_came_back(nick: str) -> str:
    """Your partner left, and someone took the nickname since: maybe the
    same person, maybe not, so nothing goes to them unasked."""
    return format_error(
        f"{nick} left and came back; message not sent. Type -to {nick}"
        " again to talk to them")


def format_no_such_user(nick: str) -> str:
    return format_error(f"no such user: {nick[:40]}; type -users to see who is"
                        " online")


def format_not_yourself() -> str:
    return format_error("that is you; choose someone else")


def format_nobody_else() -> str:
    return format_error("nobody else is online; message not sent")


def format_admin_granted() -> str:
    return format_notice("You are now an admin.")


def format_admin_refused(tries_left: int, wait: float = 0.0) -> str:
    """A wrong password; ``wait``: seconds before the address may try
    again."""
    later = f"; your address may try again in {_seconds(wait)}" \
        if wait > 0 else ""
    if tries_left <= 0:
        return format_error(
            f"wrong admin password; no more tries on this connection{later}")
    tries = "1 try" if tries_left == 1 else f"{tries_left} tries"
    return format_error(f"wrong admin password ({tries} left){later}")


def format_admin_wait(wait: float) -> str:
    """Too many wrong passwords from this address: not even checked."""
    return format_error("too many wrong admin passwords from your address;"
                        f" try again in {_seconds(wait)}")


def _seconds(wait: float) -> str:
    whole = max(1, int(wait + 0.999))
    return f"{whole} s" if whole < 120 else f"{(whole + 59) // 60} min"


def format_refused(reason: str) -> str:
    """The one line a connection the server will not take gets."""
    return format_error(f"connection refused: {reason}")


def format_admin_locked() -> str:
    return format_error("no more admin tries on this connection")


def format_admin_only(what: str) -> str:
    return format_error(f"only an admin can {what}; see -admin PASSWORD")


def format_kicked(nick: str, admin: str, reason: str = "") -> str:
    """Told to everyone else when ``nick`` is kicked."""
    why = f": {clean_text(reason)}" if reason else ""
    return format_notice(f"{nick} was kicked by {admin}{why}")


def format_you_were_kicked(admin: str, reason: str = "") -> str:
    """Told to the user being kicked, just before the connection closes."""
    why = f": {clean_text(reason)}" if reason else ""
    return format_error(f"you were kicked by {admin}{why}")


# --- Nicknames, actions, away, ignoring, moderation -------------------------

_NICK_CHANGED_RE = re.compile(r"\* (\S+) is now known as (\S+)")
_YOU_ARE_NOW = "You are now known as {}."
_YOU_ARE_NOW_RE = re.compile(r"\* You are now known as (\S+)\.")


#: How the server's notices about a user go on after the nickname; an
#: action (``-me``) may not start so, or ``-me left the chat`` would read
#: as the server saying so.
NOTICE_VERBS = ("joined the chat", "left the chat", "was ", "is now known",
                "lost connection", "is back", "is away")


def action_error(nick: str, text: str) -> Optional[str]:
    """Why ``text`` cannot be ``nick``'s action, or None if it can. An
    action reads like a notice (``* alice waves``), so one that a reader,
    or a client's parser of the server's lines, would take for the
    server's own is refused: ``-me left the chat``, and, from a user
    called ``Your``, ``-me lines now go to ghost only. ...``."""
    line = format_action(nick, text)
    said = line[len(NOTICE) + len(nick) + 1:]  # as others would see it
    if not said:
        return "usage: -me text"
    if said.lower().startswith(NOTICE_VERBS) or is_shutdown(line) or any(
            read(line) is not None for read in (
                welcomed_nick, partner_change, nick_change, presence,
                history_line, resume_token)):
        return "that action would read like a server notice"
    return None


def format_action(nick: str, text: str, private: bool = False) -> str:
    """``-me waves``: ``* alice waves``; to a partner, marked private."""
    line = format_notice(f"{nick} {clean_text(text).strip()}")
    return PRIVATE + line if private else line


def format_nick_changed(old: str, new: str) -> str:
    """Told to everyone else when a user changes nickname."""
    return format_notice(f"{old} is now known as {new}")


def format_you_are_now(nick: str) -> str:
    """Confirms ``-nick NEW`` to the user who changed it."""
    return format_notice(_YOU_ARE_NOW.format(nick))


def format_away(reason: str) -> str:
    return format_notice(f"You are marked away ({clean_text(reason)})."
                         " -back, or any line you send, clears it.")


def format_not_away() -> str:
    return format_notice("You are not marked away any more.")


def format_is_away(nick: str, reason: str) -> str:
    """Told to whoever sends a private line to an away user (the line is
    delivered all the same)."""
    return format_notice(f"{nick} is away: {clean_text(reason)}")


def format_whois(nick: str, facts: Sequence[str]) -> str:
    """``-whois NICK``: ``* alice: joined 14:02 (5 min ago), ...``, the
    time on the server's clock."""
    return format_notice(f"{nick}: {clean_text(', '.join(facts))}")


def format_duration(seconds: float, left: bool = False) -> str:
    """A rough, readable duration: ``40 s``, ``5 min``, ``2 h 10 min``;
    rounded down, or with ``left`` (a time still to run) up to the whole
    minute, so that a 5-minute mute just given says 5, not 4."""
    if left and seconds > 60:
        seconds = math.ceil(seconds / 60) * 60
    seconds = int(max(seconds, 0))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} days"


def format_ignoring(nick: str) -> str:
    return format_notice(f"You ignore {nick} now: their lines do not reach"
                         f" you. -unignore {nick} to undo.")


def format_unignored(nick: str) -> str:
    return format_notice(f"{nick}'s lines reach you again.")


def format_ignore_list(nicks: Sequence[str]) -> str:
    if not nicks:
        return format_notice("You ignore nobody.")
    return format_notice(f"You ignore: {', '.join(nicks)}")


def _for(minutes: Optional[float]) -> str:
    if minutes is None:
        return ""
    return f" for {format_duration(minutes * 60)}"


def format_muted(nick: str, admin: str, minutes: Optional[float]) -> str:
    """Told to everyone else when an admin mutes ``nick``."""
    return format_notice(f"{nick} was muted by {admin}{_for(minutes)}")


def format_you_were_muted(admin: str, minutes: Optional[float]) -> str:
    return format_error(f"you were muted by {admin}{_for(minutes)}: your"
                        " lines reach nobody until then")


def format_you_are_muted(seconds_left: Optional[float]) -> str:
    """The answer to every line a muted user sends."""
    left = (" until an admin lifts it" if seconds_left is None
            else f", {format_duration(seconds_left, left=True)} left")
    return format_error(f"you are muted{left}; your line reached nobody")


def format_unmuted(nick: str, admin: str) -> str:
    return format_notice(f"{nick} was unmuted by {admin}")


def format_you_were_unmuted(admin: str) -> str:
    return format_notice(f"{admin} unmuted you: you can talk again.")


def format_banned(nick: str, admin: str, minutes: Optional[float],
                  reason: str = "") -> str:
    """Told to everyone else when an admin bans ``nick``."""
    why = f": {clean_text(reason)}" if reason else ""
    return format_notice(f"{nick} was banned by {admin}{_for(minutes)}{why}")


def format_you_were_banned(admin: str, minutes: Optional[float],
                           reason: str = "") -> str:
    why = f": {clean_text(reason)}" if reason else ""
    return format_error(f"you were banned by {admin}{_for(minutes)}{why}")


def banned_address(seconds_left: Optional[float], reason: str = "") -> str:
    """Why a connection from a banned address is refused (for
    :func:`format_refused`): ``your address is banned from this server
    (spam) for 5 min more``."""
    why = f" ({clean_text(reason)})" if reason else ""
    left = ("" if seconds_left is None
            else f" for {format_duration(seconds_left, True)} more")
    return f"your address is banned from this server{why}{left}"


def format_ban_entry(host: str, nick: str, admin: str, reason: str,
                     seconds_left: Optional[float]) -> str:
    """One line of ``-bans``."""
    left = ("until -unban" if seconds_left is None
            else f"{format_duration(seconds_left, left=True)} left")
    why = f": {clean_text(reason)}" if reason else ""
    return format_notice(f"  {host} ({nick}, by {admin}, {left}){why}")


def format_bans_header(count: int) -> str:
    if not count:
        return format_notice("Nobody is banned.")
    return format_notice("1 ban:" if count == 1 else f"{count} bans:")


def format_unbanned(host: str, nick: str) -> str:
    return format_notice(f"The ban on {host} ({nick}) is lifted.")


def format_motd(lines: Sequence[str]) -> List[str]:
    """The message of the day, a notice per line."""
    if not lines:
        return [format_notice("There is no message of the day.")]
    return [format_notice(line) for line in lines]


_SHUTDOWN = "Server is shutting down"


def format_shutdown(reason: str = "") -> str:
    why = f" ({reason})" if reason else ""
    return format_notice(f"{_SHUTDOWN}{why}. Goodbye!")


def format_server_full(limit: int) -> str:
    return format_error(f"server is full ({limit} connections); try again"
                        " later")


def format_tls_required() -> str:
    """Sent in plain text to a client that did not speak TLS to a TLS
    server."""
    return format_error("this server uses TLS; connect with a TLS client"
                        " (client.py --tls)")


_HTTP_RE = re.compile(
    r"(?:GET|POST|HEAD|PUT|DELETE|OPTIONS|PATCH|TRACE|CONNECT|PRI) \S+"
    r" HTTP/\d(?:\.\d)?", re.IGNORECASE)


def is_http_request(line: str) -> bool:
    """True for an HTTP request line (``POST /form HTTP/1.1``): another
    protocol is talking to the chat's port."""
    return _HTTP_RE.fullmatch(line.strip()) is not None


def format_not_http() -> str:
    return format_error("this is a chat server, not a web server: connect"
                        " with client.py or nc")


def format_too_many_nicks() -> str:
    return format_error("too many refused nicknames in a row; disconnecting")


def format_register_timeout() -> str:
    return format_error("timed out waiting for a nickname")


def format_line_too_long(limit: int = MAX_LINE_BYTES) -> str:
    return format_error(f"line too long (over {limit} bytes), dropped")


def format_flooding() -> str:
    return format_error("no end of line in a megabyte; disconnecting")


# --- Memory: history, and a seat kept for a dropped connection ---------------

_HISTORY_RE = re.compile(r"\* \[history (\d\d:\d\d)\] (.*)", re.DOTALL)
_HISTORY_END = "End of history."


def format_history(clock: str, line: str) -> str:
    """A public line said before, replayed: ``* [history 14:02] alice:
    hello``. ``clock`` is HH:MM; ``line`` is the line as it was sent live
    (a notice loses its own ``* ``), so a history line is always a notice
    and can never be taken for something said now."""
    if line.startswith(NOTICE):
        line = line[len(NOTICE):]
    return format_notice(f"[history {clock}] {line}")


def format_history_end() -> str:
    """Follows the replayed lines: what comes next is live."""
    return format_notice(_HISTORY_END)


def format_no_history() -> str:
    return format_notice("Nothing has been said yet.")


_TOKEN = ("Resume token: {0} (if your connection drops, connect again and"
          " send: -resume {0})")
_TOKEN_RE = re.compile(r"\* Resume token: (\S+) \(.*\)")


def format_resume_token(token: str) -> str:
    """Sent to a user alone on joining: the secret that gets their seat
    back after a dropped connection."""
    return format_notice(_TOKEN.format(token))


def format_resume_refused() -> str:
    return format_error("cannot resume: that token is unknown or has"
                        " expired; choose a nickname")


def format_already_joined() -> str:
    return format_error("you are in the chat already; -resume is for the"
                        " first line after a dropped connection")


def format_missed(count: int, dropped: int = 0) -> str:
    """Says how many lines follow that came while the user was away."""
    if not count and not dropped:
        return format_notice("Nothing came for you while you were away.")
    lost = f" ({dropped} earlier lines were not kept)" if dropped else ""
    lines = "1 line" if count == 1 else f"{count} lines"
    return format_notice(f"{lines} came for you while you were away"
                         f"{lost}:")


def format_lost_connection(nick: str) -> str:
    return format_notice(f"{nick} lost connection")


def format_back(nick: str) -> str:
    return format_notice(f"{nick} is back")


def format_replaced() -> str:
    """The last line of a connection whose seat a newer one took over."""
    return format_error("your seat was taken over by a new connection"
                        " (-resume)")


# --- Reading server lines (for clients) --------------------------------------


class ServerLine(NamedTuple):
    """A server line, classified: ``kind`` is ``message``, ``private``,
    ``sent`` (the copy of a private line one sent), ``notice`` or
    ``error``; ``nick`` is the sender of a message, or its receiver for
    ``sent`` (else ""); ``text`` is the rest, without its marker (a
    private action keeps its ``* nick``)."""

    kind: str
    nick: str
    text: str


_MESSAGE_RE = re.compile(r"([^\s:]+): (.*)", re.DOTALL)


def parse_server_line(line: str) -> ServerLine:
    """Classify one line the server sent (without its newline)."""
    if line.startswith(NOTICE):
        return ServerLine("notice", "", line[len(NOTICE):])
    if line.startswith(ERROR):
        return ServerLine("error", "", line[len(ERROR):])
    kind = "message"
    rest = line
    if line.startswith(PRIVATE):
        kind, rest = "private", line[len(PRIVATE):]
        if rest.startswith(NOTICE):  # an action: [private] * alice waves
            nick = rest[len(NOTICE):].split(" ", 1)[0]
            return ServerLine(kind, nick, rest)
    elif line.startswith(SENT):
        kind, rest = "sent", line[len(SENT):]
    match = _MESSAGE_RE.fullmatch(rest)
    if match:
        return ServerLine(kind, match.group(1), match.group(2))
    return ServerLine("notice", "", line)


def welcomed_nick(line: str) -> Optional[str]:
    """The nickname a welcome line names, or None for any other line."""
    match = _WELCOME_RE.fullmatch(line)
    return match.group(1) if match else None


def nick_change(line: str) -> Optional[Tuple[str, str]]:
    """For a line telling of a nickname change: (old, new). ``old`` is ""
    when the line confirms the reader's own change. None otherwise."""
    match = _YOU_ARE_NOW_RE.fullmatch(line)
    if match:
        return "", match.group(1)
    match = _NICK_CHANGED_RE.fullmatch(line)
    return (match.group(1), match.group(2)) if match else None


_ONLINE_RE = re.compile(r"\* Online \(\d+\): (.*?)(?: and \d+ more"
                        r" \(type -users\))?")
_LISTED_NICK_RE = re.compile(r"([^\s,()]+)(?: \([^)]*\))?")
_CAME_RE = re.compile(r"\* (\S+) joined the chat")
_WENT_RE = re.compile(r"\* (\S+) (?:left the chat|was (?:kicked|banned)"
                      r" by \S+.*)", re.DOTALL)
_MANY_RE = re.compile(r"\* (Joined|Left) \(\d+\): (.*?)(?: and \d+ more)?")


def presence(line: str) -> Optional[Tuple[str, List[str]]]:
    """Who a line says is online, came or went, for a client keeping a
    list of nicknames: ``("online", nicks)`` for the users line (the
    nicknames it shows), ``("joined", nicks)`` or ``("left", nicks)``.
    None for any other line."""
    match = _ONLINE_RE.fullmatch(line)
    if match:
        return "online", _LISTED_NICK_RE.findall(match.group(1))
    match = _CAME_RE.fullmatch(line)
    if match:
        return "joined", [match.group(1)]
    match = _WENT_RE.fullmatch(line)
    if match:
        return "left", [match.group(1)]
    match = _MANY_RE.fullmatch(line)
    if match:
        return match.group(1).lower(), match.group(2).split(", ")
    return None


def partner_change(line: str) -> Optional[str]:
    """For a line confirming ``-to NICK`` or ``-all``: the new partner's
    nickname, or "" for everyone. None for any other line."""
    if line == format_everyone():
        return ""
    match = _PARTNER_RE.fullmatch(line)
    return match.group(1) if match else None


def history_line(line: str) -> Optional[Tuple[str, str]]:
    """For a history line: (HH:MM, the line as it was). None otherwise."""
    match = _HISTORY_RE.fullmatch(line)
    return (match.group(1), match.group(2)) if match else None


def resume_token(line: str) -> Optional[str]:
    """The token a resume-token line gives, or None for any other line."""
    match = _TOKEN_RE.fullmatch(line)
    return match.group(1) if match else None


def is_shutdown(line: str) -> bool:
    """True for the server's shutdown notice."""
    return line.startswith(NOTICE + _SHUTDOWN)
