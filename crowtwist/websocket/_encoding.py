"""WebSocket frames built (RFC 6455 section 5.2), sans-I/O: the encoding half of ``_frames``.

``frame_header`` and ``encode_frame`` build any frame a peer may be sent;
``data_header`` is the server's common case (a whole, unmasked text or
binary frame) with its options fixed, for the per-message send path.
"""

from __future__ import annotations

import struct

from ._frames import Opcode
from ._masking import unmask

__all__ = ["compressed_header", "data_header", "encode_frame", "frame_header"]

_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")
_OPCODES = frozenset(int(op) for op in Opcode)


def frame_header(opcode: int, length: int, *, fin: bool = True, rsv: int = 0, mask: bytes | None = None) -> bytes:
    """The header of a frame of ``length`` payload bytes, mask key included.

    Apart from its payload so that a sender can write a large payload after
    it without joining the two.  With ``mask`` the payload must be sent
    masked with it (``unmask`` masks too).  Raises ``ValueError`` for what no
    peer may be sent: a reserved opcode, RSV bits out of range, a fragmented
    or over-long control frame, a mask key that is not 4 bytes.
    """
    if opcode not in _OPCODES:
        raise ValueError(f"reserved opcode {opcode}")
    if opcode > 7 and (length > 125 or not fin):
        raise ValueError("a control frame must be whole and at most 125 bytes")
    if rsv & ~7:
        raise ValueError(f"rsv {rsv} is not 3 bits")
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    masked = 0 if mask is None else 0x80
    if length < 126:
        if length < 0:
            raise ValueError("negative length")
        header = bytes((first, masked | length))
    elif length < 65536:
        header = _HEADER_16.pack(first, masked | 126, length)
    elif length < 1 << 63:
        header = _HEADER_64.pack(first, masked | 127, length)
    else:
        raise ValueError("a frame's length must be below 2**63")
    if mask is None:
        return header
    if len(mask) != 4:
        raise ValueError("the mask key must be 4 bytes")
    return header + mask


def encode_frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bytes | None = None
) -> bytes:
    """One whole frame: ``frame_header``, then the payload (masked with ``mask`` if given)."""
    length = len(payload)
    header = frame_header(opcode, length, fin=fin, rsv=rsv, mask=mask)
    if mask is not None:
        payload = unmask(payload, 0, length, mask)
    return header + payload


def data_header(is_binary: bool, length: int) -> bytes:
    """The header of a whole, unmasked text or binary frame: what a server sends most.

    ``frame_header`` with its options fixed, for the per-message send path.
    """
    return _whole_header(0x82 if is_binary else 0x81, length)


def compressed_header(is_binary: bool, length: int) -> bytes:
    """``data_header`` with RSV1 set: a whole permessage-deflate message of ``length`` compressed bytes."""
    return _whole_header(0xC2 if is_binary else 0xC1, length)


def _whole_header(first: int, length: int) -> bytes:
    # FIN, no mask: the length in its shortest form (RFC 6455 5.2).
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return _HEADER_16.pack(first, 126, length)
    return _HEADER_64.pack(first, 127, length)
