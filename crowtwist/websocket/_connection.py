"""``Connection``: what every WebSocket handler is given (Crow's ``crow::websocket::connection``)."""

from __future__ import annotations

from threading import get_ident
from typing import Any, Protocol
from collections.abc import Callable, Iterable, Sequence

from twisted.internet.defer import Deferred, succeed

from .._log import log
from .._routing import ParamValue
from ._close import CloseCode, is_sendable

__all__ = ["Connection", "Owner", "Route", "check_room", "detach", "notify_closed", "send_shared", "set_writable"]



class Owner(Protocol):
    """What a connection asks of the protocol that serves it."""

    sendable: bool
    def send_message(self, payload: bytes, is_binary: bool) -> None: ...
    def send_control(self, payload: bytes, ping: bool) -> None: ...
    def close_by_app(self, code: int, reason: str) -> None: ...
    def set_max_payload(self, size: int | None) -> None: ...
    def send_shared(self, frame: bytes, payload: bytes, is_binary: bool) -> bool: ...


class Route(Protocol):
    """What a connection shows of its route."""

    @property
    def pattern(self) -> str: ...
    @property
    def connections(self) -> Iterable[Connection]: ...
    def join_room(self, conn: Connection, room: str) -> None: ...
    def leave_room(self, conn: Connection, room: str) -> None: ...
    def rooms_of(self, conn: Connection) -> frozenset[str]: ...


def _call_in_reactor(func: Callable[..., object], *args: Any) -> None:
    from twisted.internet import reactor

    reactor.callFromThread(func, *args)  # type: ignore[attr-defined]


def _run_logged(func: Callable[[], object]) -> None:
    try:
        func()
    except Exception:
        log.failure("a function given to conn.dispatch/post raised")


class Connection:
    """One open WebSocket, as the rule's handlers see it.

    Sends may be called from any thread: off the reactor thread they are
    handed to it with ``callFromThread``.  A send on a connection that is
    closing or closed is dropped without an error, as in Crow.

    Outgoing flow control: the transport buffers what the peer has not read
    yet.  ``writable`` turns false while that buffer is over its high-water
    mark, and ``drained()`` returns a Deferred that fires once it is not
    (at once if it is not now, and also when the connection closes).  A
    producer of many messages waits on it between sends:

        async def stream(conn):
            for chunk in chunks:
                await conn.drained()
                if not conn.is_open:
                    break
                conn.send_binary(chunk)
    """

    __slots__ = (
        "_protocol",
        "rule",
        "params",
        "userdata",
        "_remote_ip",
        "_subprotocol",
        "_writable",
        "_drain_waiters",
        "_thread",
        "_close_waiters",
        "broadcasts_skipped",
        "__weakref__",
    )

    def __init__(
        self,
        protocol: Owner,
        rule: Route,
        params: Sequence[ParamValue],
        userdata: object,
        remote_ip: str,
        subprotocol: str | None,
    ) -> None:
        self._protocol: Owner | None = protocol
        self.rule = rule
        self.params: tuple[ParamValue, ...] = tuple(params)
        """The route's typed segments, converted, in pattern order."""
        self.userdata: Any = userdata
        """Whatever ``onaccept`` stored in ``request.userdata`` (``None`` by default)."""
        self._remote_ip = remote_ip
        self._subprotocol = subprotocol
        self._writable = True
        self._drain_waiters: list[Deferred[None]] = []
        # Made by the protocol, so on the reactor thread: sends from others hop over.
        self._thread = get_ident()
        # None once onclose has run: then when_closed() answers at once.
        self._close_waiters: list[Callable[[], object]] | None = []
        self.broadcasts_skipped = 0
        """Broadcast and room messages not sent to this connection: its send buffer was over its bound."""

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"<Connection {self._remote_ip} {self.rule.pattern!r} {state}>"

    @property
    def is_open(self) -> bool:
        """Whether messages can still be sent (the close handshake has not begun)."""
        protocol = self._protocol
        return protocol is not None and protocol.sendable

    def get_remote_ip(self) -> str:
        """The peer's IP address (also inside ``onclose``)."""
        return self._remote_ip

    def get_subprotocol(self) -> str:
        """The negotiated subprotocol, or ``""`` when none was (as in Crow)."""
        return self._subprotocol or ""

    def send_text(self, text: str) -> None:
        """Send a text message."""
        if not isinstance(text, str):
            raise TypeError(f"send_text takes str, not {type(text).__name__}")
        self._send(text.encode("utf-8"), False)

    def send_binary(self, data: bytes) -> None:
        """Send a binary message."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"send_binary takes bytes, not {type(data).__name__}")
        self._send(bytes(data), True)

    def _send(self, payload: bytes, is_binary: bool) -> None:
        if get_ident() != self._thread:
            _call_in_reactor(self._send, payload, is_binary)
            return
        protocol = self._protocol
        if protocol is not None and protocol.sendable:
            protocol.send_message(payload, is_binary)

    def send_ping(self, data: bytes | str = b"") -> None:
        """Send a ping (at most 125 bytes of payload; ``str`` is sent as UTF-8, as Crow's ``std::string``)."""
        self._control(data, ping=True)

    def send_pong(self, data: bytes | str = b"") -> None:
        """Send an unsolicited pong (at most 125 bytes of payload; ``str`` is sent as UTF-8)."""
        self._control(data, ping=False)

    def _control(self, data: bytes | str, ping: bool) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        elif not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"a ping or pong payload is bytes or str, not {type(data).__name__}")
        if len(data) > 125:
            raise ValueError("ping and pong payloads are at most 125 bytes")
        if get_ident() != self._thread:
            _call_in_reactor(self._control, bytes(data), ping)
            return
        protocol = self._protocol
        if protocol is not None and protocol.sendable:
            protocol.send_control(bytes(data), ping)

    def close(self, reason: str = "quit", code: int = CloseCode.NORMAL_CLOSURE) -> None:
        """Start the close handshake; ``onclose`` runs when it completes."""
        if isinstance(code, bool) or not isinstance(code, int) or not is_sendable(code):
            raise ValueError(f"close code {code!r} may not be sent; use 1000-1003, 1007-1014 or 3000-4999")
        if get_ident() != self._thread:
            _call_in_reactor(self.close, reason, code)
            return
        protocol = self._protocol
        if protocol is not None:
            protocol.close_by_app(code, reason)

    def set_max_payload_size(self, size: int | None) -> None:
        """Bound this connection's incoming messages to ``size`` bytes from the next message on
        (Crow's ``set_max_payload_size``); ``None`` lifts the bound.  Over it: 1009.

        On a permessage-deflate connection the decompressor keeps the route's bound too."""
        from .._settings import check_positive

        check_positive("max payload size", size, integer=True)
        if get_ident() != self._thread:
            _call_in_reactor(self.set_max_payload_size, size)
            return
        if self._protocol is not None:
            self._protocol.set_max_payload(size)

    # Running code on the reactor thread (Crow's connection.dispatch / post).

    def dispatch(self, func: Callable[[], object]) -> None:
        """Run ``func()`` on the reactor thread: now if called there, else after the sends this thread
        queued before (Crow's ``dispatch``).  What it raises is logged."""
        if get_ident() == self._thread:
            _run_logged(func)
        else:
            _call_in_reactor(_run_logged, func)

    def post(self, func: Callable[[], object]) -> None:
        """Run ``func()`` on the reactor thread, never inline: after the sends queued before, from any
        thread, and after the current handler returns (Crow's ``post``).  What it raises is logged."""
        if get_ident() == self._thread:
            from twisted.internet import reactor

            reactor.callLater(0, _run_logged, func)
        else:
            _call_in_reactor(_run_logged, func)

    # Rooms (app-wide, one name space across routes).

    def join(self, room: str) -> None:
        """Join ``room``: ``app.publish(room, ...)`` reaches this connection until it leaves or closes."""
        check_room(room)
        if get_ident() != self._thread:
            _call_in_reactor(self.join, room)
            return
        if self._protocol is not None:
            self.rule.join_room(self, room)

    def leave(self, room: str) -> None:
        """Leave ``room`` (nothing happens if this connection is not in it)."""
        check_room(room)
        if get_ident() != self._thread:
            _call_in_reactor(self.leave, room)
            return
        self.rule.leave_room(self, room)

    @property
    def rooms(self) -> frozenset[str]:
        """The rooms this connection is in (none once it has closed)."""
        return self.rule.rooms_of(self)

    @property
    def writable(self) -> bool:
        """False while the peer is not reading fast enough and outgoing data piles up."""
        return self._writable

    def drained(self) -> Deferred[None]:
        """A Deferred that fires when outgoing data is below the high-water mark."""
        if self._writable or self._protocol is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._drain_waiters.append(waiter)
        return waiter

    def when_closed(self) -> Deferred[None]:
        """A Deferred that fires once this connection has closed and its ``onclose`` has run.

        What a registry or a room waits on to forget the connection; it fires
        at once for a connection that is closed already.
        """
        waiters = self._close_waiters
        if waiters is None:
            return succeed(None)
        closed: Deferred[None] = Deferred()
        waiters.append(lambda: closed.callback(None))
        return closed


# Called by the protocol that serves the connection.


def set_writable(conn: Connection, writable: bool) -> None:
    """Outgoing data went over the high-water mark (False) or back under it (True)."""
    conn._writable = writable
    if writable and conn._drain_waiters:
        waiters, conn._drain_waiters = conn._drain_waiters, []
        for waiter in waiters:
            waiter.callback(None)


def check_room(room: object) -> str:
    """``room`` if it is a room's name: a non-empty ``str``."""
    if not isinstance(room, str):
        raise TypeError(f"a room's name is a str, not {type(room).__name__}")
    if not room:
        raise ValueError("a room's name may not be empty")
    try:
        room.encode("utf-8")  # (a broker names its channel with it)
    except UnicodeEncodeError:
        raise ValueError(f"a room's name must be valid Unicode text, not {room!r}") from None
    return room


def send_shared(conn: Connection, frame: bytes, payload: bytes, is_binary: bool) -> bool:
    """Send a broadcast's ``frame`` (``payload`` framed whole, unmasked, no extension) to ``conn``.

    False when ``conn`` is not open, or when the frame would take its send
    buffer over its bound: then it is skipped, counted in
    ``broadcasts_skipped``, and logged the first time.
    """
    protocol = conn._protocol
    if protocol is None or not protocol.sendable:
        return False
    if protocol.send_shared(frame, payload, is_binary):
        return True
    conn.broadcasts_skipped += 1
    if conn.broadcasts_skipped == 1:
        log.warn(
            "WebSocket {route} to {peer}: send buffer over its bound; broadcasts skip it until it drains",
            route=conn.rule.pattern,
            peer=conn._remote_ip,
        )
    return False


def detach(conn: Connection) -> None:
    """The connection closed: sends are dropped from now on, and drain waiters released."""
    conn._protocol = None
    set_writable(conn, True)


def notify_closed(conn: Connection) -> None:
    """``onclose`` has run: fire ``when_closed()``."""
    waiters, conn._close_waiters = conn._close_waiters, None
    for waiter in waiters or ():
        waiter()
