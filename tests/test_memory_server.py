"""The chat's memory over real sockets (127.0.0.1): history replayed to
late joiners and by ``-history``, the ``--log`` transcript file, and a
seat kept for a dropped connection, got back with ``-resume TOKEN``.

Every wait has a deadline (``LineClient.expect``/``read_line``,
``wait_until``); nothing sleeps to synchronise.
"""

from __future__ import annotations

import calendar
import logging
import os
import re
import subprocess
import sys
import time
from typing import List, Tuple

import pytest

import protocol
from helpers import ADMIN_PASSWORD, DEADLINE, ROOT, LineClient, wait_until
from server import ChatServer, ServerConfig

STAMP_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) (.*)$")
END = protocol.format_history_end()



def join(clients, server: ChatServer, nick: str) -> Tuple[LineClient, str]:
    """A registered user, and its resume token ("" when the server keeps
    no seats); every line up to the token has been read."""
    user = clients(server, nick)
    token = ""
    if server.config.resume_grace > 0:
        token = protocol.resume_token(user.read_line()) or ""
        assert token, user.seen[-3:]
    return user, token


def history_text(line: str) -> str:
    """The text of a history line; fails for any other line."""
    found = protocol.history_line(line)
    assert found is not None, f"not a history line: {line!r}"
    return found[1]


# --- History -----------------------------------------------------------------


def test_late_joiner_gets_exactly_the_last_five_public_lines(make_server,
                                                             clients):
    """``--history 5``: a late joiner's first lines after the users line
    are the last 5 public lines, marked, in order, then the end line;
    the private lines said among them are not there, and the next line
    is live."""
    server = make_server(history=5)
    alice, _ = join(clients, server, "alice")
    bob, _ = join(clients, server, "bob")
    # Nothing said yet (joins are not history): no replay at all.
    alice.next_is(protocol.format_joined("bob"))
    for number in range(7):
        alice.send(f"public {number}")
        bob.next_is(f"alice: public {number}")
        bob.send(f"-to alice private {number}")
        alice.next_is(f"[private] bob: private {number}")
        bob.next_is(f"-> alice: private {number}")
    carol, _ = join(clients, server, "carol")
    for number in range(2, 7):
        line = carol.read_line()
        assert re.fullmatch(r"\* \[history \d\d:\d\d\] .*", line), line
        assert history_text(line) == f"alice: public {number}"
    carol.next_is(END)
    alice.send("live now")
    carol.next_is("alice: live now")
    assert not any("private" in line for line in carol.seen)


def test_history_command_over_tcp(make_server, clients):
    """``-history 2`` gives the asker the last 2 public lines and the end
    line, and nobody else anything."""
    server = make_server(history=0)
    alice, _ = join(clients, server, "alice")
    bob, _ = join(clients, server, "bob")
    alice.expect(protocol.format_joined("bob"))
    for text in ("first", "second", "third"):
        alice.send(text)
        bob.next_is(f"alice: {text}")
    bob.send("-to alice not for history")
    alice.next_is("[private] bob: not for history")
    bob.next_is("-> alice: not for history")
    bob.send("-history 2")
    assert history_text(bob.read_line()) == "alice: second"
    assert history_text(bob.read_line()) == "alice: third"
    bob.next_is(END)
    bob.send("marker")
    alice.next_is("bob: marker")  # alice got nothing from the -history


def test_history_off_replays_nothing(make_server, clients):
    """``--history 0``: a late joiner gets no history line and no end
    line; the next line it reads is live."""
    server = make_server(history=0)
    alice, _ = join(clients, server, "alice")
    bob, _ = join(clients, server, "bob")
    alice.expect(protocol.format_joined("bob"))
    alice.send("said before carol")
    bob.next_is("alice: said before carol")
    carol, _ = join(clients, server, "carol")
    alice.send("live")
    carol.next_is("alice: live")


# --- The transcript (--log) -------------------------------------------------


def test_transcript_file_after_a_short_session(make_server, clients,
                                               tmp_path, away_from_utc):
    """``--log FILE``: after the server stops, every line of the file is
    ``YYYY-MM-DDTHH:MM:SSZ text`` (UTC, within the session's time, though
    the local time is not UTC), and
    the texts are the public lines, joins, departures, the kick and the
    shutdown, in order; no private line, password or resume token. The
    file is flushed as it goes: a line is there while the server runs."""
    path = tmp_path / "chat.log"
    started = time.time()
    server = make_server(log=str(path), resume_grace=30)
    alice, a_token = join(clients, server, "alice")
    bob, b_token = join(clients, server, "bob")
    alice.expect(protocol.format_joined("bob"))
    alice.send(f"-admin {ADMIN_PASSWORD}")
    alice.next_is(protocol.format_admin_granted())
    alice.send("hello all")
    bob.next_is("alice: hello all")
    wait_until(lambda: "alice: hello all" in path.read_text("utf-8"),
               what="the line flushed to the file")
    bob.send("-to alice whispered words")
    alice.next_is("[private] bob: whispered words")
    bob.next_is("-> alice: whispered words")
    alice.send("café ☕ ünïcode")
    bob.next_is("alice: café ☕ ünïcode")
    carol, c_token = join(clients, server, "carol")
    bob.expect(protocol.format_joined("carol"))
    alice.send("-kick carol spam")
    bob.expect(protocol.format_kicked("carol", "alice", "spam"))
    carol.wait_closed()
    bob.send("-exit")
    bob.wait_closed()
    alice.expect(protocol.format_left("bob"))
    server.stop()
    ended = time.time()

    raw = path.read_bytes().decode("utf-8")  # strict UTF-8
    assert raw.endswith("\n")
    texts = []
    for line in raw.splitlines():
        match = STAMP_RE.match(line)
        assert match, line
        when = calendar.timegm(time.strptime(match.group(1),
                                             "%Y-%m-%dT%H:%M:%SZ"))
        assert started - 1 <= when <= ended + 1, line
        texts.append(match.group(2))
    assert texts == [
        "* alice joined the chat",
        "* bob joined the chat",
        "alice: hello all",
        "alice: café ☕ ünïcode",
        "* carol joined the chat",
        "* carol was kicked by alice: spam",
        "* bob left the chat",
        protocol.format_shutdown(),
    ]
    for secret in ("whispered", ADMIN_PASSWORD, a_token, b_token, c_token):
        assert secret not in raw


def test_unopenable_log_path_fails_at_construction(tmp_path):
    """A transcript that cannot be opened is an error when the server is
    made (OSError), not later: a missing directory, or a directory."""
    for path in (tmp_path / "missing" / "chat.log", tmp_path):
        with pytest.raises(OSError):
            ChatServer(ServerConfig(port=0, admin_password=ADMIN_PASSWORD,
                                    log=str(path)))


def test_server_process_with_unopenable_log_exits_two(tmp_path):
    """``python3 server.py --log /nonexistent/dir/x.log`` exits with
    status 2, as for any bad option, with one line naming the option and
    the file, no traceback, and nothing bound."""
    bad = "/nonexistent/dir/x.log"
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "server.py"), "--port", "0",
         "--admin-password", "x", "--log", bad],
        capture_output=True, text=True, timeout=DEADLINE,
        stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "listening" not in done.stderr
    errors = done.stderr.splitlines()
    assert len(errors) == 1, done.stderr
    assert errors[0] == ("server.py: error: --log /nonexistent/dir/x.log:"
                         " No such file or directory")
    assert not os.path.exists(bad)


# --- A seat kept for a dropped connection ------------------------------------


def drop_alice(make_server, clients, grace: float = 30
               ) -> Tuple[ChatServer, LineClient, str]:
    """alice and bob joined a server keeping seats ``grace`` seconds; then
    alice's connection was reset (RST) and bob was told. Returns the
    server, bob and alice's token."""
    server = make_server(resume_grace=grace)
    alice, token = join(clients, server, "alice")
    bob, _ = join(clients, server, "bob")
    alice.expect(protocol.format_joined("bob"))
    alice.abort()
    bob.next_is(protocol.format_lost_connection("alice"))
    return server, bob, token


def test_resume_over_tcp_gets_the_held_lines_once(make_server, clients,
                                                  caplog):
    """After alice's connection is reset, bob sends a public line and a
    private one to her; a new connection's ``-resume TOKEN`` gets the
    welcome back, the hint, the users line, ``format_missed(2)`` and
    exactly those two lines, in order, once. bob gets ``* alice is
    back`` and never "alice left" / "alice joined". The token is in no
    log record."""
    caplog.set_level(logging.DEBUG, logger="chat")
    server, bob, token = drop_alice(make_server, clients)
    bob.send("public while away")
    bob.send("-to alice private while away")
    bob.send("-users")  # answered after both lines were handled
    bob.next_is("-> alice: private while away")
    users = bob.read_line()
    assert users.startswith("* Online (2): ")
    assert "alice (reconnecting)" in users
    again = clients(server)
    again.next_is(protocol.format_nick_prompt())
    again.send(f"-resume {token}")
    again.next_is(protocol.format_welcome_back("alice"))
    again.next_is(protocol.format_commands_hint())
    assert again.read_line().startswith("* Online (2): alice (you)")
    assert protocol.resume_token(again.read_line()) not in (None, token)
    again.next_is(protocol.format_missed(2))
    again.next_is("bob: public while away")
    again.next_is("[private] bob: private while away")
    bob.next_is(protocol.format_back("alice"))
    bob.send("after")
    again.next_is("bob: after")  # nothing came twice in between
    again.send("glad to be back")
    bob.next_is("alice: glad to be back")
    for line in bob.seen:
        assert line not in (protocol.format_left("alice"),
                            protocol.format_joined("alice"))
    assert not [r.getMessage() for r in caplog.records
                if token in r.getMessage() or token.split(".")[1]
                in r.getMessage()]


def test_seat_given_up_after_a_short_grace(make_server, clients):
    """``--resume-grace 0.5``: once it is over (the server ticks once a
    second), bob's next line is ``* alice left the chat``; alice's token
    is then refused, and the nickname alice is free."""
    server, bob, token = drop_alice(make_server, clients, grace=0.5)
    assert bob.read_line(timeout=4.0) == protocol.format_left("alice")
    again = clients(server)
    again.next_is(protocol.format_nick_prompt())
    again.send(f"-resume {token}")
    again.next_is(protocol.format_resume_refused())
    again.register("alice")
    bob.next_is(protocol.format_joined("alice"))


def test_wrong_token_refused_then_registration_works(make_server, clients):
    """A wrong token (unknown, or alice's id with a wrong secret) gets
    ``format_resume_refused`` and the prompt again; a nickname then
    works on the same connection; bob hears of no resume."""
    server, bob, token = drop_alice(make_server, clients)
    seat_id = token.split(".")[0]
    newcomer = clients(server)
    newcomer.next_is(protocol.format_nick_prompt())
    for wrong in ("nope.nope", f"{seat_id}.wrong-secret"):
        newcomer.send(f"-resume {wrong}")
        newcomer.next_is(protocol.format_resume_refused())
        newcomer.next_is(protocol.format_nick_prompt())
    newcomer.send("carol")
    newcomer.next_is(protocol.format_welcome("carol"))
    bob.next_is(protocol.format_joined("carol"))


def test_resume_while_the_old_connection_is_open_replaces_it(make_server,
                                                             clients):
    """``-resume`` while alice's first connection is still open: that one
    gets ``format_replaced()`` as its last line and is closed; its end is
    not taken for a drop (bob hears nothing of it); the new connection
    has the seat."""
    server = make_server(resume_grace=30)
    alice, token = join(clients, server, "alice")
    bob, _ = join(clients, server, "bob")
    alice.expect(protocol.format_joined("bob"))
    again = clients(server)
    again.next_is(protocol.format_nick_prompt())
    again.send(f"-resume {token}")
    again.next_is(protocol.format_welcome_back("alice"))
    again.expect(protocol.format_missed(0))
    assert alice.wait_closed()[-1:] == [protocol.format_replaced()]
    bob.send("to the new connection")
    again.next_is("bob: to the new connection")
    wait_until(lambda: server.connection_count == 2,
               what="the old connection's handler to end")
    bob.send("-users")
    bob.next_is(protocol.format_users(["bob", "alice"], "bob"))


def test_connection_cut_by_the_server_keeps_no_seat(make_server, clients):
    """A connection the server cuts (here: a megabyte with no end of line)
    is not a drop: the user leaves at once, no seat is kept."""
    server = make_server(resume_grace=30)
    alice, _ = join(clients, server, "alice")
    bob, _ = join(clients, server, "bob")
    alice.expect(protocol.format_joined("bob"))
    try:
        alice.send_raw(b"x" * (protocol.MAX_DISCARD_BYTES + 65536))
    except OSError:
        pass  # the server may have closed first
    bob.next_is(protocol.format_left("alice"))
    lines: List[str] = []
    try:
        lines = alice.wait_closed()
    except OSError:
        pass
    assert protocol.format_lost_connection("alice") not in bob.seen
    assert all(line != protocol.format_replaced() for line in lines)
