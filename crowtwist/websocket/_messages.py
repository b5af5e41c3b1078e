"""WebSocket messages from data frames (RFC 6455 sections 5.4, 5.6, 8.1), sans-I/O.

``MessageAssembler`` takes the data frames ``_frames.FrameParser`` gives (the
extension already undone) and enforces what spans frames: continuation
sequencing, the message size limit, and UTF-8, failing fast at the fragment
that holds the first invalid byte.
"""

from __future__ import annotations

import codecs
from typing import Any

from ._close import CloseCode
from ._frames import Frame, ProtocolError

__all__ = ["MessageAssembler"]

_NO_LIMIT = (1 << 63) - 1
_PROTOCOL_ERROR = CloseCode.PROTOCOL_ERROR

_utf8_decoder = codecs.getincrementaldecoder("utf-8")


class MessageAssembler:
    """Messages from data frames, with the rules that span frames.

    ``add`` takes each TEXT, BINARY or CONTINUATION frame in order (already
    unmasked, and with any extension's transformation undone: ``rsv`` must be
    0) and returns ``(message, is_binary)`` for the frame that completes one,
    text as ``str`` and binary as ``bytes``.  Raises ``ProtocolError``: 1002
    for a continuation frame outside a fragmented message or a new message
    inside one, 1009 once the message exceeds ``max_size``, and 1007 for
    invalid UTF-8 at the fragment that holds the first byte making it invalid
    (RFC 6455 8.1's fail-fast), or at the last one if the text ends mid-character.
    """

    __slots__ = ("_limit", "_parts", "_size", "_binary", "_decoder", "in_message")

    def __init__(self, *, max_size: int | None = None) -> None:
        self._limit = _NO_LIMIT if max_size is None else max_size
        self._parts: list[Any] = []
        self._size = 0
        self._binary = False
        self._decoder: codecs.IncrementalDecoder | None = None
        self.in_message = False
        """Whether a fragmented message has begun and not ended."""

    def add(self, frame: Frame) -> tuple[str | bytes, bool] | None:
        """Add a data frame; the message it completes and whether it is binary, or ``None``."""
        opcode, payload, fin, rsv = frame
        if opcode > 7:
            raise ValueError("control frames are not part of messages")
        if rsv:
            raise ValueError("frames with RSV bits must be decoded by their extension first")
        if opcode:
            if self.in_message:
                raise ProtocolError(
                    _PROTOCOL_ERROR, "received non-continuation data frame while inside fragmented message"
                )
            if len(payload) > self._limit:
                raise self._too_big(len(payload))
            if fin:  # a whole message in one frame: the common case
                if opcode == 2:
                    return payload, True
                try:
                    return payload.decode("utf-8"), False
                except UnicodeDecodeError:
                    raise _invalid_utf8() from None
            self.in_message = True
            self._size = len(payload)
            self._parts = []
            self._binary = binary = opcode == 2
            if not binary:
                self._decoder = _utf8_decoder()
        else:
            if not self.in_message:
                raise ProtocolError(_PROTOCOL_ERROR, "received continuation data frame outside fragmented message")
            self._size += len(payload)
            if self._size > self._limit:
                raise self._too_big(self._size)
        decoder = self._decoder
        if decoder is None:
            self._parts.append(payload)
        else:
            try:
                self._parts.append(decoder.decode(payload, fin))
            except UnicodeDecodeError:
                raise _invalid_utf8() from None
            if not fin:
                # CPython's decoder waits for a third byte before it rejects
                # ED A0..BF (the start of a UTF-16 surrogate), the one
                # invalid prefix it does not reject as soon as it sees it.
                held = decoder.getstate()[0]
                if len(held) > 1 and held[0] == 0xED and held[1] > 0x9F:
                    raise _invalid_utf8()
        if not fin:
            return None
        parts = self._parts
        self._parts = []
        self._decoder = None
        self.in_message = False
        if self._binary:
            return b"".join(parts), True
        return "".join(parts), False

    def _too_big(self, size: int) -> ProtocolError:
        return ProtocolError(
            CloseCode.MESSAGE_TOO_BIG, f"message of {size} bytes exceeds the limit of {self._limit} bytes"
        )


def _invalid_utf8() -> ProtocolError:
    return ProtocolError(CloseCode.INVALID_DATA, "encountered invalid UTF-8 in text message")
