"""The server's settings: every limit it enforces, named once, and the one
:class:`ServerConfig` that holds them.

Each field of :class:`ServerConfig` is also a command-line option of the
same name (``max_line`` is ``--max-line``): :func:`build_parser` makes the
options from the fields' metadata, so an option is declared in one place.
A config checks itself when it is made (``__post_init__``), whether it
comes from the command line or from a test.

What both ends of the protocol must agree on (the line length, nickname
rules) is in ``protocol.py``; this module is the server's policy only.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, List, NoReturn, Optional

import protocol

# --- Limits and defaults (each one is documented in README.md) ---------------

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
#: one batched notice per :data:`ANNOUNCE_INTERVAL` instead.
DEFAULT_ANNOUNCE_LIMIT = 100
#: How often a large room hears who joined and left, in seconds.
ANNOUNCE_INTERVAL = 1.0
#: Seconds a TLS client has for its whole handshake.
TLS_HANDSHAKE_SECONDS = 10.0
#: Seconds a closing connection gets to receive what is queued for it.
CLOSE_GRACE_SECONDS = 2.0
#: Public lines replayed to a user on joining, and by ``-history``.
DEFAULT_HISTORY = 20
#: Public lines the room keeps for that.
DEFAULT_HISTORY_KEEP = 1000
#: Bytes one replay may take at most, however long its lines.
MAX_HISTORY_REPLAY_BYTES = 64 * 1024
#: Seconds a dropped user's seat is kept for them to ``-resume``.
DEFAULT_RESUME_GRACE = 120.0
#: Transcript lines waiting for the disk before new ones are dropped.
TRANSCRIPT_QUEUE_LINES = 10000
#: Lines of ``--motd FILE`` shown; the rest of the file is left out.
MAX_MOTD_LINES = 20
#: Characters of a ``--motd`` line shown; the rest is cut.
MAX_MOTD_LINE_CHARS = 300
#: The longest ``-mute``/``-ban`` an admin can give in minutes (a week);
#: without minutes, it lasts until lifted.
MAX_SANCTION_MINUTES = 7 * 24 * 60
#: Users one user may ``-ignore`` at once.
MAX_IGNORED = 100
#: What ``-away`` says when no reason is given.
DEFAULT_AWAY_REASON = "away"
#: Connections one address may have open at once (0: no limit).
DEFAULT_MAX_PER_ADDRESS = 10
#: New connections one address may open a minute (0: no limit).
DEFAULT_CONNECTS_PER_MINUTE = 30
#: Minutes a kicked user's address may not connect again (0: no ban).
DEFAULT_KICK_BAN_MINUTES = 5.0
#: Join and leave notices one address may cause at once, and a minute;
#: past them its notices wait for the once-a-second summary.
NOTICE_BURST = 6
NOTICES_PER_MINUTE = 12
#: Wrong admin passwords an address may make before it has to wait (a
#: typo or two is no attack)...
ADMIN_FREE_FAILURES = 3
#: ...then the next makes the address wait this long before its next try
#: is even looked at, and each one after doubles it...
ADMIN_DELAY_SECONDS = 1.0
#: ...up to this...
ADMIN_DELAY_MAX_SECONDS = 60.0
#: ...until this many lock the address out...
ADMIN_LOCKOUT_FAILURES = 10
#: ...for this long (also how long failures are remembered).
ADMIN_LOCKOUT_SECONDS = 15 * 60.0
#: Wrong admin passwords a minute from all addresses together; past it,
#: addresses that have failed already wait (the others still may try).
ADMIN_GLOBAL_FAILURES_PER_MINUTE = 30
#: A password shorter than this gets a warning at start.
ADMIN_PASSWORD_MIN_CHARS = 12
#: Refused lines one connection gets logged; the rest are counted and
#: the count logged when it ends.
LOG_REFUSALS_PER_CONNECTION = 5
#: The log's budget, whatever clients do: lines a second on average, and
#: at once. Lines over it are dropped and counted in the next one.
LOG_LINES_PER_SECOND = 20.0
LOG_BURST = 200
#: Nicknames a new connection may have refused in a row before it is
#: closed (a script, or another protocol, is talking).
MAX_NICK_FAILURES = 10
#: Log records waiting for the log's writer thread before new ones are
#: dropped.
LOG_QUEUE_LINES = 100000
#: Log lines a second about each kind of mass event (users connecting,
#: disconnecting, refused); past that, one line a second counts them.
LOG_BURST_LINES = 20
#: Environment variable that may hold the admin password.
PASSWORD_ENV = "CHAT_ADMIN_PASSWORD"
#: The web front-end's HTTP port (``--web-port``).
DEFAULT_WEB_PORT = 4322
#: What ``--web-port`` takes to turn the web front-end off.
WEB_PORT_OFF = "off"
#: Bytes of an HTTP request line and its headers, together.
WEB_MAX_HEAD_BYTES = 8 * 1024
#: Seconds a browser has to send its whole HTTP request (and to take the
#: answer, for the page and its files).
WEB_REQUEST_SECONDS = 10.0
#: Seconds a browser may be silent before the server pings it...
WEB_PING_INTERVAL = 30.0
#: ...and then has to answer, or its connection is dropped.
WEB_PONG_SECONDS = 30.0


def _option(default: Any, help: str, metavar: Optional[str] = None,
            minimum: Optional[float] = None, above: bool = False,
            parse: Optional[Callable[[str], Any]] = None) -> Any:
    """A config field that is also a command-line option: its default, its
    help, and the least value it takes (``above``: strictly more);
    ``parse`` reads the option's text (by default, the default's type)."""
    return field(default=default, metadata={
        "help": help, "metavar": metavar, "minimum": minimum,
        "above": above, "parse": parse})


def web_port_value(text: str) -> Optional[int]:
    """``--web-port``: a port number, or ``off`` (None)."""
    if text.strip().lower() == WEB_PORT_OFF:
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a port number, or {WEB_PORT_OFF}") from None


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server can be told; each field is the command-line
    option of the same name. Raises ValueError, naming the option, for a
    value that cannot work."""

    host: str = _option(
        protocol.DEFAULT_HOST,
        "address to listen on; '::' for every IPv6 and IPv4 address,"
        " '0.0.0.0' for every IPv4 one (default %(default)s)")
    port: int = _option(
        protocol.DEFAULT_PORT,
        "TCP port; 0 picks a free one, named in the log"
        " (default %(default)s)", metavar="PORT", minimum=0)
    admin_password: str = _option(
        "", f"password for -admin (visible in ps: prefer"
            f" --admin-password-file or ${PASSWORD_ENV}); else a random one"
            " is made and shown on the terminal only", metavar="PW")
    admin_password_file: str = _option(
        "", "read the admin password from the first line of FILE",
        metavar="FILE")
    max_line: int = _option(
        protocol.MAX_LINE_BYTES,
        "longest line a user may send (default %(default)s)",
        metavar="BYTES", minimum=1)
    outbox_limit: int = _option(
        DEFAULT_OUTBOX_LIMIT,
        "bytes queued for a user who does not read before the server"
        " disconnects them (default %(default)s)", metavar="BYTES",
        minimum=1)
    rate_limit: float = _option(
        DEFAULT_RATE_LIMIT,
        "flood control: lines per second per address (all its"
        " connections together) on average; 0 turns all flood control"
        " off (default %(default)s)",
        metavar="LINES_PER_SECOND", minimum=0)
    rate_burst: int = _option(
        DEFAULT_RATE_BURST,
        "flood control: lines allowed at once after a pause"
        " (default %(default)s)", metavar="LINES", minimum=1)
    max_clients: int = _option(
        DEFAULT_MAX_CLIENTS, "connections at once (default %(default)s)",
        metavar="N", minimum=1)
    max_per_address: int = _option(
        DEFAULT_MAX_PER_ADDRESS,
        "connections one address may have at once; 0: no limit"
        " (default %(default)s)", metavar="N", minimum=0)
    connects_per_minute: int = _option(
        DEFAULT_CONNECTS_PER_MINUTE,
        "new connections one address may open a minute; 0: no limit"
        " (default %(default)s)", metavar="N", minimum=0)
    kick_ban_minutes: float = _option(
        DEFAULT_KICK_BAN_MINUTES,
        "minutes a kicked user's address may not connect again; 0: no"
        " ban (default %(default)s)", metavar="MINUTES", minimum=0)
    register_timeout: float = _option(
        DEFAULT_REGISTER_TIMEOUT,
        "time a new connection has to choose a nickname"
        " (default %(default)s)", metavar="SECONDS", minimum=0, above=True)
    announce_limit: int = _option(
        DEFAULT_ANNOUNCE_LIMIT,
        "rooms up to N users hear each join and leave as it happens;"
        " larger rooms get one summary line a second"
        " (default %(default)s)", metavar="N", minimum=0)
    history: int = _option(
        DEFAULT_HISTORY,
        "public lines replayed to a user on joining; 0: none (-history"
        " still answers) (default %(default)s)", metavar="N", minimum=0)
    history_keep: int = _option(
        DEFAULT_HISTORY_KEEP,
        "public lines the server keeps for -history (default %(default)s)",
        metavar="N", minimum=0)
    resume_grace: float = _option(
        DEFAULT_RESUME_GRACE,
        "seconds a dropped user's seat (nickname, lines sent to them) is"
        " kept for them to come back; 0 turns it off (default"
        " %(default)s)", metavar="SECONDS", minimum=0)
    log: str = _option(
        "", "append every public line, join, departure, nickname change,"
            " kick, ban, mute and the shutdown to FILE, with UTC times"
            " (never private lines)",
        metavar="FILE")
    motd: str = _option(
        "", "message of the day: the first lines of FILE, shown to every"
            " user on joining and by -motd", metavar="FILE")
    tls_cert: str = _option(
        "", "certificate (PEM) to serve TLS with; needs --tls-key",
        metavar="FILE")
    tls_key: str = _option(
        "", "private key (PEM) for --tls-cert", metavar="FILE")
    web_port: Optional[int] = _option(
        DEFAULT_WEB_PORT,
        "HTTP port of the web page (browsers join the same chat there);"
        f" '{WEB_PORT_OFF}' turns it off; with --port 0 it is picked"
        " freely too (default %(default)s)", metavar="PORT", minimum=0,
        parse=web_port_value)
    web_origin: str = _option(
        "", "web pages allowed to open chat connections besides the"
            " server's own: origins such as https://school.example,"
            " comma-separated, or '*' for any", metavar="ORIGINS")

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            minimum = item.metadata["minimum"]
            value = getattr(self, item.name)
            if minimum is None or value is None:
                continue
            if item.metadata["above"] and not value > minimum:
                raise ValueError(
                    f"{option_name(item.name)} must be more than {minimum}")
            if value < minimum:
                raise ValueError(
                    f"{option_name(item.name)} must be at least {minimum}")
        if self.port > 65535:
            raise ValueError("--port must be at most 65535")
        if self.web_port is not None and self.web_port > 65535:
            raise ValueError("--web-port must be at most 65535")
        if self.web_port and self.web_port == self.port:
            raise ValueError("--web-port must differ from --port")
        if self.history > self.history_keep:
            raise ValueError("--history cannot be more than --history-keep")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")


def option_name(name: str) -> str:
    """The command-line option of a config field: ``--max-line``."""
    return "--" + name.replace("_", "-")


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (naming the option), not the
    usage and then the mistake."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The server's command line: one option per :class:`ServerConfig`
    field, plus ``--verbose``."""
    parser = _Parser(
        description="Run the chat server. Users connect with client.py or"
                    " with 'nc HOST PORT'.")
    for item in dataclasses.fields(ServerConfig):
        parser.add_argument(
            option_name(item.name),
            type=item.metadata["parse"] or type(item.default),
            default=item.default, metavar=item.metadata["metavar"],
            help=item.metadata["help"])
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="log every command (never its text or passwords)")
    return parser


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The parsed command line; ``args.config`` is the checked
    :class:`ServerConfig` (its password may still be empty). A bad value
    ends the program with one line naming the option, and status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    values = {item.name: getattr(args, item.name)
              for item in dataclasses.fields(ServerConfig)}
    try:
        args.config = ServerConfig(**values)
    except ValueError as error:
        parser.error(str(error))
    return args
