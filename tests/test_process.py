"""server.py as a real process: it starts, logs, and stops cleanly with exit
status 0 on 'down server', SIGINT and SIGTERM, after telling every user."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading

import pytest

import protocol
from helpers import ADMIN_PASSWORD, DEADLINE, LineClient, ROOT


class ServerProcess:
    """``python3 server.py`` on a free port; its log collected in a thread.
    History, kept seats, per-address limits and the web page are off,
    as in make_server, unless ``args`` turn them on again."""

    def __init__(self, *args: str, env=None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "server.py"), "--port", "0",
             "--history", "0", "--resume-grace", "0", "--web-port", "off",
             "--max-per-address", "0", "--connects-per-minute", "0",
             "--kick-ban-minutes", "0", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, env=env,
            start_new_session=True)  # no terminal: /dev/tty fails
        self.log = []
        self._listening = threading.Event()
        self.port = 0
        threading.Thread(target=self._read, daemon=True).start()
        if not self._listening.wait(DEADLINE):
            self.kill()
            raise AssertionError(f"server did not start: {self.log}")

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.log.append(line.rstrip("\n"))
            found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if found:
                self.port = int(found.group(1))
                self._listening.set()

    def connect(self, nick: str) -> LineClient:
        return LineClient(("127.0.0.1", self.port)).register(nick)

    def wait(self) -> int:
        return self.proc.wait(DEADLINE)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(DEADLINE)


@pytest.fixture
def start_server():
    started = []

    def start(*args: str, env=None) -> ServerProcess:
        server = ServerProcess(*args, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


def users(server: ServerProcess):
    alice, bob = server.connect("alice"), server.connect("bob")
    alice.expect(protocol.format_joined("bob"))
    return alice, bob


def test_down_server_exits_zero(start_server):
    server = start_server("--admin-password", ADMIN_PASSWORD)
    alice, bob = users(server)
    alice.send(f"-admin {ADMIN_PASSWORD}")
    alice.next_is(protocol.format_admin_granted())
    alice.send("down server")
    notice = protocol.format_shutdown("by admin alice")
    assert alice.wait_closed()[-1] == notice
    assert bob.wait_closed()[-1] == notice
    assert server.wait() == 0
    log = "\n".join(server.log)
    assert "alice (127.0.0.1:" in log and "is now an admin" in log
    assert ADMIN_PASSWORD not in log


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_exits_zero_after_notice(start_server, signum):
    server = start_server("--admin-password", ADMIN_PASSWORD)
    alice, bob = users(server)
    server.proc.send_signal(signum)
    notice = protocol.format_shutdown(f"{signum.name} at the server")
    assert alice.wait_closed()[-1] == notice
    assert bob.wait_closed()[-1] == notice
    assert server.wait() == 0


def test_password_from_environment(start_server):
    env = dict(os.environ, CHAT_ADMIN_PASSWORD="from-env")
    server = start_server(env=env)
    alice = server.connect("alice")
    alice.send("-admin from-env")
    alice.next_is(protocol.format_admin_granted())


def test_random_password_never_in_the_log(start_server, tmp_path):
    """With no terminal to show it on, a generated password goes to a new
    file only its owner can read, which the log names; the log never
    holds the password itself."""
    env = {k: v for k, v in os.environ.items() if k != "CHAT_ADMIN_PASSWORD"}
    env["TMPDIR"] = str(tmp_path)
    server = start_server(env=env)
    named = [line for line in server.log if "admin password" in line]
    assert len(named) == 1, server.log
    path = named[0].split(" is in ", 1)[1].split(" (", 1)[0]
    assert os.path.dirname(path) == str(tmp_path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    with open(path) as file:
        password = file.read().rsplit(" ", 1)[1].strip()
    alice = server.connect("alice")
    alice.send(f"-admin {password}")
    alice.next_is(protocol.format_admin_granted())
    alice.send("down server")
    alice.wait_closed()
    assert server.wait() == 0
    assert not any(password in line for line in server.log)
    assert not os.path.exists(path)  # for this run only


def test_password_file_and_warnings(start_server, tmp_path):
    """--admin-password-file reads the first line; a short password and
    --admin-password (seen in ps) get a warning at start."""
    secret = tmp_path / "pw"
    secret.write_text("short\nignored\n")
    server = start_server("--admin-password-file", str(secret))
    alice = server.connect("alice")
    alice.send("-admin short")
    alice.next_is(protocol.format_admin_granted())
    assert any("admin password is short" in line for line in server.log)
    other = start_server("--admin-password", "x" * 20)
    other.connect("bob")
    assert any("visible to every user" in line for line in other.log)
    assert not any("is short" in line for line in other.log)


def test_log_has_timestamps_and_events(start_server):
    server = start_server("--admin-password", ADMIN_PASSWORD)
    alice, bob = users(server)
    bob.send("-exit")
    bob.wait_closed()
    alice.expect(protocol.format_left("bob"))
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait() == 0
    stamp = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    for event in ("listening on", ": connected", "registered as bob",
                  "bob (127.0.0.1:", "shutting down"):
        assert any(event in line and re.match(stamp, line)
                   for line in server.log), event


def test_port_in_use_is_one_clear_line():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        done = subprocess.run(
            [sys.executable, os.path.join(ROOT, "server.py"), "--port",
             str(port), "--admin-password", "x"],
            capture_output=True, text=True, timeout=DEADLINE)
    assert done.returncode == 1
    assert "cannot listen" in done.stderr and "Traceback" not in done.stderr


def test_help_explains_options():
    done = subprocess.run([sys.executable, os.path.join(ROOT, "server.py"),
                           "--help"], capture_output=True, text=True,
                          timeout=DEADLINE)
    for option in ("--host", "--port", "--admin-password", "--verbose",
                   "--max-line", "--outbox-limit", "--rate-limit",
                   "--rate-burst", "--max-clients", "--register-timeout"):
        assert option in done.stdout


@pytest.mark.parametrize("args, message", [
    (["--port", "70000"], "--port must be at most 65535"),
    (["--port", "-1"], "--port must be at least 0"),
    (["--rate-limit", "-1"], "--rate-limit must be at least 0"),
    (["--max-clients", "0"], "--max-clients must be at least 1"),
    (["--register-timeout", "0"], "--register-timeout must be more than 0"),
    (["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/k"],
     "--tls-cert /nonexistent/cert.pem: No such file or directory"),
    (["--tls-cert", os.path.join(ROOT, "tests", "tls", "cert.pem"),
      "--tls-key", "/nonexistent/k"],
     "--tls-key /nonexistent/k: No such file or directory"),
    (["--tls-cert", os.path.join(ROOT, "README.md"),
      "--tls-key", os.path.join(ROOT, "README.md")],
     "not a PEM certificate and its key"),
    (["--tls-cert", os.path.join(ROOT, "tests", "tls", "cert.pem")],
     "--tls-cert and --tls-key go together"),
], ids=["port-high", "port-negative", "rate", "clients", "timeout",
        "no-cert", "no-key", "not-pem", "cert-alone"])
def test_a_bad_option_is_one_line_and_status_2(args, message):
    """Each bad option: one line on stderr naming the option and what is
    wrong, exit status 2, no traceback, and nothing bound (no password
    made, no "listening")."""
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "server.py"), *args],
        capture_output=True, text=True, timeout=DEADLINE,
        stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("server.py: error: ") and message in lines[0]
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_help_names_the_password_pw():
    """--help shows ``--admin-password PW``, not ADMIN_PASSWORD."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "server.py"),
                           "--help"], capture_output=True, text=True,
                          timeout=DEADLINE)
    assert "--admin-password PW" in done.stdout
    assert "--admin-password ADMIN_PASSWORD" not in done.stdout
