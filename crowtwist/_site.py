"""``CrowSite``: a twisted.web ``Site`` whose connections must finish their request head in time.

twisted.web's own timeout is an idle timeout, which a client that trickles
its request a byte at a time (slowloris) never trips.  Here every request
head has an absolute deadline from its first byte (or from the TCP accept,
for the first request) to its last header, and a WebSocket upgrade until its
101: past it the connection is aborted.

Its channel also answers a head it will not read: a request line over the
line limit gets 414, a header section over the size or count limits 431, any
other malformed head 400, each with a short body, where twisted.web closes
silently or with an empty 400.  The connection is then half-closed and what
the client still sends is read and dropped for a moment, so that the answer
is not lost to a TCP reset.  Its requests (``CrowRequest``) route an
absolute-form target (``GET http://host/path HTTP/1.1``) by its path.
"""

from __future__ import annotations

import re
from typing import Any
from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableDescriptor
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from ._log import log
from ._headers import header_tokens, wants_upgrade
from ._settings import DEFAULT_MAX_BODY
from ._twisted import ChannelBase

__all__ = ["CrowRequest", "CrowSite", "DeadlineChannel"]


LINGER = 2.0
"""Seconds a refused head's connection keeps reading (and dropping) what the client still sends."""

# RFC 9112 section 3.2.2: scheme "://" authority, then path and query.
_ABSOLUTE_FORM = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*://([^/?#]*)(.*)\Z", re.DOTALL)


class CrowRequest(Request):
    """A twisted.web ``Request`` that routes an absolute-form request target by its path.

    RFC 9112 section 3.2.2: a server must accept ``GET http://host/path``
    (what a client talking to a proxy sends) and use the target's authority
    instead of ``Host``.  twisted.web would take the whole URI for the path.
    A request with several ``Host`` headers keeps them, for the 400 it gets.
    """

    # twisted.web's default is text/html, which would let a streamed answer that echoes its
    # input run script; a response of ours always names its type when it has a body.
    defaultContentType = None

    _body_bytes = 0

    def handleContentChunk(self, data: bytes) -> None:
        # A chunked body declares no length: it is counted as it comes.
        channel = self.channel
        limit = getattr(channel, "max_body_size", None)
        if limit is not None:
            self._body_bytes += len(data)
            if self._body_bytes > limit:
                self._too_large = True
                if isinstance(channel, DeadlineChannel):
                    channel.refuse_head(413, "Content Too Large", f"the body is over {limit} bytes")
                return
        Request.handleContentChunk(self, data)

    _too_large = False

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._too_large:
            return  # answered 413 already; the rest of the body was dropped, not handled
        found = _ABSOLUTE_FORM.match(path)
        if found is not None:
            authority, rest = found.groups()
            if not rest.startswith(b"/"):
                rest = b"/" + rest
            hosts = self.requestHeaders.getRawHeaders(b"host")
            if hosts is not None and len(hosts) == 1:
                self.requestHeaders.setRawHeaders(b"host", [authority.rpartition(b"@")[2]])
            path = rest
        Request.requestReceived(self, command, path, version)


class DeadlineChannel(ChannelBase):
    """An HTTP channel with an absolute deadline on each request head.

    What it knows of the head being read (``handling_request`` and the rest)
    comes from ``ChannelBase``: Twisted's private bookkeeping, or the same kept
    by hand (``crowtwist/_twisted.py``).
    """

    handshake_timeout: float | None = None
    _deadline: IDelayedCall | None = None
    _upgraded = False
    _head_done = False
    """The current request's head is complete: its body (however slow) is not under the deadline."""
    _refused = False
    _linger: IDelayedCall | None = None
    _lost: Deferred[None] | None = None
    _gone = False
    wrote = False
    """Whether a response was written: until then the transport's buffer is empty."""
    fast_upgrade: Callable[[HTTPChannel, bytes], bool] | None = None
    """Offered the connection's first read: takes the connection over, or returns false."""

    http_started = True
    """twisted.web's set-up of the connection has run (``HTTPChannel.connectionMade``)."""

    def connectionMade(self) -> None:
        timeout = self.handshake_timeout
        idle: float | None = getattr(self, "timeOut", None)
        if self.fast_upgrade is not None and timeout and (idle is None or timeout <= idle):
            # The first read may be an upgrade the fast path takes whole: twisted.web's
            # set-up (TCP_NODELAY, its idle timer, the producer registration, each undone
            # by the take-over) waits for a read it has to parse.  Until then the deadline,
            # no later than the idle timer, is what a silent client meets.
            self.http_started = False
        else:
            HTTPChannel.connectionMade(self)
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return  # read and dropped until the client closes or the linger ends
        fast = self.fast_upgrade
        if fast is not None:
            self.fast_upgrade = None
            if fast(self, data):
                return
        if not self.http_started:
            self.http_started = True
            HTTPChannel.connectionMade(self)
        if self._deadline is None and not (self._head_done or self._upgraded or self.handling_request()):
            self._arm()  # the first byte of the next request on a kept-alive connection
        super().dataReceived(data)

    max_body_size: int | None = None

    def allHeadersReceived(self) -> None:
        limit = self.max_body_size
        declared: int | None = getattr(self, "length", None)  # twisted.web's Content-Length, parsed
        if limit is not None and declared is not None and declared > limit:
            # Before twisted.web's 100 Continue: the client need not send the body at all.
            self.refuse_head(413, "Content Too Large", f"the body is over {limit} bytes")
            return
        if self.requests:
            method, version = self.head_method_and_version()
            hosts = self.requests[-1].requestHeaders.getRawHeaders(b"host")
            # RFC 9112 section 3.2: an HTTP/1.1 request without exactly one Host is answered 400.
            if version == b"HTTP/1.1" and (hosts is None or len(hosts) != 1):
                # The same words as the upgrade checks' (websocket/_upgrade.py), which come to the same verdict.
                why = "Host header missing or invalid" if hosts is None else "more than one Host header"
                self.refuse_head(400, "Bad Request", why)
                return
        super().allHeadersReceived()
        if self.requests:
            # The request line's method and version, not yet on the request.
            method, version = self.head_method_and_version()
            if not wants_upgrade(self.requests[-1], method, version):
                self._head_done = True
                self._disarm()

    def allContentReceived(self) -> None:
        if self._refused:
            return  # answered already (413, or 400 for the Host): the request is not handled
        super().allContentReceived()

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        # twisted.web splits Connection at spaces, so "Connection: close, Upgrade" kept the connection open.
        persistent: bool = HTTPChannel.checkPersistence(self, request, version)
        if persistent and "close" in header_tokens(request, b"connection"):
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return False
        return persistent

    # Heads over the limits, or malformed: a short answer, not a silent close.

    def lineLengthExceeded(self, line: bytes) -> None:
        # twisted.web's LineReceiver: a line longer than MAX_LENGTH (16 KiB), or that much without an end.
        self._over_limit()

    def lineReceived(self, line: bytes) -> None:
        if self.header_bytes_so_far() + len(line) > self.totalHeadersSize:
            self._over_limit()
            return
        super().lineReceived(line)

    def headerReceived(self, line: bytes) -> bool:
        if self.header_fields_so_far() >= self.maxHeaders:
            self.refuse_head(431, "Request Header Fields Too Large", "too many header fields")
            return False
        ok: bool = super().headerReceived(line)
        return ok

    def _over_limit(self) -> None:
        if self.still_reading_request_line():
            self.refuse_head(414, "URI Too Long", "request line too long")
        else:
            self.refuse_head(431, "Request Header Fields Too Large", "header section too large")

    def malformed_head(self) -> None:
        # Where ChannelBase can take twisted.web's answer over (an empty 400 and a close).
        self.refuse_head(400, "Bad Request", "malformed request")

    def refuse_head(self, code: int, phrase: str, why: str) -> None:
        """Answer ``code`` to a request head we will not read further, and close."""
        if self._refused or self.transport is None:
            return
        self._refused = True
        self._disarm()
        channel: Any = self  # twisted.web's LineReceiver and TimeoutMixin are unannotated
        channel.setTimeout(None)
        body = f"{code} {phrase}: {why}\n".encode("ascii")
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (code, phrase.encode("ascii"), len(body), body)
        )
        self.wrote = True
        # The line parser must not go on with what follows in this read.
        channel.setRawMode()
        channel.clearLineBuffer()
        self.close_soon()

    def close_soon(self, linger: float = LINGER) -> None:
        """Close once the answer is out, reading and dropping input meanwhile; abort after ``linger`` seconds.

        Closing a socket with unread input resets the connection, and the
        reset can overtake the answer.  So the sending side is shut first
        (after the answer), and the connection ends when the client closes
        its side, or at the latest after ``linger``.
        """
        transport: Any = self.transport
        if transport is None:
            return
        self._refused = True
        # Plain TCP; not TLS, whose wrapper would hand the call to the socket under it.
        half_closeable = IHalfCloseableDescriptor.providedBy(transport)
        if transport.disconnecting:
            pass  # twisted.web is closing it already (a request that was not persistent)
        elif half_closeable:
            # The channel registered itself as the transport's producer (twisted.web's
            # _networkProducer is the transport itself when it is a push producer, as TCP's is).
            transport.unregisterProducer()
            transport.loseWriteConnection()
            transport.resumeProducing()  # twisted.web may have paused reading for the request
        else:
            channel: Any = self
            channel.loseConnection()
        if self._linger is None:
            call_later: Any = self.callLater
            self._linger = call_later(linger, self._end_linger)

    def _end_linger(self) -> None:
        self._linger = None
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None and not self._gone:
            abort()

    def when_lost(self) -> Deferred[None]:
        """A Deferred that fires when the connection is gone."""
        if self._gone:
            return succeed(None)
        if self._lost is None:
            self._lost = Deferred()
        return self._lost

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
        self._head_done = False
        self._disarm()
        super().requestDone(request)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        self._gone = True
        linger, self._linger = self._linger, None
        if linger is not None and linger.active():
            linger.cancel()
        HTTPChannel.connectionLost(self, reason)
        lost, self._lost = self._lost, None
        if lost is not None:
            lost.callback(None)

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
    requestFactory = CrowRequest
    displayTracebacks = False
    noisy = False  # no "Starting factory <... at 0x...>": twistd crow logs the URLs it serves

    def __init__(
        self,
        resource: IResource,
        handshake_timeout: float | None = 10.0,
        max_body_size: int | None = DEFAULT_MAX_BODY,
        **kwargs: Any,
    ) -> None:
        # twisted.web would parse a POST body into request.args before any handler runs,
        # a multipart one whole in memory (email.message_from_bytes on all of it, several
        # copies deep): an upload would cost its size in memory.  crowtwist's Request
        # parses bodies when asked (get_body_params, multipart streamed from the spool).
        kwargs.setdefault("parsePOSTFormSubmission", False)
        Site.__init__(self, resource, **kwargs)
        self.handshake_timeout = handshake_timeout
        self.max_body_size = max_body_size

    def buildProtocol(self, addr: Any) -> Any:
        channel = Site.buildProtocol(self, addr)
        if isinstance(channel, DeadlineChannel):
            channel.handshake_timeout = self.handshake_timeout
            channel.max_body_size = self.max_body_size
            # The app's route tree, at the root, can take a plain upgrade from the first read.
            channel.fast_upgrade = getattr(self.resource, "fast_upgrade", None)
        return channel
