"""One run of a scenario, as the main process drives it: open the target
(start the chat server or ncat, or use the running one), start the worker
processes, take them through the phases (register; then hold the clients
idle, or barrier, send and receive), gather what they report into the
run's record, and judge whether the run was clean.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any, Dict, List, Optional

from common import (NS_PER_S, PROCESS_STOP_TIMEOUT_S, RESULT_GRACE_S, Plan,
                    Scenario, now_ns)
from report import latency_summary, merge_results
from targets import Target, open_target, proc_cpu_seconds, proc_memory_kib
from workers import WorkerSet

#: The senders start this long after the go signal, all at the same time.
START_DELAY_NS = 50_000_000


def make_plans(kind: str, target: Target, scenario: Scenario, workers: int,
               deadline_ns: int, tag: str, tls: bool = False,
               cafile: str = "") -> List[Plan]:
    """Spread the clients over the workers round-robin (senders too)."""
    count = max(1, min(workers, scenario.clients))
    return [Plan(worker=number, workers=count, protocol=kind,
                 family=target.family,
                 address=target.address,
                 clients=tuple(range(number, scenario.clients, count)),
                 total_clients=scenario.clients, senders=scenario.senders,
                 messages=scenario.messages, rate=scenario.rate,
                 nick_tag=tag, deadline_ns=deadline_ns, tls=tls,
                 cafile=cafile)
            for number in range(count)]


def new_run(kind: str, scenario: Scenario, name: str) -> Dict[str, Any]:
    return {"target": kind, "scenario": name, "n": scenario.clients,
            "s": scenario.senders, "m": scenario.messages,
            "rate": scenario.rate or None, "idle": scenario.idle,
            "complete": False, "errors": []}


def run_once(args: argparse.Namespace, kind: str, scenario: Scenario,
             name: str, tag: str) -> Dict[str, Any]:
    """One run of ``scenario`` against the chat server or ncat."""
    run = new_run(kind, scenario, name)
    run["tls"] = args.tls
    run["load_average_1m"] = os.getloadavg()[0]
    deadline = now_ns() + int(args.timeout * NS_PER_S)
    try:
        with open_target(args, kind, scenario.clients) as target:
            run["server"] = {"pid": target.pid}
            workers = WorkerSet(make_plans(kind, target, scenario,
                                           args.workers, deadline, tag,
                                           args.tls, args.cafile))
            finished = False
            try:
                drive(run, target, workers, scenario, deadline, args.hold)
                finished = True
            finally:
                # Interrupted: no point waiting for the workers to finish.
                workers.stop(PROCESS_STOP_TIMEOUT_S if finished else 0.0)
                run["errors"] += workers.errors
            check_target(run, target)
        if target.stopped:
            run["server"].update(target.stopped)
            if target.stopped["killed"]:
                run["errors"].append(
                    f"{kind} did not stop within {PROCESS_STOP_TIMEOUT_S:g} s"
                    " of SIGTERM and was killed")
    except (RuntimeError, OSError) as error:
        run["errors"].append(str(error))
    return run


def drive(run: Dict[str, Any], target: Target, workers: WorkerSet,
          scenario: Scenario, deadline: int, hold_s: float) -> None:
    """The phases of a run, as seen from the main process."""
    pid = target.pid
    rss_before = proc_memory_kib(pid).get("VmRSS")
    cpu_before = proc_cpu_seconds(pid)
    workers.broadcast(("register",))
    registered, _ = workers.gather("registered", deadline)
    ready = record_registration(run, registered, pid, cpu_before)
    complete = ready == scenario.clients
    if not complete:
        run["errors"].append(f"only {ready} of {scenario.clients} clients"
                             " registered")
    elif scenario.idle:
        time.sleep(max(0.0, min(hold_s, (deadline - now_ns()) / NS_PER_S)))
        memory = proc_memory_kib(pid)
        if rss_before is not None and "VmRSS" in memory:
            run["server"].update({
                "rss_before_kib": rss_before,
                "rss_after_kib": memory["VmRSS"],
                "rss_per_connection_kib": round(
                    (memory["VmRSS"] - rss_before) / scenario.clients, 3)})
        run["hold_s"] = hold_s
    else:
        complete = send_phase(run, workers, pid, deadline)
    workers.broadcast(("stop",))
    workers.broadcast(("finish",))
    finishing = time.monotonic()
    results, all_came = workers.gather(
        "result", deadline + int(RESULT_GRACE_S * NS_PER_S))
    run["finish_s"] = round(time.monotonic() - finishing, 3)
    memory = proc_memory_kib(pid)
    run["server"]["peak_rss_kib"] = memory.get("VmHWM")
    merge_results(run, scenario, [r for r in results if r is not None])
    run["complete"] = complete and all_came and not workers.errors


def record_registration(run: Dict[str, Any], registered: List[Any],
                        pid: Optional[int],
                        cpu_before: Optional[float]) -> int:
    replies = [r for r in registered if r is not None]
    ready = sum(r["ready"] for r in replies)
    firsts = [r["first_ns"] for r in replies if r["first_ns"]]
    lasts = [r["last_ns"] for r in replies if r["last_ns"]]
    cpu_after = proc_cpu_seconds(pid)
    run["registered"] = ready
    run["registration_s"] = (round((max(lasts) - min(firsts)) / NS_PER_S, 4)
                             if firsts and lasts else None)
    run["registration_each_ms"] = latency_summary(
        [each for r in replies for each in r["each_ns"]])
    if cpu_before is not None and cpu_after is not None and ready:
        run["server"]["registration_cpu_us_per_client"] = round(
            (cpu_after - cpu_before) / ready * 1e6, 1)
    run["generator_registration"] = {
        "busy": [round(r["cpu_s"] / max(r["wall_s"], 1e-9), 3)
                 for r in replies]}
    for reply in replies:
        for reason, count in reply["errors"].items():
            run["errors"].append(f"{count} x {reason}")
    return ready


def send_phase(run: Dict[str, Any], workers: WorkerSet, pid: Optional[int],
               deadline: int) -> bool:
    """Barrier, then the senders go; True if everything completed."""
    workers.broadcast(("barrier",))
    _, barrier_ok = workers.gather("barrier_ok", deadline)
    if not barrier_ok:
        run["errors"].append("the barrier line did not reach every client")
        return False
    cpu_before = proc_cpu_seconds(pid)
    start_ns = now_ns() + START_DELAY_NS
    run["start_ns"] = start_ns
    workers.broadcast(("go", start_ns))
    _, all_sent = workers.gather("sent", deadline)
    workers.broadcast(("senders_done",))
    completed, all_complete = workers.gather("complete", deadline)
    cpu_after = proc_cpu_seconds(pid)
    if cpu_before is not None and cpu_after is not None:
        run["server"]["send_phase_cpu_s"] = round(cpu_after - cpu_before, 3)
    replies = [c for c in completed if c is not None]
    run["generator"] = {
        "workers": len(completed),
        "busy": [round(c["cpu_s"] / c["wall_s"], 3) for c in replies],
        "cpu_s": [round(c["cpu_s"], 3) for c in replies]}
    if not all_sent:
        run["errors"].append("senders did not finish before the timeout")
    timed_out = not all_complete or any(c["timed_out"] for c in replies)
    if timed_out:
        run["errors"].append("the send phase hit the timeout")
    elif not all(c["complete"] for c in replies):
        run["errors"].append("some lines never arrived")
    return all_sent and not timed_out


def check_target(run: Dict[str, Any], target: Target) -> None:
    """Note a server that died or logged errors during the run."""
    if target.process is not None and target.process.poll() is not None:
        run["errors"].append(
            f"{target.label} exited during the run with status"
            f" {target.process.returncode}")
        run["complete"] = False
        run["server_log_tail"] = target.log_tail()
    problems = target.log_problems()
    if problems:
        run["errors"].append(f"server log has {problems} error lines")
        run["server_log_tail"] = target.log_tail()


def run_clean(run: Dict[str, Any]) -> bool:
    """A run that completed with nothing lost, duplicated or reordered."""
    if not run["complete"]:
        return False
    if run["idle"]:
        return run.get("still_connected") == run["n"]
    return not (run.get("lost") or run.get("duplicated")
                or run.get("reordered") or run.get("malformed"))

