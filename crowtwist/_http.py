"""Plain HTTP rules: calling the handler, and turning what it returns into a response."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any
from collections.abc import Callable, Mapping, Sequence

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.internet.defer import CancelledError
from twisted.web.server import NOT_DONE_YET, Request

from ._handlers import Handler, as_deferred
from ._response import Response
from ._routing import ParamValue

__all__ = ["HttpRule", "Response", "render_http", "write_response"]

log = Logger(namespace="crowtwist")

_KNOWN_CODES = frozenset(status.value for status in HTTPStatus)

def as_response(result: object) -> Response:
    """What a handler returned, as a ``Response``."""
    if isinstance(result, Response):
        return result
    if result is None or isinstance(result, (str, bytes, dict, list)):
        return Response(200, result)
    raise TypeError(
        f"a route handler must return str, bytes, dict, list, a Response or None, not {type(result).__name__}"
    )


def write_response(request: Request, response: Response, finish: bool = False) -> bytes | int:
    """Put ``response`` on ``request``; return the body for ``render``, or finish it now."""
    body, content_type = response.encoded()
    phrase = HTTPStatus(response.code).phrase if response.code in _KNOWN_CODES else "Unknown"
    request.setResponseCode(response.code, phrase.encode("ascii"))
    # twisted.web's default Server header names its version.
    request.setHeader(b"server", b"crowtwist")
    names = {name.lower() for name in response.headers}
    for name in names:
        request.responseHeaders.removeHeader(name)
    for name, value in response.header_lines():
        request.responseHeaders.addRawHeader(name, value)
    if content_type is not None and "content-type" not in names:
        request.setHeader(b"content-type", content_type)
    if not finish:
        return body
    if request.channel is not None:
        request.setHeader(b"content-length", str(len(body)))
        request.write(body)
        request.finish()
    return NOT_DONE_YET


_SERVER_ERROR = Response(500, "500 Internal Server Error\n")


class HttpRule:
    """A plain HTTP route: its handler and the methods it answers.

    Like Crow's, the handler may take the request or leave it out:
    ``handler(request, *params)`` or ``handler(*params)``.
    """

    __slots__ = ("pattern", "methods", "handler", "_with_request")

    def __init__(self, pattern: str, param_count: int, methods: frozenset[str], func: Callable[..., Any]) -> None:
        self.pattern = pattern
        self.methods = methods
        self.handler = Handler(func, "route handler", param_count, param_count + 1)
        self._with_request = self.handler.takes == param_count + 1

    def __repr__(self) -> str:
        return f"<HttpRule {self.pattern!r} {sorted(self.methods)}>"

    def call(self, request: Request, params: Sequence[ParamValue]) -> Any:
        """Call the handler for ``request``."""
        if self._with_request:
            return self.handler.func(request, *params)
        return self.handler.func(*params)


def render_http(rules: Mapping[str, HttpRule], request: Request, params: Sequence[ParamValue]) -> bytes | int:
    """Answer ``request`` with the rule for its method, or 405 with ``Allow``."""
    method = request.method.decode("ascii", "replace")
    rule = rules.get("GET" if method == "HEAD" else method)
    if rule is None:
        allow = sorted(set(rules) | ({"HEAD"} if "GET" in rules else set()))
        return write_response(request, Response(405, "405 Method Not Allowed\n", {"Allow": ", ".join(allow)}))
    try:
        result = rule.call(request, params)
    except Exception:
        return _failed(Failure(), request, rule, finish=False)
    pending = as_deferred(result)
    if pending is None:
        return _respond(result, request, rule, finish=False)
    # A client that leaves while the handler is pending (a long poll, say)
    # cancels it (Deferred.cancel(); a coroutine gets CancelledError), as Klein does.
    request.notifyFinish().addErrback(lambda _: pending.cancel())
    pending.addCallbacks(
        _respond,
        _failed,
        callbackArgs=(request, rule),
        callbackKeywords={"finish": True},
        errbackArgs=(request, rule),
        errbackKeywords={"finish": True},
    )
    return NOT_DONE_YET


def _respond(result: object, request: Request, rule: HttpRule, *, finish: bool) -> bytes | int:
    if finish and request.channel is None:
        return NOT_DONE_YET  # the client has gone: nobody to answer
    try:
        response = as_response(result)
    except TypeError:
        return _failed(Failure(), request, rule, finish=finish)
    return write_response(request, response, finish=finish)


def _failed(failure: Failure, request: Request, rule: HttpRule, *, finish: bool) -> bytes | int:
    if finish and request.channel is None:
        if not failure.check(CancelledError):
            log.failure("handler of route {route} failed after its client left", failure, route=rule.pattern)
        return NOT_DONE_YET
    log.failure("handler of route {route} failed", failure, route=rule.pattern)
    return write_response(request, _SERVER_ERROR, finish=finish)


class NotFound(Resource):
    """404 without twisted.web's HTML page."""

    isLeaf = True

    def __init__(self) -> None:
        Resource.__init__(self)

    def render(self, request: Request) -> bytes:
        result = write_response(request, Response(404, "404 Not Found\n"))
        assert isinstance(result, bytes)
        return result
