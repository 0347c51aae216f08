"""Unit tests of transport.py over socket pairs: framing, TLS over memory
buffers, the handshake's total deadline, and the TCP settings.

No server runs here. TLS runs between the two ends of a
``socket.socketpair()`` with the test certificate of tests/tls (CN
localhost), each end's handshake in its own thread. Nothing sleeps to
synchronise: a sleep only paces the attacker that trickles bytes. Every
wait has a deadline, every loop a bound, and every socket is closed.
"""

from __future__ import annotations

import os
import random
import socket
import ssl
import struct
import threading
import time
from typing import Callable, Iterator, List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import transport
from helpers import ROOT
from protocol import OVERLONG, FramingError
from transport import LineDecoder, LineSocket, TLSLayer, handshake

TLS_DIR = os.path.join(ROOT, "tests", "tls")
CERT = os.path.join(TLS_DIR, "cert.pem")
KEY = os.path.join(TLS_DIR, "key.pem")
#: Seconds any single wait may take before the test fails: a hang guard.
HANG = 3.0

SocketPair = Tuple[socket.socket, socket.socket]
#: Server socket, server TLS, client socket, client TLS.
TLSPair = Tuple[socket.socket, TLSLayer, socket.socket, TLSLayer]


# --- Fixtures and helpers ----------------------------------------------------


@pytest.fixture(scope="module")
def server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(CERT, KEY)
    return context


@pytest.fixture(scope="module")
def client_context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=CERT)


@pytest.fixture
def sockets() -> Iterator[Callable[[], SocketPair]]:
    """``sockets()``: a fresh socket pair, both ends closed afterwards."""
    made: List[socket.socket] = []

    def make() -> SocketPair:
        pair = socket.socketpair()
        made.extend(pair)
        return pair

    yield make
    for sock in made:
        sock.close()


def in_threads(*calls: Callable[[], None]) -> None:
    """Run each call in its own thread; fail if one raises or hangs."""
    errors: List[BaseException] = []

    def run(call: Callable[[], None]) -> None:
        try:
            call()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(call,), daemon=True)
               for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG)
    assert not any(thread.is_alive() for thread in threads), "a hang"
    assert not errors, errors


@pytest.fixture
def tls_pair(sockets, server_context, client_context) -> TLSPair:
    """Two ends of a socket pair after a TLS handshake through
    :func:`transport.handshake`, each run in its own thread."""
    server_sock, client_sock = sockets()
    server_tls = TLSLayer(server_context, server_side=True)
    client_tls = TLSLayer(client_context, server_hostname="localhost")
    in_threads(lambda: handshake(server_sock, server_tls, HANG),
               lambda: handshake(client_sock, client_tls, HANG))
    server_sock.settimeout(HANG)  # hang guards for what follows
    client_sock.settimeout(HANG)
    return server_sock, server_tls, client_sock, client_tls


class StdlibClient:
    """The client end of a TLS connection made of the standard library's
    ``SSLObject`` alone (not :class:`TLSLayer`): a peer that can say
    close_notify."""

    def __init__(self, sock: socket.socket,
                 context: ssl.SSLContext) -> None:
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing,
                                    server_hostname="localhost")

    def handshake(self) -> None:
        self.sock.settimeout(HANG)
        for _ in range(50):
            try:
                self.tls.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            self.sock.sendall(self.outgoing.read())
            if done:
                return
            data = self.sock.recv(1 << 16)
            assert data, "the server closed during the handshake"
            self.incoming.write(data)
        raise AssertionError("the handshake did not end")

    def record(self, data: bytes) -> bytes:
        """The bytes that carry ``data`` (sent by the caller)."""
        self.tls.write(data)
        return self.outgoing.read()

    def close_notify(self) -> bytes:
        """The bytes of a close_notify alert (sent by the caller)."""
        try:
            self.tls.unwrap()
        except ssl.SSLWantReadError:
            pass  # it waits for ours; the alert is written already
        return self.outgoing.read()


@pytest.fixture
def stdlib_pair(sockets, server_context, client_context
                ) -> Tuple[socket.socket, TLSLayer, StdlibClient]:
    """A server end (:class:`TLSLayer`, :func:`handshake`) and a
    :class:`StdlibClient`, after their handshake."""
    server_sock, client_sock = sockets()
    server_tls = TLSLayer(server_context, server_side=True)
    client = StdlibClient(client_sock, client_context)
    in_threads(lambda: handshake(server_sock, server_tls, HANG),
               client.handshake)
    server_sock.settimeout(HANG)
    return server_sock, server_tls, client


def forged_record(size: int = 64) -> bytes:
    """An application-data record header (TLS 1.2 on the wire, as TLS 1.3
    sends too) with random bytes where the encrypted payload should be."""
    return (b"\x17\x03\x03" + struct.pack("!H", size)
            + random.Random(size).randbytes(size))


# --- LineDecoder without TLS -------------------------------------------------


def test_decoder_frames_lines_across_chunk_boundaries():
    """Lines cut anywhere by ``recv`` come out whole, once, in order, and
    only when their newline has come; ``\\r`` stays for the caller."""
    decoder = LineDecoder()
    assert decoder.feed(b"hel") == []
    assert decoder.framer.pending == 3
    assert decoder.feed(b"lo\nwor") == [b"hello"]
    assert decoder.feed(b"ld") == []
    assert decoder.feed(b"\n\nthree\r\nfo") == [b"world", b"", b"three\r"]
    assert decoder.feed(b"") == []
    assert decoder.feed(b"ur\n") == [b"four"]
    assert decoder.framer.pending == 0
    assert not decoder.ended


def test_decoder_reports_an_overlong_line_once_and_recovers():
    """A line over ``max_line`` is reported once, as OVERLONG, as soon as
    it passes the limit; the rest of it is dropped, the next line is
    whole, and no more than ``max_line`` bytes are ever held."""
    decoder = LineDecoder(max_line=10, max_discard=1000)
    assert decoder.feed(b"0123456789") == []  # exactly the limit: kept
    assert decoder.feed(b"A") == [OVERLONG]
    assert decoder.framer.pending == 0
    assert decoder.feed(b"B" * 100) == []
    assert decoder.feed(b"C\nnext\n") == [b"next"]
    assert decoder.feed(b"0123456789\n") == [b"0123456789"]


def test_decoder_raises_framing_error_for_an_endless_line():
    """Bytes without a newline, fed in chunks: FramingError once more than
    ``max_discard`` of them have gone by, not before."""
    decoder = LineDecoder(max_line=10, max_discard=100)
    fed = 0
    with pytest.raises(FramingError):
        for _ in range(100):  # 700 bytes at most
            decoder.feed(b"x" * 7)
            fed += 7
    assert 100 < fed + 7 <= 107
    assert decoder.framer.pending == 0


# --- TLS ---------------------------------------------------------------------


def test_tls_handshake_then_lines_both_ways(tls_pair):
    """After :func:`handshake` on both ends of a socket pair (server
    certificate verified for "localhost"), a :class:`LineSocket` on each
    end sends and receives lines both ways, in order, encrypted."""
    server_sock, server_tls, client_sock, client_tls = tls_pair
    server = LineSocket(server_sock, server_tls)
    client = LineSocket(client_sock, client_tls)
    for number in range(20):
        client.send_line(f"from client {number}")
        server.send_line(f"from server {number} – ünïcode")
    for number in range(20):
        assert server.read_line() == f"from client {number}"
        assert client.read_line() == f"from server {number} – ünïcode"
    # On the wire the text is encrypted.
    client_tls_bytes = client_tls.encrypt(b"secret words\n")
    assert b"secret words" not in client_tls_bytes
    client_sock.sendall(client_tls_bytes)
    assert server.read_line() == "secret words"


def test_lines_sent_with_the_end_of_the_handshake_are_not_lost(
        sockets, server_context, client_context):
    """A client that sends a line in the same segment as its last
    handshake message: the server's handshake receives both at once, and
    the line is not lost (its :class:`LineSocket` holds it already)."""
    server_sock, client_sock = sockets()
    server_tls = TLSLayer(server_context, server_side=True)
    client_tls = TLSLayer(client_context, server_hostname="localhost")

    def client_handshake_and_line() -> None:
        client_sock.settimeout(HANG)
        done, reply = client_tls.step()
        for _ in range(50):
            if done:
                client_sock.sendall(
                    reply + client_tls.encrypt(b"early line\nsecond\n"))
                return
            client_sock.sendall(reply)
            data = client_sock.recv(1 << 16)
            assert data
            done, reply = client_tls.step(data)
        raise AssertionError("the client handshake did not end")

    in_threads(lambda: handshake(server_sock, server_tls, HANG),
               client_handshake_and_line)
    server_sock.settimeout(HANG)
    server = LineSocket(server_sock, server_tls)
    assert server.take_received() == ["early line", "second"]
    client = LineSocket(client_sock, client_tls)
    client.send_line("later")
    assert server.read_line() == "later"


@pytest.mark.parametrize("timeout_before", [None, 7.0])
def test_handshake_deadline_holds_against_a_trickling_peer(
        sockets, server_context, timeout_before):
    """A peer sending a TLS record header and then junk, one byte every
    0.1 s: each byte arrives well within any per-recv timeout, yet
    ``handshake(seconds=0.5)`` raises socket.timeout at its total
    deadline, and leaves the socket's timeout as it found it."""
    victim, attacker = sockets()
    victim.settimeout(timeout_before)
    tls = TLSLayer(server_context, server_side=True)
    # A handshake record of 200 bytes: never complete at this pace.
    payload = b"\x16\x03\x01\x00\xc8" + bytes(range(1, 36))  # 40 bytes
    stop = threading.Event()

    def trickle() -> None:
        for byte in payload:  # bounded: 4 s at most
            if stop.wait(0.1):
                return
            try:
                attacker.send(bytes([byte]))
            except OSError:
                return

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    pieces: List[bytes] = []
    started = time.monotonic()
    try:
        with pytest.raises(socket.timeout):
            handshake(victim, tls, 0.5, received=pieces.append)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        trickler.join(HANG)
    assert 0.45 <= elapsed < HANG
    assert len(pieces) >= 3  # it was trickling, not silent
    assert b"".join(pieces) == payload[:len(b"".join(pieces))]
    assert victim.gettimeout() == timeout_before


def test_handshake_raises_connection_error_when_the_peer_closes(
        sockets, server_context):
    """A peer that closes during the handshake: ConnectionError at once
    (not a timeout), the socket's timeout left as it was."""
    victim, peer = sockets()
    peer.close()
    tls = TLSLayer(server_context, server_side=True)
    started = time.monotonic()
    with pytest.raises(ConnectionError):
        handshake(victim, tls, HANG)
    assert time.monotonic() - started < HANG / 2
    assert victim.gettimeout() is None


def test_forged_record_makes_the_decoder_raise_ssl_error(tls_pair):
    """An application-data record of random bytes after the handshake (an
    attacker in the middle) is not taken as text: LineDecoder.feed raises
    ssl.SSLError (not the "want more" kind)."""
    server_sock, server_tls, client_sock, client_tls = tls_pair
    decoder = LineDecoder(server_tls)
    assert decoder.feed(client_tls.encrypt(b"genuine\n")) == [b"genuine"]
    with pytest.raises(ssl.SSLError) as caught:
        decoder.feed(forged_record())
    assert not isinstance(caught.value, ssl.SSLWantReadError)


def test_forged_record_makes_read_line_raise_os_error(tls_pair):
    """The same forged record on the wire, after a genuine line:
    LineSocket.read_line returns the genuine line, then raises an OSError
    (an SSLError, not a timeout) rather than returning text or hanging."""
    server_sock, server_tls, client_sock, client_tls = tls_pair
    server = LineSocket(server_sock, server_tls)
    client_sock.sendall(client_tls.encrypt(b"genuine\n"))
    assert server.read_line() == "genuine"
    client_sock.sendall(forged_record())
    with pytest.raises(OSError) as caught:
        server.read_line()
    assert isinstance(caught.value, ssl.SSLError)
    assert not isinstance(caught.value, socket.timeout)


def test_close_notify_ends_the_decoder_and_read_line(stdlib_pair):
    """The peer's close_notify, its socket still open: the decoder's
    ``ended`` turns true, and read_line returns None (without waiting
    for the socket to close)."""
    server_sock, server_tls, client = stdlib_pair
    server = LineSocket(server_sock, server_tls)
    client.sock.sendall(client.record(b"hello\n"))
    assert server.read_line() == "hello"
    client.sock.sendall(client.close_notify())
    assert server.read_line() is None
    assert server._decoder.ended
    assert server.read_line() is None


def test_close_notify_sets_ended_on_a_fresh_decoder(stdlib_pair):
    """LineDecoder alone: a close_notify fed in gives no lines and sets
    ``ended``."""
    server_sock, server_tls, client = stdlib_pair
    decoder = LineDecoder(server_tls)
    assert decoder.feed(client.record(b"one\n")) == [b"one"]
    assert not decoder.ended
    assert decoder.feed(client.close_notify()) == []
    assert decoder.ended


def test_close_notify_with_the_last_line_sets_ended(stdlib_pair):
    """A last line and the close_notify in one feed: the line comes out
    and ``ended`` is true at once."""
    server_sock, server_tls, client = stdlib_pair
    decoder = LineDecoder(server_tls)
    data = client.record(b"last words\n") + client.close_notify()
    assert decoder.feed(data) == [b"last words"]
    assert decoder.ended


def test_close_notify_with_the_last_line_ends_read_line(stdlib_pair):
    """A peer that sends its last line and close_notify together and then
    waits for ours (as ``SSLSocket.unwrap`` does) with its socket open:
    read_line returns the line, then None, instead of waiting forever."""
    server_sock, server_tls, client = stdlib_pair
    server_sock.settimeout(0.5)  # the hang guard: it would block
    server = LineSocket(server_sock, server_tls)
    client.sock.sendall(client.record(b"last words\n")
                        + client.close_notify())
    assert server.read_line() == "last words"
    assert server.read_line() is None


# --- configure_socket --------------------------------------------------------


@pytest.fixture
def tcp_pair() -> Iterator[SocketPair]:
    """Two connected TCP sockets on 127.0.0.1 (through a listening socket
    on port 0, closed at once), closed afterwards."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        near = socket.create_connection(listener.getsockname(), HANG)
        far, _ = listener.accept()
    try:
        yield near, far
    finally:
        near.close()
        far.close()


def test_configure_socket_sets_nodelay_and_keepalive(tcp_pair):
    """configure_socket turns Nagle off and TCP keepalive on, with the
    probe timings where the platform has them."""
    near, far = tcp_pair
    assert not near.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert not near.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
    transport.configure_socket(near)
    assert near.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert near.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
    for name, value in (("TCP_KEEPIDLE", transport.KEEPALIVE_IDLE),
                        ("TCP_KEEPINTVL", transport.KEEPALIVE_INTERVAL),
                        ("TCP_KEEPCNT", transport.KEEPALIVE_PROBES)):
        if hasattr(socket, name):
            assert near.getsockopt(socket.IPPROTO_TCP,
                                   getattr(socket, name)) == value
    assert not far.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_configure_socket_without_keepalive(tcp_pair):
    """With ``keepalive=False`` only Nagle is turned off."""
    near, _ = tcp_pair
    transport.configure_socket(near, keepalive=False)
    assert near.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert not near.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)


def test_configure_socket_does_not_raise_for_other_sockets(sockets):
    """A socket that has no TCP options (a Unix socket pair's end):
    configure_socket leaves it be instead of raising."""
    near, _ = sockets()
    transport.configure_socket(near)


# --- LineDecoder under hypothesis --------------------------------------------


def expected_frames(chunks: List[bytes], max_line: int,
                    max_discard: int) -> Tuple[List[object], bool]:
    """What the decoder must return for ``chunks`` in total, and whether
    it must raise FramingError: the documented rules, stated plainly."""
    frames: List[object] = []
    partial = b""
    for chunk in chunks:
        *complete, rest = chunk.split(b"\n")
        for piece in complete:
            whole, partial = partial + piece, b""
            if len(whole) <= max_line:
                frames.append(whole)
            elif len(whole) - len(piece) <= max_line:
                frames.append(OVERLONG)  # it passed the limit here
        if len(partial) <= max_line < len(partial + rest):
            frames.append(OVERLONG)
        partial += rest
        if len(partial) > max_discard:
            return frames, True
    return frames, False


PIECES = st.sampled_from([b"\n", b"\r\n", b"a", b"bcd", b"\xff\x00",
                          b"x" * 9, b"y" * 30])
CHUNKS = st.lists(st.one_of(st.binary(max_size=40),
                            st.lists(PIECES, max_size=10).map(b"".join)),
                  max_size=30)


@settings(max_examples=100, deadline=None)
@given(chunks=CHUNKS, max_line=st.integers(1, 32),
       extra=st.integers(0, 64))
def test_decoder_fed_arbitrary_chunks(chunks, max_line, extra):
    """Whatever bytes come in whatever chunks, LineDecoder (no TLS) raises
    nothing but FramingError, never holds more than ``max_line`` bytes,
    and returns exactly the lines the framing rules give."""
    max_discard = max_line + extra
    decoder = LineDecoder(max_line=max_line, max_discard=max_discard)
    frames: List[object] = []
    raised = False
    for chunk in chunks:
        try:
            frames.extend(decoder.feed(chunk))
        except FramingError:
            raised = True
            break
        assert decoder.framer.pending <= max_line
    expected, must_raise = expected_frames(chunks, max_line, max_discard)
    assert raised == must_raise
    if not raised:
        assert frames == expected
    assert not decoder.ended
