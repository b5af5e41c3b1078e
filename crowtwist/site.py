"""``CrowSite``: a twisted.web ``Site`` whose connections must finish their request head in time.

twisted.web's own timeout is an idle timeout, which a client that trickles
its request a byte at a time (slowloris) never trips.  Here every request
head has an absolute deadline from its first byte (or from the TCP accept,
for the first request) to its last header, and a WebSocket upgrade until its
101: past it the connection is aborted.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Site

from ._headers import wants_upgrade

__all__ = ["CrowSite", "DeadlineChannel"]

log = Logger(namespace="crowtwist")


class DeadlineChannel(HTTPChannel):
    """An HTTP channel with an absolute deadline on each request head."""

    handshake_timeout: float | None = None
    _deadline: IDelayedCall | None = None
    _upgraded = False
    wrote = False
    """Whether a response was written: until then the transport's buffer is empty."""
    fast_upgrade: Callable[[HTTPChannel, bytes], bool] | None = None
    """Offered the connection's first read: takes the connection over, or returns false."""

    def connectionMade(self) -> None:
        HTTPChannel.connectionMade(self)
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        fast = self.fast_upgrade
        if fast is not None:
            self.fast_upgrade = None
            if fast(self, data):
                return
        if self._deadline is None and not self._handlingRequest and not self._upgraded:
            self._arm()  # the first byte of the next request on a kept-alive connection
        HTTPChannel.dataReceived(self, data)

    def allHeadersReceived(self) -> None:
        HTTPChannel.allHeadersReceived(self)
        if self.requests and not wants_upgrade(self.requests[-1]):
            self._disarm()

    def write(self, data: bytes) -> None:
        self.wrote = True
        HTTPChannel.write(self, data)

    def writeSequence(self, iovec: Any) -> None:
        self.wrote = True
        HTTPChannel.writeSequence(self, iovec)

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        self.wrote = True
        HTTPChannel.writeHeaders(self, version, code, reason, headers)

    def upgraded(self) -> None:
        """The 101 is on its way: the deadline is met."""
        self._upgraded = True
        self._disarm()

    def requestDone(self, request: Any) -> None:
        self._disarm()
        HTTPChannel.requestDone(self, request)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        HTTPChannel.connectionLost(self, reason)

    def _arm(self) -> None:
        if self.handshake_timeout:
            call_later: Any = self.callLater  # set by HTTPFactory.buildProtocol
            self._deadline = call_later(self.handshake_timeout, self._expired)

    def _disarm(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _expired(self) -> None:
        self._deadline = None
        transport = self.transport
        if transport is None:
            return
        peer = transport.getPeer()
        log.info(
            "request head from {peer} not complete within {timeout}s: closing",
            peer=getattr(peer, "host", peer),
            timeout=self.handshake_timeout,
        )
        transport.abortConnection()  # type: ignore[attr-defined]


class CrowSite(Site):
    """A ``Site`` for a crowtwist app: no tracebacks in pages, a deadline on request heads.

    When its root is the app's route tree, each connection's first read is
    offered to the tree's ``fast_upgrade`` (``websocket/upgrade.py``) before
    twisted.web parses it.
    """

    protocol = DeadlineChannel  # type: ignore[assignment]  # plain HTTP/1.1: no HTTP/2 to upgrade from
    displayTracebacks = False

    def __init__(self, resource: IResource, handshake_timeout: float | None = 10.0, **kwargs: Any) -> None:
        Site.__init__(self, resource, **kwargs)
        self.handshake_timeout = handshake_timeout

    def buildProtocol(self, addr: Any) -> Any:
        channel = Site.buildProtocol(self, addr)
        if isinstance(channel, DeadlineChannel):
            channel.handshake_timeout = self.handshake_timeout
            # The app's route tree, at the root, can take a plain upgrade from the first read.
            channel.fast_upgrade = getattr(self.resource, "fast_upgrade", None)
        return channel
