"""The chat over real sockets: every command, every error, notices, order."""

from __future__ import annotations

import threading

import protocol
from helpers import ADMIN_PASSWORD, LineClient, marker, wait_until


def test_join_shows_welcome_commands_and_users(server, clients):
    alice = clients(server, "alice")
    bob = clients(server)
    bob.expect(protocol.format_nick_prompt())
    bob.send("bob")
    bob.next_is(protocol.format_welcome("bob"))
    bob.next_is(protocol.format_commands_hint())
    bob.next_is("* Online (2): bob (you), alice")
    alice.next_is(protocol.format_joined("bob"))


def test_nick_taken_ignoring_case_then_asks_again(server, clients):
    clients(server, "alice")
    other = clients(server)
    other.expect(protocol.format_nick_prompt())
    other.send("ALICE")
    other.next_is(protocol.format_nick_taken("ALICE"))
    other.next_is(protocol.format_nick_prompt())
    other.send("alice2")
    other.next_is(protocol.format_welcome("alice2"))


def test_invalid_nicks_say_why(server, clients):
    user = clients(server)
    user.expect(protocol.format_nick_prompt())
    for nick, reason in [("a" * 21, "at most 20"), ("-x", "start with '-'"),
                         ("a b", "spaces"), ("a\tb", "spaces"),
                         ("a@b", "cannot contain '@'")]:
        user.send(nick)
        line = user.read_line()
        assert line.startswith("! nickname") and reason in line, line
        user.next_is(protocol.format_nick_prompt())
    user.send("Алиса_1.2")
    user.next_is(protocol.format_welcome("Алиса_1.2"))


def test_cyrillic_nick_unique_ignoring_case(server, clients):
    clients(server, "Борис")
    user = clients(server)
    user.expect(protocol.format_nick_prompt())
    user.send("БОРИС")
    user.next_is(protocol.format_nick_taken("БОРИС"))


def test_broadcast_reaches_everyone_else(server, clients):
    alice, bob, carol = (clients(server, nick)
                        for nick in ("alice", "bob", "carol"))
    alice.expect(protocol.format_joined("carol"))
    bob.expect(protocol.format_joined("carol"))
    alice.send("-all hello everyone")
    bob.next_is("alice: hello everyone")
    carol.next_is("alice: hello everyone")
    marker(bob, alice)  # alice got no echo of her own line


def test_plain_text_goes_to_everyone_by_default(server, clients):
    alice, bob = clients(server, "alice"), clients(server, "bob")
    alice.expect(protocol.format_joined("bob"))
    alice.send("plain hello")
    bob.next_is("alice: plain hello")


def test_private_message_only_to_target(server, clients):
    alice, bob, carol = (clients(server, nick)
                        for nick in ("alice", "bob", "carol"))
    alice.expect(protocol.format_joined("carol"))
    bob.expect(protocol.format_joined("carol"))
    alice.send("-to BOB psst")
    bob.next_is(protocol.format_private("alice", "psst"))
    marker(alice, carol)


def test_partner_then_all(server, clients):
    alice, bob, carol = (clients(server, nick)
                        for nick in ("alice", "bob", "carol"))
    alice.expect(protocol.format_joined("carol"))
    bob.expect(protocol.format_joined("carol"))
    alice.send("-to bob")
    alice.next_is(protocol.format_partner("bob"))
    alice.send("just for bob")
    bob.next_is(protocol.format_private("alice", "just for bob"))
    alice.next_is(protocol.format_private_sent("bob", "just for bob"))
    marker(alice, carol)
    bob.next_is("alice: marker")
    alice.send("-all")
    alice.next_is(protocol.format_everyone())
    alice.send("for all")
    bob.next_is("alice: for all")
    carol.next_is("alice: for all")


def test_partner_who_left(server, clients):
    alice, bob = clients(server, "alice"), clients(server, "bob")
    alice.expect(protocol.format_joined("bob"))
    alice.send("-to bob")
    alice.next_is(protocol.format_partner("bob"))
    bob.send("-exit")
    alice.next_is(protocol.format_left("bob"))
    alice.send("are you there?")
    alice.next_is(protocol.format_partner_gone("bob"))
    # A new user taking the nick is not the old partner: nothing goes to
    # them unasked, and alice is told how to talk to them.
    new_bob = clients(server, "bob")
    alice.next_is(protocol.format_joined("bob"))
    alice.send("still there?")
    alice.next_is(protocol.format_partner_came_back("bob"))
    alice.send("-to bob")
    alice.next_is(protocol.format_partner("bob"))
    alice.send("hello again")
    new_bob.next_is("[private] alice: hello again")


def test_errors_go_to_sender_only(server, clients):
    alice, bob = clients(server, "alice"), clients(server, "bob")
    alice.expect(protocol.format_joined("bob"))
    cases = [
        ("-nope", "! unknown command '-nope'; type -help for the list"),
        ("-to dave hi", protocol.format_no_such_user("dave")),
        ("-to alice hi", protocol.format_not_yourself()),
        ("-to", "! usage: -to NICK"),
        ("-users now", "! -users takes no arguments"),
        ("-kick bob", protocol.format_admin_only("kick users")),
        ("down server", protocol.format_admin_only("shut the server down")),
    ]
    for line, error in cases:
        alice.send(line)
        alice.next_is(error)
    marker(alice, bob)


def test_alone_message_is_refused(server, clients):
    alice = clients(server, "alice")
    alice.send("anyone?")
    alice.next_is(protocol.format_nobody_else())


def test_users_marks_you_and_admins(server, clients):
    alice, bob = clients(server, "alice"), clients(server, "bob")
    alice.expect(protocol.format_joined("bob"))
    alice.send(f"-admin {ADMIN_PASSWORD}")
    alice.next_is(protocol.format_admin_granted())
    bob.send("-users")
    bob.next_is("* Online (2): bob (you), alice (admin)")


def test_help_lists_commands(server, clients):
    alice = clients(server, "alice")
    alice.send("-help")
    for line in protocol.format_help():
        alice.next_is(line)


def test_exit_says_goodbye_frees_nick_and_tells_others(server, clients):
    alice, bob = clients(server, "alice"), clients(server, "bob")
    alice.expect(protocol.format_joined("bob"))
    bob.send("-exit")
    assert bob.wait_closed() == [protocol.format_goodbye("bob")]
    alice.next_is(protocol.format_left("bob"))
    clients(server, "BOB")  # the nick is free at once


def test_dropped_connection_counts_as_exit(server, clients):
    alice, bob = clients(server, "alice"), clients(server, "bob")
    alice.expect(protocol.format_joined("bob"))
    bob.close()
    alice.next_is(protocol.format_left("bob"))
    wait_until(lambda: len(server.room) == 1, what="bob gone")


def test_admin_wrong_password_three_tries(server, clients):
    alice = clients(server, "alice")
    alice.send("-admin wrong1")
    alice.next_is(protocol.format_admin_refused(2))
    alice.send("-admin wrong2")
    alice.next_is(protocol.format_admin_refused(1))
    alice.send("-admin wrong3")
    alice.next_is(protocol.format_admin_refused(0))
    alice.send(f"-admin {ADMIN_PASSWORD}")
    alice.next_is(protocol.format_admin_locked())
    alice.send("down server")
    alice.next_is(protocol.format_admin_only("shut the server down"))


def test_kick(server, clients):
    alice, bob, carol = (clients(server, nick)
                        for nick in ("alice", "bob", "carol"))
    alice.expect(protocol.format_joined("carol"))
    alice.send(f"-admin {ADMIN_PASSWORD}")
    alice.next_is(protocol.format_admin_granted())
    alice.send("-kick bob spamming")
    assert bob.wait_closed()[-1] == protocol.format_you_were_kicked(
        "alice", "spamming")
    kicked = protocol.format_kicked("bob", "alice", "spamming")
    carol.expect(kicked)
    alice.next_is(kicked)
    marker(alice, carol)  # no "left" notice after the kick notice
    assert sorted(server.room.nicknames().values()) == ["alice", "carol"]


def test_down_server_tells_everyone(server, clients):
    alice, bob = clients(server, "alice"), clients(server, "bob")
    waiting = clients(server)  # not registered yet: still told
    waiting.expect(protocol.format_nick_prompt())
    alice.expect(protocol.format_joined("bob"))
    alice.send(f"-admin {ADMIN_PASSWORD}")
    alice.next_is(protocol.format_admin_granted())
    alice.send("down server")
    notice = protocol.format_shutdown("by admin alice")
    for user in (alice, bob, waiting):
        assert user.wait_closed()[-1] == notice
    assert server.wait_stopped(5)


def test_order_of_500_quick_messages(server, clients):
    alice, bob = clients(server, "alice"), clients(server, "bob")
    alice.expect(protocol.format_joined("bob"))
    alice.send_raw(b"".join(protocol.encode_line(f"-all m{i}")
                            for i in range(500)))
    for i in range(500):
        bob.next_is(f"alice: m{i}")


def test_crlf_and_bad_bytes(server, clients):
    alice, bob = clients(server, "alice"), clients(server, "bob")
    alice.expect(protocol.format_joined("bob"))
    alice.send_raw(b"-all telnet line\r\n")
    bob.next_is("alice: telnet line")
    alice.send_raw(b"\xff\xfe bad\n")
    alice.next_is("! line is not valid UTF-8, dropped")
    alice.send_raw(b"hi \x1b[2J there\n")
    alice.next_is("! control characters are not allowed (found U+001B),"
                  " line dropped")
    alice.send_raw(b"nul \x00 here\n")
    alice.next_is("! control characters are not allowed (found U+0000),"
                  " line dropped")
    alice.send_raw(b"x" * 5000 + b"\n")
    alice.next_is(protocol.format_line_too_long())
    alice.send("-all tab\tkept, Ünïcødé and emoji \U0001F600 too")
    bob.next_is("alice: tab\tkept, Ünïcødé and emoji \U0001F600 too")


def test_empty_lines_are_ignored(server, clients):
    alice, bob = clients(server, "alice"), clients(server, "bob")
    alice.expect(protocol.format_joined("bob"))
    alice.send_raw(b"\n  \n\r\n")
    marker(bob, alice)


def test_nick_race_has_one_winner(make_server):
    server = make_server()
    for attempt in range(20):
        nick = f"race{attempt}"
        clients = [LineClient(server.address) for _ in range(8)]
        for client in clients:
            client.expect(protocol.format_nick_prompt())
        barrier = threading.Barrier(len(clients))

        def claim(client: LineClient, nick: str,
                  barrier: threading.Barrier) -> None:
            barrier.wait()
            client.send(nick)

        threads = [threading.Thread(target=claim, args=(c, nick, barrier))
                   for c in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        answers = [c.expect(lambda line: line.startswith(("* Welcome", "!")))
                   for c in clients]
        winners = [a for a in answers if a.startswith("* Welcome")]
        assert len(winners) == 1, answers
        assert list(server.room.nicknames().values()).count(nick) == 1
        for client in clients:
            client.close()
        wait_until(lambda: len(server.room) == 0, what="room empty")
