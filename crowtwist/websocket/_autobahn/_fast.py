"""``FastProtocol``: autobahn's server protocol with its per-connection and per-message costs cut.

autobahn (private or undocumented, each use commented): per-connection
set-up without copying the factory's options, handshake completion from a
request parsed already, writes without per-write debug formatting, and the
hooks of its frame machinery (for compressed connections) that let a full
queue pause parsing and a failed connection skip what follows.
"""

from __future__ import annotations

import base64
import hashlib
from collections import deque
from functools import cached_property
from typing import Any, cast
from collections.abc import Callable, Sequence

from autobahn.twisted.util import create_transport_details, peer2str
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.wamp.types import TransportDetails
from autobahn.websocket.protocol import TrafficStats, WebSocketProtocol
from autobahn.websocket.utf8validator import Utf8Validator
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ISSLTransport

from autobahn.websocket.compress import PerMessageDeflate

from .._close import failure_message
from .._deflate import DeflateParams
from . import _guard
from ._closing import ClosingProtocol
from ._guard import INITIAL_STATE

__all__ = ["FastProtocol", "fast_factory"]

_OPEN = WebSocketProtocol.STATE_OPEN
_CONNECTING = WebSocketProtocol.STATE_CONNECTING
_CLOSING = WebSocketProtocol.STATE_CLOSING

# Set by the handshake and read by nothing after it: dropped from the connection's dict.
_HANDSHAKE_ONLY = frozenset(
    {"http_response_data", "http_request_uri", "http_request_path", "websocket_protocols", "websocket_extensions",
     "_wskey"}
)
# What a plain handshake sets to these values: class attributes of FastProtocol
# instead of entries of every connection's dict (a dict of up to 21 entries is
# half the size of one of 22 to 42: 100,000 idle connections hold one each).
_AS_CLASS = {
    "websocket_version": 13, "websocket_protocol_in_use": None, "inside_message": False, "current_frame": None,
}
_EVENTS = ["message"]
"""The events autobahn's protocol declares (``set_valid_events``), shared by every connection."""


def _kept(name: str, value: object) -> bool:
    """Whether a connection's dict keeps ``name`` after the handshake."""
    if name in _HANDSHAKE_ONLY:
        return False
    if name in _AS_CLASS:
        default = _AS_CLASS[name]
        return not (type(value) is type(default) and value == default)
    return True
_SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n"



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


class FastProtocol(ClosingProtocol):
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

    # autobahn's observable events: one list for all, the per-event dict on first use.
    _valid_events: list[str] = _EVENTS
    websocket_extensions_in_use: list[Any] = cast(Any, ())
    """(a plain handshake's empty list, immutable and shared)"""

    @cached_property
    def _results(self) -> dict[str, Any]:  # type: ignore[override]  # made on first use
        return {name: None for name in self._valid_events}

    @cached_property
    def is_closed(self) -> Deferred[Any]:  # made on first use
        # autobahn resolves it through this attribute, which makes it then at
        # the latest: whoever asks later gets that one, fired.
        return Deferred()

    @cached_property
    def peer(self) -> str:  # type: ignore[override]  # made on first use (autobahn's logs)
        return peer2str(cast(Any, self.transport))

    def __init__(self) -> None:
        super().__init__()
        state = self.__dict__
        del state["_transport_details"]  # a placeholder from autobahn; made on first use
        del state["_results"]
        del state["is_closed"]
        events = state.pop("_valid_events")
        if events != _EVENTS:  # (another autobahn version's)
            state["_valid_events"] = events

    # Set-up and teardown.

    def connectionMade(self) -> None:
        # autobahn's version formats a debug line (with its highlighting
        # helpers) on every connection, logging or not, and gathers transport
        # details (two system calls) that only WAMP reads.
        transport: Any = self.transport
        # Set, not asked first: on the site's fast path nothing has set it yet,
        # and asking costs the same system call.  (A UNIX transport has no such method.)
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(self.tcpNoDelay)
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
        # A dict rebuilt without the handshake's leftovers (and what the class
        # holds already) is sized to what stays.
        state = self.__dict__
        if state.get("websocket_extensions_in_use") == []:
            del state["websocket_extensions_in_use"]
        self.__dict__ = {k: v for k, v in state.items() if _kept(k, v)}

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

    def deflate_params(self) -> DeflateParams | None:
        """What permessage-deflate the handshake agreed, for crowtwist's own codec; ``None``: none, or not ours.

        autobahn (undocumented): the accepted extension is the
        ``PerMessageDeflate`` in ``websocket_extensions_in_use``, its
        parameters the attributes its constructor sets (the guard checks
        both).  ``None`` also when autobahn must frame this connection itself
        (auto-fragmentation) or the guard failed: autobahn's frame machinery
        and its own deflate serve the connection then.
        """
        if self.autoFragmentSize or not _guard.deflate_fast():
            return None
        for extension in self.__dict__.get("websocket_extensions_in_use") or ():
            if isinstance(extension, PerMessageDeflate):
                return DeflateParams(
                    bool(extension.server_no_context_takeover),
                    bool(extension.client_no_context_takeover),
                    int(extension.server_max_window_bits),
                    int(extension.client_max_window_bits),
                )
        return None

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
            self.frames_failed(failure_message(reason, code))
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


for _name, _value in {**INITIAL_STATE, **_AS_CLASS}.items():
    setattr(FastProtocol, _name, _value)
