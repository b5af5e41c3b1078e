"""``CrowServerProtocol``: autobahn's server protocol, dispatching to a rule's handlers.

The opening handshake has already been checked (``upgrade.py``, by the leaf
after the rule's ``onaccept``, or by the site's fast path) when this protocol
takes over the transport, so it starts from the parsed request instead of
re-reading the raw bytes: ``accept_upgrade`` fills in what autobahn's
``processHandshake`` would have parsed, then autobahn's own
``succeedHandshake`` negotiates the extensions, writes the 101 and moves the
protocol to OPEN; without extensions the same 101 and state come from
``_succeed_plain``.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
from collections import deque
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast
from collections.abc import Callable, Sequence

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.util import encode_truncate
from autobahn.websocket import USES_NVX
from autobahn.twisted.util import create_transport_details, peer2str
from autobahn.wamp.types import TransportDetails
from autobahn.websocket.protocol import TrafficStats, WebSocketProtocol
from autobahn.websocket import xormasker
from autobahn.websocket.utf8validator import Utf8Validator
from twisted.internet import tcp
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IAddress, IConsumer, IPullProducer, IPushProducer, ISSLTransport, ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .._handlers import Handler
from .._routing import ParamValue
from ._coalesce import Coalescer
from ._connection import Connection
from ._close import CloseCode, CloseFrameError, parse_close
from ._dispatch import EventQueue
from ._extensions import decline_all, deflate_acceptor, offered_client_bits
from ._timers import BucketTimer

if TYPE_CHECKING:
    from ._rule import WebSocketRule

__all__ = ["CrowServerProtocol", "RuleFactory", "build_factory"]

log = Logger(namespace="crowtwist")

_STATE_OPEN = WebSocketServerProtocol.STATE_OPEN
_STATE_CONNECTING = WebSocketServerProtocol.STATE_CONNECTING
_STATE_CLOSING = WebSocketServerProtocol.STATE_CLOSING
_STATE_CLOSED = WebSocketServerProtocol.STATE_CLOSED

# What autobahn's _connectionMade starts every connection with; here they are
# class attributes, so a connection's own dict holds only what changes.
_INITIAL_STATE: dict[str, object] = {
    "_perMessageCompress": None,
    "trackedTimings": None,
    "send_state": WebSocketServerProtocol.SEND_STATE_GROUND,
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

# Set by succeedHandshake and read by nothing after it.
_HANDSHAKE_ONLY = frozenset(
    {"http_response_data", "http_request_uri", "websocket_protocols", "websocket_extensions", "_wskey"}
)

# Crow's own words for the failures its users match on; others keep autobahn's.
_CROW_MESSAGES = {
    "unmasked client-to-server frame": "Client connection not masked.",
}

_SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n"
_WS_MAGIC = WebSocketProtocol._WS_MAGIC

_CLIENT_GOING_AWAY = 1001
_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")


def _unmask_python(data: bytes, start: int, end: int, key: bytes) -> bytes:
    """``data[start:end]`` XOR the repeated 4-byte ``key`` (RFC 6455 5.3), without the C helper."""
    length = end - start
    payload = data[start:end]
    if length >= _NATIVE_FROM and _native_masker is not None:
        return bytes(_native_masker(key, length).process(payload))
    if not length:
        return b""
    mask = (key * ((length + 3) >> 2))[:length]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(mask, "little")).to_bytes(length, "little")


# Without the C helper: autobahn's native (NVX) masker costs ~4 us to set up,
# then runs at memory speed; one big-integer XOR is faster below ~2 KiB.
_NATIVE_FROM = 2048
_native_masker: Callable[[bytes, int], Any] | None = (
    getattr(xormasker, "create_xor_masker") if USES_NVX else None  # defined per backend, not re-exported
)

_unmask: Callable[[bytes, int, int, bytes], bytes]
try:
    from .._speedups import unmask as _unmask
except ImportError:  # not compiled (setup.py marks it optional)
    _unmask = _unmask_python


_INTERNAL_ERROR = 1011
_POLICY_VIOLATION = 1008


@implementer(IPushProducer, IPullProducer)
class _OutgoingFlow:
    """Registered on the transport: it tells us when the transport's buffer drained.

    A push producer over TLS (paused above the transport's high-water mark);
    a pull producer on plain TCP, where frames go to the socket directly and
    the transport holds only what the socket did not take.
    """

    __slots__ = ("_protocol",)

    def __init__(self, protocol: CrowServerProtocol) -> None:
        self._protocol = protocol

    def pauseProducing(self) -> None:
        self._protocol._outgoing_paused(True)

    def resumeProducing(self) -> None:
        self._protocol._outgoing_paused(False)

    def stopProducing(self) -> None:
        self._protocol._outgoing_stopped()


# Twisted reads and sends at most 64 KiB and 128 KiB at a time, so each 64 KiB
# message took two reads and a join; asyncio reads 256 KiB.  The read size is also
# the transport's high-water mark, above which frames wait in the connection's
# backlog (bounded by max_send_buffer).
_READ_SIZE = 256 * 1024
# The longest frame header a client sends (64-bit length, mask key excluded):
# a held piece that needs more than this is waiting for a whole frame.
_MAX_HEADER = 10
# Frames gathered into one sendmsg(2); more small ones are cheaper joined.
_MAX_PARTS = 64
# Below this, joining the parts and one send(2) beat sendmsg(2)'s gathering.
_JOIN_BELOW = 2048
# Replies held to the end of a busy turn (coalesce.py) only below this: large
# ones gain nothing from company, and holding them idles the peer (measured:
# 64 KiB echoes lost a fifth of their throughput).
_HOLD_BELOW = 16 * 1024


# One per process, as the reactor is.
_coalescer = Coalescer()


class RuleFactory(WebSocketServerFactory):
    """One autobahn factory per WebSocket rule, carrying the rule to its protocols."""

    def __init__(self, rule: WebSocketRule) -> None:
        # server=None: the 101 carries no Server header naming autobahn's version.
        WebSocketServerFactory.__init__(self, server=None)
        self.rule = rule
        self.compression = rule.effective_compression
        from twisted.internet import reactor

        # autobahn (private): every connection timer (keepalive, close
        # handshake) goes through factory._batched_timer.call_later(delay, f);
        # txaio's rounds deadlines down to whole seconds, ours rounds up.
        self._batched_timer = BucketTimer(reactor.callLater, reactor.seconds)

    def protocol_class(self) -> type[CrowServerProtocol]:
        """A protocol class for this factory's connections, carrying its options.

        autobahn copies each option from the factory onto every connection;
        as class attributes they cost nothing per connection.
        """
        options = {name: getattr(self, name) for name in CrowServerProtocol.CONFIG_ATTRS}
        # A function stored on a class would become a method.
        options = {k: staticmethod(v) if callable(v) else v for k, v in options.items()}
        return type("RuleServerProtocol", (CrowServerProtocol,), options)

    def start(self) -> None:
        """Start the factory, as a listening port would (the leaf shares a Site's port)."""
        super().doStart()  # type: ignore[no-untyped-call]  # Twisted leaves it unannotated

    def stop(self) -> None:
        """Stop the factory; open connections are not touched."""
        super().doStop()  # type: ignore[no-untyped-call]  # Twisted leaves it unannotated

    def build(self, address: IAddress) -> CrowServerProtocol:
        """A protocol for one upgraded connection."""
        protocol = self.buildProtocol(address)
        assert isinstance(protocol, CrowServerProtocol)
        rule = self.rule
        protocol._rule = rule
        protocol._events.max_messages = rule.effective_max_queue
        protocol._events.max_bytes = rule.effective_max_queue_bytes
        return protocol


def build_factory(rule: WebSocketRule) -> RuleFactory:
    """The autobahn factory for ``rule``, configured from the rule's and the app's settings."""
    settings = rule.settings
    max_payload = rule.effective_max_payload
    factory = RuleFactory(rule)
    WebSocketServerFactory.setProtocolOptions(
        factory,
        requireMaskedClientFrames=settings.enforce_ws_spec,
        # A protocol error gets a close frame with its code, not a dropped socket.
        failByDrop=False,
        maxMessagePayloadSize=max_payload or 0,
        perMessageCompressionAccept=(
            deflate_acceptor(max_payload) if rule.effective_compression else decline_all
        ),
        echoCloseCodeReason=True,
        closeHandshakeTimeout=settings.close_timeout,
        autoPingInterval=settings.keepalive_interval or 0,
        autoPingTimeout=settings.keepalive_timeout or 0,
    )
    factory.protocol = factory.protocol_class()
    return factory


def _peer_host(transport: Any) -> str:
    address = transport.getPeer()
    host = getattr(address, "host", None)
    if host is not None:
        return str(host)
    name = getattr(address, "name", None)
    return "" if name is None else str(name)


class CrowServerProtocol(WebSocketServerProtocol):
    """Runs one connection's events through its rule's chained handlers."""

    factory: RuleFactory
    _rule: WebSocketRule
    """The rule this connection serves (its factory's), set when the protocol is built."""
    # autobahn's options: class attributes of the rule's subclass (RuleFactory.protocol_class).
    logOctets: bool
    maxMessagePayloadSize: int
    requireMaskedClientFrames: bool
    autoFragmentSize: int
    autoPingInterval: float
    autoPingTimeout: float
    closeHandshakeTimeout: float
    tcpNoDelay: bool
    _plain = False
    _app_close = False
    _consuming = False
    _drop_timer: Any = None
    """Aborts a connection whose close did not finish within the close timeout."""
    _failed_close: tuple[int, str] | None = None
    """The code and message this connection was failed with on an invalid close frame."""
    _error_reported = False
    _close_reported = False
    # The fast path's incomplete frame: its pieces, their size, the size it needs.
    _rx_chunks: list[bytes | memoryview] | None = None
    _rx_size = 0
    _rx_need = 0
    # Frames waiting while the transport still holds data (plain TCP) or is
    # over its high-water mark (TLS): what the peer is behind by, and what
    # max_send_buffer bounds.
    _backlog: deque[bytes] | None = None
    _backlog_size = 0
    _in_transport = 0
    """Plain TCP: bytes handed to the transport (not to the socket), held by it until it drains."""
    _pull = False
    """Plain TCP: the transport tells us only when its buffer is empty (a pull producer)."""
    _paused_out = False
    _over_limit = False
    # Plain TCP: the transport's socket, for one sendmsg(2) now instead of a
    # buffered write, an epoll change and a reactor turn (_send_out).
    _socket: socket.socket | None = None
    # The frames written while one read is handled, sent together at its end.
    _cork: list[bytes] | None = None
    _cork_size = 0

    # Only a connection that autobahn's general paths serve needs these.
    @cached_property
    def send_queue(self) -> deque[tuple[bytes, bool]]:  # type: ignore[override]  # lazily, per connection
        return deque()

    @cached_property
    def utf8validator(self) -> Utf8Validator:  # type: ignore[override]  # lazily, per connection
        return Utf8Validator()

    def __init__(self) -> None:
        super().__init__()
        del self._transport_details  # a placeholder from autobahn; see connectionMade
        self.conn: Connection | None = None
        self.closed: Deferred[None] = Deferred()
        """Fires once ``onclose`` (or the lack of one) has run for this connection."""
        self._events = EventQueue(self._pause_reading, self._resume_reading, self._handler_failed)
        self._upgrade: tuple[Sequence[ParamValue], object] | None = None

    def connectionMade(self) -> None:
        # autobahn's version ends with a debug line whose arguments it formats
        # (with its highlighting helpers) on every connection, logging or not,
        # and gathers transport details (two system calls) that only WAMP reads:
        # here they are made on first use.
        transport: Any = self.transport
        self.peer = peer2str(transport)
        # Asked rather than assumed: twisted.web's channel turns Nagle off only
        # from Twisted 24.10, and a TLS or UNIX transport may not have it.
        get_no_delay = getattr(transport, "getTcpNoDelay", None)
        if get_no_delay is not None:
            try:
                if bool(get_no_delay()) != bool(self.tcpNoDelay):
                    transport.setTcpNoDelay(self.tcpNoDelay)
            except OSError:  # not a TCP socket (a Unix socket, say)
                pass
        self._connectionMade()

    @cached_property
    def _transport_details(self) -> TransportDetails:  # type: ignore[override]  # made on first use
        details = create_transport_details(cast(Any, self.transport), self.is_server)
        details.channel_framing = TransportDetails.CHANNEL_FRAMING_WEBSOCKET
        return details

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

    def _connectionMade(self) -> None:
        # autobahn's version copies every factory option onto the connection
        # and pretty-prints them all for a debug line: half of a connection's
        # CPU and a third of its memory. The options and initial flags are
        # class attributes here; this sets what each connection has of its own.
        # No opening-handshake timer: the request has been read already (the
        # site's deadline covered that), and accept_upgrade answers at once.
        self.trafficStats = TrafficStats()
        self.state = _STATE_CONNECTING
        self.factory.countConnections += 1

    # The upgrade, handed over by the leaf resource.

    def accept_upgrade(
        self,
        key: str,
        offered_protocols: Sequence[str],
        extensions: str,
        subprotocol: str | None,
        params: Sequence[ParamValue],
        userdata: object,
        path: str,
        fresh: bool = False,
    ) -> None:
        """Complete the opening handshake for a request twisted.web has parsed and checked.

        ``fresh``: nothing was written on this connection before (the upgrade
        is its first request), so the 101 can go to the socket directly.
        """
        transport: Any = self.transport
        plain_tcp = isinstance(transport, tcp.Connection)
        self._pull = plain_tcp
        if plain_tcp:
            transport.bufferSize = _READ_SIZE
            transport.SEND_LIMIT = _READ_SIZE
            transport.registerProducer(_OutgoingFlow(self), False)
            if fresh:
                self._socket = transport.getHandle()
        else:
            cast(IConsumer, transport).registerProducer(_OutgoingFlow(self), True)
        self.http_request_path = path
        self.http_request_uri = path
        self.websocket_version = 13
        self.websocket_protocols = list(offered_protocols)
        self.websocket_extensions = (
            WebSocketServerProtocol._parseExtensionsHeader(self, extensions) if extensions else []
        )
        self._wskey = key
        self._upgrade = (params, userdata)
        if self.factory.compression and self.websocket_extensions:
            self.perMessageCompressionAccept = deflate_acceptor(
                self._rule.effective_max_payload, offered_client_bits(self.websocket_extensions)
            )
        if self.websocket_extensions or self.factory.headers or self.factory.server or self.trackedTimings:
            self.succeedHandshake(subprotocol)
        else:
            self._succeed_plain(subprotocol)
        if plain_tcp and not fresh and transport.connected:
            # Earlier responses may have been in the transport's buffer, so the
            # 101 (and what onopen sent) went there too: direct sends wait for its drain.
            self._socket = transport.getHandle()
            self._paused_out = True
        # A dict rebuilt without the handshake's leftovers is sized to what stays.
        self.__dict__ = {k: v for k, v in self.__dict__.items() if k not in _HANDSHAKE_ONLY}

    def _succeed_plain(self, subprotocol: str | None) -> None:
        # autobahn's succeedHandshake, for what nearly every upgrade is: no
        # extension offered, no extra headers.  autobahn's version assembles the
        # response with per-header loops and formats a debug line on the way.
        accept = base64.b64encode(hashlib.sha1(self._wskey.encode("ascii") + _WS_MAGIC).digest())
        chosen = b"" if subprotocol is None else b"Sec-WebSocket-Protocol: %s\r\n" % subprotocol.encode("utf-8")
        self.websocket_protocol_in_use = subprotocol
        self.websocket_extensions_in_use = []
        self.sendData(_SWITCHING + chosen + b"Sec-WebSocket-Accept: %s\r\n\r\n" % accept)
        self.state = _STATE_OPEN
        self.inside_message = False
        self.current_frame = cast(Any, None)
        if self.autoPingInterval:
            self.autoPingPendingCall = self.factory._batched_timer.call_later(
                self.autoPingInterval, self._sendAutoPing
            )
        self._onOpen()
        cast(Deferred[None], self.is_open).callback(None)

    def is_sendable(self) -> bool:
        """Whether the connection is open for messages."""
        return bool(self.state == _STATE_OPEN)

    def close_by_app(self, code: int, reason: str) -> None:
        """Start the close handshake on the application's behalf."""
        if self.state == _STATE_OPEN:
            self._app_close = True
            self.sendCloseFrame(code=code, reasonUtf8=encode_truncate(reason, 123), isReply=False)

    # autobahn's hooks.

    def onOpen(self) -> None:
        params, userdata = self._upgrade or ((), None)
        self._upgrade = None
        rule = self._rule
        conn = Connection(
            self,
            rule,
            params,
            userdata,
            _peer_host(self.transport),
            self.websocket_protocol_in_use,
        )
        self.conn = conn
        # No extension in use: frames are plain, and the fast paths apply.
        self._plain = self._perMessageCompress is None and not self.autoFragmentSize
        rule._opened(conn)
        self._events.push(rule.open_handler, conn)

    # Per-message costs of autobahn's generic paths that this protocol has no use for.

    def onMessageEnd(self) -> None:
        # autobahn's version also fires its "message" observer signal, which
        # costs a Deferred and two callbacks per message; nothing observes it here.
        parts: list[bytes] | None = self.message_data
        self.message_data = cast(Any, None)
        if parts is not None and not self.failedByMe:
            self.onMessage(parts[0] if len(parts) == 1 else b"".join(parts), self.message_is_binary)

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        # autobahn formats debug-log arguments on every write even with logging
        # off; the plain case (no chopping, nothing queued) needs only the write.
        if sync or chopsize or self.__dict__.get("send_queue") or self.logOctets:
            WebSocketServerProtocol.sendData(self, data, sync, chopsize)
            return
        self._write(data)
        if self.state == _STATE_OPEN:
            self.trafficStats.outgoingOctetsWireLevel += len(data)
        else:
            self.trafficStats.preopenOutgoingOctetsWireLevel += len(data)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        handler = self._rule.message_handler
        if handler is not None:
            data: str | bytes = payload if isBinary else payload.decode("utf-8")
            self._events.push_message(handler, len(payload), self.conn, data, isBinary)

    def sendCloseFrame(
        self, code: int | None = None, reasonUtf8: bytes | None = None, isReply: bool = False
    ) -> None:
        # autobahn fails a connection (protocol error, bad UTF-8, too big, ...)
        # by sending a close frame of its own; that is when onerror is due, at
        # once: the messages still queued are for nobody now (RFC 6455 7.1.7).
        was_open = self.state == _STATE_OPEN
        if not (isReply or self._app_close) and was_open:
            reason = (reasonUtf8 or b"").decode("utf-8", "replace")
            self._events.drop_messages()
            self._report_error(_CROW_MESSAGES.get(reason, reason or f"connection failed with {code}"), first=True)
        super().sendCloseFrame(code=code, reasonUtf8=reasonUtf8, isReply=isReply)
        if was_open:
            # Keepalive is over: the close timeout bounds the rest.  Reading goes
            # on whatever the queue holds, so the peer's close frame is heard.
            self._suspend_keepalive()
            self._events.closing()

    # Close frames: both receive paths end here (the fast path with a whole
    # frame, autobahn's through processControlFrame).

    def processControlFrame(self) -> bool:
        # autobahn (public hook, private state): current_frame and
        # control_frame_data hold the whole control frame.  Its own close
        # handling treats a one-byte payload as an empty close, knows no 1014,
        # and answers an invalid code with a reset and a clean 1000.
        if self.current_frame.opcode == 8:
            payload = b"".join(self.control_frame_data)
            self.control_frame_data = cast(Any, None)
            self._close_frame_received(payload)
            return True
        return bool(super().processControlFrame())

    def _close_frame_received(self, payload: bytes) -> None:
        try:
            code, reason = parse_close(payload)
        except CloseFrameError as error:
            self._fail_on_close(error.code, error.message)
            return
        self.remoteCloseCode = code
        self.remoteCloseReason = reason or None
        if self.state == _STATE_OPEN:
            # The peer starts the close: echo its code and reason, then close the TCP connection.
            self.wasClean = True
            self.sendCloseFrame(code=code, reasonUtf8=encode_truncate(reason, 123) if code else None, isReply=True)
            self.dropConnection(abort=False)
        elif self.state == _STATE_CLOSING:
            # The peer's answer to our close: the handshake is complete.
            timeout = self.closeHandshakeTimeoutCall
            if timeout is not None:
                timeout.cancel()
                self.closeHandshakeTimeoutCall = None
            self.wasClean = True
            self.dropConnection(abort=False)

    def _fail_on_close(self, code: CloseCode, message: str) -> None:
        # RFC 6455 7.1.7: fail the connection: a close frame saying why (the
        # peer has closed already, so no answer is awaited), then the TCP close.
        if not (self.failedByMe and self.localCloseCode is not None):
            # (Failed already, when autobahn found the frame broken first: onClose reports that close.)
            self._failed_close = (int(code), message)
        self.wasClean = False
        self.wasNotCleanReason = message
        if self.state == _STATE_OPEN:
            self._report_error(message)
            self.sendCloseFrame(code=int(code), reasonUtf8=encode_truncate(message, 123), isReply=True)
        self.dropConnection(abort=False)

    # A connection failed by us only waits for the peer's close frame: the rest
    # of a data frame is skipped, not inflated, validated or kept (autobahn would
    # inflate it again, fail again, and never reach the close frame behind it).

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

    def onAutoPingTimeout(self) -> None:
        # autobahn drops the TCP connection here; a close frame with 1011 tells
        # a peer that is merely slow why, and the close timeout still bounds it.
        if self.state != _STATE_OPEN:
            WebSocketServerProtocol.onAutoPingTimeout(self)
            return
        if self._backlog or self._paused_out:
            # Our own outgoing data is not all out, and the ping may be behind
            # some of it: the peer is judged once it had the chance to answer.
            self.autoPingTimeoutCall = self.factory._batched_timer.call_later(
                self.autoPingTimeout, self.onAutoPingTimeout
            )
            return
        self.autoPingTimeoutCall = None
        self.sendCloseFrame(code=_INTERNAL_ERROR, reasonUtf8=b"keepalive ping timeout", isReply=False)

    def sendPing(self, payload: bytes | None = None) -> None:
        backlog = self._backlog
        if backlog and self.state == _STATE_OPEN and not self.__dict__.get("send_queue"):
            # Frames waiting for a slow reader: the ping goes ahead of them (a
            # control frame may come between any two frames), so a peer that
            # reads steadily gets it, and answers, without draining them first.
            ping = bytes((0x89, len(payload or b""))) + (payload or b"")
            backlog.appendleft(ping)
            self._backlog_size += len(ping)
            return
        super().sendPing(payload)

    def send_buffer_exceeded(self, queued: int) -> None:
        """The peer left more than ``max_send_buffer`` bytes unread: apply the policy."""
        settings = self._rule.settings
        if settings.send_buffer_policy != "close" or self.state != _STATE_OPEN:
            return
        log.warn(
            "WebSocket {route} to {peer}: {queued} bytes unread (limit {limit}); closing with 1008",
            route=self._rule.pattern,
            peer=self.conn.get_remote_ip() if self.conn is not None else "?",
            queued=queued,
            limit=settings.max_send_buffer,
        )
        self.sendCloseFrame(code=_POLICY_VIOLATION, reasonUtf8=b"peer too slow: send buffer full", isReply=False)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        conn = self.conn
        if conn is None or self._close_reported:
            if conn is None and not self.closed.called:
                self.closed.callback(None)
            return
        self._close_reported = True
        # A handler still pending (a Deferred that may never fire) must not hold
        # onclose back, and messages still queued are for nobody now.
        self._events.close()
        rule = self._rule
        rule._closed(conn)
        conn._detach()
        if self._failed_close is not None:
            code, reason = self._failed_close
        elif self.failedByMe and self.localCloseCode is not None:
            # We failed the connection (RFC 6455 7.1.7): that is its close,
            # whatever the peer answered, or whether it did.
            sent = self.localCloseReason
            code, reason = self.localCloseCode, sent.decode("utf-8", "replace") if sent else ""
        elif wasClean:
            code = 1005 if code is None else code
            reason = reason or ""
        else:
            code, reason = 1006, "uncleanly"
        self._events.push(rule.close_handler, conn, reason, code, essential=True)
        self._events.push(Handler.fitted(self._fire_closed, "onclose", 0), essential=True)

    # Internals.

    def _fire_closed(self) -> None:
        if self.conn is not None:
            self.conn._notify_closed()
        if not self.closed.called:
            self.closed.callback(None)

    def _report_error(self, message: str, first: bool = False) -> None:
        if self.conn is None or self._error_reported:
            return
        self._error_reported = True
        handler = self._rule.error_handler
        if first:
            self._events.push_first(handler, self.conn, message)
        else:
            self._events.push(handler, self.conn, message, essential=True)

    def _handler_failed(self, failure: Failure, event: str) -> None:
        rule = self._rule
        if failure.check(CancelledError) and self._close_reported:
            log.info(
                "{event} handler of WebSocket route {route} was still pending when its connection"
                " closed; cancelled it",
                event=event,
                route=rule.pattern,
            )
            return
        peer = self.conn.get_remote_ip() if self.conn is not None else "?"
        log.failure(
            "{event} handler of WebSocket route {route} raised (peer {peer})",
            failure,
            event=event,
            route=rule.pattern,
            peer=peer,
        )
        if event in ("onerror", "onclose"):
            return
        kind = failure.type.__name__ if failure.type is not None else "an error"
        self._report_error(f"{event} handler raised {kind}: {failure.value}", first=True)
        if self.state == _STATE_OPEN:
            self._app_close = True
            self.sendCloseFrame(code=_INTERNAL_ERROR, reasonUtf8=b"internal error", isReply=False)

    def send_message(self, payload: bytes, is_binary: bool) -> None:
        """Send one message; the caller has checked that the connection is open.

        Without compression, the frame is one unmasked header and the payload,
        written in one go; autobahn's general path builds the same bytes.
        """
        if self._plain and not self.__dict__.get("send_queue"):
            length = len(payload)
            first = 0x82 if is_binary else 0x81
            if length < 126:
                header = bytes((first, length))
            elif length < 65536:
                header = _HEADER_16.pack(first, 126, length)
            else:
                header = _HEADER_64.pack(first, 127, length)
            if length < 1024:
                self._write(header + payload)
            else:
                self._write(header, payload)
            self.trafficStats.outgoingOctetsWireLevel += len(header) + length
        else:
            WebSocketServerProtocol.sendMessage(self, payload, is_binary)

    # The receive fast path.

    def dataReceived(self, data: bytes) -> None:
        if self._socket is None or self._cork is not None:
            self._receive(data)
            return
        # The replies to one read go out in one send, as Twisted's buffer gave;
        # in a busy reactor turn, with every other connection's, at its end.
        hold = _coalescer.read(self)
        self._cork = []
        try:
            self._receive(data)
        finally:
            if hold and self._cork and self._cork_size < _HOLD_BELOW:
                _coalescer.hold(self, cast(Any, self.transport).reactor.callLater)
            else:
                self.release()

    def release(self) -> None:
        """Send the replies held back (at the end of a read, or of a busy reactor turn)."""
        self._uncork()
        self._cork = None

    def _receive(self, data: bytes) -> None:
        # autobahn's dataReceived formats a debug line per read even with logging
        # off; its _dataReceived is the same without that.
        chunks = self._rx_chunks
        if chunks is None:
            self._deliver(data, 0)
            return
        # The fast path holds the start of a frame: wait for all of it.
        self._rx_size += len(data)
        if self._rx_size < self._rx_need:
            chunks.append(data)
            return
        self._rx_chunks = None
        extra = self._rx_size - self._rx_need
        if extra and self._rx_need > _MAX_HEADER:
            # The held frame is whole (not just its header): join only it, and
            # parse the rest of this read in place.
            offset = len(data) - extra
            chunks.append(memoryview(data)[:offset])
            self._deliver(b"".join(chunks), 0)  # a whole frame: nothing is held again
            self._deliver(data, offset)
            return
        chunks.append(data)
        self._deliver(b"".join(chunks), 0)

    def _deliver(self, data: bytes, offset: int) -> None:
        if (
            self._plain
            and self.state == _STATE_OPEN
            and not self.data
            and self.current_frame is None
            and not self.inside_message  # a fragmented message is autobahn's to finish
        ):
            offset = self._complete_frames(data, offset)
            if offset >= len(data):
                return
        self._dataReceived(data[offset:] if offset else data)

    def _complete_frames(self, data: bytes, start_offset: int) -> int:
        """Deliver the complete, unfragmented data frames in ``data``.

        The common case of a connection without compression: whole text or
        binary frames, masked (or unmasked where Crow's lenient mode allows),
        with valid UTF-8 and within max_payload.  A frame that starts well but
        is not all there yet is kept (``_rx_*``) until its last byte arrives.
        A whole close frame goes to autobahn's ``onCloseFrame``.  Anything else
        (pings, pongs, fragments, non-minimal lengths, bad data) stops the fast
        path at that frame's first byte, and autobahn's
        state machine takes the rest, so every protocol rule is still
        autobahn's.  Starts at ``start_offset``; returns where the bytes not
        consumed start (``len(data)`` when all were, or are held).
        """
        size = len(data)
        offset = start_offset
        handler = self._rule.message_handler
        limit = self.maxMessagePayloadSize
        lenient = not self.requireMaskedClientFrames
        events = self._events
        push = events.push_message
        conn = self.conn
        while offset < size:
            first = data[offset]
            if first != 0x81 and first != 0x82 and first != 0x88:
                break
            if size - offset < 2:
                self._hold(data, offset, 2)
                offset = size
                break
            second = data[offset + 1]
            length = second & 0x7F
            start = offset + (2 if length < 126 else 4 if length == 126 else 10)
            if start > size:
                self._hold(data, offset, start - offset)
                offset = size
                break
            if length == 126:
                length = (data[offset + 2] << 8) | data[offset + 3]
                if length < 126:
                    break
            elif length == 127:
                length = int.from_bytes(data[offset + 2 : start], "big")
                if length < 65536 or length >> 63:
                    break
            if limit and length > limit:
                break
            if first == 0x88 and (length > 125 or length == 1):
                break  # autobahn's protocol errors
            masked = second & 0x80
            if not masked and not lenient:
                break
            end = start + length + (4 if masked else 0)
            if end > size:
                self._hold(data, offset, end - offset)
                offset = size
                break
            if masked:
                payload = _unmask(data, start + 4, end, data[start : start + 4])
            else:
                payload = data[start:end]
            if first == 0x81:
                try:
                    message: str | bytes = payload.decode("utf-8")
                except UnicodeDecodeError:
                    break
            elif first == 0x88:
                offset = end
                self._close_frame_received(payload)
                break
            else:
                message = payload
            offset = end
            if handler is not None:
                push(handler, length, conn, message, first == 0x82)
            if self.state != _STATE_OPEN or events.paused:
                break  # closing, or the queue is full: autobahn's buffer keeps the rest
        if offset > start_offset:
            self.trafficStats.incomingOctetsWireLevel += offset - start_offset
            if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:
                self._cancelAutoPingTimeoutCall()
        return offset

    def _hold(self, data: bytes, offset: int, need: int) -> None:
        """Keep ``data[offset:]``, a frame's start, until ``need`` bytes of it are in."""
        self._rx_chunks = [memoryview(data)[offset:] if offset else data]
        self._rx_size = len(data) - offset
        self._rx_need = need
        # Counted when the frame is complete and consumed.
        self.trafficStats.incomingOctetsWireLevel -= self._rx_size

    def send_control(self, payload: bytes, ping: bool) -> None:
        """Send a ping or a pong."""
        if ping:
            self.sendPing(payload or None)
        else:
            WebSocketServerProtocol.sendPong(self, payload or None)

    # Outgoing flow.

    def _write(self, data: bytes, more: bytes = b"") -> None:
        cork = self._cork
        size = len(data) + len(more)
        if cork is not None:
            cork.append(data)
            if more:
                cork.append(more)
            self._cork_size += size
            if self._cork_size >= _READ_SIZE:
                # Enough for one send; it also tells a sending loop if the peer is behind.
                self._uncork()
        else:
            self._emit([data, more] if more else [data], size)

    def _uncork(self) -> None:
        cork = self._cork
        if not cork:
            return
        parts = cork[:]
        size = self._cork_size
        cork.clear()
        self._cork_size = 0
        self._emit(parts, size)

    def _emit(self, parts: list[bytes], size: int) -> None:
        if self._paused_out or self._backlog:
            self._hold_back(b"".join(parts))
        else:
            self._send_out(parts, size)

    def _send_out(self, parts: list[bytes], size: int) -> None:
        sock = self._socket
        transport: Any = self.transport
        if sock is None or transport.disconnecting:
            transport.writeSequence(parts)
            if self._pull and not transport.disconnecting:
                # Plain TCP before the socket is ours (the 101, and what onopen
                # sends, on a connection that answered HTTP before): the transport
                # holds it, in order; writable counts it until the transport drains.
                self._in_transport += size
                self._owing_more()
            return
        if size <= _JOIN_BELOW or len(parts) > _MAX_PARTS:
            parts = [b"".join(parts)] if len(parts) > 1 else parts
        try:
            # One part: send(2), which costs less than sendmsg(2); several:
            # gathered by the kernel, no copy to put headers and payloads together.
            sent = sock.send(parts[0]) if len(parts) == 1 else sock.sendmsg(parts)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = -1  # the transport meets the error on its next write and closes
        if sent == size:
            return
        # The socket is full (or gone): the transport keeps the rest, and
        # frames wait in the backlog until it has drained.
        data = b"".join(parts)
        transport.write(data[sent:] if sent > 0 else data)
        self._paused_out = True
        self._in_transport += size - max(sent, 0)
        self._owing_more()

    def _hold_back(self, data: bytes) -> None:
        backlog = self._backlog
        if backlog is None:
            backlog = self._backlog = deque()
        backlog.append(data)
        self._backlog_size += len(data)
        self._owing_more()
        limit = self._rule.settings.max_send_buffer
        if limit is not None and self._backlog_size > limit and not self._over_limit:
            self._over_limit = True  # the close frame sent next lands here too
            self.send_buffer_exceeded(self._backlog_size)

    def _outgoing_paused(self, paused: bool) -> None:
        """The transport's buffer went over its high-water mark (``True``), or drained."""
        transport: Any = self.transport
        if not paused and self._socket is not None and transport.disconnecting:
            # A pull producer would keep a closing transport from finishing.
            transport.unregisterProducer()
            return
        self._paused_out = paused
        if not paused:
            # A pull producer is resumed when the transport's buffer is empty.
            self._in_transport = 0
        backlog = self._backlog
        if not paused and backlog:
            if self._socket is not None:
                size = self._backlog_size
                self._backlog = None
                self._backlog_size = 0
                self._send_out(list(backlog), size)
            else:
                # Each write may pause us again, synchronously: then the rest waits.
                while backlog and not self._paused_out:
                    data = backlog.popleft()
                    self._backlog_size -= len(data)
                    transport.write(data)
            if not self._backlog:
                self._over_limit = False
        self._update_writable()

    def _owing_more(self) -> None:
        # More waits to go out: a writable connection may have stopped being one.
        conn = self.conn
        if conn is not None and conn.writable:
            self._update_writable()

    def _update_writable(self) -> None:
        # Writable while at most a high-water mark's worth waits to go out:
        # over TLS the transport's own buffer, on plain TCP the backlog and
        # what the socket left with the transport.
        conn = self.conn
        if conn is not None:
            if not self._pull:
                conn._set_writable(not self._paused_out)
            else:
                conn._set_writable(self._backlog_size + self._in_transport <= _READ_SIZE)

    def _outgoing_stopped(self) -> None:
        self._backlog = None
        self._backlog_size = 0
        self._in_transport = 0
        self._paused_out = False
        self._update_writable()

    def _closeConnection(self, abort: bool = False) -> None:
        transport: Any = self.transport
        held = list(self._backlog or ()) + (self._cork or [])
        size = self._backlog_size + self._cork_size
        self._backlog = None
        self._backlog_size = 0
        if self._cork:
            self._cork.clear()
            self._cork_size = 0
        if abort or transport is None:
            super()._closeConnection(abort)
            return
        # A clean close flushes: what is held goes out before the connection
        # closes (the socket takes it now if nothing is queued ahead of it).
        if held:
            if self._paused_out:
                transport.writeSequence(held)
            else:
                self._send_out(held, size)  # to the socket directly where there is one
        # Not abortConnection, even with nothing left to send: it closes with
        # a reset, which may discard the close frame before the peer reads it.
        super()._closeConnection(False)
        # But a peer that reads nothing more (the close frame behind a backlog
        # it will not take) or never ends TLS would hold the connection, and
        # its onclose, forever: the close timeout bounds this last step too.
        if self._drop_timer is None and getattr(transport, "connected", True):
            self._drop_timer = self.factory._batched_timer.call_later(
                self.closeHandshakeTimeout or 5.0, self._abort_lingering
            )

    def _abort_lingering(self) -> None:
        self._drop_timer = None
        transport: Any = self.transport
        if transport is not None and getattr(transport, "connected", True):
            transport.abortConnection()

    def _pause_reading(self) -> None:
        # The incoming queue is full: stop reading.  A pong we do not read is no
        # fault of the peer's, so keepalive stops judging it until we read again.
        if self.transport is not None:
            cast(IPushProducer, self.transport).pauseProducing()
        self._suspend_keepalive()

    def _resume_reading(self) -> None:
        if self.transport is not None:
            cast(IPushProducer, self.transport).resumeProducing()
        if self.data and not self._consuming:
            self.consumeData()  # what a read held beyond the queue's bound (it may fill the queue again)
        if (
            self.autoPingInterval
            and self.state == _STATE_OPEN
            and self.autoPingPendingCall is None
            and not self._events.paused
        ):
            # autobahn (private): the next automatic ping, as it schedules it.
            self.autoPingPendingCall = self.factory._batched_timer.call_later(
                self.autoPingInterval, self._sendAutoPing
            )

    def consumeData(self) -> None:
        # autobahn (public, undocumented): parses the frames in self.data, one
        # per processData() call.  Parsing stops while the incoming queue is
        # full, so one read of compressed frames cannot inflate into more than
        # the queue's bound; the rest waits in self.data until it has room.
        if self.state == _STATE_OPEN or self.state == _STATE_CLOSING:
            events = self._events
            self._consuming = True
            try:
                while not events.paused and self.processData() and self.state != _STATE_CLOSED:
                    pass
            finally:
                self._consuming = False
        else:
            super().consumeData()

    def _suspend_keepalive(self) -> None:
        # autobahn (private): autoPingPendingCall sends the next ping,
        # autoPingTimeoutCall fails the connection when its pong is late, and
        # autoPingPending is the ping awaited (a pong for it is then ignored).
        call = self.autoPingPendingCall
        if call is not None:
            call.cancel()
            self.autoPingPendingCall = None
        call = self.autoPingTimeoutCall
        if call is not None:
            call.cancel()
            self.autoPingTimeoutCall = None
        if self.autoPingPending is not None:
            self.autoPingPending = None


for _name, _value in _INITIAL_STATE.items():
    setattr(CrowServerProtocol, _name, _value)
