"""End-to-end tests of client.py getting back in after a lost connection:
the real program in a pseudo-terminal (the helpers of test_client_e2e.py),
the real server, and between them a small TCP proxy that can drop every
connection at once, as a flaky network would, while it keeps listening.

The other user, bob, talks to the server directly. Nothing sleeps to
synchronise: every wait is for text on a screen or a socket, with a
deadline. Unix only: it needs pseudo-terminals.
"""

from __future__ import annotations

import select
import socket
import threading
from typing import Callable, Iterator, List, Tuple

import pytest

import client
import protocol
from helpers import (ADMIN_PASSWORD, CERT, DEADLINE, KEY, LineClient,
                     wait_until)
from test_client_e2e import PtyClient, _environment, screen

#: Seconds before client.py's first try to reconnect: short, for speed.
FIRST_DELAY = "0.1"
#: Seconds the server keeps a dropped user's seat: longer than any test.
GRACE = 60.0


class Proxy:
    """Forwards TCP connections from a port on 127.0.0.1 to ``target``,
    bytes both ways, one thread per connection.

    :meth:`drop` ends every connection now (both of its sockets), as a
    network that fails would, but new connections are still accepted.
    After :meth:`hold`, new connections wait, accepted but not forwarded,
    until :meth:`release` (or with ``refuse=True`` are closed at once): so
    the test decides when the client may get back through.
    """

    def __init__(self, target: Tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)  # to notice close() soon
        self.port = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: List[Tuple[socket.socket, socket.socket]] = []
        self._open = threading.Event()
        self._open.set()
        self._refuse = False
        self._closed = threading.Event()
        self.accepted = 0  # connections accepted so far
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def hold(self, refuse: bool = False) -> None:
        """New connections wait for :meth:`release`; with ``refuse``, they
        are closed as soon as they are accepted instead."""
        with self._lock:
            self._refuse = refuse
            self._open.clear()

    def release(self) -> None:
        """Forward new connections again, those waiting too."""
        with self._lock:
            self._refuse = False
            self._open.set()

    def drop(self) -> None:
        """End every connection being forwarded: each end gets the end of
        its stream at once; their threads close the sockets."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed.set()
        self._open.set()  # let waiting connections see that we are closed
        self.drop()
        for thread in self._threads:
            thread.join(DEADLINE)
        self.listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                downstream, _ = self.listener.accept()
            except socket.timeout:
                continue
            with self._lock:
                self.accepted += 1
                refuse = self._refuse
            if refuse:
                downstream.close()
                continue
            thread = threading.Thread(target=self._forward,
                                      args=(downstream,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _forward(self, downstream: socket.socket) -> None:
        try:
            if not self._open.wait(DEADLINE) or self._closed.is_set():
                raise ConnectionAbortedError("the proxy is closed")
            upstream = socket.create_connection(self.target, DEADLINE)
        except OSError:
            downstream.close()
            return
        with self._lock:
            self._pairs.append((downstream, upstream))
        with downstream, upstream:
            self._pump(downstream, upstream)

    def _pump(self, one: socket.socket, other: socket.socket) -> None:
        """Copy bytes both ways until either end closes (or the proxy
        does); then close both."""
        peer = {one: other, other: one}
        while not self._closed.is_set():
            ready, _, _ = select.select([one, other], [], [], 0.05)
            for sock in ready:
                try:
                    data = sock.recv(65536)
                    if data:
                        peer[sock].sendall(data)
                except OSError:
                    data = b""
                if not data:
                    return


@pytest.fixture
def proxy_to() -> Iterator[Callable[[Tuple[str, int]], Proxy]]:
    made: List[Proxy] = []

    def make(target: Tuple[str, int]) -> Proxy:
        made.append(Proxy(target))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


@pytest.fixture
def alice_via() -> Iterator[Callable[[Proxy], PtyClient]]:
    """``alice_via(proxy)``: client.py in a terminal, joined as alice
    through the proxy, retrying quickly when its connection is lost."""
    started: List[PtyClient] = []

    def start(proxy: Proxy) -> PtyClient:
        alice = PtyClient(
            "--port", str(proxy.port), "--nick", "alice",
            env=_environment(**{client.FIRST_DELAY_ENV: FIRST_DELAY}))
        started.append(alice)
        alice.expect("* Welcome, alice! You are in the chat.")
        alice.expect("[everyone]> ")
        return alice

    yield start
    for alice in started:
        alice.close()


def lines_after(user: LineClient, start: int) -> List[str]:
    """What ``user`` has read since it had read ``start`` lines."""
    return user.seen[start:]


# --- Getting the seat back ---------------------------------------------------


def test_a_dropped_client_gets_back_in_by_itself(
        make_server, clients, proxy_to, alice_via) -> None:
    server = make_server(resume_grace=GRACE)
    proxy = proxy_to(server.address)
    bob = clients(server, "bob")
    alice = alice_via(proxy)
    bob.expect("* alice joined the chat")
    bob.send("-all before the drop")
    alice.expect("bob: before the drop")
    alice.write("half typed")
    alice.expect("half typed")  # echoed: readline has it
    alice.wait_idle()
    assert b"Resume token" not in alice.output  # kept, not shown

    proxy.hold()  # she may not get back in before bob has spoken
    proxy.drop()
    bob.expect("* alice lost connection")
    since_drop = len(bob.seen)
    alice.expect("* Connection lost (the server closed the connection);"
                 " reconnecting...")
    bob.send("-all while you were away")
    bob.send("-to alice just for you")
    # Once bob's -users is answered, his lines before it were handled: so
    # they are kept for alice, to be sent when she is back.
    bob.send("-users")
    bob.expect(lambda line: line.startswith("* Online (2): "))
    proxy.release()

    alice.expect("* Welcome back, alice! You are in the chat.")
    alice.expect("* 2 lines came for you while you were away:")
    alice.expect("bob: while you were away")
    alice.expect("[private] bob: just for you")
    alice.expect("[everyone]> half typed")  # redrawn after each line
    bob.expect("* alice is back")
    alice.wait_idle()
    alice.write(" and finished\r")
    bob.expect("alice: half typed and finished")
    alice.expect("[everyone]> ")
    alice.wait_idle()

    # Each missed line once; the commands hint only once, from joining.
    output = alice.output.decode()
    assert output.count("bob: while you were away") == 1
    assert output.count("[private] bob: just for you") == 1
    assert output.count("* Commands:") == 1
    assert "Resume token" not in output
    said = lines_after(bob, since_drop)
    assert not any(line.startswith(("* alice left", "* alice joined"))
                   for line in said), said
    # The screen, as the user sees it: in order, the prompt at the end.
    shown = screen(alice.output, alice.columns)
    tail = [row for row in shown if row][-9:]
    assert tail[:1] == ["bob: before the drop"]
    assert tail[1] == ("* Connection lost (the server closed the"
                       " connection); reconnecting...")
    assert tail[2] == "* Welcome back, alice! You are in the chat."
    assert tail[3].startswith("* Online (2): ")
    assert tail[4:7] == ["* 2 lines came for you while you were away:",
                         "bob: while you were away",
                         "[private] bob: just for you"]
    assert tail[7:] == ["[everyone]> half typed and finished",
                        "[everyone]>"]


def test_a_restarted_server_gets_the_same_nickname_again(
        make_server, clients, proxy_to, alice_via) -> None:
    first = make_server(resume_grace=GRACE)
    port = first.address[1]
    proxy = proxy_to(first.address)
    clients(first, "bob")
    alice = alice_via(proxy)
    alice.write("-to bob\r")
    alice.expect("Your lines now go to bob only.")
    alice.expect("[to bob]> ")

    proxy.hold()
    proxy.drop()
    alice.expect("reconnecting...")
    alice.wait_idle()
    alice.write("typed while away\r")  # not sent, and she is told
    alice.expect("* " + client.NOT_SENT)
    alice.expect("[to bob]> ")
    # The server goes away with its seats (alice's connection is already
    # gone, so she misses its goodbye), and a new one takes its port.
    first.stop()
    second = make_server(port=port, resume_grace=GRACE)
    bob = clients(second, "bob")
    proxy.release()

    alice.expect("* The server did not keep your seat (it may have"
                 " restarted): joining again as alice")
    alice.expect("* Welcome, alice! You are in the chat.")
    alice.expect("* Online (2): ")  # the last line of the greeting
    bob.expect("* alice joined the chat")
    alice.wait_idle()
    # A new seat has no partner: a plain line goes to everyone, and reads
    # so once sent, though typed at the old prompt.
    alice.write("hello again\r")
    bob.expect("alice: hello again")
    alice.expect("[everyone]> hello again\r\n")
    alice.expect("[everyone]> ")
    assert "typed while away" not in " ".join(bob.seen)


def test_giving_up_keeps_the_half_typed_line(make_server, clients,
                                             proxy_to, alice_via) -> None:
    # The server restarts without alice's seat, and someone else has
    # taken her nickname: she cannot get back in, and the client ends;
    # what she had typed stays on the screen.
    first = make_server(resume_grace=GRACE)
    port = first.address[1]
    proxy = proxy_to(first.address)
    alice = alice_via(proxy)
    proxy.hold()
    proxy.drop()
    alice.expect("reconnecting...")
    alice.expect("[everyone]> ")
    alice.wait_idle()
    alice.write("half typed")
    alice.expect("half typed")  # echoed: readline has it
    alice.wait_idle()
    first.stop()
    second = make_server(port=port, resume_grace=GRACE)
    clients(second, "alice")
    proxy.release()
    assert alice.wait_exit() == 1
    alice.expect("(not sent: half typed)\r\n")
    alice.expect("* Could not reconnect: nickname 'alice' refused: it is"
                 " taken")
    alice.assert_terminal_restored()
    shown = [row for row in screen(alice.output, alice.columns) if row]
    assert shown[-2] == "(not sent: half typed)"
    assert shown[-1].startswith("* Could not reconnect: ")
    assert not any(row.startswith("[everyone]> half") for row in shown)


# --- Leaving while it retries ------------------------------------------------


@pytest.mark.parametrize("refuse, key", [
    (True, "\x03"),       # Ctrl+C between tries
    (False, "\x03"),      # Ctrl+C while a try waits for the server
    (True, "\x04"),       # Ctrl+D
    (False, "-exit\r"),
], ids=["ctrl-c-waiting", "ctrl-c-trying", "ctrl-d", "exit-command"])
def test_leaving_while_reconnecting_ends_cleanly(
        make_server, clients, proxy_to, alice_via, refuse: bool,
        key: str) -> None:
    server = make_server(resume_grace=GRACE)
    proxy = proxy_to(server.address)
    bob = clients(server, "bob")
    alice = alice_via(proxy)
    proxy.hold(refuse=refuse)
    proxy.drop()
    alice.expect("reconnecting...")
    bob.expect("* alice lost connection")
    # Let it try (and, when refused, fail) at least once first.
    accepted = proxy.accepted
    alice.expect("[everyone]> ")
    wait_until(lambda: proxy.accepted > accepted, what="a try to reconnect")
    alice.wait_idle()
    alice.write(key)
    assert alice.wait_exit() == 0
    alice.assert_terminal_restored()
    assert b"Not sent" not in alice.output


# --- When not to reconnect ---------------------------------------------------


@pytest.mark.parametrize("ending", ["exit", "kick", "shutdown"])
def test_no_reconnect_when_the_chat_was_ended_on_purpose(
        make_server, clients, proxy_to, alice_via, ending: str) -> None:
    server = make_server(resume_grace=GRACE)
    proxy = proxy_to(server.address)
    bob = clients(server, "bob")
    bob.send(f"-admin {ADMIN_PASSWORD}")
    bob.expect(protocol.format_admin_granted())
    alice = alice_via(proxy)
    if ending == "exit":
        alice.write("-exit\r")
        bob.expect("* alice left the chat")
        status = 0
    elif ending == "kick":
        bob.send("-kick alice enough")
        alice.expect("! you were kicked by bob: enough")
        status = 0  # being kicked is no error of the client's
    else:
        bob.send("down server")
        alice.expect("* Server is shutting down")
        status = 0
    accepted = proxy.accepted
    assert alice.wait_exit() == status
    alice.assert_terminal_restored()
    assert b"reconnecting" not in alice.output
    assert proxy.accepted == accepted  # it did not try


def test_reconnecting_over_tls(make_server, clients, proxy_to) -> None:
    # The same host, port and TLS settings: the new connection is checked
    # against the same certificate.
    server = make_server(resume_grace=GRACE, tls_cert=CERT, tls_key=KEY)
    proxy = proxy_to(server.address)
    bob = clients(server, "bob", tls=True)
    alice = PtyClient(
        "--port", str(proxy.port), "--nick", "alice", "--tls",
        "--cafile", CERT,
        env=_environment(**{client.FIRST_DELAY_ENV: FIRST_DELAY}))
    try:
        alice.expect("* Welcome, alice! You are in the chat.")
        alice.expect("[everyone]> ")
        proxy.hold()  # until the server has seen the drop
        proxy.drop()
        bob.expect("* alice lost connection")
        proxy.release()
        alice.expect("* Welcome back, alice! You are in the chat.")
        alice.expect("[everyone]> ")
        alice.wait_idle()
        alice.write("still encrypted\r")
        bob.expect("alice: still encrypted")
        assert alice.output.count(b"over TLS") == 1  # said once, at start
    finally:
        alice.close()


def test_a_token_typed_by_hand_at_the_nickname_prompt_is_forgotten(
        make_server, clients) -> None:
    # An nc user's way, in client.py: "-resume TOKEN" for a nickname.
    server = make_server(resume_grace=GRACE)
    bob = clients(server, "bob")
    carol = clients(server, "carol")
    token = None
    while token is None:
        token = protocol.resume_token(carol.read_line())
    carol.close()
    bob.expect("* carol lost connection")
    user = PtyClient("--port", str(server.address[1]), env=_environment())
    try:
        user.expect("nickname> ")
        user.write(f"-resume {token}\r")
        user.expect("* Welcome back, carol! You are in the chat.")
        user.expect("[everyone]> ")
        bob.expect("* carol is back")
        user.wait_idle()
        user.write("\x1b[A")  # up: the line typed before, if kept
        user.write("recalled?\r")
        bob.expect(lambda line: line.startswith("carol: "))
        assert bob.seen[-1] == "carol: recalled?"
    finally:
        user.close()
