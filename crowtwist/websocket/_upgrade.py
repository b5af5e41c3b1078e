"""The opening handshake: its checks, the take-over of the connection, and a one-read fast path.

A WebSocket upgrade reaches its rule in one of two ways, both ending in
``take_over``:

- through twisted.web: the channel parses the request line by line, builds a
  ``Request``, and the resource tree renders the rule's ``WebSocketLeaf``;
- through ``CrowSite``'s fast path (``fast_upgrade``), when a connection's
  first read is a complete, ordinary upgrade request for a rule without an
  ``onaccept`` handler: the head is parsed in one go and routed with the same
  route tree, skipping the ``Request`` that nothing would look at.

The fast path only ever accepts.  Whatever it does not take (an unusual head,
a refusal, an ``onaccept`` to call, a route it does not find) goes to
twisted.web untouched, so every response other than 101 comes from one place.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from collections.abc import Callable, Sequence

from twisted.internet.interfaces import IPushProducer
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.http import HTTPChannel
from twisted.web.server import Request

from .._headers import split_tokens, valid_host
from .._http import Response
from .._routing import ParamValue, RouteNode, path_segments
from .._site import DeadlineChannel
from ._extensions import acceptable_offers, extension_error
from ._protocol import CrowServerProtocol, PublicCrowProtocol

if TYPE_CHECKING:
    from ._rule import WebSocketRule

__all__ = [
    "OVER_CAPACITY",
    "SHUTTING_DOWN",
    "Refusal",
    "UpgradeEndpoint",
    "UpgradeHead",
    "fast_upgrade",
    "refusal",
    "take_over",
]


class UpgradeEndpoint(Protocol):
    """What the fast path needs from a route's endpoint (``_resource.Endpoint`` is one).

    ``fast_websocket``: its WebSocket rule, unless something (middleware) must
    see the request as twisted.web's first."""

    @property
    def fast_websocket(self) -> WebSocketRule | None: ...


EndpointT = TypeVar("EndpointT", bound=UpgradeEndpoint)


class UpgradeHead:
    """What an upgrade request says: method, HTTP version, path, and header values by name."""

    __slots__ = ("method", "version", "path", "_get")

    def __init__(
        self, method: bytes, version: bytes, path: bytes, get: Callable[[bytes, Sequence[bytes]], Sequence[bytes] | None]
    ) -> None:
        """``get(name, default)``: every value of header ``name`` (lower case), or ``default``."""
        self.method = method
        self.version = version
        self.path = path
        self._get = get

    @classmethod
    def of(cls, request: Request) -> UpgradeHead:
        """The head of a request twisted.web has parsed."""
        return cls(request.method, request.clientproto, request.path, request.requestHeaders.getRawHeaders)

    def values(self, name: bytes) -> Sequence[bytes]:
        """Every value of header ``name`` (lower case), in order."""
        return self._get(name, ()) or ()

    def header(self, name: bytes) -> bytes | None:
        """The last value of header ``name``, as twisted.web's ``getHeader`` gives it."""
        values = self._get(name, ())
        return values[-1] if values else None

    def tokens(self, name: bytes, lower: bool = True) -> list[str]:
        """The comma-separated tokens of every ``name`` header (lower-cased unless ``lower`` is false)."""
        values = self._get(name, ())
        if not values:
            return []
        if len(values) == 1 and b"," not in values[0]:
            # One value, one token (nearly every Upgrade and Connection header): as split_tokens gives it.
            token = values[0].decode("latin-1").strip()
            return [token.lower() if lower else token] if token else []
        return split_tokens(values, lower)

    def extensions(self) -> str:
        """The ``Sec-WebSocket-Extensions`` offers, all headers joined."""
        values = self._get(b"sec-websocket-extensions", ())
        return ",".join(v.decode("latin-1") for v in values) if values else ""


def _valid_key(value: bytes | None) -> bool:
    # twisted.web and the fast path strip the value's surrounding whitespace.
    if value is None or len(value) != 24:
        return False
    try:
        return len(base64.b64decode(value, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


UPGRADE_REQUIRED = Response(
    426,
    "426 Upgrade Required: this route speaks WebSocket.\n",
    {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"},
)


SHUTTING_DOWN = Response(503, "503 Service Unavailable: the server is stopping\n")
OVER_CAPACITY = Response(503, "503 Service Unavailable: too many connections\n")


@dataclass(frozen=True)
class Refusal:
    """Why an upgrade is refused: the response, and what to log (nothing for malformed requests)."""

    response: Response
    log: str | None = None


# Headers a request may carry once at most (RFC 9112 section 3.2, RFC 6455
# section 4.2.1, RFC 6454 section 7.3): with two, which one counts is a guess
# that a proxy in front may have made differently.
_SINGLETONS = tuple((name, name.lower().encode("ascii")) for name in ("Host", "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Origin"))

_BAD_REQUEST = "400 Bad Request: invalid WebSocket handshake\n"


def _bad_request(why: str) -> Refusal:
    return Refusal(Response(400, f"400 Bad Request: {why}\n"))


def refusal(head: UpgradeHead, rule: WebSocketRule, can_take_over: bool = True) -> Refusal | None:
    """Why ``head`` may not become a WebSocket of ``rule``, or ``None`` if it may (``onaccept`` aside).

    ``can_take_over``: the channel can give its transport away (HTTP/2's cannot).
    The order of the checks decides which answer a request with several
    faults gets; both ways in share it.
    """
    if head.method != b"GET":
        return Refusal(Response(405, "405 Method Not Allowed\n", {"Allow": "GET"}))
    # An HTTP/1.0 request's Upgrade must be ignored (RFC 9110 section 7.8): a plain GET.
    if head.version != b"HTTP/1.1" or "websocket" not in head.tokens(b"upgrade"):
        return Refusal(UPGRADE_REQUIRED)
    if "upgrade" not in head.tokens(b"connection"):
        return Refusal(Response(400, "400 Bad Request: Connection: Upgrade missing\n"))
    get = head._get
    for name, key in _SINGLETONS:
        values = get(key, ())
        if values and len(values) > 1:
            return _bad_request(f"more than one {name} header")
    host = head.header(b"host")
    if host is None or not valid_host(host):
        return _bad_request("Host header missing or invalid")
    if (head.header(b"sec-websocket-version") or b"").strip() != b"13":
        return Refusal(UPGRADE_REQUIRED)
    if not _valid_key(head.header(b"sec-websocket-key")):
        return Refusal(Response(400, _BAD_REQUEST))
    # RFC 9110 section 7.8: the new protocol starts after the whole request,
    # so a body would stand between the head and the first frame (websockets
    # refuses such upgrades too).
    lengths = get(b"content-length", ())
    if get(b"transfer-encoding", ()) or (lengths and any(v.strip() != b"0" for v in lengths)):
        return _bad_request("a WebSocket upgrade request may not have a body")
    extensions = head.extensions()
    problem = extension_error(extensions) if extensions else None
    if problem is not None:
        return _bad_request(f"Sec-WebSocket-Extensions: {problem}")
    if not can_take_over:
        return Refusal(UPGRADE_REQUIRED)
    if rule.stopping:
        return Refusal(SHUTTING_DOWN, "the server is stopping")
    origins = rule.origin_policy()
    if origins is not None:
        origin = head.header(b"origin")
        if not origins.allows(None if origin is None else origin.decode("latin-1")):
            return Refusal(
                Response(403, "403 Forbidden: origin not allowed\n"), f"origin {origin!r} not allowed"
            )
    if rule.over_capacity():
        return Refusal(OVER_CAPACITY, "connection cap reached")
    return None


def take_over(
    channel: HTTPChannel,
    head: UpgradeHead,
    rule: WebSocketRule,
    params: Sequence[ParamValue],
    userdata: object,
    fresh: bool,
) -> CrowServerProtocol | PublicCrowProtocol:
    """Move ``channel``'s transport to a new protocol of ``rule`` and answer 101.

    ``fresh``: nothing was written on the connection before, so the 101 may
    go to the socket directly.
    """
    transport: Any = channel.transport
    # A channel whose twisted.web set-up never ran (the fast path's) has no
    # idle timer, no producer registration and no paused reading to undo.
    http = True
    if isinstance(channel, DeadlineChannel):
        channel.upgraded()
        http = channel.http_started
    if http:
        # The channel is done with: its idle timeout must not fire on a transport it gave away.
        channel.setTimeout(None)
        # The HTTP channel registered itself as the transport's producer and
        # would keep itself (and its request) alive through it.
        transport.unregisterProducer()
    protocol = rule.factory.build(transport.getPeer())
    channel.transport = None
    if isinstance(transport, ProtocolWrapper):
        transport.wrappedProtocol = protocol  # TLS: the channel sat inside the TLS wrapper
    else:
        transport.protocol = protocol
    protocol.makeConnection(transport)  # type: ignore[no-untyped-call]  # Twisted leaves it unannotated
    if http:
        # twisted.web pauses reading while a request is handled; nothing else will resume it.
        producer = IPushProducer(transport, None)
        if producer is not None:
            producer.resumeProducing()
    offered = head.tokens(b"sec-websocket-protocol", lower=False)
    extensions = head.extensions()
    protocol.accept_upgrade(
        key=(head.header(b"sec-websocket-key") or b"").decode("ascii"),
        offered_protocols=offered,
        # Only the offers we can take: autobahn would fail the handshake on the
        # others, where RFC 7692 section 5 has them declined.
        extensions=acceptable_offers(extensions) if extensions else "",
        subprotocol=rule.choose_subprotocol(offered) if offered else None,
        params=params,
        userdata=userdata,
        path=head.path.decode("latin-1"),
        fresh=fresh,
    )
    return protocol


# The fast path's idea of an ordinary head; anything else is twisted.web's to judge.
_REQUEST_LINE = re.compile(rb"GET (/[!-~]*) HTTP/1\.1\r\n")
# One header line each, from its CRLF to the next: a line that does not match is not counted.
_HEADER_LINES = re.compile(rb"\r\n([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([ -~\t]*)(?=\r\n)")
# Headers that change how the request is read or answered.
_NOT_FAST = frozenset({b"content-length", b"transfer-encoding", b"expect"})
# Well under twisted.web's own limits (16 KiB of headers, 500 of them).
_MAX_HEAD = 8192
_MAX_HEADERS = 64


def _parse_head(data: bytes) -> tuple[UpgradeHead, bytes] | None:
    """An ordinary upgrade request head at the start of ``data``, and the bytes after it."""
    end = data.find(b"\r\n\r\n", 0, _MAX_HEAD)
    if end < 0:
        return None
    first = _REQUEST_LINE.match(data)
    if first is None:
        return None
    start = first.end() - 2  # (each header line is matched from the CRLF before it)
    fields = _HEADER_LINES.findall(data, start, end + 2)
    # Every line is a header line when there are as many matches as line ends.
    if len(fields) > _MAX_HEADERS or len(fields) != data.count(b"\r\n", start, end + 2) - 1:
        return None
    headers: dict[bytes, list[bytes]] = {}
    for name, value in fields:
        name = name.lower()
        value = value.rstrip(b" \t")
        values = headers.get(name)
        if values is None:
            headers[name] = [value]
        else:
            values.append(value)
    if not _NOT_FAST.isdisjoint(headers):
        return None
    path = first[1].partition(b"?")[0]
    return UpgradeHead(b"GET", b"HTTP/1.1", path, headers.get), data[end + 4 :]


def _route(root: RouteNode[EndpointT], path: bytes) -> tuple[WebSocketRule, list[ParamValue]] | None:
    # The same segments RouteResource matches.
    segments = path_segments(path)
    if segments is None:
        return None
    found = root.match(segments)
    if found is None:
        return None
    node, params = found
    endpoint = node.endpoint
    rule = endpoint.fast_websocket if endpoint is not None else None
    return None if rule is None else (rule, params)


def fast_upgrade(root: RouteNode[EndpointT], channel: HTTPChannel, data: bytes) -> bool:
    """Take ``channel`` over if ``data``, its first read, is an upgrade the fast path may accept.

    Returns whether it did; if not, nothing has been touched.
    """
    parsed = _parse_head(data)
    if parsed is None:
        return False
    head, rest = parsed
    routed = _route(root, head.path)
    if routed is None:
        return False
    rule, params = routed
    if rule.accept_handler is not None or refusal(head, rule) is not None:
        return False
    protocol = take_over(channel, head, rule, params, None, fresh=True)
    if rest:
        # Frames sent right behind the head, before the 101 came.
        protocol.dataReceived(rest)
    return True
