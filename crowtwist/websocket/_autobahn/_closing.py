"""The closing half of ``FastProtocol``: close frames, failures, keepalive, the TCP close.

autobahn (private or undocumented, each use commented): its close state
(``state``, ``wasClean``, ``failedByMe``, ``localCloseCode``, the timers)
is read and set here as its own close handling would, so that both receive
paths (crowtwist's parser and autobahn's frame machinery) close alike.
"""

from __future__ import annotations

from typing import Any

import txaio
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.util import encode_truncate
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import tcp
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from ..._twisted import close_at_once
from .._close import CloseCode, CloseFrameError, parse_close
from .._hooks import ProtocolHooks

__all__ = ["ClosingProtocol"]

_OPEN = WebSocketProtocol.STATE_OPEN
_CLOSING = WebSocketProtocol.STATE_CLOSING


class ClosingProtocol(ProtocolHooks):
    """Close handling and keepalive for ``FastProtocol``; the hooks (``ProtocolHooks``) are the subclass's."""

    autoPingInterval: float
    autoPingTimeout: float
    closeHandshakeTimeout: float
    _app_close = False
    _failed_close: tuple[int, str] | None = None
    """The code and message this connection was failed with on an invalid close frame."""
    _drop_timer: Any = None
    """Aborts a connection whose close did not finish within the close timeout."""

    def sendCloseFrame(self, code: int | None = None, reasonUtf8: bytes | None = None, isReply: bool = False) -> None:
        # autobahn's, for the case every close is (open, unmasked, no frame
        # logging): the frame built here rather than by its general sendFrame.
        # The same frame, the same state after (state, closedByMe,
        # localCloseCode/Reason, the close handshake timer).
        me: Any = self  # (options copied from the factory, and close state autobahn leaves unannotated)
        payload = (b"" if code is None else code.to_bytes(2, "big")) + (reasonUtf8 or b"")
        if self.state != _OPEN or len(payload) > 125 or me.maskServerFrames or me.logFrames:
            super().sendCloseFrame(code=code, reasonUtf8=reasonUtf8, isReply=isReply)
            return
        self.sendData(bytes((0x88, len(payload))) + payload)
        self.state = _CLOSING
        self.closedByMe = not isReply
        me.localCloseCode = code
        me.localCloseReason = reasonUtf8
        if self.closedByMe and self.closeHandshakeTimeout > 0:
            self.closeHandshakeTimeoutCall = self.factory._batched_timer.call_later(
                self.closeHandshakeTimeout, self.onCloseHandshakeTimeout
            )

    def start_close(self, code: int, reason: str) -> None:
        """The application closes: a close frame, then wait for the peer's."""
        if self.state == _OPEN:
            self._app_close = True
            self.sendCloseFrame(code=code, reasonUtf8=encode_truncate(reason, 123), isReply=False)

    def fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 7.1.7): a close frame saying why, then our side's TCP close.

        Nothing more the peer sends is processed, its close frame included;
        it is read and discarded until the peer closes, or the close timeout
        (autobahn's close handshake timeout) aborts.  Closing the socket at
        once would have the kernel answer unread input with a reset, which
        can destroy the close frame, and replies sent before it, on their
        way to the peer (websockets also half-closes and drains).
        """
        self.failedByMe = True
        self.wasClean = False
        self.wasNotCleanReason = reason
        if self.state == _OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=encode_truncate(reason, 123), isReply=False)
        transport = self.transport
        if isinstance(transport, tcp.Connection):
            self.flush_outgoing()
            # A registered pull producer would be asked for more instead of the
            # FIN being sent: nothing more is produced here.
            transport.unregisterProducer()
            transport.loseWriteConnection()  # a FIN after what is written, once it is out
        elif self.closeHandshakeTimeoutCall is None:
            self.dropConnection(abort=False)  # no timeout to bound the wait

    def failed(self) -> bool:
        return bool(self.failedByMe)

    def close_with_error(self, code: int, reason: str) -> None:
        """Close because of the peer (too slow, say): ``onerror`` first, as for a failure."""
        if self.state == _OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=encode_truncate(reason, 123), isReply=False)

    def close_received(self, payload: bytes) -> None:
        """A close frame's payload (both receive paths end here)."""
        try:
            code, reason = parse_close(payload)
        except CloseFrameError as error:
            self._fail_on_close(error.code, error.message)
            return
        self.remoteCloseCode = code
        self.remoteCloseReason = reason or None
        if self.state == _OPEN:
            # The peer starts the close: echo its code and reason, then close the TCP connection.
            self.wasClean = True
            self.sendCloseFrame(code=code, reasonUtf8=encode_truncate(reason, 123) if code else None, isReply=True)
            self.dropConnection(abort=False)
        elif self.state == _CLOSING:
            # The peer's answer to our close: the handshake is complete.
            timeout = self.closeHandshakeTimeoutCall
            if timeout is not None:
                timeout.cancel()
                self.closeHandshakeTimeoutCall = None
            self.wasClean = True
            self.dropConnection(abort=False)

    def _fail_on_close(self, code: CloseCode, message: str) -> None:
        # RFC 6455 7.1.7: a close frame saying why (the peer has closed
        # already, so no answer is awaited), then the TCP close.
        if not (self.failedByMe and self.localCloseCode is not None):
            # (Failed already, when autobahn found the frame broken first: that close stands.)
            self._failed_close = (int(code), message)
        self.wasClean = False
        self.wasNotCleanReason = message
        if self.state == _OPEN:
            self.frames_failed(message)
            self.sendCloseFrame(code=int(code), reasonUtf8=encode_truncate(message, 123), isReply=True)
        self.dropConnection(abort=False)

    def close_outcome(self, was_clean: bool, code: int | None, reason: str | None) -> tuple[int, str]:
        """The code and reason ``onclose`` gets: a failure we sent stands, whatever the peer did."""
        if self._failed_close is not None:
            return self._failed_close
        if self.failedByMe and self.localCloseCode is not None:
            sent = self.localCloseReason
            return self.localCloseCode, sent.decode("utf-8", "replace") if sent else ""
        if was_clean:
            return (CloseCode.NO_STATUS_RCVD if code is None else code), reason or ""
        return CloseCode.ABNORMAL_CLOSURE, "uncleanly"

    # Keepalive.

    def pong_received(self, payload: bytes) -> None:
        """A pong crowtwist's parser read: the awaited one ends the keepalive wait."""
        if self.autoPingPending is not None and payload == self.autoPingPending:
            call = self.autoPingTimeoutCall
            if call is not None:
                call.cancel()
            self.autoPingPending = None
            self.autoPingPendingSent = None
            self.autoPingTimeoutCall = None
            self.schedule_ping()

    def schedule_ping(self) -> None:
        """The next automatic ping, as autobahn schedules it (unless one is due already)."""
        if self.autoPingInterval and self.state == _OPEN and self.autoPingPendingCall is None:
            self.autoPingPendingCall = self.factory._batched_timer.call_later(
                self.autoPingInterval, self._sendAutoPing
            )

    def suspend_keepalive(self) -> None:
        """Stop judging the peer by its pongs (we are not reading, or we are closing)."""
        # autoPingPendingCall sends the next ping, autoPingTimeoutCall fails the
        # connection when its pong is late, autoPingPending is the ping awaited.
        for name in ("autoPingPendingCall", "autoPingTimeoutCall"):
            call = getattr(self, name)
            if call is not None:
                call.cancel()
                setattr(self, name, None)
        self.autoPingPending = None

    def onAutoPingTimeout(self) -> None:
        # autobahn drops the TCP connection here; a close frame with 1011 tells
        # a peer that is merely slow why, and the close timeout still bounds it.
        if self.state != _OPEN:
            WebSocketServerProtocol.onAutoPingTimeout(self)
            return
        if self.outgoing_behind():
            # Our own data is not all out, and the ping may be behind some of it:
            # the peer is judged once it had the chance to answer.
            self.autoPingTimeoutCall = self.factory._batched_timer.call_later(
                self.autoPingTimeout, self.onAutoPingTimeout
            )
            return
        self.autoPingTimeoutCall = None
        self.sendCloseFrame(code=CloseCode.INTERNAL_ERROR, reasonUtf8=b"keepalive ping timeout", isReply=False)

    def _closeConnection(self, abort: bool = False) -> None:
        transport: Any = self.transport
        if abort or transport is None:
            self.discard_outgoing()
            super()._closeConnection(abort)
            return
        self.flush_outgoing()
        # Not abortConnection, even with nothing left to send: it closes with
        # a reset, which may discard the close frame before the peer reads it.
        # With nothing left in the transport either, the socket closes now
        # (connectionLost runs before this returns), not a reactor turn later.
        if close_at_once(transport):
            return
        super()._closeConnection(False)
        # But a peer that reads nothing more, or never ends TLS, would hold the
        # connection and its onclose forever: the close timeout bounds this too.
        if self._drop_timer is None and getattr(transport, "connected", True):
            self._drop_timer = self.factory._batched_timer.call_later(
                self.closeHandshakeTimeout or 5.0, self._abort_lingering
            )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # autobahn's version formats debug lines (its highlighting helpers
        # included) on every close, logging or not; a TLS error it logs at
        # error level, and at debug level everything is its own.
        if isinstance(reason.value, (ConnectionDone, ConnectionAborted, ConnectionLost)) and not _autobahn_debugging():
            self._connectionLost(reason)  # type: ignore[arg-type]  # autobahn annotates it str; it gets the Failure
        else:
            super().connectionLost(reason)

    def _abort_lingering(self) -> None:
        self._drop_timer = None
        transport: Any = self.transport
        if transport is not None and getattr(transport, "connected", True):
            transport.abortConnection()


def _autobahn_debugging() -> bool:
    """Whether autobahn's own debug lines are wanted (txaio's level, which its loggers follow)."""
    level: str = getattr(txaio, "get_global_log_level")()  # (txaio's stubs lack it; tx and aio both have it)
    return level in ("debug", "trace")
