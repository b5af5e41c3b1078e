"""The app's routes as a twisted.web ``Resource`` tree.

Each level of the route tree is a ``RouteResource``, made on first use.
Static and typed segments are both resolved in ``getChildWithDefault``,
which converts a typed segment, records the value on
``request.route_params`` and only takes a branch from which the rest of
the path can still match, so precedence (static first, then typed in
declaration order) holds with backtracking, as in Crow's trie.  Resources
mounted with ``putChild`` answer where no route does.  A route's end
renders its HTTP rule or its WebSocket leaf.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from twisted.web.resource import IResource, Resource
from twisted.web.http import HTTPChannel
from twisted.web.server import Request

from .http import HttpRule, NotFound, render_http
from .routing import ParamValue, RouteNode
from .websocket.leaf import WebSocketLeaf, wants_upgrade
from .websocket.upgrade import fast_upgrade

if TYPE_CHECKING:
    from .websocket.rule import WebSocketRule

__all__ = ["Endpoint", "RouteResource"]

_NOT_FOUND = NotFound()


class Endpoint:
    """What a route tree node serves: HTTP rules by method and at most one WebSocket rule."""

    __slots__ = ("http", "websocket", "leaf")

    def __init__(self) -> None:
        self.http: dict[str, HttpRule] = {}
        self.websocket: WebSocketRule | None = None
        self.leaf: WebSocketLeaf | None = None


def route_params(request: Request) -> list[ParamValue]:
    """The converted typed segments of ``request`` so far (``request.route_params``)."""
    params: list[ParamValue] | None = getattr(request, "route_params", None)
    if params is None:
        params = []
        cast(Any, request).route_params = params
    return params


def _decode(segment: bytes) -> str | None:
    try:
        return segment.decode("utf-8")
    except UnicodeDecodeError:
        return None


class RouteResource(Resource):
    """One level of the route tree."""

    def __init__(self, node: RouteNode[Endpoint], leaf: bool = False) -> None:
        Resource.__init__(self)
        self._node = node
        self.isLeaf = leaf
        self._resources: dict[RouteNode[Endpoint], RouteResource] = {}

    def _resource_for(self, node: RouteNode[Endpoint], leaf: bool) -> RouteResource:
        resource = self._resources.get(node)
        if resource is None:
            resource = self._resources[node] = RouteResource(node, leaf)
        return resource

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        segment = _decode(path)
        rest: list[str] = []
        for raw in request.postpath or ():
            decoded = _decode(raw)
            if decoded is None:
                return _NOT_FOUND
            rest.append(decoded)
        if segment is None:
            return _NOT_FOUND
        for node, value, width in self._node.step(segment, rest):
            if value is not None:
                route_params(request).append(value)
            return self._resource_for(node, leaf=width > 1)
        # Resources a user mounted with putChild, where no route matches.
        child: IResource = self.children.get(path, _NOT_FOUND)
        return child

    def fast_upgrade(self, channel: HTTPChannel, data: bytes) -> bool:
        """As a site's root: take over a connection whose first read is a plain upgrade (see ``upgrade.py``)."""
        return fast_upgrade(self._node, channel, data)

    def render(self, request: Request) -> bytes | int:
        endpoint = self._node.endpoint
        if endpoint is None:
            # Mounted at /prefix and asked for /prefix itself: serve the "/" route.
            child = self._node.static.get("")
            endpoint = child.endpoint if child is not None else None
            if endpoint is None:
                return _NOT_FOUND.render(request)
        params = route_params(request)
        if endpoint.websocket is not None and (not endpoint.http or wants_upgrade(request)):
            if endpoint.leaf is None or endpoint.leaf.rule is not endpoint.websocket:
                endpoint.leaf = WebSocketLeaf(endpoint.websocket)
            result: bytes | int = endpoint.leaf.render(request)
            return result
        return render_http(endpoint.http, request, params)
