#!/usr/bin/env python3
"""Load benchmark for the chat server: fan-out, latency, idle memory.

The bench starts ``server.py`` as its own process (``--port 0 --rate-limit 0``
and a high ``--max-clients``; the port is read from its log line), or it
targets a server already running on ``--host``/``--port``. Worker processes
(``--workers``) open the client connections with non-blocking sockets and
``selectors`` so that the load generator is not the bottleneck, and report how
busy they were.

A message run goes like this:

1. N clients connect and choose a nickname; registration time is measured
   from the first connect to the last welcome line.
2. Barrier: client 0 broadcasts ``barrier K`` (again every 0.2 s) until every
   other client has received it, so every client is surely in the room.
3. S senders (clients 0..S-1) send M lines each, ``-all t SENDER SEQ TIME_NS``
   (TIME_NS is ``time.monotonic_ns()``, the system-wide CLOCK_MONOTONIC, so it
   is comparable across the worker processes), paced at ``--rate`` lines/s in
   total or as fast as the sockets accept them. Every client reads; a
   receiver only keeps the received bytes and their arrival time while the
   run lasts, and parses them afterwards.
4. For every (receiver, sender) pair the bench counts lost, duplicated and
   out-of-order lines, and it measures each delivery's latency. Expected
   deliveries are S * M * (N - 1): a sender does not get its own lines back.

It reports deliveries/s, latency p50/p90/p99/max, lost/duplicated/reordered,
the registration time, the server's CPU time per delivery (utime + stime from
``/proc/PID/stat`` over the send phase) and its peak RSS (``VmHWM``). The idle
mode registers N clients, holds them open and reports the server's RSS per
connection, ``(VmRSS with N clients - VmRSS before) / N``.

How to read the figures:

* latency is from the moment a line was handed to the kernel to the moment
  the chunk holding its end was read; unpaced runs queue every line at once,
  so their latency is mostly queueing, and paced runs show a "pacing lag"
  (how late the generator sent, which does not count in the latency);
* deliveries/s is the lines delivered divided by the time from the start of
  the send phase to the last delivery;
* "load generator busy" is each worker's CPU time divided by the wall time
  of the phase: near 100% means the bench, not the server, set the pace;
* lost counts lines that had not arrived when the run ended: two seconds
  after every sender was done with nothing more arriving, or at the timeout;
* a run notes the load average before it: on a busy machine every figure,
  latency most of all, moves a lot.

``--compare-ncat`` runs the same scenario against ``ncat --chat`` (Debian
package ``ncat``; if it is missing the bench says so and skips it) in the
same invocation and prints the chat/ncat ratio of each median. ncat has no
nicknames: its clients only connect (ncat's "<announce>" line to the newcomer
counts as registration), send plain ``t SENDER SEQ TIME_NS`` lines and
receive them as ``<userK> t ...``; ncat prefixes only the first line of each
chunk it relays, so bare ``t ...`` lines count too. Lines ncat loses or
splices together are counted as lost or malformed. ncat listens with a
backlog of 10 and quits when a queued connection fails, so its clients
connect 8 at a time; it uses select(), so the idle comparison stops at 1000.

``--tls`` runs the same over TLS: the bench starts the server with
``--tls-cert``/``--tls-key`` from ``tests/tls`` (or, with ``--port``, expects
a running TLS server), and its clients do the TLS handshake (counted in the
registration time) and then encrypt and decrypt every line, checking the
server's certificate against ``--cafile`` (default ``tests/tls/cert.pem``).
A TLS client sends its nickname when the server's prompt comes, that is
once the server is through its side of the handshake (a plain client sends
it at once).
The clients run TLS over memory buffers (``transport.TLSLayer``, the
chat's own) next to their non-blocking sockets, so the event loop is the
same as without TLS. With
``--compare-ncat`` ncat is started with ``--ssl --ssl-cert --ssl-key`` too.

``--churn K`` (``churn.py``): N users (``-n``, default 10,000) register;
K of them drop at the same instant, by RST (``--drop rst``, the default:
SO_LINGER with a zero timeout, as when an access point reboots) or by an
ordinary close (``--drop close``); then K new users join at once. A probe
pair (``probe.py``, a process of its own) exchanges a private line every
``--probe-interval`` ms throughout. The run prints the worst and p99
delay of the probe's lines sent during each event, the time until the
server's thread count (``Threads`` in ``/proc/PID/status``) has fallen by
K after the drop and is back after the join, the join storm's
registration time, and probe lines lost. ``--compare-ngircd`` runs the
same against ngIRCd (Debian package ``ngircd``; skipped if missing),
started by the bench in the foreground with a loopback-only configuration
of its own in a temporary directory, on a free port, and stopped by its
PID; its probe users log in as an IRC operator and take mode +F, or
ngIRCd would throttle them to a few lines a second.

The chat server's command line is assembled in one place,
``targets.start_chat_server``; ``--server-arg`` adds to it.

Everything goes to 127.0.0.1 or ::1 only. Each run is bounded by
``--timeout`` seconds (per run); a run that hits it reports what it got and
is marked incomplete. The bench raises its open-file limit to the hard limit
(the server it starts inherits it), and only ever stops the processes it
started, by PID: terminate, wait, kill; also on Ctrl-C or SIGTERM.

Usage::

    python3 bench/load.py                          # fanout: N=100 S=10 M=500
    python3 bench/load.py --scenario latency --compare-ncat
    python3 bench/load.py --scenario fanout --tls --repeat 3
    python3 bench/load.py --scenario idle          # 10,000 idle clients
    python3 bench/load.py --idle 1000              # idle, 1,000 clients
    python3 bench/load.py -n 20 -s 4 -m 1000 --rate 2000 --repeat 3
    python3 bench/load.py --port 4321 --server-pid 12345   # running server
    python3 bench/load.py --server-arg=--announce-limit=50 --json out.json
    python3 bench/load.py --churn 5000 -n 10000       # 5,000 of 10,000 drop
    python3 bench/load.py --churn 500 -n 1000 --drop close --compare-ngircd

Scenarios (explicit -n/-s/-m/--rate override them):

* ``fanout``:  N=100 S=10 M=500, unpaced (throughput, server CPU per line);
* ``latency``: N=50 S=5 M=500, paced at 500 lines/s in total;
* ``idle``:    N=10000 clients registered and held open (RSS per connection);
* ``churn``:   N=10000, K=5000 drop at once, then K join (same as ``--churn``).

Results are printed and written as JSON (``--json``, default
``bench/results/latest.json``). With ``--repeat K`` the summary shows the
median and the min-max of each figure. The exit status is 0 when every run
against the chat server completed with nothing lost, duplicated or reordered
(idle: every client registered and stayed connected), else 1.

The code, one job a module: ``load.py`` (this file: command line,
scenarios, main), ``runs.py`` (one run, driven from the main process),
``workers.py`` (the worker processes and their phases), ``clients.py``
(a worker's connections and event loop), ``targets.py`` (starting and
stopping the chat server and ncat, ``/proc`` figures), ``report.py``
(parsing, merging, statistics, printing, JSON) and ``common.py`` (what
they share).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import sys
import time
from typing import Any, Dict, List, Optional

from common import BENCH_DIR, CHAT, NCAT, REPO_DIR, Scenario
from report import (IDLE_FIGURES, MESSAGE_FIGURES, compare, print_comparison,
                    print_run, print_summary, summarise, write_json)
from churn import CHURN_FIGURES, IRC, print_churn, run_churn
from runs import run_clean, run_once
from targets import NCAT_MAX_CLIENTS, NGIRCD_BINARY, TLS_CERT, is_loopback

DEFAULT_SERVER = os.path.join(REPO_DIR, "server.py")
DEFAULT_JSON = os.path.join(BENCH_DIR, "results", "latest.json")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_TIMEOUT_S = 120.0
#: Seconds the idle mode holds its clients before it reads the server's RSS;
#: longer than the server's one-second batching of join notices.
DEFAULT_HOLD_S = 2.0
MIN_DEFAULT_WORKERS = 2
MAX_DEFAULT_WORKERS = 4

SCENARIOS = {
    "fanout": Scenario(clients=100, senders=10, messages=500, rate=0.0),
    "latency": Scenario(clients=50, senders=5, messages=500, rate=500.0),
    "idle": Scenario(clients=10000, senders=0, messages=0, rate=0.0,
                     idle=True),
    "churn": Scenario(clients=10000, senders=0, messages=0, rate=0.0,
                      idle=True),
}
#: The churn scenario: users dropping at once, out of N (default N/2).
DEFAULT_CHURN_FRACTION = 0.5
DEFAULT_PROBE_INTERVAL_MS = 5.0



def raise_fd_limit() -> int:
    """Raise this process's open-file soft limit to the hard limit (children
    inherit it, the server too); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    except (ValueError, OSError):
        return soft


def default_workers() -> int:
    """One worker per CPU but one (left for the server), at least two."""
    return max(MIN_DEFAULT_WORKERS,
               min(MAX_DEFAULT_WORKERS, (os.cpu_count() or 2) - 1))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Load benchmark for the chat server (see the module"
                    " docstring for details).",
        epilog="examples:\n"
               "  python3 bench/load.py\n"
               "  python3 bench/load.py --scenario latency --compare-ncat\n"
               "  python3 bench/load.py --idle 1000\n"
               "  python3 bench/load.py -n 20 -s 4 -m 1000 --rate 2000"
               " --repeat 3\n"
               "  python3 bench/load.py --port 4321 --server-pid 12345\n"
               "scenarios:\n"
               "  fanout   N=100 S=10 M=500, unpaced\n"
               "  latency  N=50 S=5 M=500, 500 lines/s in total\n"
               "  idle     N=10000, held open\n"
               "exit status: 0 when every chat-server run completed with"
               " nothing lost,\n"
               "duplicated or reordered, else 1.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--scenario", choices=sorted(SCENARIOS), default="fanout",
        help="preset (default %(default)s)")
    add("-n", "--clients", type=int, help="clients to connect (N)")
    add("-s", "--senders", type=int, help="clients that send (S <= N)")
    add("-m", "--messages", type=int, help="lines each sender sends (M)")
    add("--rate", type=float, metavar="LINES_PER_S",
        help="total send rate, paced; 0 = as fast as the sockets take")
    add("--idle", type=int, metavar="N",
        help="idle mode with N clients: registration time and RSS per"
             " connection (same as --scenario idle -n N)")
    add("--hold", type=float, default=DEFAULT_HOLD_S, metavar="SECONDS",
        help="idle mode: how long clients are held before the server's RSS"
             " is read (default %(default)s)")
    add("--workers", type=int, default=default_workers(),
        help="load generator processes (default %(default)s)")
    add("--repeat", type=int, default=1, metavar="K",
        help="runs per target; the summary shows medians (default 1)")
    add("--compare-ncat", action="store_true",
        help="also run the scenario against 'ncat --chat' and print ratios")
    add("--churn", type=int, metavar="K",
        help="churn scenario: of N registered users (default 10000), K"
             " drop at once, then K new ones join at once, while a probe"
             " pair exchanges private lines (default K = N/2)")
    add("--drop", choices=("rst", "close"), default="rst",
        help="churn: how the K users drop, by TCP reset or by an ordinary"
             " close (default %(default)s)")
    add("--probe-interval", type=float, default=DEFAULT_PROBE_INTERVAL_MS,
        metavar="MS",
        help="churn: one private line of the probe pair every MS"
             " milliseconds (default %(default)s)")
    add("--compare-ngircd", action="store_true",
        help="churn: also run it against ngIRCd (Debian package ngircd),"
             " started with a loopback-only configuration of its own")
    add("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
        help="limit for each run; then it reports what it got and is marked"
             " incomplete (default %(default)s)")
    add("--json", default=DEFAULT_JSON, metavar="FILE",
        help="where to write the results (default bench/results/latest.json)")
    add("--host", default=DEFAULT_HOST,
        help="loopback address of the server (default %(default)s)")
    add("--port", type=int, default=0,
        help="port of a running server to test; 0 starts server.py"
             " (default)")
    add("--server-pid", type=int,
        help="PID of the running server given by --port, for its CPU and"
             " memory figures")
    add("--server", default=DEFAULT_SERVER, metavar="PATH",
        help="server script to start (default: server.py of this repo)")
    add("--server-arg", action="append", default=[], metavar="ARG",
        help="extra argument for the started server; repeat for more"
             " (e.g. --server-arg=--announce-limit=50)")
    add("--tls", action="store_true",
        help="clients speak TLS; the started server (and ncat) serve the"
             " test certificate, tests/tls/cert.pem")
    add("--cafile", metavar="FILE",
        help="with --tls: certificates the clients trust (default"
             " tests/tls/cert.pem)")
    args = parser.parse_args(argv)
    args.oper_password = os.urandom(8).hex()  # ngIRCd's, for the probe
    if args.cafile and not args.tls:
        parser.error("--cafile goes with --tls")
    args.cafile = args.cafile or (TLS_CERT if args.tls else "")
    resolve_scenario(parser, args)
    if not is_loopback(args.host):
        parser.error("--host must be a loopback address (127.0.0.1, ::1)")
    if args.workers < 1 or args.repeat < 1 or args.timeout <= 0:
        parser.error("--workers and --repeat must be >= 1, --timeout > 0")
    return args


def resolve_scenario(parser: argparse.ArgumentParser,
                     args: argparse.Namespace) -> None:
    """Fill ``args.plan`` from the preset and the explicit overrides."""
    if args.idle is not None:
        args.scenario = "idle"
        args.clients = args.idle
    if args.churn is not None or args.scenario == "churn":
        args.scenario = "churn"
        n = args.clients or SCENARIOS["churn"].clients
        if args.churn is None:
            args.churn = int(n * DEFAULT_CHURN_FRACTION)
        if not 1 <= args.churn <= n or args.probe_interval <= 0:
            parser.error("--churn K needs 1 <= K <= N, --probe-interval"
                         " > 0")
        if args.tls or args.compare_ncat:
            parser.error("--churn goes without --tls and --compare-ncat")
    elif args.compare_ngircd:
        parser.error("--compare-ngircd goes with --churn")
    preset = SCENARIOS[args.scenario]

    def pick(value: Optional[float], default: float) -> Any:
        return default if value is None else value

    scenario = Scenario(clients=pick(args.clients, preset.clients),
                        senders=pick(args.senders, preset.senders),
                        messages=pick(args.messages, preset.messages),
                        rate=pick(args.rate, preset.rate), idle=preset.idle)
    if scenario.clients < 1 or scenario.rate < 0:
        parser.error("N must be >= 1 and --rate >= 0")
    if not scenario.idle and not (
            scenario.clients >= 2 and 1 <= scenario.senders <= scenario.clients
            and scenario.messages >= 1):
        parser.error("need N >= 2, 1 <= S <= N and M >= 1")
    args.plan = scenario


def interrupt(signum: int, frame: Any) -> None:
    """SIGTERM ends the bench like Ctrl-C, so that the finally blocks stop
    the server and the workers it started."""
    raise KeyboardInterrupt


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    scenario: Scenario = args.plan
    fd_limit = raise_fd_limit()
    needed = scenario.clients + (args.churn or 0) + 100
    if fd_limit < needed:
        print(f"warning: open-file limit {fd_limit} is low for"
              f" {needed - 100} clients", file=sys.stderr)
    if args.scenario == "churn":
        return churn_main(args, scenario)
    kinds = [CHAT]
    if args.compare_ncat:
        if shutil.which("ncat") is None:
            print("ncat is not installed (Debian: apt-get install ncat);"
                  " skipping the comparison")
        elif scenario.idle and scenario.clients > NCAT_MAX_CLIENTS:
            print(f"ncat --chat cannot hold {scenario.clients} clients"
                  f" (select() limit, about {NCAT_MAX_CLIENTS});"
                  " skipping the comparison")
        else:
            kinds.append(NCAT)
    tag = os.urandom(2).hex()
    runs: Dict[str, List[Dict[str, Any]]] = {kind: [] for kind in kinds}
    for number in range(1, args.repeat + 1):
        for kind in kinds:
            run = run_once(args, kind, scenario, args.scenario, tag)
            runs[kind].append(run)
            print_run(run, number, args.repeat)
    figures = IDLE_FIGURES if scenario.idle else MESSAGE_FIGURES
    summaries = {kind: summarise(runs[kind], figures) for kind in kinds}
    if args.repeat > 1:
        for kind in kinds:
            print_summary(kind, summaries[kind], args.repeat, figures)
    ratios: Dict[str, float] = {}
    if NCAT in kinds:
        ratios = compare(summaries[CHAT], summaries[NCAT], figures)
        print_comparison(summaries[CHAT], summaries[NCAT], ratios, figures)
    ok = all(run_clean(run) for run in runs[CHAT])
    write_json(args.json, {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv[1:], "scenario": args.scenario,
        "settings": {"n": scenario.clients, "s": scenario.senders,
                     "m": scenario.messages, "rate": scenario.rate or None,
                     "idle": scenario.idle, "workers": args.workers,
                     "repeat": args.repeat, "timeout_s": args.timeout,
                     "tls": args.tls,
                     "cpus": os.cpu_count()},
        "runs": [run for kind in kinds for run in runs[kind]],
        "summary": summaries, "ratios_chat_over_ncat": ratios, "ok": ok})
    print(f"\nresults written to {args.json}")
    return 0 if ok else 1


def churn_main(args: argparse.Namespace, scenario: Scenario) -> int:
    """``--churn``: the chat server, and ngIRCd with --compare-ngircd."""
    kinds = [CHAT]
    if args.compare_ngircd:
        if shutil.which(NGIRCD_BINARY) is None:
            print("ngircd is not installed (Debian: apt-get install"
                  " ngircd); skipping the comparison")
        else:
            kinds.append(IRC)
    tag = os.urandom(2).hex()
    runs: Dict[str, List[Dict[str, Any]]] = {kind: [] for kind in kinds}
    for number in range(1, args.repeat + 1):
        for kind in kinds:
            run = run_churn(args, kind, scenario, tag + str(number))
            runs[kind].append(run)
            print_churn(run, number, args.repeat)
    summaries = {kind: summarise(runs[kind], CHURN_FIGURES)
                 for kind in kinds}
    if args.repeat > 1:
        for kind in kinds:
            print_summary(kind, summaries[kind], args.repeat, CHURN_FIGURES)
    ok = all(run["complete"] for run in runs[CHAT])
    write_json(args.json, {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv[1:], "scenario": "churn",
        "settings": {"n": scenario.clients, "k": args.churn,
                     "drop": args.drop,
                     "probe_interval_ms": args.probe_interval,
                     "workers": args.workers, "repeat": args.repeat,
                     "timeout_s": args.timeout, "cpus": os.cpu_count()},
        "runs": [run for kind in kinds for run in runs[kind]],
        "summary": summaries, "ok": ok})
    print(f"\nresults written to {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; the processes the bench started are stopped",
              file=sys.stderr)
        sys.exit(130)
