"""TLS and IPv6: the in-process server with a test certificate, test users
speaking TLS, and the real client.py (piped, not in a terminal) with --tls.

The certificates are in tests/tls (made by tests/tls/make.sh): cert.pem and
key.pem for CN=localhost, 127.0.0.1 and ::1; other-ca.pem, an unrelated CA;
wrong-name-*.pem, a certificate for another name. Every socket is on
127.0.0.1 or ::1 (the dual-stack test listens on "::"). Nothing sleeps to
synchronise: every wait is for a condition, with a deadline.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

import pytest

import client
import dial
import protocol
import config
from helpers import (CERT, DEADLINE, KEY, ROOT, TLS_DIR, LineClient,
                     wait_until)

OTHER_CA = os.path.join(TLS_DIR, "other-ca.pem")
WRONG_NAME_CERT = os.path.join(TLS_DIR, "wrong-name-cert.pem")
WRONG_NAME_KEY = os.path.join(TLS_DIR, "wrong-name-key.pem")
CLIENT = os.path.join(ROOT, "client.py")
BENCH = os.path.join(ROOT, "bench", "load.py")


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(),
                                reason="no IPv6 loopback (::1) here")


@pytest.fixture
def tls_server(make_server):
    return make_server(tls_cert=CERT, tls_key=KEY)


def run_client(port: int, *args: str, stdin: str = "",
               host: str = "127.0.0.1") -> subprocess.CompletedProcess:
    """client.py with piped input and output (no terminal)."""
    env = dict(os.environ, NO_COLOR="1", PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(
        [sys.executable, CLIENT, "--host", host, "--port", str(port), *args],
        input=stdin, capture_output=True, text=True, timeout=DEADLINE,
        cwd=ROOT, env=env, check=False)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The single stderr line of a client that failed with status 1."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def log_messages(caplog) -> List[str]:
    return [record.getMessage() for record in caplog.records]


# --- Chat over TLS -----------------------------------------------------------


def test_tls_users_chat_publicly_and_privately(tls_server, clients) -> None:
    alice = clients(tls_server.address, "alice", tls=True)
    bob = clients(tls_server.address, "bob", tls=True)
    alice.expect(protocol.format_joined("bob"))
    assert alice.tls.version() in ("TLSv1.2", "TLSv1.3")
    alice.send("-all hello over TLS, Привет 👋")
    bob.expect("alice: hello over TLS, Привет 👋")
    bob.send("-to alice just for you")
    alice.expect("[private] bob: just for you")
    bob.send("-exit")
    alice.expect(protocol.format_left("bob"))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_client_py_over_tls(tls_server, clients, host: str) -> None:
    alice = clients(tls_server.address, "alice", tls=True)
    result = run_client(tls_server.address[1], "--tls", "--cafile", CERT,
                        host=host, stdin="bob\n-all hi\n")
    alice.expect("bob: hi")
    alice.expect(protocol.format_left("bob"))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert (f"* Connected to {host}:{tls_server.address[1]} over TLS"
            " (server certificate checked).") in result.stdout
    assert "* Welcome, bob! You are in the chat." in result.stdout
    assert "* Goodbye, bob!" in result.stdout


def test_insecure_works_but_warns(tls_server, clients) -> None:
    alice = clients(tls_server.address, "alice", tls=True)
    result = run_client(tls_server.address[1], "--tls", "--insecure",
                        stdin="dave\n-all unchecked\n")
    alice.expect("dave: unchecked")
    assert result.returncode == 0, result.stderr
    assert result.stderr == client.INSECURE_WARNING + "\n"
    assert result.stderr.startswith("WARNING: --insecure: the server's"
                                    " identity is NOT checked")
    assert "identity was NOT checked" in result.stdout


# --- Refusing a server we cannot trust ---------------------------------------


def test_wrong_ca_is_refused_and_the_server_carries_on(tls_server, clients,
                                                       caplog) -> None:
    caplog.set_level(logging.INFO, logger="chat")
    result = run_client(tls_server.address[1], "--tls", "--cafile", OTHER_CA,
                        stdin="mallory\n")
    line = one_line_error(result)
    assert "certificate verify failed: self-signed certificate" in line
    # A --cafile was given: the hint to give one would mislead; say what is
    # wrong with the one given instead.
    assert line.endswith(f"; the server's certificate is not signed by"
                         f" {OTHER_CA}")
    assert "use --cafile server.pem" not in line
    # The client told the server why (a TLS alert), and the server went on.
    wait_until(lambda: any("TLS handshake failed" in message
                           for message in log_messages(caplog)),
               what="the server to log the failed handshake")
    clients(tls_server.address, "carol", tls=True)


def test_system_cas_do_not_trust_a_self_signed_server(tls_server) -> None:
    result = run_client(tls_server.address[1], "--tls", stdin="bob\n")
    line = one_line_error(result)
    assert "certificate verify failed" in line
    # Without --cafile, the hint says how to trust a self-signed server.
    assert line.endswith("; for a self-signed server use --cafile server.pem"
                         " (the server's certificate)")


@pytest.mark.parametrize("code, why", [
    (18, "self-signed certificate"),
    (20, "unable to get local issuer certificate"),
])
def test_the_hint_depends_on_whether_a_cafile_was_given(code: int,
                                                        why: str) -> None:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_code, error.verify_message = code, why
    where = "127.0.0.1:4321"
    assert dial._certificate_problem(error, where) == (
        f"{where}: certificate verify failed: {why}; for a self-signed"
        " server use --cafile server.pem (the server's certificate)")
    assert dial._certificate_problem(error, where, "ca.pem") == (
        f"{where}: certificate verify failed: {why}; the server's"
        " certificate is not signed by ca.pem")


def test_a_certificate_for_another_name_is_refused(make_server) -> None:
    other = make_server(tls_cert=WRONG_NAME_CERT, tls_key=WRONG_NAME_KEY)
    result = run_client(other.address[1], "--tls", "--cafile",
                        WRONG_NAME_CERT, stdin="bob\n")
    line = one_line_error(result)
    assert "certificate verify failed: IP address mismatch" in line
    assert "--host" in line


# --- Plain and TLS at the wrong door -----------------------------------------


def test_plain_line_on_a_tls_port_is_answered_in_plain_text(tls_server,
                                                            clients) -> None:
    plain = clients(tls_server.address)
    plain.send("alice")
    assert plain.read_line() == protocol.format_tls_required()
    plain.wait_closed()
    clients(tls_server.address, "bob", tls=True)  # the server carries on


def test_plain_client_py_on_a_tls_port_says_so(tls_server, clients,
                                               monkeypatch) -> None:
    # client.py waits for the prompt, saying nothing; the server waits for
    # a ClientHello until its handshake timeout, then says it uses TLS.
    monkeypatch.setattr(config, "TLS_HANDSHAKE_SECONDS", 0.3)
    result = run_client(tls_server.address[1], stdin="alice\n")
    line = one_line_error(result)
    assert line == ("client.py: cannot join the chat: this server uses TLS;"
                    " connect with a TLS client (client.py --tls)")
    clients(tls_server.address, "bob", tls=True)


def test_a_silent_server_gets_a_hint_then_the_tls_line(monkeypatch) -> None:
    monkeypatch.setattr(client, "SLOW_SERVER_HINT", 0.05)
    ours, theirs = socket.socketpair()
    out = io.StringIO()
    terminal = client.Terminal(interactive=False, colour=False, out=out)
    outcome: Dict[str, BaseException] = {}

    def register() -> None:
        try:
            client.register(client.Connection(ours), terminal, "alice")
        except BaseException as error:  # noqa: BLE001 - for the test
            outcome["error"] = error

    thread = threading.Thread(target=register, daemon=True)
    thread.start()
    try:
        wait_until(lambda: "waiting for the server" in out.getvalue(),
                   what="the hint")
        assert "(if it uses TLS, connect with --tls)" in out.getvalue()
        theirs.sendall(protocol.encode_line(protocol.format_tls_required()))
        thread.join(DEADLINE)
        assert isinstance(outcome.get("error"), client.JoinError)
        assert "this server uses TLS" in str(outcome["error"])
    finally:
        ours.close()
        theirs.close()


def test_tls_client_py_on_a_plain_port_says_so(server, clients) -> None:
    result = run_client(server.address[1], "--tls", stdin="alice\n")
    line = one_line_error(result)
    assert line.startswith(f"client.py: TLS handshake with 127.0.0.1:"
                           f"{server.address[1]} failed: ")
    assert "connect without --tls" in line
    clients(server.address, "bob")  # the server carries on


@pytest.mark.parametrize("peer, expected", [
    (b"", ("the server closed the connection (is the server running with"
           " TLS?)")),
    (b"\x00" * 64, "(is the server running with TLS?)"),
    (b"* Choose a nickname\n", "the server answered in plain text"),
    (None, "no answer in 0.2 s (is the server running with TLS?)"),
], ids=["closes", "garbage", "plain-text", "silent"])
def test_failed_handshakes_are_one_clear_line(peer: Optional[bytes],
                                              expected: str) -> None:
    ours, theirs = socket.socketpair()
    try:
        ours.settimeout(0.2)
        if peer is not None:
            theirs.sendall(peer)
            theirs.shutdown(socket.SHUT_WR)
        context = client.make_tls_context(CERT)
        with pytest.raises(OSError) as failure:
            dial.start_tls(ours, "127.0.0.1", "127.0.0.1:4321", context)
        message = str(failure.value)
        assert message.startswith("TLS handshake with 127.0.0.1:4321 failed: ")
        assert expected in message
        assert "\n" not in message and "_ssl.c" not in message
    finally:
        ours.close()
        theirs.close()


def test_silent_connections_do_not_hold_up_others(tls_server, clients) -> None:
    # Handshakes run in each connection's own thread: connections that
    # never finish theirs (silent, or half a ClientHello) block nobody.
    stalled = [socket.create_connection(tls_server.address, timeout=DEADLINE)
               for _ in range(3)]
    try:
        stalled[0].sendall(b"\x16\x03\x01\x02\x00\x01")
        started = time.monotonic()
        alice = clients(tls_server.address, "alice", tls=True)
        bob = clients(tls_server.address, "bob", tls=True)
        alice.send("-all still here")
        bob.expect("alice: still here")
        assert time.monotonic() - started < config.TLS_HANDSHAKE_SECONDS
    finally:
        for sock in stalled:
            sock.close()


def test_a_tls_user_who_hangs_up_leaves(tls_server, clients) -> None:
    """Most TLS clients (client.py, a killed process, a dropped network)
    close the TCP connection without a TLS close_notify first: the server
    must see the end of the stream, not wait for more records."""
    alice = clients(tls_server.address, "alice", tls=True)
    bob = clients(tls_server.address, "bob", tls=True)
    alice.expect(protocol.format_joined("bob"))
    bob.sock.close()  # no close_notify, just the end of the stream
    alice.expect(protocol.format_left("bob"), timeout=2.0)


def test_a_tls_user_who_ends_tls_leaves(tls_server, clients) -> None:
    alice = clients(tls_server.address, "alice", tls=True)
    bob = clients(tls_server.address, "bob", tls=True)
    alice.expect(protocol.format_joined("bob"))
    try:
        bob.end_tls()  # close_notify, the TCP connection left open
        alice.expect(protocol.format_left("bob"), timeout=2.0)
    finally:
        bob.abort()


def test_nickname_sent_with_the_end_of_the_handshake(tls_server) -> None:
    """A TLS 1.3 client may send its first line right after its Finished
    message, in the same packet, as a script piping into ``openssl
    s_client`` does: that line must not wait for more data to come."""
    context = ssl.create_default_context(cafile=CERT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with socket.create_connection(tls_server.address,
                                  timeout=DEADLINE) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        tls.write(b"eager\n")
        sock.sendall(outgoing.read())  # Finished and the line, at once
        received = b""
        sock.settimeout(1.0)  # the welcome comes in milliseconds, or never
        try:
            while b"Welcome" not in received:
                data = sock.recv(65536)
                if not data:
                    break
                incoming.write(data)
                while True:  # every record that came
                    try:
                        received += tls.read(65536)
                    except ssl.SSLWantReadError:
                        break
        except socket.timeout:
            pass
        # Abort (RST): with the bug, an orderly close would leave the
        # server's thread spinning (see test_a_tls_user_who_hangs_up_leaves).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                        struct.pack("ii", 1, 0))
    assert protocol.format_welcome("eager").encode() in received, received


# --- Command line ------------------------------------------------------------


def test_tls_options() -> None:
    args = client.parse_args(["--tls", "--cafile", CERT])
    assert (args.tls, args.cafile, args.insecure) == (True, CERT, False)
    assert client.parse_args(["--host", "[::1]"]).host == "::1"
    assert client.parse_args([]).tls is False


@pytest.mark.parametrize("argv", [["--cafile", CERT], ["--insecure"],
                                  ["--tls", "--insecure", "--cafile", CERT]])
def test_tls_option_mistakes_are_refused(argv: List[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        client.parse_args(argv)
    assert exit_info.value.code == 2
    assert "--cafile" in capsys.readouterr().err


@pytest.mark.parametrize("cafile, reason", [
    ("no-such-file.pem", "No such file or directory"),
    (os.path.join(ROOT, "README.md"), "no certificate or crl found"),
])
def test_an_unusable_cafile_is_one_line(tls_server, cafile: str,
                                        reason: str) -> None:
    result = run_client(tls_server.address[1], "--tls", "--cafile", cafile,
                        stdin="bob\n")
    line = one_line_error(result)
    assert line.startswith(f"client.py: cannot use --cafile {cafile}: ")
    assert reason.lower() in line.lower()


def test_format_address() -> None:
    assert client.format_address("127.0.0.1", 4321) == "127.0.0.1:4321"
    assert client.format_address("localhost", 4321) == "localhost:4321"
    assert client.format_address("::1", 4321) == "[::1]:4321"


# --- IPv6 --------------------------------------------------------------------


def _pair(address: Tuple) -> Tuple[LineClient, LineClient]:
    alice = LineClient(address).register("alice")
    bob = LineClient(address).register("bob")
    return alice, bob


@needs_ipv6
def test_ipv6_loopback_chat(make_server, caplog) -> None:
    caplog.set_level(logging.INFO, logger="chat")
    v6 = make_server(host="::1")
    port = v6.address[1]
    alice, bob = _pair(("::1", port))
    try:
        alice.expect(protocol.format_joined("bob"))
        bob.send("-all over IPv6")
        alice.expect("bob: over IPv6")
        alice.send("-to bob back at you")
        bob.expect("[private] alice: back at you")
    finally:
        alice.close()
        bob.close()
    messages = log_messages(caplog)
    assert f"listening on [::1]:{port}" in messages
    assert any(re.fullmatch(r"\[::1\]:\d+ registered as alice", message)
               for message in messages), messages


@needs_ipv6
def test_dual_stack_takes_ipv4_clients_too(make_server, caplog) -> None:
    caplog.set_level(logging.INFO, logger="chat")
    try:
        both = make_server(host="::")
    except OSError as error:
        pytest.skip(f"cannot listen on '::': {error}")
    port = both.address[1]
    try:
        v4 = LineClient(("127.0.0.1", port))
    except OSError as error:
        pytest.skip(f"'::' does not take IPv4 here (v6only?): {error}")
    v6 = LineClient(("::1", port))
    try:
        v4.register("four")
        v6.register("six")
        v4.send("-all from IPv4")
        v6.expect("four: from IPv4")
        v6.send("-all from IPv6")
        v4.expect("six: from IPv6")
    finally:
        v4.close()
        v6.close()
    messages = log_messages(caplog)
    # The IPv4 client shows as IPv4, not as ::ffff:127.0.0.1.
    assert any(re.fullmatch(r"127\.0\.0\.1:\d+ registered as four", message)
               for message in messages), messages
    assert any(re.fullmatch(r"\[::1\]:\d+ registered as six", message)
               for message in messages), messages


@needs_ipv6
def test_client_py_over_ipv6_with_tls(make_server) -> None:
    v6 = make_server(host="::1", tls_cert=CERT, tls_key=KEY)
    port = v6.address[1]
    alice = LineClient(("::1", port), tls=True).register("alice")
    try:
        result = run_client(port, "--tls", "--cafile", CERT, host="::1",
                            stdin="bob\n-all hi over IPv6 and TLS\n")
        alice.expect("bob: hi over IPv6 and TLS")
    finally:
        alice.leave()
    assert result.returncode == 0, result.stderr
    assert f"* Connected to [::1]:{port} over TLS" in result.stdout


@needs_ipv6
def test_ipv6_address_in_client_errors() -> None:
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        port = probe.getsockname()[1]
    result = run_client(port, host="::1", stdin="bob\n")
    assert one_line_error(result) == (
        f"client.py: cannot connect to [::1]:{port}: connection refused (is"
        " the server running?)")


# --- The load benchmark over TLS ---------------------------------------------


def test_bench_runs_over_tls(tmp_path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, BENCH, "-n", "4", "-s", "2", "-m", "10",
         "--workers", "1", "--timeout", "20", "--tls", "--json", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=60, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stdout
    assert "chat fanout over TLS" in done.stdout
    result = json.loads(out.read_text())
    (run,) = result["runs"]
    assert run["tls"] is True and result["settings"]["tls"] is True
    assert run["delivered"] == run["expected"] == 2 * 10 * 3
    assert not os.path.exists(f"/proc/{run['server']['pid']}")
