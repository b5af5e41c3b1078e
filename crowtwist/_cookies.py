"""Crow's ``crow::CookieParser``: the request's cookies in a jar, cookies to set sent as ``Set-Cookie``.

``before_handle`` reads the ``Cookie`` header into ``ctx.jar``; the handler
(or a later middleware) reads ``ctx.get_cookie(name)`` and queues cookies with
``ctx.set_cookie(name, value)``, whose attributes chain as in Crow
(``.path("/").max_age(120)``); ``after_handle`` adds one ``Set-Cookie`` line
for each, in the order they were set.

Parsing is lenient, as a browser's ``Cookie`` header is whatever cookies it
was given: a pair that cannot be read is skipped, never an error (a client's
bad header must not cost a 500).  Setting is strict: a name or value that
RFC 6265 does not allow raises ``ValueError`` at once, where the mistake is,
rather than sending a cookie a browser would drop or misread.
"""

from __future__ import annotations

import enum
import re
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any, TypeAlias, overload

from ._middleware import Middleware

__all__ = ["Cookie", "CookieContext", "CookieParser", "SameSitePolicy", "parse_cookie_header"]


# RFC 9110's token (RFC 6265's cookie-name) and RFC 6265's cookie-octet: no
# CTLs, space, DQUOTE, comma, semicolon or backslash, ASCII only.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_COOKIE_OCTETS = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*\Z")
# An attribute value (av-octet: any CHAR but CTLs and ";"), kept to ASCII so
# the header's bytes do not depend on an encoding.
_ATTRIBUTE = re.compile(r"[\x20-\x3a\x3c-\x7e]*\Z")
_DOMAIN = re.compile(r"\.?[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\Z")
# What makes a received pair unreadable: a control character other than HTAB
# (browsers refuse to store such cookies, RFC 6265bis 5.6).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class SameSitePolicy(enum.Enum):
    """The ``SameSite`` attribute's values; ``None_`` because ``None`` is Python's keyword."""

    Strict = "Strict"
    Lax = "Lax"
    None_ = "None"


class Cookie:
    """Crow's ``CookieParser::Cookie``: a name, a value and the attributes of one ``Set-Cookie``.

    The attribute methods return the cookie, to chain.  ``dump()`` is the
    ``Set-Cookie`` value, attributes in Crow's order.  A name starting with
    ``__Secure-`` gets ``Secure``, and one starting with ``__Host-`` gets
    ``Secure`` and ``Path=/`` and refuses a ``Domain``, since browsers drop
    such cookies otherwise (RFC 6265bis 4.1.3).
    """

    SameSitePolicy: TypeAlias = SameSitePolicy

    __slots__ = ("_name", "_value", "_domain", "_path", "_secure", "_httponly", "_expires", "_max_age", "_same_site")

    def __init__(self, name: str, value: str = "") -> None:
        _check_name(name)
        _check_value(name, value)
        self._name = name
        self._value = value
        self._domain = ""
        self._path = ""
        self._secure = False
        self._httponly = False
        self._expires: datetime | None = None
        self._max_age: int | None = None
        self._same_site: SameSitePolicy | None = None
        lowered = name.lower()  # browsers match the prefixes case-insensitively
        if lowered.startswith(("__secure-", "__host-")):
            self._secure = True
        if lowered.startswith("__host-"):
            self._path = "/"

    def __repr__(self) -> str:
        return f"<Cookie {self.dump()!r}>"

    @property
    def name(self) -> str:
        """The cookie's name."""
        return self._name

    @property
    def value(self) -> str:
        """The cookie's value, as ``get_cookie`` reads it back."""
        return self._value

    def _host_only(self) -> bool:
        return self._name.lower().startswith("__host-")

    def path(self, path: str) -> Cookie:
        """``Path``: the URL path (from ``/``) the cookie is sent for."""
        if not isinstance(path, str) or not path.startswith("/") or not _ATTRIBUTE.match(path):
            raise ValueError(
                f"cookie {self._name!r}: a path starts with '/' and has no ';', control or non-ASCII"
                f" characters, not {path!r}"
            )
        if self._host_only() and path != "/":
            raise ValueError(f"cookie {self._name!r}: a __Host- cookie's path is '/', not {path!r}")
        self._path = path
        return self

    def domain(self, domain: str) -> Cookie:
        """``Domain``: send the cookie to this host and its subdomains too."""
        if self._host_only():
            raise ValueError(f"cookie {self._name!r}: a __Host- cookie has no Domain")
        if not isinstance(domain, str) or not _DOMAIN.match(domain):
            raise ValueError(
                f"cookie {self._name!r}: a domain is a host name (letters, digits, '-' and '.';"
                f" IDNA names in their xn-- form), not {domain!r}"
            )
        self._domain = domain
        return self

    def max_age(self, seconds: int) -> Cookie:
        """``Max-Age``: seconds until the cookie expires; 0 or less deletes it."""
        if isinstance(seconds, bool) or not isinstance(seconds, int):
            raise ValueError(f"cookie {self._name!r}: max_age takes an int of seconds, not {seconds!r}")
        self._max_age = seconds
        return self

    def expires(self, when: datetime) -> Cookie:
        """``Expires``: when the cookie expires, an aware ``datetime`` (sent in GMT)."""
        if not isinstance(when, datetime) or when.tzinfo is None or when.utcoffset() is None:
            raise ValueError(
                f"cookie {self._name!r}: expires takes an aware datetime (say, with tzinfo=timezone.utc),"
                f" not {when!r}"
            )
        self._expires = when.astimezone(timezone.utc)
        return self

    def secure(self) -> Cookie:
        """``Secure``: send the cookie over HTTPS only."""
        self._secure = True
        return self

    def httponly(self) -> Cookie:
        """``HttpOnly``: keep the cookie from the page's scripts."""
        self._httponly = True
        return self

    def same_site(self, policy: SameSitePolicy) -> Cookie:
        """``SameSite``; ``None_`` also sets ``Secure``, which browsers require of it."""
        if not isinstance(policy, SameSitePolicy):
            raise ValueError(f"cookie {self._name!r}: same_site takes a Cookie.SameSitePolicy, not {policy!r}")
        self._same_site = policy
        if policy is SameSitePolicy.None_:
            self._secure = True
        return self

    def dump(self) -> str:
        """The ``Set-Cookie`` header's value (Crow's ``dump``): an empty value is sent as ``""``."""
        parts = [f"{self._name}={self._value or chr(34) * 2}"]
        if self._domain:
            parts.append(f"Domain={self._domain}")
        if self._path:
            parts.append(f"Path={self._path}")
        if self._secure:
            parts.append("Secure")
        if self._httponly:
            parts.append("HttpOnly")
        if self._expires is not None:
            parts.append(f"Expires={format_datetime(self._expires, usegmt=True)}")
        if self._max_age is not None:
            parts.append(f"Max-Age={self._max_age}")
        if self._same_site is not None:
            parts.append(f"SameSite={self._same_site.value}")
        return "; ".join(parts)


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not _TOKEN.match(name):
        raise ValueError(
            f"invalid cookie name {name!r}: a name is a token (letters, digits and !#$%&'*+-.^_`|~)"
        )


def _check_value(name: str, value: object) -> None:
    if not isinstance(value, str) or not _COOKIE_OCTETS.match(value):
        raise ValueError(
            f"invalid value for cookie {name!r}: {value!r} (no spaces, control or non-ASCII characters,"
            ' \'"\', \',\', \';\' or \'\\\'; encode such data first, say with urllib.parse.quote)'
        )


def parse_cookie_header(header: str, jar: dict[str, str] | None = None) -> dict[str, str]:
    """The cookies in a ``Cookie`` header value, added to ``jar`` (a new dict if none).

    RFC 6265 5.4: ``name=value`` pairs separated by ``;``, spaces and tabs
    trimmed around names and values, one pair of double quotes around a value
    removed (Crow's, and the RFC's cookie-value; no backslash escapes).  The
    first pair of a name wins: browsers send the most specific cookie (longest
    path) first.  A pair without ``=``, with an empty name or with a control
    character is skipped.
    """
    if jar is None:
        jar = {}
    for pair in header.split(";"):
        name, equals, value = pair.partition("=")
        name = name.strip(" \t")
        value = value.strip(" \t")
        if not equals or not name or _CONTROL.search(name) or _CONTROL.search(value):
            continue
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        jar.setdefault(name, value)
    return jar


class CookieContext:
    """The per-request context of ``CookieParser``: the cookies received and those to set."""

    def __init__(self) -> None:
        self.jar: dict[str, str] = {}
        """The request's cookies, by name."""
        self._to_add: list[Cookie] = []

    def __repr__(self) -> str:
        return f"<CookieParser.Context jar={self.jar!r} set={[c.dump() for c in self._to_add]!r}>"

    def get_cookie(self, name: str) -> str:
        """The value of the request's cookie ``name``, or ``""`` (Crow's)."""
        return self.jar.get(name, "")

    @overload
    def set_cookie(self, name: str, value: str = "") -> Cookie: ...

    @overload
    def set_cookie(self, name: Cookie) -> Cookie: ...

    def set_cookie(self, name: str | Cookie, value: str = "") -> Cookie:
        """Send cookie ``name`` with ``value`` (or a ``Cookie`` made beforehand); chain its attributes."""
        cookie = name if isinstance(name, Cookie) else Cookie(name, value)
        self._to_add.append(cookie)
        return cookie

    @property
    def cookies_to_set(self) -> list[Cookie]:
        """The cookies queued so far, in order (a copy)."""
        return list(self._to_add)


class CookieParser(Middleware):
    """Crow's ``crow::CookieParser``: list it before any middleware that reads cookies.

    Every ``Cookie`` header is read (HTTP/2 may split it into several, RFC
    9113 8.2.3) if the request offers ``get_header_values(name)``; otherwise
    the one ``get_header_value("Cookie")`` gives.
    """

    Context: TypeAlias = CookieContext
    Cookie: TypeAlias = Cookie
    SameSitePolicy: TypeAlias = SameSitePolicy

    def before_handle(self, req: Any, res: Any, ctx: CookieContext) -> None:
        """Fill ``ctx.jar`` from the request's ``Cookie`` headers."""
        values = getattr(req, "get_header_values", None)
        headers = values("Cookie") if callable(values) else [req.get_header_value("Cookie")]
        for header in headers:
            if isinstance(header, str):
                parse_cookie_header(header, ctx.jar)

    def after_handle(self, req: Any, res: Any, ctx: CookieContext) -> None:
        """Add a ``Set-Cookie`` line for each cookie the handler set."""
        for cookie in ctx.cookies_to_set:
            res.add_header("Set-Cookie", cookie.dump())
