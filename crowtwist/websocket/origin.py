"""``allowed_origins``: which browser pages may open a WebSocket.

Browsers send ``Origin`` with every WebSocket handshake but, unlike for
fetches, apply no same-origin rule to the answer, so a server that cares must
check it.  A pattern is ``scheme://host[:port]`` or just ``host[:port]`` (any
scheme); ``*`` in the host matches any run of characters, so
``https://*.example.com`` allows every subdomain over TLS.  A request without
``Origin`` (not a browser) is allowed; ``Origin: null`` (sandboxed frames,
files) follows ``allow_null_origin``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = ["OriginPolicy"]


def _pattern(text: str) -> re.Pattern[str]:
    text = text.strip().lower()
    if not text:
        raise ValueError("an allowed origin pattern may not be empty")
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "[a-z][a-z0-9+.-]*", text
    else:
        scheme = re.escape(scheme)
    if "/" in rest:
        raise ValueError(f"allowed origin {text!r} has a path; an origin is scheme://host[:port]")
    host = ".*".join(re.escape(part) for part in rest.split("*"))
    return re.compile(f"{scheme}://{host}")


class OriginPolicy:
    """Compiled ``allowed_origins`` patterns."""

    __slots__ = ("_patterns", "allow_null")

    def __init__(self, patterns: Iterable[str], allow_null: bool = True) -> None:
        self._patterns = tuple(_pattern(p) for p in patterns)
        self.allow_null = allow_null

    def allows(self, origin: str | None) -> bool:
        """Whether a handshake with this ``Origin`` header value may proceed."""
        if origin is None:
            return True
        origin = origin.strip().lower()
        if origin == "null":
            return self.allow_null
        parts = urlsplit(origin)
        if not parts.scheme or not parts.netloc or parts.path not in ("", "/"):
            return False
        normal = f"{parts.scheme}://{parts.netloc}"
        return any(p.fullmatch(normal) for p in self._patterns)
