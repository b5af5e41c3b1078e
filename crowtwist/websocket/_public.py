"""``PublicProtocol``: a connection served on autobahn's documented API alone.

Used when ``_autobahn``'s guard finds that the installed autobahn no longer
has what the fast paths rely on (or ``CROWTWIST_PUBLIC_PATHS`` says so).  It
offers the same methods as ``_autobahn.FastProtocol``, built on
``onConnect``/``onMessage``/``onClose``/``onPong``, ``sendMessage`` (and
``beginMessage``/``sendMessageFrame``/``endMessage``), ``sendClose``,
``sendPing``/``sendPong``, the factory's ``setProtocolOptions``, and the
handshake that ``autobahn.twisted.resource.WebSocketResource`` performs: the
checked request is handed to autobahn as bytes, and autobahn answers it.

crowtwist keeps the rest on Twisted's side of autobahn: autobahn writes to
``self.transport`` and closes it, as every Twisted protocol does, and once the
connection is open that transport is a ``Wire`` in front of the real one.  It
reads back the frames autobahn writes (their lengths, and close frames'
payloads; never the peer's frames) and hands them on whole through the
connection's ``Outgoing`` in push mode, so writability, ``max_send_buffer``,
pings ahead of a backlog and a flush before the TCP close work as on the fast
paths, and a reset autobahn asks for after its close frame becomes a clean
close.  From the wire this class knows its state (closing once a close frame
went out), and whether autobahn sent that frame on its own: the answer to the
peer's close, or a failure (``onerror`` is due, and ``onclose`` gets its code).
Keepalive and the close timeout run on crowtwist's timers, with ``sendPing``
and ``onPong``; autobahn's are turned off, as they round deadlines down to whole
seconds and drop a silent peer without a close frame.

What it gives up (the tests marked ``fast_paths`` skip, tests/conftest.py):

* autobahn parses and writes every frame: no crowtwist frame parser, no direct
  socket writes, no replies gathered into one send;
* reading pauses when the queue is full, but autobahn handles the whole read
  it is in first, so the queue may pass its bound by what one read holds
  (Twisted reads at most 64 KiB at a time);
* permessage-deflate is declined: autobahn's public API cannot stop inflating
  a read part-way, so a compressed flood would pass the queue bound;
* autobahn's documented ``sendClose`` takes 1000 and 3000-4999 only: a close
  with another code (1001 when stopping, 1008 for a slow reader, 1011 for a
  handler that raised or a keepalive timeout, 1012-1014) is sent as 1000, with
  the code at the start of the reason (``"1001 going away"``);
* a failed connection closes when autobahn's close handshake does (or the close
  timeout), not with a half-close at once, so a peer that keeps sending may get
  a reset that loses the replies and close frame before it;
* autobahn judges the peer's frames by its own rules: it refuses close code
  1014 from a peer, its messages for failures are its own (but for Crow's
  "Client connection not masked."), and it logs a warning of its own when it
  fails a connection.
"""

from __future__ import annotations

from typing import Any, cast
from collections.abc import Callable, Sequence

from autobahn.exception import Disconnected
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from ._close import CloseCode, failure_message
from ._hooks import ProtocolHooks
from ._keepalive import Keepalive
from ._timers import reactor_later
from ._wire import Wire, close_payload

__all__ = ["PublicProtocol"]

_CONNECTING, _OPEN, _CLOSING, _CLOSED = range(4)



class PublicProtocol(ProtocolHooks):
    """autobahn's server protocol as documented, with ``FastProtocol``'s methods on top.

    Subclasses implement the hooks at the end, as for ``FastProtocol``.
    """

    _state = _CONNECTING
    _wire: Wire | None = None
    _subprotocol: str | None = None
    _closed_by: str | None = None
    """Who sent this side's close frame: "us" (``start_close``) or "autobahn" (an answer or a failure)."""
    _sent_close: tuple[int | None, str] | None = None
    """The code and reason of the close frame this side sent, as it went out."""
    _failure: tuple[int, str] | None = None
    """The code and reason this connection was failed with: ``onclose`` gets them, whatever the peer did."""
    _held: list[bytes] | None = None
    """Bytes read while the queue was full, for autobahn once it has room."""
    _reading = False
    """Inside autobahn's handling of a read."""
    _closed_in_read = False
    _dropped_in_read = False
    _close_timeout = 5.0
    _keepalive: Keepalive | None = None
    _max_payload: int | None = None
    _close_call: IDelayedCall | None = None
    """Drops the connection when the peer has not answered our close frame in time."""
    _drop_call: IDelayedCall | None = None
    """Aborts a TCP close that has not finished within the close timeout."""

    def connectionMade(self) -> None:
        # crowtwist's timers below replace autobahn's keepalive and close
        # handshake timer: off for the rule's factory (every connection of it
        # is a PublicProtocol), before the connection copies its options.
        cast(Any, self.factory).setProtocolOptions(autoPingInterval=0, closeHandshakeTimeout=0)
        super().connectionMade()

    # The handshake.

    def complete_handshake(
        self, key: str, offered: Sequence[str], extensions: str, subprotocol: str | None, path: str,
        accept: Callable[[Sequence[str]], Callable[[Any], Any]] | None,
    ) -> None:
        """Hand autobahn the request (already checked) as bytes; ``onConnect`` picks ``subprotocol``.

        No extension is offered to autobahn: permessage-deflate is declined.
        """
        rule = cast(Any, self.factory).rule
        settings = rule.settings
        self._close_timeout = settings.close_timeout or 5.0
        self._keepalive = Keepalive(
            settings.keepalive_interval,
            settings.keepalive_timeout,
            self.sendPing,
            lambda: self._state == _OPEN,
            self.outgoing_behind,
            self._keepalive_timed_out,
        )
        self._max_payload = rule.effective_max_payload
        self._subprotocol = subprotocol
        # What _Glue.onOpen reads (autobahn sets it too, to what onConnect returns).
        self.websocket_protocol_in_use = subprotocol
        transport: Any = self.transport
        # autobahn's connectionMade sets TCP_NODELAY before it copies the option
        # it sets it to (and ignores the error): the rule's setting, then.
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(rule.settings.tcp_nodelay)
            except OSError:  # not a TCP socket
                pass
        self._wire = Wire(transport, self)
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
        # autobahn answers to the transport itself (the 101, and its TLS
        # details need the real one), then calls onOpen.
        WebSocketServerProtocol.dataReceived(self, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if self._state != _CONNECTING:
            self.transport = cast(Any, self._wire)
            self.schedule_ping()

    def onConnect(self, request: ConnectionRequest) -> str | None:
        # The request is accepted: autobahn answers with the 101, then calls onOpen.
        self._state = _OPEN
        return self._subprotocol

    def _autobahn(self, send: Callable[..., None], *args: Any) -> None:
        """Call one of autobahn's senders: what it writes goes through the wire.

        (While ``onOpen`` runs, the wire is not the transport yet.)
        """
        wire = self._wire
        if wire is None or cast(Any, self.transport) is wire:
            send(self, *args)
            return
        transport, self.transport = self.transport, cast(Any, wire)
        try:
            send(self, *args)
        finally:
            self.transport = transport

    # What autobahn writes, read back by the wire.

    def frame_out(self, frame: bytes) -> None:
        """A whole frame autobahn wrote goes out."""
        opcode = frame[0] & 0x0F
        if opcode == 0x9 and self._state == _OPEN and self.write_first(frame):
            # Frames wait for a slow reader: the ping goes ahead of them, so a
            # peer that reads steadily gets it, and answers, without draining them.
            return
        self.write(frame)
        if opcode == 0x8:
            self._close_went_out(*close_payload(frame))

    def _close_went_out(self, code: int | None, reason: str) -> None:
        if self._sent_close is not None:
            return
        self._sent_close = (code, reason)
        if self._closed_by is None:
            # autobahn's own: the answer to the peer's close, or a failure.
            self._closed_by = "autobahn"
            self._closed_in_read = self._reading
        self._closing()

    def _closing(self) -> None:
        """Our close frame went out: nothing more is sent, and the peer has the close timeout to answer."""
        if self._state == _OPEN:
            self._state = _CLOSING
            self.close_sent()
            self._close_call = reactor_later(self._close_timeout, self._close_timed_out)

    def transport_closed(self, abort: bool) -> None:
        """autobahn closes the TCP connection: the close handshake is over, or it gives up."""
        if self._reading:
            self._dropped_in_read = True
        if self._state == _OPEN:
            self._state = _CLOSING
            self.close_sent()
        self._cancel_close_timer()
        wire = self._wire
        transport: Any = wire.transport if wire is not None else self.transport
        if transport is None or self._drop_call is not None:
            return
        if abort and self._sent_close is None:
            self.discard_outgoing()
            transport.abortConnection()
            return
        # Not abortConnection, which autobahn asks for once the peer answered
        # our close: it closes with a reset, which may discard our close frame
        # (or what went before it) before the peer reads it.
        self.flush_outgoing()
        transport.loseConnection()
        # But a peer that reads nothing more, or never ends TLS, would hold the
        # connection and its onclose forever: the close timeout bounds this too.
        if getattr(transport, "connected", True):
            self._drop_call = reactor_later(self._close_timeout, self._abort)

    def _close_timed_out(self) -> None:
        self._close_call = None
        self._abort()

    def _abort(self) -> None:
        self._drop_call = None
        wire = self._wire
        transport: Any = wire.transport if wire is not None else self.transport
        if transport is not None and getattr(transport, "connected", True):
            self.discard_outgoing()
            transport.abortConnection()

    def _cancel_close_timer(self) -> None:
        call = self._close_call
        if call is not None:
            self._close_call = None
            call.cancel()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._state = _CLOSED
        self._cancel_close_timer()
        self.suspend_keepalive()
        call = self._drop_call
        if call is not None:
            self._drop_call = None
            call.cancel()
        super().connectionLost(reason)

    # What the rest of crowtwist asks of a connection.

    @property
    def plain(self) -> bool:
        """Never: autobahn reads and writes every frame here."""
        return False

    def still_reading(self) -> bool:
        """Open, or closing: frames may still arrive and be acted on."""
        return self._state == _OPEN or self._state == _CLOSING

    def autobahn_receive(self, data: bytes) -> None:
        """Bytes for autobahn's frame machinery, held while the queue is full."""
        if data:
            self._heard()
            held = self._held
            if held is None:
                held = self._held = []
            held.append(data)
        if self._reading:
            return  # (reading resumed from a handler autobahn called: the loop below goes on)
        held = self._held
        while held and not self.reading_paused() and self._state != _CLOSED:
            data = b"".join(held)
            held.clear()
            self._reading = True
            self._closed_in_read = self._dropped_in_read = False
            try:
                WebSocketServerProtocol.dataReceived(self, data)
            finally:
                self._reading = False
            if self._closed_in_read and not self._dropped_in_read:
                # autobahn sent a close frame of its own and waits for the
                # peer's: not an answer (that closes the TCP connection at once),
                # so it failed the connection.
                self._autobahn_failed()

    def consume_held(self) -> None:
        """Go on with what was read while the queue was full (reading resumed)."""
        self.autobahn_receive(b"")

    def count_received(self, size: int) -> None:
        """(crowtwist's parser's count: not used here.)"""

    def sendMessage(
        self, payload: bytes, isBinary: bool = False, fragmentSize: int | None = None, sync: bool = False,
        doNotCompress: bool = False,
    ) -> None:
        # A send after the close began is dropped, as in Crow.
        if self._state != _OPEN:
            return
        try:
            limit = self._max_payload
            if limit and len(payload) > limit:
                # autobahn's sendMessage refuses a message over maxMessagePayloadSize,
                # which crowtwist means for what it receives: its frame API does not.
                self._autobahn(WebSocketServerProtocol.beginMessage, isBinary)
                self._autobahn(WebSocketServerProtocol.sendMessageFrame, payload)
                self._autobahn(WebSocketServerProtocol.endMessage)
            else:
                self._autobahn(WebSocketServerProtocol.sendMessage, payload, isBinary, fragmentSize, sync, doNotCompress)
        except Disconnected:  # (autobahn closed without a close frame we saw)
            pass

    def start_close(self, code: int, reason: str) -> None:
        """The application closes: a close frame, then wait for the peer's."""
        if self._state != _OPEN:
            return
        self._closed_by = "us"
        if code != CloseCode.NORMAL_CLOSURE and not 3000 <= code <= 4999:
            # autobahn's documented sendClose takes no other code: it goes in the reason.
            reason = f"{int(code)} {reason}"
            code = CloseCode.NORMAL_CLOSURE
        self._autobahn(WebSocketServerProtocol.sendClose, int(code), reason.encode("utf-8")[:123].decode("utf-8", "ignore"))
        self._closing()  # (the wire saw the frame go out already)

    def fail(self, code: int, reason: str) -> None:
        """Fail the connection: ``onerror``, then a close frame saying why."""
        if self._state == _OPEN:
            self._failure = (code, reason)
            self.frames_failed(reason)
            self.start_close(code, reason)

    def failed(self) -> bool:
        return self._failure is not None

    def close_with_error(self, code: int, reason: str) -> None:
        """Close because of the peer (too slow, say): ``onerror`` first, as for a failure."""
        if self._state == _OPEN:
            self.frames_failed(reason)
            self.start_close(code, reason)

    def close_received(self, payload: bytes) -> None:
        """(crowtwist's parser's close frames: autobahn reads them here.)"""

    def _autobahn_failed(self) -> None:
        if self._failure is not None or self._sent_close is None:
            return
        code, reason = self._sent_close
        self._failure = (CloseCode.NO_STATUS_RCVD if code is None else code), reason
        self.frames_failed(failure_message(reason, code))

    def close_outcome(self, was_clean: bool, code: int | None, reason: str | None) -> tuple[int, str]:
        """The code and reason ``onclose`` gets: a failure we sent stands, whatever the peer did."""
        if self._closed_by == "autobahn" and self._failure is None and self._sent_close is not None:
            # A close frame autobahn sent and closed the TCP connection at once
            # after: the answer to the peer's close (which it echoes), or a
            # failure on the peer's close frame itself.
            if not was_clean or (code, reason or "") != self._sent_close:
                self._autobahn_failed()
        if self._failure is not None:
            return self._failure
        if was_clean:
            return (CloseCode.NO_STATUS_RCVD if code is None else code), reason or ""
        return CloseCode.ABNORMAL_CLOSURE, "uncleanly"

    # Keepalive: autobahn's documented sendPing and onPong, on crowtwist's timers.

    def schedule_ping(self) -> None:
        """The next keepalive ping (unless one is due already, or awaits its pong)."""
        if self._keepalive is not None:
            self._keepalive.schedule()

    def sendPing(self, payload: bytes | None = None) -> None:
        self._autobahn(WebSocketServerProtocol.sendPing, payload)

    def onPong(self, payload: bytes) -> None:
        self.pong_received(payload)

    def pong_received(self, payload: bytes) -> None:
        """A pong: the awaited one ends the keepalive wait."""
        if self._keepalive is not None:
            self._keepalive.pong(payload)

    def _heard(self) -> None:
        # Whatever the peer sends shows it is there, as a pong does (as
        # autobahn's autoPingRestartOnAnyTraffic has it).
        if self._keepalive is not None:
            self._keepalive.heard()

    def suspend_keepalive(self) -> None:
        """Stop judging the peer by its pongs (we are not reading, or we are closing)."""
        if self._keepalive is not None:
            self._keepalive.suspend()

    def _keepalive_timed_out(self) -> None:
        self.close_with_error(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
