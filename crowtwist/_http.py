"""Plain HTTP rules: fitting a handler to its pattern, and writing what it returns.

A route's handler takes one of Crow's shapes, told apart by how many
positional parameters it has beside the pattern's typed segments (``n``):
``(*params)`` (``n``), ``(req, *params)`` (``n + 1``) or
``(req, res, *params)`` (``n + 2``, Crow's ``response&`` form: the answer
goes when the handler calls ``res.end()``, now or later).  Any other count,
or a parameter annotated with a type its segment cannot give (``int`` for a
``<string>``), is refused when the route is declared, naming the user's file
and line.
"""

from __future__ import annotations

import inspect
import typing
from http import HTTPStatus
from typing import Any
from collections.abc import Callable, Sequence

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ._compress import MIN_SIZE
from ._handlers import positional_arity, user_location
from ._response import Response
from ._routing import DOUBLE, INT, PATH, STRING, UINT, ParamType, ParamValue

__all__ = ["Compressor", "HttpRule", "NotFound", "Response", "as_response", "first_takes_response", "write_response"]

_PHRASES = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}

_PARAMS, _REQ, _REQ_RES, _RES = range(4)

_RESPONSE_NAMES = frozenset({"res", "resp", "response"})


def first_takes_response(func: Callable[..., Any]) -> bool:
    """Whether ``func``'s first parameter is the response (Crow's ``(response&, ...)``): so named, or so annotated."""
    try:
        parameters = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return False
    if not parameters or parameters[0].kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                                    inspect.Parameter.POSITIONAL_OR_KEYWORD):
        return False
    first = parameters[0]
    annotation = first.annotation
    if isinstance(annotation, str):
        return annotation.rpartition(".")[2] == "Response"
    return first.name in _RESPONSE_NAMES or annotation is Response

# What a typed segment hands the handler, for checking annotations.
_GIVES: dict[ParamType, type] = {INT: int, UINT: int, DOUBLE: float, STRING: str, PATH: str}


def as_response(result: object) -> Response:
    """What a handler returned, as a ``Response``: ``str``, ``bytes``, JSON data, a status, ``None``."""
    if isinstance(result, Response):
        return result
    if result is None or isinstance(result, (str, bytes, dict, list)):
        return Response(200, result)
    if isinstance(result, int) and not isinstance(result, bool):
        if not 100 <= result <= 999:
            raise ValueError(f"a route handler returned {result}, which is no HTTP status (100 to 999)")
        return Response(result, b"")
    raise TypeError(
        "a route handler must return str, bytes, dict, list, an int status, a Response or None,"
        f" not {type(result).__name__}"
    )


Compressor = Callable[[Request, bytes, "str | None"], bytes]
"""Given the request, the body and its content type: the bytes to send (setting ``Content-Encoding``)."""


def write_response(
    request: Request, response: Response, finish: bool = False, compress: Compressor | None = None
) -> bytes | int:
    """Put ``response`` on ``request``; return the body for ``render``, or finish it now.

    ``compress``: called with the body when it has content, to gzip it when
    the client accepts it and it is worth it (``_compress.compress_body``).
    """
    body, content_type = response.encoded()
    code = response.code
    request.setResponseCode(code, _PHRASES.get(code, b"Unknown"))
    # twisted.web's default Server header names its version.
    request.setHeader(b"server", b"crowtwist")
    headers = request.responseHeaders
    names: set[str] = set()
    if response.headers:
        names = {name.lower() for name in response.headers}
        for name in names:
            headers.removeHeader(name)
        for name, value in response.header_lines():
            headers.addRawHeader(name, value)
    if content_type is not None and "content-type" not in names:
        request.setHeader(b"content-type", content_type)
    if code in (204, 304) or code < 200:
        body = b""  # RFC 9110 6.4.1: these have no content
    elif compress is not None and len(body) >= MIN_SIZE and response.compressed:
        declared = headers.getRawHeaders(b"content-type")
        body = compress(request, body, declared[0].decode("latin-1") if declared else None)
    if not finish:
        return body
    if request.channel is not None:
        if code not in (204, 304) and code >= 200:
            request.setHeader(b"content-length", str(len(body)))
        request.write(body)
        request.finish()
    return NOT_DONE_YET


def _annotation_clash(func: Callable[..., Any], types: Sequence[ParamType], takes: int) -> str | None:
    """A parameter annotated with what it cannot be given, described; else ``None``.

    A typed segment's parameter must not be annotated with another type than
    the segment gives; the request's or response's (the ones before them)
    not with ``int``, ``float`` or ``str``, which would mean the handler
    counts the segments differently than the pattern does.
    """
    try:
        hints = typing.get_type_hints(func)
        positional = [
            p for p in inspect.signature(func).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except Exception:  # unresolvable annotations, builtins: nothing to check
        return None
    parameters = positional[takes - len(types):takes]
    for parameter in positional[:takes - len(types)]:
        wanted = hints.get(parameter.name)
        if wanted in (int, float, str):
            return (
                f"parameter {parameter.name!r} is annotated {wanted.__name__}, but it is given the"
                f" {'response' if parameter.name in _RESPONSE_NAMES else 'request'}: the pattern has"
                f" {len(types)} typed segment(s)"
            )
    for parameter, kind in zip(parameters, types):
        wanted = hints.get(parameter.name)
        given = _GIVES[kind]
        if wanted not in (int, float, str) or wanted is given or (wanted is float and given is int):
            continue
        return f"parameter {parameter.name!r} is annotated {wanted.__name__} but <{kind.name}> gives {given.__name__}"
    return None


class HttpRule:
    """A plain HTTP route's handler, fitted to its pattern, and the methods it answers."""

    __slots__ = ("pattern", "methods", "func", "shape", "middlewares")

    def __init__(
        self,
        pattern: str,
        types: Sequence[ParamType],
        methods: frozenset[str],
        func: Callable[..., Any],
        middlewares: tuple[Any, ...] = (),
        where: str | None = None,
    ) -> None:
        where = where or user_location()
        if not callable(func):
            raise TypeError(f"{where}: route {pattern!r}: the handler must be callable, not {type(func).__name__}")
        n = len(types)
        arity = positional_arity(func)
        name = getattr(func, "__qualname__", repr(func))
        if arity is None:
            arity = n + 1  # *args: given the request and the parameters
        if arity not in (n, n + 1, n + 2):
            segments = " ".join(f"<{t.name}>" for t in types) or "no typed segments"
            raise TypeError(
                f"{where}: route {pattern!r} ({segments}): handler {name} takes {arity} positional"
                f" parameter(s); it must take {n} (the segments), {n + 1} (req or res, then the segments)"
                f" or {n + 2} (req, res, then the segments)"
            )
        clash = _annotation_clash(func, types, arity)
        if clash is not None:
            raise TypeError(f"{where}: route {pattern!r}: handler {name}: {clash}")
        self.pattern = pattern
        self.methods = methods
        self.func = func
        self.shape = (_PARAMS, _REQ, _REQ_RES)[arity - n]
        if self.shape == _REQ and first_takes_response(func):
            self.shape = _RES  # Crow's (response&, params...)
        self.middlewares = middlewares
        """The middleware run around this rule beside the app's: its blueprints', then its own."""

    def __repr__(self) -> str:
        return f"<HttpRule {self.pattern!r} {sorted(self.methods)}>"

    @property
    def takes_response(self) -> bool:
        """Whether the handler is given the response (Crow's ``(req, res, ...)`` or ``(res, ...)``) and ends it."""
        return self.shape in (_REQ_RES, _RES)

    @property
    def takes_request(self) -> bool:
        """Whether the handler is given the request."""
        return self.shape in (_REQ, _REQ_RES)

    def call(self, req: object, res: Response | None, params: Sequence[ParamValue]) -> Any:
        """Call the handler in its shape."""
        shape = self.shape
        if shape == _PARAMS:
            return self.func(*params)
        if shape == _REQ:
            return self.func(req, *params)
        if shape == _RES:
            return self.func(res, *params)
        return self.func(req, res, *params)


class NotFound(Resource):
    """404 without twisted.web's HTML page."""

    isLeaf = True

    def __init__(self) -> None:
        Resource.__init__(self)

    def render(self, request: Request) -> bytes:
        result = write_response(request, Response(404, "404 Not Found\n"))
        assert isinstance(result, bytes)
        return result
