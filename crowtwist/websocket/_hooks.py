"""``ProtocolHooks``: what a connection's autobahn layer asks of crowtwist's side, with defaults.

Both autobahn layers (``_autobahn.FastProtocol`` and ``_public.PublicProtocol``)
call these; ``_protocol._Glue``, mixed in ahead of either, implements them.
"""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketServerProtocol

__all__ = ["ProtocolHooks"]


class ProtocolHooks(WebSocketServerProtocol):
    """autobahn's server protocol with the hooks its crowtwist layers call; ``write`` must be given."""

    def frames_failed(self, message: str) -> None:
        """The connection is being failed (a close frame with an error code goes out now)."""

    def close_sent(self) -> None:
        """Our close frame went out while open: keepalive is over, the close timeout runs."""

    def reading_paused(self) -> bool:
        return False

    def outgoing_behind(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def write_first(self, frame: bytes) -> bool:
        """Put a control frame ahead of what waits to go out; False when nothing waits."""
        return False

    def flush_outgoing(self) -> None:
        """A clean close: send what is held before the transport closes."""

    def discard_outgoing(self) -> None:
        """An abort: forget what is held."""
