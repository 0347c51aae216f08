"""Terminal client for the chat server (``server.py``).

Run ``python3 client.py [--host H] [--port P] [--nick N] [--tls [--cafile
FILE]]``. It connects, helps you choose a nickname, then lets you type lines
while the lines of other users appear above the one you are typing.

A chat client waits for two things at once: for you to type, and for the
server to send. So it runs two threads. The *main thread* reads what you
type (``input()``, with line editing and history from the standard
``readline`` module where it exists) and sends it: see :func:`chat` and
:func:`handle_line`. It answers ``-help`` itself, and ``-exit``, Ctrl+D,
Ctrl+C, SIGTERM or the end of piped input make it leave politely
(:func:`leave`). The *reader thread* (:func:`read_from_server`) receives
lines from the server and prints them. It also passes on what the main
thread needs to know (:class:`ChatState`: who plain lines go to, and
whether the server has answered a ``-to``); and if the server ends the
chat, it ends the whole program, since the main thread is stuck in
``input()``.

Before that comes joining: ``dial.connect`` opens the ``Connection``,
and :func:`register` agrees on a nickname with the server, asking you at a
``nickname> `` prompt when needed (it answers ``-help`` there too). While
you are asked, a thread listens to the server (:class:`JoinReader`), as
the reader thread does in the chat: a server that shuts down, or gives up
waiting for your nickname, ends the program at once, not at your Enter.

A connection can also drop by accident. The server then keeps your seat
for a while, with the lines that come for you, and it gave you a secret
token on joining to claim the seat back. So the reader thread connects
again by itself and says ``-resume TOKEN`` (:func:`reconnect`,
:func:`rejoin`); the lines you missed follow, and the chat goes on. Both
threads use the connection through a :class:`Link`, which the reader
thread points at the new connection once it is back in the chat; a line
you type while it is down is not sent, and you are told so.

The screen lives in ``terminal.py``. Both threads print through one
``terminal.Terminal``, which owns the screen: it prints each incoming line
above your prompt and redraws the prompt with your half-typed text. Every
received line goes through ``terminal.render``, which calls
``terminal.sanitize`` first, so another user cannot send escape sequences
that drive your terminal. What the chat decides stays here: once you press
Enter, the line you typed is rewritten in place to show where it went
(``-to bob hi`` becomes ``[to bob]> hi``; see :func:`echo_for`), and a
password is starred out.

With ``--tls`` the lines travel encrypted, and the server's certificate is
checked against the system's certificate authorities or ``--cafile FILE``.
The socket itself stays a plain TCP socket: TLS runs over memory buffers
(``transport.TLSLayer``), so that the reader thread decrypts what it
receives while the main thread encrypts what it sends, without two threads
ever sharing an ``ssl.SSLSocket``.

The wire protocol (lines of UTF-8 text) lives in ``protocol.py``.

Exit statuses:

* 0: the chat ended normally: you left (``-exit``, Ctrl+D, Ctrl+C,
  SIGTERM, the end of piped input, or gave up choosing a nickname), an
  admin kicked you, or the server shut down;
* 1: something went wrong: could not connect or join, lost the connection
  and could not get back in (or the server keeps no seats), your seat was
  taken over by another connection, or nobody reads the output any more;
* 2: a mistake on the command line (argparse's usage message).
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import socket
import ssl
import sys
import threading
import time
from typing import (Callable, Dict, Iterable, Iterator, List, NoReturn,
                    Optional, Tuple, Union)

import protocol
from completion import Completer, Roster, fold
from dial import (Connection, connect, format_address, make_tls_context,
                  ssl_reason)
from terminal import (OutputClosed, Terminal, is_history, local_notice,
                      mentions, render, sanitize, wants_colour)

#: Seconds without a word from the server after connecting before we say
#: that we are still waiting (a TLS server waits for a TLS client to speak
#: first, so a plain client hears nothing until the server gives up).
SLOW_SERVER_HINT = 3.0
#: Seconds to wait for the server's goodbye after sending ``-exit``.
LEAVE_TIMEOUT = 2.0
#: Seconds to wait for the server to confirm ``-to NICK`` or ``-all``
#: before showing the next prompt (so the prompt names the right partner).
REPLY_TIMEOUT = 1.0
#: After a lost connection: seconds before the first try to connect again
#: (the environment variable below may make it shorter, for tests); each
#: wait after a failed try is twice the one before, up to the longest.
RECONNECT_FIRST_DELAY = 1.0
RECONNECT_LONGEST_DELAY = 30.0
FIRST_DELAY_ENV = "CHAT_RECONNECT_FIRST_DELAY"
#: Seconds after which we stop trying to reconnect, and end.
RECONNECT_GIVE_UP = 300.0
#: Seconds a new connection may be silent while we take our seat back.
REJOIN_TIMEOUT = 10.0
#: When to ring the terminal's bell (``--bell``): on a private message
#: (the default), also when someone mentions your nickname, on every
#: message from someone else, or never.
BELL_CHOICES = ("pm", "mention", "all", "off")
#: Commands client.py answers itself, which the server never sees (they
#: are about this screen only), with their lines of -help.
CLIENT_COMMANDS = {"-time": ("-time", "client.py: timestamps on/off")}


# --- Choosing a nickname -----------------------------------------------------


def show_notice(terminal: Terminal, text: str) -> None:
    """Show a line of the client's own, styled as the server's notices."""
    terminal.show(render(local_notice(text), "", terminal.colour))


#: The prompt for a nickname, under the server's question.
NICK_PROMPT = "nickname> "
#: Shown after -help at the nickname prompt.
NICK_FIRST = ("Choose a nickname first, or -resume TOKEN; the other"
              " commands work once you are in the chat.")


class JoinError(Exception):
    """Could not join the chat; ``str(error)`` says why."""


def register(conn: Connection, terminal: Terminal,
             nick: Optional[str]) -> Optional[str]:
    """Choose a nickname with the server and return the one it welcomed.

    ``nick`` (from ``--nick`` or the first piped line) is tried first; after
    that, or without it, the user is asked, if there is a terminal to ask
    on. Returns None if the user gave up (Ctrl+D, ``-exit``) or the server
    shut down (its notice is shown). Raises JoinError, or OSError if the
    connection broke. While the user is asked, the server is still heard
    (see :class:`JoinReader`): if it ends the connection then, the program
    ends there and then.
    """
    server = JoinReader(conn, terminal)
    while True:
        line = server.next_line()
        if line is None:
            if server.shut_down:
                return None  # the server's notice said it all
            raise JoinError(CLOSED_BY_SERVER)
        if line == protocol.format_tls_required():
            # We spoke plain text to a TLS server; it said so, and closes.
            raise JoinError(sanitize(line[len(protocol.ERROR):]))
        if protocol.welcomed_nick(line) is not None:
            server.show(line)
            return protocol.welcomed_nick(line)
        if line == protocol.format_nick_prompt():
            if nick is None:
                if not terminal.interactive:
                    raise JoinError("no nickname accepted")
                # The server's question on a line of its own, then a short
                # prompt in the style of the chat's: as the prompt itself,
                # the question (65 columns) would leave too little room on
                # its row for a nickname, or wrap in a narrow terminal.
                server.show(line)
                nick = ask_nick(server, terminal)
                if nick is None:
                    return None  # Ctrl+D or -exit: the user gave up
            _send_nick(conn, nick)
            nick = None  # if refused, ask next time
        elif not terminal.interactive and line.startswith(protocol.ERROR):
            # Nobody to ask for another nickname: give up with the reason.
            raise JoinError(sanitize(line[len(protocol.ERROR):]))
        else:
            server.show(line)


def ask_nick(server: "JoinReader", terminal: Terminal) -> Optional[str]:
    """Ask the user for a nickname; None if they give up (Ctrl+D or
    ``-exit``). ``-help`` is answered here, as in the chat, and the user
    asked again: the server would take it for a nickname, and refuse it.
    A ``-resume TOKEN`` typed by hand is kept out of the input history."""
    while True:
        nick = server.ask(NICK_PROMPT)
        if nick is None:
            return None
        _, spec = parse_typed(nick)
        action = spec.client if spec is not None else protocol.SEND
        if action == protocol.LEAVE:
            return None
        if action != protocol.LOCAL:
            if _is_secret(nick):
                terminal.forget_last_line()
            return nick
        LOCAL_COMMANDS[spec.name](terminal)  # type: ignore[union-attr]
        show_notice(terminal, NICK_FIRST)


def _send_nick(conn: Connection, nick: str) -> None:
    """Send the nickname. If the connection has just broken, say nothing:
    reading finds that out too, after the server's last lines (why it
    closed: a timeout, a shutdown), which are worth more than EPIPE."""
    try:
        conn.send_line(nick)
    except OSError:
        pass


def _is_secret(line: str) -> bool:
    """True for a command whose argument is a secret (``-admin PW``,
    ``-resume TOKEN``): it must stay out of the input history."""
    spec = protocol.command_spec(line)
    return spec is not None and spec.client == protocol.HIDE


def _first_line(conn: Connection, terminal: Terminal) -> Optional[str]:
    """The server's first line. If it is slow to come, say that we are
    waiting, and why that may be: a TLS server says nothing to a plain
    client until its handshake times out."""
    if conn.tls is None:
        conn.sock.settimeout(SLOW_SERVER_HINT)
        try:
            return conn.read_line()
        except socket.timeout:
            show_notice(terminal, "Connected, waiting for the server to"
                        " answer... (if it uses TLS, connect with --tls)")
        finally:
            conn.sock.settimeout(None)
    return conn.read_line()


#: What JoinReader's thread hands on: a line; None, the end of the
#: connection; or the error that broke it.
_Heard = Union[str, None, BaseException]


class JoinReader:
    """The server's lines while we join, for :func:`register`.

    The main thread reads them itself (:meth:`next_line`) until the user
    must be asked for a nickname. From then on a thread of its own reads
    them, so that the server is heard while the main thread waits in
    ``input()``, as in the chat. While the user is being asked
    (:meth:`ask`), what comes is shown at once, above the prompt; and if
    the connection ends then (the server shuts down, or gives up waiting
    for a nickname), the program ends, as the chat's reader thread ends
    it (:func:`exit_now`): there is no waking the main thread. Otherwise
    the lines wait in a queue for :meth:`next_line`, in order. The thread
    stops reading at the welcome, which it queues last, so that the
    chat's reader thread can take over the connection.
    """

    def __init__(self, conn: Connection, terminal: Terminal) -> None:
        self._conn = conn
        self._terminal = terminal
        self._first = True  # the first line may be slow: see _first_line
        self._queue: "queue.Queue[_Heard]" = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        # Held to decide where a line goes: shown now, or queued.
        self._lock = threading.Lock()
        self._asking = False
        #: The server's shutdown notice was shown.
        self.shut_down = False

    def next_line(self) -> Optional[str]:
        """The server's next line, or None when it closed the connection.
        Raises OSError or protocol.FramingError if the connection broke.
        Not to be called again after None, an error, or the welcome."""
        if self._thread is None:
            first, self._first = self._first, False
            return (_first_line(self._conn, self._terminal) if first
                    else self._conn.read_line())
        heard = self._queue.get()
        if isinstance(heard, BaseException):
            raise heard
        return heard

    def show(self, line: str) -> None:
        """Show a server line (and take note of a shutdown notice)."""
        if protocol.is_shutdown(line):
            self.shut_down = True
        self._terminal.show(render(line, "", self._terminal.colour))

    def ask(self, prompt: str) -> Optional[str]:
        """Ask the user (see :meth:`Terminal.ask`) while the server is
        heard, as the class says; the typed line, stripped, or None at
        Ctrl+D. Raises KeyboardInterrupt at Ctrl+C."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._read, daemon=True,
                                            name="join-reader")
            start_thread(self._thread)
        with self._lock:
            self._asking = True
            # What came before we asked was not answered either: show it.
            while not self._queue.empty():
                self._heard_while_asking(self._queue.get_nowait())
        try:
            return self._terminal.ask(prompt)
        finally:
            with self._lock:
                self._asking = False

    def _read(self) -> None:
        """The thread: read lines until the welcome or the end."""
        while True:
            heard: _Heard
            try:
                heard = self._conn.read_line()
            except (OSError, protocol.FramingError) as error:
                heard = error
            with self._lock:
                if self._asking:
                    self._heard_while_asking(heard)  # the end: exits
                else:
                    self._queue.put(heard)
                    if isinstance(heard, str) and protocol.welcomed_nick(
                            heard) is not None:
                        return  # the chat's reader thread takes over
            if not isinstance(heard, str):
                return  # the connection has ended

    def _heard_while_asking(self, heard: _Heard) -> None:
        """Show a line that came while the user is asked; if the
        connection ended, end the program. Call with the lock held."""
        try:
            if isinstance(heard, str):
                self.show(heard)
            elif self.shut_down:
                exit_now(self._terminal, None, 0)  # the notice said it all
            else:
                # As run() reports a failure to join (with fail()).
                problem = (CLOSED_BY_SERVER if heard is None
                           else _reason(heard))
                exit_now(self._terminal, f"cannot join the chat: {problem}",
                         1, stderr=True)
        except OutputClosed:
            exit_now(self._terminal, None, 1)  # nobody reads us: quietly


# --- Chatting ----------------------------------------------------------------


def prompt_for(partner: str) -> str:
    """The prompt for plain lines going to ``partner`` ("" for everyone):
    ``[everyone]> `` or ``[to bob]> ``."""
    return f"[to {sanitize(partner)}]> " if partner else "[everyone]> "


def echo_for(line: str, prompt: str, partner: str) -> Optional[str]:
    """How a line the user has just sent should read on the screen, or None
    when it reads right as typed.

    Enter leaves the typed line after the prompt it was typed at, and that
    can mislead: ``[everyone]> -to alice sure`` went to alice only,
    ``[to bob]> -all hi`` to everyone. So:

    * a private line (``-to NICK text``, or a plain line to a partner) is
      left for the server's copy, ``-> NICK: text``, which replaces it
      once it went (:meth:`Terminal.show_instead_of_typed`); if it did
      not, the line stays as typed, with the server's error under it;
    * ``-all text`` reads ``[everyone]> text``;
    * ``-admin PASSWORD`` reads ``[everyone]> -admin ********`` (after
      the prompt it was typed at): the password does not stay on the
      screen, and eight stars whatever its length;
    * a plain line to everyone stays as typed: the prompt says where it
      went (unless the partner changed while it was being typed, if the
      server was slow to confirm a ``-to``: then it gets the prompt of
      where it went);
    * other commands, and lines the server will refuse, stay as typed.

    ``prompt`` is the prompt the line was typed at; ``partner`` who plain
    lines go to now ("" for everyone).
    """
    command, spec = parse_typed(line)
    if command is None or spec is None:
        return None  # not sent, or the server answers with what is wrong
    if spec.client == protocol.ROUTE and command.text:
        # -to NICK text waits for the server's copy; -all text:
        return None if command.target else prompt_for("") + command.text
    if spec.client == protocol.HIDE:
        # Rewriting replaces the prompt too (see Terminal.rewrite_typed):
        # put it back, so that this line reads like every other one.
        return prompt + line.split(None, 1)[0] + " ********"
    if command.name == "say" and not partner and prompt_for("") != prompt:
        return prompt_for("") + line
    return None


def parse_typed(line: str) -> Tuple[Optional[protocol.Command],
                                    Optional[protocol.CommandSpec]]:
    """A typed line as a command and its row of the command table; both
    None for an empty line or one the server will refuse (it is sent
    anyway: the server explains what is wrong)."""
    if not line.strip():
        return None, None
    try:
        command = protocol.parse_command(line)
    except protocol.CommandError:
        return None, None
    return command, protocol.COMMANDS_BY_NAME[command.name]


#: The start of the last line a kicked user gets: "! you were kicked by ".
_KICKED = protocol.format_you_were_kicked("")


class ChatState:
    """What the reader thread learns from the server that the main thread
    needs too (who plain lines go to, and whether the server answered),
    and what it needs itself to get back in after a lost connection."""

    def __init__(self, nick: str, timestamps: bool = False,
                 bell: str = "pm") -> None:
        self.nick = nick
        self.partner = ""  # "" means everyone
        self.timestamps = timestamps  # HH:MM before each line shown
        self.bell = bell              # one of BELL_CHOICES
        #: Who is online, for Tab completion.
        self.roster = Roster()
        #: Whom the user ignores (fold(nick) -> nick): their lines are not
        #: shown, even by a server that does not know -ignore.
        self.ignoring: Dict[str, str] = {}
        self.replies = 0   # partner confirmations and errors seen so far
        #: The secret that gets our seat back after a lost connection, as
        #: the server gave it on joining; None if it gave none. Kept in
        #: memory only: never shown, never written anywhere.
        self.token: Optional[str] = None
        self.shut_down = False  # the server said it is shutting down
        self.kicked = False     # an admin sent us away
        self.sent_away = False  # kicked, or our seat went to another link
        self.hint_shown = False  # the commands hint, shown once per run
        self._changed = threading.Condition()

    def prompt(self) -> str:
        """``[everyone]> `` or ``[to bob]> ``."""
        return prompt_for(self.current_partner())

    def current_partner(self) -> str:
        """Who plain lines go to now; "" for everyone."""
        with self._changed:
            return self.partner

    def may_resume(self) -> bool:
        """True if, the connection lost, we may try to get our seat back:
        we have a token, and the server did not end the chat for us."""
        return (self.token is not None and not self.shut_down
                and not self.sent_away)

    def note(self, line: str) -> None:
        """Take in one server line (called by the reader thread). The
        replies the main thread may wait for are partner changes, errors
        and the copies of private lines sent. The
        partner changes only when the server confirms it, so a failed
        ``-to`` leaves it as it was; a first welcome (after reconnecting
        to a server that had lost our seat) puts it back to everyone, and
        forgets the token of the lost seat.
        History is what was said before: it changes nothing now."""
        if is_history(line):
            return
        if protocol.is_shutdown(line):
            self.shut_down = True
        if line.startswith(_KICKED):
            self.kicked = self.sent_away = True
        if line == protocol.format_replaced():
            self.sent_away = True
        self.roster.note(line)
        renamed = protocol.nick_change(line)
        if renamed is not None:
            old, new = renamed
            if not old:
                self.nick = new
            elif self.partner and fold(self.partner) == fold(old):
                self.partner = new  # our lines follow them (server-side)
        change = protocol.partner_change(line)
        welcomed = protocol.welcomed_nick(line)
        if welcomed is not None and line == protocol.format_welcome(welcomed):
            # A new seat: plain lines go to everyone, and the old token is
            # void (a server that keeps seats sends a new one next).
            change = ""
            self.token = None
        if change is None and not line.startswith(
                (protocol.ERROR, protocol.SENT)):
            return
        with self._changed:
            if change is not None:
                self.partner = change
            self.replies += 1
            self._changed.notify_all()

    def wait_for_reply(self, seen: int, timeout: float) -> None:
        """Wait until a reply after the first ``seen`` has come, or
        ``timeout`` seconds have passed."""
        with self._changed:
            self._changed.wait_for(lambda: self.replies != seen, timeout)


class NotConnected(OSError):
    """Raised by :meth:`Link.send_line` while the connection is down."""


class Link:
    """The connection the chat goes through now.

    The main thread sends through it; the reader thread reads from it, and
    when it is lost, marks it down and puts a new one in its place (see
    :func:`reconnect`). One lock makes each of these steps, and the user's
    decision to leave, happen at once for both threads: a line is never
    sent on a connection that is not back in the chat yet, and a seat is
    never taken back after the user chose to leave.
    """

    def __init__(self, conn: Connection) -> None:
        self._lock = threading.Lock()
        self._conn = conn   # the connection in use, or being tried
        self._up = True     # _conn is in the chat: lines may be sent
        self.leaving = threading.Event()  # the user is leaving: no reconnect
        self.ended = threading.Event()    # the reader thread is done

    @property
    def conn(self) -> Connection:
        """The connection in use, or being tried."""
        with self._lock:
            return self._conn

    def send_line(self, text: str) -> None:
        """Send one line. Raises NotConnected while the connection is down,
        OSError if sending fails."""
        with self._lock:
            if not self._up:
                raise NotConnected("not connected")
            conn = self._conn
        # Outside the lock: sending may wait for a slow network.
        conn.send_line(text)

    def lost(self) -> None:
        """The connection has ended (the reader found out): close it; lines
        are refused until another one is in the chat."""
        with self._lock:
            self._up = False
            conn = self._conn
        conn.close()

    def attempt(self, conn: Connection) -> bool:
        """Take ``conn``, a new connection that is still joining, as the one
        :meth:`close` closes; False if the user is leaving."""
        with self._lock:
            if self.leaving.is_set():
                return False
            self._conn = conn
            return True

    def rejoined(self) -> bool:
        """The new connection is in the chat: send through it from now on.
        False if the user chose to leave meanwhile."""
        with self._lock:
            if self.leaving.is_set():
                return False
            self._up = True
            return True

    def say_goodbye(self) -> bool:
        """Note that we are leaving, and send ``-exit``; False if there is
        no connection to say it on."""
        with self._lock:
            self.leaving.set()
            conn = self._conn if self._up else None
        if conn is None:
            return False
        try:
            conn.send_line("-exit")
            return True
        except OSError:
            return False

    def close(self) -> None:
        """Close the connection in use or being tried (which wakes the
        reader thread if it waits on it)."""
        self.conn.close()


def show_server_line(line: str, terminal: Terminal,
                     state: ChatState) -> None:
    """Take note of one line from the server, and show it; but the resume
    token is for the program, not for the eyes (it is kept, in memory
    only), and the commands hint is shown once, not again after each
    reconnect."""
    token = protocol.resume_token(line)
    if token is not None:
        state.token = token
        return
    if line == protocol.format_commands_hint():
        if state.hint_shown:
            return
        state.hint_shown = True
    parsed = protocol.parse_server_line(line)
    if parsed.kind in ("message", "private") and parsed.nick:
        if fold(parsed.nick) in state.ignoring:
            return  # the server should not have sent it (an old one)
        state.roster.add(parsed.nick)
    state.note(line)
    text = render(line, state.nick, terminal.colour)
    if state.timestamps and not is_history(line):
        text = time.strftime("%H:%M ") + text
    if parsed.kind == "sent":
        terminal.show_instead_of_typed(text)
    else:
        terminal.show(text)
    if rings_bell(parsed, state):
        terminal.bell()


def rings_bell(parsed: protocol.ServerLine, state: ChatState) -> bool:
    """Whether a line from the server rings the bell, by ``--bell``: a
    private message (``pm``, and the others but ``off``), a message that
    mentions our nickname (``mention``), any message (``all``); never our
    own lines."""
    if state.bell == "off" or parsed.kind not in ("message", "private") \
            or fold(parsed.nick) == fold(state.nick):
        return False
    if parsed.kind == "private" or state.bell == "all":
        return True
    return state.bell == "mention" and mentions(parsed.text, state.nick)


def _reason(error: BaseException) -> str:
    """An error as a short phrase: ``Connection reset by peer``."""
    return getattr(error, "strerror", None) or str(error)


#: What :func:`receive` says when the server ended the connection.
CLOSED_BY_SERVER = "the server closed the connection"


def receive(link: Link, terminal: Terminal, state: ChatState) -> str:
    """Show every line from the link's connection until it ends; return
    why it ended, as a phrase (:data:`CLOSED_BY_SERVER`, or the error).
    If nobody reads our output any more, leave, and end the program."""
    conn = link.conn
    unread = False  # we leave because nobody reads our output
    problem = CLOSED_BY_SERVER
    try:
        while True:
            line = conn.read_line()
            if line is None:
                break
            try:
                show_server_line(line, terminal, state)
            except OutputClosed:
                # Nobody reads what we print any more (say, "| head -1" has
                # its line): leave the chat, unless the main thread already
                # does. The server's goodbye then ends this loop; do not
                # wait long for it.
                if not link.leaving.is_set():
                    unread = True
                    link.say_goodbye()
                    conn.sock.settimeout(LEAVE_TIMEOUT)  # for recv()
    except (OSError, protocol.FramingError) as error:
        problem = _reason(error)
    if unread:
        exit_now(terminal, None, 1)  # quietly: there is nobody to tell
    return problem


def exit_now(terminal: Terminal, message: Optional[str], status: int,
             stderr: bool = False) -> NoReturn:
    """End the program from a reader thread, showing ``message`` last:
    as a notice of ours, or with ``stderr``, as :func:`fail` reports a
    fatal problem (on stderr, after the terminal is put back).

    The main thread is most likely blocked in input(), and there is no
    portable way to wake it up, so we end the process from here: restore
    the terminal (readline had changed its settings and will not get to
    put them back), flush the output and exit at once with os._exit(),
    which does not wait for the main thread. It is also robust: it works
    whatever the main thread is doing.
    """
    if message and not stderr:
        terminal.finish(render(local_notice(message), "", terminal.colour))
    else:
        terminal.finish(None)
    if message and stderr:
        fail(message)
    os._exit(status)


def read_from_server(link: Link, terminal: Terminal, state: ChatState,
                     dial: Optional[Callable[[], Connection]]) -> None:
    """The reader thread: show every line from the server. When the
    connection is lost, get back in through a new one from ``dial()`` (see
    :func:`reconnect`), if we may (:meth:`ChatState.may_resume`). When
    the chat ends for good, end the whole program, unless the user is
    leaving (the main thread ends it then)."""
    while True:
        problem = receive(link, terminal, state)
        link.lost()
        if link.leaving.is_set():
            break
        if state.shut_down or state.kicked:
            # The server's last line said it all; and a chat ended on
            # purpose is no error of ours (see the exit statuses above).
            exit_now(terminal, None, 0)
        if dial is None or not state.may_resume():
            exit_now(terminal, f"Disconnected: {problem}.", 1)
        try:
            if not reconnect(link, dial, terminal, state, problem):
                break  # the user left while we were reconnecting
        except JoinError as error:
            exit_now(terminal, f"Could not reconnect: {error}.", 1)
        except OutputClosed:
            exit_now(terminal, None, 1)  # nobody reads us: no use going on
    link.ended.set()  # leave() waits for this


def read_or_exit(link: Link, terminal: Terminal, state: ChatState,
                 dial: Optional[Callable[[], Connection]]) -> None:
    """:func:`read_from_server`, but an exception it did not expect ends
    the program, with the terminal put back and the reason on stderr: a
    client that stops reading and lingers would look alive but be deaf."""
    try:
        read_from_server(link, terminal, state, dial)
    except Exception as error:  # any bug: end cleanly, not deaf
        exit_now(terminal, f"client error: {type(error).__name__}:"
                           f" {error}", 1, stderr=True)


def start_reader(link: Link, terminal: Terminal, state: ChatState,
                 dial: Optional[Callable[[], Connection]] = None,
                 ) -> threading.Thread:
    """Start the reader thread (see read_from_server)."""
    reader = threading.Thread(target=read_or_exit, name="reader",
                              args=(link, terminal, state, dial),
                              daemon=True)
    start_thread(reader)
    return reader


def start_thread(thread: threading.Thread) -> None:
    """Start a thread that reads from the server, with the signals that
    belong to the main thread blocked in it."""
    # The kernel hands a signal to any thread that does not block it. Ctrl+C
    # (SIGINT), like SIGTERM, must reach the main thread: only there does it
    # interrupt input(). Window resizes (SIGWINCH) belong to readline, also
    # there. So a reader starts with them blocked: a new thread inherits
    # the signal mask of the thread that starts it.
    blocked = {getattr(signal, name)
               for name in ("SIGINT", "SIGTERM", "SIGWINCH")
               if hasattr(signal, name)}
    if hasattr(signal, "pthread_sigmask"):  # not on Windows
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    else:
        thread.start()


def help_lines() -> List[str]:
    """The lines of -help, with the commands of client.py itself."""
    return protocol.format_help(list(CLIENT_COMMANDS.values()))


def show_help(terminal: Terminal) -> None:
    """-help, answered locally so it works even if the server is gone."""
    terminal.show_lines([render(line, "", terminal.colour)
                         for line in help_lines()])


def toggle_timestamps(terminal: Terminal, state: ChatState) -> None:
    """``-time``: timestamps on or off."""
    state.timestamps = not state.timestamps
    show_notice(terminal, "Timestamps on." if state.timestamps
                else "Timestamps off.")


#: The commands client.py answers itself (``client`` is ``LOCAL`` in the
#: command table), so that they work with the server gone.
LOCAL_COMMANDS = {"help": show_help}


#: Shown for a line typed while the connection is down.
NOT_SENT = "Not sent: no connection to the server (reconnecting...)"


def handle_line(line: str, link: Link, terminal: Terminal,
                state: ChatState) -> bool:
    """Act on one typed line; False when the user asked to leave. What the
    client does with a command is said by its row of the command table.
    While the connection is down, a line is not sent, and the user is told
    so (it is not kept for later: by then it may not fit the talk)."""
    if not line.strip():
        return True  # nothing to say
    if line.strip().lower() == "-time":
        toggle_timestamps(terminal, state)
        return True
    command, spec = parse_typed(line)
    action = spec.client if spec is not None else protocol.SEND
    if command is not None and command.name in ("ignore", "unignore"):
        note_ignore(command, state)
    if action == protocol.LOCAL:
        LOCAL_COMMANDS[spec.name](terminal)  # type: ignore[union-attr]
        return True
    if action == protocol.LEAVE:
        return False
    if action == protocol.HIDE or _is_secret(line):  # -adminPW too
        terminal.forget_last_line()
    # "-to NICK" and "-all" change who plain lines go to; wait for the
    # server's answer so that the next prompt shows the right partner. A
    # private line: wait for its copy (or the error), so that it replaces
    # the typed line before the next prompt (see echo_for).
    wants_answer = (action == protocol.ROUTE and command is not None
                       and not command.text) or is_private(command, state)
    seen = state.replies
    try:
        link.send_line(line)
    except OSError:
        # The reader thread finds out too, and reconnects (or ends the
        # program): this line is lost, and the user must know it.
        show_notice(terminal, NOT_SENT)
        return True
    if wants_answer:
        state.wait_for_reply(seen, REPLY_TIMEOUT)
    return True


def is_private(command: Optional[protocol.Command],
               state: ChatState) -> bool:
    """Whether a typed command sends a private line."""
    if command is None:
        return False
    if command.name == "to":
        return bool(command.text)
    return command.name in ("say", "me") and bool(state.current_partner())


def note_ignore(command: protocol.Command, state: ChatState) -> None:
    """Keep our own list of whom we ignore, as typed (see
    :attr:`ChatState.ignoring`)."""
    words = (command.text or command.target).split()
    if len(words) != 1 or command.text and command.target:
        return  # "-ignore" alone lists them; more words, the server refuses
    nick = words[0]
    if command.name == "ignore":
        state.ignoring[fold(nick)] = nick
    else:
        state.ignoring.pop(fold(nick), None)


def chat(link: Link, terminal: Terminal, state: ChatState) -> None:
    """The main loop: read lines from the user and send them, until the
    user leaves (``-exit``, Ctrl+D, Ctrl+C, or the end of piped input)."""
    try:
        while True:
            prompt = state.prompt()
            line = terminal.read_line(prompt)
            if line is None:
                return
            # Make the line just typed read as what it did (see echo_for),
            # before sending it, so that the server's answer comes after.
            echo = echo_for(line, prompt, state.current_partner())
            if echo is not None:
                terminal.rewrite_typed(echo)
            if not handle_line(line, link, terminal, state):
                return
    except KeyboardInterrupt:
        return


def leave(link: Link) -> None:
    """Say goodbye: send -exit and wait briefly for the server to answer
    and close the connection (the reader thread prints the goodbye). With
    the connection down, just stop the reader thread from reconnecting."""
    if link.say_goodbye():
        link.ended.wait(LEAVE_TIMEOUT)


# --- Getting back in after a lost connection ---------------------------------
#
# A connection can drop without anyone wanting it to: a laptop's Wi-Fi
# changes, a router restarts. The server keeps the seat of a user whose
# connection dropped for a while (--resume-grace), with the lines that
# came for them, and gave each user a token on joining to claim it back.
# So the reader thread connects again, says "-resume TOKEN" where the
# nickname is asked, and the chat goes on: the server sends what was
# missed, then live lines. It tries again and again, waiting longer after
# each failure (so that a restarting server is not flooded), until
# RECONNECT_GIVE_UP.


def backoff_delays(first: float = RECONNECT_FIRST_DELAY,
                   longest: float = RECONNECT_LONGEST_DELAY,
                   give_up: float = RECONNECT_GIVE_UP) -> Iterator[float]:
    """The seconds to wait before each try to reconnect: ``first``, then
    twice the wait before, but never more than ``longest``; they add up
    to ``give_up`` and stop there (the last one is cut short to fit).
    With the defaults: 1, 2, 4, 8, 16, 30, 30, ..., 30, 29."""
    if first <= 0:
        raise ValueError("the first delay must be positive")
    total = 0.0
    delay = min(first, longest)
    while total < give_up:
        step = min(delay, give_up - total)
        yield step
        total += step
        delay = min(delay * 2, longest)


def first_delay() -> float:
    """Seconds before the first try: :data:`RECONNECT_FIRST_DELAY`, or
    what the environment variable ``CHAT_RECONNECT_FIRST_DELAY`` says (the
    tests make it short), if that is a number of seconds from more than 0
    up to :data:`RECONNECT_LONGEST_DELAY`."""
    try:
        seconds = float(os.environ.get(FIRST_DELAY_ENV, ""))
    except ValueError:
        return RECONNECT_FIRST_DELAY
    if 0 < seconds <= RECONNECT_LONGEST_DELAY:  # False for NaN, too
        return seconds
    return RECONNECT_FIRST_DELAY


def reconnect(link: Link, dial: Callable[[], Connection], terminal: Terminal,
              state: ChatState, problem: str,
              delays: Optional[Iterable[float]] = None) -> bool:
    """Get back in the chat after the connection was lost (``problem``
    says how): wait, connect with ``dial()``, take the seat back
    (:func:`rejoin`); on failure wait longer, as ``delays`` says
    (:func:`backoff_delays` by default), and try again.

    Returns True once back in, with ``link`` going through the new
    connection; False if the user left meanwhile. Raises JoinError when
    it gives up: after :data:`RECONNECT_GIVE_UP` seconds, or when the
    server has forgotten the seat and refuses our nickname.
    """
    show_notice(terminal, f"Connection lost ({problem}); reconnecting...")
    deadline = time.monotonic() + RECONNECT_GIVE_UP
    for delay in backoff_delays(first_delay()) if delays is None else delays:
        # Tries take time too: the waits must not carry us past the end.
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if link.leaving.wait(min(delay, left)):
            return False  # Ctrl+C, Ctrl+D or -exit while we wait
        try:
            conn = dial()
        except OSError as error:
            problem = str(error)
            continue
        if not link.attempt(conn):
            conn.close()
            return False
        try:
            rejoin(conn, terminal, state)
        except (OSError, protocol.FramingError) as error:
            conn.close()
            problem = _reason(error)
            continue  # worth another try (if the user left, we stop there)
        except JoinError:
            conn.close()
            raise
        if link.rejoined():
            return True
        # The user chose to leave while we were taking the seat back: leave
        # it, or the server would keep it for nobody.
        try:
            conn.send_line("-exit")
        except OSError:
            pass
        return False
    raise JoinError(f"gave up after {RECONNECT_GIVE_UP:g} s; the last try:"
                    f" {problem}")


def rejoin(conn: Connection, terminal: Terminal, state: ChatState) -> None:
    """Take our seat back on a new connection: answer the nickname prompt
    with ``-resume TOKEN``. A server that does not know the token (it has
    restarted, or we were away longer than it keeps seats) asks for a
    nickname again: then join again, under the same nickname.

    Returns once the server has welcomed us (the welcome is shown; what
    follows it, such as the lines missed while away, is left for the
    reader to show). Raises JoinError if the nickname is refused, and
    OSError if the connection fails or the server is silent for
    :data:`REJOIN_TIMEOUT` seconds: worth another try.
    """
    # What to say at each nickname prompt, in turn.
    answers = [f"-resume {state.token}", state.nick]
    conn.sock.settimeout(REJOIN_TIMEOUT)
    while True:
        line = conn.read_line()
        if line is None:
            raise ConnectionError(CLOSED_BY_SERVER)
        if protocol.welcomed_nick(line) is not None:
            conn.sock.settimeout(None)  # from now on, wait as long as it takes
            show_server_line(line, terminal, state)
            return
        if line == protocol.format_nick_prompt() and answers:
            conn.send_line(answers.pop(0))
        elif line == protocol.format_resume_refused():
            show_notice(terminal, (
                f"The server did not keep your seat (it may have restarted):"
                f" joining again as {state.nick}; what was sent to you"
                f" meanwhile is lost."))
        elif line.startswith(protocol.ERROR) and not answers:
            raise JoinError(sanitize(line[len(protocol.ERROR):]))


# --- Command line ------------------------------------------------------------


def port_number(text: str) -> int:
    """argparse type for a TCP port."""
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError("a port is a number from 1 to 65535")
    return port


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    help_lines = protocol.help_lines()
    width = max(len(usage) for usage, _ in help_lines)
    commands = "\n".join(f"  {usage.ljust(width)}  {what}"
                         for usage, what in help_lines
                         + list(CLIENT_COMMANDS.values()))
    parser = argparse.ArgumentParser(
        description="Chat in the terminal with the users of a chat server.",
        epilog="commands, once in the chat:\n" + commands,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--host", default=protocol.DEFAULT_HOST,
        help="name or address of the chat server (default %(default)s)")
    parser.add_argument(
        "--port", type=port_number, default=protocol.DEFAULT_PORT,
        help="TCP port of the chat server (default %(default)s)")
    parser.add_argument(
        "--nick",
        help="nickname to join with; without it you are asked (or, when"
             " input is piped, its first line is the nickname)")
    parser.add_argument(
        "--tls", action="store_true",
        help="encrypt the connection with TLS and check the server's"
             " certificate (against the system's certificate authorities,"
             " or --cafile)")
    parser.add_argument(
        "--cafile", metavar="FILE",
        help="with --tls: trust the certificates in FILE (PEM) instead of"
             " the system's; for a server with a self-signed certificate,"
             " give its certificate: --cafile server.pem")
    parser.add_argument(
        "--timestamps", action="store_true",
        help="show the time (HH:MM) before each line; -time in the chat"
             " turns it on and off")
    parser.add_argument(
        "--bell", choices=BELL_CHOICES, default="pm",
        help="ring the terminal's bell on a private message (pm, the"
             " default), also when your nickname is mentioned (mention), on"
             " every message (all), or never (off)")
    parser.add_argument(
        "--insecure", action="store_true",
        help="with --tls: do NOT check who the server is (encrypted, but"
             " anyone in between can read and change it); for tests only")
    args = parser.parse_args(argv)
    if (args.cafile or args.insecure) and not args.tls:
        parser.error("--cafile and --insecure go with --tls")
    if args.cafile and args.insecure:
        parser.error("--cafile and --insecure exclude each other")
    if args.host.startswith("[") and args.host.endswith("]"):
        args.host = args.host[1:-1]  # [::1], as in an address with a port
    return args


#: Printed on stderr for --insecure.
INSECURE_WARNING = (
    "WARNING: --insecure: the server's identity is NOT checked; anyone on"
    " the network can read and change your messages")


def fail(message: str) -> int:
    """Report a fatal problem in one line on stderr; the exit status."""
    print(f"client.py: {message}", file=sys.stderr, flush=True)
    return 1


def main(argv: Optional[List[str]] = None) -> int:
    """Run the client; returns the exit status."""
    args = parse_args(argv)
    terminal = Terminal(interactive=sys.stdin.isatty(),
                        colour=wants_colour(sys.stdout))
    # "kill PID" makes the client leave politely too, as Ctrl+C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    tls_context = None
    if args.tls:
        try:
            tls_context = make_tls_context(args.cafile, args.insecure)
        except OSError as error:  # ssl.SSLError too
            reason = (ssl_reason(error) if isinstance(error, ssl.SSLError)
                      else error.strerror or str(error))
            return fail(f"cannot use --cafile {args.cafile}: {reason}")
        if args.insecure:
            print(INSECURE_WARNING, file=sys.stderr, flush=True)
    try:
        conn = connect(args.host, args.port, tls_context, args.cafile)
    except OSError as error:
        return fail(str(error))
    try:
        if tls_context is not None:
            checked = ("but the server's identity was NOT checked"
                       if args.insecure else "server certificate checked")
            show_notice(terminal, (
                f"Connected to {format_address(args.host, args.port)} over"
                f" TLS ({checked})."))

        def dial() -> Connection:
            """A new connection to the same server, the same way."""
            return connect(args.host, args.port, tls_context, args.cafile)

        return run(conn, terminal, args.nick, dial,
                   ChatState("", args.timestamps, args.bell))
    except OutputClosed:
        return 1  # nobody reads our output, and we are not in the chat yet
    finally:
        conn.close()


def run(conn: Connection, terminal: Terminal, nick: Optional[str],
        dial: Optional[Callable[[], Connection]] = None,
        state: Optional[ChatState] = None) -> int:
    """Join the chat, then chat until the user leaves; the exit status.
    ``dial()`` opens a new connection to the same server, to get back in
    after a lost one; without it, a lost connection ends the program.
    ``state`` carries the user's choices (timestamps, bell), if any."""
    if nick is None and not terminal.interactive:
        nick = terminal.read_line("")  # piped: the first line is the nick
        if nick is None:
            return fail("no nickname: the input is empty")
    try:
        nick = register(conn, terminal, nick)
    except KeyboardInterrupt:
        return 0
    except JoinError as error:
        return fail(f"cannot join the chat: {error}")
    except OSError as error:
        return fail(f"connection lost: {error.strerror or error}")
    if nick is None:
        return 0
    state = state or ChatState(nick)
    state.nick = nick
    terminal.set_completer(Completer(state.roster,
                                     terminal.completing_line_start,
                                     CLIENT_COMMANDS).complete)
    link = Link(conn)
    reader: Optional[threading.Thread] = None
    try:
        try:
            # The lines that came with the welcome (commands, who is
            # online) are shown now, so that the first prompt comes after.
            for line in conn.take_received():
                show_server_line(line, terminal, state)
            reader = start_reader(link, terminal, state, dial)
            chat(link, terminal, state)
        except OutputClosed:
            # Nobody reads our output any more (it is a pipe whose reader
            # has ended): leave the chat now, quietly. The reader thread
            # takes the server's goodbye (to the null device) and tells
            # leave() that it came.
            if reader is None:
                reader = start_reader(link, terminal, state, dial)
        leave(link)
    except KeyboardInterrupt:
        pass  # Ctrl+C again while leaving: do not wait any longer
    # Closing the socket wakes the reader thread if it is still waiting;
    # wait for it, so that it is not cut off halfway through printing.
    link.close()
    if reader is not None:
        reader.join(LEAVE_TIMEOUT)
    return 1 if terminal.output_closed else 0


if __name__ == "__main__":
    try:
        try:
            status = main()
        finally:
            # Flush here rather than at exit, where a BrokenPipeError could
            # only be reported (for output the Terminal did not write, such
            # as --help, to a pipe closed early).
            sys.stdout.flush()
    except BrokenPipeError:
        # Nobody reads our output: end quietly, as the Python documentation
        # advises, with stdout on the null device for the final flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 1
    sys.exit(status)
