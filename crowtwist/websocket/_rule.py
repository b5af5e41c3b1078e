"""``WebSocketRule``: what ``app.route(...).websocket()`` returns, with Crow's chained handlers.

A rule knows its settings and its ``RuleRegistry`` (the app's rules, as each
rule sees the others), never the app itself.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from collections.abc import Callable, Iterable, Iterator

from .._handlers import Handler
from .._settings import Settings, check_positive
from ._broadcast import Hub, route_channel
from ._connection import Connection
from ._origin import OriginPolicy
from ._factory import RuleFactory, build_factory

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

__all__ = ["ConnectionsView", "RuleRegistry", "WebSocketRule"]

_UNSET: Any = object()

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""An RFC 9110 token: what a subprotocol's name is."""


class ConnectionsView:
    """A live, read-only view of a rule's open connections, in the order they opened.

    Iterating takes a snapshot, so a handler may close connections (or new
    ones may open) while it broadcasts.
    """

    __slots__ = ("_connections",)

    def __init__(self, connections: dict[Connection, None]) -> None:
        self._connections = connections

    def __iter__(self) -> Iterator[Connection]:
        return iter(tuple(self._connections))

    def __len__(self) -> int:
        return len(self._connections)

    def __contains__(self, item: object) -> bool:
        return item in self._connections

    def __repr__(self) -> str:
        return f"<ConnectionsView of {len(self)} connection(s)>"


class RuleRegistry:
    """An app's WebSocket rules, and what each rule needs to know of the others.

    The app makes one and hands it, with its ``Settings``, to every rule it
    creates; a rule joins it when made.  Through it the rules count each
    other's connections against the app-wide ``max_connections``, and learn
    that the app is ``stopping``.
    """

    __slots__ = ("_rules", "_stopping", "hub")

    def __init__(self) -> None:
        self._rules: list[WebSocketRule] = []
        self._stopping = False
        self.hub = Hub()
        """The app's rooms and broadcasts (app-wide, as the registry is)."""

    def __repr__(self) -> str:
        return f"<RuleRegistry of {len(self._rules)} rule(s)>"

    def add(self, rule: WebSocketRule) -> None:
        """``rule`` is one of the app's (``WebSocketRule`` adds itself when made)."""
        self._rules.append(rule)

    def __iter__(self) -> Iterator[WebSocketRule]:
        return iter(tuple(self._rules))

    def __len__(self) -> int:
        return len(self._rules)

    def occupied(self) -> int:
        """Places taken under the app-wide cap: open connections and pending upgrades, of every rule."""
        return sum(rule.occupied() for rule in self._rules)

    @property
    def stopping(self) -> bool:
        """Whether the app is shutting down: every rule answers new upgrades with 503."""
        return self._stopping

    def begin_stopping(self) -> list[Deferred[None]]:
        """Refuse upgrades from now on; those waiting for ``onaccept`` are refused now.

        Returns Deferreds that fire once those connections are gone.
        """
        self._stopping = True
        return [gone for rule in self._rules for gone in rule.abandon_reservations()]

    def resume(self) -> None:
        """Take upgrades again (the app's service started again)."""
        self._stopping = False

    def reset_factories(self) -> None:
        """Every rule builds its next connections from the current settings (``reset_factory``)."""
        for rule in self._rules:
            rule.reset_factory()


class WebSocketRule:
    """A WebSocket route: its handlers, its limits, and its open connections.

    Every method returns the rule, so calls chain as in Crow.  Used as a
    decorator (``@rule.onmessage``), a method likewise returns the rule.

    Made by ``app.route(pattern).websocket()``: with the app's ``Settings``,
    which the rule's own ones default to, and the app's ``RuleRegistry``,
    which the rule joins.
    """

    def __init__(self, pattern: str, settings: Settings, registry: RuleRegistry) -> None:
        self.pattern = pattern
        self._settings = settings
        self._registry = registry
        self.accept_handler: Handler | None = None
        self.open_handler: Handler | None = None
        self.message_handler: Handler | None = None
        self.error_handler: Handler | None = None
        self.close_handler: Handler | None = None
        self._max_payload: int | None = _UNSET
        self._compression: bool | None = None
        self.offered_subprotocols: tuple[str, ...] = ()
        self._client_order = False
        self._mirror = False
        self._max_connections: int | None = None
        self._max_queue: int | None = _UNSET
        self._max_queue_bytes: int | None = _UNSET
        self._origins: tuple[str, ...] | None = None
        # The compiled policy and the settings it was compiled from, so that a
        # change of allowed origins or allow_null_origin takes effect.
        self._policy: OriginPolicy | None = None
        self._policy_key: object = None
        self._open: dict[Connection, None] = {}
        self.connections = ConnectionsView(self._open)
        self._factory: RuleFactory | None = None
        registry.add(self)

    def __repr__(self) -> str:
        return f"<WebSocketRule {self.pattern!r}>"

    def adopt(self, pattern: str, settings: Settings, registry: RuleRegistry) -> None:
        """Join an app: a rule declared in a blueprint before the blueprint was registered.

        It takes the whole pattern (the blueprint's prefix before it), and the
        app's settings and registry in place of the stand-ins it was made with.
        """
        if self._open or self._factory is not None:
            raise RuntimeError(f"{self!r} has served already; it cannot join another app")
        self.pattern = pattern
        self._settings = settings
        self._registry = registry
        registry.add(self)

    @property
    def settings(self) -> Settings:
        """The app-wide settings this rule's own ones default to."""
        return self._settings

    @property
    def stopping(self) -> bool:
        """Whether the app is shutting down (new upgrades get 503)."""
        return self._registry.stopping

    # Crow's chained handlers.

    def onaccept(self, func: Callable[..., Any]) -> WebSocketRule:
        """``func(request)`` before the upgrade: ``True`` accepts, ``False`` answers 400,
        a ``Response`` answers with itself.  It may set ``request.userdata``."""
        self.accept_handler = Handler(func, "onaccept", 1, 1)
        return self

    def onopen(self, func: Callable[..., Any]) -> WebSocketRule:
        """``func(conn)`` once the connection is open."""
        self.open_handler = Handler(func, "onopen", 1, 1)
        return self

    def onmessage(self, func: Callable[..., Any]) -> WebSocketRule:
        """``func(conn, data, is_binary)`` per complete message; ``data`` is ``str`` or ``bytes``."""
        self.message_handler = Handler(func, "onmessage", 3, 3)
        return self

    def onerror(self, func: Callable[..., Any]) -> WebSocketRule:
        """``func(conn)`` or ``func(conn, message)`` when the connection fails, before ``onclose``."""
        self.error_handler = Handler(func, "onerror", 1, 2)
        return self

    def onclose(self, func: Callable[..., Any]) -> WebSocketRule:
        """``func(conn, reason)`` or ``func(conn, reason, code)`` exactly once per opened connection."""
        self.close_handler = Handler(func, "onclose", 2, 3)
        return self

    # Settings.

    def max_payload(self, size: int | None) -> WebSocketRule:
        """Bound a whole incoming message, after decompression (``None``: no bound)."""
        self._max_payload = check_positive(f"route {self.pattern!r}: max_payload", size, integer=True)
        self.reset_factory()
        return self

    def subprotocols(self, protocols: Iterable[str]) -> WebSocketRule:
        """Protocols this route speaks (Crow's ``subprotocols``).

        Given in order (a list or tuple, as Crow's ``std::vector``), the first
        of them that the client offered is chosen.  Given as a set, which has
        no order, the client's first choice among them is, so two processes
        of one app always agree.
        """
        unordered = isinstance(protocols, (set, frozenset))
        protocols = tuple(protocols)
        for protocol in protocols:
            if not isinstance(protocol, str) or not protocol or any(c in protocol for c in " ,\t"):
                raise ValueError(f"route {self.pattern!r}: invalid subprotocol {protocol!r}")
        self._client_order = unordered
        self.offered_subprotocols = tuple(sorted(protocols)) if unordered else protocols
        return self

    def mirrorprotocols(self, mirror: bool = True) -> WebSocketRule:
        """Accept whatever subprotocols the client offers, answering with its first choice (Crow's
        ``mirrorprotocols``); ``subprotocols(...)`` is ignored while this is on."""
        self._mirror = bool(mirror)
        return self

    def compression(self, enabled: bool) -> WebSocketRule:
        """Turn permessage-deflate on or off for this route (default: the app's setting)."""
        self._compression = bool(enabled)
        self.reset_factory()
        return self

    def max_queue(self, messages: int | None = _UNSET, size: int | None = _UNSET) -> WebSocketRule:
        """Bound the messages a connection buffers while a handler is pending (count, bytes).

        When either bound is reached the connection stops reading until the
        queue is down to a quarter; ``None`` lifts a bound.  Default: the app's.
        """
        for name, value in (("messages", messages), ("size", size)):
            if value is not _UNSET:
                check_positive(f"route {self.pattern!r}: max_queue {name}", value, integer=True)
        if messages is not _UNSET:
            self._max_queue = messages
        if size is not _UNSET:
            self._max_queue_bytes = size
        return self

    @property
    def effective_max_queue(self) -> int | None:
        """Messages a connection of this route buffers behind a pending handler."""
        return self._settings.max_queue if self._max_queue is _UNSET else self._max_queue

    @property
    def effective_max_queue_bytes(self) -> int | None:
        """Bytes of messages a connection of this route buffers behind a pending handler."""
        return self._settings.max_queue_bytes if self._max_queue_bytes is _UNSET else self._max_queue_bytes

    def max_connections(self, count: int | None) -> WebSocketRule:
        """At most ``count`` open connections on this route; more get 503 (``None``: no cap)."""
        self._max_connections = check_positive(f"route {self.pattern!r}: max_connections", count, integer=True)
        return self

    def allowed_origins(self, origins: Iterable[str] | None) -> WebSocketRule:
        """Only pages from these origins may connect to this route (403 otherwise)."""
        if origins is not None:
            origins = tuple(origins)
            OriginPolicy(origins)  # malformed patterns fail here, not at request time
        self._origins = origins
        return self

    def over_capacity(self) -> bool:
        """Whether a new connection would pass this route's or the app's cap.

        Upgrades waiting for their ``onaccept`` hold a place (``reserve_slot``).
        """
        if self._max_connections is not None and self.occupied() >= self._max_connections:
            return True
        cap = self._settings.max_connections
        return cap is not None and self._registry.occupied() >= cap

    def occupied(self) -> int:
        """Places taken under this route's cap: open connections and upgrades waiting for ``onaccept``."""
        slots = self._slots
        return len(self._open) + (0 if slots is None else len(slots))

    # Slot reservations: an upgrade between the cap check and its 101 (an
    # onaccept still running) counts as a connection.

    _slots: dict[Any, None] | None = None

    def reserve_slot(self, holder: Any) -> None:
        """``holder`` (a pending upgrade, with an ``abandon()`` method) takes a place under the caps."""
        if self._slots is None:
            self._slots = {}
        self._slots[holder] = None

    def release_slot(self, holder: Any) -> None:
        """``holder`` gives its place back (accepted, refused, failed or gone)."""
        if self._slots is not None:
            self._slots.pop(holder, None)

    def abandon_reservations(self) -> list[Deferred[None]]:
        """The app is stopping: every upgrade still waiting for ``onaccept`` is refused now.

        Returns Deferreds that fire once those connections are gone.
        """
        waits: list[Deferred[None]] = []
        for holder in list(self._slots or ()):
            gone = holder.abandon()
            if gone is not None:
                waits.append(gone)
        return waits

    def origin_policy(self) -> OriginPolicy | None:
        """The origins this route accepts: its own list, else the app's, else any (``None``)."""
        settings = self._settings
        origins = self._origins if self._origins is not None else settings.allowed_origins
        if origins is None:
            return None
        # "null" in the list, or the app's allow_null_origin, lets Origin: null through.
        key = (origins, settings.allow_null_origin)
        if self._policy is None or self._policy_key != key:
            self._policy = OriginPolicy(origins, settings.allow_null_origin)
            self._policy_key = key
        return self._policy

    @property
    def effective_max_payload(self) -> int | None:
        """This route's message bound: its own if set, else the app's."""
        if self._max_payload is _UNSET:
            return self._settings.websocket_max_payload
        return self._max_payload

    @property
    def effective_compression(self) -> bool:
        """Whether this route accepts permessage-deflate."""
        if self._compression is None:
            return self._settings.compression
        return self._compression

    def choose_subprotocol(self, offered: Iterable[str]) -> str | None:
        """The protocol to answer with: see ``subprotocols`` and ``mirrorprotocols``."""
        if self._mirror:
            # The client's first offer that is a token (RFC 6455 4.1: what it may offer).
            return next((protocol for protocol in offered if _TOKEN.fullmatch(protocol)), None)
        ours = self.offered_subprotocols
        if self._client_order:
            return next((protocol for protocol in offered if protocol in ours), None)
        theirs = set(offered)
        return next((protocol for protocol in ours if protocol in theirs), None)

    # Used by the protocol.

    @property
    def factory(self) -> RuleFactory:
        """The autobahn factory of this rule, built on first use from the current settings."""
        if self._factory is None:
            self._factory = build_factory(self)
            self._factory.start()
        return self._factory

    def reset_factory(self) -> None:
        """Stop the current factory; the next connection gets one built from the current settings.

        Connections already open keep the settings they started with.
        """
        factory, self._factory = self._factory, None
        if factory is not None:
            factory.stop()

    def connection_opened(self, conn: Connection) -> None:
        """``conn`` is open: it joins ``connections`` and counts under the caps."""
        self._open[conn] = None
        self._registry.hub.opened(conn, self.pattern)

    def connection_closed(self, conn: Connection) -> None:
        """``conn`` has closed: it leaves ``connections``, its rooms, and gives its place back."""
        self._open.pop(conn, None)
        self._registry.hub.closed(conn)

    # Broadcast and rooms.

    def broadcast(self, message: str | bytes) -> None:
        """Send ``message`` to every open connection of this route, the sender's included.

        ``str`` goes as text, ``bytes`` as binary.  With a broker, connections
        of this route in every process sharing it get it too.  Never blocks:
        a connection whose send buffer is over its bound is skipped (counted
        in its ``broadcasts_skipped``).  May be called from any thread.
        """
        self._registry.hub.send_from_any_thread(route_channel(self.pattern), message)

    def join_room(self, conn: Connection, room: str) -> None:
        """``conn.join(room)``: rooms are the app's, so the registry's hub keeps them."""
        self._registry.hub.join(conn, room)

    def leave_room(self, conn: Connection, room: str) -> None:
        """``conn.leave(room)``."""
        self._registry.hub.leave(conn, room)

    def rooms_of(self, conn: Connection) -> frozenset[str]:
        """The rooms ``conn`` is in."""
        return self._registry.hub.rooms_of(conn)
