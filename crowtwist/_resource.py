"""The app's routes as a twisted.web ``Resource`` tree, two levels deep.

``RouteResource`` is where twisted.web enters the app (a ``Site``'s root,
or mounted with ``putChild``).  Asked for its first child, it matches the
whole rest of the path at once with ``RouteNode.match``, the same call the
upgrade fast path makes, and answers with the leaf of the route found:
``EndpointResource``, one per route, made with it, ``isLeaf`` always.  The
converted typed segments go on ``request.route_params``.  Nothing is cached
from one request for the next, so no request can change how another one
routes.  Resources mounted with ``putChild`` answer where no route does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from twisted.web.resource import IResource, Resource
from twisted.web.http import HTTPChannel
from twisted.web.server import Request

from ._http import HttpRule, NotFound, render_http
from ._routing import ParamValue, RouteNode
from .websocket._leaf import WebSocketLeaf, wants_upgrade
from .websocket._upgrade import fast_upgrade

if TYPE_CHECKING:
    from .websocket._rule import WebSocketRule

__all__ = ["Endpoint", "EndpointResource", "RouteResource"]

_NOT_FOUND = NotFound()


class Endpoint:
    """What a route tree node serves: HTTP rules by method and at most one WebSocket rule."""

    __slots__ = ("http", "websocket", "leaf", "resource")

    def __init__(self) -> None:
        self.http: dict[str, HttpRule] = {}
        self.websocket: WebSocketRule | None = None
        self.leaf: WebSocketLeaf | None = None
        """The WebSocket rule's leaf, made on first use (it depends on the rule alone)."""
        self.resource = EndpointResource(self)
        """The twisted.web leaf that serves this route."""


def route_params(request: Request) -> list[ParamValue]:
    """The converted typed segments of the route ``request`` took (``request.route_params``)."""
    params: list[ParamValue] | None = getattr(request, "route_params", None)
    if params is None:
        params = []
        cast(Any, request).route_params = params
    return params


class EndpointResource(Resource):
    """The leaf of one route: its HTTP rules or its WebSocket rule, by what the request asks."""

    isLeaf = True

    def __init__(self, endpoint: Endpoint) -> None:
        Resource.__init__(self)
        self._endpoint = endpoint

    def render(self, request: Request) -> bytes | int:
        endpoint = self._endpoint
        rule = endpoint.websocket
        if rule is not None and (not endpoint.http or wants_upgrade(request)):
            leaf = endpoint.leaf
            if leaf is None or leaf.rule is not rule:
                leaf = endpoint.leaf = WebSocketLeaf(rule)
            result: bytes | int = leaf.render(request)
            return result
        return render_http(endpoint.http, request, route_params(request))


class RouteResource(Resource):
    """The app's routes, as one twisted.web resource."""

    def __init__(self, node: RouteNode[Endpoint]) -> None:
        Resource.__init__(self)
        self._node = node

    def _route(self, path: bytes, request: Request) -> EndpointResource | None:
        # twisted.web has split and unquoted the path as routing.path_segments
        # does for the fast path.  A target not starting with "/" lost its
        # first byte to that split; like a segment that is not UTF-8, it
        # matches no route.
        if request.path[:1] != b"/":
            return None
        postpath = request.postpath or []
        try:
            segments = [path.decode(), *map(bytes.decode, postpath)]  # UTF-8, strict
        except UnicodeDecodeError:
            return None
        found = self._node.match(segments)
        if found is None:
            return None
        node, params = found
        endpoint = node.endpoint
        if endpoint is None:
            return None
        request.route_params = params  # type: ignore[attr-defined]  # read by handlers, onaccept and the leaf
        # The route took the whole path.
        if request.prepath is not None:
            request.prepath.extend(postpath)
        del postpath[:]
        return endpoint.resource

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        leaf = self._route(path, request)
        if leaf is not None:
            return leaf
        # Resources a user mounted with putChild, where no route matches.
        child: IResource = self.children.get(path, _NOT_FOUND)
        return child

    def fast_upgrade(self, channel: HTTPChannel, data: bytes) -> bool:
        """As a site's root: take over a connection whose first read is a plain upgrade (see ``upgrade.py``)."""
        return fast_upgrade(self._node, channel, data)

    def render(self, request: Request) -> bytes | int:
        # Mounted at /prefix and asked for /prefix itself: serve the "/" route.
        found = self._node.match([""])
        endpoint = found[0].endpoint if found is not None else None
        if endpoint is None:
            return _NOT_FOUND.render(request)
        request.route_params = []  # type: ignore[attr-defined]
        result: bytes | int = endpoint.resource.render(request)
        return result
