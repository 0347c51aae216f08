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
from typing import Any, List, NoReturn, Optional

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
#: Log records waiting for the log's writer thread before new ones are
#: dropped.
LOG_QUEUE_LINES = 100000
#: Log lines a second about each kind of mass event (users connecting,
#: disconnecting, refused); past that, one line a second counts them.
LOG_BURST_LINES = 20
#: Environment variable that may hold the admin password.
PASSWORD_ENV = "CHAT_ADMIN_PASSWORD"


def _option(default: Any, help: str, metavar: Optional[str] = None,
            minimum: Optional[float] = None, above: bool = False) -> Any:
    """A config field that is also a command-line option: its default, its
    help, and the least value it takes (``above``: strictly more)."""
    return field(default=default, metadata={
        "help": help, "metavar": metavar, "minimum": minimum,
        "above": above})


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
        "", f"password for -admin; else ${PASSWORD_ENV}; else a random one"
            " is made and printed at start", metavar="PW")
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
        "flood control: lines per second per connection on average;"
        " 0 turns it off (default %(default)s)",
        metavar="LINES_PER_SECOND", minimum=0)
    rate_burst: int = _option(
        DEFAULT_RATE_BURST,
        "flood control: lines allowed at once after a pause"
        " (default %(default)s)", metavar="LINES", minimum=1)
    max_clients: int = _option(
        DEFAULT_MAX_CLIENTS, "connections at once (default %(default)s)",
        metavar="N", minimum=1)
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
        "", "append every public line, join, departure, kick and the"
            " shutdown to FILE, with UTC times (never private lines)",
        metavar="FILE")
    tls_cert: str = _option(
        "", "certificate (PEM) to serve TLS with; needs --tls-key",
        metavar="FILE")
    tls_key: str = _option(
        "", "private key (PEM) for --tls-cert", metavar="FILE")

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            minimum = item.metadata["minimum"]
            if minimum is None:
                continue
            value = getattr(self, item.name)
            if item.metadata["above"] and not value > minimum:
                raise ValueError(
                    f"{option_name(item.name)} must be more than {minimum}")
            if value < minimum:
                raise ValueError(
                    f"{option_name(item.name)} must be at least {minimum}")
        if self.port > 65535:
            raise ValueError("--port must be at most 65535")
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
            option_name(item.name), type=type(item.default),
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
