"""``Wire``: the transport autobahn writes to on the public paths, in front of the real one.

Pure bookkeeping over bytes autobahn wrote (never the peer's): it finds where
each frame autobahn writes ends, so ``_public.PublicProtocol`` can hand frames
on whole through ``Outgoing`` and read its own close frames back.
"""

from __future__ import annotations

from typing import Any, Protocol
from collections.abc import Sequence

__all__ = ["Wire", "WireOwner", "close_payload"]


class WireOwner(Protocol):
    """What the wire reports to: each whole frame written, and the TCP close asked for."""

    def frame_out(self, frame: bytes) -> None: ...
    def transport_closed(self, abort: bool) -> None: ...


def _frame_size(data: bytes | bytearray) -> int | None:
    """The length of the frame that starts ``data``, header included; None: the header is not all there."""
    if len(data) < 2:
        return None
    length = data[1] & 0x7F
    header = 2
    if length == 126:
        header = 4
    elif length == 127:
        header = 10
    if len(data) < header:
        return None
    if header > 2:
        length = int.from_bytes(data[2:header], "big")
    if data[1] & 0x80:
        header += 4  # (a masking key: autobahn does not mask a server's frames, but could be told to)
    return header + length


def close_payload(frame: bytes) -> tuple[int | None, str]:
    """The code and reason of a whole close frame."""
    masked = frame[1] & 0x80
    start = 6 if masked else 2  # a control frame's length fits its second byte
    payload = frame[start:]
    if masked:
        payload = bytes(b ^ frame[2 + i % 4] for i, b in enumerate(payload))
    if len(payload) < 2:
        return None, ""
    return int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8", "replace")


class Wire:
    """The transport autobahn writes to, in front of the connection's own.

    The frames autobahn writes go on to the owner a whole frame at a time,
    however autobahn splits them into writes; its TCP closes go to the owner
    too.  Every other attribute is the transport's.
    """

    def __init__(self, transport: Any, owner: WireOwner) -> None:
        self.transport = transport
        self._owner = owner
        self._pending = bytearray()
        """The start of a frame, the rest to come in the next write."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)

    def write(self, data: bytes) -> None:
        pending = self._pending
        if not pending and _frame_size(data) == len(data):
            self._owner.frame_out(data)  # as nearly every write is: one frame
            return
        pending += data
        while True:
            size = _frame_size(pending)
            if size is None or size > len(pending):
                return
            frame = bytes(pending[:size])
            del pending[:size]
            self._owner.frame_out(frame)

    def writeSequence(self, data: Sequence[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self._owner.transport_closed(abort=False)

    def abortConnection(self) -> None:
        self._owner.transport_closed(abort=True)
