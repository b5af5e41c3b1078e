"""Reading HTTP header tokens from twisted.web requests."""

from __future__ import annotations

import re
from collections.abc import Iterable

from twisted.web.server import Request

__all__ = ["header_tokens", "split_tokens", "valid_host", "wants_upgrade"]

# RFC 9110 section 7.2: uri-host [ ":" port ], the host an IP literal or a reg-name.
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::[0-9]*)?\Z")


def valid_host(value: bytes) -> bool:
    """Whether ``value`` is a well-formed ``Host`` header value."""
    return _HOST.match(value) is not None


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


def wants_upgrade(request: Request, method: bytes | None = None, version: bytes | None = None) -> bool:
    """Whether the request asks to switch to WebSocket.

    Only an HTTP/1.1 ``GET`` can: a server must ignore ``Upgrade`` in an
    HTTP/1.0 request (RFC 9110 section 7.8), and RFC 6455 upgrades only
    ``GET``, so a route with HTTP handlers serves other methods itself.
    ``method`` and ``version``: the request's, when twisted.web has not given
    them to the request yet.
    """
    if (request.method if method is None else method) != b"GET":
        return False
    if (request.clientproto if version is None else version) != b"HTTP/1.1":
        return False
    return "websocket" in header_tokens(request, b"upgrade")
