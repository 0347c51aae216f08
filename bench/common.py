"""What every part of the load benchmark shares: where things are, the
few settings more than one part uses, the bench's own lines, a run's
shape (:class:`Scenario`) and a worker's orders (:class:`Plan`).

Importing it puts the repository root on ``sys.path`` (after ``bench/``),
so that the bench reads the server with the chat's own ``transport`` and
``protocol``.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any, Tuple

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
if REPO_DIR not in sys.path:
    sys.path.insert(1, REPO_DIR)

NS_PER_S = 1_000_000_000
#: Extra time, past the run's deadline, for workers to parse and report.
RESULT_GRACE_S = 60.0
PROCESS_STOP_TIMEOUT_S = 5.0

CHAT = "chat"
NCAT = "ncat"
IRC = "irc"      # ngIRCd, for the churn scenario

# What clients send and what receivers look for.
CHAT_TOKEN_LINE = b"-all t %d %d %d\n"
NCAT_TOKEN_LINE = b"t %d %d %d\n"
CHAT_BARRIER_LINE = b"-all barrier %d\n"
NCAT_BARRIER_LINE = b"barrier %d\n"
TOKEN_WORD = b"t"
TOKEN_MARK = b" t "          # in "nick: t 3 17 123" and "<user5> t 3 17 123"
TOKEN_START = b"t "         # ...and "t 3 18 123", relayed bare by ncat
BARE_TOKEN_MARK = b"\nt "


@dataclass(frozen=True)
class Scenario:
    clients: int
    senders: int
    messages: int
    rate: float          # lines/s in total; 0 = as fast as the sockets take
    idle: bool = False


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


def now_ns() -> int:
    return time.monotonic_ns()


def cpu_seconds() -> float:
    """User + system CPU time of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
