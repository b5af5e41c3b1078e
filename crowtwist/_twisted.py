"""Every Twisted private name crowtwist relies on, in one place, each with a public fallback.

Twisted promises nothing about underscore names; crowtwist uses a few where
the public API is slower or less precise.  Each use is here, with what it
relies on and the Twisted versions it is checked against (26.4.0, the floor
in setup.cfg, to 26.10.0).  At import a guard checks that every name the
fast paths use is there and behaves as they expect: it feeds a bare
``HTTPChannel`` a request line and two header lines and reads its state
back, and checks the other names on their classes (with the signature of
the method crowtwist overrides).  If anything is missing or changed, it logs
one warning that names it and every use here takes its public fallback;
``CROWTWIST_PUBLIC_PATHS=twisted`` (or ``all``) forces the same.

Private name (twisted.web.http unless said)   Here                         Public fallback
HTTPChannel.__first_line                      still_reading_request_line   tracked in lineReceived
HTTPChannel._receivedHeaderSize               header_bytes_so_far          counted in lineReceived
HTTPChannel._receivedHeaderCount              header_fields_so_far         counted in headerReceived
HTTPChannel._command, _version                head_method_and_version      split from the request line
HTTPChannel._handlingRequest                  handling_request             allContentReceived / requestDone
HTTPChannel._respondToBadRequestAndDisconnect malformed_head (override)    Twisted's own empty 400
StreamServerEndpointService._raiseSynchronously  listening_service         a listening Service of our own
ReactorBase._exitSignal                       forget_exit_signal           none: twistd exits by the signal
FileDescriptor._tempDataLen (internet.abstract)  close_at_once             loseConnection (a reactor turn)

The method names are on ``HeadChannel``, which ``DeadlineChannel`` derives
from (through ``ChannelBase``); the fallbacks of the first five run in the
public ``HTTPChannel`` methods that see each line go by.  Two private uses
needed no fallback and are gone: ``HTTPChannel._networkProducer`` (the
transport itself, for the TCP transports ``close_soon`` half-closes) and
replacing a channel's ``rawDataReceived`` after an upgrade (the public
``LineReceiver.clearLineBuffer()`` gives the same bytes).
"""

from __future__ import annotations

import inspect
import os
from typing import TYPE_CHECKING, Any, cast
from collections.abc import Callable, Mapping, Sequence

import twisted
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet import tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.base import ReactorBase
from twisted.internet.protocol import connectionDone
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers

from ._log import log

if TYPE_CHECKING:
    from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
    from twisted.internet.protocol import Factory

__all__ = [
    "ENVIRONMENT",
    "MISSING",
    "NAMES",
    "PUBLIC",
    "ChannelBase",
    "HeadChannel",
    "choose_paths",
    "close_at_once",
    "forced",
    "forget_exit_signal",
    "listening_service",
    "missing_names",
]


ENVIRONMENT = "CROWTWIST_PUBLIC_PATHS"
"""Comma-separated seams to run on public paths only: ``twisted`` (this one), ``autobahn``, or ``all``."""

_SEAM = "twisted"

NAMES = (
    "HTTPChannel._HTTPChannel__first_line",
    "HTTPChannel._receivedHeaderSize",
    "HTTPChannel._receivedHeaderCount",
    "HTTPChannel._command",
    "HTTPChannel._version",
    "HTTPChannel._handlingRequest",
    "HTTPChannel._respondToBadRequestAndDisconnect(self)",
    "StreamServerEndpointService._raiseSynchronously",
    "ReactorBase._exitSignal",
    "FileDescriptor._tempDataLen",
)
"""Every private name the fast paths below use, as the guard's warning names them."""


# The guard.


class _ProbeRequest:
    """All of a request that ``HTTPChannel`` touches while it reads a request line and headers."""

    def __init__(self, channel: object, queued: object = None) -> None:
        self.requestHeaders = Headers()


def _probe_channel() -> list[str]:
    """The HTTPChannel names (of NAMES) that are missing or do not move as the fast paths expect."""
    missing: list[str] = []
    channel: Any = HTTPChannel()
    channel.requestFactory = _ProbeRequest
    state = vars(channel)

    def expect(name: str, value: object) -> None:
        attribute = name.partition(".")[2]
        if getattr(channel, attribute, None) != value or (attribute == "_handlingRequest" and attribute not in state):
            if name not in missing:
                missing.append(name)

    expect("HTTPChannel._handlingRequest", False)  # an instance attribute from __init__
    expect("HTTPChannel._HTTPChannel__first_line", 1)
    expect("HTTPChannel._receivedHeaderSize", 0)
    expect("HTTPChannel._receivedHeaderCount", 0)
    lines = (b"GET /probe HTTP/1.1", b"Host: probe", b"Accept: */*")
    try:
        for line in lines:
            channel.lineReceived(line)
    except Exception:  # a parser that changed too much to be probed: every channel name is suspect
        return [name for name in NAMES if name.startswith("HTTPChannel.") and "(" not in name]
    expect("HTTPChannel._HTTPChannel__first_line", 0)
    expect("HTTPChannel._receivedHeaderSize", sum(map(len, lines)))
    expect("HTTPChannel._receivedHeaderCount", 1)  # "Host" is in; "Accept" waits for a possible continuation
    expect("HTTPChannel._command", b"GET")
    expect("HTTPChannel._version", b"HTTP/1.1")
    expect("HTTPChannel._handlingRequest", False)
    return missing


def _takes_only_self(method: object) -> bool:
    try:
        parameters = list(inspect.signature(cast(Callable[..., Any], method)).parameters)
    except (TypeError, ValueError):
        return False
    return parameters == ["self"]


def missing_names() -> list[str]:
    """What the fast paths need from Twisted and do not find, as the guard's log line names it."""
    missing = _probe_channel()
    if not _takes_only_self(getattr(HTTPChannel, "_respondToBadRequestAndDisconnect", None)):
        missing.append("HTTPChannel._respondToBadRequestAndDisconnect(self)")
    if not isinstance(getattr(StreamServerEndpointService, "_raiseSynchronously", None), bool):
        missing.append("StreamServerEndpointService._raiseSynchronously")
    if not hasattr(ReactorBase, "_exitSignal"):
        missing.append("ReactorBase._exitSignal")
    if not _write_buffer_probed():
        missing.append("FileDescriptor._tempDataLen")
    return missing


def _write_buffer_probed() -> bool:
    """Whether a FileDescriptor keeps its unsent bytes where ``close_at_once`` looks for them."""
    try:
        descriptor: Any = FileDescriptor(reactor=cast(Any, object()))
        descriptor.connected = 1  # (write() drops data on an unconnected descriptor)
        descriptor.startWriting = lambda: None
        empty = (descriptor._tempDataLen, descriptor.dataBuffer, descriptor.offset) == (0, b"", 0)
        descriptor.write(b"probe")
        return empty and descriptor._tempDataLen == 5 and descriptor._writeDisconnecting is False
    except Exception:
        return False


def forced(environ: Mapping[str, str], seam: str = _SEAM) -> bool:
    """Whether ``environ`` asks for ``seam``'s public paths (``CROWTWIST_PUBLIC_PATHS``)."""
    wanted = {part.strip().lower() for part in environ.get(ENVIRONMENT, "").split(",")}
    return seam in wanted or "all" in wanted


def choose_paths(environ: Mapping[str, str], missing: Sequence[str]) -> bool:
    """Whether to take the public paths; if so, say so in one warning naming what is missing."""
    if forced(environ):
        names = ", ".join(NAMES)
        reason = f"set aside by {ENVIRONMENT}={environ[ENVIRONMENT]}"
    elif missing:
        names = ", ".join(missing)
        reason = f"missing or changed in Twisted {twisted.__version__}"
    else:
        return False
    log.warn(
        "Twisted internals {names} {reason}: crowtwist takes Twisted's public paths (slower or less precise)",
        names=names,
        reason=reason,
    )
    return True


MISSING: tuple[str, ...] = tuple(missing_names())
"""What the guard found missing or changed at import (empty on a Twisted the fast paths know)."""

PUBLIC: bool = choose_paths(os.environ, MISSING)
"""Every use below takes its public fallback."""


# The request head, as an HTTP channel reads it.


class HeadChannel(HTTPChannel):
    """An ``HTTPChannel`` that can say how far it has read the current request head.

    ``ChannelBase`` is one of its two implementations, chosen at import:
    Twisted's own bookkeeping, or the same kept by hand.
    """

    if TYPE_CHECKING:
        # Twisted leaves these unannotated; subclasses call them through super().

        def dataReceived(self, data: bytes) -> None: ...

        def lineReceived(self, line: bytes) -> None: ...

        def headerReceived(self, line: bytes) -> bool: ...

        def allHeadersReceived(self) -> None: ...

        def allContentReceived(self) -> None: ...

        def requestDone(self, request: Any) -> None: ...

        def loseConnection(self) -> None: ...

    def still_reading_request_line(self) -> bool:
        """No request line yet for the next request: an over-long line now is the request line."""
        raise NotImplementedError

    def header_bytes_so_far(self) -> int:
        """Bytes of the current head so far, request line included, line ends not (Twisted's count)."""
        raise NotImplementedError

    def header_fields_so_far(self) -> int:
        """Header fields of the current head taken so far (a field's last line may still be pending)."""
        raise NotImplementedError

    def head_method_and_version(self) -> tuple[bytes, bytes]:
        """The current request line's method and version, before twisted.web gives them to the request."""
        raise NotImplementedError

    def handling_request(self) -> bool:
        """A complete request is being answered: later bytes are the next request's, buffered."""
        raise NotImplementedError

    def malformed_head(self) -> None:
        """Twisted found the request head malformed: answer, and close.

        Called only on the fast path, which can take Twisted's answer over;
        this default answers as Twisted does.
        """
        transport: Any = self.transport
        transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        self.loseConnection()


class _PrivateHead(HeadChannel):
    """Twisted's own bookkeeping (all in twisted.web.http.HTTPChannel; checked in 26.4.0 to 26.10.0)."""

    def still_reading_request_line(self) -> bool:
        # __first_line (name-mangled): 1 before a request, 2 once the one blank line Twisted
        # forgives is eaten, 0 from the request line until allContentReceived.
        channel: Any = self
        return bool(channel._HTTPChannel__first_line)

    def header_bytes_so_far(self) -> int:
        # _receivedHeaderSize: len() of every head line so far, added at the top of lineReceived.
        channel: Any = self
        size: int = channel._receivedHeaderSize
        return size

    def header_fields_so_far(self) -> int:
        # _receivedHeaderCount: incremented by headerReceived once a field is stored.
        channel: Any = self
        count: int = channel._receivedHeaderCount
        return count

    def head_method_and_version(self) -> tuple[bytes, bytes]:
        # _command and _version: set by lineReceived from the request line, deleted in allContentReceived.
        channel: Any = self
        return channel._command, channel._version

    def handling_request(self) -> bool:
        # _handlingRequest: set in allContentReceived, cleared in requestDone (persistent connections).
        channel: Any = self
        handling: bool = channel._handlingRequest
        return handling

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's one answer to every malformed head (an empty 400 and a close), called
        # from lineReceived, headerReceived, the transfer decoders and Request.
        self.malformed_head()


class _PublicHead(HeadChannel):
    """The same bookkeeping kept by hand, in the public methods that see each line go by.

    Twisted's own 400 for a malformed head stays Twisted's: there is no
    public way to take it over.
    """

    _first_line = 1
    _head_bytes = 0
    _head_fields = 0
    _method_version = (b"", b"")
    _handling = False

    def lineReceived(self, line: bytes) -> None:
        first = self._first_line
        if first:
            if not line and first == 1:
                self._first_line = 2  # the blank line Twisted forgives before a request
            else:
                self._first_line = 0
                parts = line.split(b" ")
                if len(parts) == 3:  # anything else, Twisted refuses
                    self._method_version = (parts[0], parts[2])
        self._head_bytes += len(line)
        HTTPChannel.lineReceived(self, line)

    def headerReceived(self, line: bytes) -> bool:
        ok: bool = HTTPChannel.headerReceived(self, line)
        if ok:
            self._head_fields += 1
        return ok

    def allContentReceived(self) -> None:
        self._first_line = 1
        self._head_bytes = 0
        self._head_fields = 0
        self._handling = True
        HTTPChannel.allContentReceived(self)

    def requestDone(self, request: Any) -> None:
        # Twisted replays buffered bytes from inside requestDone: the next head starts there.
        if self.persistent and self.requests and request is self.requests[0]:
            self._handling = False
        HTTPChannel.requestDone(self, request)

    def still_reading_request_line(self) -> bool:
        return bool(self._first_line)

    def header_bytes_so_far(self) -> int:
        return self._head_bytes

    def header_fields_so_far(self) -> int:
        return self._head_fields

    def head_method_and_version(self) -> tuple[bytes, bytes]:
        return self._method_version

    def handling_request(self) -> bool:
        return self._handling


if TYPE_CHECKING:
    ChannelBase = HeadChannel
else:
    ChannelBase = _PublicHead if PUBLIC else _PrivateHead
"""What ``DeadlineChannel`` derives from."""


# Listening: a port that cannot be had is an error from startService.


def _private_listening_service(endpoint: IStreamServerEndpoint, factory: Factory[Any]) -> Service:
    service = StreamServerEndpointService(endpoint, factory)
    # _raiseSynchronously (checked in 26.4.0 to 26.10.0; reset by Twisted after the first start):
    # a listen() that fails at once raises from (privileged)startService instead of being logged.
    cast(Any, service)._raiseSynchronously = True
    return service


class _ListeningService(Service):
    """Listens on ``endpoint`` while running; a listen that fails at once raises from (privileged)startService.

    ``StreamServerEndpointService`` with ``_raiseSynchronously`` set, from public parts.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, factory: Factory[Any]) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self._listening: Deferred[IListeningPort | None] | None = None

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        self._listen()

    def startService(self) -> None:
        Service.startService(self)
        if self._listening is None:
            self._listen()

    def _listen(self) -> None:
        now: list[Failure] = []
        at_once = True

        def failed(failure: Failure) -> None:
            if at_once:
                now.append(failure)
            elif not failure.check(CancelledError):
                log.failure("cannot listen on {endpoint}", failure, endpoint=self.endpoint)

        listening: Deferred[Any] = self.endpoint.listen(self.factory)
        self._listening = listening.addErrback(failed)
        at_once = False
        if now:
            now[0].raiseException()

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        listening, self._listening = self._listening, None
        if listening is None:
            return succeed(None)
        listening.cancel()

        def stop(port: IListeningPort | None) -> Deferred[None] | None:
            return None if port is None else port.stopListening()

        return listening.addCallback(stop)


_public_listening_service: Callable[[IStreamServerEndpoint, Factory[Any]], Service] = _ListeningService

listening_service = _public_listening_service if PUBLIC else _private_listening_service
"""``listening_service(endpoint, factory)``: a Service listening on ``endpoint`` while it runs.

A port that cannot be had raises from ``privilegedStartService`` (or
``startService``), not as an error in the log after the process said it started.
"""


# twistd's exit status after a stop on SIGTERM or SIGINT.


def _private_forget_exit_signal(reactor: object) -> None:
    # ReactorBase._exitSignal (_ISupportsExitSignalCapturing; checked in 26.4.0 to 26.10.0):
    # the signal that stopped the reactor, which twistd re-raises on itself at exit.
    if getattr(reactor, "_exitSignal", None) is not None:
        cast(Any, reactor)._exitSignal = None


def _public_forget_exit_signal(reactor: object) -> None:
    # No public way: twistd exits by the signal, as it does for any application.
    return None


forget_exit_signal = _public_forget_exit_signal if PUBLIC else _private_forget_exit_signal


# Closing a TCP connection that has nothing left to send.


def _private_close_at_once(transport: object) -> bool:
    # FileDescriptor._tempDataLen and _writeDisconnecting (twisted.internet.abstract; checked in
    # 26.4.0 to 26.10.0): bytes written since the last doWrite, and a half-close under way; with
    # those and dataBuffer[offset:] empty, loseConnection would only wait for a doWrite that finds
    # nothing to send (two epoll changes, a poll, an empty send(2)) before this same call.  The
    # kernel still sends what the socket holds, then the FIN, as after Twisted's own close.
    if not isinstance(transport, tcp.Connection):
        return False
    t: Any = transport
    if not t.connected or t.disconnecting or t._writeDisconnecting or t._tempDataLen or t.offset != len(t.dataBuffer):
        return False
    t.connectionLost(connectionDone)
    return True


def _public_close_at_once(transport: object) -> bool:
    return False


close_at_once: Callable[[object], bool] = _public_close_at_once if PUBLIC else _private_close_at_once
"""``close_at_once(transport)``: close a plain TCP transport now, if nothing waits to be written in it.

The protocol's ``connectionLost`` runs before this returns.  False (nothing
done) for any other transport, or when the caller should ``loseConnection()``.
"""
"""``forget_exit_signal(reactor)``: after a clean stop on a signal, let twistd exit 0, not by the signal."""


# --- Outgoing over TLS (issue 17, perf-out): one SSL_write per read's replies, now. ---
#
# Twisted's TLS transport (twisted.protocols.tls.BufferingTLSTransport, the
# protocol of TLSMemoryBIOFactory) gathers small writes in a private
# _AggregateSmallWrites (its ``_aggregator``) and encrypts them from a
# callLater(0): a timed call per connection per reactor turn.  The replies of
# one read are corked by ``Outgoing`` already, so they can be encrypted at
# once by TLSMemoryBIOProtocol.write (public), after whatever the aggregator
# holds (the 101, frames written outside a read), which keeps the order.
# Private: BufferingTLSTransport._aggregator (an instance attribute set in
# __init__) and its flush(); checked in Twisted 26.4.0 to 26.10.0.
# Public fallback: no writer, and corked replies go through transport.write.

__all__ += ["TLS_NAMES", "tls_writer"]

TLS_NAMES = ("BufferingTLSTransport._aggregator.flush",)
"""The private names the TLS writer uses (not in NAMES: checked lazily, TLS being an extra)."""

_tls_checked: list[bool] = []


def _sets_aggregator(buffering: type) -> bool:
    """Whether ``buffering``'s own ``__init__`` assigns ``self._aggregator``.

    Twisted 26.10 also annotates it on the class, 26.4 does not: the assignment,
    which the writer relies on, is what both have.
    """
    code = getattr(vars(buffering).get("__init__"), "__code__", None)
    return code is not None and "_aggregator" in code.co_names


def _tls_names_present() -> bool:
    """Whether Twisted's TLS transport has the aggregator the writer flushes (checked once)."""
    if not _tls_checked:
        try:
            from twisted.protocols import tls
        except ImportError:  # no pyOpenSSL: there is no TLS transport to write to
            _tls_checked.append(False)
            return False
        buffering = getattr(tls, "BufferingTLSTransport", None)
        aggregate = getattr(tls, "_AggregateSmallWrites", None)
        ok = (
            isinstance(buffering, type)
            and issubclass(buffering, tls.TLSMemoryBIOProtocol)
            and _sets_aggregator(buffering)
            and callable(getattr(aggregate, "flush", None))
            and callable(getattr(tls.TLSMemoryBIOProtocol, "write", None))
        )
        if not ok and not PUBLIC:
            log.warn(
                "Twisted internals {names} missing or changed in Twisted {version}:"
                " WebSocket replies over TLS take Twisted's public path (slower)",
                names=", ".join(TLS_NAMES),
                version=twisted.__version__,
            )
        _tls_checked.append(ok)
    return _tls_checked[0]


def _private_tls_writer(transport: object) -> Callable[[bytes], None] | None:
    if not _tls_names_present():
        return None
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    if not isinstance(transport, TLSMemoryBIOProtocol):
        return None
    aggregator = vars(transport).get("_aggregator")
    flush = getattr(aggregator, "flush", None)
    if flush is None:
        return None
    write: Callable[[Any, bytes], object] = TLSMemoryBIOProtocol.write  # (unannotated in Twisted)

    def tls_write(data: bytes) -> None:
        flush()  # (nothing to do, and cheap, unless something was written outside a read)
        write(transport, data)

    return tls_write


def _public_tls_writer(transport: object) -> Callable[[bytes], None] | None:
    return None


def tls_writer(transport: object) -> Callable[[bytes], None] | None:
    """A function that encrypts and sends bytes on ``transport`` now, in order; None if not a TLS transport we know.

    None also on the public paths: callers write to the transport as usual.
    """
    return (_public_tls_writer if PUBLIC else _private_tls_writer)(transport)
