"""Crow's ``crow::CORSHandler``: CORS response headers, by rules chosen by URL prefix.

``cors.global_()`` is the rule for every path no other rule claims (Crow's
``global()``; ``global`` is a Python keyword), ``cors.prefix("/api")`` and
``cors.blueprint(bp)`` add rules for a part of the site.  As in Crow, the
first rule declared whose prefix matches wins, so a longer prefix must come
before a shorter one that covers it (declaring it after raises
``ValueError``, as it could never match).  A prefix matches whole path
segments: ``/api`` covers ``/api`` and ``/api/x``, not ``/apikeys``.

Each rule sends what Crow's ``CORSRules`` sends (``*`` for origin, methods
and headers by default), in ``after_handle`` so the preflight answer (an
``OPTIONS`` request with ``Access-Control-Request-Method``) gets it too, and
never over a header the handler set.  Where Crow's headers would make
browsers refuse or would trust too much, the Fetch standard is followed:

- With ``allow_credentials()``, ``*`` is never sent as the origin (Fetch
  refuses it): the request's ``Origin`` is echoed, with ``Vary: Origin``; an
  opaque origin (``null``) is not, unless listed.  Preflights get the
  credentials header too (Crow leaves it off ``OPTIONS``), and with
  credentials the ``*`` of ``methods``/``headers``, which Fetch then reads
  as a literal name, is answered with the preflight's requested method and
  headers instead.
- ``origin()`` takes several origins (Crow takes one).  Given more than one,
  the request's ``Origin`` is echoed only when it is one of them (an exact
  match to the browser's serialization), with ``Vary: Origin`` on every
  response of the rule, and no CORS header at all otherwise.  One origin is
  sent as it is to every request, as Crow does; that is safe, as a browser
  compares it with the page's origin.
- Origins are checked when configured: ``scheme://host[:port]``, without a
  path or a trailing ``/`` (``example.com`` alone, as in Crow's docs, never
  matches a browser's ``Origin``), stored lowercase without a default port,
  as browsers send them (RFC 6454 section 6.2).
"""

from __future__ import annotations

import re
from typing import Any

from ._middleware import Middleware

__all__ = ["CORSHandler", "CORSRules"]


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# scheme://host[:port] (RFC 3986's scheme; a host name, IPv4 or a bracketed IPv6 literal).
_ORIGIN = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(?P<port>[0-9]{1,5}))?\Z"
)
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_PATH = re.compile(r"/[\x21-\x7e]*\Z")


def _origin(text: object) -> str:
    """The origin ``text`` names, serialized as a browser would; ``ValueError`` saying what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"a CORS origin is a str, not {text!r}")
    if text == "null":
        return text
    hint = "an origin is scheme://host[:port], like https://example.com"
    if not text.isascii():
        raise ValueError(f"CORS origin {text!r}: {hint}; write an international host name in its xn-- form")
    match = _ORIGIN.match(text)
    if match is None:
        if "://" not in text:
            raise ValueError(f"CORS origin {text!r} has no scheme: {hint}")
        rest = text.split("://", 1)[1]
        for mark, what in (("@", "user name"), ("/", "path (not even a trailing '/')"), ("?", "query"),
                           ("#", "fragment")):
            if mark in rest:
                raise ValueError(f"CORS origin {text!r} has a {what}: {hint}")
        raise ValueError(f"CORS origin {text!r} is not valid: {hint}")
    scheme, host, port = match["scheme"].lower(), match["host"].lower(), match["port"]
    if port is None:
        return f"{scheme}://{host}"
    number = int(port)
    if number > 65535:
        raise ValueError(f"CORS origin {text!r}: the port is from 0 to 65535")
    return f"{scheme}://{host}" if _DEFAULT_PORTS.get(scheme) == number else f"{scheme}://{host}:{number}"


def _serialized(origin: str) -> bool:
    """Whether a request's ``Origin`` is a browser's serialization of a tuple origin (so safe to echo)."""
    try:
        return _origin(origin) == origin and origin != "null"
    except ValueError:
        return False


def _tokens(kind: str, values: tuple[object, ...]) -> list[str]:
    if not values:
        raise ValueError(f"CORS {kind}: give at least one")
    for value in values:
        if not isinstance(value, str) or not _TOKEN.match(value):
            raise ValueError(f"CORS {kind}: {value!r} is not a valid name (a token: no spaces, commas or quotes)")
    return [str(value) for value in values]


def _prefix(prefix: object) -> str:
    if not isinstance(prefix, str) or not _PATH.match(prefix) or "?" in prefix or "#" in prefix:
        raise ValueError(f"a CORS prefix is a URL path starting with '/', without query or spaces, not {prefix!r}")
    return prefix


def _covers(prefix: str, path: str) -> bool:
    """Whether rule ``prefix`` applies to ``path``: whole segments, or anything after a trailing ``/``."""
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path == prefix or path.startswith(prefix + "/")


def _vary_origin(res: Any) -> None:
    """Add ``Origin`` to the response's ``Vary``, in a line of its own, keeping what the handler put there."""
    for name, value in res.header_lines():
        if name.lower() == "vary" and {item.strip().lower() for item in value.split(",")} & {"origin", "*"}:
            return
    res.add_header("Vary", "Origin")


class CORSRules:
    """Crow's ``CORSRules``: the CORS headers for one prefix (or the whole app).

    The setters return the rules, to chain; ``prefix``, ``blueprint`` and
    ``global_`` go on to another rule of the same handler, as in Crow.
    ``methods``, ``headers`` and ``expose`` add to their lists; ``origin``
    replaces its list.
    """

    __slots__ = ("_handler", "_ignore", "_origins", "_methods", "_headers", "_exposed", "_max_age", "_credentials")

    def __init__(self, handler: CORSHandler) -> None:
        self._handler = handler
        self._ignore = False
        self._origins: tuple[str, ...] = ("*",)
        self._methods: list[str] = ["*"]
        self._headers: list[str] = ["*"]
        self._exposed: list[str] = []
        self._max_age = ""
        self._credentials = False

    def __repr__(self) -> str:
        if self._ignore:
            return "<CORSRules ignore>"
        return (
            f"<CORSRules origin={list(self._origins)} methods={self._methods} headers={self._headers}"
            f" expose={self._exposed} max_age={self._max_age or None} credentials={self._credentials}>"
        )

    def origin(self, *origins: str) -> CORSRules:
        """``Access-Control-Allow-Origin``: ``"*"`` (the default), or the origins allowed."""
        if not origins:
            raise ValueError("CORS origin: give at least one origin, or '*'")
        if "*" in origins:
            if len(origins) > 1:
                raise ValueError(f"CORS origin: '*' allows every origin; it cannot be listed with others: {origins!r}")
            self._origins = ("*",)
            return self
        self._origins = tuple(dict.fromkeys(_origin(origin) for origin in origins))
        return self

    def methods(self, *methods: str) -> CORSRules:
        """``Access-Control-Allow-Methods``; ``"*"`` by default (an ``http.HTTPMethod`` is a str too)."""
        self._add(self._methods, _tokens("method", methods))
        return self

    def headers(self, *headers: str) -> CORSRules:
        """``Access-Control-Allow-Headers``: request headers allowed; ``"*"`` by default."""
        self._add(self._headers, _tokens("header", headers))
        return self

    def expose(self, *headers: str) -> CORSRules:
        """``Access-Control-Expose-Headers``: response headers the page may read; none by default."""
        self._add(self._exposed, _tokens("exposed header", headers))
        return self

    def max_age(self, seconds: int) -> CORSRules:
        """``Access-Control-Max-Age``: how long a browser may keep the preflight's answer."""
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 0:
            raise ValueError(f"CORS max_age takes an int of seconds, 0 or more, not {seconds!r}")
        self._max_age = str(seconds)
        return self

    def allow_credentials(self) -> CORSRules:
        """``Access-Control-Allow-Credentials: true``: the page may send and read cookies."""
        self._credentials = True
        return self

    def ignore(self) -> None:
        """Send no CORS header on this rule's paths."""
        self._ignore = True

    def prefix(self, prefix: str) -> CORSRules:
        """The handler's rule for ``prefix`` (see ``CORSHandler.prefix``)."""
        return self._handler.prefix(prefix)

    def blueprint(self, bp: Any) -> CORSRules:
        """The handler's rule for blueprint ``bp`` (see ``CORSHandler.blueprint``)."""
        return self._handler.blueprint(bp)

    def global_(self) -> CORSRules:
        """The handler's global rule."""
        return self._handler.global_()

    @staticmethod
    def _add(items: list[str], new: list[str]) -> None:
        # Crow's add_list_item: the first name replaces the default "*".
        if items == ["*"]:
            items.clear()
        known = {item.lower() for item in items}
        for item in new:
            if item.lower() not in known:
                known.add(item.lower())
                items.append(item)

    def _apply(self, req: Any, res: Any) -> None:
        if self._ignore:
            return
        origin = req.get_header_value("Origin")
        if self._origins == ("*",) and not self._credentials:
            allow = "*"
        elif len(self._origins) == 1 and self._origins != ("*",):
            allow = self._origins[0]
        else:
            # The answer depends on the Origin: caches must keep one per Origin,
            # including for requests without one.
            _vary_origin(res)
            if self._origins == ("*",):
                if not _serialized(origin):
                    return
            elif origin not in self._origins:
                return
            allow = origin
        preflight = req.method == "OPTIONS" and req.get_header_value("Access-Control-Request-Method") != ""
        methods, headers = ", ".join(self._methods), ", ".join(self._headers)
        if preflight and self._credentials:
            if methods == "*":
                methods = _requested(req.get_header_value("Access-Control-Request-Method"))
            if headers == "*":
                headers = _requested(req.get_header_value("Access-Control-Request-Headers"))
        _set_no_override(res, "Access-Control-Allow-Origin", allow)
        if self._credentials:
            _set_no_override(res, "Access-Control-Allow-Credentials", "true")
        _set_no_override(res, "Access-Control-Allow-Methods", methods)
        _set_no_override(res, "Access-Control-Allow-Headers", headers)
        _set_no_override(res, "Access-Control-Expose-Headers", ", ".join(self._exposed))
        _set_no_override(res, "Access-Control-Max-Age", self._max_age)


def _requested(value: str) -> str:
    """A preflight's requested method or header names, if they are tokens, to echo; else ``""``."""
    names = [name.strip() for name in value.split(",")]
    return ", ".join(names) if all(_TOKEN.match(name) for name in names) else ""


def _set_no_override(res: Any, name: str, value: str) -> None:
    """Crow's ``set_header_no_override``: nothing if ``value`` is empty or the header is already set."""
    if value and not res.get_header_value(name):
        res.add_header(name, value)


class CORSHandler(Middleware):
    """Crow's ``crow::CORSHandler``: sets CORS headers on every response, by the rule for its path.

    The global rule sends ``Access-Control-Allow-Origin``, ``-Methods`` and
    ``-Headers`` as ``*`` until changed.
    """

    def __init__(self) -> None:
        self._global = CORSRules(self)
        self._rules: list[tuple[str, CORSRules]] = []

    def __repr__(self) -> str:
        return f"<CORSHandler global={self._global!r} rules={self._rules!r}>"

    def global_(self) -> CORSRules:
        """The rule for paths no prefix rule claims (Crow's ``global()``)."""
        return self._global

    def prefix(self, prefix: str) -> CORSRules:
        """The rule for paths under ``prefix`` (whole segments); the same rule again for the same prefix."""
        prefix = _prefix(prefix)
        for known, rules in self._rules:
            if known == prefix:
                return rules
            if _covers(known, prefix):
                raise ValueError(
                    f"CORS prefix {prefix!r} would never be used: {known!r}, declared before it, covers it"
                    " (the first matching rule wins, as in Crow); declare the longer prefix first"
                )
        rules = CORSRules(self)
        self._rules.append((prefix, rules))
        return rules

    def blueprint(self, bp: Any) -> CORSRules:
        """The rule for a blueprint's paths: those under its ``prefix``."""
        prefix = getattr(bp, "prefix", None)
        if callable(prefix):  # Crow's bp.prefix() form
            prefix = prefix()
        if not isinstance(prefix, str):
            raise ValueError(f"CORS blueprint: {bp!r} has no str prefix")
        return self.prefix(prefix if prefix.startswith("/") else "/" + prefix)

    def rule_for(self, path: str) -> CORSRules:
        """The rule that applies to ``path``: the first prefix rule covering it, else the global one."""
        for prefix, rules in self._rules:
            if _covers(prefix, path):
                return rules
        return self._global

    def after_handle(self, req: Any, res: Any, ctx: Any) -> None:
        """Add the CORS headers of the rule for the request's path."""
        self.rule_for(req.url)._apply(req, res)
