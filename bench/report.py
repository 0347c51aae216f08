"""The bench's figures, from the bytes received to what is printed.

:func:`analyse` parses what one worker's receivers got (in the worker,
after the run): deliveries, latencies, lost, duplicated and out-of-order
lines. :func:`merge_results` adds up the workers' results into a run's
figures; :func:`summarise` and :func:`compare` take the median (and the
chat/ncat ratio) over repeated runs; the ``print_*`` functions show them
and :func:`write_json` saves them.
"""

from __future__ import annotations

import array
import json
import math
import os
import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

from clients import NEW, Client
from common import (NCAT, NS_PER_S, TOKEN_MARK, TOKEN_START, TOKEN_WORD,
                    Plan, Scenario)

import protocol

#: A worker busier than this (CPU time / wall time) may be the bottleneck.
BUSY_WARNING = 0.9
#: Error messages and per-receiver problems kept, as samples.
SAMPLE_SIZE = 20

#: (dotted key in a run, label, format) of the figures summarised and compared.
MESSAGE_FIGURES = (
    ("registration_s", "registration s", "{:.3f}"),
    ("deliveries_per_s", "deliveries/s", "{:,.0f}"),
    ("latency_ms.p50", "latency p50 ms", "{:.3f}"),
    ("latency_ms.p90", "latency p90 ms", "{:.3f}"),
    ("latency_ms.p99", "latency p99 ms", "{:.3f}"),
    ("latency_ms.max", "latency max ms", "{:.3f}"),
    ("lost", "lost", "{:,.0f}"),
    ("duplicated", "duplicated", "{:,.0f}"),
    ("reordered", "reordered", "{:,.0f}"),
    ("server.cpu_us_per_delivery", "server CPU us/delivery", "{:.3f}"),
    ("server.peak_rss_kib", "server peak RSS KiB", "{:,.0f}"),
)
IDLE_FIGURES = (
    ("registration_s", "registration s", "{:.3f}"),
    ("server.registration_cpu_us_per_client", "server CPU us/registration",
     "{:.1f}"),
    ("server.rss_per_connection_kib", "server RSS KiB/connection", "{:.2f}"),
    ("server.peak_rss_kib", "server peak RSS KiB", "{:,.0f}"),
)


def percentile(ordered: Sequence[float], pct: float) -> Optional[float]:
    """Nearest-rank percentile of an ascending sequence."""
    if not ordered:
        return None
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latency_summary(
        latencies_ns: Sequence[int]) -> Dict[str, Optional[float]]:
    """p50/p90/p99/max/mean of nanosecond latencies, in milliseconds."""
    ordered = sorted(latencies_ns)

    def ms(value: Optional[float]) -> Optional[float]:
        return None if value is None else round(value / 1e6, 4)

    mean = sum(ordered) / len(ordered) if ordered else None
    return {"p50": ms(percentile(ordered, 50)),
            "p90": ms(percentile(ordered, 90)),
            "p99": ms(percentile(ordered, 99)),
            "max": ms(ordered[-1] if ordered else None),
            "mean": ms(mean)}


def analyse(clients: Sequence[Client], plan: Plan) -> Dict[str, Any]:
    """Parse what the receivers got: deliveries, latencies, and per
    (receiver, sender) lost, duplicated and out-of-order lines.

    A token line is ``NICK: t SENDER SEQ TIME_NS`` (chat) or ``<userK> t
    SENDER SEQ TIME_NS`` (ncat), or for ncat also bare ``t SENDER SEQ
    TIME_NS``: ncat prefixes only the first line of each chunk it relays.
    The chunks kept in the send phase go through each client's framer, in
    order, so a line arrived with the chunk that holds its end.
    """
    senders, messages = plan.senders, plan.messages
    bare = plan.protocol == NCAT   # lines without the "<userK> " prefix
    lost_by_sender = [0] * senders
    dup_by_sender = [0] * senders
    reordered_by_sender = [0] * senders
    latencies = array.array("q")
    delivered = malformed = echoed = broken = 0
    last_delivery_ns = 0
    receivers_with_issues = 0
    issue_sample: Dict[str, Dict[str, int]] = {}
    for client in clients:
        if client.state == NEW or not messages:
            continue
        seen = [bytearray(messages) for _ in range(senders)]
        highest = [-1] * senders
        dup = reordered = 0
        framer = client.decoder.framer
        for arrived, data in client.chunks:
            try:
                lines = framer.feed(data)
            except protocol.FramingError:
                broken += 1
                break
            for line in lines:
                if line is protocol.OVERLONG:
                    malformed += 1
                    continue
                parts = line.split(b" ")  # type: ignore[union-attr]
                if len(parts) == 5 and parts[1] == TOKEN_WORD:
                    del parts[0]          # the sender's nickname
                elif not (bare and len(parts) == 4 and parts[0] == TOKEN_WORD):
                    if TOKEN_MARK in line or line.startswith(TOKEN_START):
                        malformed += 1   # spliced or cut by the relay
                    continue
                try:
                    sender, seq, sent_ns = (int(parts[1]), int(parts[2]),
                                            int(parts[3]))
                except ValueError:
                    malformed += 1
                    continue
                if not (0 <= sender < senders and 0 <= seq < messages):
                    malformed += 1
                    continue
                if sender == client.index:
                    echoed += 1
                    continue
                row = seen[sender]
                if row[seq]:
                    dup += 1
                    dup_by_sender[sender] += 1
                    continue
                row[seq] = 1
                delivered += 1
                latencies.append(arrived - sent_ns)
                if arrived > last_delivery_ns:
                    last_delivery_ns = arrived
                if seq < highest[sender]:
                    reordered += 1
                    reordered_by_sender[sender] += 1
                else:
                    highest[sender] = seq
        lost = 0
        for sender in range(senders):
            if sender != client.index:
                missing = messages - seen[sender].count(1)
                lost_by_sender[sender] += missing
                lost += missing
        if lost or dup or reordered:
            receivers_with_issues += 1
            if len(issue_sample) < SAMPLE_SIZE:
                issue_sample[str(client.index)] = {
                    "lost": lost, "duplicated": dup, "reordered": reordered}
    sent = {str(c.index): c.next_seq for c in clients if c.index < senders}
    return {"delivered": delivered, "malformed": malformed, "echoed": echoed,
            "lost_by_sender": lost_by_sender, "dup_by_sender": dup_by_sender,
            "reordered_by_sender": reordered_by_sender,
            "receivers_with_issues": receivers_with_issues,
            "issue_sample": issue_sample, "sent": sent,
            "unframed": broken,
            "last_delivery_ns": last_delivery_ns,
            "latencies": latencies.tobytes()}


def merge_results(run: Dict[str, Any], scenario: Scenario,
                  results: List[Dict[str, Any]]) -> None:
    """Add the workers' counts and latencies to ``run``."""
    run["still_connected"] = sum(r["connected"] for r in results)
    run["dropped_connections"] = sum(r["dropped"] for r in results)
    for result in results:
        for reason, count in result["errors"].items():
            note = f"{count} x {reason}"
            if note not in run["errors"]:
                run["errors"].append(note)
    if scenario.idle:
        return
    s, m = scenario.senders, scenario.messages
    expected = s * m * (scenario.clients - 1)
    delivered = sum(r["delivered"] for r in results)

    def by_sender(key: str) -> List[int]:
        return [sum(r[key][i] for r in results) for i in range(s)]

    lost_by, dup_by, reo_by = (by_sender("lost_by_sender"),
                               by_sender("dup_by_sender"),
                               by_sender("reordered_by_sender"))
    latencies = array.array("q")
    lags: List[int] = []
    sent = 0
    for result in results:
        latencies.frombytes(result["latencies"])
        lags += result["send_lags_ns"]
        sent += sum(result["sent"].values())
    last = max((r["last_delivery_ns"] for r in results), default=0)
    start_ns = run.pop("start_ns", None)    # meaningless outside this run
    span_s = (last - start_ns) / NS_PER_S if start_ns and last else 0
    run.update({
        "expected": expected, "sent": sent, "delivered": delivered,
        "lost": expected - delivered, "duplicated": sum(dup_by),
        "reordered": sum(reo_by),
        "malformed": sum(r["malformed"] for r in results),
        "echoed": sum(r["echoed"] for r in results),
        "delivery_span_s": round(span_s, 4) if span_s > 0 else None,
        "deliveries_per_s": round(delivered / span_s) if span_s > 0 else None,
        "latency_ms": latency_summary(latencies),
        "per_sender": [{"sender": i, "lost": lost_by[i],
                        "duplicated": dup_by[i], "reordered": reo_by[i]}
                       for i in range(s)],
        "receivers_with_issues": sum(r["receivers_with_issues"]
                                     for r in results),
        "receiver_issue_sample": {k: v for r in results
                                  for k, v in r["issue_sample"].items()},
    })
    if lags:
        lags.sort()
        run["send_lag_ms"] = {"p99": round(percentile(lags, 99) / 1e6, 3),
                              "max": round(lags[-1] / 1e6, 3)}
    cpu = run["server"].get("send_phase_cpu_s")
    if cpu is not None and delivered:
        run["server"]["cpu_us_per_delivery"] = round(cpu / delivered * 1e6, 3)


def lookup(run: Dict[str, Any], dotted: str) -> Optional[float]:
    value: Any = run
    for key in dotted.split("."):
        if not isinstance(value, dict) or value.get(key) is None:
            return None
        value = value[key]
    return value


def show(value: Optional[float], fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def mib(kib: Optional[int]) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f} MiB"


def busy_text(busy: Sequence[float]) -> str:
    return " ".join(f"{b:.0%}" for b in busy) or "-"


def print_run(run: Dict[str, Any], number: int, total: int) -> None:
    rate = f"{run['rate']:g} lines/s" if run.get("rate") else "unpaced"
    head = f"{run['target']} {run['scenario']}: N={run['n']}"
    if run.get("tls"):
        head = head.replace(":", " over TLS:", 1)
    if not run["idle"]:
        head += f" S={run['s']} M={run['m']} {rate}"
    status = "" if run["complete"] else "  [INCOMPLETE]"
    print(f"\n{head} (run {number}/{total}){status}")
    cpus = os.cpu_count() or 1
    if run["load_average_1m"] > cpus / 2:
        print(f"  note: load average {run['load_average_1m']:.1f} on {cpus}"
              " CPUs before the run; other work may skew the figures")
    print_registration(run)
    if run["idle"]:
        print_idle(run)
    elif "delivered" in run:
        print_deliveries(run)
    for error in run["errors"][:SAMPLE_SIZE]:
        print(f"  ! {error}")
    for line in run.get("server_log_tail", []):
        print(f"  | {line}")


def print_registration(run: Dict[str, Any]) -> None:
    each = run.get("registration_each_ms") or {}
    server = run.get("server", {})
    busy = run.get("generator_registration", {}).get("busy", [])
    print(f"  registration     {run.get('registered', 0)} clients in"
          f" {show(run.get('registration_s'), '{:.3f}')} s (each: p50"
          f" {show(each.get('p50'), '{:.1f}')} ms, max"
          f" {show(each.get('max'), '{:.1f}')} ms)")
    print(f"                   server CPU"
          f" {show(server.get('registration_cpu_us_per_client'), '{:.0f}')}"
          f" us/client; load generator busy {busy_text(busy)}")


def print_idle(run: Dict[str, Any]) -> None:
    server = run.get("server", {})
    print(f"  server RSS       {mib(server.get('rss_before_kib'))} before,"
          f" {mib(server.get('rss_after_kib'))} with {run['n']} clients:"
          f" {show(server.get('rss_per_connection_kib'), '{:.2f}')} KiB per"
          f" connection; peak {mib(server.get('peak_rss_kib'))}")
    print(f"  still connected  {run.get('still_connected', 0)} after"
          f" {run.get('hold_s', 0):g} s")


def print_deliveries(run: Dict[str, Any]) -> None:
    server = run.get("server", {})
    print(f"  deliveries       {run['delivered']:,} of {run['expected']:,}"
          f" ({run['sent']:,} lines sent): lost {run['lost']:,},"
          f" duplicated {run['duplicated']:,}, reordered"
          f" {run['reordered']:,}, malformed {run['malformed']:,}")
    print(f"  throughput       {show(run['deliveries_per_s'], '{:,.0f}')}"
          f" deliveries/s over {show(run['delivery_span_s'], '{:.3f}')} s")
    latency = run["latency_ms"]
    print("  latency ms       " + "  ".join(
        f"{key} {show(latency[key], '{:.3f}')}"
        for key in ("p50", "p90", "p99", "max")))
    if "send_lag_ms" in run:
        print(f"  pacing lag ms    p99 {run['send_lag_ms']['p99']:.3f}"
              f"  max {run['send_lag_ms']['max']:.3f} (latency is measured"
              " from the actual send)")
    print(f"  server           CPU"
          f" {show(server.get('cpu_us_per_delivery'), '{:.3f}')} us/delivery"
          f" ({show(server.get('send_phase_cpu_s'), '{:.2f}')} s in the send"
          f" phase), peak RSS {mib(server.get('peak_rss_kib'))}")
    generator = run.get("generator", {})
    busy = generator.get("busy", [])
    print(f"  load generator   {generator.get('workers', 0)} workers, busy"
          f" {busy_text(busy)} (CPU / wall time of the send phase)")
    if any(b > BUSY_WARNING for b in busy):
        print("  WARNING: a worker was nearly saturated; the load generator"
              " may be the bottleneck (try --workers)")
    if run.get("receivers_with_issues"):
        print(f"  receivers with lost/dup/reordered lines:"
              f" {run['receivers_with_issues']} of {run['n']}")


def summarise(runs: List[Dict[str, Any]],
              figures: Sequence[Tuple[str, str, str]]) -> Dict[str, Any]:
    """Median, min and max of each figure over ``runs``."""
    summary: Dict[str, Any] = {}
    for key, _, _ in figures:
        values = [v for v in (lookup(r, key) for r in runs) if v is not None]
        if values:
            summary[key] = {"median": statistics.median(values),
                            "min": min(values), "max": max(values),
                            "values": values}
    return summary


def print_summary(kind: str, summary: Dict[str, Any], runs: int,
                  figures: Sequence[Tuple[str, str, str]]) -> None:
    print(f"\n{kind}: median [min - max] of {runs} runs")
    for key, label, fmt in figures:
        if key in summary:
            entry = summary[key]
            print(f"  {label:<28} {show(entry['median'], fmt):>12}"
                  f"  [{show(entry['min'], fmt)} - {show(entry['max'], fmt)}]")


def compare(chat: Dict[str, Any], ncat: Dict[str, Any],
            figures: Sequence[Tuple[str, str, str]]) -> Dict[str, float]:
    """chat / ncat ratio of each figure's median."""
    ratios = {}
    for key, _, _ in figures:
        if key in chat and key in ncat and ncat[key]["median"]:
            ratios[key] = round(chat[key]["median"] / ncat[key]["median"], 3)
    return ratios


def print_comparison(chat: Dict[str, Any], ncat: Dict[str, Any],
                     ratios: Dict[str, float],
                     figures: Sequence[Tuple[str, str, str]]) -> None:
    print("\nchat server vs ncat --chat (medians; ratio = chat / ncat)")
    print(f"  {'':<28} {'chat':>12} {'ncat':>12} {'ratio':>8}")
    for key, label, fmt in figures:
        if key in chat or key in ncat:
            mine = chat.get(key, {}).get("median")
            theirs = ncat.get(key, {}).get("median")
            ratio = f"x{ratios[key]:.2f}" if key in ratios else "-"
            print(f"  {label:<28} {show(mine, fmt):>12}"
                  f" {show(theirs, fmt):>12} {ratio:>8}")


def write_json(path: str, document: Dict[str, Any]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = path + ".tmp"
    with open(temporary, "w") as out:
        json.dump(document, out, indent=1)
        out.write("\n")
    os.replace(temporary, path)

