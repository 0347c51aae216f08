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
whether the server has answered a ``-to``); and if the server goes away,
it ends the whole program, since the main thread is stuck in ``input()``.

Before that comes joining: :func:`connect` opens the :class:`Connection`,
and :func:`register` agrees on a nickname with the server, asking you at a
``nickname> `` prompt when needed.

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
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import ssl
import sys
import threading
from typing import List, Optional, Tuple

import protocol
import transport
from terminal import (OutputClosed, Terminal, local_notice, render, sanitize,
                      wants_colour)

#: Seconds to wait for the TCP connection to be set up, and then again for
#: the TLS handshake.
CONNECT_TIMEOUT = 10.0
#: Seconds without a word from the server after connecting before we say
#: that we are still waiting (a TLS server waits for a TLS client to speak
#: first, so a plain client hears nothing until the server gives up).
SLOW_SERVER_HINT = 3.0
#: Seconds to wait for the server's goodbye after sending ``-exit``.
LEAVE_TIMEOUT = 2.0
#: Seconds to wait for the server to confirm ``-to NICK`` or ``-all``
#: before showing the next prompt (so the prompt names the right partner).
REPLY_TIMEOUT = 1.0
#: Longest server line we keep. The server's own lines can be longer than
#: what users may send (``-users`` in a big room), so be generous.
MAX_SERVER_LINE = 1024 * 1024
#: Bytes of one endless line we skip before deciding the server is broken.
MAX_SERVER_DISCARD = 16 * 1024 * 1024


# --- The connection ----------------------------------------------------------


def format_address(host: str, port: int) -> str:
    """``127.0.0.1:4321``, ``localhost:4321`` or ``[::1]:4321``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


#: The connection to the server: a socket read and written as lines (and
#: encrypted with TLS); one thread may read while another sends.
Connection = transport.LineSocket


def make_tls_context(cafile: Optional[str] = None,
                     insecure: bool = False) -> ssl.SSLContext:
    """A client context: TLS 1.2 or newer; the server's certificate is
    checked against ``cafile`` (PEM), or the system's authorities, and must
    name the host we connect to. ``insecure`` turns all checking off.
    Raises OSError (ssl.SSLError for a file that holds no certificate)."""
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


#: Verification failures where trusting the right certificate is the fix.
_UNTRUSTED_CODES = {
    2,   # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
    18,  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
    19,  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
    20,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21,  # X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
}
_NAME_MISMATCH_CODES = {62, 64}  # X509_V_ERR_HOSTNAME/IP_ADDRESS_MISMATCH


def _ssl_reason(error: ssl.SSLError) -> str:
    """An OpenSSL error as one short phrase: ``wrong version number``."""
    text = str(error.args[1] if len(error.args) > 1 else error)
    text = re.sub(r"^\[[A-Z0-9_]+: [A-Z0-9_]+\] ", "", text)
    return re.sub(r" \(_ssl\.c:\d+\)$", "", text)


def _certificate_problem(error: ssl.SSLCertVerificationError,
                         where: str) -> str:
    """One line for a certificate the server showed that we do not trust."""
    why = (error.verify_message or _ssl_reason(error)).rstrip(".")
    message = f"{where}: certificate verify failed: {why}"
    if error.verify_code in _UNTRUSTED_CODES:
        message += ("; for a self-signed server use --cafile server.pem"
                    " (the server's certificate)")
    elif error.verify_code in _NAME_MISMATCH_CODES:
        message += ("; connect with --host set to a name the certificate"
                    " is for")
    return message


def _looks_like_text(data: bytes) -> bool:
    """True for the start of a plain-text chat line (``* ...``, ``! ...``)
    rather than a TLS record."""
    return data[:2] in (protocol.NOTICE.encode(), protocol.ERROR.encode())


def start_tls(sock: socket.socket, host: str, where: str,
              context: ssl.SSLContext) -> transport.TLSLayer:
    """Run the TLS handshake on a connected socket, all of it within the
    socket's timeout. Raises OSError with one line fit to show."""
    tls = transport.TLSLayer(context, server_hostname=host)
    first: List[bytes] = []
    seconds = sock.gettimeout() or CONNECT_TIMEOUT
    hint = " (is the server running with TLS?)"
    try:
        transport.handshake(sock, tls, seconds, received=first.append)
        return tls
    except ssl.SSLCertVerificationError as error:
        try:  # tell the server why (an alert), so that its log says so
            sock.sendall(tls.encrypt(b""))
        except OSError:
            pass
        raise OSError(_certificate_problem(error, where)) from None
    except ssl.SSLError as error:
        if first and _looks_like_text(first[0]):
            reason = "the server answered in plain text"
            hint = " (it is not running with TLS: connect without --tls)"
        else:
            reason = _ssl_reason(error)
    except socket.timeout:
        reason = f"no answer in {seconds:g} s"
    except ConnectionError:
        reason = "the server closed the connection"
    except OSError as error:
        reason = error.strerror or str(error)
    raise OSError(f"TLS handshake with {where} failed: {reason}{hint}")


def connect(host: str, port: int,
            tls_context: Optional[ssl.SSLContext] = None) -> Connection:
    """Connect to the server, over TLS with ``tls_context``. Raises OSError
    with a message fit to show."""
    where = format_address(host, port)
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except socket.gaierror as error:
        raise OSError(f"cannot find host {host!r}: {error.strerror}") from None
    except socket.timeout:
        raise OSError(f"cannot connect to {where}: timed out") from None
    except ConnectionRefusedError:
        raise OSError(f"cannot connect to {where}: connection refused (is"
                      " the server running?)") from None
    except OSError as error:
        raise OSError(f"cannot connect to {where}:"
                      f" {error.strerror or error}") from None
    # Chat lines are small: send each one at once instead of letting the
    # kernel wait to batch them (Nagle's algorithm).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tls = None
    if tls_context is not None:
        try:
            tls = start_tls(sock, host, where, tls_context)  # with timeout
        except OSError:
            sock.close()
            raise
    sock.settimeout(None)  # from now on, block until something arrives
    return Connection(sock, tls, MAX_SERVER_LINE, MAX_SERVER_DISCARD)


# --- Choosing a nickname -----------------------------------------------------


#: The prompt for a nickname, under the server's question.
NICK_PROMPT = "nickname> "


class JoinError(Exception):
    """Could not join the chat; ``str(error)`` says why."""


def register(conn: Connection, terminal: Terminal,
             nick: Optional[str]) -> Optional[str]:
    """Choose a nickname with the server and return the one it welcomed.

    ``nick`` (from ``--nick`` or the first piped line) is tried first; after
    that, or without it, the user is asked, if there is a terminal to ask
    on. Returns None if the user gave up (Ctrl+D). Raises JoinError.
    """
    first = True
    while True:
        line = _first_line(conn, terminal) if first else conn.read_line()
        first = False
        if line is None:
            raise JoinError("the server closed the connection")
        if line == protocol.format_tls_required():
            # We spoke plain text to a TLS server; it said so, and closes.
            raise JoinError(sanitize(line[len(protocol.ERROR):]))
        if protocol.welcomed_nick(line) is not None:
            terminal.show(render(line, "", terminal.colour))
            return protocol.welcomed_nick(line)
        if line == protocol.format_nick_prompt():
            if nick is None:
                if not terminal.interactive:
                    raise JoinError("no nickname accepted")
                # The server's question on a line of its own, then a short
                # prompt in the style of the chat's: as the prompt itself,
                # the question (65 columns) would leave too little room on
                # its row for a nickname, or wrap in a narrow terminal.
                terminal.show(render(line, "", terminal.colour))
                nick = terminal.ask(NICK_PROMPT)
                if nick is None or nick.lower() == "-exit":
                    return None  # Ctrl+D or -exit: the user gave up
            conn.send_line(nick)
            nick = None  # if refused, ask next time
        elif not terminal.interactive and line.startswith(protocol.ERROR):
            # Nobody to ask for another nickname: give up with the reason.
            raise JoinError(sanitize(line[len(protocol.ERROR):]))
        else:
            terminal.show(render(line, "", terminal.colour))


def _first_line(conn: Connection, terminal: Terminal) -> Optional[str]:
    """The server's first line. If it is slow to come, say that we are
    waiting, and why that may be: a TLS server says nothing to a plain
    client until its handshake times out."""
    if conn.tls is None:
        conn.sock.settimeout(SLOW_SERVER_HINT)
        try:
            return conn.read_line()
        except socket.timeout:
            terminal.show(render(local_notice(
                "Connected, waiting for the server to answer... (if it uses"
                " TLS, connect with --tls)"), "", terminal.colour))
        finally:
            conn.sock.settimeout(None)
    return conn.read_line()


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

    * ``-to NICK text`` reads as if typed at NICK's prompt, without the
      command: ``[to NICK]> text``; ``-all text`` as ``[everyone]> text``;
    * ``-admin PASSWORD`` reads ``-admin ********``: the password does not
      stay on the screen, and eight stars whatever its length;
    * a plain line stays as typed: the prompt says where it went (unless
      the partner changed while it was being typed, if the server was slow
      to confirm a ``-to``: then it gets the prompt of where it went);
    * other commands, and lines the server will refuse, stay as typed.

    ``prompt`` is the prompt the line was typed at; ``partner`` who plain
    lines go to now ("" for everyone).
    """
    command, spec = parse_typed(line)
    if command is None or spec is None:
        return None  # not sent, or the server answers with what is wrong
    if spec.client == protocol.ROUTE and command.text:
        # -to NICK text, -all text (whose target is "", everyone)
        return prompt_for(command.target) + command.text
    if spec.client == protocol.HIDE:
        return line.split(None, 1)[0] + " ********"
    if command.name == "say" and prompt_for(partner) != prompt:
        return prompt_for(partner) + line
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


class ChatState:
    """What the reader thread learns from the server that the main thread
    needs too: who plain lines go to, and whether the server answered."""

    def __init__(self, nick: str) -> None:
        self.nick = nick
        self.partner = ""  # "" means everyone
        self.replies = 0   # partner confirmations and errors seen so far
        self.leaving = threading.Event()  # we sent -exit
        self.closed = threading.Event()   # the reader saw the connection end
        self._changed = threading.Condition()

    def prompt(self) -> str:
        """``[everyone]> `` or ``[to bob]> ``."""
        return prompt_for(self.current_partner())

    def current_partner(self) -> str:
        """Who plain lines go to now; "" for everyone."""
        with self._changed:
            return self.partner

    def note(self, line: str) -> None:
        """Take in one server line (called by the reader thread). The
        partner changes only when the server confirms it, so a failed
        ``-to`` leaves it as it was."""
        change = protocol.partner_change(line)
        if change is None and not line.startswith(protocol.ERROR):
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


def show_server_line(line: str, terminal: Terminal,
                     state: ChatState) -> None:
    """Take note of one line from the server, and show it."""
    state.note(line)
    terminal.show(render(line, state.nick, terminal.colour))


def read_from_server(conn: Connection, terminal: Terminal,
                     state: ChatState) -> None:
    """The reader thread: print every line from the server until the
    connection ends; then, unless we are leaving, end the whole program."""
    shut_down = False
    lost = ""
    unread = False  # we leave because nobody reads our output
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
                if not state.leaving.is_set():
                    unread = True
                    say_goodbye(conn, state)
                    conn.sock.settimeout(LEAVE_TIMEOUT)  # for recv()
            shut_down = shut_down or protocol.is_shutdown(line)
    except (OSError, protocol.FramingError) as error:
        lost = f" ({getattr(error, 'strerror', None) or error})"
    if unread:
        # As below: the main thread may be blocked reading input, so end
        # the program from here, quietly (there is nobody to tell).
        terminal.finish(None)
        os._exit(1)
    if state.leaving.is_set():
        state.closed.set()  # the main thread is waiting for this
        return
    # The server went away on its own. The main thread is most likely
    # blocked in input(), and there is no portable way to wake it up, so we
    # end the process from here: restore the terminal (readline had changed
    # its settings and will not get to put them back), flush the output and
    # exit at once with os._exit(), which does not wait for the main thread.
    # It is also robust: it works whatever the main thread is doing.
    if shut_down:
        terminal.finish(None)  # the server's notice was already printed
        os._exit(0)
    if lost:
        message = "Connection to the server lost" + lost + "."
    else:
        message = "Disconnected: the server closed the connection."
    terminal.finish(render(local_notice(message), "", terminal.colour))
    os._exit(1)


def start_reader(conn: Connection, terminal: Terminal,
                 state: ChatState) -> threading.Thread:
    """Start the reader thread (see read_from_server)."""
    reader = threading.Thread(target=read_from_server, name="reader",
                              args=(conn, terminal, state), daemon=True)
    # The kernel hands a signal to any thread that does not block it. Ctrl+C
    # (SIGINT), like SIGTERM, must reach the main thread: only there does it
    # interrupt input(). Window resizes (SIGWINCH) belong to readline, also
    # there. So the reader starts with them blocked: a new thread inherits
    # the signal mask of the thread that starts it.
    blocked = {getattr(signal, name)
               for name in ("SIGINT", "SIGTERM", "SIGWINCH")
               if hasattr(signal, name)}
    if hasattr(signal, "pthread_sigmask"):  # not on Windows
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            reader.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    else:
        reader.start()
    return reader


def show_help(terminal: Terminal) -> None:
    """-help, answered locally so it works even if the server is gone."""
    terminal.show_lines([render(line, "", terminal.colour)
                         for line in protocol.format_help()])


#: The commands client.py answers itself (``client`` is ``LOCAL`` in the
#: command table), so that they work with the server gone.
LOCAL_COMMANDS = {"help": show_help}


def handle_line(line: str, conn: Connection, terminal: Terminal,
                state: ChatState) -> bool:
    """Act on one typed line; False when the user asked to leave. What the
    client does with a command is said by its row of the command table."""
    if not line.strip():
        return True  # nothing to say
    command, spec = parse_typed(line)
    action = spec.client if spec is not None else protocol.SEND
    if action == protocol.LOCAL:
        LOCAL_COMMANDS[spec.name](terminal)  # type: ignore[union-attr]
        return True
    if action == protocol.LEAVE:
        return False
    if action == protocol.HIDE:
        terminal.forget_last_line()
    # "-to NICK" and "-all" change who plain lines go to; wait for the
    # server's answer so that the next prompt shows the right partner.
    changes_partner = (action == protocol.ROUTE and command is not None
                       and not command.text)
    seen = state.replies
    conn.send_line(line)
    if changes_partner:
        state.wait_for_reply(seen, REPLY_TIMEOUT)
    return True


def chat(conn: Connection, terminal: Terminal, state: ChatState) -> None:
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
            if not handle_line(line, conn, terminal, state):
                return
    except KeyboardInterrupt:
        return


def say_goodbye(conn: Connection, state: ChatState) -> bool:
    """Send -exit (and note that we are leaving); False if the connection
    is already gone."""
    state.leaving.set()
    try:
        conn.send_line("-exit")
        return True
    except OSError:
        return False


def leave(conn: Connection, state: ChatState) -> None:
    """Say goodbye: send -exit and wait briefly for the server to answer
    and close the connection (the reader thread prints the goodbye)."""
    if say_goodbye(conn, state):
        state.closed.wait(LEAVE_TIMEOUT)


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
                         for usage, what in help_lines)
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
            reason = (_ssl_reason(error) if isinstance(error, ssl.SSLError)
                      else error.strerror or str(error))
            return fail(f"cannot use --cafile {args.cafile}: {reason}")
        if args.insecure:
            print(INSECURE_WARNING, file=sys.stderr, flush=True)
    try:
        conn = connect(args.host, args.port, tls_context)
    except OSError as error:
        return fail(str(error))
    try:
        if tls_context is not None:
            checked = ("but the server's identity was NOT checked"
                       if args.insecure else "server certificate checked")
            terminal.show(render(local_notice(
                f"Connected to {format_address(args.host, args.port)} over"
                f" TLS ({checked})."), "", terminal.colour))
        return run(conn, terminal, args.nick)
    except OutputClosed:
        return 1  # nobody reads our output, and we are not in the chat yet
    finally:
        conn.close()


def run(conn: Connection, terminal: Terminal, nick: Optional[str]) -> int:
    """Join the chat, then chat until the user leaves; the exit status."""
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
    state = ChatState(nick)
    reader: Optional[threading.Thread] = None
    try:
        try:
            # The lines that came with the welcome (commands, who is
            # online) are shown now, so that the first prompt comes after.
            for line in conn.take_received():
                show_server_line(line, terminal, state)
            reader = start_reader(conn, terminal, state)
            chat(conn, terminal, state)
        except OutputClosed:
            # Nobody reads our output any more (it is a pipe whose reader
            # has ended): leave the chat now, quietly. The reader thread
            # takes the server's goodbye (to the null device) and tells
            # leave() that it came.
            if reader is None:
                reader = start_reader(conn, terminal, state)
        leave(conn, state)
    except OSError:
        # Sending failed: the connection is gone. The reader thread finds
        # out too and ends the program with the right message.
        if reader is not None:
            reader.join(LEAVE_TIMEOUT)
        return fail("connection lost")
    except KeyboardInterrupt:
        pass  # Ctrl+C again while leaving: do not wait any longer
    # Closing the socket wakes the reader thread if it is still waiting;
    # wait for it, so that it is not cut off halfway through printing.
    conn.close()
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
