"""Response, HTTPError and the rarer ways through a request's exchange, with plain calls and in memory."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed

from crowtwist import BadRequest, Crow, HTTPError, Middleware, Response, moved, moved_perm, redirect, redirect_perm

from .memory import MemoryClient


def get(app: Crow, path: str, method: str = "GET", headers: str = "") -> MemoryClient:
    raw = f"{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: 0\r\n\r\n".encode()
    return MemoryClient(app, raw=raw)


def test_response_headers_are_case_insensitive_and_repeatable() -> None:
    """set_header replaces any case of a name, add_header keeps both lines, get_header_value reads the first."""
    response = Response(200, "x", {"X-One": "1"})
    response.set_header("x-one", "2")
    assert response.headers == {"x-one": "2"}
    response.add_header("Set-Cookie", "a=1")
    response.add_header("set-cookie", "b=2")
    assert response.header_lines() == [("x-one", "2"), ("Set-Cookie", "a=1"), ("set-cookie", "b=2")]
    assert response.get_header_value("SET-COOKIE") == "a=1" and response.get_header_value("none") == ""
    response.set_header("Set-Cookie", "c=3")
    assert response.header_lines() == [("x-one", "2"), ("Set-Cookie", "c=3")]
    for name, value in (("X-Bad", "a\r\nInjected: 1"), ("Bad:Name", "v"), ("", "v"), ("X", "nul\0")):
        with pytest.raises(ValueError):
            response.set_header(name, value)
    with pytest.raises(TypeError):
        response.set_header("X", 1)  # type: ignore[arg-type]


def test_response_body_write_end_and_equality() -> None:
    """write appends str or bytes, end completes once and calls its callback once; JSON bodies refuse write."""
    response = Response()
    response.write("a")
    response.write(b"b")
    assert response.body == b"ab"
    text = Response(200, "x")
    text.write(b"y")
    text.write("z")
    assert text.body == "xyz"
    none = Response(200, None)
    none.write("n")
    assert none.body == "n"
    ended: list[int] = []
    text.on_end(lambda: ended.append(1))
    text.end("!")
    text.end()
    assert text.is_completed() and text.body == "xyz!" and ended == [1]
    with pytest.raises(TypeError):
        Response(200, {"a": 1}).write("x")
    assert Response(200, "a") == Response(200, "a") and Response(200, "a") != Response(201, "a")
    assert Response().__eq__(object()) is NotImplemented
    assert "Response 200" in repr(Response())
    for bad in (True, 99, 1000, 2.5):
        with pytest.raises((TypeError, ValueError)):
            Response(bad)  # type: ignore[arg-type]


def test_redirect_helpers_and_errors() -> None:
    """The redirect helpers carry Crow's codes; HTTPError answers its code and message."""
    assert [(r.code, r.get_header_value("location")) for r in (redirect("/a"), redirect_perm("/b"), moved("/c"), moved_perm("/d"))] == [
        (307, "/a"), (308, "/b"), (302, "/c"), (301, "/d")]
    assert HTTPError(404).response().body == "404 Not Found\n"
    assert HTTPError(499, "").response().body == "499\n"
    assert BadRequest("why").response() == Response(400, "400 why\n")
    for code in (200, 600, "404"):
        with pytest.raises(ValueError):
            HTTPError(code)  # type: ignore[arg-type]


def test_a_response_handler_that_returns_or_fails_later() -> None:
    """A (req, res) handler may return its answer instead of ending res; its async failure is a 500."""
    app = Crow()

    @app.route("/returns")
    def returns(req: Any, res: Response) -> str:
        return "returned"

    async def ends_later(req: Any, res: Response) -> None:
        res.end("ended in a coroutine")

    async def fails(req: Any, res: Response) -> None:
        raise RuntimeError("x")

    app.route("/coroutine")(ends_later)
    app.route("/fails")(fails)
    assert get(app, "/returns").body == b"returned"
    assert get(app, "/coroutine").body == b"ended in a coroutine"
    assert get(app, "/fails").status == 500


def test_errors_from_middleware_and_catchalls() -> None:
    """HTTPError from before_handle answers; async catch-alls and exception handlers answer; failing ones 500."""

    class Guard(Middleware):
        def before_handle(self, req: Any, res: Response, ctx: Any) -> None:
            if req.url == "/guarded":
                raise HTTPError(403, "no entry")

        def after_handle(self, req: Any, res: Response, ctx: Any) -> Deferred[None]:
            res.set_header("X-After", "async")
            return succeed(None)

    app = Crow(Guard())
    app.route("/guarded")(lambda: "never")
    app.route("/raise")(lambda: 1 / 0)

    @app.catchall_route()
    def missing(req: Any) -> Deferred[str]:
        if req.url == "/broken":
            return fail(RuntimeError("catch-all broke"))
        return succeed("async miss")

    @app.exception_handler
    def handle(exc: Exception) -> Deferred[Any]:
        return succeed(None)  # None: the default 500

    reply = get(app, "/guarded")
    assert (reply.status, reply.body, reply.headers["x-after"]) == (403, b"403 no entry\n", "async")
    assert get(app, "/elsewhere").body == b"async miss"
    assert get(app, "/broken").status == 500
    assert get(app, "/raise").status == 500


def test_exception_handler_that_raises_or_returns_junk() -> None:
    """An exception handler that raises, or returns what is no response, gives the generic 500."""
    app = Crow()
    app.route("/a")(lambda: 1 / 0)
    app.exception_handler(lambda exc: {1})
    assert get(app, "/a").status == 500
    other = Crow()
    other.route("/a")(lambda: 1 / 0)

    def broken(exc: Exception, req: Any) -> None:
        raise KeyError("x")

    other.exception_handler(broken)
    assert get(other, "/a").status == 500


def test_middleware_headers_reach_an_upgrade_refusal() -> None:
    """Headers middleware set are on onaccept's refusal; an upgrade request to an HTTP-only path is plain HTTP."""

    class Stamp(Middleware):
        def after_handle(self, req: Any, res: Response, ctx: Any) -> None:
            res.set_header("X-Stamp", "yes")

    app = Crow(Stamp())
    app.route("/ws").websocket().onaccept(lambda req: Response(409, "busy"))
    upgrade = ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
    reply = get(app, "/ws", headers=upgrade)
    assert (reply.status, reply.body, reply.headers["x-stamp"]) == (409, b"busy", "yes")


def test_crows_response_first_forms() -> None:
    """(res, *params) handlers and (res) catch-alls are given the response, as Crow's response& forms are."""
    app = Crow()

    @app.route("/add/<int>/<int>")
    def add(res: Response, a: int, b: int) -> None:
        res.write(str(a + b))
        res.end()

    @app.route("/named/<int>")
    def named(res, n):  # type: ignore[no-untyped-def]
        res.end(f"n={n}")

    @app.catchall_route()
    def missing(res: Response) -> None:
        res.body = f"caught {res.code}"
        res.end()

    assert get(app, "/add/1/2").body == b"3"
    assert get(app, "/named/5").body == b"n=5"
    assert (get(app, "/elsewhere").status, get(app, "/elsewhere").body) == (404, b"caught 404")


def test_the_request_parameter_annotated_as_a_segment_is_refused() -> None:
    """def f(a: int, b: int) on a one-segment pattern is refused: a would be given the request."""
    app = Crow()

    def another(a: int, b: int) -> str:
        return str(a + b)

    with pytest.raises(TypeError, match="annotated int, but it is given the request"):
        app.route("/another/<int>")(another)


def test_response_body_form_clear_and_compressed() -> None:
    """Response("text") is a 200 with that body; clear() empties it; compressed=False opts out of gzip."""
    assert Response("text") == Response(200, "text")
    assert Response({"a": 1}).body == {"a": 1}
    response = Response(404, "x", {"A": "b"})
    response.add_header("A", "c")
    response.end()
    response.clear()
    assert response == Response() and not response.is_completed()
    app = Crow()

    @app.route("/secret")
    def secret() -> Response:
        page = Response("token " * 500)
        page.compressed = False
        return page

    app.route("/open")(lambda: "open " * 500)
    accepts = "Accept-Encoding: gzip\r\n"
    assert "content-encoding" not in get(app, "/secret", headers=accepts).headers
    assert get(app, "/open", headers=accepts).headers["content-encoding"] == "gzip"


def test_a_handler_that_fails_after_writing_drops_the_connection() -> None:
    """A handler that wrote part of its answer and then raised is cut off, never completed with a 500 body."""
    app = Crow()

    @app.route("/half")
    def half(req: Any) -> None:
        req.write(b"partial")
        raise RuntimeError("after writing")

    client = get(app, "/half")
    assert client.status == 200 and b"500" not in client.body
    assert client.transport.disconnecting


def test_getters_and_the_callable_prefix() -> None:
    """app.port() and app.bindaddr() read back; bp.prefix is a str and callable, as Crow's bp.prefix() is."""
    from crowtwist import Blueprint

    app = Crow().port(8080).bindaddr("0.0.0.0")
    assert (app.port(), app.bindaddr()) == (8080, "0.0.0.0")
    bp = Blueprint("api")
    assert bp.prefix == "/api" and bp.prefix() == "/api"
