"""The servers the bench talks to: starting and stopping the chat server
(``server.py``) or ``ncat --chat``, only ever by the PID the bench started,
and reading a server's CPU time and memory from ``/proc``. Loopback
addresses only.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

from common import CHAT, NCAT, PROCESS_STOP_TIMEOUT_S, REPO_DIR

#: The test certificate and key: the server the bench starts with --tls
#: serves them, and the clients trust the certificate unless --cafile.
TLS_DIR = os.path.join(REPO_DIR, "tests", "tls")
TLS_CERT = os.path.join(TLS_DIR, "cert.pem")
TLS_KEY = os.path.join(TLS_DIR, "key.pem")
#: The server is started with at least this --max-clients.
SERVER_MAX_CLIENTS = 20000
SERVER_START_TIMEOUT_S = 15.0
#: ncat --chat uses select(): more connections than this do not work.
NCAT_MAX_CLIENTS = 1000
NCAT_EXTRA_CONNS = 16
NCAT_START_TIMEOUT_S = 5.0
NGIRCD = "ngircd"
NGIRCD_BINARY = "ngircd"
#: The IRC operator the probe pair logs in as: ngIRCd throttles a user to
#: a few commands a second unless an operator gives it mode +F.
NGIRCD_OPER = "probe"
#: ngIRCd's configuration for the bench: loopback only, no limits on
#: connections (all come from one address), no DNS or ident look-ups,
#: long ping times (the bench's users are idle), nicknames as long as the
#: bench's.
NGIRCD_CONFIG = """\
[Global]
    Name = bench.irc.localhost
    Info = chat bench comparison
    Listen = {host}
    Ports = {port}
    PidFile = {directory}/ngircd.pid
    MotdPhrase = bench
[Limits]
    MaxConnections = 0
    MaxConnectionsIP = 0
    MaxNickLength = 30
    PingTimeout = 600
    PongTimeout = 600
[Operator]
    Name = {oper}
    Password = {oper_password}
[Options]
    DNS = no
    Ident = no
    PAM = no
"""

LISTENING_RE = re.compile(r"listening on \[?([0-9A-Fa-f:.]+)\]?:(\d+)")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve(host: str, port: int) -> Tuple[int, Tuple[Any, ...]]:
    """(family, sockaddr) of a loopback host and port."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    for family, _, _, _, address in info:
        if is_loopback(address[0]):
            return family, address
    raise SystemExit(f"{host} is not a loopback address")


@dataclass
class Target:
    """The server a run talks to, and its process if the bench started it."""

    label: str
    family: int
    address: Tuple[Any, ...]
    pid: Optional[int]
    process: Optional[subprocess.Popen] = None
    log_path: Optional[str] = None
    stopped: Optional[Dict[str, Any]] = None   # how stopping it went

    def log_tail(self, lines: int = 10) -> List[str]:
        if not self.log_path:
            return []
        try:
            with open(self.log_path, errors="replace") as log:
                return [line.rstrip("\n") for line in log.readlines()[-lines:]]
        except OSError:
            return []

    def log_problems(self) -> int:
        """Lines of the log that look like errors."""
        if not self.log_path:
            return 0
        try:
            with open(self.log_path, errors="replace") as log:
                return sum(1 for line in log
                           if "Traceback" in line or " ERROR " in line)
        except OSError:
            return 0


def stop_process(process: subprocess.Popen) -> Dict[str, Any]:
    """Stop a process this bench started: terminate, wait, kill. Return how
    long it took to stop and whether it had to be killed."""
    started = time.monotonic()
    killed = False
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(PROCESS_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            killed = True
    return {"stop_s": round(time.monotonic() - started, 3), "killed": killed}


#: Options that turn off what the bench must not meet: every client comes
#: from one address, and the web page is not measured here. An older
#: server.py (``--server``, to compare) may not know them all.
LIMITS_OFF = (("--max-per-address", "0"), ("--connects-per-minute", "0"),
              ("--web-port", "off"))


def limits_off(server: str) -> List[str]:
    """Those of :data:`LIMITS_OFF` that ``server`` knows (its --help)."""
    shown = subprocess.run([sys.executable, server, "--help"],
                           capture_output=True, text=True,
                           timeout=PROCESS_STOP_TIMEOUT_S).stdout
    return [word for option, value in LIMITS_OFF if option in shown
            for word in (option, value)]


def start_chat_server(args: argparse.Namespace, clients: int) -> Target:
    """Start server.py on a free port and wait for its listening line."""
    log = tempfile.NamedTemporaryFile(prefix="chat-bench-server-",
                                      suffix=".log", delete=False)
    command = [sys.executable, args.server, "--host", args.host,
               "--port", "0", "--admin-password", os.urandom(8).hex(),
               "--rate-limit", "0",
               "--max-clients", str(max(SERVER_MAX_CLIENTS, clients + 100))]
    command += limits_off(args.server)
    if args.tls:
        command += ["--tls-cert", TLS_CERT, "--tls-key", TLS_KEY]
    command += args.server_arg
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                               stdout=log, stderr=log, cwd=REPO_DIR)
    log.close()
    target = Target(CHAT, socket.AF_INET, (), process.pid, process, log.name)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            with open(log.name, errors="replace") as text:
                found = LISTENING_RE.search(text.read())
            if found:
                target.family, target.address = resolve(
                    found.group(1), int(found.group(2)))
                return target
            if process.poll() is not None:
                break
            time.sleep(0.02)
        tail = "\n  ".join(target.log_tail())
        raise RuntimeError(f"server did not start listening:\n  {tail}")
    except BaseException:
        close_target(target)
        raise


def free_port(host: str) -> int:
    family, address = resolve(host, 0)
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind(address)
        return probe.getsockname()[1]


def start_ncat(host: str, clients: int, tls: bool = False) -> Target:
    """Start ``ncat --chat`` (``--ssl`` with ``tls``) on a free port and
    wait until it accepts."""
    port = free_port(host)
    family, address = resolve(host, port)
    command = ["ncat", "--chat", "-l", address[0], str(port),
               "--max-conns", str(clients + NCAT_EXTRA_CONNS)]
    if tls:
        command += ["--ssl", "--ssl-cert", TLS_CERT, "--ssl-key", TLS_KEY]
    log = tempfile.NamedTemporaryFile(prefix="chat-bench-ncat-",
                                      suffix=".log", delete=False)
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                               stdout=log, stderr=log)
    log.close()
    target = Target(NCAT, family, address, process.pid, process, log.name)
    return wait_accepting(target, "ncat")


def wait_accepting(target: Target, name: str) -> Target:
    """``target`` once its process accepts connections (polled for at most
    NCAT_START_TIMEOUT_S); stopped, and RuntimeError with its log's tail,
    if it does not."""
    deadline = time.monotonic() + NCAT_START_TIMEOUT_S
    while time.monotonic() < deadline and target.process.poll() is None:
        try:
            socket.create_connection(target.address[:2], timeout=1).close()
            return target
        except OSError:
            time.sleep(0.05)
    tail = "\n  ".join(target.log_tail())
    close_target(target)
    raise RuntimeError(f"{name} did not start accepting connections:\n"
                       f"  {tail}")


def start_ngircd(host: str, oper_password: str) -> Target:
    """Start ngIRCd in the foreground with a loopback-only configuration
    of its own, in a temporary directory, on a free port; wait until it
    accepts."""
    port = free_port(host)
    family, address = resolve(host, port)
    directory = tempfile.mkdtemp(prefix="chat-bench-ngircd-")
    conf = os.path.join(directory, "ngircd.conf")
    with open(conf, "w") as out:
        out.write(NGIRCD_CONFIG.format(
            host=address[0], port=port, directory=directory,
            oper=NGIRCD_OPER, oper_password=oper_password))
    log_path = os.path.join(directory, "ngircd.log")
    with open(log_path, "w") as log:
        process = subprocess.Popen([NGIRCD_BINARY, "--nodaemon", "--config",
                                    conf], stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=log, cwd=directory)
    target = Target(NGIRCD, family, address, process.pid, process,
                    log_path)
    return wait_accepting(target, "ngircd")


def close_target(target: Target) -> None:
    if target.process is not None:
        target.stopped = stop_process(target.process)
    if target.log_path:
        paths = [target.log_path]
        if target.label == NGIRCD:  # its own directory
            directory = os.path.dirname(target.log_path)
            paths = [os.path.join(directory, name)
                     for name in os.listdir(directory)] + [directory]
        for path in paths:
            try:
                (os.rmdir if os.path.isdir(path) else os.unlink)(path)
            except OSError:
                pass


@contextmanager
def open_target(args: argparse.Namespace, kind: str,
                clients: int) -> Iterator[Target]:
    """The server of one run: started now and stopped afterwards, or the
    one named by --port."""
    if kind == NCAT:
        target = start_ncat(args.host, clients, args.tls)
    elif kind == NGIRCD:
        target = start_ngircd(args.host, args.oper_password)
    elif args.port:
        family, address = resolve(args.host, args.port)
        target = Target(CHAT, family, address, args.server_pid)
    else:
        target = start_chat_server(args, clients)
    try:
        yield target
    finally:
        close_target(target)


def proc_cpu_seconds(pid: Optional[int]) -> Optional[float]:
    """utime + stime of process ``pid`` from /proc, or None."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    # After "(comm)": state is field 3, utime 14 and stime 15 (1-based).
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def proc_memory_kib(pid: Optional[int]) -> Dict[str, int]:
    """VmRSS and VmHWM of process ``pid`` in KiB (empty if unknown)."""
    found: Dict[str, int] = {}
    if pid is None:
        return found
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    found[name] = int(value.split()[0])
    except OSError:
        pass
    return found


def proc_threads(pid: Optional[int]) -> Optional[int]:
    """The number of threads of process ``pid`` (``Threads`` in
    /proc/PID/status), or None."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None
