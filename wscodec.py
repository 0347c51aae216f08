"""The WebSocket protocol (RFC 6455), the part a chat server needs, with
no sockets in it: the handshake's accept key, frames to send, and
:class:`MessageDecoder`, which turns the bytes a browser sent into whole
text messages, bounded in memory, and says how to close on anything else.

Only what the chat uses is accepted: masked frames from the client, text
messages (possibly fragmented), ping, pong and close. A text message over
the line limit is dropped as it comes, never held, and stands in the
output as ``protocol.OVERLONG``, as an overlong line does on TCP
(``protocol.LineFramer``); the connection stays. A binary message is
closed with 1003, invalid UTF-8 with 1007, a single message past
``protocol.MAX_DISCARD_BYTES`` with 1009, anything else that breaks the
protocol with 1002. No extension (compression) is ever agreed, so the
reserved bits must be 0.

``web.py`` puts this on a socket; the tests use it as it is.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import os
import struct
from typing import List, NamedTuple, Optional

import protocol
from protocol import Frame

#: The GUID of RFC 6455 section 1.3, appended to the client's key.
ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# Opcodes.
CONTINUATION = 0x0
TEXT = 0x1
BINARY = 0x2
CLOSE = 0x8
PING = 0x9
PONG = 0xA
_DATA_OPCODES = (CONTINUATION, TEXT, BINARY)
_CONTROL_OPCODES = (CLOSE, PING, PONG)

# Close codes (RFC 6455 section 7.4.1).
NORMAL = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
UNSUPPORTED_DATA = 1003
NO_STATUS = 1005         # never sent: "the close frame had no code"
INVALID_DATA = 1007
POLICY_VIOLATION = 1008
TOO_BIG = 1009
INTERNAL_ERROR = 1011

#: Largest payload of a control frame (RFC 6455 section 5.5).
MAX_CONTROL_PAYLOAD = 125
#: Longest frame header: 2 bytes, 8 of extended length, 4 of mask.
MAX_HEADER_BYTES = 14


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` value answering ``Sec-WebSocket-Key``."""
    digest = hashlib.sha1(key.encode("ascii") + ACCEPT_GUID).digest()
    return base64.b64encode(digest).decode("ascii")


def valid_key(key: str) -> bool:
    """True if ``key`` is a ``Sec-WebSocket-Key``: 16 bytes in base64."""
    try:
        return len(base64.b64decode(key.encode("ascii"),
                                    validate=True)) == 16
    except (ValueError, UnicodeEncodeError):
        return False


def encode_frame(opcode: int, payload: bytes = b"", fin: bool = True,
                 mask: Optional[bytes] = None) -> bytes:
    """One frame. A server sends them unmasked (``mask`` None); a client
    must mask (give 4 bytes, or ``os.urandom(4)``)."""
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    mask_bit = 0x80 if mask is not None else 0
    if length < 126:
        header = struct.pack("!BB", first, mask_bit | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, length)
    if mask is None:
        return header + payload
    return header + mask + apply_mask(payload, mask)


def apply_mask(data: bytes, mask: bytes) -> bytes:
    """``data`` XOR the 4-byte ``mask``, repeated (masking and unmasking
    are the same operation). Done on one big integer: far faster in
    Python than a loop over the bytes."""
    if not data:
        return b""
    repeated = (mask * (len(data) // 4 + 1))[:len(data)]
    value = int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")
    return value.to_bytes(len(data), "big")


def text_frame(text: bytes) -> bytes:
    """A server's text frame holding ``text`` (UTF-8 already)."""
    return encode_frame(TEXT, text)


def close_frame(code: int = NORMAL, reason: str = "") -> bytes:
    """A server's close frame; the reason is cut to fit a control frame."""
    reason_bytes = reason.encode("utf-8")[:MAX_CONTROL_PAYLOAD - 2]
    # Cut at a character boundary, so the reason stays valid UTF-8.
    reason_bytes = reason_bytes.decode("utf-8", "ignore").encode("utf-8")
    return encode_frame(CLOSE, struct.pack("!H", code) + reason_bytes)


def client_frame(opcode: int, payload: bytes = b"",
                 fin: bool = True) -> bytes:
    """A client's (masked) frame: for tests and tools."""
    return encode_frame(opcode, payload, fin, os.urandom(4))


class WebSocketError(Exception):
    """The peer broke the protocol: close with ``code``; ``str(error)``
    is the reason, fit for the close frame and the log."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class Event(NamedTuple):
    """What :meth:`MessageDecoder.feed` found: a whole text message
    (``opcode`` TEXT, ``data`` its UTF-8 bytes, or ``protocol.OVERLONG``
    for one over the limit, dropped), a ping or pong (``data`` its
    payload), or a close (``code``, ``data`` the reason's bytes)."""

    opcode: int
    data: Frame
    code: int = NO_STATUS


def _valid_close_code(code: int) -> bool:
    """Codes a peer may send (RFC 6455 section 7.4)."""
    return (code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011,
                     1012, 1013, 1014) or 3000 <= code <= 4999)


class MessageDecoder:
    """Bytes from a client -> :class:`Event`\\ s, holding at most one
    frame header plus ``max_message`` bytes of payload.

    A text message over ``max_message`` bytes comes out once, as
    ``protocol.OVERLONG``, as soon as a frame's header takes it over; the
    rest of it (that frame, and its continuations) is discarded as it
    comes, unread: what it held is not checked as UTF-8, since the chat
    never reads it. Only a message past ``max_discard`` bytes in all is
    an error (1009), on the header that takes it there.

    :meth:`feed` raises :class:`WebSocketError` on the first thing that
    breaks the protocol (or the limits); the connection must then be
    closed with the error's code, and the decoder not fed again. After a
    close event it ignores everything (RFC 6455: nothing follows a close).
    """

    def __init__(self, max_message: int,
                 max_discard: int = protocol.MAX_DISCARD_BYTES) -> None:
        self.max_message = max_message
        self.max_discard = max_discard
        self._buffer = bytearray()
        self._parts: List[bytes] = []  # a fragmented message so far
        self._size = 0                  # its bytes
        self._fragmented = False        # a text message awaits its FIN
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        # The message in hand went over max_message: its bytes dropped so
        # far (None: it did not); and the bytes of the frame being
        # dropped (header, mask, payload) still to come.
        self._dropped: Optional[int] = None
        self._skip = 0
        self.closed = False             # a close frame came

    def feed(self, data: bytes) -> List[Event]:
        """The events ``data`` completed, in order."""
        events: List[Event] = []
        if self.closed:
            return events
        self._buffer += data
        while not self.closed:
            event = self._next_frame()
            if event is None:
                break
            if event.opcode != CONTINUATION:
                events.append(event)
        return events

    def _next_frame(self) -> Optional[Event]:
        """Take one whole frame off the buffer: its event, a CONTINUATION
        placeholder for a frame that is only part of a message, or None
        when the buffer holds no whole frame yet."""
        buffer = self._buffer
        if self._skip:
            taken = min(self._skip, len(buffer))
            del buffer[:taken]
            self._skip -= taken
            return None if self._skip else Event(CONTINUATION, b"")
        if len(buffer) < 2:
            return None
        first, second = buffer[0], buffer[1]
        fin, opcode = bool(first & 0x80), first & 0x0F
        if first & 0x70:
            raise WebSocketError(PROTOCOL_ERROR, "reserved bits set")
        if opcode not in _DATA_OPCODES + _CONTROL_OPCODES:
            raise WebSocketError(PROTOCOL_ERROR, f"unknown opcode {opcode}")
        if not second & 0x80:
            raise WebSocketError(PROTOCOL_ERROR, "client frame not masked")
        length = second & 0x7F
        offset = 2
        if opcode in _CONTROL_OPCODES and (length > MAX_CONTROL_PAYLOAD
                                           or not fin):
            raise WebSocketError(PROTOCOL_ERROR, "bad control frame")
        if length == 126:
            if len(buffer) < 4:
                return None
            length = struct.unpack_from("!H", buffer, 2)[0]
            offset = 4
        elif length == 127:
            if len(buffer) < 10:
                return None
            length = struct.unpack_from("!Q", buffer, 2)[0]
            offset = 10
        if opcode == BINARY:
            raise WebSocketError(UNSUPPORTED_DATA,
                                 "binary messages are not accepted")
        if opcode in _DATA_OPCODES:
            self._check_order(opcode)
            # The message's bytes with this frame's (held or dropped).
            size = length + (self._size if self._dropped is None
                             else self._dropped)
            if size > self.max_discard:
                # Refused on the header alone: nothing of it is held.
                raise WebSocketError(
                    TOO_BIG, f"message over {self.max_discard} bytes")
            if self._dropped is not None or size > self.max_message:
                return self._drop(fin, size, offset + 4 + length)
        if len(buffer) < offset + 4 + length:
            return None
        mask = bytes(buffer[offset:offset + 4])
        start = offset + 4
        payload = apply_mask(bytes(buffer[start:start + length]), mask)
        del buffer[:start + length]
        if opcode in _CONTROL_OPCODES:
            return self._control(opcode, payload)
        return self._data(opcode, fin, payload)

    def _control(self, opcode: int, payload: bytes) -> Event:
        if opcode != CLOSE:
            return Event(opcode, payload)
        self.closed = True
        self._buffer.clear()
        if not payload:
            return Event(CLOSE, b"", NO_STATUS)
        if len(payload) == 1:
            raise WebSocketError(PROTOCOL_ERROR, "close frame of 1 byte")
        code = struct.unpack_from("!H", payload)[0]
        if not _valid_close_code(code):
            raise WebSocketError(PROTOCOL_ERROR, f"close code {code}")
        reason = payload[2:]
        try:
            reason.decode("utf-8")
        except UnicodeDecodeError:
            raise WebSocketError(INVALID_DATA,
                                 "close reason not UTF-8") from None
        return Event(CLOSE, reason, code)

    def _check_order(self, opcode: int) -> None:
        """A data frame must start a message or go on with the one in
        hand, whichever is due."""
        if opcode == TEXT and self._fragmented:
            raise WebSocketError(PROTOCOL_ERROR,
                                 "new message inside a fragmented one")
        if opcode == CONTINUATION and not self._fragmented:
            raise WebSocketError(PROTOCOL_ERROR,
                                 "continuation without a message")

    def _drop(self, fin: bool, dropped: int, frame_bytes: int) -> Event:
        """A frame of a message over the limit: discard all of its
        ``frame_bytes`` as they come. The message's first such frame
        gives its OVERLONG event; the others, a placeholder."""
        first = self._dropped is None
        self._parts.clear()
        self._size = 0
        self._utf8.reset()
        self._skip = frame_bytes
        self._fragmented = not fin
        self._dropped = None if fin else dropped
        return Event(TEXT, protocol.OVERLONG) if first \
            else Event(CONTINUATION, b"")

    def _data(self, opcode: int, fin: bool, payload: bytes) -> Event:
        try:
            # Checked as it comes, so that bad UTF-8 is refused at once.
            self._utf8.decode(payload, final=fin)
        except UnicodeDecodeError:
            raise WebSocketError(INVALID_DATA, "text is not valid UTF-8") \
                from None
        if not fin:
            self._fragmented = True
            self._parts.append(payload)
            self._size += len(payload)
            return Event(CONTINUATION, b"")
        if self._parts:
            self._parts.append(payload)
            payload = b"".join(self._parts)
            self._parts.clear()
        self._fragmented = False
        self._size = 0
        self._utf8.reset()
        return Event(TEXT, payload)
