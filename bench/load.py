#!/usr/bin/env python3
"""Load benchmark for the chat server: fan-out, latency, idle memory.

The bench starts ``server.py`` as its own process (``--port 0 --rate-limit 0``
and a high ``--max-clients``; the port is read from its log line), or it
targets a server already running on ``--host``/``--port``. Worker processes
(``--workers``) open the client connections with non-blocking sockets and
``selectors`` so that the load generator is not the bottleneck, and report how
busy they were.

A message run goes like this:

1. N clients connect and choose a nickname; registration time is measured
   from the first connect to the last welcome line.
2. Barrier: client 0 broadcasts ``barrier K`` (again every 0.2 s) until every
   other client has received it, so every client is surely in the room.
3. S senders (clients 0..S-1) send M lines each, ``-all t SENDER SEQ TIME_NS``
   (TIME_NS is ``time.monotonic_ns()``, the system-wide CLOCK_MONOTONIC, so it
   is comparable across the worker processes), paced at ``--rate`` lines/s in
   total or as fast as the sockets accept them. Every client reads; a
   receiver only keeps the received bytes and their arrival time while the
   run lasts, and parses them afterwards.
4. For every (receiver, sender) pair the bench counts lost, duplicated and
   out-of-order lines, and it measures each delivery's latency. Expected
   deliveries are S * M * (N - 1): a sender does not get its own lines back.

It reports deliveries/s, latency p50/p90/p99/max, lost/duplicated/reordered,
the registration time, the server's CPU time per delivery (utime + stime from
``/proc/PID/stat`` over the send phase) and its peak RSS (``VmHWM``). The idle
mode registers N clients, holds them open and reports the server's RSS per
connection, ``(VmRSS with N clients - VmRSS before) / N``.

How to read the figures:

* latency is from the moment a line was handed to the kernel to the moment
  the chunk holding its end was read; unpaced runs queue every line at once,
  so their latency is mostly queueing, and paced runs show a "pacing lag"
  (how late the generator sent, which does not count in the latency);
* deliveries/s is the lines delivered divided by the time from the start of
  the send phase to the last delivery;
* "load generator busy" is each worker's CPU time divided by the wall time
  of the phase: near 100% means the bench, not the server, set the pace;
* lost counts lines that had not arrived when the run ended: two seconds
  after every sender was done with nothing more arriving, or at the timeout;
* a run notes the load average before it: on a busy machine every figure,
  latency most of all, moves a lot.

``--compare-ncat`` runs the same scenario against ``ncat --chat`` (Debian
package ``ncat``; if it is missing the bench says so and skips it) in the
same invocation and prints the chat/ncat ratio of each median. ncat has no
nicknames: its clients only connect (ncat's "<announce>" line to the newcomer
counts as registration), send plain ``t SENDER SEQ TIME_NS`` lines and
receive them as ``<userK> t ...``; ncat prefixes only the first line of each
chunk it relays, so bare ``t ...`` lines count too. Lines ncat loses or
splices together are counted as lost or malformed. ncat listens with a
backlog of 10 and quits when a queued connection fails, so its clients
connect 8 at a time; it uses select(), so the idle comparison stops at 1000.

``--tls`` runs the same over TLS: the bench starts the server with
``--tls-cert``/``--tls-key`` from ``tests/tls`` (or, with ``--port``, expects
a running TLS server), and its clients do the TLS handshake (counted in the
registration time) and then encrypt and decrypt every line, checking the
server's certificate against ``--cafile`` (default ``tests/tls/cert.pem``).
A TLS client sends its nickname when the server's prompt comes, that is
once the server is through its side of the handshake (a plain client sends
it at once).
The clients run TLS over memory buffers (``transport.TLSLayer``, the
chat's own) next to their non-blocking sockets, so the event loop is the
same as without TLS. With
``--compare-ncat`` ncat is started with ``--ssl --ssl-cert --ssl-key`` too.

Everything goes to 127.0.0.1 or ::1 only. Each run is bounded by
``--timeout`` seconds (per run); a run that hits it reports what it got and
is marked incomplete. The bench raises its open-file limit to the hard limit
(the server it starts inherits it), and only ever stops the processes it
started, by PID: terminate, wait, kill; also on Ctrl-C or SIGTERM.

Usage::

    python3 bench/load.py                          # fanout: N=100 S=10 M=500
    python3 bench/load.py --scenario latency --compare-ncat
    python3 bench/load.py --scenario fanout --tls --repeat 3
    python3 bench/load.py --scenario idle          # 10,000 idle clients
    python3 bench/load.py --idle 1000              # idle, 1,000 clients
    python3 bench/load.py -n 20 -s 4 -m 1000 --rate 2000 --repeat 3
    python3 bench/load.py --port 4321 --server-pid 12345   # running server
    python3 bench/load.py --server-arg=--announce-limit=50 --json out.json

Scenarios (explicit -n/-s/-m/--rate override them):

* ``fanout``:  N=100 S=10 M=500, unpaced (throughput, server CPU per line);
* ``latency``: N=50 S=5 M=500, paced at 500 lines/s in total;
* ``idle``:    N=10000 clients registered and held open (RSS per connection).

Results are printed and written as JSON (``--json``, default
``bench/results/latest.json``). With ``--repeat K`` the summary shows the
median and the min-max of each figure. The exit status is 0 when every run
against the chat server completed with nothing lost, duplicated or reordered
(idle: every client registered and stayed connected), else 1.
"""

from __future__ import annotations

import argparse
import array
import errno
import ipaddress
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import (Any, Callable, Deque, Dict, Iterator, List, Optional,
                    Sequence, Set, Tuple)

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
if REPO_DIR not in sys.path:
    sys.path.insert(0, REPO_DIR)

# The chat's own TLS and line framing, so that the bench reads the server's
# lines exactly as its clients do.
import protocol  # noqa: E402
from transport import LineDecoder, TLSLayer  # noqa: E402

# --- Settings ----------------------------------------------------------------

DEFAULT_SERVER = os.path.join(REPO_DIR, "server.py")
DEFAULT_JSON = os.path.join(BENCH_DIR, "results", "latest.json")
DEFAULT_HOST = "127.0.0.1"
#: The test certificate and key: the server the bench starts with --tls
#: serves them, and the clients trust the certificate unless --cafile.
TLS_DIR = os.path.join(REPO_DIR, "tests", "tls")
TLS_CERT = os.path.join(TLS_DIR, "cert.pem")
TLS_KEY = os.path.join(TLS_DIR, "key.pem")

DEFAULT_TIMEOUT_S = 120.0
#: Seconds the idle mode holds its clients before it reads the server's RSS;
#: longer than the server's one-second batching of join notices.
DEFAULT_HOLD_S = 2.0
MIN_DEFAULT_WORKERS = 2
MAX_DEFAULT_WORKERS = 4
#: The server is started with at least this --max-clients.
SERVER_MAX_CLIENTS = 20000
SERVER_START_TIMEOUT_S = 15.0
PROCESS_STOP_TIMEOUT_S = 5.0
#: Extra time, past the run's deadline, for workers to parse and report.
RESULT_GRACE_S = 60.0

#: Connections the workers have connecting or registering at once, in all:
#: under the server's listen backlog, or connections wait for SYN retries.
CONNECT_WINDOW = 400
#: ncat listens with a backlog of 10, and quits when a queued connection
#: goes wrong, so it gets fewer at once.
NCAT_CONNECT_WINDOW = 8
RECV_SIZE = 256 * 1024
#: Longest line a client accepts from the server, in bytes (its framer's
#: limit): a longer one drops the connection.
MAX_LINE = 1024 * 1024
#: Lines an unpaced sender stamps and queues at once.
SEND_BATCH = 64
#: Longest sleep of a worker's event loop, so it notices timers and stops.
MAX_SELECT_S = 0.05
NS_PER_S = 1_000_000_000
BARRIER_RESEND_NS = 200_000_000
#: The senders start this long after the go signal, all at the same time.
START_DELAY_NS = 50_000_000
#: Once every sender is done, this long with no new line ends the wait for
#: lines that were lost.
QUIET_NS = 2 * NS_PER_S
#: After the run, receivers read this much longer, to catch duplicates.
FINAL_DRAIN_NS = 100_000_000
#: An ncat client counts as registered when ncat's announcement arrives, or
#: this long after the connection is established.
NCAT_REGISTER_WAIT_NS = NS_PER_S
NCAT_CHECK_NS = 100_000_000
#: ncat --chat uses select(): more connections than this do not work.
NCAT_MAX_CLIENTS = 1000
NCAT_EXTRA_CONNS = 16
NCAT_START_TIMEOUT_S = 5.0
#: A worker busier than this (CPU time / wall time) may be the bottleneck.
BUSY_WARNING = 0.9
#: Error messages and per-receiver problems kept, as samples.
SAMPLE_SIZE = 20

CHAT = "chat"
NCAT = "ncat"

# What clients send and what receivers look for.
CHAT_TOKEN_LINE = b"-all t %d %d %d\n"
NCAT_TOKEN_LINE = b"t %d %d %d\n"
CHAT_BARRIER_LINE = b"-all barrier %d\n"
NCAT_BARRIER_LINE = b"barrier %d\n"
TOKEN_WORD = b"t"
TOKEN_MARK = b" t "          # in "nick: t 3 17 123" and "<user5> t 3 17 123"
TOKEN_START = b"t "         # ...and "t 3 18 123", relayed bare by ncat
BARE_TOKEN_MARK = b"\nt "
#: Bytes of a received stream kept to find a mark cut between two chunks.
MARK_OVERLAP = len(TOKEN_MARK) - 1
BARRIER_MARK = b" barrier "
WELCOME_MARK = b"* Welcome, "
PROMPT_MARK = b"* Choose a nickname"
ERROR_MARK = b"! "

LISTENING_RE = re.compile(r"listening on \[?([0-9A-Fa-f:.]+)\]?:(\d+)")


@dataclass(frozen=True)
class Scenario:
    clients: int
    senders: int
    messages: int
    rate: float          # lines/s in total; 0 = as fast as the sockets take
    idle: bool = False


SCENARIOS = {
    "fanout": Scenario(clients=100, senders=10, messages=500, rate=0.0),
    "latency": Scenario(clients=50, senders=5, messages=500, rate=500.0),
    "idle": Scenario(clients=10000, senders=0, messages=0, rate=0.0,
                     idle=True),
}


@dataclass(frozen=True)
class Plan:
    """What one worker process does; the same for every worker but
    ``worker`` and ``clients``."""

    worker: int
    workers: int
    protocol: str                 # CHAT or NCAT
    family: int
    address: Tuple[Any, ...]
    clients: Tuple[int, ...]      # global client indexes
    total_clients: int
    senders: int
    messages: int
    rate: float
    nick_tag: str
    deadline_ns: int
    tls: bool = False
    cafile: str = ""              # certificates the TLS clients trust


# --- Small helpers -----------------------------------------------------------


def now_ns() -> int:
    return time.monotonic_ns()


def cpu_seconds() -> float:
    """User + system CPU time of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(ordered: Sequence[float], pct: float) -> Optional[float]:
    """Nearest-rank percentile of an ascending sequence."""
    if not ordered:
        return None
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latency_summary(
        latencies_ns: Sequence[int]) -> Dict[str, Optional[float]]:
    """p50/p90/p99/max/mean of nanosecond latencies, in milliseconds."""
    ordered = sorted(latencies_ns)

    def ms(value: Optional[float]) -> Optional[float]:
        return None if value is None else round(value / 1e6, 4)

    mean = sum(ordered) / len(ordered) if ordered else None
    return {"p50": ms(percentile(ordered, 50)),
            "p90": ms(percentile(ordered, 90)),
            "p99": ms(percentile(ordered, 99)),
            "max": ms(ordered[-1] if ordered else None),
            "mean": ms(mean)}


def proc_cpu_seconds(pid: Optional[int]) -> Optional[float]:
    """utime + stime of process ``pid`` from /proc, or None."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    # After "(comm)": state is field 3, utime 14 and stime 15 (1-based).
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def proc_memory_kib(pid: Optional[int]) -> Dict[str, int]:
    """VmRSS and VmHWM of process ``pid`` in KiB (empty if unknown)."""
    found: Dict[str, int] = {}
    if pid is None:
        return found
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    found[name] = int(value.split()[0])
    except OSError:
        pass
    return found


def raise_fd_limit() -> int:
    """Raise this process's open-file soft limit to the hard limit (children
    inherit it, the server too); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    except (ValueError, OSError):
        return soft


def default_workers() -> int:
    """One worker per CPU but one (left for the server), at least two."""
    return max(MIN_DEFAULT_WORKERS,
               min(MAX_DEFAULT_WORKERS, (os.cpu_count() or 2) - 1))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve(host: str, port: int) -> Tuple[int, Tuple[Any, ...]]:
    """(family, sockaddr) of a loopback host and port."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    for family, _, _, _, address in info:
        if is_loopback(address[0]):
            return family, address
    raise SystemExit(f"{host} is not a loopback address")


def nick_for(tag: str, index: int) -> str:
    return f"b{tag}n{index}"


def expected_per_receiver(index: int, senders: int, messages: int) -> int:
    """Token lines client ``index`` should receive: all but its own."""
    own = messages if index < senders else 0
    return senders * messages - own


# --- Worker processes: the clients -------------------------------------------

# Client states.
NEW, CONNECTING, REGISTERING, READY, CLOSED = range(5)
READ = selectors.EVENT_READ
READ_WRITE = selectors.EVENT_READ | selectors.EVENT_WRITE


class Client:
    """One connection of a worker, with what it has received."""

    __slots__ = ("index", "nick", "sock", "state", "events", "out",
                 "decoder", "tail", "chunks", "tokens", "expected",
                 "seen_barrier", "started_ns", "registered_ns", "next_seq",
                 "tls", "secured")

    def __init__(self, index: int, nick: str, expected: int) -> None:
        self.index = index
        self.nick = nick
        self.sock: Optional[socket.socket] = None
        self.state = NEW
        self.events = 0
        self.out = bytearray()            # bytes not yet taken by the kernel
        # Line framing (and with --tls decryption, see _connected) of what
        # the server sends.
        self.decoder = LineDecoder(max_line=MAX_LINE)
        # The send phase: (arrival ns, plain bytes as received), framed
        # only afterwards (analyse), with the last bytes seen.
        self.chunks: List[Tuple[int, bytes]] = []
        self.tail = b"\n"
        self.tokens = 0                   # token lines received, roughly
        self.expected = expected
        self.seen_barrier = False
        self.started_ns = 0
        self.registered_ns = 0
        self.next_seq = 0                 # next line a sender sends
        self.tls: Optional[TLSLayer] = None   # with --tls
        self.secured = False              # the TLS handshake is done


class Worker:
    """Runs one worker's clients, phase by phase, as the main process says.

    Commands come over ``conn``: ``register``, ``barrier``, ``go`` (with the
    start time), ``senders_done``, ``stop`` and ``finish``. The worker
    replies ``registered``, ``barrier_ok``, ``sent``, ``complete`` and
    ``result``. Sockets are served all the time, between phases too.
    """

    def __init__(self, conn: multiprocessing.connection.Connection,
                 plan: Plan) -> None:
        self.conn = conn
        self.plan = plan
        self.chat = plan.protocol == CHAT
        self.selector = selectors.DefaultSelector()
        self.selector.register(conn.fileno(), READ, None)
        self.inbox: Deque[tuple] = deque()
        self.stopped = False
        self.all_sent_ns = 0
        self.clients = [
            Client(index, nick_for(plan.nick_tag, index),
                   expected_per_receiver(index, plan.senders, plan.messages))
            for index in plan.clients]
        # What the phase does with the lines a client received (and when
        # they came), or, in the send phase (``keep_raw``), with the bytes.
        self.on_lines: Callable[[Client, List[bytes], int],
                                None] = self._ignore
        self.keep_raw = False
        self.errors: Dict[str, int] = {}
        self.dropped = 0                  # connections lost after registering
        self.in_flight = 0
        self.settled = 0
        self.registering: Set[Client] = set()
        self.first_connect_ns = 0
        self.missing_barrier = 0
        self.incomplete = 0
        self.last_token_ns = 0
        self.send_lags_ns: List[int] = []
        self.token_line = CHAT_TOKEN_LINE if self.chat else NCAT_TOKEN_LINE
        self.pumping = False              # unpaced senders are sending
        window = CONNECT_WINDOW if self.chat else NCAT_CONNECT_WINDOW
        self.window = max(1, window // plan.workers)
        # ncat prefixes only the first line of what it relays at once.
        self.bare_tokens = not self.chat
        self.tls_context: Optional[ssl.SSLContext] = None
        if plan.tls:
            self.tls_context = ssl.create_default_context(
                cafile=plan.cafile or None)
            self.tls_context.minimum_version = ssl.TLSVersion.TLSv1_2

    # The event loop.

    def serve(self, until: Callable[[], bool], deadline_ns: int,
              tick: Optional[Callable[[int], int]] = None) -> bool:
        """Serve sockets and commands until ``until()`` is true (return
        True) or ``deadline_ns`` passes (return False). ``tick(now)`` runs
        every round and returns when it next wants to run."""
        while not until():
            now = now_ns()
            if now >= deadline_ns:
                return False
            wake = deadline_ns
            if tick is not None:
                wake = min(wake, tick(now))
            timeout = min(MAX_SELECT_S, max(0.0, (wake - now_ns()) / NS_PER_S))
            for key, mask in self.selector.select(timeout):
                client = key.data
                if client is None:
                    self._read_commands()
                    continue
                if mask & selectors.EVENT_WRITE:
                    self._on_writable(client)
                if mask & selectors.EVENT_READ and client.state != CLOSED:
                    self._on_readable(client)
        return True

    def _read_commands(self) -> None:
        try:
            while self.conn.poll():
                message = self.conn.recv()
                if message[0] == "senders_done":
                    self.all_sent_ns = now_ns()
                elif message[0] == "stop":
                    self.stopped = True
                else:
                    self.inbox.append(message)
        except (EOFError, OSError):
            raise SystemExit(1) from None   # the main process is gone

    def _interrupted(self) -> bool:
        return self.stopped or bool(self.inbox)

    def reply(self, tag: str, payload: Any = None) -> None:
        self.conn.send((tag, payload))

    def run(self) -> None:
        """Obey commands until ``finish``."""
        hard_deadline = self.plan.deadline_ns + int(RESULT_GRACE_S * NS_PER_S)
        while True:
            if not self.serve(lambda: bool(self.inbox), hard_deadline):
                return
            command = self.inbox.popleft()
            if command[0] == "register":
                self.register()
            elif command[0] == "barrier":
                self.barrier()
            elif command[0] == "go":
                self.measure(command[1])
            elif command[0] == "finish":
                self.finish()
                return

    # Sockets.

    def _set_events(self, client: Client, events: int) -> None:
        if client.events != events:
            self.selector.modify(client.sock, events, client)
            client.events = events

    def _send(self, client: Client, data: bytes) -> None:
        client.out += self._wire(client, data)
        self._flush(client)

    @staticmethod
    def _wire(client: Client, data: bytes) -> bytes:
        """What goes on the wire for ``data``: itself, or with TLS the
        records that carry it."""
        if client.tls is None:
            return data
        return client.tls.encrypt(data)

    def _flush(self, client: Client) -> bool:
        """Hand queued bytes to the kernel; True when none are left."""
        if client.out:
            try:
                sent = client.sock.send(client.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as error:
                self._drop(client, f"send: {error.strerror or error}")
                return False
            del client.out[:sent]
        self._set_events(client, READ_WRITE if client.out else READ)
        return not client.out

    def _on_writable(self, client: Client) -> None:
        if client.state == CONNECTING:
            self._connected(client)
        elif self.pumping and client.index < self.plan.senders:
            self._pump(client)
        else:
            self._flush(client)

    def _on_readable(self, client: Client) -> None:
        try:
            data = client.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._drop(client, f"recv: {error.strerror or error}")
            return
        if not data:
            self._drop(client, "connection closed by the server")
            return
        if client.tls is not None and not client.secured:
            if not self._handshake(client, data):
                return
            data = b""   # lines that came with its end are held by TLS
        try:
            if self.keep_raw:
                self._keep(client, data)
            else:
                self._decode(client, data)
        except ssl.SSLError as error:
            self._drop(client, f"TLS: {error.reason or error}")
        except protocol.FramingError:
            self._drop(client, "line without end from the server")

    def _decode(self, client: Client, data: bytes) -> None:
        """Decrypt and frame ``data`` now, and hand its complete lines to
        the phase, stamped with when they could be read."""
        frames = client.decoder.feed(data)
        arrived = now_ns()
        if client.decoder.ended:
            self._drop(client, "TLS closed by the server")
            return
        self._send_tls_replies(client)
        if not frames:
            return
        if protocol.OVERLONG in frames:
            self._drop(client, "line without end from the server")
            return
        self.on_lines(client, frames, arrived)  # type: ignore[arg-type]

    def _keep(self, client: Client, data: bytes) -> None:
        """The send phase: decrypt ``data`` and keep it as it is, stamped
        with when it could be read; analyse frames it afterwards. Only the
        token lines are counted now, roughly, to know when all came."""
        if client.tls is not None:
            plain = client.tls.decrypt(data)
            if plain is None:
                self._drop(client, "TLS closed by the server")
                return
            data = plain
        if not data:
            return
        arrived = now_ns()
        self._send_tls_replies(client)
        client.chunks.append((arrived, data))
        # A mark may be cut between the previous chunk and this one.
        edge = client.tail + data[:MARK_OVERLAP]
        count = data.count(TOKEN_MARK) + edge.count(TOKEN_MARK)
        if self.bare_tokens:
            count += (data.count(BARE_TOKEN_MARK)
                      + edge.count(BARE_TOKEN_MARK))
        client.tail = (client.tail + data[-MARK_OVERLAP:])[-MARK_OVERLAP:]
        if not count:
            return
        self.last_token_ns = arrived
        before = client.tokens
        client.tokens += count
        if before < client.expected <= client.tokens:
            self.incomplete -= 1

    def _send_tls_replies(self, client: Client) -> None:
        """Send what TLS itself has to answer to what it read, if any."""
        if client.tls is not None and client.state != CLOSED:
            reply = client.tls.encrypt(b"")
            if reply:
                client.out += reply
                self._flush(client)

    def _handshake(self, client: Client, received: bytes = b"") -> bool:
        """One step of the TLS handshake with what came from the server;
        True once it is done (the client then registers). Drops the client
        if the handshake fails."""
        try:
            done, reply = client.tls.step(received)
        except ssl.SSLError as error:
            reason = getattr(error, "verify_message", None) or error.reason
            self._drop(client, f"TLS handshake: {reason or error}")
            return False
        client.out += reply
        self._flush(client)
        if done and client.state == REGISTERING:
            client.secured = True
            self._secured(client)
        return client.secured and client.state == REGISTERING

    def _note_error(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1

    def _drop(self, client: Client, reason: str) -> None:
        """Close ``client`` because something went wrong."""
        was = client.state
        self._close(client)
        self._note_error(reason)
        if was in (CONNECTING, REGISTERING):
            self._settle(client)
        elif was == READY:
            self.dropped += 1
            if not client.seen_barrier and client.index != 0:
                self.missing_barrier -= 1
            if client.tokens < client.expected:
                self.incomplete -= 1

    def _close(self, client: Client) -> None:
        if client.sock is not None:
            if client.events:
                self.selector.unregister(client.sock)
            client.sock.close()
        client.events = 0
        client.state = CLOSED

    # Phase 1: connect and register.

    def register(self) -> None:
        started, cpu_before = now_ns(), cpu_seconds()
        waiting = deque(self.clients)
        next_check = [0]
        self.on_lines = self._register_lines

        def tick(now: int) -> int:
            while waiting and self.in_flight < self.window:
                self._connect(waiting.popleft())
            if not self.chat and now >= next_check[0]:
                self._ncat_registered(now)
                next_check[0] = now + NCAT_CHECK_NS
            return next_check[0] if not self.chat else now + NS_PER_S

        self.serve(lambda: self.settled == len(self.clients)
                   or self._interrupted(), self.plan.deadline_ns, tick)
        ready = [c for c in self.clients if c.state == READY]
        self.reply("registered", {
            "ready": len(ready),
            "first_ns": self.first_connect_ns or started,
            "last_ns": max((c.registered_ns for c in ready), default=0),
            "each_ns": [c.registered_ns - c.started_ns for c in ready],
            "cpu_s": cpu_seconds() - cpu_before,
            "wall_s": (now_ns() - started) / NS_PER_S,
            "errors": dict(self.errors)})

    def _connect(self, client: Client) -> None:
        self.in_flight += 1
        client.started_ns = now_ns()
        self.first_connect_ns = self.first_connect_ns or client.started_ns
        self.registering.add(client)
        try:
            sock = socket.socket(self.plan.family, socket.SOCK_STREAM)
        except OSError as error:
            self._note_error(f"socket: {error.strerror or error}")
            client.state = CLOSED
            self._settle(client)
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.sock = sock
        client.state = CONNECTING
        code = sock.connect_ex(self.plan.address)
        if code not in (0, errno.EINPROGRESS):
            self._drop(client, f"connect: {os.strerror(code)}")
            return
        client.events = READ_WRITE
        self.selector.register(sock, READ_WRITE, client)

    def _connected(self, client: Client) -> None:
        code = client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._drop(client, f"connect: {os.strerror(code)}")
            return
        client.state = REGISTERING
        client.started_ns = client.started_ns or now_ns()
        if self.tls_context is not None:
            client.tls = TLSLayer(self.tls_context,
                                  server_hostname=self.plan.address[0])
            client.decoder = LineDecoder(client.tls, max_line=MAX_LINE)
            self._handshake(client)   # sends the ClientHello
        else:
            self._secured(client)

    def _secured(self, client: Client) -> None:
        """Connected (and through the TLS handshake): register. A TLS
        client waits for the prompt (see _register_lines)."""
        if self.chat and client.tls is None:
            self._send(client, client.nick.encode() + b"\n")
        else:
            self._set_events(client, READ)

    def _settle(self, client: Client) -> None:
        """``client`` is registered or failed: it frees its window slot."""
        if client in self.registering:
            self.registering.discard(client)
            self.in_flight -= 1
            self.settled += 1

    def _ready(self, client: Client, now: int) -> None:
        client.state = READY
        client.registered_ns = now
        self._settle(client)

    def _register_lines(self, client: Client, lines: List[bytes],
                        now: int) -> None:
        if client.state != REGISTERING:
            return
        if not self.chat or any(WELCOME_MARK in line for line in lines):
            self._ready(client, now)
            return
        for line in lines:
            if line.startswith(ERROR_MARK):
                text = line.decode("utf-8", "replace")
                self._drop(client, f"refused: {text[:100]}")
                return
        if client.tls is not None and any(PROMPT_MARK in line
                                          for line in lines):
            self._send(client, client.nick.encode() + b"\n")

    def _ncat_registered(self, now: int) -> None:
        """ncat clients connected long enough count as registered even if
        ncat did not announce them."""
        for client in list(self.registering):
            if (client.state == REGISTERING
                    and now - client.started_ns > NCAT_REGISTER_WAIT_NS):
                self._ready(client, now)

    # Phase 2: the barrier.

    def barrier(self) -> None:
        ready = [c for c in self.clients if c.state == READY]
        self.missing_barrier = sum(
            1 for c in ready if c.index != 0 and not c.seen_barrier)
        coordinator = next((c for c in ready if c.index == 0), None)
        line = CHAT_BARRIER_LINE if self.chat else NCAT_BARRIER_LINE
        state = {"next_ns": 0, "count": 0, "reported": False}
        self.on_lines = self._barrier_lines

        def tick(now: int) -> int:
            if coordinator is None or coordinator.state != READY:
                return now + NS_PER_S
            if now >= state["next_ns"]:
                self._send(coordinator, line % state["count"])
                state["count"] += 1
                state["next_ns"] = now + BARRIER_RESEND_NS
            return state["next_ns"]

        def until() -> bool:
            if self.missing_barrier <= 0 and not state["reported"]:
                state["reported"] = True
                self.reply("barrier_ok", {"sent": state["count"]})
            return self._interrupted()

        self.serve(until, self.plan.deadline_ns, tick)

    def _barrier_lines(self, client: Client, lines: List[bytes],
                       now: int) -> None:
        if not client.seen_barrier and any(BARRIER_MARK in line
                                           for line in lines):
            client.seen_barrier = True
            if client.index != 0:
                self.missing_barrier -= 1

    # Phase 3: send and receive.

    def measure(self, start_ns: int) -> None:
        plan = self.plan
        senders = [c for c in self.clients
                   if c.index < plan.senders and c.state == READY]
        self.incomplete = sum(1 for c in self.clients
                              if c.state == READY and c.tokens < c.expected)
        self.keep_raw = True
        cpu_before = cpu_seconds()
        state = {"started": False, "sent": False}
        ns_per_line = NS_PER_S / plan.rate if plan.rate > 0 else 0.0

        def due(client: Client, seq: int) -> int:
            return start_ns + int((client.index + seq * plan.senders)
                                  * ns_per_line)

        def tick(now: int) -> int:
            if now < start_ns:
                return start_ns
            if not state["started"]:
                state["started"] = True
                if plan.rate <= 0:
                    self.pumping = True
                    for client in senders:
                        self._pump(client)
            if plan.rate <= 0:
                return now + NS_PER_S
            wake = now + NS_PER_S
            for client in senders:
                if client.next_seq < plan.messages and client.state == READY:
                    if due(client, client.next_seq) <= now:
                        self._send_due(client, now, due)
                    if client.next_seq < plan.messages:
                        wake = min(wake, due(client, client.next_seq))
            return wake

        def until() -> bool:
            if self._interrupted():
                return True
            if not state["sent"] and all(
                    c.state != READY
                    or (c.next_seq >= plan.messages and not c.out)
                    for c in senders):
                state["sent"] = True
                self.reply("sent", {"at_ns": now_ns()})
            if state["sent"] and self.incomplete <= 0:
                return True
            if self.all_sent_ns:
                quiet_since = max(self.all_sent_ns, self.last_token_ns)
                return now_ns() - quiet_since > QUIET_NS
            return False

        finished = self.serve(until, plan.deadline_ns, tick)
        ended = now_ns()
        self.reply("complete", {
            "complete": finished and state["sent"] and self.incomplete <= 0,
            "timed_out": not finished,
            "end_ns": ended,
            "cpu_s": cpu_seconds() - cpu_before,
            "wall_s": max(1, ended - start_ns) / NS_PER_S})

    def _send_due(self, client: Client, now: int,
                  due: Callable[[Client, int], int]) -> None:
        """Send a paced sender's lines that are due, stamped ``now``."""
        first = client.next_seq
        last = first
        while last < self.plan.messages and due(client, last) <= now:
            last += 1
        self.send_lags_ns.append(now - due(client, first))
        line = self.token_line
        self._send(client, b"".join(line % (client.index, seq, now)
                                    for seq in range(first, last)))
        client.next_seq = last

    def _pump(self, client: Client) -> None:
        """An unpaced sender: queue and send lines until the socket is full.
        Each batch is stamped when it is made, after the previous one was
        taken whole by the kernel."""
        line = self.token_line
        while client.state == READY:
            if not self._flush(client):
                return
            first = client.next_seq
            if first >= self.plan.messages:
                return
            last = min(self.plan.messages, first + SEND_BATCH)
            stamp = now_ns()
            client.out += self._wire(client, b"".join(
                line % (client.index, seq, stamp)
                for seq in range(first, last)))
            client.next_seq = last

    # Phase 4: report.

    def finish(self) -> None:
        self.serve(lambda: False, now_ns() + FINAL_DRAIN_NS)
        connected = sum(1 for c in self.clients if c.state == READY)
        result = analyse(self.clients, self.plan)
        unframed = result.pop("unframed")
        if unframed:
            reason = "line without end from the server"
            self.errors[reason] = self.errors.get(reason, 0) + unframed
        result.update({
            "connected": connected,
            "dropped": self.dropped,
            "errors": dict(self.errors),
            "send_lags_ns": self.send_lags_ns,
        })
        for client in self.clients:
            self._close(client)
        self.reply("result", result)

    def _ignore(self, client: Client, lines: List[bytes], now: int) -> None:
        pass

    def close(self) -> None:
        for client in self.clients:
            if client.sock is not None:
                client.sock.close()
        self.selector.close()


def analyse(clients: Sequence[Client], plan: Plan) -> Dict[str, Any]:
    """Parse what the receivers got: deliveries, latencies, and per
    (receiver, sender) lost, duplicated and out-of-order lines.

    A token line is ``NICK: t SENDER SEQ TIME_NS`` (chat) or ``<userK> t
    SENDER SEQ TIME_NS`` (ncat), or for ncat also bare ``t SENDER SEQ
    TIME_NS``: ncat prefixes only the first line of each chunk it relays.
    The chunks kept in the send phase go through each client's framer, in
    order, so a line arrived with the chunk that holds its end.
    """
    senders, messages = plan.senders, plan.messages
    bare = plan.protocol == NCAT   # lines without the "<userK> " prefix
    lost_by_sender = [0] * senders
    dup_by_sender = [0] * senders
    reordered_by_sender = [0] * senders
    latencies = array.array("q")
    delivered = malformed = echoed = broken = 0
    last_delivery_ns = 0
    receivers_with_issues = 0
    issue_sample: Dict[str, Dict[str, int]] = {}
    for client in clients:
        if client.state == NEW or not messages:
            continue
        seen = [bytearray(messages) for _ in range(senders)]
        highest = [-1] * senders
        dup = reordered = 0
        framer = client.decoder.framer
        for arrived, data in client.chunks:
            try:
                lines = framer.feed(data)
            except protocol.FramingError:
                broken += 1
                break
            for line in lines:
                if line is protocol.OVERLONG:
                    malformed += 1
                    continue
                parts = line.split(b" ")  # type: ignore[union-attr]
                if len(parts) == 5 and parts[1] == TOKEN_WORD:
                    del parts[0]          # the sender's nickname
                elif not (bare and len(parts) == 4 and parts[0] == TOKEN_WORD):
                    if TOKEN_MARK in line or line.startswith(TOKEN_START):
                        malformed += 1   # spliced or cut by the relay
                    continue
                try:
                    sender, seq, sent_ns = (int(parts[1]), int(parts[2]),
                                            int(parts[3]))
                except ValueError:
                    malformed += 1
                    continue
                if not (0 <= sender < senders and 0 <= seq < messages):
                    malformed += 1
                    continue
                if sender == client.index:
                    echoed += 1
                    continue
                row = seen[sender]
                if row[seq]:
                    dup += 1
                    dup_by_sender[sender] += 1
                    continue
                row[seq] = 1
                delivered += 1
                latencies.append(arrived - sent_ns)
                if arrived > last_delivery_ns:
                    last_delivery_ns = arrived
                if seq < highest[sender]:
                    reordered += 1
                    reordered_by_sender[sender] += 1
                else:
                    highest[sender] = seq
        lost = 0
        for sender in range(senders):
            if sender != client.index:
                missing = messages - seen[sender].count(1)
                lost_by_sender[sender] += missing
                lost += missing
        if lost or dup or reordered:
            receivers_with_issues += 1
            if len(issue_sample) < SAMPLE_SIZE:
                issue_sample[str(client.index)] = {
                    "lost": lost, "duplicated": dup, "reordered": reordered}
    sent = {str(c.index): c.next_seq for c in clients if c.index < senders}
    return {"delivered": delivered, "malformed": malformed, "echoed": echoed,
            "lost_by_sender": lost_by_sender, "dup_by_sender": dup_by_sender,
            "reordered_by_sender": reordered_by_sender,
            "receivers_with_issues": receivers_with_issues,
            "issue_sample": issue_sample, "sent": sent,
            "unframed": broken,
            "last_delivery_ns": last_delivery_ns,
            "latencies": latencies.tobytes()}


def worker_entry(conn: multiprocessing.connection.Connection,
                 plan: Plan) -> None:
    """Body of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the main process decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # terminate() just ends it
    worker = Worker(conn, plan)
    try:
        worker.run()
    except SystemExit:
        pass
    except Exception as error:   # report it rather than die silently
        try:
            conn.send(("error", f"worker {plan.worker}: {error!r}"))
        except OSError:
            pass
    finally:
        worker.close()


# --- The main process: workers, target processes, runs -----------------------


class WorkerSet:
    """The worker processes of one run and their replies."""

    def __init__(self, plans: Sequence[Plan]) -> None:
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context(
            "fork" if "fork" in methods else None)
        self.conns: List[multiprocessing.connection.Connection] = []
        self.processes: List[multiprocessing.process.BaseProcess] = []
        self.inbox: List[Dict[str, Any]] = [{} for _ in plans]
        self.dead: Set[int] = set()
        self.errors: List[str] = []
        for plan in plans:
            ours, theirs = context.Pipe()
            process = context.Process(target=worker_entry, args=(theirs, plan),
                                      name=f"bench-worker-{plan.worker}",
                                      daemon=True)
            process.start()
            theirs.close()
            self.conns.append(ours)
            self.processes.append(process)

    def broadcast(self, message: tuple) -> None:
        for number, conn in enumerate(self.conns):
            if number not in self.dead:
                try:
                    conn.send(message)
                except OSError:
                    self.dead.add(number)

    def gather(self, tag: str, deadline_ns: int) -> Tuple[List[Any], bool]:
        """Wait for every worker's ``tag`` reply; return the replies (None
        for a missing one) and whether all came before the deadline."""
        while True:
            have = [box.get(tag) for box in self.inbox]
            if all(reply is not None for reply in have):
                return have, True
            alive = [conn for number, conn in enumerate(self.conns)
                     if number not in self.dead
                     and self.inbox[number].get(tag) is None]
            remaining = (deadline_ns - now_ns()) / NS_PER_S
            if remaining <= 0 or not alive:
                return have, False
            for conn in multiprocessing.connection.wait(alive, remaining):
                self._receive(self.conns.index(conn))

    def _receive(self, number: int) -> None:
        try:
            tag, payload = self.conns[number].recv()
        except (EOFError, OSError):
            self.dead.add(number)
            self.errors.append(f"worker {number} exited early")
            return
        if tag == "error":
            self.dead.add(number)
            self.errors.append(str(payload))
        else:
            self.inbox[number][tag] = payload

    def stop(self, wait_s: float) -> None:
        """End the workers: they normally exit by themselves within
        ``wait_s``; then they are terminated, and killed if need be."""
        for process in self.processes:
            process.join(wait_s)
            if process.is_alive():
                process.terminate()
                process.join(PROCESS_STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join()
        for conn in self.conns:
            conn.close()


@dataclass
class Target:
    """The server a run talks to, and its process if the bench started it."""

    label: str
    family: int
    address: Tuple[Any, ...]
    pid: Optional[int]
    process: Optional[subprocess.Popen] = None
    log_path: Optional[str] = None
    stopped: Optional[Dict[str, Any]] = None   # how stopping it went

    def log_tail(self, lines: int = 10) -> List[str]:
        if not self.log_path:
            return []
        try:
            with open(self.log_path, errors="replace") as log:
                return [line.rstrip("\n") for line in log.readlines()[-lines:]]
        except OSError:
            return []

    def log_problems(self) -> int:
        """Lines of the log that look like errors."""
        if not self.log_path:
            return 0
        try:
            with open(self.log_path, errors="replace") as log:
                return sum(1 for line in log
                           if "Traceback" in line or " ERROR " in line)
        except OSError:
            return 0


def stop_process(process: subprocess.Popen) -> Dict[str, Any]:
    """Stop a process this bench started: terminate, wait, kill. Return how
    long it took to stop and whether it had to be killed."""
    started = time.monotonic()
    killed = False
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(PROCESS_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            killed = True
    return {"stop_s": round(time.monotonic() - started, 3), "killed": killed}


def start_chat_server(args: argparse.Namespace, clients: int) -> Target:
    """Start server.py on a free port and wait for its listening line."""
    log = tempfile.NamedTemporaryFile(prefix="chat-bench-server-",
                                      suffix=".log", delete=False)
    command = [sys.executable, args.server, "--host", args.host,
               "--port", "0", "--admin-password", os.urandom(8).hex(),
               "--rate-limit", "0",
               "--max-clients", str(max(SERVER_MAX_CLIENTS, clients + 100))]
    if args.tls:
        command += ["--tls-cert", TLS_CERT, "--tls-key", TLS_KEY]
    command += args.server_arg
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                               stdout=log, stderr=log, cwd=REPO_DIR)
    log.close()
    target = Target(CHAT, socket.AF_INET, (), process.pid, process, log.name)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            with open(log.name, errors="replace") as text:
                found = LISTENING_RE.search(text.read())
            if found:
                target.family, target.address = resolve(
                    found.group(1), int(found.group(2)))
                return target
            if process.poll() is not None:
                break
            time.sleep(0.02)
        tail = "\n  ".join(target.log_tail())
        raise RuntimeError(f"server did not start listening:\n  {tail}")
    except BaseException:
        close_target(target)
        raise


def free_port(host: str) -> int:
    family, address = resolve(host, 0)
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind(address)
        return probe.getsockname()[1]


def start_ncat(host: str, clients: int, tls: bool = False) -> Target:
    """Start ``ncat --chat`` (``--ssl`` with ``tls``) on a free port and
    wait until it accepts."""
    port = free_port(host)
    family, address = resolve(host, port)
    command = ["ncat", "--chat", "-l", address[0], str(port),
               "--max-conns", str(clients + NCAT_EXTRA_CONNS)]
    if tls:
        command += ["--ssl", "--ssl-cert", TLS_CERT, "--ssl-key", TLS_KEY]
    log = tempfile.NamedTemporaryFile(prefix="chat-bench-ncat-",
                                      suffix=".log", delete=False)
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                               stdout=log, stderr=log)
    log.close()
    target = Target(NCAT, family, address, process.pid, process, log.name)
    deadline = time.monotonic() + NCAT_START_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(address[:2], timeout=1).close()
            return target
        except OSError:
            time.sleep(0.05)
    tail = "\n  ".join(target.log_tail())
    close_target(target)
    raise RuntimeError(f"ncat did not start accepting connections:\n  {tail}")


def close_target(target: Target) -> None:
    if target.process is not None:
        target.stopped = stop_process(target.process)
    if target.log_path:
        try:
            os.unlink(target.log_path)
        except OSError:
            pass


@contextmanager
def open_target(args: argparse.Namespace, kind: str,
                clients: int) -> Iterator[Target]:
    """The server of one run: started now and stopped afterwards, or the
    one named by --port."""
    if kind == NCAT:
        target = start_ncat(args.host, clients, args.tls)
    elif args.port:
        family, address = resolve(args.host, args.port)
        target = Target(CHAT, family, address, args.server_pid)
    else:
        target = start_chat_server(args, clients)
    try:
        yield target
    finally:
        close_target(target)


def make_plans(kind: str, target: Target, scenario: Scenario, workers: int,
               deadline_ns: int, tag: str, tls: bool = False,
               cafile: str = "") -> List[Plan]:
    """Spread the clients over the workers round-robin (senders too)."""
    count = max(1, min(workers, scenario.clients))
    return [Plan(worker=number, workers=count, protocol=kind,
                 family=target.family,
                 address=target.address,
                 clients=tuple(range(number, scenario.clients, count)),
                 total_clients=scenario.clients, senders=scenario.senders,
                 messages=scenario.messages, rate=scenario.rate,
                 nick_tag=tag, deadline_ns=deadline_ns, tls=tls,
                 cafile=cafile)
            for number in range(count)]


def new_run(kind: str, scenario: Scenario, name: str) -> Dict[str, Any]:
    return {"target": kind, "scenario": name, "n": scenario.clients,
            "s": scenario.senders, "m": scenario.messages,
            "rate": scenario.rate or None, "idle": scenario.idle,
            "complete": False, "errors": []}


def run_once(args: argparse.Namespace, kind: str, scenario: Scenario,
             name: str, tag: str) -> Dict[str, Any]:
    """One run of ``scenario`` against the chat server or ncat."""
    run = new_run(kind, scenario, name)
    run["tls"] = args.tls
    run["load_average_1m"] = os.getloadavg()[0]
    deadline = now_ns() + int(args.timeout * NS_PER_S)
    try:
        with open_target(args, kind, scenario.clients) as target:
            run["server"] = {"pid": target.pid}
            workers = WorkerSet(make_plans(kind, target, scenario,
                                           args.workers, deadline, tag,
                                           args.tls, args.cafile))
            finished = False
            try:
                drive(run, target, workers, scenario, deadline, args.hold)
                finished = True
            finally:
                # Interrupted: no point waiting for the workers to finish.
                workers.stop(PROCESS_STOP_TIMEOUT_S if finished else 0.0)
                run["errors"] += workers.errors
            check_target(run, target)
        if target.stopped:
            run["server"].update(target.stopped)
            if target.stopped["killed"]:
                run["errors"].append(
                    f"{kind} did not stop within {PROCESS_STOP_TIMEOUT_S:g} s"
                    " of SIGTERM and was killed")
    except (RuntimeError, OSError) as error:
        run["errors"].append(str(error))
    return run


def drive(run: Dict[str, Any], target: Target, workers: WorkerSet,
          scenario: Scenario, deadline: int, hold_s: float) -> None:
    """The phases of a run, as seen from the main process."""
    pid = target.pid
    rss_before = proc_memory_kib(pid).get("VmRSS")
    cpu_before = proc_cpu_seconds(pid)
    workers.broadcast(("register",))
    registered, _ = workers.gather("registered", deadline)
    ready = record_registration(run, registered, pid, cpu_before)
    complete = ready == scenario.clients
    if not complete:
        run["errors"].append(f"only {ready} of {scenario.clients} clients"
                             " registered")
    elif scenario.idle:
        time.sleep(max(0.0, min(hold_s, (deadline - now_ns()) / NS_PER_S)))
        memory = proc_memory_kib(pid)
        if rss_before is not None and "VmRSS" in memory:
            run["server"].update({
                "rss_before_kib": rss_before,
                "rss_after_kib": memory["VmRSS"],
                "rss_per_connection_kib": round(
                    (memory["VmRSS"] - rss_before) / scenario.clients, 3)})
        run["hold_s"] = hold_s
    else:
        complete = send_phase(run, workers, pid, deadline)
    workers.broadcast(("stop",))
    workers.broadcast(("finish",))
    finishing = time.monotonic()
    results, all_came = workers.gather(
        "result", deadline + int(RESULT_GRACE_S * NS_PER_S))
    run["finish_s"] = round(time.monotonic() - finishing, 3)
    memory = proc_memory_kib(pid)
    run["server"]["peak_rss_kib"] = memory.get("VmHWM")
    merge_results(run, scenario, [r for r in results if r is not None])
    run["complete"] = complete and all_came and not workers.errors


def record_registration(run: Dict[str, Any], registered: List[Any],
                        pid: Optional[int],
                        cpu_before: Optional[float]) -> int:
    replies = [r for r in registered if r is not None]
    ready = sum(r["ready"] for r in replies)
    firsts = [r["first_ns"] for r in replies if r["first_ns"]]
    lasts = [r["last_ns"] for r in replies if r["last_ns"]]
    cpu_after = proc_cpu_seconds(pid)
    run["registered"] = ready
    run["registration_s"] = (round((max(lasts) - min(firsts)) / NS_PER_S, 4)
                             if firsts and lasts else None)
    run["registration_each_ms"] = latency_summary(
        [each for r in replies for each in r["each_ns"]])
    if cpu_before is not None and cpu_after is not None and ready:
        run["server"]["registration_cpu_us_per_client"] = round(
            (cpu_after - cpu_before) / ready * 1e6, 1)
    run["generator_registration"] = {
        "busy": [round(r["cpu_s"] / max(r["wall_s"], 1e-9), 3)
                 for r in replies]}
    for reply in replies:
        for reason, count in reply["errors"].items():
            run["errors"].append(f"{count} x {reason}")
    return ready


def send_phase(run: Dict[str, Any], workers: WorkerSet, pid: Optional[int],
               deadline: int) -> bool:
    """Barrier, then the senders go; True if everything completed."""
    workers.broadcast(("barrier",))
    _, barrier_ok = workers.gather("barrier_ok", deadline)
    if not barrier_ok:
        run["errors"].append("the barrier line did not reach every client")
        return False
    cpu_before = proc_cpu_seconds(pid)
    start_ns = now_ns() + START_DELAY_NS
    run["start_ns"] = start_ns
    workers.broadcast(("go", start_ns))
    _, all_sent = workers.gather("sent", deadline)
    workers.broadcast(("senders_done",))
    completed, all_complete = workers.gather("complete", deadline)
    cpu_after = proc_cpu_seconds(pid)
    if cpu_before is not None and cpu_after is not None:
        run["server"]["send_phase_cpu_s"] = round(cpu_after - cpu_before, 3)
    replies = [c for c in completed if c is not None]
    run["generator"] = {
        "workers": len(completed),
        "busy": [round(c["cpu_s"] / c["wall_s"], 3) for c in replies],
        "cpu_s": [round(c["cpu_s"], 3) for c in replies]}
    if not all_sent:
        run["errors"].append("senders did not finish before the timeout")
    timed_out = not all_complete or any(c["timed_out"] for c in replies)
    if timed_out:
        run["errors"].append("the send phase hit the timeout")
    elif not all(c["complete"] for c in replies):
        run["errors"].append("some lines never arrived")
    return all_sent and not timed_out


def merge_results(run: Dict[str, Any], scenario: Scenario,
                  results: List[Dict[str, Any]]) -> None:
    """Add the workers' counts and latencies to ``run``."""
    run["still_connected"] = sum(r["connected"] for r in results)
    run["dropped_connections"] = sum(r["dropped"] for r in results)
    for result in results:
        for reason, count in result["errors"].items():
            note = f"{count} x {reason}"
            if note not in run["errors"]:
                run["errors"].append(note)
    if scenario.idle:
        return
    s, m = scenario.senders, scenario.messages
    expected = s * m * (scenario.clients - 1)
    delivered = sum(r["delivered"] for r in results)

    def by_sender(key: str) -> List[int]:
        return [sum(r[key][i] for r in results) for i in range(s)]

    lost_by, dup_by, reo_by = (by_sender("lost_by_sender"),
                               by_sender("dup_by_sender"),
                               by_sender("reordered_by_sender"))
    latencies = array.array("q")
    lags: List[int] = []
    sent = 0
    for result in results:
        latencies.frombytes(result["latencies"])
        lags += result["send_lags_ns"]
        sent += sum(result["sent"].values())
    last = max((r["last_delivery_ns"] for r in results), default=0)
    start_ns = run.pop("start_ns", None)    # meaningless outside this run
    span_s = (last - start_ns) / NS_PER_S if start_ns and last else 0
    run.update({
        "expected": expected, "sent": sent, "delivered": delivered,
        "lost": expected - delivered, "duplicated": sum(dup_by),
        "reordered": sum(reo_by),
        "malformed": sum(r["malformed"] for r in results),
        "echoed": sum(r["echoed"] for r in results),
        "delivery_span_s": round(span_s, 4) if span_s > 0 else None,
        "deliveries_per_s": round(delivered / span_s) if span_s > 0 else None,
        "latency_ms": latency_summary(latencies),
        "per_sender": [{"sender": i, "lost": lost_by[i],
                        "duplicated": dup_by[i], "reordered": reo_by[i]}
                       for i in range(s)],
        "receivers_with_issues": sum(r["receivers_with_issues"]
                                     for r in results),
        "receiver_issue_sample": {k: v for r in results
                                  for k, v in r["issue_sample"].items()},
    })
    if lags:
        lags.sort()
        run["send_lag_ms"] = {"p99": round(percentile(lags, 99) / 1e6, 3),
                              "max": round(lags[-1] / 1e6, 3)}
    cpu = run["server"].get("send_phase_cpu_s")
    if cpu is not None and delivered:
        run["server"]["cpu_us_per_delivery"] = round(cpu / delivered * 1e6, 3)


def check_target(run: Dict[str, Any], target: Target) -> None:
    """Note a server that died or logged errors during the run."""
    if target.process is not None and target.process.poll() is not None:
        run["errors"].append(
            f"{target.label} exited during the run with status"
            f" {target.process.returncode}")
        run["complete"] = False
        run["server_log_tail"] = target.log_tail()
    problems = target.log_problems()
    if problems:
        run["errors"].append(f"server log has {problems} error lines")
        run["server_log_tail"] = target.log_tail()


def run_clean(run: Dict[str, Any]) -> bool:
    """A run that completed with nothing lost, duplicated or reordered."""
    if not run["complete"]:
        return False
    if run["idle"]:
        return run.get("still_connected") == run["n"]
    return not (run.get("lost") or run.get("duplicated")
                or run.get("reordered") or run.get("malformed"))


# --- Reporting ---------------------------------------------------------------

#: (dotted key in a run, label, format) of the figures summarised and compared.
MESSAGE_FIGURES = (
    ("registration_s", "registration s", "{:.3f}"),
    ("deliveries_per_s", "deliveries/s", "{:,.0f}"),
    ("latency_ms.p50", "latency p50 ms", "{:.3f}"),
    ("latency_ms.p90", "latency p90 ms", "{:.3f}"),
    ("latency_ms.p99", "latency p99 ms", "{:.3f}"),
    ("latency_ms.max", "latency max ms", "{:.3f}"),
    ("lost", "lost", "{:,.0f}"),
    ("duplicated", "duplicated", "{:,.0f}"),
    ("reordered", "reordered", "{:,.0f}"),
    ("server.cpu_us_per_delivery", "server CPU us/delivery", "{:.3f}"),
    ("server.peak_rss_kib", "server peak RSS KiB", "{:,.0f}"),
)
IDLE_FIGURES = (
    ("registration_s", "registration s", "{:.3f}"),
    ("server.registration_cpu_us_per_client", "server CPU us/registration",
     "{:.1f}"),
    ("server.rss_per_connection_kib", "server RSS KiB/connection", "{:.2f}"),
    ("server.peak_rss_kib", "server peak RSS KiB", "{:,.0f}"),
)


def lookup(run: Dict[str, Any], dotted: str) -> Optional[float]:
    value: Any = run
    for key in dotted.split("."):
        if not isinstance(value, dict) or value.get(key) is None:
            return None
        value = value[key]
    return value


def show(value: Optional[float], fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def mib(kib: Optional[int]) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f} MiB"


def busy_text(busy: Sequence[float]) -> str:
    return " ".join(f"{b:.0%}" for b in busy) or "-"


def print_run(run: Dict[str, Any], number: int, total: int) -> None:
    rate = f"{run['rate']:g} lines/s" if run.get("rate") else "unpaced"
    head = f"{run['target']} {run['scenario']}: N={run['n']}"
    if run.get("tls"):
        head = head.replace(":", " over TLS:", 1)
    if not run["idle"]:
        head += f" S={run['s']} M={run['m']} {rate}"
    status = "" if run["complete"] else "  [INCOMPLETE]"
    print(f"\n{head} (run {number}/{total}){status}")
    cpus = os.cpu_count() or 1
    if run["load_average_1m"] > cpus / 2:
        print(f"  note: load average {run['load_average_1m']:.1f} on {cpus}"
              " CPUs before the run; other work may skew the figures")
    print_registration(run)
    if run["idle"]:
        print_idle(run)
    elif "delivered" in run:
        print_deliveries(run)
    for error in run["errors"][:SAMPLE_SIZE]:
        print(f"  ! {error}")
    for line in run.get("server_log_tail", []):
        print(f"  | {line}")


def print_registration(run: Dict[str, Any]) -> None:
    each = run.get("registration_each_ms") or {}
    server = run.get("server", {})
    busy = run.get("generator_registration", {}).get("busy", [])
    print(f"  registration     {run.get('registered', 0)} clients in"
          f" {show(run.get('registration_s'), '{:.3f}')} s (each: p50"
          f" {show(each.get('p50'), '{:.1f}')} ms, max"
          f" {show(each.get('max'), '{:.1f}')} ms)")
    print(f"                   server CPU"
          f" {show(server.get('registration_cpu_us_per_client'), '{:.0f}')}"
          f" us/client; load generator busy {busy_text(busy)}")


def print_idle(run: Dict[str, Any]) -> None:
    server = run.get("server", {})
    print(f"  server RSS       {mib(server.get('rss_before_kib'))} before,"
          f" {mib(server.get('rss_after_kib'))} with {run['n']} clients:"
          f" {show(server.get('rss_per_connection_kib'), '{:.2f}')} KiB per"
          f" connection; peak {mib(server.get('peak_rss_kib'))}")
    print(f"  still connected  {run.get('still_connected', 0)} after"
          f" {run.get('hold_s', 0):g} s")


def print_deliveries(run: Dict[str, Any]) -> None:
    server = run.get("server", {})
    print(f"  deliveries       {run['delivered']:,} of {run['expected']:,}"
          f" ({run['sent']:,} lines sent): lost {run['lost']:,},"
          f" duplicated {run['duplicated']:,}, reordered"
          f" {run['reordered']:,}, malformed {run['malformed']:,}")
    print(f"  throughput       {show(run['deliveries_per_s'], '{:,.0f}')}"
          f" deliveries/s over {show(run['delivery_span_s'], '{:.3f}')} s")
    latency = run["latency_ms"]
    print("  latency ms       " + "  ".join(
        f"{key} {show(latency[key], '{:.3f}')}"
        for key in ("p50", "p90", "p99", "max")))
    if "send_lag_ms" in run:
        print(f"  pacing lag ms    p99 {run['send_lag_ms']['p99']:.3f}"
              f"  max {run['send_lag_ms']['max']:.3f} (latency is measured"
              " from the actual send)")
    print(f"  server           CPU"
          f" {show(server.get('cpu_us_per_delivery'), '{:.3f}')} us/delivery"
          f" ({show(server.get('send_phase_cpu_s'), '{:.2f}')} s in the send"
          f" phase), peak RSS {mib(server.get('peak_rss_kib'))}")
    generator = run.get("generator", {})
    busy = generator.get("busy", [])
    print(f"  load generator   {generator.get('workers', 0)} workers, busy"
          f" {busy_text(busy)} (CPU / wall time of the send phase)")
    if any(b > BUSY_WARNING for b in busy):
        print("  WARNING: a worker was nearly saturated; the load generator"
              " may be the bottleneck (try --workers)")
    if run.get("receivers_with_issues"):
        print(f"  receivers with lost/dup/reordered lines:"
              f" {run['receivers_with_issues']} of {run['n']}")


def summarise(runs: List[Dict[str, Any]],
              figures: Sequence[Tuple[str, str, str]]) -> Dict[str, Any]:
    """Median, min and max of each figure over ``runs``."""
    summary: Dict[str, Any] = {}
    for key, _, _ in figures:
        values = [v for v in (lookup(r, key) for r in runs) if v is not None]
        if values:
            summary[key] = {"median": statistics.median(values),
                            "min": min(values), "max": max(values),
                            "values": values}
    return summary


def print_summary(kind: str, summary: Dict[str, Any], runs: int,
                  figures: Sequence[Tuple[str, str, str]]) -> None:
    print(f"\n{kind}: median [min - max] of {runs} runs")
    for key, label, fmt in figures:
        if key in summary:
            entry = summary[key]
            print(f"  {label:<28} {show(entry['median'], fmt):>12}"
                  f"  [{show(entry['min'], fmt)} - {show(entry['max'], fmt)}]")


def compare(chat: Dict[str, Any], ncat: Dict[str, Any],
            figures: Sequence[Tuple[str, str, str]]) -> Dict[str, float]:
    """chat / ncat ratio of each figure's median."""
    ratios = {}
    for key, _, _ in figures:
        if key in chat and key in ncat and ncat[key]["median"]:
            ratios[key] = round(chat[key]["median"] / ncat[key]["median"], 3)
    return ratios


def print_comparison(chat: Dict[str, Any], ncat: Dict[str, Any],
                     ratios: Dict[str, float],
                     figures: Sequence[Tuple[str, str, str]]) -> None:
    print("\nchat server vs ncat --chat (medians; ratio = chat / ncat)")
    print(f"  {'':<28} {'chat':>12} {'ncat':>12} {'ratio':>8}")
    for key, label, fmt in figures:
        if key in chat or key in ncat:
            mine = chat.get(key, {}).get("median")
            theirs = ncat.get(key, {}).get("median")
            ratio = f"x{ratios[key]:.2f}" if key in ratios else "-"
            print(f"  {label:<28} {show(mine, fmt):>12}"
                  f" {show(theirs, fmt):>12} {ratio:>8}")


def write_json(path: str, document: Dict[str, Any]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = path + ".tmp"
    with open(temporary, "w") as out:
        json.dump(document, out, indent=1)
        out.write("\n")
    os.replace(temporary, path)


# --- Command line ------------------------------------------------------------


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Load benchmark for the chat server (see the module"
                    " docstring for details).",
        epilog="examples:\n"
               "  python3 bench/load.py\n"
               "  python3 bench/load.py --scenario latency --compare-ncat\n"
               "  python3 bench/load.py --idle 1000\n"
               "  python3 bench/load.py -n 20 -s 4 -m 1000 --rate 2000"
               " --repeat 3\n"
               "  python3 bench/load.py --port 4321 --server-pid 12345\n"
               "scenarios:\n"
               "  fanout   N=100 S=10 M=500, unpaced\n"
               "  latency  N=50 S=5 M=500, 500 lines/s in total\n"
               "  idle     N=10000, held open\n"
               "exit status: 0 when every chat-server run completed with"
               " nothing lost,\n"
               "duplicated or reordered, else 1.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--scenario", choices=sorted(SCENARIOS), default="fanout",
        help="preset (default %(default)s)")
    add("-n", "--clients", type=int, help="clients to connect (N)")
    add("-s", "--senders", type=int, help="clients that send (S <= N)")
    add("-m", "--messages", type=int, help="lines each sender sends (M)")
    add("--rate", type=float, metavar="LINES_PER_S",
        help="total send rate, paced; 0 = as fast as the sockets take")
    add("--idle", type=int, metavar="N",
        help="idle mode with N clients: registration time and RSS per"
             " connection (same as --scenario idle -n N)")
    add("--hold", type=float, default=DEFAULT_HOLD_S, metavar="SECONDS",
        help="idle mode: how long clients are held before the server's RSS"
             " is read (default %(default)s)")
    add("--workers", type=int, default=default_workers(),
        help="load generator processes (default %(default)s)")
    add("--repeat", type=int, default=1, metavar="K",
        help="runs per target; the summary shows medians (default 1)")
    add("--compare-ncat", action="store_true",
        help="also run the scenario against 'ncat --chat' and print ratios")
    add("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
        help="limit for each run; then it reports what it got and is marked"
             " incomplete (default %(default)s)")
    add("--json", default=DEFAULT_JSON, metavar="FILE",
        help="where to write the results (default bench/results/latest.json)")
    add("--host", default=DEFAULT_HOST,
        help="loopback address of the server (default %(default)s)")
    add("--port", type=int, default=0,
        help="port of a running server to test; 0 starts server.py"
             " (default)")
    add("--server-pid", type=int,
        help="PID of the running server given by --port, for its CPU and"
             " memory figures")
    add("--server", default=DEFAULT_SERVER, metavar="PATH",
        help="server script to start (default: server.py of this repo)")
    add("--server-arg", action="append", default=[], metavar="ARG",
        help="extra argument for the started server; repeat for more"
             " (e.g. --server-arg=--announce-limit=50)")
    add("--tls", action="store_true",
        help="clients speak TLS; the started server (and ncat) serve the"
             " test certificate, tests/tls/cert.pem")
    add("--cafile", metavar="FILE",
        help="with --tls: certificates the clients trust (default"
             " tests/tls/cert.pem)")
    args = parser.parse_args(argv)
    if args.cafile and not args.tls:
        parser.error("--cafile goes with --tls")
    args.cafile = args.cafile or (TLS_CERT if args.tls else "")
    resolve_scenario(parser, args)
    if not is_loopback(args.host):
        parser.error("--host must be a loopback address (127.0.0.1, ::1)")
    if args.workers < 1 or args.repeat < 1 or args.timeout <= 0:
        parser.error("--workers and --repeat must be >= 1, --timeout > 0")
    return args


def resolve_scenario(parser: argparse.ArgumentParser,
                     args: argparse.Namespace) -> None:
    """Fill ``args.plan`` from the preset and the explicit overrides."""
    if args.idle is not None:
        args.scenario = "idle"
        args.clients = args.idle
    preset = SCENARIOS[args.scenario]

    def pick(value: Optional[float], default: float) -> Any:
        return default if value is None else value

    scenario = Scenario(clients=pick(args.clients, preset.clients),
                        senders=pick(args.senders, preset.senders),
                        messages=pick(args.messages, preset.messages),
                        rate=pick(args.rate, preset.rate), idle=preset.idle)
    if scenario.clients < 1 or scenario.rate < 0:
        parser.error("N must be >= 1 and --rate >= 0")
    if not scenario.idle and not (
            scenario.clients >= 2 and 1 <= scenario.senders <= scenario.clients
            and scenario.messages >= 1):
        parser.error("need N >= 2, 1 <= S <= N and M >= 1")
    args.plan = scenario


def interrupt(signum: int, frame: Any) -> None:
    """SIGTERM ends the bench like Ctrl-C, so that the finally blocks stop
    the server and the workers it started."""
    raise KeyboardInterrupt


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    scenario: Scenario = args.plan
    fd_limit = raise_fd_limit()
    if fd_limit < scenario.clients + 100:
        print(f"warning: open-file limit {fd_limit} is low for"
              f" {scenario.clients} clients", file=sys.stderr)
    kinds = [CHAT]
    if args.compare_ncat:
        if shutil.which("ncat") is None:
            print("ncat is not installed (Debian: apt-get install ncat);"
                  " skipping the comparison")
        elif scenario.idle and scenario.clients > NCAT_MAX_CLIENTS:
            print(f"ncat --chat cannot hold {scenario.clients} clients"
                  f" (select() limit, about {NCAT_MAX_CLIENTS});"
                  " skipping the comparison")
        else:
            kinds.append(NCAT)
    tag = os.urandom(2).hex()
    runs: Dict[str, List[Dict[str, Any]]] = {kind: [] for kind in kinds}
    for number in range(1, args.repeat + 1):
        for kind in kinds:
            run = run_once(args, kind, scenario, args.scenario, tag)
            runs[kind].append(run)
            print_run(run, number, args.repeat)
    figures = IDLE_FIGURES if scenario.idle else MESSAGE_FIGURES
    summaries = {kind: summarise(runs[kind], figures) for kind in kinds}
    if args.repeat > 1:
        for kind in kinds:
            print_summary(kind, summaries[kind], args.repeat, figures)
    ratios: Dict[str, float] = {}
    if NCAT in kinds:
        ratios = compare(summaries[CHAT], summaries[NCAT], figures)
        print_comparison(summaries[CHAT], summaries[NCAT], ratios, figures)
    ok = all(run_clean(run) for run in runs[CHAT])
    write_json(args.json, {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv[1:], "scenario": args.scenario,
        "settings": {"n": scenario.clients, "s": scenario.senders,
                     "m": scenario.messages, "rate": scenario.rate or None,
                     "idle": scenario.idle, "workers": args.workers,
                     "repeat": args.repeat, "timeout_s": args.timeout,
                     "tls": args.tls,
                     "cpus": os.cpu_count()},
        "runs": [run for kind in kinds for run in runs[kind]],
        "summary": summaries, "ratios_chat_over_ncat": ratios, "ok": ok})
    print(f"\nresults written to {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; the processes the bench started are stopped",
              file=sys.stderr)
        sys.exit(130)
