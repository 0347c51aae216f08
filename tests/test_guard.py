"""One host cannot lock everyone out: connections and connects a minute per
address, one flood budget per address, bans after a kick, a growing wait
for wrong admin passwords. Over real sockets, the attacker binds to one
loopback address and ordinary users to others, and keep chatting."""

from __future__ import annotations

import logging
from typing import List

import pytest

import config
import protocol
from guard import Guard, LogBudget
from helpers import ADMIN_PASSWORD, LineClient, marker, wait_until
from server import ServerConfig

ATTACKER = "127.0.0.3"
ALICE = "127.0.0.2"
BOB = "127.0.0.4"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def refused(client: LineClient) -> str:
    """The one line a refused connection gets before it is closed."""
    lines = client.wait_closed()
    assert len(lines) == 1, lines
    assert lines[0].startswith(protocol.ERROR + "connection refused: "), lines
    return lines[0]


def pair(server, clients) -> List[LineClient]:
    """Two ordinary users on other addresses (alice has seen bob join)."""
    alice = clients(server, "alice", bind=ALICE)
    bob = clients(server, "bob", bind=BOB)
    alice.expect(protocol.format_joined("bob"))
    return [alice, bob]


def test_one_address_cannot_take_every_seat(make_server, clients):
    """With --max-per-address 3 the fourth connection from one address is
    refused with one line, while other addresses still get in and chat;
    when one of the three closes, the address may connect again."""
    server = make_server(max_per_address=3, max_clients=20)
    squatters = [clients(server, bind=ATTACKER) for _ in range(2)]
    squatters.append(clients(server, "squat", bind=ATTACKER))
    line = refused(clients(server, bind=ATTACKER))
    assert "too many connections from your address (3)" in line
    alice, bob = pair(server, clients)
    marker(alice, bob)
    squatters[0].close()
    wait_until(lambda: server.room.guard.connections(ATTACKER) == 2,
               what="a closed connection to be counted out")
    clients(server, "again", bind=ATTACKER)
    alice.expect(protocol.format_joined("again"))
    marker(bob, alice, "still here")


def test_reconnecting_in_a_loop_is_refused(make_server, clients):
    """--connects-per-minute 3: the fourth new connection within a minute
    from one address is refused, though the first three are closed; other
    addresses are not counted with it."""
    server = make_server(connects_per_minute=3)
    for _ in range(3):
        clients(server, bind=ATTACKER).close()
    line = refused(clients(server, bind=ATTACKER))
    assert "3 a minute" in line and "try again in" in line
    alice, bob = pair(server, clients)
    marker(alice, bob)


def test_a_kicked_user_cannot_come_straight_back(make_server, clients):
    """A kick bans the address for --kick-ban-minutes: the kicked user's
    next connection is refused, naming the ban; others still join."""
    server = make_server(kick_ban_minutes=5)
    alice = clients(server, "alice", bind=ALICE)
    mallory = clients(server, "mallory", bind=ATTACKER)
    alice.send(f"-admin {ADMIN_PASSWORD}")
    alice.expect(protocol.format_admin_granted())
    alice.send("-kick mallory spam")
    alice.expect(protocol.format_kicked("mallory", "alice", "spam"))
    mallory.wait_closed()
    line = refused(clients(server, bind=ATTACKER))
    assert "banned from this server (spam) for 5 min more" in line
    ban = server.room.guard.banned(ATTACKER)
    assert ban is not None and ban.nick == "mallory" and \
        ban.reason == "spam"
    bob = clients(server, "bob", bind=BOB)
    alice.expect(protocol.format_joined("bob"))
    marker(bob, alice)
    # A kick on the admin's own machine bans nobody: the admin would be
    # locked out too.
    carol = clients(server, "carol", bind=ALICE)
    alice.expect(protocol.format_joined("carol"))
    alice.send("-kick carol")
    carol.wait_closed()
    alice.expect(protocol.format_kicked("carol", "alice"))
    assert server.room.guard.banned(ALICE) is None


def test_an_address_shares_one_flood_budget(make_server, clients):
    """Flood control counts all of an address's connections together: a
    second connection finds the budget the first spent (its line waits),
    while a user on another address is not slowed at all."""
    server = make_server(rate_limit=0.01, rate_burst=4)
    alice, bob = pair(server, clients)
    first = clients(server, "flood1", bind=ATTACKER)  # 1 token
    first.send("-all one")                            # 2
    first.send("-all two")                            # 3
    for user in (alice, bob):
        user.expect(protocol.format_message("flood1", "two"))
    second = clients(server, bind=ATTACKER)
    second.send("flood2")                             # 4: the last one
    second.expect(protocol.format_welcome("flood2"))
    bucket = server.room.guard.bucket(ATTACKER)
    second.send("-all held")   # over budget: its reader waits ~100 s
    wait_until(lambda: bucket.level() < 0,
               what="the address's shared budget to be in debt")
    for user in (alice, bob):
        user.expect(protocol.format_joined("flood2"))
    marker(alice, bob)
    bob.send("-all hi")
    alice.expect(protocol.format_message("bob", "hi"))
    assert not any("held" in line for line in alice.seen + bob.seen)


def test_guard_windows_on_a_fake_clock():
    """Connects a minute slide with time; bans end; tidy() forgets."""
    clock = FakeClock()
    guard = Guard(ServerConfig(connects_per_minute=2, max_per_address=0),
                  clock)
    assert guard.admit("h") is None and guard.admit("h") is None
    assert guard.admit("h") is not None
    assert guard.admit("other") is None
    clock.now += 61
    assert guard.admit("h") is None
    guard.ban("h", 1.0, "x", "why")
    assert guard.banned("h") is not None
    assert "banned" in (guard.admit("h") or "")
    assert [ban.host for ban in guard.bans()] == ["h"]
    clock.now += 61
    assert guard.banned("h") is None and guard.admit("h") is None
    guard.ban("::ffff:10.0.0.1", None)
    assert guard.banned("10.0.0.1") is not None
    assert guard.unban("10.0.0.1") and not guard.unban("10.0.0.1")
    for _ in range(4):  # each admit() above that said None
        guard.release("h")
    guard.release("other")
    clock.now += 3600
    guard.tidy()
    assert guard.connections("h") == 0 and not guard._hosts


def test_admin_waits_grow_then_lock_out_on_a_fake_clock():
    """A few wrong passwords are free; then each makes the address wait
    twice as long, and ADMIN_LOCKOUT_FAILURES lock it out; the right
    password clears it. Another address is never held up."""
    clock = FakeClock()
    guard = Guard(ServerConfig(), clock)
    waits = []
    for _ in range(config.ADMIN_LOCKOUT_FAILURES):
        assert guard.admin_wait("h") == 0
        waits.append(guard.admin_failed("h"))
        clock.now += waits[-1]
    free = config.ADMIN_FREE_FAILURES
    assert waits[:free] == [0] * free
    assert waits[free] == config.ADMIN_DELAY_SECONDS
    assert waits[free + 1] == 2 * config.ADMIN_DELAY_SECONDS
    assert waits[-1] == config.ADMIN_LOCKOUT_SECONDS
    clock.now -= 1
    assert guard.admin_wait("h") > 0
    assert guard.admin_wait("other") == 0
    clock.now += config.ADMIN_LOCKOUT_SECONDS + 2
    assert guard.admin_wait("h") == 0


def test_many_addresses_share_a_global_guess_budget():
    """Past the global budget, addresses that failed before wait even
    between their own delays; one that never failed may still try."""
    clock = FakeClock()
    guard = Guard(ServerConfig(), clock)
    hosts = [f"10.0.{n}.1" for n in range(
        config.ADMIN_GLOBAL_FAILURES_PER_MINUTE)]
    for host in hosts:
        for _ in range(config.ADMIN_FREE_FAILURES):
            guard.admin_failed(host)
    assert all(guard.admin_wait(host) > 0 for host in hosts)
    assert guard.admin_wait("10.9.9.9") == 0


def test_password_guessing_is_slowed_per_address(make_server, clients):
    """After the free tries, an address's next guesses are not even
    checked until its wait is over, on any of its connections; the admin
    on another address logs in at once."""
    server = make_server()
    # A clock that stands still: the wait cannot run out mid-test.
    server.room.guard = Guard(server.config, FakeClock())
    guesses = 0
    answers = []
    while True:
        guesser = clients(server, f"g{guesses}", bind=ATTACKER)
        guesser.send("-admin wrong")
        answers.append(guesser.expect(
            lambda line: line.startswith(protocol.ERROR)))
        guesses += 1
        if answers[-1].startswith("! too many wrong admin passwords"):
            break
        assert guesses <= config.ADMIN_FREE_FAILURES + 1, answers
        guesser.close()
    assert guesses == config.ADMIN_FREE_FAILURES + 2, answers
    guesser.send(f"-admin {ADMIN_PASSWORD}")  # right, but not looked at
    guesser.expect(lambda line: "too many wrong" in line)
    alice = clients(server, "alice", bind=ALICE)
    alice.send(f"-admin {ADMIN_PASSWORD}")
    alice.expect(protocol.format_admin_granted())


IMPOSTORS = [
    ("alice\ufe0f", "invisible"), ("alice\u034f", "invisible"),
    ("alice\u180b", "invisible"), ("\u0430lice", "mix scripts"),
    ("\uff41\uff4c\uff49\uff43\uff45", "taken"),          # fullwidth
    ("\U0001d41a\U0001d425\U0001d422\U0001d41c\U0001d41e", "taken"),
    ("ALICE", "taken"), ("a1ice", "taken"), ("\u3164", "invisible"),
    ("root", "reserved"), ("Admin_2", "reserved"), ("SYSTEM", "reserved"),
]


def test_no_nickname_passes_for_another(make_server, clients):
    """Look-alikes of an online nickname (invisible characters, mixed
    scripts, fullwidth or mathematical letters, 1 for l) and reserved
    names are refused, each with its reason; a Cyrillic nickname is
    welcome, and alice and Анна chat meanwhile."""
    server = make_server()
    alice = clients(server, "alice", bind=ALICE)
    anna = clients(server, "Анна", bind=BOB)
    alice.expect(protocol.format_joined("Анна"))
    for nick, reason in IMPOSTORS:
        impostor = clients(server, bind=ATTACKER)
        impostor.expect(protocol.format_nick_prompt())
        impostor.send(nick)
        line = impostor.expect(lambda text: text.startswith("! nickname"))
        assert reason in line, (nick, line)
        impostor.expect(protocol.format_nick_prompt())
        impostor.close()
    marker(alice, anna)
    assert server.room.nicknames() == {
        alice.sock.getsockname(): "alice", anna.sock.getsockname(): "Анна"}


def test_mistyped_admin_passwords_never_leak(make_server, clients, caplog):
    """``-adminPW``, ``-admin:PW`` and `` -admin PW`` (leading space) are
    the admin command: never said to anyone, never logged; an unknown
    command is not logged with its text either."""
    server = make_server()
    alice, bob = pair(server, clients)
    with caplog.at_level(logging.DEBUG, logger="chat"):
        for line in ("-adminSECRET1", "-admin:SECRET2", "-nope SECRET3"):
            alice.send(line)
            assert alice.read_line().startswith(protocol.ERROR)
        alice.send(f"  -admin {ADMIN_PASSWORD}")
        alice.next_is(protocol.format_admin_granted())
        marker(alice, bob)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "SECRET" not in logged and ADMIN_PASSWORD not in logged
    assert "unknown or malformed command" in logged
    assert not any("SECRET" in line or ADMIN_PASSWORD in line
                   for line in bob.seen)


def test_join_leave_churn_makes_few_notices(make_server, clients):
    """One address joining and leaving in a loop: past its notice budget
    its joins and departures wait for the once-a-second summary (a join
    and a leave within one second cancel out), so everyone else gets at
    most NOTICE_BURST lines plus two summaries; the others' own joins are
    told at once."""
    server = make_server(rate_limit=1000, rate_burst=1000)
    server.housekeeper.stop()  # the test ticks the room itself
    alice, bob = pair(server, clients)
    for number in range(20):
        churner = clients(server, f"c{number}", bind=ATTACKER)
        churner.send("-exit")
        churner.wait_closed()
    server.room.tick()
    carol = clients(server, "carol", bind="127.0.0.5")
    bob.send("-all marker")
    seen = []
    while True:
        line = alice.read_line()
        if line == protocol.format_message("bob", "marker"):
            break
        seen.append(line)
    assert seen[-1] == protocol.format_joined("carol")
    assert len(seen) - 1 <= config.NOTICE_BURST + 2, seen
    assert carol.nick == "carol"


def test_an_http_request_is_no_chat_session(make_server, clients):
    """A form posted to the chat's port: one line, closed at once; the
    body never registers or speaks. Refused nicknames in a row close a
    connection too. Meanwhile alice and bob chat."""
    server = make_server()
    alice, bob = pair(server, clients)
    browser = clients(server, bind=ATTACKER)
    browser.send_raw(b"POST /form HTTP/1.1\r\nHost: chat\r\n"
                     b"Content-Length: 20\r\n\r\neve\n-all hello\n")
    lines = browser.wait_closed()
    assert lines[-1] == protocol.format_not_http(), lines
    script = clients(server, bind=ATTACKER)
    for _ in range(config.MAX_NICK_FAILURES):
        script.send("bad nick!")
    lines = script.wait_closed()
    assert lines[-1] == protocol.format_too_many_nicks(), lines
    marker(alice, bob)
    assert sorted(server.room.nicknames().values()) == ["alice", "bob"]


def test_one_deadline_from_accept_covers_the_tls_handshake(make_server,
                                                           clients,
                                                           monkeypatch):
    """A connection that never finishes its TLS handshake is closed when
    the registration time (counted from accept) is up, whatever the
    handshake's own limit (an hour here); a TLS user on another address
    chats meanwhile."""
    from helpers import CERT, KEY
    monkeypatch.setattr(config, "TLS_HANDSHAKE_SECONDS", 3600.0)
    server = make_server(tls_cert=CERT, tls_key=KEY, register_timeout=3.0)
    stalled = clients(server, bind=ATTACKER)
    stalled.send_raw(b"\x16\x03\x01")  # the start of a ClientHello
    alice = clients(server, "alice", tls=True, bind=ALICE)
    bob = clients(server, "bob", tls=True, bind=BOB)
    alice.expect(protocol.format_joined("bob"))
    stalled.wait_closed()
    marker(alice, bob)


def test_no_padding_or_bidi_reaches_others(make_server, clients, caplog):
    """Padding is one space by the time a line leaves the server, so it
    cannot push fake text to a row of its own; bidi controls are refused
    with one line; a kick reason is escaped in the log."""
    server = make_server()
    alice, bob = pair(server, clients)
    fake = "[private] root: the password is now 1234"
    alice.send("brb" + " " * 400 + "\t\t" + "\u3164" * 50 + fake)
    bob.next_is(protocol.format_message("alice", "brb " + fake))
    alice.send("look \u202eevil")
    assert "U+202E" in alice.read_line()
    marker(alice, bob)
    alice.send(f"-admin {ADMIN_PASSWORD}")
    alice.expect(protocol.format_admin_granted())
    mallory = clients(server, "mallory", bind=ATTACKER)
    with caplog.at_level(logging.INFO, logger="chat"):
        alice.send("-kick mallory a\u200bb")
        mallory.wait_closed()
        bob.expect(lambda line: line.startswith("* mallory was kicked"))
    assert any("a\\u200bb" in record.getMessage()
               for record in caplog.records)


def test_a_crlf_line_has_the_same_limit(make_server, clients):
    """A line of exactly --max-line bytes is accepted whether it ends in
    LF or CRLF; one byte more is refused either way."""
    server = make_server(max_line=100)
    alice, bob = pair(server, clients)
    text = "x" * (100 - len("-all "))
    for ending in (b"\n", b"\r\n"):
        alice.send_raw(f"-all {text}".encode() + ending)
        bob.next_is(protocol.format_message("alice", text))
        alice.send_raw(f"-all {text}y".encode() + ending)
        assert alice.read_line() == protocol.format_line_too_long(100)
    marker(alice, bob)


def test_the_log_has_a_budget_on_a_fake_clock():
    """Past its burst the log takes LOG_LINES_PER_SECOND lines a second;
    the next line let through counts those dropped; errors and the
    server's own lines always pass."""
    clock = FakeClock()
    budget = LogBudget(rate=2.0, burst=3, clock=clock)

    def record(level: int = logging.INFO, **extra: object
               ) -> logging.LogRecord:
        made = logging.LogRecord("chat", level, __file__, 1, "line", (),
                                 None)
        made.__dict__.update(extra)
        return made

    passed = [budget.filter(record()) for _ in range(10)]
    assert passed == [True] * 3 + [False] * 7
    clock.now += 0.5
    late = record()
    assert budget.filter(late)
    assert late.getMessage() == "[7 log lines dropped] line"
    assert not budget.filter(record())
    error = record(logging.ERROR)
    assert budget.filter(error) and budget.filter(record(always=True))
    assert error.getMessage() == "[1 log lines dropped] line"


def test_refusals_are_logged_a_few_per_connection(make_server, clients,
                                                  caplog):
    """A connection sending bad line after bad line gets every refusal,
    but the log only the first few, then one count when it ends; the
    others chat on."""
    server = make_server()
    alice, bob = pair(server, clients)
    pest = clients(server, "pest", bind=ATTACKER)
    with caplog.at_level(logging.INFO, logger="chat"):
        pest.send_raw(b"\xff\n" * 50)
        for _ in range(50):
            assert pest.read_line().startswith(protocol.ERROR)
        pest.send("-exit")
        pest.wait_closed()
        bob.expect(protocol.format_left("pest"))
        marker(alice, bob)
        # Logged by the connection's thread as it ends.
        wait_until(lambda: any(
            "45 more refused lines, not logged" in r.getMessage()
            for r in caplog.records), what="the count of refusals")
    refusals = [r for r in caplog.records if "UTF-8" in r.getMessage()]
    assert len(refusals) == config.LOG_REFUSALS_PER_CONNECTION


def test_the_server_ends_tls_with_close_notify(make_server, clients):
    """A TLS connection the server closes (-exit, a kick) ends with TLS's
    close_notify, not just a TCP close."""
    from helpers import CERT, KEY
    server = make_server(tls_cert=CERT, tls_key=KEY)
    alice = clients(server, "alice", tls=True, bind=ALICE)
    bob = clients(server, "bob", tls=True, bind=BOB)
    alice.expect(protocol.format_joined("bob"))
    bob.send("-exit")
    bob.wait_closed()
    assert bob._decoder.ended  # the close_notify came
    alice.expect(protocol.format_left("bob"))
    alice.send("-exit")
    alice.wait_closed()
    assert alice._decoder.ended


def test_a_refused_tls_client_is_told_why(make_server, clients):
    """A TLS server refuses over the limit before any handshake, in plain
    text; client.py's dialling shows that line, not a TLS error."""
    import ssl

    import dial
    from helpers import CERT, KEY
    server = make_server(tls_cert=CERT, tls_key=KEY, max_per_address=1)
    alice = clients(server, "alice", tls=True)
    context = ssl.create_default_context(cafile=CERT)
    with pytest.raises(OSError, match="too many connections from your"
                                      " address"):
        dial.connect("127.0.0.1", server.address[1], context, CERT)
    bob = clients(server, "bob", tls=True, bind=BOB)
    alice.expect(protocol.format_joined("bob"))
    marker(bob, alice)


def test_held_back_notices_keep_their_order():
    """A join held back (the address past its budget) and then a
    departure told at once cancel out; a departure held back is told
    before the same nickname's next join: nobody is seen to join after
    leaving, or to leave before joining."""
    from helpers import FakeLink
    from room import Room
    clock = FakeClock()
    room = Room(ServerConfig(admin_password=ADMIN_PASSWORD, history=0,
                             resume_grace=0), clock=clock)
    watcher_link = FakeLink(room)
    watcher = room.connect(watcher_link, (ALICE, 1))
    room.receive(watcher, [b"watcher"])
    budget = [True]
    room.guard.may_announce = lambda host: budget[0]  # type: ignore
    budget[0] = False
    joiner = room.connect(FakeLink(room), (ATTACKER, 2))
    room.receive(joiner, [b"joiner"])
    budget[0] = True
    room.receive(joiner, [b"-exit"])
    leaver = room.connect(FakeLink(room), (ATTACKER, 3))
    room.receive(leaver, [b"leaver"])
    budget[0] = False
    room.receive(leaver, [b"-exit"])
    budget[0] = True
    again = room.connect(FakeLink(room), (ATTACKER, 4))
    room.receive(again, [b"leaver"])
    room.tick()
    notices = [line for line in watcher_link.take()
               if "joiner" in line or "leaver" in line]
    assert notices == [protocol.format_joined("leaver"),
                       protocol.format_left_many(["leaver"]),
                       protocol.format_joined("leaver")], notices
