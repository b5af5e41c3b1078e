"""What a connection's protocol needs of its route: ``RouteHandlers`` (a ``WebSocketRule`` is one).

The protocol depends on this shape, not on the rule's module, so imports run
one way: the rule builds protocols, protocols never import the rule.
"""

from __future__ import annotations

from typing import Any, Protocol

from .._handlers import Handler
from .._settings import Settings

__all__ = ["RouteHandlers"]


class RouteHandlers(Protocol):
    """A WebSocket route as its connections see it: handlers, limits, and its open set."""

    pattern: str
    open_handler: Handler | None
    message_handler: Handler | None
    error_handler: Handler | None
    close_handler: Handler | None

    @property
    def settings(self) -> Settings: ...
    @property
    def effective_max_payload(self) -> int | None: ...
    @property
    def effective_max_queue(self) -> int | None: ...
    @property
    def effective_max_queue_bytes(self) -> int | None: ...
    @property
    def effective_compression(self) -> bool: ...
    @property
    def connections(self) -> Any: ...
    def connection_opened(self, conn: Any) -> None: ...
    def connection_closed(self, conn: Any) -> None: ...
    def join_room(self, conn: Any, room: str) -> None: ...
    def leave_room(self, conn: Any, room: str) -> None: ...
    def rooms_of(self, conn: Any) -> frozenset[str]: ...
