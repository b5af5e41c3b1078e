"""HTTP routes as Crow's ``CROW_ROUTE`` gives them, over real HTTP with the standard library's client."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any
from collections.abc import Iterator

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater
from twisted.web.server import NOT_DONE_YET

from crowtwist import BadRequest, Crow, HTTPError, Response, moved, moved_perm, redirect, redirect_perm

from .conftest import LogCapture
from .http_client import fetch
from .memory import MemoryClient

HERE = os.path.abspath(__file__)


def line_of(marker: str) -> int:
    """The line of this file holding ``marker`` (for errors that must name the user's line)."""
    with open(HERE, encoding="utf-8") as source:
        for number, text in enumerate(source, 1):
            if marker in text and "line_of(" not in text:
                return number
    raise AssertionError(marker)


# Handler shapes and declaration-time checks.


@pytest_twisted.inlineCallbacks
def test_handler_shapes(site_port: Any) -> Iterator[Any]:
    """(), (req), (*params), (req, *params) and (req, res, *params) each get what they ask for."""
    app = Crow()
    app.route("/")(lambda: "none")
    app.route("/req")(lambda req: f"req {req.method} {req.url}")
    app.route("/p/<int>/<string>")(lambda n, s: f"params {n + 1} {s}")
    app.route("/rp/<double>")(lambda req, x: f"{req.method} {x * 2}")

    @app.route("/res/<uint>")
    def with_res(req: Any, res: Response, n: int) -> None:
        res.code = 202
        res.write("ended ")
        res.end(str(n))

    port = site_port(app)
    expected = {"/": "none", "/req": "req GET /req", "/p/41/x": "params 42 x", "/rp/1.5": "GET 3.0", "/res/7": "ended 7"}
    for path, body in expected.items():
        reply = yield fetch(port, "GET", path)
        assert reply.body.decode() == body, path
    assert (yield fetch(port, "GET", "/res/7")).status == 202


def test_a_handler_that_does_not_fit_names_the_declaring_line() -> None:
    """A handler with the wrong number of parameters is refused at declaration, naming this file and line."""
    app = Crow()
    with pytest.raises(TypeError) as caught:
        app.route("/a/<int>/<int>")(lambda a: a)  # MARK-ARITY
    message = str(caught.value)
    assert f"{HERE}:{line_of('MARK-ARITY')}" in message
    assert "takes 1 positional parameter(s)" in message and "<int> <int>" in message


def test_an_annotation_that_clashes_with_its_segment_is_refused() -> None:
    """A parameter annotated int on a <string> segment is refused at declaration, naming the line."""
    app = Crow()

    def handler(name: int) -> str:
        return str(name)

    with pytest.raises(TypeError) as caught:
        app.route("/u/<string>")(handler)  # MARK-ANNOTATION
    assert f"{HERE}:{line_of('MARK-ANNOTATION')}" in str(caught.value)
    assert "annotated int but <string> gives str" in str(caught.value)
    # int where float is given is no clash the other way round: a float parameter takes an int.
    app.route("/f/<int>")(lambda x: x)

    def floats(x: float) -> str:
        return str(x)

    app.route("/g/<int>")(floats)


def test_a_malformed_pattern_names_the_declaring_line() -> None:
    """A bad route pattern or method raises at once with this file and line in the message."""
    app = Crow()
    with pytest.raises(ValueError) as caught:
        app.route("/ws/<integer>")  # MARK-PATTERN
    assert f"{HERE}:{line_of('MARK-PATTERN')}" in str(caught.value)
    with pytest.raises(ValueError, match="is no HTTP method"):
        app.route("/m").methods("GET POST")
    with pytest.raises(TypeError, match="must be callable"):
        app.route("/c")("not a function")  # type: ignore[arg-type]


# Return values.


@pytest_twisted.inlineCallbacks
def test_return_values(site_port: Any) -> Iterator[Any]:
    """str, bytes, int, dict, list, Response, None, Deferreds and coroutines become their responses."""
    app = Crow()

    async def coroutine() -> dict[str, int]:
        await deferLater(reactor, 0, lambda: None)
        return {"later": 1}

    app.route("/str")(lambda: "text")
    app.route("/bytes")(lambda: b"\x00\xff")
    app.route("/int")(lambda: 418)
    app.route("/dict")(lambda: {"a": [1, 2]})
    app.route("/list")(lambda: [1, "two"])
    app.route("/response")(lambda: Response(201, "made", {"X-Made": "yes"}))
    app.route("/none")(lambda: None)
    app.route("/deferred")(lambda: succeed("from a Deferred"))
    app.route("/coroutine")(coroutine)
    port = site_port(app)
    cases = {
        "/str": (200, "text/plain; charset=utf-8", b"text"),
        "/bytes": (200, "application/octet-stream", b"\x00\xff"),
        "/int": (418, None, b""),
        "/dict": (200, "application/json", b'{"a": [1, 2]}'),
        "/list": (200, "application/json", b'[1, "two"]'),
        "/response": (201, "text/plain; charset=utf-8", b"made"),
        "/none": (200, None, b""),
        "/deferred": (200, "text/plain; charset=utf-8", b"from a Deferred"),
        "/coroutine": (200, "application/json", b'{"later": 1}'),
    }
    for path, (status, content_type, body) in cases.items():
        reply = yield fetch(port, "GET", path)
        assert (reply.status, reply.header("content-type"), reply.body) == (status, content_type, body), path
    assert (yield fetch(port, "GET", "/response")).header("x-made") == "yes"


@pytest_twisted.inlineCallbacks
def test_redirects_carry_crows_codes(site_port: Any) -> Iterator[Any]:
    """redirect, redirect_perm, moved and moved_perm answer 307, 308, 302 and 301 with Location."""
    app = Crow()
    app.route("/a")(lambda: redirect("/to-a"))
    app.route("/b")(lambda: redirect_perm("/to-b"))
    app.route("/c")(lambda: moved("/to-c"))
    app.route("/d")(lambda: moved_perm("/to-d"))

    @app.route("/e")
    def method_form(req: Any, res: Response) -> None:
        res.moved_perm("/to-e")
        res.end()

    port = site_port(app)
    for path, code in (("/a", 307), ("/b", 308), ("/c", 302), ("/d", 301), ("/e", 301)):
        reply = yield fetch(port, "GET", path)
        assert (reply.status, reply.header("location")) == (code, "/to" + path.replace("/", "-")), path


@pytest_twisted.inlineCallbacks
def test_what_is_no_response_is_500_and_logged_once(site_port: Any, logs: LogCapture) -> Iterator[Any]:
    """A handler returning a set or status 7 answers 500 with a generic body and one logged failure."""
    app = Crow()
    app.route("/set")(lambda: {1, 2})
    app.route("/seven")(lambda: 7)
    port = site_port(app)
    for path in ("/set", "/seven"):
        reply = yield fetch(port, "GET", path)
        assert (reply.status, reply.body) == (500, b"500 Internal Server Error\n")
    assert len(logs.failures()) == 2


@pytest_twisted.inlineCallbacks
def test_long_poll_answers_later_and_is_cancelled_when_the_client_leaves(site_port: Any) -> Iterator[Any]:
    """A (req, res) handler answers when res.end() comes; an awaited Deferred is cancelled when its client goes."""
    app = Crow()
    waiting: list[Response] = []
    cancelled: Deferred[None] = Deferred()

    @app.route("/poll")
    def poll(req: Any, res: Response) -> None:
        waiting.append(res)

    @app.route("/forever")
    def forever() -> Deferred[str]:
        return Deferred(lambda _: cancelled.callback(None))

    port = site_port(app)
    reply = fetch(port, "GET", "/poll")
    while not waiting:
        yield deferLater(reactor, 0.01, lambda: None)
    waiting[0].end("news")
    assert (yield reply).body == b"news"

    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol

    client = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Protocol())
    client.transport.write(b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n")
    yield deferLater(reactor, 0.05, lambda: None)
    client.transport.loseConnection()
    yield cancelled  # the fixture's timeout bounds it


@pytest_twisted.inlineCallbacks
def test_a_handler_may_stream_the_twisted_way(site_port: Any) -> Iterator[Any]:
    """A handler that writes to the request and returns NOT_DONE_YET streams its own answer."""
    app = Crow()

    @app.route("/stream")
    def stream(req: Any) -> int:
        req.setHeader(b"content-type", b"text/plain")
        req.write(b"one ")

        def rest() -> None:
            req.write(b"two")
            req.finish()

        reactor.callLater(0.01, rest)  # type: ignore[attr-defined]
        return NOT_DONE_YET

    port = site_port(app)
    reply = yield fetch(port, "GET", "/stream")
    assert (reply.status, reply.body) == (200, b"one two")


# Methods, HEAD, OPTIONS, 405, 404, trailing slashes.


@pytest_twisted.inlineCallbacks
def test_methods_head_options_405_and_404(site_port: Any) -> Iterator[Any]:
    """HEAD follows GET without a body, OPTIONS gets 204 with Allow, other methods 405 with Allow, unknown paths 404."""
    app = Crow()
    app.route("/thing")(lambda: "a thing")
    app.route("/thing").methods("POST", "put")(lambda req: f"{req.method}")
    port = site_port(app)
    head = yield fetch(port, "HEAD", "/thing")
    assert (head.status, head.body, head.header("content-length")) == (200, b"", "7")
    options = yield fetch(port, "OPTIONS", "/thing")
    assert (options.status, options.header("allow"), options.body) == (204, "GET, HEAD, OPTIONS, POST, PUT", b"")
    assert (yield fetch(port, "PUT", "/thing", body=b"")).body == b"PUT"
    refused = yield fetch(port, "DELETE", "/thing")
    assert (refused.status, refused.header("allow")) == (405, "GET, HEAD, OPTIONS, POST, PUT")
    missing = yield fetch(port, "GET", "/nothing")
    assert (missing.status, missing.body) == (404, b"404 Not Found\n")


@pytest_twisted.inlineCallbacks
def test_trailing_slash_redirects_and_keeps_the_query(site_port: Any) -> Iterator[Any]:
    """/about/ answers /about with 301 keeping the query; /about does not answer /about/; // stays a path."""
    app = Crow()
    app.route("/about/")(lambda: "about")
    app.route("/plain")(lambda: "plain")
    app.route("/<int>/")(lambda n: str(n))
    port = site_port(app)
    reply = yield fetch(port, "GET", "/about?x=1&y=%20")
    assert (reply.status, reply.header("location")) == (301, "/about/?x=1&y=%20")
    assert (yield fetch(port, "GET", "/about")).header("location") == "/about/"
    assert (yield fetch(port, "GET", "/about/")).body == b"about"
    assert (yield fetch(port, "GET", "/plain/")).status == 404
    assert (yield fetch(port, "GET", "/5")).header("location") == "/5/"
    assert (yield fetch(port, "POST", "/about", body=b"")).status == 301


def test_a_redirect_never_points_at_another_host() -> None:
    """A path starting with // is redirected to a path, never to a scheme-relative URL naming another host."""
    app = Crow()
    app.route("//evil.example/")(lambda: "odd but declared")
    client = MemoryClient(app, raw=b"GET //evil.example HTTP/1.1\r\nHost: x\r\n\r\n")
    assert client.status == 301 and client.headers["location"] == "/evil.example/"


# Catch-all, exceptions.


@pytest_twisted.inlineCallbacks
def test_catchall_answers_404_and_405(site_port: Any) -> Iterator[Any]:
    """The app's catch-all gets res with 404, or 405 and Allow, and answers with it or with what it returns."""
    app = Crow()
    app.route("/only-get")(lambda: "ok")
    seen: list[int] = []

    @app.catchall_route()
    def missing(req: Any, res: Response) -> Any:
        seen.append(res.code)
        if req.url == "/teapot":
            return 418
        res.body = f"nothing at {req.url} ({res.code})"
        return None

    port = site_port(app)
    reply = yield fetch(port, "GET", "/x/y")
    assert (reply.status, reply.body) == (404, b"nothing at /x/y (404)")
    reply = yield fetch(port, "POST", "/only-get", body=b"")
    assert (reply.status, reply.header("allow")) == (405, "GET, HEAD, OPTIONS")
    assert (yield fetch(port, "GET", "/teapot")).status == 418
    assert seen == [404, 405, 404]


@pytest_twisted.inlineCallbacks
def test_exceptions(site_port: Any, logs: LogCapture) -> Iterator[Any]:
    """HTTPError and BadRequest answer with their message unlogged; anything else 500, once logged."""
    app = Crow()

    def boom() -> str:
        raise RuntimeError("secret detail")

    async def later_boom() -> str:
        raise KeyError("k")

    def bad() -> str:
        raise BadRequest("name is missing")

    def teapot() -> str:
        raise HTTPError(418, "short and stout", {"X-Tea": "1"})

    for path, handler in (("/boom", boom), ("/later", later_boom), ("/bad", bad), ("/tea", teapot)):
        app.route(path)(handler)
    port = site_port(app)
    reply = yield fetch(port, "GET", "/boom")
    assert (reply.status, reply.body) == (500, b"500 Internal Server Error\n")
    assert b"secret" not in reply.body
    assert (yield fetch(port, "GET", "/later")).status == 500
    reply = yield fetch(port, "GET", "/bad")
    assert (reply.status, reply.body) == (400, b"400 name is missing\n")
    reply = yield fetch(port, "GET", "/tea")
    assert (reply.status, reply.header("x-tea")) == (418, "1")
    failures = logs.failures()
    assert [f["log_failure"].type for f in failures] == [RuntimeError, KeyError]
    assert "/boom" in failures[0]["log_format"].format(**failures[0]) or failures[0]["path"] == "/boom"


@pytest_twisted.inlineCallbacks
def test_exception_handler(site_port: Any, logs: LogCapture) -> Iterator[Any]:
    """app.exception_handler answers what handlers raise; if it fails too, 500 and one log line."""
    app = Crow()

    @app.exception_handler
    def handle(exc: Exception, req: Any) -> Any:
        if isinstance(exc, LookupError):
            return Response(404, f"no such {exc.args[0]} at {req.url}")
        raise ValueError("handler broke")

    def lookup() -> str:
        raise LookupError("user")

    def other() -> str:
        raise RuntimeError("x")

    app.route("/lookup")(lookup)
    app.route("/other")(other)
    port = site_port(app)
    reply = yield fetch(port, "GET", "/lookup")
    assert (reply.status, reply.body) == (404, b"no such user at /lookup")
    assert (yield fetch(port, "GET", "/other")).status == 500
    assert len(logs.failures()) == 1 and logs.failures()[0]["log_failure"].type is ValueError


# Compression and static files.


@pytest_twisted.inlineCallbacks
def test_gzip_when_accepted_and_worth_it(site_port: Any) -> Iterator[Any]:
    """A large text body is gzipped for a client that accepts it; small ones and other clients get it plain."""
    app = Crow()
    big = "crow " * 1000
    app.route("/big")(lambda: big)
    app.route("/small")(lambda: "tiny")
    port = site_port(app)
    reply = yield fetch(port, "GET", "/big", {"Accept-Encoding": "gzip"})
    assert reply.header("content-encoding") == "gzip" and gzip.decompress(reply.body).decode() == big
    assert int(reply.header("content-length") or 0) == len(reply.body) < len(big)
    plain = yield fetch(port, "GET", "/big")
    assert plain.header("content-encoding") is None and plain.body.decode() == big
    assert (yield fetch(port, "GET", "/small", {"Accept-Encoding": "gzip"})).body == b"tiny"
    app.use_compression(False)
    off = yield fetch(site_port(app), "GET", "/big", {"Accept-Encoding": "gzip"})
    assert off.header("content-encoding") is None


@pytest_twisted.inlineCallbacks
def test_static_directory_and_file(site_port: Any, tmp_path: Path) -> Iterator[Any]:
    """static_dir serves files under its URL, static_file one file; escapes and hidden files get 404."""
    (tmp_path / "pub").mkdir()
    (tmp_path / "pub" / "a.txt").write_text("alpha")
    (tmp_path / "pub" / "sub").mkdir()
    (tmp_path / "pub" / "sub" / "b.json").write_text("{}")
    (tmp_path / "secret.txt").write_text("secret")
    (tmp_path / "pub" / ".env").write_text("TOKEN=1")
    app = Crow().static_dir(tmp_path / "pub", "/files/<path>").static_file("/favicon.txt", tmp_path / "secret.txt")
    port = site_port(app)
    reply = yield fetch(port, "GET", "/files/a.txt")
    assert (reply.status, reply.body, reply.header("content-type")) == (200, b"alpha", "text/plain; charset=utf-8")
    assert (yield fetch(port, "GET", "/files/sub/b.json")).header("content-type") == "application/json"
    ranged = yield fetch(port, "GET", "/files/a.txt", {"Range": "bytes=1-3"})
    assert (ranged.status, ranged.body) == (206, b"lph")
    assert (yield fetch(port, "GET", "/favicon.txt")).body == b"secret"
    for path in ("/files/../secret.txt", "/files/%2e%2e/secret.txt", "/files/sub/..%2f..%2fsecret.txt",
                 "/files/.env", "/files/sub", "/files/nothing"):
        assert (yield fetch(port, "GET", path)).status == 404, path


@pytest_twisted.inlineCallbacks
def test_default_static_directory(site_port: Any, tmp_path: Path, monkeypatch: Any) -> Iterator[Any]:
    """./static is served at /static/<path> when it exists; static_dir(None) turns it off."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "app.js").write_text("let x = 1;")
    reply = yield fetch(site_port(Crow()), "GET", "/static/app.js")
    assert (reply.status, reply.body) == (200, b"let x = 1;")
    assert (yield fetch(site_port(Crow().static_dir(None)), "GET", "/static/app.js")).status == 404
    with pytest.raises(ValueError, match="must end in <path>"):
        Crow().static_dir("x", "/files/<int>")


# The route table, against every path: a property.

SEGMENTS = st.sampled_from(["a", "b", "", "<int>", "<string>"])
PATTERNS = st.lists(st.lists(SEGMENTS, min_size=1, max_size=3), min_size=1, max_size=5, unique_by=tuple)
PATHS = st.lists(st.sampled_from(["a", "b", "", "7", "x"]), min_size=1, max_size=4)


def _matches(pattern: list[str], path: list[str]) -> bool:
    if len(pattern) != len(path):
        return False
    for want, got in zip(pattern, path):
        if want == "<int>":
            if not got.isdigit():
                return False
        elif want == "<string>":
            if not got:
                return False
        elif want != got:
            return False
    return True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(patterns=PATTERNS, paths=st.lists(PATHS, min_size=1, max_size=4))
def test_route_tables_against_paths(patterns: list[list[str]], paths: list[list[str]]) -> None:
    """Any table and paths: 200 where a route matches, 301 where only its slashed form does, else 404; every time."""
    app = Crow()
    for segments in patterns:
        if segments[:-1] and "" in segments[:-1]:
            continue  # an empty segment inside a pattern: no client sends //
        try:
            app.route("/" + "/".join(segments))(lambda *args: "hit")
        except ValueError:
            continue
    declared = [s for s in patterns if not ("" in s[:-1])]
    for _ in range(2):  # a second round: nothing a request did changes the next
        for path in paths:
            if "" in path[:-1]:
                continue
            client = MemoryClient(app, raw=f"GET /{'/'.join(path)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            hit = any(_matches(p, path) for p in declared)
            slashed = path[-1] != "" and any(p[-1] == "" and _matches(p, [*path, ""]) for p in declared)
            expected = 200 if hit else 301 if slashed else 404
            assert client.status == expected, (patterns, path)


# The body bound.


def _raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a raw socket (the rest of the body may be refused) and read until the server closes."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # the server may stop reading once it has answered
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            received += chunk
        return received


@pytest_twisted.inlineCallbacks
def test_a_body_over_the_bound_is_413(site_port: Any) -> Iterator[Any]:
    """A declared or chunked body over max_body_size gets 413 before the handler; one within it is read."""
    from twisted.internet.threads import deferToThread

    app = Crow().max_body_size(1000)
    assert app.max_body_size() == 1000
    seen: list[int] = []

    @app.route("/up").methods("POST")
    def upload(req: Any) -> str:
        seen.append(len(req.body))
        return f"got {len(req.body)}"

    port = site_port(app)
    assert (yield fetch(port, "POST", "/up", body=b"x" * 1000)).body == b"got 1000"
    declared = yield deferToThread(_raw_exchange, port, b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n"
                                   b"Expect: 100-continue\r\n\r\n")
    assert declared.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in declared
    chunk = b"%x\r\n%s\r\n" % (600, b"y" * 600)
    chunked = yield deferToThread(_raw_exchange, port, b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  + chunk * 2 + b"0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 413 ")
    assert seen == [1000]
    with pytest.raises(ValueError):
        Crow().max_body_size(0)
