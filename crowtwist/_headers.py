"""Reading HTTP header tokens from twisted.web requests."""

from __future__ import annotations

from collections.abc import Iterable

from twisted.web.server import Request

__all__ = ["header_tokens", "split_tokens", "wants_upgrade"]


def split_tokens(values: Iterable[bytes], lower: bool = True) -> list[str]:
    """The comma-separated tokens of header ``values`` (lower-cased unless ``lower`` is false)."""
    tokens: list[str] = []
    for value in values:
        text = value.decode("latin-1")
        tokens.extend(t.strip() for t in (text.lower() if lower else text).split(","))
    return [t for t in tokens if t]


def header_tokens(request: Request, name: bytes, lower: bool = True) -> list[str]:
    """The comma-separated tokens of every ``name`` header of ``request``."""
    return split_tokens(request.requestHeaders.getRawHeaders(name, []), lower)


def wants_upgrade(request: Request) -> bool:
    """Whether the request asks to switch to WebSocket."""
    return "websocket" in header_tokens(request, b"upgrade")
