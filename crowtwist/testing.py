"""Testing crowtwist apps: an in-memory client for an app's HTTP and WebSocket routes, no sockets.

    import pytest_twisted
    from crowtwist.testing import CrowClient

    @pytest_twisted.ensureDeferred
    async def test_echo():
        async with CrowClient(app) as client:
            ws = await client.websocket("/echo")
            await ws.send_text("hi")
            assert await ws.receive() == "hi"
            reply = await client.get("/add/1/2")
            assert reply.status == 200 and reply.text == "3"

The client drives the app's own ``app.site()`` (the ``CrowSite`` a
listening port serves) through an in-memory connection, so routing,
middleware, ``onaccept``, the handlers, the limits and the close codes are
the ones a socket would meet.  Its WebSocket side is a client of its own
(``crowtwist/_testing.py`` reads and writes the frames), masking as RFC
6455 requires, so apps with ``enforce_ws_spec`` are tested as they serve.

Time: bytes move between the client and the app in turns of the global
reactor (``callLater(0)``), as over a socket, so a test needs a running
reactor: pytest with pytest-twisted, or trial.  Nothing waits in real time
except the bounds: every wait (``receive()``, a response, ``close()``) fails
with ``TimeoutError`` after ``timeout`` seconds (``DEFAULT_TIMEOUT``), and
the app's own timers (close handshake timeout, keepalive, the request-head
deadline) run on the global reactor in real time, as they do when serving.
docs/testing.md has an example per kind of handler.
"""

from __future__ import annotations

import json as _json
import os
import base64
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import quote, urlencode

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from ._request import Headers
from ._testing import End, FrameReader, Pipe, ResponseReader, accept_key, address, encode_frame

if TYPE_CHECKING:
    from ._app import Crow
    from ._site import CrowSite

__all__ = [
    "DEFAULT_TIMEOUT",
    "ClientResponse",
    "ClientWebSocket",
    "CrowClient",
    "ProtocolViolation",
    "UpgradeRefused",
    "WebSocketClosed",
    "client",
]

_T = TypeVar("_T")

DEFAULT_TIMEOUT = 5.0
"""Seconds any wait of the client (a message, a response, a close) may take before ``TimeoutError``."""

HeadersArg = Mapping[str, str] | Iterable[tuple[str, str]] | None
"""Request headers: a mapping, or (name, value) pairs when a name repeats."""

QueryArg = Mapping[str, Any] | Iterable[tuple[str, Any]] | None
"""A query: a mapping (a list value repeats the name) or (name, value) pairs."""

_NO_JSON: Any = object()

# RFC 9110 section 5.6.2: a field name is a token.
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
# A request target keeps every visible ASCII character; others are percent-encoded as UTF-8.
_VISIBLE = "".join(chr(c) for c in range(0x21, 0x7F))

# Close codes an endpoint may send (RFC 6455 section 7.4): 1000-1003, 1007-1014, 3000-4999.
_SENDABLE_CLOSE = frozenset(range(1000, 1004)) | frozenset(range(1007, 1015)) | frozenset(range(3000, 5000))


def _settle(waiting: Deferred[Any], result: Any) -> None:
    """Fire ``waiting`` with ``result`` (an exception: errback) unless a timeout fired it first."""
    if waiting.called:
        return
    if isinstance(result, BaseException):
        waiting.errback(result)
    else:
        waiting.callback(result)


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


# Errors.


class UpgradeRefused(Exception):
    """The app answered a WebSocket upgrade with an HTTP response instead of 101."""

    def __init__(self, path: str, status: int, reason: str, headers: Headers, body: bytes) -> None:
        self.path = path
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        shown = body[:200].decode("utf-8", "replace").strip()
        super().__init__(f"the upgrade to {path} was refused: {status} {reason}" + (f": {shown}" if shown else ""))

    @property
    def text(self) -> str:
        """The body as text (UTF-8, undecodable bytes replaced)."""
        return self.body.decode("utf-8", "replace")


class WebSocketClosed(Exception):
    """The WebSocket is closed: nothing more to receive, or nothing may be sent."""

    def __init__(self, code: int, reason: str, message: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(message or f"the WebSocket is closed: {code}" + (f" {reason}" if reason else ""))


class ProtocolViolation(Exception):
    """The app sent what RFC 6455 or RFC 9112 forbids (the client failed the connection)."""


# HTTP.


class ClientResponse:
    """One HTTP response as the client read it."""

    __slots__ = ("status", "reason", "headers", "body")

    def __init__(self, status: int, reason: str, headers: Headers, body: bytes) -> None:
        self.status = status
        """The status code."""
        self.reason = reason
        """The reason phrase, as sent."""
        self.headers = headers
        """The header fields, case-insensitively (``get_all`` for repeated ones)."""
        self.body = body
        """The body, de-chunked; gzip is left as sent (ask without ``Accept-Encoding`` to get it plain)."""

    @property
    def text(self) -> str:
        """The body decoded by the ``Content-Type``'s charset (UTF-8 if none; undecodable bytes replaced)."""
        charset = "utf-8"
        for parameter in self.headers.get("content-type", "").split(";")[1:]:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "charset" and value.strip():
                charset = value.strip().strip('"')
        try:
            return self.body.decode(charset, "replace")
        except LookupError:
            return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body parsed as JSON; ``ValueError`` naming the body when it is not JSON."""
        try:
            return _json.loads(self.body)
        except ValueError as error:
            raise ValueError(f"the body of the {self.status} response is not JSON ({error}): {self.body[:200]!r}") from None

    def __repr__(self) -> str:
        return f"<ClientResponse {self.status} {self.reason}, {len(self.body)} bytes>"


def _response(reader: ResponseReader) -> ClientResponse:
    return ClientResponse(reader.status, reader.reason, Headers.of_pairs(reader.headers), reader.body)


class _Exchange(Protocol):
    """One HTTP request on its own connection, and its response."""

    def __init__(self, request: bytes, head_only: bool, done: Deferred[ClientResponse], target: str) -> None:
        self._request = request
        self._reader = ResponseReader(head_only=head_only)
        self._done = done
        self._target = target

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        if self._done.called or not self._reader.feed(data):
            return
        assert self.transport is not None
        self.transport.loseConnection()
        if self._reader.error is not None:
            self._fire(ProtocolViolation(f"the response to {self._target}: {self._reader.error}"))
        else:
            self._fire(_response(self._reader))

    def _fire(self, result: ClientResponse | Exception) -> None:
        cast(End, self.transport).pipe.after(_settle, self._done, result)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._done.called:
            return
        if self._reader.finish():
            self._fire(_response(self._reader))
        else:
            self._fire(ConnectionError(f"the app closed the connection before its response to {self._target} was complete"))


# WebSocket.


class _Wire(Protocol):
    """The client end of one WebSocket connection: hands what it hears to its ``ClientWebSocket``."""

    def __init__(self, socket: ClientWebSocket) -> None:
        self._socket = socket

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._socket._request)

    def dataReceived(self, data: bytes) -> None:
        self._socket._received(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._socket._lost()


class ClientWebSocket:
    """One WebSocket connection to the app, from ``CrowClient.websocket``."""

    def __init__(self, client: CrowClient, path: str, subprotocols: Sequence[str], timeout: float | None) -> None:
        self._client = client
        self.path = path
        self._offered = list(subprotocols)
        self._timeout = timeout
        self._key = base64.b64encode(os.urandom(16)).decode("ascii")
        self._request = b""
        self._pipe: Pipe | None = None
        self._reader: ResponseReader | None = ResponseReader(stop_at_upgrade=True)
        self._frames = FrameReader()
        self._opened: Deferred[ClientWebSocket] = Deferred()
        self._messages: deque[str | bytes] = deque()
        self._waiters: deque[Deferred[str | bytes]] = deque()
        self._pongs: deque[Deferred[bytes]] = deque()
        self._closed: Deferred[None] = Deferred()
        self._fragments: list[bytes] = []
        self._fragment_opcode: int | None = None
        self._close_sent = False
        self._close_received = False
        self._gone = False
        self.subprotocol: str | None = None
        """The subprotocol the app chose (``Sec-WebSocket-Protocol``), or ``None``."""
        self.headers: Headers = Headers.of_pairs(())
        """The header fields of the app's 101 response."""
        self.close_code: int | None = None
        """The code of the app's close frame (1005 when it had none; 1006 when the connection ended without one);
        ``None`` while open."""
        self.close_reason = ""
        """The reason of the app's close frame (``""`` when it had none)."""
        self.violation: str | None = None
        """What the app sent that RFC 6455 forbids, if it did (the client then failed the connection)."""

    def __repr__(self) -> str:
        state = "open" if self.is_open else f"closed {self.close_code}"
        return f"<ClientWebSocket {self.path} {state}>"

    @property
    def is_open(self) -> bool:
        """Whether messages may still be sent: open, and no close frame sent or received."""
        return self._reader is None and not (self._gone or self._close_sent or self._close_received)

    # Sending.

    def _send(self, opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, rsv: int = 0) -> Deferred[None]:
        if self._reader is not None or self._pipe is None:
            raise RuntimeError("the WebSocket is not open yet: await client.websocket(...) first")
        if self._gone or self._close_sent:
            raise WebSocketClosed(
                self.close_code or 1006, self.close_reason, f"cannot send on {self.path}: the WebSocket is closed"
            )
        end = self._pipe.client
        end.write(encode_frame(opcode, payload, fin=fin, masked=masked, rsv=rsv))
        return end.when_flushed()

    def send_text(self, text: str) -> Deferred[None]:
        """Send a text message; the Deferred fires once the app has read it."""
        if not isinstance(text, str):
            raise TypeError(f"send_text takes str, not {type(text).__name__} (send_binary sends bytes)")
        return self._send(0x1, text.encode("utf-8"))

    def send_binary(self, data: bytes) -> Deferred[None]:
        """Send a binary message; the Deferred fires once the app has read it."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"send_binary takes bytes, not {type(data).__name__} (send_text sends str)")
        return self._send(0x2, bytes(data))

    def send_json(self, value: Any) -> Deferred[None]:
        """Send ``value`` as JSON in a text message."""
        return self.send_text(_json.dumps(value))

    def send_ping(self, payload: bytes = b"") -> Deferred[bytes]:
        """Send a ping; the Deferred fires with the payload of the app's pong."""
        if len(payload) > 125:
            raise ValueError("a ping's payload is at most 125 bytes (RFC 6455 section 5.5)")
        self._send(0x9, payload)
        pong: Deferred[bytes] = Deferred()
        self._pongs.append(pong)
        return self._bounded(pong, None, f"a pong on {self.path}")

    def send_frame(
        self, opcode: int, payload: bytes = b"", *, fin: bool = True, masked: bool = True, rsv: int = 0
    ) -> Deferred[None]:
        """Send one raw frame, as given (fragments, reserved bits, unmasked frames: for protocol tests)."""
        sent = self._send(opcode, payload, fin=fin, masked=masked, rsv=rsv)
        if opcode == 0x8:
            self._close_sent = True
        return sent

    def close(self, code: int | None = 1000, reason: str = "", timeout: float | None = None) -> Deferred[None]:
        """Start the close handshake (``code=None``: a close frame without a code); fires once the connection is gone.

        ``close_code`` and ``close_reason`` then hold the app's answer.  Any
        code may be sent, including ones RFC 6455 forbids, to see the app refuse them.
        """
        payload = b""
        if code is not None:
            if not 0 <= code <= 0xFFFF:
                raise ValueError(f"a close code is two bytes: {code}")
            payload = code.to_bytes(2, "big") + reason.encode("utf-8")
        elif reason:
            raise ValueError("a close reason needs a code")
        if len(payload) > 125:
            raise ValueError("a close frame's code and reason are at most 125 bytes (RFC 6455 section 5.5)")
        if self._reader is None and not self._gone and not self._close_sent:
            self.send_frame(0x8, payload)
        return self.wait_closed(timeout)

    def drop(self) -> Deferred[None]:
        """End the connection without a close frame (the app sees 1006); fires once it is gone."""
        if self._pipe is not None and not self._gone:
            self._pipe.client.abortConnection()
        return self.wait_closed()

    def wait_closed(self, timeout: float | None = None) -> Deferred[None]:
        """A Deferred that fires once the connection is gone (``TimeoutError`` after ``timeout``)."""
        waiting: Deferred[None] = Deferred()
        if self._gone:
            waiting.callback(None)
            return waiting
        self._closed.addBoth(lambda result: waiting.callback(None) if not waiting.called else None)
        return self._bounded(waiting, timeout, f"the close of {self.path}")

    # Receiving.

    def receive(self, timeout: float | None = None) -> Deferred[str | bytes]:
        """The next message (``str`` for text, ``bytes`` for binary), received already or to come.

        Fails with ``WebSocketClosed`` (``code``, ``reason``) when the
        connection has closed and every message was taken, with
        ``ProtocolViolation`` when the app broke RFC 6455, and with
        ``TimeoutError`` when nothing came within ``timeout`` seconds.
        """
        if self._messages:
            return succeed(self._messages.popleft())
        waiting: Deferred[str | bytes] = Deferred()
        if self._gone:
            waiting.errback(self._ended())
            return waiting
        self._waiters.append(waiting)
        return self._bounded(waiting, timeout, f"a message on {self.path}")

    def receive_text(self, timeout: float | None = None) -> Deferred[str]:
        """The next message, which must be text (``TypeError`` otherwise)."""

        def text(message: str | bytes) -> str:
            if not isinstance(message, str):
                raise TypeError(f"expected a text message on {self.path}, got binary: {message[:60]!r}")
            return message

        return self.receive(timeout).addCallback(text)

    def receive_binary(self, timeout: float | None = None) -> Deferred[bytes]:
        """The next message, which must be binary (``TypeError`` otherwise)."""

        def binary(message: str | bytes) -> bytes:
            if not isinstance(message, bytes):
                raise TypeError(f"expected a binary message on {self.path}, got text: {message[:60]!r}")
            return message

        return self.receive(timeout).addCallback(binary)

    def receive_json(self, timeout: float | None = None) -> Deferred[Any]:
        """The next message parsed as JSON."""
        def parsed(message: str | bytes) -> Any:
            return _json.loads(message)

        return self.receive(timeout).addCallback(parsed)

    @property
    def pending(self) -> int:
        """Messages received and not taken by ``receive()`` yet."""
        return len(self._messages)

    def _bounded(self, waiting: Deferred[_T], timeout: float | None, what: str) -> Deferred[_T]:
        return self._client._bounded(waiting, self._timeout if timeout is None else timeout, what)

    def _ended(self) -> Exception:
        if self.violation is not None:
            return ProtocolViolation(f"{self.path}: {self.violation}")
        code = 1006 if self.close_code is None else self.close_code
        return WebSocketClosed(code, self.close_reason, f"{self.path} closed: {code}" + (f" {self.close_reason}" if self.close_reason else ""))

    # The connection.

    def _start(self, pipe: Pipe) -> Deferred[ClientWebSocket]:
        self._pipe = pipe
        return self._opened

    def _received(self, data: bytes) -> None:
        reader = self._reader
        if reader is not None:
            if not reader.feed(data):
                return
            self._handshake(reader)
            if self._reader is not None:
                return
            data = reader.rest
        if self._gone or self.violation is not None:
            return
        for fin, rsv, opcode, payload in self._frames.feed(data):
            self._frame(fin, rsv, opcode, payload)
            if self.violation is not None:
                return

    def _handshake(self, reader: ResponseReader) -> None:
        assert self._pipe is not None
        if reader.error is not None:
            self._refuse(ProtocolViolation(f"the answer to the upgrade to {self.path}: {reader.error}"))
            return
        headers = Headers.of_pairs(reader.headers)
        if reader.status != 101:
            self._refuse(UpgradeRefused(self.path, reader.status, reader.reason, headers, reader.body))
            return
        problem = None
        connection = [t.strip().lower() for t in ",".join(headers.get_all("connection")).split(",")]
        protocol = headers.get("sec-websocket-protocol")
        if headers.get("upgrade", "").lower() != "websocket" or "upgrade" not in connection:
            problem = "a 101 without Upgrade: websocket and Connection: Upgrade"
        elif headers.get("sec-websocket-accept") != accept_key(self._key):
            problem = f"a wrong Sec-WebSocket-Accept: {headers.get('sec-websocket-accept')!r}"
        elif protocol is not None and protocol not in self._offered:
            problem = f"a subprotocol that was not offered: {protocol!r}"
        elif "sec-websocket-extensions" in headers:
            problem = "an extension that was not offered: " + headers["sec-websocket-extensions"]
        if problem is not None:
            self._refuse(ProtocolViolation(f"the upgrade to {self.path} got {problem}"))
            return
        self._reader = None
        self.headers = headers
        self.subprotocol = protocol
        self._pipe.after(_settle, self._opened, self)

    def _refuse(self, error: Exception) -> None:
        assert self._pipe is not None
        self._reader = None
        self._gone = True  # never open: nothing may be sent
        self._pipe.client.loseConnection()
        self._pipe.after(_settle, self._opened, error)

    def _frame(self, fin: bool, rsv: int, opcode: int, payload: bytes) -> None:
        if self._frames.masked:
            self._violate("a masked frame (a server must not mask, RFC 6455 section 5.1)")
        elif rsv:
            self._violate(f"reserved bits {rsv:#o} set with no extension negotiated")
        elif opcode >= 0x8:
            if not fin or len(payload) > 125:
                self._violate("a fragmented or over-long control frame (RFC 6455 section 5.5)")
            elif opcode == 0x8:
                self._close_frame(payload)
            elif opcode == 0x9:
                if not self._close_sent:
                    self._send(0xA, payload)
            elif opcode == 0xA:
                if self._pongs:
                    self._later(self._pongs.popleft(), payload)
            else:
                self._violate(f"reserved opcode {opcode:#x}")
        elif self._close_received:
            pass  # nothing is read after a close frame
        elif opcode == 0x0 and self._fragment_opcode is None:
            self._violate("a continuation frame with no message to continue")
        elif opcode in (0x1, 0x2) and self._fragment_opcode is not None:
            self._violate("a new message inside a fragmented one")
        elif opcode not in (0x0, 0x1, 0x2):
            self._violate(f"reserved opcode {opcode:#x}")
        else:
            if opcode:
                self._fragment_opcode = opcode
            self._fragments.append(payload)
            if fin:
                self._message()

    def _message(self) -> None:
        data = b"".join(self._fragments)
        opcode, self._fragment_opcode, self._fragments = self._fragment_opcode, None, []
        message: str | bytes = data
        if opcode == 0x1:
            try:
                message = data.decode("utf-8")
            except UnicodeDecodeError:
                self._violate("invalid UTF-8 in a text message", 1007)
                return
        while self._waiters:
            waiting = self._waiters.popleft()
            if not waiting.called:
                self._later(waiting, message)
                return
        self._messages.append(message)

    def _close_frame(self, payload: bytes) -> None:
        if len(payload) == 1:
            self._violate("a close frame with a one-byte payload")
            return
        code, reason = 1005, ""
        if payload:
            code = int.from_bytes(payload[:2], "big")
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                self._violate("a close reason that is not UTF-8", 1007)
                return
            if code not in _SENDABLE_CLOSE:
                self._violate(f"close code {code}, which no endpoint may send")
                return
        self._close_received = True
        self.close_code, self.close_reason = code, reason
        assert self._pipe is not None
        if not self._close_sent:
            # RFC 6455 section 5.5.1: answer with a close frame, echoing the code.
            self._close_sent = True
            self._pipe.client.write(encode_frame(0x8, payload[:2]))
        # Section 7.1.1: the server should close TCP first, but a client may close once it
        # has sent and received a close frame; a server that stopped reading (it failed the
        # connection) would otherwise hold the test for its close timeout.
        self._pipe.client.loseConnection()

    def _violate(self, why: str, code: int = 1002) -> None:
        # RFC 6455 section 7.1.7: fail the connection, with a close frame if none was sent.
        assert self._pipe is not None
        self.violation = why
        if not self._close_sent:
            self._close_sent = True
            self._pipe.client.write(encode_frame(0x8, code.to_bytes(2, "big")))
        self._pipe.client.loseConnection()

    def _lost(self) -> None:
        self._gone = True
        reader = self._reader
        if reader is not None:
            self._reader = None
            if reader.finish() and reader.error is None:
                self._later(
                    self._opened,
                    UpgradeRefused(self.path, reader.status, reader.reason, Headers.of_pairs(reader.headers), reader.body),
                )
            else:
                self._later(
                    self._opened,
                    ConnectionError(f"the app closed the connection before it answered the upgrade to {self.path}"),
                )
        if self.close_code is None:
            self.close_code = 1006
        while self._waiters:
            waiting = self._waiters.popleft()
            self._later(waiting, self._ended())
        while self._pongs:
            self._later(self._pongs.popleft(), self._ended())
        self._later(self._closed, None)

    def _later(self, waiting: Deferred[Any], result: Any) -> None:
        """Fire ``waiting`` once the bytes stop moving (``Pipe.after``)."""
        assert self._pipe is not None
        self._pipe.after(_settle, waiting, result)


# The client.


def _headers(given: HeadersArg) -> list[tuple[str, str]]:
    pairs = list(given.items() if isinstance(given, Mapping) else given or ())
    for name, value in pairs:
        if not isinstance(name, str) or not name or not set(name) <= _TOKEN:
            raise ValueError(f"not a header name: {name!r}")
        if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
            raise ValueError(f"header {name}: not a one-line text value: {value!r}")
    return pairs


def _target(path: str, query: QueryArg) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"a path starts with '/': {path!r}")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise ValueError(f"a path has no spaces or control characters (percent-encode them): {path!r}")
    path = quote(path.partition("#")[0], safe=_VISIBLE)
    if query:
        pairs = query.items() if isinstance(query, Mapping) else query
        path += ("&" if "?" in path else "?") + urlencode(list(pairs), doseq=True)
    return path


class CrowClient:
    """An in-memory client of ``app``: each request and WebSocket gets its own connection to ``app.site()``.

    ``peer``: the address the app sees the client at (``conn.get_remote_ip()``,
    ``req.remote_ip_address``).  ``host``: the ``Host`` header sent unless a
    request gives its own.  ``timeout``: the bound on each wait, in seconds
    (``None``: no bound).
    """

    def __init__(
        self, app: Crow, *, peer: str = "127.0.0.1", host: str = "localhost", timeout: float | None = DEFAULT_TIMEOUT
    ) -> None:
        self.app = app
        self.site: CrowSite = app.site()
        self.peer = peer
        self.host = host
        self.timeout = timeout
        self._pipes: set[Pipe] = set()
        self._sockets: list[ClientWebSocket] = []
        self._next_port = 50000
        self._closed = False

    async def __aenter__(self) -> CrowClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _connect(self, client: Protocol) -> Pipe:
        if self._closed:
            raise RuntimeError("this CrowClient is closed")
        self._next_port = self._next_port + 1 if self._next_port < 65535 else 50000
        peer = address(self.peer, self._next_port)
        pipe = Pipe(peer, address("127.0.0.1", 80), _reactor().callLater)
        server = self.site.buildProtocol(peer)
        self._pipes.add(pipe)
        pipe.connect(_Forget(client, self._pipes, pipe), server)
        return pipe

    def _bounded(self, waiting: Deferred[_T], timeout: float | None, what: str) -> Deferred[_T]:
        """``waiting``, failed with ``TimeoutError`` if it has not fired within ``timeout`` seconds."""
        if timeout is None or waiting.called:
            return waiting

        def expire() -> None:
            _settle(waiting, TimeoutError(f"waited {timeout} s for {what}"))

        call: IDelayedCall = _reactor().callLater(timeout, expire)

        def done(result: Any) -> Any:
            if call.active():
                call.cancel()
            return result

        return waiting.addBoth(done)

    # HTTP.

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: HeadersArg = None,
        query: QueryArg = None,
        body: bytes | str | None = None,
        json: Any = _NO_JSON,
        data: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
        timeout: float | None = None,
    ) -> Deferred[ClientResponse]:
        """Send one request on a new connection; fires with the whole response.

        One of ``body`` (bytes, or text sent as UTF-8), ``json`` (sent as
        ``application/json``) or ``data`` (a form, sent as
        ``application/x-www-form-urlencoded``).  ``Content-Length`` is sent
        for a body (or a ``POST``, ``PUT``, ``PATCH`` without one) unless the
        headers give ``Content-Length`` or ``Transfer-Encoding``.  Nothing is
        added otherwise: no ``Accept-Encoding``, so bodies come back plain.
        Past ``timeout`` the client leaves (the app sees the disconnect, as a
        pending long poll does) and the Deferred fails with ``TimeoutError``.
        """
        if not method or not set(method) <= _TOKEN:
            raise ValueError(f"not an HTTP method: {method!r}")
        pairs = _headers(headers)
        names = {name.lower() for name, _ in pairs}
        given = [x for x in (body, data) if x is not None] + ([json] if json is not _NO_JSON else [])
        if len(given) > 1:
            raise TypeError("give one of body, json and data")
        content_type = None
        if json is not _NO_JSON:
            body, content_type = _json.dumps(json).encode("utf-8"), "application/json"
        elif data is not None:
            form = data.items() if isinstance(data, Mapping) else data
            body, content_type = urlencode(list(form), doseq=True).encode("ascii"), "application/x-www-form-urlencoded"
        if isinstance(body, str):
            body = body.encode("utf-8")
        target = _target(path, query)
        lines = [f"{method} {target} HTTP/1.1"]
        if "host" not in names:
            lines.append(f"Host: {self.host}")
        lines.extend(f"{name}: {value}" for name, value in pairs)
        if content_type is not None and "content-type" not in names:
            lines.append(f"Content-Type: {content_type}")
        if (body is not None or method in ("POST", "PUT", "PATCH")) and not names & {"content-length", "transfer-encoding"}:
            lines.append(f"Content-Length: {len(body or b'')}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")
        done: Deferred[ClientResponse] = Deferred()
        exchange = _Exchange(request, method == "HEAD", done, f"{method} {target}")
        pipe = self._connect(exchange)
        limit = self.timeout if timeout is None else timeout

        def gave_up(failure: Failure) -> Failure:
            if failure.check(TimeoutError):
                pipe.client.abortConnection()  # the client leaves, as a real one would
            return failure

        return self._bounded(done, limit, f"the response to {method} {target}").addErrback(gave_up)

    def get(self, path: str, *, headers: HeadersArg = None, query: QueryArg = None, timeout: float | None = None) -> Deferred[ClientResponse]:
        """``GET path``; see ``request``."""
        return self.request("GET", path, headers=headers, query=query, timeout=timeout)

    def head(self, path: str, *, headers: HeadersArg = None, query: QueryArg = None, timeout: float | None = None) -> Deferred[ClientResponse]:
        """``HEAD path`` (the response has no body); see ``request``."""
        return self.request("HEAD", path, headers=headers, query=query, timeout=timeout)

    def options(self, path: str, *, headers: HeadersArg = None, query: QueryArg = None, timeout: float | None = None) -> Deferred[ClientResponse]:
        """``OPTIONS path``; see ``request``."""
        return self.request("OPTIONS", path, headers=headers, query=query, timeout=timeout)

    def delete(self, path: str, *, headers: HeadersArg = None, query: QueryArg = None, timeout: float | None = None) -> Deferred[ClientResponse]:
        """``DELETE path``; see ``request``."""
        return self.request("DELETE", path, headers=headers, query=query, timeout=timeout)

    def post(self, path: str, *, headers: HeadersArg = None, query: QueryArg = None, body: bytes | str | None = None,
             json: Any = _NO_JSON, data: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
             timeout: float | None = None) -> Deferred[ClientResponse]:
        """``POST path`` with ``body``, ``json`` or ``data``; see ``request``."""
        return self.request("POST", path, headers=headers, query=query, body=body, json=json, data=data, timeout=timeout)

    def put(self, path: str, *, headers: HeadersArg = None, query: QueryArg = None, body: bytes | str | None = None,
            json: Any = _NO_JSON, data: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
            timeout: float | None = None) -> Deferred[ClientResponse]:
        """``PUT path`` with ``body``, ``json`` or ``data``; see ``request``."""
        return self.request("PUT", path, headers=headers, query=query, body=body, json=json, data=data, timeout=timeout)

    def patch(self, path: str, *, headers: HeadersArg = None, query: QueryArg = None, body: bytes | str | None = None,
              json: Any = _NO_JSON, data: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
              timeout: float | None = None) -> Deferred[ClientResponse]:
        """``PATCH path`` with ``body``, ``json`` or ``data``; see ``request``."""
        return self.request("PATCH", path, headers=headers, query=query, body=body, json=json, data=data, timeout=timeout)

    # WebSocket.

    def websocket(
        self,
        path: str,
        *,
        headers: HeadersArg = None,
        subprotocols: Sequence[str] = (),
        query: QueryArg = None,
        timeout: float | None = None,
    ) -> Deferred[ClientWebSocket]:
        """Open a WebSocket to ``path``; fires with it once the app answered 101.

        Fails with ``UpgradeRefused`` (``status``, ``headers``, ``body``) when
        the app answers otherwise (``onaccept`` refusing, a 404, a 426...).
        ``headers`` are sent with the upgrade request and replace the
        client's own of the same name (``Sec-WebSocket-Version``...), for
        tests of malformed upgrades; ``subprotocols`` are offered in order.
        """
        if isinstance(subprotocols, str):
            raise TypeError("subprotocols is a list of names, not one str")
        limit = self.timeout if timeout is None else timeout
        pairs = _headers(headers)
        names = {name.lower() for name, _ in pairs}
        target = _target(path, query)
        socket = ClientWebSocket(self, target, subprotocols, limit)
        ours = [
            ("Host", self.host),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", socket._key),
            ("Sec-WebSocket-Version", "13"),
        ]
        if subprotocols:
            ours.append(("Sec-WebSocket-Protocol", ", ".join(subprotocols)))
        lines = [f"GET {target} HTTP/1.1"]
        lines.extend(f"{name}: {value}" for name, value in ours if name.lower() not in names)
        lines.extend(f"{name}: {value}" for name, value in pairs)
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self._sockets.append(socket)
        socket._request = request
        opened = socket._start(self._connect(_Wire(socket)))

        def gave_up(failure: Failure) -> Failure:
            if failure.check(TimeoutError) and socket._pipe is not None:
                socket._pipe.client.abortConnection()
            return failure

        return self._bounded(opened, limit, f"the answer to the upgrade to {target}").addErrback(gave_up)

    @property
    def websockets(self) -> list[ClientWebSocket]:
        """The WebSockets this client opened that are still open."""
        return [socket for socket in self._sockets if socket.is_open]

    # The end.

    def close(self, timeout: float | None = None) -> Deferred[None]:
        """Close every WebSocket still open (1000, waiting for the app's answer), then drop every other connection.

        What the app does on a client leaving runs: ``onclose`` with 1000 (or
        1006 for a WebSocket that did not answer in time), a pending long poll's
        disconnect.  The client opens nothing afterwards.
        """
        return Deferred.fromCoroutine(self._close(timeout))

    async def _close(self, timeout: float | None) -> None:
        self._closed = True
        limit = self.timeout if timeout is None else timeout
        for socket in self.websockets:
            try:
                await socket.close(1000, "", limit)
            except TimeoutError:
                pass  # dropped below
        for pipe in list(self._pipes):
            pipe.client.abortConnection()
            pipe.pump()
        self._sockets.clear()


class _Forget(Protocol):
    """Forwards to ``inner``; once the connection is lost, the client forgets its pipe."""

    def __init__(self, inner: Protocol, pipes: set[Pipe], pipe: Pipe) -> None:
        self._inner = inner
        self._pipes = pipes
        self._pipe = pipe

    def makeConnection(self, transport: Any) -> None:
        Protocol.makeConnection(self, transport)
        self._inner.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self._inner.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._pipes.discard(self._pipe)
        self._inner.connectionLost(reason)


def client(app: Crow, **options: Any) -> CrowClient:
    """A ``CrowClient`` of ``app`` (``options``: ``peer``, ``host``, ``timeout``); close it with ``await client.close()``."""
    return CrowClient(app, **options)
