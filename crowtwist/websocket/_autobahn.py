"""autobahn's internals, in one place, behind a guard.

crowtwist's speed comes from skipping autobahn's general paths where a
connection does not need them: per-connection set-up, handshake completion,
debug formatting on every write, the frame state machine for plain frames.
That means relying on names autobahn does not document.  Every such use is
here, in ``FastProtocol`` (a ``WebSocketServerProtocol`` whose overrides each
say what they rely on) and the few functions below it; the rest of crowtwist
speaks to a connection through ``FastProtocol``'s own methods, or autobahn's
documented API.

At import, ``_problems()`` checks every name, signature and assignment the
fast paths copy or call (in the releases setup.cfg admits; see ci/floors.txt).
When one does not hold, ``FAST`` is false, one line is logged, and
``_public.PublicProtocol`` serves every connection on autobahn's documented
hooks: slower, still correct and conformant.  ``CROWTWIST_PUBLIC_PATHS=autobahn``
(or ``all``) forces that, for the tests.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import inspect
import os
import textwrap
from importlib import metadata
from collections import deque
from functools import cached_property
from typing import Any, cast
from collections.abc import Callable, Sequence

from autobahn.twisted.util import create_transport_details, peer2str
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.util import encode_truncate
from autobahn.wamp.types import TransportDetails
from autobahn.websocket.protocol import TrafficStats, WebSocketProtocol
from autobahn.websocket.utf8validator import Utf8Validator
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger

from ._close import CloseCode, CloseFrameError, parse_close

__all__ = ["FAST", "FastProtocol", "PROBLEMS", "fast_factory", "is_forced_public"]

log = Logger(namespace="crowtwist")

_OPEN = WebSocketProtocol.STATE_OPEN
_CONNECTING = WebSocketProtocol.STATE_CONNECTING
_CLOSING = WebSocketProtocol.STATE_CLOSING

# What autobahn's _connectionMade starts every connection with; here they are
# class attributes, so a connection's own dict holds only what changes.
_INITIAL_STATE: dict[str, object] = {
    "_perMessageCompress": None,
    "trackedTimings": None,
    "send_state": WebSocketProtocol.SEND_STATE_GROUND,
    "data": b"",
    "triggered": False,
    "wasMaxFramePayloadSizeExceeded": False,
    "wasMaxMessagePayloadSizeExceeded": False,
    "closedByMe": False,
    "failedByMe": False,
    "droppedByMe": False,
    "wasClean": False,
    "wasNotCleanReason": None,
    "wasServerConnectionDropTimeout": False,
    "wasOpenHandshakeTimeout": False,
    "wasCloseHandshakeTimeout": False,
    "wasServingFlashSocketPolicyFile": False,
    "localCloseCode": None,
    "localCloseReason": None,
    "remoteCloseCode": None,
    "remoteCloseReason": None,
    "openHandshakeTimeoutCall": None,
    "closeHandshakeTimeoutCall": None,
    "autoPingTimeoutCall": None,
    "autoPingPending": None,
    "autoPingPendingCall": None,
    "autoPingPendingSeq": 0,
    "autoPingPendingSent": None,
}
# Set per connection by _connectionMade, and made here on first use instead
# (or, the last, set only for clients).
_MADE_LAZILY = {
    "trafficStats", "state", "send_queue", "utf8validator", "_transport_details", "serverConnectionDropTimeoutCall"
}
# What succeedHandshake sets; _succeed_plain sets the same for a plain upgrade.
_SUCCEED_SETS = {
    "websocket_protocol_in_use",
    "websocket_extensions_in_use",
    "_perMessageCompress",
    "http_response_data",
    "state",
    "openHandshakeTimeoutCall",
    "inside_message",
    "current_frame",
    "autoPingPendingCall",
}
# Set by the handshake and read by nothing after it: dropped from the connection's dict.
_HANDSHAKE_ONLY = frozenset(
    {"http_response_data", "http_request_uri", "websocket_protocols", "websocket_extensions", "_wskey"}
)
_SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n"

# Crow's own words for the failures its users match on; others keep autobahn's.
_CROW_MESSAGES = {"unmasked client-to-server frame": "Client connection not masked."}

# (class, name, parameter names or None): what the fast paths call or override.
_P = WebSocketServerProtocol
_REQUIRED: list[tuple[type, str, tuple[str, ...] | None]] = [
    (_P, "_connectionMade", ("self",)),
    (_P, "_connectionLost", ("self", "reason")),
    (_P, "_onOpen", ("self",)),
    (_P, "_dataReceived", ("self", "data")),
    (_P, "_closeConnection", ("self", "abort")),
    (_P, "_parseExtensionsHeader", ("self", "header", "removeQuotes")),
    (_P, "_sendAutoPing", ("self",)),
    (_P, "succeedHandshake", ("self", "res")),
    (_P, "sendData", ("self", "data", "sync", "chopsize")),
    (_P, "sendCloseFrame", ("self", "code", "reasonUtf8", "isReply")),
    (_P, "processControlFrame", ("self",)),
    (_P, "processData", ("self",)),
    (_P, "consumeData", ("self",)),
    (_P, "onFrameData", ("self", "payload")),
    (_P, "onFrameEnd", ("self",)),
    (_P, "onAutoPingTimeout", ("self",)),
    (_P, "dropConnection", ("self", "abort")),
    (_P, "CONFIG_ATTRS", None),
    (_P, "_WS_MAGIC", None),
]


def is_forced_public(component: str) -> bool:
    """Whether ``CROWTWIST_PUBLIC_PATHS`` asks for ``component``'s public paths."""
    wanted = {part.strip() for part in os.environ.get("CROWTWIST_PUBLIC_PATHS", "").split(",")}
    return component in wanted or "all" in wanted


def _assigned(func: Callable[..., Any]) -> set[str]:
    """The ``self.x`` names a method assigns (from its source)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.ctx, ast.Store)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    }


def _problems() -> list[str]:
    if is_forced_public("autobahn"):
        return ["forced by CROWTWIST_PUBLIC_PATHS"]
    problems = []
    for owner, name, params in _REQUIRED:
        value = getattr(owner, name, None)
        if value is None:
            problems.append(f"{owner.__name__}.{name} is missing")
        elif params is not None and tuple(inspect.signature(value).parameters) != params:
            problems.append(f"{owner.__name__}.{name} takes other parameters")
    if problems:
        return problems
    try:
        # Copied state: a new flag in autobahn's set-up or handshake completion
        # would be missing from ours.
        extra = _assigned(WebSocketProtocol._connectionMade) - set(_INITIAL_STATE) - _MADE_LAZILY
        extra -= set(WebSocketServerProtocol.CONFIG_ATTRS)
        if extra:
            problems.append(f"_connectionMade sets {sorted(extra)}")
        extra = _assigned(WebSocketServerProtocol.succeedHandshake) - _SUCCEED_SETS
        if extra:
            problems.append(f"succeedHandshake sets {sorted(extra)}")
        # Every connection timer goes through factory._batched_timer.call_later.
        if "self.factory._batched_timer.call_later(" not in inspect.getsource(WebSocketProtocol._sendAutoPing):
            problems.append("timers no longer go through factory._batched_timer")
    except (OSError, TypeError, SyntaxError) as error:  # no source to check
        problems.append(f"autobahn's source cannot be checked ({error})")
    if not hasattr(WebSocketServerFactory(server=None), "_batched_timer"):
        problems.append("WebSocketServerFactory has no _batched_timer")
    return problems


PROBLEMS = _problems()
FAST = not PROBLEMS
if not FAST:
    log.warn(
        "autobahn {version}: {problems}; crowtwist runs on autobahn's public paths (slower)",
        version=metadata.version("autobahn"),
        seam="autobahn",
        problems="; ".join(PROBLEMS),
    )


def fast_factory(factory: WebSocketServerFactory, timer: Any) -> dict[str, object]:
    """Install ``timer`` as the factory's connection timer; return its options as class attributes.

    autobahn (private): every connection timer (keepalive, close handshake)
    goes through ``factory._batched_timer.call_later(delay, f)``; and
    ``_connectionMade`` copies each of ``CONFIG_ATTRS`` from the factory onto
    every connection, which as class attributes cost nothing per connection.
    """
    factory._batched_timer = timer
    options = {name: getattr(factory, name) for name in WebSocketServerProtocol.CONFIG_ATTRS}
    # A function stored on a class would become a method.
    return {k: staticmethod(v) if callable(v) else v for k, v in options.items()}


class FastProtocol(WebSocketServerProtocol):
    """autobahn's server protocol, with its per-connection and per-message costs cut.

    Subclasses implement the hooks at the end (``frames_failed``,
    ``close_sent``, ``reading_paused``, ``outgoing_behind``, ``write``,
    ``flush_outgoing``) and use the methods in between.
    """

    # autobahn's options: class attributes of the rule's subclass (fast_factory).
    maxMessagePayloadSize: int
    requireMaskedClientFrames: bool
    autoFragmentSize: int
    autoPingInterval: float
    autoPingTimeout: float
    closeHandshakeTimeout: float
    tcpNoDelay: bool
    logOctets: bool
    _app_close = False
    _failed_close: tuple[int, str] | None = None
    """The code and message this connection was failed with on an invalid close frame."""
    _drop_timer: Any = None
    """Aborts a connection whose close did not finish within the close timeout."""

    # Only a connection that autobahn's general paths serve needs these.
    @cached_property
    def send_queue(self) -> deque[tuple[bytes, bool]]:  # type: ignore[override]  # lazily, per connection
        return deque()

    @cached_property
    def utf8validator(self) -> Utf8Validator:  # type: ignore[override]  # lazily, per connection
        return Utf8Validator()

    @cached_property
    def _transport_details(self) -> TransportDetails:  # type: ignore[override]  # made on first use
        details = create_transport_details(cast(Any, self.transport), self.is_server)
        details.channel_framing = TransportDetails.CHANNEL_FRAMING_WEBSOCKET
        return details

    def __init__(self) -> None:
        super().__init__()
        del self._transport_details  # a placeholder from autobahn; made on first use

    # Set-up and teardown.

    def connectionMade(self) -> None:
        # autobahn's version formats a debug line (with its highlighting
        # helpers) on every connection, logging or not, and gathers transport
        # details (two system calls) that only WAMP reads.
        transport: Any = self.transport
        self.peer = peer2str(transport)
        # Asked rather than assumed: a TLS or UNIX transport may not have it.
        get_no_delay = getattr(transport, "getTcpNoDelay", None)
        if get_no_delay is not None:
            try:
                if bool(get_no_delay()) != bool(self.tcpNoDelay):
                    transport.setTcpNoDelay(self.tcpNoDelay)
            except OSError:  # not a TCP socket
                pass
        self._connectionMade()

    def _connectionMade(self) -> None:
        # autobahn's version copies every factory option onto the connection
        # and pretty-prints them for a debug line: half of a connection's CPU
        # and a third of its memory.  No opening-handshake timer: the request
        # has been read already (the site's deadline covered that).
        self.trafficStats = TrafficStats()
        self.state = _CONNECTING
        self.factory.countConnections += 1

    def _onOpen(self) -> None:
        # autobahn's version completes the transport details for TLS connections.
        if "_transport_details" in self.__dict__ or ISSLTransport.providedBy(self.transport):
            super()._onOpen()
        else:
            self.onOpen()

    def _connectionLost(self, reason: Any) -> None:
        # autobahn's server version formats the reason (a Failure, traceback
        # included) for a debug line on every close.
        timer = self._drop_timer
        if timer is not None:
            self._drop_timer = None
            timer.cancel()
        WebSocketProtocol._connectionLost(self, reason)
        self.factory.countConnections -= 1

    # The handshake.

    def complete_handshake(
        self, key: str, offered: Sequence[str], extensions: str, subprotocol: str | None, path: str,
        accept: Callable[[Sequence[str]], Callable[[Any], Any]] | None,
    ) -> None:
        """Answer a request that was parsed and checked already: the 101, then ``onOpen``.

        autobahn (private): fills in what ``processHandshake`` would have
        parsed, then its ``succeedHandshake`` negotiates the extensions and
        answers; without one, ``_succeed_plain`` does the same in less.
        ``accept(offers)``: the permessage-deflate acceptor for these offers.
        """
        self.http_request_path = path
        self.http_request_uri = path
        self.websocket_version = 13
        self.websocket_protocols = list(offered)
        self.websocket_extensions = WebSocketServerProtocol._parseExtensionsHeader(self, extensions) if extensions else []
        self._wskey = key
        if accept is not None and self.websocket_extensions:
            self.perMessageCompressionAccept = accept(self.websocket_extensions)
        if self.websocket_extensions or self.factory.headers or self.factory.server or self.trackedTimings:
            self.succeedHandshake(subprotocol)
        else:
            self._succeed_plain(subprotocol)
        # A dict rebuilt without the handshake's leftovers is sized to what stays.
        self.__dict__ = {k: v for k, v in self.__dict__.items() if k not in _HANDSHAKE_ONLY}

    def _succeed_plain(self, subprotocol: str | None) -> None:
        # succeedHandshake for what nearly every upgrade is (no extension, no
        # extra header); the guard checks that it sets nothing more than this.
        digest = hashlib.sha1(self._wskey.encode("ascii") + WebSocketProtocol._WS_MAGIC).digest()
        chosen = b"" if subprotocol is None else b"Sec-WebSocket-Protocol: %s\r\n" % subprotocol.encode()
        self.websocket_protocol_in_use = subprotocol
        self.websocket_extensions_in_use = []
        self.sendData(_SWITCHING + chosen + b"Sec-WebSocket-Accept: %s\r\n\r\n" % base64.b64encode(digest))
        self.state = _OPEN
        self.inside_message = False
        self.current_frame = cast(Any, None)
        self.schedule_ping()
        self._onOpen()
        cast(Deferred[None], self.is_open).callback(None)

    # What the rest of crowtwist asks of a connection.

    @property
    def plain(self) -> bool:
        """No extension in use: frames are plain, and crowtwist's own parser and sender apply."""
        return self._perMessageCompress is None and not self.autoFragmentSize

    def still_reading(self) -> bool:
        """Open, or closing: frames may still arrive and be acted on."""
        return bool(self.state == _OPEN or self.state == _CLOSING)

    def autobahn_receive(self, data: bytes) -> None:
        """Bytes for autobahn's own frame machinery (compressed connections).

        autobahn's ``dataReceived`` formats a debug line per read; its
        ``_dataReceived`` is the same without it.
        """
        self._dataReceived(data)

    def count_received(self, size: int) -> None:
        """``size`` bytes were parsed outside autobahn; traffic counts as a pong."""
        self.trafficStats.incomingOctetsWireLevel += size
        if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:
            self._cancelAutoPingTimeoutCall()

    def start_close(self, code: int, reason: str) -> None:
        """The application closes: a close frame, then wait for the peer's."""
        if self.state == _OPEN:
            self._app_close = True
            self.sendCloseFrame(code=code, reasonUtf8=encode_truncate(reason, 123), isReply=False)

    def fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 7.1.7): a close frame saying why, then the TCP close.

        Nothing more is read from the peer, its close frame included.
        """
        self.failedByMe = True
        self.wasClean = False
        self.wasNotCleanReason = reason
        if self.state == _OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=encode_truncate(reason, 123), isReply=False)
        self.dropConnection(abort=False)

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

    # autobahn's paths, overridden.

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        # autobahn formats debug-log arguments on every write even with logging
        # off; the plain case (no chopping, nothing queued) needs only the write.
        if sync or chopsize or self.__dict__.get("send_queue") or self.logOctets:
            WebSocketServerProtocol.sendData(self, data, sync, chopsize)
            return
        self.write(data)
        if self.state == _OPEN:
            self.trafficStats.outgoingOctetsWireLevel += len(data)
        else:
            self.trafficStats.preopenOutgoingOctetsWireLevel += len(data)

    def sendCloseFrame(self, code: int | None = None, reasonUtf8: bytes | None = None, isReply: bool = False) -> None:
        # autobahn fails a connection (protocol error, bad UTF-8, too big, ...)
        # by sending a close frame of its own: that is when onerror is due.
        was_open = self.state == _OPEN
        if not (isReply or self._app_close) and was_open:
            reason = (reasonUtf8 or b"").decode("utf-8", "replace")
            self.frames_failed(_CROW_MESSAGES.get(reason, reason or f"connection failed with {code}"))
        super().sendCloseFrame(code=code, reasonUtf8=reasonUtf8, isReply=isReply)
        if was_open:
            self.close_sent()

    def sendPing(self, payload: bytes | None = None) -> None:
        # Frames waiting for a slow reader: the ping goes ahead of them, so a
        # peer that reads steadily gets it, and answers, without draining them.
        if self.state == _OPEN and not self.__dict__.get("send_queue"):
            ping = bytes((0x89, len(payload or b""))) + (payload or b"")
            if self.write_first(ping):
                return
        super().sendPing(payload)

    def onMessageEnd(self) -> None:
        # autobahn's version also fires its "message" observer signal, which
        # costs a Deferred and two callbacks per message; nothing observes it here.
        parts: list[bytes] | None = self.message_data
        self.message_data = cast(Any, None)
        if parts is not None and not self.failedByMe:
            self.onMessage(parts[0] if len(parts) == 1 else b"".join(parts), self.message_is_binary)

    def processControlFrame(self) -> bool:
        # current_frame and control_frame_data hold the whole control frame.
        # autobahn's close handling treats a one-byte payload as an empty close,
        # knows no 1014, and answers an invalid code with a reset and a clean 1000.
        if self.current_frame.opcode == 8:
            payload = b"".join(self.control_frame_data)
            self.control_frame_data = cast(Any, None)
            self.close_received(payload)
            return True
        return bool(super().processControlFrame())

    # A failed connection only waits for the peer's close frame: the rest of
    # a data frame is skipped, not inflated, validated or kept.

    def onFrameData(self, payload: bytes) -> bool | None:
        if self.failedByMe and self.current_frame.opcode < 8:
            return None
        return super().onFrameData(payload)

    def onFrameEnd(self) -> bool | None:
        frame = self.current_frame
        if self.failedByMe and frame.opcode < 8:
            if frame.fin:
                self.inside_message = False
            self.current_frame = cast(Any, None)
            return None
        return super().onFrameEnd()

    def consumeData(self) -> None:
        # Parses the frames in self.data, one per processData() call; stops
        # while the incoming queue is full, so one read of compressed frames
        # cannot inflate into more than its bound.
        if self.state == _OPEN or self.state == _CLOSING:
            while not self.reading_paused() and self.processData() and self.state != WebSocketProtocol.STATE_CLOSED:
                pass
        else:
            super().consumeData()

    def consume_held(self) -> None:
        """Go on with what autobahn holds from earlier reads (reading resumed)."""
        if self.data:
            self.consumeData()

    def _closeConnection(self, abort: bool = False) -> None:
        transport: Any = self.transport
        if abort or transport is None:
            self.discard_outgoing()
            super()._closeConnection(abort)
            return
        self.flush_outgoing()
        # Not abortConnection, even with nothing left to send: it closes with
        # a reset, which may discard the close frame before the peer reads it.
        super()._closeConnection(False)
        # But a peer that reads nothing more, or never ends TLS, would hold the
        # connection and its onclose forever: the close timeout bounds this too.
        if self._drop_timer is None and getattr(transport, "connected", True):
            self._drop_timer = self.factory._batched_timer.call_later(
                self.closeHandshakeTimeout or 5.0, self._abort_lingering
            )

    def _abort_lingering(self) -> None:
        self._drop_timer = None
        transport: Any = self.transport
        if transport is not None and getattr(transport, "connected", True):
            transport.abortConnection()

    # Hooks for the subclass.

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


for _name, _value in _INITIAL_STATE.items():
    setattr(FastProtocol, _name, _value)
