"""Crow's examples ported to crowtwist (``examples/crow/``), checked over real sockets on 127.0.0.1.

Most run in this process, each app on a random port, driven by clients we did
not write: the standard library's ``http.client`` in a thread and the
``websockets`` client.  The last tests start several examples under the real
``twistd crow`` at once, from a current directory that is not the
repository's, as an operator would.
"""

from __future__ import annotations

import gzip
import http.client
import importlib
import json
import pkgutil
import re
import socket
import ssl
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

import examples.crow
from crowtwist import Crow, Request
from examples.crow import (
    STATIC,
    blueprint,
    catchall,
    chat,
    compression,
    cookies,
    cors,
    example,
    file_upload,
    helloworld,
    json_map,
    middleware,
    static_file,
    websocket,
)

from .clients import within
from .conftest import LogCapture
from .proc import Server, free_port, twistd

TIMEOUT = 10.0

# The request wrapper's body, query and multipart API (req.url_params, req.json(), req.body,
# req.multipart()) lands with the issue15-request branch; until it is merged, the checks of the
# examples using it are skipped rather than failed.
needs_request_api = pytest.mark.skipif(
    not hasattr(Request, "url_params"), reason="crowtwist.Request's url_params/json/body/multipart not merged yet"
)


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def json(self) -> Any:
        assert self.header("Content-Type") == "application/json", self.headers
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


def fetch(port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None,
          body: bytes | None = None, host: str = "127.0.0.1", context: ssl.SSLContext | None = None) -> Reply:
    """One request with http.client (blocking, bounded by ``TIMEOUT``); the body read whole, as sent."""
    if context is not None:
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=TIMEOUT, context=context)
    else:
        connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        connection.close()


def request(port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None,
            body: bytes | None = None) -> Deferred[Reply]:
    """``fetch`` in a thread, for tests whose server runs on this process's reactor."""
    return within(deferToThread(fetch, port, path, method, headers, body), TIMEOUT + 5)


def turn() -> Deferred[None]:
    return deferLater(reactor, 0, lambda: None)  # type: ignore[arg-type]


def until(condition: Callable[[], bool], turns: int = 10_000) -> Deferred[None]:
    """Fires once ``condition()`` holds, checked once per reactor turn (never a sleep); fails after ``turns``."""

    @pytest_twisted.inlineCallbacks
    def wait() -> Iterator[Any]:
        for _ in range(turns):
            if condition():
                return
            yield turn()
        raise AssertionError(f"condition not met within {turns} reactor turns")

    return wait()  # type: ignore[no-any-return]


def multipart_body(parts: list[tuple[str, str | None, bytes]], boundary: str = "crowtwistboundary") -> tuple[bytes, str]:
    """A multipart/form-data body of ``(name, filename, content)`` parts, and its Content-Type."""
    chunks = []
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        chunks.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


MODULES = sorted(info.name for info in pkgutil.iter_modules(examples.crow.__path__))


# Every example.


@pytest.mark.parametrize("name", MODULES)
def test_every_example_names_its_crow_file_and_how_to_run_it(name: str) -> None:
    """Each module's docstring names the Crow file it ports and its twistd command line; it exposes ``app``."""
    module = importlib.import_module(f"examples.crow.{name}")
    doc = module.__doc__ or ""
    assert doc.startswith("Port of Crow's ``examples/") and ".cpp``" in doc.splitlines()[0], doc
    assert f"twistd -n crow --routes examples.crow.{name} --listen " in doc
    assert isinstance(module.app, Crow)


def test_the_static_directory_is_found_from_the_package_not_the_current_directory() -> None:
    """``examples.crow.STATIC`` is the ``static`` folder beside the modules, holding what they serve."""
    assert STATIC == Path(examples.crow.__file__).resolve().parent / "static"
    assert {"cat.svg", "hello.txt", "ws.html", "chat.html"} <= {p.name for p in STATIC.iterdir()}


# helloworld.cpp


@pytest_twisted.inlineCallbacks
def test_helloworld(site_port: Any) -> Iterator[Any]:
    """``/`` says hello; HEAD has the headers only; another method gets 405 with Allow; OPTIONS gets 204."""
    port = site_port(helloworld.app)
    reply = yield request(port, "/")
    assert (reply.status, reply.text, reply.header("Content-Type")) == (
        200, "Hello, world!", "text/plain; charset=utf-8")
    head = yield request(port, "/", "HEAD")
    assert (head.status, head.body, head.header("Content-Length")) == (200, b"", "13")
    refused = yield request(port, "/", "DELETE")
    assert (refused.status, refused.header("Allow")) == (405, "GET, HEAD, OPTIONS")
    options = yield request(port, "/", "OPTIONS")
    assert (options.status, options.body, options.header("Allow")) == (204, b"", "GET, HEAD, OPTIONS")
    missing = yield request(port, "/nothing")
    assert missing.status == 404


# example.cpp


@pytest_twisted.inlineCallbacks
def test_example_plain_routes_and_trailing_slash(site_port: Any, logs: LogCapture) -> Iterator[Any]:
    """``/``, ``/about``; ``/path`` is redirected (301, query kept) to the ``/path/`` route; the middleware logs."""
    port = site_port(example.app)
    assert (yield request(port, "/")).text == "Hello World!"
    assert (yield request(port, "/about")).text == "About Crow example."
    moved = yield request(port, "/path?x=1&y")
    assert (moved.status, moved.header("Location")) == (301, "/path/?x=1&y")
    assert (yield request(port, "/path/")).text == "Trailing slash test case.."
    assert example.app.get_middleware(example.ExampleMiddleware).message == "hello"
    assert any(e.get("message") == "hello" for e in logs.at(LogLevel.debug))


@pytest_twisted.inlineCallbacks
def test_example_json(site_port: Any) -> Iterator[Any]:
    """Dicts and lists are JSON, in the order built, with Crow's values."""
    port = site_port(example.app)
    reply = yield request(port, "/json")
    assert reply.json() == {"message": "Hello, World!", "message2": "Hello, World.. Again!"}
    assert list(reply.json()) == ["message", "message2"]
    values = (yield request(port, "/json-initializer-list-constructor")).json()
    assert values == {
        "first": "Hello world!", "second": "How are you today?", "third": 54, "fourth": 54, "fifth": 54,
        "sixth": 54, "seventh": 2.0, "eighth": 2.0, "ninth": None, "tenth": True,
    }
    assert (yield request(port, "/json_list")).json() == [1, 2, 3]


@pytest_twisted.inlineCallbacks
def test_example_typed_parameters(site_port: Any) -> Iterator[Any]:
    """``<int>`` segments arrive as ints (negative too); over 100 is 400; a non-number matches no route."""
    port = site_port(example.app)
    for prefix in ("/hello/", "/hello_status/"):
        assert (yield request(port, prefix + "42")).text == "42 bottles of beer!"
        assert (yield request(port, prefix + "-3")).text == "-3 bottles of beer!"
        too_many = yield request(port, prefix + "101")
        assert (too_many.status, too_many.body) == (400, b"")
        assert (yield request(port, prefix + "abc")).status == 404
    added = yield request(port, "/add/1/2")
    assert (added.status, added.text) == (200, "3")
    assert (yield request(port, "/add/-10/2")).text == "-8"
    assert (yield request(port, "/add_mustache/40/2")).text == "Value is 42"


@needs_request_api
@pytest_twisted.inlineCallbacks
def test_example_add_json(site_port: Any) -> Iterator[Any]:
    """POST ``/add_json`` sums a and b; GET is 405; a body that is not JSON, or lacks integers, is 400 saying why."""
    port = site_port(example.app)
    json_type = {"Content-Type": "application/json"}
    reply = yield request(port, "/add_json", "POST", json_type, b'{"a": 1, "b": 2}')
    assert (reply.status, reply.text) == (200, "3")
    refused = yield request(port, "/add_json")
    assert (refused.status, refused.header("Allow")) == (405, "OPTIONS, POST")
    broken = yield request(port, "/add_json", "POST", json_type, b'{"a": 1,')
    assert broken.status == 400 and "not valid JSON" in broken.text
    wrong = yield request(port, "/add_json", "POST", json_type, b'{"a": "1", "b": 2}')
    assert wrong.status == 400 and '"a": <integer>' in wrong.text


@needs_request_api
@pytest_twisted.inlineCallbacks
def test_example_params(site_port: Any) -> Iterator[Any]:
    """``/params`` reads a value, a number, a list (``count[]``) and a dict (``mydict[k]``) from the query."""
    port = site_port(example.app)
    reply = yield request(port, "/params?foo='blabla'&pew=32&count[]=a&count[]=b&mydict[a]=b&mydict[abcd]=42")
    assert reply.text.splitlines() == [
        "Params: [ foo='blabla', pew=32, count[]=a, count[]=b, mydict[a]=b, mydict[abcd]=42 ]",
        "",
        "The key 'foo' was found.",
        "The value of 'pew' is 32",
        "The key 'count' contains 2 value(s).",
        " - a",
        " - b",
        "The key 'dict' contains 2 value(s).",
        " - a -> b",
        " - abcd -> 42",
    ]
    bare = yield request(port, "/params")
    assert "The key 'foo' was not found." in bare.text and "The key 'count' contains 0 value(s)." in bare.text
    bad = yield request(port, "/params?pew=lots")
    assert bad.status == 400 and "pew must be a number" in bad.text


@pytest_twisted.inlineCallbacks
def test_example_large_is_compressed_for_clients_that_accept_it(site_port: Any) -> Iterator[Any]:
    """``/large`` (512 KiB of spaces) goes gzip-compressed to a client that accepts gzip, plain to one that does not."""
    port = site_port(example.app)
    packed = yield request(port, "/large", headers={"Accept-Encoding": "gzip"})
    assert packed.header("Content-Encoding") == "gzip" and len(packed.body) < 4096
    assert gzip.decompress(packed.body) == b" " * (512 * 1024)
    plain = yield request(port, "/large")
    assert plain.header("Content-Encoding") is None and plain.body == b" " * (512 * 1024)


@needs_request_api
@pytest_twisted.inlineCallbacks
def test_example_multipart(site_port: Any) -> Iterator[Any]:
    """``/multipart`` takes a multipart body; a body that is not multipart is 400, not 500."""
    port = site_port(example.app)
    body, content_type = multipart_body([("first", None, b"part one"), ("second", "a.txt", b"two")])
    reply = yield request(port, "/multipart", "POST", {"Content-Type": content_type}, body)
    assert (reply.status, reply.text) == (200, "it works!")
    refused = yield request(port, "/multipart", "POST", {"Content-Type": "text/plain"}, b"hello")
    assert refused.status == 400


# example_json_map.cpp


@pytest_twisted.inlineCallbacks
def test_json_map_sorts_keys(site_port: Any) -> Iterator[Any]:
    """The keys come out sorted, as with Crow's CROW_JSON_USE_MAP."""
    port = site_port(json_map.app)
    reply = yield request(port, "/json")
    assert reply.body == b'{"amessage": "Hello, World2!", "zmessage": "Hello, World!"}'


# example_blueprint.cpp


@pytest_twisted.inlineCallbacks
def test_blueprint(site_port: Any) -> Iterator[Any]:
    """Nested prefixes, the trailing-slash redirect, the sub-blueprint's catch-all only under it, its static dir."""
    port = site_port(blueprint.app)
    hello = yield request(port, "/bp_prefix/bp2/")
    assert (hello.status, hello.text) == (200, "Hello world!")
    moved = yield request(port, "/bp_prefix/bp2")
    assert (moved.status, moved.header("Location")) == (301, "/bp_prefix/bp2/")
    for path in ("/bp_prefix/bp2/nope", "/bp_prefix/bp2/a/b?c=d"):
        wrong = yield request(port, path)
        assert (wrong.status, wrong.text) == (200, "WRONG!!")  # Crow: response(f()) replaces the 404
    wrong_method = yield request(port, "/bp_prefix/bp2/", "POST")
    assert (wrong_method.status, wrong_method.text) == (200, "WRONG!!")
    assert (yield request(port, "/bp_prefix/nope")).status == 404
    assert (yield request(port, "/nope")).status == 404
    static = yield request(port, "/bp_prefix/static/hello.txt")
    assert static.status == 200 and static.body == (STATIC / "hello.txt").read_bytes()
    assert blueprint.bp.prefix == "/bp_prefix" and blueprint.sub_bp.prefix == "/bp_prefix/bp2"


# example_catchall.cpp


@pytest_twisted.inlineCallbacks
def test_catchall(site_port: Any) -> Iterator[Any]:
    """Misses get the catch-all's words with their own status: 404, or 405 keeping ``Allow``."""
    port = site_port(catchall.app)
    assert (yield request(port, "/")).text == "Hello"
    missing = yield request(port, "/nothing/here")
    assert (missing.status, missing.text) == (404, "The URL does not seem to be correct.")
    refused = yield request(port, "/", "POST", body=b"x")
    assert (refused.status, refused.text) == (405, "The HTTP method does not seem to be correct.")
    assert refused.header("Allow") == "GET, HEAD, OPTIONS"


# example_middleware.cpp


@pytest_twisted.inlineCallbacks
def test_middleware(site_port: Any, logs: LogCapture) -> Iterator[Any]:
    """App-wide logging; a route's guard answers 403 before its handler; a blueprint's middleware reads the context."""
    port = site_port(middleware.app)
    assert (yield request(port, "/")).text == "Hello, world!"
    secret = yield request(port, "/secret")
    assert (secret.status, secret.text) == (403, "SECRET!")
    appended = yield request(port, "/bp/")
    assert (appended.status, appended.text) == (200, "Hello: + (World)")
    # RequestAppend is the blueprint's alone; the guard the route's alone.
    assert (yield request(port, "/")).text == "Hello, world!"
    urls = [e.get("url") for e in logs.events if e.get("log_namespace") == "examples.crow.middleware"]
    assert urls[:4] == ["/", "/secret", "/bp/", "/"]


# example_static_file.cpp


@pytest_twisted.inlineCallbacks
def test_static_file(site_port: Any) -> Iterator[Any]:
    """``/`` answers with the cat; ``/static/<path>`` serves the folder (gzip, Range, HEAD), nothing outside it."""
    port = site_port(static_file.app)
    cat = yield request(port, "/")
    assert (cat.status, cat.header("Content-Type")) == (200, "image/svg+xml")
    assert cat.body == (STATIC / "cat.svg").read_bytes()
    text = (STATIC / "hello.txt").read_bytes()
    packed = yield request(port, "/static/hello.txt", headers={"Accept-Encoding": "gzip"})
    assert packed.header("Content-Encoding") == "gzip" and gzip.decompress(packed.body) == text
    part = yield request(port, "/static/hello.txt", headers={"Range": "bytes=0-4"})
    assert (part.status, part.body) == (206, text[:5])
    head = yield request(port, "/static/hello.txt", "HEAD")
    assert (head.status, head.body, head.header("Content-Length")) == (200, b"", str(len(text)))
    single = yield request(port, "/hello.txt")
    assert single.body == text
    for path in ("/static/../__init__.py", "/static/%2e%2e/__init__.py", "/static/nothing.txt", "/static/"):
        assert (yield request(port, path)).status == 404, path


# example_compression.cpp


@pytest_twisted.inlineCallbacks
def test_compression(site_port: Any) -> Iterator[Any]:
    """``/hello_compressed`` is gzip for a client that accepts it; ``/hello`` opted out with Content-Encoding: identity."""
    port = site_port(compression.app)
    accept = {"Accept-Encoding": "gzip"}
    plain = yield request(port, "/hello", headers=accept)
    assert plain.header("Content-Encoding") is None
    assert plain.text == "Hello World! This is uncompressed!\n" * 40
    packed = yield request(port, "/hello_compressed", headers=accept)
    assert (packed.header("Content-Encoding"), packed.header("Vary")) == ("gzip", "Accept-Encoding")
    assert gzip.decompress(packed.body) == b"Hello World! This is compressed by default!\n" * 40
    unasked = yield request(port, "/hello_compressed")
    assert unasked.header("Content-Encoding") is None


# middlewares/example_cookies.cpp


@pytest_twisted.inlineCallbacks
def test_cookies(site_port: Any) -> Iterator[Any]:
    """``/write`` sets key=word (Path=/, Max-Age=120, HttpOnly); ``/read`` reads what the client sends back."""
    port = site_port(cookies.app)
    written = yield request(port, "/write")
    assert written.text == "ok!"
    jar: SimpleCookie = SimpleCookie()
    jar.load(written.header("Set-Cookie") or "")
    morsel = jar["key"]
    assert (morsel.value, morsel["path"], morsel["max-age"], morsel["httponly"]) == ("word", "/", "120", True)
    read = yield request(port, "/read", headers={"Cookie": "other=1; key=word"})
    assert read.text == "value: word"
    assert (yield request(port, "/read")).text == "value: "
    junk = yield request(port, "/read", headers={"Cookie": "\x01; ;=; key"})
    assert (junk.status, junk.text) == (200, "value: ")  # a client's junk is no 500


# middlewares/example_cors.cpp


@pytest_twisted.inlineCallbacks
def test_cors(site_port: Any) -> Iterator[Any]:
    """The global rule on ``/``, ``/cors``'s one origin, nothing under ``/nocors``; preflights answered."""
    port = site_port(cors.app)
    origin = {"Origin": "https://page.example"}
    index = yield request(port, "/", headers=origin)
    assert index.header("Access-Control-Allow-Origin") == "*"
    assert index.header("Access-Control-Allow-Methods") == "POST, GET"
    assert index.header("Access-Control-Allow-Headers") == "X-Custom-Header, Upgrade-Insecure-Requests"
    one = yield request(port, "/cors", headers=origin)
    assert one.text == "Check Access-Control-Allow-Origin header"
    assert (one.header("Access-Control-Allow-Origin"), one.header("Access-Control-Allow-Methods")) == (
        "https://example.com", "*")
    ignored = yield request(port, "/nocors/x", headers=origin)
    assert ignored.status == 404 and ignored.header("Access-Control-Allow-Origin") is None
    preflight = yield request(port, "/cors", "OPTIONS", headers={
        **origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "X-Custom-Header"})
    assert (preflight.status, preflight.header("Allow")) == (204, "GET, HEAD, OPTIONS")
    assert preflight.header("Access-Control-Allow-Origin") == "https://example.com"


# websocket/example_ws.cpp


def broadcast_round(port: int) -> None:
    """Two clients of ``/ws``: each message reaches both; after one leaves, only the other."""
    url = f"ws://127.0.0.1:{port}/ws"
    with connect(url, open_timeout=TIMEOUT) as a:
        with connect(url, open_timeout=TIMEOUT) as b:
            # b's first message is also proof that a's onopen ran before b's did.
            b.send("from b")
            assert a.recv(timeout=TIMEOUT) == "from b"
            assert b.recv(timeout=TIMEOUT) == "from b"
            a.send(b"\x00\xffbinary")
            assert a.recv(timeout=TIMEOUT) == b"\x00\xffbinary"
            assert b.recv(timeout=TIMEOUT) == b"\x00\xffbinary"
        a.send("alone")
        assert a.recv(timeout=TIMEOUT) == "alone"


@pytest_twisted.inlineCallbacks
def test_websocket_broadcasts_to_every_user(site_port: Any) -> Iterator[Any]:
    """Every message goes to every open connection, text as text and binary as binary; ``users`` empties."""
    port = site_port(websocket.app)
    yield within(deferToThread(broadcast_round, port), 30)
    yield until(lambda: not websocket.users)
    page = yield request(port, "/")
    assert (page.header("Content-Type") or "").startswith("text/html") and b'location.host + "/ws"' in page.body
    plain = yield request(port, "/ws")
    assert plain.status == 426


def subprotocol_round(port: int) -> list[Any]:
    url = f"ws://127.0.0.1:{port}/proto"
    seen: list[Any] = []
    for offered in (["chat.v1"], ["chat.v1", "chat.v2"], ["other", "chat.v1"]):
        with connect(url, subprotocols=offered, open_timeout=TIMEOUT) as ws:  # type: ignore[arg-type]
            seen.append((ws.subprotocol, ws.recv(timeout=TIMEOUT)))
    with connect(url, subprotocols=["chat.v2"], open_timeout=TIMEOUT) as ws:  # type: ignore[list-item]
        ws.recv(timeout=TIMEOUT)
        ws.send("echo me")
        assert ws.recv(timeout=TIMEOUT) == "echo me"
        ws.send("bye")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=TIMEOUT)
        assert closed.value.rcvd is not None
        seen.append((closed.value.rcvd.code, closed.value.rcvd.reason))
    for offered in ([], ["other"]):
        with pytest.raises(InvalidStatus) as refused:
            connect(url, subprotocols=offered, open_timeout=TIMEOUT)  # type: ignore[arg-type]
        seen.append((refused.value.response.status_code, refused.value.response.body))
    return seen


@pytest_twisted.inlineCallbacks
def test_websocket_subprotocols(site_port: Any) -> Iterator[Any]:
    """``/proto`` picks our first protocol the client offers, carries userdata, closes on "bye", refuses the rest."""
    port = site_port(websocket.app)
    seen = yield within(deferToThread(subprotocol_round, port), 30)
    refusal = b"speak one of chat.v2, chat.v1 (Sec-WebSocket-Protocol)\n"
    assert seen == [
        ("chat.v1", "speaking chat.v1; you offered chat.v1"),
        ("chat.v2", "speaking chat.v2; you offered chat.v1, chat.v2"),
        ("chat.v1", "speaking chat.v1; you offered other, chat.v1"),
        (1000, "bye"),
        (400, refusal),
        (400, refusal),
    ]


# example_chat.cpp


@pytest.fixture
def fresh_chat() -> Iterator[None]:
    """The chat example's messages and waiting polls, empty (they are module state)."""
    chat.msgs.clear()
    yield
    for res, timeout in chat.waiting:
        if timeout.active():
            timeout.cancel()
    chat.waiting.clear()
    chat.msgs.clear()


@needs_request_api
@pytest_twisted.inlineCallbacks
def test_chat_long_poll_answers_when_a_message_comes(site_port: Any, fresh_chat: None) -> Iterator[Any]:
    """A poll with nothing new waits (Crow's ``res`` kept, ended later) and gets the next message sent."""
    port = site_port(chat.app)
    assert (yield request(port, "/logs")).json() == {"msgs": [], "last": 0}
    poll = request(port, "/logs/0")
    yield until(lambda: len(chat.waiting) == 1)
    assert not poll.called
    sent = yield request(port, "/send", "POST", body="h\u00e9llo".encode())
    assert (sent.status, sent.body) == (200, b"")
    answer = yield poll
    assert answer.json() == {"msgs": ["h\u00e9llo"], "last": 1}
    assert chat.waiting == []
    assert (yield request(port, "/logs/0")).json() == {"msgs": ["h\u00e9llo"], "last": 1}
    assert (yield request(port, "/logs")).json() == {"msgs": ["h\u00e9llo"], "last": 1}
    page = yield request(port, "/")
    assert (page.header("Content-Type") or "").startswith("text/html") and b'fetch("/logs/" + last)' in page.body
    bad = yield request(port, "/send", "POST", body=b"\xff\xfe")
    assert bad.status == 400 and chat.msgs == ["h\u00e9llo"]


@needs_request_api
@pytest_twisted.inlineCallbacks
def test_chat_poll_times_out_and_forgets_clients_that_left(
    site_port: Any, fresh_chat: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """A poll past its timeout says "nothing new"; a client that leaves is dropped from the waiting list."""
    port = site_port(chat.app)
    monkeypatch.setattr(chat, "POLL_TIMEOUT", 0.05)
    expired = yield request(port, "/logs/3")
    assert expired.json() == {"msgs": [], "last": 0}
    assert chat.waiting == []
    monkeypatch.setattr(chat, "POLL_TIMEOUT", 60.0)

    # A client that sends a poll and leaves (connecting to our own listening socket does not block).
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /logs/7 HTTP/1.1\r\nHost: x\r\n\r\n")
        yield until(lambda: len(chat.waiting) == 1)
    yield until(lambda: not chat.waiting)


# example_file_upload.cpp


@needs_request_api
@pytest_twisted.inlineCallbacks
def test_file_upload(site_port: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The InputFile part is saved under its base name only; no filename, a bad name or no multipart is 400."""
    port = site_port(file_upload.app)
    monkeypatch.setattr(file_upload, "upload_dir", tmp_path / "uploads")
    body, content_type = multipart_body([("comment", None, b"hi"), ("InputFile", "../../evil.txt", b"\x00data")])
    reply = yield request(port, "/uploadfile", "POST", {"Content-Type": content_type}, body)
    assert (reply.status, reply.body) == (200, b"")
    assert [p.name for p in (tmp_path / "uploads").iterdir()] == ["evil.txt"]
    assert (tmp_path / "uploads" / "evil.txt").read_bytes() == b"\x00data"
    assert not (tmp_path / "evil.txt").exists()
    for parts in ([("InputFile", None, b"x")], [("InputFile", "..", b"x")], [("InputFile", "a/", b"x")]):
        body, content_type = multipart_body(parts)  # type: ignore[arg-type]
        refused = yield request(port, "/uploadfile", "POST", {"Content-Type": content_type}, body)
        assert refused.status == 400, parts
    not_multipart = yield request(port, "/uploadfile", "POST", {"Content-Type": "text/plain"}, b"x")
    assert not_multipart.status == 400
    assert (yield request(port, "/uploadfile")).status == 405


# Under the real twistd crow, several at once, from another current directory.


def test_examples_under_twistd(tmp_path: Path) -> None:
    """helloworld, static_file, websocket, middleware (TCP), unix_socket (UNIX) and tls (TLS) serve under twistd crow."""
    pytest.importorskip("OpenSSL")
    from .test_twistd import make_certificate

    key, certificate = make_certificate(tmp_path)
    socket_path = tmp_path / "example.sock"
    tcp = {name: free_port() for name in ("helloworld", "static_file", "websocket", "middleware", "tls")}
    listen = {name: f"tcp:{port}:interface=127.0.0.1" for name, port in tcp.items()}
    listen["tls"] = f"ssl:{tcp['tls']}:interface=127.0.0.1:privateKey={key}:certKey={certificate}"
    listen["unix_socket"] = f"unix:{socket_path}"
    # Started together (each takes a second or so to import), checked one by one.
    servers = {name: Server(twistd("--routes", f"examples.crow.{name}", "--listen", endpoint), cwd=tmp_path)
               for name, endpoint in listen.items()}
    try:
        for name, server in servers.items():
            if name == "unix_socket":
                server.wait_unix(socket_path)
            else:
                server.wait_tcp(tcp[name])
        assert fetch(tcp["helloworld"], "/").text == "Hello, world!"
        assert fetch(tcp["static_file"], "/").body == (STATIC / "cat.svg").read_bytes()
        assert fetch(tcp["static_file"], "/static/hello.txt").body == (STATIC / "hello.txt").read_bytes()
        assert fetch(tcp["middleware"], "/secret").status == 403
        assert fetch(tcp["middleware"], "/bp/").text == "Hello: + (World)"
        broadcast_round(tcp["websocket"])
        with connect(f"ws://127.0.0.1:{tcp['websocket']}/proto", subprotocols=["chat.v1"],  # type: ignore[list-item]
                     open_timeout=TIMEOUT) as ws:
            assert ws.subprotocol == "chat.v1"
        context = ssl.create_default_context(cafile=str(certificate))
        assert fetch(tcp["tls"], "/", context=context).text == "Hello world!"
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(str(socket_path))
            sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\nHello, world!")
    finally:
        outputs = {name: server.stop() for name, server in servers.items()}
    for name, server in servers.items():
        assert server.process.returncode == 0, f"{name}:\n{outputs[name]}"
        assert "Traceback" not in outputs[name], f"{name}:\n{outputs[name]}"


# docs/crow.md


def documented_names() -> list[tuple[str, str]]:
    """``(object, attribute)`` for each ``obj.attr`` in backticks in the crowtwist column of docs/crow.md's tables."""
    found = []
    for line in (Path(__file__).resolve().parent.parent / "docs" / "crow.md").read_text().splitlines():
        cells = line.split(" | ")
        if not line.startswith("| ") or len(cells) < 2 or set(cells[1]) <= set("-|"):
            continue
        for code in re.findall(r"`([^`]+)`", cells[1]):
            found.extend(re.findall(r"(?<![\w./=])([A-Za-z_]\w*)\.([A-Za-z_]\w*)", code))
    return found


def test_docs_name_only_what_exists() -> None:
    """Every ``app.x``, ``rule.x``, ``conn.x``, ``req.x``, ``res.x`` (...) the docs' crowtwist column names exists."""
    import crowtwist
    from crowtwist._cookies import CookieContext
    from twisted.web.server import Request as TwistedRequest
    from twisted.web.test.requesthelper import DummyChannel

    app = Crow()
    objects: dict[str, Any] = {
        "app": app,
        "rule": app.route("/ws").websocket(),
        "bp": crowtwist.Blueprint("bp"),
        "res": crowtwist.Response(),
        "conn": crowtwist.Connection,
        "cors": crowtwist.CORSHandler(),
        "ctx": CookieContext(),
        "http": importlib.import_module("http"),
        "crowtwist": crowtwist,
    }
    if hasattr(Request, "url_params"):
        from crowtwist._request import MultipartMessage, Part

        objects.update(req=Request(TwistedRequest(DummyChannel())), msg=MultipartMessage("b", []), part=Part())
    objects.update({name: getattr(crowtwist, name) for name in crowtwist.__all__})
    names = documented_names()
    assert len(names) > 80
    checked = [(obj, attr) for obj, attr in names if obj in objects]

    def has(obj: Any, attr: str) -> bool:
        # The class first: reading a property (req.body) would run it.
        return hasattr(type(obj), attr) or hasattr(obj, attr)

    # onaccept's req.userdata: put on twisted.web's request by crowtwist before onaccept runs.
    missing = [f"{obj}.{attr}" for obj, attr in checked if not has(objects[obj], attr)
               and (obj, attr) != ("req", "userdata")]
    assert missing == []
    unknown = sorted({obj for obj, _ in names} - set(objects) - {"twisted", "req", "msg", "part", "service",
                                                                  "reactor", "json", "x", "string"})
    assert unknown == []
