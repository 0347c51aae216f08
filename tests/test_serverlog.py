"""The server's log: records go through a queue to one writer thread, and
mass events past a rate are counted rather than written one by one."""

from __future__ import annotations

import io
import logging

import guard
import serverlog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def record(text: str, burst: str = "") -> logging.LogRecord:
    made = logging.LogRecord("chat", logging.INFO, __file__, 1, text, None,
                             None)
    if burst:
        setattr(made, serverlog.BURST, burst)
    return made


def test_a_burst_past_the_rate_is_one_counted_line():
    out, clock = io.StringIO(), Clock()
    handler = serverlog.BurstHandler(out, per_second=3, clock=clock)
    for number in range(1000):
        handler.handle(record(f"user{number} left", "users disconnected"))
    handler.handle(record("plain line"))
    lines = out.getvalue().splitlines()
    assert lines == ["user0 left", "user1 left", "user2 left", "plain line"]
    clock.now += 1.5
    handler.flush_due()
    assert out.getvalue().splitlines()[4:] == [
        "1,000 users disconnected in the last second (3 shown)"]
    handler.flush_due()  # counted once
    assert len(out.getvalue().splitlines()) == 5


def test_below_the_rate_every_line_is_written_and_no_count():
    out, clock = io.StringIO(), Clock()
    handler = serverlog.BurstHandler(out, per_second=3, clock=clock)
    for number in range(3):
        handler.handle(record(f"user{number} left", "users disconnected"))
    clock.now += 2
    handler.flush_due()
    assert len(out.getvalue().splitlines()) == 3


def test_records_reach_the_stream_through_the_writer_thread():
    out = io.StringIO()
    logger = logging.getLogger("chat.test-serverlog")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    listener = serverlog.start(logging.INFO, out)
    try:
        for number in range(50):
            logger.info("user%d: connected", number,
                        extra={serverlog.BURST: "new connections"})
        logger.warning("a warning")
    finally:
        serverlog.stop(listener)
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    text = out.getvalue()
    assert "INFO user0: connected" in text
    assert "WARNING a warning" in text
    assert "50 new connections in the last second" in text
    assert "user49: connected" not in text


def test_the_log_budget_leaves_mass_events_to_their_own_count():
    """guard.LogBudget caps ordinary lines; a mass event's records pass it,
    so the burst count says how many there really were."""
    out, clock = io.StringIO(), Clock()
    handler = serverlog.BurstHandler(out, per_second=3, clock=clock)
    budget = guard.LogBudget(rate=1.0, burst=2, clock=clock)
    for number in range(1000):
        made = record(f"user{number} left", "users disconnected")
        if budget.filter(made):
            handler.handle(made)
    for number in range(5):  # ordinary lines: two pass, three are dropped
        made = record(f"line {number}")
        if budget.filter(made):
            handler.handle(made)
    clock.now += 1.5
    handler.flush_due()
    assert out.getvalue().splitlines() == [
        "user0 left", "user1 left", "user2 left", "line 0", "line 1",
        "1,000 users disconnected in the last second (3 shown)"]
