"""``Crow``: the app.  Its routes, its settings' setters, and the ways to serve them."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, TypeVar, overload
from collections.abc import Callable, Iterable, Iterator

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.logger import Logger

from ._broker import RedisBroker
from ._http import HttpRule
from ._twisted import listening_service
from ._resource import Endpoint, RouteResource
from ._routing import ParamType, RouteNode, parse_pattern
from ._settings import DEFAULT_BINDADDR, DEFAULT_PORT, Settings, check_positive
from ._site import CrowSite
from .websocket._broadcast import check_room, room_channel
from .websocket._close import CloseCode
from .websocket._connection import Connection
from .websocket._origin import OriginPolicy
from .websocket._rule import RuleRegistry, WebSocketRule

if TYPE_CHECKING:
    from twisted.internet.interfaces import IStreamServerEndpoint

__all__ = ["Crow", "Route"]

log = Logger(namespace="crowtwist")

F = TypeVar("F", bound=Callable[..., Any])

_KEEP: Any = object()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


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

    def websocket(self, app: Crow | None = None) -> WebSocketRule:
        """Make this a WebSocket route (Crow's ``.websocket(&app)``) and return its rule.

        ``app`` may be given, as Crow's code does; it must be this route's app."""
        if app is not None and app is not self._app:
            raise ValueError(
                f"route {self.pattern!r}: .websocket(app) was given another app than the one the route"
                " was declared on (in Python, plain .websocket() is enough)"
            )
        if self._methods_given:
            raise ValueError(
                f"route {self.pattern!r}: .methods() is for HTTP handlers; a WebSocket route answers"
                " GET upgrades only (declare HTTP methods on a separate app.route(...) of the same path)"
            )
        endpoint = self._app._endpoint(self._segments)
        if endpoint.websocket is not None:
            raise ValueError(f"route {self.pattern!r}: a WebSocket rule on this path already exists")
        endpoint.websocket = self._app._new_websocket_rule(self.pattern)
        return endpoint.websocket


class Crow:
    """A Crow app: routes declared with ``route``, served with ``run``, ``resource`` or ``service``.

    ``enforce_ws_spec=True`` (or ``CROWTWIST_ENFORCE_WS_SPEC=1`` in the
    environment) requires masked client frames, as Crow's
    ``CROW_ENFORCE_WS_SPEC`` does.
    """

    def __init__(self, enforce_ws_spec: bool | None = None) -> None:
        if enforce_ws_spec is None:
            enforce_ws_spec = _env_flag("CROWTWIST_ENFORCE_WS_SPEC")
        self._settings = Settings(enforce_ws_spec=bool(enforce_ws_spec))
        self._root: RouteNode[Endpoint] = RouteNode()
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

    def _endpoint(self, segments: tuple[str | ParamType, ...]) -> Endpoint:
        node = self._root
        for segment in segments:
            node = node.child(segment, RouteNode)
        if node.endpoint is None:
            node.endpoint = Endpoint()
        return node.endpoint

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
        return CrowSite(self.resource(), handshake_timeout=self._settings.handshake_timeout)

    def port(self, port: int) -> Crow:
        """The port ``run`` listens on (Crow's ``app.port(18080)``)."""
        self._port = int(port)
        return self

    def bindaddr(self, host: str) -> Crow:
        """The address ``run`` listens on (Crow's ``app.bindaddr``)."""
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
        return RouteResource(self._root)

    def _startup_warnings(self) -> None:
        if self._warned:
            return
        self._warned = True
        if not self._settings.enforce_ws_spec and len(self._websockets):
            log.warn(
                "accepting unmasked WebSocket client frames, as Crow does by default;"
                " set enforce_ws_spec=True or CROWTWIST_ENFORCE_WS_SPEC=1 to enforce RFC 6455"
            )

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


