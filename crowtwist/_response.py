"""``Response`` (Crow's ``crow::response``) and the HTTP errors a handler may raise.

Plain data: nothing here writes to a request.  ``_http.write_response`` puts a
``Response`` on twisted.web's ``Request``.
"""

from __future__ import annotations

import json
import os
from http import HTTPStatus
from typing import Any
from collections.abc import Callable

__all__ = ["BadRequest", "Body", "HTTPError", "Response", "moved", "moved_perm", "redirect", "redirect_perm"]

Body = str | bytes | dict[str, Any] | list[Any] | None


class HTTPError(Exception):
    """Raise from a handler (or middleware) to answer ``code`` with ``message`` as the body.

    Unlike any other exception, it is not logged as a failure: it is an answer.
    """

    def __init__(self, code: int, message: str = "", headers: dict[str, str] | None = None) -> None:
        if not isinstance(code, int) or not 400 <= code <= 599:
            raise ValueError(f"HTTPError code must be an int from 400 to 599, not {code!r}")
        super().__init__(message)
        self.code = code
        """The status answered, 400 to 599."""
        self.message = message
        """The answer's text, after the code."""
        self.headers = dict(headers or {})
        """Headers the answer carries."""

    def response(self) -> Response:
        """The answer this error stands for: its code, its message as text."""
        text = self.message or HTTPStatus(self.code).phrase if self.code in _KNOWN else self.message
        return Response(self.code, f"{self.code} {text}\n" if text else f"{self.code}\n", dict(self.headers))


class BadRequest(HTTPError):
    """400 with a message saying what was wrong with the request (a body that is not JSON, say)."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


_KNOWN = frozenset(status.value for status in HTTPStatus)


class Response:
    """Crow's ``crow::response``: a status code, headers and a body.

    A ``str`` body is sent as UTF-8 text, ``bytes`` as they are, a ``dict``
    or ``list`` as JSON; ``Content-Type`` follows unless a header sets it.
    ``headers`` holds one value per name (``set_header``); ``add_header``
    adds another line of the same name (``Set-Cookie``).

    Middleware gets the response being built: ``end()`` in ``before_handle``
    answers with it at once, and the route's handler is not called.
    """

    __slots__ = ("code", "body", "headers", "extra_headers", "static_file", "compressed", "_completed", "_on_end")

    def __init__(self, code: int | Body = 200, body: Body = b"", headers: dict[str, str] | None = None) -> None:
        if isinstance(code, (str, bytes, dict, list)) and body == b"":
            body = code  # Crow's response(body)
            code = 200
        if isinstance(code, bool) or not isinstance(code, int):
            raise TypeError(f"a response code must be an int, not {type(code).__name__}")
        if not 100 <= code <= 999:
            raise ValueError(f"a response code must be from 100 to 999, not {code}")
        self.code = code
        """The status code."""
        self.body: Body = body
        """``str`` (UTF-8 text), ``bytes``, a ``dict``/``list`` (JSON) or ``None``."""
        self.headers: dict[str, str] = dict(headers or {})
        """One value per header name; further lines of a name are in ``extra_headers``."""
        self.extra_headers: list[tuple[str, str]] = []
        """Further lines of a header already in ``headers`` (``add_header``), in order."""
        self.static_file: str | None = None
        """A file to answer with instead of ``body`` (``set_static_file_info``)."""
        self.compressed = True
        """Whether the body may be gzipped (Crow's ``res.compressed``); ``False`` for pages
        mixing secrets with text an attacker controls (BREACH)."""
        self._completed = False
        self._on_end: Callable[[], object] | None = None

    def __repr__(self) -> str:
        return f"<Response {self.code} {self.headers!r} {self.body!r:.60}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Response):
            return NotImplemented
        return (self.code, self.body, self.headers, self.extra_headers, self.static_file) == (
            other.code, other.body, other.headers, other.extra_headers, other.static_file)

    __hash__ = None  # type: ignore[assignment]  # mutable

    # Headers, by Crow's names; names match case-insensitively, as HTTP's do.

    def _name(self, name: str) -> str | None:
        lowered = name.lower()
        for key in self.headers:
            if key.lower() == lowered:
                return key
        return None

    def set_header(self, name: str, value: str) -> None:
        """Set one header, replacing every value of the same name."""
        _check_header(name, value)
        key = self._name(name)
        if key is not None:
            del self.headers[key]
        lowered = name.lower()
        self.extra_headers = [(k, v) for k, v in self.extra_headers if k.lower() != lowered]
        self.headers[name] = value

    def add_header(self, name: str, value: str) -> None:
        """Add a header line, keeping those of the same name (as ``Set-Cookie`` needs)."""
        _check_header(name, value)
        if self._name(name) is None:
            self.headers[name] = value
        else:
            self.extra_headers.append((name, value))

    def get_header_value(self, name: str) -> str:
        """The first value of header ``name``, or ``""`` (Crow's)."""
        key = self._name(name)
        return "" if key is None else self.headers[key]

    def header_lines(self) -> list[tuple[str, str]]:
        """Every header line, ``headers`` first, then ``extra_headers``."""
        return [*self.headers.items(), *self.extra_headers]

    # The body.

    def write(self, data: str | bytes) -> None:
        """Append to the body (Crow's ``res.write``)."""
        body = self.body
        if body is None:
            body = b""
        if isinstance(body, (dict, list)):
            raise TypeError("cannot write() to a response whose body is JSON data")
        if isinstance(data, str):
            self.body = (body if isinstance(body, str) else body.decode("utf-8")) + data
        elif isinstance(body, str):
            self.body = body.encode("utf-8") + bytes(data)
        else:
            self.body = body + bytes(data)

    def end(self, body: str | bytes | None = None) -> None:
        """Mark the response complete, after appending ``body`` (Crow's ``res.end``)."""
        if body is not None:
            self.write(body)
        if self._completed:
            return
        self._completed = True
        if self._on_end is not None:
            self._on_end()

    def on_end(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` when ``end()`` is first called (how a ``(req, res)`` handler's answer is sent)."""
        self._on_end = callback

    def clear(self) -> None:
        """Back to an empty 200 (Crow's ``res.clear``)."""
        self.code = 200
        self.body = b""
        self.headers = {}
        self.extra_headers = []
        self.static_file = None
        self._completed = False

    def is_completed(self) -> bool:
        """Whether ``end()`` was called."""
        return self._completed

    def set_static_file_info(self, path: str | os.PathLike[str]) -> None:
        """Answer with the file at ``path`` (streamed; 404 if it is not a readable file)."""
        self.static_file = os.fspath(path)

    # Redirects, with Crow's codes.

    def redirect(self, location: str) -> None:
        """307 Temporary Redirect to ``location`` (the method and body are kept)."""
        self._redirect(307, location)

    def redirect_perm(self, location: str) -> None:
        """308 Permanent Redirect to ``location`` (the method and body are kept)."""
        self._redirect(308, location)

    def moved(self, location: str) -> None:
        """302 Found: ``location``, usually fetched with GET."""
        self._redirect(302, location)

    def moved_perm(self, location: str) -> None:
        """301 Moved Permanently to ``location``."""
        self._redirect(301, location)

    def _redirect(self, code: int, location: str) -> None:
        self.code = code
        self.set_header("Location", location)

    def encoded(self) -> tuple[bytes, str | None]:
        """The body's bytes and the content type that goes with them."""
        body = self.body
        if body is None:
            return b"", None
        if isinstance(body, bytes):
            return body, "application/octet-stream" if body else None
        if isinstance(body, str):
            return body.encode("utf-8"), "text/plain; charset=utf-8"
        # RFC 8259 has no NaN or Infinity: such a body is the handler's error (a 500), not invalid JSON sent.
        return json.dumps(body, allow_nan=False).encode("utf-8"), "application/json"


def _check_header(name: str, value: str) -> None:
    # A CR or LF would end the header early: response splitting.
    if not isinstance(name, str) or not isinstance(value, str):
        raise TypeError("header names and values must be str")
    if not name or any(c in name for c in "\r\n:") or "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"invalid header {name!r}: {value!r}")


def _redirecting(code: int, location: str) -> Response:
    response = Response(code)
    response._redirect(code, location)
    return response


def redirect(location: str) -> Response:
    """A 307 to ``location`` (Crow's ``res.redirect``)."""
    return _redirecting(307, location)


def redirect_perm(location: str) -> Response:
    """A 308 to ``location`` (Crow's ``res.redirect_perm``)."""
    return _redirecting(308, location)


def moved(location: str) -> Response:
    """A 302 to ``location`` (Crow's ``res.moved``)."""
    return _redirecting(302, location)


def moved_perm(location: str) -> Response:
    """A 301 to ``location`` (Crow's ``res.moved_perm``)."""
    return _redirecting(301, location)
