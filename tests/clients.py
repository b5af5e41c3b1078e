"""Clients for the end-to-end tests: autobahn's WebSocket client, and a raw
TCP client for peers that must misbehave.  All on 127.0.0.1, all bounded."""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.web.server import Site

from . import frames as F

TIMEOUT = 10.0


def within(d: Deferred[Any], seconds: float = TIMEOUT) -> Deferred[Any]:
    """``d``, failing with a timeout instead of hanging the suite."""
    return d.addTimeout(seconds, reactor)  # type: ignore[arg-type]


def listen(resource: Any) -> Any:
    """Serve ``resource`` on a random 127.0.0.1 port; returns the listening port."""
    site = Site(resource)
    return reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]


class AutobahnClient(WebSocketClientProtocol):
    """autobahn's client protocol, collecting what it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: DeferredQueue[tuple[bytes, bool]] = DeferredQueue()
        self.closed_with: Deferred[tuple[bool, int | None, str | None]] = Deferred()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.messages.put((payload, isBinary))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.closed_with.called:
            self.closed_with.callback((wasClean, code, reason))

    def next_message(self) -> Deferred[tuple[bytes, bool]]:
        return within(self.messages.get())


@inlineCallbacks
def connect_autobahn(port: int, path: str = "/", **options: Any) -> Any:
    """An open autobahn client connection to ``ws://127.0.0.1:port/path``."""
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}{path}", **options)
    factory.protocol = AutobahnClient
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=TIMEOUT)
    protocol = yield within(endpoint.connect(factory))
    yield within(protocol.is_open)
    return protocol


class RawClient(Protocol):
    """Bytes in, bytes out: for handshakes and frames a polite client would not send."""

    def __init__(self) -> None:
        self.buffer = b""
        self.head: bytes | None = None
        self.frames: list[F.Frame] = []
        self.lost: Deferred[None] = Deferred()
        self._waiters: list[tuple[Any, Deferred[Any]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if self.head is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head, self.buffer = self.buffer[: end + 4], self.buffer[end + 4 :]
        new, self.buffer = F.decode_all(self.buffer)
        self.frames.extend(new)
        self._check()

    def connectionLost(self, reason: Any = None) -> None:
        if not self.lost.called:
            self.lost.callback(None)

    def _check(self) -> None:
        for waiter in list(self._waiters):
            test, d = waiter
            result = test()
            if result is not None:
                self._waiters.remove(waiter)
                d.callback(result)

    def wait_for(self, test: Any) -> Deferred[Any]:
        """Fires with ``test()`` once it is not None."""
        d: Deferred[Any] = Deferred()
        self._waiters.append((test, d))
        self._check()
        return within(d)

    def handshake(self, path: str = "/", headers: dict[str, str] | None = None) -> Deferred[bytes]:
        """Send an opening handshake; fires with the response head."""
        self.transport.write(F.handshake(path, headers))  # type: ignore[union-attr]
        return self.wait_for(lambda: self.head)

    def next_frames(self, count: int = 1) -> Deferred[list[F.Frame]]:
        """Fires with every frame received and not yet taken, once there are at least ``count``."""

        def ready() -> list[F.Frame] | None:
            if len(self.frames) < count:
                return None
            taken, self.frames = self.frames, []
            return taken

        return self.wait_for(ready)


@inlineCallbacks
def connect_raw(port: int) -> Any:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=TIMEOUT)
    protocol = yield within(endpoint.connect(Factory.forProtocol(RawClient)))
    return protocol
