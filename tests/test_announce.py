"""Announcements of who joined and who left, as one observer hears them.

In a room of up to ``announce_limit`` users each join and departure is a
notice of its own; in a larger room the server collects names and sends one
batched notice a second (``* Joined (K): a, b and M more``), listing at most
:data:`protocol.MAX_NAMES_SHOWN` names and counting the rest. Either way,
every join and every departure must reach the observer exactly once, and
nobody may be announced as joining after being announced as gone.

Black box: 200 users join and leave over real sockets on 127.0.0.1 from a
few threads at once; the observer's lines are the only evidence. Every wait
is on a condition with a deadline.
"""

from __future__ import annotations

import re
import threading
import time
from typing import (Callable, Dict, List, NamedTuple, Optional, Sequence,
                    Tuple)

import protocol
from helpers import DEADLINE, LineClient, wait_until

#: Users who join in the first round (u000 ... u159) and in the second
#: (u160 ... u199), how many of the first stay for the second, and the
#: threads that join or leave them at once.
FIRST = 160
SECOND = 40
STAYING = 20
WORKERS = 8
#: Every QUICK-th user leaves right after joining.
QUICK = 4
#: Seconds the first round's joins are spread over, so that names are
#: being queued while the server's once-a-second batches go out.
SPREAD_SECONDS = 2.0
#: Seconds all the joining, or all the leaving, of a round may take.
PHASE_SECONDS = 8.0
#: Seconds the observer may wait for the last batch of a round (the server
#: sends one a second).
ANNOUNCED_SECONDS = 5.0

_SINGLE = re.compile(r"\* (\S+) (joined|left) the chat")
_BATCH = re.compile(r"\* (Joined|Left) \((\d+)\): (.*)")
_MORE = re.compile(r"(.*) and (\d+) more")


class Announcement(NamedTuple):
    """One join or departure as the observer heard it: ``nick`` is None
    when a batch only counted it (beyond the names it lists)."""

    position: int   # index of the line it came in
    kind: str       # "joined" or "left"
    nick: Optional[str]


def announcements(lines: Sequence[str]) -> List[Announcement]:
    """Every join and departure the lines announce, in order; raises
    AssertionError on a batch whose count and names disagree."""
    found: List[Announcement] = []
    for position, line in enumerate(lines):
        single = _SINGLE.fullmatch(line)
        if single:
            found.append(Announcement(position, single.group(2),
                                      single.group(1)))
            continue
        batch = _BATCH.fullmatch(line)
        if not batch:
            continue
        kind = batch.group(1).lower()
        count, rest = int(batch.group(2)), batch.group(3)
        more = _MORE.fullmatch(rest)
        names = (more.group(1) if more else rest).split(", ")
        hidden = int(more.group(2)) if more else 0
        assert len(names) + hidden == count, line
        assert len(names) == min(count, protocol.MAX_NAMES_SHOWN), line
        found.extend(Announcement(position, kind, nick) for nick in names)
        found.extend(Announcement(position, kind, None)
                     for _ in range(hidden))
    return found


def totals(lines: Sequence[str]) -> Tuple[int, int]:
    """(joins, departures) announced so far."""
    found = announcements(lines)
    joins = sum(1 for item in found if item.kind == "joined")
    return joins, len(found) - joins


def check_order(found: List[Announcement]) -> None:
    """Nobody can have been announced as joining after leaving.

    Named joins and departures are compared directly. A name a batch only
    counted must still fit: each user whose departure is named needs a
    counted join before it, and each user whose join is named a counted
    departure after it (Hall's condition on nested prefixes and suffixes).
    """
    joined: Dict[str, int] = {}
    left: Dict[str, int] = {}
    for item in found:
        if item.nick is not None:
            seen = joined if item.kind == "joined" else left
            assert item.nick not in seen, f"{item.nick} {item.kind} twice"
            seen[item.nick] = item.position
    for nick, position in left.items():
        if nick in joined:
            assert joined[nick] < position, (
                f"{nick} announced as joined after it left")
    # Whoever is named as gone but never as joining must have a join of
    # their own among the counted ones before that; the k-th earliest such
    # departure needs k counted joins before it.
    counted_joins = [item.position for item in found
                     if item.kind == "joined" and item.nick is None]
    needing = sorted(position for nick, position in left.items()
                     if nick not in joined)
    for rank, position in enumerate(needing, 1):
        earlier = sum(1 for at in counted_joins if at < position)
        assert earlier >= rank, (
            f"{rank} users announced as gone by line {position} were never"
            f" named as joining, but only {earlier} unnamed joins came first")
    # And the other way round, for departures only counted.
    counted_lefts = [item.position for item in found
                     if item.kind == "left" and item.nick is None]
    needing = sorted((position for nick, position in joined.items()
                      if nick not in left), reverse=True)
    for rank, position in enumerate(needing, 1):
        later = sum(1 for at in counted_lefts if at > position)
        assert later >= rank, (
            f"{rank} users announced as joined from line {position} on"
            f" were never named as gone, but only {later} unnamed"
            " departures came after")
    # And at every point, no more departures than joins.
    balance = 0
    for item in found:
        balance += 1 if item.kind == "joined" else -1
        assert balance >= 0, (
            f"more departures than joins by line {item.position}")


class Observer:
    """The observer's connection, read by a thread of its own until
    :meth:`stop`; :attr:`lines` grows as lines come."""

    def __init__(self, client: LineClient) -> None:
        self.client = client
        self.lines = client.seen
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="observer",
                                        daemon=True)
        self._thread.start()

    def _read(self) -> None:
        deadline = time.monotonic() + 3 * PHASE_SECONDS
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                self.client.read_line(timeout=0.05)
            except TimeoutError:
                continue
            except Exception as error:  # EOF, a reset, a bad line: all fail
                self.error = repr(error)
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(DEADLINE)
        assert not self._thread.is_alive(), "the observer's thread is stuck"


Worker = Callable[[int, List[str], float], None]


def run_workers(names: List[str], target: Worker,
                errors: List[str]) -> None:
    """Split ``names`` among :data:`WORKERS` threads that each run
    ``target(index, share, started)`` at once; wait for all of them."""
    started = time.monotonic()
    threads = [threading.Thread(target=target, daemon=True,
                                args=(index, names[index::WORKERS], started))
               for index in range(WORKERS)]
    for thread in threads:
        thread.start()
    deadline = started + PHASE_SECONDS + DEADLINE
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), (
        "a worker is stuck")
    assert not errors, errors[:5]


def test_batched_announcements_lose_and_reorder_no_name(make_server) -> None:
    """Users join and leave from 8 threads at once in a room whose
    announce limit is 5, every 4th of them leaving right after joining:

    * first, 160 join over 2 seconds, and then 100 of them leave at once
      (20 stay): the room grows from single notices to batches, some of
      well over MAX_NAMES_SHOWN names, sent once a second by the server's
      own clock while names keep coming;
    * then 40 more join and, at once, everyone leaves: the room shrinks
      back to single notices while the last joins still wait to be sent.

    Proves that the observer hears of every join and every departure
    exactly once (named where a notice names, counted where a batch only
    counts), and never of a join after the same user's departure.
    """
    server = make_server(announce_limit=5, rate_limit=0, max_clients=400)
    observer = LineClient(server.address).register("observer")
    watching = Observer(observer)
    nicks = [f"u{index:03d}" for index in range(FIRST + SECOND)]
    first, second = nicks[:FIRST], nicks[FIRST:]
    quick = set(nicks[QUICK - 1::QUICK])
    kept = [nick for nick in first if nick not in quick]
    staying, leaving = kept[-STAYING:], kept[:-STAYING]
    clients: Dict[str, LineClient] = {}
    errors: List[str] = []
    lock = threading.Lock()

    failed = threading.Event()  # stops the paced workers early

    def fail(what: str) -> None:
        errors.append(what)
        failed.set()

    def joiner(spread: float) -> Worker:
        """Join a share of the users, spread over ``spread`` seconds
        (evenly, among all the workers); the quick ones leave at once."""

        def join_share(index: int, share: List[str], started: float) -> None:
            step = spread / max(1, len(share))
            deadline = started + spread + PHASE_SECONDS
            for rank, nick in enumerate(share):
                due = started + (rank + index / WORKERS) * step
                if failed.wait(max(0.0, due - time.monotonic())):
                    return  # pacing the load; another worker failed
                if time.monotonic() > deadline:
                    fail("joining took too long")
                    return
                try:
                    user = LineClient(server.address)
                    with lock:
                        clients[nick] = user
                    user.register(nick)
                    if nick in quick:
                        user.send("-exit")
                        user.wait_closed()
                        user.close()
                except Exception as error:  # whatever it is, it fails the test
                    fail(f"{nick}: {error!r}")
                    return

        return join_share

    def leave_share(index: int, share: List[str], started: float) -> None:
        deadline = started + PHASE_SECONDS
        try:
            for nick in share:
                clients[nick].send("-exit")
            for nick in share:
                clients[nick].wait_closed(
                    max(0.1, deadline - time.monotonic()))
                clients[nick].close()
        except Exception as error:  # whatever it is, it fails the test
            fail(f"leaving: {error!r}")

    def wait_heard(joins: int, departures: int, what: str) -> None:
        """Wait until the observer has heard of as many joins and
        departures (the last batch comes within a second)."""

        def heard() -> bool:
            counted = totals(list(watching.lines))
            return counted[0] >= joins and counted[1] >= departures

        try:
            wait_until(lambda: heard() or bool(watching.error),
                       timeout=ANNOUNCED_SECONDS)
        except AssertionError:
            counted = totals(list(watching.lines))
            raise AssertionError(
                f"{what}: the observer heard of {counted[0]} joins and"
                f" {counted[1]} departures, not {joins} and {departures},"
                f" within {ANNOUNCED_SECONDS} s") from None
        assert not watching.error, watching.error

    try:
        run_workers(first, joiner(SPREAD_SECONDS), errors)
        run_workers(leaving, leave_share, errors)
        wait_heard(FIRST, FIRST - STAYING, "first round")
        run_workers(second, joiner(0.0), errors)
        run_workers(staying + [nick for nick in second if nick not in quick],
                    leave_share, errors)
        wait_heard(len(nicks), len(nicks), "second round")
        watching.stop()
        assert not watching.error, watching.error
        # Whatever came up to the reply to -users counts too (a late
        # duplicate), and the room is empty again.
        observer.send("-users")
        observer.expect(protocol.format_users(["observer"], "observer"))
    finally:
        watching.stop()
        for user in clients.values():
            user.close()
        observer.close()

    lines = list(observer.seen)
    found = announcements(lines)
    named = {item.nick for item in found if item.nick is not None}
    assert named <= set(nicks), named - set(nicks)
    assert totals(lines) == (len(nicks), len(nicks))
    check_order(found)
