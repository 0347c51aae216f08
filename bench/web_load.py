#!/usr/bin/env python3
"""A small benchmark of the web front-end, beside the TCP one.

    .venv/bin/python bench/web_load.py [--users N] [--lines M]

It starts ``server.py`` as its own process (``--port 0``, so the web port
is a free one too; flood control, history and kept seats off), then:

1. round trips: a browser user (a ``websockets`` client, the tests'
   dependency) sends a line, a TCP user answers it; 300 times, one at a
   time; the median and p95 of the round trip;
2. fan-out: N users join, and a TCP user sends M lines to everyone; the
   time until every user has every line, and the server's CPU time per
   delivered line (utime + stime from ``/proc``), first with N browser
   users, then with N TCP users, for comparison.

The clients run in this process, one thread each, so the wall time of
the fan-out is mostly theirs; the server's CPU time per line is the
figure to compare. Only the server this script started is stopped, by
its process id.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Callable, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT]

from websockets.sync.client import ClientConnection, connect  # noqa: E402

from transport import LineSocket  # noqa: E402

#: Seconds any one wait may take before the bench gives up.
DEADLINE = 60.0


def start_server() -> Tuple[subprocess.Popen, int, int]:
    """server.py on free ports: the process, its TCP and web ports."""
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "server.py"), "--port", "0",
         "--admin-password", "bench", "--rate-limit", "0", "--history",
         "0", "--resume-grace", "0", "--max-clients", "10000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    port = web_port = 0
    assert proc.stderr is not None
    for line in proc.stderr:
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if found:
            port = int(found.group(1))
        found = re.search(r"web page on http://127\.0\.0\.1:(\d+)/", line)
        if found:
            web_port = int(found.group(1))
            break
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    return proc, port, web_port


def cpu_seconds(pid: int) -> float:
    """The process's user + system CPU time so far."""
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tcp_user(port: int, nick: str) -> LineSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
    user = LineSocket(sock)
    user.read_line()  # the nickname prompt
    user.send_line(nick)
    while not (user.read_line() or "").startswith("* Online"):
        pass
    return user


def web_user(web_port: int, nick: str) -> ClientConnection:
    origin = f"http://127.0.0.1:{web_port}"
    # max_queue=None: a client that stops reading (the fan-out's, once it
    # has its lines) must still read the server's close frame.
    user = connect(f"ws://127.0.0.1:{web_port}/chat", origin=origin,
                   compression=None, open_timeout=DEADLINE, max_queue=None)
    user.__enter__()  # as the context manager would; closed at the end
    user.recv(timeout=DEADLINE)  # the nickname prompt
    user.send(nick)
    while not str(user.recv(timeout=DEADLINE)).startswith("* Online"):
        pass
    return user


def round_trips(port: int, web_port: int, count: int) -> List[float]:
    """Milliseconds from a browser's line to the TCP user's answer."""
    teacher = tcp_user(port, "teacher")
    student = web_user(web_port, "student")
    times = []
    for index in range(count):
        start = time.perf_counter()
        student.send(f"ping {index}")
        while teacher.read_line() != f"student: ping {index}":
            pass
        teacher.send_line(f"pong {index}")
        while student.recv(timeout=DEADLINE) != f"teacher: pong {index}":
            pass
        times.append((time.perf_counter() - start) * 1000)
    teacher.send_line("-exit")
    student.close()
    teacher.close()
    return times


def fan_out(proc: subprocess.Popen, port: int, name: str, users: int,
            lines: int, join: Callable[[int], object],
            read: Callable[[object], str]) -> Tuple[float, float]:
    """M lines from a TCP user ``name`` to N users made by ``join``: the
    seconds until all have all, and the server's CPU microseconds per
    delivery."""
    sender = tcp_user(port, name)
    crowd = [join(index) for index in range(users)]
    ends: List[float] = []
    wanted = [f"{name}: b{index}" for index in range(lines)]

    def receive(user: object) -> None:
        got = 0
        while got < lines:
            if read(user) == wanted[got]:
                got += 1
        ends.append(time.perf_counter())

    threads = [threading.Thread(target=receive, args=(user,), daemon=True)
               for user in crowd]
    for thread in threads:
        thread.start()
    cpu_before = cpu_seconds(proc.pid)
    start = time.perf_counter()
    for line in wanted:
        sender.send_line("-all " + line.split(": ", 1)[1])
    for thread in threads:
        thread.join(DEADLINE)
    if len(ends) != users:
        raise SystemExit("web_load.py: not every user got every line")
    cpu = cpu_seconds(proc.pid) - cpu_before
    for user in crowd:
        user.close()  # type: ignore[attr-defined]
    sender.close()
    return max(ends) - start, cpu / (users * lines) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=200,
                        help="users in the fan-out (default %(default)s)")
    parser.add_argument("--lines", type=int, default=100,
                        help="lines sent to them (default %(default)s)")
    args = parser.parse_args()
    proc, port, web_port = start_server()
    try:
        times = sorted(round_trips(port, web_port, 300))
        print(f"round trip browser -> TCP user -> browser, 300 lines one"
              f" at a time: median {statistics.median(times):.2f} ms,"
              f" p95 {times[int(len(times) * 0.95)]:.2f} ms")
        for kind, join, read in (
                ("browser", lambda i: web_user(web_port, f"w{i}"),
                 lambda user: user.recv(timeout=DEADLINE)),
                ("TCP", lambda i: tcp_user(port, f"t{i}"),
                 lambda user: user.read_line())):
            seconds, cpu = fan_out(proc, port, f"to{kind}", args.users,
                                   args.lines, join, read)
            print(f"fan-out to {args.users} {kind} users, {args.lines}"
                  f" lines ({args.users * args.lines} deliveries): all"
                  f" delivered in {seconds:.2f} s; server CPU"
                  f" {cpu:.1f} us per delivery")
        print(f"({os.cpu_count()} CPUs, load average"
              f" {os.getloadavg()[0]:.1f})")
    finally:
        proc.terminate()
        proc.wait(DEADLINE)


if __name__ == "__main__":
    main()
