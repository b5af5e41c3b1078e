"""An ``onaccept`` still deciding when its client leaves: cancelled, its place under the caps given back.

``onaccept`` only ever runs on twisted.web's path (``WebSocketLeaf`` and its ``PendingUpgrade``):
the one-read fast path leaves every rule with an ``onaccept`` alone, so nothing of it is ever
pending there.  The upgrade can still reach the leaf in different ways, each tried here over
real sockets on 127.0.0.1: as the connection's first read (offered to the fast path first),
behind a plain request on a kept-alive connection (twisted.web's alone), and on a plain
twisted.web ``Site`` (no fast path, no head deadline).  Every wait is on an event, bounded.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable, Generator, Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.web.server import Site

from crowtwist import Crow

from . import frames as F
from .clients import TIMEOUT, within
from .conftest import LogCapture

HEAD = F.handshake("/ws")
PAGE = b"GET /page HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class Bytes(Protocol):
    """Collects what the server sends; ``until(test)`` fires once ``test(data)`` holds."""

    def __init__(self) -> None:
        self.data = b""
        self.lost: Deferred[None] = Deferred()
        self._waiting: list[tuple[Callable[[bytes], bool], Deferred[None]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        for entry in list(self._waiting):
            if entry[0](self.data):
                self._waiting.remove(entry)
                entry[1].callback(None)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost.callback(None)

    def until(self, test: Callable[[bytes], bool]) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if test(self.data):
            d.callback(None)
        else:
            self._waiting.append((test, d))
        return within(d)


class Awaitable:
    """An awaitable that is neither a coroutine nor a Deferred."""

    def __init__(self, d: Deferred[bool]) -> None:
        self.d = d

    def __await__(self) -> Generator[Any, Any, bool]:
        return self.d.__await__()


class Accepting:
    """An ``onaccept`` of one kind: the first call pends until cancelled, later ones accept at once."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.calls = 0
        self.started: Deferred[None] = Deferred()
        self.cancelled: Deferred[str] = Deferred()

    def __call__(self, request: Any) -> Any:
        self.calls += 1
        if self.calls > 1:
            return True
        # Fired on the next turn of the reactor: once the leaf holds the pending answer (and its place).
        reactor.callLater(0, self.started.callback, None)  # type: ignore[attr-defined]
        if self.kind == "async-def":
            return self._coroutine()
        pending: Deferred[bool] = Deferred(lambda d: self.cancelled.callback(self.kind))
        return pending if self.kind == "deferred" else Awaitable(pending)

    async def _coroutine(self) -> bool:
        try:
            await Deferred()
        except CancelledError:
            self.cancelled.callback(self.kind)
            raise
        return True


def connect(port: int) -> Deferred[Bytes]:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=TIMEOUT)
    return within(endpoint.connect(Factory.forProtocol(Bytes)))


def serve(app: Crow, way: str) -> Any:
    site = Site(app.resource()) if way == "plain-site" else app.site()
    return reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]


@pytest.mark.parametrize("way", ["first-read", "kept-alive", "plain-site"])
@pytest.mark.parametrize("kind", ["deferred", "async-def", "awaitable"])
@pytest_twisted.inlineCallbacks
def test_pending_onaccept_is_cancelled_when_its_client_leaves(kind: str, way: str, logs: LogCapture) -> Iterator[Any]:
    """The client leaves while onaccept decides: the Deferred is cancelled (CancelledError inside a
    coroutine), the place is free at once for the next upgrade, and nothing is logged as a failure."""
    accept = Accepting(kind)
    app = Crow()
    rule = app.route("/ws").websocket().onaccept(accept).max_connections(1)
    app.route("/page")(lambda request: "page\n")
    port = serve(app, way)
    try:
        client = yield connect(port.getHost().port)
        if way == "kept-alive":
            client.transport.write(PAGE)
            yield client.until(lambda data: data.endswith(b"page\n"))
        client.transport.write(HEAD)
        yield within(accept.started)
        assert rule.occupied() == 1
        client.transport.loseConnection()
        assert (yield within(accept.cancelled)) == kind
        assert rule.occupied() == 0 and len(rule.connections) == 0

        # The place is free: the next upgrade (accepted at once) opens under the cap of 1.
        again = yield connect(port.getHost().port)
        again.transport.write(HEAD)
        yield again.until(lambda data: b"\r\n\r\n" in data)
        assert again.data.startswith(b"HTTP/1.1 101 ")
        assert len(rule.connections) == 1
        again.transport.loseConnection()
        yield within(again.lost)
        assert not logs.failures()
    finally:
        yield port.stopListening()


@pytest.mark.parametrize("kind", ["deferred", "async-def"])
@pytest_twisted.inlineCallbacks
def test_pending_onaccept_is_cancelled_when_the_head_deadline_cuts_the_connection(
    kind: str, logs: LogCapture
) -> Iterator[Any]:
    """An onaccept slower than the handshake deadline: the connection is cut, onaccept cancelled, the place freed."""
    accept = Accepting(kind)
    app = Crow().websocket_limits(handshake_timeout=0.2)
    rule = app.route("/ws").websocket().onaccept(accept)
    port = serve(app, "first-read")
    try:
        client = yield connect(port.getHost().port)
        client.transport.write(HEAD)
        yield within(accept.started)
        assert rule.occupied() == 1
        assert (yield within(accept.cancelled)) == kind
        yield within(client.lost)
        assert client.data == b"" and rule.occupied() == 0
        assert not logs.failures()
    finally:
        yield port.stopListening()
