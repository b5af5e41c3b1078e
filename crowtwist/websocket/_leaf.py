"""``WebSocketLeaf``: the twisted.web leaf of a WebSocket rule.

It answers what HTTP should answer (405, 426, 400, ``onaccept``'s refusals)
with twisted.web's own ``Request``, and only on acceptance hands the
connection's transport to a ``CrowServerProtocol``.

An ``onaccept`` whose answer is still to come holds a ``PendingUpgrade``: a
reserved place under the route's and the app's connection caps, given back
when the answer comes, when the client leaves, or when the app stops (the
client then gets 503 at once).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from .._log import log
from .._handlers import as_deferred
from .._headers import wants_upgrade
from .._http import Response, write_response
from .._peer import peer_host
from .._request import Request as CrowRequest
from .._site import DeadlineChannel
from ._upgrade import OVER_CAPACITY, SHUTTING_DOWN, UpgradeHead, refusal, take_over

if TYPE_CHECKING:
    from ._rule import WebSocketRule

__all__ = ["PendingUpgrade", "WebSocketLeaf", "wants_upgrade"]


_SERVER_ERROR = Response(500, "500 Internal Server Error\n")


class PendingUpgrade:
    """An upgrade waiting for its ``onaccept``: it holds a place under the connection caps."""

    __slots__ = ("rule", "request", "waiting", "settled")

    def __init__(self, rule: WebSocketRule, request: Request, waiting: Deferred[Any]) -> None:
        self.rule = rule
        self.request = request
        self.waiting = waiting
        self.settled = False
        rule.reserve_slot(self)
        request.notifyFinish().addErrback(self._client_gone)

    def settle(self) -> bool:
        """Give the place back; whether this was still undecided (not abandoned)."""
        if self.settled:
            return False
        self.settled = True
        self.rule.release_slot(self)
        return True

    def abandon(self) -> Deferred[None] | None:
        """The app is stopping: answer 503, close, and stop waiting for ``onaccept``.

        Returns a Deferred that fires once the connection is gone (the 503
        delivered), where the channel can tell.
        """
        if not self.settle():
            return None
        _log_refusal(self.rule, self.request, "the server is stopping")
        channel = self.request.channel
        write_response(self.request, SHUTTING_DOWN, finish=True)
        self.waiting.cancel()
        if isinstance(channel, DeadlineChannel):
            channel.close_soon()
            return channel.when_lost()
        return None

    def _client_gone(self, failure: Failure) -> None:
        if self.settle():
            self.waiting.cancel()  # nothing will read what onaccept decides


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
                _log_refusal(self.rule, request, refused.log)
            return write_response(request, refused.response)
        if not hasattr(request, "userdata"):
            # Crow's void** userdata: onaccept may set it; the connection carries it.
            cast(Any, request).userdata = None
        handler = self.rule.accept_handler
        if handler is None:
            self._take_over(request)
            return NOT_DONE_YET
        try:
            # The request HTTP handlers get (Crow's names; twisted.web's still work through it).
            result = handler(CrowRequest.of(request))
        except Exception:
            return self._accept_failed(Failure(), request, None)
        waiting = as_deferred(result)
        if waiting is None:
            return self._decide(result, request, None)
        pending = PendingUpgrade(self.rule, request, waiting)
        waiting.addCallbacks(
            self._decide, self._accept_failed, callbackArgs=(request, pending), errbackArgs=(request, pending)
        )
        return NOT_DONE_YET

    def _decide(self, result: object, request: Request, pending: PendingUpgrade | None) -> bytes | int:
        """Answer what ``onaccept`` returned (``pending``: it came later, through a Deferred)."""
        finish = pending is not None
        if pending is not None and not pending.settle():
            return NOT_DONE_YET  # already answered: the client left, or the app is stopping
        if result is True:
            # The caps and the app's state may have changed while onaccept ran.
            if self.rule.stopping:
                _log_refusal(self.rule, request, "the server is stopping")
                return write_response(request, SHUTTING_DOWN, finish=finish)
            if self.rule.over_capacity():
                _log_refusal(self.rule, request, "connection cap reached")
                return write_response(request, OVER_CAPACITY, finish=finish)
            self._take_over(request)
            return NOT_DONE_YET
        if result is False:
            response = Response(400, "400 Bad Request\n")
        elif isinstance(result, Response) and 200 <= result.code <= 599:
            response = result
        else:
            log.error(
                "onaccept of WebSocket route {route} must return True, False or a Response"
                " with a final status (200 to 599), not {result!r}; answering 500",
                route=self.rule.pattern,
                result=result,
            )
            response = _SERVER_ERROR
        _log_refusal(self.rule, request, response.code)
        return write_response(request, response, finish=finish)

    def _accept_failed(self, failure: Failure, request: Request, pending: PendingUpgrade | None) -> bytes | int:
        finish = pending is not None
        if pending is not None and not pending.settle():
            # Cancelled because the client left or the app stopped; anything else is still news.
            if not failure.check(CancelledError):
                self._log_failure(failure, request)
            return NOT_DONE_YET
        self._log_failure(failure, request)
        return write_response(request, _SERVER_ERROR, finish=finish)

    def _log_failure(self, failure: Failure, request: Request) -> None:
        log.failure(
            "onaccept handler of WebSocket route {route} raised (peer {peer})",
            failure,
            route=self.rule.pattern,
            peer=peer_host(request.getClientAddress()),
        )

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
        # Bytes that came in the same read as the request head (a client that did
        # not wait for the 101) are still in the channel's line buffer: they are the
        # new protocol's, handed over as the fast path hands them.
        rest = channel.clearLineBuffer()
        if rest:
            protocol.dataReceived(rest)


def _log_refusal(rule: WebSocketRule, request: Request, why: object) -> None:
    log.warn(
        "WebSocket upgrade to {route} refused for {peer}: {why}",
        route=rule.pattern,
        peer=peer_host(request.getClientAddress()),
        why=why,
    )
