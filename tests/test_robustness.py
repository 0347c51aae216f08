"""The server under abuse, over real sockets on 127.0.0.1.

Framing (byte-at-a-time lines, batches, over-long and endless lines),
encoding (bad bytes and control characters in nicknames and messages), slow
consumers, flood control, idle connections and keepalive, capacity (a full
server, 1000 users), the admin password, races between join, leave, kick,
``-to`` and ``down server``, and a shutdown that loses nothing.

Every wait is on a condition with a deadline (``wait_until``, the
``LineClient`` timeouts, ``Condition.wait_for``), never a bare sleep. The
server runs in this process, so its memory is this process's RSS and its
internals (registry, connections) can be inspected directly.
"""

from __future__ import annotations

import logging
import random
import select
import socket
import threading
import time
from typing import Callable, List, Optional

import pytest

import config
import protocol
import room as room_module
import server as server_module
import transport
from helpers import (ADMIN_PASSWORD, DEADLINE, LineClient, marker,
                     wait_until)

MiB = 1024 * 1024
#: Allowed RSS growth of the whole test process (server included) while
#: megabytes are pushed at the server: far below what buffering it would cost.
RSS_GROWTH_LIMIT = 64 * MiB


# --- Helpers -----------------------------------------------------------------


def rss_bytes() -> Optional[int]:
    """This process's resident memory, or None where /proc is missing."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def assert_rss_growth_bounded(before: Optional[int], what: str) -> None:
    after = rss_bytes()
    if before is None or after is None:
        return  # not Linux: nothing to measure
    growth = after - before
    assert growth < RSS_GROWTH_LIMIT, (
        f"RSS grew by {growth / MiB:.1f} MiB while {what}")


def catch_thread_errors(monkeypatch) -> List[str]:
    """Collect exceptions that escape any thread (server writer, announcer,
    handler) from now until the end of the test."""
    errors: List[str] = []

    def hook(args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread else "?"
        errors.append(f"{name}: {args.exc_type.__name__}: {args.exc_value}")

    monkeypatch.setattr(threading, "excepthook", hook)
    return errors


def error_records(caplog) -> List[str]:
    """Log records that signal a bug: errors, or anything with a traceback."""
    return [f"{r.levelname} {r.getMessage()}" for r in caplog.records
            if r.levelno >= logging.ERROR or r.exc_info]


class Drain(threading.Thread):
    """Reads a client's socket without pause, keeping every line with its
    arrival time; tests wait on it with :meth:`wait_for`."""

    def __init__(self, client: LineClient) -> None:
        super().__init__(name=f"drain-{client.nick}", daemon=True)
        self.client = client
        self.lines: List[str] = []
        self.times: List[float] = []
        self.closed = False
        self._changed = threading.Condition()
        self._stop_event = threading.Event()

    def run(self) -> None:
        sock = self.client.sock
        # What register() read past the welcome comes first.
        self._add(self.client.take_unread(), time.monotonic(), closed=False)
        while not self._stop_event.is_set():
            # select, not a socket timeout: the test's own sends on this
            # socket keep their long timeout. The 0.1 s only lets stop()
            # be noticed; data wakes it at once.
            if not select.select([sock], [], [], 0.1)[0]:
                continue
            try:
                data = sock.recv(256 * 1024)
            except socket.timeout:
                continue
            except OSError:
                data = b""
            self._add(self.client.feed(data), time.monotonic(),
                      closed=not data)
            if not data:
                return

    def _add(self, lines: List[str], now: float, closed: bool) -> None:
        with self._changed:
            self.lines.extend(lines)
            self.times.extend([now] * len(lines))
            self.closed = closed
            self._changed.notify_all()

    def wait_for(self, condition: Callable[[], bool],
                 timeout: float = DEADLINE, what: str = "lines") -> None:
        with self._changed:
            if not self._changed.wait_for(condition, timeout):
                raise AssertionError(
                    f"{self.name}: timed out waiting for {what};"
                    f" last lines: {self.lines[-5:]}")

    def wait_line(self, line: str, timeout: float = DEADLINE) -> float:
        """Wait for ``line``; the time it arrived."""
        self.wait_for(lambda: line in self.lines, timeout, repr(line))
        with self._changed:
            return self.times[self.lines.index(line)]

    def stop(self) -> None:
        self._stop_event.set()
        self.join(DEADLINE)


def nicks_online(server) -> List[str]:
    return sorted(server.room.nicknames().values())


def connection_count(server) -> int:
    return server.connection_count


# --- Framing -----------------------------------------------------------------


def test_lines_sent_one_byte_at_a_time_are_parsed_exactly(server, clients):
    alice, bob = clients(server, "alice"), clients(server, "bob")
    alice.expect(protocol.format_joined("bob"))
    # No Nagle: every one-byte send leaves as its own segment, so the
    # server really sees the lines (and a multi-byte character) in pieces.
    alice.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = ("-all héllo wörld \U0001F600 tab\there\r\n"
            "-to bob private: ok\n"
            "plain \u00e9\n").encode()
    for i in range(len(data)):
        alice.send_raw(data[i:i + 1])
    bob.next_is("alice: héllo wörld \U0001F600 tab\there")
    bob.next_is(protocol.format_private("alice", "private: ok"))
    bob.next_is("alice: plain \u00e9")
    marker(alice, bob, "after bytes")


def test_many_lines_in_one_send_are_parsed_exactly(server, clients):
    alice, bob = clients(server, "alice"), clients(server, "bob")
    alice.expect(protocol.format_joined("bob"))
    limit = protocol.MAX_LINE_BYTES
    texts = [f"m{i}-" + "é" * (i % 50) for i in range(300)]
    # Exactly at the limit passes; one byte more is refused.
    at_limit = "a" * (limit - len("-all "))
    batch = b"".join(protocol.encode_line(f"-all {t}") for t in texts)
    batch += b"\r\n\n"  # empty lines are ignored
    batch += protocol.encode_line(f"-all {at_limit}")
    batch += protocol.encode_line(f"-all {at_limit}b")
    batch += b"-all crlf\r\n"
    alice.send_raw(batch)
    for text in texts:
        bob.next_is(f"alice: {text}")
    bob.next_is(f"alice: {at_limit}")
    bob.next_is("alice: crlf")
    alice.next_is(protocol.format_line_too_long(limit))
    marker(alice, bob, "after batch")


def test_overlong_line_refused_before_it_ends_and_connection_works(
        make_server, clients):
    server = make_server(max_line=100)
    alice, bob = clients(server, "alice"), clients(server, "bob")
    alice.expect(protocol.format_joined("bob"))
    alice.send_raw(b"-all " + b"y" * 200)  # no newline yet
    # The error comes before the line has ended: the server does not wait
    # to hold the whole line.
    alice.next_is(protocol.format_line_too_long(100))
    alice.send_raw(b"y" * 500_000)  # the same line goes on: discarded
    alice.send_raw(b"\n-users\n")
    # One error per line, not per recv: the next line answers -users.
    assert alice.read_line().startswith("* Online (2): ")
    marker(alice, bob, "after overlong")  # none of it reached bob
    alice.send("-all " + "z" * 95)  # exactly 100 bytes still passes
    bob.next_is("alice: " + "z" * 95)


def test_endless_line_cuts_that_connection_with_bounded_memory(
        make_server, clients):
    server = make_server()
    alice, bob = clients(server, "alice"), clients(server, "bob")
    alice.expect(protocol.format_joined("bob"))
    flooders = [clients(server, f"flood{i}") for i in range(6)]
    bob.expect(protocol.format_joined("flood5"))
    # Per flooder: all six together would far exceed the RSS bound if the
    # server kept what it read; it must cut each one long before.
    cap = 32 * MiB
    pushed = [0] * len(flooders)

    def flood(index: int, client: LineClient) -> None:
        chunk = b"x" * 65536
        deadline = time.monotonic() + DEADLINE
        while pushed[index] < cap and time.monotonic() < deadline:
            try:
                pushed[index] += client.sock.send(chunk)
            except socket.timeout:
                continue  # the reader's timeout, not the server's doing
            except OSError:
                return  # cut by the server

    before = rss_bytes()
    threads = [threading.Thread(target=flood, args=(i, c), daemon=True)
               for i, c in enumerate(flooders)]
    for thread in threads:
        thread.start()
    # Others chat while the flood goes on.
    alice.send("-all during the flood")
    bob.expect("alice: during the flood")
    for client in flooders:
        lines = client.wait_closed()
        assert protocol.format_flooding() in lines, lines[-3:]
        # Others' lines may still slip in before the cut, but nothing more
        # of the flooder's own input is answered.
        after = lines[lines.index(protocol.format_flooding()) + 1:]
        assert not [line for line in after
                    if line.startswith(protocol.ERROR)], after
    for thread in threads:
        thread.join(DEADLINE)
        assert not thread.is_alive()
    assert all(MiB < sent < cap for sent in pushed), pushed
    assert_rss_growth_bounded(before, f"{sum(pushed) / MiB:.1f} MiB"
                                      " of endless lines were pushed")
    wait_until(lambda: nicks_online(server) == ["alice", "bob"],
               what="flooders gone from the registry")
    gone = {protocol.format_left(f"flood{i}") for i in range(len(flooders))}
    gone -= set(bob.seen)
    while gone:  # in whatever order the server noticed them
        gone.discard(bob.read_line())
    alice.send("-all after the flood")
    bob.expect("alice: after the flood")


# --- Encoding ----------------------------------------------------------------

BAD_BYTES = [
    b"\xff\xfe", b"\xc3(", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82",
    b"\xf4\x90\x80\x80",  # invalid UTF-8: stray, overlong, surrogate, ...
    b"\x00", b"\x1b[2J", b"\x1b]0;pwned\x07", b"\x1b[31mred", b"\x07",
    b"\x08", b"\x0b", b"\x0c", b"a\rb", b"\x7f",
    "\u0080".encode(), "\u0085".encode(), "\u009b2J".encode(),
    "\u009f".encode(),
]


def test_bad_bytes_in_a_nickname_are_refused_and_asked_again(
        server, clients):
    failures = []
    for index, bad in enumerate(BAD_BYTES):
        client = clients(server)
        client.expect(protocol.format_nick_prompt())
        good = f"ok{index}"
        # A good nick right behind the bad one: what comes between the two
        # answers is exactly the server's reply to the bad one.
        client.send_raw(b"n" + bad + b"x\n" + protocol.encode_line(good))
        between = []
        while True:
            line = client.read_line()
            if line == protocol.format_welcome(good):
                break
            between.append(line)
        refused = (len(between) == 2
                   and between[0].startswith("! nickname ")
                   and " refused: " in between[0]
                   and between[1] == protocol.format_nick_prompt())
        if not refused:
            failures.append(f"{bad!r}: {between}")
    assert not failures, ("bad nick not answered with '! nickname ..."
                          " refused: ...' and the prompt again:\n"
                          + "\n".join(failures))
    assert nicks_online(server) == sorted(
        f"ok{i}" for i in range(len(BAD_BYTES)))


def test_bad_bytes_in_messages_are_refused_and_never_delivered(
        server, clients):
    alice, bob = clients(server, "alice"), clients(server, "bob")
    alice.expect(protocol.format_joined("bob"))
    for index, bad in enumerate(BAD_BYTES):
        for prefix in (b"-all ", b"-to bob ", b""):
            alice.send_raw(prefix + b"bad " + bad + b" end\n")
            error = alice.read_line()
            assert error.startswith(protocol.ERROR), (bad, prefix, error)
            # The error itself is a clean line, safe for any terminal.
            assert protocol.decode_line(error.encode()) == error
            marker(alice, bob, f"clean {index}")
    # Tab is the one control character allowed in text.
    alice.send("-all tab\tok")
    bob.next_is("alice: tab\tok")


# --- Slow consumer -----------------------------------------------------------


def test_slow_reader_is_cut_off_and_others_lose_nothing(make_server,
                                                        clients):
    server = make_server(outbox_limit=64 * 1024)
    slow = clients(server, "slow", rcvbuf=4096)
    reader = clients(server, "reader")
    flooder = clients(server, "flooder")
    reader.expect(protocol.format_joined("flooder"))
    drain = Drain(reader)
    drain.start()
    # slow never reads again from here on.
    count, per_round, padding = 22000, 200, "p" * 240
    lines = [protocol.encode_line(f"-all {i} {padding}")
             for i in range(count)]
    assert sum(map(len, lines)) > 5 * MiB

    def messages() -> List[str]:
        return [line for line in drain.lines if line.startswith("flooder: ")]

    before = rss_bytes()
    start = time.monotonic()
    # As fast as the reader takes it: each round waits for the reader only
    # (never for slow), so a reader held up by slow would show here, and a
    # reader that keeps up is never more than a round behind.
    for first in range(0, count, per_round):
        flooder.send_raw(b"".join(lines[first:first + per_round]))
        done = min(count, first + per_round)

        def caught_up(done: int = done) -> bool:
            return len(messages()) >= done or drain.closed

        drain.wait_for(caught_up, DEADLINE, f"{done} messages")
        assert not drain.closed, (
            f"reader was disconnected although it kept reading, after"
            f" {len(messages())} messages")
    elapsed = time.monotonic() - start
    assert messages() == [f"flooder: {i} {padding}" for i in range(count)]
    assert elapsed < 2 * DEADLINE
    wait_until(lambda: "slow" not in nicks_online(server),
               what="slow dropped from the registry")
    drain.wait_line(protocol.format_left("slow"))
    assert_rss_growth_bounded(before, f"{count * 250 / MiB:.1f} MiB were"
                                      " broadcast to a reader that stopped")
    # slow's connection is really closed: reading now ends in EOF.
    slow.wait_closed()
    assert nicks_online(server) == ["flooder", "reader"]
    flooder.send("-all still flowing")
    drain.wait_line("flooder: still flowing")
    drain.stop()


def test_burst_the_socket_can_take_does_not_cut_a_reader(make_server,
                                                         clients):
    # 4000 two-byte lines from a 20-letter nick arrive in one recv and fan
    # out to 96 KB for the reader: more than the 64 KiB outbox limit, yet
    # the reader's socket buffers can take it all at once. A reader that
    # is not behind must not be cut for what was never offered to it.
    server = make_server(outbox_limit=64 * 1024)
    reader = clients(server, "reader")
    nick = "f" * protocol.NICK_MAX_CHARS
    talker = clients(server, nick)
    reader.expect(protocol.format_joined(nick))
    count = 4000
    talker.send_raw(b"x\n" * count)
    drain = Drain(reader)
    drain.start()
    expected = protocol.format_message(nick, "x")
    drain.wait_for(lambda: drain.lines.count(expected) >= count
                   or drain.closed, DEADLINE, f"{count} lines")
    assert not drain.closed, (
        f"reader cut after {drain.lines.count(expected)} of {count} lines")
    assert nicks_online(server) == sorted(["reader", nick])
    drain.stop()


# --- Flood control -----------------------------------------------------------


def test_flood_control_delays_drops_nothing_and_starves_nobody(
        make_server, clients):
    server = make_server(rate_limit=50, rate_burst=10)
    flooder, other = clients(server, "flooder"), clients(server, "other")
    receiver = clients(server, "receiver")
    flooder.expect(protocol.format_joined("receiver"))
    other.expect(protocol.format_joined("receiver"))
    drain = Drain(receiver)
    drain.start()
    count = 200
    start = time.monotonic()
    flooder.send_raw(b"".join(protocol.encode_line(f"-all f{i}")
                              for i in range(count)))
    # In the middle of the flood, someone else speaks.
    drain.wait_line("flooder: f40")
    sent = time.monotonic()
    other.send("-all ping")
    arrived = drain.wait_line("other: ping")
    assert arrived - sent < 1.0, "one flooder held up another user"
    elapsed = drain.wait_line(f"flooder: f{count - 1}", timeout=20) - start
    floods = [line for line in drain.lines if line.startswith("flooder: ")]
    assert floods == [f"flooder: f{i}" for i in range(count)]
    # (200 - 10 burst) / 50 per second = 3.8 s at the least; loosely:
    assert elapsed >= 2.5, f"200 lines in {elapsed:.2f} s: not throttled"
    assert drain.lines.index("other: ping") < drain.lines.index(
        f"flooder: f{count - 1}"), "ping had to wait for the whole flood"
    drain.stop()


def test_rate_limit_zero_turns_flood_control_off(make_server, clients):
    server = make_server(rate_limit=0, rate_burst=1)
    alice, bob = clients(server, "alice"), clients(server, "bob")
    alice.expect(protocol.format_joined("bob"))
    alice.send_raw(b"".join(protocol.encode_line(f"-all n{i}")
                            for i in range(500)))
    for i in range(500):
        bob.next_is(f"alice: n{i}")


# --- Idle connections --------------------------------------------------------


def test_unregistered_connection_times_out_registered_ones_stay(
        make_server, clients):
    server = make_server(register_timeout=0.5)
    alice, bob = clients(server), clients(server)
    idle = clients(server)  # connected last: its deadline comes last
    alice.register("alice")
    bob.register("bob")
    lines = idle.wait_closed()
    assert lines[-1] == protocol.format_register_timeout(), lines
    # The idle one is gone; alice and bob, past their own deadlines by
    # now, are not.
    wait_until(lambda: connection_count(server) == 2, what="idle one gone")
    alice.send("-all still here")
    bob.expect("alice: still here")
    assert nicks_online(server) == ["alice", "bob"]


def test_bad_nicknames_do_not_extend_the_register_timeout(make_server):
    server = make_server(register_timeout=0.5)
    client = LineClient(server.address)
    try:
        # Keep sending refused nicknames without reading the answers: the
        # server must still hang up once the time to register is over.
        cut = threading.Event()

        def pester() -> None:
            deadline = time.monotonic() + DEADLINE
            while time.monotonic() < deadline:
                try:
                    client.sock.sendall(b"bad nick!\n" * 50)
                except socket.timeout:
                    continue
                except OSError:
                    cut.set()
                    return

        thread = threading.Thread(target=pester, daemon=True)
        thread.start()
        thread.join(DEADLINE + 1)
        assert cut.is_set(), "still connected long after the register timeout"
        wait_until(lambda: connection_count(server) == 0,
                   what="connection closed")
    finally:
        client.close()


def test_accepted_sockets_have_keepalive_and_no_delay(server, clients,
                                                     monkeypatch):
    configured: List[socket.socket] = []
    real = transport.configure_socket

    def spy(sock: socket.socket, *args, **kwargs) -> None:
        real(sock, *args, **kwargs)
        configured.append(sock)

    monkeypatch.setattr(transport, "configure_socket", spy)
    clients(server, "alice")
    clients(server).expect(protocol.format_nick_prompt())
    # Each handler configures its socket before it says anything.
    wait_until(lambda: len(configured) == 2, what="2 sockets configured")
    for sock in configured:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) \
                == transport.KEEPALIVE_IDLE


# --- Capacity ----------------------------------------------------------------


def test_full_server_refuses_the_extra_connection_with_a_line(
        make_server, clients):
    server = make_server(max_clients=5)
    users = [clients(server, f"u{i}") for i in range(5)]
    extra = clients(server)
    assert extra.wait_closed() == [protocol.format_server_full(5)]
    users[0].send("-all still fine")
    for user in users[1:]:
        user.expect("u0: still fine")
    # A slot that frees up can be taken again (the server may need a
    # moment after the goodbye to count the connection out).
    users[4].send("-exit")
    users[4].wait_closed()
    deadline = time.monotonic() + DEADLINE
    while True:
        late = clients(server)
        first = late.read_line()
        if first == protocol.format_nick_prompt():
            break
        assert first == protocol.format_server_full(5)
        late.close()
        assert time.monotonic() < deadline, "the freed slot never came back"
    late.send("late")
    late.next_is(protocol.format_welcome("late"))
    users[0].expect(protocol.format_joined("late"))


def test_simultaneous_connections_over_the_limit_each_get_a_line(
        make_server):
    server = make_server(max_clients=5)
    socks: List[socket.socket] = []
    lock = threading.Lock()

    def connect() -> None:
        sock = socket.create_connection(server.address, timeout=DEADLINE)
        with lock:
            socks.append(sock)

    threads = [threading.Thread(target=connect) for _ in range(30)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE)
        assert len(socks) == 30
        firsts = []
        for sock in socks:
            data = b""
            try:
                while b"\n" not in data:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except ConnectionResetError:
                pass
            firsts.append(data.split(b"\n")[0].decode())
        prompt = protocol.format_nick_prompt()
        full = protocol.format_server_full(5)
        # Nobody is dropped without a word.
        assert sorted(set(firsts)) == sorted({prompt, full}), firsts
        assert firsts.count(prompt) == 5
    finally:
        for sock in socks:
            sock.close()


def test_thousand_users_at_once(make_server):
    server_module.raise_open_file_limit()
    try:
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < 2500:
            pytest.skip(f"open-file limit {soft} too low for 1000 users")
    except ImportError:
        pass
    server = make_server(max_clients=1000)
    count = 1000
    users: List[LineClient] = []
    try:
        start = time.monotonic()
        for _ in range(count):
            users.append(LineClient(server.address, timeout=20))
        # Send every nickname first, then collect the welcomes: the server
        # registers them in parallel instead of one round trip at a time.
        for i, user in enumerate(users):
            user.nick = f"user{i}"
            user.send(user.nick)
        for user in users:
            user.expect(protocol.format_welcome(user.nick))
        wait_until(lambda: len(server.room) == count, timeout=20,
                   what="1000 registered")
        users[0].send("-all hello thousand")
        for user in users[1:]:
            user.expect("user0: hello thousand")
        elapsed = time.monotonic() - start
        assert elapsed < 20, f"1000 users took {elapsed:.1f} s"
        assert len(server.room) == count
        assert len(set(server.room.nicknames().values())) == count
    finally:
        for user in users:
            user.close()
    wait_until(lambda: len(server.room) == 0, timeout=20,
               what="all 1000 gone")


# --- The admin password ------------------------------------------------------


def test_password_is_compared_in_constant_time(server, clients, monkeypatch):
    calls = []
    real = room_module.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(room_module.hmac, "compare_digest", spy)
    assert not server.room.check_password("wrong")
    assert server.room.check_password(ADMIN_PASSWORD)
    assert len(calls) == 2
    alice = clients(server, "alice")
    alice.send(f"-admin {ADMIN_PASSWORD}")
    alice.next_is(protocol.format_admin_granted())
    assert len(calls) == 3


def test_admin_tries_are_limited_logged_and_never_leak(
        server, clients, caplog):
    caplog.set_level(logging.DEBUG, logger="chat")
    alice, bob = clients(server, "alice"), clients(server, "bob")
    alice.expect(protocol.format_joined("bob"))
    guesses = ["guess-one-Qz", "guess-two-Qz", "guess-three-Qz"]
    for tries_left, guess in zip((2, 1, 0), guesses):
        alice.send(f"-admin {guess}")
        alice.next_is(protocol.format_admin_refused(tries_left))
    # Locked: even the right password is refused on this connection.
    alice.send(f"-admin {ADMIN_PASSWORD}")
    alice.next_is(protocol.format_admin_locked())
    alice.send("-kick bob")
    alice.next_is(protocol.format_admin_only("kick users"))
    marker(alice, bob, "alice is no admin")
    # Another connection still may try.
    carol = clients(server, "carol")
    carol.send(f"-admin {ADMIN_PASSWORD}")
    carol.next_is(protocol.format_admin_granted())
    carol.send("-users")
    assert carol.read_line().startswith("* Online (3)")
    bob.expect(protocol.format_joined("carol"))
    marker(carol, bob, "carol is admin")

    address = "127.0.0.1:%d" % alice.sock.getsockname()[1]
    failures = [r for r in caplog.records
                if "admin" in r.getMessage() and address in r.getMessage()]
    assert len(failures) >= 3, [r.getMessage() for r in caplog.records]
    secrets = [ADMIN_PASSWORD] + guesses
    for record in caplog.records:
        for secret in secrets:
            assert secret not in record.getMessage(), record.getMessage()
    for user in (alice, bob, carol):
        for line in user.seen:
            for secret in secrets:
                assert secret not in line, (user.nick, line)


def test_password_typed_at_the_nick_prompt_is_not_logged(
        server, clients, caplog):
    # An easy slip with nc: "-admin PW" before choosing a nickname. It is
    # refused as a nickname; the log must still not get the password.
    caplog.set_level(logging.DEBUG, logger="chat")
    alice = clients(server, "alice")
    early = clients(server)
    early.expect(protocol.format_nick_prompt())
    early.send(f"-admin {ADMIN_PASSWORD}")
    assert early.read_line().startswith("! nickname ")
    early.next_is(protocol.format_nick_prompt())
    early.send("early")
    early.next_is(protocol.format_welcome("early"))
    alice.expect(protocol.format_joined("early"))
    leaks = [r.getMessage() for r in caplog.records
             if ADMIN_PASSWORD in r.getMessage()]
    assert not leaks
    assert not [line for line in alice.seen if ADMIN_PASSWORD in line]


def test_admin_attempts_after_lockout_are_logged_too(
        server, clients, caplog):
    # A locked-out connection that keeps trying is still guessing: each of
    # those refused attempts must leave a trace with the address.
    caplog.set_level(logging.DEBUG, logger="chat")
    alice = clients(server, "alice")
    for _ in range(config.ADMIN_MAX_TRIES):
        alice.send("-admin nope")
        alice.read_line()
    for _ in range(2):
        alice.send("-admin still-guessing")
        alice.next_is(protocol.format_admin_locked())
    address = "127.0.0.1:%d" % alice.sock.getsockname()[1]
    refused = [r.getMessage() for r in caplog.records
               if address in r.getMessage() and "admin" in r.getMessage()]
    assert len(refused) == config.ADMIN_MAX_TRIES + 2, refused


# --- Races -------------------------------------------------------------------

POOL = [f"p{i}" for i in range(12)]


def drain_now(client: LineClient) -> bool:
    """Discard whatever has arrived, without waiting; False on EOF."""
    sock = client.sock
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return False
    except (BlockingIOError, InterruptedError):
        return True
    finally:
        sock.settimeout(client.timeout)


def join_from_pool(client: LineClient, rng: random.Random) -> bool:
    """Register with a nickname from the shared pool; False if every one
    tried was taken."""
    client.expect(protocol.format_nick_prompt())
    for _ in range(3):
        nick = rng.choice(POOL)
        client.send(nick)
        answer = client.expect(
            lambda line: line.startswith(("* Welcome, ", "! nickname ")))
        if answer == protocol.format_welcome(nick):
            client.nick = nick
            return True
    return False


def chaos_session(client: LineClient, rng: random.Random) -> None:
    """One user's short life in the melee."""
    if not join_from_pool(client, rng):
        return
    for _ in range(rng.randint(1, 12)):
        other = rng.choice(POOL)
        client.send(rng.choice([
            f"-to {other} psst", f"-to {other}", "-all hello", "plain",
            "-all", "-users", f"-to {other} " + "x" * 200]))
        if not drain_now(client):
            return  # kicked or cut
    how = rng.randrange(4)
    if how == 1:
        client.send("-exit")
    elif how == 2:
        client.send("-exit")
        client.wait_closed()
    elif how == 3:
        client.sock.shutdown(socket.SHUT_WR)
    # how == 0: just vanish


def admin(user: LineClient) -> LineClient:
    """``user``, made an admin."""
    user.send(f"-admin {ADMIN_PASSWORD}")
    user.expect(protocol.format_admin_granted())
    return user


def test_join_leave_kick_and_messages_race_without_ghosts(
        make_server, clients, caplog, monkeypatch):
    thread_errors = catch_thread_errors(monkeypatch)
    server = make_server()
    boss = admin(clients(server, "boss"))
    keepers = [clients(server, "keep1"), clients(server, "keep2")]
    drains = [Drain(c) for c in [boss] + keepers]
    for drain in drains:
        drain.start()
    stop_at = time.monotonic() + 3.0
    failures: List[str] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop_at:
            try:
                client = LineClient(server.address, timeout=5)
            except OSError as error:
                failures.append(f"worker {seed}: cannot connect: {error}")
                return
            try:
                chaos_session(client, rng)
            except (TimeoutError, socket.timeout) as error:
                # The server owes an answer to a nickname in well under 5 s.
                failures.append(f"worker {seed}: {error}")
            except (EOFError, OSError):
                pass  # kicked or cut mid-way: part of the melee
            finally:
                client.close()

    def kicker() -> None:
        rng = random.Random(999)
        while time.monotonic() < stop_at:
            try:
                boss.send(f"-kick {rng.choice(POOL)} bye")
                boss.send(f"-to {rng.choice(POOL)} watch it")
            except OSError as error:
                failures.append(f"kicker: {error}")
                return

    threads = [threading.Thread(target=worker, args=(seed,), daemon=True)
               for seed in range(30)]
    threads.append(threading.Thread(target=kicker, daemon=True))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(stop_at - time.monotonic() + 15)
    assert not [t for t in threads if t.is_alive()], "a thread hung"
    assert not failures, failures[:5]
    # Every worker's client is closed: only those three may be left.
    wait_until(lambda: nicks_online(server) == ["boss", "keep1", "keep2"],
               what=f"no ghosts (online: {nicks_online(server)})")
    wait_until(lambda: connection_count(server) == 3, what="3 connections")
    # No ghost hides in the nickname index either: every nick is free.
    for nick in POOL:
        clients(server, nick).close()
    wait_until(lambda: nicks_online(server) == ["boss", "keep1", "keep2"],
               what="pool nicks gone again")
    keepers[0].send("-all still alive")
    drains[2].wait_line("keep1: still alive")
    for drain in drains:
        drain.stop()
    assert not error_records(caplog)
    assert not thread_errors


def test_down_server_while_users_join_and_chat(
        make_server, clients, caplog, monkeypatch):
    thread_errors = catch_thread_errors(monkeypatch)
    server = make_server()
    boss = admin(clients(server, "boss"))
    joined = [0]
    failures: List[str] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        round_ = 0
        while not server.stopping:
            round_ += 1
            try:
                client = LineClient(server.address, timeout=5)
            except OSError:
                return  # the server has stopped listening
            try:
                try:
                    client.register(f"w{seed}r{round_}")
                    joined[0] += 1
                    while not server.stopping and rng.random() < 0.95:
                        client.send(rng.choice(["-all hi", "hello",
                                                f"-to w{seed}r1 hi"]))
                        if not drain_now(client):
                            break
                except (EOFError, OSError):
                    pass  # the shutdown may cut us anywhere
                if server.stopping:
                    # Whatever happened, the connection must end promptly.
                    client.wait_closed(DEADLINE)
            except (TimeoutError, socket.timeout):
                failures.append(f"worker {seed}: connection not closed")
            except OSError:
                pass
            finally:
                client.close()

    threads = [threading.Thread(target=worker, args=(seed,), daemon=True)
               for seed in range(20)]
    for thread in threads:
        thread.start()
    wait_until(lambda: joined[0] >= 40, what="40 joins")
    boss.send("down server")
    lines = boss.wait_closed()
    assert lines[-1] == protocol.format_shutdown("by admin boss")
    assert server.wait_stopped(DEADLINE)
    for thread in threads:
        thread.join(DEADLINE + 5)
    assert not [t for t in threads if t.is_alive()], "a client never got EOF"
    assert not failures, failures[:5]
    assert not error_records(caplog)
    assert not thread_errors


def test_kicked_user_says_nothing_after_the_kick_notice(make_server,
                                                       clients):
    # Flood control makes the server work through bob's backlog slowly,
    # so the kick surely lands while lines bob sent earlier still wait.
    server = make_server(rate_limit=200, rate_burst=10)
    alice, bob = clients(server, "alice"), clients(server, "bob")
    carol = clients(server, "carol")
    alice.expect(protocol.format_joined("carol"))
    alice.send(f"-admin {ADMIN_PASSWORD}")
    alice.next_is(protocol.format_admin_granted())
    watcher = Drain(carol)
    watcher.start()
    count = 300
    bob.send_raw(b"".join(b"-all spam%d\n" % i for i in range(count)))
    watcher.wait_line("bob: spam15")
    alice.send("-kick bob enough")
    kicked = protocol.format_kicked("bob", "alice", "enough")
    watcher.wait_line(kicked)
    # Once bob's connection is gone from the server, nothing more of his
    # can come; a marker then closes the window to look at.
    wait_until(lambda: connection_count(server) == 2, what="bob gone")
    alice.send("-all marker")
    watcher.wait_line("alice: marker")
    lines = watcher.lines
    assert f"bob: spam{count - 1}" not in lines[:lines.index(kicked)], (
        "bob's lines were all handled before the kick: nothing was tested")
    after = lines[lines.index(kicked) + 1:lines.index("alice: marker")]
    ghost = [line for line in after if line.startswith("bob: ")]
    assert not ghost, (f"{len(ghost)} lines from bob delivered after he was"
                       f" kicked, e.g. {ghost[:3]}")
    watcher.stop()


def test_shutdown_delivers_every_accepted_line_first(server, clients):
    alice, bob = clients(server, "alice"), clients(server, "bob")
    alice.expect(protocol.format_joined("bob"))
    alice.send(f"-admin {ADMIN_PASSWORD}")
    alice.next_is(protocol.format_admin_granted())
    count = 500
    alice.send_raw(b"".join(protocol.encode_line(f"-all last{i}")
                            for i in range(count))
                   + protocol.encode_line("down server"))
    lines = bob.wait_closed()
    notice = protocol.format_shutdown("by admin alice")
    assert lines == [f"alice: last{i}" for i in range(count)] + [notice]
    assert alice.wait_closed() == [notice]
    assert server.wait_stopped(DEADLINE)
