"""WebSocket frames (RFC 6455 section 5), sans-I/O: bytes in, frames out.

``FrameParser`` turns the bytes read from a connection into ``Frame`` tuples and
enforces the framing rules (section 5.2 and 5.5); ``_messages.MessageAssembler``
turns data frames into messages and enforces what spans frames: continuation
sequencing, the message size limit and UTF-8 (sections 5.4, 5.6, 8.1).  Neither does I/O,
calls a handler or knows about Twisted or autobahn's protocol state, so the
protocol decides what a ``ProtocolError`` does (fail the connection with its
code) and the rules can be tested byte for byte.

Payloads are unmasked with ``_masking.unmask``, the one place its
implementation is chosen (the C helper, else a Python fallback).

How the rules compare with the two other implementations at hand:

* autobahn (``WebSocketProtocol.processData``) checks the same header rules,
  including the minimal length encoding that ``websockets`` does not check,
  but also checks continuation sequencing and close frames of one byte in
  its frame parser; here the first is the assembler's and the second
  ``parse_close``'s.
* ``websockets.frames.Frame.parse`` reads the whole payload before it checks
  the reserved bits, the opcode's fragmentation and a control frame's length;
  here every rule the header shows is checked as soon as the header is in,
  before any of the payload arrives.  It also rejects a frame whose masking is
  not exactly the expected one, where Crow's lenient mode
  (``require_mask=False``) accepts masked and unmasked frames alike.
"""

from __future__ import annotations

import functools
import struct
from enum import IntEnum
from typing import NamedTuple


from ._close import CloseCode
from ._masking import unmask

__all__ = [
    "Frame",
    "FrameParser",
    "Opcode",
    "ProtocolError",
    "unmask",
]


class Opcode(IntEnum):
    """Frame opcodes (RFC 6455 section 5.2); 3-7 and 11-15 are reserved."""

    CONTINUATION = 0
    TEXT = 1
    BINARY = 2
    CLOSE = 8
    PING = 9
    PONG = 10


class Frame(NamedTuple):
    """One frame, unmasked.

    ``opcode`` is a plain ``int`` (an ``Opcode`` value) so that building a frame
    costs no enum look-up; ``rsv`` holds RSV1..RSV3 as the three bits of
    ``(first_byte >> 4) & 7``, so RSV1 (permessage-deflate's) is 4.
    """

    opcode: int
    payload: bytes
    fin: bool = True
    rsv: int = 0


class ProtocolError(Exception):
    """Bytes that break the protocol: the connection is to be failed with ``code``.

    ``message`` is short enough (at most 123 bytes of UTF-8) to be a close
    frame's reason as it is.
    """

    def __init__(self, code: CloseCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"ProtocolError({self.code!r}, {self.message!r})"


# Parsing.

_new_tuple = tuple.__new__
# The 16- and 64-bit length of a frame's header, read in place.
_LENGTH_16 = struct.Struct("!H").unpack_from
_LENGTH_64 = struct.Struct("!Q").unpack_from
# At most 2**63 - 1 (RFC 6455 5.2): the default frame limit is none at all.
_NO_LIMIT = (1 << 63) - 1

_PROTOCOL_ERROR = CloseCode.PROTOCOL_ERROR
_NOT_MASKED = "Client connection not masked."  # Crow's wording, which its users match on


@functools.cache
def _first_bytes(allowed_rsv: int) -> frozenset[int]:
    """The first bytes of a header that no rule of the header's first byte rejects."""
    valid = set()
    for first in range(256):
        opcode = first & 15
        rsv = (first >> 4) & 7
        if opcode > 10 or 2 < opcode < 8:
            continue
        if opcode > 7 and (rsv or not first & 0x80):
            continue
        if rsv & ~allowed_rsv:
            continue
        valid.add(first)
    return frozenset(valid)


def _first_byte_error(first: int, allowed_rsv: int) -> ProtocolError:
    """Why ``first`` is not in ``_first_bytes(allowed_rsv)`` (autobahn's wording)."""
    opcode = first & 15
    rsv = (first >> 4) & 7
    if 2 < opcode < 8:
        return ProtocolError(_PROTOCOL_ERROR, f"data frame using reserved opcode {opcode}")
    if opcode > 10:
        return ProtocolError(_PROTOCOL_ERROR, f"control frame using reserved opcode {opcode}")
    if rsv & ~allowed_rsv:
        return ProtocolError(_PROTOCOL_ERROR, f"RSV = {rsv} and no extension negotiated")
    if not first & 0x80:
        return ProtocolError(_PROTOCOL_ERROR, "fragmented control frame")
    # Deviation from a generic RSV rule, as autobahn and websockets do for
    # permessage-deflate, the only extension that uses RSV bits: no control frame may set them.
    return ProtocolError(_PROTOCOL_ERROR, f"control frame with RSV = {rsv}")


class FrameParser:
    """Frames from a stream of bytes: ``feed`` what was read, then ``next_frame`` until ``None``.

    Payloads come back unmasked.  Checks every rule a frame's header shows
    (reserved opcodes and RSV bits, masking, a control frame's fragmentation
    and length, the length's encoding, ``max_size``) as soon as the header is
    in, and raises ``ProtocolError``; after one, the parser is not to be used
    again.  ``max_size`` bounds a data frame's payload (1009); control
    frames are bounded by the protocol (125 bytes, 1002), not by it.
    ``allowed_rsv`` is the RSV bits an extension negotiated (4 for
    permessage-deflate); whether a continuation frame may carry them is the
    extension's rule, not checked here.

    Speed: one read holding many small frames is parsed in place (the read and
    an offset, no copy of what remains); a frame split across reads is kept
    as the reads that hold it, joined once when all of it is in, and only its
    own bytes (not the rest of the read that completed it).  ``needed`` says how
    much more must be fed before a frame can come out, so feeding a large frame
    in many pieces costs O(its size), not O(pieces x size).
    """

    __slots__ = (
        "_data",
        "_pos",
        "_more",
        "_skip",
        "_pending",
        "_fed",
        "_need_end",
        "_limit",
        "_require_mask",
        "_first_ok",
        "_allowed_rsv",
    )

    def __init__(self, *, max_size: int | None = None, require_mask: bool = True, allowed_rsv: int = 0) -> None:
        if allowed_rsv & ~7:
            raise ValueError(f"allowed_rsv {allowed_rsv} is not 3 bits")
        self._limit = _NO_LIMIT if max_size is None else max_size
        self._require_mask = require_mask
        self._allowed_rsv = allowed_rsv
        self._first_ok = _first_bytes(allowed_rsv)
        # The bytes being parsed, and where the next frame starts in them.
        self._data = b""
        self._pos = 0
        # Reads fed after _data while a frame in it was incomplete, _skip
        # bytes of the first already in _data, _pending bytes in all.
        self._more: list[bytes] = []
        self._skip = 0
        self._pending = 0
        # Stream offsets: bytes fed in all, and the offset the last incomplete
        # frame (or header) needed the stream to reach.
        self._fed = 0
        self._need_end = 0

    @property
    def max_size(self) -> int | None:
        """The bound on a data frame's payload; set it to change it from the next frame's header on."""
        return None if self._limit == _NO_LIMIT else self._limit

    @max_size.setter
    def max_size(self, size: int | None) -> None:
        self._limit = _NO_LIMIT if size is None else size

    @property
    def buffered(self) -> int:
        """Bytes fed and not yet consumed by a returned frame."""
        return len(self._data) - self._pos + self._pending

    @property
    def consumed(self) -> int:
        """Bytes consumed by the frames returned so far."""
        return self._fed - len(self._data) + self._pos - self._pending

    @property
    def needed(self) -> int:
        """Bytes to feed before ``next_frame`` can return a frame; at least 1 after it returned ``None``.

        Never more than is really missing: once that much more is fed,
        ``next_frame`` returns a frame or knows more of the frame's header.
        0 after ``next_frame`` returned a frame (call it again).
        """
        return max(0, self._need_end - self._fed)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes read from the connection (another buffer is copied: payloads are ``bytes``, and kept)."""
        if type(data) is not bytes:
            data = bytes(data)
        if not data:
            return
        self._fed += len(data)
        if self._pos >= len(self._data) and not self._more:
            self._data = data
            self._pos = 0
        else:
            self._more.append(data)
            self._pending += len(data)

    def take_buffered(self) -> bytes:
        """The bytes fed and not consumed, which the parser then forgets."""
        parts: list[bytes | memoryview] = [memoryview(self._data)[self._pos :]]
        if self._more:
            parts.append(memoryview(self._more[0])[self._skip :])
            parts.extend(self._more[1:])
        rest = b"".join(parts)
        self._fed -= len(rest)  # not consumed by a frame, and no longer buffered
        self._need_end = self._fed
        self._data = b""
        self._pos = 0
        self._more = []
        self._skip = 0
        self._pending = 0
        return rest

    def next_frame(self) -> Frame | None:
        """The next whole frame, or ``None`` until more bytes are fed; raises ``ProtocolError``."""
        # Inline for the common case (a whole frame in _data); every branch
        # that is not returns through _incomplete or raises.
        data = self._data
        pos = self._pos
        size = len(data)
        if size - pos < 2:
            return self._incomplete(2)
        first = data[pos]
        if first not in self._first_ok:
            raise _first_byte_error(first, self._allowed_rsv)
        second = data[pos + 1]
        if second < 128 and self._require_mask:
            raise ProtocolError(_PROTOCOL_ERROR, _NOT_MASKED)
        length = second & 0x7F
        if length < 126:
            start = pos + 2
        elif first & 8:  # a control frame (opcode 8-15): at most 125 bytes
            raise ProtocolError(_PROTOCOL_ERROR, "control frame with payload length > 125 octets")
        elif length == 126:
            start = pos + 4
            if start > size:
                return self._incomplete(4)
            length = _LENGTH_16(data, pos + 2)[0]
            if length < 126:
                raise ProtocolError(_PROTOCOL_ERROR, "invalid data frame length (not using minimal length encoding)")
        else:
            start = pos + 10
            if start > size:
                return self._incomplete(10)
            length = _LENGTH_64(data, pos + 2)[0]
            if length >> 63:
                raise ProtocolError(_PROTOCOL_ERROR, "invalid data frame length (>2^63)")
            if length < 65536:
                raise ProtocolError(_PROTOCOL_ERROR, "invalid data frame length (not using minimal length encoding)")
        if length > self._limit and not first & 8:
            raise ProtocolError(
                CloseCode.MESSAGE_TOO_BIG, f"frame of {length} bytes exceeds the limit of {self._limit} bytes"
            )
        if second & 0x80:
            end = start + 4 + length
            if end > size:
                return self._incomplete(end - pos)
            payload = unmask(data, start + 4, end, data[start : start + 4])
        else:
            end = start + length
            if end > size:
                return self._incomplete(end - pos)
            payload = data[start:end]
        self._pos = end
        return _new_tuple(Frame, (first & 15, payload, first > 127, (first >> 4) & 7))

    def frames(self) -> list[tuple[int, bytes]]:
        """The whole frames available now, in order, as (first byte, payload); ``[]`` when more bytes are needed.

        The first byte is the frame's as on the wire: FIN (0x80), RSV (0x70)
        and opcode (0x0F); payloads are unmasked.  Call again until it returns
        ``[]``.  The same frames as ``next_frame`` gives one by one, for about
        two thirds of the cost per frame (a receive loop's hot path): small
        frames are parsed in one loop into plain pairs; anything else (a longer
        length, a frame split across reads, one that breaks a rule) ends the
        batch, and comes from ``next_frame`` as the next batch's first frame,
        or its error.
        """
        data = self._data
        pos = self._pos
        size = len(data)
        first_ok = self._first_ok
        require_mask = self._require_mask
        limit = self._limit
        batch: list[tuple[int, bytes]] = []
        append = batch.append
        xor = unmask
        while size - pos >= 2:
            first = data[pos]
            second = data[pos + 1]
            length = second & 0x7F
            if first not in first_ok or length > 125 or length > limit:
                break
            if second & 0x80:
                end = pos + 6 + length
                if end > size:
                    break
                append((first, xor(data, pos + 6, end, data[pos + 2 : pos + 6])))
            elif require_mask:
                break
            else:
                end = pos + 2 + length
                if end > size:
                    break
                append((first, data[pos + 2 : end]))
            pos = end
        self._pos = pos
        if not batch:
            frame = self.next_frame()
            if frame is not None:
                append((frame.opcode | (0x80 if frame.fin else 0) | frame.rsv << 4, frame.payload))
        return batch

    def _incomplete(self, need: int) -> Frame | None:
        """The frame at ``_pos`` needs ``need`` bytes from its start: wait for them, or gather them."""
        have = len(self._data) - self._pos
        self._need_end = self._fed - have - self._pending + need
        if have + self._pending < need:
            return None
        self._gather(need)
        return self.next_frame()

    def _gather(self, need: int) -> None:
        """Make ``_data[_pos:]`` hold at least ``need`` bytes (all fed), joining as few as possible."""
        data = self._data
        pos = self._pos
        more = self._more
        have = len(data) - pos
        if not have:
            # The next frame starts in the first read held back: use it in place.
            data = more.pop(0)
            pos = self._skip
            self._skip = 0
            have = len(data) - pos
            self._pending -= have
            self._data = data
            self._pos = pos
            if have >= need:
                return
        # Join exactly `need` bytes: this frame's (or header's), not those after it.
        parts: list[bytes | memoryview] = [memoryview(data)[pos:]] if have else []
        got = have
        taken = 0  # reads of `more` used up entirely
        skip = self._skip
        while got < need:
            chunk = more[taken]
            available = len(chunk) - skip
            if got + available <= need:
                parts.append(memoryview(chunk)[skip:] if skip else chunk)
                got += available
                taken += 1
                skip = 0
            else:
                cut = skip + need - got
                parts.append(memoryview(chunk)[skip:cut])
                skip = cut
                got = need
        del more[:taken]
        self._skip = skip if more else 0
        self._pending -= need - have
        self._data = b"".join(parts)
        self._pos = 0
