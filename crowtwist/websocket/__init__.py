"""The WebSocket side: rules, the autobahn protocol, connections, and event dispatch."""

from __future__ import annotations

import warnings

from autobahn.websocket import HAS_NVX, USES_NVX

from ._close import CloseCode
from ._connection import Connection
from ._rule import ConnectionsView, WebSocketRule

__all__ = ["CloseCode", "CloseStatusCode", "Connection", "ConnectionsView", "WebSocketRule", "accelerated"]

CloseStatusCode = CloseCode
"""Crow's name for the close codes (``crow::websocket::CloseStatusCode``); the same enum."""


def accelerated() -> bool:
    """Whether autobahn's NVX native masking and UTF-8 validation are in use."""
    return bool(USES_NVX)


if HAS_NVX and not USES_NVX:
    # Masking and UTF-8 validation are ~70x slower in pure Python; only an
    # explicit AUTOBAHN_USE_NVX=0 gets here, and we never set it ourselves.
    warnings.warn(
        "autobahn's NVX accelerators are installed but disabled (AUTOBAHN_USE_NVX=0);"
        " WebSocket masking and UTF-8 validation run in pure Python",
        RuntimeWarning,
        stacklevel=2,
    )
