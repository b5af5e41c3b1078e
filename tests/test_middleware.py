"""Middleware (Crow's before_handle / after_handle), blueprints, CORS and cookies, over real HTTP and WebSocket."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from crowtwist import Blueprint, CookieParser, CORSHandler, Crow, Middleware, Response

from .conftest import LogCapture
from .http_client import fetch


class Trace(Middleware):
    """Records its calls in a shared list; may end the response or wait."""

    class Context:
        def __init__(self) -> None:
            self.note = ""

    def __init__(self, name: str, log: list[str], end: int | None = None, wait: bool = False) -> None:
        self.name = name
        self.log = log
        self.end = end
        self.wait = wait

    def before_handle(self, req: Any, res: Response, ctx: Any) -> Any:
        self.log.append(f"before {self.name}")
        ctx.note = self.name
        if self.end is not None and req.get_header_value("X-Stop") == self.name:
            res.code = self.end
            res.end(f"stopped by {self.name}\n")
        if self.wait:
            return deferLater(reactor, 0.01, lambda: None)
        return None

    def after_handle(self, req: Any, res: Response, ctx: Any) -> Any:
        self.log.append(f"after {self.name} {ctx.note}")
        res.add_header("X-Trail", self.name)
        if self.wait:
            return deferLater(reactor, 0.01, lambda: None)
        return None


def echo(port: int, path: str, headers: dict[str, str] | None = None) -> str:
    """One text message through websockets' client."""
    with connect(f"ws://127.0.0.1:{port}{path}", additional_headers=headers, open_timeout=10) as ws:
        ws.send("ping")
        reply = ws.recv(timeout=10)
        assert isinstance(reply, str)
        return reply


def refused_status(port: int, path: str, headers: dict[str, str]) -> int:
    """The HTTP status websockets' client got instead of a 101."""
    with pytest.raises(InvalidStatus) as caught:
        with connect(f"ws://127.0.0.1:{port}{path}", additional_headers=headers, open_timeout=10):
            pass
    return int(caught.value.response.status_code)


@pytest_twisted.inlineCallbacks
def test_order_and_unwinding(site_port: Any) -> Iterator[Any]:
    """before_handle runs app, blueprint, route in order; after_handle in reverse, each with its own context."""
    log: list[str] = []
    app = Crow(Trace("app", log, end=401))
    bp = Blueprint("bp").middlewares(Trace("bp", log, end=403, wait=True))
    bp.route("/r").middlewares(Trace("route", log))(lambda: "handled")
    app.register_blueprint(bp)
    port = site_port(app)
    reply = yield fetch(port, "GET", "/bp/r")
    assert reply.body == b"handled" and reply.headers["x-trail"] == ["route", "bp", "app"]
    assert log == ["before app", "before bp", "before route", "after route route", "after bp bp", "after app app"]
    del log[:]
    reply = yield fetch(port, "GET", "/bp/r", {"X-Stop": "bp"})
    assert (reply.status, reply.body) == (403, b"stopped by bp\n")
    assert log == ["before app", "before bp", "after bp bp", "after app app"]
    del log[:]
    reply = yield fetch(port, "GET", "/nowhere", {"X-Stop": "app"})
    assert reply.status == 401 and log == ["before app", "after app app"]
    del log[:]
    assert (yield fetch(port, "GET", "/nowhere")).status == 404
    assert log == ["before app", "after app app"]  # app-wide middleware sees misses too


@pytest_twisted.inlineCallbacks
def test_failing_middleware(site_port: Any, logs: LogCapture) -> Iterator[Any]:
    """A before_handle that raises answers 500 and unwinds those before it; an after_handle that raises, 500."""
    log: list[str] = []

    class Broken(Middleware):
        def __init__(self, where: str) -> None:
            self.where = where

        def before_handle(self, req: Any, res: Response, ctx: Any) -> None:
            if self.where == "before":
                raise RuntimeError("before broke")

        def after_handle(self, req: Any, res: Response, ctx: Any) -> None:
            if self.where == "after":
                raise RuntimeError("after broke")

    app = Crow(Trace("outer", log))
    app.route("/b").middlewares(Broken("before"))(lambda: "never")
    app.route("/a").middlewares(Broken("after"))(lambda: "handled")
    port = site_port(app)
    assert (yield fetch(port, "GET", "/b")).status == 500
    assert log == ["before outer", "after outer outer"]
    assert (yield fetch(port, "GET", "/a")).status == 500
    assert len(logs.failures()) == 2


def test_what_is_no_middleware_is_refused() -> None:
    """An object with neither method is refused when given, naming the line."""
    with pytest.raises(TypeError, match="is no middleware"):
        Crow(object())
    with pytest.raises(TypeError, match="is no middleware"):
        Crow().route("/").middlewares(42)


@pytest_twisted.inlineCallbacks
def test_get_middleware_and_get_context(site_port: Any) -> Iterator[Any]:
    """app.get_middleware finds the instance to configure; app.get_context the request's context."""
    log: list[str] = []
    app = Crow(Trace("app", log))
    assert isinstance(app.get_middleware(Trace), Trace)
    with pytest.raises(LookupError):
        app.get_middleware(CORSHandler)
    app.route("/")(lambda req: app.get_context(Trace, req).note)
    assert (yield fetch(site_port(app), "GET", "/")).body == b"app"


@pytest_twisted.inlineCallbacks
def test_middleware_runs_before_a_websocket_upgrade(site_port: Any) -> Iterator[Any]:
    """Auth in before_handle refuses an upgrade with its own answer, or lets websockets' client in."""

    class Auth(Middleware):
        def before_handle(self, req: Any, res: Response, ctx: Any) -> None:
            if req.get_header_value("Authorization") != "Bearer ok":
                res.code = 401
                res.set_header("WWW-Authenticate", "Bearer")
                res.end("who are you?\n")

    app = Crow(Auth())
    app.route("/ws").websocket().onmessage(lambda conn, data, is_binary: conn.send_text("pong " + data))
    port = site_port(app)
    assert (yield deferToThread(refused_status, port, "/ws", {})) == 401
    assert (yield deferToThread(echo, port, "/ws", {"Authorization": "Bearer ok"})) == "pong ping"


@pytest_twisted.inlineCallbacks
def test_websocket_routes_in_blueprints(site_port: Any) -> Iterator[Any]:
    """A WebSocket route declared in a blueprint before it was registered serves under the prefix, its middleware first."""
    log: list[str] = []
    bp = Blueprint("live").middlewares(Trace("bp", log, end=403))
    rule = bp.route("/echo").websocket().onmessage(lambda conn, data, is_binary: conn.send_text(data))
    sub = Blueprint("deep")
    sub.route("/<int>").websocket().onmessage(lambda conn, data, is_binary: conn.send_text(f"{conn.params[0]} {data}"))
    bp.register_blueprint(sub)
    app = Crow()
    app.register_blueprint(bp)
    assert rule.pattern == "/live/echo" and rule in app.websocket_rules
    port = site_port(app)
    assert (yield deferToThread(echo, port, "/live/echo")) == "ping"
    assert (yield deferToThread(echo, port, "/live/deep/5")) == "5 ping"
    assert (yield deferToThread(refused_status, port, "/live/echo", {"X-Stop": "bp"})) == 403
    assert log.count("before bp") == 3


@pytest_twisted.inlineCallbacks
def test_blueprints(site_port: Any, tmp_path: Path) -> Iterator[Any]:
    """Prefixes nest; routes may come after registration; the innermost catch-all answers; static_dir is served."""
    (tmp_path / "asset.css").write_text("body{}")
    api = Blueprint("api", static_dir=tmp_path)
    v1 = Blueprint("/v1/")
    api.register_blueprint(v1)
    api.route("/")(lambda: "api root")
    v1.route("/users/<int>")(lambda n: {"user": n})
    app = Crow()
    app.register_blueprint(api)
    v1.route("/late")(lambda: "declared after registering")

    @api.catchall_route()
    def api_missing(req: Any, res: Response) -> str:
        return f"api has no {req.url}"

    @app.catchall_route()
    def missing() -> Response:
        return Response(404, "app-wide miss")

    assert v1.prefix == "/api/v1" and api.prefix == "/api"
    port = site_port(app)
    assert (yield fetch(port, "GET", "/api/")).body == b"api root"
    assert (yield fetch(port, "GET", "/api")).status == 301
    assert (yield fetch(port, "GET", "/api/v1/users/3")).body == b'{"user": 3}'
    assert (yield fetch(port, "GET", "/api/v1/late")).body == b"declared after registering"
    assert (yield fetch(port, "GET", "/api/static/asset.css")).body == b"body{}"
    assert (yield fetch(port, "GET", "/api/v1/nope")).body == b"api has no /api/v1/nope"
    assert (yield fetch(port, "GET", "/other")).body == b"app-wide miss"


def test_blueprint_misuse() -> None:
    """Bad prefixes, registering twice, cycles and late middleware are refused with a clear message."""
    for prefix in ("", "/", "a/<int>", "a//b"):
        with pytest.raises(ValueError):
            Blueprint(prefix)
    bp = Blueprint("x")
    app = Crow().register_blueprint(bp)
    with pytest.raises(ValueError, match="registered already"):
        app.register_blueprint(bp)
    with pytest.raises(ValueError, match="before registering"):
        bp.middlewares(Trace("late", []))
    outer, inner = Blueprint("o"), Blueprint("i")
    outer.register_blueprint(inner)
    with pytest.raises(ValueError):
        inner.register_blueprint(outer)
    with pytest.raises(TypeError):
        app.register_blueprint("x")  # type: ignore[arg-type]
    bp.route("/dup")(lambda: "1")
    with pytest.raises(ValueError, match="already exists"):
        bp.route("/dup")(lambda: "2")


@pytest_twisted.inlineCallbacks
def test_cors_preflight_and_request(site_port: Any) -> Iterator[Any]:
    """CORSHandler answers a browser's preflight (automatic OPTIONS) and marks responses, for listed origins only."""
    app = Crow(CORSHandler())
    cors = app.get_middleware(CORSHandler)
    cors.global_().origin("https://a.example", "https://b.example").methods("GET", "POST").allow_credentials()
    app.route("/data").methods("POST")(lambda: "data")
    port = site_port(app)
    preflight = yield fetch(port, "OPTIONS", "/data", {
        "Origin": "https://a.example", "Access-Control-Request-Method": "POST"})
    assert preflight.status == 204
    assert preflight.header("access-control-allow-origin") == "https://a.example"
    assert preflight.header("access-control-allow-credentials") == "true"
    stranger = yield fetch(port, "POST", "/data", {"Origin": "null"}, b"")
    assert stranger.body == b"data" and stranger.header("access-control-allow-origin") is None
    refused = yield fetch(port, "GET", "/data", {"Origin": "https://b.example"})
    assert refused.status == 405 and refused.header("access-control-allow-origin") == "https://b.example"


@pytest_twisted.inlineCallbacks
def test_cookies(site_port: Any) -> Iterator[Any]:
    """CookieParser reads the request's cookies and sends the ones set, one Set-Cookie line each."""
    app = Crow(CookieParser())

    @app.route("/")
    def index(req: Any) -> str:
        ctx = app.get_context(CookieParser, req)
        ctx.set_cookie("seen", "yes").path("/").max_age(60).httponly()
        ctx.set_cookie("n", str(int(ctx.get_cookie("n") or 0) + 1))
        return f"user={ctx.get_cookie('user')}"

    reply = yield fetch(site_port(app), "GET", "/", {"Cookie": 'user="ann"; junk; n=4'})
    assert reply.body == b"user=ann"
    assert sorted(reply.headers["set-cookie"]) == ["n=5", "seen=yes; Path=/; HttpOnly; Max-Age=60"]


@pytest_twisted.inlineCallbacks
def test_async_middleware_and_a_client_that_leaves(site_port: Any) -> Iterator[Any]:
    """A pending before_handle is cancelled when its client leaves, and nothing more runs."""
    started: Deferred[None] = Deferred()
    cancelled: Deferred[None] = Deferred()
    log: list[str] = []

    class Slow(Middleware):
        def before_handle(self, req: Any, res: Response, ctx: Any) -> Deferred[None]:
            started.callback(None)
            return Deferred(lambda _: cancelled.callback(None))

        def after_handle(self, req: Any, res: Response, ctx: Any) -> None:
            log.append("after")

    app = Crow(Slow())
    app.route("/")(lambda: log.append("handler") or "x")
    port = site_port(app)
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol

    client = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Protocol())
    client.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    yield started
    client.transport.loseConnection()
    yield cancelled
    assert log == []
