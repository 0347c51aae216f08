"""wscodec.py, the WebSocket frame codec, with no sockets: frames made and read
back, fragmentation, masking, every way to be closed, and hypothesis on
arbitrary bytes (only WebSocketError, and memory bounded by the limit);
a message over the limit is dropped, unheld, as ``protocol.OVERLONG``."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocol
import wscodec as ws
from wscodec import Event, MessageDecoder, WebSocketError

LIMIT = 100


def masked(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    return ws.encode_frame(opcode, payload, fin, mask=b"\x01\x02\x03\x04")


#: Bytes of one message past which the connection is closed (1009).
DISCARD = LIMIT * 10


def closed_with(data: bytes, limit: int = LIMIT) -> int:
    with pytest.raises(WebSocketError) as caught:
        MessageDecoder(limit, DISCARD).feed(data)
    return caught.value.code


def test_accept_key_of_the_rfc_example():
    # RFC 6455 section 1.3.
    assert ws.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == \
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("key, valid", [
    ("dGhlIHNhbXBsZSBub25jZQ==", True),
    ("dGhlIHNhbXBsZSBub25jZQ", False),      # padding missing
    ("c2hvcnQ=", False),                    # 5 bytes
    ("not base64 at all!!!!!==", False),
    ("ключ", False),
])
def test_valid_key(key, valid):
    assert ws.valid_key(key) is valid


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_round_trip_at_every_length_encoding(size):
    payload = bytes(i % 251 for i in range(size)).decode("latin-1") \
        .encode("utf-8")[:size]
    text = payload.decode("utf-8", "ignore").encode("utf-8")
    decoder = MessageDecoder(len(text) + 1)
    assert decoder.feed(masked(ws.TEXT, text)) == [Event(ws.TEXT, text)]


def test_server_frames_are_unmasked_with_the_right_header():
    assert ws.text_frame(b"hi") == b"\x81\x02hi"
    assert ws.encode_frame(ws.TEXT, b"x" * 200)[:4] == b"\x81\x7e\x00\xc8"
    assert ws.close_frame(1000) == b"\x88\x02\x03\xe8"
    assert ws.encode_frame(ws.PING, b"", fin=True) == b"\x89\x00"


def test_masking_is_applied_and_undone():
    mask = b"\xff\x00\xff\x00"
    frame = ws.encode_frame(ws.TEXT, b"abcd", mask=mask)
    assert frame[2:6] == mask
    assert frame[6:] == bytes([ord("a") ^ 0xff, ord("b"), ord("c") ^ 0xff,
                               ord("d")])
    assert ws.apply_mask(frame[6:], mask) == b"abcd"


def test_bytes_arriving_one_at_a_time():
    data = masked(ws.TEXT, b"hello") + masked(ws.PING, b"p")
    decoder = MessageDecoder(LIMIT)
    events = []
    for index in range(len(data)):
        events += decoder.feed(data[index:index + 1])
    assert events == [Event(ws.TEXT, b"hello"), Event(ws.PING, b"p")]


def test_fragmented_message_with_a_ping_between_its_parts():
    data = (masked(ws.TEXT, b"he", fin=False)
            + masked(ws.PING, b"x")
            + masked(ws.CONTINUATION, b"l", fin=False)
            + masked(ws.CONTINUATION, b"lo"))
    assert MessageDecoder(LIMIT).feed(data) == [
        Event(ws.PING, b"x"), Event(ws.TEXT, b"hello")]


def test_utf8_split_across_fragments_is_fine():
    word = "привет".encode("utf-8")
    data = (masked(ws.TEXT, word[:3], fin=False)
            + masked(ws.CONTINUATION, word[3:]))
    assert MessageDecoder(LIMIT).feed(data) == [Event(ws.TEXT, word)]


def test_pong_and_close_events():
    decoder = MessageDecoder(LIMIT)
    data = (masked(ws.PONG, b"1")
            + masked(ws.CLOSE, struct.pack("!H", 1001) + "пока".encode())
            + masked(ws.TEXT, b"after the close"))
    assert decoder.feed(data) == [
        Event(ws.PONG, b"1"), Event(ws.CLOSE, "пока".encode(), 1001)]
    assert decoder.closed
    assert decoder.feed(masked(ws.TEXT, b"more")) == []


def test_close_without_a_code():
    assert MessageDecoder(LIMIT).feed(masked(ws.CLOSE)) == [
        Event(ws.CLOSE, b"", ws.NO_STATUS)]


@pytest.mark.parametrize("data, code", [
    (masked(ws.BINARY, b"\x00\x01"), ws.UNSUPPORTED_DATA),
    (ws.encode_frame(ws.TEXT, b"hi"), ws.PROTOCOL_ERROR),   # not masked
    (masked(ws.TEXT, b"\xff"), ws.INVALID_DATA),
    (masked(ws.TEXT, b"\xe2\x82", fin=False)
     + masked(ws.CONTINUATION, b"x"), ws.INVALID_DATA),
    (masked(ws.TEXT, b"x" * (LIMIT * 10 + 1)), ws.TOO_BIG),
    (masked(ws.TEXT, b"x" * 600, fin=False)
     + masked(ws.CONTINUATION, b"x" * 600), ws.TOO_BIG),
    (masked(ws.TEXT, b"x" * 200, fin=False)      # dropped, then not
     + masked(ws.TEXT, b"x"), ws.PROTOCOL_ERROR),  # a new message
    (masked(ws.CONTINUATION, b"x"), ws.PROTOCOL_ERROR),
    (masked(ws.TEXT, b"a", fin=False) + masked(ws.TEXT, b"b"),
     ws.PROTOCOL_ERROR),
    (masked(ws.PING, b"x" * 126), ws.PROTOCOL_ERROR),
    (masked(ws.PING, b"x", fin=False), ws.PROTOCOL_ERROR),
    (bytes([0x81 | 0x40, 0x80]) + b"\0" * 4, ws.PROTOCOL_ERROR),  # RSV1
    (bytes([0x83, 0x80]) + b"\0" * 4, ws.PROTOCOL_ERROR),   # opcode 3
    (masked(ws.CLOSE, b"\x03"), ws.PROTOCOL_ERROR),
    (masked(ws.CLOSE, struct.pack("!H", 1005)), ws.PROTOCOL_ERROR),
    (masked(ws.CLOSE, struct.pack("!H", 1000) + b"\xff"), ws.INVALID_DATA),
])
def test_every_way_to_be_closed(data, code):
    assert closed_with(data) == code


def test_a_huge_length_is_refused_on_the_header_alone():
    header = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", 1 << 62)
    assert closed_with(header) == ws.TOO_BIG
    header = bytes([0x81, 0x80 | 127]) + struct.pack(
        "!Q", protocol.MAX_DISCARD_BYTES + 1)
    with pytest.raises(WebSocketError) as caught:
        MessageDecoder(LIMIT).feed(header)  # the default: as on TCP
    assert caught.value.code == ws.TOO_BIG


def test_an_overlong_message_is_dropped_once_and_the_next_one_read():
    decoder = MessageDecoder(LIMIT, DISCARD)
    data = (masked(ws.TEXT, b"x" * (LIMIT + 1))
            + masked(ws.TEXT, b"after"))
    assert decoder.feed(data) == [Event(ws.TEXT, protocol.OVERLONG),
                                  Event(ws.TEXT, b"after")]


def test_an_overlong_message_is_reported_on_its_header_and_not_held():
    decoder = MessageDecoder(LIMIT, DISCARD)
    frame = masked(ws.TEXT, b"y" * (DISCARD - 10))
    # The header alone says it is over: reported at once.
    assert decoder.feed(frame[:8]) == [Event(ws.TEXT, protocol.OVERLONG)]
    for start in range(8, len(frame), 50):
        assert decoder.feed(frame[start:start + 50]) == []
        assert not decoder._buffer  # dropped as it comes
    assert decoder.feed(masked(ws.TEXT, b"ok")) == [Event(ws.TEXT, b"ok")]


def test_a_fragmented_message_over_the_limit_is_dropped_whole():
    decoder = MessageDecoder(LIMIT, DISCARD)
    data = (masked(ws.TEXT, b"a" * 60, fin=False)
            + masked(ws.PING, b"p")
            + masked(ws.CONTINUATION, b"\xff" * 60, fin=False)  # unread
            + masked(ws.PONG, b"q")
            + masked(ws.CONTINUATION, b"c" * 60)
            + masked(ws.TEXT, b"next"))
    events = []
    for index in range(0, len(data), 7):
        events += decoder.feed(data[index:index + 7])
    assert events == [Event(ws.PING, b"p"), Event(ws.TEXT, protocol.OVERLONG),
                      Event(ws.PONG, b"q"), Event(ws.TEXT, b"next")]
    assert decoder._size == 0 and not decoder._parts


def test_close_frame_reason_is_cut_at_a_character():
    frame = ws.close_frame(ws.POLICY_VIOLATION, "я" * 100)
    assert frame[1] <= ws.MAX_CONTROL_PAYLOAD
    assert len(frame) == 2 + frame[1] == 2 + 2 + 122  # 61 whole letters
    code, = struct.unpack("!H", frame[2:4])
    assert code == ws.POLICY_VIOLATION
    frame[4:].decode("utf-8")  # still valid


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_arbitrary_bytes_never_raise_anything_else(chunks):
    decoder = MessageDecoder(LIMIT, DISCARD)
    for chunk in chunks:
        try:
            events = decoder.feed(chunk)
        except WebSocketError as error:
            assert 1000 <= error.code <= 1011
            return
        for event in events:
            assert event.data is protocol.OVERLONG or \
                len(event.data) <= LIMIT
        # Held: at most one header, the mask and a message's worth.
        assert len(decoder._buffer) <= ws.MAX_HEADER_BYTES + max(
            LIMIT, ws.MAX_CONTROL_PAYLOAD)
        assert decoder._size <= LIMIT


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=30), min_size=1, max_size=5),
       st.lists(st.integers(1, 7), min_size=1, max_size=10))
def test_fragmented_round_trip_however_cut(messages, cuts):
    data = b""
    for text in messages:
        raw = text.encode("utf-8")
        pieces = [raw[i:i + 7] for i in range(0, len(raw), 7)] or [b""]
        for index, piece in enumerate(pieces):
            opcode = ws.TEXT if index == 0 else ws.CONTINUATION
            data += masked(opcode, piece, fin=index == len(pieces) - 1)
    decoder = MessageDecoder(1000)
    events, start, turn = [], 0, 0
    while start < len(data):
        step = cuts[turn % len(cuts)]
        events += decoder.feed(data[start:start + step])
        start += step
        turn += 1
    assert [event.data.decode("utf-8") for event in events] == messages
