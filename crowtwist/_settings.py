"""An app's settings, their defaults, and the check every "positive number or None" goes through.

Nothing here imports another crowtwist module: the app, its WebSocket rules
and ``twistd crow`` all read and check settings with what is defined here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "DEFAULT_BINDADDR",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_PAYLOAD",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_QUEUE_BYTES",
    "DEFAULT_PORT",
    "Settings",
    "check_positive",
]

DEFAULT_PORT = 18080
"""Crow's default port."""

DEFAULT_BINDADDR = "0.0.0.0"
"""Crow's default address: every IPv4 interface."""

DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024
"""Bytes of one incoming message, after decompression."""

DEFAULT_MAX_QUEUE = 16
"""Messages a connection buffers behind a pending handler before it stops reading."""

DEFAULT_MAX_QUEUE_BYTES = 1024 * 1024
"""Bytes of messages a connection buffers behind a pending handler before it stops reading."""

T = TypeVar("T")


def check_positive(name: str, value: T, *, integer: bool = False, optional: bool = True) -> T:
    """``value``, if it is a positive number: a finite ``int`` or ``float``, an ``int`` if ``integer``.

    ``None`` passes too when ``optional`` (it lifts a bound).  Anything else,
    ``bool`` included, raises ``ValueError`` saying
    ``"<name> must be a positive int or None, not <value>"``.
    """
    if value is None and optional:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and (isinstance(value, int) or not integer):
        if math.isfinite(value) and value > 0:
            return value
    expected = "int" if integer else "number"
    raise ValueError(f"{name} must be a positive {expected}{' or None' if optional else ''}, not {value!r}")


DEFAULT_MAX_BODY = 64 * 1024 * 1024


@dataclass
class Settings:
    """An app's settings (most of them WebSocket ones); rules read them when their factory is built."""

    enforce_ws_spec: bool = False
    """Require masked client frames (Crow's ``CROW_ENFORCE_WS_SPEC``)."""
    websocket_max_payload: int | None = DEFAULT_MAX_PAYLOAD
    """Bound on a whole incoming message after decompression; ``None`` lifts it."""
    compression: bool = True
    """Accept permessage-deflate when the client offers it."""
    compression_context_takeover: bool = True
    """With permessage-deflate, let the client keep its compression context between messages
    (better ratio; our inflater keeps its 32 KiB window).  ``False`` asks for
    ``client_no_context_takeover``: each message inflated alone, no window held between them."""
    allow_null_origin: bool = False
    """Where an origin list is in force, also accept ``Origin: null`` (as naming ``"null"`` in it does).

    ``null`` comes from sandboxed frames and files on any site, so it is refused by default."""
    close_timeout: float = 5.0
    """Seconds to wait for the peer's close frame before dropping the connection."""
    keepalive_interval: float | None = 20.0
    """Seconds between server pings; ``None``: no pings."""
    keepalive_timeout: float | None = 20.0
    """Seconds to wait for a pong before closing with 1011 (``CloseCode.INTERNAL_ERROR``)."""
    handshake_timeout: float | None = 10.0
    """Seconds from TCP accept (or a request's first byte) to the end of its head, and to the 101."""
    max_send_buffer: int | None = 4 * 1024 * 1024
    """Bytes a connection may have queued for a peer that does not read; ``None``: no bound."""
    send_buffer_policy: str = "close"
    """Over ``max_send_buffer``: ``"close"`` (1008, ``CloseCode.POLICY_VIOLATION``) or ``"wait"``
    (the app awaits ``drained()``)."""
    max_connections: int | None = None
    """Open WebSockets the app takes at once; more get 503.  ``None``: no cap."""
    max_queue: int | None = DEFAULT_MAX_QUEUE
    """Messages a connection buffers while a handler is pending; reading pauses when full."""
    max_queue_bytes: int | None = DEFAULT_MAX_QUEUE_BYTES
    """Bytes of messages a connection buffers while a handler is pending; reading pauses when full."""
    tcp_nodelay: bool = True
    """Nagle's algorithm off on upgraded connections (``TCP_NODELAY``), so small frames go out at once."""
    allowed_origins: tuple[str, ...] | None = None
    """Origins allowed to open WebSockets (see ``websocket/_origin.py``); ``None``: any."""
    max_body_size: int | None = DEFAULT_MAX_BODY
    """Bytes of an HTTP request body crowtwist's site reads; more get 413.  ``None``: no bound
    (twisted.web spools large bodies to temporary files, so the bound is on disk, not memory)."""
