"""The opening handshake, strictly: origins (``null``, repeats), required and singleton headers,
absolute-form targets, heads over the limits, ``onaccept``'s answers, connection caps with an
async ``onaccept``, upgrades while the app stops, and permessage-deflate offers we cannot take.

Each family runs on both ways an upgrade arrives at ``app.site()``: its one-read fast path (a rule
without ``onaccept``) and twisted.web's path (the same rule with an ``onaccept`` that accepts),
over real sockets on 127.0.0.1 with raw bytes for heads a polite client would not send and the
``websockets`` library's client for the happy paths.  Hypothesis checks families of header sets
in memory, where both ways must give the same answer as a model of RFC 6455 section 4.2.1.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable, Iterator

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from crowtwist import Connection, Crow, Response
from crowtwist.websocket._extensions import acceptable_offers, extension_error, parse_offers
from crowtwist.websocket._rule import WebSocketRule

from . import frames as F
from .clients import TIMEOUT, within
from .conftest import LogCapture
from .memory import MemoryClient
from .test_end_to_end import wait_until
from .test_upgrade import Served, SlowSite
from .twisted_paths import fast_paths_only

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
OTHER_KEY = base64.b64encode(b"0123456789abcdef").decode()
WAYS = ["fast", "twisted.web"]


# Serving and talking.


def echo(conn: Connection, data: str | bytes, is_binary: bool) -> None:
    conn.send_text(f"{conn.params}:{data!s}")


def ws_route(app: Crow, pattern: str, way: str) -> WebSocketRule:
    """An echoing WebSocket route, reached by ``way``: without onaccept (fast) or with one that accepts."""
    rule = app.route(pattern).websocket().onmessage(echo)
    if way == "twisted.web":
        rule.onaccept(lambda request: True)
    return rule


@dataclass
class Listening:
    port: int
    requests: list[int] = field(default_factory=lambda: [0])

    @property
    def twisted_requests(self) -> int:
        """How many twisted.web Requests the site made (none for a fast-path upgrade)."""
        return self.requests[0]


@pytest.fixture
def serve() -> Iterator[Callable[[Crow], Listening]]:
    """Serve ``app.site()`` on a random 127.0.0.1 port, counting twisted.web's Requests."""
    ports: list[Any] = []

    def start(app: Crow) -> Listening:
        site = app.site()
        listening = Listening(0)
        made = site.requestFactory

        def counting(*args: Any, **kwargs: Any) -> Any:
            listening.requests[0] += 1
            return made(*args, **kwargs)

        site.requestFactory = counting
        port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
        ports.append(port)
        listening.port = int(port.getHost().port)
        return listening

    yield start
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


@dataclass
class Reply:
    status: int
    headers: dict[str, list[str]]
    body: bytes
    client: Exchange

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return None if values is None else ", ".join(values)


class Exchange(Protocol):
    """Raw bytes out; the response (head, and body by Content-Length) back, then frames."""

    expect_body = True
    """False for a HEAD request, whose answer has a Content-Length but no body."""

    def __init__(self) -> None:
        self.data = b""
        self.reply: Deferred[Reply] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self.after = b""  # bytes after a 101's head: frames

    def dataReceived(self, data: bytes) -> None:
        if self.reply.called:
            self.after += data
            return
        self.data += data
        self._check(False)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._check(True)
        if not self.lost.called:
            self.lost.callback(None)

    def _check(self, closed: bool) -> None:
        if self.reply.called:
            return
        end = self.data.find(b"\r\n\r\n")
        if end < 0:
            if closed:
                self.reply.callback(Reply(0, {}, self.data, self))
            return
        lines = self.data[:end].decode("latin-1").split("\r\n")
        headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        status = int(lines[0].split()[1])
        rest = self.data[end + 4 :]
        if status == 101:
            self.after = rest
            self.reply.callback(Reply(status, headers, b"", self))
            return
        length = int(headers.get("content-length", ["-1"])[0]) if self.expect_body else 0
        if 0 <= length <= len(rest) or closed:
            self.reply.callback(Reply(status, headers, rest if length < 0 else rest[:length], self))

    def frames(self, count: int = 1) -> Deferred[list[F.Frame]]:
        """The first ``count`` frames after the 101."""
        found: list[list[F.Frame]] = []

        def ready() -> bool:
            frames, _ = F.decode_all(self.after)
            if len(frames) >= count:
                found.append(frames)
                return True
            return False

        return wait_until(ready).addCallback(lambda _: found[0])

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]


@pytest_twisted.inlineCallbacks
def connect(port: int) -> Iterator[Any]:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=TIMEOUT)
    client = yield within(endpoint.connect(Factory.forProtocol(Exchange)))
    return client


@pytest_twisted.inlineCallbacks
def exchange(port: int, raw: bytes, close: bool = True) -> Iterator[Any]:
    """Send ``raw`` on a new connection; the reply (the connection aborted after, unless ``close`` is false)."""
    client = yield connect(port)
    client.expect_body = not raw.startswith(b"HEAD ")
    client.transport.write(raw)
    reply = yield within(client.reply)
    if close:
        client.close()
    return reply


BASE = [
    "Host: 127.0.0.1",
    "Upgrade: websocket",
    "Connection: Upgrade",
    f"Sec-WebSocket-Key: {KEY}",
    "Sec-WebSocket-Version: 13",
]


def raw_head(path: str = "/ws", *extra: str, drop: tuple[str, ...] = (), first: str | None = None) -> bytes:
    """An upgrade head for ``path``; ``drop`` leaves out the named headers, ``extra`` adds lines."""
    lines = [first or f"GET {path} HTTP/1.1"]
    lines += [line for line in BASE if line.partition(":")[0].lower() not in {d.lower() for d in drop}]
    lines += extra
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def websockets_client(port: int, path: str, messages: list[str], **options: Any) -> Deferred[Any]:
    """The websockets library's client, in a thread: connect, send each message; the replies and response headers."""
    from websockets.sync.client import connect as ws_connect

    def run() -> tuple[list[Any], Any]:
        with ws_connect(f"ws://127.0.0.1:{port}{path}", open_timeout=TIMEOUT, **options) as ws:
            replies = []
            for message in messages:
                ws.send(message)
                replies.append(ws.recv(timeout=TIMEOUT))
            assert ws.response is not None
            return replies, ws.response.headers

    return within(deferToThread(run))


@pytest.fixture(params=WAYS)
def way(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def check_way(served: Listening, way: str, before: int = 0) -> None:
    """A successful upgrade took the way it was meant to."""
    assert served.twisted_requests - before == (0 if way == "fast" else 1)


# A. Origins.


@pytest_twisted.inlineCallbacks
def test_null_origin_is_refused_unless_listed(serve: Any, way: str) -> Iterator[Any]:
    """Origin: null (any site's sandboxed iframe) gets 403 from an origin list that does not name "null"."""
    app = Crow()
    ws_route(app, "/strict", way).allowed_origins(["https://app.example"])
    ws_route(app, "/sandbox", way).allowed_origins(["https://app.example", "null"])
    ws_route(app, "/open", way)
    served = serve(app)
    for path, status in (("/strict", 403), ("/sandbox", 101), ("/open", 101)):
        before = served.twisted_requests
        reply = yield exchange(served.port, raw_head(path, "Origin: null"))
        assert reply.status == status, path
        if status == 101:
            check_way(served, way, before)
    app.websocket_allowed_origins(["https://app.example"])
    reply = yield exchange(served.port, raw_head("/open", "Origin: null"))
    assert reply.status == 403
    app.settings.allow_null_origin = True  # the setting now only adds "null" to a list in force
    reply = yield exchange(served.port, raw_head("/open", "Origin: null"))
    assert reply.status == 101


@pytest.mark.parametrize("listed", [True, False])
@pytest_twisted.inlineCallbacks
def test_two_origin_headers_are_refused(serve: Any, way: str, listed: bool) -> Iterator[Any]:
    """Two Origin headers (RFC 6454 section 7.3 allows one) get 400, whatever the two say and with or without a list."""
    app = Crow()
    rule = ws_route(app, "/ws", way)
    if listed:
        rule.allowed_origins(["https://app.example"])
    port = serve(app).port
    for second in ("https://app.example", "https://evil.example"):
        reply = yield exchange(port, raw_head("/ws", "Origin: https://app.example", f"Origin: {second}"))
        assert reply.status == 400
        assert reply.body == b"400 Bad Request: more than one Origin header\n"


@pytest_twisted.inlineCallbacks
def test_allowed_origin_with_a_real_client(serve: Any, way: str) -> Iterator[Any]:
    """The websockets client from an allowed origin opens and echoes; from another it is refused with 403."""
    from websockets.exceptions import InvalidStatus

    app = Crow()
    ws_route(app, "/ws", way).allowed_origins(["https://*.app.example"])
    served = serve(app)
    replies, _ = yield websockets_client(served.port, "/ws", ["hi"], origin="https://www.app.example")
    assert replies == ["():hi"]
    check_way(served, way)
    with pytest.raises(InvalidStatus) as refused:
        yield websockets_client(served.port, "/ws", ["hi"], origin="null")
    assert refused.value.response.status_code == 403


def test_origin_patterns_are_checked_and_matched_strictly() -> None:
    """Malformed patterns fail when declared; wildcards match host labels only, so no odd string slips through."""
    from crowtwist.websocket._origin import OriginPolicy

    for bad, why in (
        ("", "may not be empty"),
        ("1https://a.example", "no valid scheme"),
        ("https://a b.example", "is not scheme://host"),
        ("https://a.example:port", "is not scheme://host"),
    ):
        with pytest.raises(ValueError, match=why):
            OriginPolicy([bad])
    policy = OriginPolicy(["https://*.app.example", "http://localhost:*"])
    assert policy.allows("https://www.app.example/") and policy.allows("http://localhost:5173")
    for origin in ("https://evil.example/.app.example", "https://evil.example?.app.example", "https://app.example",
                   "https://x.app.example:443", "http://localhost", "null", "https://www.app.example/path"):
        assert not policy.allows(origin), origin


# B. Host and singleton headers.


@pytest_twisted.inlineCallbacks
def test_upgrade_without_host_is_400(serve: Any, way: str) -> Iterator[Any]:
    """RFC 6455 section 4.2.1 and RFC 9112 section 3.2: an upgrade needs one valid Host; without one, 400."""
    app = Crow()
    ws_route(app, "/ws", way)
    port = serve(app).port
    reply = yield exchange(port, raw_head("/ws", drop=("host",)))
    assert reply.status == 400 and reply.body == b"400 Bad Request: Host header missing or invalid\n"
    for bad in ("Host:", "Host: a b", "Host: a/b", "Host: user@a"):
        reply = yield exchange(port, raw_head("/ws", bad, drop=("host",)))
        assert reply.status == 400, bad
    for good in ("Host: example.com:8080", "Host: [::1]:80", "Host: LOCALHOST"):
        reply = yield exchange(port, raw_head("/ws", good, drop=("host",)))
        assert reply.status == 101, good


@pytest.mark.parametrize(
    "name, first, second",
    [
        ("Host", "127.0.0.1", "127.0.0.1"),
        ("Host", "127.0.0.1", "evil.example"),
        ("Sec-WebSocket-Key", KEY, KEY),
        ("Sec-WebSocket-Key", KEY, OTHER_KEY),
        ("Sec-WebSocket-Key", "not a key", KEY),
        ("Sec-WebSocket-Version", "13", "13"),
        ("Sec-WebSocket-Version", "8", "13"),
    ],
)
@pytest_twisted.inlineCallbacks
def test_repeated_singleton_header_is_400(serve: Any, way: str, name: str, first: str, second: str) -> Iterator[Any]:
    """Two Host, Sec-WebSocket-Key or Sec-WebSocket-Version headers get 400; the last one no longer wins."""
    app = Crow()
    ws_route(app, "/ws", way)
    port = serve(app).port
    reply = yield exchange(port, raw_head("/ws", f"{name}: {first}", f"{name}: {second}", drop=(name,)))
    assert reply.status == 400
    assert reply.body == f"400 Bad Request: more than one {name} header\n".encode()


# C. Absolute-form request targets.


@pytest_twisted.inlineCallbacks
def test_absolute_form_target_is_routed_by_its_path(serve: Any, way: str) -> Iterator[Any]:
    """GET http://host/path (RFC 9112 section 3.2.2) is routed by its path, for upgrades and plain routes alike."""
    app = Crow()
    ws_route(app, "/room/<int>", way)
    app.route("/page")(lambda request: f"page {request.args.get(b'x')} {request.getHeader('host')}\n")
    app.route("/")(lambda request: "root\n")
    served = serve(app)
    port = served.port
    reply = yield exchange(port, raw_head(first=f"GET http://127.0.0.1:{port}/room/7?q=1 HTTP/1.1"), close=False)
    assert reply.status == 101
    assert served.twisted_requests == 1  # the fast path leaves such heads to twisted.web
    reply.client.transport.write(F.encode(F.TEXT, b"hi"))
    frames = yield reply.client.frames()
    assert frames[0].payload == b"(7,):hi"
    reply.client.close()
    page = yield exchange(port, b"GET http://example.test:8080/page?x=1 HTTP/1.1\r\nHost: other\r\n\r\n")
    assert (page.status, page.body) == (200, b"page [b'1'] example.test:8080\n")
    root = yield exchange(port, b"GET HTTPS://example.test HTTP/1.1\r\nHost: example.test\r\n\r\n")
    assert (root.status, root.body) == (200, b"root\n")


# D. Heads over the limits.


@pytest.mark.parametrize(
    "raw, status, body",
    [
        (raw_head("/ws?" + "q" * 20000), 414, b"414 URI Too Long: request line too long\n"),
        (raw_head("/ws", "X-Big: " + "a" * 20000), 431,
         b"431 Request Header Fields Too Large: header section too large\n"),
        (raw_head("/ws", *[f"X-{i}: {'a' * 100}" for i in range(200)]), 431,
         b"431 Request Header Fields Too Large: header section too large\n"),
        (raw_head("/ws", *[f"X-{i}: a" for i in range(600)]), 431,
         b"431 Request Header Fields Too Large: too many header fields\n"),
        pytest.param(
            raw_head("/ws", "Upgrade : websocket"),
            400,
            b"400 Bad Request: malformed request\n",
            marks=fast_paths_only("a malformed head gets twisted.web's own empty 400"),
        ),
    ],
    ids=["request-line", "one-long-header", "header-section", "too-many-headers", "space-before-colon"],
)
@pytest_twisted.inlineCallbacks
def test_heads_over_the_limits_get_an_answer(
    serve: Any, way: str, raw: bytes, status: int, body: bytes
) -> Iterator[Any]:
    """414 for a long request line, 431 for a large or long header section, 400 for a malformed one: each with a
    short body and Connection: close, delivered in full before the server closes (no reset)."""
    app = Crow()
    ws_route(app, "/ws", way)
    port = serve(app).port
    client = yield connect(port)
    client.transport.write(raw)
    reply = yield within(client.reply)
    assert (reply.status, reply.body) == (status, body)
    assert reply.header("connection") == "close"
    yield within(client.lost)  # the server closed (the client closes its side on EOF)


def test_nothing_after_a_refused_head_is_read() -> None:
    """After a 431, what else the client sends (another request even) is dropped, not parsed or answered."""
    app = Crow()
    app.route("/page")(lambda request: "page\n")
    transport = StringTransport()
    channel = app.site().buildProtocol(None)
    channel.makeConnection(transport)
    channel.dataReceived(b"GET /page HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(600)))
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 431 ") and transport.disconnecting
    channel.dataReceived(b"\r\nGET /page HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value() == answer


# E. onaccept's answers and declarations.


@pytest.mark.parametrize("deferred", [False, True])
@pytest.mark.parametrize("code", [100, 101, 199, 600])
@pytest_twisted.inlineCallbacks
def test_onaccept_non_final_response_is_500(serve: Any, logs: LogCapture, deferred: bool, code: int) -> Iterator[Any]:
    """An onaccept that returns a 1xx (or out-of-range) Response gets 500 and an error in the log, not a bare 101."""
    app = Crow()
    response = Response(code, "x")
    app.route("/ws").websocket().onaccept(lambda request: succeed(response) if deferred else response)
    app.route("/teapot").websocket().onaccept(lambda request: Response(418, "no\n"))
    port = serve(app).port
    reply = yield exchange(port, raw_head("/ws"))
    assert (reply.status, reply.body) == (500, b"500 Internal Server Error\n")
    assert any("final status" in str(e.get("log_format")) for e in logs.at(LogLevel.error))
    teapot = yield exchange(port, raw_head("/teapot"))
    assert (teapot.status, teapot.body) == (418, b"no\n")


def test_methods_then_websocket_fails_at_declaration() -> None:
    """.methods(...) then .websocket() on one Route is a ValueError when declared; separate routes are fine."""
    app = Crow()
    with pytest.raises(ValueError, match=r"\.methods\(\) is for HTTP handlers"):
        app.route("/ws").methods("POST").websocket()
    app.route("/ws").methods("POST")(lambda request: "posted")
    app.route("/ws").websocket()


# F. Connection caps with an async onaccept.


def slow_accept(delay: float) -> Callable[[Any], Deferred[bool]]:
    def accept(request: Any) -> Deferred[bool]:
        d: Deferred[bool] = Deferred()
        reactor.callLater(delay, d.callback, True)  # type: ignore[attr-defined]
        return d

    return accept


@pytest.mark.parametrize("cap", ["route", "app"])
@pytest_twisted.inlineCallbacks
def test_cap_holds_while_onaccept_is_pending(serve: Any, cap: str) -> Iterator[Any]:
    """max_connections(3) and an onaccept that answers after 0.5 s: of 12 concurrent clients 3 get 101, 9 get 503;
    a fast-path upgrade to another route meanwhile counts the pending ones against the app's cap."""
    app = Crow()
    rule = app.route("/slow").websocket().onaccept(slow_accept(0.5))
    app.route("/fast").websocket()
    if cap == "route":
        rule.max_connections(3)
    else:
        app.websocket_limits(max_connections=3)
    port = serve(app).port
    clients = []
    for _ in range(12):
        client = yield connect(port)
        client.transport.write(raw_head("/slow"))
        clients.append(client)
    if cap == "app":
        yield wait_until(lambda: rule.occupied() == 3)
        refused = yield exchange(port, raw_head("/fast"))
        assert refused.status == 503
    replies = yield within(DeferredList([c.reply for c in clients], fireOnOneErrback=True))
    statuses = sorted(reply.status for _, reply in replies)
    assert statuses == [101] * 3 + [503] * 9
    yield wait_until(lambda: len(rule.connections) == 3)
    for client in clients:
        client.close()
    yield wait_until(lambda: rule.occupied() == 0)


@pytest_twisted.inlineCallbacks
def test_slot_is_released_on_refusal_failure_and_departure(serve: Any, way: str) -> Iterator[Any]:
    """A pending upgrade's place is given back when onaccept refuses, fails, or the client leaves (its onaccept
    is then cancelled), and taken up by the open connection on acceptance."""
    app = Crow()
    held: list[Deferred[Any]] = []
    cancelled: list[int] = []

    def accept(request: Any) -> Deferred[Any]:
        held.append(Deferred(lambda d: cancelled.append(len(held))))
        return held[-1]

    app.route("/ws").websocket().onaccept(accept).max_connections(1)
    ws_route(app, "/other", way)
    app.websocket_limits(max_connections=1)
    port = serve(app).port

    gone = yield connect(port)
    gone.transport.write(raw_head("/ws"))
    yield wait_until(lambda: len(held) == 1)
    blocked = yield exchange(port, raw_head("/other"))  # the pending one holds the app's only place
    assert blocked.status == 503
    gone.close()
    yield within(gone.lost)
    yield wait_until(lambda: cancelled == [1])  # onaccept cancelled when the client left

    for outcome, status in ((False, 400), (RuntimeError("boom"), 500)):
        client = yield connect(port)
        client.transport.write(raw_head("/ws"))
        yield wait_until(lambda: len(held) == (2 if status == 400 else 3))
        if isinstance(outcome, Exception):
            held[-1].errback(outcome)
        else:
            held[-1].callback(outcome)
        reply = yield within(client.reply)
        assert reply.status == status
        client.close()

    accepted = yield connect(port)
    accepted.transport.write(raw_head("/ws"))
    yield wait_until(lambda: len(held) == 4)
    held[-1].callback(True)
    reply = yield within(accepted.reply)
    assert reply.status == 101
    refused = yield exchange(port, raw_head("/other"))
    assert refused.status == 503  # the open connection has the place now
    accepted.close()


def test_app_stopping_while_a_sync_onaccept_runs_is_503() -> None:
    """An onaccept that answers True after the app began stopping does not get its connection upgraded."""
    app = Crow()

    def accept(request: Any) -> bool:
        app._websockets.begin_stopping()
        return True

    app.route("/ws").websocket().onaccept(accept)
    assert MemoryClient(app, "/ws", crow_site=True).status == 503


@pytest_twisted.inlineCallbacks
def test_cap_is_checked_again_after_onaccept(serve: Any) -> Iterator[Any]:
    """A cap lowered while onaccept ran is enforced when it answers."""
    app = Crow()
    held: list[Deferred[Any]] = []

    def accept(request: Any) -> Deferred[Any]:
        held.append(Deferred())
        return held[-1]

    rule = app.route("/ws").websocket().onaccept(accept).max_connections(2)
    port = serve(app).port
    first = yield connect(port)
    first.transport.write(raw_head("/ws"))
    yield wait_until(lambda: len(held) == 1)
    held[0].callback(True)
    yield within(first.reply)
    second = yield connect(port)
    second.transport.write(raw_head("/ws"))
    yield wait_until(lambda: len(held) == 2)
    rule.max_connections(1)
    held[1].callback(True)
    reply = yield within(second.reply)
    assert reply.status == 503
    first.close()
    second.close()


# G. Stopping while an onaccept is pending.


@implementer(IStreamServerEndpoint)
class RandomPort:
    """A 127.0.0.1 TCP endpoint on a random port that tells which port it got."""

    def __init__(self) -> None:
        self.port: Any = None

    def listen(self, factory: Any) -> Deferred[Any]:
        def got(port: Any) -> Any:
            self.port = port
            return port

        return TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory).addCallback(got)


@pytest.mark.fast_paths("close code")
@pytest.mark.parametrize("connection", ["Upgrade", "close, Upgrade"])
@pytest_twisted.inlineCallbacks
def test_stopping_refuses_pending_and_later_upgrades(way: str, connection: str) -> Iterator[Any]:
    """Stopping app.service(...) answers an upgrade whose onaccept is pending with 503 at once (onopen never runs),
    closes open WebSockets with 1001, and refuses upgrades on connections still open with 503."""
    app = Crow()
    held: list[Deferred[Any]] = []
    opened: list[str] = []

    def accept(request: Any) -> Deferred[Any]:
        held.append(Deferred())
        return held[-1]

    app.route("/slow").websocket().onaccept(accept).onopen(lambda conn: opened.append("slow"))
    ws_route(app, "/ws", way)
    endpoint = RandomPort()
    service = app.service(endpoint)
    service.startService()
    port = endpoint.port.getHost().port
    try:
        pending = yield connect(port)
        pending.transport.write(raw_head("/slow", f"Connection: {connection}", drop=("connection",)))
        idle = yield connect(port)  # connected before the stop, upgrading after it
        open_ws = yield exchange(port, raw_head("/ws"), close=False)
        assert open_ws.status == 101
        yield wait_until(lambda: len(held) == 1)
        assert not app.stopping
        stopped = service.stopService()
        assert app.stopping
        reply = yield within(pending.reply)
        assert (reply.status, reply.body) == (503, b"503 Service Unavailable: the server is stopping\n")
        yield within(pending.lost)
        frames = yield open_ws.client.frames()
        assert frames[0].close_code == 1001
        open_ws.client.transport.write(F.encode(F.CLOSE, F.close_payload(1001)))
        yield within(stopped)
        assert held[0].called and opened == []
        idle.transport.write(raw_head("/ws"))
        late = yield within(idle.reply)
        assert late.status == 503
        idle.close()
    finally:
        if service.running:
            yield service.stopService()


# H. permessage-deflate offers.


# An offer accepted (permessage-deflate in the 101): autobahn's public paths decline it.
DECLINED = pytest.mark.fast_paths("compression")


@pytest.mark.parametrize(
    "offer, status, accepted",
    [
        ("permessage-deflate; server_max_window_bits=8", 101, None),
        ("permessage-deflate; mystery", 101, None),
        ("permessage-deflate; mystery=1", 101, None),
        ("permessage-deflate; client_no_context_takeover; client_no_context_takeover", 101, None),
        ("permessage-deflate; server_max_window_bits=10; server_max_window_bits=10", 101, None),
        ("permessage-deflate; server_max_window_bits=010", 101, None),
        ("permessage-deflate; server_max_window_bits", 101, None),
        ("permessage-deflate; client_max_window_bits=16", 101, None),
        ("permessage-deflate; server_no_context_takeover=1", 101, None),
        ("x-webkit-deflate-frame", 101, None),
        pytest.param(
            "permessage-deflate; server_max_window_bits=8, permessage-deflate", 101, "permessage-deflate", marks=DECLINED
        ),
        pytest.param(
            "permessage-deflate; mystery, permessage-deflate; server_max_window_bits=12", 101,
            "server_max_window_bits=12", marks=DECLINED,
        ),
        pytest.param(
            'permessage-deflate; server_max_window_bits="11"', 101, "server_max_window_bits=11", marks=DECLINED
        ),
        pytest.param("x-webkit-deflate-frame, permessage-deflate", 101, "permessage-deflate", marks=DECLINED),
        pytest.param(", permessage-deflate ,", 101, "permessage-deflate", marks=DECLINED),
        ("permessage-deflate;;", 400, None),
        ("permessage-deflate; =1", 400, None),
        ('permessage-deflate; server_max_window_bits="1', 400, None),
        ('permessage-deflate; server_max_window_bits="1 0"', 400, None),
        ("permessage-deflate server_max_window_bits=10", 400, None),
        (",", 400, None),
    ],
)
@pytest_twisted.inlineCallbacks
def test_deflate_offers_we_cannot_take_are_declined(
    serve: Any, way: str, offer: str, status: int, accepted: str | None
) -> Iterator[Any]:
    """RFC 7692 section 5: an offer with an unsupported, unknown, invalid or repeated parameter is declined (101
    without it, or with a later acceptable offer); only a syntactically broken header gets 400."""
    app = Crow()
    ws_route(app, "/ws", way)
    served = serve(app)
    reply = yield exchange(served.port, raw_head("/ws", f"Sec-WebSocket-Extensions: {offer}"))
    assert reply.status == status
    extension = reply.header("sec-websocket-extensions")
    if accepted is None:
        assert extension is None
    else:
        assert extension is not None and accepted in extension
    if status == 101:
        check_way(served, way)
    else:
        assert reply.body.startswith(b"400 Bad Request: Sec-WebSocket-Extensions: ")


@pytest.mark.fast_paths("compression")
@pytest_twisted.inlineCallbacks
def test_deflate_fallback_offer_with_websockets_client(serve: Any, way: str) -> Iterator[Any]:
    """The websockets client offering server_max_window_bits=8 then a plain fallback gets the fallback, compressed."""
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

    app = Crow()
    ws_route(app, "/ws", way)
    served = serve(app)
    factories = [ClientPerMessageDeflateFactory(server_max_window_bits=8), ClientPerMessageDeflateFactory()]
    replies, headers = yield websockets_client(
        served.port, "/ws", ["a" * 5000, "é" * 3000], extensions=factories, compression=None
    )
    assert replies == ["():" + "a" * 5000, "():" + "é" * 3000]
    assert headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
    assert "server_max_window_bits" not in headers["Sec-WebSocket-Extensions"]
    check_way(served, way)


def test_extension_header_parser() -> None:
    """Sec-WebSocket-Extensions parses as RFC 6455 section 9.1 says (quoted values unquoted, empty elements skipped)."""
    assert parse_offers('a; b=1 ; c="2",, d') == [("a", [("b", "1"), ("c", "2")]), ("d", [])]
    assert extension_error("a; b=") is not None and extension_error("a b") is not None
    canonical = acceptable_offers("PERMESSAGE-DEFLATE; Client_Max_Window_Bits")
    assert canonical == "permessage-deflate; client_max_window_bits"


# Probing the handshake like an attacker, both ways.


@pytest.mark.parametrize(
    "raw, status",
    [
        (raw_head("/ws", "upgrade: WebSocket", "CONNECTION: upgrade", drop=("upgrade", "connection")), 101),
        (raw_head("/ws", "Connection: keep-alive, Upgrade", drop=("connection",)), 101),
        (raw_head("/ws", "Upgrade: websocket, h2c", drop=("upgrade",)), 101),
        (raw_head("/ws", "Upgrade: h2c", drop=("upgrade",)), 426),
        (raw_head("/ws", "Upgrade: websocket/13", drop=("upgrade",)), 426),
        (raw_head("/ws", "Connection: keep-alive", drop=("connection",)), 400),
        (raw_head("/ws", "Sec-WebSocket-Version: 13, 8", drop=("sec-websocket-version",)), 426),
        (raw_head("/ws", "Sec-WebSocket-Version: 013", drop=("sec-websocket-version",)), 426),
        (raw_head("/ws", drop=("sec-websocket-version",)), 426),
        (raw_head("/ws", "Sec-WebSocket-Key: dGhlIHNhbXBs ZSBub25jZQ==", drop=("sec-websocket-key",)), 400),
        (raw_head("/ws", f"Sec-WebSocket-Key: \t {KEY} \t", drop=("sec-websocket-key",)), 101),
        (raw_head("/ws", "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==AA", drop=("sec-websocket-key",)), 400),
        (raw_head("/ws", drop=("sec-websocket-key",)), 400),
        (raw_head(first="GET /ws HTTP/1.0"), 426),
        (raw_head(first="get /ws HTTP/1.1"), 405),
        (raw_head(first="HEAD /ws HTTP/1.1"), 405),
        (raw_head("/ws", "Content-Length: 0", first="POST /ws HTTP/1.1"), 405),
        (raw_head(first="GET /ws HTTP/2.0"), 400),
        (raw_head(first="GET  /ws HTTP/1.1"), 400),
        (raw_head("/ws", "X-Null: a\x00b"), 400),
        (raw_head("/ws", "Content-Length: 0", "Content-Length: 5"), 400),
    ],
    ids=[
        "header-case", "keep-alive-upgrade", "websocket-h2c", "h2c-only", "websocket-slash-13", "no-upgrade-token",
        "version-list", "version-013", "no-version", "key-with-space", "key-padded-by-whitespace",
        "key-bad-base64", "no-key", "http-1.0", "lowercase-method", "head", "post", "http-2.0", "double-space",
        "nul-in-value", "two-content-lengths",
    ],
)
@pytest_twisted.inlineCallbacks
def test_probes(serve: Any, way: str, raw: bytes, status: int) -> Iterator[Any]:
    """Odd but legal heads upgrade; the rest get RFC 6455 section 4.2.1's answers (426 for a version or protocol we
    do not speak, 405 for other methods, 400 otherwise), the same on both ways."""
    app = Crow()
    ws_route(app, "/ws", way)
    served = serve(app)
    reply = yield exchange(served.port, raw)
    assert reply.status == status
    if status == 101:
        check_way(served, way)
    elif status == 426:
        assert reply.header("sec-websocket-version") == "13"
    elif status == 405:
        assert reply.header("allow") == "GET"


@pytest_twisted.inlineCallbacks
def test_upgrade_headers_on_a_mixed_route(serve: Any) -> Iterator[Any]:
    """On a path with HTTP handlers too, only an HTTP/1.1 GET upgrades: HEAD, POST and HTTP/1.0 reach the handlers."""
    app = Crow()
    app.route("/both").methods("GET", "POST")(lambda request: f"http {request.method}\n")
    app.route("/both").websocket()
    port = serve(app).port
    for first, status, body in (
        ("GET /both HTTP/1.1", 101, b""),
        ("HEAD /both HTTP/1.1", 200, b""),
        ("POST /both HTTP/1.1", 200, b"http POST\n"),
        ("GET /both HTTP/1.0", 200, b"http GET\n"),
    ):
        extra = ("Content-Length: 0",) if first.startswith("POST") else ()
        reply = yield exchange(port, raw_head("/both", *extra, first=first))
        assert (reply.status, reply.body) == (status, body), first


@pytest_twisted.inlineCallbacks
def test_connection_close_among_other_options_closes(serve: Any) -> Iterator[Any]:
    """Connection: keep-alive, close (a list, as RFC 9110 section 7.6.1 has it) ends the connection after the answer;
    twisted.web alone split the header at spaces and kept it open."""
    app = Crow()
    app.route("/page")(lambda request: "page\n")
    port = serve(app).port
    client = yield connect(port)
    client.transport.write(b"GET /page HTTP/1.1\r\nHost: x\r\nConnection: keep-alive,close\r\n\r\n")
    reply = yield within(client.reply)
    assert (reply.status, reply.body, reply.header("connection")) == (200, b"page\n", "close")
    yield within(client.lost)


# Properties: families of header sets, both ways, in memory.

HOSTS = ["127.0.0.1", "example.com:8080", "[::1]:80", "", "a b"]
KEYS = [KEY, OTHER_KEY, "c2hvcnQ=", "dGhlIHNhbXBs ZSBub25jZQ=="]
VERSIONS = ["13", "8", "13, 8"]
ORIGINS = ["https://app.example", "null", "https://evil.example", "HTTPS://APP.EXAMPLE"]
UPGRADES = ["websocket", "WebSocket", "websocket, h2c", "h2c"]
CONNECTIONS = ["Upgrade", "keep-alive, Upgrade", "keep-alive"]
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def some(values: list[str]) -> st.SearchStrategy[list[str]]:
    """None, one, or two values of one header."""
    return st.lists(st.sampled_from(values), max_size=2)


def model(headers: dict[str, list[str]]) -> int:
    """The status RFC 6455 section 4.2.1 (and our order of checks) gives these upgrade headers."""

    def tokens(name: str) -> list[str]:
        return [t.strip().lower() for v in headers[name] for t in v.split(",")]

    if len(headers["host"]) != 1:
        return 400  # RFC 9112 section 3.2, for any HTTP/1.1 request, before the upgrade is looked at
    if "websocket" not in tokens("upgrade"):
        return 426
    if "upgrade" not in tokens("connection"):
        return 400
    if any(len(headers[name]) > 1 for name in ("host", "sec-websocket-key", "sec-websocket-version", "origin")):
        return 400
    if headers["host"] in ([], [""], ["a b"]):
        return 400
    if headers["sec-websocket-version"] != ["13"]:
        return 426
    if headers["sec-websocket-key"] not in ([KEY], [OTHER_KEY]):
        return 400
    if headers["origin"] and headers["origin"][0].lower() != "https://app.example":
        return 403
    return 101


def property_app() -> Crow:
    app = Crow()
    app.route("/ws").websocket().allowed_origins(["https://app.example"])
    app.route("/acc").websocket().allowed_origins(["https://app.example"]).onaccept(lambda request: True)
    return app


@PROPERTY
@given(
    host=some(HOSTS),
    key=some(KEYS),
    version=some(VERSIONS),
    origin=some(ORIGINS),
    upgrade=some(UPGRADES),
    connection=some(CONNECTIONS),
    order=st.randoms(use_true_random=False),
)
def test_header_sets_get_the_same_answer_both_ways(
    host: list[str], key: list[str], version: list[str], origin: list[str],
    upgrade: list[str], connection: list[str], order: Any,
) -> None:
    """Missing, repeated and invalid Host, Key, Version, Origin, Upgrade and Connection headers: the fast path,
    twisted.web's path, and a rule with onaccept all answer alike, as the model says."""
    headers = {
        "host": host, "sec-websocket-key": key, "sec-websocket-version": version,
        "origin": origin, "upgrade": upgrade, "connection": connection,
    }
    lines = [f"{name}: {value}" for name, values in headers.items() for value in values]
    order.shuffle(lines)
    expected = model(headers)
    answers = []
    for path in ("/ws", "/acc"):
        raw = ("\r\n".join([f"GET {path} HTTP/1.1", *lines]) + "\r\n\r\n").encode("latin-1")
        app = property_app()
        slow, fast = Served(SlowSite(app.resource()), raw), Served(app.site(), raw)
        assert fast.response() == slow.response()
        assert fast.taken_fast is (expected == 101 and path == "/ws")
        answers.append(fast.response())
    assert answers[0] == answers[1]
    assert int(answers[0][0].split()[1]) == expected


DEFLATE_PARAMS = st.sampled_from([
    ("server_no_context_takeover", None), ("client_no_context_takeover", None), ("server_no_context_takeover", "1"),
    ("server_max_window_bits", "8"), ("server_max_window_bits", "9"), ("server_max_window_bits", "15"),
    ("server_max_window_bits", '"12"'), ("server_max_window_bits", "16"), ("server_max_window_bits", None),
    ("client_max_window_bits", None), ("client_max_window_bits", "10"), ("client_max_window_bits", "8"),
    ("mystery", None), ("mystery", "x"),
])
OFFERS = st.lists(
    st.tuples(st.sampled_from(["permessage-deflate", "x-webkit-deflate-frame"]), st.lists(DEFLATE_PARAMS, max_size=3)),
    min_size=1,
    max_size=3,
)


def acceptable(params: list[tuple[str, str | None]]) -> bool:
    names = [name for name, _ in params]
    if len(set(names)) < len(names):
        return False
    for name, value in params:
        value = None if value is None else value.strip('"')
        if name.endswith("no_context_takeover") and value is not None:
            return False
        if name == "server_max_window_bits" and value not in {str(n) for n in range(9, 16)}:
            return False
        if name == "client_max_window_bits" and value not in {None, *(str(n) for n in range(9, 16))}:
            return False
        if name == "mystery":
            return False
    return True


@pytest.mark.fast_paths("compression")
@PROPERTY
@given(offers=OFFERS, space=st.sampled_from(["", " ", "\t "]))
def test_well_formed_offers_never_fail_the_handshake(offers: list[Any], space: str) -> None:
    """Any well-formed Sec-WebSocket-Extensions gets 101 both ways, with the first acceptable permessage-deflate
    offer accepted (its server_max_window_bits confirmed) or none."""
    header = f"{space},{space}".join(
        f"{space};{space}".join([name, *(p if v is None else f"{p}{space}={space}{v}" for p, v in params)])
        for name, params in offers
    )
    raw = raw_head("/ws", f"Sec-WebSocket-Extensions: {header}")
    app = Crow()
    app.route("/ws").websocket()
    slow, fast = Served(SlowSite(app.resource()), raw), Served(app.site(), raw)
    assert fast.response()[:2] == slow.response()[:2]
    status, headers, _ = fast.response()
    assert status.split()[1] == "101" and fast.taken_fast
    first = next((params for name, params in offers if name == "permessage-deflate" and acceptable(params)), None)
    extension = headers.get("sec-websocket-extensions")
    if first is None:
        assert extension is None
    else:
        assert extension is not None and extension.startswith("permessage-deflate")
        bits = dict(first).get("server_max_window_bits")
        if bits is not None:
            assert f"server_max_window_bits={bits.strip(chr(34))}" in extension
