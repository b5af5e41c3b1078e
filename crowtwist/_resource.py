"""The app's routes as a twisted.web ``Resource`` tree, two levels deep, and one request's way through it.

``RouteResource`` is where twisted.web enters the app (a ``Site``'s root,
or mounted with ``putChild``).  Asked for its first child, it matches the
whole rest of the path at once with ``RouteNode.match``, the same call the
upgrade fast path makes, and answers with the leaf of the route found:
``EndpointResource``, one per route, made with it, ``isLeaf`` always.  The
converted typed segments go on ``request.route_params``.  Nothing is cached
from one request for the next, so no request can change how another one
routes.  Resources mounted with ``putChild`` answer where no route does;
anything else missed gets ``MissResource``: a trailing-slash redirect, or
404 through the catch-all.

An ``Exchange`` is one request's run: the middleware's ``before_handle`` in
order, the target (an HTTP rule's handler, a WebSocket upgrade, an automatic
``OPTIONS``, a 404 or 405), the ``after_handle`` of those that ran in
reverse, then the response written.  Each step may be synchronous or not; a
request that never waits makes no Deferred.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote
from collections.abc import Callable, Sequence

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.http import HTTPChannel
from twisted.web.server import NOT_DONE_YET, Request

from ._log import log
from ._handlers import Handler, as_deferred
from ._http import Compressor, HttpRule, NotFound, as_response, first_takes_response, write_response
from ._middleware import contexts_of
from ._request import Request as CrowRequest
from ._response import HTTPError, Response
from ._routing import ParamValue, RouteNode
from .websocket._leaf import WebSocketLeaf, wants_upgrade
from .websocket._upgrade import fast_upgrade

if TYPE_CHECKING:
    from .websocket._rule import WebSocketRule

__all__ = ["CatchAll", "Endpoint", "EndpointResource", "RouteResource", "Routes"]


_NOT_FOUND = NotFound()
_SERVER_ERROR = "500 Internal Server Error\n"


class CatchAll:
    """A catch-all handler (Crow's ``CROW_CATCHALL_ROUTE``): ``()``, ``(req)``, ``(res)`` or ``(req, res)``.

    ``res`` comes with the status it replaces: 404, or 405 with ``Allow``.
    A lone parameter named ``res`` (or annotated ``Response``) is given the response.
    """

    __slots__ = ("handler", "_res_only")

    def __init__(self, func: Callable[..., Any]) -> None:
        self.handler = Handler(func, "catch-all", 0, 2)  # its errors name the declaring line
        self._res_only = self.handler.takes == 1 and first_takes_response(func)

    def __call__(self, req: Any, res: Response) -> Any:
        """Call the handler with what it takes."""
        if self._res_only:
            return self.handler.func(res)
        return self.handler(req, res)


class Routes:
    """What every request of an app consults: the route tree and the app-wide HTTP behaviour."""

    __slots__ = ("root", "middlewares", "catchalls", "exception_handler", "compressor", "serve_file")

    def __init__(self) -> None:
        self.root: RouteNode[Endpoint] = RouteNode()
        self.middlewares: list[Any] = []
        """App-wide middleware, in declaration order; they run on every request, misses included."""
        self.catchalls: dict[tuple[str, ...], CatchAll] = {}
        """By the prefix they answer under (``()``: the app's): the innermost one answers a miss."""
        self.exception_handler: Handler | None = None
        self.compressor: Compressor | None = None
        self.serve_file: Callable[[Request, str], bytes | int] | None = None
        """Answers a request with a file (``Response.set_static_file_info``)."""

    def catchall_for(self, segments: Sequence[str]) -> CatchAll | None:
        """The catch-all of the innermost prefix ``segments`` start with."""
        best: tuple[int, CatchAll] | None = None
        for prefix, catchall in self.catchalls.items():
            if tuple(segments[: len(prefix)]) == prefix and (best is None or len(prefix) > best[0]):
                best = (len(prefix), catchall)
        return None if best is None else best[1]


class Endpoint:
    """What a route tree node serves: HTTP rules by method and at most one WebSocket rule."""

    __slots__ = ("routes", "slash", "http", "websocket", "ws_middlewares", "leaf", "resource")

    def __init__(self, routes: Routes, slash: bool = False) -> None:
        self.routes = routes
        self.slash = slash
        """Declared with a trailing slash (``/about/``): ``/about`` is redirected here."""
        self.http: dict[str, HttpRule] = {}
        self.websocket: WebSocketRule | None = None
        self.ws_middlewares: tuple[Any, ...] = ()
        """Middleware around the WebSocket rule beside the app's: its blueprints', then its own."""
        self.leaf: WebSocketLeaf | None = None
        """The WebSocket rule's leaf, made on first use (it depends on the rule alone)."""
        self.resource = EndpointResource(self)
        """The twisted.web leaf that serves this route."""

    @property
    def fast_websocket(self) -> WebSocketRule | None:
        """The WebSocket rule, if the upgrade fast path may take it: no middleware has to see the request."""
        if self.ws_middlewares or self.routes.middlewares:
            return None
        return self.websocket

    def allowed(self) -> list[str]:
        """The methods this path answers, for ``Allow``."""
        methods = set(self.http)
        if self.websocket is not None:
            methods.add("GET")
        if "GET" in methods:
            methods.add("HEAD")
        methods.add("OPTIONS")
        return sorted(methods)

    def ws_leaf(self) -> WebSocketLeaf:
        rule = self.websocket
        assert rule is not None
        leaf = self.leaf
        if leaf is None or leaf.rule is not rule:
            leaf = self.leaf = WebSocketLeaf(rule)
        return leaf


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
        routes = endpoint.routes
        if endpoint.websocket is not None and (not endpoint.http or wants_upgrade(request)):
            chain = (*routes.middlewares, *endpoint.ws_middlewares)
            if not chain:
                result: bytes | int = endpoint.ws_leaf().render(request)
                return result
            return Exchange(routes, request, chain, _Upgrade(endpoint)).run()
        method = request.method.decode("ascii", "replace")
        rule = endpoint.http.get(method)
        if rule is None and method == "HEAD":
            rule = endpoint.http.get("GET")
        if rule is not None:
            return Exchange(routes, request, (*routes.middlewares, *rule.middlewares), _Handle(rule)).run()
        allow = ", ".join(endpoint.allowed())
        if method == "OPTIONS":
            return Exchange(routes, request, tuple(routes.middlewares), _Fixed(Response(204, None, {"Allow": allow}))).run()
        refused = Response(405, "405 Method Not Allowed\n", {"Allow": allow})
        return Exchange(routes, request, tuple(routes.middlewares), _Missed(refused)).run()


class MissResource(Resource):
    """Where no route matches: a redirect to the route with a trailing slash, or 404."""

    isLeaf = True

    def __init__(self, routes: Routes) -> None:
        Resource.__init__(self)
        self._routes = routes

    def render(self, request: Request) -> bytes | int:
        routes = self._routes
        segments = _segments(request)
        target: _Target
        if segments and segments[-1] and _slash_endpoint(routes, segments):
            target = _Fixed(_slash_redirect(request))
        else:
            if not routes.middlewares and (segments is None or routes.catchall_for(segments) is None):
                return _NOT_FOUND.render(request)
            target = _Missed(Response(404, "404 Not Found\n"))
        return Exchange(routes, request, tuple(routes.middlewares), target).run()


def _slash_endpoint(routes: Routes, segments: list[str]) -> bool:
    """Whether a route declared with a trailing slash would take ``segments`` with one."""
    found = routes.root.match([*segments, ""])
    return found is not None and found[0].endpoint is not None and found[0].endpoint.slash


def _segments(request: Request) -> list[str] | None:
    """The path below where the app is mounted, decoded as routes are matched (``None``: not UTF-8)."""
    segments: list[str] | None = getattr(request, "route_segments", None)
    return segments


_URI_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
"""RFC 3986's pchar and "/" (and "%", the request's own escapes kept), not to be encoded again."""


def _slash_redirect(request: Request) -> Response:
    """301 to the request's own path with a slash added, its query kept (Crow's, for ``/about/``)."""
    # As sent, with what may not stand in a URI reference percent-encoded (a "\\" would
    # be read as "/" by browsers, so "/\\evil.example" would name another host).
    path = quote(request.path.decode("latin-1"), safe=_URI_PATH_SAFE, encoding="latin-1")
    # "//evil.example/x" would be taken as another host: keep it a path.
    while path.startswith("//"):
        path = path[1:]
    uri = request.uri.decode("latin-1")
    query = quote(uri.partition("?")[2], safe=_URI_PATH_SAFE + "?", encoding="latin-1")
    location = path + "/" + ("?" + query if "?" in uri else "")
    response = Response(301, "301 Moved Permanently\n")
    response.set_header("Location", location)
    return response


# Targets: what an Exchange does between the middleware's before and after.


class _Target:
    """What a request asks for, once its middleware let it through."""

    def start(self, exchange: Exchange) -> object:
        """Begin: a result (anything a handler may return), a Deferred of one, or raise."""
        raise NotImplementedError

    @property
    def label(self) -> str:
        return "request"


class _Handle(_Target):
    def __init__(self, rule: HttpRule) -> None:
        self.rule = rule

    @property
    def label(self) -> str:
        return f"handler of route {self.rule.pattern}"

    def start(self, exchange: Exchange) -> object:
        rule = self.rule
        params = route_params(exchange.raw)
        if not rule.takes_response:
            if not rule.takes_request:
                return rule.call(None, None, params)  # the request is wrapped only for a handler that takes it
            req = exchange.req
            # Such a handler may answer the Twisted way (write, finish, NOT_DONE_YET).
            exchange.raw.setHeader(b"server", b"crowtwist")
            if exchange.ran:
                req.before_head(exchange.stream_head)
            try:
                result = rule.call(req, None, params)
            except BaseException:
                req.before_head(None)
                raise
            if not _is_not_done_yet(result):
                req.before_head(None)
            return result
        res = exchange.res
        # Crow's (req, res) form: the answer is res, once the handler ends it.
        running: list[Deferred[Any]] = []

        def cancel(_: Deferred[Any]) -> None:
            for deferred in running:
                deferred.cancel()

        ended: Deferred[Any] = Deferred(cancel)
        res.on_end(lambda: None if ended.called else ended.callback(res))
        result = rule.call(exchange.req, res, params)
        returned = as_deferred(result)
        if res.is_completed():
            return res
        if returned is None:
            return ended if result is None else result
        running.append(returned)
        # An async handler's failure still counts; what it returns does not.
        returned.addErrback(lambda failure: None if ended.called else ended.errback(failure))
        return ended


class _Fixed(_Target):
    def __init__(self, response: Response) -> None:
        self.response = response

    def start(self, exchange: Exchange) -> object:
        return self.response


class _Missed(_Target):
    """404 or 405, through the catch-all where there is one."""

    def __init__(self, response: Response) -> None:
        self.response = response

    @property
    def label(self) -> str:
        return "catch-all"

    def start(self, exchange: Exchange) -> object:
        segments = _segments(exchange.raw)
        catchall = exchange.routes.catchall_for(segments if segments is not None else [])
        if catchall is None:
            return self.response
        res = exchange.res
        res.code = self.response.code
        for name, value in self.response.header_lines():
            res.set_header(name, value)
        result = catchall(exchange.req, res)
        pending = as_deferred(result)
        if pending is None:
            return res if result is None else result
        return pending.addCallback(lambda value: res if value is None else value)


class _Upgrade(_Target):
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    @property
    def label(self) -> str:
        return "WebSocket upgrade"

    def start(self, exchange: Exchange) -> object:
        return _UPGRADING


def _is_not_done_yet(result: object) -> bool:
    return isinstance(result, int) and not isinstance(result, bool) and result == NOT_DONE_YET


_UPGRADING = object()
"""The target is a WebSocket upgrade: the leaf answers, after the middleware unwound."""


class Exchange:
    """One request's way through its middleware and its target (see the module's docstring)."""

    __slots__ = ("routes", "raw", "_req", "_res", "chain", "target", "ran", "pending", "gone", "response")

    def __init__(self, routes: Routes, raw: Request, chain: tuple[Any, ...], target: _Target) -> None:
        self.routes = routes
        self.raw = raw
        # Made when first asked for: a (*params) handler without middleware needs neither.
        self._req: CrowRequest | None = None
        self._res: Response | None = None
        self.chain = chain
        self.target = target
        self.ran = 0
        self.pending: Deferred[Any] | None = None
        self.gone = False
        self.response: Response | None = None

    @property
    def req(self) -> CrowRequest:
        """The request, as handlers and middleware get it."""
        if self._req is None:
            self._req = CrowRequest.of(self.raw)
        return self._req

    @property
    def res(self) -> Response:
        """The response middleware and ``(req, res)`` handlers build."""
        if self._res is None:
            self._res = Response()
        return self._res

    def run(self) -> int:
        """Start; the answer is written now or later (``render`` returns ``NOT_DONE_YET`` either way)."""
        self._before(0)
        return NOT_DONE_YET

    # Each step calls the next with its result, now or when its Deferred fires.

    def _then(self, result: object, ok: Callable[[Any], None], label: str) -> None:
        pending = as_deferred(result)
        if pending is None:
            ok(result)
            return
        if self.pending is None:
            # A client that leaves while something is pending cancels it, as Klein does.
            self.raw.notifyFinish().addErrback(self._client_gone)
        self.pending = pending

        def done(value: object) -> None:
            self.pending = None
            ok(value)

        def failed(failure: Failure) -> None:
            self.pending = None
            if self.gone:
                if not failure.check(CancelledError):
                    log.failure("{what} failed after its client left", failure, what=label)
                return
            self._failed(failure, label)

        pending.addCallbacks(done, failed)

    def _client_gone(self, failure: Failure) -> None:
        self.gone = True
        if self.pending is not None:
            self.pending.cancel()

    def _before(self, index: int) -> None:
        if self.gone:
            return
        if index == len(self.chain):
            self._target()
            return
        middleware = self.chain[index]
        make = getattr(middleware, "Context", None)
        ctx = make() if make is not None else None
        contexts = contexts_of(self.raw)
        contexts[type(middleware)] = ctx
        contexts[id(middleware)] = ctx
        before = getattr(middleware, "before_handle", None)
        if before is None:
            self.ran = index + 1
            self._before(index + 1)
            return
        label = f"before_handle of {type(middleware).__name__}"
        try:
            result = before(self.req, self.res, ctx)
        except HTTPError:
            self.ran = index + 1  # an answer, as res.end() is: this middleware unwinds too
            self._failed(Failure(), label)
            return
        except Exception:
            self._failed(Failure(), label)
            return
        pending = as_deferred(result)
        if pending is not None:

            def answered(failure: Failure) -> Failure:
                if failure.check(HTTPError):
                    self.ran = index + 1
                return failure

            result = pending.addErrback(answered)

        def next_step(_: object) -> None:
            self.ran = index + 1
            if self.res.is_completed():
                self._finish(self.res)  # a before_handle that ends the response stops the chain
            else:
                self._before(index + 1)

        self._then(result, next_step, label)

    def _target(self) -> None:
        target = self.target
        try:
            result = target.start(self)
        except Exception:
            self._failed(Failure(), target.label)
            return
        self._then(result, self._finish, target.label)

    def _failed(self, failure: Failure, label: str) -> None:
        """An exception on the way: an ``HTTPError`` is its answer; anything else 500 (or the exception handler's)."""
        error = failure.value
        if isinstance(error, HTTPError):
            self._finish(error.response())
            return
        handler = self.routes.exception_handler
        if handler is None or not isinstance(error, Exception):
            log.failure("{what} failed ({method} {path})", failure, what=label,
                        method=self.raw.method.decode("latin-1"), path=self.raw.path.decode("latin-1"))
            self._finish(Response(500, _SERVER_ERROR))
            return
        try:
            result = handler(error, self.req)
        except Exception:
            log.failure("the exception handler failed on {error!r}, raised by {what}", Failure(), error=error, what=label)
            self._finish(Response(500, _SERVER_ERROR))
            return

        def handled(value: object) -> None:
            self._finish(Response(500, _SERVER_ERROR) if value is None else value)

        pending = as_deferred(result)
        if pending is None:
            handled(result)
        else:
            self._then(pending, handled, "exception handler")

    def _finish(self, result: object) -> None:
        """The target's answer: make it a Response, unwind the middleware that ran, write it."""
        if self.response is not None:
            return  # answered already (a (req, res) handler that ended, then raised)
        if _is_not_done_yet(result):
            # The Twisted way: the handler writes to the request and finishes it itself;
            # the middleware unwound (stream_head) before its first write.
            return
        if result is _UPGRADING:
            response = self.res
            response.code = 101
        else:
            try:
                response = as_response(result)
            except (TypeError, ValueError):
                log.failure("{what} returned what is no response", Failure(), what=self.target.label)
                response = Response(500, _SERVER_ERROR)
            if self._res is not None and response is not self._res:
                # Headers middleware set before the handler answered with its own response.
                for name, value in self._res.header_lines():
                    if not response.get_header_value(name):
                        response.add_header(name, value)
        self.response = response
        self._after(self.ran - 1, result is _UPGRADING)

    def stream_head(self) -> None:
        """A handler answering the Twisted way is about to write: unwind the middleware onto its head.

        ``after_handle`` gets a response with the request's status and what
        middleware set before; the headers it ends with go out with the first
        write.  It cannot be waited for: a Deferred it returns is not awaited.
        """
        if self.response is not None or self.gone:
            return
        raw = self.raw
        response = self.res
        response.code = raw.code
        self.response = response
        contexts = contexts_of(raw)
        for index in range(self.ran - 1, -1, -1):
            middleware = self.chain[index]
            after = getattr(middleware, "after_handle", None)
            if after is None:
                continue
            try:
                result = after(self.req, response, contexts.get(id(middleware)))
            except Exception:
                log.failure("after_handle of {name} failed on a streamed answer", Failure(),
                            name=type(middleware).__name__, level=LogLevel.error)
                continue
            if as_deferred(result) is not None:
                log.warn("after_handle of {name} returned something to wait for; a streamed answer cannot wait",
                         name=type(middleware).__name__)
        raw.setResponseCode(response.code)
        for name, value in response.header_lines():
            raw.responseHeaders.addRawHeader(name, value)

    def _after(self, index: int, upgrading: bool) -> None:
        if self.gone:
            return
        response = self.response
        assert response is not None
        while index >= 0:
            middleware = self.chain[index]
            after = getattr(middleware, "after_handle", None)
            if after is None:
                index -= 1
                continue
            contexts = contexts_of(self.raw)
            label = f"after_handle of {type(middleware).__name__}"
            try:
                result = after(self.req, response, contexts.get(id(middleware)))
            except Exception:
                log.failure("{what} failed", Failure(), what=label)
                self.response = response = Response(500, _SERVER_ERROR)
                index -= 1
                continue
            pending = as_deferred(result)
            if pending is not None:
                following = index - 1

                def resumed(_: object) -> None:
                    self._after(following, upgrading)

                self._then(pending, resumed, label)
                return
            index -= 1
        self._write(upgrading)

    def _write(self, upgrading: bool) -> None:
        raw = self.raw
        response = self.response
        assert response is not None
        if raw.channel is None or self.gone:
            return  # the client has gone: nobody to answer
        if raw.startedWriting:
            # The handler wrote part of its own answer (the Twisted way) and then failed, or
            # answered twice: what went out cannot be taken back, and must not look whole.
            if not raw.finished:
                raw.loseConnection()
            return
        if upgrading:
            assert isinstance(self.target, _Upgrade)
            # The upgrade's refusals carry what middleware set (the 101 is the protocol's own).
            for name, value in response.header_lines():
                raw.responseHeaders.addRawHeader(name, value)
            body = self.target.endpoint.ws_leaf().render(raw)
            if isinstance(body, bytes):
                raw.setHeader(b"content-length", str(len(body)))
                raw.write(body)
                raw.finish()
            return
        if response.static_file is not None and self.routes.serve_file is not None:
            # What middleware and the handler set goes out with the file (CORS, cookies).
            for name, value in response.header_lines():
                raw.responseHeaders.addRawHeader(name, value)
            body = self.routes.serve_file(raw, response.static_file)
            if isinstance(body, bytes):
                raw.write(body)
                raw.finish()
            return
        write_response(raw, response, finish=True, compress=self.routes.compressor)


class RouteResource(Resource):
    """The app's routes, as one twisted.web resource."""

    def __init__(self, routes: Routes) -> None:
        Resource.__init__(self)
        self._routes = routes
        self._node = routes.root
        self._miss = MissResource(routes)

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
        request.route_segments = segments  # type: ignore[attr-defined]  # for misses and catch-alls
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
        child: IResource | None = self.children.get(path)
        if child is not None:
            return child
        return self._miss

    def fast_upgrade(self, channel: HTTPChannel, data: bytes) -> bool:
        """As a site's root: take over a connection whose first read is a plain upgrade (see ``upgrade.py``)."""
        return fast_upgrade(self._node, channel, data)

    def render(self, request: Request) -> bytes | int:
        # Mounted at /prefix and asked for /prefix itself.
        found = self._node.match([""])
        endpoint = found[0].endpoint if found is not None else None
        if endpoint is None:
            cast(Any, request).route_segments = [""]
            return self._miss.render(request)
        if not wants_upgrade(request):
            # The "/" route is /prefix/: relative links on its page resolve under the prefix
            # only from there (as a route declared "/about/" answers "/about").
            return write_response(request, _slash_redirect(request))
        request.route_params = []  # type: ignore[attr-defined]
        result: bytes | int = endpoint.resource.render(request)
        return result
