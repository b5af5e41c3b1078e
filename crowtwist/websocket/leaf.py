"""``WebSocketLeaf``: the twisted.web leaf of a WebSocket rule.

It answers what HTTP should answer (405, 426, 400, ``onaccept``'s refusals)
with twisted.web's own ``Request``, and only on acceptance hands the
connection's transport to a ``CrowServerProtocol``.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any, cast

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from .._handlers import as_deferred
from .._headers import header_tokens, wants_upgrade
from ..http import Response, write_response
from ..site import DeadlineChannel
from .protocol import extension_error

if TYPE_CHECKING:
    from .rule import WebSocketRule

__all__ = ["WebSocketLeaf", "wants_upgrade"]

log = Logger(namespace="crowtwist")


def _valid_key(value: bytes | None) -> bool:
    if value is None or len(value.strip()) != 24:
        return False
    try:
        return len(base64.b64decode(value.strip(), validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


_UPGRADE_REQUIRED = Response(
    426,
    "426 Upgrade Required: this route speaks WebSocket.\n",
    {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"},
)


class WebSocketLeaf(WebSocketResource):
    """The leaf of one WebSocket rule in the resource tree."""

    isLeaf = True

    def __init__(self, rule: WebSocketRule) -> None:
        # WebSocketResource.__init__ only stores a factory; ours is the rule's, built lazily.
        self.rule = rule

    def render(self, request: Request) -> bytes | int:
        if request.method != b"GET":
            return write_response(request, Response(405, "405 Method Not Allowed\n", {"Allow": "GET"}))
        if not wants_upgrade(request):
            return write_response(request, _UPGRADE_REQUIRED)
        if "upgrade" not in header_tokens(request, b"connection"):
            return write_response(request, Response(400, "400 Bad Request: Connection: Upgrade missing\n"))
        if request.requestHeaders.getRawHeaders(b"sec-websocket-version", [b""])[-1].strip() != b"13":
            return write_response(request, _UPGRADE_REQUIRED)
        key = request.getHeader(b"sec-websocket-key")
        if not _valid_key(key) or request.clientproto != b"HTTP/1.1":
            return write_response(request, Response(400, "400 Bad Request: invalid WebSocket handshake\n"))
        extensions = ",".join(
            v.decode("latin-1") for v in request.requestHeaders.getRawHeaders(b"sec-websocket-extensions", [])
        )
        problem = extension_error(extensions) if extensions else None
        if problem is not None:
            return write_response(request, Response(400, f"400 Bad Request: Sec-WebSocket-Extensions: {problem}\n"))
        if request.channel is None or getattr(request.channel, "transport", None) is None:
            # HTTP/2 and other channels that cannot give their transport away.
            return write_response(request, _UPGRADE_REQUIRED)

        origins = self.rule.origin_policy()
        if origins is not None:
            origin = request.getHeader(b"origin")
            if not origins.allows(None if origin is None else origin.decode("latin-1")):
                log.warn(
                    "WebSocket upgrade to {route} refused for {peer}: origin {origin!r} not allowed",
                    route=self.rule.pattern,
                    peer=_client_host(request),
                    origin=origin,
                )
                return write_response(request, Response(403, "403 Forbidden: origin not allowed\n"))
        if self.rule.over_capacity():
            log.warn(
                "WebSocket upgrade to {route} refused for {peer}: connection cap reached",
                route=self.rule.pattern,
                peer=_client_host(request),
            )
            return write_response(request, Response(503, "503 Service Unavailable: too many connections\n"))
        if not hasattr(request, "userdata"):
            # Crow's void** userdata: onaccept may set it; the connection carries it.
            cast(Any, request).userdata = None
        handler = self.rule.accept_handler
        if handler is None:
            return self._decide(True, request, deferred=False)
        try:
            result = handler(request)
        except Exception:
            return self._accept_failed(Failure(), request, deferred=False)
        pending = as_deferred(result)
        if pending is None:
            return self._decide(result, request, deferred=False)
        pending.addCallbacks(
            self._decide,
            self._accept_failed,
            callbackArgs=(request,),
            callbackKeywords={"deferred": True},
            errbackArgs=(request,),
            errbackKeywords={"deferred": True},
        )
        return NOT_DONE_YET

    def _decide(self, result: object, request: Request, *, deferred: bool) -> bytes | int:
        if deferred and request.channel is None:
            return NOT_DONE_YET  # the client left while onaccept was pending
        if result is True:
            self._take_over(request)
            return NOT_DONE_YET
        if result is False:
            response = Response(400, "400 Bad Request\n")
        elif isinstance(result, Response):
            response = result
        else:
            log.error(
                "onaccept of WebSocket route {route} must return True, False or a Response,"
                " not {result!r}; answering 500",
                route=self.rule.pattern,
                result=result,
            )
            response = Response(500, "500 Internal Server Error\n")
        log.warn(
            "WebSocket upgrade to {route} refused for {peer}: {code}",
            route=self.rule.pattern,
            peer=_client_host(request),
            code=response.code,
        )
        return write_response(request, response, finish=deferred)

    def _accept_failed(self, failure: Failure, request: Request, *, deferred: bool) -> bytes | int:
        log.failure(
            "onaccept handler of WebSocket route {route} raised (peer {peer})",
            failure,
            route=self.rule.pattern,
            peer=_client_host(request),
        )
        if deferred and request.channel is None:
            return NOT_DONE_YET
        return write_response(request, Response(500, "500 Internal Server Error\n"), finish=deferred)

    def _take_over(self, request: Request) -> None:
        channel: Any = request.channel
        transport = channel.transport
        if isinstance(channel, DeadlineChannel):
            channel.upgraded()
        protocol = self.rule.factory.build(transport.getPeer())
        # The HTTP channel registered itself as the transport's producer and
        # would keep itself (and this request) alive through it.
        transport.unregisterProducer()
        channel.transport = None
        if isinstance(transport, ProtocolWrapper):
            transport.wrappedProtocol = protocol  # TLS: the channel sat inside the TLS wrapper
        else:
            transport.protocol = protocol
        WebSocketServerProtocol.makeConnection(protocol, transport)
        # twisted.web pauses reading while a request is handled; nothing else will resume it.
        producer = IPushProducer(transport, None)
        if producer is not None:
            producer.resumeProducing()
        offered = header_tokens(request, b"sec-websocket-protocol", lower=False)
        protocol.accept_upgrade(
            key=(request.getHeader(b"sec-websocket-key") or b"").strip().decode("ascii"),
            offered_protocols=offered,
            extensions=",".join(
                v.decode("latin-1")
                for v in request.requestHeaders.getRawHeaders(b"sec-websocket-extensions", [])
            ),
            subprotocol=self.rule.choose_subprotocol(offered),
            params=getattr(request, "route_params", ()),
            userdata=cast(Any, request).userdata,
            path=request.path.decode("latin-1"),
            # twisted.web writes a 100 Continue for an Expect header on its own.
            fresh=isinstance(channel, DeadlineChannel) and not channel.wrote and not request.getHeader(b"expect"),
        )
        # Bytes that came in the same read as the request head (a client that
        # did not wait for the 101) are still on their way through the channel's
        # line parser, which hands them to rawDataReceived once this returns.
        channel.rawDataReceived = protocol.dataReceived


def _client_host(request: Request) -> str:
    client = request.getClientAddress()
    return str(getattr(client, "host", client))
