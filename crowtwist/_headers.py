"""Reading HTTP header tokens from twisted.web requests."""

from __future__ import annotations

from twisted.web.server import Request

__all__ = ["header_tokens", "wants_upgrade"]


def header_tokens(request: Request, name: bytes, lower: bool = True) -> list[str]:
    """The comma-separated tokens of every ``name`` header (lower-cased unless ``lower`` is false)."""
    tokens: list[str] = []
    for value in request.requestHeaders.getRawHeaders(name, []):
        text = value.decode("latin-1")
        tokens.extend(t.strip() for t in (text.lower() if lower else text).split(","))
    return [t for t in tokens if t]


def wants_upgrade(request: Request) -> bool:
    """Whether the request asks to switch to WebSocket."""
    return "websocket" in header_tokens(request, b"upgrade")
