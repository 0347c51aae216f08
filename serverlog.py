"""The server's log: handler threads only queue records; one thread
writes them.

Thousands of connection threads may log at the same moment (a lab's switch
flaps and everyone drops). A ``logging.StreamHandler`` writes under a lock,
and every write releases and takes back the GIL, so the threads would queue
up on that lock, one write each, and everyone else would wait behind them.
Here a thread that logs only formats its record and puts it on a
``queue.SimpleQueue`` (which takes no lock a thread could wait on); one
``logging.handlers.QueueListener`` thread does the writing.

The writer also batches what happens to many users at once: a record
logged with ``extra={"burst": "users disconnected"}`` is written as usual
up to ``config.LOG_BURST_LINES`` a second per kind; past that, those
records are counted instead, and at the end of the second one line says
"1,234 users disconnected in the last second (20 shown)".

Usage (``server.main`` does this)::

    listener = serverlog.start(logging.INFO)
    ...
    serverlog.stop(listener)    # writes what is still queued
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import time
from typing import Dict, Optional, TextIO

import config

#: How every line of the server's log starts.
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
#: The attribute (``extra`` key) naming a record's kind of burst.
BURST = "burst"


class QueueingHandler(logging.handlers.QueueHandler):
    """A ``QueueHandler`` on a ``queue.SimpleQueue`` that never blocks the
    thread that logs: no handler lock (the queue is thread-safe and the
    formatting keeps no state), and once ``limit`` records wait, new ones
    are dropped and counted in :attr:`dropped` instead."""

    def __init__(self, log_queue: "queue.SimpleQueue[logging.LogRecord]",
                 limit: int) -> None:
        super().__init__(log_queue)
        self.limit = limit
        self.dropped = 0

    def handle(self, record: logging.LogRecord) -> bool:
        # logging.Handler.handle would take the handler's lock around
        # emit(), and the threads would line up on it again.
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def enqueue(self, record: logging.LogRecord) -> None:
        if self.queue.qsize() >= self.limit:
            self.dropped += 1  # a lost count or two is fine
            return
        self.queue.put_nowait(record)


class BurstHandler(logging.StreamHandler):
    """Writes records to a stream (in the listener's thread only), and
    batches each kind of burst record past ``per_second`` a second."""

    def __init__(self, stream: TextIO, per_second: int,
                 clock=time.monotonic) -> None:
        super().__init__(stream)
        self.per_second = per_second
        self._clock = clock
        self._window_end = 0.0
        self._counts: Dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.flush_due()
        kind = getattr(record, BURST, None)
        if kind is not None:
            if not self._counts:
                self._window_end = self._clock() + 1.0
            count = self._counts.get(kind, 0) + 1
            self._counts[kind] = count
            if count > self.per_second:
                return
        super().emit(record)

    def flush_due(self, final: bool = False) -> None:
        """At the end of a second (or with ``final``, now) with more burst
        records of a kind than are written, write how many there were."""
        if not self._counts or (not final
                                and self._clock() < self._window_end):
            return
        counts, self._counts = self._counts, {}
        for kind, count in counts.items():
            if count > self.per_second:
                line = (f"{count:,} {kind} in the last second"
                        f" ({self.per_second} shown)")
                super().emit(logging.LogRecord(
                    "chat", logging.INFO, __file__, 0, line, None, None))


class Listener(logging.handlers.QueueListener):
    """The writer thread. It wakes up at least every ``tick`` seconds, so
    that a burst's count is written even when nothing follows it."""

    def __init__(self, log_queue: "queue.SimpleQueue[logging.LogRecord]",
                 handler: BurstHandler, tick: float = 0.25) -> None:
        super().__init__(log_queue, handler)
        self._burst = handler
        self._tick = tick

    def dequeue(self, block: bool) -> logging.LogRecord:
        while True:  # ends with a record, the stop sentinel included
            try:
                return self.queue.get(timeout=self._tick)
            except queue.Empty:
                self._burst.flush_due()


def start(level: int, stream: Optional[TextIO] = None) -> Listener:
    """Send the root logger's records at ``level`` and above through a
    queue to one writer thread, writing to ``stream`` (stderr)."""
    log_queue: "queue.SimpleQueue[logging.LogRecord]" = queue.SimpleQueue()
    writer = BurstHandler(stream or sys.stderr, config.LOG_BURST_LINES)
    writer.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.setLevel(level)
    root.addHandler(QueueingHandler(log_queue, config.LOG_QUEUE_LINES))
    listener = Listener(log_queue, writer)
    listener.start()
    return listener


def stop(listener: Listener) -> None:
    """Write what is queued (and a burst's count), say how many records
    the full queue dropped (if any), and end the writer."""
    listener.stop()
    listener._burst.flush_due(final=True)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, QueueingHandler) and handler.dropped:
            listener._burst.handle(logging.LogRecord(
                "chat", logging.WARNING, __file__, 0,
                f"{handler.dropped:,} log lines were dropped: the log's"
                " queue was full", None, None))
