"""The load generator's worker processes: what each does, phase by phase,
with its share of the clients, and the main process's handle on them.

A worker (:class:`Worker`, on ``clients.ClientLoop``'s event loop) obeys
commands from the main process over a pipe: ``register`` (connect and
choose nicknames), ``barrier`` (until every client surely is in the room),
``go`` (send and receive the token lines, keeping what arrives as raw
chunks with their arrival time), ``finish`` (parse them with
``report.analyse`` and send back the result). :class:`WorkerSet` starts
the workers and sends and gathers those commands and replies.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import signal
import socket
import struct
from collections import deque
from typing import Any, Callable, Dict, List, Sequence, Set, Tuple

from clients import NEW, READ, READY, REGISTERING, Client, ClientLoop
from common import (CHAT_BARRIER_LINE, CHAT_TOKEN_LINE, NCAT_BARRIER_LINE,
                    NCAT_TOKEN_LINE, NS_PER_S, PROCESS_STOP_TIMEOUT_S,
                    RESULT_GRACE_S, TOKEN_MARK, BARE_TOKEN_MARK, Plan,
                    cpu_seconds, now_ns)
from report import analyse

#: Connections the workers have connecting or registering at once, in all:
#: under the server's listen backlog, or connections wait for SYN retries.
CONNECT_WINDOW = 400
#: ncat listens with a backlog of 10, and quits when a queued connection
#: goes wrong, so it gets fewer at once.
NCAT_CONNECT_WINDOW = 8
#: ngIRCd resets some connections when hundreds arrive at once.
IRC_CONNECT_WINDOW = 50
#: Lines an unpaced sender stamps and queues at once.
SEND_BATCH = 64
BARRIER_RESEND_NS = 200_000_000
#: Once every sender is done, this long with no new line ends the wait for
#: lines that were lost.
QUIET_NS = 2 * NS_PER_S
#: After the run, receivers read this much longer, to catch duplicates.
FINAL_DRAIN_NS = 100_000_000
#: An ncat client counts as registered when ncat's announcement arrives, or
#: this long after the connection is established.
NCAT_REGISTER_WAIT_NS = NS_PER_S
NCAT_CHECK_NS = 100_000_000

#: Bytes of a received stream kept to find a mark cut between two chunks.
MARK_OVERLAP = len(TOKEN_MARK) - 1
BARRIER_MARK = b" barrier "
WELCOME_MARK = b"* Welcome, "
PROMPT_MARK = b"* Choose a nickname"
ERROR_MARK = b"! "
IRC_WELCOME_MARK = b" 001 "
IRC_NICK_TAKEN_MARK = b" 433 "


def nick_for(tag: str, index: int) -> str:
    return f"b{tag}n{index}"


def expected_per_receiver(index: int, senders: int, messages: int) -> int:
    """Token lines client ``index`` should receive: all but its own."""
    own = messages if index < senders else 0
    return senders * messages - own


class Worker(ClientLoop):
    """Runs one worker's clients, phase by phase, as the main process says.

    Commands come over ``conn``: ``register``, ``barrier``, ``go`` (with the
    start time), ``senders_done``, ``stop`` and ``finish``. The worker
    replies ``registered``, ``barrier_ok``, ``sent``, ``complete`` and
    ``result``. Sockets are served all the time, between phases too.
    """

    def __init__(self, conn: multiprocessing.connection.Connection,
                 plan: Plan) -> None:
        super().__init__(conn, plan, [
            Client(index, nick_for(plan.nick_tag, index),
                   expected_per_receiver(index, plan.senders, plan.messages))
            for index in plan.clients])
        self.keep_raw = False             # the send phase: see _received
        self.dropped = 0                  # connections lost after registering
        self.in_flight = 0
        self.settled = 0
        self.registering: Set[Client] = set()
        self.first_connect_ns = 0
        self.missing_barrier = 0
        self.incomplete = 0
        self.last_token_ns = 0
        self.send_lags_ns: List[int] = []
        self.token_line = CHAT_TOKEN_LINE if self.chat else NCAT_TOKEN_LINE
        self.pumping = False              # unpaced senders are sending
        window = (IRC_CONNECT_WINDOW if self.irc else CONNECT_WINDOW
                  if self.chat else NCAT_CONNECT_WINDOW)
        self.window = max(1, window // plan.workers)
        # ncat prefixes only the first line of what it relays at once.
        self.bare_tokens = not self.chat

    def run(self) -> None:
        """Obey commands until ``finish``."""
        hard_deadline = self.plan.deadline_ns + int(RESULT_GRACE_S * NS_PER_S)
        while True:
            if not self.serve(lambda: bool(self.inbox), hard_deadline):
                return
            command = self.inbox.popleft()
            if command[0] == "register":
                self.register(*command[1:])
            elif command[0] == "drop":
                self.drop(*command[1:])
            elif command[0] == "barrier":
                self.barrier()
            elif command[0] == "go":
                self.measure(command[1])
            elif command[0] == "finish":
                self.finish()
                return

    def _dropped(self, client: Client, was: int) -> None:
        if was == READY:
            self.dropped += 1
            if not client.seen_barrier and client.index != 0:
                self.missing_barrier -= 1
            if client.tokens < client.expected:
                self.incomplete -= 1
        else:
            self._settle(client)

    # Phase 1: connect and register.

    def register(self, limit: int = 0, tag: str = "registered") -> None:
        """Connect and register the clients not started yet (with
        ``limit``, those whose index is below it); reply ``tag``."""
        started, cpu_before = now_ns(), cpu_seconds()
        batch = [c for c in self.clients if c.state == NEW
                 and (not limit or c.index < limit)]
        waiting = deque(batch)
        self.settled = 0
        self.first_connect_ns = 0
        next_check = [0]
        self.on_lines = self._register_lines

        def tick(now: int) -> int:
            while waiting and self.in_flight < self.window:
                self._start(waiting.popleft())
            if not self.chat and now >= next_check[0]:
                self._ncat_registered(now)
                next_check[0] = now + NCAT_CHECK_NS
            return next_check[0] if not self.chat else now + NS_PER_S

        self.serve(lambda: self.settled == len(batch)
                   or self._interrupted(), self.plan.deadline_ns, tick)
        ready = [c for c in batch if c.state == READY]
        self.reply(tag, {
            "ready": len(ready),
            "first_ns": self.first_connect_ns or started,
            "last_ns": max((c.registered_ns for c in ready), default=0),
            "each_ns": [c.registered_ns - c.started_ns for c in ready],
            "cpu_s": cpu_seconds() - cpu_before,
            "wall_s": (now_ns() - started) / NS_PER_S,
            "errors": dict(self.errors)})

    def _start(self, client: Client) -> None:
        """Connect ``client``; it holds a slot of the window until it is
        registered or failed."""
        self.in_flight += 1
        client.started_ns = now_ns()
        self.first_connect_ns = self.first_connect_ns or client.started_ns
        self.registering.add(client)
        self._connect(client)

    def _secured(self, client: Client) -> None:
        """Connected (and through the TLS handshake): register. A TLS
        client waits for the prompt (see _register_lines)."""
        if self.irc:
            nick = client.nick.encode()
            self._send(client, b"NICK %s\r\nUSER %s 0 * :%s\r\n"
                       % (nick, nick, nick))
        elif self.chat and client.tls is None:
            self._send(client, client.nick.encode() + b"\n")
        else:
            self._set_events(client, READ)

    def _settle(self, client: Client) -> None:
        """``client`` is registered or failed: it frees its window slot."""
        if client in self.registering:
            self.registering.discard(client)
            self.in_flight -= 1
            self.settled += 1

    def _ready(self, client: Client, now: int) -> None:
        client.state = READY
        client.registered_ns = now
        self._settle(client)

    def _register_lines(self, client: Client, lines: List[bytes],
                        now: int) -> None:
        if client.state != REGISTERING:
            return
        welcome = IRC_WELCOME_MARK if self.irc else WELCOME_MARK
        if not self.chat or any(welcome in line for line in lines):
            self._ready(client, now)
            return
        for line in lines:
            if line.startswith(ERROR_MARK) or (
                    self.irc and (line.startswith(b"ERROR")
                                  or IRC_NICK_TAKEN_MARK in line)):
                text = line.decode("utf-8", "replace")
                self._drop(client, f"refused: {text[:100]}")
                return
        if client.tls is not None and any(PROMPT_MARK in line
                                          for line in lines):
            self._send(client, client.nick.encode() + b"\n")

    def _ncat_registered(self, now: int) -> None:
        """ncat clients connected long enough count as registered even if
        ncat did not announce them."""
        for client in list(self.registering):
            if (client.state == REGISTERING
                    and now - client.started_ns > NCAT_REGISTER_WAIT_NS):
                self._ready(client, now)

    def drop(self, count: int, limit: int, reset: bool) -> None:
        """The churn scenario: ``count`` registered clients (of those whose
        index is below ``limit``) go at once, by RST (``reset``: SO_LINGER
        with a zero timeout) or by an ordinary close (FIN)."""
        going = [c for c in self.clients
                 if c.state == READY and c.index < limit][:count]
        at_ns = now_ns()
        for client in going:
            if reset:
                client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self._close(client)
        self.reply("dropped", {"count": len(going), "at_ns": at_ns,
                               "end_ns": now_ns()})

    # Phase 2: the barrier.

    def barrier(self) -> None:
        ready = [c for c in self.clients if c.state == READY]
        self.missing_barrier = sum(
            1 for c in ready if c.index != 0 and not c.seen_barrier)
        coordinator = next((c for c in ready if c.index == 0), None)
        line = CHAT_BARRIER_LINE if self.chat else NCAT_BARRIER_LINE
        state = {"next_ns": 0, "count": 0, "reported": False}
        self.on_lines = self._barrier_lines

        def tick(now: int) -> int:
            if coordinator is None or coordinator.state != READY:
                return now + NS_PER_S
            if now >= state["next_ns"]:
                self._send(coordinator, line % state["count"])
                state["count"] += 1
                state["next_ns"] = now + BARRIER_RESEND_NS
            return state["next_ns"]

        def until() -> bool:
            if self.missing_barrier <= 0 and not state["reported"]:
                state["reported"] = True
                self.reply("barrier_ok", {"sent": state["count"]})
            return self._interrupted()

        self.serve(until, self.plan.deadline_ns, tick)

    def _barrier_lines(self, client: Client, lines: List[bytes],
                       now: int) -> None:
        if not client.seen_barrier and any(BARRIER_MARK in line
                                           for line in lines):
            client.seen_barrier = True
            if client.index != 0:
                self.missing_barrier -= 1

    # Phase 3: send and receive.

    def measure(self, start_ns: int) -> None:
        plan = self.plan
        senders = [c for c in self.clients
                   if c.index < plan.senders and c.state == READY]
        self.incomplete = sum(1 for c in self.clients
                              if c.state == READY and c.tokens < c.expected)
        self.keep_raw = True
        cpu_before = cpu_seconds()
        state = {"started": False, "sent": False}
        ns_per_line = NS_PER_S / plan.rate if plan.rate > 0 else 0.0

        def due(client: Client, seq: int) -> int:
            return start_ns + int((client.index + seq * plan.senders)
                                  * ns_per_line)

        def tick(now: int) -> int:
            if now < start_ns:
                return start_ns
            if not state["started"]:
                state["started"] = True
                if plan.rate <= 0:
                    self.pumping = True
                    for client in senders:
                        self._pump(client)
            if plan.rate <= 0:
                return now + NS_PER_S
            wake = now + NS_PER_S
            for client in senders:
                if client.next_seq < plan.messages and client.state == READY:
                    if due(client, client.next_seq) <= now:
                        self._send_due(client, now, due)
                    if client.next_seq < plan.messages:
                        wake = min(wake, due(client, client.next_seq))
            return wake

        def until() -> bool:
            if self._interrupted():
                return True
            if not state["sent"] and all(
                    c.state != READY
                    or (c.next_seq >= plan.messages and not c.out)
                    for c in senders):
                state["sent"] = True
                self.reply("sent", {"at_ns": now_ns()})
            if state["sent"] and self.incomplete <= 0:
                return True
            if self.all_sent_ns:
                quiet_since = max(self.all_sent_ns, self.last_token_ns)
                return now_ns() - quiet_since > QUIET_NS
            return False

        finished = self.serve(until, plan.deadline_ns, tick)
        ended = now_ns()
        self.reply("complete", {
            "complete": finished and state["sent"] and self.incomplete <= 0,
            "timed_out": not finished,
            "end_ns": ended,
            "cpu_s": cpu_seconds() - cpu_before,
            "wall_s": max(1, ended - start_ns) / NS_PER_S})

    def _send_due(self, client: Client, now: int,
                  due: Callable[[Client, int], int]) -> None:
        """Send a paced sender's lines that are due, stamped ``now``."""
        first = client.next_seq
        last = first
        while last < self.plan.messages and due(client, last) <= now:
            last += 1
        self.send_lags_ns.append(now - due(client, first))
        line = self.token_line
        self._send(client, b"".join(line % (client.index, seq, now)
                                    for seq in range(first, last)))
        client.next_seq = last

    def _writable(self, client: Client) -> None:
        if self.pumping and client.index < self.plan.senders:
            self._pump(client)
        else:
            self._flush(client)

    def _pump(self, client: Client) -> None:
        """An unpaced sender: queue and send lines until the socket is full.
        Each batch is stamped when it is made, after the previous one was
        taken whole by the kernel."""
        line = self.token_line
        while client.state == READY:
            if not self._flush(client):
                return
            first = client.next_seq
            if first >= self.plan.messages:
                return
            last = min(self.plan.messages, first + SEND_BATCH)
            stamp = now_ns()
            client.out += self._wire(client, b"".join(
                line % (client.index, seq, stamp)
                for seq in range(first, last)))
            client.next_seq = last

    def _received(self, client: Client, data: bytes) -> None:
        if self.keep_raw:
            self._keep(client, data)
        else:
            self._decode(client, data)

    def _keep(self, client: Client, data: bytes) -> None:
        """The send phase: decrypt ``data`` and keep it as it is, stamped
        with when it could be read; analyse frames it afterwards. Only the
        token lines are counted now, roughly, to know when all came."""
        plain = self._decrypt(client, data)
        if not plain:
            return
        arrived = now_ns()
        client.chunks.append((arrived, plain))
        # A mark may be cut between the previous chunk and this one.
        edge = client.tail + plain[:MARK_OVERLAP]
        count = plain.count(TOKEN_MARK) + edge.count(TOKEN_MARK)
        if self.bare_tokens:
            count += (plain.count(BARE_TOKEN_MARK)
                      + edge.count(BARE_TOKEN_MARK))
        client.tail = (client.tail + plain[-MARK_OVERLAP:])[-MARK_OVERLAP:]
        if not count:
            return
        self.last_token_ns = arrived
        before = client.tokens
        client.tokens += count
        if before < client.expected <= client.tokens:
            self.incomplete -= 1

    # Phase 4: report.

    def finish(self) -> None:
        self.serve(lambda: False, now_ns() + FINAL_DRAIN_NS)
        connected = sum(1 for c in self.clients if c.state == READY)
        result = analyse(self.clients, self.plan)
        unframed = result.pop("unframed")
        if unframed:
            reason = "line without end from the server"
            self.errors[reason] = self.errors.get(reason, 0) + unframed
        result.update({
            "connected": connected,
            "dropped": self.dropped,
            "errors": dict(self.errors),
            "send_lags_ns": self.send_lags_ns,
        })
        for client in self.clients:
            self._close(client)
        self.reply("result", result)


def worker_entry(conn: multiprocessing.connection.Connection,
                 plan: Plan) -> None:
    """Body of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the main process decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # terminate() just ends it
    worker = Worker(conn, plan)
    try:
        worker.run()
    except SystemExit:
        pass
    except Exception as error:   # report it rather than die silently
        try:
            conn.send(("error", f"worker {plan.worker}: {error!r}"))
        except OSError:
            pass
    finally:
        worker.close()


class WorkerSet:
    """The worker processes of one run and their replies."""

    def __init__(self, plans: Sequence[Plan]) -> None:
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context(
            "fork" if "fork" in methods else None)
        self.conns: List[multiprocessing.connection.Connection] = []
        self.processes: List[multiprocessing.process.BaseProcess] = []
        self.inbox: List[Dict[str, Any]] = [{} for _ in plans]
        self.dead: Set[int] = set()
        self.errors: List[str] = []
        for plan in plans:
            ours, theirs = context.Pipe()
            process = context.Process(target=worker_entry, args=(theirs, plan),
                                      name=f"bench-worker-{plan.worker}",
                                      daemon=True)
            process.start()
            theirs.close()
            self.conns.append(ours)
            self.processes.append(process)

    def broadcast(self, message: tuple) -> None:
        for number, conn in enumerate(self.conns):
            if number not in self.dead:
                try:
                    conn.send(message)
                except OSError:
                    self.dead.add(number)

    def gather(self, tag: str, deadline_ns: int) -> Tuple[List[Any], bool]:
        """Wait for every worker's ``tag`` reply; return the replies (None
        for a missing one) and whether all came before the deadline."""
        while True:
            have = [box.get(tag) for box in self.inbox]
            if all(reply is not None for reply in have):
                return have, True
            alive = [conn for number, conn in enumerate(self.conns)
                     if number not in self.dead
                     and self.inbox[number].get(tag) is None]
            remaining = (deadline_ns - now_ns()) / NS_PER_S
            if remaining <= 0 or not alive:
                return have, False
            for conn in multiprocessing.connection.wait(alive, remaining):
                self._receive(self.conns.index(conn))

    def _receive(self, number: int) -> None:
        try:
            tag, payload = self.conns[number].recv()
        except (EOFError, OSError):
            self.dead.add(number)
            self.errors.append(f"worker {number} exited early")
            return
        if tag == "error":
            self.dead.add(number)
            self.errors.append(str(payload))
        else:
            self.inbox[number][tag] = payload

    def stop(self, wait_s: float) -> None:
        """End the workers: they normally exit by themselves within
        ``wait_s``; then they are terminated, and killed if need be."""
        for process in self.processes:
            process.join(wait_s)
            if process.is_alive():
                process.terminate()
                process.join(PROCESS_STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join()
        for conn in self.conns:
            conn.close()

