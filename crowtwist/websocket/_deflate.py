"""permessage-deflate (RFC 7692) messages, sans-I/O: compressed frames in, messages out, and back.

``DeflateCodec`` holds one connection's two contexts: the inflater for what
the peer sends and the deflater for what we send, each with the window and
context takeover the handshake negotiated.  It does no I/O and knows no
protocol state: ``_protocol`` feeds it the payloads of frames with RSV1 set
(and the continuation frames that follow them) and sends what ``compress``
returns in a frame with RSV1 set.

Inflating is bounded by the message size limit *after* decompression: each
call asks zlib for at most what is left of the bound plus one byte, so a
small frame that inflates to gigabytes never allocates more than the bound
and a byte before it fails with 1009.

zlib cannot deflate raw data with an 8-bit window; a peer that asks for 8
gets 9 from the deflater (RFC 7692 8.1.2.1 lets a sender use a smaller
window than allowed, not a larger one, so the handshake never confirms 8;
see ``_extensions``), and the inflater takes 8 as 9 too (a 512-byte window
reads what a 256-byte one wrote), as autobahn and websockets do.
"""

from __future__ import annotations

import zlib
from typing import Any, NamedTuple

from ._close import CloseCode
from ._frames import ProtocolError

__all__ = ["DeflateCodec", "DeflateParams", "TAIL", "frame_bound"]

TAIL = b"\x00\x00\xff\xff"
"""The empty stored block a sync flush ends with: stripped by the sender, put back by the receiver (7.2.1, 7.2.2)."""

_NO_LIMIT = (1 << 63) - 1

LEVEL = 1
"""zlib level for outgoing messages: 1 (``Z_BEST_SPEED``), as aiohttp.

Against 6 (autobahn's): half the CPU, and 7 % more bytes on 64 KiB of JSON-like text (1,801 against 1,677)."""

MEM_LEVEL = 8
"""zlib's default: a 64 KiB hash table (``1 << (mem_level + 7)`` entries of 2 bytes) and a 64 KiB pending buffer."""


class DeflateParams(NamedTuple):
    """What a permessage-deflate handshake agreed, from the server's side.

    ``*_bits`` are the negotiated maximum windows (15 when not limited);
    ``*_no_context_takeover``: that side compresses each message alone.
    """

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int = 15
    client_max_window_bits: int = 15


def frame_bound(max_size: int | None) -> int | None:
    """The largest compressed frame that may still inflate to at most ``max_size`` bytes.

    Incompressible data grows by 5 bytes per stored block of up to 64 KiB
    (plus a block header): a frame limit of exactly ``max_size`` would refuse
    a message that fits once inflated.
    """
    if max_size is None:
        return None
    return max_size + (max_size >> 13) + 64


def _bits(bits: int) -> int:
    return 9 if bits < 9 else bits


class DeflateCodec:
    """One connection's permessage-deflate contexts (server side unless ``is_server=False``).

    Receiving: ``start`` at a frame with RSV1 (a compressed message's
    first), then ``inflate`` for its payload and that of each continuation
    frame, ``fin`` on the last, which returns the rest of the message.
    ``inflate_message`` does all three for a message in one frame.  Each
    raises ``ProtocolError``: 1009 once the message inflates past
    ``max_size``, 1007 for data that is not deflate.

    Sending: ``compress(message)`` is a whole message's payload, for one
    frame with RSV1 set.  ``keep_context=False`` compresses each message
    alone even where the peer allows context takeover (the memory-saving mode).

    A side with context takeover keeps its zlib object between messages
    (the inflater's window is ``1 << bits`` bytes, the deflater's state about
    ``(1 << (bits + 2)) + (1 << (mem_level + 9))``); without, the object is
    made for each message and dropped after it, so an idle connection holds neither.
    """

    __slots__ = (
        "_in_bits",
        "_in_keep",
        "_out_bits",
        "_out_keep",
        "_inflater",
        "_deflater",
        "_limit",
        "_size",
        "level",
    )

    def __init__(
        self,
        params: DeflateParams = DeflateParams(),
        *,
        max_size: int | None = None,
        is_server: bool = True,
        level: int = LEVEL,
        keep_context: bool = True,
    ) -> None:
        if is_server:
            in_keep, in_bits = not params.client_no_context_takeover, params.client_max_window_bits
            out_keep, out_bits = not params.server_no_context_takeover, params.server_max_window_bits
        else:
            in_keep, in_bits = not params.server_no_context_takeover, params.server_max_window_bits
            out_keep, out_bits = not params.client_no_context_takeover, params.client_max_window_bits
        for bits in (in_bits, out_bits):
            if not 8 <= bits <= 15:
                raise ValueError(f"window bits {bits} not in 8..15")
        self._in_keep = in_keep
        self._in_bits = -_bits(in_bits)
        # Compressing each message alone is always allowed (the peer's inflater
        # cannot tell): keep_context=False drops the deflater between messages.
        self._out_keep = out_keep and keep_context
        self._out_bits = -_bits(out_bits)
        self._inflater: Any = None
        self._deflater: Any = None
        self._limit = _NO_LIMIT if max_size is None else max_size
        self._size = 0
        self.level = level

    @property
    def max_size(self) -> int | None:
        """The bound on a message after inflation; a change applies from the next ``inflate`` on."""
        return None if self._limit == _NO_LIMIT else self._limit

    @max_size.setter
    def max_size(self, size: int | None) -> None:
        self._limit = _NO_LIMIT if size is None else size

    # Receiving.

    def start(self) -> None:
        """A compressed message begins (its first frame has RSV1 set)."""
        self._size = 0
        if self._inflater is None:
            self._inflater = zlib.decompressobj(self._in_bits)

    def inflate(self, data: bytes, fin: bool) -> bytes:
        """Inflate one frame's payload of the current message; ``fin``: it is the last frame."""
        inflater = self._inflater
        if inflater is None:
            raise RuntimeError("inflate() before start()")
        # (below zero when the bound was lowered mid-message: zlib's max_length must stay positive)
        budget = max(self._limit - self._size, 0)
        if inflater.eof:
            # A block with BFINAL set ended the stream earlier in this message
            # (RFC 7692 7.2.3.4): nothing but the tail may follow it.
            if data:
                raise self._corrupt("data after the final deflate block")
            out = b""
        else:
            if fin:
                data += TAIL
            try:
                if self._limit == _NO_LIMIT:
                    out = inflater.decompress(data)
                else:
                    # At most one byte past the bound: zlib stops there, and the rest waits in unconsumed_tail.
                    out = inflater.decompress(data, budget + 1)
            except zlib.error as error:
                raise self._corrupt(f"invalid permessage-deflate data: {error}") from None
            if inflater.eof and inflater.unused_data and inflater.unused_data != TAIL:
                raise self._corrupt("data after the final deflate block")
        self._size += len(out)
        if len(out) > budget:
            self._inflater = None
            raise ProtocolError(
                CloseCode.MESSAGE_TOO_BIG, f"message inflates past the limit of {self._limit} bytes"
            )
        if fin and (not self._in_keep or inflater.eof):
            # No context takeover (or a BFINAL block closed the stream): the next message starts afresh.
            self._inflater = None
        return out

    def _corrupt(self, message: str) -> ProtocolError:
        self._inflater = None
        return ProtocolError(CloseCode.INVALID_DATA, message)

    def inflate_message(self, data: bytes) -> bytes:
        """A whole compressed message, from one frame (``start`` and ``inflate`` in one, for the common case)."""
        inflater = self._inflater
        if inflater is None:
            inflater = self._inflater = zlib.decompressobj(self._in_bits)
        self._size = 0
        limit = self._limit
        out: bytes
        try:
            if limit == _NO_LIMIT:
                out = inflater.decompress(data + TAIL)
            else:
                out = inflater.decompress(data + TAIL, limit + 1)
        except zlib.error as error:
            raise self._corrupt(f"invalid permessage-deflate data: {error}") from None
        if len(out) > limit:
            self._inflater = None
            raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, f"message inflates past the limit of {limit} bytes")
        if inflater.eof:
            if inflater.unused_data != TAIL:
                raise self._corrupt("data after the final deflate block")
            self._inflater = None
        elif not self._in_keep:
            self._inflater = None
        return out

    # Sending.

    def compress(self, message: bytes) -> bytes:
        """A whole message deflated, ending in a sync flush without its 4-byte tail."""
        deflater = self._deflater
        if deflater is None:
            deflater = zlib.compressobj(self.level, zlib.DEFLATED, self._out_bits, MEM_LEVEL)
            if self._out_keep:
                self._deflater = deflater
        data: bytes = deflater.compress(message) + deflater.flush(zlib.Z_SYNC_FLUSH)
        # (ends in TAIL: a sync flush always writes the empty stored block)
        return data[:-4]
