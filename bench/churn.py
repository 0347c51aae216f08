"""The churn scenario: N users registered; K of them drop at the same
instant (by RST or by an ordinary close); then K new users join at once.
Meanwhile a probe pair (``probe.py``) exchanges a private line every
``--probe-interval`` ms, and the run reports how late those lines were
during each event, how long the server took to get back to its steady
thread count (``Threads`` in ``/proc/PID/status``), how long the join
storm took to register, and the probe lines that never came.

Timeline of a run, from the main process:

1. the workers register N users (indexes 0..N-1); the probe registers;
2. settle for ``--hold`` seconds, then read the server's thread count;
3. drop: each worker drops its share of K users at once; the main
   process polls the thread count every few ms until it has fallen by K
   (the handler threads of the dropped users have ended);
4. after ``CHURN_GAP_S``, join: the workers connect and register K new
   users (indexes N..N+K-1, new nicknames), and the main process polls
   until the thread count is back to where it was before the drop;
5. after ``CHURN_GAP_S``, the probe stops and reports.

A probe line belongs to the event during which it was sent: the drop
from its start to the start of the join, the join from its start to
the end of the run.
"""

from __future__ import annotations

import argparse
import array
import multiprocessing
import os
import time
from typing import Any, Dict, Optional, Tuple

from common import CHAT, NS_PER_S, PROCESS_STOP_TIMEOUT_S, RESULT_GRACE_S
from common import IRC as IRC_PROTOCOL
from common import now_ns
from probe import probe_entry
from report import latency_summary
from runs import make_plans, record_registration
from targets import NGIRCD as IRC
from targets import NGIRCD_OPER
from targets import Target, open_target, proc_memory_kib, proc_threads
from workers import WorkerSet

#: Seconds between the end of one event and the start of the next.
CHURN_GAP_S = 1.0
#: How often the main process reads the server's thread count.
THREAD_POLL_S = 0.005
#: Longest wait for the thread count to settle after an event.
SETTLE_TIMEOUT_S = 30.0
#: Probe lines sent before the drop, for the baseline delay.
BASELINE_S = 1.0


def run_churn(args: argparse.Namespace, kind: str, scenario: Any,
              tag: str) -> Dict[str, Any]:
    """One churn run against the chat server (``chat``) or ngIRCd."""
    n, k = scenario.clients, args.churn
    run: Dict[str, Any] = {
        "target": kind, "scenario": "churn", "n": n, "k": k,
        "drop_mode": args.drop, "idle": False, "churn": True,
        "probe_interval_ms": args.probe_interval, "complete": False,
        "errors": [], "tls": False,
        "load_average_1m": os.getloadavg()[0]}
    deadline = now_ns() + int(args.timeout * NS_PER_S)
    try:
        with open_target(args, kind, n + k + 2) as target:
            run["server"] = {"pid": target.pid}
            protocol = IRC_PROTOCOL if kind == IRC else CHAT
            plans = make_plans(protocol, target, _Shape(n + k),
                               args.workers, deadline, tag)
            workers = WorkerSet(plans)
            probe: Optional[_ProbeProcess] = None
            finished = False
            try:
                probe = _ProbeProcess(target, protocol, tag,
                                      args.probe_interval, deadline,
                                      (NGIRCD_OPER, args.oper_password)
                                      if kind == IRC else ("", ""))
                drive_churn(run, kind, target, workers, probe, n, k,
                            args.drop == "rst", args.hold, deadline)
                finished = True
            finally:
                workers.stop(PROCESS_STOP_TIMEOUT_S if finished else 0.0)
                if probe is not None:
                    probe.close()
                run["errors"] += workers.errors
            if target.process is not None and \
                    target.process.poll() is not None:
                run["errors"].append(f"{kind} exited during the run")
                run["complete"] = False
            problems = target.log_problems()
            if problems:
                run["errors"].append(f"server log has {problems} error"
                                     " lines")
                run["server_log_tail"] = target.log_tail()
    except (RuntimeError, OSError) as error:
        run["errors"].append(str(error))
    return run


class _Shape:
    """What make_plans needs of a scenario: N + K clients, none sending."""

    def __init__(self, clients: int) -> None:
        self.clients = clients
        self.senders = 0
        self.messages = 0
        self.rate = 0.0


class _ProbeProcess:
    def __init__(self, target: Target, protocol: str, tag: str,
                 interval_ms: float, deadline_ns: int,
                 oper: Tuple[str, str]) -> None:
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context(
            "fork" if "fork" in methods else None)
        self.conn, theirs = context.Pipe()
        nicks = (f"p{tag}a", f"p{tag}b")
        self.process = context.Process(
            target=probe_entry, name="bench-probe", daemon=True,
            args=(theirs, target.family, target.address, nicks,
                  int(interval_ms * 1e6), protocol, deadline_ns, oper))
        self.process.start()
        theirs.close()

    def expect(self, tag: str, timeout_s: float) -> Any:
        if not self.conn.poll(timeout_s):
            raise RuntimeError(f"the probe did not send {tag} in time")
        got, payload = self.conn.recv()
        if got != tag:
            raise RuntimeError(str(payload))
        return payload

    def close(self) -> None:
        self.process.join(PROCESS_STOP_TIMEOUT_S)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(PROCESS_STOP_TIMEOUT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def wait_threads(pid: Optional[int], settled: Any,
                 timeout_s: float) -> Tuple[Optional[float], Optional[int]]:
    """Poll the server's thread count until ``settled(count)``; return the
    seconds that took (None on timeout) and the last count."""
    started = time.monotonic()
    count = proc_threads(pid)
    while count is not None and time.monotonic() - started < timeout_s:
        if settled(count):
            return round(time.monotonic() - started, 3), count
        time.sleep(THREAD_POLL_S)
        count = proc_threads(pid)
    return None, count


def drive_churn(run: Dict[str, Any], kind: str, target: Target,
                workers: WorkerSet,
                probe: _ProbeProcess, n: int, k: int, reset: bool,
                hold_s: float, deadline: int) -> None:
    pid = target.pid
    remaining = (deadline - now_ns()) / NS_PER_S
    workers.broadcast(("register", n))
    registered, _ = workers.gather("registered", deadline)
    ready = record_registration(run, registered, pid, None)
    if ready < n:
        # Go on with those who are in (a comparison server may refuse
        # some); the run is not complete.
        run["errors"].append(f"only {ready} of {n} clients registered")
        if not ready:
            return
    probe.expect("probe_ready", remaining)
    time.sleep(max(hold_s, BASELINE_S))
    baseline = proc_threads(pid)
    run["threads_before"] = baseline
    count = len(workers.conns)
    shares = [k // count + (number < k % count) for number in range(count)]
    drop_ns = now_ns()
    for number, conn in enumerate(workers.conns):
        conn.send(("drop", shares[number], n, reset))
    dropped, _ = workers.gather("dropped", deadline)
    gone = sum(d["count"] for d in dropped if d)
    run["dropped"] = gone
    run["drop_spread_ms"] = round(
        (max(d["end_ns"] for d in dropped if d) - drop_ns) / 1e6, 3)
    threaded = kind == CHAT  # ngIRCd has one thread
    if threaded and baseline is not None:
        run["drop_threads_s"], run["threads_after_drop"] = wait_threads(
            pid, lambda c: c <= baseline - gone, SETTLE_TIMEOUT_S)
    time.sleep(CHURN_GAP_S)
    join_ns = now_ns()
    workers.broadcast(("register", 0, "joined"))
    joined, _ = workers.gather("joined", deadline)
    replies = [r for r in joined if r is not None]
    run["joined"] = sum(r["ready"] for r in replies)
    firsts = [r["first_ns"] for r in replies if r["ready"]]
    lasts = [r["last_ns"] for r in replies if r["ready"]]
    run["join_registration_s"] = (round((max(lasts) - min(firsts))
                                        / NS_PER_S, 3)
                                  if firsts and lasts else None)
    if threaded and baseline is not None:
        run["join_threads_s"], run["threads_after_join"] = wait_threads(
            pid, lambda c: c >= baseline, SETTLE_TIMEOUT_S)
        # From the start of the join: registering is part of it.
        if run["join_threads_s"] is not None:
            run["join_threads_s"] = round(
                (now_ns() - join_ns) / NS_PER_S, 3)
    time.sleep(CHURN_GAP_S)
    end_ns = now_ns()
    probe.conn.send(("stop",))
    result = probe.expect("probe_result", max(
        1.0, (deadline - now_ns()) / NS_PER_S + RESULT_GRACE_S))
    judge_probe(run, result, drop_ns, join_ns, end_ns)
    workers.broadcast(("stop",))
    workers.broadcast(("finish",))
    results, all_came = workers.gather(
        "result", deadline + int(RESULT_GRACE_S * NS_PER_S))
    run["still_connected"] = sum(r["connected"] for r in results if r)
    run["server"]["peak_rss_kib"] = proc_memory_kib(pid).get("VmHWM")
    for reply in replies:
        for reason, times in reply["errors"].items():
            note = f"{times} x {reason}"
            if note not in run["errors"]:
                run["errors"].append(note)
    run["complete"] = (all_came and not workers.errors
                       and ready == n and run["joined"] == gone == k
                       and run.get("lost") == 0
                       and run["still_connected"] == n)


def judge_probe(run: Dict[str, Any], result: Dict[str, Any], drop_ns: int,
                join_ns: int, end_ns: int) -> None:
    """The probe's delays before, during the drop, during the join; and
    the lines that never came."""
    sent, arrived = array.array("q"), array.array("q")
    sent.frombytes(result["sent_ns"])
    arrived.frombytes(result["arrived_ns"])
    windows = {"before": (0, drop_ns), "drop": (drop_ns, join_ns),
               "join": (join_ns, end_ns)}
    for name, (start, end) in windows.items():
        delays = [got - at for at, got in zip(sent, arrived)
                  if start <= at < end and got]
        run[f"probe_{name}_ms"] = latency_summary(delays)
    run["probe_sent"] = len(sent)
    run["lost"] = sum(1 for got in arrived if not got)


CHURN_FIGURES = (
    ("registration_s", "registration of N s", "{:.3f}"),
    ("probe_before_ms.p99", "probe before: p99 ms", "{:.1f}"),
    ("probe_drop_ms.max", "drop: worst delay ms", "{:.1f}"),
    ("probe_drop_ms.p99", "drop: p99 delay ms", "{:.1f}"),
    ("drop_threads_s", "drop: threads settled s", "{:.3f}"),
    ("join_registration_s", "join: K registered s", "{:.3f}"),
    ("join_threads_s", "join: threads back s", "{:.3f}"),
    ("probe_join_ms.max", "join: worst delay ms", "{:.1f}"),
    ("probe_join_ms.p99", "join: p99 delay ms", "{:.1f}"),
    ("lost", "probe lines lost", "{:,.0f}"),
)


def print_churn(run: Dict[str, Any], number: int, total: int) -> None:
    status = "" if run["complete"] else "  [INCOMPLETE]"
    print(f"\n{run['target']} churn: N={run['n']} K={run['k']}"
          f" drop by {run['drop_mode']}, probe every"
          f" {run['probe_interval_ms']:g} ms (run {number}/{total}){status}")
    cpus = os.cpu_count() or 1
    if run["load_average_1m"] > cpus / 2:
        print(f"  note: load average {run['load_average_1m']:.1f} on {cpus}"
              " CPUs before the run; other work may skew the figures")

    def ms(key: str, field: str) -> str:
        value = (run.get(key) or {}).get(field)
        return "-" if value is None else f"{value:.1f}"

    def sec(key: str) -> str:
        value = run.get(key)
        return "-" if value is None else f"{value:.3f}"

    print(f"  registration     {run.get('registered', 0)} users in"
          f" {sec('registration_s')} s; server threads"
          f" {run.get('threads_before', '-')}")
    print(f"  probe before     p99 {ms('probe_before_ms', 'p99')} ms,"
          f" worst {ms('probe_before_ms', 'max')} ms")
    print(f"  drop             {run.get('dropped', 0)} users in"
          f" {run.get('drop_spread_ms', '-')} ms; probe worst"
          f" {ms('probe_drop_ms', 'max')} ms, p99"
          f" {ms('probe_drop_ms', 'p99')} ms; threads settled in"
          f" {sec('drop_threads_s')} s")
    print(f"  join             {run.get('joined', 0)} users registered in"
          f" {sec('join_registration_s')} s; threads back in"
          f" {sec('join_threads_s')} s; probe worst"
          f" {ms('probe_join_ms', 'max')} ms, p99"
          f" {ms('probe_join_ms', 'p99')} ms")
    print(f"  probe            {run.get('probe_sent', 0)} lines, lost"
          f" {run.get('lost', '-')}; still connected"
          f" {run.get('still_connected', 0)} of {run['n']}")
    for error in run["errors"][:20]:
        print(f"  ! {error}")
    for line in run.get("server_log_tail", []):
        print(f"  | {line}")

