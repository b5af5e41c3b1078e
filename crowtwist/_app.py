"""``Crow``: the app.  Its settings, its rules, and the ways to serve them."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from collections.abc import Callable, Iterable, Iterator

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.logger import Logger

from ._http import HttpRule
from ._resource import Endpoint, RouteResource
from ._routing import ParamType, RouteNode, parse_pattern
from ._site import CrowSite
from .websocket._dispatch import DEFAULT_MAX_QUEUE, DEFAULT_MAX_QUEUE_BYTES
from .websocket._origin import OriginPolicy
from .websocket._rule import WebSocketRule, _check_payload

if TYPE_CHECKING:
    from twisted.internet.interfaces import IStreamServerEndpoint

__all__ = ["Crow", "Route", "Settings"]

log = Logger(namespace="crowtwist")

DEFAULT_PORT = 18080
"""Crow's default port."""

DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024

F = TypeVar("F", bound=Callable[..., Any])

_KEEP: Any = object()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class Settings:
    """An app's WebSocket settings; rules read them when their factory is built."""

    enforce_ws_spec: bool = False
    """Require masked client frames (Crow's ``CROW_ENFORCE_WS_SPEC``)."""
    websocket_max_payload: int | None = DEFAULT_MAX_PAYLOAD
    """Bound on a whole incoming message after decompression; ``None`` lifts it."""
    compression: bool = True
    """Accept permessage-deflate when the client offers it."""
    allow_null_origin: bool = False
    """Where an origin list is in force, also accept ``Origin: null`` (as naming ``"null"`` in it does).

    ``null`` comes from sandboxed frames and files on any site, so it is refused by default."""
    close_timeout: float = 5.0
    """Seconds to wait for the peer's close frame before dropping the connection."""
    keepalive_interval: float | None = 20.0
    """Seconds between server pings; ``None``: no pings."""
    keepalive_timeout: float | None = 20.0
    """Seconds to wait for a pong before closing with 1011."""
    handshake_timeout: float | None = 10.0
    """Seconds from TCP accept (or a request's first byte) to the end of its head, and to the 101."""
    max_send_buffer: int | None = 4 * 1024 * 1024
    """Bytes a connection may have queued for a peer that does not read; ``None``: no bound."""
    send_buffer_policy: str = "close"
    """Over ``max_send_buffer``: ``"close"`` (1008) or ``"wait"`` (the app awaits ``drained()``)."""
    max_connections: int | None = None
    """Open WebSockets the app takes at once; more get 503.  ``None``: no cap."""
    max_queue: int | None = DEFAULT_MAX_QUEUE
    """Messages a connection buffers while a handler is pending; reading pauses when full."""
    max_queue_bytes: int | None = DEFAULT_MAX_QUEUE_BYTES
    """Bytes of messages a connection buffers while a handler is pending; reading pauses when full."""
    allowed_origins: tuple[str, ...] | None = None
    """Origins allowed to open WebSockets (see ``websocket/origin.py``); ``None``: any."""


class Route:
    """What ``app.route(pattern)`` returns: call it with a handler, or ask for ``.websocket()``."""

    def __init__(self, app: Crow, pattern: str) -> None:
        self._app = app
        self.pattern = pattern
        self._segments = parse_pattern(pattern)
        self._methods: frozenset[str] = frozenset({"GET"})
        self._methods_given = False

    def methods(self, *methods: str) -> Route:
        """The HTTP methods this route answers (default ``GET``; ``HEAD`` follows ``GET``)."""
        if not methods:
            raise ValueError(f"route {self.pattern!r}: methods() needs at least one method")
        self._methods = frozenset(m.upper() for m in methods)
        self._methods_given = True
        return self

    def __call__(self, func: F) -> F:
        """Register ``func`` as this route's HTTP handler; returns it, so this is a decorator."""
        param_count = sum(isinstance(s, ParamType) for s in self._segments)
        rule = HttpRule(self.pattern, param_count, self._methods, func)
        endpoint = self._app._endpoint(self._segments)
        taken = sorted(self._methods & set(endpoint.http))
        if taken:
            raise ValueError(
                f"route {self.pattern!r}: an HTTP rule for {', '.join(taken)} on this path already exists"
            )
        for method in self._methods:
            endpoint.http[method] = rule
        return func

    def websocket(self) -> WebSocketRule:
        """Make this a WebSocket route (Crow's ``.websocket(&app)``) and return its rule."""
        if self._methods_given:
            raise ValueError(
                f"route {self.pattern!r}: .methods() is for HTTP handlers; a WebSocket route answers"
                " GET upgrades only (declare HTTP methods on a separate app.route(...) of the same path)"
            )
        endpoint = self._app._endpoint(self._segments)
        if endpoint.websocket is not None:
            raise ValueError(f"route {self.pattern!r}: a WebSocket rule on this path already exists")
        rule = WebSocketRule(self._app, self.pattern)
        endpoint.websocket = rule
        self._app._ws_rules.append(rule)
        return rule


class Crow:
    """A Crow app: routes declared with ``route``, served with ``run``, ``resource`` or ``service``.

    ``enforce_ws_spec=True`` (or ``CROWTWIST_ENFORCE_WS_SPEC=1`` in the
    environment) requires masked client frames, as Crow's
    ``CROW_ENFORCE_WS_SPEC`` does.
    """

    def __init__(self, enforce_ws_spec: bool | None = None) -> None:
        if enforce_ws_spec is None:
            enforce_ws_spec = _env_flag("CROWTWIST_ENFORCE_WS_SPEC")
        self.settings = Settings(enforce_ws_spec=bool(enforce_ws_spec))
        self._root: RouteNode[Endpoint] = RouteNode()
        self._ws_rules: list[WebSocketRule] = []
        self._port = DEFAULT_PORT
        self._host = "0.0.0.0"
        self._warned = False

    def route(self, pattern: str) -> Route:
        """Crow's ``CROW_ROUTE(app, pattern)``; a malformed pattern raises ``ValueError`` here."""
        return Route(self, pattern)

    def _endpoint(self, segments: tuple[str | ParamType, ...]) -> Endpoint:
        node = self._root
        for segment in segments:
            node = node.child(segment, RouteNode)
        if node.endpoint is None:
            node.endpoint = Endpoint()
        return node.endpoint

    @property
    def websocket_rules(self) -> tuple[WebSocketRule, ...]:
        """Every WebSocket rule, in declaration order."""
        return tuple(self._ws_rules)

    # Crow's chained settings.

    def websocket_max_payload(self, size: int | None) -> Crow:
        """App-wide bound on an incoming message after decompression (default 16 MiB)."""
        self.settings.websocket_max_payload = _check_payload(size)
        self._reset_factories()
        return self

    def websocket_compression(self, enabled: bool) -> Crow:
        """Accept permessage-deflate or not, app-wide (default: accept)."""
        self.settings.compression = bool(enabled)
        self._reset_factories()
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
        """Change the app-wide WebSocket limits named; see ``Settings`` for each default."""
        settings = self.settings
        for name, value in (
            ("max_connections", max_connections),
            ("max_queue", max_queue),
            ("max_queue_bytes", max_queue_bytes),
            ("max_send_buffer", max_send_buffer),
            ("keepalive_interval", keepalive_interval),
            ("keepalive_timeout", keepalive_timeout),
            ("handshake_timeout", handshake_timeout),
            ("close_timeout", close_timeout),
        ):
            if value is not _KEEP:
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                    raise ValueError(f"{name} must be a positive number or None, not {value!r}")
                if value is None and name == "close_timeout":
                    raise ValueError("close_timeout may not be None")
                setattr(settings, name, value)
        if send_buffer_policy is not _KEEP:
            if send_buffer_policy not in ("close", "wait"):
                raise ValueError(f"send_buffer_policy must be 'close' or 'wait', not {send_buffer_policy!r}")
            settings.send_buffer_policy = str(send_buffer_policy)
        self._reset_factories()
        return self

    def websocket_allowed_origins(self, origins: Iterable[str] | None) -> Crow:
        """Only pages from these origins may open WebSockets (403 otherwise); ``None``: any."""
        if origins is None:
            self.settings.allowed_origins = None
        else:
            origins = tuple(origins)
            OriginPolicy(origins)  # malformed patterns fail here, not at request time
            self.settings.allowed_origins = origins
        return self

    def site(self) -> CrowSite:
        """A twisted.web ``Site`` serving ``resource()``, with the handshake deadline."""
        return CrowSite(self.resource(), handshake_timeout=self.settings.handshake_timeout)

    def port(self, port: int) -> Crow:
        """The port ``run`` listens on (Crow's ``app.port(18080)``)."""
        self._port = int(port)
        return self

    def bindaddr(self, host: str) -> Crow:
        """The address ``run`` listens on (Crow's ``app.bindaddr``)."""
        self._host = host
        return self

    def _reset_factories(self) -> None:
        for rule in self._ws_rules:
            rule.reset_factory()

    # Serving.

    def resource(self) -> RouteResource:
        """A twisted.web resource serving every route; a ``Site`` root or mounted with ``putChild``."""
        self._startup_warnings()
        return RouteResource(self._root)

    def _startup_warnings(self) -> None:
        if self._warned:
            return
        self._warned = True
        if not self.settings.enforce_ws_spec and self._ws_rules:
            log.warn(
                "accepting unmasked WebSocket client frames, as Crow does by default;"
                " set enforce_ws_spec=True or CROWTWIST_ENFORCE_WS_SPEC=1 to enforce RFC 6455"
            )

    # Stopping: set by the service's stop (app.service(...), run's SIGTERM/Ctrl-C).
    _stopping = False

    @property
    def stopping(self) -> bool:
        """Whether the app's service is stopping: WebSocket upgrades, pending ones included, get 503."""
        return self._stopping

    def _begin_stopping(self) -> list[Deferred[None]]:
        """Refuse upgrades from now on; those waiting for onaccept get 503 now.  Fires when they are gone."""
        self._stopping = True
        return [gone for rule in self._ws_rules for gone in rule.abandon_reservations()]

    def connections(self) -> Iterator[Any]:
        """Every open WebSocket connection of every rule."""
        for rule in self._ws_rules:
            yield from rule.connections

    def close_all(self, code: int = 1001, reason: str = "going away") -> Deferred[None]:
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
        done.addTimeout(2 * self.settings.close_timeout + 1, reactor)

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
        top.addService(_Closer(self))
        for endpoint in endpoints:
            if isinstance(endpoint, str):
                endpoint = serverFromString(reactor, endpoint)
            listener = StreamServerEndpointService(endpoint, site)
            # Report a port that cannot be had from startService itself, not as
            # an unhandled error in the log after the process claimed to start.
            listener._raiseSynchronously = True
            top.addService(listener)
        return top

    def run(self, port: int | None = None, host: str | None = None) -> None:
        """Serve until interrupted, like Crow's ``app.port(18080).run()``.

        Ctrl-C (or SIGTERM) closes open WebSockets with 1001 before the process exits.
        """
        from twisted.internet import reactor
        from twisted.logger import globalLogBeginner, textFileLogObserver

        if port is not None:
            self._port = port
        if host is not None:
            self._host = host
        from twisted.internet.error import CannotListenError
        from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate

        level = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
        globalLogBeginner.beginLoggingTo(
            [FilteringLogObserver(textFileLogObserver(sys.stderr), [level])], redirectStandardIO=False
        )
        service = self.service()
        try:
            service.startService()
        except CannotListenError as error:
            raise SystemExit(f"crowtwist: cannot listen on {self._host}:{self._port}: {error.socketError}") from None
        reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
        log.info("crowtwist serving on {host}:{port}", host=self._host, port=self._port)
        reactor.run()


class _Closer(Service):
    """Closes every WebSocket with 1001 when the service stops, and waits for them."""

    def __init__(self, app: Crow) -> None:
        self._app = app

    def startService(self) -> None:
        Service.startService(self)
        self._app._stopping = False

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        # No upgrade into a stopping server: new and pending ones get 503 from now on.
        refused = self._app._begin_stopping()
        closed = DeferredList([self._app.close_all(), *refused])
        return closed.addCallback(lambda _: self._app._reset_factories())


