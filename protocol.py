"""The chat's wire protocol, with no sockets in it.

Everything both ends must agree on lives here, so that ``server.py`` and
``client.py`` only move bytes and keep state:

* the limits and defaults, as named constants;
* framing: :class:`LineFramer` turns a byte stream into bounded lines;
* :func:`decode_line`: bytes to text, refusing what may not travel;
* nickname rules: :func:`nick_error` and :func:`nick_key`;
* command parsing: :func:`parse_command` returns a small :class:`Command`;
* the text of every line the server sends (the ``format_*`` functions) and
  :func:`parse_server_line`, which lets a client tell those lines apart;
* :class:`TLSLayer`, TLS over memory buffers, for both ends.

The protocol is UTF-8 text, one message per line, ending in ``\\n``
(``\\r\\n`` is accepted), so ``nc 127.0.0.1 4321`` is a usable client.
A notice starts with ``* ``, an error with ``! ``, a private message with
``[private] ``, markers no nickname can start with; a public message is
``NICK: text``.
"""

from __future__ import annotations

import re
import ssl
import threading
import unicodedata
from typing import (Callable, Iterable, List, NamedTuple, Optional, Sequence,
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
#: Wrong admin passwords one connection may try before it gets no more tries.
ADMIN_MAX_TRIES = 3
#: Bytes queued for one slow reader before the server disconnects it.
DEFAULT_OUTBOX_LIMIT = 1024 * 1024
#: Flood control: lines per second a connection may send on average...
DEFAULT_RATE_LIMIT = 20.0
#: ...and how many it may send at once after a pause.
DEFAULT_RATE_BURST = 40
#: Connections served at once; one more is told the server is full.
DEFAULT_MAX_CLIENTS = 1000
#: Seconds a new connection has to choose a nickname.
DEFAULT_REGISTER_TIMEOUT = 60.0
#: Rooms up to this size get a notice per join and leave; larger rooms get
#: one batched notice per second instead (see :func:`format_joined_many`).
DEFAULT_ANNOUNCE_LIMIT = 100
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
_CONTROL_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def decode_line(raw: bytes) -> str:
    """Decode one framed line, refusing what must not reach other users.

    A trailing ``\\r`` (telnet, Windows) is removed. Raises
    :class:`ProtocolError` for invalid UTF-8 and for control characters
    (anything in C0, DEL or C1 but tab): they could drive another user's
    terminal, so the server refuses them rather than pass them on.
    """
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    try:
        text = raw.decode(ENCODING)
    except UnicodeDecodeError:
        raise ProtocolError("line is not valid UTF-8, dropped") from None
    found = _CONTROL_RE.search(text)
    if found:
        raise ProtocolError(
            "control characters are not allowed"
            f" (found U+{ord(found.group()):04X}), line dropped")
    return text


def encode_line(text: str) -> bytes:
    """The bytes of one line as it goes on the wire."""
    return (text + "\n").encode(ENCODING)


# --- Nicknames ---------------------------------------------------------------


def nick_error(nick: str) -> Optional[str]:
    """Why ``nick`` is not a valid nickname, or None when it is.

    Valid: 1-20 characters, each a letter of any script (with its combining
    marks), a decimal digit, or one of ``_ - .``; not starting with ``-``,
    which would read as a command.
    """
    if not nick:
        return "a nickname cannot be empty"
    if len(nick) > NICK_MAX_CHARS:
        return f"a nickname can have at most {NICK_MAX_CHARS} characters"
    if nick.startswith("-"):
        return "a nickname cannot start with '-'"
    for index, char in enumerate(nick):
        category = unicodedata.category(char)
        if category[0] == "L" or category == "Nd" or char in NICK_PUNCTUATION:
            continue
        if category[0] == "M" and index > 0:
            continue
        if char.isspace():
            return "a nickname cannot contain spaces"
        if category[0] == "C":
            return "a nickname cannot contain control characters"
        return (f"a nickname cannot contain {char!r}; use letters, digits"
                f" and {' '.join(NICK_PUNCTUATION)}")
    return None


def nick_key(nick: str) -> str:
    """The form under which nicknames are compared: case is ignored, and
    composed and decomposed letters count as the same."""
    return unicodedata.normalize("NFC", nick).casefold()


# --- Commands ----------------------------------------------------------------


class CommandError(ProtocolError):
    """A line that reads as a command but is not a valid one."""


class Command(NamedTuple):
    """One line from a user, parsed.

    ``name`` is one of :data:`COMMAND_NAMES`; ``target`` is the nickname a
    command names (``-to``, ``-kick``) or the password (``-admin``);
    ``text`` is the message, possibly empty.
    """

    name: str
    target: str = ""
    text: str = ""


# What each command does, for -help; the order is the order shown.
HELP: Sequence[Sequence[str]] = (
    ("-to NICK text", "send text to NICK only (private)"),
    ("-to NICK", "make NICK your partner: plain lines go to NICK only"),
    ("-all text", "send text to everyone"),
    ("-all", "plain lines go to everyone again (the default)"),
    ("text", "a plain line goes to your partner, or to everyone"),
    ("-users", "who is online"),
    ("-help", "this list"),
    ("-exit", "leave the chat"),
    ("-admin PASSWORD", "become an admin"),
    ("-kick NICK [reason]", "admin: disconnect NICK"),
    ("down server", "admin: tell everyone, then stop the server"),
)

SHUTDOWN_COMMAND = "down server"

# Flag -> (command name, what follows the flag: "" none, "text",
# "nick" a nickname then optional text, "password").
_FLAGS = {
    "-to": ("to", "nick"),
    "-all": ("all", "text"),
    "-users": ("users", ""),
    "-help": ("help", ""),
    "-exit": ("exit", ""),
    "-admin": ("admin", "password"),
    "-kick": ("kick", "nick"),
}

#: Every value :attr:`Command.name` can take.
COMMAND_NAMES = tuple(name for name, _ in _FLAGS.values()) + ("down", "say")


def parse_command(line: str) -> Command:
    """Parse one decoded line into a :class:`Command`.

    A line starting with ``-`` is a command (flags are case-insensitive);
    ``down server`` is the shutdown command; anything else is ``say``, a
    plain message. Raises :class:`CommandError`, with a message for the user,
    for an unknown flag or a command missing its argument.
    """
    if not line.startswith("-"):
        if " ".join(line.split()).lower() == SHUTDOWN_COMMAND:
            return Command("down")
        return Command("say", text=line)
    flag, rest = _split_word(line)
    flag = flag.lower()
    if flag not in _FLAGS:
        raise CommandError(
            f"unknown command {flag[:30]!r}; type -help for the list")
    name, argument = _FLAGS[flag]
    if argument == "":
        if rest:
            raise CommandError(f"{flag} takes no arguments")
        return Command(name)
    if argument == "text":
        return Command(name, text=rest)
    if not rest:
        what = "PASSWORD" if argument == "password" else "NICK"
        raise CommandError(f"usage: {flag} {what}")
    if argument == "password":
        return Command(name, target=rest)
    target, text = _split_word(rest)
    return Command(name, target=target, text=text)


def _split_word(text: str) -> Tuple[str, str]:
    """The first word of ``text`` and the rest, both stripped; words are
    split at any white space (a tab too)."""
    parts = text.split(None, 1)
    if not parts:
        return "", ""
    return parts[0], (parts[1].strip() if len(parts) > 1 else "")


# --- Server lines ------------------------------------------------------------
# Every line the server sends is made by one of these functions, so its wording
# lives in one place; parse_server_line() reads them back for the client.

NOTICE = "* "
ERROR = "! "
PRIVATE = "[private] "


def format_message(nick: str, text: str) -> str:
    """A public message: ``alice: hello``."""
    return f"{nick}: {text}"


def format_private(nick: str, text: str) -> str:
    """A private message, as its receiver sees it."""
    return f"{PRIVATE}{nick}: {text}"


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


def format_nick_taken(nick: str) -> str:
    return format_nick_refused(nick, "it is taken, choose another")


_WELCOME = "Welcome, {}! You are in the chat."
_WELCOME_RE = re.compile(r"\* Welcome, (\S+)! You are in the chat\.")


def format_welcome(nick: str) -> str:
    return format_notice(_WELCOME.format(nick))


def format_commands_hint() -> str:
    """The one-line list of commands shown on joining."""
    # Short enough for an 80-column terminal; -help has the rest.
    return format_notice(
        "Commands: -to NICK [text], -all [text], -users, -exit; -help for"
        " more")


def format_help() -> List[str]:
    """The lines of ``-help``."""
    width = max(len(usage) for usage, _ in HELP)
    return [format_notice(f"{usage.ljust(width)}  {what}")
            for usage, what in HELP]


def format_users(nicks: Sequence[str], me: str, admins: Iterable[str] = (),
                 total: Optional[int] = None) -> str:
    """The users online, with ``me`` and the admins marked.

    ``total`` is how many are online when ``nicks`` lists only some of
    them (a joining user in a room of thousands gets one short line).
    """
    admins = set(admins)
    names = []
    for nick in nicks:
        marks = [mark for mark, yes in (("you", nick == me),
                                        ("admin", nick in admins)) if yes]
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


def format_no_such_user(nick: str) -> str:
    return format_error(f"no such user: {nick[:40]}; type -users to see who is"
                        " online")


def format_not_yourself() -> str:
    return format_error("that is you; choose someone else")


def format_nobody_else() -> str:
    return format_error("nobody else is online; message not sent")


def format_admin_granted() -> str:
    return format_notice("You are now an admin.")


def format_admin_refused(tries_left: int) -> str:
    if tries_left <= 0:
        return format_error(
            "wrong admin password; no more tries on this connection")
    return format_error(f"wrong admin password ({tries_left} tries left)")


def format_admin_locked() -> str:
    return format_error("no more admin tries on this connection")


def format_admin_only(what: str) -> str:
    return format_error(f"only an admin can {what}; see -admin PASSWORD")


def format_kicked(nick: str, admin: str, reason: str = "") -> str:
    """Told to everyone else when ``nick`` is kicked."""
    why = f": {reason}" if reason else ""
    return format_notice(f"{nick} was kicked by {admin}{why}")


def format_you_were_kicked(admin: str, reason: str = "") -> str:
    """Told to the user being kicked, just before the connection closes."""
    why = f": {reason}" if reason else ""
    return format_error(f"you were kicked by {admin}{why}")


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


def format_register_timeout() -> str:
    return format_error("timed out waiting for a nickname")


def format_line_too_long(limit: int = MAX_LINE_BYTES) -> str:
    return format_error(f"line too long (over {limit} bytes), dropped")


def format_flooding() -> str:
    return format_error("no end of line in a megabyte; disconnecting")


# --- TLS ---------------------------------------------------------------------


class TLSLayer:
    """TLS for one connection, kept apart from its socket.

    OpenSSL must not be used by two threads at once, yet one thread reads
    (and decrypts) while others send (and encrypt). So the socket stays a
    plain TCP socket and TLS runs over memory buffers behind one lock:
    :meth:`decrypt` what ``recv`` returned, :meth:`encrypt` what is about
    to be sent. Both ends use it: the server with ``server_side=True``, the
    client with the ``server_hostname`` it verifies.
    """

    def __init__(self, context: ssl.SSLContext, server_side: bool = False,
                 server_hostname: Optional[str] = None) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing,
                                     server_side=server_side,
                                     server_hostname=server_hostname)
        self._lock = threading.Lock()
        self._ended = False  # the peer's close_notify has come

    def handshake(self, send: Callable[[bytes], None],
                  receive: Callable[[], bytes]) -> None:
        """Run the handshake, sending with ``send`` and reading with
        ``receive`` (blocking; the caller sets the timeout). Raises
        ``ssl.SSLError`` if it fails, ``ConnectionError`` if the peer
        closes."""
        while True:
            with self._lock:
                try:
                    self._tls.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
                reply = self._outgoing.read()
            if reply:
                send(reply)
            if done:
                return
            data = receive()
            if not data:
                raise ConnectionError("connection closed during the TLS"
                                      " handshake")
            with self._lock:
                self._incoming.write(data)

    def decrypt(self, data: bytes) -> Optional[bytes]:
        """The plain text in ``data`` (possibly none yet), or None once
        the peer has closed TLS. Raises ``ssl.SSLError`` on a broken
        stream."""
        with self._lock:
            self._incoming.write(data)
            pieces = []
            while not self._ended:
                try:
                    piece = self._tls.read(64 * 1024)
                except ssl.SSLWantReadError:
                    break  # no complete record left
                except ssl.SSLZeroReturnError:
                    piece = b""
                if not piece:
                    # Python's read() returns b"" (rather than raising)
                    # once the peer's close_notify has come.
                    self._ended = True
                    break
                pieces.append(piece)
            if self._ended and not pieces:
                return None
            return b"".join(pieces)

    def encrypt(self, data: bytes) -> bytes:
        """The bytes to send for ``data``, with any TLS messages that
        are waiting to go (such as replies to the peer's)."""
        with self._lock:
            if data:
                self._tls.write(data)
            return self._outgoing.read()


# --- Reading server lines (for clients) --------------------------------------


class ServerLine(NamedTuple):
    """A server line, classified: ``kind`` is ``message``, ``private``,
    ``notice`` or ``error``; ``nick`` is the sender of a message (else "");
    ``text`` is the rest, without its marker."""

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
    match = _MESSAGE_RE.fullmatch(rest)
    if match:
        return ServerLine(kind, match.group(1), match.group(2))
    return ServerLine("notice", "", line)


def welcomed_nick(line: str) -> Optional[str]:
    """The nickname a welcome line names, or None for any other line."""
    match = _WELCOME_RE.fullmatch(line)
    return match.group(1) if match else None


def partner_change(line: str) -> Optional[str]:
    """For a line confirming ``-to NICK`` or ``-all``: the new partner's
    nickname, or "" for everyone. None for any other line."""
    if line == format_everyone():
        return ""
    match = _PARTNER_RE.fullmatch(line)
    return match.group(1) if match else None


def is_shutdown(line: str) -> bool:
    """True for the server's shutdown notice."""
    return line.startswith(NOTICE + _SHUTDOWN)
