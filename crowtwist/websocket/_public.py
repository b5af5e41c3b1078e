"""``PublicProtocol``: a connection served on autobahn's documented API alone.

Used when ``_autobahn``'s guard finds that the installed autobahn no longer
has what the fast paths rely on (or ``CROWTWIST_PUBLIC_PATHS`` says so).  It
offers the same methods as ``_autobahn.FastProtocol``, built on
``onConnect``/``onOpen``/``onMessage``/``onClose``, ``sendMessage``,
``sendClose``, ``sendPing``/``sendPong``, and the handshake that
``autobahn.twisted.resource.WebSocketResource`` performs: the checked request
is handed to autobahn as bytes, and autobahn answers it.

What it gives up, and docs/architecture.md repeats: crowtwist's own frame
parser and direct socket writes (autobahn parses and writes every frame);
keepalive keeps autobahn's own rules (a connection whose reading is paused
by a full queue may be judged dead by its pongs); a failure is reported to
``onerror`` when the close completes rather than when it starts; and
permessage-deflate is declined, since autobahn's public API cannot stop
inflating a read part-way, so a compressed flood could pass the queue bound.
"""

from __future__ import annotations

from typing import Any, cast
from collections.abc import Callable, Sequence

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest

from ._close import CloseCode

__all__ = ["PublicProtocol"]

_NORMAL = frozenset({CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY, CloseCode.NO_STATUS_RCVD})


class PublicProtocol(WebSocketServerProtocol):
    """autobahn's server protocol as documented, with ``FastProtocol``'s methods on top."""

    _subprotocol: str | None = None
    _closing_sent = False
    _close_code: int | None = None

    def complete_handshake(
        self, key: str, offered: Sequence[str], extensions: str, subprotocol: str | None, path: str,
        accept: Callable[[Sequence[str]], Callable[[Any], Any]] | None,
    ) -> None:
        """Hand autobahn the request (already checked) as bytes; ``onConnect`` picks ``subprotocol``."""
        self._subprotocol = subprotocol
        lines = [
            f"GET {path} HTTP/1.1",
            "Host: localhost",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if offered:
            lines.append("Sec-WebSocket-Protocol: " + ", ".join(offered))
        WebSocketServerProtocol.dataReceived(self, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def onConnect(self, request: ConnectionRequest) -> str | None:
        return self._subprotocol

    def onOpen(self) -> None:  # pragma: no cover - the glue's onOpen runs instead
        pass

    @property
    def plain(self) -> bool:
        return False

    def plain_sends_allowed(self) -> bool:
        return False

    def still_reading(self) -> bool:
        return True

    def autobahn_receive(self, data: bytes) -> None:
        WebSocketServerProtocol.dataReceived(self, data)

    def count_received(self, size: int) -> None:
        pass

    def start_close(self, code: int, reason: str) -> None:
        if not self._closing_sent:
            self._closing_sent = True
            reason = reason.encode("utf-8")[:100].decode("utf-8", "ignore")
            if code != CloseCode.NORMAL_CLOSURE and not 3000 <= code < 5000:
                # autobahn's documented sendClose takes no other code: the code goes in the reason.
                reason, code = f"{int(code)} {reason}", CloseCode.NORMAL_CLOSURE
            self._close_code = int(code)
            self.sendClose(int(code), reason)
            self.close_sent()

    def fail(self, code: int, reason: str) -> None:
        self.frames_failed(reason)
        self.start_close(code, reason)

    def failed(self) -> bool:
        return False

    def close_with_error(self, code: int, reason: str) -> None:
        self.fail(code, reason)

    def close_received(self, payload: bytes) -> None:  # pragma: no cover - autobahn reads close frames here
        pass

    def pong_received(self, payload: bytes) -> None:  # pragma: no cover - autobahn reads pongs here
        pass

    def close_outcome(self, was_clean: bool, code: int | None, reason: str | None) -> tuple[int, str]:
        if not was_clean:
            return CloseCode.ABNORMAL_CLOSURE, "uncleanly"
        if code is not None and code not in _NORMAL and not (3000 <= code < 5000) and code != self._close_code:
            # A failure autobahn found: onerror first (it was not told when the close began).
            self.frames_failed(reason or f"connection failed with {code}")
        return (CloseCode.NO_STATUS_RCVD if code is None else code), reason or ""

    def schedule_ping(self) -> None:
        pass

    def suspend_keepalive(self) -> None:
        pass

    def consume_held(self) -> None:
        pass

    # Hooks, as FastProtocol declares them.

    def frames_failed(self, message: str) -> None:
        pass

    def close_sent(self) -> None:
        pass

    def reading_paused(self) -> bool:
        return False

    def outgoing_behind(self) -> bool:
        return False

    def write(self, data: bytes) -> None:  # pragma: no cover - autobahn writes to the transport itself
        cast(Any, self.transport).write(data)

    def write_first(self, frame: bytes) -> bool:
        return False

    def flush_outgoing(self) -> None:
        pass

    def discard_outgoing(self) -> None:
        pass
