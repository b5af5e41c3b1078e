"""HTTP routes against hostile and unlucky requests: encodings, giant segments, streams behind middleware."""

from __future__ import annotations

import socket
from typing import Any
from collections.abc import Iterator

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.web.server import NOT_DONE_YET
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from crowtwist import CORSHandler, Crow, Middleware, Response

from .conftest import LogCapture
from .http_client import fetch


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` as the connection's first read and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk


class Guard(Middleware):
    """Crow's idiom: a prefix of req.url needs a token."""

    def before_handle(self, req: Any, res: Response, ctx: Any) -> None:
        if req.url.startswith(("/private", "/ws/private")) and req.get_header_value("Authorization") != "Bearer ok":
            res.code = 401
            res.end("no\n")


def ws_status(port: int, path: str) -> int:
    """101 if websockets' client got in, else the status it was refused with."""
    try:
        with connect(f"ws://127.0.0.1:{port}{path}", open_timeout=10):
            return 101
    except InvalidStatus as refused:
        return int(refused.response.status_code)


@pytest_twisted.inlineCallbacks
def test_a_percent_encoded_path_meets_the_same_guard(site_port: Any) -> Iterator[Any]:
    """/%70rivate routes as /private, so req.url reads /private and the guard refuses it, HTTP and WebSocket."""
    app = Crow(Guard())
    app.route("/private/data")(lambda req: f"private {req.url}")
    app.route("/ws/private").websocket().onopen(lambda conn: conn.send_text("open"))
    port = site_port(app)
    for path in ("/private/data", "/%70rivate/data", "/%70%72%69vate/data"):
        assert (yield fetch(port, "GET", path)).status == 401, path
    allowed = yield fetch(port, "GET", "/%70rivate/data", {"Authorization": "Bearer ok"})
    assert allowed.body == b"private /private/data"
    for path in ("/ws/private", "/ws/%70rivate"):
        assert (yield deferToThread(ws_status, port, path)) == 401, path


@pytest_twisted.inlineCallbacks
def test_cors_rules_see_the_routed_path(site_port: Any) -> Iterator[Any]:
    """An ignored CORS prefix stays ignored for /%61dmin: no credentialed cross-origin read."""
    cors = CORSHandler()
    app = Crow(cors)
    cors.prefix("/admin").ignore()
    cors.global_().origin("*").allow_credentials()
    app.route("/admin/secret")(lambda: "admin-secret")
    port = site_port(app)
    for path in ("/admin/secret", "/%61dmin/secret"):
        reply = yield fetch(port, "GET", path, {"Origin": "https://evil.example"})
        assert reply.body == b"admin-secret" and reply.header("access-control-allow-origin") is None, path


@pytest_twisted.inlineCallbacks
def test_a_giant_integer_segment_is_404(site_port: Any, logs: LogCapture) -> Iterator[Any]:
    """A 5,000-digit <int> segment matches nothing (404), on the fast path's first read and on twisted.web's."""
    app = Crow()
    app.route("/int/<int>")(lambda n: str(n))
    app.route("/uint/<uint>")(lambda n: str(n))
    app.route("/ws/<int>").websocket()
    port = site_port(app)
    for route in (b"/int/", b"/uint/", b"/ws/"):
        head = b"GET " + route + b"9" * 5000 + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        reply = yield deferToThread(raw_exchange, port, head)
        assert reply.startswith(b"HTTP/1.1 404 "), reply[:80]
    assert (yield fetch(port, "GET", "/int/" + "0" * 5000 + "42")).body == b"42"
    assert not logs.failures()


@pytest_twisted.inlineCallbacks
def test_a_stream_behind_middleware_unwinds_before_its_first_write(site_port: Any) -> Iterator[Any]:
    """A NOT_DONE_YET handler's answer carries what after_handle and CORSHandler add; no text/html default."""
    unwound: list[str] = []

    class Stamp(Middleware):
        def after_handle(self, req: Any, res: Response, ctx: Any) -> None:
            unwound.append(req.url)
            res.set_header("X-After", str(res.code))

    cors = CORSHandler()
    cors.global_().origin("https://a.example")
    app = Crow(cors, Stamp())

    @app.route("/stream")
    def stream(req: Any) -> int:
        req.setResponseCode(202)
        req.write(b"one\n")
        reactor.callLater(0.01, lambda: (req.write(b"two\n"), req.finish()))  # type: ignore[attr-defined]
        return NOT_DONE_YET

    @app.route("/later")
    def later(req: Any) -> int:
        reactor.callLater(0.01, lambda: (req.write(b"late\n"), req.finish()))  # type: ignore[attr-defined]
        return NOT_DONE_YET

    port = site_port(app)
    reply = yield fetch(port, "GET", "/stream", {"Origin": "https://a.example"})
    assert (reply.status, reply.body) == (202, b"one\ntwo\n")
    assert reply.header("x-after") == "202" and reply.header("access-control-allow-origin") == "https://a.example"
    assert reply.header("server") == "crowtwist" and reply.header("content-type") is None
    reply = yield fetch(port, "GET", "/later")
    assert reply.body == b"late\n" and reply.header("x-after") == "200"
    assert unwound == ["/stream", "/later"]


@pytest_twisted.inlineCallbacks
def test_json_numbers_that_are_no_json(site_port: Any, logs: LogCapture) -> Iterator[Any]:
    """1e999 and a 5,000-digit integer are 400s without Python's words; a handler's NaN is a logged 500."""
    app = Crow()
    app.route("/json").methods("POST")(lambda req: {"got": req.json()})
    app.route("/nan")(lambda: {"x": float("nan")})
    port = site_port(app)
    reply = yield fetch(port, "POST", "/json", body=b"1e999")
    assert reply.status == 400 and b"too large" in reply.body
    reply = yield fetch(port, "POST", "/json", body=b"[" + b"7" * 5000 + b"]")
    assert reply.status == 400 and b"set_int_max_str_digits" not in reply.body
    assert (yield fetch(port, "POST", "/json", body=b'{"a": 1.5}')).body == b'{"got": {"a": 1.5}}'
    assert (yield fetch(port, "GET", "/nan")).status == 500
    assert len(logs.failures()) == 1


@pytest_twisted.inlineCallbacks
def test_host_must_be_there_once(site_port: Any) -> Iterator[Any]:
    """RFC 9112 section 3.2: an HTTP/1.1 request without Host, or with two, is 400; HTTP/1.0 needs none."""
    app = Crow()
    app.route("/")(lambda: "ok")
    port = site_port(app)
    for head in (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
                 b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n"):
        assert (yield deferToThread(raw_exchange, port, head)).startswith(b"HTTP/1.1 400 ")
    reply = yield deferToThread(raw_exchange, port, b"GET / HTTP/1.0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 200 ") and reply.endswith(b"ok")


@pytest_twisted.inlineCallbacks
def test_a_redirect_location_is_a_uri_reference(site_port: Any) -> Iterator[Any]:
    """A backslash or a space in the path is percent-encoded in the trailing-slash redirect's Location."""
    app = Crow()
    app.route("/<string>/")(lambda s: s)
    port = site_port(app)
    reply = yield deferToThread(raw_exchange, port, b"GET /\\evil.example HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert b"\r\nLocation: /%5Cevil.example/\r\n" in reply


@pytest_twisted.inlineCallbacks
def test_header_values_are_read_as_utf8(site_port: Any) -> Iterator[Any]:
    """A UTF-8 header value reads as its text (what Crow hands on as bytes); other bytes one character each."""
    app = Crow()
    app.route("/")(lambda req: req.get_header_value("X-Name") + "|" + req.get_header_value("X-Other"))
    port = site_port(app)
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Name: \xc3\xa9\r\nX-Other: \xe9\r\nConnection: close\r\n\r\n"
    reply = yield deferToThread(raw_exchange, port, head)
    assert reply.endswith("é|é".encode())
