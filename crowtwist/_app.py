"""``Crow``: the app.  Its routes, its settings' setters, and the ways to serve them."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, TypeVar, overload
from collections.abc import Callable, Iterable, Iterator

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeoutError

from ._log import log, log_level
from ._broker import RedisBroker
from ._handlers import Handler, user_location
from ._http import HttpRule
from ._compress import compress_body
from ._middleware import contexts_of
from ._response import Response
from ._static import resolve, serve_file
from ._twisted import listening_service
from ._resource import CatchAll, Endpoint, RouteResource, Routes
from ._routing import PATH, ParamType, RouteNode, Segment, parse_pattern
from ._settings import DEFAULT_BINDADDR, DEFAULT_PORT, Settings, check_positive
from ._site import CrowSite
from .websocket._broadcast import check_room, room_channel
from .websocket._close import CloseCode
from .websocket._connection import Connection
from .websocket._origin import OriginPolicy
from .websocket._rule import RuleRegistry, WebSocketRule

if TYPE_CHECKING:
    from twisted.internet.interfaces import IStreamServerEndpoint

__all__ = ["Blueprint", "Crow", "Route"]


F = TypeVar("F", bound=Callable[..., Any])
M = TypeVar("M")

_KEEP: Any = object()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _chain(middlewares: Iterable[Any], where: str) -> tuple[Any, ...]:
    """Middleware as given to ``.middlewares(...)``: instances, or classes made with no arguments."""
    chain = []
    for middleware in middlewares:
        if isinstance(middleware, type):
            middleware = middleware()
        if not (hasattr(middleware, "before_handle") or hasattr(middleware, "after_handle")):
            raise TypeError(
                f"{where}: {middleware!r} is no middleware: it has neither before_handle nor after_handle"
            )
        chain.append(middleware)
    return tuple(chain)


class Route:
    """What ``app.route(pattern)`` returns: call it with a handler, or ask for ``.websocket()``."""

    def __init__(self, owner: Crow | Blueprint, pattern: str) -> None:
        self._owner = owner
        self.pattern = pattern
        self._where = user_location()
        try:
            self._segments = parse_pattern(pattern)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{self._where}: {error}") from None
        self._methods: frozenset[str] = frozenset({"GET"})
        self._methods_given = False
        self._middlewares: tuple[Any, ...] = ()

    def methods(self, *methods: str) -> Route:
        """The HTTP methods this route answers (default ``GET``; ``HEAD`` follows ``GET``)."""
        if not methods:
            raise ValueError(f"{self._where}: route {self.pattern!r}: methods() needs at least one method")
        for method in methods:
            if not isinstance(method, str) or not method.isascii() or not method.isalpha():
                raise ValueError(f"{self._where}: route {self.pattern!r}: {method!r} is no HTTP method")
        self._methods = frozenset(m.upper() for m in methods)
        self._methods_given = True
        return self

    def middlewares(self, *middlewares: Any) -> Route:
        """Middleware for this route alone (Crow's ``CROW_MIDDLEWARES``), run after the app's and its blueprints'."""
        self._middlewares = (*self._middlewares, *_chain(middlewares, self._where))
        return self

    def __call__(self, func: F) -> F:
        """Register ``func`` as this route's HTTP handler; returns it, so this is a decorator."""
        types = [s for s in self._segments if isinstance(s, ParamType)]
        methods, middlewares, where = self._methods, self._middlewares, self._where
        # Checked now, where the user declared it, even in a blueprint not yet registered.
        HttpRule(self.pattern, types, methods, func, middlewares, where)

        def declare(app: Crow, prefix: tuple[Segment, ...], pattern: str, outer: tuple[Any, ...]) -> None:
            rule = HttpRule(pattern, types, methods, func, (*outer, *middlewares), where)
            endpoint = app._endpoint((*prefix, *self._segments))
            taken = sorted(methods & set(endpoint.http))
            if taken:
                raise ValueError(
                    f"{where}: route {pattern!r}: an HTTP rule for {', '.join(taken)} on this path already exists"
                )
            for method in methods:
                endpoint.http[method] = rule

        self._owner._declare(self.pattern, declare)
        return func

    def websocket(self, app: Crow | None = None) -> WebSocketRule:
        """Make this a WebSocket route (Crow's ``.websocket(&app)``) and return its rule.

        ``app`` may be given, as Crow's code does; it must be this route's app."""
        owner = self._owner
        where = self._where
        if app is not None and not (app is owner or (isinstance(owner, Blueprint) and owner.app in (None, app))):
            raise ValueError(
                f"{where}: route {self.pattern!r}: .websocket(app) was given another app than the one the route"
                " was declared on (in Python, plain .websocket() is enough)"
            )
        if self._methods_given:
            raise ValueError(
                f"{where}: route {self.pattern!r}: .methods() is for HTTP handlers; a WebSocket route answers"
                " GET upgrades only (declare HTTP methods on a separate app.route(...) of the same path)"
            )
        rule = WebSocketRule(self.pattern, Settings(), RuleRegistry()) if isinstance(owner, Blueprint) else None
        middlewares = self._middlewares
        made: list[WebSocketRule] = []

        def declare(app: Crow, prefix: tuple[Segment, ...], pattern: str, outer: tuple[Any, ...]) -> None:
            endpoint = app._endpoint((*prefix, *self._segments))
            if endpoint.websocket is not None:
                raise ValueError(f"{where}: route {pattern!r}: a WebSocket rule on this path already exists")
            if rule is None:
                endpoint.websocket = app._new_websocket_rule(pattern)
            else:
                rule.adopt(pattern, app._settings, app._websockets)
                endpoint.websocket = rule
            endpoint.ws_middlewares = (*outer, *middlewares)
            made.append(endpoint.websocket)

        owner._declare(self.pattern, declare)
        return made[0] if rule is None else rule


Declaration = Callable[["Crow", tuple[Segment, ...], str, tuple[Any, ...]], None]
"""Puts one route into an app: given it, the route's prefix segments, its whole pattern, the outer middleware."""


class Prefix(str):
    """A blueprint's prefix: a ``str`` that may also be called, as Crow's ``bp.prefix()`` is."""

    def __call__(self) -> str:
        return str(self)


class Blueprint:
    """Crow's ``crow::Blueprint``: routes under a prefix, registered on an app (or another blueprint) at once.

    ``Blueprint("api")`` serves its ``route("/users")`` at ``/api/users``;
    ``static_dir`` is served at ``/api/static/<path>``.  A blueprint has its
    own ``catchall_route`` (for misses under its prefix) and ``middlewares``
    (around its routes, after the app's).  Routes may be declared before or
    after it is registered.
    """

    def __init__(self, prefix: str, static_dir: str | os.PathLike[str] | None = None,
                 templates_dir: str | os.PathLike[str] | None = None) -> None:
        where = user_location()
        if not isinstance(prefix, str):
            raise TypeError(f"{where}: a blueprint prefix must be a str, not {type(prefix).__name__}")
        stripped = prefix.strip("/")
        try:
            segments = parse_pattern("/" + stripped)
        except ValueError as error:
            raise ValueError(f"{where}: blueprint prefix {prefix!r}: {error}") from None
        if not stripped or any(not isinstance(s, str) or not s for s in segments):
            raise ValueError(
                f"{where}: blueprint prefix {prefix!r} must be one or more plain path segments, like 'api' or 'api/v1'"
            )
        self._own: tuple[Segment, ...] = segments
        self.static_dir = None if static_dir is None else os.fspath(static_dir)
        self.templates_dir = None if templates_dir is None else os.fspath(templates_dir)
        self._where = where
        self._declarations: list[tuple[str, Declaration]] = []
        self._children: list[Blueprint] = []
        self._middlewares: tuple[Any, ...] = ()
        self._catchall: CatchAll | None = None
        self._parent: Blueprint | None = None
        self.app: Crow | None = None
        """The app it is registered on, through its parents if nested."""
        self._placed: tuple[tuple[Segment, ...], tuple[Any, ...]] | None = None

    def __repr__(self) -> str:
        return f"<Blueprint {self.prefix!r}>"

    @property
    def prefix(self) -> Prefix:
        """The URL prefix its routes are served under (its parents' included, once registered).

        A ``str``; calling it (Crow's ``bp.prefix()``) gives the same string."""
        segments = self._placed[0] if self._placed is not None else self._own
        return Prefix("/" + "/".join(str(s) for s in segments))

    def route(self, pattern: str) -> Route:
        """Crow's ``CROW_BP_ROUTE(bp, pattern)``: a route under this blueprint's prefix."""
        return Route(self, pattern)

    def middlewares(self, *middlewares: Any) -> Blueprint:
        """Middleware around every route of this blueprint (and its nested ones), after the app's."""
        if self._placed is not None:
            raise ValueError(f"{user_location()}: {self!r}: declare a blueprint's middleware before registering it")
        self._middlewares = (*self._middlewares, *_chain(middlewares, user_location()))
        return self

    def catchall_route(self) -> Callable[[F], F]:
        """Crow's ``CROW_BP_CATCHALL_ROUTE``: answers 404 and 405 under this prefix (see ``Crow.catchall_route``)."""

        def register(func: F) -> F:
            self._catchall = CatchAll(func)
            if self.app is not None and self._placed is not None:
                self.app._routes.catchalls[_static_part(self._placed[0])] = self._catchall
            return func

        return register

    def register_blueprint(self, blueprint: Blueprint) -> Blueprint:
        """Nest ``blueprint`` under this one: its prefix follows this one's."""
        _check_unregistered(blueprint)
        if blueprint is self or blueprint in self._ancestors():
            raise ValueError(f"{user_location()}: {blueprint!r} cannot be registered inside itself")
        blueprint._parent = self
        self._children.append(blueprint)
        if self.app is not None and self._placed is not None:
            blueprint._place(self.app, self._placed[0], self._placed[1])
        return self

    def _ancestors(self) -> list[Blueprint]:
        found = []
        parent = self._parent
        while parent is not None:
            found.append(parent)
            parent = parent._parent
        return found

    def _declare(self, pattern: str, declaration: Declaration) -> None:
        self._declarations.append((pattern, declaration))
        if self.app is not None and self._placed is not None:
            self._run(self.app, pattern, declaration)

    def _run(self, app: Crow, pattern: str, declaration: Declaration) -> None:
        assert self._placed is not None
        prefix, chain = self._placed
        whole = self.prefix + pattern
        declaration(app, prefix, whole, chain)

    def _place(self, app: Crow, outer: tuple[Segment, ...], outer_chain: tuple[Any, ...]) -> None:
        """Put every route of this blueprint and its nested ones into ``app``."""
        self.app = app
        self._placed = ((*outer, *self._own), (*outer_chain, *self._middlewares))
        if self._catchall is not None:
            app._routes.catchalls[_static_part(self._placed[0])] = self._catchall
        if self.static_dir is not None:
            app._serve_directory((*self._placed[0], "static"), self.static_dir, self._placed[1])
        for pattern, declaration in self._declarations:
            self._run(app, pattern, declaration)
        for child in self._children:
            child._place(app, self._placed[0], self._placed[1])


def _static_part(segments: tuple[Segment, ...]) -> tuple[str, ...]:
    return tuple(s for s in segments if isinstance(s, str))


def _check_unregistered(blueprint: Blueprint) -> None:
    if not isinstance(blueprint, Blueprint):
        raise TypeError(f"{user_location()}: register_blueprint takes a Blueprint, not {type(blueprint).__name__}")
    if blueprint.app is not None or blueprint._parent is not None:
        raise ValueError(f"{user_location()}: {blueprint!r} is registered already; a blueprint is registered once")


class Crow:
    """A Crow app: routes declared with ``route``, served with ``run``, ``resource`` or ``service``.

    ``enforce_ws_spec=True`` (or ``CROWTWIST_ENFORCE_WS_SPEC=1`` in the
    environment) requires masked client frames, as Crow's
    ``CROW_ENFORCE_WS_SPEC`` does.
    """

    def __init__(self, *middlewares: Any, enforce_ws_spec: bool | None = None) -> None:
        if enforce_ws_spec is None:
            enforce_ws_spec = _env_flag("CROWTWIST_ENFORCE_WS_SPEC")
        self._settings = Settings(enforce_ws_spec=bool(enforce_ws_spec))
        self._routes = Routes()
        self._routes.middlewares.extend(_chain(middlewares, user_location()))
        self._root: RouteNode[Endpoint] = self._routes.root
        self._static: tuple[str, str | None] = ("/static/<path>", "static")
        self._static_served = False
        self._static_set = False
        self._compress = True
        self._websockets = RuleRegistry()
        self._port = DEFAULT_PORT
        self._host = DEFAULT_BINDADDR
        self._warned = False
        self._broker: RedisBroker | None = None

    @property
    def settings(self) -> Settings:
        """The app-wide settings; change them with the chained setters below.

        After changing them directly, call ``apply_settings`` for connections
        opened from then on to use them.
        """
        return self._settings

    def route(self, pattern: str) -> Route:
        """Crow's ``CROW_ROUTE(app, pattern)``; a malformed pattern raises ``ValueError`` here."""
        return Route(self, pattern)

    def _declare(self, pattern: str, declaration: Declaration) -> None:
        declaration(self, (), pattern, ())

    def _endpoint(self, segments: tuple[Segment, ...]) -> Endpoint:
        node = self._root
        for segment in segments:
            node = node.child(segment, RouteNode)
        if node.endpoint is None:
            node.endpoint = Endpoint(self._routes, bool(segments) and segments[-1] == "")
        return node.endpoint

    def register_blueprint(self, blueprint: Blueprint) -> Crow:
        """Serve ``blueprint``'s routes (and its nested blueprints') under its prefix."""
        _check_unregistered(blueprint)
        blueprint._place(self, (), ())
        return self

    # Middleware, catch-all, exceptions.

    def use(self, *middlewares: Any) -> Crow:
        """Add app-wide middleware (as ``Crow(mw, ...)`` does): around every request, misses included."""
        self._routes.middlewares.extend(_chain(middlewares, user_location()))
        return self

    def get_middleware(self, kind: type[M]) -> M:
        """The app-wide middleware of class ``kind`` (Crow's ``app.get_middleware<T>()``), to configure it."""
        for middleware in self._routes.middlewares:
            if isinstance(middleware, kind):
                return middleware
        raise LookupError(f"the app has no {kind.__name__} middleware; pass one to Crow(...) or app.use(...)")

    def get_context(self, kind: type[Any], req: Any) -> Any:
        """The context middleware ``kind`` has for request ``req`` (Crow's ``app.get_context<T>(req)``)."""
        contexts = contexts_of(getattr(req, "raw", req))
        if kind not in contexts:
            raise LookupError(f"no {kind.__name__} middleware ran on this request")
        return contexts[kind]

    def catchall_route(self) -> Callable[[F], F]:
        """Crow's ``CROW_CATCHALL_ROUTE(app)``: a handler for every 404 and 405.

        It takes ``()``, ``(req)`` or ``(req, res)``, where ``res`` holds the
        status it replaces (404, or 405 with ``Allow``); it returns what a
        route handler may, or ``None`` to answer with ``res``.
        """

        def register(func: F) -> F:
            self._routes.catchalls[()] = CatchAll(func)
            return func

        return register

    def exception_handler(self, func: F) -> F:
        """Answer exceptions from handlers and middleware: ``func(exc)`` or ``func(exc, req)``.

        It returns what a route handler may (``None``: the default 500).
        ``HTTPError`` (and ``BadRequest``) never reach it: they are answers.
        Without one, an exception is logged once and answered 500.
        """
        self._routes.exception_handler = Handler(func, "exception handler", 1, 2)
        return func

    @overload
    def max_body_size(self) -> int | None: ...
    @overload
    def max_body_size(self, size: int | None) -> Crow: ...

    def max_body_size(self, size: Any = _KEEP) -> Crow | int | None:
        """Bytes of a request body the app's site reads (default 64 MiB); more get 413 at once.

        ``None`` lifts the bound.  With no argument, the bound.  Applies to
        ``site()``, ``service()`` and ``run()`` made from now on; mounted in
        another ``Site``, that site's own rules apply (twisted.web has none)."""
        if size is _KEEP:
            return self._settings.max_body_size
        self._settings.max_body_size = check_positive("max_body_size", size, integer=True)
        return self

    def use_compression(self, enabled: bool) -> Crow:
        """gzip response bodies for clients that accept it (default on; small and compressed types never)."""
        self._compress = bool(enabled)
        return self

    # Static files.

    def static_dir(self, directory: str | os.PathLike[str] | None, url: str = "/static/<path>") -> Crow:
        """Serve ``directory`` at ``url`` (default ``static`` at ``/static/<path>``, Crow's); ``None``: off."""
        if self._static_served:
            raise ValueError(f"{user_location()}: static_dir must be set before the app is served")
        segments = parse_pattern(url)
        if not segments or segments[-1] is not PATH or any(isinstance(s, ParamType) for s in segments[:-1]):
            raise ValueError(f"{user_location()}: the static URL {url!r} must end in <path> and have no other parameter")
        self._static = (url, None if directory is None else os.fspath(directory))
        self._static_set = True
        return self

    def static_file(self, url: str, path: str | os.PathLike[str]) -> Crow:
        """Serve the file at ``path`` (read when asked, streamed) at ``url``."""
        filename = os.fspath(path)

        def serve() -> Response:
            response = Response()
            response.set_static_file_info(filename)
            return response

        self.route(url)(serve)
        return self

    def _serve_directory(self, prefix: tuple[Segment, ...], directory: str, chain: tuple[Any, ...]) -> None:
        def serve(name: str) -> Response:
            found = resolve(directory, name)
            if found is None:
                return Response(404, "404 Not Found\n")
            response = Response()
            response.set_static_file_info(found)
            return response

        pattern = "/" + "/".join(str(s) for s in prefix) + "/<path>"
        endpoint = self._endpoint((*prefix, PATH))
        if "GET" not in endpoint.http:
            endpoint.http["GET"] = HttpRule(pattern, [PATH], frozenset({"GET"}), serve, chain, user_location())

    def _new_websocket_rule(self, pattern: str) -> WebSocketRule:
        return WebSocketRule(pattern, self._settings, self._websockets)

    @property
    def websocket_rules(self) -> tuple[WebSocketRule, ...]:
        """Every WebSocket rule, in declaration order."""
        return tuple(self._websockets)

    # Crow's chained settings.

    @overload
    def websocket_max_payload(self) -> int | None: ...
    @overload
    def websocket_max_payload(self, size: int | None) -> Crow: ...

    def websocket_max_payload(self, size: Any = _KEEP) -> Crow | int | None:
        """App-wide bound on an incoming message after decompression (default 16 MiB).

        With no argument, the bound (Crow's getter); ``None``: no bound."""
        if size is _KEEP:
            return self._settings.websocket_max_payload
        self._settings.websocket_max_payload = check_positive("websocket_max_payload", size, integer=True)
        self.apply_settings()
        return self

    @overload
    def websocket_compression(self) -> bool: ...
    @overload
    def websocket_compression(self, enabled: bool) -> Crow: ...

    def websocket_compression(self, enabled: Any = _KEEP) -> Crow | bool:
        """Accept permessage-deflate or not, app-wide (default: accept); with no argument, whether it does."""
        if enabled is _KEEP:
            return self._settings.compression
        self._settings.compression = bool(enabled)
        self.apply_settings()
        return self

    def websocket_limits(
        self,
        *,
        max_connections: int | None | object = _KEEP,
        max_queue: int | None | object = _KEEP,
        max_queue_bytes: int | None | object = _KEEP,
        max_send_buffer: int | None | object = _KEEP,
        send_buffer_policy: str | object = _KEEP,
        keepalive_interval: float | None | object = _KEEP,
        keepalive_timeout: float | None | object = _KEEP,
        handshake_timeout: float | None | object = _KEEP,
        close_timeout: float | object = _KEEP,
    ) -> Crow:
        """Change the app-wide WebSocket limits named; see ``Settings`` for each default.

        Counts and sizes are positive ints, times positive seconds; ``None``
        lifts a bound (all but ``close_timeout``).  Nothing changes unless
        every value given is valid.  Returns the app; use ``websocket_limit(name)``
        to read one.
        """
        changes: dict[str, object] = {}
        for name, value, integer in (
            ("max_connections", max_connections, True),
            ("max_queue", max_queue, True),
            ("max_queue_bytes", max_queue_bytes, True),
            ("max_send_buffer", max_send_buffer, True),
            ("keepalive_interval", keepalive_interval, False),
            ("keepalive_timeout", keepalive_timeout, False),
            ("handshake_timeout", handshake_timeout, False),
            ("close_timeout", close_timeout, False),
        ):
            if value is not _KEEP:
                changes[name] = check_positive(name, value, integer=integer, optional=name != "close_timeout")
        if send_buffer_policy is not _KEEP:
            if send_buffer_policy not in ("close", "wait"):
                raise ValueError(f"send_buffer_policy must be 'close' or 'wait', not {send_buffer_policy!r}")
            changes["send_buffer_policy"] = str(send_buffer_policy)
        for name, value in changes.items():
            setattr(self._settings, name, value)
        self.apply_settings()
        return self

    @overload
    def websocket_tcp_nodelay(self) -> bool: ...
    @overload
    def websocket_tcp_nodelay(self, on: bool) -> Crow: ...

    def websocket_tcp_nodelay(self, on: Any = _KEEP) -> Crow | bool:
        """Nagle's algorithm off (``TCP_NODELAY``) on upgraded connections, Crow's setting; on by default.

        With no argument, whether it is on."""
        if on is _KEEP:
            return self._settings.tcp_nodelay
        self._settings.tcp_nodelay = bool(on)
        self.apply_settings()
        return self

    _LIMITS = frozenset(
        ("max_connections", "max_queue", "max_queue_bytes", "max_send_buffer", "send_buffer_policy",
         "keepalive_interval", "keepalive_timeout", "handshake_timeout", "close_timeout")
    )

    def websocket_limit(self, name: str) -> object:
        """The app-wide value of the limit ``websocket_limits`` calls ``name``."""
        if name not in self._LIMITS:
            raise ValueError(f"no WebSocket limit {name!r}; the limits are {', '.join(sorted(self._LIMITS))}")
        return getattr(self._settings, name)

    @overload
    def websocket_allowed_origins(self) -> tuple[str, ...] | None: ...
    @overload
    def websocket_allowed_origins(self, origins: Iterable[str] | None) -> Crow: ...

    def websocket_allowed_origins(self, origins: Any = _KEEP) -> Crow | tuple[str, ...] | None:
        """Only pages from these origins may open WebSockets (403 otherwise); ``None``: any.

        With no argument, the list in force (``None``: any)."""
        if origins is _KEEP:
            return self._settings.allowed_origins
        if origins is None:
            self._settings.allowed_origins = None
        else:
            origins = tuple(origins)
            OriginPolicy(origins)  # malformed patterns fail here, not at request time
            self._settings.allowed_origins = origins
        return self

    # Rooms, and the broker that carries them (and route broadcasts) between processes.

    def publish(self, room: str, message: str | bytes) -> None:
        """Send ``message`` to every connection in ``room`` (``str`` as text, ``bytes`` as binary).

        Rooms are app-wide (``conn.join(room)`` on any route).  With a broker,
        the room's connections in every process sharing it get the message,
        each once, in the order this process published.  Never blocks; may be
        called from any thread.
        """
        check_room(room)
        self._websockets.hub.send_from_any_thread(room_channel(room), message)

    def broker(self, url: str | None) -> Crow:
        """Carry rooms and broadcasts through Redis: ``"redis://[[user]:password@]host[:port][/db]"``.

        ``rediss://`` for TLS (``?ssl_ca_certs=FILE`` to trust a private CA).
        The connection starts with the app's service and stops with it.
        ``None`` goes back to in-process delivery.  Needs
        ``pip install 'crowtwist[redis]'``.  Delivery through Redis is at
        most once: what is published while Redis is away reaches this
        process's connections only (docs/deploy.md).
        """
        hub = self._websockets.hub
        if self._broker is not None:
            self._broker.stop()
        if url is None:
            self._broker = None
            hub.relay = None
            return self
        self._broker = RedisBroker(url, hub.deliver, hub.channels)
        hub.relay = self._broker
        return self

    @property
    def broker_client(self) -> RedisBroker | None:
        """The broker set with ``broker(url)``, if any (its counters: ``published``, ``received``, ``dropped``)."""
        return self._broker

    def site(self) -> CrowSite:
        """A twisted.web ``Site`` serving ``resource()``, with the handshake deadline."""
        return CrowSite(
            self.resource(),
            handshake_timeout=self._settings.handshake_timeout,
            max_body_size=self._settings.max_body_size,
        )

    @overload
    def port(self) -> int: ...
    @overload
    def port(self, port: int) -> Crow: ...

    def port(self, port: Any = _KEEP) -> Crow | int:
        """The port ``run`` listens on (Crow's ``app.port(18080)``); with no argument, the port."""
        if port is _KEEP:
            return self._port
        self._port = int(port)
        return self

    @overload
    def bindaddr(self) -> str: ...
    @overload
    def bindaddr(self, host: str) -> Crow: ...

    def bindaddr(self, host: Any = _KEEP) -> Crow | str:
        """The address ``run`` listens on (Crow's ``app.bindaddr``); with no argument, the address."""
        if host is _KEEP:
            return self._host
        self._host = host
        return self

    def apply_settings(self) -> None:
        """Connections opened from now on use the current ``settings`` (open ones keep theirs).

        The chained setters call this; call it after changing ``settings`` directly.
        """
        self._websockets.reset_factories()

    # Serving.

    def resource(self) -> RouteResource:
        """A twisted.web resource serving every route; a ``Site`` root or mounted with ``putChild``."""
        self._startup_warnings()
        if not self._static_served:
            self._static_served = True
            url, directory = self._static
            # The default "static" only where it exists, so that an app without one
            # keeps /static/... free for its own resources (putChild).
            if directory is not None and (self._static_set or os.path.isdir(directory)):
                self._serve_directory(parse_pattern(url)[:-1], directory, ())
        self._routes.compressor = compress_body if self._compress else None
        compress = self._compress
        self._routes.serve_file = lambda request, path: serve_file(request, path, compress=compress)
        return RouteResource(self._routes)

    def _startup_warnings(self) -> None:
        if self._warned:
            return
        self._warned = True
        if not self._settings.enforce_ws_spec and len(self._websockets):
            log.warn(
                "accepting unmasked WebSocket client frames, as Crow does by default; to require masking"
                " as RFC 6455 does (and silence this), use Crow(enforce_ws_spec=True),"
                " CROWTWIST_ENFORCE_WS_SPEC=1 in the environment, or twistd crow --enforce-ws-spec"
            )

    def route_table(self) -> list[tuple[str, str, tuple[str, ...], int]]:
        """Every route served, as ``(pattern, kind, handlers, middleware)`` rows (``twistd crow --list-routes``).

        ``kind`` is the HTTP methods (``"GET, POST"``) or ``"WebSocket"``;
        ``handlers`` the HTTP handler's name, or the WebSocket events that
        have one (``onaccept`` ... ``onclose``); ``middleware`` how many run
        around the route, the app's included.  Static files appear once served.
        """
        app_wide = len(self._routes.middlewares)
        rows: list[tuple[str, str, tuple[str, ...], int]] = []
        nodes = [self._root]
        while nodes:
            node = nodes.pop()
            # Depth first, static children before typed ones, each in declaration order.
            nodes.extend(reversed([*node.static.values(), *(child for _, child in node.typed)]))
            endpoint = node.endpoint
            if endpoint is None:
                continue
            for rule in dict.fromkeys(endpoint.http.values()):
                name = getattr(rule.func, "__qualname__", type(rule.func).__name__)
                rows.append((rule.pattern, ", ".join(sorted(rule.methods)), (name,), app_wide + len(rule.middlewares)))
            ws = endpoint.websocket
            if ws is not None:
                events = ("onaccept", "onopen", "onmessage", "onerror", "onclose")
                handlers = (ws.accept_handler, ws.open_handler, ws.message_handler, ws.error_handler, ws.close_handler)
                rows.append((ws.pattern, "WebSocket", tuple(e for e, h in zip(events, handlers) if h is not None),
                             app_wide + len(endpoint.ws_middlewares)))
        return rows

    # Stopping: set by the service's stop (app.service(...), run's SIGTERM/Ctrl-C).

    @property
    def stopping(self) -> bool:
        """Whether the app's service is stopping: WebSocket upgrades, pending ones included, get 503."""
        return self._websockets.stopping

    def connections(self) -> Iterator[Connection]:
        """Every open WebSocket connection of every rule."""
        for rule in self._websockets:
            yield from rule.connections

    def close_all(self, code: int = CloseCode.GOING_AWAY, reason: str = "going away") -> Deferred[None]:
        """Close every open WebSocket and fire once each one's ``onclose`` has run.

        A peer that does not answer is dropped after ``settings.close_timeout``
        (autobahn's close handshake timeout).  An ``onclose`` that never
        finishes is given as long again, then left behind, so this always ends.
        """
        from twisted.internet import reactor

        waits: list[Deferred[Any]] = []
        for conn in list(self.connections()):
            waits.append(conn.when_closed())
            conn.close(reason, code)
        if not waits:
            return succeed(None)
        log.info("closing {count} WebSocket connection(s): {code} {reason}", count=len(waits), code=code, reason=reason)
        done: Deferred[Any] = DeferredList(waits)
        done.addTimeout(2 * self._settings.close_timeout + 1, reactor)

        def gave_up(failure: Any) -> None:
            failure.trap(TimeoutError, DeferredTimeoutError)
            log.warn("some WebSocket connections had not finished closing; stopping anyway")

        return done.addCallbacks(lambda _: None, gave_up)

    def service(self, *endpoints: IStreamServerEndpoint | str) -> MultiService:
        """An ``IService`` listening on ``endpoints`` (Twisted endpoint strings or objects).

        Stopping it stops listening, closes every WebSocket with 1001 and
        waits for their close handshakes before it reports stopped.
        """
        from twisted.internet import reactor
        from twisted.internet.endpoints import serverFromString

        if not endpoints:
            endpoints = (f"tcp:{self._port}:interface={self._host}",)
        site = self.site()
        top = MultiService()
        top.addService(_Closer(self, self._websockets))
        for endpoint in endpoints:
            if isinstance(endpoint, str):
                endpoint = serverFromString(reactor, endpoint)
            # A port that cannot be had is reported by startService itself, not
            # as an unhandled error in the log after the process claimed to start.
            top.addService(listening_service(endpoint, site))
        return top

    def run(self, port: int | None = None, host: str | None = None, workers: int | str = 1) -> None:
        """Serve until interrupted, like Crow's ``app.port(18080).run()``.

        Ctrl-C (or SIGTERM) closes open WebSockets with 1001 before the process exits.
        ``workers=N`` (or ``"auto"``, one per CPU) runs this script N more times
        as worker processes sharing the port, restarted when they die; this
        process only supervises them (docs/deploy.md, "Workers").
        """
        from twisted.internet import reactor
        from twisted.logger import globalLogBeginner, textFileLogObserver

        from ._workers import Supervisor, adopted_endpoints, script_command, worker_count, worker_observer
        from ._workers import worker_service, worker_sockets

        if port is not None:
            self._port = port
        if host is not None:
            self._host = host
        count = worker_count(workers, "workers")
        from twisted.internet.error import CannotListenError
        from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate

        level = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
        level.setLogLevelForNamespace("crowtwist", log_level())  # set_log_level("debug") shows there too
        # A worker (this script run again by its parent) writes bare lines; the parent stamps them.
        worker = worker_sockets()
        sink = textFileLogObserver(sys.stderr) if worker is None else worker_observer(sys.stderr)
        globalLogBeginner.beginLoggingTo([FilteringLogObserver(sink, [level])], redirectStandardIO=False)
        endpoint = f"tcp:{self._port}:interface={self._host}"
        service: Service
        if worker is not None:
            service = worker_service(self.service(*adopted_endpoints([endpoint], worker.fds)), worker.index)
        elif count > 1:
            service = Supervisor(
                script_command(), [endpoint], count, stop_timeout=2 * self._settings.close_timeout + 5
            )
        else:
            service = self.service()
        try:
            service.startService()
        except CannotListenError as error:
            raise SystemExit(f"crowtwist: cannot listen on {self._host}:{self._port}: {error.socketError}") from None
        reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
        if worker is None:
            log.info("crowtwist serving on {host}:{port}{workers}", host=self._host, port=self._port,
                     workers=f" with {count} workers" if count > 1 else "")
        reactor.run()
        if isinstance(service, Supervisor) and service.failed:
            raise SystemExit("crowtwist: the workers kept failing at start-up (see above); stopped")


class _Closer(Service):
    """Connects the broker when the service starts; when it stops, closes every WebSocket
    with 1001, waits for them, then disconnects the broker (what ``onclose`` publishes still goes out)."""

    def __init__(self, app: Crow, websockets: RuleRegistry) -> None:
        self._app = app
        self._websockets = websockets
        self._broker: RedisBroker | None = None

    def startService(self) -> None:
        Service.startService(self)
        self._websockets.resume()
        self._broker = self._app.broker_client
        if self._broker is not None:
            self._broker.start()

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        # No upgrade into a stopping server: new and pending ones get 503 from now on.
        refused = self._websockets.begin_stopping()
        closed = DeferredList([self._app.close_all(CloseCode.GOING_AWAY), *refused])
        closed.addCallback(lambda _: self._websockets.reset_factories())
        broker, self._broker = self._broker, None
        if broker is not None:
            closed.addCallback(lambda _: broker.stop())
        return closed.addCallback(lambda _: None)


