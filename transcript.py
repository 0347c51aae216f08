"""A transcript of the chat for whoever runs it (``--log FILE``): every
public line, join, departure, kick and the shutdown, one per line, each
with its time in ISO 8601 UTC. Private lines and passwords never reach it:
the room writes here only what it sends to everyone.

Writing to a disk can be slow, and the room writes with its lock held, so
:meth:`Transcript.write` only queues; one thread of its own writes and
flushes. If the disk fails (full, removed), that is logged once and the
chat carries on; lines that find the queue full are dropped and counted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Optional, Tuple

log = logging.getLogger("chat")

#: Stands in the queue for "stop".
_STOP = None


class Transcript:
    """Appends to ``path`` (opened at once: an OSError says it cannot be
    used). Call :meth:`close` to write what is queued and stop."""

    def __init__(self, path: str, queue_lines: int) -> None:
        self.path = path
        self._file = open(path, "a", encoding="utf-8", newline="\n")
        self._queue: "queue.Queue[Optional[Tuple[float, str]]]" = \
            queue.Queue(queue_lines)
        self.dropped = 0      # lines lost to a full queue
        self._failed = False  # the disk failed once; said so in the log
        self._thread = threading.Thread(target=self._write_loop,
                                        name="transcript", daemon=True)
        self._thread.start()

    def write(self, stamp: float, text: str) -> None:
        """Queue one line said at ``stamp`` (seconds since the epoch);
        never blocks."""
        try:
            self._queue.put_nowait((stamp, text))
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (for up to ``timeout`` seconds), then close
        the file."""
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        if self.dropped:
            log.warning("transcript %s: %d lines dropped (the disk was too"
                        " slow)", self.path, self.dropped)

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            stamp, text = item
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))
            try:
                self._file.write(f"{when} {text}\n")
                if self._queue.empty():  # one flush per burst
                    self._file.flush()
            except OSError as error:
                if not self._failed:
                    self._failed = True
                    log.error("transcript %s: cannot write (%s); the chat"
                              " carries on without it", self.path, error)
        try:
            self._file.close()  # writes what is still buffered
        except OSError as error:
            if not self._failed:
                log.error("transcript %s: cannot write (%s)", self.path,
                          error)
