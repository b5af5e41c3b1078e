"""``allowed_origins``: which browser pages may open a WebSocket.

Browsers send ``Origin`` with every WebSocket handshake but, unlike for
fetches, apply no same-origin rule to the answer, so a server that cares must
check it.  A pattern is ``scheme://host[:port]`` or just ``host[:port]`` (any
scheme); ``*`` in the host matches one or more dot-separated labels, so
``https://*.example.com`` allows every subdomain over TLS, ``*`` as the port
any port, and a pattern of just ``*`` any origin.  A request without
``Origin`` (not a browser) is allowed.  ``Origin: null`` is what a sandboxed
frame, a ``file:`` page or a cross-origin redirect sends, whatever site it
comes from: it is refused unless the list names it (``"null"``).  Where no
list is in force, every origin is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["NULL", "OriginPolicy"]

NULL = "null"
"""The pattern that allows ``Origin: null``."""

# One host as browsers serialize it (RFC 6454: lower case, IDNs in punycode),
# or a bracketed IPv6 literal.
_LABEL = r"[a-z0-9_-]+"
_HOST = rf"(?:\[[0-9a-f:.]+\]|{_LABEL}(?:\.{_LABEL})*)"
_SCHEME = r"[a-z][a-z0-9+.-]*"
_ORIGIN = re.compile(rf"{_SCHEME}://{_HOST}(?::[0-9]{{1,5}})?")
_HOST_PATTERN = re.compile(r"(?:\[[0-9a-f:.]+\]|[a-z0-9_.*-]+)")
_PORT_PATTERN = re.compile(r":(?:\*|[0-9]{1,5})")


def _pattern(text: str) -> re.Pattern[str]:
    text = text.strip().lower()
    if not text:
        raise ValueError("an allowed origin pattern may not be empty")
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme_re, rest = _SCHEME, text
    elif re.fullmatch(_SCHEME, scheme) is None:
        raise ValueError(f"allowed origin {text!r} has no valid scheme")
    else:
        scheme_re = re.escape(scheme)
    if "/" in rest:
        raise ValueError(f"allowed origin {text!r} has a path; an origin is scheme://host[:port]")
    if rest == "*":
        return re.compile(f"{scheme_re}://{_HOST}(?::[0-9]+)?")
    if rest.startswith("["):
        close = rest.find("]") + 1
        host, port = rest[:close], rest[close:]
    else:
        host, colon, port = rest.partition(":")
        port = colon + port
    if host.endswith("."):
        raise ValueError(f"allowed origin {text!r} ends its host with a dot; browsers send the host without it")
    if not host or _HOST_PATTERN.fullmatch(host) is None or (port and _PORT_PATTERN.fullmatch(port) is None):
        raise ValueError(f"allowed origin {text!r} is not scheme://host[:port]")
    host_re = f"{_LABEL}(?:\\.{_LABEL})*".join(re.escape(part) for part in host.split("*"))
    port_re = "" if not port else ":[0-9]+" if port == ":*" else re.escape(port)
    return re.compile(f"{scheme_re}://{host_re}{port_re}")


class OriginPolicy:
    """Compiled ``allowed_origins`` patterns.

    ``allow_null``: also allow ``Origin: null`` (as naming ``"null"`` in the
    patterns does).
    """

    __slots__ = ("_patterns", "allow_null")

    def __init__(self, patterns: Iterable[str], allow_null: bool = False) -> None:
        compiled: list[re.Pattern[str]] = []
        for pattern in patterns:
            if pattern.strip().lower() == NULL:
                allow_null = True
            else:
                compiled.append(_pattern(pattern))
        self._patterns = tuple(compiled)
        self.allow_null = allow_null

    def allows(self, origin: str | None) -> bool:
        """Whether a handshake with this ``Origin`` header value may proceed."""
        if origin is None:
            return True
        origin = origin.strip().lower()
        if origin == NULL:
            return self.allow_null
        if origin.endswith("/"):
            origin = origin[:-1]
        if _ORIGIN.fullmatch(origin) is None:
            return False
        return any(p.fullmatch(origin) for p in self._patterns)
