"""Plain HTTP routes through the resource tree: handler calls, return values, errors, mounting."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.web.resource import Resource

from crowtwist import Crow, Response

from .conftest import LogCapture
from .memory import MemoryClient


class Text(Resource):
    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body

    def render_GET(self, request: Any) -> bytes:
        return self.body


def get(app_or_root: Any, path: str, method: str = "GET") -> MemoryClient:
    raw = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
    return MemoryClient(app_or_root, raw=raw)


def test_handler_return_values() -> None:
    """str, bytes, dict and Response become responses with matching content types."""
    app = Crow()
    app.route("/")(lambda req: "hello")
    app.route("/bytes")(lambda req: b"\x00\x01")
    app.route("/json")(lambda req: {"a": 1})
    app.route("/teapot")(lambda req: Response(418, "short and stout", {"X-Tea": "yes"}))
    root = get(app, "/")
    assert (root.status, root.body, root.headers["content-type"]) == (200, b"hello", "text/plain; charset=utf-8")
    assert get(app, "/bytes").body == b"\x00\x01"
    reply = get(app, "/json")
    assert json.loads(reply.body) == {"a": 1} and reply.headers["content-type"] == "application/json"
    teapot = get(app, "/teapot")
    assert (teapot.status, teapot.body, teapot.headers["x-tea"]) == (418, b"short and stout", "yes")


def test_typed_params_are_converted() -> None:
    """handler(request, *params) gets the typed segments converted, as in Crow's /add/<int>/<int>."""
    app = Crow()

    @app.route("/add/<int>/<int>")
    def add(req: Any, a: int, b: int) -> str:
        return str(a + b)

    app.route("/half/<double>")(lambda x: str(x / 2))  # Crow's form without the request
    assert get(app, "/add/40/2").body == b"42"
    assert get(app, "/add/-1/1").body == b"0"
    assert get(app, "/half/3").body == b"1.5"
    assert get(app, "/add/x/2").status == 404


def test_unknown_path_is_404() -> None:
    """Unknown paths get a plain 404."""
    app = Crow()
    app.route("/a")(lambda req: "a")
    reply = get(app, "/b")
    assert reply.status == 404 and b"Twisted" not in reply.body


def test_methods_and_405() -> None:
    """A route answers its methods (HEAD with GET); others get 405 with Allow."""
    app = Crow()
    app.route("/r").methods("GET", "POST")(lambda req: req.method)
    assert get(app, "/r", "POST").body == b"POST"
    head = get(app, "/r", "HEAD")
    assert head.status == 200 and head.body == b""
    reply = get(app, "/r", "DELETE")
    assert reply.status == 405 and reply.headers["allow"] == "GET, HEAD, OPTIONS, POST"


def test_async_and_deferred_handlers() -> None:
    """Handlers may be async def or return a Deferred."""
    app = Crow()
    gate: Deferred[str] = Deferred()

    async def later(req: Any) -> dict[str, int]:
        return {"n": 1}

    app.route("/async")(later)
    app.route("/deferred")(lambda req: succeed("done"))
    app.route("/gate")(lambda req: gate)
    assert get(app, "/async").body == b'{"n": 1}'
    assert get(app, "/deferred").body == b"done"
    client = get(app, "/gate")
    assert client.transport.value() == b""
    gate.callback("opened")
    assert client.transport.value().endswith(b"opened")


def test_handler_that_raises_is_500_and_logged(logs: LogCapture) -> None:
    """A handler that raises gets a plain 500 (no traceback page) and one logged traceback."""
    app = Crow()
    app.route("/boom")(lambda req: 1 / 0)
    app.route("/odd")(lambda req: 3.5)
    reply = get(app, "/boom")
    assert reply.status == 500 and b"ZeroDivision" not in reply.body
    assert get(app, "/odd").status == 500
    assert len(logs.failures()) == 2


def test_mounted_under_an_existing_tree() -> None:
    """app.resource() mounts with putChild; routes resolve relative to the mount point."""
    app = Crow()
    app.route("/")(lambda req: "crow root")
    app.route("/n/<int>")(lambda req, n: str(n))
    site_root = Resource()
    site_root.putChild(b"other", Text(b"other"))
    site_root.putChild(b"crow", app.resource())

    class Wrapper:
        def resource(self) -> Resource:
            return site_root

    assert get(Wrapper(), "/crow/n/5").body == b"5"
    assert get(Wrapper(), "/crow/").body == b"crow root"
    assert get(Wrapper(), "/crow").headers["location"] == "/crow/"
    assert get(Wrapper(), "/other").body == b"other"
    assert get(Wrapper(), "/n/5").status == 404


def test_user_children_answer_where_no_route_does() -> None:
    """Resources put under app.resource() serve paths that no route takes."""
    app = Crow()
    app.route("/a")(lambda req: "a")
    root = app.resource()
    root.putChild(b"static", Text(b"file"))

    class Wrapper:
        def resource(self) -> Resource:
            return root

    assert get(Wrapper(), "/static").body == b"file"
    assert get(Wrapper(), "/a").body == b"a"


def test_http_and_websocket_on_one_path() -> None:
    """One path may carry an HTTP rule and a WebSocket rule; the upgrade header picks."""
    app = Crow()
    app.route("/both")(lambda req: "page")
    app.route("/both").websocket()
    assert get(app, "/both").body == b"page"
    assert MemoryClient(app, "/both").status == 101
