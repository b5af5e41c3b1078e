"""``CrowServerProtocol``: one WebSocket connection, from its frames to its rule's handlers.

The opening handshake has been checked already (``_upgrade``, by the leaf
after the rule's ``onaccept``, or by the site's fast path) when this protocol
takes over the transport; ``accept_upgrade`` answers it.  Then, per read:

    bytes → ``_frames.FrameParser`` → frames → this module acts on each:
    a whole message → ``_dispatch.EventQueue`` → the rule's ``onmessage``;
    ping → pong; pong → keepalive; close → the close handshake.

Compressed connections use the same parser, with ``_deflate.DeflateCodec``
inflating and deflating; every connection when ``_autobahn``'s guard failed
(and a compressed one when its deflate check failed) reads through
autobahn's own frame machinery, which calls ``onMessage``.  Replies go out
through ``_outgoing.Outgoing``.  Everything that touches autobahn's
undocumented state is in ``_autobahn`` (or, on its public paths,
``_public``); this module uses their methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast
from collections.abc import Sequence

from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.python.failure import Failure

from .._log import log
from .._handlers import Handler
from .._peer import peer_host
from .._routing import ParamValue
from ._autobahn import FAST, FastProtocol
from ._close import CloseCode
from ._coalesce import Coalescer
from ._connection import Connection, detach, notify_closed, set_writable
from ._deflate import DeflateCodec, frame_bound
from ._dispatch import EventQueue
from ._extensions import offered_acceptor
from ._encoding import compressed_header, data_header
from ._frames import Frame, FrameParser, Opcode, ProtocolError
from ._messages import MessageAssembler
from ._outgoing import HOLD_BELOW, Outgoing
from ._public import PublicProtocol
from ._route import RouteHandlers

__all__ = ["CrowServerProtocol", "PublicCrowProtocol", "protocol_base"]


# One per process, as the reactor is.
_coalescer = Coalescer()


if TYPE_CHECKING:
    _Base = FastProtocol
else:
    _Base = object


class _Glue(_Base):
    """crowtwist's side of a connection; mixed into ``FastProtocol`` or ``PublicProtocol``."""

    _route: RouteHandlers
    """The rule this connection serves, set when the protocol is built."""
    sendable = False
    """Open for messages: the handshake is done and no close frame has been sent (read-only)."""
    _error_reported = False
    _close_reported = False
    _parser: FrameParser | None = None
    _receiving = True
    _unread: list[tuple[int, bytes]] | None = None
    """Frames parsed and not acted on yet: the queue filled up before them."""
    """False once the connection is failed: what the peer sends after is not read."""
    _assembler: MessageAssembler | None = None
    _max_payload: int | None = None
    _out: Outgoing | None = None
    _deflate: DeflateCodec | None = None
    """permessage-deflate on crowtwist's parser: this connection's inflater and deflater."""
    _inflating = False
    """A compressed message has begun and its last frame is still to come."""
    _upgrade: tuple[Sequence[ParamValue], object] | None = None
    """The route's parameters and ``onaccept``'s userdata, until ``onopen``."""

    def __init__(self) -> None:
        super().__init__()
        self.conn: Connection | None = None
        hooks = self._hooks = _Hooks(self)
        self._events = EventQueue(hooks.pause_reading, hooks.resume_reading, hooks.handler_failed)

    _closed: Deferred[None] | None = None
    _finished = False

    @property
    def closed(self) -> Deferred[None]:
        """Fires once ``onclose`` (or the lack of one) has run for this connection.

        Made when first asked for: nearly every connection closes without anyone waiting.
        """
        closed = self._closed
        if closed is None:
            closed = self._closed = succeed(None) if self._finished else Deferred()
        return closed

    def _finish(self) -> None:
        self._finished = True
        closed = self._closed
        if closed is not None and not closed.called:
            closed.callback(None)

    def configure(self, route: RouteHandlers) -> None:
        """Serve ``route``'s handlers with its limits."""
        self._route = route
        self._events.max_messages = route.effective_max_queue
        self._events.max_bytes = route.effective_max_queue_bytes

    # The upgrade, handed over by the leaf resource or the fast path.

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
        is its first request), so frames can go to the socket directly.
        """
        route = self._route
        direct = self.plain_sends_allowed()
        hooks = self._hooks
        out = self._out = Outgoing(
            self.transport, hooks.writable_changed, route.settings.max_send_buffer, hooks.send_buffer_exceeded, direct
        )
        out.attach(fresh)
        self._upgrade = (params, userdata)
        max_payload = route.effective_max_payload

        def accept(offers: Sequence[Any]) -> Any:
            return offered_acceptor(offers, max_payload, route.settings.compression_context_takeover)

        self.complete_handshake(
            key, offered_protocols, extensions, subprotocol, path, accept if route.effective_compression else None
        )
        out.after_handshake()

    def plain_sends_allowed(self) -> bool:
        """Whether frames may bypass autobahn's sender: not on its public paths."""
        return not isinstance(self, PublicProtocol)

    def set_max_payload(self, size: int | None) -> None:
        """This connection's bound on an incoming message, from the next message on."""
        self._max_payload = size
        if self._parser is not None:
            deflate = self._deflate
            if deflate is None:
                self._parser.max_size = size
            else:
                deflate.max_size = size
                self._parser.max_size = frame_bound(size)
        else:
            # autobahn's frame machinery (public paths, or the deflate guard failed) checks its protocol
            # option per frame; the deflate decompressor keeps the bound it was made with.
            self.maxMessagePayloadSize = size or 0

    def close_by_app(self, code: int, reason: str) -> None:
        """Start the close handshake on the application's behalf."""
        if self.sendable:
            self.start_close(code, reason)

    # autobahn's public hooks.

    def onOpen(self) -> None:
        params, userdata = self.__dict__.pop("_upgrade", None) or ((), None)
        route = self._route
        self.sendable = True
        conn = self.conn = Connection(
            self, route, params, userdata, peer_host(cast(Any, self.transport).getPeer()), self.websocket_protocol_in_use
        )
        self._max_payload = route.effective_max_payload
        if self.plain:
            self._parser = FrameParser(
                max_size=route.effective_max_payload, require_mask=route.settings.enforce_ws_spec
            )
        elif self.plain_sends_allowed():  # (on autobahn's public paths, autobahn's own deflate)
            deflate_params = self.deflate_params()
            if deflate_params is not None:
                # permessage-deflate on our parser: RSV1 is allowed (on a message's first frame; _frame checks).
                self._deflate = DeflateCodec(
                    deflate_params, max_size=self._max_payload, keep_context=route.settings.compression_context_takeover
                )
                self._parser = FrameParser(
                    max_size=frame_bound(self._max_payload), require_mask=route.settings.enforce_ws_spec, allowed_rsv=4
                )
        route.connection_opened(conn)
        if log.debugging:
            log.debug(
                "WebSocket {route} opened by {peer} (subprotocol: {subprotocol})",
                route=route.pattern, peer=conn.get_remote_ip(), subprotocol=conn.get_subprotocol() or "none",
            )
        self._events.push(route.open_handler, conn)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        handler = self._route.message_handler
        if handler is not None:
            data: str | bytes = payload if isBinary else payload.decode("utf-8")
            self._events.push_message(handler, len(payload), self.conn, data, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        conn = self.conn
        self.sendable = False
        if conn is None or self._close_reported:
            if conn is None:
                self._finish()
            return
        self._close_reported = True
        code, reason = self.close_outcome(wasClean, code, reason)
        try:
            code = CloseCode(code)  # one type for onclose: the enum where the code has a name
        except ValueError:  # 3000-4999, the application's own
            pass
        if log.debugging:
            log.debug(
                "WebSocket {route} of {peer} closed: {code} {reason!r} ({clean})",
                route=self._route.pattern, peer=conn.get_remote_ip(), code=int(code), reason=reason,
                clean="clean" if wasClean else "not clean",
            )
        # A handler still pending (a Deferred that may never fire) must not hold
        # onclose back, and messages still queued are for nobody now.
        self._events.close()
        route = self._route
        route.connection_closed(conn)
        detach(conn)
        self._events.push(route.close_handler, conn, reason, code, essential=True)
        self._events.push(Handler.fitted(self._fire_closed, "onclose", 0), essential=True)

    # Sending.

    def send_message(self, payload: bytes, is_binary: bool) -> None:
        """Send one message; the caller has checked that the connection is open."""
        out = self._out
        if self._parser is not None and out is not None:
            deflate = self._deflate
            if deflate is not None:
                # Every message, small ones too: with context takeover a repeated
                # 64-byte message deflates to 4 bytes, for about 1 µs of zlib.
                body = deflate.compress(payload)
                length = len(body)
                if length < 126:
                    out.write(bytes((0xC2 if is_binary else 0xC1, length)) + body)
                else:
                    out.write(compressed_header(is_binary, length), body)
                return
            # Without an extension a frame is one unmasked header and the payload.
            length = len(payload)
            if length < 126:
                out.write(bytes((0x82 if is_binary else 0x81, length)) + payload)
            elif length < 1024:
                out.write(data_header(is_binary, length) + payload)
            else:
                out.write(data_header(is_binary, length), payload)
        else:
            # autobahn's, or PublicProtocol's (through its wire, and past maxMessagePayloadSize).
            self.sendMessage(payload, is_binary)  # type: ignore[no-untyped-call]  # autobahn's is unannotated

    def send_shared(self, frame: bytes, payload: bytes, is_binary: bool) -> bool:
        """Send a broadcast's prebuilt ``frame``; False, and nothing sent, when over the send bound.

        Over the bound the peer is behind: a broadcast skips it rather than
        queue more (or close it, as a handler's own send would under the close policy).
        """
        out = self._out
        if out is None:
            return False
        limit = out.limit
        waiting = out.waiting
        # (a frame larger than the bound alone goes to a peer that is not behind)
        if limit is not None and waiting and waiting + len(frame) > limit:
            return False
        if self._parser is not None and self._deflate is None:
            out.write(frame)
        else:  # compressed, or autobahn's public paths: each connection frames its own
            self.send_message(payload, is_binary)
        return True

    def send_control(self, payload: bytes, ping: bool) -> None:
        """Send a ping or a pong."""
        if ping:
            self.sendPing(payload or None)
        else:
            WebSocketServerProtocol.sendPong(self, payload or None)

    # Receiving.

    def dataReceived(self, data: bytes) -> None:
        out = self._out
        if out is None or not out.cork():
            self._receive(data)
            return
        # The replies to one read go out in one send, as Twisted's buffer gave;
        # in a busy reactor turn, with every other connection's, at its end.
        hold = _coalescer.read(out)
        try:
            self._receive(data)
        finally:
            if hold and 0 < out.held < HOLD_BELOW:
                _coalescer.hold(out, cast(Any, self.transport).reactor.callLater)
            else:
                out.release()

    def _receive(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            self.autobahn_receive(data)
        elif self._receiving and self.still_reading():
            self.count_received(len(data))
            parser.feed(data)
            self._parse(parser)

    def _parse(self, parser: FrameParser) -> None:
        events = self._events
        handler = self._route.message_handler
        conn = self.conn
        deflate = self._deflate
        batch = self._unread
        if batch is not None:
            self._unread = None
        try:
            while True:
                if batch is None:
                    batch = parser.frames()
                    if not batch:
                        break
                for index, (first, payload) in enumerate(batch):
                    if events.paused:
                        # The queue is full: these frames wait for it to have room.
                        self._unread = batch[index:]
                        return
                    if (first == 0x81 or first == 0x82) and self.sendable and self._assembler is None:
                        # A whole text or binary message, as nearly every frame is.
                        if first == 0x81:
                            try:
                                message: str | bytes = payload.decode("utf-8")
                            except UnicodeDecodeError:
                                raise ProtocolError(CloseCode.INVALID_DATA, "invalid UTF-8 in a text message")
                        else:
                            message = payload
                        if handler is not None:
                            events.push_message(handler, len(payload), conn, message, first == 0x82)
                    elif (first == 0xC1 or first == 0xC2) and deflate is not None and self._assembler is None:
                        # A whole compressed message, as nearly every compressed one is.
                        data = deflate.inflate_message(payload)
                        if first == 0xC1:
                            try:
                                message = data.decode("utf-8")
                            except UnicodeDecodeError:
                                raise ProtocolError(CloseCode.INVALID_DATA, "invalid UTF-8 in a text message")
                        else:
                            message = data
                        if handler is not None:
                            events.push_message(handler, len(data), conn, message, first == 0xC2)
                    elif not self._frame(first, payload):
                        return
                if not parser.buffered:
                    break  # (asking again would find nothing, at some cost per read)
                batch = None
        except ProtocolError as error:
            self._fail(error)

    def _frame(self, first: int, payload: bytes) -> bool:
        """Act on a frame other than a whole message while open; False: read no further."""
        opcode = first & 0x0F
        if opcode == Opcode.CLOSE:
            self.close_received(payload)
            return self.still_reading()
        if opcode == Opcode.PING:
            if self.sendable:  # (closing: the close frame is all the peer gets now)
                WebSocketServerProtocol.sendPong(self, payload or None)
        elif opcode == Opcode.PONG:
            self.pong_received(payload)
        else:
            # Fragments, or a message arriving after our close frame, or a compressed message: delivered.
            assembler = self._assembler
            deflate = self._deflate
            rsv = (first >> 4) & 7
            if deflate is not None and (rsv or self._inflating):
                # (a whole compressed message outside a fragmented one is _parse's)
                payload, rsv = self._inflate(deflate, opcode, payload, first > 0x7F, rsv, assembler)
            if assembler is None:
                assembler = self._assembler = MessageAssembler(max_size=self._max_payload)
            done = assembler.add(Frame(opcode, payload, first > 0x7F, rsv))
            if done is not None:
                self._assembler = None
                message, is_binary = done
                handler = self._route.message_handler
                if handler is not None:
                    self._events.push_message(handler, len(message), self.conn, message, is_binary)
        return True

    def _inflate(
        self, deflate: DeflateCodec, opcode: int, payload: bytes, fin: bool, rsv: int,
        assembler: MessageAssembler | None,
    ) -> tuple[bytes, int]:
        """A frame of a compressed message inflated, and the RSV bits left for the assembler."""
        if rsv:
            # (RFC 7692 6.1: RSV1 marks a message's first frame only)
            if not opcode:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "continuation frame with RSV1 set")
            if assembler is not None and assembler.in_message:
                # A new message inside a fragmented one: the assembler says so (1002).
                return payload, rsv & 3
            deflate.start()
            self._inflating = True
        elif opcode:
            # An uncompressed message inside a compressed one: the assembler says so (1002).
            return payload, 0
        if fin:
            self._inflating = False
        return deflate.inflate(payload, fin), rsv & 3

    def _fail(self, error: ProtocolError) -> None:
        # RFC 6455 7.1.7: no more data is processed from a peer whose
        # connection is failed (it may not even be framed any more).
        self._receiving = False
        self.fail(int(error.code), error.message)

    # Hooks of the autobahn layer.

    def frames_failed(self, message: str) -> None:
        # The messages still queued are for nobody now (RFC 6455 7.1.7).
        self._events.drop_messages()
        self._report_error(message, first=True)

    def close_sent(self) -> None:
        # Keepalive is over: the close timeout bounds the rest.  Reading goes on
        # whatever the queue holds, so the peer's close frame is heard.
        self.sendable = False
        self.suspend_keepalive()
        self._events.closing()

    def reading_paused(self) -> bool:
        return self._events.paused

    def outgoing_behind(self) -> bool:
        out = self._out
        return out is not None and out.behind

    def write(self, data: bytes) -> None:
        out = self._out
        if out is None:
            cast(Any, self.transport).write(data)
        else:
            out.write(data)

    def write_first(self, frame: bytes) -> bool:
        out = self._out
        return out is not None and out.write_first(frame)

    def flush_outgoing(self) -> None:
        if self._out is not None:
            self._out.flush()

    def discard_outgoing(self) -> None:
        if self._out is not None:
            self._out.discard()

    # Flow control, both ways.

    def _writable_changed(self, writable: bool) -> None:
        if self.conn is not None:
            set_writable(self.conn, writable)

    def _send_buffer_exceeded(self, queued: int) -> None:
        settings = self._route.settings
        if settings.send_buffer_policy != "close" or not self.sendable:
            return
        log.warn(
            "WebSocket {route} to {peer}: {queued} bytes unread (limit {limit}); closing with 1008",
            route=self._route.pattern,
            peer=self.conn.get_remote_ip() if self.conn is not None else "?",
            queued=queued,
            limit=settings.max_send_buffer,
        )
        self.close_with_error(CloseCode.POLICY_VIOLATION, "peer too slow: send buffer full")

    def _pause_reading(self) -> None:
        # The incoming queue is full: stop reading.  A pong we do not read is no
        # fault of the peer's, so keepalive stops judging it until we read again.
        if self.transport is not None:
            cast(Any, self.transport).pauseProducing()
        self.suspend_keepalive()

    def _resume_reading(self) -> None:
        if self.transport is not None:
            cast(Any, self.transport).resumeProducing()
        parser = self._parser
        if parser is None:
            self.consume_held()
        elif self._receiving:
            self._parse(parser)  # what a read held beyond the queue's bound (it may fill it again)
        if not self._events.paused:
            self.schedule_ping()

    # Reporting.

    def _fire_closed(self) -> None:
        # The connection is done: its queue and outgoing side no longer call back
        # into it, so it is freed as soon as the transport lets go, not by the
        # cyclic garbage collector (whose passes cost each connection several µs).
        self._hooks.protocol = None
        # autobahn resolves its is_closed with the protocol itself, a cycle as well;
        # nothing here waits on it, and a fired one without that result says the same.
        if isinstance(self.is_closed, Deferred) and self.is_closed.called:
            self.is_closed = succeed(None)
        if self.conn is not None:
            notify_closed(self.conn)
        self._finish()

    def _report_error(self, message: str, first: bool = False) -> None:
        if self.conn is None or self._error_reported:
            return
        self._error_reported = True
        handler = self._route.error_handler
        if first:
            self._events.push_first(handler, self.conn, message)
        else:
            self._events.push(handler, self.conn, message, essential=True)

    def _handler_failed(self, failure: Failure, event: str) -> None:
        route = self._route
        if failure.check(CancelledError) and self._close_reported:
            log.info(
                "{event} handler of WebSocket route {route} was still pending when its connection"
                " closed; cancelled it",
                event=event,
                route=route.pattern,
            )
            return
        log.failure(
            "{event} handler of WebSocket route {route} raised (peer {peer})",
            failure,
            event=event,
            route=route.pattern,
            peer=self.conn.get_remote_ip() if self.conn is not None else "?",
        )
        if event in ("onerror", "onclose"):
            return
        kind = failure.type.__name__ if failure.type is not None else "an error"
        self._report_error(f"{event} handler raised {kind}: {failure.value}", first=True)
        self.start_close(CloseCode.INTERNAL_ERROR, "internal error")


class _Hooks:
    """What a connection's ``EventQueue`` and ``Outgoing`` call back, held apart from the protocol.

    Bound methods of the protocol would make each of them a reference cycle
    with it; this holder's reference is dropped once ``onclose`` has run.
    """

    __slots__ = ("protocol",)

    def __init__(self, protocol: _Glue) -> None:
        self.protocol: _Glue | None = protocol

    def pause_reading(self) -> None:
        if self.protocol is not None:
            self.protocol._pause_reading()

    def resume_reading(self) -> None:
        if self.protocol is not None:
            self.protocol._resume_reading()

    def handler_failed(self, failure: Failure, event: str) -> None:
        if self.protocol is not None:
            self.protocol._handler_failed(failure, event)
        else:  # (nothing runs after onclose but what was queued before it; said all the same)
            log.failure("{event} handler of a closed WebSocket raised", failure, event=event)

    def writable_changed(self, writable: bool) -> None:
        if self.protocol is not None:
            self.protocol._writable_changed(writable)

    def send_buffer_exceeded(self, queued: int) -> None:
        if self.protocol is not None:
            self.protocol._send_buffer_exceeded(queued)


class CrowServerProtocol(_Glue, FastProtocol):
    """A connection served on crowtwist's fast paths (``_autobahn``'s guard passed)."""


class PublicCrowProtocol(_Glue, PublicProtocol):
    """A connection served on autobahn's documented API alone (the guard failed, or was told to)."""


def protocol_base() -> type[CrowServerProtocol] | type[PublicCrowProtocol]:
    """The protocol class this process serves connections with."""
    return CrowServerProtocol if FAST else PublicCrowProtocol
