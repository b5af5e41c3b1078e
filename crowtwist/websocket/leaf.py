"""``WebSocketLeaf``: the twisted.web leaf of a WebSocket rule.

It answers what HTTP should answer (405, 426, 400, ``onaccept``'s refusals)
with twisted.web's own ``Request``, and only on acceptance hands the
connection's transport to a ``CrowServerProtocol``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from autobahn.twisted.resource import WebSocketResource
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from .._handlers import as_deferred
from .._headers import wants_upgrade
from ..http import Response, write_response
from ..site import DeadlineChannel
from .upgrade import UpgradeHead, refusal, take_over

if TYPE_CHECKING:
    from .rule import WebSocketRule

__all__ = ["WebSocketLeaf", "wants_upgrade"]

log = Logger(namespace="crowtwist")


class WebSocketLeaf(WebSocketResource):
    """The leaf of one WebSocket rule in the resource tree."""

    isLeaf = True

    def __init__(self, rule: WebSocketRule) -> None:
        # WebSocketResource.__init__ only stores a factory; ours is the rule's, built lazily.
        self.rule = rule

    def render(self, request: Request) -> bytes | int:
        # HTTP/2 and other channels that cannot give their transport away get a 426.
        can_take_over = getattr(request.channel, "transport", None) is not None
        refused = refusal(UpgradeHead.of(request), self.rule, can_take_over)
        if refused is not None:
            if refused.log is not None:
                log.warn(
                    "WebSocket upgrade to {route} refused for {peer}: {why}",
                    route=self.rule.pattern,
                    peer=_client_host(request),
                    why=refused.log,
                )
            return write_response(request, refused.response)
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
        protocol = take_over(
            channel,
            UpgradeHead.of(request),
            self.rule,
            getattr(request, "route_params", ()),
            cast(Any, request).userdata,
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
